//! Configuration: raw TOML in, a validated [`Config`] out.
//!
//! Parsing and validation are separate steps. `raw` mirrors the file with
//! serde and keeps the span of every value; [`Config::load`] turns it into
//! checked domain types (member ids, socket addresses, endpoints, durations)
//! and reports the first problem with the file, line and key. Code outside
//! this module only ever sees a valid `Config`. Relative paths in the file
//! are resolved against the file's directory.

mod builder;
mod describe;
mod raw;

pub use builder::ConfigBuilder;
pub use raw::{Source, quoted};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::ServerName;

use crate::identity::MemberId;
use crate::identity::tls::{ClientTls, ServerTls};
use crate::net::ListenerSettings;

/// A configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration of a gateway. A dev file's `[agencies]`
/// section is not part of it: the harness reads that (see [`Source`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub source: PathBuf,
    pub gateway: GatewayConfig,
    pub upstream: UpstreamConfig,
    /// Registered members, by id: who may connect.
    pub members: BTreeMap<MemberId, Member>,
    /// Providers (members that publish services) and their endpoints.
    pub providers: BTreeMap<MemberId, Provider>,
    /// Published services, by full gRPC service name.
    pub services: BTreeMap<String, PublishedService>,
    pub policy: PolicyConfig,
    /// Registered purpose codes and what each means.
    pub purposes: BTreeMap<String, String>,
    pub exchange_log: ExchangeLogConfig,
    pub telemetry: TelemetryConfig,
    /// Consent verification; without it, no call can present a verified
    /// consent.
    pub consent: Option<ConsentConfig>,
    /// `[limits]`: load shedding and per-member limits.
    pub limits: LimitsConfig,
    /// `[store]`: the PostgreSQL database a fleet of nodes shares; none
    /// for a single node, which keeps everything in its own files.
    pub store: Option<StoreConfig>,
    /// What the gateway knows of services: the compiled-in protos and the
    /// services' `descriptor` sets.
    pub catalog: std::sync::Arc<crate::catalog::Catalog>,
    /// `[directory]`: where the shared sections come from, if not from
    /// this file.
    pub directory: Option<DirectoryConfig>,
    /// The global configuration in use, when `directory` is set.
    pub global: Option<GlobalVersion>,
    /// Partner instances, and the key assertions to them are signed with.
    pub federation: FederationConfig,
}

/// Where a fleet's shared state lives.
#[derive(Clone)]
pub struct StoreConfig {
    /// `postgres://user[:password]@host[:port]/database[?options]`.
    pub url: String,
    /// The same, parsed.
    pub postgres: tokio_postgres::Config,
    /// `[store] ca`: the CA certificates the database's certificate must
    /// chain to; with it the connection uses TLS (`sslmode=prefer`, the
    /// default, falls back to plain text when the server has no TLS;
    /// `require` does not).
    pub ca: Option<PathBuf>,
}

/// The same database, reached the same way.
impl PartialEq for StoreConfig {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.ca == other.ca
    }
}

impl Eq for StoreConfig {}

impl std::fmt::Debug for StoreConfig {
    /// Without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.redacted())
            .field("ca", &self.ca)
            .finish()
    }
}

impl StoreConfig {
    /// The same database over TLS, its certificate chained to the CA
    /// certificates in `ca`: TLS or nothing (`prefer` would let anyone on
    /// the path answer "no TLS" and read or change what goes by).
    pub fn with_ca(mut self, ca: PathBuf) -> Self {
        self.ca = Some(ca);
        self.postgres
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        self
    }

    /// Reads a `postgres://` (or `postgresql://`) URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        // The URL itself is never repeated: it may hold a password, in
        // more forms than one could reliably cut out.
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("not a PostgreSQL URL: postgres://user@host:port/database".to_owned());
        }
        let postgres: tokio_postgres::Config = url.parse().map_err(|error| {
            let cause = std::error::Error::source(&error)
                .map(|cause| format!(": {cause}"))
                .unwrap_or_default();
            format!("not a valid PostgreSQL URL: {error}{cause}")
        })?;
        if postgres.get_hosts().is_empty() {
            return Err("the URL names no host".to_owned());
        }
        if postgres.get_user().is_none() {
            return Err("the URL names no user".to_owned());
        }
        Ok(Self {
            url: url.to_owned(),
            postgres,
            ca: None,
        })
    }

    /// The database as logs and errors show it, rebuilt from what was
    /// parsed so that no password can come with it:
    /// `postgres://user@host:port/database`.
    pub fn redacted(&self) -> String {
        let config = &self.postgres;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(index, host)| {
                let name = match host {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                let port = config
                    .get_ports()
                    .get(index)
                    .or(config.get_ports().first())
                    .copied()
                    .unwrap_or(5432);
                format!("{name}:{port}")
            })
            .collect();
        format!(
            "postgres://{}@{}/{}",
            config.get_user().unwrap_or_default(),
            hosts.join(","),
            config
                .get_dbname()
                .or(config.get_user())
                .unwrap_or_default()
        )
    }
}

/// Where consents come from and how fresh their states must be.
#[derive(Debug, Clone)]
pub struct ConsentConfig {
    /// A JWK Set of the issuer keys the gateway trusts (rotation: several
    /// key ids at once). Reloaded with the configuration.
    pub issuer_keys: PathBuf,
    /// The provider whose `govbridge.consent.v1.Consent/WatchStatus` feed
    /// reports revocations and pauses.
    pub feed_provider: MemberId,
    /// How long the feed may be silent before consent-bound calls are
    /// refused.
    pub freshness: Duration,
    /// The SQLite file that keeps consent use counts across restarts. Read
    /// at start; a reload does not move it.
    pub ledger: PathBuf,
}

/// Where traces go beyond the process's own log.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Export spans over OTLP/gRPC to this collector; off when absent.
    pub otlp: Option<OtlpConfig>,
}

/// An OpenTelemetry collector that receives the gateway's spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// `host:port` of its OTLP/gRPC receiver (plain HTTP/2; run the
    /// collector next to the gateway).
    pub endpoint: http::uri::Authority,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl OtlpConfig {
    /// `http://host:port`, the form OpenTelemetry's
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` takes.
    pub fn parse_endpoint(text: &str) -> Result<http::uri::Authority, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|error| format!("`{text}` is not a URL: {error}"))?;
        match (uri.scheme_str(), uri.authority(), uri.path()) {
            (Some("http"), Some(authority), "" | "/") if authority.port_u16().is_some() => {
                Ok(authority.clone())
            }
            (Some("https"), ..) => Err(format!(
                "`{text}`: only plain `http://` collectors are supported; run the collector \
                 beside the gateway"
            )),
            _ => Err(format!(
                "`{text}` must be `http://host:port`, e.g. `http://127.0.0.1:4317`"
            )),
        }
    }
}

/// The exchange log: where it is kept and how often it is checkpointed.
#[derive(Debug, Clone)]
pub struct ExchangeLogConfig {
    /// Off only for benchmarks of the bare routing path: calls are then
    /// recorded nowhere.
    pub enabled: bool,
    /// Holds `exchange-log.sqlite` and the log's signing key.
    pub data_dir: PathBuf,
    /// The log's name in its checkpoints and the name of its key.
    pub origin: String,
    /// A checkpoint is signed at least this often while records arrive...
    pub checkpoint_interval: Duration,
    /// ...and whenever this many records arrived since the last one.
    pub checkpoint_records: u64,
    /// How old a witness's cosignature of the latest checkpoint may grow
    /// before the gateway sends it that checkpoint again: an idle log
    /// signs none newer, and auditors judge a log by how recently its
    /// witnesses saw it (`audit verify --max-witness-age`).
    pub witness_refresh: Duration,
    /// Who may call `DataTracker` (the citizens' portal).
    pub data_tracker_clients: Vec<MemberId>,
    /// How long records stay in the store before the gateway moves them
    /// into archive files; kept forever when `None`.
    pub retain: Option<Duration>,
    /// Where the archive files go.
    pub archive_dir: PathBuf,
}

impl ExchangeLogConfig {
    /// The defaults for a configuration file in `dir`.
    pub fn defaults(dir: &Path, node_id: &str) -> Self {
        Self {
            enabled: true,
            data_dir: dir.join("data"),
            origin: format!("govbridge/{node_id}"),
            checkpoint_interval: Duration::from_secs(10),
            checkpoint_records: 10_000,
            witness_refresh: Duration::from_secs(15 * 60),
            data_tracker_clients: Vec::new(),
            retain: None,
            archive_dir: dir.join("data").join("archives"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This gateway's name in logs and the exchange log.
    pub node_id: String,
    pub listen: SocketAddr,
    /// The admin endpoint (metrics, health, config, reload), plain HTTP
    /// unless `admin_tls`: keep it on loopback or a management network.
    /// Off when absent. Off loopback only with `admin_token_file`.
    pub admin: Option<SocketAddr>,
    /// A file holding the bearer token that `POST /reload` and the full
    /// `GET /config` require. Without it, they require the
    /// `x-govbridge-admin` header and a loopback `Host` instead.
    pub admin_token_file: Option<PathBuf>,
    /// The admin endpoint speaks HTTPS, with the gateway's own certificate
    /// (`tls.certificate`), and asks for no client certificate: the
    /// token then does not travel in clear.
    pub admin_tls: bool,
    /// The member id in the gateway's upstream client certificate; backends
    /// accept calls only from it.
    pub identity: MemberId,
    pub tls: ServerTls,
    pub listener: ListenerSettings,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub tls: ClientTls,
    pub connect_timeout: Duration,
    /// Upper bound on any call's deadline, when the client sets none or a
    /// longer one.
    pub max_deadline: Duration,
    /// Balancing, health checks and ejection of backend endpoints.
    pub pool: PoolSettings,
}

/// How the gateway keeps, balances and judges its connections to backends
/// (`[upstream]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Between two active health checks (`grpc.health.v1`) of an endpoint;
    /// `None` (`"0s"`): no active checks.
    pub health_check_interval: Option<Duration>,
    /// A health check not answered `SERVING` within this fails.
    pub health_check_timeout: Duration,
    /// Consecutive failed checks that take an endpoint out of rotation.
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that put it back.
    pub healthy_threshold: u32,
    /// Consecutive failed calls (connection failures, refused streams,
    /// `UNAVAILABLE`) that eject an endpoint.
    pub ejection_failures: u32,
    /// The first ejection's length; each further one in a row doubles it.
    pub ejection_time: Duration,
    /// The longest an ejection lasts.
    pub max_ejection_time: Duration,
    /// HTTP/2 connections to one endpoint, at most.
    pub connections_per_endpoint: u32,
    /// Calls on one connection beyond which another is opened, while
    /// `connections_per_endpoint` allows.
    pub streams_per_connection: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            health_check_interval: Some(Duration::from_secs(5)),
            health_check_timeout: Duration::from_secs(1),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            ejection_failures: 5,
            ejection_time: Duration::from_secs(5),
            max_ejection_time: Duration::from_secs(300),
            connections_per_endpoint: 4,
            streams_per_connection: 100,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: MemberId,
    pub name: String,
    /// Groups the member belongs to, e.g. `licensed-banks`; policies grant
    /// to groups as `Group::"licensed-banks"`.
    pub groups: Vec<String>,
}

/// Where the authorization policies are.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// The Cedar schema (entity and context types; the gateway adds one
    /// action per published method).
    pub schema: PathBuf,
    /// A directory of `*.cedar` files.
    pub policies: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub id: MemberId,
    pub endpoints: Vec<Endpoint>,
    /// The identity the endpoints' certificates must name: the provider's
    /// own, or, for a provider of a partner instance, that instance's
    /// gateway's.
    pub presents: MemberId,
    /// The partner instance whose gateway the provider is reached through.
    pub partner: Option<String>,
}

/// `[federation."XX"]` and `gateway.federation_key`: the national
/// instances this one exchanges with, each through its own gateways.
#[derive(Debug, Clone, Default)]
pub struct FederationConfig {
    /// The key this instance's gateways sign their assertions with
    /// (`gateway.federation_key`, its verifier key beside it).
    pub key: Option<PathBuf>,
    /// Partner instances, by instance code.
    pub partners: BTreeMap<String, Partner>,
    /// Those whose section this gateway learns from their own directory
    /// (`[federation."XX"] directory`), and keeps following.
    pub followed: BTreeMap<String, FollowedPartner>,
}

/// A partner instance learned from its own signed global configuration,
/// fetched by the gateway from the partner's directory: its CA, CRLs,
/// gateways and keys are whatever the version in the gateway's cache of
/// the partner's bundles publishes, and a newer version replaces them
/// without an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedPartner {
    /// Its instance code (`AZ`).
    pub instance: String,
    /// Where its directory serves its bundle, and the CAs that directory's
    /// HTTPS certificate chains to.
    pub url: http::Uri,
    pub ca: PathBuf,
    /// Its directory's verifier key, obtained out of band: the only thing
    /// of the partner's this gateway is given; and its file.
    pub verifier: crate::note::Verifier,
    pub key_file: PathBuf,
    /// How often its directory is asked for a newer version.
    pub interval: Duration,
    /// The gateway's cache of its bundles signed by `verifier`
    /// (`DATA/partners/XX/KEY`).
    pub cache: PathBuf,
    /// Whether this gateway witnesses the partner's log, with the log key
    /// the partner publishes (`witness_log`; `receipts` takes it too).
    pub witness_log: bool,
    /// Why the version in its cache cannot be used (altered, unreadable),
    /// if it cannot: the partner is then not learned, its calls are
    /// refused, and everything else goes on.
    pub unusable_cache: Option<String>,
}

/// A partner instance: how its gateways are recognized and reached.
#[derive(Debug, Clone)]
pub struct Partner {
    /// Its instance code (`AZ`): the first part of its members' ids.
    pub instance: String,
    /// The CAs its certificates chain to. They vouch for identities of
    /// this instance only, as the instance's own CAs vouch for none of it.
    pub ca: PathBuf,
    /// CRLs of those CAs.
    pub crls: Vec<PathBuf>,
    /// The member id its gateways' certificates name.
    pub gateway: MemberId,
    /// Where its gateways listen for this instance's calls.
    pub endpoints: Vec<Endpoint>,
    /// The key its gateways' assertions are signed with, and its file.
    pub key: crate::note::Verifier,
    pub key_file: PathBuf,
    /// Its exchange log's key (and file), when this gateway witnesses
    /// that log: cosigns the checkpoints the partner's gateway sends.
    pub log_key: Option<(crate::note::Verifier, PathBuf)>,
    /// Whether the partner witnesses this instance's log: this gateway
    /// sends it each new checkpoint and keeps its cosignatures.
    pub witness: bool,
    /// Whether this gateway fetches and keeps the partner's receipt of
    /// each call it forwards there (needs `log_key`).
    pub receipts: bool,
    /// For a partner followed from its directory: the version of its
    /// global configuration this comes from.
    pub published: Option<GlobalVersion>,
}

/// One backend address of a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, as dialled.
    pub address: String,
    /// The name the backend's certificate must carry.
    pub server_name: ServerName<'static>,
    /// `https://host:port`, the request authority upstream.
    pub authority: http::uri::Authority,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.address)
    }
}

#[derive(Debug, Clone)]
pub struct PublishedService {
    /// Full gRPC service name, e.g. `govbridge.civilregistry.v1.CivilRegistry`.
    pub name: String,
    /// Providers publishing it, in configured order; the first is the
    /// default when a call names no `bridge-target`.
    pub providers: Vec<MemberId>,
    /// No call to the service runs longer than this (nor than
    /// `upstream.max_deadline`).
    pub max_deadline: Option<Duration>,
    /// Methods (names only) that may be retried on another endpoint when
    /// one answers `UNAVAILABLE` or refuses the stream.
    pub idempotent: std::collections::BTreeSet<String>,
    /// The descriptor set that declares it, unless it is compiled in.
    pub descriptor: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// Limits (`[limits]`).

/// What keeps one member from taking the gateway for itself, and the
/// gateway standing under load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Calls the whole gateway handles at once; beyond it, new calls are
    /// shed with `RESOURCE_EXHAUSTED` (`gateway-overloaded`).
    pub gateway_concurrent_calls: NonZeroU32,
    /// The limits of every registered member, resolved key by key: the
    /// member's own entry, else the first of its groups (in the order of
    /// its `groups`) that sets the key, else the defaults of `[limits]`.
    pub members: BTreeMap<MemberId, MemberLimits>,
}

impl LimitsConfig {
    /// Without a `[limits]` section.
    pub const DEFAULT_GATEWAY_CONCURRENT_CALLS: NonZeroU32 = non_zero(10_000);
}

/// The limits of one member. Each member has its own bucket and count,
/// also when the values come from a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberLimits {
    /// Calls per second as a token bucket; `None`: unlimited.
    pub rate: Option<RateLimit>,
    /// Calls in flight at once; `None`: unlimited.
    pub concurrent_calls: Option<NonZeroU32>,
    /// The largest request message, in bytes, as its gRPC length prefix
    /// announces it (compressed size for a compressed message).
    pub max_message_bytes: NonZeroU32,
}

impl MemberLimits {
    /// 16 MiB, the mock agencies' limit; gRPC's usual default is 4 MiB.
    pub const DEFAULT_MAX_MESSAGE_BYTES: NonZeroU32 = non_zero(16 << 20);
}

impl Default for MemberLimits {
    fn default() -> Self {
        Self {
            rate: None,
            concurrent_calls: None,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// `n`, which the caller knows is not zero.
const fn non_zero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

/// A token bucket: `burst` calls at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// `[directory]`: the instance's directory, which publishes the global
/// configuration (members, CAs, services, policies...) as a signed bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// Where the bundle comes from.
    pub source: DirectorySource,
    /// The instance's configuration key (its public half, a signed-note
    /// verifier key), and the file it was read from.
    pub key: PathBuf,
    pub verifier: crate::note::Verifier,
    /// How often the gateway asks for a newer bundle.
    pub interval: Duration,
    /// Where the gateway keeps the bundles it ran (see
    /// [`crate::global::cache`]).
    pub cache: PathBuf,
    /// The instance this gateway belongs to (its identity's first part):
    /// the only one whose bundles it takes.
    pub instance: String,
}

/// Where a gateway gets its global configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectorySource {
    /// A directory serving it over HTTPS (`https://.../bundle.json`),
    /// whose certificate chains to `ca`.
    Https { url: http::Uri, ca: PathBuf },
    /// The fleet's database (`url = "store"`): the latest version
    /// `directory publish --to-store` put there.
    Store(Box<StoreConfig>),
}

impl fmt::Display for DirectorySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Https { url, .. } => write!(f, "{url}"),
            Self::Store(store) => write!(f, "the fleet's database {}", store.redacted()),
        }
    }
}

/// The global configuration a gateway runs: which publication, and until
/// when it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalVersion {
    pub instance: String,
    pub version: u64,
    /// Seconds since the epoch.
    pub issued: i64,
    pub expires: i64,
    /// Where its files are, in the cache.
    pub dir: PathBuf,
}

impl Config {
    /// The settings a reload does not apply, each with its value as
    /// written: the listener's socket and connection settings, the node's
    /// id, the admin endpoint, the exchange log (its archiver too), the
    /// trace exporter, the consent feed and the fleet's database.
    pub fn restart_only(&self) -> Vec<(&'static str, String)> {
        let consent = self.consent.as_ref();
        let log = &self.exchange_log;
        vec![
            ("gateway.listen", self.gateway.listen.to_string()),
            // What the node registers in a fleet and signs its records as.
            ("gateway.node_id", self.gateway.node_id.clone()),
            (
                "gateway.admin, admin_tls",
                format!("{:?}", (self.gateway.admin, self.gateway.admin_tls)),
            ),
            (
                "gateway (connection settings)",
                format!("{:?}", self.gateway.listener),
            ),
            (
                "exchange_log.enabled, data_dir, origin, checkpoint_interval, checkpoint_records, \
                 retain, archive_dir",
                format!(
                    "{:?}",
                    (
                        log.enabled,
                        &log.data_dir,
                        &log.origin,
                        log.checkpoint_interval,
                        log.checkpoint_records,
                        log.retain,
                        &log.archive_dir,
                    )
                ),
            ),
            ("[telemetry]", format!("{:?}", self.telemetry)),
            (
                "consent.feed_provider, freshness, ledger",
                format!(
                    "{:?}",
                    consent.map(|c| (&c.feed_provider, c.freshness, &c.ledger))
                ),
            ),
            (
                "[store]",
                // The whole URL (password and options too), as a digest:
                // this list is kept, and never holds a secret.
                format!(
                    "{:?}",
                    self.store.as_ref().map(|store| {
                        let url = aws_lc_rs::digest::digest(
                            &aws_lc_rs::digest::SHA256,
                            store.url.as_bytes(),
                        );
                        (url.as_ref().to_vec(), &store.ca)
                    })
                ),
            ),
        ]
    }

    /// Reads the `[directory]` of the gateway file at `path`, if any,
    /// without the rest (which may need a bundle not fetched yet).
    pub fn directory_of_file(path: &Path) -> Result<Option<DirectoryConfig>, ConfigError> {
        let text = read(path)?;
        raw::directory_of(path, &text)
    }

    /// The `[directory]` of gateway file text `text` (as if read from
    /// `path`), if it has one.
    pub fn directory_of(path: &Path, text: &str) -> Result<Option<DirectoryConfig>, ConfigError> {
        raw::directory_of(path, text)
    }

    /// Validates gateway file text `text` as if read from `path`; with
    /// `[directory]`, with the bundle `staged` (extracted anywhere) as its
    /// global configuration.
    pub fn parse_with(
        path: &Path,
        text: &str,
        staged: Option<&crate::global::cache::Installed>,
    ) -> Result<Self, ConfigError> {
        raw::parse(
            path,
            text,
            Staged {
                global: staged,
                ..Staged::default()
            },
        )
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        Self::parse(path, &text)
    }

    /// Validates configuration text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        raw::parse(path, text, Staged::default())
    }

    /// Reads and validates the `global.toml` of a publication directory as
    /// a gateway would, with placeholder settings of its own (no file they
    /// name is read): what `directory publish` checks before it signs.
    pub fn load_publication(global: &Path) -> Result<Self, ConfigError> {
        let text = read(global)?;
        raw::parse_publication(global, &text)
    }

    /// Reads and validates a gateway file with `[directory]`, as if
    /// `staged` (a bundle written into the cache, not yet in use) were
    /// the global configuration in use.
    pub fn load_staged(
        path: &Path,
        staged: &crate::global::cache::Installed,
    ) -> Result<Self, ConfigError> {
        Self::load_with(path, Staged::global(staged))
    }

    /// Reads and validates a gateway file as if the bundles `staged` (in
    /// their caches, not yet in use) were the ones in use.
    pub fn load_with(path: &Path, staged: Staged<'_>) -> Result<Self, ConfigError> {
        let text = read(path)?;
        raw::parse(path, &text, staged)
    }

    /// Whether version `installed` of followed partner `follow`'s global
    /// configuration says how to reach and trust it (its `[instance]` and
    /// `[trust]`, its keys), whatever this gateway's configuration: what
    /// a bundle must pass before it goes into the partner's cache.
    pub fn check_partner_bundle(
        follow: &FollowedPartner,
        installed: &crate::global::cache::Installed,
    ) -> Result<(), String> {
        raw::partner_of_bundle(follow, installed, follow.witness_log).map(drop)
    }

    /// The partners the gateway file at `path` follows from their own
    /// directories (with `[directory]`, as the global configuration in
    /// use, or `staged`, says), read without the rest, which needs their
    /// bundles.
    pub fn followed_of_file(
        path: &Path,
        staged: Staged<'_>,
    ) -> Result<Vec<FollowedPartner>, ConfigError> {
        let text = read(path)?;
        raw::followed_of(path, &text, staged)
    }
}

/// What a load takes in place of what the file and the caches say:
/// bundles fetched, checked and written into their cache but not yet in
/// use (the instance's global configuration, or a followed partner's),
/// and the data directory of a gateway that runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Staged<'a> {
    pub global: Option<&'a crate::global::cache::Installed>,
    pub partner: Option<&'a crate::global::cache::Installed>,
    /// The data directory the running gateway started with, where its
    /// followed partners' caches stay: `data_dir` changed in the file
    /// takes effect at restart, and a reload that read the caches from
    /// the new one would find none, and no floor against an older
    /// version.
    pub data_dir: Option<&'a Path>,
}

impl<'a> Staged<'a> {
    pub fn global(installed: &'a crate::global::cache::Installed) -> Self {
        Self {
            global: Some(installed),
            ..Self::default()
        }
    }

    pub fn partner(installed: &'a crate::global::cache::Installed) -> Self {
        Self {
            partner: Some(installed),
            ..Self::default()
        }
    }

    /// The same, in a gateway that started with `data_dir`.
    pub fn running_in(self, data_dir: &'a Path) -> Self {
        Self {
            data_dir: Some(data_dir),
            ..self
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError {
        file: path.to_owned(),
        line: None,
        key: String::new(),
        message: format!("cannot read: {error}"),
    })
}

/// Where, in `exchange_log.data_dir`, the caches of the partners'
/// directories a gateway follows are: `partners/<INSTANCE>/<key id>/`.
pub const PARTNERS_DIR: &str = "partners";

/// The longest duration a setting takes: a century. A longer one is a
/// typo, and taken as written it would wrap, or saturate into "never" (a
/// directory bundle that never expires, say).
pub const LONGEST: Duration = Duration::from_secs(100 * 36_525 * 86_400 / 100);

/// Parses a retention: `90d`, or a duration as [`parse_duration`] does.
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    match text.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => within_a_century(text, days.checked_mul(86_400).map(Duration::from_secs)),
        _ => parse_duration(text).map_err(|message| format!("{message}, or days: `90d`")),
    }
}

/// `duration` (`None`: past what a number of seconds holds), if no longer
/// than [`LONGEST`].
fn within_a_century(text: &str, duration: Option<Duration>) -> Result<Duration, String> {
    duration
        .filter(|duration| *duration <= LONGEST)
        .ok_or_else(|| format!("`{text}` is longer than a century"))
}

/// Parses `500ms`, `10s`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit; write e.g. `500ms`, `10s`, `2m`"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let duration = match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        "h" => number.checked_mul(3600).map(Duration::from_secs),
        _ => {
            return Err(format!(
                "`{text}` has unknown unit `{unit}`; use ms, s, m or h"
            ));
        }
    };
    within_a_century(text, duration)
}

/// Parses `https://host:port` into an [`Endpoint`].
pub fn parse_endpoint(text: &str, tls_name: Option<&str>) -> Result<Endpoint, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|error| format!("`{text}` is not a URI: {error}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "`{text}`: endpoints are https://host:port (TLS is mandatory)"
        ));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("`{text}`: an endpoint has no path"));
    }
    if uri.query().is_some() {
        return Err(format!("`{text}`: an endpoint has no query"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{text}` has no host"))?
        .clone();
    // It goes upstream as `:authority`, which carries no credentials.
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{text}`: an endpoint has no user or password (the gateway proves who it is \
             with its certificate)"
        ));
    }
    let port = authority
        .port_u16()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("`{text}` has no port (1 to 65535)"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = tls_name.unwrap_or(host);
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|_| format!("`{name}` is not a valid TLS server name"))?;
    Ok(Endpoint {
        address: if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        },
        server_name,
        authority,
    })
}

/// Whether `name` is a group name: `licensed-banks`.
pub fn is_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `name` is a full gRPC service name such as `pkg.v1.Service`.
pub fn is_service_name(name: &str) -> bool {
    let mut parts = 0;
    for part in name.split('.') {
        let mut chars = part.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return false;
        }
        parts += 1;
    }
    parts >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        // Past a century: a typo, never "forever".
        assert_eq!(
            parse_retention("36524d"),
            Ok(Duration::from_secs(36_524 * 86_400))
        );
        for long in [
            "99999999999999999d",
            "36525000h",
            "5124095576030431h",
            "4000000000000s",
        ] {
            let refused = parse_retention(long).unwrap_err();
            assert!(
                refused.contains("longer than a century"),
                "{long}: {refused}"
            );
        }
        assert!(parse_duration("99999999999999999h").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn endpoints() {
        let endpoint = parse_endpoint("https://127.0.0.1:7101", None).unwrap();
        assert_eq!(endpoint.address, "127.0.0.1:7101");
        assert_eq!(endpoint.to_string(), "https://127.0.0.1:7101");
        let endpoint = parse_endpoint("https://[::1]:7101", None).unwrap();
        assert_eq!(endpoint.address, "[::1]:7101");
        assert!(parse_endpoint("http://127.0.0.1:7101", None).is_err());
        assert!(parse_endpoint("https://127.0.0.1", None).is_err());
        assert!(parse_endpoint("https://127.0.0.1:1/x", None).is_err());
        assert!(parse_endpoint("https://127.0.0.1:1?x=1", None).is_err());
        assert!(parse_endpoint("https://user:secret@127.0.0.1:1", None).is_err());
        assert!(parse_endpoint("https://127.0.0.1:0", None).is_err());
    }

    #[test]
    fn service_names() {
        assert!(is_service_name("govbridge.civilregistry.v1.CivilRegistry"));
        assert!(is_service_name("a.B"));
        assert!(!is_service_name("CivilRegistry"));
        assert!(!is_service_name("a..B"));
        assert!(!is_service_name("a.B/Get"));
    }
}
