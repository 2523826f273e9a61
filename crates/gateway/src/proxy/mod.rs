//! The passthrough: where the gateway's request path is assembled.
//!
//! [`Gateway::bind`] builds everything a configuration describes (TLS, the
//! member registry, policies, the route table and upstream pools) and binds
//! the listener; [`GatewayService::forward`] is the request path, step by
//! step, in the order of the diagram in the crate docs. Messages are never
//! decoded here: bodies are relayed frame by frame in both directions.
//!
//! Everything a configuration determines lives in one [`GatewayState`],
//! swapped atomically by a [`Reloader`]: each call takes the snapshot
//! current when it arrives and finishes under it, so a reload never breaks
//! a call in flight and never mixes two configurations in one call.

pub mod admin;
mod body;
mod error;
pub mod limits;
mod record;
pub mod signals;

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::time::Instant;

use arc_swap::ArcSwap;
use tracing::Instrument;

use crate::config::Config;
use crate::consent::ConsentVerifier;
use crate::consent::artefact::{ConsentClaims, IssuerKeys};
use crate::consent::{self, CallScope, ConsentLedger, ConsentRefusal};
use crate::exchange_log::ExchangeLog;
use crate::identity::MemberId;
use crate::identity::tls::TlsError;
use crate::net::{PeerInfo, TlsListener};
use crate::policy::{CallFacts, PolicyEngine};
use crate::routing::upstream::UpstreamBody;
use crate::routing::upstream::UpstreamError;
use crate::routing::{RouteTable, UpstreamConnector};
use crate::telemetry::metrics::Metrics;
pub use crate::wire::Deadline;
use crate::wire::escape::Escaped;
use crate::wire::headers::{self, CallHeaders};
use crate::wire::trace_context::TraceContext;
use body::Audit;
pub use body::{RequestBody, ResponseBody};
pub use error::{Blame, GatewayError};
use record::{CallRecord, Ending, Tally};

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("gateway.tls: {0}")]
    ServerTls(TlsError),
    #[error("upstream: {0}")]
    UpstreamTls(TlsError),
    #[error(
        "gateway.identity: the upstream certificate {certificate} names {found}, not {identity}"
    )]
    IdentityMismatch {
        identity: MemberId,
        certificate: std::path::PathBuf,
        found: String,
    },
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("consent.issuer_keys: {0}")]
    Consent(crate::consent::artefact::ArtefactError),
    #[error("consent.ledger: {0}")]
    ConsentLedger(#[from] crate::consent::uses::UseBookError),
    #[error("exchange_log: {0}")]
    ExchangeLog(#[from] crate::exchange_log::OpenError),
    #[error("gateway.admin_token_file: {0}")]
    AdminToken(#[from] crate::proxy::admin::AdminTokenError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// Whether a CRL past its next update (and its grace) was refused.
    pub fn is_stale_crl(&self) -> bool {
        match self {
            Self::ServerTls(error) | Self::UpstreamTls(error) => error.is_stale_crl(),
            _ => false,
        }
    }
}

/// Everything a call needs that one configuration determines.
#[derive(Debug)]
pub struct GatewayState {
    node_id: String,
    registry: BTreeMap<MemberId, crate::config::Member>,
    providers: HashSet<MemberId>,
    services: BTreeMap<String, Vec<MemberId>>,
    purposes: HashSet<String>,
    policy: PolicyEngine,
    routes: RouteTable,
    max_deadline: Duration,
    /// The certificates this configuration serves with: (name, expiry in
    /// seconds since the epoch).
    certificates: Vec<(String, i64)>,
    /// The CRLs it checks certificates against: (name, next update in
    /// seconds since the epoch).
    crls: Vec<(String, i64)>,
    /// The effective configuration as JSON, for the admin endpoint's
    /// operators; others see [`Self::described_public`].
    described: String,
    /// The same without the member registry.
    described_public: String,
    /// What makes an admin request an operator's, when configured.
    admin_token: Option<crate::proxy::admin::AdminToken>,
    /// The exchange log's settings as configured. The open log keeps the
    /// ones it started with; who may call the Data Tracker follows reloads.
    exchange_log: crate::config::ExchangeLogConfig,
    /// The consent issuer keys trusted, when consent is configured.
    consent_keys: Option<ConsentVerifier>,
    /// The upstream TLS files and their size and modification time: while
    /// they stay the same, a reload keeps the backend connections.
    upstream_tls: UpstreamTlsFiles,
    /// Between active health checks of backend endpoints; `None`: off.
    health_check_interval: Option<Duration>,
    /// Load shedding and per-member limits, with their buckets and counts.
    limits: limits::Limits,
}

impl crate::directory::GatewayView for GatewayState {
    fn registry(&self) -> &BTreeMap<MemberId, crate::config::Member> {
        &self.registry
    }

    fn is_provider(&self, member: &MemberId) -> bool {
        self.providers.contains(member)
    }

    fn services(&self) -> &BTreeMap<String, Vec<MemberId>> {
        &self.services
    }

    fn service_pools(&self, service: &str) -> Option<&[Arc<crate::routing::ProviderPool>]> {
        self.routes.pools(service)
    }

    fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    fn exchange_log_config(&self) -> &crate::config::ExchangeLogConfig {
        &self.exchange_log
    }
}

impl GatewayState {
    /// Builds the state of a configuration: loads upstream TLS material and
    /// policies, and sets up the pools. Connections are opened lazily.
    pub fn new(config: &Config) -> Result<Self, StartError> {
        Self::after(config, None)
    }

    /// Builds the state of a configuration that replaces `previous`: the
    /// backend endpoints both reach keep their connections, calls in flight
    /// and health, unless the upstream TLS material changed.
    pub fn after(config: &Config, previous: Option<&GatewayState>) -> Result<Self, StartError> {
        let upstream_tls = config
            .upstream
            .tls
            .client_config()
            .map_err(StartError::UpstreamTls)?;
        // Backends accept only `gateway.identity`: a certificate naming
        // anyone else would have every call refused, so refuse to start.
        let certificate = &config.upstream.tls.certificate;
        let chain = crate::identity::tls::load_certificates(certificate)
            .map_err(StartError::UpstreamTls)?;
        let found = crate::identity::tls::member_of_chain(Some(&chain));
        if found.as_ref() != Ok(&config.gateway.identity) {
            return Err(StartError::IdentityMismatch {
                identity: config.gateway.identity.clone(),
                certificate: certificate.clone(),
                found: match found {
                    Ok(member) => member.to_string(),
                    Err(error) => error.to_string(),
                },
            });
        }
        let policy = PolicyEngine::load(config)?;
        let admin_token = config
            .gateway
            .admin_token_file
            .as_deref()
            .map(crate::proxy::admin::AdminToken::load)
            .transpose()?;
        let consent_keys = config
            .consent
            .as_ref()
            .map(|consent| IssuerKeys::load(&consent.issuer_keys).map(ConsentVerifier::new))
            .transpose()
            .map_err(StartError::Consent)?;
        let connector = Arc::new(UpstreamConnector::new(
            upstream_tls,
            config.upstream.connect_timeout,
        ));
        let upstream_tls_files = {
            let tls = &config.upstream.tls;
            // A changed CRL, too, opens new connections: each handshake
            // checks the backend's certificate against the new one.
            let mut files = vec![
                tls.server_ca.clone(),
                tls.certificate.clone(),
                tls.private_key.clone(),
            ];
            files.extend(tls.crls.iter().cloned());
            let fingerprint = fingerprint(&files);
            (files, fingerprint)
        };
        Ok(Self {
            node_id: config.gateway.node_id.clone(),
            registry: config.members.clone(),
            providers: config.providers.keys().cloned().collect(),
            services: config
                .services
                .values()
                .map(|service| (service.name.clone(), service.providers.clone()))
                .collect(),
            purposes: config.purposes.keys().cloned().collect(),
            policy,
            routes: RouteTable::new(
                config,
                &connector,
                previous
                    .filter(|previous| previous.upstream_tls == upstream_tls_files)
                    .map(|previous| &previous.routes),
            ),
            upstream_tls: upstream_tls_files,
            health_check_interval: config.upstream.pool.health_check_interval,
            max_deadline: config.upstream.max_deadline,
            certificates: certificates(config),
            crls: crls(config),
            described: describe(config, true),
            described_public: describe(config, false),
            admin_token,
            exchange_log: config.exchange_log.clone(),
            consent_keys,
            // Calls in flight keep counting; unchanged buckets keep their
            // level.
            limits: limits::Limits::after(
                &config.limits,
                previous.map(|previous| &previous.limits),
            ),
        })
    }

    /// This gateway's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The member registry.
    pub fn registry(&self) -> &BTreeMap<MemberId, crate::config::Member> {
        &self.registry
    }

    /// Whether `member` publishes services.
    pub fn is_provider(&self, member: &MemberId) -> bool {
        self.providers.contains(member)
    }

    /// Published services and their providers, the default first.
    pub fn services(&self) -> &BTreeMap<String, Vec<MemberId>> {
        &self.services
    }

    /// Every provider's connection pool.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<crate::routing::ProviderPool>> {
        self.routes.all_pools()
    }

    /// The connection pools of a published service's providers.
    pub fn service_pools(&self, service: &str) -> Option<&[Arc<crate::routing::ProviderPool>]> {
        self.routes.pools(service)
    }

    /// The limits of this configuration.
    pub fn limits(&self) -> &limits::Limits {
        &self.limits
    }

    /// The policy engine of this configuration.
    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    /// The `[exchange_log]` settings of this configuration.
    pub fn exchange_log_config(&self) -> &crate::config::ExchangeLogConfig {
        &self.exchange_log
    }

    /// The certificates in use and when they expire (seconds since the
    /// epoch).
    pub fn certificates(&self) -> &[(String, i64)] {
        &self.certificates
    }

    /// The CRLs in use and their next update (seconds since the epoch).
    pub fn crls(&self) -> &[(String, i64)] {
        &self.crls
    }

    /// The CRLs in use that are past their next update (accepted within
    /// their grace).
    fn overdue_crls(&self) -> impl Iterator<Item = &str> {
        let now = crate::unix_time::now();
        self.crls
            .iter()
            .filter(move |(_, next_update)| *next_update < now)
            .map(|(name, _)| name.as_str())
    }

    /// The effective configuration as JSON: every setting and path, never
    /// key material; the member registry only when `with_members`.
    pub fn describe(&self, with_members: bool) -> String {
        if with_members {
            self.described.clone()
        } else {
            self.described_public.clone()
        }
    }

    /// The token that makes an admin request an operator's, when
    /// `gateway.admin_token_file` is set.
    pub fn admin_token(&self) -> Option<&crate::proxy::admin::AdminToken> {
        self.admin_token.as_ref()
    }
}

/// Files, with their size and modification time.
type UpstreamTlsFiles = (
    Vec<std::path::PathBuf>,
    Vec<Option<(u64, std::time::SystemTime)>>,
);

/// Size and modification time of each file, `None` when it cannot be read.
fn fingerprint(files: &[std::path::PathBuf]) -> Vec<Option<(u64, std::time::SystemTime)>> {
    files
        .iter()
        .map(|file| {
            let metadata = std::fs::metadata(file).ok()?;
            Some((metadata.len(), metadata.modified().ok()?))
        })
        .collect()
}

/// The leaf certificates and CRLs a configuration uses, with when they
/// expire (a CRL: its next update).
fn certificates(config: &Config) -> Vec<(String, i64)> {
    use crate::identity::tls;
    let mut expiries: Vec<(String, i64)> = [
        ("gateway.tls.certificate", &config.gateway.tls.certificate),
        ("upstream.certificate", &config.upstream.tls.certificate),
    ]
    .into_iter()
    .filter_map(|(name, path)| {
        let chain = tls::load_certificates(path).ok()?;
        let not_after = tls::certificate_not_after(chain.first()?)?;
        Some((format!("{name} ({})", path.display()), not_after))
    })
    .collect();
    expiries.extend(crls(config));
    expiries
}

/// The CRLs a configuration checks certificates against, with their next
/// update.
fn crls(config: &Config) -> Vec<(String, i64)> {
    use crate::identity::tls;
    let lists = [
        ("gateway.tls.crls", &config.gateway.tls.crls),
        ("upstream.crls", &config.upstream.tls.crls),
    ];
    let mut crls = Vec::new();
    for (key, paths) in lists {
        for path in paths {
            let loaded = tls::load_crls(path).unwrap_or_default();
            for next_update in loaded.iter().filter_map(tls::crl_next_update) {
                crls.push((format!("{key} ({})", path.display()), next_update));
            }
        }
    }
    crls
}

/// The configuration as JSON. Without `with_members`, the member registry
/// and the per-member limits are replaced by their count: who is
/// registered, in which groups, is for operators.
fn describe(config: &Config, with_members: bool) -> String {
    let path = |path: &std::path::Path| path.display().to_string();
    let mut value = serde_json::json!({
        "source": path(&config.source),
        "gateway": {
            "node_id": config.gateway.node_id,
            "listen": config.gateway.listen.to_string(),
            "admin": config.gateway.admin.map(|admin| admin.to_string()),
            "admin_token_file": config.gateway.admin_token_file.as_deref().map(path),
            "identity": config.gateway.identity.to_string(),
            "tls": {
                "certificate": path(&config.gateway.tls.certificate),
                "private_key": "(redacted)",
                "client_ca": path(&config.gateway.tls.client_ca),
                "crls": config.gateway.tls.crls.iter().map(|crl| path(crl)).collect::<Vec<_>>(),
                "crl_grace_ms": config.gateway.tls.crl_grace.as_millis(),
            },
            "handshake_timeout_ms": config.gateway.listener.handshake_timeout.as_millis(),
            "max_concurrent_streams": config.gateway.listener.max_concurrent_streams,
            "max_header_list_size": config.gateway.listener.max_header_list_size,
            "max_pending_accept_reset_streams": config.gateway.listener.max_pending_accept_reset_streams,
            "max_local_error_reset_streams": config.gateway.listener.max_local_error_reset_streams,
            "keepalive_interval_ms": config.gateway.listener.keepalive_interval.as_millis(),
            "keepalive_timeout_ms": config.gateway.listener.keepalive_timeout.as_millis(),
            "idle_timeout_ms": config.gateway.listener.idle_timeout.as_millis(),
            "max_connection_age_ms": config.gateway.listener.max_connection_age.as_millis(),
            "drain_timeout_ms": config.gateway.listener.drain_timeout.as_millis(),
            "max_connections_per_address": config.gateway.listener.max_connections_per_address,
        },
        "upstream": {
            "certificate": path(&config.upstream.tls.certificate),
            "private_key": "(redacted)",
            "server_ca": path(&config.upstream.tls.server_ca),
            "crls": config.upstream.tls.crls.iter().map(|crl| path(crl)).collect::<Vec<_>>(),
            "crl_grace_ms": config.upstream.tls.crl_grace.as_millis(),
            "connect_timeout_ms": config.upstream.connect_timeout.as_millis(),
            "max_deadline_ms": config.upstream.max_deadline.as_millis(),
        },
        "members": config.members.values().map(|member| serde_json::json!({
            "id": member.id.to_string(),
            "name": member.name,
            "groups": member.groups,
        })).collect::<Vec<_>>(),
        "providers": config.providers.values().map(|provider| serde_json::json!({
            "id": provider.id.to_string(),
            "endpoints": provider.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "services": config.services.values().map(|service| serde_json::json!({
            "name": service.name,
            "providers": service.providers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "purposes": config.purposes.keys().collect::<Vec<_>>(),
        "policy": {
            "schema": path(&config.policy.schema),
            "policies": path(&config.policy.policies),
        },
        "exchange_log": {
            "enabled": config.exchange_log.enabled,
            "data_dir": path(&config.exchange_log.data_dir),
            "origin": config.exchange_log.origin,
            "checkpoint_interval_ms": config.exchange_log.checkpoint_interval.as_millis(),
            "checkpoint_records": config.exchange_log.checkpoint_records,
            "data_tracker_clients": config.exchange_log.data_tracker_clients.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "limits": {
            "gateway_concurrent_calls": config.limits.gateway_concurrent_calls,
            "members": config.limits.members.iter().map(|(member, limits)| serde_json::json!({
                "id": member.to_string(),
                "requests_per_second": limits.rate.map(|rate| rate.per_second),
                "burst": limits.rate.map(|rate| rate.burst),
                "concurrent_calls": limits.concurrent_calls,
                "max_message_bytes": limits.max_message_bytes,
            })).collect::<Vec<_>>(),
        },
    });
    if !with_members {
        value["members"] = format!(
            "(hidden: {} members; send the admin token, or `{}` on loopback)",
            config.members.len(),
            crate::proxy::admin::OPERATOR_HEADER
        )
        .into();
        value["limits"]["members"] = format!(
            "(hidden: {} members with their own limits)",
            config.limits.members.len()
        )
        .into();
        value["exchange_log"]["data_tracker_clients"] = "(hidden)".into();
    }
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// The current configuration, shared by every connection.
type SharedState = Arc<ArcSwap<GatewayState>>;

/// A gateway, bound and ready to serve.
#[derive(Debug)]
pub struct Gateway {
    listener: TlsListener,
    state: SharedState,
    source: std::path::PathBuf,
    /// `None` only when the configuration turns the log off.
    log: Option<ExchangeLog>,
    metrics: Arc<Metrics>,
    /// The admin endpoint's listener, when configured.
    admin: Option<TcpListener>,
    /// Consent states and uses, and the feed that keeps them, when consent
    /// is configured. Both outlive reloads.
    consent: Option<(Arc<ConsentLedger>, crate::consent::feed::FeedSource)>,
}

impl Gateway {
    /// Validates what a start needs (TLS material on both hops, policies,
    /// routes) without binding anything: what `check-config` runs.
    pub fn check(config: &Config) -> Result<(), StartError> {
        config
            .gateway
            .tls
            .server_config()
            .map_err(StartError::ServerTls)?;
        GatewayState::new(config)?;
        Ok(())
    }

    /// Builds the gateway for `config` and binds its listener.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let tls = config
            .gateway
            .tls
            .listener_tls()
            .map_err(StartError::ServerTls)?;
        let state = Arc::new(ArcSwap::from_pointee(GatewayState::new(config)?));
        let log = if config.exchange_log.enabled {
            let settings = config.exchange_log.clone();
            // Opening reads files and may create the database: blocking.
            Some(
                tokio::task::spawn_blocking(move || ExchangeLog::open(&settings))
                    .await
                    .map_err(|error| {
                        StartError::ExchangeLog(crate::exchange_log::OpenError::File {
                            path: config.exchange_log.data_dir.clone(),
                            message: error.to_string(),
                        })
                    })??,
            )
        } else {
            tracing::warn!("the exchange log is off: calls are recorded nowhere");
            None
        };
        let address = config.gateway.listen;
        let tcp = TcpListener::bind(address)
            .await
            .map_err(|source| StartError::Bind { address, source })?;
        let admin = match config.gateway.admin {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| StartError::Bind { address, source })?,
            ),
            None => None,
        };
        let consent = match &config.consent {
            Some(consent) => Some((
                ConsentLedger::open(consent.freshness, &consent.ledger)?,
                crate::consent::feed::FeedSource {
                    endpoints: config
                        .providers
                        .get(&consent.feed_provider)
                        .map(|provider| provider.endpoints.clone())
                        .unwrap_or_default(),
                    tls: config
                        .upstream
                        .tls
                        .client_config()
                        .map_err(StartError::UpstreamTls)?,
                    gateway: config.gateway.identity.clone(),
                    provider: consent.feed_provider.clone(),
                },
            )),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        for _ in state.load().overdue_crls() {
            metrics.stale_crl(false);
        }
        Ok(Self {
            listener: TlsListener::new(tcp, tls, config.gateway.listener.clone()),
            state,
            source: config.source.clone(),
            log,
            metrics,
            admin,
            consent,
        })
    }

    /// The admin endpoint's address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|admin| admin.local_addr().ok())
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The exchange log, unless the configuration turns it off.
    pub fn exchange_log(&self) -> Option<&ExchangeLog> {
        self.log.as_ref()
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that reloads the configuration this gateway was started
    /// from.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            source: self.source.clone(),
            state: self.state.clone(),
            listener_tls: self.listener.tls(),
            metrics: self.metrics.clone(),
        }
    }

    /// Serves until `shutdown` resolves, then drains open calls and signs
    /// a last checkpoint of the exchange log.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let reloader = self.reloader();
        let state = self.state;
        let log = self.log;
        let metrics = self.metrics;
        tracing::info!(node = state.load().node_id(), "gateway serving");
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(listener) = self.admin {
            let admin = crate::proxy::admin::Admin {
                metrics: metrics.clone(),
                log: log.clone(),
                state: state.clone(),
                reloader,
                listener: self.listener.stats(),
            };
            if let Ok(address) = listener.local_addr() {
                tracing::info!("admin endpoint on http://{address}");
            }
            tokio::spawn(admin.serve(listener, async move {
                let _ = admin_stopped.await;
            }));
        }
        let serving = log.clone();
        // Health checks and the consent feed end with the gateway, even when
        // this future is dropped rather than run to its end.
        let mut background = Background::default();
        background
            .0
            .push(tokio::spawn(check_health(state.clone())).abort_handle());
        background
            .0
            .push(tokio::spawn(watch_crls(state.clone())).abort_handle());
        let ledger = match self.consent {
            Some((ledger, source)) => {
                let feed = tokio::spawn(crate::consent::feed::follow(ledger.clone(), source));
                background.0.push(feed.abort_handle());
                Some(ledger)
            }
            None => None,
        };
        self.listener
            .serve(
                move |peer| {
                    GatewayService::new(
                        state.clone(),
                        peer,
                        serving.clone(),
                        metrics.clone(),
                        ledger.clone(),
                    )
                },
                shutdown,
            )
            .await;
        drop(stop_admin);
        drop(background);
        if let Some(log) = log {
            let closed = tokio::task::spawn_blocking(move || log.close()).await;
            if let Err(error) = closed {
                tracing::error!(%error, "closing the exchange log failed");
            }
        }
    }
}

/// Tasks that live as long as [`Gateway::serve`]: aborted when it ends.
#[derive(Default)]
struct Background(Vec<tokio::task::AbortHandle>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The largest request an idempotent call may have to be replayed.
const REPLAY_LIMIT: usize = 64 * 1024;

/// Retries of one call, at most.
const MAX_RETRIES: u32 = 2;

/// How long to wait before retry `retries + 1`: 25 ms, doubled at each
/// retry, less a random part of up to half, so that callers failed together
/// do not come back together.
fn retry_backoff(retries: u32) -> Duration {
    let full = Duration::from_millis(25) * 2u32.pow(retries.min(8));
    full - full.mul_f64(fastrand::f64() / 2.0)
}

/// A replayed request's body.
fn replay_body(bytes: &bytes::Bytes) -> UpstreamBody {
    http_body_util::Full::new(bytes.clone())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Checks the health of every backend endpoint of the current
/// configuration, every `upstream.health_check_interval` (re-read each
/// time: reloads apply), until aborted.
async fn check_health(state: SharedState) {
    loop {
        let current = state.load_full();
        let Some(interval) = current.health_check_interval else {
            // Checks are off in this configuration; look again later.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let pools: Vec<_> = current.routes.all_pools().cloned().collect();
        drop(current);
        let mut checks = tokio::task::JoinSet::new();
        for pool in pools {
            checks.spawn(async move { pool.check_health().await });
        }
        let next = tokio::time::Instant::now() + interval;
        while checks.join_next().await.is_some() {}
        tokio::time::sleep_until(next).await;
    }
}

/// Logs each CRL in use once it passes its next update while the gateway
/// runs (the next reload refuses it beyond its grace), checking every
/// minute, until aborted. `govbridge_crl_overdue_seconds` shows the same.
async fn watch_crls(state: SharedState) {
    let mut reported = HashSet::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(60));
    loop {
        ticks.tick().await;
        let current = state.load();
        for crl in current.overdue_crls() {
            if reported.insert(crl.to_owned()) {
                // A warning, not an error: it may be within its grace.
                tracing::warn!(
                    crl,
                    "CRL past its next update: publish a fresh one; the next reload refuses \
                     it unless within its crl_grace"
                );
            }
        }
    }
}

/// Reloads a gateway's configuration: members, purposes, policies, routes,
/// upstream TLS, and the listener's certificate, client CAs and CRLs.
///
/// The new configuration is built and validated in full before it replaces
/// the old one; on any error the old one keeps serving. Calls in flight
/// finish under the configuration they started with; connections accepted
/// after the reload use the new certificate. The listen and admin
/// addresses and the exchange log's settings take effect at restart.
#[derive(Debug, Clone)]
pub struct Reloader {
    source: std::path::PathBuf,
    state: SharedState,
    listener_tls: crate::net::SharedListenerTls,
    metrics: Arc<Metrics>,
}

/// Why a reload was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{}: {error}", file.display())]
    Start {
        file: std::path::PathBuf,
        error: Box<StartError>,
    },
}

impl Reloader {
    /// Re-reads the configuration file and everything it names, and swaps
    /// it in if it is valid.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let start_error = |error| ReloadError::Start {
            file: self.source.clone(),
            error: Box::new(error),
        };
        let built = Config::load(&self.source)
            .map_err(ReloadError::from)
            .and_then(|config| {
                let tls = config
                    .gateway
                    .tls
                    .listener_tls()
                    .map_err(|error| start_error(StartError::ServerTls(error)))?;
                let state =
                    GatewayState::after(&config, Some(&self.state.load())).map_err(start_error)?;
                Ok((tls, state))
            });
        self.metrics.reload(built.is_ok());
        if let Err(ReloadError::Start { error, .. }) = &built
            && error.is_stale_crl()
        {
            self.metrics.stale_crl(true);
        }
        let (tls, state) = built?;
        for _ in state.overdue_crls() {
            self.metrics.stale_crl(false);
        }
        self.listener_tls.store(tls);
        self.state.store(Arc::new(state));
        tracing::info!(config = %self.source.display(), "configuration reloaded");
        Ok(())
    }

    /// Reloads whenever the configuration file or a file it names changes
    /// (size or modification time), checking every `interval`, until the
    /// process ends. A change that fails to load is logged once and not
    /// retried until the files change again.
    pub fn reload_on_file_change(self, interval: Duration) {
        tokio::spawn(async move {
            let mut watched = self.watched_files();
            let mut last = fingerprint(&watched);
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let now = fingerprint(&watched);
                if now == last {
                    continue;
                }
                last = now;
                tracing::info!("configuration files changed; reloading");
                let reloader = self.clone();
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Ok(Ok(())) => {
                        // The new configuration may name other files.
                        watched = self.watched_files();
                        last = fingerprint(&watched);
                    }
                    Ok(Err(error)) => {
                        tracing::error!(%error, "reload rejected; the previous configuration keeps serving");
                    }
                    Err(error) => tracing::error!(%error, "reload failed to run"),
                }
            }
        });
    }

    /// The configuration file and every file it names.
    fn watched_files(&self) -> Vec<std::path::PathBuf> {
        let mut files = vec![self.source.clone()];
        let Ok(config) = Config::load(&self.source) else {
            return files;
        };
        let gateway = &config.gateway.tls;
        let upstream = &config.upstream.tls;
        files.extend([
            gateway.certificate.clone(),
            gateway.private_key.clone(),
            gateway.client_ca.clone(),
            upstream.certificate.clone(),
            upstream.private_key.clone(),
            upstream.server_ca.clone(),
            config.policy.schema.clone(),
            // A policy added or removed changes the directory itself.
            config.policy.policies.clone(),
        ]);
        files.extend(gateway.crls.iter().cloned());
        files.extend(upstream.crls.iter().cloned());
        if let Ok(entries) = std::fs::read_dir(&config.policy.policies) {
            files.extend(entries.filter_map(|entry| Some(entry.ok()?.path())));
        }
        files
    }

    /// Reloads on every SIGHUP until the process ends, logging the outcome.
    ///
    /// The handler is in place when this returns: a SIGHUP sent once the
    /// gateway says it listens reloads it rather than ending the process
    /// (the default action).
    pub fn reload_on_sighup(self) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGHUP; reload is unavailable");
                    return;
                }
            };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                // Reading files and compiling policies blocks: keep it off
                // the threads that serve calls.
                let reloader = self.clone();
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::error!(%error, "reload rejected; the previous configuration keeps serving");
                    }
                    Err(error) => tracing::error!(%error, "reload failed to run"),
                }
            }
        });
    }
}

/// The gateway's service for one partner connection.
#[derive(Debug, Clone)]
pub struct GatewayService {
    state: SharedState,
    peer: Arc<PeerInfo>,
    log: Option<ExchangeLog>,
    metrics: Arc<Metrics>,
    consent: Option<Arc<ConsentLedger>>,
    /// Set once a call on this connection was refused as a stranger's (see
    /// [`GatewayError::is_stranger_refusal`]) and recorded: the calls such
    /// a peer opens before its connection closes are not.
    stranger_recorded: Arc<AtomicBool>,
}

impl GatewayService {
    fn new(
        state: SharedState,
        peer: PeerInfo,
        log: Option<ExchangeLog>,
        metrics: Arc<Metrics>,
        consent: Option<Arc<ConsentLedger>>,
    ) -> Self {
        Self {
            state,
            peer: Arc::new(peer),
            log,
            metrics,
            consent,
            stranger_recorded: Arc::default(),
        }
    }

    async fn handle(self, request: Request<Incoming>) -> Response<ResponseBody> {
        let received = Instant::now();
        let received_at = SystemTime::now();
        let in_flight = self.metrics.call_started();
        // The snapshot this call runs under, from start to finish.
        let state = self.state.load_full();
        // Cloning a `Uri` shares its bytes: the route and the log borrow it.
        let uri = request.uri().clone();
        let (request_id, bad_id) = match headers::request_id(request.headers()) {
            Ok(id) => (id, None),
            Err(error) => (headers::fresh_request_id(), Some(GatewayError::from(error))),
        };
        let trace = TraceContext::read(request.headers());
        // Every call to a published service is recorded, refusals too; the
        // gateway's own services (directory, health, reflection, the log's
        // proofs) are not exchanges between members.
        let mut record = self
            .log
            .as_ref()
            .filter(|_| !crate::catalog::is_local(uri.path()))
            .map(|log| {
                CallRecord::new(
                    log.clone(),
                    state.node_id(),
                    &request_id,
                    uri.path(),
                    self.peer.member.as_ref().ok(),
                    &trace,
                    received_at,
                )
            });
        // Everything logged while the gateway handles the call carries its
        // request id, trace and method. The span lasts until the response
        // body ends (see `CallSummary`); exported, it is the gateway's span
        // in the caller's trace.
        let span = tracing::info_span!(
            "call",
            request_id = request_id.to_str().unwrap_or_default(),
            method = %Escaped(uri.path()),
            trace_id = trace.trace_id_hex(),
            span_id = trace.span_id_hex(),
            parent_id = tracing::field::Empty,
            grpc_status = tracing::field::Empty,
            bridge_error = tracing::field::Empty,
        );
        if let Some(parent) = trace.parent_id_hex() {
            span.record("parent_id", parent);
        }
        let arrival = Arrival {
            received,
            request_id,
            trace,
        };
        async move {
            let result = self
                .forward(&state, request, &uri, &arrival, &mut record, bad_id)
                .await;
            match result {
                Ok(mut response) => {
                    response
                        .headers_mut()
                        .insert(headers::names::BRIDGE_REQUEST_ID, arrival.request_id);
                    response.body_mut().hold(in_flight);
                    response
                }
                // Boxed, like the directory's calls below: inline, these
                // rarer paths' futures would make every call's larger.
                Err(error) => Box::pin(self.refuse(error, &arrival.request_id, &uri, record)).await,
            }
        }
        .instrument(span)
        .await
    }

    /// The caller, checked against the registry and the policies of this
    /// snapshot. This is the first authorization point: a peer that is not
    /// a registered member, or that no policy permits anything, gets one
    /// answer and then its connection is closed.
    fn caller(&self, state: &GatewayState) -> Result<MemberId, GatewayError> {
        let refused = match &self.peer.member {
            Err(reason) => GatewayError::NoMemberIdentity(reason.clone()),
            Ok(member) if !state.registry.contains_key(member) => {
                GatewayError::UnknownMember(member.clone())
            }
            Ok(member) if !state.policy.may_be_permitted(member) => {
                GatewayError::NoPermits(member.clone())
            }
            Ok(member) => return Ok(member.clone()),
        };
        self.peer.control.close();
        Err(refused)
    }

    /// The request path. Each step may refuse the call; the first refusal
    /// is the answer.
    async fn forward(
        &self,
        state: &Arc<GatewayState>,
        request: Request<Incoming>,
        uri: &http::Uri,
        arrival: &Arrival,
        record: &mut Option<CallRecord>,
        bad_id: Option<GatewayError>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let request_id = &arrival.request_id;
        let caller = self.caller(state)?;
        // Limits come before any other work, so that shedding load is
        // cheap (see `GatewayError::is_limit_refusal`).
        let permit = state.limits.permit(&caller).inspect_err(|refused| {
            self.metrics.limit_refusal(&caller, refused.kind());
        })?;
        // A malformed request id is the caller's to hear of, once it is a
        // member within its limits: before that, it would let anyone write
        // to the exchange log.
        if let Some(error) = bad_id {
            return Err(error);
        }
        headers::check_grpc(&request)?;
        // gRPC paths have no query. One would reach the backend, which may
        // route or log by it, though the gateway routed and recorded the
        // path alone: refused before anything looks at the path.
        if uri.query().is_some() {
            return Err(GatewayError::BadPath(
                uri.path_and_query()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ));
        }
        let call = CallHeaders::read(request.headers())?;
        if let Some(record) = record.as_mut() {
            record.declared(&call);
        }
        if let Some(purpose) = call.purpose_code()
            && !state.purposes.contains(purpose)
        {
            return Err(GatewayError::UnknownPurpose(purpose.to_owned()));
        }
        if crate::catalog::is_local(uri.path()) {
            let context = crate::directory::LocalContext {
                caller,
                state: state.clone(),
                certificate_days_left: self.certificate_days_left(),
                log: self.log.clone(),
            };
            let response = Box::pin(crate::directory::call(request, context)).await;
            let mut response = response.map(ResponseBody::local);
            response.body_mut().holds(permit);
            return Ok(response);
        }
        let route = state.routes.route(uri.path(), call.target.as_ref())?;
        let provider = route.provider.clone();
        let idempotent = route.idempotent;
        if let Some(record) = record.as_mut() {
            record.routed(provider.provider());
        }
        let deciding = Instant::now();
        let consent = self.authorize(
            state,
            &caller,
            &call,
            uri.path(),
            provider.provider(),
            record,
        )?;
        let policy_elapsed = deciding.elapsed();
        let max_deadline = route.max_deadline.map_or(state.max_deadline, |service| {
            service.min(state.max_deadline)
        });
        let deadline = Deadline::new(arrival.received, call.timeout, max_deadline);
        let past_deadline = || GatewayError::DeadlineExceeded(deadline.elapsed());
        let (parts, mut body) = request.into_parts();

        // A consent is about one person: the one the request names, in its
        // first message before anything is forwarded, then in every other.
        let mut consent_use = None;
        let mut guard = None;
        if let Some(claims) = consent {
            let field = crate::catalog::subject::SubjectFields::compiled()
                .field(uri.path())
                .ok_or(ConsentRefusal::SubjectMismatch(
                    "this method's requests name no data subject",
                ))?;
            let read = tokio::time::timeout_at(deadline.at(), body::first_message(&mut body))
                .await
                .map_err(|_| past_deadline())??;
            body::bind_subject(body::first_of(&read), field, &claims.subject)?;
            let ledger = self.consent.as_ref().ok_or(ConsentRefusal::StatusUnknown)?;
            let mut reservation = ledger.admit(&claims)?;
            tokio::time::timeout_at(deadline.at(), reservation.durable())
                .await
                .map_err(|_| past_deadline())?
                .map_err(|error| GatewayError::ConsentUseUnrecorded(error.to_string()))?;
            consent_use = Some(reservation);
            if let Some(record) = record.as_mut() {
                record.consented(&claims.consent_id);
            }
            guard = Some(body::SubjectGuard::new(
                &claims.subject,
                field.clone(),
                read,
            ));
        }

        // The decision is durable before anything reaches the backend.
        let decision = match record.as_mut() {
            Some(record) => Some(
                tokio::time::timeout_at(
                    deadline.at(),
                    record
                        .write_decision()
                        .instrument(tracing::debug_span!("exchange_log")),
                )
                .await
                .map_err(|_| past_deadline())??,
            ),
            None => None,
        };
        let tally = record.as_ref().map(|_| {
            let subject = crate::catalog::subject::SubjectFields::compiled().field(uri.path());
            Arc::new(Mutex::new(Tally::new(subject.cloned())))
        });

        // An idempotent call that ends within REPLAY_LIMIT is read whole
        // first, so that it can be replayed on another endpoint.
        let mut replay = None;
        let mut read_first = None;
        if idempotent && guard.is_none() {
            let buffered = tokio::time::timeout_at(
                deadline.at(),
                body::buffer_request(&mut body, REPLAY_LIMIT),
            )
            .await
            .map_err(|_| past_deadline())?;
            match buffered {
                body::Buffered::Whole(bytes) => replay = Some(bytes),
                body::Buffered::Partial(bytes) => read_first = Some(bytes),
            }
        }

        let bytes_in: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let mut limit = permit.message_limit(&self.metrics, &caller);
        let (first_body, call_end) = match &replay {
            Some(bytes) => {
                // Checked and counted once, here: every attempt sends these.
                limit.check(bytes)?;
                if let Some(tally) = &tally {
                    record::count(tally, bytes);
                }
                bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                (replay_body(bytes), body::CallEnd::detached())
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
        let upstream_request = |body: UpstreamBody| {
            let mut upstream = Request::new(body);
            *upstream.method_mut() = parts.method.clone();
            *upstream.uri_mut() = parts.uri.clone();
            *upstream.headers_mut() = headers::upstream_headers(
                &parts.headers,
                &caller,
                &call,
                &arrival.trace,
                request_id,
            );
            if let Some(consent_use) = &consent_use
                && let Ok(value) = HeaderValue::from_str(consent_use.consent_id())
            {
                upstream
                    .headers_mut()
                    .insert(headers::BRIDGE_CONSENT_ID, value);
            }
            upstream
        };

        if let (Some(record), Some(tally)) = (record.as_mut(), &tally) {
            record.forwarding(tally.clone(), SystemTime::now());
        }
        let forwarded = Instant::now();
        provider.count_call();
        let mut body = first_body;
        let mut avoid = None;
        let mut retries = 0;
        let sent = loop {
            let sent = tokio::time::timeout_at(
                deadline.at(),
                provider
                    .send_avoiding(upstream_request(body), &deadline, avoid.as_ref())
                    .instrument(tracing::debug_span!("upstream", provider = %provider.provider())),
            )
            .await
            .map_err(|_| past_deadline())?;
            // Only a replayable call that certainly did nothing is retried:
            // the endpoint answered UNAVAILABLE at once, or none could be
            // reached.
            let Some(bytes) = &replay else { break sent };
            let failed_at = match &sent {
                Ok(response) if crate::routing::upstream::is_unavailable(response) => response
                    .extensions()
                    .get::<crate::routing::upstream::ServedBy>()
                    .cloned(),
                // Unless no endpoint is left to try.
                Err(UpstreamError::Unavailable { .. }) if provider.has_endpoint_in_rotation() => {
                    None
                }
                _ => break sent,
            };
            let backoff = retry_backoff(retries);
            if retries >= MAX_RETRIES || deadline.remaining() <= backoff || !provider.allow_retry()
            {
                break sent;
            }
            retries += 1;
            tracing::debug!(retry = retries, endpoint = ?failed_at, "retrying an idempotent call");
            tokio::time::sleep(backoff).await;
            avoid = failed_at;
            body = replay_body(bytes);
        };
        // The request side may have failed on purpose first.
        let mut response =
            sent.map_err(|error| call_end.refusal().unwrap_or_else(|| error.into()))?;
        let mut call_end = call_end;
        call_end.hold(
            response
                .extensions_mut()
                .remove::<crate::routing::upstream::Load>(),
        );
        headers::strip_bridge_headers(response.headers_mut());
        if let Some(record) = record.as_mut() {
            record.first_byte(SystemTime::now());
        }
        let upstream_elapsed = forwarded.elapsed();
        self.metrics.upstream(provider.provider(), upstream_elapsed);
        let counted = body::CallSummary {
            metrics: self.metrics.clone(),
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            trace_id: arrival.trace.trace_id_hex(),
            span: tracing::Span::current(),
            caller: caller.to_string(),
            provider: provider.provider().to_string(),
            method: uri.path().to_owned(),
            purpose: call.purpose_code().unwrap_or_default().to_owned(),
            endpoint: response
                .extensions()
                .get::<crate::routing::upstream::ServedBy>()
                .map(|served| served.0.clone()),
            started: arrival.received,
            policy: policy_elapsed,
            upstream: upstream_elapsed,
            bytes_in,
            bytes_out: 0,
            consent_use,
        };
        if let Some(index) = decision {
            let (name, value) = record::audit_index(index);
            response.headers_mut().insert(name, value);
        }
        // A trailers-only answer (HEADERS with END_STREAM, as backends send
        // for most errors) must stay trailers-only: relayed as headers and
        // an empty DATA frame, strict clients such as gRPC C-core report
        // UNKNOWN instead of the backend's status. Decided once, here.
        if http_body::Body::is_end_stream(response.body()) {
            counted.finish(Ending::Trailers(response.headers()));
            if let Some(record) = record.take() {
                // The headers carry the status: they wait for the outcome.
                let index = record
                    .write_outcome(
                        Ending::Trailers(response.headers()),
                        Some(&Tally::new(None)),
                    )
                    .await
                    .map_err(|error| GatewayError::OutcomeUnrecorded(error.to_string()))?;
                let (name, value) = record::audit_index(index);
                response.headers_mut().insert(name, value);
            }
            drop(call_end);
            let mut response = response.map(|_| ResponseBody::empty());
            response.body_mut().holds(permit);
            return Ok(response);
        }
        let audit = record.take().map(Audit::new);
        let provider = provider.provider().clone();
        let mut response = response.map(|body| {
            ResponseBody::relay(body, call_end, deadline, provider, audit, Some(counted))
        });
        response.body_mut().holds(permit);
        Ok(response)
    }

    /// The second authorization point: this method, for this caller,
    /// provider and purpose.
    fn authorize(
        &self,
        state: &GatewayState,
        caller: &MemberId,
        call: &CallHeaders,
        method: &str,
        provider: &MemberId,
        record: &mut Option<CallRecord>,
    ) -> Result<Option<Arc<ConsentClaims>>, GatewayError> {
        let now = crate::unix_time::now();
        let certificate_days_left = self
            .peer
            .certificate_not_after
            .map_or(0, |not_after| (not_after - now).div_euclid(86_400));
        let _policy = tracing::debug_span!("policy").entered();
        let facts = |consent_verified| CallFacts {
            caller,
            method,
            provider,
            purpose: call.purpose_code(),
            has_reason: call.reason.is_some(),
            has_user_id: call.user_id.is_some(),
            consent_verified,
            hour: u8::try_from(now.rem_euclid(86_400) / 3600).unwrap_or(0),
            certificate_days_left,
        };
        let mut decision = state.policy.authorize(&facts(false));
        let mut consent = None;
        if !decision.allowed
            && let Some(keys) = &state.consent_keys
        {
            let with_consent = state.policy.authorize(&facts(true));
            if with_consent.allowed {
                // The policies allow the call with the citizen's consent:
                // the artefact decides.
                if let Some(record) = record.as_mut() {
                    record.decided(
                        &with_consent,
                        state.policy.concealed_until(&with_consent, now),
                    );
                }
                let _consent = tracing::debug_span!("consent").entered();
                let token = call
                    .consent
                    .as_ref()
                    .ok_or(ConsentRefusal::Missing)?
                    .to_str()
                    .map_err(|_| ConsentRefusal::Malformed("not visible ASCII".to_owned()))?;
                let scope = CallScope {
                    caller,
                    method,
                    provider,
                    purpose: call.purpose_code(),
                    now,
                };
                consent = Some(consent::check_artefact(keys, token, &scope)?);
                decision = with_consent;
            }
        }
        if !decision.errors.is_empty() {
            tracing::warn!(errors = ?decision.errors, "policies failed to evaluate");
        }
        if let Some(record) = record.as_mut() {
            record.decided(&decision, state.policy.concealed_until(&decision, now));
        }
        if decision.allowed {
            Ok(consent)
        } else {
            Err(GatewayError::Denied {
                caller: caller.clone(),
                method: method.to_owned(),
                provider: provider.clone(),
                purpose: call.purpose_code().map(str::to_owned),
                forbidden_by: decision.policies,
            })
        }
    }

    /// Whole days until the caller's certificate expires.
    fn certificate_days_left(&self) -> i64 {
        self.peer.certificate_not_after.map_or(0, |not_after| {
            not_after
                .saturating_sub(crate::unix_time::now())
                .div_euclid(86_400)
        })
    }

    /// Answers a refused or failed call, once the refusal is logged.
    async fn refuse(
        &self,
        error: GatewayError,
        request_id: &HeaderValue,
        uri: &http::Uri,
        record: Option<CallRecord>,
    ) -> Response<ResponseBody> {
        let span = tracing::Span::current();
        span.record("grpc_status", error.code() as i32);
        span.record("bridge_error", error.kind());
        // Two refusals leave no record and only a debug line, so that a
        // flood costs neither disk nor log volume:
        // - for load, before anything was decided (see
        //   `GatewayError::is_limit_refusal`;
        //   `govbridge_limit_refusals_total` counts them);
        // - a stranger's after its connection's first: a peer the gateway
        //   does not serve gets one record and one log line per
        //   connection, however many streams it opens before the
        //   connection closes (`govbridge_unrecorded_refusals_total`).
        let unrecorded = error.is_limit_refusal()
            || (error.is_stranger_refusal()
                && self.stranger_recorded.swap(true, Ordering::Relaxed));
        if unrecorded {
            tracing::debug!(
                request_id = request_id.to_str().unwrap_or_default(),
                path = %Escaped(uri.path()),
                bridge_error = error.kind(),
                "call refused, not recorded: {}",
                Escaped(&error)
            );
            self.metrics.refusal(error.kind());
            if error.is_stranger_refusal() {
                self.metrics.unrecorded_refusal(error.kind());
            }
            drop(record);
            return error.into_response(Some(request_id));
        }
        tracing::info!(
            request_id = request_id.to_str().unwrap_or_default(),
            caller = self.peer.member.as_ref().map(ToString::to_string).unwrap_or_default(),
            path = %Escaped(uri.path()),
            bridge_error = error.kind(),
            code = ?error.code(),
            blame = ?error.blame(),
            detail = %Escaped(error.detail().unwrap_or_default()),
            "call refused: {}",
            Escaped(&error)
        );
        self.metrics.refusal(error.kind());
        let logged = match record {
            // Nothing to write with: the log has just failed.
            Some(_) if matches!(error, GatewayError::ExchangeLogUnavailable(_)) => None,
            Some(record) => match record.write_refusal(&error).await {
                Ok(index) => Some(index),
                Err(log_error) => {
                    tracing::error!(
                        request_id = request_id.to_str().unwrap_or_default(),
                        detail = log_error.detail().unwrap_or_default(),
                        "refusal not logged: {log_error}"
                    );
                    return log_error.into_response(Some(request_id));
                }
            },
            None => None,
        };
        let mut response = error.into_response(Some(request_id));
        if let Some(index) = logged {
            let (name, value) = record::audit_index(index);
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// Seconds since the epoch.
/// What the gateway knows of a call before reading its headers.
#[derive(Debug)]
struct Arrival {
    received: Instant,
    request_id: HeaderValue,
    trace: TraceContext,
}

impl hyper::service::Service<Request<Incoming>> for GatewayService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}
