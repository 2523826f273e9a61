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
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::deadline::Deadline;
use super::error::GatewayError;
use super::headers::strip_bridge_headers;
use crate::identity::MemberId;
use crate::routing::upstream::BoxError;

/// Dropping this ends the upstream side of a call.
#[derive(Debug)]
pub struct CallEnd(#[allow(dead_code)] oneshot::Sender<Infallible>);

/// The caller's request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    /// Resolves (with an error: nothing is ever sent) once the response side
    /// is over; `None` after that.
    call_end: Option<oneshot::Receiver<Infallible>>,
}

impl RequestBody {
    /// Wraps the caller's body; the call's upstream side ends when the
    /// returned [`CallEnd`] is dropped.
    pub fn new(inner: Incoming) -> (Self, CallEnd) {
        let (sender, receiver) = oneshot::channel();
        (
            Self {
                inner,
                call_end: Some(receiver),
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
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(frame.map(|frame| frame.map(without_bridge_trailers).map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
}

#[derive(Debug)]
struct Relay {
    /// `None` once the upstream stream is finished or abandoned; dropping it
    /// resets the upstream response, and dropping `call_end` with it ends
    /// the request side.
    upstream: Option<(Incoming, CallEnd)>,
    deadline: Pin<Box<Sleep>>,
    budget: std::time::Duration,
    provider: MemberId,
}

impl ResponseBody {
    /// A body with no frames.
    pub fn empty() -> Self {
        Self {
            relay: None,
            local: None,
        }
    }

    /// The body of a gateway service's answer.
    pub fn local(body: tonic::body::Body) -> Self {
        Self {
            relay: None,
            local: Some(body),
        }
    }

    /// Relays `upstream` until it ends or the deadline passes; the call's
    /// upstream side ends with it.
    pub fn relay(
        upstream: Incoming,
        call_end: CallEnd,
        deadline: Deadline,
        provider: MemberId,
    ) -> Self {
        // A trailers-only answer (HEADERS with END_STREAM, as backends send
        // for most errors) must stay trailers-only: relayed as headers and an
        // empty DATA frame, strict clients such as gRPC C-core report
        // UNKNOWN instead of the backend's status.
        if upstream.is_end_stream() {
            return Self::empty();
        }
        Self {
            relay: Some(Relay {
                upstream: Some((upstream, call_end)),
                deadline: Box::pin(tokio::time::sleep_until(deadline.at())),
                budget: deadline.budget(),
                provider,
            }),
            local: None,
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
        let Some((upstream, _)) = relay.upstream.as_mut() else {
            return Poll::Ready(None);
        };
        if relay.deadline.as_mut().poll(cx).is_ready() {
            relay.upstream = None;
            let error = GatewayError::DeadlineExceeded(relay.budget);
            return Poll::Ready(Some(Ok(Frame::trailers(error.into_trailers()))));
        }
        let frame = ready!(Pin::new(upstream).poll_frame(cx));
        Poll::Ready(match frame {
            None => {
                relay.upstream = None;
                None
            }
            Some(Ok(frame)) if frame.is_trailers() => {
                relay.upstream = None;
                Some(Ok(without_bridge_trailers(frame)))
            }
            Some(Ok(frame)) => Some(Ok(frame)),
            Some(Err(error)) => {
                relay.upstream = None;
                let error = GatewayError::UpstreamFailed {
                    provider: relay.provider.clone(),
                    detail: error.to_string(),
                };
                Some(Ok(Frame::trailers(error.into_trailers())))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        match &self.local {
            Some(local) => local.is_end_stream(),
            None => self
                .relay
                .as_ref()
                .is_none_or(|relay| relay.upstream.is_none()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(local) = &self.local {
            return local.size_hint();
        }
        match &self.relay {
            Some(Relay {
                upstream: Some((upstream, _)),
                ..
            }) => upstream.size_hint(),
            _ => SizeHint::with_exact(0),
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
