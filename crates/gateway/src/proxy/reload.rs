//! Reloading a running gateway's configuration.

use std::sync::Arc;
use std::time::Duration;

use super::state::{GatewayState, fingerprint};
use super::{SharedState, StartError};
use crate::config::{Config, Staged};
use crate::telemetry::metrics::Metrics;

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
    pub(super) source: std::path::PathBuf,
    pub(super) state: SharedState,
    pub(super) listener_tls: crate::net::SharedListenerTls,
    pub(super) metrics: Arc<Metrics>,
    /// One reload at a time: one built from an older configuration never
    /// replaces a newer one swapped in meanwhile.
    pub(super) reloading: Arc<std::sync::Mutex<()>>,
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
    #[error("{}: cannot switch the global configuration in use: {error}", file.display())]
    Cache {
        file: std::path::PathBuf,
        error: String,
    },
}

/// How the file's `[directory]` moved from the one the gateway started
/// with, if it points elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirectoryMoved {
    Added,
    Removed,
    Cache,
    Url,
    Instance,
}

impl DirectoryMoved {
    /// Whether a load with the file's `[directory]` reads the global
    /// configuration from somewhere else than the running one does, even
    /// with a bundle just fetched in hand (partners' loads read it from
    /// the cache).
    fn reads_elsewhere(self) -> bool {
        !matches!(self, Self::Url)
    }
}

impl std::fmt::Display for DirectoryMoved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Added => "[directory] added",
            Self::Removed => "[directory] removed",
            Self::Cache => "[directory] cache changed",
            Self::Url => "[directory] url changed (another directory)",
            Self::Instance => "the instance (the identity's first part) changed",
        })
    }
}

fn directory_moved(
    written: Option<&crate::config::DirectoryConfig>,
    running: Option<&crate::config::DirectoryConfig>,
) -> Option<DirectoryMoved> {
    use crate::config::DirectorySource;
    match (written, running) {
        (None, None) => None,
        (Some(_), None) => Some(DirectoryMoved::Added),
        (None, Some(_)) => Some(DirectoryMoved::Removed),
        (Some(written), Some(running)) => {
            let same_endpoint = match (&written.source, &running.source) {
                (DirectorySource::Https { url: a, .. }, DirectorySource::Https { url: b, .. }) => {
                    a == b
                }
                // The fleet's database, whatever its credentials.
                (DirectorySource::Store(_), DirectorySource::Store(_)) => true,
                _ => false,
            };
            if written.cache != running.cache {
                Some(DirectoryMoved::Cache)
            } else if written.instance != running.instance {
                Some(DirectoryMoved::Instance)
            } else if !same_endpoint {
                Some(DirectoryMoved::Url)
            } else {
                None
            }
        }
    }
}

impl Reloader {
    /// The data directory the gateway started with, which its reloads
    /// keep (`data_dir` takes effect at restart).
    pub(super) fn data_dir(&self) -> std::path::PathBuf {
        self.state.load().federation.data_dir.clone()
    }

    /// Re-reads the configuration file and everything it names, and swaps
    /// it in if it is valid.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let data_dir = self.data_dir();
        let load = || Config::load_with(&self.source, Staged::default().running_in(&data_dir));
        self.apply(load, || Ok(()), true)?;
        tracing::info!(config = %self.source.display(), "configuration reloaded");
        Ok(())
    }

    /// Runs the global configuration `staged` in the cache, if the whole
    /// configuration is valid with it: it becomes the one in use (the
    /// cache's pointer moves) only then, and before calls see it.
    pub fn apply_global(
        &self,
        cache: &crate::global::cache::Cache,
        staged: &crate::global::cache::Installed,
    ) -> Result<(), ReloadError> {
        let started = std::time::Instant::now();
        // The last step before the swap: the time is in the metrics by the
        // time the version is.
        let commit = || {
            // Under the reload lock: no other version went in since the
            // poll compared, and none older ever does.
            let running = self.state.load().global().map(|global| global.version);
            if let Some(running) = running.filter(|running| *running >= staged.manifest.version) {
                return Err(ReloadError::Cache {
                    file: self.source.clone(),
                    error: format!(
                        "version {} is not newer than version {running}, which runs",
                        staged.manifest.version
                    ),
                });
            }
            cache.commit(staged).map_err(|error| ReloadError::Cache {
                file: self.source.clone(),
                error: error.to_string(),
            })?;
            self.metrics.global_applied(started.elapsed());
            Ok(())
        };
        let data_dir = self.data_dir();
        let load = || Config::load_with(&self.source, Staged::global(staged).running_in(&data_dir));
        self.apply(load, commit, false)?;
        tracing::info!(
            version = staged.manifest.version,
            expires = %crate::unix_time::rfc3339(staged.manifest.expires),
            took_ms = started.elapsed().as_millis(),
            "global configuration applied"
        );
        Ok(())
    }

    /// Runs version `staged` of followed partner `instance`'s global
    /// configuration, in its cache, if the whole configuration is valid
    /// with it: it becomes the one in use there only then.
    pub fn apply_partner(
        &self,
        instance: &str,
        cache: &crate::global::cache::Cache,
        staged: &crate::global::cache::Installed,
    ) -> Result<(), ReloadError> {
        let commit = || {
            // Under the reload lock: none older ever goes in.
            let running = self
                .state
                .load()
                .federation
                .partners
                .get(instance)
                .and_then(|partner| partner.published.as_ref())
                .map(|published| published.version);
            if let Some(running) = running.filter(|running| *running >= staged.manifest.version) {
                return Err(ReloadError::Cache {
                    file: self.source.clone(),
                    error: format!(
                        "{instance}'s version {} is not newer than version {running}, which runs",
                        staged.manifest.version
                    ),
                });
            }
            cache.commit(staged).map_err(|error| ReloadError::Cache {
                file: self.source.clone(),
                error: error.to_string(),
            })
        };
        let data_dir = self.data_dir();
        let load = || {
            let staging = Staged::partner(staged).running_in(&data_dir);
            let config = Config::load_with(&self.source, staging)?;
            // The section may have changed since the bundle was fetched
            // (its key replaced, or removed): then the load did not take
            // it, and nothing is applied in its name.
            let took = config
                .federation
                .partners
                .get(instance)
                .and_then(|partner| partner.published.as_ref())
                .is_some_and(|published| published.dir == staged.dir);
            if took {
                Ok(config)
            } else {
                Err(crate::config::ConfigError {
                    file: self.source.clone(),
                    line: None,
                    key: format!("federation.{instance}"),
                    message: format!(
                        "changed since {instance}'s version {} was fetched: not applied",
                        staged.manifest.version
                    ),
                })
            }
        };
        self.apply(load, commit, false)
    }

    /// Loads, builds everything the configuration needs, then `commit`s
    /// and swaps it in, one reload at a time; on any error the
    /// configuration in use keeps serving.
    ///
    /// `file_reload`: the load reads the file and the bundle its
    /// `[directory]` names (a reload), not a bundle just fetched.
    fn apply(
        &self,
        load: impl FnOnce() -> Result<Config, crate::config::ConfigError>,
        commit: impl FnOnce() -> Result<(), ReloadError>,
        file_reload: bool,
    ) -> Result<(), ReloadError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start_error = |error| ReloadError::Start {
            file: self.source.clone(),
            error: Box::new(error),
        };
        let running = self.state.load();
        let built = load()
            .and_then(|mut config| {
                // The poller follows the directory the gateway started
                // with. A [directory] changed in the file takes effect at
                // restart, and the rest of the file now, unless the change
                // moves where this load read the global configuration
                // from: refused then (and a reload of the file, which
                // reads the bundle in use through the file's [directory],
                // is also refused for another url).
                let moved = directory_moved(config.directory.as_ref(), running.directory.as_ref());
                if let Some(moved) = moved.filter(|moved| file_reload || moved.reads_elsewhere()) {
                    return Err(crate::config::ConfigError {
                        file: self.source.clone(),
                        line: None,
                        key: "directory".to_owned(),
                        message: format!(
                            "{moved}: that takes effect at restart (a new key, interval or CA \
                             is taken at a reload; the directory followed stays the one the \
                             gateway started with)"
                        ),
                    });
                }
                let directory_changed = config.directory != running.directory;
                if directory_changed {
                    config.directory.clone_from(&running.directory);
                }
                Ok((config, directory_changed))
            })
            .map_err(ReloadError::from)
            .and_then(|(config, directory_changed)| {
                let tls = config
                    .gateway
                    .tls
                    .listener_tls()
                    .map_err(|error| start_error(StartError::ServerTls(error)))?;
                let state =
                    GatewayState::after(&config, Some(&self.state.load())).map_err(start_error)?;
                let unapplied: Vec<&'static str> = state
                    .started_with
                    .iter()
                    .zip(config.restart_only())
                    .filter(|((_, running), (_, written))| *running != *written)
                    .map(|((setting, _), _)| *setting)
                    .chain(directory_changed.then_some("[directory]"))
                    .collect();
                Ok((tls, state, unapplied))
            })
            .and_then(|built| commit().map(|()| built));
        self.metrics.reload(built.is_ok());
        // Whatever else was wrong, a revoked admin token stops now.
        if built.is_err()
            && file_reload
            && let Some(token) = running.admin_token()
        {
            token.revoke_unless_still_in_its_file();
        }
        if let Err(ReloadError::Start { error, .. }) = &built
            && error.is_stale_crl()
        {
            self.metrics.stale_crl(true);
        }
        let (tls, state, unapplied) = built?;
        for setting in unapplied {
            tracing::warn!(
                file = %self.source.display(),
                setting,
                "a setting changed in the file takes effect at restart: the running value \
                 stays until then"
            );
        }
        for _ in state.overdue_crls_at(state.built_at()) {
            self.metrics.stale_crl(false);
        }
        for _ in state.partners_with_stale_crls_at(state.built_at()) {
            self.metrics.stale_crl(true);
        }
        self.listener_tls.store(tls);
        self.state.store(Arc::new(state));
        Ok(())
    }

    /// Reloads whenever the configuration file or a file it names changes
    /// (size or modification time), checking every `interval`, until the
    /// process ends or the task returned is aborted. A change that fails
    /// to load is logged once and not retried until the files change
    /// again.
    pub fn reload_on_file_change(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        // Taken before this returns, so that a change made after it is seen
        // (were it taken in the task, a change made before the task first
        // ran would be its starting point, never reloaded).
        // What the last configuration that loaded named: what a failed
        // load watches the directories of (never those of directories
        // added so, which would climb the tree a level per failure).
        let mut loaded = self.watched_files().unwrap_or_default();
        let mut watched = if loaded.is_empty() {
            self.after_failed_load(&loaded)
        } else {
            loaded.clone()
        };
        let mut last = fingerprint(&watched);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if fingerprint(&watched) == last {
                    continue;
                }
                tracing::info!("configuration files changed; reloading");
                // The files the configuration about to be loaded names,
                // fingerprinted before it is: a file that changes while it
                // loads is seen at the next tick, not taken as loaded.
                let next = match self.watched_files() {
                    Some(files) => {
                        loaded.clone_from(&files);
                        files
                    }
                    None => self.after_failed_load(&loaded),
                };
                let before = fingerprint(&next);
                self.learn_partners().await;
                let reloader = self.clone();
                let reloaded = tokio::task::spawn_blocking(move || reloader.reload()).await;
                match reloaded {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::error!(%error, "reload rejected; the previous configuration keeps serving");
                    }
                    Err(error) => tracing::error!(%error, "reload failed to run"),
                }
                // Rejected or not, the files the new configuration names
                // are the ones to watch: a file it needs, put in place
                // after the configuration, reloads it then. When it does
                // not load at all, the files the last one that did named,
                // and their directories: a file put in one of those (a
                // missing descriptor, certificate or key beside the
                // others) reloads it; one put elsewhere waits for the
                // configuration file to change again.
                watched = next;
                last = before;
            }
        })
    }

    /// Before a reload: fetches the configuration of each partner the
    /// file follows that is not in its cache yet (a section just added,
    /// or its directory's key replaced), which the load then runs. One
    /// that cannot be had is loaded as not learned: its calls are refused
    /// until its poll has it, and nothing else waits for it.
    pub(super) async fn learn_partners(&self) {
        let data_dir = self.data_dir();
        let staging = Staged::default().running_in(&data_dir);
        match super::global::learn_partners(&self.source, staging, false).await {
            Ok(learned) => {
                for (instance, prepared) in learned {
                    if let super::global::Prepared::NotLearned { why } = prepared {
                        tracing::warn!(
                            %instance,
                            error = %why,
                            "a partner's global configuration cannot be had yet: calls to it \
                             are refused until it is"
                        );
                    }
                }
            }
            // The load says it again, in its place.
            Err(error) => tracing::warn!(%error, "partners' global configurations cannot be read"),
        }
    }

    /// What to watch once the configuration does not load (a file it
    /// names is missing, say): the file, what the last configuration that
    /// loaded named (`watched`), and the directories of both, so that a
    /// file put in one (the missing descriptor, certificate or key)
    /// reloads it.
    fn after_failed_load(&self, watched: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
        let mut files: Vec<std::path::PathBuf> = std::iter::once(self.source.clone())
            .chain(watched.iter().cloned())
            .collect();
        let directories: Vec<std::path::PathBuf> = files
            .iter()
            .filter_map(|file| file.parent().map(std::path::Path::to_path_buf))
            .collect();
        files.extend(directories);
        files.sort();
        files.dedup();
        files
    }

    /// The configuration file and every file it names, or `None` when it
    /// does not load.
    fn watched_files(&self) -> Option<Vec<std::path::PathBuf>> {
        let mut files = vec![self.source.clone()];
        let data_dir = self.data_dir();
        let config =
            Config::load_with(&self.source, Staged::default().running_in(&data_dir)).ok()?;
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
        // A leaked admin token revoked, a consent issuer's key withdrawn:
        // in effect as soon as the file changes.
        files.extend(config.gateway.admin_token_file.iter().cloned());
        files.extend(
            config
                .consent
                .iter()
                .map(|consent| consent.issuer_keys.clone()),
        );
        // A partner's CAs, CRLs and key, and this gateway's own federation
        // key: a revocation a partner publishes takes effect when its CRL
        // is dropped in place.
        let federation = &config.federation;
        files.extend(
            federation
                .key
                .iter()
                .flat_map(|key| [key.clone(), key.with_extension("pub")]),
        );
        for partner in federation.partners.values() {
            files.push(partner.ca.clone());
            files.push(partner.key_file.clone());
            files.extend(partner.crls.iter().cloned());
        }
        // A partner's directory's key replaced (it rotated it): its
        // bundles signed by the new key are fetched, and run.
        for followed in federation.followed.values() {
            files.push(followed.ca.clone());
            files.push(followed.key_file.clone());
        }
        files.extend(
            config
                .services
                .values()
                .filter_map(|service| service.descriptor.clone()),
        );
        if let Ok(entries) = std::fs::read_dir(&config.policy.policies) {
            files.extend(entries.filter_map(|entry| Some(entry.ok()?.path())));
        }
        Some(files)
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
                self.learn_partners().await;
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
