//! The gateway's contract on the wire: the `bridge-*` headers, gRPC
//! deadlines (`grpc-timeout`) and W3C trace context (`traceparent`).
//!
//! This module is the only place that declares a `bridge-*` name or reads
//! one from a header map; everything else imports the names and checked
//! values from here. Text a caller sent is made safe for a log or a
//! terminal by [`escape`]. It knows nothing of configuration, policy or the
//! exchange log, and a malformed header is a [`WireError`], which the edge
//! turns into a gRPC status with the others.

pub mod deadline;
pub mod escape;
pub mod headers;
pub mod trace_context;

pub use deadline::Deadline;
pub use trace_context::TraceContext;

use crate::identity::MemberId;

/// Who calls which method at which provider, for which purpose: what the
/// policies decide on and a consent artefact is checked against, as the
/// gateway knows the call before reading its messages.
#[derive(Debug, Clone, Copy)]
pub struct CallScope<'a> {
    pub caller: &'a MemberId,
    /// `/package.Service/Method`.
    pub method: &'a str,
    pub provider: &'a MemberId,
    /// The declared `bridge-purpose` code, if any.
    pub purpose: Option<&'a str>,
}

/// A request the gateway cannot read: the caller's fault, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a gRPC request: {0}")]
    NotGrpc(&'static str),
    #[error("malformed header {header}: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
}
