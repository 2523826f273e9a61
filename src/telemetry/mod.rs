//! What operators see: metrics and the admin endpoint that serves them,
//! trace context, span export to an OpenTelemetry collector, and the
//! escaping of caller-sent text in what they read.

pub mod admin;
pub mod context;
pub mod escape;
pub mod metrics;
pub mod otlp;
