//! What the streams of one HTTP/2 connection are doing: how many are open,
//! since when none is, and how they ended.
//!
//! This module owns the wrappers that see every stream of a connection (the
//! service, its response bodies and the executor their tasks run on), the
//! idle timer and the premature-reset rule. It never looks at what a
//! request or response says, and never closes anything itself: the
//! connection decides what to do with what it reports.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A stream the client cancels this soon after sending it is a premature
/// reset: work started for nothing, the shape of a rapid-reset attack.
const PREMATURE_WITHIN: Duration = Duration::from_secs(1);

/// Streams a connection must have ended before the premature-reset rule
/// applies; then, if at least half of them were premature resets, the
/// connection is flooding. Envoy's rule, with Envoy's numbers: a client
/// cancelling some calls on deadline is nowhere near it.
const PREMATURE_MIN_STREAMS: u64 = 500;

#[derive(Debug, Clone, Copy)]
struct Streams {
    open: usize,
    /// When the last open stream ended (or the connection started).
    idle_since: Instant,
    ended: u64,
    premature: u64,
}

/// The streams of one connection, shared by its stream wrappers.
#[derive(Debug)]
pub(super) struct Activity {
    streams: watch::Sender<Streams>,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            streams: watch::Sender::new(Streams {
                open: 0,
                idle_since: Instant::now(),
                ended: 0,
                premature: 0,
            }),
        })
    }

    fn stream_started(self: &Arc<Self>) -> StreamGuard {
        self.streams.send_modify(|streams| streams.open += 1);
        StreamGuard {
            activity: self.clone(),
            started: Instant::now(),
            complete: false,
        }
    }

    /// Resolves once no stream has been open for `timeout`.
    pub(super) async fn idle_for(&self, timeout: Duration) {
        let mut changes = self.streams.subscribe();
        loop {
            let streams = *changes.borrow_and_update();
            if streams.open == 0 {
                tokio::select! {
                    () = tokio::time::sleep_until(streams.idle_since + timeout) => return,
                    _ = changes.changed() => {}
                }
            } else {
                // The sender lives as long as `self`: this cannot fail.
                let _ = changes.changed().await;
            }
        }
    }

    /// Resolves once the client has cancelled most of its streams right
    /// after opening them (see [`PREMATURE_MIN_STREAMS`]).
    pub(super) async fn flooding(&self) {
        let mut changes = self.streams.subscribe();
        let _ = changes
            .wait_for(|streams| {
                streams.ended >= PREMATURE_MIN_STREAMS
                    && streams.premature.saturating_mul(2) >= streams.ended
            })
            .await;
    }
}

/// One open stream; counts it as ended when dropped, as a premature reset
/// if the response had not ended yet and the stream was young.
#[derive(Debug)]
struct StreamGuard {
    activity: Arc<Activity>,
    started: Instant,
    complete: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let premature = !self.complete && self.started.elapsed() < PREMATURE_WITHIN;
        self.activity.streams.send_modify(|streams| {
            streams.open = streams.open.saturating_sub(1);
            streams.ended += 1;
            if premature {
                streams.premature += 1;
            }
            if streams.open == 0 {
                streams.idle_since = Instant::now();
            }
        });
    }
}

/// A connection's service, with each of its streams counted from request
/// to the end of the response.
#[derive(Debug)]
pub(super) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    B: Body,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        TrackedFuture {
            guard: Some(self.activity.stream_started()),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's answer to one stream, still counted while it is
    /// being made.
    #[derive(Debug)]
    pub(super) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<StreamGuard>,
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        let mut guard = this.guard.take();
        // hyper sends a response whose body is already over with its
        // headers and never polls the body.
        if let Some(guard) = guard.as_mut()
            && response.body().is_end_stream()
        {
            guard.complete = true;
        }
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its stream counted until it ends.
    #[derive(Debug)]
    pub(super) struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<StreamGuard>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        // Trailers are the last frame hyper asks for, and so is a frame
        // after which the body says it is over (a JSON answer, whole in
        // memory): hyper polls no further. An error ends the stream on the
        // gateway's side, not the client's.
        let over = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if over && let Some(guard) = this.guard.as_mut() {
            guard.complete = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs the tasks hyper spawns for a connection's streams, each holding a
/// token of the listener's drain (a listener that has drained has no
/// stream task left writing to the exchange log), and ends those still
/// running when the connection ends.
///
/// Without that, a call whose client vanished would go on until its
/// request body failed, and that failure would reach the backend's
/// connection first: the call would end as a backend failure, counted
/// against a healthy endpoint. Ended here, it is a cancelled call.
#[derive(Debug, Clone)]
pub(super) struct StreamExecutor {
    open: mpsc::Sender<Infallible>,
    connection_over: watch::Receiver<bool>,
}

impl StreamExecutor {
    /// An executor whose tasks end when `ConnectionOver` is dropped.
    pub(super) fn new(open: mpsc::Sender<Infallible>) -> (Self, ConnectionOver) {
        let (over, connection_over) = watch::channel(false);
        (
            Self {
                open,
                connection_over,
            },
            ConnectionOver(over),
        )
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let open = self.open.clone();
        let mut over = self.connection_over.clone();
        tokio::spawn(async move {
            let _open = open;
            tokio::select! {
                // First: once the connection is over, nothing the stream
                // does can reach its client any more.
                biased;
                _ = over.wait_for(|over| *over) => {}
                _ = future => {}
            }
        });
    }
}

/// Ends the stream tasks of a connection when dropped: to be dropped
/// before the connection itself, whose end fails their request bodies.
#[derive(Debug)]
pub(super) struct ConnectionOver(watch::Sender<bool>);

impl Drop for ConnectionOver {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}
