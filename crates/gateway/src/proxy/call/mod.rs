//! One call through the gateway, phase by phase.
//!
//! [`Call`] is the per-call context: the connection it came on, the
//! configuration snapshot it runs under, what arrived with it, and its
//! exchange-log record. [`Call::run`] is the request path; each phase is a
//! method of `Call`, in the order of the diagram, each in a file of its own
//! unless a few lines:
//!
//! | phase            | where                          | refuses when                         |
//! |------------------|--------------------------------|--------------------------------------|
//! | admit            | `admit.rs`                     | not a member, no permit, over limits |
//! | read headers     | `read_headers.rs`              | not gRPC, malformed `bridge-*`       |
//! | transcode        | `transcode.rs` (JSON calls)    | the JSON is not the request message  |
//! | route            | `route.rs`                     | unknown service, method or target    |
//! | authorize        | `authorize.rs`                 | policies deny; artefact invalid      |
//! | bind consent     | `bind_consent.rs`              | subject differs; consent used up     |
//! | record decision  | here                           | the exchange log cannot write        |
//! | forward, retries | `forward.rs`                   | no backend; deadline                 |
//! | relay            | `relay.rs`, `../body.rs`       | (the backend's own status passes)    |
//! | record outcome   | `../body.rs`, `../record.rs`   | the outcome cannot be written        |
//!
//! The first refusal is the answer ([`Call::refuse`], `refuse.rs`): it is
//! recorded and becomes a gRPC status in one place,
//! [`GatewayError::into_response`].

mod admit;
mod authorize;
mod bind_consent;
mod forward;
mod read_headers;
mod refuse;
mod relay;
mod route;
mod transcode;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tracing::Instrument;

use super::body::{CallerBody, ResponseBody};
use super::json::JsonAnswer;
use super::record::CallRecord;
use super::service::GatewayService;
use super::state::GatewayState;
use super::{Deadline, GatewayError};
use crate::consent::UseReservation;
use crate::routing::ProviderPool;
use crate::wire::TraceContext;
use crate::wire::headers::CallHeaders;
use admit::Admitted;

/// One call on its way through the gateway: what every phase may read,
/// and the record each adds to.
pub(super) struct Call<'a> {
    /// The connection the call came on: its peer, metrics, log and consent
    /// ledger.
    pub(super) conn: &'a GatewayService,
    /// The configuration snapshot the call runs under, start to finish.
    pub(super) state: Arc<GatewayState>,
    pub(super) uri: http::Uri,
    pub(super) received: Instant,
    pub(super) request_id: HeaderValue,
    /// The caller's `bridge-request-id` was malformed: refused (with a
    /// fresh id) once the caller is admitted.
    pub(super) bad_request_id: Option<GatewayError>,
    pub(super) trace: TraceContext,
    /// The call's exchange-log record; `None` when the log is off or the
    /// method is one of the gateway's own.
    pub(super) record: Option<CallRecord>,
    /// How the answer becomes JSON, for a JSON call to a unary method
    /// (set by `transcode`).
    pub(super) answer: Option<JsonAnswer>,
}

/// Runs `step` unless the call's deadline passes first.
async fn within<T>(
    deadline: &Deadline,
    step: impl std::future::Future<Output = T>,
) -> Result<T, GatewayError> {
    tokio::time::timeout_at(deadline.at(), step)
        .await
        .map_err(|_| GatewayError::DeadlineExceeded(deadline.elapsed()))
}

/// Where a call goes, and by when it must be done.
struct Routed {
    provider: Arc<ProviderPool>,
    /// Whether the method may be replayed on another endpoint.
    idempotent: bool,
    deadline: Deadline,
}

/// A call the gateway lets through: what forwarding and relaying it need
/// of the phases before.
struct Exchange {
    admitted: Admitted,
    headers: CallHeaders,
    routed: Routed,
    /// Spent deciding whether the policies permit the call.
    policy_elapsed: Duration,
    /// A use of the citizen's consent, when the call runs under one.
    consent_use: Option<UseReservation>,
}

impl Call<'_> {
    /// The request path. Each phase may refuse the call; the first refusal
    /// is the answer.
    pub(super) async fn run(
        &mut self,
        request: Request<CallerBody>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let admitted = self.admit(request.headers()).await?;
        let headers = self.read_headers(&request, admitted.assertion.as_ref())?;
        let request = self.transcode(request, &headers, &admitted.caller).await?;
        if crate::catalog::is_local(self.uri.path()) {
            return Ok(self.serve_locally(request, admitted, &headers).await);
        }
        if let Some(global) = self.state.expired_global(crate::unix_time::now()) {
            return Err(GatewayError::GlobalConfigurationExpired {
                version: global.version,
                expired: global.expires,
            });
        }
        let routed = self.route(&headers, admitted.assertion.as_ref())?;
        if let Some(instance) = routed.provider.partner() {
            self.partner_current(instance)?;
        }
        let deciding = Instant::now();
        let consent = self.authorize(&admitted, &headers, routed.provider.provider())?;
        let mut exchange = Exchange {
            admitted,
            headers,
            routed,
            policy_elapsed: deciding.elapsed(),
            consent_use: None,
        };
        let (head, mut body) = request.into_parts();
        let guard = match consent {
            Some(claims) => Some(self.bind_consent(&claims, &mut body, &mut exchange).await?),
            None => None,
        };
        self.record_decision(&exchange.routed.deadline).await?;
        let outgoing = self.request_body(body, guard, &exchange).await?;
        let forwarded = self.forward(&head, outgoing, &exchange).await?;
        self.relay(forwarded, exchange).await
    }

    /// Record the decision: durable before anything reaches the backend.
    async fn record_decision(&mut self, deadline: &Deadline) -> Result<(), GatewayError> {
        if let Some(record) = self.record.as_mut() {
            let writing = record
                .write_decision()
                .instrument(tracing::debug_span!("exchange_log"));
            within(deadline, writing).await??;
        }
        Ok(())
    }

    /// The gateway's own services (directory, health, reflection, the
    /// exchange log's proofs) answer here, for members admitted like any
    /// caller (in JSON, for a JSON call).
    async fn serve_locally(
        &mut self,
        request: Request<CallerBody>,
        admitted: Admitted,
        headers: &CallHeaders,
    ) -> Response<ResponseBody> {
        let deadline = &Deadline::new(self.received, headers.timeout, self.state.max_deadline);
        let certificate_days_left = self.caller_days_left(&admitted, crate::unix_time::now());
        let context = crate::directory::LocalContext {
            caller: admitted.caller,
            state: self.state.clone(),
            certificate_days_left,
            log: self.conn.log.clone(),
            current: self.conn.state.clone(),
        };
        // Boxed: inline, this rarer path's future would make every call's
        // larger.
        let response = Box::pin(crate::directory::call(request, context)).await;
        let mut response = response.map(|body| ResponseBody::local_until(body, deadline));
        response.body_mut().holds(admitted.permit);
        if let Some(answer) = self.answer.take() {
            response.body_mut().transcode(answer);
        }
        response
    }
}
