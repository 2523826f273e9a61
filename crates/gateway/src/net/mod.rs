//! TLS listeners that serve HTTP/2, shared by the gateway and the mock
//! agencies.
//!
//! This module owns accepting TCP connections, the TLS handshake (with its
//! timeout), reading the peer's identity once per connection, the HTTP/2
//! connection settings, the life of a connection (idle, maximum age,
//! floods, a peer certificate that expires or is revoked while it is open)
//! and graceful shutdown. It never looks at requests: the service built per
//! connection does.

mod admission;

pub(crate) use crate::addresses::counted_as;
pub mod client;
mod streams;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::NamedGroup;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::identity::tls::{ListenerTls, peer_of_chain, until_expired};
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

impl PeerInfo {
    /// Whole days until the peer's certificate expires, at `now` (seconds
    /// since the epoch); 0 when unknown.
    pub fn certificate_days_left(&self, now: i64) -> i64 {
        self.certificate_not_after.map_or(0, |not_after| {
            crate::identity::tls::days_left(not_after, now)
        })
    }
}

/// Lets the service of a connection close it: gracefully, after the
/// responses already on their way.
#[derive(Debug, Clone, Default)]
pub struct ConnectionControl {
    close: Arc<tokio::sync::Notify>,
    abort: Arc<tokio::sync::Notify>,
}

impl ConnectionControl {
    /// Asks the connection to close once its open streams are done.
    pub fn close(&self) {
        self.close.notify_one();
    }

    /// Drops the connection at once, without GOAWAY, as a crashed server
    /// would: for the mock agencies' fault injection.
    pub fn abort(&self) {
        self.abort.notify_one();
    }
}

/// Limits of one HTTP/2 listener. The defaults suit a gateway facing
/// partners: bounded streams, headers and buffers, keepalive to find dead
/// peers, protection against rapid-reset floods, and connections that do
/// not live forever.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// From TCP accept to the end of the TLS handshake; on HTTP/1.1 (JSON
    /// calls), also from the start of a request to the end of its headers.
    pub handshake_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_frame_size: u32,
    pub max_header_list_size: u32,
    pub max_send_buffer: usize,
    /// Streams the client may reset before the gateway accepted them;
    /// more and the connection gets GOAWAY (CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the gateway may reset for the client's errors (refused
    /// streams included); more and the connection gets GOAWAY.
    pub max_local_error_reset_streams: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection with no open stream for this long gets GOAWAY.
    pub idle_timeout: Duration,
    /// A connection gets GOAWAY at this age (give or take 10 %, so that a
    /// partner's connections do not all reconnect at once).
    pub max_connection_age: Duration,
    /// How long open calls may run after a GOAWAY (shutdown, maximum age,
    /// idle) before their connection is closed.
    pub drain_timeout: Duration,
    /// Open connections (handshakes included) from one IP address (an
    /// IPv6 /64, which one host may hold whole).
    pub max_connections_per_address: u32,
    /// TLS handshakes under way at once, from every address: the cap that
    /// holds before anyone is authenticated, whatever the addresses a
    /// flood comes from. A connection beyond it is closed at once.
    pub max_handshakes: usize,
    /// Drop a connection whose streams are mostly cancelled by the client
    /// right after they start (the slow form of a rapid reset, which h2's
    /// pending-accept cap does not see). Right for partners; not for a
    /// backend, whose one client, the gateway, relays every partner's
    /// cancellations: see [`ListenerSettings::backend`].
    pub drop_rapid_resets: bool,
}

impl ListenerSettings {
    /// The settings of a backend's listener (the mock agencies): the
    /// defaults, without dropping connections that cancel streams early.
    pub fn backend() -> Self {
        Self {
            drop_rapid_resets: false,
            ..Self::default()
        }
    }
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
            max_pending_accept_reset_streams: 64,
            max_local_error_reset_streams: 256,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connection_age: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(15),
            max_connections_per_address: 256,
            max_handshakes: 1024,
            drop_rapid_resets: true,
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
    /// Connections the listener closed itself, by reason (a fixed set).
    closed: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Set once the listener stops accepting and drains.
    draining: std::sync::atomic::AtomicBool,
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

    /// Connections the listener closed itself, by reason: `idle`,
    /// `max-age`, `address-limit`, `keepalive-timeout`, `flood`,
    /// `protocol-error`, `drain-timeout`, and for a peer certificate that
    /// stopped passing while open, `certificate-revoked`,
    /// `certificate-expired`, `crl-stale`, `certificate-untrusted`.
    pub fn closed(&self) -> Vec<(&'static str, u64)> {
        self.closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(reason, count)| (*reason, *count))
            .collect()
    }

    /// Whether the listener has stopped accepting and is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn close(&self, reason: &'static str) {
        *self
            .closed
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
        Error::InvalidCertificate(
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. },
        ) => "crl-stale",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown-issuer",
        Error::InvalidCertificate(_) => "bad-certificate",
        Error::NoApplicationProtocol | Error::PeerIncompatible(_) => "incompatible",
        _ => "protocol",
    }
}

/// Why an open connection's peer certificate no longer passes, from a
/// fixed set (a metric label).
fn invalidation_reason(error: &rustls::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match error {
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "certificate-expired",
        Error::InvalidCertificate(CertificateError::Revoked) => "certificate-revoked",
        Error::InvalidCertificate(
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. },
        ) => "crl-stale",
        _ => "certificate-untrusted",
    }
}

/// The TLS of a listener. New connections handshake with the current one;
/// open connections check their peer's certificate again against each new
/// one (a CRL or CA change) and are closed if it no longer passes.
#[derive(Debug, Clone)]
pub struct SharedListenerTls(Arc<watch::Sender<Arc<ListenerTls>>>);

impl SharedListenerTls {
    fn new(tls: ListenerTls) -> Self {
        Self(Arc::new(watch::channel(Arc::new(tls)).0))
    }

    /// Replaces the listener's TLS (a reload).
    pub fn store(&self, tls: ListenerTls) {
        self.0.send_replace(Arc::new(tls));
    }

    /// The admin endpoint's TLS, of the same identity, as of now.
    pub fn admin(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.0.borrow().admin)
    }
}

/// A TLS listener, bound and ready to serve.
pub struct TlsListener {
    tcp: TcpListener,
    tls: SharedListenerTls,
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
    pub fn new(tcp: TcpListener, tls: ListenerTls, settings: ListenerSettings) -> Self {
        Self {
            tcp,
            tls: SharedListenerTls::new(tls),
            settings,
            stats: Arc::default(),
        }
    }

    /// What the listener counts about its connections.
    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    /// The listener's TLS, to swap on reload.
    pub fn tls(&self) -> SharedListenerTls {
        self.tls.clone()
    }

    /// The address the listener is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts connections until `shutdown` resolves, then stops
    /// accepting, sends every connection GOAWAY, lets their streams finish
    /// (up to the drain timeout, then closes what is left) and returns once
    /// every connection and stream task has ended. `make_service` is called
    /// once per connection, after the handshake, with what the certificate
    /// says about the peer.
    pub async fn serve<M, S>(self, make_service: M, shutdown: impl Future<Output = ()>)
    where
        M: Fn(PeerInfo) -> S + Send + Sync + 'static,
        S: ConnectionService,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task, and every stream task hyper spawns for it,
        // holds a clone of `open_tx`; once the last one is dropped,
        // `open_rx.recv()` returns `None` and draining is done.
        let (open_tx, mut open_rx) = mpsc::channel::<Infallible>(1);
        let settings = Arc::new(self.settings);
        let slots = crate::addresses::AddressSlots::new(settings.max_connections_per_address);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(settings.max_handshakes));
        // One warning per episode of a full handshake cap, not one per
        // connection of a flood.
        let mut handshakes_full = false;
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
            let slot = match slots.take(remote_addr.ip()) {
                Ok(slot) => slot,
                Err(refusal) => {
                    self.stats.close("address-limit");
                    if refusal == crate::addresses::Refusal::AtLimit {
                        tracing::warn!(
                            %remote_addr,
                            limit = settings.max_connections_per_address,
                            "refusing connections from this address: it has the most it may \
                             have open (logged again once it drops below)"
                        );
                    }
                    continue;
                }
            };
            let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                self.stats.close("handshake-limit");
                if !std::mem::replace(&mut handshakes_full, true) {
                    tracing::warn!(
                        %remote_addr,
                        limit = settings.max_handshakes,
                        "refusing connections: max_handshakes TLS handshakes are under way \
                         (logged again once a connection is admitted)"
                    );
                }
                continue;
            };
            handshakes_full = false;
            // Subscribed before reading, so that a reload from here on
            // reaches the connection's certificate check.
            let mut tls = self.tls.0.subscribe();
            let acceptor = TlsAcceptor::from(tls.borrow_and_update().config.clone());
            let connection = Connection {
                acceptor,
                tls,
                stats: self.stats.clone(),
                settings: settings.clone(),
                stop: stop_rx.clone(),
                open: open_tx.clone(),
                handshake: Some(handshake),
                _slot: slot,
            };
            let make_service = make_service.clone();
            tokio::spawn(connection.run(tcp, remote_addr, move |peer| make_service(peer)));
        }
        // New connections are refused from here on.
        drop(self.tcp);
        drop(open_tx);
        self.stats
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let open = self.stats.open();
        if open > 0 {
            tracing::info!(
                connections = open,
                grace = ?settings.drain_timeout,
                "no longer accepting; open connections get GOAWAY and may finish their calls"
            );
        }
        let _ = stop_tx.send(true);
        // Each connection closes itself when the drain timeout is over; the
        // margin lets their stream tasks see it and end.
        let drained =
            tokio::time::timeout(settings.drain_timeout + DRAIN_MARGIN, open_rx.recv()).await;
        if drained.is_err() {
            tracing::warn!("connection or stream tasks still running after the drain timeout");
        }
    }
}

/// How long after the drain timeout a listener waits for the tasks of the
/// connections it just closed to end.
const DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// `age`, give or take 10 %, so that connections opened together (a
/// partner's pool after a restart) do not all get GOAWAY together.
fn jittered(age: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // Randomly keyed by the standard library: enough for spreading.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // A factor in [0.9, 1.1].
    let factor = 0.9 + 0.2 * (random % 1_000_000) as f64 / 1_000_000.0;
    age.mul_f64(factor)
}

/// Why a connection that ended with an error was closed by the gateway, as
/// a metric label; `None` when the peer ended it (went away, reset).
fn closed_by_gateway(error: &hyper::Error) -> Option<&'static str> {
    if error.is_timeout() {
        return Some("keepalive-timeout");
    }
    let h2 = std::error::Error::source(error)?.downcast_ref::<h2::Error>()?;
    if !h2.is_go_away() || h2.is_remote() {
        return None;
    }
    Some(match h2.reason() {
        // What h2 answers to reset, refused-stream and CONTINUATION floods.
        Some(h2::Reason::ENHANCE_YOUR_CALM) => "flood",
        _ => "protocol-error",
    })
}

/// Why an open connection is being closed gracefully.
#[derive(Debug, Clone)]
enum Closing {
    Shutdown,
    ServiceAsked,
    Idle,
    MaxAge,
    /// The peer's certificate expired, or the current CAs and CRLs refuse
    /// it.
    Certificate(rustls::Error),
}

/// Resolves once the peer's certificate no longer passes: when it expires,
/// when an intermediate CA certificate it was verified with expires, when
/// the CRLs that check it go out of date, or when a new listener TLS (CRLs,
/// CAs) refuses it. Never, for a connection without one.
async fn certificate_invalidated(
    mut tls: watch::Receiver<Arc<ListenerTls>>,
    chain: Vec<CertificateDer<'static>>,
    not_after: Option<i64>,
) -> rustls::Error {
    if chain.is_empty() {
        return std::future::pending().await;
    }
    // The expiries of the other certificates the peer sent: at each one
    // still to come, its chain is checked again. Which of them the
    // verification used is not known here (a peer may send more than its
    // path: an old cross-signed CA, its root), so an expiry is a moment to
    // look, not a verdict.
    let mut others: Vec<i64> = chain[1..]
        .iter()
        .filter_map(crate::identity::tls::certificate_not_after)
        .collect();
    others.sort_unstable();
    // One timer for all (the task of every open connection holds it): the
    // certificate's expiry, the next of the others', or its CRLs going out
    // of date.
    let deadline = |tls: &ListenerTls| {
        next_look(
            not_after,
            &others,
            tls.crls_stale_after(&chain),
            crate::unix_time::now(),
        )
    };
    // Not marked seen: a TLS swapped in since the handshake is checked below.
    let timer = until(deadline(&tls.borrow()));
    tokio::pin!(timer);
    let mut listening = true;
    loop {
        tokio::select! {
            () = &mut timer => {
                if not_after.is_some_and(|not_after| until_expired(not_after).is_zero()) {
                    return rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
                }
                let current = tls.borrow().clone();
                if let Err(error) = current.check_client(&chain) {
                    return error;
                }
                // Woken a little early (the wall clock moved): again.
                timer.set(until(deadline(&current)));
            }
            changed = tls.changed(), if listening => {
                if changed.is_err() {
                    // The listener is gone; its shutdown closes us.
                    listening = false;
                    continue;
                }
                let current = tls.borrow_and_update().clone();
                if let Err(error) = current.check_client(&chain) {
                    return error;
                }
                timer.set(until(deadline(&current)));
            }
        }
    }
}

/// When, at `now`, a connection's certificate is to be looked at again:
/// the last second of the first of its certificate's expiry
/// (`not_after`), the next expiry still to come of the other certificates
/// its peer sent (`others`, sorted), and its CRLs' going out of date.
fn next_look(
    not_after: Option<i64>,
    others: &[i64],
    crls_stale_after: Option<i64>,
    now: i64,
) -> Option<i64> {
    let other = others.iter().copied().find(|expires| *expires >= now);
    [not_after, other, crls_stale_after]
        .into_iter()
        .flatten()
        .min()
}

/// Resolves once the second `last` (since the epoch) is over; never for
/// `None`.
async fn until(last: Option<i64>) {
    match last {
        Some(last) => tokio::time::sleep(until_expired(last)).await,
        None => std::future::pending().await,
    }
}

type TlsIo = TokioIo<tokio_rustls::server::TlsStream<TcpStream>>;

/// A connection served as the client's TLS handshake chose: HTTP/2 (gRPC,
/// and JSON calls), or HTTP/1.1 (JSON calls).
enum Served<S: ConnectionService> {
    Http2(
        std::pin::Pin<
            Box<
                hyper::server::conn::http2::Connection<
                    TlsIo,
                    streams::Tracked<S>,
                    streams::StreamExecutor,
                >,
            >,
        >,
    ),
    Http1(std::pin::Pin<Box<hyper::server::conn::http1::Connection<TlsIo, streams::Tracked<S>>>>),
}

/// How long an HTTP/1.1 connection that ended in error is kept to read
/// what its client still sends ([`Served::linger`]), and how much of it.
const LINGER_FOR: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

impl<S: ConnectionService> Served<S> {
    /// Once hyper is done with an HTTP/1.1 connection (the client closed
    /// it, an answer said `connection: close`, or hyper answered a
    /// malformed request with 400 or 431 and stopped), closes it as
    /// HTTP/1.1 servers do: TLS `close_notify` and a FIN first, then what
    /// the client still sends is read and thrown away for a moment. Closed
    /// at once with a request's rest unread, the socket would be reset by
    /// the kernel, and the reset can destroy the last answer before the
    /// client reads it: the client sees its connection cut instead.
    async fn linger(self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Served::Http1(connection) = self else {
            return;
        };
        let mut io = std::pin::Pin::into_inner(connection)
            .into_parts()
            .io
            .into_inner();
        let _ = tokio::time::timeout(LINGER_FOR, async {
            if io.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0_u8; 4096];
            let mut left = LINGER_BYTES;
            while left > 0 {
                match io.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => left = left.saturating_sub(read),
                }
            }
        })
        .await;
    }

    /// HTTP/2: GOAWAY, the open streams may finish. HTTP/1.1: the request
    /// in progress may finish, then the connection closes.
    fn graceful_shutdown(&mut self) {
        match self {
            Served::Http2(connection) => connection.as_mut().graceful_shutdown(),
            Served::Http1(connection) => connection.as_mut().graceful_shutdown(),
        }
    }
}

impl<S: ConnectionService> Future for Served<S> {
    type Output = Result<(), hyper::Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Served::Http2(connection) => connection.as_mut().poll(cx),
            Served::Http1(connection) => connection.as_mut().poll(cx),
        }
    }
}

/// One accepted TCP connection, from handshake to close.
struct Connection {
    acceptor: TlsAcceptor,
    /// The listener's TLS, to check the peer's certificate again on change.
    tls: watch::Receiver<Arc<ListenerTls>>,
    settings: Arc<ListenerSettings>,
    stats: Arc<ListenerStats>,
    stop: watch::Receiver<bool>,
    open: mpsc::Sender<Infallible>,
    /// Its place among the handshakes under way, given up once done.
    handshake: Option<tokio::sync::OwnedSemaphorePermit>,
    _slot: crate::addresses::AddressSlot,
}

impl Connection {
    async fn run<S: ConnectionService>(
        mut self,
        tcp: TcpStream,
        remote_addr: SocketAddr,
        make_service: impl FnOnce(PeerInfo) -> S + Send,
    ) {
        let handshake = self.handshake.take();
        let tls = self.handshake(tcp, remote_addr).await;
        drop(handshake);
        let Some(tls) = tls else {
            return;
        };
        let _open = OpenConnection::new(self.stats.clone());
        let (_, session) = tls.get_ref();
        let control = ConnectionControl::default();
        let certificate = peer_of_chain(session.peer_certificates());
        let chain: Vec<CertificateDer<'static>> = session
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let invalidated = certificate_invalidated(self.tls.clone(), chain, certificate.not_after);
        tokio::pin!(invalidated);
        let peer = PeerInfo {
            remote_addr,
            member: certificate.member,
            certificate_not_after: certificate.not_after,
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
        // For the log line, should the certificate stop passing.
        let member = peer.member.as_ref().ok().cloned();
        let activity = streams::Activity::new();
        let service = streams::Tracked::new(make_service(peer), activity.clone());

        let settings = &self.settings;
        let (executor, connection_over) = streams::StreamExecutor::new(self.open.clone());
        let http1 = session.alpn_protocol() == Some(crate::identity::tls::ALPN_HTTP1);
        // Boxed, and built in a block: held in this task's own state, the
        // HTTP/2 connection (a few KiB, TLS session included) ended up
        // there twice, with the builder next to it, for as long as the
        // connection is open.
        let mut connection = if http1 {
            // A partner's JSON calls, one at a time (what HTTP/1.1 allows).
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                // A request's headers are due as fast as a handshake.
                .header_read_timeout(settings.handshake_timeout)
                .max_headers(100)
                .max_buf_size(
                    usize::try_from(settings.max_header_list_size)
                        .unwrap_or(usize::MAX)
                        .max(8192),
                );
            Served::Http1(Box::pin(
                builder.serve_connection(TokioIo::new(tls), service),
            ))
        } else {
            let mut builder = hyper::server::conn::http2::Builder::new(executor);
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
                .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams)
                .max_local_error_reset_streams(settings.max_local_error_reset_streams);
            Served::Http2(Box::pin(
                builder.serve_connection(TokioIo::new(tls), service),
            ))
        };
        // Declared after the connection, so dropped before it on every way
        // out: the streams still running end as cancelled calls.
        let _connection_over = connection_over;
        let mut stop = self.stop.clone();
        let closing = tokio::select! {
            result = &mut connection => Err(result),
            _ = stop.wait_for(|stop| *stop) => Ok(Closing::Shutdown),
            () = control.close.notified() => Ok(Closing::ServiceAsked),
            () = control.abort.notified() => {
                tracing::info!(%remote_addr, "dropping the connection at the service's request");
                return;
            }
            () = tokio::time::sleep(jittered(settings.max_connection_age)) => Ok(Closing::MaxAge),
            error = &mut invalidated => Ok(Closing::Certificate(error)),
            () = activity.idle_for(settings.idle_timeout) => Ok(Closing::Idle),
            () = activity.flooding(), if settings.drop_rapid_resets => {
                // No GOAWAY and no grace: a client this busy resetting its
                // own streams would use them to open more.
                self.stats.close("flood");
                tracing::warn!(%remote_addr, "connection dropped: most of its streams were reset right after they were opened (rapid reset)");
                return;
            }
        };
        let closing = match closing {
            Ok(closing) => closing,
            Err(result) => {
                // Boxed: inline, its read buffer would grow every
                // connection task's future by as much.
                Box::pin(connection.linger()).await;
                return self.ended(remote_addr, result);
            }
        };
        match closing {
            Closing::Shutdown => {}
            Closing::ServiceAsked => {
                tracing::info!(%remote_addr, "closing the connection at the service's request");
            }
            Closing::Idle => {
                self.stats.close("idle");
                tracing::debug!(%remote_addr, "closing the connection: idle");
            }
            Closing::MaxAge => {
                self.stats.close("max-age");
                tracing::debug!(%remote_addr, "closing the connection: maximum age");
            }
            Closing::Certificate(ref error) => {
                let reason = invalidation_reason(error);
                self.stats.close(reason);
                tracing::warn!(
                    %remote_addr,
                    member = member.as_ref().map(MemberId::as_str).unwrap_or_default(),
                    reason,
                    %error,
                    "closing the connection: the peer's certificate no longer passes"
                );
            }
        }
        // GOAWAY: no new streams; the open ones may finish.
        connection.graceful_shutdown();
        match tokio::time::timeout(settings.drain_timeout, &mut connection).await {
            Ok(result) => self.ended(remote_addr, result),
            Err(_) => {
                self.stats.close("drain-timeout");
                tracing::info!(%remote_addr, ?closing, "connection closed with calls still open: the drain timeout passed");
            }
        }
    }

    /// From TCP accept to an established TLS session; `None` when the
    /// connection was refused (and counted) before.
    async fn handshake(
        &self,
        tcp: TcpStream,
        remote_addr: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let _ = tcp.set_nodelay(true);
        let handshake_deadline = tokio::time::Instant::now() + self.settings.handshake_timeout;
        let spoke = match tokio::time::timeout_at(handshake_deadline, admission::sniff(&tcp)).await
        {
            Ok(Ok(spoke)) => spoke,
            Ok(Err(_)) => admission::FirstBytes::Closed,
            Err(_) => {
                self.stats.refuse("timeout");
                tracing::info!(%remote_addr, kind = "timeout", reason = "nothing sent", "TLS handshake refused");
                return None;
            }
        };
        if spoke != admission::FirstBytes::Tls {
            let kind = spoke.refusal();
            self.stats.refuse(kind);
            if spoke == admission::FirstBytes::Closed {
                tracing::debug!(%remote_addr, "connection closed before the TLS handshake");
                return None;
            }
            tracing::info!(%remote_addr, kind, "TLS handshake refused: the client does not speak TLS");
            // Boxed: inline, its read buffer would make every connection's
            // task larger for the sake of the rare refused one.
            Box::pin(admission::close_cleanly(tcp, spoke, Duration::from_secs(1))).await;
            return None;
        }
        let handshake = tokio::time::timeout_at(handshake_deadline, self.acceptor.accept(tcp));
        match handshake.await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(error)) => {
                let kind = refusal_reason(&error);
                self.stats.refuse(kind);
                tracing::info!(%remote_addr, kind, reason = %error, "TLS handshake refused");
                None
            }
            Err(_) => {
                self.stats.refuse("timeout");
                tracing::info!(%remote_addr, kind = "timeout", reason = "handshake timeout", "TLS handshake refused");
                None
            }
        }
    }

    /// Counts and logs how a connection ended by itself.
    fn ended(&self, remote_addr: SocketAddr, result: Result<(), hyper::Error>) {
        let Err(error) = result else {
            return;
        };
        match closed_by_gateway(&error) {
            Some(reason) => {
                self.stats.close(reason);
                tracing::info!(%remote_addr, reason, %error, "connection closed by the gateway");
            }
            None => tracing::debug!(%remote_addr, %error, "connection closed with an error"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An intermediate that expires before the leaf has the connection
    /// looked at then; one that expired before the handshake (sent, not
    /// used: the handshake passed) is not waited for.
    #[test]
    fn a_connection_is_looked_at_when_each_certificate_of_its_chain_expires() {
        let leaf = Some(5_000);
        let others = [100, 1_000, 9_000];
        assert_eq!(next_look(leaf, &others, None, 500), Some(1_000));
        // The timer fires once that second is over: the next one, then
        // the leaf's.
        assert_eq!(next_look(leaf, &others, None, 1_001), Some(5_000));
        assert_eq!(next_look(None, &others, None, 1_001), Some(9_000));
        assert_eq!(next_look(leaf, &others, Some(700), 500), Some(700));
        assert_eq!(next_look(None, &[], None, 500), None);
    }
}
