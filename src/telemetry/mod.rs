//! What operators see: metrics and the admin endpoint that serves them,
//! trace context, and span export to an OpenTelemetry collector.

pub mod admin;
pub mod context;
pub mod metrics;
pub mod otlp;
