//! TLS listeners that serve HTTP/2, shared by the gateway and the mock
//! agencies.
//!
//! This module owns accepting TCP connections, the TLS handshake (with its
//! timeout), reading the peer's identity once per connection, the HTTP/2
//! connection settings, and graceful shutdown. It never looks at requests:
//! the service built per connection does.

pub mod client;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{NamedGroup, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::identity::tls::{certificate_not_after, member_of_chain};
use crate::identity::{MemberId, PeerIdentityError};

/// What is known about the peer of a connection, from its verified
/// certificate. Inserted into the extensions of every request on it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    pub member: Result<MemberId, PeerIdentityError>,
    /// When the peer's certificate expires, in seconds since the epoch.
    pub certificate_not_after: Option<i64>,
    pub key_exchange: Option<NamedGroup>,
    pub control: ConnectionControl,
}

/// Lets the service of a connection close it: gracefully, after the
/// responses already on their way.
#[derive(Debug, Clone, Default)]
pub struct ConnectionControl {
    close: Arc<tokio::sync::Notify>,
}

impl ConnectionControl {
    /// Asks the connection to close once its open streams are done.
    pub fn close(&self) {
        self.close.notify_one();
    }
}

/// Limits of one HTTP/2 listener. The defaults suit a gateway facing
/// partners: bounded streams, headers and buffers, keepalive to find dead
/// peers, and protection against rapid-reset floods.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub handshake_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_frame_size: u32,
    pub max_header_list_size: u32,
    pub max_send_buffer: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub drain_timeout: Duration,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            initial_stream_window: 1 << 20,
            initial_connection_window: 4 << 20,
            max_frame_size: 16 << 10,
            max_header_list_size: 16 << 10,
            max_send_buffer: 256 << 10,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(15),
        }
    }
}

/// A service that can serve the requests of one HTTP/2 connection: what
/// the per-connection factory of [`TlsListener::serve`] returns.
pub trait ConnectionService:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
    type Body: Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;
}

impl<S, B> ConnectionService for S
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Body = B;
}

/// What a listener counts about its connections, for metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    open: std::sync::atomic::AtomicU64,
    /// Refused handshakes by reason; the reasons are a fixed set.
    refused: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl ListenerStats {
    /// Connections past the handshake and still open.
    pub fn open(&self) -> u64 {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refused handshakes, by reason.
    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(reason, count)| (*reason, *count))
            .collect()
    }

    fn refuse(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }
}

/// Counts a connection as open while alive.
struct OpenConnection(Arc<ListenerStats>);

impl OpenConnection {
    fn new(stats: Arc<ListenerStats>) -> Self {
        stats
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A refused handshake's reason, from a fixed set (a metric label).
fn refusal_reason(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(error) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        return "connection";
    };
    match error {
        Error::NoCertificatesPresented => "no-client-certificate",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "certificate-expired",
        Error::InvalidCertificate(CertificateError::Revoked) => "certificate-revoked",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown-issuer",
        Error::InvalidCertificate(_) => "bad-certificate",
        Error::NoApplicationProtocol | Error::PeerIncompatible(_) => "incompatible",
        _ => "protocol",
    }
}

/// The TLS configuration a listener hands to new connections; swapping it
/// (a certificate or CA rotation) affects only connections accepted after.
pub type SharedServerConfig = Arc<arc_swap::ArcSwap<ServerConfig>>;

/// A TLS listener, bound and ready to serve.
pub struct TlsListener {
    tcp: TcpListener,
    tls: SharedServerConfig,
    settings: ListenerSettings,
    stats: Arc<ListenerStats>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("tcp", &self.tcp)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: Arc<ServerConfig>, settings: ListenerSettings) -> Self {
        Self {
            tcp,
            tls: Arc::new(arc_swap::ArcSwap::new(tls)),
            settings,
            stats: Arc::default(),
        }
    }

    /// What the listener counts about its connections.
    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    /// The TLS configuration of new connections, to swap on reload.
    pub fn tls(&self) -> SharedServerConfig {
        self.tls.clone()
    }

    /// The address the listener is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts connections until `shutdown` resolves, then lets open
    /// connections finish their streams (up to the drain timeout) and
    /// returns. `make_service` is called once per connection, after the
    /// handshake, with what the certificate says about the peer.
    pub async fn serve<M, S>(self, make_service: M, shutdown: impl Future<Output = ()>)
    where
        M: Fn(PeerInfo) -> S + Send + Sync + 'static,
        S: ConnectionService,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a clone of `open_tx`; once the last one
        // is dropped, `open_rx.recv()` returns `None` and draining is done.
        let (open_tx, mut open_rx) = mpsc::channel::<Infallible>(1);
        let settings = Arc::new(self.settings);
        let make_service = Arc::new(make_service);
        tokio::pin!(shutdown);
        loop {
            let (tcp, remote_addr) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off
                        // rather than spin, and keep serving.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let connection = Connection {
                acceptor: TlsAcceptor::from(self.tls.load_full()),
                stats: self.stats.clone(),
                settings: settings.clone(),
                stop: stop_rx.clone(),
                _open: open_tx.clone(),
            };
            let make_service = make_service.clone();
            tokio::spawn(connection.run(tcp, remote_addr, move |peer| make_service(peer)));
        }
        drop(self.tcp);
        drop(open_tx);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(settings.drain_timeout, open_rx.recv()).await;
        if drained.is_err() {
            tracing::warn!("drain timeout passed with connections still open");
        }
    }
}

/// One accepted TCP connection, from handshake to close.
struct Connection {
    acceptor: TlsAcceptor,
    settings: Arc<ListenerSettings>,
    stats: Arc<ListenerStats>,
    stop: watch::Receiver<bool>,
    _open: mpsc::Sender<Infallible>,
}

impl Connection {
    async fn run<S: ConnectionService>(
        mut self,
        tcp: TcpStream,
        remote_addr: SocketAddr,
        make_service: impl FnOnce(PeerInfo) -> S + Send,
    ) {
        let _ = tcp.set_nodelay(true);
        let handshake =
            tokio::time::timeout(self.settings.handshake_timeout, self.acceptor.accept(tcp));
        let tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                let kind = refusal_reason(&error);
                self.stats.refuse(kind);
                tracing::info!(%remote_addr, kind, reason = %error, "TLS handshake refused");
                return;
            }
            Err(_) => {
                self.stats.refuse("timeout");
                tracing::info!(%remote_addr, kind = "timeout", reason = "handshake timeout", "TLS handshake refused");
                return;
            }
        };
        let _open = OpenConnection::new(self.stats.clone());
        let (_, session) = tls.get_ref();
        let control = ConnectionControl::default();
        let peer = PeerInfo {
            remote_addr,
            member: member_of_chain(session.peer_certificates()),
            certificate_not_after: session
                .peer_certificates()
                .and_then(<[_]>::first)
                .and_then(certificate_not_after),
            control: control.clone(),
            key_exchange: session
                .negotiated_key_exchange_group()
                .map(|group| group.name()),
        };
        match &peer.member {
            Ok(member) => tracing::debug!(%remote_addr, %member, "connection accepted"),
            Err(reason) => {
                tracing::info!(%remote_addr, %reason, "connection accepted without member identity")
            }
        }
        let service = make_service(peer);

        let settings = &self.settings;
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.max_concurrent_streams)
            .initial_stream_window_size(settings.initial_stream_window)
            .initial_connection_window_size(settings.initial_connection_window)
            .max_frame_size(settings.max_frame_size)
            .max_header_list_size(settings.max_header_list_size)
            .max_send_buf_size(settings.max_send_buffer)
            .keep_alive_interval(settings.keepalive_interval)
            .keep_alive_timeout(settings.keepalive_timeout)
            .max_pending_accept_reset_streams(64)
            .max_local_error_reset_streams(256);
        let connection = builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = async { self.stop.wait_for(|stop| *stop).await.map(|_| ()) } => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            () = control.close.notified() => {
                tracing::info!(%remote_addr, "closing the connection at the service's request");
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%remote_addr, %error, "connection closed with an error");
        }
    }
}

/// Adapts a tower service to a per-connection hyper service that sees the
/// connection's [`PeerInfo`] in every request's extensions.
pub fn with_peer<T, B>(
    peer: PeerInfo,
    service: T,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<B>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
> + Send
+ 'static
where
    T: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    B: Body,
    T::Future: Send + 'static,
{
    hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(peer.clone());
        tower::util::ServiceExt::oneshot(service.clone(), request)
    })
}
