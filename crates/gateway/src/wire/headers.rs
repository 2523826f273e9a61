//! The `bridge-*` headers: what a caller may send, what the gateway passes
//! upstream, and the checks between the two.
//!
//! Every `bridge-*` header from a client is removed before a request goes
//! upstream; the gateway then sets its own. A backend can therefore trust
//! `bridge-client`: only the gateway can reach it, and only the gateway
//! writes it.

use std::time::Duration;

use http::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};

use super::WireError;
use super::deadline;
use super::trace_context::TraceContext;
use crate::identity::MemberId;

/// The header an operator's tool sends to the admin endpoint on loopback
/// without a token: a browser sends a custom header cross-site only after a
/// CORS preflight, which that endpoint never grants.
pub const OPERATOR_HEADER: &str = "x-govbridge-admin";

/// A partner gateway's signed assertion of who made the call it forwards
/// (see `crate::federation`).
pub const BRIDGE_ASSERTION: &str = "bridge-assertion";
pub const BRIDGE_AUDIT_INDEX: &str = "bridge-audit-index";
pub const BRIDGE_CLIENT: &str = "bridge-client";
pub const BRIDGE_CONSENT: &str = "bridge-consent";
pub const BRIDGE_CONSENT_ID: &str = "bridge-consent-id";
pub const BRIDGE_ERROR: &str = "bridge-error";
/// The instance whose gateway refused a call (with `bridge-error`).
pub const BRIDGE_INSTANCE: &str = "bridge-instance";
pub const BRIDGE_PURPOSE: &str = "bridge-purpose";
pub const BRIDGE_REASON: &str = "bridge-reason";
pub const BRIDGE_REQUEST_ID: &str = "bridge-request-id";
pub const BRIDGE_TARGET: &str = "bridge-target";
pub const BRIDGE_USER_ID: &str = "bridge-user-id";
pub const GRPC_TIMEOUT: &str = "grpc-timeout";
pub use super::trace_context::TRACEPARENT;

/// The names the gateway writes on every call, made at compile time: a
/// `&str` key is parsed and checked again on each insert.
pub mod names {
    use http::HeaderName;

    pub const BRIDGE_ASSERTION: HeaderName = HeaderName::from_static(super::BRIDGE_ASSERTION);
    pub const BRIDGE_AUDIT_INDEX: HeaderName = HeaderName::from_static(super::BRIDGE_AUDIT_INDEX);
    pub const BRIDGE_ERROR: HeaderName = HeaderName::from_static(super::BRIDGE_ERROR);
    pub const BRIDGE_INSTANCE: HeaderName = HeaderName::from_static(super::BRIDGE_INSTANCE);
    pub const BRIDGE_REASON: HeaderName = HeaderName::from_static(super::BRIDGE_REASON);
    pub const BRIDGE_TARGET: HeaderName = HeaderName::from_static(super::BRIDGE_TARGET);
    pub const BRIDGE_CLIENT: HeaderName = HeaderName::from_static(super::BRIDGE_CLIENT);
    pub const BRIDGE_CONSENT: HeaderName = HeaderName::from_static(super::BRIDGE_CONSENT);
    pub const BRIDGE_PURPOSE: HeaderName = HeaderName::from_static(super::BRIDGE_PURPOSE);
    pub const BRIDGE_REQUEST_ID: HeaderName = HeaderName::from_static(super::BRIDGE_REQUEST_ID);
    pub const BRIDGE_USER_ID: HeaderName = HeaderName::from_static(super::BRIDGE_USER_ID);
    pub const TRACEPARENT: HeaderName = HeaderName::from_static(super::TRACEPARENT);
}

/// Longest accepted `bridge-reason`, in bytes.
pub const MAX_REASON_LEN: usize = 256;
/// Longest accepted `bridge-user-id`, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest accepted `bridge-purpose`, in bytes.
pub const MAX_PURPOSE_LEN: usize = 64;
/// Longest accepted `bridge-consent`, in bytes.
pub const MAX_CONSENT_LEN: usize = 8 * 1024;

/// Whether `code` is a purpose code: `KYC`, `BENEFIT-PAYMENT`.
pub fn is_purpose_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= MAX_PURPOSE_LEN
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// What the caller declared about a call, checked.
#[derive(Debug, Clone)]
pub struct CallHeaders {
    pub purpose: Option<HeaderValue>,
    pub reason: Option<String>,
    pub user_id: Option<HeaderValue>,
    pub consent: Option<HeaderValue>,
    pub target: Option<MemberId>,
    pub timeout: Option<Duration>,
}

fn bad(header: &'static str, reason: impl Into<String>) -> WireError {
    WireError::BadHeader {
        header,
        reason: reason.into(),
    }
}

/// The one value of a header that may appear at most once.
fn single<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a HeaderValue>, WireError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(bad(name, "given more than once"));
    }
    Ok(first)
}

/// The caller's `bridge-request-id`, or a fresh one. The id must be a UUID
/// so that it cannot smuggle anything into logs.
pub fn request_id(headers: &HeaderMap) -> Result<HeaderValue, WireError> {
    match single(headers, BRIDGE_REQUEST_ID)? {
        None => Ok(fresh_request_id()),
        Some(value) => {
            let id = value
                .to_str()
                .ok()
                .and_then(|text| uuid::Uuid::try_parse(text).ok())
                .ok_or_else(|| bad(BRIDGE_REQUEST_ID, "must be a UUID"))?;
            Ok(uuid_header(&id))
        }
    }
}

/// A new request id: a UUIDv7, the time in its first 48 bits and 74
/// random ones after: ordered by time, as the log's records are, and
/// unique without coordination between nodes.
pub fn fresh_request_id() -> HeaderValue {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let now = uuid::Timestamp::from_unix(
        uuid::NoContext,
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
    );
    uuid_header(&uuid::Uuid::new_v7(now))
}

fn uuid_header(id: &uuid::Uuid) -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buffer))
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-0000-0000-000000000000"))
}

/// Whether a request says it is gRPC (`content-type: application/grpc`,
/// with or without a `+proto` suffix); the gateway takes anything else as
/// a JSON call (`crate::json`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// Refuses requests that are not gRPC over HTTP/2 POST.
pub fn check_grpc<B>(request: &Request<B>) -> Result<(), WireError> {
    if request.method() != Method::POST {
        return Err(WireError::NotGrpc("gRPC calls are POST requests"));
    }
    if !is_grpc(request.headers()) {
        return Err(WireError::NotGrpc("content-type must be application/grpc"));
    }
    // Another codec (`+json`, `+cbor`) is refused: the gateway reads each
    // message as protobuf (the data subject a consent is bound to), and a
    // backend that chose its codec by this name would read other bytes.
    // One value only (a backend may read the last), whose parameters
    // (`; charset=...`) say nothing of the codec; the backend is sent
    // `application/grpc` (`upstream_headers`).
    let mut values = request.headers().get_all(CONTENT_TYPE).iter();
    let media = match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|value| value.split(';').next())
            .map(str::trim),
        _ => None,
    };
    if !media.is_some_and(|media| media == "application/grpc" || media == "application/grpc+proto")
    {
        return Err(WireError::NotGrpc(
            "content-type must be application/grpc or application/grpc+proto: messages \
             through the gateway are protobuf",
        ));
    }
    if request.version() != http::Version::HTTP_2 {
        return Err(WireError::NotGrpc("gRPC calls are made over HTTP/2"));
    }
    Ok(())
}

impl CallHeaders {
    /// The declared purpose code, if any.
    pub fn purpose_code(&self) -> Option<&str> {
        self.purpose.as_ref().and_then(|value| value.to_str().ok())
    }

    /// Reads and checks the caller's headers.
    pub fn read(headers: &HeaderMap) -> Result<Self, WireError> {
        let purpose = single(headers, BRIDGE_PURPOSE)?
            .map(|value| {
                let bytes = value.as_bytes();
                let valid = std::str::from_utf8(bytes).is_ok_and(is_purpose_code);
                if valid {
                    Ok(value.clone())
                } else {
                    Err(bad(
                        BRIDGE_PURPOSE,
                        format!(
                            "a purpose code is 1 to {MAX_PURPOSE_LEN} of A-Z, 0-9, '-' and '_'"
                        ),
                    ))
                }
            })
            .transpose()?;
        let reason = single(headers, BRIDGE_REASON)?
            .map(|value| {
                let text = std::str::from_utf8(value.as_bytes())
                    .map_err(|_| bad(BRIDGE_REASON, "must be UTF-8"))?;
                if text.len() > MAX_REASON_LEN {
                    return Err(bad(
                        BRIDGE_REASON,
                        format!("at most {MAX_REASON_LEN} bytes"),
                    ));
                }
                if text
                    .chars()
                    .any(|c| crate::wire::escape::is_unsafe(c) || is_invisible(c))
                {
                    return Err(bad(BRIDGE_REASON, "must be printable text"));
                }
                if text.trim().is_empty() {
                    return Err(bad(BRIDGE_REASON, "must say why, not be blank"));
                }
                Ok(text.to_owned())
            })
            .transpose()?;
        let user_id = single(headers, BRIDGE_USER_ID)?
            .map(|value| {
                let bytes = value.as_bytes();
                if bytes.is_empty() || bytes.len() > MAX_USER_ID_LEN {
                    return Err(bad(BRIDGE_USER_ID, format!("1 to {MAX_USER_ID_LEN} bytes")));
                }
                if !bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                    return Err(bad(BRIDGE_USER_ID, "must be printable ASCII"));
                }
                if bytes.iter().all(|b| *b == b' ') {
                    return Err(bad(BRIDGE_USER_ID, "must name someone, not be blank"));
                }
                Ok(value.clone())
            })
            .transpose()?;
        let consent = single(headers, BRIDGE_CONSENT)?
            .map(|value| {
                if value.len() > MAX_CONSENT_LEN {
                    Err(bad(
                        BRIDGE_CONSENT,
                        format!("at most {MAX_CONSENT_LEN} bytes"),
                    ))
                } else {
                    Ok(value.clone())
                }
            })
            .transpose()?;
        let target = single(headers, BRIDGE_TARGET)?
            .map(|value| {
                let text = value
                    .to_str()
                    .map_err(|_| bad(BRIDGE_TARGET, "must be a member id"))?;
                MemberId::parse(text).map_err(|error| bad(BRIDGE_TARGET, error.to_string()))
            })
            .transpose()?;
        let timeout = single(headers, GRPC_TIMEOUT)?
            .map(|value| {
                deadline::parse_grpc_timeout(value.as_bytes()).ok_or_else(|| {
                    bad(
                        GRPC_TIMEOUT,
                        "must be 1 to 8 digits and a unit H, M, S, m, u or n",
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            purpose,
            reason,
            user_id,
            consent,
            target,
            timeout,
        })
    }
}

/// Format characters that render as nothing or reorder text: a reason
/// containing them can read differently in a log than it does on the wire.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// The headers sent upstream: the client's, minus every `bridge-*` header
/// and the hop's own, plus what the gateway vouches for. `grpc-timeout` is
/// added when the request leaves (see `ProviderPool::send`).
pub fn upstream_headers(
    client: &HeaderMap,
    caller: &MemberId,
    call: &CallHeaders,
    trace: &TraceContext,
    request_id: &HeaderValue,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(client.len() + 4);
    for (name, value) in client {
        let name_str = name.as_str();
        if is_bridge_name(name_str)
            || is_proxy_instruction(name_str)
            || name == HOST
            || name == CONTENT_TYPE
            || name_str == GRPC_TIMEOUT
            || name_str == TRACEPARENT
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    // Protobuf, whatever the caller's spelling of it (`check_grpc`).
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    if let Ok(value) = HeaderValue::from_str(caller.as_str()) {
        headers.insert(names::BRIDGE_CLIENT, value);
    }
    headers.insert(names::BRIDGE_REQUEST_ID, request_id.clone());
    if let Some(purpose) = &call.purpose {
        headers.insert(names::BRIDGE_PURPOSE, purpose.clone());
    }
    if let Some(user_id) = &call.user_id {
        headers.insert(names::BRIDGE_USER_ID, user_id.clone());
    }
    headers.insert(names::TRACEPARENT, trace.upstream_traceparent());
    headers
}

/// Whether a header is in the gateway's namespace: `bridge-*`, and
/// `bridge_*`, which some frameworks (WSGI, CGI) read as the same name.
pub fn is_bridge_name(name: &str) -> bool {
    name.strip_prefix("bridge")
        .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('_'))
}

/// Whether a header is one the proxies in front of a backend act on or
/// vouch with: who the client is (`forwarded`, `x-forwarded-*`,
/// `x-real-ip`, `x-client-cert`) and how to retry or time out a call
/// (`x-envoy-*`, which Envoy takes from peers on private addresses, as
/// the gateway is). A member's would be taken for the gateway's word: a
/// retry of a call the gateway never retries, an address or certificate
/// not the member's. The gateway vouches for the caller in `bridge-client`.
pub fn is_proxy_instruction(name: &str) -> bool {
    matches!(name, "forwarded" | "x-real-ip" | "x-client-cert")
        || name.starts_with("x-forwarded-")
        || name.starts_with("x-envoy-")
}

/// Removes every `bridge-*` header: only the gateway speaks in that
/// namespace, to backends and to callers.
pub fn strip_bridge_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_bridge_name(name.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// What a call to a partner instance's gateway carries besides
/// [`upstream_headers`]: the caller's reason, the provider the call is for,
/// this gateway's signed `assertion`, which the partner checks the
/// declared headers against, and the caller's consent artefact when this
/// gateway did not use it (`forward_consent`): one the partner's citizens
/// granted, for the partner's policies to check.
pub fn federated_headers(
    headers: &mut HeaderMap,
    call: &CallHeaders,
    provider: &MemberId,
    assertion: &str,
    forward_consent: bool,
) {
    if forward_consent && let Some(consent) = &call.consent {
        headers.insert(names::BRIDGE_CONSENT, consent.clone());
    }
    if let Some(reason) = &call.reason
        && let Ok(value) = HeaderValue::from_bytes(reason.as_bytes())
    {
        headers.insert(names::BRIDGE_REASON, value);
    }
    if let Ok(value) = HeaderValue::from_str(provider.as_str()) {
        headers.insert(names::BRIDGE_TARGET, value);
    }
    if let Ok(value) = HeaderValue::from_str(assertion) {
        headers.insert(names::BRIDGE_ASSERTION, value);
    }
}

/// The `bridge-audit-index` of a response, if it has a valid one.
pub fn audit_index(headers: &HeaderMap) -> Option<u64> {
    headers.get(BRIDGE_AUDIT_INDEX)?.to_str().ok()?.parse().ok()
}

/// Removes the `bridge-*` headers of a partner gateway's response but its
/// refusal: `bridge-error`, then named as `partner`'s (`bridge-instance`).
pub fn keep_partner_refusal(headers: &mut HeaderMap, partner: &str) {
    let error = headers.remove(names::BRIDGE_ERROR);
    strip_bridge_headers(headers);
    if let Some(error) = error
        && let Ok(instance) = HeaderValue::from_str(partner)
    {
        headers.insert(names::BRIDGE_ERROR, error);
        headers.insert(names::BRIDGE_INSTANCE, instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gRPC with protobuf messages only: another codec's bytes would be
    /// read one way by the gateway and another by the backend.
    #[test]
    fn only_protobuf_grpc_is_taken() {
        let request = |content_type: &str| {
            Request::post("/svc/M")
                .version(http::Version::HTTP_2)
                .header(CONTENT_TYPE, content_type)
                .body(())
                .unwrap()
        };
        for taken in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc; charset=utf-8",
            "application/grpc+proto ; charset=utf-8",
        ] {
            assert!(check_grpc(&request(taken)).is_ok(), "{taken}");
        }
        for refused in [
            "application/grpc+json",
            "application/grpc+cbor",
            "application/grpcx",
            "application/grpc+json; charset=utf-8",
        ] {
            let Err(WireError::NotGrpc(why)) = check_grpc(&request(refused)) else {
                panic!("{refused} taken");
            };
            assert!(why.contains("application/grpc+proto"), "{why}");
        }
        // Two values, the second another codec's: refused.
        let mut twice = request("application/grpc");
        twice.headers_mut().append(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+json"),
        );
        assert!(check_grpc(&twice).is_err());
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn reads_valid_headers() {
        let call = CallHeaders::read(&headers(&[
            (BRIDGE_PURPOSE, "KYC"),
            (BRIDGE_REASON, "account opening"),
            (BRIDGE_USER_ID, "agent 42"),
            (BRIDGE_TARGET, "SN/COM/CBAO/accounts"),
            (GRPC_TIMEOUT, "5S"),
        ]))
        .unwrap();
        assert_eq!(call.purpose.unwrap(), "KYC");
        assert_eq!(call.timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn fresh_request_ids_are_unique_and_ordered_by_time() {
        let id = |value: HeaderValue| uuid::Uuid::parse_str(value.to_str().unwrap()).unwrap();
        let first = id(fresh_request_id());
        std::thread::sleep(Duration::from_millis(2));
        let later: Vec<uuid::Uuid> = (0..1_000).map(|_| id(fresh_request_id())).collect();
        assert_eq!(first.get_version(), Some(uuid::Version::SortRand));
        assert!(
            later.iter().all(|later| *later > first),
            "an id sorts before an earlier one"
        );
        let distinct: std::collections::HashSet<_> = later.iter().collect();
        assert_eq!(distinct.len(), later.len());
        // Given by the caller: kept as it is, whatever its version.
        let given = "0b8f2a6e-5d3c-4f1a-9e2b-7c4d5e6f7a8b";
        let kept = request_id(&headers(&[(BRIDGE_REQUEST_ID, given)])).unwrap();
        assert_eq!(kept.to_str().unwrap(), given);
    }

    #[test]
    fn refuses_malformed_headers_by_name() {
        for (name, value) in [
            (BRIDGE_PURPOSE, "kyc"),
            (BRIDGE_USER_ID, ""),
            (BRIDGE_TARGET, "CBAO"),
            (GRPC_TIMEOUT, "5 seconds"),
            (BRIDGE_REASON, &"x".repeat(257)),
            (BRIDGE_REASON, ""),
            (BRIDGE_REASON, "   "),
            (BRIDGE_USER_ID, "  "),
        ] {
            match CallHeaders::read(&headers(&[(name, value)])) {
                Err(WireError::BadHeader { header, .. }) => assert_eq!(header, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        for hidden in [
            "KYC\u{202e}review",
            "KYC\u{2028}7 forged",
            "KYC\u{85}review",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                BRIDGE_REASON,
                HeaderValue::from_bytes(hidden.as_bytes()).unwrap(),
            );
            assert!(CallHeaders::read(&headers).is_err(), "{hidden:?} passed");
        }
        let twice = headers(&[(BRIDGE_PURPOSE, "KYC"), (BRIDGE_PURPOSE, "AML")]);
        assert!(CallHeaders::read(&twice).is_err());
        assert!(request_id(&headers(&[(BRIDGE_REQUEST_ID, "not-a-uuid")])).is_err());
    }

    #[test]
    fn upstream_headers_drop_client_bridge_headers() {
        let client = headers(&[
            (BRIDGE_CLIENT, "SN/GOV/DGID/tax"),
            ("bridge-anything", "x"),
            ("bridge_client", "SN/GOV/DGID/tax"),
            ("x-custom", "kept"),
            ("x-envoy-retry-on", "5xx,reset"),
            ("x-envoy-max-retries", "5"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-client-cert", "Hash=forged"),
            ("forwarded", "for=10.0.0.1"),
            ("x-real-ip", "10.0.0.1"),
            ("content-type", "application/grpc+proto; charset=utf-8"),
            (
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        let call = CallHeaders::read(&client).unwrap();
        let caller = MemberId::parse("SN/COM/CBAO/kyc").unwrap();
        let id = fresh_request_id();
        let trace = TraceContext::read(&client);
        let upstream = upstream_headers(&client, &caller, &call, &trace, &id);
        assert_eq!(upstream[BRIDGE_CLIENT], "SN/COM/CBAO/kyc");
        assert_eq!(upstream.get_all(BRIDGE_CLIENT).iter().count(), 1);
        assert!(upstream.get("bridge-anything").is_none());
        assert!(upstream.get("bridge_client").is_none());
        assert_eq!(upstream["x-custom"], "kept");
        assert_eq!(upstream[CONTENT_TYPE], "application/grpc");
        for dropped in [
            "x-envoy-retry-on",
            "x-envoy-max-retries",
            "x-forwarded-for",
            "x-forwarded-client-cert",
            "forwarded",
            "x-real-ip",
        ] {
            assert!(upstream.get(dropped).is_none(), "{dropped} forwarded");
        }
        // The same trace, under the gateway's own span.
        let forwarded = upstream[TRACEPARENT].to_str().unwrap();
        assert!(forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(forwarded.ends_with("-01"));
        assert_ne!(upstream[TRACEPARENT], client[TRACEPARENT]);
        assert_eq!(upstream[TRACEPARENT], trace.upstream_traceparent());
        assert!(upstream.get(GRPC_TIMEOUT).is_none());
    }
}
