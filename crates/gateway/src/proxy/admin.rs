//! The admin endpoint: HTTP/1.1 on a separate address (loopback in the
//! dev configuration), for operators and their tools; plain, or with
//! `gateway.admin_tls` HTTPS with the gateway's own certificate (and, as
//! the listener's, reloaded with it), so that a token sent off loopback
//! does not travel in clear.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when calls can be served, else 503 with the reasons |
//! | `GET /metrics` | Prometheus text |
//! | `GET /config` | the effective configuration as JSON (paths, never key material); the member registry to operators only |
//! | `POST /reload` | operators only: reloads the configuration; 200, or 422 with the error |
//!
//! Who is an operator: with `gateway.admin_token_file`, a request with
//! `Authorization: Bearer <token>`. Without it, and only while the
//! endpoint is bound to loopback (the configuration refuses anything else
//! at start, and a reload cannot move the socket), a request with the
//! `x-govbridge-admin` header and a loopback `Host`. A cross-site form or
//! `fetch` cannot send either header without a preflight this endpoint
//! never grants. Bound to loopback, it answers only requests whose `Host`
//! is a loopback name: a page that rebinds its own host name to 127.0.0.1
//! still sends that name, and reads nothing. The probes (`/healthz`,
//! `/readyz`, `/metrics`) stay open to scrapers.
//!
//! At most [`MAX_CONNECTIONS`] connections at once,
//! [`MAX_CONNECTIONS_PER_ADDRESS`] from one address, each closed after
//! [`MAX_CONNECTION_AGE`]: the endpoint shares the process's file
//! descriptors with the partners' listener.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{GatewayState, Reloader};
use crate::exchange_log::ExchangeLog;
use crate::telemetry::metrics::{LogGauges, Metrics};

pub use crate::wire::headers::OPERATOR_HEADER;

/// The shortest token accepted, in characters.
pub const MIN_TOKEN_LEN: usize = 32;

/// Connections the admin endpoint holds at once; one more is closed at
/// once.
pub const MAX_CONNECTIONS: usize = 64;

/// Connections one address may hold at once: no one peer takes the
/// probes' and scrapers' room.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 8;

/// How long an admin connection may stay open (a scraper reconnects).
pub const MAX_CONNECTION_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a client has for its TLS handshake, then its request's
/// headers.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an exchange log's commit may take before `/readyz` says the
/// node is not ready: some hundred times this disk's slowest commits, and
/// well before a store that waits for a lock gives up (5 s).
const COMMIT_STALLED: std::time::Duration = std::time::Duration::from_secs(2);

/// The admin connections open per peer address.
#[derive(Debug, Default)]
struct Peers(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One peer's connection, counted until dropped.
struct PeerSlot {
    peers: Arc<Peers>,
    address: std::net::IpAddr,
}

impl Peers {
    /// A slot for one more connection from `address`, if it has room.
    fn take(self: &Arc<Self>, address: std::net::IpAddr) -> Option<PeerSlot> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(address).or_default();
        if *count >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            address,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .peers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// The bearer token of `gateway.admin_token_file`. Never printed.
pub struct AdminToken {
    token: Vec<u8>,
    /// Where it was read from.
    path: PathBuf,
    /// Set once its file no longer holds it while a reload that would
    /// have replaced it was rejected: a token an operator revoked stops
    /// working then, whatever else the reload found wrong.
    revoked: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Why `gateway.admin_token_file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Exposed(#[from] crate::identity::secret::ExposedSecret),
    #[error(
        "{}: the token must be at least {MIN_TOKEN_LEN} visible ASCII characters on one line \
         (e.g. from `openssl rand -hex 32`)",
        path.display()
    )]
    Weak { path: PathBuf },
}

impl AdminToken {
    /// Reads the token: one line of visible ASCII (it travels in a header),
    /// from a file only its owner (and group) may read.
    pub fn load(path: &Path) -> Result<Self, AdminTokenError> {
        crate::identity::secret::check_permissions(path)?;
        let bytes = std::fs::read(path).map_err(|source| AdminTokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let token = bytes.trim_ascii();
        if token.len() < MIN_TOKEN_LEN || !token.iter().all(u8::is_ascii_graphic) {
            return Err(AdminTokenError::Weak {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            token: token.to_vec(),
            path: path.to_owned(),
            revoked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// After a rejected reload: stops this token if its file no longer
    /// holds it (removed, rewritten, unreadable, too open), and says so.
    pub fn revoke_unless_still_in_its_file(&self) {
        let held = Self::load(&self.path).is_ok_and(|read| read.token == self.token);
        if !held
            && !self
                .revoked
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                file = %self.path.display(),
                "the admin token file no longer holds the token in use, and the reload that \
                 would replace it was rejected: the old token is refused from now on; \
                 operator access is off until a reload succeeds"
            );
        }
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`,
    /// compared in constant time.
    fn presented_in(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some((scheme, token)) = value.split_at_checked(7) else {
            return false;
        };
        !self.revoked.load(std::sync::atomic::Ordering::Relaxed)
            && scheme.eq_ignore_ascii_case(b"bearer ")
            && aws_lc_rs::constant_time::verify_slices_are_equal(token.trim_ascii(), &self.token)
                .is_ok()
    }
}

/// Whether a request comes from an operator (see the module docs), to an
/// endpoint bound to a loopback address or not.
fn is_operator(token: Option<&AdminToken>, headers: &HeaderMap, loopback: bool) -> bool {
    match token {
        Some(token) => token.presented_in(headers),
        None => loopback && headers.contains_key(OPERATOR_HEADER) && names_loopback(headers),
    }
}

/// Whether the `Host` header names a loopback address (or `localhost`),
/// with or without a port: not a rebound public name.
fn names_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
    else {
        return false;
    };
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What the admin endpoint reads and acts on.
#[derive(Debug, Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub log: Option<ExchangeLog>,
    pub state: Arc<arc_swap::ArcSwap<GatewayState>>,
    pub reloader: Reloader,
    pub listener: Arc<crate::net::ListenerStats>,
    /// The fleet's database, with `[store]`.
    pub fleet: Option<Arc<super::gateway::FleetLink>>,
    /// Consent states, with `[consent]`.
    pub consent: Option<Arc<crate::consent::ConsentLedger>>,
    /// The listener's TLS, whose admin configuration HTTPS connections
    /// take, with `gateway.admin_tls`.
    pub tls: Option<crate::net::SharedListenerTls>,
}

impl Admin {
    /// Serves `listener` until `shutdown` resolves.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        // Decided by the socket, which no reload moves.
        let loopback = listener
            .local_addr()
            .is_ok_and(|address| address.ip().is_loopback());
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let peers = Arc::new(Peers::default());
        let accept = async {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Counted as the partners' listener counts: an IPv6 /64
                // is one address.
                let Some(peer_slot) = peers.take(crate::net::counted_as(peer.ip())) else {
                    tracing::debug!(%peer, "admin connection closed: {MAX_CONNECTIONS_PER_ADDRESS} from this address are open");
                    continue;
                };
                let Ok(held) = Arc::clone(&connections).try_acquire_owned() else {
                    tracing::debug!("admin connection closed: {MAX_CONNECTIONS} are open");
                    continue;
                };
                let admin = self.clone();
                tokio::spawn(async move {
                    match admin.tls.as_ref().map(crate::net::SharedListenerTls::admin) {
                        None => admin.connection(tcp, loopback).await,
                        Some(tls) => {
                            let accepting = tokio_rustls::TlsAcceptor::from(tls).accept(tcp);
                            // A client that never finishes its handshake is dropped.
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, accepting).await {
                                Ok(Ok(stream)) => admin.connection(stream, loopback).await,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "admin TLS handshake failed");
                                }
                                Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                            }
                        }
                    }
                    drop((held, peer_slot));
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown => {}
        }
    }

    /// Serves one connection, plain or TLS, until it ends or has lived
    /// [`MAX_CONNECTION_AGE`].
    async fn connection<I>(self, io: I, loopback: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request| {
            let admin = self.clone();
            async move { Ok::<_, Infallible>(admin.answer(request, loopback).await) }
        });
        // A client that never finishes its request is dropped.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                // The answer under way is finished, then it closes.
                connection.as_mut().graceful_shutdown();
                tokio::time::timeout(std::time::Duration::from_secs(10), connection)
                    .await
                    .unwrap_or(Ok(()))
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%error, "admin connection ended");
        }
    }

    async fn answer(&self, request: Request<Incoming>, loopback: bool) -> Response<Full<Bytes>> {
        if loopback && !names_loopback(request.headers()) {
            return text(
                StatusCode::MISDIRECTED_REQUEST,
                "this endpoint answers requests for localhost, 127.0.0.1 or ::1 only\n".to_owned(),
            );
        }
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".to_owned()),
            (&Method::GET, "/readyz") => {
                let (problems, notes) = self.readiness().await;
                if problems.is_empty() {
                    let mut answer = "ready\n".to_owned();
                    for note in notes {
                        answer.push_str(&format!("- {note}\n"));
                    }
                    text(StatusCode::OK, answer)
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready:\n- {}\n", problems.join("\n- ")),
                    )
                }
            }
            (&Method::GET, "/metrics") => {
                let log = self.log.as_ref().map(|log| LogGauges {
                    records: log.size(),
                    queued: log.queued(),
                    unsealed: log.unsealed(),
                    writable: log.is_healthy(),
                    commits: log.commit_durations(),
                    committing: log.committing_for().unwrap_or_default(),
                });
                let state = self.state.load();
                let mut rendered =
                    self.metrics
                        .render(log, state.certificates(), state.crls(), &self.listener);
                render_endpoints(&mut rendered, &state);
                render_global(&mut rendered, &state);
                render_partners(&mut rendered, &state);
                render_witness(&mut rendered, &state);
                render_receipts(&mut rendered, &state);
                if let Some(fleet) = &self.fleet {
                    render_fleet(&mut rendered, &state, fleet);
                }
                // A fleet's log has no files here: its tables are the
                // database's to watch.
                if let Some(log) = self.log.as_ref().filter(|log| !log.is_shared()) {
                    render_log_files(&mut rendered, log.dir());
                }
                if let Some(consent) = &self.consent {
                    use std::fmt::Write as _;
                    let _ = writeln!(
                        rendered,
                        "# HELP govbridge_consent_feed_fresh 1 while the consent feed is heard \
                         from within consent.freshness and caught up; 0: consent-bound calls are \
                         refused (consent-status-unknown).\n\
                         # TYPE govbridge_consent_feed_fresh gauge\n\
                         govbridge_consent_feed_fresh {}",
                        u8::from(consent.is_fresh())
                    );
                }
                let mut response = text(StatusCode::OK, rendered);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            (&Method::GET, "/config") => {
                let state = self.state.load();
                let operator = is_operator(state.admin_token(), request.headers(), loopback);
                let mut response = text(StatusCode::OK, state.describe(operator));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            (&Method::POST, "/reload") => {
                let state = self.state.load();
                if !is_operator(state.admin_token(), request.headers(), loopback) {
                    return refused(state.admin_token().is_some());
                }
                self.reloader.learn_partners().await;
                let reloader = self.reloader.clone();
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Ok(Ok(())) => text(StatusCode::OK, "reloaded\n".to_owned()),
                    Ok(Err(error)) => text(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("reload rejected, the running configuration stays: {error}\n"),
                    ),
                    Err(error) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("reload failed to run: {error}\n"),
                    ),
                }
            }
            (_, "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".to_owned(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "routes: GET /healthz /readyz /metrics /config, POST /reload\n".to_owned(),
            ),
        }
    }

    /// Why calls cannot be served now (empty when they can), and what a
    /// ready node says beside: its database out of reach while no call
    /// needs it, a service none of whose providers can be reached.
    async fn readiness(&self) -> (Vec<String>, Vec<String>) {
        let mut problems = Vec::new();
        if self.listener.draining() {
            problems.push("shutting down: open calls are finishing, no new ones".to_owned());
        }
        if let Some(log) = &self.log {
            if !log.is_healthy() {
                problems.push("the exchange log cannot write: every call is refused".to_owned());
            }
            if let Some(stalled) = log.committing_for().filter(|took| *took >= COMMIT_STALLED) {
                problems.push(format!(
                    "the exchange log's commit in progress has taken {:.1} s so far (its disk \
                     or database stalls): calls wait for it, and are refused once it fails",
                    stalled.as_secs_f64()
                ));
            }
        }
        let state = self.state.load_full();
        // Calls need the database for the fleet's log, for consent, and
        // for partners' assertions (their nonces): with none of these, the
        // node serves on (the alerts say the database is down).
        let mut notes = Vec::new();
        if let Some(problem) = self.fleet.as_ref().and_then(|fleet| fleet.problem()) {
            let shared_log = self.log.as_ref().is_some_and(ExchangeLog::is_shared);
            let mut refused = Vec::new();
            if self.consent.is_some() {
                refused.push("consent-bound calls");
            }
            if !state.partner_instances().is_empty() {
                refused.push("calls from partner instances");
            }
            let unreachable = format!("the fleet's database is unreachable ({problem})");
            if shared_log {
                problems.push(format!("{unreachable}: every call is refused"));
            } else if !refused.is_empty() {
                problems.push(format!(
                    "{unreachable}: {} are refused",
                    refused.join(" and ")
                ));
            } else {
                notes.push(format!(
                    "{unreachable}: calls are served, but this node's rate shares and its \
                     heartbeat are not kept up to date"
                ));
            }
        }
        let now = crate::unix_time::now();
        if let Some(global) = state.expired_global(now) {
            problems.push(format!(
                "the global configuration (version {}) expired at {}: every call is refused \
                 until the directory gives a newer one",
                global.version,
                crate::unix_time::rfc3339(global.expires)
            ));
        }
        for (name, not_after) in state.certificates() {
            if *not_after <= now {
                problems.push(format!("{name} has expired"));
            }
        }
        // Within its grace a CRL serves on; a partner's out of date stops
        // that partner's calls only (`partner-crl-stale`).
        for (setting, stale) in state.stale_own_crls_at(now) {
            let refused = if setting == "upstream.crls" {
                "every backend's certificate is refused"
            } else {
                "every client certificate it checks is refused"
            };
            problems.push(format!("{setting}: {stale}: {refused}"));
        }
        for service in state.services().keys() {
            let Some(pools) = state.service_pools(service) else {
                continue;
            };
            // A partner instance's providers are its gateways' to serve:
            // when they cannot be reached, calls to them are refused one by
            // one (`upstream-unavailable`), and this gateway stays ready
            // for everything else (a balancer must not take it out).
            let home = pools.iter().filter(|pool| pool.partner().is_none());
            let mut reachable = None;
            for pool in home {
                reachable = Some(pool.reachable().await);
                if reachable == Some(true) {
                    break;
                }
            }
            // Nor is this node's readiness one service's: a balancer that
            // took every node out for the tax authority's outage would
            // stop the civil registry's calls too. Those calls are refused
            // one by one (`upstream-unavailable`); readiness notes it.
            if reachable == Some(false) {
                notes.push(format!(
                    "no provider of {service} is reachable: its calls are refused \
                     (upstream-unavailable)"
                ));
            }
        }
        (problems, notes)
    }
}

/// The answer to a request that needs an operator and is not from one.
fn refused(token_configured: bool) -> Response<Full<Bytes>> {
    if token_configured {
        let mut response = text(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <token>`, the token of gateway.admin_token_file\n"
                .to_owned(),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"govbridge-admin\""),
        );
        response
    } else {
        text(
            StatusCode::FORBIDDEN,
            format!(
                "send the header `{OPERATOR_HEADER}: 1` to a loopback address (Host \
                 127.0.0.1, [::1] or localhost)\n"
            ),
        )
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The sizes of the exchange log's files: the journal must stay within its
/// bound, the store grow by what it keeps.
fn render_log_files(out: &mut String, dir: &std::path::Path) {
    use crate::exchange_log::store::DATABASE_FILE;
    use std::fmt::Write as _;
    let size = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |file| file.len());
    let _ = writeln!(
        out,
        "# HELP govbridge_exchange_log_store_bytes Size of the exchange log's database file.\n\
         # TYPE govbridge_exchange_log_store_bytes gauge\n\
         govbridge_exchange_log_store_bytes {}\n\
         # HELP govbridge_exchange_log_journal_bytes Size of the exchange log's journal (WAL); \
         the writer keeps it within 16 MiB between batches.\n\
         # TYPE govbridge_exchange_log_journal_bytes gauge\n\
         govbridge_exchange_log_journal_bytes {}",
        size(DATABASE_FILE),
        size(&format!("{DATABASE_FILE}-wal"))
    );
}

/// The fleet as this node sees it.
fn render_fleet(
    out: &mut String,
    state: &crate::proxy::GatewayState,
    fleet: &super::gateway::FleetLink,
) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP govbridge_fleet_nodes_up Nodes of the fleet up, this one included, as the fleet's \
         rate figures (its last closed epochs) have them: a member's rate is shared among them \
         by demand.\n\
         # TYPE govbridge_fleet_nodes_up gauge\n\
         govbridge_fleet_nodes_up {}\n\
         # HELP govbridge_fleet_database_reachable 1 while this node's heartbeat reaches the \
         fleet's database.\n\
         # TYPE govbridge_fleet_database_reachable gauge\n\
         govbridge_fleet_database_reachable {}\n\
         # HELP govbridge_fleet_database_heartbeat_seconds How long this node's last answered \
         heartbeat to the fleet's database took.\n\
         # TYPE govbridge_fleet_database_heartbeat_seconds gauge\n\
         govbridge_fleet_database_heartbeat_seconds {}",
        state.limits.fleet_nodes(),
        u8::from(fleet.problem().is_none()),
        fleet.round_trip().as_secs_f64()
    );
    if let Some(bytes) = fleet.database_bytes() {
        let _ = writeln!(
            out,
            "# HELP govbridge_fleet_database_bytes The fleet's database's size on disk (its \
             log's tables among the rest), read every minute.\n\
             # TYPE govbridge_fleet_database_bytes gauge\n\
             govbridge_fleet_database_bytes {bytes}"
        );
    }
}

/// Whether calls go to and come from each partner instance now: 0 while
/// they are refused (`GatewayState::partner_refused_at`: a CRL out of
/// date, its configuration not learned, unusable or expired; the calls'
/// `bridge-error` kind, and `check-config`, say which).
fn render_partners(out: &mut String, state: &crate::proxy::GatewayState) {
    use std::fmt::Write as _;
    let instances = state.partner_instances();
    if instances.is_empty() {
        return;
    }
    out.push_str(
        "# HELP govbridge_partner_usable 1 while calls go to and come from the partner \
         instance; 0 while they are refused (a stale CRL, its configuration not learned, \
         unusable or expired).\n\
         # TYPE govbridge_partner_usable gauge\n",
    );
    let now = crate::unix_time::now();
    for instance in instances {
        let usable = state.partner_refused_at(instance, now).is_none();
        let _ = writeln!(
            out,
            "govbridge_partner_usable{{partner=\"{instance}\"}} {}",
            u8::from(usable)
        );
    }
}

/// The global configuration in use, and that of each partner followed
/// from its own directory: its version and when it expires.
fn render_global(out: &mut String, state: &crate::proxy::GatewayState) {
    use std::fmt::Write as _;
    let mut partners: Vec<&crate::config::GlobalVersion> = state
        .federation
        .partners
        .values()
        .filter_map(|partner| partner.published.as_ref())
        .collect();
    partners.sort_by(|a, b| a.instance.cmp(&b.instance));
    let versions: Vec<&crate::config::GlobalVersion> =
        state.global().into_iter().chain(partners).collect();
    if versions.is_empty() {
        return;
    }
    out.push_str(
        "# HELP govbridge_global_configuration_version The version of the global configuration \
         in use (of this instance, and of each partner followed from its directory).\n\
         # TYPE govbridge_global_configuration_version gauge\n",
    );
    for global in &versions {
        let _ = writeln!(
            out,
            "govbridge_global_configuration_version{{config_instance=\"{}\"}} {}",
            global.instance, global.version
        );
    }
    out.push_str(
        "# HELP govbridge_global_configuration_expiry_timestamp_seconds When the global \
         configuration in use expires: past it, every call is refused (every call to or from \
         the partner, for a partner's).\n\
         # TYPE govbridge_global_configuration_expiry_timestamp_seconds gauge\n",
    );
    for global in &versions {
        let _ = writeln!(
            out,
            "govbridge_global_configuration_expiry_timestamp_seconds{{config_instance=\"{}\"}} {}",
            global.instance, global.expires
        );
    }
}

/// The witness of partners' logs: checkpoints by partner and result (an
/// `inconsistent` one means the partner's log forked or was rewritten),
/// and the size of each log it cosigned last.
fn render_witness(out: &mut String, state: &crate::proxy::GatewayState) {
    use std::fmt::Write as _;
    let Some(witness) = state.federation.witness.as_ref() else {
        return;
    };
    let _ = write!(
        out,
        "# HELP govbridge_witness_checkpoints_total Partners' checkpoints this gateway was sent to \
         witness, by result (inconsistent: the partner's log forked or was rewritten).\n\
         # TYPE govbridge_witness_checkpoints_total counter\n"
    );
    for ((partner, result), count) in witness.outcomes() {
        let _ = writeln!(
            out,
            "govbridge_witness_checkpoints_total{{partner=\"{partner}\",result=\"{result}\"}} {count}"
        );
    }
    let _ = write!(
        out,
        "# HELP govbridge_witness_cosigned_size Records in the partner's log as of the checkpoint \
         this gateway cosigned last.\n# TYPE govbridge_witness_cosigned_size gauge\n"
    );
    for partner in witness.instances() {
        if let Some(size) = witness.cosigned_size(partner) {
            let _ = writeln!(
                out,
                "govbridge_witness_cosigned_size{{partner=\"{partner}\"}} {size}"
            );
        }
    }
}

/// Partners' receipts of the calls forwarded to them: fetched and kept,
/// refused (the partner's answer does not hold: alert on any) or dropped.
fn render_receipts(out: &mut String, state: &crate::proxy::GatewayState) {
    use std::fmt::Write as _;
    if !state
        .federation
        .partners
        .values()
        .any(|partner| partner.receipts)
    {
        return;
    }
    let queue = &state.federation.receipts;
    let _ = write!(
        out,
        "# HELP govbridge_receipts_total Partners' receipts of forwarded calls, by result \
         (refused: the partner's answer did not hold).\n# TYPE govbridge_receipts_total counter\n"
    );
    for ((partner, result), count) in queue.outcomes() {
        let _ = writeln!(
            out,
            "govbridge_receipts_total{{partner=\"{partner}\",result=\"{result}\"}} {count}"
        );
    }
    let _ = write!(
        out,
        "# HELP govbridge_receipts_pending Partners' receipts waiting to be fetched.\n\
         # TYPE govbridge_receipts_pending gauge\ngovbridge_receipts_pending {}\n",
        queue.pending()
    );
}

/// The gauges and counters of each backend endpoint, read from the pools
/// of the current configuration.
fn render_endpoints(out: &mut String, state: &crate::proxy::GatewayState) {
    use std::fmt::Write as _;
    let mut pools: Vec<_> = state.pools().collect();
    pools.sort_by(|a, b| a.provider().cmp(b.provider()));
    let series = [
        (
            "govbridge_upstream_endpoint_in_rotation",
            "gauge",
            "1 while a backend endpoint takes calls: neither ejected nor failing health checks.",
        ),
        (
            "govbridge_upstream_endpoint_outstanding",
            "gauge",
            "Calls in flight to a backend endpoint.",
        ),
        (
            "govbridge_upstream_endpoint_connections",
            "gauge",
            "Open HTTP/2 connections to a backend endpoint.",
        ),
        (
            "govbridge_upstream_endpoint_ejections_total",
            "counter",
            "Times a backend endpoint was ejected after failed calls in a row.",
        ),
    ];
    let _ = writeln!(
        out,
        "# HELP govbridge_upstream_retries_total Idempotent calls retried on another endpoint."
    );
    let _ = writeln!(out, "# TYPE govbridge_upstream_retries_total counter");
    for pool in &pools {
        let _ = writeln!(
            out,
            "govbridge_upstream_retries_total{{provider=\"{}\"}} {}",
            pool.provider(),
            pool.retries()
        );
    }
    for (index, (name, kind, help)) in series.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for pool in &pools {
            for endpoint in pool.endpoint_states() {
                let value = match index {
                    0 => u64::from(endpoint.in_rotation),
                    1 => endpoint.outstanding as u64,
                    2 => endpoint.connections as u64,
                    _ => endpoint.ejections,
                };
                let _ = writeln!(
                    out,
                    "{name}{{provider=\"{}\",endpoint=\"{}\"}} {value}",
                    pool.provider(),
                    endpoint.address
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a token, the header and a loopback `Host` make an operator
    /// only on an endpoint bound to loopback: a reload that drops the
    /// token cannot open a socket bound elsewhere.
    #[test]
    fn without_a_token_only_a_loopback_socket_has_operators() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:9464".parse().unwrap());
        headers.insert(OPERATOR_HEADER, "1".parse().unwrap());
        assert!(is_operator(None, &headers, true));
        assert!(!is_operator(None, &headers, false));
    }

    #[test]
    fn one_address_holds_so_many_connections_and_no_more() {
        let peers = Arc::new(Peers::default());
        let (one, other) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut held: Vec<PeerSlot> = (0..MAX_CONNECTIONS_PER_ADDRESS)
            .map(|_| peers.take(one).unwrap())
            .collect();
        assert!(peers.take(one).is_none());
        assert!(peers.take(other).is_some());
        held.pop();
        assert!(peers.take(one).is_some());
        drop(held);
        assert!(peers.0.lock().unwrap().is_empty());
    }
}
