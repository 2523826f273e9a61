//! The gateway's service for one partner connection: where each call
//! starts its [`Call`] and ends with a response.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use super::body::{CallerBody, ResponseBody};
use super::call::Call;
use super::record::CallRecord;
use super::{GatewayError, SharedState};
use crate::consent::ConsentLedger;
use crate::exchange_log::ExchangeLog;
use crate::net::PeerInfo;
use crate::telemetry::metrics::Metrics;
use crate::wire::TraceContext;
use crate::wire::escape::Escaped;
use crate::wire::headers;

/// The gateway's service for one partner connection.
#[derive(Debug, Clone)]
pub struct GatewayService {
    pub(super) state: SharedState,
    pub(super) peer: Arc<PeerInfo>,
    pub(super) log: Option<ExchangeLog>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) consent: Option<Arc<ConsentLedger>>,
    /// Set once a call on this connection was refused as a stranger's (see
    /// [`GatewayError::is_stranger_refusal`]) and recorded: the calls such
    /// a peer opens before its connection closes are not.
    pub(super) stranger_recorded: Arc<AtomicBool>,
}

impl GatewayService {
    pub(super) fn new(
        state: SharedState,
        peer: PeerInfo,
        log: Option<ExchangeLog>,
        metrics: Arc<Metrics>,
        consent: Option<Arc<ConsentLedger>>,
    ) -> Self {
        Self {
            state,
            peer: Arc::new(peer),
            log,
            metrics,
            consent,
            stranger_recorded: Arc::default(),
        }
    }

    /// Runs one gRPC call: from the wire, or a JSON call transcoded
    /// (`json`: recorded as such).
    pub(super) async fn handle(
        self,
        mut request: Request<CallerBody>,
        json: bool,
    ) -> Response<ResponseBody> {
        let received = Instant::now();
        let received_at = SystemTime::now();
        let in_flight = self.metrics.call_started();
        // The snapshot this call runs under, from start to finish.
        let state = self.state.load_full();
        // Cloning a `Uri` shares its bytes: the route and the log borrow it.
        let uri = request.uri().clone();
        let (request_id, bad_request_id) = match headers::request_id(request.headers()) {
            // A JSON call's id was read already: the one it was given to
            // answer under, and the error its own was.
            Ok(id) => {
                let bad = request
                    .extensions_mut()
                    .remove::<super::json::BadRequestId>();
                (id, bad.map(|bad| GatewayError::from(bad.0)))
            }
            Err(error) => (headers::fresh_request_id(), Some(GatewayError::from(error))),
        };
        let trace = TraceContext::read(request.headers());
        // Every call to a published service is recorded, refusals too; the
        // gateway's own services (directory, health, reflection, the log's
        // proofs) are not exchanges between members.
        let mut record = self
            .log
            .as_ref()
            .filter(|_| !crate::catalog::is_local(uri.path()))
            .map(|log| {
                CallRecord::new(
                    log.clone(),
                    state.node_id(),
                    &request_id,
                    uri.path(),
                    self.peer.member.as_ref().ok(),
                    &trace,
                    received_at,
                )
            });
        if json && let Some(record) = record.as_mut() {
            record.came_as_json();
        }
        // Everything logged while the gateway handles the call carries its
        // request id, trace and method. The span lasts until the response
        // body ends (see `CallSummary`); exported, it is the gateway's span
        // in the caller's trace.
        let span = tracing::info_span!(
            "call",
            request_id = request_id.to_str().unwrap_or_default(),
            method = %Escaped(uri.path()),
            trace_id = trace.trace_id_hex(),
            span_id = trace.span_id_hex(),
            parent_id = tracing::field::Empty,
            trace_flags = trace.flags,
            grpc_status = tracing::field::Empty,
            bridge_error = tracing::field::Empty,
        );
        if let Some(parent) = trace.parent_id_hex() {
            span.record("parent_id", parent);
        }
        let mut call = Call {
            conn: &self,
            state,
            uri,
            received,
            request_id,
            bad_request_id,
            trace,
            record,
            answer: None,
        };
        async move {
            match call.run(request).await {
                Ok(mut response) => {
                    response
                        .headers_mut()
                        .insert(headers::names::BRIDGE_REQUEST_ID, call.request_id);
                    response.body_mut().hold(in_flight);
                    response
                }
                // Boxed, like the directory's calls: inline, these rarer
                // paths' futures would make every call's larger.
                Err(error) => Box::pin(call.refuse(error)).await,
            }
        }
        .instrument(span)
        .await
    }
}

impl hyper::service::Service<Request<Incoming>> for GatewayService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        let request = request.map(CallerBody::Wire);
        if crate::wire::headers::is_grpc(request.headers()) {
            Box::pin(async move { Ok(this.handle(request, false).await) })
        } else {
            Box::pin(async move { Ok(super::json::serve(this, request).await) })
        }
    }
}
