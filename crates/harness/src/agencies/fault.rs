//! Failures on purpose: the mock agencies' fault injection, so that tests
//! and demos can show what the gateway does when a backend is slow, fails,
//! resets a stream or falls over.
//!
//! Off unless the agency is started with faults on
//! ([`crate::launch::BoundAgency::with_faults`]: the test bed, and
//! `govbridge dev --faults`). No configuration key turns it on, so an
//! agency run from a configuration cannot be made to fail by its callers.
//! Two ways in, then:
//!
//! - per call, the [`FAULT_HEADER`] request header, which the gateway
//!   passes upstream like any metadata: `delay=250ms`, `status=UNAVAILABLE`
//!   (or `status=14`, optionally `message=...` after it), `reset`, `drop`,
//!   `garble`, `garble=second`, `nostatus`, joined by `,`
//!   (`delay=100ms,status=UNAVAILABLE`);
//! - per agency, a [`FaultSwitch`] held by the test, applied to every call
//!   that carries no header ([`FaultSwitch::set_for_calls`] spares the
//!   gateway's own health checks and consent feed).
//!
//! The failures: `status` answers with that status without calling the
//! handler; `reset` sends response headers then resets the stream
//! (`RST_STREAM`); `drop` closes the TCP connection at once, without
//! GOAWAY, as a crashed server would; `garble` answers `OK` with a message
//! that is not the method's response (as a backend built from another
//! version of its proto might), `garble=second` sends one such after the
//! answer's first message, in the same DATA frame; `nostatus` answers
//! HTTP 503 with no gRPC status and no body, as a proxy before the backend
//! might. `delay` comes first and may stand alone.

use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tonic::{Code, Status};
use tower::ServiceExt as _;

use super::AgencyService;
use gateway::net::PeerInfo;

/// The request header that asks an agency with faults on to fail.
pub const FAULT_HEADER: &str = "govbridge-fault";

/// Longest delay a fault may ask for.
const MAX_DELAY: Duration = Duration::from_secs(600);

/// What an agency does instead of, or before, answering a call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fault {
    /// Waits this long first.
    pub delay: Option<Duration>,
    /// Then fails so, or answers normally when `None`.
    pub failure: Option<Failure>,
}

/// How a call fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Answers with this status, without calling the handler.
    Status(Code, String),
    /// Sends response headers, then resets the stream.
    Reset,
    /// Drops the whole connection at once.
    Drop,
    /// Answers `OK` with a message no decoder reads: a field whose length
    /// runs past the message's end.
    Garble,
    /// Answers normally, but with such a message after the first, in the
    /// same DATA frame.
    GarbleSecond,
    /// Answers HTTP 503 with neither a gRPC status nor a body.
    NoStatus,
}

impl Fault {
    /// Answers after `delay`, normally.
    pub fn delay(delay: Duration) -> Self {
        Self {
            delay: Some(delay),
            failure: None,
        }
    }

    /// Fails so, at once.
    pub fn fail(failure: Failure) -> Self {
        Self {
            delay: None,
            failure: Some(failure),
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut fault = Fault::default();
        let mut message = None;
        for part in text.split(',').map(str::trim) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            match (key, value) {
                ("delay", value) => {
                    let delay = gateway::config::parse_duration(value)
                        .map_err(|why| format!("delay={value}: {why}"))?;
                    if delay > MAX_DELAY {
                        return Err(format!("delay={value}: at most {MAX_DELAY:?}"));
                    }
                    fault.delay = Some(delay);
                }
                ("status", value) => {
                    fault.failure = Some(Failure::Status(code(value)?, String::new()))
                }
                ("message", value) => message = Some(value.to_owned()),
                ("reset", "") => fault.failure = Some(Failure::Reset),
                ("drop", "") => fault.failure = Some(Failure::Drop),
                ("garble", "") => fault.failure = Some(Failure::Garble),
                ("garble", "second") => fault.failure = Some(Failure::GarbleSecond),
                ("nostatus", "") => fault.failure = Some(Failure::NoStatus),
                _ => {
                    return Err(format!(
                        "`{part}` is not one of delay=DURATION, status=CODE, message=TEXT, reset, \
                         drop, garble, garble=second, nostatus"
                    ));
                }
            }
        }
        match (&mut fault.failure, message) {
            (Some(Failure::Status(_, text)), Some(message)) => *text = message,
            (_, Some(_)) => return Err("message= goes with status=".to_owned()),
            (Some(Failure::Status(code, text)), None) => {
                *text = format!("fault injected: {}", code.description());
            }
            _ => {}
        }
        Ok(fault)
    }
}

/// A gRPC status code by name (`UNAVAILABLE`) or number (`14`), not OK.
fn code(value: &str) -> Result<Code, String> {
    let number = value.parse::<i32>().ok().or_else(|| {
        (1..=16).find(|&number| gateway::telemetry::metrics::code_name(number) == value)
    });
    match number {
        Some(number @ 1..=16) => Ok(Code::from_i32(number)),
        _ => Err(format!(
            "status={value}: expected an error code, by name (UNAVAILABLE) or number (14)"
        )),
    }
}

/// The fault an agency applies to calls that ask for none; shared between
/// the agency and whoever holds a clone. It also keeps the request ids of
/// the last calls that reached the agency, for a test to tell what was
/// forwarded.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch {
    switched: Arc<ArcSwapOption<Switched>>,
    received: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

/// Request ids a switch keeps, at most: the oldest go first.
const RECEIVED_KEPT: usize = 1 << 16;

/// A fault set on a switch, and which calls it reaches.
#[derive(Debug)]
struct Switched {
    fault: Fault,
    /// Whether the gateway's own calls suffer it too.
    gateway_calls: bool,
}

/// The calls the gateway makes on its own behalf: health checks, and the
/// consent feed it follows at the portal.
fn is_gateway_call(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path == "/govbridge.consent.v1.Consent/WatchStatus"
}

impl FaultSwitch {
    /// Every call from now on suffers `fault`, the gateway's health checks
    /// and consent feed included: the agency looks down.
    pub fn set(&self, fault: Fault) {
        self.store(fault, true);
    }

    /// Partners' calls from now on suffer `fault`; the gateway's health
    /// checks and consent feed are answered normally, so the agency stays
    /// in rotation and its failures reach callers as they are.
    pub fn set_for_calls(&self, fault: Fault) {
        self.store(fault, false);
    }

    fn store(&self, fault: Fault, gateway_calls: bool) {
        self.switched.store(Some(Arc::new(Switched {
            fault,
            gateway_calls,
        })));
    }

    /// Calls are answered normally again.
    pub fn clear(&self) {
        self.switched.store(None);
    }

    /// The `bridge-request-id`s of the calls that reached the agency
    /// (of the last 65,536), oldest first; the gateway's own calls
    /// (health checks, the consent feed) are not among them.
    pub fn received(&self) -> Vec<String> {
        let received = self
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        received.iter().cloned().collect()
    }

    fn receive(&self, request: &http::Request<Incoming>) {
        if is_gateway_call(request.uri().path()) {
            return;
        }
        let id = request
            .headers()
            .get(gateway::wire::headers::BRIDGE_REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let mut received = self
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if received.len() == RECEIVED_KEPT {
            received.pop_front();
        }
        received.push_back(id.to_owned());
    }

    /// The fault for a call to `path`, if any.
    fn current(&self, path: &str) -> Option<Fault> {
        let switched = self.switched.load();
        let switched = switched.as_deref()?;
        (switched.gateway_calls || !is_gateway_call(path)).then(|| switched.fault.clone())
    }
}

/// `service`, failing on request.
pub fn with_faults(service: AgencyService, switch: FaultSwitch) -> AgencyService {
    let faulty = tower::service_fn(move |request: http::Request<Incoming>| {
        let service = service.clone();
        switch.receive(&request);
        let fault = match request.headers().get(FAULT_HEADER) {
            Some(value) => value
                .to_str()
                .map_err(|_| "not visible ASCII".to_owned())
                .and_then(Fault::from_str)
                .map(Some),
            None => Ok(switch.current(request.uri().path())),
        };
        async move {
            let fault = match fault {
                Ok(Some(fault)) => fault,
                Ok(None) => return service.oneshot(request).await,
                Err(why) => {
                    let status = Status::invalid_argument(format!("{FAULT_HEADER}: {why}"));
                    return Ok(status.into_http());
                }
            };
            if let Some(delay) = fault.delay {
                tokio::time::sleep(delay).await;
            }
            match fault.failure {
                None => service.oneshot(request).await,
                Some(Failure::Status(code, message)) => Ok(Status::new(code, message).into_http()),
                Some(Failure::Reset) => {
                    let mut response = http::Response::new(tonic::body::Body::new(Resetting));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    Ok(response)
                }
                Some(Failure::Drop) => {
                    if let Some(peer) = request.extensions().get::<PeerInfo>() {
                        peer.control.abort();
                    }
                    // The connection, and this call with it, is dropped.
                    std::future::pending().await
                }
                Some(Failure::Garble) => {
                    let mut response = http::Response::new(tonic::body::Body::new(Garbled(0)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    Ok(response)
                }
                Some(Failure::GarbleSecond) => {
                    let response = service.oneshot(request).await?;
                    Ok(response.map(|body| {
                        tonic::body::Body::new(GarbledSecond {
                            body,
                            garbled: false,
                        })
                    }))
                }
                Some(Failure::NoStatus) => {
                    let mut response = http::Response::new(tonic::body::Body::empty());
                    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    Ok(response)
                }
            }
        }
    });
    AgencyService::new(faulty)
}

/// A response body that fails at once: hyper then resets the stream.
struct Resetting;

impl Body for Resetting {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Poll::Ready(Some(Err(Status::internal("fault injected: reset"))))
    }
}

/// An `OK` answer whose one message says its first field is 5 bytes
/// long, and ends after 1; counts the frames it sent.
struct Garbled(u8);

impl Body for Garbled {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let frame = match self.0 {
            0 => Frame::data(Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 5, b'a'])),
            1 => {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                Frame::trailers(trailers)
            }
            _ => return Poll::Ready(None),
        };
        self.0 += 1;
        Poll::Ready(Some(Ok(frame)))
    }
}

/// An answer whose first data frame ends with a garbled message (as
/// [`Garbled`] sends) after what it held; the rest as it comes.
struct GarbledSecond {
    body: tonic::body::Body,
    garbled: bool,
}

impl Body for GarbledSecond {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        let Some(Ok(frame)) = frame else {
            return Poll::Ready(frame);
        };
        match frame.into_data() {
            Ok(data) if !self.garbled => {
                self.garbled = true;
                let mut both = data.to_vec();
                both.extend_from_slice(&[0, 0, 0, 0, 3, 0x0a, 5, b'a']);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(both)))))
            }
            Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Err(frame) => Poll::Ready(Some(Ok(frame))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_the_header() {
        assert_eq!(
            "delay=250ms".parse::<Fault>().unwrap(),
            Fault::delay(Duration::from_millis(250))
        );
        assert_eq!(
            "delay=100ms, status=UNAVAILABLE".parse::<Fault>().unwrap(),
            Fault {
                delay: Some(Duration::from_millis(100)),
                failure: Some(Failure::Status(
                    Code::Unavailable,
                    "fault injected: The service is currently unavailable".to_owned()
                )),
            }
        );
        assert_eq!(
            "status=8,message=slow down".parse::<Fault>().unwrap(),
            Fault::fail(Failure::Status(
                Code::ResourceExhausted,
                "slow down".to_owned()
            ))
        );
        assert_eq!(
            "reset".parse::<Fault>().unwrap(),
            Fault::fail(Failure::Reset)
        );
        assert_eq!("drop".parse::<Fault>().unwrap(), Fault::fail(Failure::Drop));
        assert_eq!(
            "garble".parse::<Fault>().unwrap(),
            Fault::fail(Failure::Garble)
        );
        assert_eq!(
            "garble=second".parse::<Fault>().unwrap(),
            Fault::fail(Failure::GarbleSecond)
        );
        assert_eq!(
            "nostatus".parse::<Fault>().unwrap(),
            Fault::fail(Failure::NoStatus)
        );
    }

    #[test]
    fn bad_faults_say_what_is_expected() {
        for (text, expected) in [
            ("status=OK", "expected an error code"),
            ("status=17", "expected an error code"),
            ("delay=soon", "delay=soon"),
            ("delay=1h", "at most"),
            ("explode", "is not one of"),
            ("reset=1", "is not one of"),
            ("message=hi", "goes with status"),
        ] {
            let error = text.parse::<Fault>().unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
