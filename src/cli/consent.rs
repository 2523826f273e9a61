//! `govbridge consent`: grant, list and revoke citizens' consents at the
//! MyGov portal (`govbridge.consent.v1.Consent`), for demos and operators.
//!
//! It calls through the gateway as the portal's app would: mutual TLS with
//! the `SN/GOV/MYGOV/app` certificate, and the purpose, user id and reason
//! the gateway's policies ask of every call, so each action is authorized
//! and written to the exchange log like any other. It never reaches the
//! portal's backend directly and keeps nothing: consents live at the portal.
//!
//! Arguments are checked against the gateway's configuration before
//! anything is sent: a consent for a consumer, provider, service or purpose
//! the gateway does not know could never be used.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use govbridge::agencies::mygov::PORTAL_APP;
use govbridge::agencies::{Nin, parse_nin};
use govbridge::config::Config;
use govbridge::identity::MemberId;
use govbridge::identity::tls::{ClientTls, TlsError, load_certificates, member_of_certificate};
use govbridge::net::client::Channel;
use govbridge::proto::consent::v1 as pb;
use govbridge::wire::escape::{Escaped, json_safe};
use govbridge::wire::headers::{
    BRIDGE_ERROR, BRIDGE_PURPOSE, BRIDGE_REASON, BRIDGE_REQUEST_ID, BRIDGE_USER_ID,
};
use pb::consent_client::ConsentClient;

/// The configuration `govbridge dev` writes with its default `--dir`.
const DEFAULT_CONFIG: &str = "dev/govbridge.toml";
/// The name in the dev gateway's certificate.
const DEFAULT_SERVER_NAME: &str = "localhost";
/// The purpose under which the portal manages consents (see the dev
/// policy `mygov-manages-citizens-consents`).
const PURPOSE: &str = "CITIZEN-SELF-SERVICE";
const DEFAULT_REASON: &str = "consent managed from the govbridge CLI";
/// Longest wait for the connection, and for each answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ConsentArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(subcommand)]
    command: ConsentCommand,
}

/// Where the gateway is and how to connect to it as the portal's app.
/// Every default comes from the gateway's configuration, so that against
/// `govbridge dev` no option is needed.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection (every default suits `govbridge dev`)")]
struct GatewayArgs {
    /// The gateway's configuration: its address, CA, members, services and
    /// purposes [default: dev/govbridge.toml].
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The gateway's address [default: gateway.listen of --config].
    #[arg(long, value_name = "ADDR", global = true)]
    gateway: Option<SocketAddr>,
    /// The name the gateway's certificate must carry [default: localhost].
    #[arg(long, value_name = "NAME", global = true)]
    server_name: Option<String>,
    /// The CA the gateway's certificate must chain to [default:
    /// gateway.tls.client_ca of --config, the dev CA].
    #[arg(long, value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    /// The portal app's certificate (SN/GOV/MYGOV/app) [default:
    /// member-mygov.pem beside the CA].
    #[arg(long, value_name = "FILE", global = true)]
    cert: Option<PathBuf>,
    /// The key of --cert [default: --cert with the extension .key].
    #[arg(long, value_name = "FILE", global = true)]
    key: Option<PathBuf>,
    /// Who acts, sent as bridge-user-id [default: the citizen's NIN].
    #[arg(long, value_name = "ID", global = true)]
    user: Option<String>,
    /// Why, sent as bridge-reason [default: "consent managed from the
    /// govbridge CLI"].
    #[arg(long, value_name = "TEXT", global = true)]
    reason: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ConsentCommand {
    /// Grant a consent on a citizen's behalf; print its id and its artefact,
    /// which the consumer sends in `bridge-consent`.
    Grant(GrantArgs),
    /// A citizen's consents, newest first, whatever their state.
    List {
        /// The citizen (NIN, 13 digits).
        #[arg(long)]
        nin: String,
        /// One JSON object per consent and line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a consent for good: the gateway refuses calls under it within
    /// a second.
    Revoke {
        /// The citizen who holds the consent (NIN).
        #[arg(long)]
        nin: String,
        /// The consent's id, as `grant` and `list` print it.
        #[arg(long, value_name = "CONSENT_ID")]
        id: String,
        /// The revoked consent as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct GrantArgs {
    /// The citizen granting it (NIN, 13 digits).
    #[arg(long)]
    nin: String,
    /// The member allowed to read, e.g. SN/COM/CBAO/credit.
    #[arg(long, value_name = "MEMBER")]
    consumer: String,
    /// A provider it may read from, e.g. SN/GOV/DGID/tax; repeat for more.
    #[arg(long = "provider", value_name = "MEMBER", required = true)]
    providers: Vec<String>,
    /// A method it may call, e.g.
    /// /govbridge.tax.v1.TaxAuthority/GetTaxClearance; repeat for more.
    #[arg(long = "method", value_name = "PATH", required = true)]
    methods: Vec<String>,
    /// The purpose code the consumer must declare, e.g. CREDIT-SCORING.
    #[arg(long, value_name = "CODE")]
    purpose: String,
    /// Successful calls allowed under it.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_uses: u32,
    /// How long it lasts from now: 30d, 12h, 45m [default: 90 days].
    #[arg(long, value_name = "DURATION", conflicts_with = "expires")]
    valid_for: Option<String>,
    /// When it ends: RFC 3339 (2025-12-31T23:59:59Z) or Unix seconds.
    #[arg(long, value_name = "TIME")]
    expires: Option<String>,
    /// The granted consent as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ConsentArgs) -> anyhow::Result<()> {
    let ConsentArgs { gateway, command } = args;
    let target = Target::resolve(&gateway)?;
    match command {
        ConsentCommand::Grant(grant) => {
            let json = grant.json;
            let request = grant_request(&target.config, grant)?;
            let nin = request.nin.clone();
            let record = target.call(&nin, async |portal| {
                portal.client.grant(portal.declared(request)).await
            })?;
            if json {
                println!("{}", json_safe(record_json(&record).to_string()));
            } else {
                print_granted(&record);
            }
        }
        ConsentCommand::List { nin, json } => {
            let nin = nin_arg(&nin)?.to_string();
            let request = pb::ListRequest { nin: nin.clone() };
            let consents = target
                .call(&nin, async |portal| {
                    portal.client.list(portal.declared(request)).await
                })?
                .consents;
            if json {
                for record in &consents {
                    println!("{}", json_safe(record_json(record).to_string()));
                }
            } else if consents.is_empty() {
                println!("no consents for {nin}");
            } else {
                print_table(&consents, now());
            }
        }
        ConsentCommand::Revoke { nin, id, json } => {
            let nin = nin_arg(&nin)?.to_string();
            if id.trim().is_empty() {
                bail!("--id: give the consent's id, as `grant` and `list` print it");
            }
            let request = pb::ConsentRef {
                nin: nin.clone(),
                consent_id: id,
            };
            let record = target.call(&nin, async |portal| {
                portal.client.revoke(portal.declared(request)).await
            })?;
            if json {
                println!("{}", json_safe(record_json(&record).to_string()));
            } else {
                println!(
                    "revoked consent {} ({} for {}); the gateway refuses calls under it \
                     within a second",
                    Escaped(&record.consent_id),
                    Escaped(&record.consumer),
                    Escaped(&record.purpose)
                );
            }
        }
    }
    Ok(())
}

/// The gateway to call and the portal app's TLS material, resolved from
/// the options and the gateway's configuration.
#[derive(Debug)]
struct Target {
    config: Config,
    address: SocketAddr,
    server_name: String,
    tls: ClientTls,
    user: Option<String>,
    reason: String,
}

impl Target {
    fn resolve(args: &GatewayArgs) -> anyhow::Result<Self> {
        let path = args
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let config = Config::load(&path).map_err(|error| {
            let hint = if args.config.is_none() {
                "; start `govbridge dev` first, or pass --config with the gateway's configuration"
            } else {
                ""
            };
            anyhow!("{error}{hint}")
        })?;
        let address = match args.gateway {
            Some(address) => address,
            None => listen_address(&config)?,
        };
        let server_ca = args
            .ca
            .clone()
            .unwrap_or_else(|| config.gateway.tls.client_ca.clone());
        let certificate = match &args.cert {
            Some(certificate) => certificate.clone(),
            None => portal_certificate_beside(&server_ca)?,
        };
        let private_key = args
            .key
            .clone()
            .unwrap_or_else(|| certificate.with_extension("key"));
        check_portal_certificate(&certificate)?;
        Ok(Self {
            config,
            address,
            server_name: args
                .server_name
                .clone()
                .unwrap_or_else(|| DEFAULT_SERVER_NAME.to_owned()),
            tls: ClientTls::new(server_ca, certificate, private_key),
            user: args.user.clone(),
            reason: args
                .reason
                .clone()
                .unwrap_or_else(|| DEFAULT_REASON.to_owned()),
        })
    }

    /// Connects, makes one call on behalf of citizen `nin`, and gives its
    /// answer or an error saying who refused it.
    fn call<T>(
        &self,
        nin: &str,
        call: impl AsyncFnOnce(&mut Portal) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> anyhow::Result<T> {
        let user = self.user.as_deref().unwrap_or(nin);
        let declared = Declared {
            user: MetadataValue::try_from(user)
                .map_err(|_| anyhow!("--user {user:?}: must be printable ASCII"))?,
            reason: MetadataValue::try_from(self.reason.as_bytes())
                .map_err(|_| anyhow!("--reason {:?}: must be printable text", self.reason))?,
        };
        super::runtime()?.block_on(async {
            let channel = within(self.connect(), || {
                format!("no TLS connection to the gateway at {}", self.address)
            })
            .await?;
            let mut portal = Portal {
                client: ConsentClient::new(channel),
                declared,
            };
            let answer = within(async { Ok(call(&mut portal).await) }, || {
                format!("no answer from the gateway at {}", self.address)
            })
            .await?;
            answer
                .map(tonic::Response::into_inner)
                .map_err(|status| refused(self.address, &status))
        })
    }

    async fn connect(&self) -> anyhow::Result<Channel> {
        let tls = self.tls.client_config().map_err(|error| match error {
            TlsError::Identity { .. } => {
                anyhow!("{error} (key {})", self.tls.private_key.display())
            }
            // The message already ends with its source's; once is enough.
            error => anyhow!("{error}"),
        })?;
        Channel::connect(self.address, &self.server_name, tls)
            .await
            .map_err(|error| {
                anyhow!(
                    "cannot connect to the gateway at {} (its certificate must name {}): {error}",
                    self.address,
                    self.server_name
                )
            })
    }
}

/// `future`'s output, or an error after [`CALL_TIMEOUT`].
async fn within<T>(
    future: impl Future<Output = anyhow::Result<T>>,
    what: impl FnOnce() -> String,
) -> anyhow::Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, future)
        .await
        .map_err(|_| anyhow!("{} within {} s", what(), CALL_TIMEOUT.as_secs()))?
}

/// A connection to the portal through the gateway.
#[derive(Debug)]
struct Portal {
    client: ConsentClient<Channel>,
    declared: Declared,
}

/// What the gateway's policies ask the portal to declare on every call.
#[derive(Debug)]
struct Declared {
    user: AsciiMetadataValue,
    reason: AsciiMetadataValue,
}

impl Portal {
    fn declared<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(CALL_TIMEOUT);
        let metadata = request.metadata_mut();
        metadata.insert(BRIDGE_PURPOSE, AsciiMetadataValue::from_static(PURPOSE));
        metadata.insert(BRIDGE_USER_ID, self.declared.user.clone());
        metadata.insert(BRIDGE_REASON, self.declared.reason.clone());
        request
    }
}

/// A failed call, saying who refused it. The gateway names each refusal
/// of its own in `bridge-error`; any other status is the portal's answer,
/// which the gateway passes through unchanged.
fn refused(address: SocketAddr, status: &tonic::Status) -> anyhow::Error {
    let code = govbridge::telemetry::metrics::code_name(status.code() as i32);
    let metadata = |name| {
        status
            .metadata()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let mut text = if let Some(kind) = metadata(BRIDGE_ERROR) {
        format!(
            "the gateway at {address} refused the call: {code} (bridge-error: {kind}): {}",
            status.message()
        )
    } else if let Some(cause) = std::error::Error::source(status) {
        // Never answered: the connection failed under the call.
        format!(
            "the call through the gateway at {address} failed: {code}: {}: {cause}",
            status.message()
        )
    } else {
        format!("the MyGov portal answered {code}: {}", status.message())
    };
    if let Some(id) = metadata(BRIDGE_REQUEST_ID) {
        text += &format!(" (bridge-request-id {id})");
    }
    anyhow!(text)
}

/// The gateway's `listen` address, made reachable: an unspecified address
/// (all interfaces) is reached on loopback.
fn listen_address(config: &Config) -> anyhow::Result<SocketAddr> {
    let mut address = config.gateway.listen;
    if address.port() == 0 {
        bail!(
            "{}: gateway.listen is {address}, a port chosen at start; pass --gateway with \
             the address the gateway printed",
            config.source.display()
        );
    }
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(address)
}

/// Where the dev PKI keeps the portal app's certificate: beside its CA.
fn portal_certificate_beside(ca: &Path) -> anyhow::Result<PathBuf> {
    let stem = govbridge::dev::DEMO_MEMBERS
        .iter()
        .find(|(_, member)| *member == PORTAL_APP)
        .map(|(stem, _)| *stem)
        .with_context(|| format!("the dev PKI has no certificate for {PORTAL_APP}"))?;
    Ok(ca
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(format!("member-{stem}.pem")))
}

/// Refuses a certificate for another member before connecting with it.
/// Only a courtesy: the gateway verifies the certificate, and the portal
/// checks the caller, whatever this says.
fn check_portal_certificate(path: &Path) -> anyhow::Result<()> {
    let certificates = load_certificates(path)
        .map_err(|error| anyhow!("the portal app's certificate (--cert): {error}"))?;
    let member = certificates
        .first()
        .map(member_of_certificate)
        .transpose()
        .with_context(|| format!("--cert {}", path.display()))?;
    match member {
        Some(member) if member.as_str() == PORTAL_APP => Ok(()),
        Some(member) => bail!(
            "--cert {}: certifies {member}; only the citizens' portal ({PORTAL_APP}) \
             manages consents",
            path.display()
        ),
        None => bail!("--cert {}: holds no certificate", path.display()),
    }
}

fn nin_arg(text: &str) -> anyhow::Result<Nin> {
    parse_nin(text).with_context(|| format!("--nin {text}"))
}

/// The grant, checked against what the gateway knows: a consent naming an
/// unregistered consumer, a provider or service it does not route, or a
/// purpose it does not accept could never be used.
fn grant_request(config: &Config, grant: GrantArgs) -> anyhow::Result<pb::GrantRequest> {
    let file = config.source.display();
    let nin = nin_arg(&grant.nin)?;
    let consumer = MemberId::parse(&grant.consumer)
        .with_context(|| format!("--consumer {}", grant.consumer))?;
    if !config.members.contains_key(&consumer) {
        bail!("--consumer {consumer}: not a member registered in {file}");
    }
    for provider in &grant.providers {
        let id = MemberId::parse(provider).with_context(|| format!("--provider {provider}"))?;
        if !config.providers.contains_key(&id) {
            bail!(
                "--provider {provider}: not a provider in {file} (providers: {})",
                known(config.providers.keys())
            );
        }
    }
    for method in &grant.methods {
        let Some((service, name)) = govbridge::catalog::split_path(method) else {
            bail!("--method {method}: expected a gRPC path, /package.Service/Method");
        };
        let Some(published) = config.services.get(service) else {
            bail!("--method {method}: the service {service} is not published in {file}");
        };
        // A service the gateway has a description of: the method is one of
        // its methods (a misspelt one would make a consent never used).
        if let Some(methods) = config.catalog.service_methods().get(service)
            && !methods.contains(name)
        {
            let mut known: Vec<&String> = methods.iter().collect();
            known.sort();
            bail!(
                "--method {method}: {service} has no method {name} (methods: {})",
                known
                    .iter()
                    .map(|known| known.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        // A provider named serves it (a consent covers any of its methods
        // at any of its providers).
        let served = grant.providers.is_empty()
            || grant.providers.iter().any(|provider| {
                MemberId::parse(provider).is_ok_and(|id| published.providers.contains(&id))
            });
        if !served {
            bail!(
                "--method {method}: no --provider given serves {service} in {file} (its \
                 providers: {})",
                known(published.providers.iter())
            );
        }
    }
    // And each provider named serves one of the methods' services.
    for provider in &grant.providers {
        let serves = MemberId::parse(provider).is_ok_and(|id| {
            grant.methods.iter().any(|method| {
                govbridge::catalog::split_path(method)
                    .and_then(|(service, _)| config.services.get(service))
                    .is_some_and(|published| published.providers.contains(&id))
            })
        });
        if !grant.methods.is_empty() && !serves {
            bail!("--provider {provider}: serves none of the --method services in {file}");
        }
    }
    if !config.purposes.contains_key(&grant.purpose) {
        bail!(
            "--purpose {}: not a purpose registered in {file} (purposes: {})",
            grant.purpose,
            known(config.purposes.keys())
        );
    }
    let expires = match (&grant.valid_for, &grant.expires) {
        (Some(valid_for), _) => now().saturating_add(parse_validity(valid_for)?),
        (None, Some(expires)) => {
            let at = parse_time(expires)?;
            if at <= now() {
                bail!("--expires {expires}: already past");
            }
            at
        }
        // The portal's default: 90 days.
        (None, None) => 0,
    };
    Ok(pb::GrantRequest {
        nin: nin.to_string(),
        consumer: consumer.to_string(),
        providers: grant.providers,
        methods: grant.methods,
        purpose: grant.purpose,
        not_before: 0,
        expires,
        max_uses: grant.max_uses,
    })
}

fn known<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--valid-for`: days (`30d`) or a configuration duration (`12h`, `45m`),
/// in whole seconds.
fn parse_validity(text: &str) -> anyhow::Result<i64> {
    let invalid = || format!("--valid-for {text}: expected a duration such as 30d, 12h or 45m");
    let seconds = match text.strip_suffix('d') {
        Some(days) => days
            .parse::<i64>()
            .ok()
            .and_then(|days| days.checked_mul(86_400))
            .with_context(invalid)?,
        None => {
            let duration = govbridge::config::parse_duration(text)
                .map_err(|message| anyhow!("{}: {message}", invalid()))?;
            i64::try_from(duration.as_secs()).with_context(invalid)?
        }
    };
    if seconds < 1 {
        bail!("--valid-for {text}: a consent lasts at least a second");
    }
    Ok(seconds)
}

/// `--expires`: RFC 3339 or Unix seconds, as Unix seconds.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(time::OffsetDateTime::unix_timestamp)
        .map_err(|error| {
            anyhow!("--expires {text}: expected RFC 3339 (2025-12-31T23:59:59Z) or Unix seconds: {error}")
        })
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{seconds}"))
}

/// The state as the gateway will treat it: the portal keeps a consent
/// active past its end, the gateway refuses it.
fn effective_state(record: &pb::ConsentRecord, now: i64) -> &'static str {
    match record.state() {
        pb::ConsentState::Active if record.expires <= now => "expired",
        pb::ConsentState::Active if record.not_before > now => "not yet valid",
        state => state.name(),
    }
}

/// What the portal answered, shown escaped ([`Escaped`]): the portal is a
/// backend, and its text must not forge lines on the operator's terminal.
fn print_granted(record: &pb::ConsentRecord) {
    println!("granted consent {}", Escaped(&record.consent_id));
    println!("  citizen    {}", Escaped(&record.nin));
    println!("  consumer   {}", Escaped(&record.consumer));
    println!("  providers  {}", Escaped(record.providers.join(", ")));
    println!("  methods    {}", Escaped(record.methods.join(", ")));
    println!("  purpose    {}", Escaped(&record.purpose));
    println!(
        "  valid      {} to {}",
        rfc3339(record.not_before),
        rfc3339(record.expires)
    );
    println!("  max uses   {}", record.max_uses);
    println!("artefact, for the consumer's bridge-consent header:");
    println!("{}", Escaped(&record.artefact));
}

/// One line per consent, columns aligned; methods last, as they are long.
fn print_table(consents: &[pb::ConsentRecord], now: i64) {
    let mut rows = vec![
        [
            "ID", "CONSUMER", "PURPOSE", "STATE", "MAX USES", "EXPIRES", "METHODS",
        ]
        .map(str::to_owned),
    ];
    for record in consents {
        rows.push([
            Escaped(&record.consent_id).to_string(),
            Escaped(&record.consumer).to_string(),
            Escaped(&record.purpose).to_string(),
            effective_state(record, now).to_owned(),
            record.max_uses.to_string(),
            rfc3339(record.expires),
            Escaped(record.methods.join(",")).to_string(),
        ]);
    }
    let mut widths = [0; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if column + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        println!("{}", cells.join("  "));
    }
}

fn record_json(record: &pb::ConsentRecord) -> serde_json::Value {
    serde_json::json!({
        "consent_id": record.consent_id,
        "nin": record.nin,
        "consumer": record.consumer,
        "providers": record.providers,
        "methods": record.methods,
        "purpose": record.purpose,
        "not_before": rfc3339(record.not_before),
        "expires": rfc3339(record.expires),
        "max_uses": record.max_uses,
        "state": record.state().name(),
        "granted_at": rfc3339(record.granted_at),
        "artefact": record.artefact,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_takes_days_and_configuration_durations() {
        assert_eq!(parse_validity("30d").ok(), Some(30 * 86_400));
        assert_eq!(parse_validity("12h").ok(), Some(12 * 3600));
        assert_eq!(parse_validity("45m").ok(), Some(45 * 60));
        for bad in ["", "d", "30", "-1d", "0d", "10ms", "1w", "1.5d"] {
            assert!(parse_validity(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn expiry_takes_rfc_3339_or_unix_seconds() {
        assert_eq!(parse_time("1767225599").ok(), Some(1_767_225_599));
        assert_eq!(parse_time("2025-12-31T23:59:59Z").ok(), Some(1_767_225_599));
        assert!(parse_time("tomorrow").is_err());
    }

    #[test]
    fn unspecified_listen_addresses_are_reached_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        govbridge::dev::write_descriptors(dir.path()).unwrap();
        let config = Config::parse(
            &dir.path().join("dev.toml"),
            govbridge::dev::CONFIG_TEMPLATE,
        );
        let Ok(mut config) = config else {
            panic!("the dev configuration parses");
        };
        config.gateway.listen = SocketAddr::from(([0, 0, 0, 0], 8443));
        assert_eq!(
            listen_address(&config).ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 8443)))
        );
        config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        assert!(listen_address(&config).is_err());
    }
}
