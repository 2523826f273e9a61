//! The configuration file as written, before validation.
//!
//! Every value keeps its span so that validation errors can name the line.
//! Unknown keys are errors: a typo must not silently fall back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{
    Config, ConfigError, ConsentConfig, DirectoryConfig, DirectorySource, ExchangeLogConfig,
    GatewayConfig, GlobalVersion, LimitsConfig, Member, MemberLimits, OtlpConfig, PolicyConfig,
    PoolSettings, Provider, PublishedService, RateLimit, StoreConfig, TelemetryConfig,
    UpstreamConfig, is_group_name, is_service_name, parse_duration, parse_endpoint,
    parse_retention,
};
use crate::identity::MemberId;
use crate::identity::tls::{ClientTls, ServerTls};
use crate::net::ListenerSettings;
use crate::wire::headers::is_purpose_code;

/// A gateway's file. Its shared sections (see [`RawGlobal`]) are here
/// unless `[directory]` says they come from the instance's bundle. They
/// are repeated rather than flattened in: serde cannot deny unknown keys
/// through `#[serde(flatten)]`, and a typo must stay an error naming its
/// line. [`RawConfig::take_global`] moves them across.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    upstream: RawUpstream,
    #[serde(default)]
    members: BTreeMap<Spanned<String>, RawMember>,
    #[serde(default)]
    providers: BTreeMap<Spanned<String>, RawProvider>,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, RawService>,
    /// `[agencies]`: the mock agencies of a dev or test setup, read by the
    /// harness crate (its `AgenciesConfig`) from the same file. The gateway
    /// never runs them.
    #[serde(rename = "agencies")]
    _agencies: Option<serde::de::IgnoredAny>,
    policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    purposes: BTreeMap<Spanned<String>, Spanned<String>>,
    exchange_log: Option<RawExchangeLog>,
    telemetry: Option<RawTelemetry>,
    consent: Option<Spanned<RawConsent>>,
    limits: Option<Spanned<RawLimits>>,
    store: Option<RawStore>,
    directory: Option<RawDirectory>,
    trust: Option<Spanned<RawTrust>>,
    #[serde(default)]
    federation: BTreeMap<Spanned<String>, RawPartner>,
    instance: Option<Spanned<RawInstance>>,
}

/// The sections an instance's gateways share: a bundle's `global.toml`,
/// or the gateway's own file when it has no `[directory]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    #[serde(default)]
    members: BTreeMap<Spanned<String>, RawMember>,
    #[serde(default)]
    providers: BTreeMap<Spanned<String>, RawProvider>,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, RawService>,
    policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    purposes: BTreeMap<Spanned<String>, Spanned<String>>,
    consent: Option<Spanned<RawConsent>>,
    limits: Option<Spanned<RawLimits>>,
    trust: Option<Spanned<RawTrust>>,
    #[serde(default)]
    federation: BTreeMap<Spanned<String>, RawPartner>,
    instance: Option<Spanned<RawInstance>>,
}

/// `[instance]`: how partner instances reach and trust this one,
/// published in its global configuration for them to learn (`govbridge
/// directory learn`). Its gateways do not use it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    gateway: Spanned<String>,
    endpoints: Spanned<Vec<Spanned<String>>>,
    tls_name: Option<Spanned<String>>,
    federation_key: Spanned<String>,
    log_key: Option<Spanned<String>>,
}

/// `[federation."XX"]`: a partner instance, written out (`ca`, `gateway`,
/// `endpoints`, `key`...), or followed from its own directory
/// (`directory`, `directory_ca`, `directory_key`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    ca: Option<Spanned<String>>,
    #[serde(default)]
    crls: Vec<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    tls_name: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    log_key: Option<Spanned<String>>,
    directory: Option<Spanned<String>>,
    directory_ca: Option<Spanned<String>>,
    directory_key: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    witness_log: Option<Spanned<bool>>,
    witness: Option<Spanned<bool>>,
    receipts: Option<Spanned<bool>>,
}

/// `[directory]`: where the shared sections come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    url: Spanned<String>,
    ca: Option<Spanned<String>>,
    key: Spanned<String>,
    interval: Option<Spanned<String>>,
    cache: Option<Spanned<String>>,
}

/// `[trust]` of a bundle: the CAs and CRLs every gateway checks members'
/// and backends' certificates against.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    client_ca: Spanned<String>,
    #[serde(default)]
    client_crls: Vec<Spanned<String>>,
    server_ca: Spanned<String>,
    #[serde(default)]
    server_crls: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Spanned<String>,
    ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsent {
    issuer_keys: Spanned<String>,
    feed_provider: Spanned<String>,
    freshness: Option<Spanned<String>>,
    ledger: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: Option<Spanned<String>>,
    service_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExchangeLog {
    enabled: Option<bool>,
    data_dir: Option<Spanned<String>>,
    origin: Option<Spanned<String>>,
    checkpoint_interval: Option<Spanned<String>>,
    checkpoint_records: Option<Spanned<u64>>,
    witness_refresh: Option<Spanned<String>>,
    #[serde(default)]
    data_tracker_clients: Vec<Spanned<String>>,
    retain: Option<Spanned<String>>,
    archive_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    node_id: Spanned<String>,
    listen: Spanned<String>,
    identity: Spanned<String>,
    handshake_timeout: Option<Spanned<String>>,
    max_concurrent_streams: Option<Spanned<u32>>,
    // Connection limits, see `listener_settings`.
    max_header_list_size: Option<Spanned<u32>>,
    max_pending_accept_reset_streams: Option<Spanned<u32>>,
    max_local_error_reset_streams: Option<Spanned<u32>>,
    keepalive_interval: Option<Spanned<String>>,
    keepalive_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_connection_age: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    max_connections_per_address: Option<Spanned<u32>>,
    max_handshakes: Option<Spanned<u32>>,
    admin: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<String>>,
    admin_tls: Option<Spanned<bool>>,
    federation_key: Option<Spanned<String>>,
    tls: RawServerTls,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    certificate: Spanned<String>,
    private_key: Spanned<String>,
    client_ca: Option<Spanned<String>>,
    #[serde(default)]
    crls: Vec<Spanned<String>>,
    crl_grace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    certificate: Spanned<String>,
    private_key: Spanned<String>,
    server_ca: Option<Spanned<String>>,
    #[serde(default)]
    crls: Vec<Spanned<String>>,
    crl_grace: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    max_deadline: Option<Spanned<String>>,
    health_check_interval: Option<Spanned<String>>,
    health_check_timeout: Option<Spanned<String>>,
    unhealthy_threshold: Option<Spanned<u32>>,
    healthy_threshold: Option<Spanned<u32>>,
    ejection_failures: Option<Spanned<u32>>,
    ejection_time: Option<Spanned<String>>,
    max_ejection_time: Option<Spanned<String>>,
    connections_per_endpoint: Option<Spanned<u32>>,
    streams_per_connection: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: Spanned<String>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    schema: Spanned<String>,
    policies: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    /// None for a provider of a partner instance, reached through its
    /// gateways.
    endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    tls_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    providers: Spanned<Vec<Spanned<String>>>,
    descriptor: Option<Spanned<String>>,
    max_deadline: Option<Spanned<String>>,
    #[serde(default)]
    idempotent: Vec<Spanned<String>>,
}

/// `[limits]`: the gateway-wide cap, then the defaults of every member.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    gateway_concurrent_calls: Option<Spanned<i64>>,
    requests_per_second: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
    concurrent_calls: Option<Spanned<i64>>,
    max_message_bytes: Option<Spanned<i64>>,
    #[serde(default)]
    groups: BTreeMap<Spanned<String>, RawMemberLimits>,
    #[serde(default)]
    members: BTreeMap<Spanned<String>, RawMemberLimits>,
}

/// `[limits.groups.NAME]` and `[limits.members."ID"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemberLimits {
    requests_per_second: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
    concurrent_calls: Option<Spanned<i64>>,
    max_message_bytes: Option<Spanned<i64>>,
}

const MILLISECOND: Duration = Duration::from_millis(1);

/// A configuration file being validated: turns spans into line numbers and
/// builds errors that name the file, line and key. Public so that a section
/// the gateway does not own (`[agencies]`) is read with the same errors.
#[derive(Debug)]
pub struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    dir: PathBuf,
}

impl<'a> Source<'a> {
    /// The file at `path` whose text is `text`; relative paths in it are
    /// resolved against its directory.
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            path,
            text,
            dir: path.parent().map(Path::to_owned).unwrap_or_default(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count()
            + 1
    }

    /// An error at `value`, naming `key`.
    pub fn error<T>(
        &self,
        key: impl Into<String>,
        value: &Spanned<T>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            line: Some(self.line_of(value.span().start)),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A path, relative to the file's directory unless absolute.
    pub fn path(&self, value: &Spanned<String>) -> PathBuf {
        self.dir.join(value.get_ref())
    }

    fn member(&self, key: &str, value: &Spanned<String>) -> Result<MemberId, ConfigError> {
        MemberId::parse(value.get_ref()).map_err(|error| {
            self.error(
                key,
                value,
                format!("`{}` is not a member id: {error}", value.get_ref()),
            )
        })
    }

    /// A whole number within `range`, or `default` when absent: the one
    /// check of every number the file sets.
    fn number<T: Copy + PartialOrd + fmt::Display>(
        &self,
        key: &str,
        value: Option<&Spanned<T>>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        if !range.contains(value.get_ref()) {
            return Err(self.error(
                key,
                value,
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
        Ok(*value.get_ref())
    }

    /// A duration within `range`, or `default` when absent.
    fn duration(
        &self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let duration =
            parse_duration(value.get_ref()).map_err(|message| self.error(key, value, message))?;
        if !range.contains(&duration) {
            return Err(self.error(
                key,
                value,
                format!("must be between {:?} and {:?}", range.start(), range.end()),
            ));
        }
        Ok(duration)
    }

    /// How long past its next update a CRL is still accepted: none unless
    /// set, a week at most (a CRL publisher late by more is down).
    fn crl_grace(
        &self,
        key: &str,
        value: Option<&Spanned<String>>,
    ) -> Result<Duration, ConfigError> {
        self.duration(
            key,
            value,
            Duration::ZERO,
            Duration::ZERO..=Duration::from_secs(7 * 24 * 3600),
        )
    }

    /// A socket address such as `127.0.0.1:8443`.
    pub fn socket_addr(
        &self,
        key: &str,
        value: &Spanned<String>,
    ) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse().map_err(|_| {
            self.error(
                key,
                value,
                format!(
                    "`{}` is not an address such as 127.0.0.1:8443",
                    value.get_ref()
                ),
            )
        })
    }
}

/// `"SN/COM/CBAO/kyc"` as it appears in a dotted key path.
pub fn quoted(key: &str) -> String {
    if key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_owned()
    } else {
        format!("\"{key}\"")
    }
}

/// Validates the gateway file `text` read from `path`; with `[directory]`,
/// with the global configuration `staged` in the cache, or else the one
/// in use.
pub(super) fn parse(
    path: &Path,
    text: &str,
    staged: super::Staged<'_>,
) -> Result<Config, ConfigError> {
    let source = Source::new(path, text);
    let mut raw: RawConfig = source.deserialize()?;
    let data_dir = staged
        .data_dir
        .map_or_else(|| data_dir_of(&source, &raw), Path::to_owned);
    let partners = Partners {
        data_dir: &data_dir,
        staged: staged.partner,
    };
    let Some(directory) = raw.directory.take() else {
        if let Some(trust) = &raw.trust {
            return Err(source.error(
                "trust",
                trust,
                "[trust] belongs to an instance's global configuration (a directory's \
                 bundle); a gateway's own file sets gateway.tls.client_ca and \
                 upstream.server_ca",
            ));
        }
        let global = raw.take_global();
        return validate(&source, &source, raw, global, None, Some(partners));
    };
    raw.refuse_global(&source)?;
    let directory = validate_directory(&source, &directory, &raw, &data_dir)?;
    let cache = crate::global::cache::Cache::new(&directory.cache);
    let cache_error = |message: String| ConfigError {
        file: path.to_owned(),
        line: None,
        key: "directory".to_owned(),
        message,
    };
    let installed = match staged
        .global
        .map(|staged| Ok(Some(staged.clone())))
        .unwrap_or_else(|| cache.current(&directory.verifier))
    {
        Ok(Some(installed)) => installed,
        Ok(None) => {
            return Err(cache_error(format!(
                "no global configuration yet in {}: `govbridge serve` fetches it from {} \
                 before it starts",
                directory.cache.display(),
                directory.source
            )));
        }
        Err(error) => {
            return Err(cache_error(format!(
                "the global configuration in use: {error}"
            )));
        }
    };
    let (global_path, global_text, global) =
        global_of(&installed, &directory, raw.gateway.identity.get_ref())?;
    let shared = Source::new(&global_path, &global_text);
    if let Some(ledger) = global
        .consent
        .as_ref()
        .and_then(|consent| consent.get_ref().ledger.as_ref())
    {
        return Err(shared.error(
            "consent.ledger",
            ledger,
            "where a gateway counts consent uses is its own, not the instance's: its data \
             directory (consent-ledger.sqlite) or the fleet's [store]",
        ));
    }
    let version = GlobalVersion {
        instance: installed.manifest.instance.clone(),
        version: installed.manifest.version,
        issued: installed.manifest.issued,
        expires: installed.manifest.expires,
        dir: installed.dir,
    };
    validate(
        &source,
        &shared,
        raw,
        global,
        Some((directory, version)),
        Some(partners),
    )
}

/// The shared sections of the global configuration extracted in
/// `installed`, for a gateway (`identity`) of `directory`'s instance:
/// its `global.toml`'s path and text, and the sections, every file they
/// name confined to the bundle.
fn global_of(
    installed: &crate::global::cache::Installed,
    directory: &DirectoryConfig,
    identity: &str,
) -> Result<(PathBuf, String, RawGlobal), ConfigError> {
    let path = installed.dir.join(crate::global::GLOBAL_FILE);
    let text = std::fs::read_to_string(&path).map_err(|error| ConfigError {
        file: path.clone(),
        line: None,
        key: String::new(),
        message: format!("cannot read: {error}"),
    })?;
    let shared = Source::new(&path, &text);
    let global: RawGlobal = shared.deserialize()?;
    confine(&shared, &global)?;
    if installed.manifest.instance != directory.instance {
        return Err(shared.error(
            "directory",
            &Spanned::new(0..0, ()),
            format!(
                "the global configuration in use is instance {}'s, and this gateway ({identity}) \
                 is of {}",
                installed.manifest.instance, directory.instance
            ),
        ));
    }
    Ok((path, text, global))
}

/// Where a gateway keeps what it writes: `exchange_log.data_dir`, or
/// `data` beside its file.
fn data_dir_of(source: &Source<'_>, config: &RawConfig) -> PathBuf {
    config
        .exchange_log
        .as_ref()
        .and_then(|log| log.data_dir.as_ref())
        .map_or_else(|| source.dir.join("data"), |dir| source.path(dir))
}

/// Where a gateway finds the partners it follows: their bundles' caches
/// under its data directory, one of which may be staged.
#[derive(Debug, Clone, Copy)]
struct Partners<'a> {
    data_dir: &'a Path,
    staged: Option<&'a crate::global::cache::Installed>,
}

/// The `[federation."XX"]` sections of the gateway file `text` (or of the
/// global configuration `staged.global`, or the one in use, with
/// `[directory]`) that follow a partner's directory.
pub(super) fn followed_of(
    path: &Path,
    text: &str,
    staged: super::Staged<'_>,
) -> Result<Vec<super::FollowedPartner>, ConfigError> {
    let source = Source::new(path, text);
    let mut raw: RawConfig = source.deserialize()?;
    let data_dir = staged
        .data_dir
        .map_or_else(|| data_dir_of(&source, &raw), Path::to_owned);
    let followed_in = |shared: &Source<'_>, federation: &BTreeMap<Spanned<String>, RawPartner>| {
        federation
            .iter()
            .filter(|(_, partner)| partner.directory.is_some())
            .map(|(key, partner)| followed_partner(shared, key, partner, &data_dir))
            .collect()
    };
    let Some(directory) = raw.directory.take() else {
        return followed_in(&source, &raw.federation);
    };
    let directory = validate_directory(&source, &directory, &raw, &data_dir)?;
    let installed = match staged.global {
        Some(staged) => Some(staged.clone()),
        None => crate::global::cache::Cache::new(&directory.cache)
            .current(&directory.verifier)
            .map_err(|error| ConfigError {
                file: path.to_owned(),
                line: None,
                key: "directory".to_owned(),
                message: format!("the global configuration in use: {error}"),
            })?,
    };
    // Without a global configuration yet, the start says so.
    let Some(installed) = installed else {
        return Ok(Vec::new());
    };
    let (global_path, global_text, global) =
        global_of(&installed, &directory, raw.gateway.identity.get_ref())?;
    let shared = Source::new(&global_path, &global_text);
    followed_in(&shared, &global.federation)
}

/// The gateway settings a publication is checked with: none of it is
/// read (no file it names is opened); `[trust]` of the publication, when
/// it has one, replaces the CAs.
const PUBLICATION_STUB: &str = "[gateway]\nnode_id = \"publication-check\"\n\
    listen = \"127.0.0.1:0\"\nidentity = \"XX/GOV/GOVBRIDGE/gateway\"\n\
    [gateway.tls]\ncertificate = \"-\"\nprivate_key = \"-\"\n\
    [upstream]\ncertificate = \"-\"\nprivate_key = \"-\"\n\
    [exchange_log]\nenabled = false\n";

/// A publication directory's `global.toml` (at `path`), validated as a
/// gateway would load it, with placeholder gateway settings: what
/// `directory publish` checks before it signs.
pub(super) fn parse_publication(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let shared = Source::new(path, text);
    let global: RawGlobal = shared.deserialize()?;
    confine(&shared, &global)?;
    let mut stub = PUBLICATION_STUB.to_owned();
    if global.trust.is_none() {
        stub = stub
            .replace("[gateway.tls]\n", "[gateway.tls]\nclient_ca = \"-\"\n")
            .replace("[upstream]\n", "[upstream]\nserver_ca = \"-\"\n");
    }
    let stub_path = path.with_file_name("(placeholder gateway settings)");
    let local = Source::new(&stub_path, &stub);
    let raw: RawConfig = local.deserialize()?;
    validate(&local, &shared, raw, global, None, None)
}

/// Every path a global configuration names must be a file of its bundle:
/// relative, without `..`, `.` or hidden parts (see
/// [`crate::global::is_bundle_path`]). One signature covers the bundle's
/// files; a path out of them (`/etc/ssl/certs/...`, `../v6/...`) would load
/// what it does not cover.
fn confine(shared: &Source<'_>, global: &RawGlobal) -> Result<(), ConfigError> {
    let mut paths: Vec<(String, &Spanned<String>)> = Vec::new();
    if let Some(policy) = &global.policy {
        let policy = policy.get_ref();
        paths.push(("policy.schema".to_owned(), &policy.schema));
        paths.push(("policy.policies".to_owned(), &policy.policies));
    }
    if let Some(consent) = &global.consent {
        paths.push((
            "consent.issuer_keys".to_owned(),
            &consent.get_ref().issuer_keys,
        ));
    }
    if let Some(instance) = &global.instance {
        let instance = instance.get_ref();
        paths.push((
            "instance.federation_key".to_owned(),
            &instance.federation_key,
        ));
        if let Some(log_key) = &instance.log_key {
            paths.push(("instance.log_key".to_owned(), log_key));
        }
    }
    if let Some(trust) = &global.trust {
        let trust = trust.get_ref();
        paths.push(("trust.client_ca".to_owned(), &trust.client_ca));
        paths.push(("trust.server_ca".to_owned(), &trust.server_ca));
        for (index, crl) in trust.client_crls.iter().enumerate() {
            paths.push((format!("trust.client_crls[{index}]"), crl));
        }
        for (index, crl) in trust.server_crls.iter().enumerate() {
            paths.push((format!("trust.server_crls[{index}]"), crl));
        }
    }
    for (instance, partner) in &global.federation {
        let at = format!("federation.{}", quoted(instance.get_ref()));
        let files = [
            ("ca", partner.ca.as_ref()),
            ("key", partner.key.as_ref()),
            ("log_key", partner.log_key.as_ref()),
            ("directory_ca", partner.directory_ca.as_ref()),
            ("directory_key", partner.directory_key.as_ref()),
        ];
        for (name, file) in files {
            if let Some(file) = file {
                paths.push((format!("{at}.{name}"), file));
            }
        }
        for (index, crl) in partner.crls.iter().enumerate() {
            paths.push((format!("{at}.crls[{index}]"), crl));
        }
    }
    for (name, service) in &global.services {
        if let Some(descriptor) = &service.descriptor {
            paths.push((
                format!("services.{}.descriptor", quoted(name.get_ref())),
                descriptor,
            ));
        }
    }
    match paths
        .into_iter()
        .find(|(_, path)| !crate::global::is_bundle_path(path.get_ref()))
    {
        Some((key, path)) => Err(shared.error(
            key,
            path,
            format!(
                "`{}` is not a file of the global configuration: a path here is relative to \
                 global.toml, without `..`, `.` or hidden parts, so that the bundle's signature \
                 covers what it names",
                path.get_ref()
            ),
        )),
        None => Ok(()),
    }
}

/// The `[directory]` of the gateway file at `path`, if it has one: where
/// its global configuration comes from, read before the rest is (the rest
/// needs the bundle).
pub(super) fn directory_of(
    path: &Path,
    text: &str,
) -> Result<Option<DirectoryConfig>, ConfigError> {
    let source = Source::new(path, text);
    let raw: RawConfig = source.deserialize()?;
    raw.directory
        .as_ref()
        .map(|directory| validate_directory(&source, directory, &raw, &data_dir_of(&source, &raw)))
        .transpose()
}

impl RawConfig {
    /// The shared sections, from this file.
    fn take_global(&mut self) -> RawGlobal {
        RawGlobal {
            members: std::mem::take(&mut self.members),
            providers: std::mem::take(&mut self.providers),
            services: std::mem::take(&mut self.services),
            policy: self.policy.take(),
            purposes: std::mem::take(&mut self.purposes),
            consent: self.consent.take(),
            limits: self.limits.take(),
            trust: self.trust.take(),
            federation: std::mem::take(&mut self.federation),
            instance: self.instance.take(),
        }
    }

    /// With `[directory]`, the shared sections come from the bundle only.
    fn refuse_global(&self, source: &Source<'_>) -> Result<(), ConfigError> {
        let first = |keys: Option<&Spanned<String>>| keys.map(|key| key.span());
        let present = [
            ("members", first(self.members.keys().next())),
            ("providers", first(self.providers.keys().next())),
            ("services", first(self.services.keys().next())),
            ("policy", self.policy.as_ref().map(Spanned::span)),
            ("purposes", first(self.purposes.keys().next())),
            ("consent", self.consent.as_ref().map(Spanned::span)),
            ("limits", self.limits.as_ref().map(Spanned::span)),
            ("trust", self.trust.as_ref().map(Spanned::span)),
            ("federation", first(self.federation.keys().next())),
            ("instance", self.instance.as_ref().map(Spanned::span)),
        ];
        if let Some((section, span)) = present
            .into_iter()
            .find_map(|(section, span)| Some((section, span?)))
        {
            return Err(source.error(
                section,
                &Spanned::new(span, ()),
                format!(
                    "[{section}] comes from the instance's global configuration, since this \
                     file has [directory]: publish it there, and remove it here"
                ),
            ));
        }
        Ok(())
    }
}

/// `[directory] url` naming the fleet's database rather than an HTTPS
/// server.
const STORE_SOURCE: &str = "store";

/// `[directory]`, checked; its cache, unless set, in `data_dir` (the running
/// gateway's: the file's own takes effect at restart).
fn validate_directory(
    source: &Source<'_>,
    raw: &RawDirectory,
    config: &RawConfig,
    data_dir: &Path,
) -> Result<DirectoryConfig, ConfigError> {
    let source_of = if raw.url.get_ref() == STORE_SOURCE {
        if let Some(ca) = &raw.ca {
            return Err(source.error(
                "directory.ca",
                ca,
                "`ca` is the directory's HTTPS server's CA; with url = \"store\" the bundle \
                 comes from [store] (whose own `ca` applies): remove it",
            ));
        }
        let Some(store) = &config.store else {
            return Err(source.error(
                "directory.url",
                &raw.url,
                "url = \"store\" reads the global configuration from the fleet's [store] \
                 database, and this file has no [store]",
            ));
        };
        DirectorySource::Store(Box::new(store_config(source, store)?))
    } else {
        let url: http::Uri = raw
            .url
            .get_ref()
            .parse()
            .ok()
            .filter(|url: &http::Uri| url.scheme_str() == Some("https") && url.host().is_some())
            .ok_or_else(|| {
                source.error(
                    "directory.url",
                    &raw.url,
                    format!(
                        "`{}` is neither an https:// URL such as \
                         https://directory.gov.sn/bundle.json nor \"store\" (the fleet's \
                         database)",
                        raw.url.get_ref()
                    ),
                )
            })?;
        let Some(ca) = &raw.ca else {
            return Err(source.error(
                "directory.ca",
                &raw.url,
                "missing key: the CA certificates the directory's HTTPS certificate chains to",
            ));
        };
        // Read now, as the key below is: a gateway that could not trust
        // its directory would find out only at its first fetch.
        let ca_path = source.path(ca);
        crate::identity::tls::root_store(&ca_path)
            .map_err(|error| source.error("directory.ca", ca, error.to_string()))?;
        DirectorySource::Https { url, ca: ca_path }
    };
    let key_path = source.path(&raw.key);
    let verifier = crate::note::Verifier::read(&key_path)
        .map_err(|message| source.error("directory.key", &raw.key, message))?;
    let interval = source.duration(
        "directory.interval",
        raw.interval.as_ref(),
        Duration::from_secs(60),
        Duration::from_millis(100)..=Duration::from_secs(24 * 3600),
    )?;
    let cache = match &raw.cache {
        Some(cache) => source.path(cache),
        None => data_dir.join("directory"),
    };
    let instance = source
        .member("gateway.identity", &config.gateway.identity)?
        .instance()
        .to_owned();
    Ok(DirectoryConfig {
        source: source_of,
        key: key_path,
        verifier,
        interval,
        cache,
        instance,
    })
}

impl Source<'_> {
    /// The file deserialized into `T`; a syntax error or a wrong or missing
    /// key names its line and key.
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let source = self;
        let syntax_error = |error: toml::de::Error| ConfigError {
            file: source.path.to_owned(),
            line: error.span().map(|span| source.line_of(span.start)),
            key: String::new(),
            message: error.message().trim().to_owned(),
        };
        let deserializer = toml::de::Deserializer::parse(source.text).map_err(syntax_error)?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let offset = error.inner().span().map(|span| span.start);
            let path = key_path(error.path(), source.text, offset);
            let inner = error.into_inner();
            let message = inner.message().trim().to_owned();
            let line = inner.span().map(|span| source.line_of(span.start));
            // serde reports a missing key against its table; name the key itself.
            let (key, message) = match message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.strip_suffix('`'))
            {
                Some(field) if path == "." => (field.to_owned(), "missing key".to_owned()),
                Some(field) => (format!("{path}.{field}"), "missing key".to_owned()),
                None if path == "." => (String::new(), message),
                None => (path, message),
            };
            ConfigError {
                file: source.path.to_owned(),
                line,
                key,
                message,
            }
        })
    }
}

/// The key `path` names, as the file writes it (`members."SN/COM/CBAO/kyc".name`).
///
/// A wrong type inside `Spanned` names serde_spanned's private field: the
/// key is its parent. A key serde could not name (`?`: the keys of the
/// tables of members, providers, services and limits are `Spanned`, which
/// serde_path_to_error does not see) is found in the file: the key of its
/// table that comes last before the end of the error's line (at `offset`).
fn key_path(path: &serde_path_to_error::Path, text: &str, offset: Option<usize>) -> String {
    use serde_path_to_error::Segment;
    use toml::de::{DeArray, DeTable, DeValue};
    let document = DeTable::parse(text).ok();
    // The end of the error's line: a table's error may be at its header,
    // before its key.
    let before = offset.map(|at| {
        text.get(at..)
            .and_then(|rest| rest.find('\n'))
            .map_or(text.len(), |end| at + end)
    });
    let mut table = document.as_ref().map(|document| document.get_ref());
    let mut array = None;
    let mut named = String::new();
    for segment in path.iter() {
        let key = match segment {
            Segment::Map { key } if key.starts_with("$__serde_spanned") => continue,
            Segment::Seq { index } => {
                named.push_str(&format!("[{index}]"));
                let item = array.and_then(|array: &DeArray<'_>| array.get(*index));
                (table, array) = descend(item.map(toml::Spanned::get_ref));
                continue;
            }
            Segment::Map { key } => {
                table.and_then(|table| table.iter().find(|(name, _)| name.get_ref() == key))
            }
            // The entry whose value holds the error (an inline table),
            // else the last before its line (a table's header).
            Segment::Enum { .. } | Segment::Unknown => table.and_then(|table| {
                let holding = offset
                    .and_then(|at| table.iter().find(|(_, value)| value.span().contains(&at)));
                holding.or_else(|| {
                    table
                        .iter()
                        .filter(|(name, _)| before.is_some_and(|end| name.span().start <= end))
                        .max_by_key(|(name, _)| name.span().start)
                })
            }),
        };
        if !named.is_empty() {
            named.push('.');
        }
        match key {
            Some((name, value)) => {
                named.push_str(&quoted(name.get_ref()));
                (table, array) = descend(Some(value.get_ref()));
            }
            None => {
                named.push_str(&segment.to_string());
                (table, array) = (None, None);
            }
        }
    }
    /// The table or array `value` is, to look into.
    fn descend<'a, 'i>(
        value: Option<&'a DeValue<'i>>,
    ) -> (Option<&'a DeTable<'i>>, Option<&'a DeArray<'i>>) {
        match value {
            Some(DeValue::Table(table)) => (Some(table), None),
            Some(DeValue::Array(array)) => (None, Some(array)),
            _ => (None, None),
        }
    }
    if named.is_empty() {
        ".".to_owned()
    } else {
        named
    }
}

/// `gateway.admin`: an address anyone who reaches it could reload the
/// gateway from, so off loopback only with a token to check.
fn admin_endpoint(
    source: &Source<'_>,
    gateway: &RawGateway,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(admin) = &gateway.admin else {
        if let Some(file) = &gateway.admin_token_file {
            return Err(source.error(
                "gateway.admin_token_file",
                file,
                "set without gateway.admin: there is no admin endpoint to protect",
            ));
        }
        if let Some(tls) = gateway.admin_tls.as_ref().filter(|tls| *tls.get_ref()) {
            return Err(source.error(
                "gateway.admin_tls",
                tls,
                "set without gateway.admin: there is no admin endpoint to serve over TLS",
            ));
        }
        return Ok(None);
    };
    let address = source.socket_addr("gateway.admin", admin)?;
    if !address.ip().is_loopback() && gateway.admin_token_file.is_none() {
        return Err(source.error(
            "gateway.admin",
            admin,
            format!(
                "`{address}` is not a loopback address: whoever reaches the admin endpoint \
                 could reload the gateway and read its member registry; set \
                 gateway.admin_token_file (a bearer token operators send) or bind it to \
                 127.0.0.1"
            ),
        ));
    }
    let listen = source.socket_addr("gateway.listen", &gateway.listen)?;
    // An unspecified address takes the port on every address of its
    // family, and `[::]` (dual-stack, as Linux binds it) on IPv4's too.
    let covers = |wide: std::net::IpAddr, other: std::net::IpAddr| {
        wide.is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
    };
    if address.port() != 0
        && address.port() == listen.port()
        && (address.ip() == listen.ip()
            || covers(address.ip(), listen.ip())
            || covers(listen.ip(), address.ip()))
    {
        return Err(source.error(
            "gateway.admin",
            admin,
            format!(
                "`{address}` is where gateway.listen (`{listen}`) takes partners' calls: give \
                 the admin endpoint a port of its own"
            ),
        ));
    }
    Ok(Some(address))
}

/// The whole configuration: the gateway's own sections from `source`, the
/// shared ones (`global`) from `shared` (the same file, or the bundle's
/// `global.toml` when `directory` says where it came from).
/// `publication`: a global configuration checked before it is signed,
/// with placeholder gateway settings (what is each gateway's own, its
/// federation key, is not required).
fn validate(
    source: &Source<'_>,
    shared: &Source<'_>,
    raw: RawConfig,
    global: RawGlobal,
    directory: Option<(DirectoryConfig, GlobalVersion)>,
    // None for a publication, which no gateway runs yet.
    partners: Option<Partners<'_>>,
) -> Result<Config, ConfigError> {
    let trust = Trust::of(source, shared, &raw, global.trust.as_ref())?;
    let gateway = &raw.gateway;
    let listener = listener_settings(source, gateway)?;
    // It names the node in its log's origin (`govbridge/<node_id>`, a key
    // name: no whitespace or `+`), its records, the fleet's tables and its
    // backups' manifests (one line each).
    let node_id = gateway.node_id.get_ref();
    if node_id.is_empty()
        || node_id.len() > 64
        || node_id.contains(|c: char| c.is_whitespace() || c.is_control() || c == '+')
    {
        return Err(source.error(
            "gateway.node_id",
            &gateway.node_id,
            "must be 1 to 64 bytes without whitespace, control characters or `+`, e.g. \
             `gw-dakar-1` (it names the exchange log, `govbridge/<node_id>`)",
        ));
    }
    let mut gateway_config = GatewayConfig {
        node_id: gateway.node_id.get_ref().clone(),
        listen: source.socket_addr("gateway.listen", &gateway.listen)?,
        admin: admin_endpoint(source, gateway)?,
        admin_token_file: gateway
            .admin_token_file
            .as_ref()
            .map(|file| source.path(file)),
        admin_tls: gateway.admin_tls.as_ref().is_some_and(|tls| *tls.get_ref()),
        identity: source.member("gateway.identity", &gateway.identity)?,
        tls: ServerTls {
            certificate: source.path(&gateway.tls.certificate),
            private_key: source.path(&gateway.tls.private_key),
            client_ca: trust.client_ca,
            crls: trust.client_crls,
            crl_grace: source.crl_grace("gateway.tls.crl_grace", gateway.tls.crl_grace.as_ref())?,
            partners: Vec::new(),
        },
        listener,
    };

    let upstream = UpstreamConfig {
        tls: ClientTls {
            server_ca: trust.server_ca,
            certificate: source.path(&raw.upstream.certificate),
            private_key: source.path(&raw.upstream.private_key),
            crls: trust.server_crls,
            crl_grace: source.crl_grace("upstream.crl_grace", raw.upstream.crl_grace.as_ref())?,
        },
        connect_timeout: source.duration(
            "upstream.connect_timeout",
            raw.upstream.connect_timeout.as_ref(),
            Duration::from_secs(1),
            MILLISECOND..=Duration::from_secs(60),
        )?,
        max_deadline: source.duration(
            "upstream.max_deadline",
            raw.upstream.max_deadline.as_ref(),
            Duration::from_secs(60),
            MILLISECOND..=Duration::from_secs(24 * 3600),
        )?,
        pool: pool_settings(source, &raw.upstream)?,
    };

    let mut members = BTreeMap::new();
    for (key, member) in &global.members {
        let path = format!("members.{}", quoted(key.get_ref()));
        let id = shared.member(&path, key)?;
        if member.name.get_ref().trim().is_empty() {
            return Err(shared.error(format!("{path}.name"), &member.name, "must not be empty"));
        }
        if members.contains_key(&id) {
            return Err(shared.error(&path, key, format!("member {id} is registered twice")));
        }
        let mut groups = Vec::new();
        for (index, group) in member.groups.iter().enumerate() {
            if !is_group_name(group.get_ref()) {
                return Err(shared.error(
                    format!("{path}.groups[{index}]"),
                    group,
                    format!(
                        "`{}` is not a group name: 1 to 64 of a-z, 0-9 and '-'",
                        group.get_ref()
                    ),
                ));
            }
            groups.push(group.get_ref().clone());
        }
        members.insert(
            id.clone(),
            Member {
                id,
                name: member.name.get_ref().clone(),
                groups,
            },
        );
    }

    let federation = validate_federation(source, shared, &global.federation, gateway, partners)?;
    if let Some(instance) = &global.instance {
        validate_instance(shared, instance.get_ref())?;
    }
    gateway_config.tls.partners = federation
        .partners
        .values()
        .map(|partner| crate::identity::tls::PartnerTrust {
            instance: partner.instance.clone(),
            ca: partner.ca.clone(),
            crls: partner.crls.clone(),
        })
        .collect();
    let mut providers = BTreeMap::new();
    for (key, provider) in &global.providers {
        let path = format!("providers.{}", quoted(key.get_ref()));
        let id = shared.member(&path, key)?;
        if !members.contains_key(&id) {
            return Err(shared.error(
                &path,
                key,
                format!("provider {id} is not a registered member (add it under [members])"),
            ));
        }
        // A partner's provider is reached through the partner's gateways,
        // which its section names. One followed from its directory has
        // none to name in a publication: each gateway fetches them.
        let through = match federation.partners.get(id.instance()) {
            Some(partner) => Some((
                partner.endpoints.clone(),
                partner.gateway.clone(),
                partner.instance.clone(),
            )),
            // Not learned yet (or a publication): no gateway to reach; its
            // calls are refused until the partner's configuration is.
            None if federation.followed.contains_key(id.instance()) => {
                Some((Vec::new(), id.clone(), id.instance().to_owned()))
            }
            None => None,
        };
        if let Some((endpoints, presents, instance)) = through {
            if let Some(tls_name) = &provider.tls_name {
                return Err(shared.error(
                    format!("{path}.tls_name"),
                    tls_name,
                    format!(
                        "{id} is a member of partner instance {instance}: calls reach it \
                         through its gateways, under their names; remove its tls_name"
                    ),
                ));
            }
            if let Some(endpoints) = &provider.endpoints {
                return Err(shared.error(
                    format!("{path}.endpoints"),
                    endpoints,
                    format!(
                        "{id} is a member of partner instance {instance}: calls reach it \
                         through federation.{instance}.endpoints, its gateways (or those its \
                         directory publishes); remove its own endpoints"
                    ),
                ));
            }
            if providers.contains_key(&id) {
                return Err(shared.error(&path, key, format!("provider {id} is configured twice")));
            }
            providers.insert(
                id.clone(),
                Provider {
                    id,
                    endpoints,
                    presents,
                    partner: Some(instance),
                },
            );
            continue;
        }
        let Some(endpoints) = provider
            .endpoints
            .as_ref()
            .filter(|endpoints| !endpoints.get_ref().is_empty())
        else {
            return Err(match &provider.endpoints {
                Some(endpoints) => shared.error(
                    format!("{path}.endpoints"),
                    endpoints,
                    "a provider needs at least one endpoint",
                ),
                None => shared.error(format!("{path}.endpoints"), key, "missing key"),
            });
        };
        let endpoints = endpoints_of(shared, &path, endpoints, provider.tls_name.as_ref())?;
        if providers.contains_key(&id) {
            return Err(shared.error(&path, key, format!("provider {id} is configured twice")));
        }
        providers.insert(
            id.clone(),
            Provider {
                presents: id.clone(),
                id,
                endpoints,
                partner: None,
            },
        );
    }

    let catalog = catalog_of(shared, &global.services)?;
    let mut services = BTreeMap::new();
    for (key, service) in &global.services {
        let name = key.get_ref();
        let path = format!("services.{}", quoted(name));
        if crate::catalog::LOCAL_SERVICES.contains(&name.as_str()) {
            return Err(shared.error(
                &path,
                key,
                format!("`{name}` is served by the gateway itself and cannot be published"),
            ));
        }
        if !is_service_name(name) {
            return Err(shared.error(
                &path,
                key,
                format!("`{name}` is not a full gRPC service name such as `pkg.v1.Service`"),
            ));
        }
        if service.providers.get_ref().is_empty() {
            return Err(shared.error(
                format!("{path}.providers"),
                &service.providers,
                "a service needs at least one provider",
            ));
        }
        let mut service_providers = Vec::new();
        for (index, provider) in service.providers.get_ref().iter().enumerate() {
            let key = format!("{path}.providers[{index}]");
            let id = shared.member(&key, provider)?;
            if !providers.contains_key(&id) {
                let known: Vec<String> = providers.keys().map(ToString::to_string).collect();
                return Err(shared.error(
                    &key,
                    provider,
                    format!("unknown provider {id} (known: {})", known.join(", ")),
                ));
            }
            if service_providers.contains(&id) {
                return Err(shared.error(&key, provider, format!("provider {id} is listed twice")));
            }
            service_providers.push(id);
        }
        let max_deadline = service
            .max_deadline
            .as_ref()
            .map(|value| {
                shared.duration(
                    &format!("{path}.max_deadline"),
                    Some(value),
                    Duration::ZERO,
                    MILLISECOND..=Duration::from_secs(24 * 3600),
                )
            })
            .transpose()?;
        if !catalog.declares(name) {
            let (key, value) = match &service.descriptor {
                Some(descriptor) => (format!("{path}.descriptor"), descriptor),
                None => (path.clone(), key),
            };
            return Err(shared.error(
                key,
                value,
                format!(
                    "no descriptor declares {name}: give the service a `descriptor` (an encoded \
                     descriptor set, as `protoc --descriptor_set_out --include_imports` or \
                     `buf build` writes it) that does"
                ),
            ));
        }
        let idempotent = idempotent_methods(shared, &catalog, &path, name, &service.idempotent)?;
        services.insert(
            name.clone(),
            PublishedService {
                name: name.clone(),
                providers: service_providers,
                max_deadline,
                idempotent,
                descriptor: service.descriptor.as_ref().map(|file| shared.path(file)),
            },
        );
    }

    let mut purposes = BTreeMap::new();
    for (code, description) in &global.purposes {
        let path = format!("purposes.{}", quoted(code.get_ref()));
        if !is_purpose_code(code.get_ref()) {
            return Err(shared.error(
                &path,
                code,
                format!(
                    "`{}` is not a purpose code: 1 to 64 of A-Z, 0-9, '-' and '_'",
                    code.get_ref()
                ),
            ));
        }
        purposes.insert(code.get_ref().clone(), description.get_ref().clone());
    }
    let Some(policy) = global.policy.as_ref().map(Spanned::get_ref) else {
        return Err(ConfigError {
            file: shared.path.to_owned(),
            line: None,
            key: "policy".to_owned(),
            message: "missing section: [policy] names the schema and the policies".to_owned(),
        });
    };
    let policy = PolicyConfig {
        schema: shared.path(&policy.schema),
        policies: shared.path(&policy.policies),
    };

    let exchange_log = validate_exchange_log(source, raw.exchange_log.as_ref(), &gateway_config)?;
    // A portal no member is would never be recognised: its Data Tracker
    // calls all refused, with nothing to say why at start. Refused where
    // the members are this file's; with a directory, whose bundle may
    // revoke the portal, said only: a bundle is not refused for it (its
    // CRLs and revocations would wait).
    let clients = raw
        .exchange_log
        .iter()
        .flat_map(|log| &log.data_tracker_clients);
    for (index, (client, id)) in clients.zip(&exchange_log.data_tracker_clients).enumerate() {
        if members.contains_key(id) {
            continue;
        }
        let key = format!("exchange_log.data_tracker_clients[{index}]");
        if directory.is_some() {
            tracing::warn!(key, client = %id, "a Data Tracker client is not a member of the global configuration: its calls are refused");
        } else {
            return Err(source.error(
                key,
                client,
                format!("{id} is not a member (no [members.\"{id}\"])"),
            ));
        }
    }
    let telemetry = validate_telemetry(source, raw.telemetry.as_ref())?;
    let consent = global
        .consent
        .as_ref()
        .map(|consent| validate_consent(shared, consent.get_ref(), &providers, &exchange_log))
        .transpose()?;
    let limits = validate_limits(
        shared,
        global.limits.as_ref().map(Spanned::get_ref),
        &members,
    )?;
    let store = raw
        .store
        .as_ref()
        .map(|store| store_config(source, store))
        .transpose()?;
    if let (Some(store), Some(log)) = (&raw.store, &raw.exchange_log)
        && exchange_log.enabled
    {
        fleet_log(source, store, log)?;
    } else if let Some(store) = raw.store.as_ref().filter(|_| exchange_log.enabled) {
        return Err(source.error(
            "store.url",
            &store.url,
            "the nodes of a fleet write one exchange log: set the same exchange_log.origin \
             on every node",
        ));
    }

    Ok(Config {
        source: source.path.to_owned(),
        gateway: gateway_config,
        upstream,
        members,
        providers,
        services,
        policy,
        purposes,
        exchange_log,
        telemetry,
        consent,
        limits,
        store,
        catalog,
        directory: directory.as_ref().map(|(directory, _)| directory.clone()),
        global: directory.map(|(_, version)| version),
        federation,
    })
}

/// `PATH.endpoints`, each `https://host:port`, its certificate naming
/// `tls_name` when given.
fn endpoints_of(
    shared: &Source<'_>,
    path: &str,
    endpoints: &Spanned<Vec<Spanned<String>>>,
    tls_name: Option<&Spanned<String>>,
) -> Result<Vec<super::Endpoint>, ConfigError> {
    if let Some(name) = tls_name {
        rustls::pki_types::ServerName::try_from(name.get_ref().as_str()).map_err(|_| {
            shared.error(
                format!("{path}.tls_name"),
                name,
                format!("`{}` is not a valid TLS server name", name.get_ref()),
            )
        })?;
    }
    let tls_name = tls_name.map(|name| name.get_ref().as_str());
    let mut parsed: Vec<super::Endpoint> = Vec::new();
    for (index, endpoint) in endpoints.get_ref().iter().enumerate() {
        let key = || format!("{path}.endpoints[{index}]");
        let next = parse_endpoint(endpoint.get_ref(), tls_name)
            .map_err(|message| shared.error(key(), endpoint, message))?;
        // Two slots for one backend would split its health and load, and
        // a retry "on another endpoint" could land on it again.
        if let Some(first) = parsed
            .iter()
            .position(|seen| seen.address == next.address && seen.server_name == next.server_name)
        {
            return Err(shared.error(
                key(),
                endpoint,
                format!(
                    "`{}` is listed twice (endpoints[{first}] is the same backend)",
                    endpoint.get_ref()
                ),
            ));
        }
        parsed.push(next);
    }
    Ok(parsed)
}

/// `[instance]`: a member id for the gateways, their endpoints, readable
/// verifier keys.
fn validate_instance(shared: &Source<'_>, instance: &RawInstance) -> Result<(), ConfigError> {
    shared.member("instance.gateway", &instance.gateway)?;
    if instance.endpoints.get_ref().is_empty() {
        return Err(shared.error(
            "instance.endpoints",
            &instance.endpoints,
            "partners need at least one gateway endpoint",
        ));
    }
    endpoints_of(
        shared,
        "instance",
        &instance.endpoints,
        instance.tls_name.as_ref(),
    )?;
    for (key, file) in std::iter::once(("instance.federation_key", &instance.federation_key)).chain(
        instance
            .log_key
            .as_ref()
            .map(|file| ("instance.log_key", file)),
    ) {
        crate::note::Verifier::read(&shared.path(file))
            .map_err(|message| shared.error(key, file, message))?;
    }
    Ok(())
}

/// `[federation."XX"]` (shared) and `gateway.federation_key` (this
/// gateway's own). A partner followed from its directory is read from the
/// gateway's cache of its bundles (`partners`; a publication has none).
fn validate_federation(
    source: &Source<'_>,
    shared: &Source<'_>,
    raw: &BTreeMap<Spanned<String>, RawPartner>,
    gateway: &RawGateway,
    caches: Option<Partners<'_>>,
) -> Result<super::FederationConfig, ConfigError> {
    let own = source.member("gateway.identity", &gateway.identity)?;
    let mut partners = BTreeMap::new();
    let mut followed = BTreeMap::new();
    for (key, partner) in raw {
        let instance = key.get_ref();
        let path = format!("federation.{}", quoted(instance));
        // Member ids are upper case, and the name is a directory's under
        // the data directory.
        if !crate::global::is_instance(instance) {
            return Err(shared.error(
                &path,
                key,
                format!(
                    "{instance:?} is not an instance name: 1 to 16 of A-Z, 0-9 and '-' (as the \
                     first part of its members' ids)"
                ),
            ));
        }
        if instance == own.instance() {
            return Err(shared.error(
                &path,
                key,
                format!(
                    "{instance} is this gateway's own instance (gateway.identity), not a partner"
                ),
            ));
        }
        let written = if partner.directory.is_some() {
            let follow = followed_partner(
                shared,
                key,
                partner,
                caches.map_or(Path::new(""), |caches| caches.data_dir),
            )?;
            // Nothing learned (a publication, nothing fetched yet, or a
            // cache that cannot be used): the partner's calls are refused
            // until it is.
            let learned = match caches {
                Some(caches) => learned_partner(shared, key, partner, &follow, caches)?,
                None => Learned::Nothing,
            };
            let (follow, learned) = match learned {
                Learned::Partner(learned) => (follow, Some(*learned)),
                Learned::Nothing => (follow, None),
                Learned::Unusable(why) => {
                    let follow = super::FollowedPartner {
                        unusable_cache: Some(why),
                        ..follow
                    };
                    (follow, None)
                }
            };
            followed.insert(instance.clone(), follow);
            let Some(learned) = learned else {
                continue;
            };
            learned
        } else {
            written_partner(shared, key, partner)?
        };
        // A receipt is checked under the partner's log key.
        if let Some(receipts) = partner.receipts.as_ref().filter(|value| *value.get_ref())
            && written.log_key.is_none()
        {
            return Err(shared.error(
                format!("{path}.receipts"),
                receipts,
                if partner.directory.is_some() {
                    format!(
                        "receipts are checked under the partner's log key, and {instance}'s \
                         configuration publishes none ([instance] log_key)"
                    )
                } else {
                    "receipts are checked under the partner's log key: give its file in \
                     `log_key`"
                        .to_owned()
                },
            ));
        }
        partners.insert(
            instance.clone(),
            super::Partner {
                witness: partner
                    .witness
                    .as_ref()
                    .is_some_and(|value| *value.get_ref()),
                receipts: partner
                    .receipts
                    .as_ref()
                    .is_some_and(|value| *value.get_ref()),
                ..written
            },
        );
    }
    let key = match (
        &gateway.federation_key,
        partners.is_empty() && followed.is_empty(),
    ) {
        (Some(file), _) => {
            let path = source.path(file);
            crate::note::SigningKey::read(&path)
                .map_err(|message| source.error("gateway.federation_key", file, message))?;
            Some(path)
        }
        (None, true) => None,
        // Each gateway's own key: a publication names none.
        (None, false) if caches.is_none() => None,
        (None, false) => {
            return Err(source.error(
                "gateway.federation_key",
                &gateway.identity,
                "missing key: with partner instances ([federation]), the key this gateway \
                 signs its assertions with (a PEM Ed25519 key, its verifier key beside it as \
                 .pub: `govbridge directory keygen` writes both)",
            ));
        }
    };
    Ok(super::FederationConfig {
        key,
        partners,
        followed,
    })
}

/// A `[federation."XX"]` written out: its CA, CRLs, gateways and keys.
fn written_partner(
    shared: &Source<'_>,
    key: &Spanned<String>,
    partner: &RawPartner,
) -> Result<super::Partner, ConfigError> {
    let instance = key.get_ref();
    let path = format!("federation.{}", quoted(instance));
    let followed_only = [
        (
            "directory_ca",
            partner.directory_ca.as_ref().map(Spanned::span),
        ),
        (
            "directory_key",
            partner.directory_key.as_ref().map(Spanned::span),
        ),
        ("interval", partner.interval.as_ref().map(Spanned::span)),
        (
            "witness_log",
            partner.witness_log.as_ref().map(Spanned::span),
        ),
    ];
    if let Some((name, span)) = followed_only
        .into_iter()
        .find_map(|(name, span)| Some((name, span?)))
    {
        return Err(shared.error(
            format!("{path}.{name}"),
            &Spanned::new(span, ()),
            format!(
                "`{name}` is for a partner followed from its directory, and this section has \
                 no `directory`"
            ),
        ));
    }
    let required = |name: &str, value: Option<&Spanned<String>>| {
        value.cloned().ok_or_else(|| {
            shared.error(
                format!("{path}.{name}"),
                key,
                "missing key (or `directory`, `directory_ca` and `directory_key`, to learn the \
                 partner from its own directory)",
            )
        })
    };
    let (ca, gateway, key_file) = (
        required("ca", partner.ca.as_ref())?,
        required("gateway", partner.gateway.as_ref())?,
        required("key", partner.key.as_ref())?,
    );
    let Some(endpoints) = &partner.endpoints else {
        return Err(shared.error(format!("{path}.endpoints"), key, "missing key"));
    };
    let gateway_id = shared.member(&format!("{path}.gateway"), &gateway)?;
    if gateway_id.instance() != instance {
        return Err(shared.error(
            format!("{path}.gateway"),
            &gateway,
            format!("{gateway_id} is not of instance {instance}"),
        ));
    }
    if endpoints.get_ref().is_empty() {
        return Err(shared.error(
            format!("{path}.endpoints"),
            endpoints,
            "a partner needs at least one gateway endpoint",
        ));
    }
    let endpoints = endpoints_of(shared, &path, endpoints, partner.tls_name.as_ref())?;
    let key_path = shared.path(&key_file);
    let verifier = crate::note::Verifier::read(&key_path)
        .map_err(|message| shared.error(format!("{path}.key"), &key_file, message))?;
    let log_key = partner
        .log_key
        .as_ref()
        .map(|file| {
            let log_key = shared.path(file);
            crate::note::Verifier::read(&log_key)
                .map(|verifier| (verifier, log_key))
                .map_err(|message| shared.error(format!("{path}.log_key"), file, message))
        })
        .transpose()?;
    Ok(super::Partner {
        instance: instance.clone(),
        ca: shared.path(&ca),
        crls: partner.crls.iter().map(|crl| shared.path(crl)).collect(),
        gateway: gateway_id,
        endpoints,
        key: verifier,
        key_file: key_path,
        log_key,
        witness: false,
        receipts: false,
        published: None,
    })
}

/// A `[federation."XX"]` that follows the partner's directory: where, and
/// under which key.
fn followed_partner(
    shared: &Source<'_>,
    key: &Spanned<String>,
    partner: &RawPartner,
    data_dir: &Path,
) -> Result<super::FollowedPartner, ConfigError> {
    let instance = key.get_ref();
    let path = format!("federation.{}", quoted(instance));
    // What the partner's configuration says, not this file.
    let written = [
        ("ca", partner.ca.as_ref().map(Spanned::span)),
        ("crls", partner.crls.first().map(Spanned::span)),
        ("gateway", partner.gateway.as_ref().map(Spanned::span)),
        ("endpoints", partner.endpoints.as_ref().map(Spanned::span)),
        ("tls_name", partner.tls_name.as_ref().map(Spanned::span)),
        ("key", partner.key.as_ref().map(Spanned::span)),
        ("log_key", partner.log_key.as_ref().map(Spanned::span)),
    ];
    if let Some((name, span)) = written
        .into_iter()
        .find_map(|(name, span)| Some((name, span?)))
    {
        return Err(shared.error(
            format!("{path}.{name}"),
            &Spanned::new(span, ()),
            format!(
                "with `directory`, `{name}` is what {instance}'s own configuration publishes \
                 (its [instance] and [trust]): remove it here"
            ),
        ));
    }
    let Some(directory) = &partner.directory else {
        return Err(shared.error(format!("{path}.directory"), key, "missing key"));
    };
    let url: http::Uri = directory
        .get_ref()
        .parse()
        .ok()
        .filter(|url: &http::Uri| url.scheme_str() == Some("https") && url.host().is_some())
        .ok_or_else(|| {
            shared.error(
                format!("{path}.directory"),
                directory,
                format!(
                    "`{}` is not an https:// URL such as https://directory.gov.az/bundle.json",
                    directory.get_ref()
                ),
            )
        })?;
    let Some(ca) = &partner.directory_ca else {
        return Err(shared.error(
            format!("{path}.directory_ca"),
            directory,
            "missing key: the CA certificates the partner's directory's HTTPS certificate \
             chains to",
        ));
    };
    let Some(verifier_file) = &partner.directory_key else {
        return Err(shared.error(
            format!("{path}.directory_key"),
            directory,
            "missing key: the partner's directory's verifier key, obtained from it out of band \
             and checked by fingerprint",
        ));
    };
    let key_file = shared.path(verifier_file);
    let verifier = crate::note::Verifier::read(&key_file)
        .map_err(|message| shared.error(format!("{path}.directory_key"), verifier_file, message))?;
    let interval = shared.duration(
        &format!("{path}.interval"),
        partner.interval.as_ref(),
        Duration::from_secs(60),
        Duration::from_millis(100)..=Duration::from_secs(24 * 3600),
    )?;
    // One cache per key: bundles signed by a key the section no longer
    // names stay out of the way (never run; the version they reached is
    // the floor of the new key's, see `Cache::floor_beside`).
    // Named by the key's id: its name is the partner's to choose, and no
    // path of this gateway's is.
    let cache = data_dir
        .join(super::PARTNERS_DIR)
        .join(instance)
        .join(verifier.id_hex());
    Ok(super::FollowedPartner {
        instance: instance.clone(),
        url,
        ca: shared.path(ca),
        verifier,
        key_file,
        interval,
        cache,
        witness_log: partner
            .witness_log
            .as_ref()
            .is_some_and(|value| *value.get_ref()),
        unusable_cache: None,
    })
}

/// What is known of a followed partner from the gateway's cache.
enum Learned {
    /// What the version in the cache (or the one staged) publishes.
    Partner(Box<super::Partner>),
    /// Nothing fetched yet.
    Nothing,
    /// A version is cached but cannot be used (altered, unreadable): why.
    /// Nothing the directory serves replaces it, since nothing vouches any
    /// longer for which version was in use (an older one could come in):
    /// the operator removes it.
    Unusable(String),
}

/// A followed partner, as the version of its configuration in the
/// gateway's cache (or the one staged) publishes it.
fn learned_partner(
    shared: &Source<'_>,
    key: &Spanned<String>,
    partner: &RawPartner,
    follow: &super::FollowedPartner,
    caches: Partners<'_>,
) -> Result<Learned, ConfigError> {
    let instance = key.get_ref();
    let at = format!("federation.{}.directory", quoted(instance));
    let directory = partner.directory.as_ref().unwrap_or(key);
    let error = |message: String| shared.error(&at, directory, message);
    // A bundle staged for this partner under this key (its cache is the
    // key's): checked again, as the one in the cache is.
    let staged = caches
        .staged
        .filter(|staged| staged.dir.starts_with(&follow.cache))
        .map(|staged| {
            crate::global::cache::Cache::read_dir(
                &staged.dir,
                Some(staged.manifest.version),
                &follow.verifier,
            )
            .map_err(|cache| error(format!("{instance}'s staged configuration: {cache}")))
        })
        .transpose()?;
    let unusable = |why: String| {
        Learned::Unusable(format!(
            "{why}; remove {} to fetch {instance}'s configuration again from its directory",
            follow.cache.display()
        ))
    };
    let (installed, cached) = match staged {
        Some(staged) => (staged, false),
        None => match crate::global::cache::Cache::new(&follow.cache).current(&follow.verifier) {
            Ok(Some(installed)) => (installed, true),
            Ok(None) => return Ok(Learned::Nothing),
            Err(cache) => return Ok(unusable(cache.to_string())),
        },
    };
    // Receipts are checked under its log key, and so ask for it too.
    let receipts = partner
        .receipts
        .as_ref()
        .is_some_and(|value| *value.get_ref());
    match partner_of_bundle(follow, &installed, follow.witness_log || receipts) {
        Ok(learned) => Ok(Learned::Partner(Box::new(learned))),
        // A version is cached only once the whole configuration loaded
        // with it: what no longer loads was changed behind the gateway.
        Err(why) if cached => Ok(unusable(why)),
        Err(why) => Err(error(why)),
    }
}

/// What version `installed` of followed partner `follow`'s configuration
/// says of how to reach and trust it, with its log key when `log_key`:
/// nothing of this gateway's own configuration counts.
pub(super) fn partner_of_bundle(
    follow: &super::FollowedPartner,
    installed: &crate::global::cache::Installed,
    log_key: bool,
) -> Result<super::Partner, String> {
    let instance = &follow.instance;
    let manifest = &installed.manifest;
    if manifest.instance != *instance {
        return Err(format!(
            "the configuration in {} is instance {}'s, not {instance}'s",
            installed.dir.display(),
            manifest.instance
        ));
    }
    let version = manifest.version;
    let read = |name: &str| {
        manifest
            .files
            .contains_key(name)
            .then(|| std::fs::read(installed.dir.join(name)).ok())
            .flatten()
    };
    let global = read(crate::global::GLOBAL_FILE)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            format!(
                "{instance}'s configuration (version {version}) in {} has no readable {}",
                installed.dir.display(),
                crate::global::GLOBAL_FILE
            )
        })?;
    let published = crate::global::partner::Published::of(instance, version, &global, read)
        .map_err(|message| format!("fetched from {}: {message}", follow.url))?;
    let endpoints = published
        .endpoints
        .iter()
        .map(|endpoint| crate::config::parse_endpoint(endpoint, published.tls_name.as_deref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| {
            format!(
                "{instance}'s configuration (version {version}), [instance] endpoints: {message}"
            )
        })?;
    let key_file = installed.dir.join(&published.federation_key);
    let key = crate::note::Verifier::read(&key_file)?;
    let log_key = published
        .log_key
        .as_ref()
        .filter(|_| log_key)
        .map(|file| {
            let path = installed.dir.join(file);
            crate::note::Verifier::read(&path).map(|verifier| (verifier, path))
        })
        .transpose()?;
    // Its CA and CRLs are checked where they are used (the listener and
    // the connector to its gateways), as a written-out section's are.
    Ok(super::Partner {
        instance: instance.clone(),
        ca: installed.dir.join(&published.ca),
        crls: published
            .crls
            .iter()
            .map(|crl| installed.dir.join(crl))
            .collect(),
        gateway: published.gateway,
        endpoints,
        key,
        key_file,
        log_key,
        witness: false,
        receipts: false,
        published: Some(GlobalVersion {
            instance: manifest.instance.clone(),
            version,
            issued: manifest.issued,
            expires: manifest.expires,
            dir: installed.dir.clone(),
        }),
    })
}

/// What the gateway knows of services: the compiled-in protos, and the
/// descriptor sets of `services` that name one (each file read once).
fn catalog_of(
    source: &Source<'_>,
    services: &BTreeMap<Spanned<String>, RawService>,
) -> Result<std::sync::Arc<crate::catalog::Catalog>, ConfigError> {
    let mut sets: Vec<(String, &Spanned<String>, Vec<u8>)> = Vec::new();
    for (name, service) in services {
        let Some(descriptor) = &service.descriptor else {
            continue;
        };
        let key = format!("services.{}.descriptor", quoted(name.get_ref()));
        let path = source.path(descriptor);
        if sets.iter().any(|(_, seen, _)| source.path(seen) == path) {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|error| {
            source.error(
                &key,
                descriptor,
                format!("cannot read {}: {error}", path.display()),
            )
        })?;
        sets.push((key, descriptor, bytes));
    }
    let Some(last) = sets.last() else {
        return Ok(std::sync::Arc::clone(crate::catalog::Catalog::compiled()));
    };
    let all: Vec<&[u8]> = sets.iter().map(|(_, _, bytes)| bytes.as_slice()).collect();
    crate::catalog::Catalog::with_sets(&all)
        .map(std::sync::Arc::new)
        .map_err(|error| {
            // Name the set at fault, with its own error: the first that
            // fails alone, else the first that fails with those before it.
            let failing = |sets: &[&[u8]]| crate::catalog::Catalog::with_sets(sets).err();
            let ((key, descriptor, _), error) = sets
                .iter()
                .find_map(|set| Some((set, failing(&[&set.2])?)))
                .or_else(|| {
                    (1..=all.len()).find_map(|upto| Some((&sets[upto - 1], failing(&all[..upto])?)))
                })
                .unwrap_or((last, error));
            let path = source.path(descriptor);
            source.error(key, *descriptor, format!("{}: {error}", path.display()))
        })
}

/// The CAs and CRLs that members' and backends' certificates are checked
/// against: the gateway's own file sets them, or the global
/// configuration's `[trust]` does, never both.
struct Trust {
    client_ca: PathBuf,
    client_crls: Vec<PathBuf>,
    server_ca: PathBuf,
    server_crls: Vec<PathBuf>,
}

impl Trust {
    fn of(
        source: &Source<'_>,
        shared: &Source<'_>,
        raw: &RawConfig,
        global: Option<&Spanned<RawTrust>>,
    ) -> Result<Self, ConfigError> {
        let local = [
            ("gateway.tls.client_ca", raw.gateway.tls.client_ca.as_ref()),
            ("gateway.tls.crls", raw.gateway.tls.crls.first()),
            ("upstream.server_ca", raw.upstream.server_ca.as_ref()),
            ("upstream.crls", raw.upstream.crls.first()),
        ];
        let paths = |source: &Source<'_>, crls: &[Spanned<String>]| {
            crls.iter().map(|crl| source.path(crl)).collect()
        };
        if let Some(trust) = global {
            if let Some((key, value)) = local
                .into_iter()
                .find_map(|(key, value)| Some((key, value?)))
            {
                return Err(source.error(
                    key,
                    value,
                    "set by the global configuration's [trust]: remove it here",
                ));
            }
            let trust = trust.get_ref();
            return Ok(Self {
                client_ca: shared.path(&trust.client_ca),
                client_crls: paths(shared, &trust.client_crls),
                server_ca: shared.path(&trust.server_ca),
                server_crls: paths(shared, &trust.server_crls),
            });
        }
        let required = |key: &str, value: Option<&Spanned<String>>| {
            value
                .map(|value| source.path(value))
                .ok_or_else(|| ConfigError {
                    file: source.path.to_owned(),
                    line: None,
                    key: key.to_owned(),
                    message: "missing key".to_owned(),
                })
        };
        Ok(Self {
            client_ca: required("gateway.tls.client_ca", raw.gateway.tls.client_ca.as_ref())?,
            client_crls: paths(source, &raw.gateway.tls.crls),
            server_ca: required("upstream.server_ca", raw.upstream.server_ca.as_ref())?,
            server_crls: paths(source, &raw.upstream.crls),
        })
    }
}

/// `[store]`, checked.
fn store_config(source: &Source<'_>, store: &RawStore) -> Result<StoreConfig, ConfigError> {
    let parsed = StoreConfig::parse(store.url.get_ref())
        .map_err(|message| source.error("store.url", &store.url, message))?;
    let mode = parsed.postgres.get_ssl_mode();
    if let Some(ca) = &store.ca {
        if mode == tokio_postgres::config::SslMode::Disable {
            return Err(source.error(
                "store.ca",
                ca,
                "`ca` asks for TLS to the database, the URL's sslmode=disable for none: \
                 remove one",
            ));
        }
        return Ok(parsed.with_ca(source.path(ca)));
    } else if mode == tokio_postgres::config::SslMode::Require {
        return Err(source.error(
            "store.url",
            &store.url,
            "sslmode=require needs `ca` in [store]: the CA certificate(s) the database's \
             certificate chains to",
        ));
    }
    Ok(parsed)
}

/// What the fleet's log (`[store]` with the exchange log on) asks of
/// `[exchange_log]`.
fn fleet_log(
    source: &Source<'_>,
    store: &RawStore,
    log: &RawExchangeLog,
) -> Result<(), ConfigError> {
    if let Some(retain) = &log.retain {
        return Err(source.error(
            "exchange_log.retain",
            retain,
            "archiving a fleet's log (`[store] url`) is not supported yet: remove it, and keep \
             a verified copy with `govbridge audit pull`",
        ));
    }
    if log.origin.is_none() {
        // The default names the node, and the nodes are one log.
        return Err(source.error(
            "store.url",
            &store.url,
            "the nodes of a fleet write one exchange log: set the same exchange_log.origin \
             on every node",
        ));
    }
    Ok(())
}

fn validate_consent(
    source: &Source<'_>,
    raw: &RawConsent,
    providers: &BTreeMap<MemberId, Provider>,
    exchange_log: &ExchangeLogConfig,
) -> Result<ConsentConfig, ConfigError> {
    let feed_provider = source.member("consent.feed_provider", &raw.feed_provider)?;
    if !providers.contains_key(&feed_provider) {
        return Err(source.error(
            "consent.feed_provider",
            &raw.feed_provider,
            format!("{feed_provider} is not a configured provider"),
        ));
    }
    if let Some(instance) = &providers[&feed_provider].partner {
        return Err(source.error(
            "consent.feed_provider",
            &raw.feed_provider,
            format!(
                "{feed_provider} is a provider of instance {instance}: the consent feed must come \
                 from a provider of this instance, reached directly"
            ),
        ));
    }
    Ok(ConsentConfig {
        issuer_keys: source.path(&raw.issuer_keys),
        feed_provider,
        freshness: source.duration(
            "consent.freshness",
            raw.freshness.as_ref(),
            Duration::from_secs(5),
            Duration::from_secs(1)..=Duration::from_secs(3600),
        )?,
        ledger: raw.ledger.as_ref().map_or_else(
            || exchange_log.data_dir.join("consent-ledger.sqlite"),
            |ledger| source.path(ledger),
        ),
    })
}

fn validate_telemetry(
    source: &Source<'_>,
    raw: Option<&RawTelemetry>,
) -> Result<TelemetryConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(TelemetryConfig::default());
    };
    let service_name = match &raw.service_name {
        None => "govbridge".to_owned(),
        Some(name) if name.get_ref().trim().is_empty() => {
            return Err(source.error("telemetry.service_name", name, "must not be empty"));
        }
        Some(name) => name.get_ref().clone(),
    };
    let otlp = raw
        .otlp_endpoint
        .as_ref()
        .map(|endpoint| {
            OtlpConfig::parse_endpoint(endpoint.get_ref())
                .map_err(|message| source.error("telemetry.otlp_endpoint", endpoint, message))
        })
        .transpose()?
        .map(|endpoint| OtlpConfig {
            endpoint,
            service_name,
        });
    Ok(TelemetryConfig { otlp })
}

fn validate_exchange_log(
    source: &Source<'_>,
    raw: Option<&RawExchangeLog>,
    gateway: &GatewayConfig,
) -> Result<ExchangeLogConfig, ConfigError> {
    let defaults = ExchangeLogConfig::defaults(&source.dir, &gateway.node_id);
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let origin = match &raw.origin {
        None => defaults.origin,
        Some(origin) => {
            let text = origin.get_ref();
            if text.is_empty()
                || text.len() > 256
                || text.contains(|c: char| c.is_whitespace() || c.is_control() || c == '+')
            {
                return Err(source.error(
                    "exchange_log.origin",
                    origin,
                    "must be 1 to 256 bytes without spaces or `+`, e.g. `govbridge.sn/gw-dakar-1`",
                ));
            }
            text.clone()
        }
    };
    let checkpoint_records = match &raw.checkpoint_records {
        None => defaults.checkpoint_records,
        Some(records) if *records.get_ref() == 0 => {
            return Err(source.error(
                "exchange_log.checkpoint_records",
                records,
                "must be at least 1",
            ));
        }
        Some(records) => *records.get_ref(),
    };
    let data_tracker_clients = raw
        .data_tracker_clients
        .iter()
        .enumerate()
        .map(|(index, member)| {
            source.member(
                &format!("exchange_log.data_tracker_clients[{index}]"),
                member,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let retain = raw
        .retain
        .as_ref()
        .map(|retain| {
            let kept = parse_retention(retain.get_ref())
                .map_err(|message| source.error("exchange_log.retain", retain, message))?;
            if kept < Duration::from_secs(3600) {
                return Err(source.error(
                    "exchange_log.retain",
                    retain,
                    "must be at least 1h: records leave the store for archive files after it",
                ));
            }
            Ok(kept)
        })
        .transpose()?;
    let data_dir = raw
        .data_dir
        .as_ref()
        .map_or(defaults.data_dir, |dir| source.path(dir));
    Ok(ExchangeLogConfig {
        enabled: raw.enabled.unwrap_or(true),
        archive_dir: raw
            .archive_dir
            .as_ref()
            .map_or_else(|| data_dir.join("archives"), |dir| source.path(dir)),
        retain,
        data_dir,
        origin,
        checkpoint_interval: source.duration(
            "exchange_log.checkpoint_interval",
            raw.checkpoint_interval.as_ref(),
            defaults.checkpoint_interval,
            MILLISECOND * 10..=Duration::from_secs(3600),
        )?,
        checkpoint_records,
        witness_refresh: source.duration(
            "exchange_log.witness_refresh",
            raw.witness_refresh.as_ref(),
            defaults.witness_refresh,
            Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
        )?,
        data_tracker_clients,
    })
}

// ---------------------------------------------------------------------------
// Limits (`[limits]`).

/// The limits one table sets, checked; `None` where it sets nothing.
#[derive(Debug, Clone, Copy, Default)]
struct LimitLevel {
    rate: Option<RateLimit>,
    concurrent_calls: Option<NonZeroU32>,
    max_message_bytes: Option<NonZeroU32>,
}

/// The largest rate, burst or count of calls the file may set.
const MAX_CALLS: i64 = 1_000_000;

impl Source<'_> {
    /// A whole number within `1..=max`, `max` at most `u32::MAX`.
    fn count(&self, key: &str, value: &Spanned<i64>, max: i64) -> Result<NonZeroU32, ConfigError> {
        let count = self.number(key, Some(value), 1, 1..=max)?;
        u32::try_from(count)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| self.error(key, value, format!("must be between 1 and {max}")))
    }

    /// The limits of the table at `path`.
    fn limit_level(
        &self,
        path: &str,
        requests_per_second: Option<&Spanned<i64>>,
        burst: Option<&Spanned<i64>>,
        concurrent_calls: Option<&Spanned<i64>>,
        max_message_bytes: Option<&Spanned<i64>>,
    ) -> Result<LimitLevel, ConfigError> {
        let key = |name: &str| format!("{path}.{name}");
        let rate = match (requests_per_second, burst) {
            (None, None) => None,
            (None, Some(burst)) => {
                // A burst alone would silently combine with another
                // table's rate.
                return Err(self.error(
                    key("burst"),
                    burst,
                    "needs `requests_per_second` in the same table",
                ));
            }
            (Some(rate), burst) => {
                let per_second = self.count(&key("requests_per_second"), rate, MAX_CALLS)?;
                Some(RateLimit {
                    per_second,
                    burst: match burst {
                        Some(burst) => self.count(&key("burst"), burst, MAX_CALLS)?,
                        None => per_second,
                    },
                })
            }
        };
        Ok(LimitLevel {
            rate,
            concurrent_calls: concurrent_calls
                .map(|calls| self.count(&key("concurrent_calls"), calls, MAX_CALLS))
                .transpose()?,
            max_message_bytes: max_message_bytes
                .map(|bytes| self.count(&key("max_message_bytes"), bytes, i64::from(u32::MAX)))
                .transpose()?,
        })
    }

    fn member_limit_level(
        &self,
        path: &str,
        raw: &RawMemberLimits,
    ) -> Result<LimitLevel, ConfigError> {
        self.limit_level(
            path,
            raw.requests_per_second.as_ref(),
            raw.burst.as_ref(),
            raw.concurrent_calls.as_ref(),
            raw.max_message_bytes.as_ref(),
        )
    }
}

fn validate_limits(
    source: &Source<'_>,
    raw: Option<&RawLimits>,
    members: &BTreeMap<MemberId, Member>,
) -> Result<LimitsConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(LimitsConfig {
            gateway_concurrent_calls: LimitsConfig::DEFAULT_GATEWAY_CONCURRENT_CALLS,
            members: members
                .keys()
                .map(|id| (id.clone(), MemberLimits::default()))
                .collect(),
        });
    };
    let gateway_concurrent_calls = raw
        .gateway_concurrent_calls
        .as_ref()
        .map(|calls| source.count("limits.gateway_concurrent_calls", calls, MAX_CALLS))
        .transpose()?
        .unwrap_or(LimitsConfig::DEFAULT_GATEWAY_CONCURRENT_CALLS);
    let defaults = source.limit_level(
        "limits",
        raw.requests_per_second.as_ref(),
        raw.burst.as_ref(),
        raw.concurrent_calls.as_ref(),
        raw.max_message_bytes.as_ref(),
    )?;

    let mut groups = BTreeMap::new();
    for (name, limits) in &raw.groups {
        let path = format!("limits.groups.{}", quoted(name.get_ref()));
        if !is_group_name(name.get_ref()) {
            return Err(source.error(
                &path,
                name,
                format!(
                    "`{}` is not a group name: 1 to 64 of a-z, 0-9 and '-'",
                    name.get_ref()
                ),
            ));
        }
        // A misspelt group would limit nobody, silently.
        if !members
            .values()
            .any(|member| member.groups.contains(name.get_ref()))
        {
            return Err(source.error(
                &path,
                name,
                format!("no registered member is in group `{}`", name.get_ref()),
            ));
        }
        groups.insert(
            name.get_ref().as_str(),
            source.member_limit_level(&path, limits)?,
        );
    }

    let mut own = BTreeMap::new();
    for (key, limits) in &raw.members {
        let path = format!("limits.members.{}", quoted(key.get_ref()));
        let id = source.member(&path, key)?;
        if !members.contains_key(&id) {
            return Err(source.error(
                &path,
                key,
                format!("member {id} is not registered (add it under [members])"),
            ));
        }
        if own.contains_key(&id) {
            return Err(source.error(&path, key, format!("member {id} has limits twice")));
        }
        own.insert(id, source.member_limit_level(&path, limits)?);
    }

    let resolved = members
        .values()
        .map(|member| {
            let levels: Vec<LimitLevel> = own
                .get(&member.id)
                .into_iter()
                .chain(
                    member
                        .groups
                        .iter()
                        .filter_map(|group| groups.get(group.as_str())),
                )
                .chain(std::iter::once(&defaults))
                .copied()
                .collect();
            let limits = MemberLimits {
                rate: levels.iter().find_map(|level| level.rate),
                concurrent_calls: levels.iter().find_map(|level| level.concurrent_calls),
                max_message_bytes: levels
                    .iter()
                    .find_map(|level| level.max_message_bytes)
                    .unwrap_or(MemberLimits::DEFAULT_MAX_MESSAGE_BYTES),
            };
            (member.id.clone(), limits)
        })
        .collect();
    Ok(LimitsConfig {
        gateway_concurrent_calls,
        members: resolved,
    })
}

/// `[upstream]`'s pool, health check and ejection settings.
fn pool_settings(source: &Source<'_>, raw: &RawUpstream) -> Result<PoolSettings, ConfigError> {
    let defaults = PoolSettings::default();
    let interval = source.duration(
        "upstream.health_check_interval",
        raw.health_check_interval.as_ref(),
        defaults.health_check_interval.unwrap_or_default(),
        Duration::ZERO..=Duration::from_secs(3600),
    )?;
    let ejection_time = source.duration(
        "upstream.ejection_time",
        raw.ejection_time.as_ref(),
        defaults.ejection_time,
        MILLISECOND..=Duration::from_secs(3600),
    )?;
    let max_ejection_time = source.duration(
        "upstream.max_ejection_time",
        raw.max_ejection_time.as_ref(),
        defaults.max_ejection_time.max(ejection_time),
        MILLISECOND..=Duration::from_secs(24 * 3600),
    )?;
    if let Some(value) = &raw.max_ejection_time
        && max_ejection_time < ejection_time
    {
        return Err(source.error(
            "upstream.max_ejection_time",
            value,
            "must not be shorter than upstream.ejection_time",
        ));
    }
    Ok(PoolSettings {
        health_check_interval: (!interval.is_zero()).then_some(interval),
        health_check_timeout: source.duration(
            "upstream.health_check_timeout",
            raw.health_check_timeout.as_ref(),
            defaults.health_check_timeout,
            MILLISECOND..=Duration::from_secs(60),
        )?,
        unhealthy_threshold: source.number(
            "upstream.unhealthy_threshold",
            raw.unhealthy_threshold.as_ref(),
            defaults.unhealthy_threshold,
            1..=100,
        )?,
        healthy_threshold: source.number(
            "upstream.healthy_threshold",
            raw.healthy_threshold.as_ref(),
            defaults.healthy_threshold,
            1..=100,
        )?,
        ejection_failures: source.number(
            "upstream.ejection_failures",
            raw.ejection_failures.as_ref(),
            defaults.ejection_failures,
            1..=1000,
        )?,
        ejection_time,
        max_ejection_time,
        connections_per_endpoint: source.number(
            "upstream.connections_per_endpoint",
            raw.connections_per_endpoint.as_ref(),
            defaults.connections_per_endpoint,
            1..=64,
        )?,
        streams_per_connection: source.number(
            "upstream.streams_per_connection",
            raw.streams_per_connection.as_ref(),
            defaults.streams_per_connection,
            1..=10_000,
        )?,
    })
}

// ---------------------------------------------------------------------------
// The partner listener's connection limits (`[gateway]`).

fn listener_settings(
    source: &Source<'_>,
    gateway: &RawGateway,
) -> Result<ListenerSettings, ConfigError> {
    let defaults = ListenerSettings::default();
    let count = |key: &str,
                 value: Option<&Spanned<u32>>,
                 default: u32,
                 range: std::ops::RangeInclusive<u32>| {
        source.number(&format!("gateway.{key}"), value, default, range)
    };
    let duration = |key: &str,
                    value: Option<&Spanned<String>>,
                    default: Duration,
                    range: std::ops::RangeInclusive<Duration>| {
        source.duration(&format!("gateway.{key}"), value, default, range)
    };
    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
    let keepalive_interval = duration(
        "keepalive_interval",
        gateway.keepalive_interval.as_ref(),
        defaults.keepalive_interval,
        MILLISECOND * 10..=Duration::from_secs(3600),
    )?;
    let keepalive_timeout = duration(
        "keepalive_timeout",
        gateway.keepalive_timeout.as_ref(),
        defaults.keepalive_timeout,
        MILLISECOND * 10..=Duration::from_secs(600),
    )?;
    Ok(ListenerSettings {
        handshake_timeout: duration(
            "handshake_timeout",
            gateway.handshake_timeout.as_ref(),
            defaults.handshake_timeout,
            MILLISECOND..=Duration::from_secs(300),
        )?,
        max_concurrent_streams: count(
            "max_concurrent_streams",
            gateway.max_concurrent_streams.as_ref(),
            defaults.max_concurrent_streams,
            1..=100_000,
        )?,
        // Below 4 KiB a gRPC call with a consent artefact does not fit.
        max_header_list_size: count(
            "max_header_list_size",
            gateway.max_header_list_size.as_ref(),
            defaults.max_header_list_size,
            4096..=1 << 20,
        )?,
        max_pending_accept_reset_streams: count(
            "max_pending_accept_reset_streams",
            gateway.max_pending_accept_reset_streams.as_ref(),
            u32::try_from(defaults.max_pending_accept_reset_streams).unwrap_or(u32::MAX),
            1..=100_000,
        )? as usize,
        max_local_error_reset_streams: count(
            "max_local_error_reset_streams",
            gateway.max_local_error_reset_streams.as_ref(),
            u32::try_from(defaults.max_local_error_reset_streams).unwrap_or(u32::MAX),
            1..=100_000,
        )? as usize,
        keepalive_interval,
        keepalive_timeout,
        idle_timeout: duration(
            "idle_timeout",
            gateway.idle_timeout.as_ref(),
            defaults.idle_timeout,
            MILLISECOND * 10..=WEEK,
        )?,
        max_connection_age: duration(
            "max_connection_age",
            gateway.max_connection_age.as_ref(),
            defaults.max_connection_age,
            MILLISECOND * 10..=WEEK,
        )?,
        drain_timeout: duration(
            "drain_timeout",
            gateway.drain_timeout.as_ref(),
            defaults.drain_timeout,
            Duration::ZERO..=Duration::from_secs(600),
        )?,
        max_connections_per_address: count(
            "max_connections_per_address",
            gateway.max_connections_per_address.as_ref(),
            defaults.max_connections_per_address,
            1..=1_000_000,
        )?,
        max_handshakes: count(
            "max_handshakes",
            gateway.max_handshakes.as_ref(),
            u32::try_from(defaults.max_handshakes).unwrap_or(u32::MAX),
            1..=1_000_000,
        )? as usize,
        ..defaults
    })
}

/// `services."<name>".idempotent`: methods of the service that may be
/// retried, each a method its descriptor declares, and not
/// client-streaming (a retry replays the request).
fn idempotent_methods(
    source: &Source<'_>,
    catalog: &crate::catalog::Catalog,
    path: &str,
    service: &str,
    raw: &[Spanned<String>],
) -> Result<std::collections::BTreeSet<String>, ConfigError> {
    let known = catalog.service_methods();
    let mut methods = std::collections::BTreeSet::new();
    for (index, method) in raw.iter().enumerate() {
        let key = format!("{path}.idempotent[{index}]");
        let name = method.get_ref();
        let full = format!("/{service}/{name}");
        if crate::catalog::split_path(&full).is_none() {
            return Err(source.error(&key, method, format!("`{name}` is not a method name")));
        }
        let Some(known) = known.get(service) else {
            return Err(source.error(
                &key,
                method,
                format!(
                    "the gateway has no descriptor of {service}, so it cannot tell whether \
                     {name} streams its requests: give the service a `descriptor`"
                ),
            ));
        };
        if !known.contains(name) {
            let mut names: Vec<&String> = known.iter().collect();
            names.sort();
            let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
            return Err(source.error(
                &key,
                method,
                format!(
                    "{service} has no method {name} (it has: {})",
                    names.join(", ")
                ),
            ));
        }
        if catalog.streams_requests(&full) {
            return Err(source.error(
                &key,
                method,
                format!(
                    "{name} streams its requests: a retry replays a request, which a stream \
                     cannot offer"
                ),
            ));
        }
        methods.insert(name.clone());
    }
    Ok(methods)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use toml::Spanned;

    use super::Source;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Members {
        #[expect(dead_code, reason = "read for its errors only")]
        members: BTreeMap<Spanned<String>, Member>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Member {
        #[expect(dead_code, reason = "read for its errors only")]
        name: String,
    }

    /// The key an error is in is named after the table holding it, in
    /// whatever form the file writes it.
    #[test]
    fn an_error_names_the_table_it_is_in() {
        for (text, key) in [
            (
                "[members.\"SN/A\"]\nname = \"a\"\nnam2 = 1\n[members.\"SN/B\"]\nname = \"b\"\n",
                "members.\"SN/A\".nam2",
            ),
            (
                "members = { \"SN/A\" = { name = \"a\", nam2 = 1 }, \"SN/B\" = { name = \"b\" } }\n",
                "members.\"SN/A\".nam2",
            ),
            (
                "[members.\"SN/A\"]\nname = \"a\"\n[members.\"SN/B\"]\nnam2 = 1\nname = \"b\"\n",
                "members.\"SN/B\".nam2",
            ),
        ] {
            let source = Source::new(std::path::Path::new("t.toml"), text);
            let error = source.deserialize::<Members>().unwrap_err();
            assert_eq!(error.key, key, "{text}: {error}");
        }
    }
}
