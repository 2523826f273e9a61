//! Errors the gateway itself raises, and the one place they become gRPC
//! statuses.
//!
//! Each error knows its gRPC code, its `bridge-error` kind, whose fault it is
//! and whether the caller may retry. [`GatewayError::into_response`] is the
//! only function in the data path that builds a gateway-made status.

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tonic::Code;

use super::body::ResponseBody;
use crate::identity::{MemberId, PeerIdentityError};
use crate::routing::RouteError;
use crate::routing::upstream::UpstreamError;
use crate::wire::WireError;
use crate::wire::headers::{BRIDGE_ERROR, BRIDGE_REQUEST_ID};

/// gRPC's retry pushback: milliseconds to wait before retrying.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Who caused a failure: the exchange log and metrics record it. (Not to
/// be confused with the faults a test injects into a mock agency.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The calling member sent something the gateway refuses.
    Caller,
    /// The provider's backend failed or could not be reached.
    Upstream,
    /// The gateway itself could not do its job.
    Gateway,
}

/// A failure of one call, raised by the gateway rather than by a backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("client certificate names no member: {0}")]
    NoMemberIdentity(PeerIdentityError),
    #[error("member {0} is not registered at this gateway")]
    UnknownMember(MemberId),
    #[error("not a gRPC request: {0}")]
    NotGrpc(&'static str),
    #[error("malformed header {header}: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
    #[error("malformed header bridge-purpose: `{0}` is not a registered purpose code")]
    UnknownPurpose(String),
    #[error("member {0} has no permission at this gateway")]
    NoPermits(MemberId),
    /// A member of another instance connected itself: its calls come
    /// through its instance's gateway, which vouches for them.
    #[error(
        "{member} is a member of instance {instance}: its calls come through {instance}'s \
         gateway, not straight here"
    )]
    ForeignMember { member: MemberId, instance: String },
    /// A partner gateway's call whose assertion does not hold.
    #[error("{0}")]
    BadAssertion(#[from] crate::federation::AssertionError),
    /// The fleet's database cannot say whether another node took a
    /// partner's assertion already, so the call is not taken.
    #[error(
        "this gateway cannot check across its fleet that the partner's assertion was not \
         used before, so it refuses the call; retry later"
    )]
    ReplayUnchecked(String),
    #[error("{caller} may not call {method} at {provider} {}: {}",
        purpose.as_ref().map_or_else(|| "without a purpose (bridge-purpose)".to_owned(), |p| format!("for purpose {p}")),
        if forbidden_by.is_empty() { "no policy permits it".to_owned() } else { format!("forbidden by {}", forbidden_by.join(", ")) })]
    Denied {
        caller: MemberId,
        method: String,
        provider: MemberId,
        purpose: Option<String>,
        /// The forbids that decided, if any; empty for a denial by default.
        forbidden_by: Vec<String>,
    },
    #[error("{0}")]
    Consent(#[from] crate::consent::ConsentRefusal),
    #[error("`{0}` is not a gRPC method path /package.Service/Method")]
    BadPath(String),
    /// A JSON call whose body is not its method's request message.
    #[error("{0}")]
    BadJson(String),
    #[error("service {0} is not published on this gateway")]
    UnknownService(String),
    #[error("method {method} is not part of service {service}")]
    UnknownMethod { service: String, method: String },
    #[error("provider {target} does not publish service {service}")]
    UnknownTarget { service: String, target: MemberId },
    /// No backend could be reached; the request was never sent.
    #[error("no backend of provider {provider} is reachable")]
    UpstreamUnavailable { provider: MemberId, detail: String },
    /// A backend is not the provider it should be; never sent.
    #[error("the backend of provider {provider} did not prove its identity")]
    UpstreamIdentity { provider: MemberId, detail: String },
    /// The backend failed after the request may have reached it.
    #[error("the backend of provider {provider} failed the call")]
    UpstreamFailed { provider: MemberId, detail: String },
    /// A JSON call's backend answered `OK` with what the gateway cannot
    /// give as JSON (not one message of the method's response): the
    /// caller learns nothing, and the call is logged as this.
    #[error("the provider's answer cannot be given as JSON: {0}")]
    BadAnswer(String),
    #[error("deadline exceeded after {0:?}")]
    DeadlineExceeded(std::time::Duration),
    /// The caller's request stream failed (reset, or its connection gone)
    /// while the call was forwarded: no one is left to answer.
    #[error("the caller cancelled the call")]
    Cancelled(String),
    /// The exchange log cannot record the call, so it is not forwarded.
    #[error("the exchange log cannot record this call, so the gateway refuses it; retry later")]
    ExchangeLogUnavailable(String),
    /// The global configuration this gateway runs has expired, and no
    /// newer one could be fetched from the directory: nothing it says
    /// (members, CAs, policies) can be trusted to be current.
    #[error(
        "this gateway's global configuration (version {version}) expired at {}, and the \
         directory has not given it a newer one: it forwards no call until it has",
        crate::unix_time::rfc3339(*expired)
    )]
    GlobalConfigurationExpired { version: u64, expired: i64 },
    /// The global configuration of the partner instance the call goes to
    /// or comes from, followed from its directory, has expired: its CAs,
    /// gateways and keys cannot be trusted to be current.
    #[error(
        "{instance}'s global configuration (version {version}) expired at {}, and its \
         directory has not given this gateway a newer one: no call goes to or comes from \
         {instance} until it has",
        crate::unix_time::rfc3339(*expired)
    )]
    PartnerConfigurationExpired {
        instance: String,
        version: u64,
        expired: i64,
    },
    /// The partner instance the call goes to is followed from its
    /// directory, and no version of its configuration has been had yet,
    /// or the one in the cache cannot be used (why).
    #[error("{}", missing_configuration(instance, url, unusable.as_deref()))]
    PartnerConfigurationMissing {
        instance: String,
        url: String,
        unusable: Option<String>,
    },
    /// A CRL of the partner instance the call goes to or comes from is
    /// past its next update (beyond `crl_grace`): revocations it has made
    /// since are not seen, so none of its certificates can be trusted.
    #[error(
        "{instance}'s certificate revocation list is out of date ({reason}): no call goes to \
         or comes from {instance} until it publishes a fresh one"
    )]
    PartnerCrlStale { instance: String, reason: String },
    /// The consent's use cannot be made durable, so the call, which would
    /// spend it, is not forwarded.
    #[error(
        "the consent ledger cannot record this use of the consent, so the gateway refuses the call; retry later"
    )]
    ConsentUseUnrecorded(String),
    /// The backend answered but the outcome could not be recorded, so its
    /// status is withheld. The call may have taken effect.
    #[error(
        "the backend answered but the exchange log could not record the outcome, so the \
         gateway withholds it; the call may have taken effect: check before repeating it"
    )]
    OutcomeUnrecorded(String),
    // Limits (`proxy::limits`): `RESOURCE_EXHAUSTED`.
    /// The caller sent more calls than its token bucket allows.
    #[error(
        "{member} is over its limit of {per_second} calls per second (burst {burst}); retry in {} ms",
        retry_after.as_millis()
    )]
    RateLimited {
        member: MemberId,
        per_second: u32,
        burst: u32,
        retry_after: std::time::Duration,
    },
    /// The caller has as many calls in flight as it may.
    #[error("{member} already has {limit} calls in flight, its limit; retry when one ends")]
    TooManyCalls {
        member: MemberId,
        limit: u32,
        retry_after: std::time::Duration,
    },
    /// The gateway sheds load: as many calls are in flight as it takes.
    #[error("the gateway is at its limit of {limit} calls in flight; retry later")]
    Overloaded {
        limit: u32,
        retry_after: std::time::Duration,
    },
    /// A request message's prefix announced more bytes than the caller may
    /// send; none of that message was relayed.
    #[error("a request message of {announced} bytes is over this member's limit of {limit} bytes")]
    MessageTooLarge { limit: u32, announced: u32 },
    /// A request stream named more data subjects than one call's record
    /// keeps; the message naming one more was not relayed.
    #[error("{0}")]
    TooManySubjects(#[from] crate::catalog::subject::TooManySubjects),
}

impl From<RouteError> for GatewayError {
    fn from(error: RouteError) -> Self {
        match error {
            RouteError::BadPath(path) => Self::BadPath(path),
            RouteError::UnknownService(service) => Self::UnknownService(service),
            RouteError::UnknownMethod { service, method } => {
                Self::UnknownMethod { service, method }
            }
            RouteError::UnknownTarget { service, target } => {
                Self::UnknownTarget { service, target }
            }
        }
    }
}

impl From<UpstreamError> for GatewayError {
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::Unavailable { provider, detail }
            | UpstreamError::Refused {
                provider, detail, ..
            } => Self::UpstreamUnavailable { provider, detail },
            UpstreamError::Identity { provider, detail } => {
                Self::UpstreamIdentity { provider, detail }
            }
            UpstreamError::Failed { provider, detail } => Self::UpstreamFailed { provider, detail },
        }
    }
}

impl From<WireError> for GatewayError {
    fn from(error: WireError) -> Self {
        match error {
            WireError::NotGrpc(reason) => Self::NotGrpc(reason),
            WireError::BadHeader { header, reason } => Self::BadHeader { header, reason },
        }
    }
}

/// Why a followed partner's calls are refused for want of its
/// configuration.
fn missing_configuration(instance: &str, url: &str, unusable: Option<&str>) -> String {
    match unusable {
        None => format!(
            "{instance}'s global configuration could not be fetched yet from its directory \
             {url}: no call goes to {instance} until it is"
        ),
        Some(why) => format!(
            "{instance}'s global configuration in this gateway's cache cannot be used ({why}): \
             no call goes to or comes from {instance} until it is fetched again"
        ),
    }
}

impl GatewayError {
    /// The gRPC status code the caller sees.
    pub fn code(&self) -> Code {
        match self {
            Self::NoMemberIdentity(_) | Self::UnknownMember(_) | Self::BadAssertion(_) => {
                Code::Unauthenticated
            }
            Self::NotGrpc(_)
            | Self::BadHeader { .. }
            | Self::BadPath(_)
            | Self::BadJson(_)
            | Self::UnknownPurpose(_) => Code::InvalidArgument,
            Self::NoPermits(_) | Self::Denied { .. } | Self::ForeignMember { .. } => {
                Code::PermissionDenied
            }
            Self::Consent(crate::consent::ConsentRefusal::StatusUnknown) => Code::Unavailable,
            Self::Consent(_) => Code::PermissionDenied,
            Self::UnknownService(_) | Self::UnknownMethod { .. } | Self::UnknownTarget { .. } => {
                Code::Unimplemented
            }
            Self::UpstreamUnavailable { .. }
            | Self::UpstreamIdentity { .. }
            | Self::UpstreamFailed { .. }
            | Self::ExchangeLogUnavailable(_)
            | Self::GlobalConfigurationExpired { .. }
            | Self::PartnerConfigurationExpired { .. }
            | Self::PartnerConfigurationMissing { .. }
            | Self::PartnerCrlStale { .. }
            | Self::ConsentUseUnrecorded(_)
            | Self::ReplayUnchecked(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Cancelled(_) => Code::Cancelled,
            Self::OutcomeUnrecorded(_) | Self::BadAnswer(_) => Code::Internal,
            Self::RateLimited { .. }
            | Self::TooManyCalls { .. }
            | Self::Overloaded { .. }
            | Self::MessageTooLarge { .. }
            | Self::TooManySubjects(_) => Code::ResourceExhausted,
        }
    }

    /// The value of the `bridge-error` header: a stable, machine-readable
    /// kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoMemberIdentity(_) => "no-member-identity",
            Self::UnknownMember(_) => "unknown-member",
            Self::NotGrpc(_) => "not-grpc",
            Self::BadHeader { .. } | Self::UnknownPurpose(_) => "bad-header",
            Self::NoPermits(_) => "no-permits",
            Self::ForeignMember { .. } => "foreign-member",
            Self::BadAssertion(_) => "bad-assertion",
            Self::ReplayUnchecked(_) => "replay-check-unavailable",
            Self::Denied { .. } => "policy-denied",
            Self::Consent(refusal) => refusal.kind(),
            Self::BadPath(_) => "bad-path",
            Self::BadJson(_) => "bad-json",
            Self::UnknownService(_) => "unknown-service",
            Self::UnknownMethod { .. } => "unknown-method",
            Self::UnknownTarget { .. } => "unknown-target",
            Self::UpstreamUnavailable { .. } => "upstream-unavailable",
            Self::UpstreamIdentity { .. } => "upstream-identity",
            Self::UpstreamFailed { .. } => "upstream-failed",
            Self::BadAnswer(_) => "bad-answer",
            Self::DeadlineExceeded(_) => "deadline-exceeded",
            Self::Cancelled(_) => "cancelled",
            Self::ExchangeLogUnavailable(_) => "exchange-log-unavailable",
            Self::GlobalConfigurationExpired { .. } => "global-configuration-expired",
            Self::PartnerConfigurationExpired { .. } => "partner-configuration-expired",
            Self::PartnerConfigurationMissing { .. } => "partner-configuration-missing",
            Self::PartnerCrlStale { .. } => "partner-crl-stale",
            Self::ConsentUseUnrecorded(_) => "consent-ledger-unavailable",
            Self::OutcomeUnrecorded(_) => "exchange-log-outcome-unrecorded",
            Self::RateLimited { .. } => "rate-limited",
            Self::TooManyCalls { .. } => "too-many-calls",
            Self::Overloaded { .. } => "gateway-overloaded",
            Self::MessageTooLarge { .. } => "message-too-large",
            Self::TooManySubjects(_) => "too-many-subjects",
        }
    }

    /// Who is to blame for the failure.
    pub fn blame(&self) -> Blame {
        match self {
            Self::NoMemberIdentity(_)
            | Self::UnknownMember(_)
            | Self::NotGrpc(_)
            | Self::BadHeader { .. }
            | Self::UnknownPurpose(_)
            | Self::NoPermits(_)
            | Self::ForeignMember { .. }
            | Self::BadAssertion(_)
            | Self::Denied { .. }
            | Self::BadPath(_)
            | Self::BadJson(_)
            | Self::UnknownService(_)
            | Self::UnknownMethod { .. }
            | Self::UnknownTarget { .. }
            | Self::DeadlineExceeded(_)
            | Self::Cancelled(_) => Blame::Caller,
            Self::Consent(crate::consent::ConsentRefusal::StatusUnknown) => Blame::Gateway,
            Self::Consent(_) => Blame::Caller,
            Self::UpstreamUnavailable { .. }
            | Self::UpstreamIdentity { .. }
            | Self::UpstreamFailed { .. }
            | Self::BadAnswer(_) => Blame::Upstream,
            Self::ExchangeLogUnavailable(_)
            | Self::GlobalConfigurationExpired { .. }
            | Self::PartnerConfigurationExpired { .. }
            | Self::PartnerConfigurationMissing { .. }
            | Self::PartnerCrlStale { .. }
            | Self::ConsentUseUnrecorded(_)
            | Self::ReplayUnchecked(_)
            | Self::OutcomeUnrecorded(_) => Blame::Gateway,
            Self::RateLimited { .. }
            | Self::TooManyCalls { .. }
            | Self::MessageTooLarge { .. }
            | Self::TooManySubjects(_) => Blame::Caller,
            Self::Overloaded { .. } => Blame::Gateway,
        }
    }

    /// Whether the call may be sent again unchanged: only when it never
    /// reached a backend, so that nothing can be applied twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::UpstreamUnavailable { .. }
                | Self::ExchangeLogUnavailable(_)
                | Self::GlobalConfigurationExpired { .. }
                | Self::PartnerConfigurationExpired { .. }
                | Self::PartnerConfigurationMissing { .. }
                | Self::PartnerCrlStale { .. }
                | Self::ConsentUseUnrecorded(_)
                | Self::Consent(crate::consent::ConsentRefusal::StatusUnknown)
        ) || self.is_limit_refusal()
    }

    /// Whether the caller was refused for who it is, before anything about
    /// its call: not a member, not registered, or permitted nothing. Its
    /// connection is closed after the answer.
    pub fn is_stranger_refusal(&self) -> bool {
        matches!(
            self,
            Self::NoMemberIdentity(_)
                | Self::UnknownMember(_)
                | Self::NoPermits(_)
                | Self::ForeignMember { .. }
        )
    }

    /// Whether the call was refused by the call limits, for load (rate, calls in
    /// flight, gateway overload), before anything about it was decided.
    ///
    /// Such refusals are not written to the exchange log: the call was
    /// never authorized, read or forwarded, so the log has nothing to
    /// prove about it, and a record each would turn a flood into one
    /// durable append (an fsync shared by a group commit) per refused call,
    /// the very load the limit exists to keep off. Metrics count them per
    /// member and kind instead. A message over the size limit is different:
    /// it is found after the decision was logged, and ends as that call's
    /// outcome record.
    pub fn is_limit_refusal(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::TooManyCalls { .. } | Self::Overloaded { .. }
        )
    }

    /// How long the caller should wait before trying again, sent as
    /// `grpc-retry-pushback-ms` (gRPC's retry pushback, gRFC A6).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::RateLimited { retry_after, .. }
            | Self::TooManyCalls { retry_after, .. }
            | Self::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The retry pushback of this error, as a header.
    fn pushback(&self) -> Option<HeaderValue> {
        let millis = self.retry_after()?.as_millis().max(1);
        Some(HeaderValue::from(u64::try_from(millis).unwrap_or(u64::MAX)))
    }

    /// What operators need and callers must not see (internal addresses,
    /// TLS errors): for logs only.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::UpstreamUnavailable { detail, .. }
            | Self::UpstreamIdentity { detail, .. }
            | Self::UpstreamFailed { detail, .. }
            | Self::ExchangeLogUnavailable(detail)
            | Self::ConsentUseUnrecorded(detail)
            | Self::ReplayUnchecked(detail)
            | Self::OutcomeUnrecorded(detail)
            | Self::Cancelled(detail) => Some(detail),
            _ => None,
        }
    }

    /// A trailers-only gRPC response carrying this error.
    pub fn into_response(self, request_id: Option<&HeaderValue>) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::empty());
        if let Self::NotGrpc(_) = self {
            // The gRPC spec asks for 415 when the content type is wrong, so
            // that non-gRPC clients get an HTTP-level answer too.
            *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        }
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(self.code() as i32));
        if let Ok(message) = HeaderValue::from_str(&encode_grpc_message(&self.to_string())) {
            headers.insert("grpc-message", message);
        }
        headers.insert(BRIDGE_ERROR, HeaderValue::from_static(self.kind()));
        if let Some(pushback) = self.pushback() {
            headers.insert(RETRY_PUSHBACK, pushback);
        }
        if let Some(request_id) = request_id {
            headers.insert(BRIDGE_REQUEST_ID, request_id.clone());
        }
        response
    }

    /// This error as trailers, for a response whose headers already left.
    pub fn into_trailers(self) -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from(self.code() as i32));
        if let Ok(message) = HeaderValue::from_str(&encode_grpc_message(&self.to_string())) {
            trailers.insert("grpc-message", message);
        }
        trailers.insert(BRIDGE_ERROR, HeaderValue::from_static(self.kind()));
        if let Some(pushback) = self.pushback() {
            trailers.insert(RETRY_PUSHBACK, pushback);
        }
        trailers
    }
}

/// Characters percent-encoded in `grpc-message`, per the gRPC HTTP/2 spec:
/// everything outside printable ASCII, and `%` itself.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

fn encode_grpc_message(message: &str) -> String {
    utf8_percent_encode(message, GRPC_MESSAGE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_grpc_message("100% sûr"), "100%25 s%C3%BBr");
    }

    #[test]
    fn limit_refusals_are_resource_exhausted_with_a_pushback() {
        let member = MemberId::parse("SN/COM/CBAO/kyc").unwrap();
        let refused = GatewayError::RateLimited {
            member,
            per_second: 1,
            burst: 5,
            retry_after: std::time::Duration::from_micros(249_200),
        };
        assert!(refused.is_limit_refusal() && refused.is_retryable());
        let response = refused.into_response(None);
        let headers = response.headers();
        assert_eq!(headers["grpc-status"], "8");
        assert_eq!(headers[BRIDGE_ERROR], "rate-limited");
        assert_eq!(headers[RETRY_PUSHBACK], "249");
        let too_large = GatewayError::MessageTooLarge {
            limit: 1024,
            announced: 4096,
        };
        assert!(!too_large.is_limit_refusal() && !too_large.is_retryable());
        let trailers = too_large.into_trailers();
        assert_eq!(trailers["grpc-status"], "8");
        assert!(trailers.get(RETRY_PUSHBACK).is_none());
    }

    #[test]
    fn error_response_is_trailers_only_grpc() {
        let response = GatewayError::UnknownService("a.B".into())
            .into_response(Some(&HeaderValue::from_static("id-1")));
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["grpc-status"], "12");
        assert_eq!(headers[BRIDGE_ERROR], "unknown-service");
        assert_eq!(headers[BRIDGE_REQUEST_ID], "id-1");
        assert_eq!(headers["content-type"], "application/grpc");
    }
}
