//! Relay: the backend's response goes back to the caller frame by frame;
//! its end is counted, logged, and written as the call's outcome.

use http::Response;

use super::forward::Forwarded;
use super::{Call, Exchange};
use crate::consent::{ConsentHold, UseReservation};
use crate::proxy::GatewayError;
use crate::proxy::body::{Audit, CallEnd, CallSummary, Origin, ResponseBody, without_message};
use crate::proxy::record::{self, Ending, Tally};
use crate::routing::upstream::ServedBy;
use crate::telemetry::metrics::CallKind;

impl Call<'_> {
    /// Answers the caller with the backend's response.
    pub(super) async fn relay(
        &mut self,
        forwarded: Forwarded,
        exchange: Exchange,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let Forwarded {
            mut response,
            call_end,
            bytes_in,
            elapsed,
        } = forwarded;
        let Exchange {
            admitted,
            headers,
            routed,
            policy_elapsed,
            consent_use,
        } = exchange;
        let provider = routed.provider.provider();
        // A gRPC caller takes an answer without a status for its HTTP
        // status's (a proxy's 503), or for a success: the gateway says
        // what it is. (A JSON call's is its `bad-answer`.)
        if self.answer.is_none()
            && let Some(detail) = not_grpc(&response)
        {
            return Err(GatewayError::UpstreamFailed {
                provider: provider.clone(),
                detail,
            });
        }
        let consent = consent_use.as_ref().map(UseReservation::hold);
        // Its headers (and, trailers-only, its status) are the answer's
        // start: they go to the caller only while the consent holds.
        if let Some(Err(refusal)) = consent.as_ref().map(ConsentHold::check) {
            return Err(refusal.into());
        }
        let summary = CallSummary {
            metrics: self.conn.metrics.clone(),
            request_id: self.request_id.to_str().unwrap_or_default().to_owned(),
            trace_id: self.trace.trace_id_hex(),
            span: tracing::Span::current(),
            caller: admitted.caller.to_string(),
            provider: provider.to_string(),
            method: self.uri.path().to_owned(),
            kind: if self.state.catalog.streams(self.uri.path()) {
                CallKind::Stream
            } else {
                CallKind::Unary
            },
            purpose: headers.purpose_code().unwrap_or_default().to_owned(),
            endpoint: response
                .extensions()
                .get::<ServedBy>()
                .map(|served| served.0.clone()),
            started: self.received,
            policy: policy_elapsed,
            upstream: elapsed,
            bytes_in,
            bytes_out: 0,
            consent_use,
        };
        if let Some(index) = self
            .record
            .as_ref()
            .and_then(|record| record.decision_index())
        {
            let (name, value) = record::audit_index(index);
            response.headers_mut().insert(name, value);
        }
        // Made only where it is needed: most trailers-only answers relay
        // the backend's own status.
        let instance = self.state.federation.instance_header.clone();
        let origin = || Origin {
            instance,
            partner: routed.provider.partner().map(str::to_owned),
        };
        let mut response = if http_body::Body::is_end_stream(response.body()) {
            if let Some(answer) = self.answer.take() {
                without_message(response.headers_mut(), answer, &origin());
            }
            self.trailers_only(response, call_end, summary).await?
        } else {
            let audit = self.record.take().map(Audit::new);
            let provider = provider.clone();
            let mut response = response.map(|body| {
                ResponseBody::relay(
                    body,
                    call_end,
                    routed.deadline,
                    (provider, origin()),
                    audit,
                    Some(summary),
                )
            });
            if let Some(answer) = self.answer.take() {
                response.body_mut().transcode(answer);
            }
            if let Some(consent) = consent {
                response.body_mut().hold_to(consent);
            }
            response
        };
        response.body_mut().holds(admitted.permit);
        Ok(response)
    }

    /// A trailers-only answer (HEADERS with END_STREAM, as backends send
    /// for most errors) must stay trailers-only: relayed as headers and an
    /// empty DATA frame, strict clients such as gRPC C-core report
    /// `UNKNOWN` instead of the backend's status. Its headers carry the
    /// status, so they wait for the outcome to be written; so does the
    /// call's end: a caller refused for want of the outcome learnt
    /// nothing, and its consent's use is given back.
    async fn trailers_only<B>(
        &mut self,
        mut response: Response<B>,
        call_end: CallEnd,
        summary: CallSummary,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let summary = Unfinished(Some(summary));
        if let Some(record) = self.record.take() {
            let written = record
                .write_outcome(
                    Ending::Trailers(response.headers()),
                    Some(&Tally::new(None)),
                )
                .await;
            match written {
                Ok(index) => {
                    let (name, value) = record::audit_index(index);
                    response.headers_mut().insert(name, value);
                }
                Err(error) => {
                    let error = GatewayError::OutcomeUnrecorded(error.to_string());
                    summary.finish(Ending::Trailers(&error.clone().into_trailers()));
                    return Err(error);
                }
            }
        }
        summary.finish(Ending::Trailers(response.headers()));
        drop(call_end);
        Ok(response.map(|_| ResponseBody::empty()))
    }
}

/// A call's summary until its end is known: a caller that leaves while
/// the outcome is written (this future dropped) ends it cancelled, and
/// its consent's use is given back.
struct Unfinished(Option<CallSummary>);

impl Unfinished {
    fn finish(mut self, ending: Ending<'_>) {
        if let Some(summary) = self.0.take() {
            summary.finish(ending);
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(summary) = self.0.take() {
            summary.finish(Ending::Cancelled);
        }
    }
}

/// Why a backend's response is not a gRPC answer, if it is not: it has no
/// `grpc-status` in its headers and is not HTTP 200 `application/grpc`
/// with a body (where the status follows in the trailers).
fn not_grpc(response: &Response<hyper::body::Incoming>) -> Option<String> {
    if response.headers().contains_key("grpc-status") {
        return None;
    }
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let grpc = status == http::StatusCode::OK && content_type.starts_with("application/grpc");
    if !grpc {
        Some(format!(
            "answered HTTP {} ({}) without a gRPC status",
            status.as_u16(),
            crate::wire::escape::Escaped(if content_type.is_empty() {
                "no content-type"
            } else {
                content_type
            })
        ))
    } else if http_body::Body::is_end_stream(response.body()) {
        Some("answered without a gRPC status".to_owned())
    } else {
        None
    }
}
