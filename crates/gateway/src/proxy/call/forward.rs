//! Forward: the request goes to the provider's backend with the gateway's
//! headers; an idempotent call that did nothing is retried on another
//! endpoint, so it is read whole first when small enough to replay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Call, Exchange, within};
use crate::proxy::GatewayError;
use crate::proxy::body::{self, CallEnd, CallerBody, RequestBody, SubjectGuard};
use crate::proxy::record::{self, SharedTally, Tally};
use crate::routing::upstream::{self, Load, ServedBy, UpstreamBody, UpstreamError};
use crate::wire::headers;

/// The largest request an idempotent call may have to be replayed.
const REPLAY_LIMIT: usize = 64 * 1024;

/// Retries of one call, at most.
const MAX_RETRIES: u32 = 2;

/// A request body ready to go upstream.
pub(super) struct Outgoing {
    /// What the first attempt sends.
    body: UpstreamBody,
    /// The whole request, when the call may be replayed.
    replay: Option<Bytes>,
    /// Ends the call's upstream side when dropped; knows whether the
    /// request body refused to go on.
    call_end: CallEnd,
    /// The request's bytes, for the exchange log.
    tally: Option<SharedTally>,
    /// Request bytes relayed, for the call's summary.
    bytes_in: Arc<AtomicU64>,
}

/// The backend's response headers, and what the relay needs with them.
pub(super) struct Forwarded {
    pub(super) response: Response<Incoming>,
    pub(super) call_end: CallEnd,
    pub(super) bytes_in: Arc<AtomicU64>,
    /// From forwarding to the response headers.
    pub(super) elapsed: Duration,
}

impl Call<'_> {
    /// The caller's body as it goes upstream: limited in message size,
    /// tallied for the log and, for consent, checked message by message.
    /// An idempotent call that ends within [`REPLAY_LIMIT`] is read whole
    /// first, so that it can be replayed on another endpoint.
    pub(super) async fn request_body(
        &self,
        mut body: CallerBody,
        guard: Option<SubjectGuard>,
        exchange: &Exchange,
    ) -> Result<Outgoing, GatewayError> {
        let tally = self.record.as_ref().map(|_| {
            let subject = self.state.catalog.subjects().field(self.uri.path());
            Arc::new(Mutex::new(Tally::new(subject.cloned())))
        });
        let mut replay = None;
        let mut read_first = None;
        if exchange.routed.idempotent && guard.is_none() {
            let buffering = body::buffer_request(&mut body, REPLAY_LIMIT);
            match within(&exchange.routed.deadline, buffering).await? {
                body::Buffered::Whole(bytes) => replay = Some(bytes),
                body::Buffered::Partial(bytes) => read_first = Some(bytes),
            }
        }
        let bytes_in: Arc<AtomicU64> = Arc::default();
        let admitted = &exchange.admitted;
        let mut limit = admitted
            .permit
            .message_limit(&self.conn.metrics, &admitted.caller);
        let (body, call_end) = match &replay {
            Some(bytes) => {
                // Checked and counted once, here: every attempt sends these.
                limit.check(bytes)?;
                // Refused, nothing of it is relayed: its outcome names no
                // subject, as one over the size limit.
                if let Some(tally) = &tally {
                    record::count(tally, bytes)?;
                }
                bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                (replay_body(bytes), CallEnd::detached())
            }
            None => {
                let (body, call_end) =
                    RequestBody::new(body, guard, tally.clone(), Arc::clone(&bytes_in));
                let mut body = body.limit_messages(limit);
                if let Some(read) = read_first {
                    body = body.after(read);
                }
                (body.boxed_unsync(), call_end)
            }
        };
        Ok(Outgoing {
            body,
            replay,
            call_end,
            tally,
            bytes_in,
        })
    }

    /// Sends the request upstream, retrying while it may, and returns the
    /// response headers.
    pub(super) async fn forward(
        &mut self,
        head: &http::request::Parts,
        outgoing: Outgoing,
        exchange: &Exchange,
    ) -> Result<Forwarded, GatewayError> {
        let Outgoing {
            body,
            replay,
            mut call_end,
            tally,
            bytes_in,
        } = outgoing;
        let upstream = UpstreamHead::new(head, self, exchange);
        if let (Some(record), Some(tally)) = (self.record.as_mut(), tally) {
            record.forwarding(tally, SystemTime::now());
        }
        let forwarded = Instant::now();
        let nonce = upstream.nonce.clone();
        let provider = &exchange.routed.provider;
        provider.count_call();
        let sent = retry(upstream, body, replay.as_ref(), exchange).await?;
        // The request side may have failed on purpose first.
        let mut response =
            sent.map_err(|error| call_end.refusal().unwrap_or_else(|| error.into()))?;
        call_end.hold(response.extensions_mut().remove::<Load>());
        match provider.partner() {
            Some(partner) => {
                // The partner's index of the call: its receipt, in ours.
                if let (Some(record), Some(index)) = (
                    self.record.as_mut(),
                    headers::audit_index(response.headers()),
                ) {
                    record.receipt(partner, index);
                    let federation = &self.state.federation;
                    if federation
                        .partners
                        .get(partner)
                        .is_some_and(|partner| partner.receipts)
                        && let Ok(request_id) = self.request_id.to_str()
                        && let Some(nonce) = nonce
                    {
                        let call = super::super::receipts::Forwarded {
                            request_id: request_id.to_owned(),
                            caller: exchange.admitted.caller.to_string(),
                            method: self.uri.path().to_owned(),
                            provider: provider.provider().to_string(),
                            nonce,
                        };
                        federation.receipts.push(partner, index, call);
                    }
                }
                // A partner's refusal passes, named as the partner's.
                headers::keep_partner_refusal(response.headers_mut(), partner);
            }
            None => headers::strip_bridge_headers(response.headers_mut()),
        }
        if let Some(record) = self.record.as_mut() {
            record.first_byte(SystemTime::now());
        }
        let elapsed = forwarded.elapsed();
        self.conn.metrics.upstream(provider.provider(), elapsed);
        Ok(Forwarded {
            response,
            call_end,
            bytes_in,
            elapsed,
        })
    }
}

impl Call<'_> {
    /// What this gateway asserts to `partner`'s of the call it forwards
    /// there.
    fn assertion(
        &self,
        partner: &str,
        provider: &crate::identity::MemberId,
        exchange: &Exchange,
    ) -> crate::federation::Assertion {
        let federation = &self.state.federation;
        let declared = &exchange.headers;
        crate::federation::Assertion {
            from: federation.instance.clone(),
            to: partner.to_owned(),
            gateway: federation.gateway.clone(),
            caller: exchange.admitted.caller.clone(),
            method: self.uri.path().to_owned(),
            provider: provider.clone(),
            request_id: self.request_id.to_str().unwrap_or_default().to_owned(),
            nonce: crate::federation::Assertion::nonce(),
            issued: crate::unix_time::now(),
            caller_not_after: self.caller_not_after(&exchange.admitted),
            purpose: declared.purpose_code().map(str::to_owned),
            reason: declared.reason.clone(),
            user_id: declared
                .user_id
                .as_ref()
                .and_then(|id| id.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// Sends the request once, or, when it may be replayed, retries it:
/// only a call that certainly did nothing is retried, when the endpoint
/// answered `UNAVAILABLE` at once (or a proxy's 503), refused the stream,
/// or none could be reached, at most
/// [`MAX_RETRIES`] times, within the deadline and the provider's retry
/// budget, never on the endpoint that failed.
async fn retry(
    upstream: UpstreamHead,
    first: UpstreamBody,
    replay: Option<&Bytes>,
    exchange: &Exchange,
) -> Result<Result<Response<Incoming>, UpstreamError>, GatewayError> {
    let Some(bytes) = replay else {
        return send(upstream.into_request(first), None, exchange).await;
    };
    let provider = &exchange.routed.provider;
    let deadline = &exchange.routed.deadline;
    let mut body = first;
    let mut avoid = None;
    let mut retries = 0;
    loop {
        let sent = send(upstream.request(body), avoid.as_ref(), exchange).await?;
        let failed_at = match &sent {
            Ok(response) if upstream::is_unavailable(response) => {
                response.extensions().get::<ServedBy>().cloned()
            }
            // Unless no endpoint is left to try.
            Err(UpstreamError::Refused { endpoint, .. }) if provider.has_endpoint_in_rotation() => {
                Some(endpoint.clone())
            }
            Err(UpstreamError::Unavailable { .. }) if provider.has_endpoint_in_rotation() => None,
            _ => return Ok(sent),
        };
        let backoff = retry_backoff(retries);
        if retries >= MAX_RETRIES || deadline.remaining() <= backoff || !provider.allow_retry() {
            return Ok(sent);
        }
        retries += 1;
        tracing::debug!(retry = retries, endpoint = ?failed_at, "retrying an idempotent call");
        tokio::time::sleep(backoff).await;
        avoid = failed_at;
        body = replay_body(bytes);
    }
}

/// One attempt: the request to one of the provider's endpoints (not
/// `avoid`), within the call's deadline.
async fn send(
    request: Request<UpstreamBody>,
    avoid: Option<&ServedBy>,
    exchange: &Exchange,
) -> Result<Result<Response<Incoming>, UpstreamError>, GatewayError> {
    let provider = &exchange.routed.provider;
    let deadline = &exchange.routed.deadline;
    let sending = provider
        .send_avoiding(request, deadline, avoid)
        .instrument(tracing::debug_span!("upstream", provider = %provider.provider()));
    within(deadline, sending).await
}

/// The request as it goes upstream, but for its body: the caller's method
/// and path, and the headers the gateway forwards, built once for every
/// attempt.
struct UpstreamHead {
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    /// To a partner: the nonce of the assertion it carries.
    nonce: Option<String>,
}

impl UpstreamHead {
    fn new(head: &http::request::Parts, call: &Call<'_>, exchange: &Exchange) -> Self {
        let mut headers = headers::upstream_headers(
            &head.headers,
            &exchange.admitted.caller,
            &exchange.headers,
            &call.trace,
            &call.request_id,
        );
        let provider = exchange.routed.provider.provider();
        let mut nonce = None;
        if let Some(partner) = exchange.routed.provider.partner()
            && let Some(key) = &call.state.federation.key
        {
            let assertion = call.assertion(partner, provider, exchange);
            nonce = Some(assertion.nonce.clone());
            // Never one this instance's issuers signed, whatever it claims.
            let ours = |consent: &HeaderValue| {
                call.state.consent_keys.as_ref().is_some_and(|keys| {
                    consent
                        .to_str()
                        .is_ok_and(|token| keys.verify(token).is_ok())
                })
            };
            let theirs = exchange.consent_use.is_none()
                && exchange
                    .headers
                    .consent
                    .as_ref()
                    .is_some_and(|consent| issued_in(consent, partner) && !ours(consent));
            headers::federated_headers(
                &mut headers,
                &exchange.headers,
                provider,
                &assertion.seal(key),
                theirs,
            );
        }
        // A citizen's consent stays in its instance.
        if let Some(consent_use) = &exchange.consent_use
            && exchange.routed.provider.partner().is_none()
            && let Ok(value) = HeaderValue::from_str(consent_use.consent_id())
        {
            headers.insert(headers::BRIDGE_CONSENT_ID, value);
        }
        Self {
            method: head.method.clone(),
            uri: head.uri.clone(),
            headers,
            nonce,
        }
    }

    /// The request of the only attempt.
    fn into_request(self, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.headers_mut() = self.headers;
        request
    }

    /// The request of one attempt of several.
    fn request(&self, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Whether `consent` is an artefact of `instance`'s issuers, as it says
/// (`iss`): only such a consent goes to that partner, whose to check it
/// is. Any other stays here, used or not: this instance's citizens' above
/// all, whichever key signed it (a retired one included), and anything
/// that does not read as an artefact.
fn issued_in(consent: &HeaderValue, instance: &str) -> bool {
    consent
        .to_str()
        .ok()
        .and_then(crate::consent::artefact::claimed_issuer)
        .and_then(|issuer| crate::identity::MemberId::parse(&issuer).ok())
        .is_some_and(|issuer| issuer.instance() == instance)
}

/// How long to wait before retry `retries + 1`: 25 ms, doubled at each
/// retry, less a random part of up to half, so that callers failed together
/// do not come back together.
fn retry_backoff(retries: u32) -> Duration {
    let full = Duration::from_millis(25) * 2u32.pow(retries.min(8));
    full - full.mul_f64(fastrand::f64() / 2.0)
}

/// A replayed request's body.
fn replay_body(bytes: &Bytes) -> UpstreamBody {
    http_body_util::Full::new(bytes.clone())
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::artefact::{ConsentClaims, ConsentSigner};

    fn artefact(issuer: &str) -> HeaderValue {
        let claims = ConsentClaims {
            consent_id: "c-1".to_owned(),
            subject: "1001199012345".to_owned(),
            consumer: "AZ/COM/KAPITAL/kyc".to_owned(),
            providers: vec!["SN/GOV/ANEC/civil-registry".to_owned()],
            methods: vec!["/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity".to_owned()],
            purpose: "KYC".to_owned(),
            not_before: 0,
            expires: i64::MAX,
            max_uses: 1,
            issuer: issuer.to_owned(),
            issued_at: 0,
        };
        // Any key: a retired one of this instance's issuers, say.
        let signer = ConsentSigner::generate("retired-2025").unwrap();
        HeaderValue::from_str(&signer.sign(&claims)).unwrap()
    }

    /// A consent goes to the partner whose issuer it names, whatever key
    /// signed it; this instance's, or anything else, stays here.
    #[test]
    fn a_consent_goes_only_to_the_instance_that_issued_it() {
        assert!(issued_in(&artefact("AZ/GOV/MYGOV/app"), "AZ"));
        assert!(!issued_in(&artefact("SN/GOV/MYGOV/app"), "AZ"));
        assert!(!issued_in(&artefact("AZX/GOV/MYGOV/app"), "AZ"));
        assert!(!issued_in(
            &HeaderValue::from_static("not.an.artefact"),
            "AZ"
        ));
        assert!(!issued_in(&HeaderValue::from_static("AZ"), "AZ"));
        // An issuer not named as a member id is no instance's.
        assert!(!issued_in(&artefact("AZ"), "AZ"));
    }
}
