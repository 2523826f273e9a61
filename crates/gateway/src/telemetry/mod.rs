//! What operators see of calls: metrics in Prometheus text and span export
//! to an OpenTelemetry collector. The admin endpoint that serves the
//! metrics is the proxy's ([`crate::proxy::admin`]); trace context and the
//! escaping of caller-sent text are wire formats ([`crate::wire`]).

pub mod metrics;
pub mod otlp;
