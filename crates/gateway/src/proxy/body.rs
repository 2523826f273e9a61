//! The bodies of a relayed call, in both directions.
//!
//! A gRPC call's bytes pass through frame by frame, never decoded, polled
//! only as fast as the receiving side's HTTP/2 window allows, so a slow
//! reader slows the sender instead of growing a buffer here. Around that,
//! the bodies:
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
//!   sending;
//! - hold a consent-bound request to the person its consent is about: each
//!   message is relayed only once it is whole and names that person, and
//!   one that names anyone else ends the call with `PERMISSION_DENIED`
//!   before a byte of it reaches the backend (see [`SubjectGuard`]); and
//!   relay its answer only while the consent holds (see [`AnswerHold`]);
//! - give a JSON call's answer as JSON, converted message by message
//!   before its outcome is written (see [`Transcoding`]): the one place a
//!   response is decoded.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::error::GatewayError;
use super::json::JsonAnswer;
use super::limits::{CallPermit, MessageSizeLimit};
use super::record::{self, CallRecord, Ending, SharedTally, Tally};
use crate::catalog::subject::{Reading, SubjectField, read_subject};
use crate::consent::{ConsentHold, ConsentRefusal, UseReservation};
use crate::exchange_log::Appending;
use crate::identity::MemberId;
use crate::routing::upstream::BoxError;
use crate::telemetry::metrics::InFlight;
use crate::wire::deadline::Deadline;
use crate::wire::escape::Escaped;
use crate::wire::headers::strip_bridge_headers;

/// Dropping this ends the upstream side of a call.
#[derive(Debug)]
pub struct CallEnd {
    _ends: oneshot::Sender<Infallible>,
    /// Why the request side refused the rest of the call, once it has
    /// (consent, message size, the caller's cancellation).
    refused: Arc<OnceLock<GatewayError>>,
    /// The call's share of its backend endpoint's load: released with the
    /// upstream side, also when the deadline cuts it for a caller who
    /// stopped reading.
    load: Option<crate::routing::upstream::Load>,
}

impl CallEnd {
    /// The end of a call whose request side needs no ending: a replayed
    /// request, whole in memory.
    pub fn detached() -> Self {
        let (sender, _) = oneshot::channel();
        Self {
            _ends: sender,
            refused: Arc::default(),
            load: None,
        }
    }

    /// Holds the call's share of its endpoint's load until the upstream
    /// side ends.
    pub fn hold(&mut self, load: Option<crate::routing::upstream::Load>) {
        self.load = load;
    }

    /// Why the request body failed, when it failed on purpose or the
    /// caller cancelled: the call then ends with this (and the caller, if
    /// still there, hears it) instead of the upstream failure that follows.
    pub fn refusal(&self) -> Option<GatewayError> {
        self.refused.get().cloned()
    }
}

/// What a caller sent: the body as it came on the wire, or the gRPC
/// messages a JSON call became (whole, in memory; see `crate::catalog::json`).
#[derive(Debug)]
pub enum CallerBody {
    Wire(Incoming),
    Transcoded(Option<Bytes>),
}

impl Body for CallerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            CallerBody::Wire(wire) => Pin::new(wire).poll_frame(cx),
            CallerBody::Transcoded(messages) => {
                Poll::Ready(messages.take().map(|m| Ok(Frame::data(m))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CallerBody::Wire(wire) => wire.is_end_stream(),
            CallerBody::Transcoded(messages) => messages.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CallerBody::Wire(wire) => wire.size_hint(),
            CallerBody::Transcoded(messages) => {
                SizeHint::with_exact(messages.as_ref().map_or(0, |m| m.len() as u64))
            }
        }
    }
}

/// The caller's request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    inner: CallerBody,
    /// Checks each message of a consent-bound call before it is relayed.
    guard: Option<SubjectGuard>,
    /// Resolves (with an error: nothing is ever sent) once the response side
    /// is over; `None` after that.
    call_end: Option<oneshot::Receiver<Infallible>>,
    /// Counts the bytes for the exchange log, when it is on.
    tally: Option<SharedTally>,
    /// Request bytes relayed upstream, for the call's summary.
    bytes_in: Arc<AtomicU64>,
    /// Why the body refused the rest of the call, shared with its
    /// [`CallEnd`]; the first refusal is the one the caller hears of.
    refused: Arc<OnceLock<GatewayError>>,
    /// Ends the call at a message over the caller's size limit.
    sizes: Option<MessageSizeLimit>,
    /// Bytes read from `inner` before forwarding, relayed first.
    read: Option<Bytes>,
}

impl RequestBody {
    /// Wraps the caller's body; the call's upstream side ends when the
    /// returned `CallEnd` is dropped.
    pub fn new(
        inner: CallerBody,
        guard: Option<SubjectGuard>,
        tally: Option<SharedTally>,
        bytes_in: Arc<AtomicU64>,
    ) -> (Self, CallEnd) {
        let (sender, receiver) = oneshot::channel();
        let refused = Arc::default();
        let call_end = CallEnd {
            _ends: sender,
            refused: Arc::clone(&refused),
            load: None,
        };
        (
            Self {
                inner,
                guard,
                call_end: Some(receiver),
                tally,
                bytes_in,
                refused,
                sizes: None,
                read: None,
            },
            call_end,
        )
    }

    /// Relays `read` (taken from the caller's body before forwarding)
    /// first.
    pub fn after(mut self, read: Bytes) -> Self {
        self.read = Some(read);
        self
    }

    /// Ends the call, before relaying it, at the first message `limit`
    /// refuses.
    pub fn limit_messages(mut self, limit: MessageSizeLimit) -> Self {
        self.sizes = Some(limit);
        self
    }

    /// Ends the call with `error`: the caller hears of it, nothing more is
    /// relayed and any later poll fails.
    fn refuse(&mut self, error: GatewayError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let message = error.to_string();
        let _ = self.refused.set(error);
        self.call_end = None;
        Poll::Ready(Some(Err(message.into())))
    }

    /// The next frame to relay: the caller's, or for a consent-bound call
    /// the messages it completes, once checked.
    fn poll_checked(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let read = self.guard.as_mut().and_then(|guard| guard.read.take());
            let frame = match read.or_else(|| self.read.take()) {
                Some(read) => Some(Ok(Frame::data(read))),
                None => match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                    // Whatever happens upstream next (hyper resets the
                    // stream), the call ends as the caller's cancellation.
                    Some(Err(error)) => {
                        let _ = self.refused.set(GatewayError::Cancelled(error.to_string()));
                        Some(Err(error.into()))
                    }
                    Some(Ok(frame)) => Some(Ok(frame)),
                    None => None,
                },
            };
            // Sizes first, as the caller sent them: a message too large is
            // that, whether or not a consent would have it checked.
            if let Some(Ok(frame)) = &frame
                && let Some(data) = frame.data_ref()
                && let Some(sizes) = self.sizes.as_mut()
                && let Err(error) = sizes.check(data)
            {
                return self.refuse(error);
            }
            let Some(guard) = self.guard.as_mut() else {
                return Poll::Ready(frame);
            };
            let checked = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => guard.pass(data),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                None if !guard.held.is_empty() => Err(ConsentRefusal::SubjectMismatch(
                    "the request ended inside a message",
                )),
                other => return Poll::Ready(other),
            };
            match checked {
                Ok(whole) if whole.is_empty() => {}
                Ok(whole) => return Poll::Ready(Some(Ok(Frame::data(whole)))),
                Err(refusal) => return self.refuse(refusal.into()),
            }
        }
    }
}

/// Holds a consent-bound request to the person its consent is about, and
/// to the consent as it stands.
///
/// Each message is relayed only once it is whole, its data subject field
/// names that person, and the consent still holds (neither revoked nor
/// paused, its feed fresh, its artefact unexpired): a stream whose later
/// message names someone else, or goes on after the citizen revoked, is
/// refused before any byte of that message reaches the backend. Messages
/// the gateway cannot read (compressed, over
/// [`MAX_MESSAGE`](crate::catalog::subject::MAX_MESSAGE)) are refused too,
/// since their subject cannot be checked. At most one message is held.
#[derive(Debug)]
pub struct SubjectGuard {
    subject: Box<str>,
    field: SubjectField,
    /// The consent the call was admitted under, as it stands.
    consent: Option<ConsentHold>,
    /// Bytes read before forwarding (the first message), relayed first.
    read: Option<Bytes>,
    /// The start of a message not yet whole.
    held: BytesMut,
}

impl SubjectGuard {
    /// A guard for requests naming `subject` in `field`; `read` are the
    /// bytes already taken from the caller's body, their first message
    /// already bound with [`bind_subject`].
    pub fn new(subject: &str, field: SubjectField, read: Bytes) -> Self {
        Self {
            subject: subject.into(),
            field,
            consent: None,
            read: Some(read),
            held: BytesMut::new(),
        }
    }

    /// Relays each message only while `consent` holds.
    pub fn holding(mut self, consent: ConsentHold) -> Self {
        self.consent = Some(consent);
        self
    }

    /// The whole, checked messages `data` completes; the rest is held.
    fn pass(&mut self, mut data: Bytes) -> Result<Bytes, ConsentRefusal> {
        if self.held.is_empty() {
            let whole = self.check(&data)?;
            self.held.extend_from_slice(&data.split_off(whole));
            Ok(data)
        } else {
            self.held.extend_from_slice(&data);
            let whole = self.check(&self.held)?;
            Ok(self.held.split_to(whole).freeze())
        }
    }

    /// The length of the whole messages at the start of `bytes`, each
    /// checked.
    fn check(&self, bytes: &[u8]) -> Result<usize, ConsentRefusal> {
        let mut whole = 0;
        while let Some(prefix) = bytes.get(whole..whole + 5) {
            let length = message_length(prefix)?;
            let Some(message) = bytes.get(whole + 5..whole + 5 + length) else {
                break;
            };
            bind_subject(&read_subject(message, &self.field), &self.subject)?;
            if let Some(consent) = &self.consent {
                consent.check()?;
            }
            whole += 5 + length;
        }
        Ok(whole)
    }
}

/// Checks that a request message, as `reading` read it, is about
/// `subject`, and only about them: the consent's person must be the one
/// every decoder reads.
pub fn bind_subject(reading: &Reading<'_>, subject: &str) -> Result<(), ConsentRefusal> {
    if reading.is_ambiguous() {
        return Err(ConsentRefusal::SubjectAmbiguous);
    }
    if reading.sole() != Some(subject) {
        return Err(ConsentRefusal::SubjectMismatch(
            "a request message names another person than the consent",
        ));
    }
    Ok(())
}

/// The length a gRPC message prefix announces, if the gateway can read
/// such a message's subject.
fn message_length(prefix: &[u8]) -> Result<usize, ConsentRefusal> {
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if prefix[0] != 0 || length > crate::catalog::subject::MAX_MESSAGE {
        return Err(ConsentRefusal::SubjectMismatch(
            "a request message is compressed or over 64 KiB: its subject cannot be checked",
        ));
    }
    Ok(length)
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
        let frame = ready!(self.poll_checked(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            if let Some(tally) = &self.tally
                && let Err(error) = record::count(tally, data)
            {
                return self.refuse(error.into());
            }
            self.bytes_in
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame.map(|frame| frame.map(without_bridge_trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none() && self.read.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.guard, &self.read) {
            (None, None) => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// Reads the caller's body until its first gRPC message is complete, for
/// a consent-bound call whose subject must be checked before anything is
/// forwarded. Returns every byte read, to be relayed first: the message
/// ([`first_of`]), and maybe more, since a frame can carry several. A
/// message announced larger than `sizes` allows is refused as that.
pub async fn first_message(
    body: &mut CallerBody,
    mut sizes: MessageSizeLimit,
) -> Result<Bytes, GatewayError> {
    use http_body_util::BodyExt as _;
    let mut read = bytes::BytesMut::new();
    let mut sized = false;
    loop {
        if let Some(prefix) = read.get(..5) {
            if !sized {
                sizes.check(prefix)?;
                sized = true;
            }
            if read.len() >= 5 + message_length(prefix)? {
                return Ok(read.freeze());
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                }
            }
            // The caller gave up (a reset, its connection gone): its
            // cancellation, not a refusal of its consent.
            Some(Err(error)) => return Err(GatewayError::Cancelled(error.to_string())),
            None => {
                return Err(ConsentRefusal::SubjectMismatch(
                    "the request ended before its first message",
                )
                .into());
            }
        }
    }
}

/// The first message of what [`first_message`] read, without its prefix
/// and without what follows it.
pub fn first_of(read: &[u8]) -> &[u8] {
    let length = read.get(1..5).map_or(0, |length| {
        u32::from_be_bytes([length[0], length[1], length[2], length[3]])
    });
    read.get(5..5 + length as usize).unwrap_or_default()
}

/// A caller's request body, read ahead of forwarding.
#[derive(Debug)]
pub enum Buffered {
    /// The whole body: it ended within the limit.
    Whole(Bytes),
    /// What was read before the limit was passed (or the body failed): the
    /// rest is still to come.
    Partial(Bytes),
}

/// Reads the caller's body to its end if it ends within `limit` bytes, so
/// that an idempotent call can be replayed on another endpoint. Request
/// trailers, which gRPC clients do not send, are dropped.
pub async fn buffer_request(body: &mut CallerBody, limit: usize) -> Buffered {
    use http_body_util::BodyExt as _;
    let mut read = BytesMut::new();
    loop {
        if body.is_end_stream() {
            return Buffered::Whole(read.freeze());
        }
        match body.frame().await {
            None => return Buffered::Whole(read.freeze()),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                    if read.len() > limit {
                        return Buffered::Partial(read.freeze());
                    }
                }
            }
            Some(Err(_)) => return Buffered::Partial(read.freeze()),
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
    /// Boxed: a relay is over a kilobyte (the call's record and summary),
    /// and the body is moved into the task hyper spawns for each stream.
    relay: Option<Box<Relay>>,
    local: Option<tonic::body::Body>,
    /// A local call's deadline (boxed: most answers are relayed): its
    /// answer ends there, and its permit is given back then, read or not.
    expiry: Option<Box<Expiry>>,
    /// Counts the call as in flight until the body ends or is dropped.
    in_flight: Option<InFlight>,
    /// Holds the call's place under the limits until the body is dropped.
    permit: Option<CallPermit>,
    /// A JSON call's answer, converted here (boxed: most calls are gRPC).
    json: Option<Box<Transcoding>>,
}

/// A JSON call's answer, converted where the call ends (see
/// [`JsonAnswer`]): a unary message is held until the status, and `OK`
/// then gives the caller its JSON; a stream's messages are given as lines
/// as they come. A message the gateway cannot give (or none, for a unary
/// `OK`) puts the gateway's `bad-answer` in the status's place.
#[derive(Debug)]
struct Transcoding {
    answer: JsonAnswer,
    held: BytesMut,
    /// The trailers that follow the JSON given, when the exchange log
    /// does not hold them back.
    ending: Option<http::HeaderMap>,
    /// Why a stream stops after the lines just given: the call ends with
    /// it next, before anything more is read.
    failed: Option<GatewayError>,
}

impl Transcoding {
    fn new(answer: JsonAnswer) -> Self {
        Self {
            answer,
            held: BytesMut::new(),
            ending: None,
            failed: None,
        }
    }

    /// Takes `data`, more of the answer: what to give now (a stream's
    /// lines of the messages it completes; nothing of a unary answer,
    /// held until its status). Refused past what is converted: a stream
    /// whose bad message followed good ones in `data` gives their lines
    /// first, and the refusal ([`Self::failed`]) after.
    fn take(&mut self, data: &[u8]) -> Result<Bytes, GatewayError> {
        if !self.answer.streams() {
            if self.held.len() + data.len() > JsonAnswer::MOST {
                return Err(GatewayError::BadAnswer(JsonAnswer::too_large()));
            }
            self.held.extend_from_slice(data);
            return Ok(Bytes::new());
        }
        // Each message is bounded as its prefix is read (`Messages`): what
        // is held is at most one message and what followed it in `data`.
        self.held.extend_from_slice(data);
        match self.answer.lines(&mut self.held) {
            (lines, None) => Ok(lines),
            (lines, Some(error)) if lines.is_empty() => Err(GatewayError::BadAnswer(error)),
            (lines, Some(error)) => {
                self.failed = Some(GatewayError::BadAnswer(error));
                Ok(lines)
            }
        }
    }

    /// The answer's end with `status` (trailers, or a trailers-only
    /// answer's headers): for a unary `OK`, the JSON to give first; any
    /// other status passes (`None`). An end without a gRPC status (a
    /// proxy's `503` before the backend, say) tells the caller nothing it
    /// can read: the gateway's `bad-answer`.
    fn end(&mut self, status: &http::HeaderMap) -> Result<Option<Bytes>, GatewayError> {
        let held = std::mem::take(&mut self.held);
        let code = status
            .get("grpc-status")
            .and_then(|code| code.to_str().ok()?.parse::<i32>().ok());
        match code {
            None => {
                return Err(GatewayError::BadAnswer(
                    "the provider's answer ended without a gRPC status".to_owned(),
                ));
            }
            Some(0) => {}
            Some(_) => return Ok(None),
        }
        if self.answer.streams() {
            if held.is_empty() {
                return Ok(None);
            }
            return Err(GatewayError::BadAnswer(
                "the provider's answer ended inside a message".to_owned(),
            ));
        }
        self.answer
            .convert(held)
            .map(Some)
            .map_err(GatewayError::BadAnswer)
    }
}

/// A trailers-only answer to a JSON call: a unary `OK` with no message,
/// or an answer with no gRPC status, is none the caller can be given, so
/// `status` becomes the gateway's `bad-answer` (named as `origin`'s),
/// before the outcome is written from it. A stream may end with no
/// message.
pub(super) fn without_message(status: &mut http::HeaderMap, answer: JsonAnswer, origin: &Origin) {
    if let Err(error) = Transcoding::new(answer).end(status) {
        instead(status, origin.own(error.into_trailers()));
    }
}

/// `status` says what `ending` does, in its place.
fn instead(status: &mut http::HeaderMap, ending: http::HeaderMap) {
    status.remove("grpc-message");
    status.extend(ending);
}

/// When a local call's answer ends, whatever it streams.
#[derive(Debug)]
struct Expiry {
    timer: Pin<Box<tokio::time::Sleep>>,
    budget: std::time::Duration,
    /// Hold the call's permit and in-flight count until the deadline;
    /// aborted, dropping them, with the body.
    holding: Vec<AbortHandle>,
}

impl Expiry {
    /// Keeps `held` until the deadline or the body's end, whichever comes
    /// first: hyper polls no body whose reader stopped reading, so the
    /// timer, not the body, gives it back.
    fn hold(&mut self, held: impl Send + 'static) {
        let at = self.timer.deadline();
        let holding = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            drop(held);
        });
        self.holding.push(holding.abort_handle());
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        for holding in &self.holding {
            holding.abort();
        }
    }
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
    origin: Origin,
    /// The exchange-log side of the call, when the log is on.
    audit: Option<Audit>,
    /// Counts and logs the call when it ends; `None` once done.
    counted: Option<CallSummary>,
    /// A consent-bound call's consent, checked before each message of the
    /// answer.
    consent: Option<AnswerHold>,
}

/// The gateway's failure for an answer that ended without a status (no
/// trailers, or none with a `grpc-status`): the caller must not take it
/// for a whole one (a client reads HTTP 200 without a status as `OK`).
fn no_status(provider: &MemberId) -> GatewayError {
    GatewayError::UpstreamFailed {
        provider: provider.clone(),
        detail: "the answer ended without a gRPC status".to_owned(),
    }
}

impl Relay {
    /// The trailers of the gateway's own `error`, ending the answer: counted
    /// in `govbridge_refusals_total` as a refusal before the answer is
    /// (`call/refuse.rs`).
    fn own(&self, error: GatewayError) -> http::HeaderMap {
        let summary = self
            .counted
            .as_ref()
            .or_else(|| Some(&self.audit.as_ref()?.settle.as_ref()?.0));
        if let Some(summary) = summary {
            summary.metrics.refusal(error.kind());
        }
        self.origin.own(error.into_trailers())
    }

    /// Counts the call as ended with `trailers`: with the exchange log on,
    /// once its outcome is durable (refused for want of it, a caller given
    /// no message learnt nothing, and its consent's use is given back);
    /// else now.
    fn count_end(&mut self, trailers: &http::HeaderMap) {
        match self.audit.as_mut() {
            Some(audit) => audit.settle = self.counted.take().map(|counted| (counted, 0)),
            None => {
                if let Some(counted) = self.counted.take() {
                    counted.finish(Ending::Trailers(trailers));
                }
            }
        }
    }
}

/// Holds a consent-bound call's answer to the consent as it stands: each
/// message the backend answers with is relayed only if, when it starts,
/// the consent still holds (as [`SubjectGuard`] holds the request). A
/// stream whose citizen revokes, or whose consent lapses, ends there with
/// the gateway's refusal, after the message in progress, so that the
/// caller has whole messages, then a status.
#[derive(Debug)]
struct AnswerHold {
    consent: ConsentHold,
    framing: Framing,
    /// The refusal the answer ends with, once what came before it is
    /// relayed.
    refused: Option<GatewayError>,
}

impl AnswerHold {
    /// Where in `data` the answer must end, the consent no longer holding
    /// at a message that starts there; the refusal is then kept for the
    /// answer's end.
    fn end_in(&mut self, data: &[u8]) -> Option<usize> {
        let start = self.framing.first_start(data)?;
        let refusal = self.consent.check().err()?;
        self.refused = Some(refusal.into());
        Some(start)
    }
}

/// Where a stream of gRPC messages stands, read as its bytes pass.
#[derive(Debug, Default)]
struct Framing {
    /// The prefix of the next message, as much of it as has passed.
    prefix: [u8; 5],
    prefix_read: usize,
    /// Bytes of the current message still to pass.
    left: usize,
}

impl Framing {
    /// Reads `data`, the stream's next bytes; returns where in it the
    /// first message to start in it starts, if one does.
    fn first_start(&mut self, data: &[u8]) -> Option<usize> {
        let mut first = None;
        let mut at = 0;
        while at < data.len() {
            if self.left > 0 {
                let passing = self.left.min(data.len() - at);
                self.left -= passing;
                at += passing;
                continue;
            }
            if self.prefix_read == 0 {
                first.get_or_insert(at);
            }
            let passing = (5 - self.prefix_read).min(data.len() - at);
            self.prefix[self.prefix_read..self.prefix_read + passing]
                .copy_from_slice(&data[at..at + passing]);
            self.prefix_read += passing;
            at += passing;
            if self.prefix_read == 5 {
                let [_, length @ ..] = self.prefix;
                self.left = u32::from_be_bytes(length) as usize;
                self.prefix_read = 0;
            }
        }
        first
    }
}

/// Who answers a relayed call's refusals: this gateway's instance for
/// its own, and the partner's, when the call went to a partner instance's
/// gateway, for the partner's.
#[derive(Debug, Clone)]
pub struct Origin {
    /// This gateway's instance, as `bridge-instance`.
    pub instance: http::HeaderValue,
    /// The partner instance the provider is reached through.
    pub partner: Option<String>,
}

impl Origin {
    /// Names this gateway's instance in the trailers of its own refusal.
    fn own(&self, mut trailers: http::HeaderMap) -> http::HeaderMap {
        trailers.insert(
            crate::wire::headers::names::BRIDGE_INSTANCE,
            self.instance.clone(),
        );
        trailers
    }

    /// The upstream's trailers as relayed: a backend's `bridge-*` dropped,
    /// a partner gateway's refusal kept and named as the partner's.
    fn relayed(&self, trailers: &mut http::HeaderMap) {
        match &self.partner {
            Some(partner) => crate::wire::headers::keep_partner_refusal(trailers, partner),
            None => strip_bridge_headers(trailers),
        }
    }
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
    /// Unary or streamed, as the method's descriptor says.
    pub kind: crate::telemetry::metrics::CallKind,
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
    /// A use of the citizen's consent, spent once an answer reaches the
    /// caller, or the call ends `OK`.
    pub consent_use: Option<UseReservation>,
}

impl CallSummary {
    /// Response bytes go to the caller: whatever the call's end (a cancel,
    /// a deadline), the caller has its answer, so the consent's use is
    /// spent.
    fn relayed(&mut self, bytes: usize) {
        self.bytes_out += bytes as u64;
        if bytes > 0
            && let Some(consent_use) = self.consent_use.take()
        {
            consent_use.spend();
        }
    }

    /// The call ended so.
    pub fn finish(mut self, ending: Ending<'_>) {
        let (code, bridge_error) = ending.status();
        if answered(&ending, code, bridge_error)
            && let Some(consent_use) = self.consent_use.take()
        {
            consent_use.spend();
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
            method = %Escaped(&self.method),
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
        self.metrics.call(&labels, self.kind, total);
    }
}

/// Whether a call that ended so was answered by its backend, and so
/// spends its consent's use even with no data relayed: any status of the
/// backend's own that reaches the caller tells it something about the
/// citizen (a `NOT_FOUND` says they filed nothing that year), but one by
/// which it declined to serve (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`). The
/// gateway's own refusals (a `bridge-error`: among them an answer without
/// a gRPC status, and a status held back because the consent no longer
/// holds) and a caller gone before the end give the use back.
fn answered(ending: &Ending<'_>, code: i32, bridge_error: &str) -> bool {
    let declined = [tonic::Code::Unavailable, tonic::Code::ResourceExhausted]
        .map(|declined| declined as i32)
        .contains(&code);
    code == 0 || (matches!(ending, Ending::Trailers(_)) && bridge_error.is_empty() && !declined)
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.watchdog.abort();
        if let Some(counted) = self.counted.take().or_else(|| {
            self.audit
                .as_mut()?
                .settle
                .take()
                .map(|(counted, _)| counted)
        }) {
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
    pending: Option<(Appending, http::HeaderMap)>,
    /// The call's summary, with the bytes of a JSON answer given whole,
    /// waiting for the outcome, which may still fail the call: a JSON
    /// answer is the caller's only with its status (an HTTP/1.1 answer's
    /// status line comes first), and a status is the caller's only once
    /// the outcome is durable.
    settle: Option<(CallSummary, usize)>,
}

impl Audit {
    pub fn new(record: CallRecord) -> Self {
        Self {
            record: Some(record),
            response: Tally::new(None),
            pending: None,
            settle: None,
        }
    }

    fn is_over(&self) -> bool {
        self.record.is_none() && self.pending.is_none()
    }

    /// Writes the outcome, the call having ended with `trailers`, and
    /// holds them back until it is durable.
    fn write(&mut self, trailers: http::HeaderMap) {
        if let Some(record) = self.record.take() {
            let appending = record.write_outcome(Ending::Trailers(&trailers), Some(&self.response));
            self.pending = Some((appending, trailers));
        }
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, Infallible>>>;

/// Ends a relayed response with `trailers`: at once without an exchange
/// log, else once the outcome record is durable.
fn end(audit: &mut Option<Audit>, trailers: http::HeaderMap, cx: &mut Context<'_>) -> Polled {
    let Some(audit) = audit.as_mut() else {
        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
    };
    audit.write(trailers);
    release(audit, cx)
}

/// Releases the held-back trailers once the outcome is durable.
fn release(audit: &mut Audit, cx: &mut Context<'_>) -> Polled {
    let Some((appending, _)) = audit.pending.as_mut() else {
        return Poll::Ready(None);
    };
    let written = ready!(Pin::new(appending).poll(cx));
    let Some((_, mut trailers)) = audit.pending.take() else {
        return Poll::Ready(None);
    };
    let settle = audit.settle.take();
    Poll::Ready(match written {
        Ok(index) => {
            if let Some((mut counted, given)) = settle {
                counted.relayed(given);
                counted.finish(Ending::Trailers(&trailers));
            }
            let (name, value) = record::audit_index(index);
            trailers.insert(name, value);
            Some(Ok(Frame::trailers(trailers)))
        }
        Err(error) => {
            // The backend answered, but nothing unlogged may look like a
            // success to the caller.
            let error = GatewayError::OutcomeUnrecorded(error.to_string());
            tracing::error!(%error, detail = error.detail().unwrap_or_default(), "call outcome not logged");
            let kind = error.kind();
            let trailers = error.into_trailers();
            // A JSON answer given whole goes with it: the caller had
            // nothing, and the consent's use is given back.
            if let Some((counted, _)) = settle {
                counted.metrics.refusal(kind);
                counted.finish(Ending::Trailers(&trailers));
            }
            Some(Ok(Frame::trailers(trailers)))
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
    /// The call's place in flight and under the limits: given back when
    /// the body ends, or at the deadline, whichever comes first. A caller
    /// that stops reading keeps the body (hyper polls it no more while
    /// the caller's window is closed), not these.
    in_flight: Option<InFlight>,
    permit: Option<CallPermit>,
}

fn lock(upstream: &Mutex<Upstream>) -> MutexGuard<'_, Upstream> {
    // The lock guards no invariant a panic could break half-way.
    upstream.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ResponseBody {
    /// Gives the answer as JSON, `answer`'s way: the body's data is then
    /// the JSON of its message (its lines, for a stream), or its status
    /// the gateway's `bad-answer`, which its outcome, metrics and consent
    /// then see.
    pub(super) fn transcode(&mut self, answer: JsonAnswer) {
        self.json = Some(Box::new(Transcoding::new(answer)));
    }

    /// Relays the answer only while `consent` holds (see [`AnswerHold`]).
    pub(super) fn hold_to(&mut self, consent: ConsentHold) {
        if let Some(relay) = self.relay.as_mut() {
            relay.consent = Some(AnswerHold {
                consent,
                framing: Framing::default(),
                refused: None,
            });
        }
    }

    /// Whether the body gives its answer as JSON.
    pub fn is_transcoded(&self) -> bool {
        self.json.is_some()
    }

    /// Keeps the call counted as in flight for as long as this body lives,
    /// or a relayed call's deadline lasts.
    pub fn hold(&mut self, in_flight: InFlight) {
        self.keep(
            in_flight,
            |upstream| &mut upstream.in_flight,
            |body| &mut body.in_flight,
        );
    }

    /// Keeps the call counted under the limits for as long as this body
    /// lives, or a relayed call's deadline lasts.
    pub fn holds(&mut self, permit: CallPermit) {
        self.keep(
            permit,
            |upstream| &mut upstream.permit,
            |body| &mut body.permit,
        );
    }

    /// Keeps `value` until the call ends: with a relay's upstream side,
    /// which its watchdog drops at the deadline; with a local answer's
    /// expiry; else in the body itself.
    fn keep<T: Send + 'static>(
        &mut self,
        value: T,
        upstream_slot: fn(&mut Upstream) -> &mut Option<T>,
        body_slot: fn(&mut Self) -> &mut Option<T>,
    ) {
        if let Some(relay) = &self.relay {
            let mut upstream = lock(&relay.upstream);
            // Past its deadline already: nothing to hold.
            if upstream.stream.is_some() {
                *upstream_slot(&mut upstream) = Some(value);
            }
        } else if let Some(expiry) = self.expiry.as_mut() {
            expiry.hold(value);
        } else {
            *body_slot(self) = Some(value);
        }
    }

    /// A body with no frames.
    pub fn empty() -> Self {
        Self {
            relay: None,
            local: None,
            expiry: None,
            in_flight: None,
            permit: None,
            json: None,
        }
    }

    /// The body of an answer made here (a JSON answer, or a gateway
    /// service's without a deadline).
    pub fn local(body: tonic::body::Body) -> Self {
        Self {
            relay: None,
            local: Some(body),
            expiry: None,
            in_flight: None,
            permit: None,
            json: None,
        }
    }

    /// The body of a gateway service's answer, ended at `deadline` with
    /// `DEADLINE_EXCEEDED` if it streams that long (a health watch, a
    /// reflection stream).
    pub fn local_until(body: tonic::body::Body, deadline: &Deadline) -> Self {
        Self {
            expiry: Some(Box::new(Expiry {
                timer: Box::pin(tokio::time::sleep_until(deadline.at())),
                budget: deadline.budget(),
                holding: Vec::new(),
            })),
            ..Self::local(body)
        }
    }

    /// Relays `upstream` until it ends or the deadline passes; the call's
    /// upstream side ends with it.
    pub fn relay(
        upstream: Incoming,
        call_end: CallEnd,
        deadline: Deadline,
        (provider, origin): (MemberId, Origin),
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
            let held = (upstream.in_flight.take(), upstream.permit.take());
            if let Some(stream) = upstream.stream.take() {
                upstream.expired = true;
                let waker = upstream.waker.take();
                drop(upstream);
                drop(stream);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            drop(held);
        })
        .abort_handle();
        Self {
            relay: Some(Box::new(Relay {
                upstream: shared,
                watchdog,
                budget: deadline.budget(),
                provider,
                origin,
                audit,
                counted,
                consent: None,
            })),
            local: None,
            expiry: None,
            in_flight: None,
            permit: None,
            json: None,
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
        let this = &mut *self;
        if let Some(expiry) = this.expiry.as_mut()
            && this.local.is_some()
            && expiry.timer.as_mut().poll(cx).is_ready()
        {
            this.local = None;
            let error = GatewayError::DeadlineExceeded(expiry.budget);
            return Poll::Ready(Some(Ok(Frame::trailers(error.into_trailers()))));
        }
        if let Some(trailers) = this.json.as_mut().and_then(|json| json.ending.take()) {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if let Some(local) = this.local.as_mut() {
            loop {
                if let Some(error) = this.json.as_mut().and_then(|json| json.failed.take()) {
                    this.local = None;
                    return Poll::Ready(Some(Ok(Frame::trailers(error.into_trailers()))));
                }
                // tonic reports a failing local stream as a status error;
                // the gateway's services never fail mid-stream, so end the
                // body.
                let frame = ready!(Pin::new(&mut *local).poll_frame(cx)).and_then(Result::ok);
                let (Some(json), Some(frame)) = (this.json.as_mut(), frame.as_ref()) else {
                    return Poll::Ready(frame.map(Ok));
                };
                if let Some(data) = frame.data_ref() {
                    match json.take(data) {
                        Ok(lines) if lines.is_empty() => continue,
                        Ok(lines) => return Poll::Ready(Some(Ok(Frame::data(lines)))),
                        Err(error) => {
                            this.local = None;
                            let trailers = error.into_trailers();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                    }
                }
                let Some(mut status) = frame.trailers_ref().cloned() else {
                    continue;
                };
                return Poll::Ready(Some(Ok(match json.end(&status) {
                    Ok(None) => Frame::trailers(status),
                    Ok(Some(given)) => {
                        json.ending = Some(status);
                        Frame::data(given)
                    }
                    Err(error) => {
                        instead(&mut status, error.into_trailers());
                        Frame::trailers(status)
                    }
                })));
            }
        }
        let Some(relay) = this.relay.as_mut() else {
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
            let trailers = relay.own(error);
            relay.count_end(&trailers);
            return end(&mut relay.audit, trailers, cx);
        }
        let mut trailers = loop {
            let Some((stream, call_end)) = upstream.stream.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(error) = this.json.as_mut().and_then(|json| json.failed.take()) {
                break relay.own(error);
            }
            if let Some(error) = relay.consent.as_mut().and_then(|hold| hold.refused.take()) {
                break relay.own(error);
            }
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
            break match frame {
                Some(Ok(frame)) => match frame.into_trailers() {
                    Ok(mut trailers) => {
                        relay.origin.relayed(&mut trailers);
                        // The status is part of the answer: it too goes
                        // to the caller only while the consent holds.
                        let consent = relay.consent.as_ref().map(|hold| hold.consent.check());
                        if let Some(Err(refusal)) = consent {
                            relay
                                .origin
                                .own(GatewayError::from(refusal).into_trailers())
                        } else if !trailers.contains_key("grpc-status") {
                            relay.own(no_status(&relay.provider))
                        } else {
                            trailers
                        }
                    }
                    Err(mut frame) => {
                        if let Some(hold) = relay.consent.as_mut()
                            && let Some(data) = frame.data_ref()
                            && let Some(end) = hold.end_in(data)
                        {
                            if end == 0 {
                                continue;
                            }
                            frame = Frame::data(data.slice(..end));
                        }
                        if let Some(data) = frame.data_ref() {
                            if let Some(audit) = relay.audit.as_mut() {
                                audit.response.count(data);
                            }
                            // Given as JSON once converted: nothing is given,
                            // nor the consent's use spent, before.
                            if let Some(json) = this.json.as_mut() {
                                match json.take(data) {
                                    Ok(lines) if lines.is_empty() => continue,
                                    Ok(lines) => {
                                        if let Some(counted) = relay.counted.as_mut() {
                                            counted.relayed(lines.len());
                                        }
                                        return Poll::Ready(Some(Ok(Frame::data(lines))));
                                    }
                                    Err(error) => {
                                        break relay.own(error);
                                    }
                                }
                            }
                            if let Some(counted) = relay.counted.as_mut() {
                                counted.relayed(data.len());
                            }
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                None => relay.own(no_status(&relay.provider)),
                // The request side may have failed on purpose first.
                Some(Err(error)) => {
                    let error =
                        call_end
                            .refusal()
                            .unwrap_or_else(|| GatewayError::UpstreamFailed {
                                provider: relay.provider.clone(),
                                detail: error.to_string(),
                            });
                    relay.own(error)
                }
            };
        };
        upstream.stream = None;
        drop(upstream);
        relay.watchdog.abort();
        // A JSON answer is given once its status says it is whole, or its
        // status becomes the gateway's `bad-answer`: the outcome, metrics
        // and consent see what the caller does.
        let mut given = None;
        if let Some(json) = this.json.as_mut() {
            match json.end(&trailers) {
                Ok(json) => given = json,
                Err(error) => instead(&mut trailers, relay.own(error)),
            }
        }
        let Some(given) = given else {
            relay.count_end(&trailers);
            return end(&mut relay.audit, trailers, cx);
        };
        // The trailers follow, once the outcome is durable; the caller has
        // the answer only with them.
        if let Some(audit) = relay.audit.as_mut() {
            audit.settle = relay.counted.take().map(|counted| (counted, given.len()));
            audit.write(trailers);
        } else {
            if let Some(mut counted) = relay.counted.take() {
                counted.relayed(given.len());
                counted.finish(Ending::Trailers(&trailers));
            }
            if let Some(json) = this.json.as_mut() {
                json.ending = Some(trailers);
            }
        }
        Poll::Ready(Some(Ok(Frame::data(given))))
    }

    fn is_end_stream(&self) -> bool {
        if self.json.as_ref().is_some_and(|json| json.ending.is_some()) {
            return false;
        }
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
        if self.json.is_some() {
            // Its JSON, whatever the message's size.
            return SizeHint::default();
        }
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

    /// A gRPC message whose field 1 is `nin`.
    fn message(nin: &str) -> Vec<u8> {
        let mut body = vec![0x0a, u8::try_from(nin.len()).unwrap()];
        body.extend_from_slice(nin.as_bytes());
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    }

    fn guard() -> SubjectGuard {
        SubjectGuard::new("1234567890123", SubjectField::new(1), Bytes::new())
    }

    #[test]
    fn the_guard_relays_whole_messages_however_they_are_split() {
        let a = message("1234567890123");
        let two: Vec<u8> = [a.clone(), a.clone()].concat();
        let mut guard = guard();
        // Both messages in one frame.
        assert_eq!(guard.pass(Bytes::from(two.clone())).unwrap(), two);
        // One and a half, then the rest: the half waits.
        let (first, rest) = two.split_at(a.len() + 7);
        assert_eq!(guard.pass(Bytes::copy_from_slice(first)).unwrap(), a);
        assert_eq!(guard.pass(Bytes::copy_from_slice(rest)).unwrap(), a);
        // Byte by byte.
        let mut relayed = Vec::new();
        for byte in &a {
            relayed.extend_from_slice(&guard.pass(Bytes::copy_from_slice(&[*byte])).unwrap());
        }
        assert_eq!(relayed, a);
        assert!(guard.held.is_empty());
    }

    #[test]
    fn the_guard_refuses_a_message_about_someone_else_before_relaying_it() {
        let mut guard = guard();
        let mixed = [message("1234567890123"), message("9999999999999")].concat();
        assert!(matches!(
            guard.pass(Bytes::from(mixed)),
            Err(ConsentRefusal::SubjectMismatch(_))
        ));
        // A message naming nobody is not about the consent's subject.
        let mut guard = self::guard();
        let nobody = [0, 0, 0, 0, 0];
        assert!(guard.pass(Bytes::copy_from_slice(&nobody)).is_err());
    }

    #[test]
    fn framing_finds_where_each_answer_message_starts_however_it_is_split() {
        let a = message("1234567890123");
        let empty = [0, 0, 0, 0, 0];
        let three: Vec<u8> = [a.clone(), empty.to_vec(), a.clone()].concat();
        let mut framing = Framing::default();
        assert_eq!(framing.first_start(&three), Some(0));
        // Inside the first message, then from its last byte on.
        assert_eq!(framing.first_start(&a[..9]), Some(0));
        assert_eq!(framing.first_start(&a[9..a.len() - 1]), None);
        // An empty message whose prefix is split: the next message starts
        // right after its last byte.
        assert_eq!(framing.first_start(&[a[a.len() - 1], 0, 0]), Some(1));
        assert_eq!(framing.first_start(&[0, 0, 0]), None);
        assert_eq!(framing.first_start(&a[..2]), Some(0));
        assert_eq!(framing.first_start(&a[2..]), None);
        // Byte by byte: one start a message.
        let starts = three
            .iter()
            .filter(|byte| framing.first_start(&[**byte]).is_some())
            .count();
        assert_eq!(starts, 3);
    }

    #[test]
    fn the_guard_refuses_what_it_cannot_read() {
        let mut compressed = message("1234567890123");
        compressed[0] = 1;
        assert!(guard().pass(Bytes::from(compressed)).is_err());
        // Announced larger than 64 KiB: refused from the prefix alone.
        let huge = [0, 0, 1, 0, 1];
        assert!(guard().pass(Bytes::copy_from_slice(&huge)).is_err());
    }

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
