//! The bodies of a relayed call, in both directions.
//!
//! Bytes pass through frame by frame, never decoded, polled only as fast as
//! the receiving side's HTTP/2 window allows, so a slow reader slows the
//! sender instead of growing a buffer here. Around that, the bodies:
//!
//! - keep `bridge-*` names out of trailers in both directions: only the
//!   gateway speaks in that namespace;
//! - enforce the call's deadline on the response;
//! - turn an upstream failure mid-stream into a gRPC status for the caller
//!   instead of a bare stream reset;
//! - end the upstream call as soon as the response side is over (finished,
//!   failed, past its deadline, or abandoned by the caller): the response
//!   body holds a [`CallEnd`] whose drop makes the request body fail, which
//!   makes hyper reset the upstream stream even while the caller is still
//!   sending.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::deadline::Deadline;
use super::error::GatewayError;
use super::headers::strip_bridge_headers;
use super::record::{self, CallRecord, Ending, SharedTally, Tally};
use crate::audit::Appending;
use crate::consent::{ConsentRefusal, UseReservation};
use crate::identity::MemberId;
use crate::routing::upstream::BoxError;
use crate::telemetry::metrics::InFlight;

/// Dropping this ends the upstream side of a call.
#[derive(Debug)]
pub struct CallEnd(#[allow(dead_code)] oneshot::Sender<Infallible>);

/// The caller's request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    /// Bytes read from `inner` before forwarding (the first message of a
    /// consent-bound call), relayed first.
    prefix: Option<Bytes>,
    /// Resolves (with an error: nothing is ever sent) once the response side
    /// is over; `None` after that.
    call_end: Option<oneshot::Receiver<Infallible>>,
    /// Counts the bytes for the exchange log, when it is on.
    tally: Option<SharedTally>,
    /// Request bytes relayed upstream, for the call's summary.
    bytes_in: Arc<AtomicU64>,
}

impl RequestBody {
    /// Wraps the caller's body; the call's upstream side ends when the
    /// returned [`CallEnd`] is dropped.
    pub fn new(
        inner: Incoming,
        prefix: Option<Bytes>,
        tally: Option<SharedTally>,
        bytes_in: Arc<AtomicU64>,
    ) -> (Self, CallEnd) {
        let (sender, receiver) = oneshot::channel();
        (
            Self {
                inner,
                prefix,
                call_end: Some(receiver),
                tally,
                bytes_in,
            },
            CallEnd(sender),
        )
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.call_end.as_mut().map(|end| Pin::new(end).poll(cx)) {
            None => return Poll::Ready(Some(Err("the call is over".into()))),
            Some(Poll::Ready(_)) => {
                self.call_end = None;
                return Poll::Ready(Some(Err("the call is over".into())));
            }
            Some(Poll::Pending) => {}
        }
        let frame = match self.prefix.take() {
            Some(bytes) => Some(Ok(Frame::data(bytes))),
            None => ready!(Pin::new(&mut self.inner).poll_frame(cx)),
        };
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            self.bytes_in
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            if let Some(tally) = &self.tally {
                record::count(tally, data);
            }
        }
        Poll::Ready(frame.map(|frame| frame.map(without_bridge_trailers).map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.prefix {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

/// Reads the caller's body until its first gRPC message is complete, for
/// a consent-bound call whose subject must be checked before anything is
/// forwarded. Returns every byte read, to be relayed first; the message is
/// `bytes[5..]`, and more may follow it.
pub async fn first_message(body: &mut Incoming) -> Result<Bytes, ConsentRefusal> {
    use http_body_util::BodyExt as _;
    let mut read = bytes::BytesMut::new();
    loop {
        if let Some(prefix) = read.get(..5) {
            let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
            if prefix[0] != 0 || length > crate::audit::subject::MAX_MESSAGE {
                return Err(ConsentRefusal::SubjectMismatch(
                    "the first request message is compressed or over 64 KiB: its subject \
                     cannot be checked",
                ));
            }
            if read.len() >= 5 + length {
                return Ok(read.freeze());
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                }
            }
            Some(Err(_)) | None => {
                return Err(ConsentRefusal::SubjectMismatch(
                    "the request ended before its first message",
                ));
            }
        }
    }
}

/// Strips `bridge-*` names from a trailers frame; other frames pass as is.
fn without_bridge_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            strip_bridge_headers(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

/// A response body: empty (trailers-only responses), relayed from a
/// backend, or answered by one of the gateway's own services.
#[derive(Debug)]
pub struct ResponseBody {
    relay: Option<Relay>,
    local: Option<tonic::body::Body>,
    /// Counts the call as in flight until the body ends or is dropped.
    in_flight: Option<InFlight>,
}

#[derive(Debug)]
struct Relay {
    upstream: Arc<Mutex<Upstream>>,
    /// Ends the upstream side at the deadline, whether or not the caller
    /// reads: hyper does not poll a body while the caller's window is
    /// closed, so a timer inside `poll_frame` would never fire for a
    /// stalled reader, and its upstream stream would hold the shared
    /// connection's window for as long as the caller likes.
    watchdog: AbortHandle,
    budget: std::time::Duration,
    provider: MemberId,
    /// The exchange-log side of the call, when the log is on.
    audit: Option<Audit>,
    /// Counts and logs the call when it ends; `None` once done.
    counted: Option<CallSummary>,
}

/// A forwarded call's end: counted in the metrics and logged as one
/// `call ended` event, once.
#[derive(Debug)]
pub struct CallSummary {
    pub metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    pub request_id: String,
    pub trace_id: String,
    /// The call's span: it closes when this summary is dropped.
    pub span: tracing::Span,
    pub caller: String,
    pub provider: String,
    pub method: String,
    pub purpose: String,
    /// The backend endpoint that answered.
    pub endpoint: Option<Arc<str>>,
    pub started: tokio::time::Instant,
    /// Spent deciding whether the policies permit the call.
    pub policy: std::time::Duration,
    /// From forwarding to the backend's response headers.
    pub upstream: std::time::Duration,
    /// Request bytes relayed to the backend, frame headers included.
    pub bytes_in: Arc<AtomicU64>,
    /// Response bytes relayed to the caller.
    pub bytes_out: u64,
    /// A use of the citizen's consent, spent if the call succeeds.
    pub consent_use: Option<UseReservation>,
}

impl CallSummary {
    /// The call ended so.
    pub fn finish(mut self, ending: Ending<'_>) {
        let (code, bridge_error) = ending.status();
        if code == 0
            && let Some(consent_use) = self.consent_use.take()
        {
            consent_use.succeeded();
        }
        let total = self.started.elapsed();
        let code_name = crate::telemetry::metrics::code_name(code);
        self.span.record("grpc_status", code);
        if !bridge_error.is_empty() {
            self.span.record("bridge_error", bridge_error);
        }
        tracing::info!(
            request_id = self.request_id,
            trace_id = self.trace_id,
            caller = self.caller,
            provider = self.provider,
            method = self.method,
            purpose = self.purpose,
            decision = "allow",
            grpc_status = code,
            code = code_name,
            bridge_error,
            endpoint = self.endpoint.as_deref().unwrap_or_default(),
            total_us = micros(total),
            policy_us = micros(self.policy),
            upstream_us = micros(self.upstream),
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            "call ended"
        );
        let labels = crate::telemetry::metrics::CallLabels {
            caller: self.caller,
            provider: self.provider,
            method: self.method,
            code: code_name,
        };
        self.metrics.call(&labels, total);
    }
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.watchdog.abort();
        if let Some(counted) = self.counted.take() {
            counted.finish(Ending::Cancelled);
        }
        // A caller that leaves before the end still leaves a record: the
        // append is queued and committed without anyone waiting for it.
        if let Some(audit) = self.audit.as_mut()
            && let Some(record) = audit.record.take()
        {
            let appending = record.write_outcome(Ending::Cancelled, Some(&audit.response));
            if let Err(error) = appending.queued() {
                tracing::error!(%error, "the outcome of an abandoned call is lost");
            }
        }
    }
}

/// What the response side needs to write a call's outcome.
#[derive(Debug)]
pub struct Audit {
    /// `None` once the outcome is written.
    record: Option<CallRecord>,
    response: Tally,
    /// The outcome being written, and the trailers held back until it is
    /// durable: the caller learns the status only once it is logged.
    pending: Option<(Appending, Option<http::HeaderMap>)>,
}

impl Audit {
    pub fn new(record: CallRecord) -> Self {
        Self {
            record: Some(record),
            response: Tally::new(None),
            pending: None,
        }
    }

    fn is_over(&self) -> bool {
        self.record.is_none() && self.pending.is_none()
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, Infallible>>>;

/// Ends a relayed response with `trailers` (none: the backend sent no
/// status): at once without an exchange log, else once the outcome record
/// is durable.
fn end(
    audit: &mut Option<Audit>,
    trailers: Option<http::HeaderMap>,
    cx: &mut Context<'_>,
) -> Polled {
    let Some(audit) = audit.as_mut() else {
        return Poll::Ready(trailers.map(|trailers| Ok(Frame::trailers(trailers))));
    };
    if let Some(record) = audit.record.take() {
        let ending = trailers.as_ref().map_or(Ending::NoStatus, Ending::Trailers);
        let appending = record.write_outcome(ending, Some(&audit.response));
        audit.pending = Some((appending, trailers));
    }
    release(audit, cx)
}

/// Releases the held-back trailers once the outcome is durable.
fn release(audit: &mut Audit, cx: &mut Context<'_>) -> Polled {
    let Some((appending, _)) = audit.pending.as_mut() else {
        return Poll::Ready(None);
    };
    let written = ready!(Pin::new(appending).poll(cx));
    let trailers = audit.pending.take().and_then(|(_, trailers)| trailers);
    Poll::Ready(match written {
        Ok(index) => trailers.map(|mut trailers| {
            let (name, value) = record::audit_index(index);
            trailers.insert(name, value);
            Ok(Frame::trailers(trailers))
        }),
        Err(error) => {
            // The backend answered, but nothing unlogged may look like a
            // success to the caller.
            let error = GatewayError::OutcomeUnrecorded(error.to_string());
            tracing::error!(%error, detail = error.detail().unwrap_or_default(), "call outcome not logged");
            Some(Ok(Frame::trailers(error.into_trailers())))
        }
    })
}

/// The upstream side of a relayed call, shared with its watchdog.
#[derive(Debug, Default)]
struct Upstream {
    /// `None` once finished or abandoned; dropping it resets the upstream
    /// response, and dropping the `CallEnd` with it ends the request side.
    stream: Option<(Incoming, CallEnd)>,
    /// Set by the watchdog; the caller then gets `DEADLINE_EXCEEDED`.
    expired: bool,
    /// The task to wake when the watchdog fires.
    waker: Option<Waker>,
}

fn lock(upstream: &Mutex<Upstream>) -> MutexGuard<'_, Upstream> {
    // The lock guards no invariant a panic could break half-way.
    upstream.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ResponseBody {
    /// Keeps the call counted as in flight for as long as this body lives.
    pub fn hold(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }

    /// A body with no frames.
    pub fn empty() -> Self {
        Self {
            relay: None,
            local: None,
            in_flight: None,
        }
    }

    /// The body of a gateway service's answer.
    pub fn local(body: tonic::body::Body) -> Self {
        Self {
            relay: None,
            local: Some(body),
            in_flight: None,
        }
    }

    /// Relays `upstream` until it ends or the deadline passes; the call's
    /// upstream side ends with it.
    pub fn relay(
        upstream: Incoming,
        call_end: CallEnd,
        deadline: Deadline,
        provider: MemberId,
        audit: Option<Audit>,
        counted: Option<CallSummary>,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Upstream {
            stream: Some((upstream, call_end)),
            ..Upstream::default()
        }));
        let expiring = shared.clone();
        let at = deadline.at();
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut upstream = lock(&expiring);
            if let Some(stream) = upstream.stream.take() {
                upstream.expired = true;
                let waker = upstream.waker.take();
                drop(upstream);
                drop(stream);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
        })
        .abort_handle();
        Self {
            relay: Some(Relay {
                upstream: shared,
                watchdog,
                budget: deadline.budget(),
                provider,
                audit,
                counted,
            }),
            local: None,
            in_flight: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(local) = self.local.as_mut() {
            // tonic reports a failing local stream as a status error; the
            // gateway's services never fail mid-stream, so end the body.
            return Pin::new(local)
                .poll_frame(cx)
                .map(|frame| frame.and_then(Result::ok).map(Ok));
        }
        let Some(relay) = self.relay.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(audit) = relay.audit.as_mut()
            && audit.pending.is_some()
        {
            return release(audit, cx);
        }
        let mut upstream = lock(&relay.upstream);
        if std::mem::take(&mut upstream.expired) {
            drop(upstream);
            let error = GatewayError::DeadlineExceeded(relay.budget);
            let trailers = error.into_trailers();
            if let Some(counted) = relay.counted.take() {
                counted.finish(Ending::Trailers(&trailers));
            }
            return end(&mut relay.audit, Some(trailers), cx);
        }
        let Some((stream, _)) = upstream.stream.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(stream).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !upstream
                    .waker
                    .as_ref()
                    .is_some_and(|waker| waker.will_wake(cx.waker()))
                {
                    upstream.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
        };
        let trailers = match frame {
            Some(Ok(frame)) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    strip_bridge_headers(&mut trailers);
                    Some(trailers)
                }
                Err(frame) => {
                    if let Some(data) = frame.data_ref() {
                        if let Some(counted) = relay.counted.as_mut() {
                            counted.bytes_out += data.len() as u64;
                        }
                        if let Some(audit) = relay.audit.as_mut() {
                            audit.response.add(data);
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
            },
            None => None,
            Some(Err(error)) => {
                let error = GatewayError::UpstreamFailed {
                    provider: relay.provider.clone(),
                    detail: error.to_string(),
                };
                Some(error.into_trailers())
            }
        };
        upstream.stream = None;
        drop(upstream);
        relay.watchdog.abort();
        if let Some(counted) = relay.counted.take() {
            counted.finish(trailers.as_ref().map_or(Ending::NoStatus, Ending::Trailers));
        }
        end(&mut relay.audit, trailers, cx)
    }

    fn is_end_stream(&self) -> bool {
        match &self.local {
            Some(local) => local.is_end_stream(),
            None => self.relay.as_ref().is_none_or(|relay| {
                let upstream = lock(&relay.upstream);
                upstream.stream.is_none()
                    && !upstream.expired
                    && relay.audit.as_ref().is_none_or(Audit::is_over)
            }),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(local) = &self.local {
            return local.size_hint();
        }
        match &self.relay {
            Some(relay) => lock(&relay.upstream)
                .stream
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |(stream, _)| stream.size_hint()),
            None => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_lose_bridge_names_and_keep_the_rest() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("bridge-client", "SN/GOV/DGID/tax".parse().unwrap());
        trailers.insert("bridge_client", "SN/GOV/DGID/tax".parse().unwrap());
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frame = without_bridge_trailers(Frame::trailers(trailers));
        let trailers = frame.into_trailers().unwrap();
        assert_eq!(trailers.len(), 1);
        assert_eq!(trailers["grpc-status"], "0");
        let data = without_bridge_trailers(Frame::data(Bytes::from_static(b"x")));
        assert_eq!(data.into_data().unwrap(), "x");
    }
}
