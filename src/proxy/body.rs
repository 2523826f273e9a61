//! The response body sent back to a caller.
//!
//! Upstream bytes pass through frame by frame, never decoded, polled only as
//! fast as the caller's HTTP/2 window allows, so a slow reader slows the
//! backend instead of growing a buffer here. The body also enforces the
//! call's deadline, keeps backends from writing `bridge-*` trailers, and
//! turns an upstream failure mid-stream into a proper gRPC status instead of
//! a bare stream reset.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::deadline::Deadline;
use super::error::GatewayError;
use super::headers::strip_bridge_headers;
use crate::identity::MemberId;

/// A response body: empty (gateway-made, trailers-only responses) or relayed
/// from a backend.
#[derive(Debug)]
pub struct ResponseBody {
    relay: Option<Relay>,
}

#[derive(Debug)]
struct Relay {
    /// `None` once the upstream stream is finished or abandoned; dropping it
    /// resets the upstream stream, which is how cancellation travels.
    upstream: Option<Incoming>,
    deadline: Pin<Box<Sleep>>,
    budget: std::time::Duration,
    provider: MemberId,
}

impl ResponseBody {
    /// A body with no frames.
    pub fn empty() -> Self {
        Self { relay: None }
    }

    /// Relays `upstream` until it ends or `deadline` passes.
    pub fn relay(upstream: Incoming, deadline: Deadline, provider: MemberId) -> Self {
        // A trailers-only answer (HEADERS with END_STREAM, as backends send
        // for most errors) must stay trailers-only: relayed as headers and an
        // empty DATA frame, strict clients such as gRPC C-core report
        // UNKNOWN instead of the backend's status.
        if upstream.is_end_stream() {
            return Self::empty();
        }
        Self {
            relay: Some(Relay {
                upstream: Some(upstream),
                deadline: Box::pin(tokio::time::sleep_until(deadline.at())),
                budget: deadline.budget(),
                provider,
            }),
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
        let Some(relay) = self.relay.as_mut() else {
            return Poll::Ready(None);
        };
        let Some(upstream) = relay.upstream.as_mut() else {
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
            Some(Ok(frame)) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    relay.upstream = None;
                    strip_bridge_headers(&mut trailers);
                    Some(Ok(Frame::trailers(trailers)))
                }
                Err(frame) => Some(Ok(frame)),
            },
            Some(Err(error)) => {
                relay.upstream = None;
                let error = GatewayError::UpstreamFailed {
                    provider: relay.provider.clone(),
                    reason: error.to_string(),
                };
                Some(Ok(Frame::trailers(error.into_trailers())))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.relay
            .as_ref()
            .is_none_or(|relay| relay.upstream.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.relay {
            Some(Relay {
                upstream: Some(upstream),
                ..
            }) => upstream.size_hint(),
            _ => SizeHint::with_exact(0),
        }
    }
}
