//! What operators see: metrics and the admin endpoint that serves them.

pub mod admin;
pub mod metrics;
