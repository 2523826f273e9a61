//! What one configuration determines, as a snapshot calls run under.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::admin::AdminToken;
use super::limits::Limits;
use super::{GatewayError, StartError};
use crate::config::Config;
use crate::consent::ConsentVerifier;
use crate::consent::artefact::IssuerKeys;
use crate::identity::MemberId;
use crate::policy::PolicyEngine;
use crate::routing::{Connectors, RouteTable, UpstreamConnector};

/// Everything a call needs that one configuration determines.
#[derive(Debug)]
pub struct GatewayState {
    pub(super) node_id: String,
    pub(super) registry: BTreeMap<MemberId, crate::config::Member>,
    pub(super) providers: HashSet<MemberId>,
    pub(super) services: BTreeMap<String, Vec<MemberId>>,
    pub(super) purposes: HashSet<String>,
    pub(super) policy: PolicyEngine,
    pub(super) routes: RouteTable,
    pub(super) max_deadline: Duration,
    /// The certificates this configuration serves with: (name, expiry in
    /// seconds since the epoch).
    pub(super) certificates: Vec<(String, i64)>,
    /// The CRLs it checks certificates against: (name, next update in
    /// seconds since the epoch).
    pub(super) crls: Vec<(String, i64)>,
    /// The newest version of each CA's CRL this gateway has used since it
    /// started, by the setting that names it: a reload never goes back
    /// below.
    pub(super) crl_floor: Arc<Vec<(String, crate::identity::tls::CrlVersion)>>,
    /// When the gateway's own CRLs (`gateway.tls.crls`, `upstream.crls`)
    /// go out of date, by setting: past it, handshakes checked against
    /// them are refused, and the gateway is not ready.
    pub(super) own_crls: Vec<(&'static str, crate::identity::tls::CrlFreshness)>,
    /// The effective configuration as JSON, for the admin endpoint's
    /// operators; others see [`Self::described_public`].
    pub(super) described: String,
    /// The same without the member registry.
    pub(super) described_public: String,
    /// What makes an admin request an operator's, when configured.
    pub(super) admin_token: Option<AdminToken>,
    /// The exchange log's settings as configured. The open log keeps the
    /// ones it started with; who may call the Data Tracker follows reloads.
    pub(super) exchange_log: crate::config::ExchangeLogConfig,
    /// The consent issuer keys trusted, when consent is configured.
    pub(super) consent_keys: Option<ConsentVerifier>,
    /// How the consent feed reaches the portal under this configuration.
    pub(super) consent_feed: Option<Arc<crate::consent::feed::FeedRoute>>,
    /// What the upstream TLS files hold ([`upstream_tls_contents`]):
    /// while it stays the same, a reload keeps the backend connections.
    pub(super) upstream_tls: UpstreamTlsFiles,
    /// Between active health checks of backend endpoints; `None`: off.
    pub(super) health_check_interval: Option<Duration>,
    /// Load shedding and per-member limits, with their buckets and counts.
    pub(super) limits: Limits,
    /// What a fleet's nodes compare: this configuration's shared part
    /// and its policies, hashed.
    pub(super) fingerprints: (String, String),
    /// When it was built (seconds since the epoch): the CRLs it took were
    /// checked then, and those out of date already said so.
    pub(super) built_at: i64,
    /// The global configuration this state was built from, when a
    /// directory publishes it: past its expiry, calls are refused.
    pub(super) global: Option<crate::config::GlobalVersion>,
    /// What this configuration knows of services.
    pub(super) catalog: Arc<crate::catalog::Catalog>,
    /// Where the global configuration comes from: fixed at start (the
    /// directory's poller runs with it).
    pub(super) directory: Option<crate::config::DirectoryConfig>,
    /// The settings no reload applies, as the process started with them
    /// ([`Config::restart_only`]).
    pub(super) started_with: Arc<Vec<(&'static str, String)>>,
    /// Partner instances and this gateway's side of federation.
    pub(super) federation: Federation,
    /// `/openapi.json` documents built from this configuration.
    pub(super) openapi: OpenApiCache,
}

/// The `/openapi.json` documents of one configuration, by member and
/// certificate days left (which policies may see): built once, as a
/// member's tooling may fetch its document at every run. Kept without the
/// server URL, which each request names (its `Host`) and gets added: a
/// member that changes it at every request gets no rebuild out of it.
#[derive(Debug, Default)]
pub(super) struct OpenApiCache(
    std::sync::Mutex<std::collections::HashMap<OpenApiKey, Arc<serde_json::Value>>>,
);

/// Whose document: the member, and its certificate's days left.
pub(super) type OpenApiKey = (MemberId, i64);

impl OpenApiCache {
    /// Documents kept, at most; past it the cache starts again.
    const MAX: usize = 4096;

    /// The document of `key`, built by `build` unless kept.
    pub(super) fn get_or_build(
        &self,
        key: OpenApiKey,
        build: impl FnOnce() -> serde_json::Value,
    ) -> Arc<serde_json::Value> {
        let kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(document) = kept {
            return document;
        }
        // Built outside the lock: two first requests may both build it.
        let document = Arc::new(build());
        let mut documents = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if documents.len() >= Self::MAX {
            documents.clear();
        }
        documents.insert(key, Arc::clone(&document));
        document
    }
}

/// What a gateway needs to call partner instances and to be called by
/// them.
#[derive(Debug)]
pub(super) struct Federation {
    /// This gateway's instance, and as `bridge-instance`.
    pub(super) instance: String,
    pub(super) instance_header: http::HeaderValue,
    /// This gateway's identity, which its assertions name.
    pub(super) gateway: MemberId,
    /// The key its assertions are signed with.
    pub(super) key: Option<Arc<crate::note::SigningKey>>,
    /// Partner instances, by instance code.
    pub(super) partners: std::collections::HashMap<String, Arc<crate::config::Partner>>,
    /// Those learned from their own directories, which the gateway
    /// follows.
    pub(super) followed: Vec<crate::config::FollowedPartner>,
    /// When each partner's CRLs go out of date (past their next update
    /// and `crl_grace`): from then on no call goes to or comes from it,
    /// and everything else goes on (a partner's late CRL publisher must
    /// not stop this gateway).
    pub(super) crls: std::collections::HashMap<String, crate::identity::tls::CrlFreshness>,
    /// Assertions already accepted: kept across reloads.
    pub(super) replays: Arc<crate::federation::ReplayGuard>,
    /// A fleet's database, where its nodes take partners' nonces too (set
    /// once connected; kept across reloads).
    pub(super) fleet: Arc<std::sync::OnceLock<Arc<crate::database::Database>>>,
    /// The witness of partners' logs (`federation."XX".log_key`).
    pub(super) witness: Option<Arc<crate::exchange_log::witness::Witness>>,
    /// What that witness keeps across reloads.
    pub(super) witness_book: Arc<crate::exchange_log::witness::Book>,
    /// The data directory the gateway started with (`data_dir` takes
    /// effect at restart): the checkpoints the witness cosigned and the
    /// followed partners' caches stay there, so that no reload makes the
    /// gateway forget them (and the floors they set).
    pub(super) data_dir: std::path::PathBuf,
    /// TLS towards each partner's gateways (its CAs, this gateway's
    /// certificate).
    pub(super) partner_tls: std::collections::HashMap<String, Arc<rustls::ClientConfig>>,
    /// Partners' receipts of forwarded calls, to fetch: kept across
    /// reloads.
    pub(super) receipts: Arc<super::receipts::ReceiptQueue>,
}

impl crate::directory::CurrentView for arc_swap::ArcSwap<GatewayState> {
    fn load(&self) -> Arc<dyn crate::directory::GatewayView> {
        self.load_full()
    }
}

impl crate::directory::GatewayView for GatewayState {
    fn witness(&self) -> Option<&Arc<crate::exchange_log::witness::Witness>> {
        self.federation.witness.as_ref()
    }

    fn catalog(&self) -> &Arc<crate::catalog::Catalog> {
        &self.catalog
    }

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

    fn refuses_every_call_at(&self, now: i64) -> bool {
        self.expired_global(now).is_some()
    }

    fn refuses_partner_at(&self, instance: &str, now: i64) -> bool {
        self.partner_refused_at(instance, now).is_some()
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
        let built_at = crate::unix_time::now();
        let crl_floor = crl_floor(config, previous.map(|previous| &previous.crl_floor[..]))?;
        // Read before the TLS is: a file replaced in between makes the
        // next reload open new connections, never keep ones made under
        // what it replaced.
        let upstream_tls_files = upstream_tls_contents(config);
        let (upstream_tls, upstream_crls) = config
            .upstream
            .tls
            .client_config_with_freshness()
            .map_err(StartError::UpstreamTls)?;
        if let Some(stale) = upstream_crls
            .as_ref()
            .and_then(|crls| crls.stale_at(built_at))
        {
            return Err(StartError::UpstreamTls(stale));
        }
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
        let fingerprints = (config.fleet_fingerprint(), policy.fingerprint());
        let admin_token = config
            .gateway
            .admin_token_file
            .as_deref()
            .map(AdminToken::load)
            .transpose()?;
        let consent_keys = config
            .consent
            .as_ref()
            .map(|consent| IssuerKeys::load(&consent.issuer_keys).map(ConsentVerifier::new))
            .transpose()
            .map_err(StartError::Consent)?;
        let connector = |tls, crls: Option<&crate::identity::tls::CrlFreshness>| {
            let stale_after = crls.map(crate::identity::tls::CrlFreshness::stale_after);
            Arc::new(UpstreamConnector::new(
                tls,
                stale_after,
                config.upstream.connect_timeout,
            ))
        };
        let mut partners = std::collections::HashMap::new();
        let mut partner_tls = std::collections::HashMap::new();
        let mut partner_crls = std::collections::HashMap::new();
        for followed in config.federation.followed.values() {
            if let Some(why) = &followed.unusable_cache {
                tracing::error!(
                    instance = followed.instance,
                    error = %why,
                    "a partner's configuration in the cache cannot be used: no call goes to or \
                     comes from it"
                );
            }
        }
        for partner in config.federation.partners.values() {
            // To a partner's gateways: its CAs, this gateway's certificate.
            let tls = crate::identity::tls::ClientTls {
                server_ca: partner.ca.clone(),
                crls: partner.crls.clone(),
                ..config.upstream.tls.clone()
            };
            // Built even when a CRL of the partner's is out of date: its
            // calls are refused before they are sent (and its handshakes
            // refuse its certificates), while everything else holds.
            let (tls, freshness) = tls
                .client_config_with_freshness()
                .map_err(StartError::UpstreamTls)?;
            if let Some(stale) = freshness.as_ref().and_then(|crls| crls.stale_at(built_at)) {
                tracing::warn!(
                    instance = partner.instance,
                    error = %stale,
                    "a partner's CRL is out of date: no call goes to or comes from it until it \
                     publishes a fresh one"
                );
            }
            partner_tls.insert(partner.instance.clone(), Arc::clone(&tls));
            partners.insert(partner.instance.clone(), connector(tls, freshness.as_ref()));
            if let Some(freshness) = freshness {
                partner_crls.insert(partner.instance.clone(), freshness);
            }
        }
        let feed_tls = Arc::clone(&upstream_tls);
        let connectors = Connectors {
            own: connector(upstream_tls, upstream_crls.as_ref()),
            partners,
        };
        // The consent feed dials the portal the gateway started with
        // (restart-only, as the ledger it feeds, even once `[consent]` is
        // taken out of the file) as any backend is reached: a feed open
        // under TLS files since changed is dialled again.
        let previous_feed = previous.and_then(|previous| previous.consent_feed.as_ref());
        let feed_provider = match previous {
            Some(_) => previous_feed.map(|feed| feed.provider.clone()),
            None => config
                .consent
                .as_ref()
                .map(|consent| consent.feed_provider.clone()),
        };
        let consent_feed = feed_provider.map(|provider| {
            let tls = previous_feed
                .filter(|_| {
                    previous.is_some_and(|previous| previous.upstream_tls == upstream_tls_files)
                })
                .map_or(feed_tls, |previous| Arc::clone(&previous.tls));
            let endpoints = config
                .providers
                .get(&provider)
                .map(|provider| provider.endpoints.clone())
                .or_else(|| previous_feed.map(|feed| feed.endpoints.clone()))
                .unwrap_or_default();
            Arc::new(crate::consent::feed::FeedRoute {
                provider,
                endpoints,
                tls,
                crls_stale_after: upstream_crls
                    .as_ref()
                    .map(crate::identity::tls::CrlFreshness::stale_after),
            })
        });
        let federation_key = config
            .federation
            .key
            .as_deref()
            .map(crate::note::SigningKey::read)
            .transpose()
            .map_err(StartError::FederationKey)?
            .map(Arc::new);
        let witness_book = previous.map_or_else(Arc::default, |previous| {
            Arc::clone(&previous.federation.witness_book)
        });
        let data_dir = previous.map_or_else(
            || config.exchange_log.data_dir.clone(),
            |previous| previous.federation.data_dir.clone(),
        );
        let witness_dir = data_dir.join(crate::exchange_log::witness::STATE_DIR);
        Ok(Self {
            // Restart-only: the fleet's registry and log writer keep the
            // id the node started with, and so do its records.
            node_id: previous.map_or_else(
                || config.gateway.node_id.clone(),
                |previous| previous.node_id.clone(),
            ),
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
                &connectors,
                previous.map(|previous| &previous.routes),
                previous.is_some_and(|previous| previous.upstream_tls == upstream_tls_files),
            ),
            upstream_tls: upstream_tls_files,
            health_check_interval: config.upstream.pool.health_check_interval,
            max_deadline: config.upstream.max_deadline,
            certificates: certificates(config),
            crls: crls(config),
            crl_floor,
            own_crls: own_crls(config),
            described: config.describe(true),
            described_public: config.describe(false),
            admin_token,
            exchange_log: config.exchange_log.clone(),
            consent_keys,
            consent_feed,
            // Calls in flight keep counting; unchanged buckets keep their
            // level.
            limits: Limits::after(&config.limits, previous.map(|previous| &previous.limits)),
            fingerprints,
            built_at,
            global: config.global.clone(),
            catalog: Arc::clone(&config.catalog),
            directory: config.directory.clone(),
            started_with: previous.map_or_else(
                || Arc::new(config.restart_only()),
                |previous| Arc::clone(&previous.started_with),
            ),
            federation: Federation {
                instance: config.gateway.identity.instance().to_owned(),
                // A member id's instance is a header value.
                instance_header: http::HeaderValue::from_str(config.gateway.identity.instance())
                    .unwrap_or_else(|_| http::HeaderValue::from_static("")),
                gateway: config.gateway.identity.clone(),
                key: federation_key.clone(),
                witness: witness(config, federation_key.as_ref(), &witness_book, &witness_dir),
                witness_book,
                data_dir,
                partner_tls,
                partners: config
                    .federation
                    .partners
                    .iter()
                    .map(|(instance, partner)| (instance.clone(), Arc::new(partner.clone())))
                    .collect(),
                followed: config.federation.followed.values().cloned().collect(),
                crls: partner_crls,
                replays: previous.map_or_else(Arc::default, |previous| {
                    Arc::clone(&previous.federation.replays)
                }),
                fleet: previous.map_or_else(Arc::default, |previous| {
                    Arc::clone(&previous.federation.fleet)
                }),
                receipts: previous.map_or_else(Arc::default, |previous| {
                    Arc::clone(&previous.federation.receipts)
                }),
            },
            openapi: OpenApiCache::default(),
        })
    }

    /// The global configuration in use, when a directory publishes it.
    pub fn global(&self) -> Option<&crate::config::GlobalVersion> {
        self.global.as_ref()
    }

    /// The global configuration in use, if it has expired at `now`
    /// (seconds since the epoch): no call may be forwarded under it.
    pub fn expired_global(&self, now: i64) -> Option<&crate::config::GlobalVersion> {
        self.global.as_ref().filter(|global| now >= global.expires)
    }

    /// Why nothing goes to or comes from partner `instance` at `now`
    /// (seconds since the epoch), if nothing does: one of its CRLs is out
    /// of date, it is followed from its directory and not learned (or its
    /// cached configuration cannot be used), or the global configuration
    /// it was learned from has expired. Calls, receipts and the witness's
    /// checkpoints all stop for the same reasons, and `check-config` says
    /// which.
    pub fn partner_refused_at(&self, instance: &str, now: i64) -> Option<GatewayError> {
        let federation = &self.federation;
        if let Some(reason) = self.stale_partner_crl_at(instance, now) {
            return Some(GatewayError::PartnerCrlStale {
                instance: instance.to_owned(),
                reason,
            });
        }
        let Some(partner) = federation.partners.get(instance) else {
            let followed = federation
                .followed
                .iter()
                .find(|followed| followed.instance == instance)?;
            return Some(GatewayError::PartnerConfigurationMissing {
                instance: instance.to_owned(),
                url: followed.url.to_string(),
                unusable: followed.unusable_cache.clone(),
            });
        };
        let expired = partner
            .published
            .as_ref()
            .filter(|published| now >= published.expires)?;
        Some(GatewayError::PartnerConfigurationExpired {
            instance: instance.to_owned(),
            version: expired.version,
            expired: expired.expires,
        })
    }

    /// The partner instances this configuration names, configured or
    /// followed from their directories, in order.
    pub fn partner_instances(&self) -> std::collections::BTreeSet<&str> {
        let federation = &self.federation;
        federation
            .partners
            .keys()
            .map(String::as_str)
            .chain(
                federation
                    .followed
                    .iter()
                    .map(|followed| followed.instance.as_str()),
            )
            .collect()
    }

    /// Why partner `instance`'s certificates cannot be trusted at `now`
    /// (seconds since the epoch).
    pub fn stale_partner_crl_at(&self, instance: &str, now: i64) -> Option<String> {
        let stale = self.federation.crls.get(instance)?.stale_at(now)?;
        Some(stale.to_string())
    }

    /// When this state was built, and its CRLs checked (seconds since the
    /// epoch).
    pub fn built_at(&self) -> i64 {
        self.built_at
    }

    /// The CRL lists out of date at `now` that were not at `since`, each
    /// named by its setting (the gateway's own, or a partner's as
    /// `federation.XX.crls`), with why.
    pub fn crls_gone_stale(&self, since: i64, now: i64) -> Vec<(String, String)> {
        let own = self
            .own_crls
            .iter()
            .filter(|(_, freshness)| freshness.stale_at(since).is_none())
            .filter_map(|(setting, freshness)| {
                Some(((*setting).to_owned(), freshness.stale_at(now)?.to_string()))
            });
        let partners = self
            .federation
            .crls
            .iter()
            .filter(|(_, freshness)| freshness.stale_at(since).is_none())
            .filter_map(|(instance, freshness)| {
                let why = freshness.stale_at(now)?;
                Some((format!("federation.{instance}.crls"), why.to_string()))
            });
        own.chain(partners).collect()
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
    pub fn limits(&self) -> &Limits {
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

    /// The CRLs in use that are past their next update at `now`, within
    /// their grace when loaded (a partner's beyond it stops that partner
    /// instead: [`Self::partner_refused_at`]).
    pub(super) fn overdue_crls_at(&self, now: i64) -> impl Iterator<Item = &str> {
        self.crls
            .iter()
            .filter(move |(_, next_update)| *next_update < now)
            .map(|(name, _)| name.as_str())
            .filter(move |name| {
                !self.federation.crls.iter().any(|(instance, freshness)| {
                    freshness.stale_at(now).is_some()
                        && name.starts_with(&format!("federation.{instance}.crls"))
                })
            })
    }

    /// Partners stopped for a CRL past its next update and grace at `now`.
    pub(super) fn partners_with_stale_crls_at(&self, now: i64) -> Vec<&str> {
        self.federation
            .crls
            .iter()
            .filter(|(_, freshness)| freshness.stale_at(now).is_some())
            .map(|(instance, _)| instance.as_str())
            .collect()
    }

    /// The gateway's own CRLs out of date at `now` (past their next update
    /// and grace), each with its setting and why: the handshakes they
    /// check are all refused.
    pub fn stale_own_crls_at(
        &self,
        now: i64,
    ) -> impl Iterator<Item = (&'static str, crate::identity::tls::TlsError)> + '_ {
        self.own_crls
            .iter()
            .filter_map(move |(setting, freshness)| Some((*setting, freshness.stale_at(now)?)))
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
    pub fn admin_token(&self) -> Option<&AdminToken> {
        self.admin_token.as_ref()
    }
}

/// Files, with their size and modification time.
type UpstreamTlsFiles = Vec<Option<String>>;

/// The SHA-256 of each file the upstream TLS is built from (the backends'
/// CA, this gateway's certificate and key, the CRLs, each partner's CA and
/// CRLs), `None` when it cannot be read. A changed CRL, too, opens new
/// connections: each handshake checks the backend's certificate against
/// the new one. The same contents elsewhere (a directory's new version
/// puts its CA in a cache directory of its own) keep them.
fn upstream_tls_contents(config: &Config) -> UpstreamTlsFiles {
    let tls = &config.upstream.tls;
    let partners = config
        .federation
        .partners
        .values()
        .flat_map(|partner| std::iter::once(&partner.ca).chain(&partner.crls));
    [&tls.server_ca, &tls.certificate, &tls.private_key]
        .into_iter()
        .chain(&tls.crls)
        .chain(partners)
        .map(|file| crate::keys::sha256_file_hex(file).ok())
        .collect()
}

/// Size and modification time of each file, `None` when it cannot be read.
pub(super) fn fingerprint(
    files: &[std::path::PathBuf],
) -> Vec<Option<(u64, std::time::SystemTime)>> {
    files
        .iter()
        .map(|file| {
            let metadata = std::fs::metadata(file).ok()?;
            Some((metadata.len(), metadata.modified().ok()?))
        })
        .collect()
}

/// The leaf certificates a configuration serves with, with when they
/// expire.
fn certificates(config: &Config) -> Vec<(String, i64)> {
    use crate::identity::tls;
    [
        ("gateway.tls.certificate", &config.gateway.tls.certificate),
        ("upstream.certificate", &config.upstream.tls.certificate),
    ]
    .into_iter()
    .filter_map(|(name, path)| {
        let chain = tls::load_certificates(path).ok()?;
        let not_after = tls::certificate_not_after(chain.first()?)?;
        Some((format!("{name} ({})", path.display()), not_after))
    })
    .collect()
}

/// When the gateway's own CRLs go out of date, by setting.
fn own_crls(config: &Config) -> Vec<(&'static str, crate::identity::tls::CrlFreshness)> {
    let lists = [
        (
            "gateway.tls.crls",
            &config.gateway.tls.crls,
            config.gateway.tls.crl_grace,
        ),
        (
            "upstream.crls",
            &config.upstream.tls.crls,
            config.upstream.tls.crl_grace,
        ),
    ];
    lists
        .into_iter()
        .filter_map(|(setting, paths, grace)| {
            // Unreadable lists have failed the start or reload already.
            let freshness = crate::identity::tls::crl_freshness(paths, grace).ok()??;
            Some((setting, freshness))
        })
        .collect()
}

/// The CRLs a configuration checks certificates against, with their next
/// update.
/// Each setting of `config` that names CRL files, with them.
fn crl_lists(config: &Config) -> Vec<(String, &[std::path::PathBuf])> {
    let mut lists = vec![
        ("gateway.tls.crls".to_owned(), &config.gateway.tls.crls[..]),
        ("upstream.crls".to_owned(), &config.upstream.tls.crls[..]),
    ];
    for partner in config.federation.partners.values() {
        lists.push((
            format!("federation.{}.crls", partner.instance),
            &partner.crls[..],
        ));
    }
    lists
}

/// The newest version of each CA's CRL in each setting, of `config`'s and
/// of those `previous` kept; refused if one of `config`'s is older than
/// the one its setting used before for the same CA (an older CRL put
/// back, from before a revocation and still within its next update, would
/// un-revoke).
fn crl_floor(
    config: &Config,
    previous: Option<&[(String, crate::identity::tls::CrlVersion)]>,
) -> Result<Arc<Vec<(String, crate::identity::tls::CrlVersion)>>, StartError> {
    let mut floor = previous.unwrap_or_default().to_vec();
    for (key, paths) in crl_lists(config) {
        // Unreadable files are the TLS build's to name.
        let versions = crate::identity::tls::crl_versions(paths).unwrap_or_default();
        for (path, version) in versions {
            // Per setting: two settings may each hold their own copy of
            // one CA's list, refreshed apart, as handshakes use them.
            let kept = floor
                .iter_mut()
                .find(|(setting, used)| *setting == key && used.same_list(&version));
            match kept {
                Some((_, used)) if version.older_than(used) => {
                    return Err(StartError::CrlRolledBack {
                        file: format!("{key} ({})", path.display()),
                        found: describe_crl(&version),
                        used: describe_crl(used),
                    });
                }
                Some((_, used)) => *used = version,
                None => floor.push((key.clone(), version)),
            }
        }
    }
    Ok(Arc::new(floor))
}

/// A CRL's number, or when it was issued.
fn describe_crl(version: &crate::identity::tls::CrlVersion) -> String {
    match version.number() {
        Some(number) => format!("CRL number 0x{number}"),
        None => format!(
            "issued {}",
            crate::unix_time::rfc3339(version.this_update())
        ),
    }
}

fn crls(config: &Config) -> Vec<(String, i64)> {
    use crate::identity::tls;
    let mut crls = Vec::new();
    for (key, paths) in crl_lists(config) {
        // The lists handshakes use: not an older one of an issuer beside.
        let used = tls::newest_of_each_issuer(paths).unwrap_or_default();
        for (path, next_update) in used
            .iter()
            .filter_map(|(path, crl)| Some((path, tls::crl_next_update(crl)?)))
        {
            crls.push((format!("{key} ({})", path.display()), next_update));
        }
    }
    crls
}

/// The witness of the partners' logs `config` names (`log_key`), cosigning
/// with `key`; its state in `dir`, its `book` the one of the
/// configuration before.
fn witness(
    config: &Config,
    key: Option<&Arc<crate::note::SigningKey>>,
    book: &Arc<crate::exchange_log::witness::Book>,
    dir: &std::path::Path,
) -> Option<Arc<crate::exchange_log::witness::Witness>> {
    use crate::exchange_log::witness::{Witness, Witnessed};
    let logs: std::collections::HashMap<String, Witnessed> = config
        .federation
        .partners
        .values()
        .filter_map(|partner| {
            let (log_key, _) = partner.log_key.as_ref()?;
            Some((
                partner.instance.clone(),
                Witnessed {
                    gateway: partner.gateway.clone(),
                    log_key: log_key.clone(),
                },
            ))
        })
        .collect();
    if logs.is_empty() {
        return None;
    }
    Some(Arc::new(Witness::new(
        dir,
        Arc::clone(key?),
        logs,
        Arc::clone(book),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member's document is built once, whatever the server each
    /// request names (that is added to a copy when answering).
    #[test]
    fn a_members_openapi_document_is_built_once() {
        let cache = OpenApiCache::default();
        let member = MemberId::parse("SN/COM/CBAO/kyc").unwrap();
        let builds = std::cell::Cell::new(0);
        let build = || {
            builds.set(builds.get() + 1);
            serde_json::json!({ "openapi": "3.1.0" })
        };
        let first = cache.get_or_build((member.clone(), 30), build);
        let again = cache.get_or_build((member.clone(), 30), build);
        assert_eq!(builds.get(), 1);
        assert!(Arc::ptr_eq(&first, &again));
        // Another day, another document (policies may read the days left).
        cache.get_or_build((member, 29), build);
        assert_eq!(builds.get(), 2);
    }
}
