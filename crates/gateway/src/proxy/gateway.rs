//! Starting and serving a gateway: bind, serve, drain.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use super::reload::Reloader;
use super::service::GatewayService;
use super::state::GatewayState;
use super::{SharedState, admin};
use crate::config::Config;
use crate::consent::ConsentLedger;
use crate::exchange_log::ExchangeLog;
use crate::identity::MemberId;
use crate::identity::tls::TlsError;
use crate::net::TlsListener;
use crate::telemetry::metrics::Metrics;

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
    AdminToken(#[from] admin::AdminTokenError),
    #[error("store.url: {0}")]
    Database(#[from] crate::database::DatabaseError),
    #[error("gateway.federation_key: {0}")]
    FederationKey(String),
    #[error("witness: {0}")]
    Witness(#[from] crate::exchange_log::witness::WitnessError),
    #[error(
        "{file}: {found} is older than the list this gateway used before ({used}): it would \
         take back the revocations published since; put the newer CRL back (a CA that began \
         its CRL numbers again is taken at a restart)"
    )]
    CrlRolledBack {
        file: String,
        found: String,
        used: String,
    },
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

/// A gateway, bound and ready to serve.
#[derive(Debug)]
pub struct Gateway {
    listener: TlsListener,
    state: SharedState,
    source: std::path::PathBuf,
    /// `None` only when the configuration turns the log off.
    log: Option<ExchangeLog>,
    metrics: Arc<Metrics>,
    /// The admin endpoint's listener, when configured, and whether it
    /// speaks HTTPS.
    admin: Option<(TcpListener, bool)>,
    /// Consent states and uses, and the feed that keeps them, when consent
    /// is configured. Both outlive reloads.
    consent: Option<(Arc<ConsentLedger>, crate::consent::feed::FeedSource)>,
    /// The fleet's database and this node's place in it, with `[store]`.
    fleet: Option<Arc<FleetLink>>,
    /// Held by whoever reloads, so that reloads (a signal, a file change,
    /// the directory's new version) apply one at a time, in order.
    reloading: Arc<std::sync::Mutex<()>>,
}

/// A node's link to its fleet's database: it registers there, beats every
/// second, and knows whether the database answers.
#[derive(Debug)]
pub struct FleetLink {
    pub database: Arc<crate::database::Database>,
    node: crate::database::nodes::NodeInfo,
    /// Why the last heartbeat failed; `None` while the database answers.
    problem: arc_swap::ArcSwapOption<String>,
    /// How long the last heartbeat that was answered took, in
    /// microseconds: the database's latency as a node sees it.
    round_trip_us: std::sync::atomic::AtomicU64,
    /// The database's size on disk, in bytes, as last read (every minute);
    /// 0 until read.
    database_bytes: std::sync::atomic::AtomicU64,
}

impl FleetLink {
    /// Why the node cannot reach its fleet's database, if it cannot.
    pub fn problem(&self) -> Option<Arc<String>> {
        self.problem.load_full()
    }

    /// How long the last answered heartbeat took.
    pub fn round_trip(&self) -> Duration {
        Duration::from_micros(
            self.round_trip_us
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The database's size on disk as last read, if it was.
    pub fn database_bytes(&self) -> Option<u64> {
        match self
            .database_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            bytes => Some(bytes),
        }
    }

    /// This node as it registers, with the fingerprints of `state`.
    fn info(&self, state: &GatewayState) -> crate::database::nodes::NodeInfo {
        let (config, policy) = &state.fingerprints;
        crate::database::nodes::NodeInfo {
            config_fingerprint: config.clone(),
            policy_fingerprint: policy.clone(),
            ..self.node.clone()
        }
    }

    /// Reports the demand through this node since `counted_since` and
    /// shares each member's rate by the fleet's figures (see
    /// [`crate::database::rates`]); an answer that does not come keeps the
    /// last shares.
    async fn share_limits(
        &self,
        state: &GatewayState,
        demand: &[(crate::identity::MemberId, f64)],
    ) {
        use crate::database::nodes::NodeState;
        let shared = async {
            self.database.report_demand(&self.node.id, demand).await?;
            let epochs = self.database.demand_snapshots().await?;
            let up = self
                .database
                .nodes()
                .await?
                .iter()
                .filter(|node| node.state() == NodeState::Up)
                .count();
            Ok::<_, crate::database::DatabaseError>((epochs, up))
        };
        match shared.await {
            Ok((epochs, up)) => state.limits.share_out(&epochs, &self.node.id, up),
            Err(error) => tracing::debug!(%error, "cannot share the members' rates"),
        }
    }

    /// Beats every [`HEARTBEAT`](crate::database::nodes::HEARTBEAT) with
    /// the current configuration's fingerprints, until aborted.
    async fn beat(self: Arc<Self>, state: SharedState) {
        let mut ticks = tokio::time::interval(crate::database::nodes::HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut counted_since = std::time::Instant::now();
        for beat in 0u64.. {
            ticks.tick().await;
            // Now and then, the partners' nonces that no longer matter.
            if beat % 60 == 59
                && let Err(error) = self
                    .database
                    .forget_nonces(
                        crate::unix_time::now(),
                        // Nodes' clocks a minute apart still agree.
                        i64::try_from(crate::federation::MAX_AGE.as_secs()).unwrap_or(60),
                    )
                    .await
            {
                tracing::debug!(%error, "cannot forget the partners' old nonces");
            }
            if beat % 10 == 9
                && let Err(error) = self.database.forget_demand().await
            {
                tracing::debug!(%error, "cannot forget the nodes' old demand reports");
            }
            // The log's tables grow in the database: its size, for the
            // alert that sees a disk fill a week ahead.
            if beat % 60 == 0 {
                match self.database.size().await {
                    Ok(bytes) => self
                        .database_bytes
                        .store(bytes, std::sync::atomic::Ordering::Relaxed),
                    Err(error) => tracing::debug!(%error, "cannot read the database's size"),
                }
            }
            let info = self.info(&state.load());
            let started = std::time::Instant::now();
            // Bounded by the database's query timeout.
            let beat = self.database.heartbeat(&info).await;
            match beat {
                Ok(()) => {
                    let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.round_trip_us
                        .store(took, std::sync::atomic::Ordering::Relaxed);
                    let demand = state
                        .load()
                        .limits
                        .take_demand(started.duration_since(counted_since));
                    counted_since = started;
                    self.share_limits(&state.load(), &demand).await;
                    if self.problem.swap(None).is_some() {
                        tracing::info!(database = %self.database.url(), "the fleet's database answers again");
                    }
                }
                Err(error) => {
                    let previous = self.problem.swap(Some(Arc::new(error.to_string())));
                    if previous.is_none() {
                        tracing::error!(%error, "the fleet's database does not answer");
                    }
                }
            }
        }
    }
}

/// Remembers the partners' assertions a gateway alone took in the last
/// minutes before it started, from its log (each decision holds its call's
/// assertion, durable before the call went on): else one replayed within
/// a minute of a restart would be taken again. A fleet's nodes take each
/// nonce in their database instead.
async fn remember_assertions(state: &GatewayState, log: &ExchangeLog) -> Result<(), StartError> {
    use crate::federation::{Assertion, MAX_AGE};
    // A gateway set up to federate: with partners, or a federation key
    // to which a reload may add them. Another has no partner's records.
    let federation = &state.federation;
    if federation.partners.is_empty() && federation.key.is_none() {
        return Ok(());
    }
    // Taken at most MAX_AGE after it was issued, an assertion is accepted
    // until MAX_AGE after that: a decision logged earlier holds none that
    // is still accepted (a few seconds more, for the clock read between).
    let window = 2 * MAX_AGE + std::time::Duration::from_secs(5);
    let now = crate::unix_time::now();
    let since_us = now
        .saturating_sub(i64::try_from(window.as_secs()).unwrap_or(i64::MAX))
        .saturating_mul(1_000_000);
    let reader = log
        .reader()
        .map_err(crate::exchange_log::OpenError::Store)?;
    let own = federation.instance.clone();
    let dir = log.dir().to_owned();
    // A decision is written once its call's first message is read, within
    // the call's deadline.
    let late = state.max_deadline;
    let sealed = tokio::task::spawn_blocking(move || match reader {
        crate::exchange_log::Reader::Local(store) => store.assertions_since(since_us, &own, late),
        crate::exchange_log::Reader::Fleet(_) => Ok(Vec::new()),
    })
    .await
    .map_err(|error| crate::exchange_log::OpenError::File {
        path: dir,
        message: error.to_string(),
    })?
    .map_err(crate::exchange_log::OpenError::Store)?;
    let remembered = sealed
        .iter()
        .filter_map(|value| Assertion::read_logged(value).ok())
        .filter(|assertion| federation.replays.remember(assertion, now))
        .count();
    if remembered > 0 {
        tracing::info!(
            assertions = remembered,
            "partners' assertions taken before the start remembered from the exchange log: \
             none is taken twice"
        );
    }
    Ok(())
}

impl Gateway {
    /// Validates what a start needs (TLS material on both hops, policies,
    /// routes) without binding anything: what `check-config` runs. The
    /// state it would start with says what else holds calls back (a
    /// partner's, for one: [`GatewayState::partner_refused_at`]).
    pub fn check(config: &Config) -> Result<GatewayState, StartError> {
        config
            .gateway
            .tls
            .server_config()
            .map_err(StartError::ServerTls)?;
        GatewayState::new(config)
    }

    /// Builds the gateway for `config` and binds its listener.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let tls = config
            .gateway
            .tls
            .listener_tls()
            .map_err(StartError::ServerTls)?;
        let state = Arc::new(ArcSwap::from_pointee(GatewayState::new(config)?));
        let database = match &config.store {
            Some(store) => Some(crate::database::Database::connect(store).await?),
            None => None,
        };
        // A fleet's nodes witness partners' logs, and take their
        // assertions, as one.
        if let Some(database) = &database {
            let federation = &state.load().federation;
            federation
                .witness_book
                .share(Arc::clone(database), tokio::runtime::Handle::current());
            let logs = config
                .federation
                .partners
                .values()
                .filter_map(|partner| {
                    let (log_key, _) = partner.log_key.as_ref()?;
                    Some((partner.instance.clone(), log_key.clone()))
                })
                .collect();
            let dir = config
                .exchange_log
                .data_dir
                .join(crate::exchange_log::witness::STATE_DIR);
            crate::exchange_log::witness::join_fleet(&dir, &logs, database).await?;
            let _ = federation.fleet.set(Arc::clone(database));
        }
        let log = if config.exchange_log.enabled {
            let settings = config.exchange_log.clone();
            let fleet = match (&config.store, &database) {
                (Some(store), Some(database)) => Some(crate::exchange_log::FleetStore {
                    writer: crate::database::Database::connect(store).await?,
                    reader: Arc::clone(database),
                    node: config.gateway.node_id.clone(),
                    runtime: tokio::runtime::Handle::current(),
                }),
                _ => None,
            };
            // Opening reads files and may create the database: blocking.
            Some(
                tokio::task::spawn_blocking(move || match fleet {
                    Some(fleet) => ExchangeLog::open_fleet(&settings, fleet),
                    None => ExchangeLog::open(&settings),
                })
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
        if let (Some(log), None) = (&log, &database) {
            remember_assertions(&state.load(), log).await?;
        }
        let address = config.gateway.listen;
        let tcp = TcpListener::bind(address)
            .await
            .map_err(|source| StartError::Bind { address, source })?;
        let admin = match config.gateway.admin {
            Some(address) => {
                if !address.ip().is_loopback() && !config.gateway.admin_tls {
                    tracing::warn!(
                        %address,
                        "the admin endpoint is off loopback in plain HTTP: its token travels in \
                         clear; set gateway.admin_tls = true"
                    );
                }
                let tcp = TcpListener::bind(address)
                    .await
                    .map_err(|source| StartError::Bind { address, source })?;
                Some((tcp, config.gateway.admin_tls))
            }
            None => None,
        };
        let fleet = match &database {
            Some(database) => {
                let link = FleetLink {
                    database: Arc::clone(database),
                    node: crate::database::nodes::NodeInfo {
                        id: config.gateway.node_id.clone(),
                        address: tcp
                            .local_addr()
                            .map_or_else(|_| address.to_string(), |bound| bound.to_string()),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        config_fingerprint: String::new(),
                        policy_fingerprint: String::new(),
                    },
                    problem: arc_swap::ArcSwapOption::empty(),
                    round_trip_us: std::sync::atomic::AtomicU64::new(0),
                    database_bytes: std::sync::atomic::AtomicU64::new(0),
                };
                Some(Arc::new(link))
            }
            None => None,
        };
        let consent = match &config.consent {
            Some(consent) => Some((
                match &database {
                    Some(database) => {
                        ConsentLedger::open_shared(consent.freshness, Arc::clone(database))
                    }
                    None => ConsentLedger::open(consent.freshness, &consent.ledger)?,
                },
                crate::consent::feed::FeedSource {
                    gateway: config.gateway.identity.clone(),
                    route: {
                        let state = Arc::clone(&state);
                        Box::new(move || state.load().consent_feed.clone())
                    },
                },
            )),
            None => None,
        };
        // Registered last: a start that fails before this point leaves no
        // row that would look up and block the next start under this id.
        if let Some(link) = &fleet {
            link.database.register(&link.info(&state.load())).await?;
            link.share_limits(&state.load(), &[]).await;
        }
        let metrics = Arc::new(Metrics::default());
        {
            let built = state.load();
            for _ in built.overdue_crls_at(built.built_at()) {
                metrics.stale_crl(false);
            }
            for _ in built.partners_with_stale_crls_at(built.built_at()) {
                metrics.stale_crl(true);
            }
        }
        Ok(Self {
            listener: TlsListener::new(tcp, tls, config.gateway.listener.clone()),
            state,
            source: config.source.clone(),
            log,
            metrics,
            admin,
            consent,
            fleet,
            reloading: Arc::default(),
        })
    }

    /// The admin endpoint's address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|(admin, _)| admin.local_addr().ok())
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
            reloading: Arc::clone(&self.reloading),
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
        if let Some((listener, tls)) = self.admin {
            let admin = admin::Admin {
                metrics: metrics.clone(),
                log: log.clone(),
                state: state.clone(),
                reloader,
                listener: self.listener.stats(),
                fleet: self.fleet.clone(),
                consent: self.consent.as_ref().map(|(ledger, _)| Arc::clone(ledger)),
                tls: tls.then(|| self.listener.tls()),
            };
            if let Ok(address) = listener.local_addr() {
                let scheme = if tls { "https" } else { "http" };
                tracing::info!("admin endpoint on {scheme}://{address}");
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
        if let Some(fleet) = &self.fleet {
            let beating = tokio::spawn(Arc::clone(fleet).beat(state.clone()));
            background.0.push(beating.abort_handle());
        }
        // This instance's checkpoints, to the partners that witness them:
        // by a single node, or by one node of a fleet at a time.
        if let Some(log) = &log {
            let fleet = self.fleet.as_ref().map(|fleet| super::witness::Fleet {
                database: Arc::clone(&fleet.database),
                node: fleet.node.id.clone(),
            });
            let following = tokio::spawn(super::witness::follow(state.clone(), log.clone(), fleet));
            background.0.push(following.abort_handle());
        }
        // Partners' receipts of the calls forwarded to them.
        if let Some(log) = &log {
            let queue = Arc::clone(&state.load().federation.receipts);
            let fleet = self.fleet.as_ref().map(|fleet| Arc::clone(&fleet.database));
            let fetching = tokio::spawn(super::receipts::follow(
                state.clone(),
                log.clone(),
                queue,
                fleet,
            ));
            background.0.push(fetching.abort_handle());
        }
        // Stopping, a single node sends its final checkpoint; a fleet's
        // log goes on without this node.
        let witnessed = log.clone().filter(|log| !log.is_shared());
        let witnessing = state.clone();
        let ledger = match self.consent {
            Some((ledger, source)) => {
                let feed = tokio::spawn(crate::consent::feed::follow(ledger.clone(), source));
                background.0.push(feed.abort_handle());
                Some(ledger)
            }
            None => None,
        };
        let closing = ledger.clone();
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
        if let Some(fleet) = &self.fleet {
            // Another node takes the sending of checkpoints at once.
            let handing_over = fleet.database.stop_sending_checkpoints(&fleet.node.id);
            match tokio::time::timeout(Duration::from_secs(2), handing_over).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "cannot hand the sending of checkpoints over");
                }
                Err(_) => tracing::debug!("cannot hand the sending of checkpoints over: no answer"),
            }
            let leaving = fleet.database.deregister(&fleet.node.id);
            match tokio::time::timeout(Duration::from_secs(2), leaving).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot tell the fleet this node stops"),
                Err(_) => tracing::warn!("cannot tell the fleet this node stops: no answer"),
            }
        }
        if let Some(log) = log {
            let closed = tokio::task::spawn_blocking(move || log.close()).await;
            if let Err(error) = closed {
                tracing::error!(%error, "closing the exchange log failed");
            }
        }
        // The final checkpoint, to the partners witnessing this log.
        if let Some(log) = witnessed {
            super::witness::flush(&witnessing, &log).await;
        }
        if let Some(fleet) = &self.fleet {
            fleet.database.close();
        }
        if let Some(ledger) = closing {
            ledger.close();
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

/// Checks the health of every backend endpoint of the current
/// configuration, every `upstream.health_check_interval`, until aborted.
/// A reload applies within a second: a shorter interval does not wait
/// out the longer one before it.
async fn check_health(state: SharedState) {
    const LOOK_EVERY: Duration = Duration::from_secs(1);
    loop {
        let checked = state.load_full();
        let Some(interval) = checked.health_check_interval else {
            // Checks are off in this configuration; look again later.
            tokio::time::sleep(LOOK_EVERY).await;
            continue;
        };
        let pools: Vec<_> = checked.routes.all_pools().cloned().collect();
        let started = tokio::time::Instant::now();
        let mut checks = tokio::task::JoinSet::new();
        for pool in pools {
            checks.spawn(async move { pool.check_health().await });
        }
        while checks.join_next().await.is_some() {}
        let mut next = started + interval;
        loop {
            tokio::time::sleep_until(next.min(tokio::time::Instant::now() + LOOK_EVERY)).await;
            let current = state.load();
            if !Arc::ptr_eq(&current, &checked) {
                // Reloaded: the next checks are the new configuration's,
                // as soon as its interval since the last ones allows.
                match current.health_check_interval {
                    Some(interval) => next = next.min(started + interval),
                    None => break,
                }
            }
            if tokio::time::Instant::now() >= next {
                break;
            }
        }
    }
}

/// Logs each CRL in use once it passes its next update while the gateway
/// runs, and again once past its grace too (its handshakes are refused
/// from that second: `crate::identity::tls::CrlFreshness`), looking every
/// second, until aborted. `govbridge_crl_overdue_seconds` shows the same.
/// What a start or reload found out of date it has logged itself.
async fn watch_crls(state: SharedState) {
    let mut loaded = state.load_full();
    let mut looked = loaded.built_at();
    let overdue_when_built = |state: &GatewayState| -> HashSet<String> {
        state
            .overdue_crls_at(state.built_at())
            .map(ToOwned::to_owned)
            .collect()
    };
    // Those its build warned of already.
    let mut reported = overdue_when_built(&loaded);
    // A few comparisons a second: the log says so in the second the
    // refusals start, not up to a minute later.
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticks.tick().await;
        let current = state.load_full();
        let now = crate::unix_time::now();
        // A state just swapped in checked its CRLs when it was built, and
        // said then which were out of date: what went since is news, even
        // in the second between its build and this look. A CRL replaced by
        // a fresh one is warned of again once that one is overdue in turn.
        let since = if Arc::ptr_eq(&current, &loaded) {
            looked
        } else {
            reported = overdue_when_built(&current);
            current.built_at()
        };
        for crl in current.overdue_crls_at(now) {
            if reported.insert(crl.to_owned()) {
                // A warning, not an error: it may be within its grace.
                tracing::warn!(
                    crl,
                    "CRL past its next update: publish a fresh one; its handshakes are refused \
                     once past its crl_grace"
                );
            }
        }
        for (list, why) in current.crls_gone_stale(since, now) {
            tracing::error!(
                crls = list,
                error = why,
                "CRL out of date beyond its grace: every certificate it checks is refused \
                 until a fresh one is dropped in place"
            );
        }
        (loaded, looked) = (current, now);
    }
}
