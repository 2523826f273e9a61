//! JSON calls: a partner without gRPC calls a published method over HTTPS
//! (HTTP/1.1 or HTTP/2, mutual TLS with the same member certificate) with
//! a JSON body, on the method's default route (`POST
//! /package.Service/Method`) or one of its `google.api.http` routes.
//!
//! The request becomes the gRPC call it stands for and takes the whole
//! request path unchanged: admission, the `bridge-*` headers, policy,
//! consent bound to the data subject, limits, the exchange log (whose
//! record says the call came as JSON) and forwarding. The answer comes back
//! as JSON: one object for a unary method, one object per line (NDJSON) for
//! a server-streaming one; a client-streaming method takes its messages as
//! NDJSON lines of the request body. A refusal is a JSON error with the
//! HTTP status Google's API conventions give its gRPC status.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, Limited};
use prost_reflect::{FieldDescriptor, MessageDescriptor, MethodDescriptor};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use tonic::Code;

use super::GatewayError;
use super::body::{CallerBody, ResponseBody};
use super::service::GatewayService;
use super::state::GatewayState;
use crate::catalog::json::convert::{self, BadRequest};
use crate::catalog::json::{BodyRule, Matched, NoRoute};
use crate::identity::MemberId;
use crate::wire::headers::{self, names};

/// The largest JSON request body read: JSON is some two to three times
/// its protobuf, and the call's message size limit applies after.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// What the JSON requests being transcoded at once may hold in memory,
/// by estimate ([`room_for`]): parsed, a body of small values takes tens
/// of times its size (`[[],[],...]`), where the gRPC path holds at most
/// a message prefix.
const TRANSCODING_BUDGET: usize = 256 * 1024 * 1024;

/// What one member's JSON requests may hold of [`TRANSCODING_BUDGET`] at
/// once: its calls wait behind each other, never the other members'
/// (the budget is taken first come, first served). A body needing more
/// is refused.
const MEMBER_ROOM: usize = TRANSCODING_BUDGET / 4;

/// The most one JSON value takes once parsed, with its key and the
/// message field it becomes.
const BYTES_PER_VALUE: usize = 160;

static TRANSCODING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(TRANSCODING_BUDGET);

/// Each member's [`MEMBER_ROOM`], while any of its calls holds some.
static MEMBER_ROOMS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<MemberId, Arc<tokio::sync::Semaphore>>>,
> = std::sync::LazyLock::new(Default::default);

/// Room to transcode a body in: some of its member's share, and as much
/// of the whole budget.
struct Room {
    member: MemberId,
    share: Arc<tokio::sync::Semaphore>,
    held: Option<(
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::SemaphorePermit<'static>,
    )>,
}

impl Room {
    /// `room` bytes for a body of `member`'s: from its share first, then
    /// from the whole budget; more than a share is refused.
    async fn take(member: &MemberId, room: usize) -> Result<Self, BadRequest> {
        if room > MEMBER_ROOM {
            return Err(BadRequest {
                field: None,
                message: format!(
                    "the request body holds too many JSON values to convert at once (about \
                     {room} bytes once parsed, at most {MEMBER_ROOM}): send it in smaller calls"
                ),
            });
        }
        let share = {
            let mut rooms = MEMBER_ROOMS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(
                rooms
                    .entry(member.clone())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MEMBER_ROOM))),
            )
        };
        let permits = u32::try_from(room).unwrap_or(u32::MAX);
        // Neither semaphore is ever closed.
        let own = Arc::clone(&share).acquire_many_owned(permits).await;
        let all = TRANSCODING.acquire_many(permits).await;
        Ok(Self {
            member: member.clone(),
            share,
            held: own.ok().zip(all.ok()),
        })
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.held = None;
        // A share no call holds is forgotten: members come and go.
        let mut rooms = MEMBER_ROOMS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if Arc::strong_count(&self.share) == 2 && self.share.available_permits() == MEMBER_ROOM {
            rooms.remove(&self.member);
        }
    }
}

/// The room transcoding `body` may take, at most: a share of
/// [`TRANSCODING_BUDGET`].
fn room_for(body: &[u8]) -> usize {
    json_values(body)
        .saturating_mul(BYTES_PER_VALUE)
        .saturating_add(body.len().saturating_mul(2))
        .min(TRANSCODING_BUDGET)
}

/// How many values and keys `body` holds at most, read as JSON: one more
/// than its separators and openings outside strings.
fn json_values(body: &[u8]) -> usize {
    let (mut values, mut in_string, mut escaped) = (1_usize, false, false);
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' | b',' | b':' | b'\n' => values += 1,
                _ => {}
            }
        }
    }
    values
}

/// The largest answer message transcoded: the gRPC path relays bytes
/// without holding them, this one holds a message whole, then its JSON.
const MAX_ANSWER_MESSAGE: usize = 16 * 1024 * 1024;

/// The `bridge-error` of an answer the gateway cannot give as JSON: a
/// `502`, the provider's fault.
const BAD_ANSWER: &str = "bad-answer";

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const NDJSON: HeaderValue = HeaderValue::from_static("application/x-ndjson");

/// Headers of the HTTP request that are about its transport or its JSON,
/// not the call: not carried into the gRPC call (HTTP/1.1's
/// connection-specific ones are not even allowed in HTTP/2).
const NOT_CARRIED: [HeaderName; 11] = [
    http::header::CONTENT_TYPE,
    http::header::CONTENT_LENGTH,
    http::header::ACCEPT,
    http::header::ACCEPT_ENCODING,
    http::header::CONNECTION,
    http::header::TRANSFER_ENCODING,
    http::header::TE,
    http::header::HOST,
    http::header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Answers one JSON request.
pub(super) async fn serve(
    service: GatewayService,
    request: Request<CallerBody>,
) -> Response<ResponseBody> {
    // A malformed id is refused as the gRPC call's would be: once the
    // caller is admitted (before, it would let anyone write to the
    // exchange log), under an id of the gateway's.
    let (request_id, bad_request_id) = match headers::request_id(request.headers()) {
        Ok(id) => (id, None),
        Err(error) => (headers::fresh_request_id(), Some(BadRequestId(error))),
    };
    let state = service.state.load_full();
    if request.uri().path() == "/openapi.json" {
        if request.method() == Method::GET {
            return openapi(&service, &state, &request, &request_id);
        }
        let mut answer = Failure::new(
            Code::Unimplemented,
            format!("/openapi.json is not a route for {}", request.method()),
        )
        .status(StatusCode::METHOD_NOT_ALLOWED)
        .kind("no-json-route")
        .respond(&request_id);
        answer
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET"));
        return answer;
    }
    let routes = state.catalog.json_routes();
    let path = request.uri().path().to_owned();
    let matched = match routes.find(request.method(), &path) {
        Ok(matched) => matched,
        Err(NoRoute::Path) => {
            return Failure::new(
                Code::NotFound,
                format!(
                    "no JSON route is {} {path}: a method's default route is POST \
                     /package.Service/Method with the request as its JSON body",
                    request.method()
                ),
            )
            .status(StatusCode::NOT_FOUND)
            .kind("no-json-route")
            .respond(&request_id);
        }
        Err(NoRoute::Verb(allowed)) => {
            let mut answer = Failure::new(
                Code::Unimplemented,
                format!("{path} is not a route for {}", request.method()),
            )
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .kind("no-json-route")
            .respond(&request_id);
            // RFC 9110: a 405 says which methods the resource takes.
            let allowed: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            if let Ok(allow) = HeaderValue::from_str(&allowed.join(", ")) {
                answer.headers_mut().insert(http::header::ALLOW, allow);
            }
            return answer;
        }
    };
    let (parts, body) = request.into_parts();
    let streams = matched.method.is_server_streaming();
    // The answer is converted where the call ends, so that one the gateway
    // cannot give is the call's outcome (`ResponseBody::transcode`).
    let answer = JsonAnswer {
        output: matched.method.output(),
        response_body: matched.response_body.cloned(),
        streams,
    };
    // The body is read and converted in the call path, once the caller is
    // admitted and within its limits (`Call::transcode`).
    let json = JsonCall {
        method: matched.method.clone(),
        body: matched.body.clone(),
        bound: matched.bound.clone(),
        query: parts.uri.query().map(str::to_owned),
        content_type: parts.headers.get(CONTENT_TYPE).cloned(),
        read: Arc::default(),
        answer,
    };
    let read = Arc::clone(&json.read);
    // An HTTP/1.1 request whose body is left unread (refused before it was
    // read, or too large) ends its connection: the next request's start
    // is somewhere in what was not read. Said in the answer, so that the
    // client does not send its next request on it (a keep-alive race it
    // would see as a connection closed under it).
    let unread = parts.version < Version::HTTP_2 && !body.is_end_stream();
    let grpc_path = format!(
        "/{}/{}",
        matched.method.parent_service().full_name(),
        matched.method.name()
    );
    let grpc = grpc_request(&grpc_path, &parts.headers, &request_id, body);
    let Ok(mut grpc) = grpc else {
        return Failure::new(
            Code::Internal,
            "the call could not be put together".to_owned(),
        )
        .respond(&request_id);
    };
    grpc.extensions_mut().insert(json);
    if let Some(bad) = bad_request_id {
        grpc.extensions_mut().insert(bad);
    }
    let response = service.handle(grpc, true).await;
    let refused_as_bad = response
        .headers()
        .get(headers::BRIDGE_ERROR)
        .is_some_and(|kind| kind == "bad-json");
    let mut answer = if let Some(bad) = read.refused.get().filter(|_| refused_as_bad) {
        let mut answer = Failure::bad_request(bad.clone()).respond(&request_id);
        // The refusal is in the log: where, and whose log, as for any.
        for name in [names::BRIDGE_AUDIT_INDEX, names::BRIDGE_INSTANCE] {
            if let Some(value) = response.headers().get(&name) {
                answer.headers_mut().insert(name, value.clone());
            }
        }
        answer
    } else if streams {
        stream_answer(response, &request_id).await
    } else {
        unary_answer(response, &request_id).await
    };
    if unread && !read.drained.load(std::sync::atomic::Ordering::Acquire) {
        answer
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    answer
}

/// `GET /openapi.json`: the operations the caller's policies may permit.
fn openapi(
    service: &GatewayService,
    state: &Arc<GatewayState>,
    request: &Request<CallerBody>,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    // Read as a call is admitted: by a registered member of this instance
    // (another instance's members, its gateway included, call through
    // their own instance's gateway) whom some policy may permit; refused,
    // the connection closes.
    let member = match &service.peer.member {
        Ok(member) if member.instance() != state.federation.instance => {
            Err(GatewayError::ForeignMember {
                member: member.clone(),
                instance: member.instance().to_owned(),
            })
        }
        Ok(member) if !state.registry().contains_key(member) => {
            Err(GatewayError::UnknownMember(member.clone()))
        }
        Ok(member) if !state.policy.may_be_permitted(member) => {
            Err(GatewayError::NoPermits(member.clone()))
        }
        Ok(member) => Ok(member),
        Err(reason) => Err(GatewayError::NoMemberIdentity(reason.clone())),
    };
    let member = match member {
        Ok(member) => member,
        Err(refused) => {
            service.peer.control.close();
            return Failure::refusal(&refused).respond(request_id);
        }
    };
    let authority = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|host| host.to_str().ok())
                .map(str::to_owned)
        });
    // Within the member's limits, as its calls are.
    let _permit = match state.limits.permit(member) {
        Ok(permit) => permit,
        Err(refused) => {
            service.metrics.limit_refusal(member, refused.kind());
            return Failure::refusal(&refused).respond(request_id);
        }
    };
    let server = authority.map(|authority| format!("https://{authority}"));
    let days_left = service.peer.certificate_days_left(crate::unix_time::now());
    let key = (member.clone(), days_left);
    let kept = state.openapi.get_or_build(key, || {
        let local = crate::directory::LocalContext {
            caller: member.clone(),
            state: state.clone(),
            certificate_days_left: days_left,
            log: service.log.clone(),
            current: service.state.clone(),
        }
        .json_local_services();
        crate::directory::openapi(
            state.policy(),
            &state.catalog,
            member,
            days_left,
            (None, &local),
            None,
        )
    });
    let body = match server {
        Some(server) => {
            let mut document = (*kept).clone();
            crate::catalog::json::openapi::name_server(&mut document, &server);
            serde_json::to_vec_pretty(&document)
        }
        None => serde_json::to_vec_pretty(&*kept),
    };
    whole(
        StatusCode::OK,
        APPLICATION_JSON,
        bytes::Bytes::from(body.unwrap_or_default()),
        request_id,
    )
}

/// What the call path needs to turn a JSON call's body into its request
/// messages (`Call::transcode`): put in the extensions of the gRPC
/// request the JSON call becomes.
#[derive(Debug, Clone)]
pub(super) struct JsonCall {
    method: MethodDescriptor,
    body: BodyRule,
    bound: Result<Vec<(String, String)>, String>,
    query: Option<String>,
    content_type: Option<HeaderValue>,
    /// What reading the body came to, for the answer.
    read: Arc<BodyRead>,
    /// How the answer becomes JSON.
    answer: JsonAnswer,
}

/// How a method's answer becomes JSON: one object, or a line (NDJSON) per
/// message of a stream. It is converted in the response body, where the
/// call ends (`ResponseBody::transcode`): a message the gateway cannot give
/// then ends the call, logged as the gateway's `bad-answer` instead of the
/// backend's `OK`, and spends the consent's use only if lines went out
/// before it.
#[derive(Debug, Clone)]
pub(super) struct JsonAnswer {
    output: MessageDescriptor,
    response_body: Option<FieldDescriptor>,
    /// Server streaming: each message a line, given as it comes.
    streams: bool,
}

impl JsonAnswer {
    /// The most of an answer held: one message and its prefix.
    pub(super) const MOST: usize = 5 + MAX_ANSWER_MESSAGE;

    /// Why an answer over [`Self::MOST`] is not given.
    pub(super) fn too_large() -> String {
        format!(
            "the provider's answer is larger than the {MAX_ANSWER_MESSAGE} bytes the gateway \
             transcodes"
        )
    }

    /// Whether each message is a line, given as it comes.
    pub(super) fn streams(&self) -> bool {
        self.streams
    }

    /// The NDJSON lines of the whole messages at the start of `framed`,
    /// which keeps the rest, and why the answer stops there, at the first
    /// that is not a message of the method's response: the lines before it
    /// are still the caller's.
    pub(super) fn lines(&self, framed: &mut BytesMut) -> (Bytes, Option<String>) {
        let mut messages = Messages {
            buffer: std::mem::take(framed),
        };
        let mut lines = Vec::new();
        let mut failed = None;
        for message in messages.by_ref() {
            let line = message.and_then(|message| {
                convert::response_json(&self.output, &message, self.response_body.as_ref())
            });
            match line {
                Ok(line) => {
                    lines.extend_from_slice(&line);
                    lines.push(b'\n');
                }
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        *framed = messages.buffer;
        (Bytes::from(lines), failed)
    }

    /// `framed`, the whole of a gRPC answer's messages, as JSON; why not,
    /// unless it is one message of the method's response.
    pub(super) fn convert(&self, framed: BytesMut) -> Result<Bytes, String> {
        if framed.len() > Self::MOST {
            return Err(Self::too_large());
        }
        let mut messages = Messages { buffer: framed };
        match messages.next() {
            Some(Ok(message)) if messages.buffer.is_empty() => {
                convert::response_json(&self.output, &message, self.response_body.as_ref())
                    .map(Bytes::from)
            }
            Some(Err(error)) => Err(error),
            _ => Err("the provider's answer is not one message".to_owned()),
        }
    }
}

/// What reading a JSON call's body came to.
#[derive(Debug, Default)]
struct BodyRead {
    /// Why the body was refused, for the answer's `field`.
    refused: OnceLock<BadRequest>,
    /// Set once the body was read to its end.
    drained: std::sync::atomic::AtomicBool,
}

impl JsonCall {
    /// How the answer becomes JSON.
    pub(super) fn into_answer(self) -> JsonAnswer {
        self.answer
    }

    /// Reads the JSON body (up to [`MAX_BODY`]) and makes the request
    /// messages; a mistake is kept for the answer and refuses the call.
    pub(super) async fn read(
        &self,
        body: CallerBody,
        caller: &MemberId,
    ) -> Result<Bytes, GatewayError> {
        self.messages(body, caller).await.map_err(|bad| {
            let message = bad.message.clone();
            let _ = self.read.refused.set(bad);
            GatewayError::BadJson(message)
        })
    }

    async fn messages(&self, body: CallerBody, caller: &MemberId) -> Result<Bytes, BadRequest> {
        let collected = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .inspect(|_| {
                self.read
                    .drained
                    .store(true, std::sync::atomic::Ordering::Release)
            })
            .map_err(|error| {
                let message = if error.is::<http_body_util::LengthLimitError>() {
                    format!("the request body is larger than {MAX_BODY} bytes")
                } else {
                    format!("the request body could not be read: {error}")
                };
                BadRequest {
                    field: None,
                    message,
                }
            })?
            .to_bytes();
        // A body must say it is JSON: a browser's cross-site form post
        // (text/plain) is not a partner's call.
        let is_json = self
            .content_type
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|media| {
                let media = media.trim();
                media.eq_ignore_ascii_case("application/json")
                    || media.eq_ignore_ascii_case("application/x-ndjson")
            });
        if !collected.is_empty() && !is_json {
            return Err(BadRequest {
                field: None,
                message: "a request body must be JSON: content-type: application/json (or \
                          application/x-ndjson for a stream)"
                    .to_owned(),
            });
        }
        let matched = Matched {
            method: &self.method,
            body: &self.body,
            response_body: None,
            bound: self.bound.clone(),
        };
        // Held while the body is parsed and converted.
        let _room = Room::take(caller, room_for(&collected)).await?;
        convert::request_messages(&matched, self.query.as_deref(), &collected)
    }
}

/// The gRPC request a JSON call stands for: the caller's headers (its
/// `bridge-*` declarations, `traceparent`, `grpc-timeout`) with gRPC's own.
fn grpc_request(
    path: &str,
    from: &HeaderMap,
    request_id: &HeaderValue,
    body: CallerBody,
) -> Result<Request<CallerBody>, http::Error> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .version(Version::HTTP_2)
        .body(body)?;
    // HTTP/1.1 may name more hop-by-hop headers in `connection`.
    let hop_by_hop: Vec<String> = from
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let headers = request.headers_mut();
    for (name, value) in from {
        if !NOT_CARRIED.contains(name)
            && !name.as_str().starts_with("grpc-")
            && !hop_by_hop.iter().any(|hop| hop == name.as_str())
        {
            headers.append(name, value.clone());
        }
    }
    if let Some(timeout) = from.get(headers::GRPC_TIMEOUT) {
        headers.insert(headers::GRPC_TIMEOUT, timeout.clone());
    }
    // The id the caller gave, or the one its errors would have named.
    headers.insert(names::BRIDGE_REQUEST_ID, request_id.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    Ok(request)
}

/// A JSON request's malformed `bridge-request-id`, for the call that
/// refuses it once its caller is admitted.
#[derive(Debug, Clone)]
pub(super) struct BadRequestId(pub(super) crate::wire::WireError);

/// A gRPC status as the end of a JSON call.
#[derive(Debug)]
struct Failure {
    code: Code,
    message: String,
    bridge_error: Option<String>,
    field: Option<String>,
    http: StatusCode,
    /// Headers of the gRPC answer worth passing on (`bridge-instance`,
    /// `bridge-audit-index`).
    headers: HeaderMap,
}

impl Failure {
    fn new(code: Code, message: String) -> Self {
        Self {
            code,
            message,
            bridge_error: None,
            field: None,
            http: http_status(code),
            headers: HeaderMap::new(),
        }
    }

    /// A refusal of the gateway's, as a gRPC call would end with it.
    fn refusal(error: &GatewayError) -> Self {
        let mut failure = Self::new(error.code(), error.to_string()).kind(error.kind());
        if let Some(wait) = error.retry_after() {
            let seconds = wait.as_millis().div_ceil(1000).max(1);
            failure.headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(u64::try_from(seconds).unwrap_or(u64::MAX)),
            );
        }
        failure
    }

    fn bad_request(error: BadRequest) -> Self {
        let mut failure = Self::new(Code::InvalidArgument, error.message);
        failure.field = error.field;
        failure.bridge_error = Some("bad-json".to_owned());
        failure
    }

    /// The status a gRPC answer ended with (trailers, or headers of a
    /// trailers-only answer).
    fn of(status: &HeaderMap) -> Option<Self> {
        let code = status
            .get("grpc-status")
            .and_then(|value| value.to_str().ok()?.parse::<i32>().ok())?;
        let code = Code::from_i32(code);
        let message = status
            .get("grpc-message")
            .map(|value| {
                percent_encoding::percent_decode(value.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let mut failure = Self::new(code, message);
        failure.bridge_error = status
            .get(headers::BRIDGE_ERROR)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        if failure.bridge_error.as_deref() == Some(BAD_ANSWER) {
            failure.http = StatusCode::BAD_GATEWAY;
        }
        failure.http = too_large(failure.bridge_error.as_deref()).unwrap_or(failure.http);
        for name in [names::BRIDGE_INSTANCE, names::BRIDGE_AUDIT_INDEX] {
            if let Some(value) = status.get(&name) {
                failure.headers.insert(name, value.clone());
            }
        }
        // gRPC's pushback, in HTTP's words (whole seconds, rounded up).
        if let Some(millis) = status
            .get("grpc-retry-pushback-ms")
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        {
            failure.headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(millis.div_ceil(1000)),
            );
        }
        Some(failure)
    }

    fn status(mut self, status: StatusCode) -> Self {
        self.http = status;
        self
    }

    fn kind(mut self, kind: &str) -> Self {
        self.http = too_large(Some(kind)).unwrap_or(self.http);
        self.bridge_error = Some(kind.to_owned());
        self
    }

    /// The provider's answer cannot be read as its method's response.
    fn bad_answer(message: String) -> Self {
        Self::new(Code::Internal, message)
            .status(StatusCode::BAD_GATEWAY)
            .kind(BAD_ANSWER)
    }

    fn json(&self, request_id: &HeaderValue) -> Vec<u8> {
        let body = serde_json::json!({
            "code": self.code as i32,
            "status": crate::telemetry::metrics::code_name(self.code as i32),
            "message": self.message,
            "bridge_error": self.bridge_error,
            "field": self.field,
            "request_id": request_id.to_str().unwrap_or_default(),
        });
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    fn respond(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let body = self.json(request_id);
        let mut response = whole(self.http, APPLICATION_JSON, body, request_id);
        if let Some(kind) = &self.bridge_error
            && let Ok(kind) = HeaderValue::from_str(kind)
        {
            response.headers_mut().insert(names::BRIDGE_ERROR, kind);
        }
        response.headers_mut().extend(self.headers);
        response
    }
}

fn whole(
    status: StatusCode,
    content_type: HeaderValue,
    body: impl Into<Bytes>,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::local(tonic::body::Body::new(Full::new(
        body.into(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
        .headers_mut()
        .insert(names::BRIDGE_REQUEST_ID, request_id.clone());
    response
}

/// A unary answer: read whole (its outcome is then in the exchange log),
/// then the JSON the response body converted its message to, or the
/// status as an error.
async fn unary_answer(
    response: Response<ResponseBody>,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let (parts, mut body) = response.into_parts();
    if let Some(failure) = Failure::of(&parts.headers)
        && failure.code != Code::Ok
    {
        return failure.respond(request_id);
    }
    if !body.is_transcoded() {
        // Every path that answers a JSON call converts; fail closed should
        // one not.
        return Failure::new(Code::Internal, "the answer was not converted".to_owned())
            .respond(request_id);
    }
    let mut json = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame;
        match frame.into_data() {
            Ok(chunk) => json.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let ended = trailers
        .as_ref()
        .or(Some(&parts.headers))
        .and_then(Failure::of);
    let Some(ended) = ended else {
        return Failure::bad_answer("the provider's answer ended without a status".to_owned())
            .respond(request_id);
    };
    if ended.code != Code::Ok {
        let mut ended = ended;
        ended.headers = with_decision(&parts.headers, ended.headers);
        return ended.respond(request_id);
    }
    let mut response = whole(StatusCode::OK, APPLICATION_JSON, json.freeze(), request_id);
    response
        .headers_mut()
        .extend(with_decision(&parts.headers, ended.headers));
    response
}

/// The headers of a forwarded call's end: `bridge-audit-index` gives the
/// decision's index (from the gRPC headers), then the outcome's (from its
/// trailers), as a gRPC client reads them.
fn with_decision(grpc_headers: &HeaderMap, ended: HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(decision) = grpc_headers.get(names::BRIDGE_AUDIT_INDEX) {
        headers.append(names::BRIDGE_AUDIT_INDEX, decision.clone());
    }
    for (name, value) in &ended {
        headers.append(name, value.clone());
    }
    headers
}

/// A server-streaming answer: an error before the first message is an
/// error response; after it, the answer is `200` and each message a line,
/// and a failure ends it with a last line `{"error": {...}}`.
async fn stream_answer(
    response: Response<ResponseBody>,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let (parts, mut body) = response.into_parts();
    // A status in the headers is the whole answer: an error, or a stream
    // that ended with no message.
    if let Some(failure) = Failure::of(&parts.headers) {
        if failure.code != Code::Ok {
            return failure.respond(request_id);
        }
        let mut response = whole(StatusCode::OK, NDJSON, Vec::new(), request_id);
        response.headers_mut().extend(failure.headers);
        return response;
    }
    if !body.is_transcoded() {
        return Failure::new(Code::Internal, "the answer was not converted".to_owned())
            .respond(request_id);
    }
    // Wait for the first frame: a status that comes before any message is
    // the answer's HTTP status.
    let first = body.frame().await.map(|Ok(frame)| frame);
    if let Some(trailers) = first.as_ref().and_then(Frame::trailers_ref)
        && let Some(failure) = Failure::of(trailers)
        && failure.code != Code::Ok
    {
        return failure.respond(request_id);
    }
    let lines = NdJson {
        first,
        body,
        request_id: request_id.clone(),
        done: false,
    };
    let mut response = Response::new(ResponseBody::local(tonic::body::Body::new(lines)));
    if let Some(decision) = parts.headers.get(names::BRIDGE_AUDIT_INDEX) {
        response
            .headers_mut()
            .insert(names::BRIDGE_AUDIT_INDEX, decision.clone());
    }
    response.headers_mut().insert(CONTENT_TYPE, NDJSON);
    response
        .headers_mut()
        .insert(names::BRIDGE_REQUEST_ID, request_id.clone());
    response
}

/// gRPC length-prefixed messages out of a byte stream.
#[derive(Debug, Default)]
struct Messages {
    buffer: BytesMut,
}

impl Iterator for Messages {
    /// A message, or why the answer cannot be read.
    type Item = Result<Bytes, String>;

    /// The next whole message; `None` until one is.
    fn next(&mut self) -> Option<Result<Bytes, String>> {
        let prefix = self.buffer.get(..5)?;
        if prefix[0] != 0 {
            return Some(Err(
                "the provider answered with a compressed message, which the \
                 gateway does not transcode"
                    .to_owned(),
            ));
        }
        let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if length > MAX_ANSWER_MESSAGE {
            return Some(Err(format!(
                "the provider's answer has a message of {length} bytes, more than the \
                 {MAX_ANSWER_MESSAGE} the gateway transcodes"
            )));
        }
        if self.buffer.len() < 5 + length {
            return None;
        }
        self.buffer.advance(5);
        Some(Ok(self.buffer.split_to(length).freeze()))
    }
}

/// The NDJSON body of a server-streaming answer: the lines the response
/// body converted, then an error line if the stream failed.
struct NdJson {
    /// The frame read before answering, passed on first.
    first: Option<Frame<Bytes>>,
    body: ResponseBody,
    request_id: HeaderValue,
    done: bool,
}

impl NdJson {
    /// What a frame gives the caller: its lines, or after a status that
    /// is not `OK`, an error line; `done` after a status.
    fn lines(&mut self, frame: Frame<Bytes>) -> Bytes {
        match frame.into_data() {
            Ok(lines) => lines,
            Err(frame) => {
                let ended = frame
                    .trailers_ref()
                    .and_then(Failure::of)
                    .unwrap_or_else(|| {
                        Failure::bad_answer(
                            "the provider's answer ended without a status".to_owned(),
                        )
                    });
                let mut out = Vec::new();
                if ended.code != Code::Ok {
                    self.failed(&ended, &mut out);
                }
                self.done = true;
                Bytes::from(out)
            }
        }
    }

    fn failed(&mut self, failure: &Failure, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"error\":");
        out.extend_from_slice(failure.json(&self.request_id).trim_ascii_end());
        out.extend_from_slice(b"}\n");
        self.done = true;
    }
}

impl Body for NdJson {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let frame = match self.first.take() {
                Some(frame) => Some(frame),
                None => ready!(Pin::new(&mut self.body).poll_frame(cx)).map(|Ok(frame)| frame),
            };
            let Some(frame) = frame else {
                let mut out = Vec::new();
                let failure =
                    Failure::bad_answer("the provider's answer ended without a status".to_owned());
                self.failed(&failure, &mut out);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            };
            let lines = self.lines(frame);
            if !lines.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(lines))));
            }
        }
    }
}

/// 413 for a refusal of what the request holds: `RESOURCE_EXHAUSTED` is
/// 429 otherwise, which HTTP clients retry by themselves, and the same
/// request would be refused again.
fn too_large(kind: Option<&str>) -> Option<StatusCode> {
    matches!(kind, Some("message-too-large" | "too-many-subjects"))
        .then_some(StatusCode::PAYLOAD_TOO_LARGE)
}

/// The HTTP status of a gRPC status, as Google's API conventions map them
/// (google.rpc.Code).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_of_small_values_asks_for_room_by_its_values() {
        // Separators inside strings are not values.
        assert_eq!(json_values(br#"{"a":"x,y:[{","b":[1,2]}"#), 7);
        assert_eq!(json_values(br#"{"a":"\"]"}"#), 3);
        let nested = b"[[],[],[],[]]";
        assert_eq!(json_values(nested), 9);
        // A body of empty arrays takes far more room than its bytes.
        let flood: Vec<u8> = std::iter::once(b'[')
            .chain(std::iter::repeat_n(*b"[],", 100_000).flatten())
            .chain(*b"[]]")
            .collect();
        assert!(room_for(&flood) > 40 * flood.len());
        // No request asks for more than the whole budget.
        let huge = vec![b','; TRANSCODING_BUDGET];
        assert_eq!(room_for(&huge), TRANSCODING_BUDGET);
    }

    /// A member holding its whole share makes its own next body wait,
    /// not another member's; more than a share is refused, and a share
    /// no call holds is forgotten.
    #[tokio::test]
    async fn a_member_waits_for_its_own_room_only() {
        let greedy = MemberId::parse("SN/COM/GREEDY/json").unwrap();
        let other = MemberId::parse("SN/COM/OTHER/json").unwrap();
        let held = Room::take(&greedy, MEMBER_ROOM).await.unwrap();
        let soon = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(soon, Room::take(&greedy, 1))
                .await
                .is_err(),
            "its share is taken"
        );
        let theirs = tokio::time::timeout(soon, Room::take(&other, MEMBER_ROOM / 2))
            .await
            .expect("another member waited for the first's share");
        assert!(theirs.is_ok());
        let refused = Room::take(&other, MEMBER_ROOM + 1).await.err().unwrap();
        assert!(
            refused.message.contains("too many JSON values"),
            "{}",
            refused.message
        );
        drop((held, theirs));
        let rooms = MEMBER_ROOMS.lock().unwrap();
        assert!(!rooms.contains_key(&greedy) && !rooms.contains_key(&other));
    }
}
