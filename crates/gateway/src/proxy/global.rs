//! Following the instance's directory: a gateway with `[directory]` asks
//! it for the global configuration at start and every interval after,
//! checks what it gets (signature, hashes, instance, version, expiry),
//! and runs a newer one through the reload path, all or nothing.
//!
//! A bundle that fails any check, or with which the configuration would
//! not load, is refused and logged; the one in use keeps serving (and
//! stays on disk, so that a restart runs it too). A gateway whose bundle
//! expires before a newer one arrives forwards no call (see
//! [`GatewayState::expired_global`](super::GatewayState::expired_global)),
//! as an X-Road security server does once its global configuration is
//! out of date.

use std::path::Path;
use std::time::Duration;

use super::reload::Reloader;
use crate::config::{Config, DirectoryConfig, DirectorySource, FollowedPartner, Staged};
use crate::global::cache::{Cache, CacheError};
use crate::global::{Bundle, BundleError};

/// How long a poll waits for the directory.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a poll of the directory did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// A newer global configuration now serves.
    Applied { version: u64 },
    /// The directory serves the one in use.
    Unchanged,
    /// What the directory serves failed a check (`reason`: a
    /// [`BundleError::kind`](crate::global::BundleError::kind)), or the
    /// configuration would not load with it (`invalid`).
    Refused {
        reason: &'static str,
        detail: String,
    },
    /// The directory could not be asked.
    Unreachable(String),
}

impl Polled {
    /// Its result and reason, as metrics label them.
    fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Self::Applied { .. } => ("applied", ""),
            Self::Unchanged => ("unchanged", ""),
            Self::Refused { reason, .. } => ("refused", reason),
            Self::Unreachable(_) => ("unreachable", ""),
        }
    }
}

/// Why a poll found nothing to apply.
#[derive(Debug)]
enum Failed {
    Unreachable(String),
    Refused(BundleError),
    /// The cache could not be written.
    Cache(String),
}

impl From<Failed> for Polled {
    fn from(failed: Failed) -> Self {
        match failed {
            Failed::Unreachable(error) => Self::Unreachable(error),
            Failed::Refused(error) => Self::Refused {
                reason: error.kind(),
                detail: error.to_string(),
            },
            Failed::Cache(detail) => Self::Refused {
                reason: "cache",
                detail,
            },
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(error) | Self::Cache(error) => f.write_str(error),
            Self::Refused(error) => error.fmt(f),
        }
    }
}

/// Where bundles come from: a directory over HTTPS, or the fleet's
/// database (connected on first use, and kept: it dials again by itself).
#[derive(Debug)]
struct Source {
    directory: DirectoryConfig,
    database: Option<std::sync::Arc<crate::database::Database>>,
}

impl Source {
    fn new(directory: &DirectoryConfig) -> Self {
        Self {
            directory: directory.clone(),
            database: None,
        }
    }

    /// The latest bundle, as served.
    async fn fetch(&mut self) -> Result<Vec<u8>, String> {
        let store = match &self.directory.source {
            DirectorySource::Https { url, ca } => {
                return crate::global::http::fetch(url, ca, FETCH_TIMEOUT).await;
            }
            DirectorySource::Store(store) => store,
        };
        let database = match &self.database {
            Some(database) => std::sync::Arc::clone(database),
            None => {
                // Bounded as an HTTPS fetch is: connecting waits for the
                // schema's migration lock, which a node upgrading beside
                // may hold for long, and the poll would say nothing while
                // the bundle in use ran out.
                let connecting = crate::database::Database::connect(store);
                let database = tokio::time::timeout(FETCH_TIMEOUT, connecting)
                    .await
                    .map_err(|_| {
                        format!(
                            "{}: no connection within {FETCH_TIMEOUT:?} (a migration of the \
                             schema under way elsewhere, or the database not answering)",
                            self.directory.source
                        )
                    })?
                    .map_err(|error| error.to_string())?;
                self.database = Some(std::sync::Arc::clone(&database));
                database
            }
        };
        let instance = &self.directory.instance;
        database
            .latest_bundle(instance)
            .await
            .map_err(|error| error.to_string())?
            .ok_or_else(|| {
                format!(
                    "{} holds no global configuration of {instance} yet: publish one with \
                     `govbridge directory publish --to-store`",
                    self.directory.source
                )
            })
    }
}

/// Fetches the bundle and, if it is newer than the one in `cache` and
/// passes every check, writes it there (staged, not in use yet).
async fn fetch_newer(
    source: &mut Source,
) -> Result<Option<crate::global::cache::Installed>, Failed> {
    let bytes = source.fetch().await.map_err(Failed::Unreachable)?;
    let directory = &source.directory;
    stage_newer(
        bytes,
        &directory.verifier,
        &directory.cache,
        &directory.instance,
        false,
    )
    .await
}

/// `bytes`, if they are a bundle of `instance` signed by `verifier`, newer
/// than the one in the cache at `cache` and not expired, written there
/// (staged, not in use yet).
/// With `beside`, not older than what the caches beside it are at either
/// (a partner's, under the keys it signed with before).
async fn stage_newer(
    bytes: Vec<u8>,
    verifier: &crate::note::Verifier,
    cache: &Path,
    instance: &str,
    beside: bool,
) -> Result<Option<crate::global::cache::Installed>, Failed> {
    let (verifier, cache, instance) = (verifier.clone(), Cache::new(cache), instance.to_owned());
    let checked = tokio::task::spawn_blocking(move || {
        let bundle = Bundle::open(&bytes, &verifier).map_err(Failed::Refused)?;
        // A cache that cannot be read says nothing of the version in use:
        // taking any signed bundle then would let an older one in.
        let (current, unchecked) = match cache.current(&verifier) {
            Ok(current) => (current, None),
            // Signed by a key no longer trusted (it rotated while this
            // gateway was stopped): the version its pointer names, the
            // gateway's own file, is the floor, as for a partner's caches
            // beside; that version itself is not taken again.
            Err(CacheError::Bundle {
                error: BundleError::Unsigned(_),
                ..
            }) => (None, cache.version_in_use()),
            Err(error) => return Err(Failed::Cache(error.to_string())),
        };
        let floor = beside
            .then(|| cache.floor_beside())
            .flatten()
            .into_iter()
            .chain(unchecked.map(|version| (version, cache.dir().to_owned())))
            .max();
        let newer = bundle
            .accept_above(
                &instance,
                current.as_ref().map(|current| &current.manifest),
                floor,
                crate::unix_time::now(),
            )
            .map_err(Failed::Refused)?;
        if !newer {
            return Ok(None);
        }
        cache
            .stage(&bundle)
            .map(Some)
            .map_err(|error| Failed::Cache(error.to_string()))
    })
    .await;
    checked.unwrap_or_else(|error| Err(Failed::Cache(error.to_string())))
}

/// Fetches `partner`'s bundle from its directory. Asked outside
/// [`PARTNER_CACHES`]: a directory out of reach holds up no other
/// partner's cache for its timeout.
async fn fetch_partner(partner: &FollowedPartner) -> Result<Vec<u8>, Failed> {
    crate::global::http::fetch(&partner.url, &partner.ca, FETCH_TIMEOUT)
        .await
        .map_err(Failed::Unreachable)
}

/// Stages `fetched`, `partner`'s bundle, if it is newer than the one in
/// its cache and passes every check. Under [`PARTNER_CACHES`].
async fn stage_partner(
    fetched: Result<Vec<u8>, Failed>,
    partner: &FollowedPartner,
) -> Result<Option<crate::global::cache::Installed>, Failed> {
    let bytes = fetched?;
    stage_newer(
        bytes,
        &partner.verifier,
        &partner.cache,
        &partner.instance,
        true,
    )
    .await
}

/// Brings the cache of each partner the gateway file at `path` follows
/// up to date (with `[directory]`, as the global configuration `global`,
/// or the one in use, says), before a start or before a new global
/// configuration is applied: what the load that follows needs.
///
/// A partner with nothing cached yet is asked for its configuration;
/// with `refresh`, one with a version cached is asked for a newer one.
/// What it gives goes into its cache only if the whole configuration
/// loads and builds with it. Out of reach, or giving a version that
/// cannot run, a partner keeps its cached version, or stays not learned
/// ([`Prepared::NotLearned`]): its calls are refused, nothing else is.
///
/// `staging`: the global configuration about to be applied, if any, and
/// the data directory of a gateway that runs (its partners' caches).
pub(super) async fn learn_partners(
    path: &Path,
    staging: Staged<'_>,
    refresh: bool,
) -> Result<Vec<(String, Prepared)>, String> {
    let followed = Config::followed_of_file(path, staging).map_err(|error| error.to_string())?;
    let mut learned = Vec::new();
    // The partners to ask, each with whether it has a version cached.
    let mut asking = Vec::new();
    for partner in followed {
        let cache = Cache::new(&partner.cache);
        let cached = {
            let _reading = PARTNER_CACHES.lock().await;
            cache.current(&partner.verifier)
        };
        let cached = match cached {
            Ok(cached) => cached.is_some(),
            // Not replaced by whatever the directory serves: nothing
            // vouches any longer for the version that was in use, and an
            // older one could come in. The load says why its calls are
            // refused; the operator removes the cache.
            Err(error) => {
                let why = format!(
                    "its cache cannot be used ({error}); remove {} to fetch it again",
                    partner.cache.display()
                );
                learned.push((partner.instance, Prepared::NotLearned { why }));
                continue;
            }
        };
        if cached && !refresh {
            continue;
        }
        asking.push((partner, cached));
    }
    // Every directory at once: partners out of reach cost a start one
    // timeout, not one each.
    let mut fetching = tokio::task::JoinSet::new();
    for (index, (partner, _)) in asking.iter().enumerate() {
        let partner = partner.clone();
        fetching.spawn(async move { (index, fetch_partner(&partner).await) });
    }
    let mut fetched: Vec<Option<Result<Vec<u8>, Failed>>> =
        std::iter::repeat_with(|| None).take(asking.len()).collect();
    while let Some(done) = fetching.join_next().await {
        // A fetch that panicked leaves its partner's slot empty: that
        // partner is not had, the others are.
        if let Ok((index, bytes)) = done {
            fetched[index] = Some(bytes);
        }
    }
    for ((partner, cached), bytes) in asking.into_iter().zip(fetched) {
        let bytes =
            bytes.unwrap_or_else(|| Err(Failed::Unreachable("the fetch failed".to_owned())));
        // From the staging to the commit: nothing else writes its cache.
        let _writing = PARTNER_CACHES.lock().await;
        let cache = Cache::new(&partner.cache);
        let not_had = |why: String| {
            if cached {
                Prepared::FromCache { why }
            } else {
                Prepared::NotLearned { why }
            }
        };
        let prepared = match stage_partner(bytes, &partner).await {
            Ok(None) => Prepared::Current,
            Ok(Some(staged)) => {
                let (path, version) = (path.to_owned(), staged.manifest.version);
                let global = staging.global.cloned();
                let data_dir = staging.data_dir.map(Path::to_owned);
                let checked = tokio::task::spawn_blocking(move || {
                    // The whole configuration, with it (and with the
                    // global configuration about to be applied, if any):
                    // a version that would not load or build never goes
                    // into the cache, where a start would find it.
                    let staging = Staged {
                        global: global.as_ref(),
                        partner: Some(&staged),
                        data_dir: data_dir.as_deref(),
                    };
                    let config =
                        Config::load_with(&path, staging).map_err(|error| error.to_string())?;
                    super::Gateway::check(&config).map_err(|error| error.to_string())?;
                    cache.commit(&staged).map_err(|error| error.to_string())
                })
                .await
                .map_err(|error| error.to_string())
                .and_then(|checked| checked);
                match checked {
                    Ok(()) => Prepared::Fetched { version },
                    Err(error) => not_had(format!("version {version} cannot run: {error}")),
                }
            }
            Err(failed) => not_had(format!("its directory {}: {failed}", partner.url)),
        };
        learned.push((partner.instance, prepared));
    }
    Ok(learned)
}

/// One writer of partners' caches at a time in this process, from the
/// staging of what a directory gave to the commit: a start, a reload and a poll may each fetch the
/// same partner, and a version staged is never swept away by another's
/// commit, nor the pointer moved back.
static PARTNER_CACHES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What [`prepare`] did, for the start to log once logging is set up
/// (it needs the configuration `prepare` may have just fetched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The gateway has no `[directory]`.
    NoDirectory,
    /// The directory serves the version in the cache.
    Current,
    /// A newer version was fetched, checked, and is now the one in use.
    Fetched { version: u64 },
    /// The directory could not give a version that runs: the gateway
    /// starts from its cache, and keeps asking.
    FromCache { why: String },
    /// A followed partner's directory could not give a version that runs,
    /// and none is cached: calls to and from the partner are refused
    /// until one is had; the gateway keeps asking.
    NotLearned { why: String },
}

impl Prepared {
    /// Logs what happened to `instance`'s global configuration.
    fn log(&self, instance: &str) {
        match self {
            Self::NoDirectory | Self::Current => {}
            Self::Fetched { version } => {
                tracing::info!(
                    instance,
                    version,
                    "global configuration fetched from the directory"
                );
            }
            Self::FromCache { why } => {
                tracing::warn!(
                    instance,
                    error = %why,
                    "starting from the global configuration in the cache"
                );
            }
            Self::NotLearned { why } => {
                tracing::warn!(
                    instance,
                    error = %why,
                    "starting without the partner's global configuration: calls to and from it \
                     are refused until its directory gives one"
                );
            }
        }
    }
}

/// What [`prepare`] did of the instance's global configuration and of
/// each partner's it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preparation {
    pub global: Prepared,
    /// By partner instance.
    pub partners: Vec<(String, Prepared)>,
}

impl Preparation {
    /// Logs what happened.
    pub fn log(&self) {
        self.global.log("");
        for (instance, prepared) in &self.partners {
            prepared.log(instance);
        }
    }
}

/// Before a gateway with `[directory]` starts: asks the directory for a
/// newer global configuration, and makes it the one in use if the
/// gateway file at `path` loads with it. Without a bundle in the cache
/// the gateway cannot start, so the directory must then answer; with one,
/// a directory out of reach only delays the newer version (the gateway
/// starts from its cache, and keeps asking).
///
/// Then the same for each partner it follows from the partner's own
/// directory.
pub async fn prepare(path: &Path) -> Result<Preparation, String> {
    let global = prepare_global(path).await?;
    let partners = learn_partners(path, Staged::default(), true).await?;
    Ok(Preparation { global, partners })
}

async fn prepare_global(path: &Path) -> Result<Prepared, String> {
    let Some(directory) = Config::directory_of_file(path).map_err(|error| error.to_string())?
    else {
        return Ok(Prepared::NoDirectory);
    };
    let cache = Cache::new(&directory.cache);
    let cached = cache.current(&directory.verifier);
    let has_one = matches!(cached, Ok(Some(_)));
    let fetched = match fetch_newer(&mut Source::new(&directory)).await {
        Ok(Some(staged)) => {
            // The partners it follows first: the load needs them.
            if let Err(error) = learn_partners(path, Staged::global(&staged), false).await {
                return if has_one {
                    Ok(Prepared::FromCache { why: error })
                } else {
                    Err(error)
                };
            }
            let path = path.to_owned();
            let version = staged.manifest.version;
            // Checked as a start would use it (policies, CAs, routes)
            // before the cache points to it.
            tokio::task::spawn_blocking(move || {
                let config = Config::load_staged(&path, &staged).map_err(|e| e.to_string())?;
                super::Gateway::check(&config).map_err(|error| error.to_string())?;
                cache.commit(&staged).map_err(|error| error.to_string())
            })
            .await
            .map_err(|error| error.to_string())
            .and_then(|checked| checked)
            .map(|()| Prepared::Fetched { version })
            .map_err(|error| format!("version {version} cannot run: {error}"))
        }
        Ok(None) => Ok(Prepared::Current),
        Err(error) => Err(error.to_string()),
    };
    match fetched {
        Ok(prepared) => Ok(prepared),
        Err(why) if has_one => Ok(Prepared::FromCache { why }),
        Err(error) => {
            let cache = match cached {
                Err(unusable) => format!("the cache's cannot be used ({unusable})"),
                Ok(_) => format!("the cache {} has none", directory.cache.display()),
            };
            Err(format!(
                "no global configuration: {cache}, and the directory's: {error}"
            ))
        }
    }
}

impl Reloader {
    /// Asks the directory for a newer global configuration every
    /// `directory.interval`, until the process ends.
    pub fn follow_directory(self, directory: DirectoryConfig) {
        tokio::spawn(async move {
            let mut source = Source::new(&directory);
            let mut ticks = tokio::time::interval(directory.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is now: the gateway has just fetched.
            ticks.tick().await;
            loop {
                ticks.tick().await;
                self.poll(&mut source).await;
            }
        });
    }

    /// One poll of the directory: applies a newer global configuration
    /// if there is one and it passes, and says what happened.
    async fn poll(&self, source: &mut Source) -> Polled {
        let directory = source.directory.clone();
        let polled = match fetch_newer(source).await {
            Ok(None) => Polled::Unchanged,
            Ok(Some(staged)) => {
                let (reloader, cache) = (self.clone(), Cache::new(&directory.cache));
                let version = staged.manifest.version;
                // A partner it follows that this gateway has not learned
                // yet: its configuration first (without it, its calls are
                // refused until the partner's poll has it).
                let data_dir = self.data_dir();
                let staging = Staged::global(&staged).running_in(&data_dir);
                if let Err(error) = learn_partners(&self.source, staging, false).await {
                    tracing::warn!(%error, "a partner's global configuration cannot be had");
                }
                applied(version, move || reloader.apply_global(&cache, &staged)).await
            }
            Err(failed) => failed.into(),
        };
        let (result, reason) = polled.labels();
        self.metrics.global_fetch(result, reason);
        match &polled {
            Polled::Refused { detail, .. } => tracing::error!(
                directory = %directory.source,
                error = %detail,
                "global configuration refused; the one in use keeps serving"
            ),
            Polled::Unreachable(error) => tracing::warn!(
                directory = %directory.source,
                %error,
                "the directory cannot be reached; the global configuration in use keeps serving"
            ),
            Polled::Applied { .. } | Polled::Unchanged => {}
        }
        polled
    }
}

impl Reloader {
    /// Asks the directory of each partner the configuration in use follows
    /// for a newer version of its global configuration, every partner's
    /// `interval`, until the process ends; a newer one that passes its
    /// checks, and with which the whole configuration loads, replaces the
    /// partner's CA, CRLs, gateways and keys.
    pub fn follow_partners(self) {
        tokio::spawn(async move {
            let mut due: std::collections::HashMap<String, tokio::time::Instant> =
                std::collections::HashMap::new();
            loop {
                let followed = self.state.load().federation.followed.clone();
                due.retain(|instance, _| followed.iter().any(|p| p.instance == *instance));
                let now = tokio::time::Instant::now();
                for partner in followed.iter() {
                    // A partner seen for the first time is asked at once:
                    // its cache may hold an old version (it answers
                    // `unchanged` when not).
                    let when = *due.entry(partner.instance.clone()).or_insert(now);
                    if when <= now {
                        self.poll_partner(partner).await;
                        due.insert(
                            partner.instance.clone(),
                            tokio::time::Instant::now() + partner.interval,
                        );
                    }
                }
                // A partner a reload adds is seen within a second.
                let next = due
                    .values()
                    .copied()
                    .min()
                    .map_or(now + PARTNERS_LOOK, |next| next.min(now + PARTNERS_LOOK));
                tokio::time::sleep_until(next).await;
            }
        });
    }

    /// One poll of `partner`'s directory.
    async fn poll_partner(&self, partner: &FollowedPartner) -> Polled {
        let cache = Cache::new(&partner.cache);
        let before = cache.version_in_use();
        let fetched = fetch_partner(partner).await;
        let writing = PARTNER_CACHES.lock().await;
        let staged = match stage_partner(fetched, partner).await {
            // A start or reload took a newer version while this was
            // fetched: what came is old news, not a replay.
            Err(Failed::Refused(BundleError::Replayed { .. }))
                if cache.version_in_use() != before =>
            {
                Ok(None)
            }
            staged => staged,
        };
        let polled = match staged {
            Ok(None) => self.run_cached_partner(partner).await,
            Ok(Some(staged)) => {
                let (reloader, cache) = (self.clone(), Cache::new(&partner.cache));
                let (instance, version) = (partner.instance.clone(), staged.manifest.version);
                applied(version, move || {
                    reloader.apply_partner(&instance, &cache, &staged)
                })
                .await
            }
            Err(failed) => failed.into(),
        };
        drop(writing);
        let (result, reason) = polled.labels();
        self.metrics
            .partner_configuration_fetch(&partner.instance, result, reason);
        match &polled {
            Polled::Refused { detail, .. } => tracing::error!(
                instance = %partner.instance,
                directory = %partner.url,
                error = %detail,
                "partner's global configuration refused; the one in use keeps serving"
            ),
            Polled::Unreachable(error) => tracing::warn!(
                instance = %partner.instance,
                directory = %partner.url,
                %error,
                "a partner's directory cannot be reached; its global configuration in use keeps \
                 serving"
            ),
            Polled::Applied { version } => tracing::info!(
                instance = %partner.instance,
                version,
                "partner's global configuration applied"
            ),
            Polled::Unchanged => {}
        }
        polled
    }
}

impl Reloader {
    /// The directory serves the version in `partner`'s cache: runs it if
    /// the configuration in use does not (a start or global version that
    /// learned it and then failed to apply leaves it committed and unused,
    /// and nothing else would load it before the next reload).
    async fn run_cached_partner(&self, partner: &FollowedPartner) -> Polled {
        let running = self
            .state
            .load()
            .federation
            .partners
            .get(&partner.instance)
            .and_then(|running| running.published.as_ref())
            .map(|published| published.version);
        let (cache, verifier) = (Cache::new(&partner.cache), partner.verifier.clone());
        let cached = tokio::task::spawn_blocking(move || cache.current(&verifier))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .map(|installed| installed.manifest.version);
        let Some(version) = cached.filter(|cached| Some(*cached) != running) else {
            return Polled::Unchanged;
        };
        let reloader = self.clone();
        applied(version, move || reloader.reload()).await
    }
}

/// What applying `version` (`apply`, which loads files and compiles
/// policies: off the threads that serve calls) came to.
async fn applied(
    version: u64,
    apply: impl FnOnce() -> Result<(), super::reload::ReloadError> + Send + 'static,
) -> Polled {
    tokio::task::spawn_blocking(apply)
        .await
        .map_err(|error| error.to_string())
        .and_then(|applied| applied.map_err(|error| error.to_string()))
        .map_or_else(
            |detail| Polled::Refused {
                reason: "invalid",
                detail,
            },
            |()| Polled::Applied { version },
        )
}

/// How often the partners the configuration follows are looked at again,
/// whatever their intervals: a reload may add one.
const PARTNERS_LOOK: Duration = Duration::from_secs(1);
