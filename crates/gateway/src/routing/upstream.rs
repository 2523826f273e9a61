//! Connections to providers' backends.
//!
//! Each provider has a pool with one multiplexed HTTP/2 connection per
//! endpoint, opened on first use and reopened when it closes. Calls read
//! the open connection without taking a lock; only dialling is serialized.
//! Connections use mutual TLS with the gateway's own client certificate, and
//! the backend must prove that it is the provider: its certificate must name
//! the provider's member id, and a connection takes no new call once that
//! certificate expires or the CRLs that checked it go out of date (the
//! next dial checks the backend again). This module never reads or
//! changes message bytes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prost::Message as _;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Endpoint, PoolSettings, Provider};
use crate::identity::MemberId;
use crate::identity::tls::{peer_of_chain, until_expired};
use crate::wire::deadline::{Deadline, encode_grpc_timeout};
use crate::wire::headers::GRPC_TIMEOUT;

/// A provider's backend failing a call, seen from the gateway: always the
/// upstream's fault. The edge turns it into `UNAVAILABLE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No backend could be reached; the request was never sent.
    #[error("no backend of provider {provider} is reachable")]
    Unavailable { provider: MemberId, detail: String },
    /// The backend at `endpoint` refused the stream: the request was
    /// certainly not processed, and may be sent to another.
    #[error("no backend of provider {provider} is reachable")]
    Refused {
        provider: MemberId,
        detail: String,
        endpoint: ServedBy,
    },
    /// A backend is not the provider it should be; never sent.
    #[error("the backend of provider {provider} did not prove its identity")]
    Identity { provider: MemberId, detail: String },
    /// The backend failed after the request may have reached it.
    #[error("the backend of provider {provider} failed the call")]
    Failed { provider: MemberId, detail: String },
}

impl UpstreamError {
    /// What went wrong, for the log: never shown to the caller.
    pub fn detail(&self) -> &str {
        match self {
            Self::Unavailable { detail, .. }
            | Self::Refused { detail, .. }
            | Self::Identity { detail, .. }
            | Self::Failed { detail, .. } => detail,
        }
    }
}

/// Errors of a request body, whatever produced it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every upstream request.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// How to open a connection to any backend: shared by all pools.
pub struct UpstreamConnector {
    tls: TlsConnector,
    /// The last second its CRLs are accepted in (seconds since the epoch):
    /// its handshakes are refused after it.
    crls_stale_after: Option<i64>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamConnector {
    /// Connecting with `tls`, whose CRLs are accepted until
    /// `crls_stale_after` (seconds since the epoch).
    pub fn new(
        tls: Arc<ClientConfig>,
        crls_stale_after: Option<i64>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            crls_stale_after,
            connect_timeout,
        }
    }

    /// Dials `endpoint`, completes mutual TLS, checks that its certificate
    /// names `presents` (the provider, or the partner gateway it is reached
    /// through), and starts an HTTP/2 connection.
    async fn connect(
        &self,
        provider: &MemberId,
        presents: &MemberId,
        endpoint: &Endpoint,
    ) -> Result<Connection, UpstreamError> {
        let unavailable = |detail: String| UpstreamError::Unavailable {
            provider: provider.clone(),
            detail: format!("{endpoint}: {detail}"),
        };
        let dial = async {
            let tcp = TcpStream::connect(&endpoint.address)
                .await
                .map_err(|error| unavailable(format!("connect: {error}")))?;
            let _ = tcp.set_nodelay(true);
            self.tls
                .connect(endpoint.server_name.clone(), tcp)
                .await
                .map_err(|error| unavailable(format!("TLS: {error}")))
        };
        let tls = tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| {
                unavailable(format!("no connection within {:?}", self.connect_timeout))
            })??;

        let presented = peer_of_chain(tls.get_ref().1.peer_certificates());
        // Its certificate is checked again once it expires or its CRLs go
        // out of date, whichever comes first.
        let not_after = match (presented.not_after, self.crls_stale_after) {
            (Some(expires), Some(stale)) => Some(expires.min(stale)),
            (expires, stale) => expires.or(stale),
        };
        if presented.member.as_ref() != Ok(presents) {
            return Err(UpstreamError::Identity {
                provider: provider.clone(),
                detail: match presented.member {
                    Ok(member) => format!("{endpoint} presented a certificate for {member}"),
                    Err(error) => format!("{endpoint}: {error}"),
                },
            });
        }

        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Every call shares this connection: a caller that stops reading
            // holds at most one stream window of it, and it takes 64 such
            // callers to exhaust the connection window for everyone else.
            .initial_stream_window_size(512 << 10)
            .initial_connection_window_size(32 << 20)
            .max_send_buf_size(256 << 10)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|error| unavailable(format!("HTTP/2 handshake: {error}")))?;
        let address = endpoint.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(endpoint = %address, %error, "upstream connection closed");
            }
        });
        tracing::debug!(%provider, endpoint = %endpoint, "upstream connection established");
        Ok(Connection {
            sender,
            streams: AtomicUsize::new(0),
            usable_until: not_after.map(|not_after| Instant::now() + until_expired(not_after)),
        })
    }
}

/// How long a failed connection attempt is remembered: calls arriving in
/// the meantime fail at once instead of queueing for their own attempt.
const FAILURE_MEMORY: Duration = Duration::from_millis(500);

/// The endpoint that answered a call: an extension of its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy(pub Arc<str>);

/// A call's hold on the endpoint and connection it went to, counted as
/// outstanding (the balancer's load) until the last clone is dropped: an
/// extension of its response, kept by the proxy until the call ends.
#[derive(Debug, Clone)]
pub struct Load(#[allow(dead_code)] Arc<Held>);

#[derive(Debug)]
struct Held {
    slot: Arc<EndpointSlot>,
    connection: Arc<Connection>,
}

impl Held {
    fn new(slot: Arc<EndpointSlot>, connection: Arc<Connection>) -> Self {
        slot.outstanding.fetch_add(1, Ordering::Relaxed);
        connection.streams.fetch_add(1, Ordering::Relaxed);
        Self { slot, connection }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slot.outstanding.fetch_sub(1, Ordering::Relaxed);
        self.connection.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A call waiting for a connection to an endpoint, counted in its load.
struct Waiting<'a>(&'a EndpointSlot);

impl<'a> Waiting<'a> {
    fn new(slot: &'a EndpointSlot) -> Self {
        slot.outstanding.fetch_add(1, Ordering::Relaxed);
        Self(slot)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One HTTP/2 connection to an endpoint.
#[derive(Debug)]
struct Connection {
    sender: SendRequest<UpstreamBody>,
    /// Calls open on it.
    streams: AtomicUsize,
    /// When the backend's certificate expires, or the CRLs that checked
    /// it go out of date: from then on the pool picks the connection for
    /// no new call (the next dial checks the backend again), and once the
    /// calls on it end and the pool has let it go, it closes.
    usable_until: Option<Instant>,
}

impl Connection {
    /// Whether a new call may use it.
    fn is_usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && self.usable_until.is_none_or(|at| now < at)
    }
}

/// One backend address: its connections, load and health.
#[derive(Debug)]
struct EndpointSlot {
    endpoint: Endpoint,
    /// The endpoint's address, as responses name it (see [`ServedBy`]).
    served_by: ServedBy,
    /// The open connections, read without locking on every call.
    connections: ArcSwap<Vec<Arc<Connection>>>,
    /// The last failed attempt. Held while dialling, so that concurrent
    /// calls share one attempt.
    dialing: Arc<tokio::sync::Mutex<Option<(Instant, UpstreamError)>>>,
    /// Calls in flight on all its connections.
    outstanding: AtomicUsize,
    health: Mutex<Health>,
    /// Ejections so far, for the metrics.
    ejections: AtomicU64,
}

/// What the gateway knows of an endpoint's health.
#[derive(Debug, Default, Clone)]
struct Health {
    /// Failed calls in a row.
    failures: u32,
    /// Ejections in a row, without a successful call between them.
    ejections: u32,
    /// Out of rotation until then, after failed calls...
    ejected_until: Option<Instant>,
    /// ... since then.
    ejected_at: Option<Instant>,
    /// Out of rotation until checks pass again...
    failing_checks: bool,
    /// ... since then.
    failing_since: Option<Instant>,
    checks_failed: u32,
    checks_passed: u32,
    /// The checks epoch (see [`ProviderPool::new`]) of the verdict and the
    /// counts above: those of another are not held against the endpoint.
    epoch: u64,
}

impl Health {
    /// Whether health checks of the `checks` epoch (`None`: checks are
    /// off) have it out of rotation.
    fn failing(&self, checks: Option<u64>) -> bool {
        self.failing_checks && checks == Some(self.epoch)
    }
}

impl EndpointSlot {
    fn new(endpoint: &Endpoint) -> Self {
        Self {
            endpoint: endpoint.clone(),
            served_by: ServedBy(endpoint.address.as_str().into()),
            connections: ArcSwap::default(),
            dialing: Arc::default(),
            outstanding: AtomicUsize::new(0),
            health: Mutex::default(),
            ejections: AtomicU64::new(0),
        }
    }

    /// A slot for `endpoint` with no connection, knowing what `before`
    /// knew of its health: new TLS settings make new connections, not a
    /// new backend.
    fn inheriting(endpoint: &Endpoint, before: &Self) -> Self {
        let slot = Self::new(endpoint);
        *slot.health() = before.health().clone();
        slot.ejections
            .store(before.ejections.load(Ordering::Relaxed), Ordering::Relaxed);
        slot
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        // Counters and instants: a panic half-way leaves them usable.
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether calls may go here now, with health checks of the `checks`
    /// epoch (`None`: off). An ejection that has run its time ends here:
    /// the endpoint is back, on probation.
    fn in_rotation(&self, provider: &MemberId, now: Instant, checks: Option<u64>) -> bool {
        let mut health = self.health();
        if let Some(until) = health.ejected_until
            && now >= until
        {
            health.ejected_until = None;
            tracing::info!(%provider, endpoint = %self.endpoint, "upstream endpoint re-admitted after ejection");
        }
        !health.failing(checks) && health.ejected_until.is_none()
    }

    /// A call or dial failed here in a way that says the endpoint is not
    /// well; enough in a row eject it, for longer each time.
    fn failed(&self, provider: &MemberId, settings: &PoolSettings) {
        let mut health = self.health();
        health.failures += 1;
        if health.failures < settings.ejection_failures || health.ejected_until.is_some() {
            return;
        }
        let doublings = health.ejections.min(16);
        health.ejections += 1;
        health.failures = 0;
        let length = settings
            .ejection_time
            .saturating_mul(1 << doublings)
            .min(settings.max_ejection_time);
        let now = Instant::now();
        health.ejected_until = Some(now + length);
        health.ejected_at = Some(now);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            %provider,
            endpoint = %self.endpoint,
            ejected_ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX),
            in_a_row = health.ejections,
            "upstream endpoint ejected after {} failed calls in a row",
            settings.ejection_failures
        );
    }

    /// A call was answered: the endpoint is well.
    fn succeeded(&self) {
        let mut health = self.health();
        health.failures = 0;
        if health.ejected_until.is_none() {
            health.ejections = 0;
        }
    }

    /// The outcome of an active health check of the `epoch` checks.
    fn checked(
        &self,
        provider: &MemberId,
        settings: &PoolSettings,
        epoch: u64,
        passed: Result<(), String>,
    ) {
        let mut health = self.health();
        if health.epoch != epoch {
            // Checks turned on again start from nothing, whatever those
            // of before found.
            (
                health.failing_checks,
                health.checks_failed,
                health.checks_passed,
            ) = (false, 0, 0);
            health.epoch = epoch;
        }
        match passed {
            Ok(()) => {
                health.checks_failed = 0;
                health.checks_passed = health.checks_passed.saturating_add(1);
                if health.failing_checks && health.checks_passed >= settings.healthy_threshold {
                    health.failing_checks = false;
                    // Back from an outage the checks saw: an ejection made
                    // during it (up to `max_ejection_time`) ends with it;
                    // the checks took their failures in a row to see it,
                    // which calls may have seen first. One made before, of
                    // an endpoint that failed calls while answering its
                    // checks, runs its time.
                    let seeing = settings
                        .health_check_interval
                        .unwrap_or_default()
                        .saturating_mul(settings.unhealthy_threshold.saturating_add(1));
                    let during = health
                        .ejected_at
                        .zip(health.failing_since)
                        .is_some_and(|(ejected, failing)| ejected + seeing >= failing);
                    if during {
                        health.ejected_until = None;
                        health.failures = 0;
                    }
                    health.failing_since = None;
                    tracing::info!(%provider, endpoint = %self.endpoint, "upstream endpoint passes health checks again");
                }
            }
            Err(why) => {
                health.checks_passed = 0;
                health.checks_failed = health.checks_failed.saturating_add(1);
                if !health.failing_checks && health.checks_failed >= settings.unhealthy_threshold {
                    health.failing_checks = true;
                    health.failing_since = Some(Instant::now());
                    tracing::warn!(%provider, endpoint = %self.endpoint, reason = %why, "upstream endpoint fails health checks: out of rotation");
                }
            }
        }
    }

    /// The open connections, those closed or past their backend's
    /// certificate since left out.
    fn open_connections(&self) -> Vec<Arc<Connection>> {
        let now = Instant::now();
        self.connections
            .load()
            .iter()
            .filter(|connection| connection.is_usable(now))
            .cloned()
            .collect()
    }
}

/// An endpoint's state, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointState {
    pub address: Arc<str>,
    /// In rotation: neither ejected nor failing health checks.
    pub in_rotation: bool,
    pub ejected: bool,
    pub failing_checks: bool,
    pub outstanding: usize,
    pub connections: usize,
    pub ejections: u64,
}

/// The backends of one provider.
///
/// Each call goes to the less loaded (fewer calls in flight) of two
/// endpoints drawn at random among those in rotation (power of two
/// choices), over the endpoint's least busy connection; another connection
/// is opened when all are busier than `streams_per_connection`. Endpoints
/// leave the rotation when they fail `ejection_failures` calls in a row
/// (for `ejection_time`, doubled at each ejection in a row) or their health
/// checks; with none left, calls fail at once with `UNAVAILABLE`.
#[derive(Debug)]
pub struct ProviderPool {
    provider: MemberId,
    /// Who the endpoints must be: the provider, or a partner's gateway.
    presents: MemberId,
    /// The partner instance whose gateways serve the provider.
    partner: Option<String>,
    endpoints: Vec<Arc<EndpointSlot>>,
    connector: Arc<UpstreamConnector>,
    settings: PoolSettings,
    /// Shared with the pools of later configurations.
    /// Bumped each time health checks are turned on or off.
    checks_epoch: u64,
    retries: Arc<RetryBudget>,
}

/// Retries may add at most a fifth to a provider's load: each call puts a
/// fifth of a token in, each retry takes one out; a full bucket (ten
/// tokens) lets a quiet provider's rare failures be retried too.
#[derive(Debug)]
struct RetryBudget {
    /// In thousandths of a token.
    tokens: AtomicU64,
    /// Retries made, for the metrics.
    spent: AtomicU64,
}

impl RetryBudget {
    const CAPACITY: u64 = 10_000;
    const PER_CALL: u64 = 200;
    const PER_RETRY: u64 = 1_000;

    fn new() -> Self {
        Self {
            tokens: AtomicU64::new(Self::CAPACITY),
            spent: AtomicU64::new(0),
        }
    }

    fn deposit(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tokens| {
                (tokens < Self::CAPACITY).then(|| (tokens + Self::PER_CALL).min(Self::CAPACITY))
            });
    }

    fn withdraw(&self) -> bool {
        let taken = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tokens| {
                tokens.checked_sub(Self::PER_RETRY)
            })
            .is_ok();
        if taken {
            self.spent.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }
}

impl ProviderPool {
    /// A pool for `provider`. Endpoints `previous` also had keep their
    /// health, and, with `reuse_connections` (the upstream TLS settings
    /// unchanged), their connections and calls: a reload drops no call
    /// and forgets no ejection. Nothing of `previous`, which may go on
    /// serving if the reload fails, is changed.
    pub fn new(
        provider: &Provider,
        connector: Arc<UpstreamConnector>,
        settings: &PoolSettings,
        previous: Option<&ProviderPool>,
        reuse_connections: bool,
    ) -> Self {
        // Connections were authenticated as whom the previous pool's
        // endpoints had to be: kept only if that has not changed.
        let reuse =
            reuse_connections && previous.is_some_and(|pool| pool.presents == provider.presents);
        // Health checks turned off, then on again, are a new epoch: their
        // verdicts of before no longer count, and nothing of the running
        // pool is written to say so.
        let checks_on = settings.health_check_interval.is_some();
        let checks_epoch = previous.map_or(0, |pool| {
            pool.checks_epoch + u64::from(pool.checks().is_some() != checks_on)
        });
        let endpoints = provider
            .endpoints
            .iter()
            .map(|endpoint| {
                let before = previous.and_then(|pool| {
                    pool.endpoints.iter().find(|slot| {
                        slot.endpoint.address == endpoint.address
                            && slot.endpoint.server_name == endpoint.server_name
                    })
                });
                match before {
                    Some(slot) if reuse => Arc::clone(slot),
                    Some(slot) => Arc::new(EndpointSlot::inheriting(endpoint, slot)),
                    None => Arc::new(EndpointSlot::new(endpoint)),
                }
            })
            .collect::<Vec<_>>();
        Self {
            provider: provider.id.clone(),
            presents: provider.presents.clone(),
            partner: provider.partner.clone(),
            endpoints,
            connector,
            settings: settings.clone(),
            checks_epoch,
            retries: previous.map_or_else(
                || Arc::new(RetryBudget::new()),
                |pool| Arc::clone(&pool.retries),
            ),
        }
    }

    /// The epoch of the health checks that run for this pool, `None` if
    /// none do: then what checks found before is not held against an
    /// endpoint.
    fn checks(&self) -> Option<u64> {
        self.settings
            .health_check_interval
            .is_some()
            .then_some(self.checks_epoch)
    }

    /// The partner instance whose gateways the provider is reached
    /// through, if it is a partner's member.
    pub fn partner(&self) -> Option<&str> {
        self.partner.as_deref()
    }

    /// Whether any endpoint is in rotation now.
    pub fn has_endpoint_in_rotation(&self) -> bool {
        let now = Instant::now();
        self.endpoints
            .iter()
            .any(|slot| slot.in_rotation(&self.provider, now, self.checks()))
    }

    /// Counts a call towards the retry budget.
    pub fn count_call(&self) {
        self.retries.deposit();
    }

    /// Takes a retry from the budget, if one is left.
    pub fn allow_retry(&self) -> bool {
        self.retries.withdraw()
    }

    /// Retries made so far.
    pub fn retries(&self) -> u64 {
        self.retries.spent.load(Ordering::Relaxed)
    }

    /// The provider this pool reaches.
    pub fn provider(&self) -> &MemberId {
        &self.provider
    }

    /// Sends `request` to one of the provider's endpoints (see the type's
    /// documentation), moving on when one cannot be reached. A request is
    /// sent at most once: it is tried again (on another endpoint, or once
    /// more on the same one) only when it certainly never left. Its
    /// `grpc-timeout` is set here, at the last moment, to what is left of
    /// `deadline`.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
        deadline: &Deadline,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send_avoiding(request, deadline, None).await
    }

    /// [`Self::send`], to another endpoint than `avoid` (the one that just
    /// failed the call) if any other is in rotation.
    pub async fn send_avoiding(
        &self,
        mut request: Request<UpstreamBody>,
        deadline: &Deadline,
        avoid: Option<&ServedBy>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let avoid = avoid.and_then(|avoid| {
            self.endpoints
                .iter()
                .position(|slot| slot.served_by.0 == avoid.0)
        });
        let mut unreachable = vec![false; self.endpoints.len()];
        let mut last_error = None;
        for _ in 0..=self.endpoints.len() {
            let Some(index) = self.pick(&unreachable, avoid) else {
                break;
            };
            let slot = &self.endpoints[index];
            // Waiting for a connection counts as load: an endpoint slow to
            // connect must not look idle to the next pick.
            let waiting = Waiting::new(slot);
            let connection = match self.connection(slot).await {
                Ok(connection) => connection,
                Err(error) => {
                    unreachable[index] = true;
                    last_error = Some(error);
                    continue;
                }
            };
            let load = Load(Arc::new(Held::new(slot.clone(), connection.clone())));
            drop(waiting);
            set_authority(&mut request, &slot.endpoint);
            request
                .headers_mut()
                .insert(GRPC_TIMEOUT, encode_grpc_timeout(deadline.remaining()));
            match connection.sender.clone().try_send_request(request).await {
                Ok(mut response) => {
                    if fails_endpoint(&response) {
                        slot.failed(&self.provider, &self.settings);
                    } else {
                        slot.succeeded();
                    }
                    response.extensions_mut().insert(slot.served_by.clone());
                    response.extensions_mut().insert(load);
                    return Ok(response);
                }
                Err(mut error) => {
                    // The caller's side failing (its request body: a reset,
                    // a refusal), and the reset of the stream it makes
                    // hyper send, say nothing of the endpoint.
                    if !error.error().is_user() && !is_reset_here(error.error()) {
                        slot.failed(&self.provider, &self.settings);
                    }
                    let detail = format!("{}: {}", slot.endpoint, error.error());
                    let Some(unsent) = error.take_message() else {
                        // A refused stream was certainly not processed: it
                        // may be replayed (see the proxy's retries).
                        if is_refused(error.error()) {
                            return Err(UpstreamError::Refused {
                                provider: self.provider.clone(),
                                detail,
                                endpoint: slot.served_by.clone(),
                            });
                        }
                        return Err(UpstreamError::Failed {
                            provider: self.provider.clone(),
                            detail,
                        });
                    };
                    // The connection closed under us: the next try on this
                    // endpoint sees it closed and dials again.
                    request = unsent;
                    last_error = Some(UpstreamError::Unavailable {
                        provider: self.provider.clone(),
                        detail,
                    });
                }
            }
        }
        Err(last_error.unwrap_or_else(|| UpstreamError::Unavailable {
            provider: self.provider.clone(),
            detail: self.out_of_rotation(),
        }))
    }

    /// Why no endpoint can take a call now.
    fn out_of_rotation(&self) -> String {
        let (mut ejected, mut failing) = (0, 0);
        for slot in &self.endpoints {
            let health = slot.health();
            ejected += usize::from(health.ejected_until.is_some());
            failing += usize::from(health.failing(self.checks()));
        }
        format!(
            "no healthy endpoint: of {}, {ejected} ejected after failed calls, {failing} \
             failing health checks",
            self.endpoints.len()
        )
    }

    /// The endpoint for the next call: the less loaded of two drawn at
    /// random among those in rotation and not found unreachable, other
    /// than `avoid` unless it is the only one.
    fn pick(&self, unreachable: &[bool], avoid: Option<usize>) -> Option<usize> {
        let now = Instant::now();
        let mut candidates: Vec<usize> = (0..self.endpoints.len())
            .filter(|&index| {
                !unreachable[index]
                    && self.endpoints[index].in_rotation(&self.provider, now, self.checks())
            })
            .collect();
        if candidates.len() > 1 {
            candidates.retain(|&index| Some(index) != avoid);
        }
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            count => {
                let first = fastrand::usize(..count);
                let second = (first + 1 + fastrand::usize(..count - 1)) % count;
                let load = |index: usize| {
                    self.endpoints[candidates[index]]
                        .outstanding
                        .load(Ordering::Relaxed)
                };
                Some(
                    candidates[if load(second) < load(first) {
                        second
                    } else {
                        first
                    }],
                )
            }
        }
    }

    /// Whether one of the provider's endpoints in rotation has, or can
    /// open, a connection now. A recent failure counts without dialling
    /// again.
    pub async fn reachable(&self) -> bool {
        let now = Instant::now();
        for slot in &self.endpoints {
            if slot.in_rotation(&self.provider, now, self.checks())
                && self.connection(slot).await.is_ok()
            {
                return true;
            }
        }
        false
    }

    /// Each endpoint's state, in configured order.
    pub fn endpoint_states(&self) -> Vec<EndpointState> {
        let now = Instant::now();
        self.endpoints
            .iter()
            .map(|slot| {
                let health = slot.health();
                let ejected = health.ejected_until.is_some_and(|until| now < until);
                let failing_checks = health.failing(self.checks());
                EndpointState {
                    address: slot.served_by.0.clone(),
                    in_rotation: !ejected && !failing_checks,
                    ejected,
                    failing_checks,
                    outstanding: slot.outstanding.load(Ordering::Relaxed),
                    connections: slot.open_connections().len(),
                    ejections: slot.ejections.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Checks every endpoint with `grpc.health.v1.Health/Check` (service
    /// `""`), all at once, and updates their health.
    pub async fn check_health(self: &Arc<Self>) {
        let mut checks = tokio::task::JoinSet::new();
        for index in 0..self.endpoints.len() {
            let pool = Arc::clone(self);
            checks.spawn(async move {
                let slot = &pool.endpoints[index];
                let timeout = pool.settings.health_check_timeout;
                let passed = tokio::time::timeout(timeout, pool.probe(slot))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                slot.checked(&pool.provider, &pool.settings, pool.checks_epoch, passed);
            });
        }
        while checks.join_next().await.is_some() {}
    }

    /// One health check of `slot`.
    async fn probe(&self, slot: &Arc<EndpointSlot>) -> Result<(), String> {
        use http_body_util::BodyExt as _;
        let connection = self
            .connection(slot)
            .await
            .map_err(|error| error.detail().to_owned())?;
        let mut request = health_check_request();
        set_authority(&mut request, &slot.endpoint);
        let response = connection
            .sender
            .clone()
            .send_request(request)
            .await
            .map_err(|error| format!("health check: {error}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|error| format!("health check: {error}"))?;
        let trailers = body.trailers().cloned().unwrap_or_default();
        let status = parts
            .headers
            .get("grpc-status")
            .or_else(|| trailers.get("grpc-status"))
            .and_then(|value| value.to_str().ok())
            .unwrap_or("none");
        match status {
            "0" => {}
            // A backend without the health service answers, so it is up;
            // so does one that refuses the check for its limits (a
            // partner's gateway, whose limits this gateway's own calls
            // fill): a full partner is not a partner down for everyone.
            "12" | "8" => return Ok(()),
            other => return Err(format!("health check answered grpc-status {other}")),
        }
        let bytes = body.to_bytes();
        let answer = bytes
            .get(5..)
            .and_then(|message| tonic_health::pb::HealthCheckResponse::decode(message).ok())
            .ok_or("health check: malformed answer")?;
        if answer.status() == tonic_health::pb::health_check_response::ServingStatus::Serving {
            Ok(())
        } else {
            Err(format!("health check: {:?}", answer.status()))
        }
    }

    /// The least busy open connection to `slot`, or a new one when there is
    /// none or all are busier than `streams_per_connection` and there is
    /// room for another.
    async fn connection(&self, slot: &Arc<EndpointSlot>) -> Result<Arc<Connection>, UpstreamError> {
        let least_busy = |open: &[Arc<Connection>]| {
            open.iter()
                .min_by_key(|connection| connection.streams.load(Ordering::Relaxed))
                .cloned()
        };
        let wants_another = |open: &[Arc<Connection>], busiest_allowed: usize| {
            open.len() < self.settings.connections_per_endpoint as usize
                && open
                    .iter()
                    .all(|connection| connection.streams.load(Ordering::Relaxed) >= busiest_allowed)
        };
        let per_connection = self.settings.streams_per_connection as usize;
        let open = slot.open_connections();
        if !wants_another(&open, per_connection) {
            return least_busy(&open).ok_or_else(|| unreachable_error(&self.provider));
        }
        // Dial: at once when there is no connection; when all are busy, only
        // if no other call is dialling already (else use the least busy).
        let dialing = match (
            least_busy(&open),
            Arc::clone(&slot.dialing).try_lock_owned(),
        ) {
            (_, Ok(dialing)) => dialing,
            (Some(busy), Err(_)) => return Ok(busy),
            (None, Err(_)) => Arc::clone(&slot.dialing).lock_owned().await,
        };
        // Another call may have connected while this one waited.
        let open = slot.open_connections();
        if !wants_another(&open, per_connection) {
            return least_busy(&open).ok_or_else(|| unreachable_error(&self.provider));
        }
        if let Some((when, error)) = dialing.as_ref()
            && when.elapsed() < FAILURE_MEMORY
        {
            return least_busy(&open).ok_or_else(|| error.clone());
        }
        // The dial is a task of its own: a call that stops waiting (its
        // deadline passed) does not cancel it, and its outcome is recorded
        // either way, once, a failure against the endpoint.
        let dial = tokio::spawn({
            let slot = Arc::clone(slot);
            let connector = Arc::clone(&self.connector);
            let provider = self.provider.clone();
            let presents = self.presents.clone();
            let settings = self.settings.clone();
            let mut dialing = dialing;
            async move {
                match connector
                    .connect(&provider, &presents, &slot.endpoint)
                    .await
                {
                    Ok(connection) => {
                        let connection = Arc::new(connection);
                        let mut connections = slot.open_connections();
                        connections.push(connection.clone());
                        slot.connections.store(Arc::new(connections));
                        *dialing = None;
                        Ok(connection)
                    }
                    Err(error) => {
                        tracing::warn!(%provider, endpoint = %slot.endpoint, detail = error.detail(), "upstream endpoint unavailable");
                        *dialing = Some((Instant::now(), error.clone()));
                        slot.connections.store(Arc::new(slot.open_connections()));
                        slot.failed(&provider, &settings);
                        Err(error)
                    }
                }
            }
        });
        match dial.await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => least_busy(&slot.open_connections()).ok_or(error),
            Err(failed) => Err(UpstreamError::Unavailable {
                provider: self.provider.clone(),
                detail: format!("{}: dialling failed: {failed}", slot.endpoint),
            }),
        }
    }
}

/// The error for a state that cannot happen: connections present but none
/// to choose from.
fn unreachable_error(provider: &MemberId) -> UpstreamError {
    UpstreamError::Unavailable {
        provider: provider.clone(),
        detail: "no open connection".to_owned(),
    }
}

/// Whether a response is a trailers-only `UNAVAILABLE`, or an HTTP 503
/// without a gRPC status (a proxy in front of the backend that has none
/// to give it): the backend refusing work (overloaded, shutting down,
/// gone), which counts against it, and which an idempotent call may try
/// elsewhere.
pub fn is_unavailable(response: &Response<Incoming>) -> bool {
    match response.headers().get("grpc-status") {
        Some(status) => status.as_bytes() == b"14",
        None => response.status() == http::StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Whether a response counts against its endpoint: [`is_unavailable`], or
/// a proxy's 502 or 504 without a gRPC status (the backend behind it
/// failed or is too slow; it may have acted, so the call is not retried).
fn fails_endpoint(response: &Response<Incoming>) -> bool {
    is_unavailable(response)
        || (!response.headers().contains_key("grpc-status")
            && matches!(
                response.status(),
                http::StatusCode::BAD_GATEWAY | http::StatusCode::GATEWAY_TIMEOUT
            ))
}

/// Whether the backend certainly did nothing with the stream: it refused
/// it (`REFUSED_STREAM`), or said GOAWAY with a last stream id below it
/// (a backend shutting down; h2 fails only those streams, and the ones
/// opened after it, with the GOAWAY's own error).
fn is_refused(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        source = cause.source();
    }
    false
}

/// Whether the gateway reset the stream itself: hyper does when the
/// request body fails (the caller went away, or the gateway refused one
/// of its messages), and the response then fails with that reset.
fn is_reset_here(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.is_reset() && !h2.is_remote() && !h2.is_library();
        }
        source = cause.source();
    }
    false
}

/// `grpc.health.v1.Health/Check` for the server as a whole.
fn health_check_request() -> Request<UpstreamBody> {
    use http_body_util::BodyExt as _;
    let message = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    }
    .encode_to_vec();
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    framed.extend_from_slice(&message);
    let body = http_body_util::Full::new(Bytes::from(framed))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut request = Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static("/grpc.health.v1.Health/Check");
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    request
}

/// Points the request at the endpoint: `https://host:port/same/path`.
fn set_authority(request: &mut Request<UpstreamBody>, endpoint: &Endpoint) {
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    parts.authority = Some(endpoint.authority.clone());
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_add_at_most_a_fifth_once_the_bucket_is_spent() {
        let budget = RetryBudget::new();
        // A full bucket: ten retries for a quiet provider.
        for _ in 0..10 {
            assert!(budget.withdraw());
        }
        assert!(!budget.withdraw());
        // Then one retry per five calls.
        for _ in 0..4 {
            budget.deposit();
        }
        assert!(!budget.withdraw());
        budget.deposit();
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        assert_eq!(budget.spent.load(Ordering::Relaxed), 11);
    }

    /// The error of a request on a connection to a backend that reads its
    /// HEADERS, then answers with `frames` and closes.
    async fn answered_with(frames: Vec<Vec<u8>>) -> hyper::Error {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (ours, mut backend) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut preface = [0; 24];
            backend.read_exact(&mut preface).await?;
            backend.write_all(&frame(0x4, 0, 0, &[])).await?;
            loop {
                let mut header = [0; 9];
                backend.read_exact(&mut header).await?;
                let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                let mut payload = vec![0; length as usize];
                backend.read_exact(&mut payload).await?;
                if header[3] == 0x1 {
                    break;
                }
            }
            for frame in frames {
                backend.write_all(&frame).await?;
            }
            backend.shutdown().await
        });
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(ours),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let request = Request::post("http://backend/svc.v1.Svc/Method")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await.unwrap_err()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = vec![length[1], length[2], length[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// GOAWAY naming `last` as the last stream processed, `NO_ERROR`.
    fn go_away(last: u32) -> Vec<u8> {
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&0_u32.to_be_bytes());
        frame(0x7, 0, 0, &payload)
    }

    #[tokio::test]
    async fn a_stream_the_backend_did_not_process_counts_as_refused() {
        let above = answered_with(vec![go_away(0)]).await;
        assert!(is_refused(&above), "GOAWAY below the stream: {above:?}");
        let refused = answered_with(vec![frame(0x3, 0, 1, &7_u32.to_be_bytes())]).await;
        assert!(is_refused(&refused), "REFUSED_STREAM: {refused:?}");
    }

    #[tokio::test]
    async fn a_stream_the_backend_may_have_processed_does_not() {
        // Its GOAWAY covers the stream, then the connection closes.
        let covered = answered_with(vec![go_away(1)]).await;
        assert!(
            !is_refused(&covered),
            "GOAWAY above the stream: {covered:?}"
        );
        let reset = answered_with(vec![frame(0x3, 0, 1, &2_u32.to_be_bytes())]).await;
        assert!(!is_refused(&reset), "INTERNAL_ERROR: {reset:?}");
    }
}
