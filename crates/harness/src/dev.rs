//! `govbridge dev`: the whole exchange on one machine, in one command.
//!
//! Creates a development PKI and configuration under a directory if they
//! are missing, then starts every mock agency and the gateway in one
//! process until Ctrl-C or SIGTERM. Nothing here is meant for production:
//! the CA key sits next to the certificates it signs.

/// Prints a line on standard output and goes on when nobody reads it any
/// more (`govbridge dev | head`): a closed pipe is no reason to stop
/// serving, nor to panic.
macro_rules! say {
    ($($line:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($line)*);
    }};
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::agencies::config::AgenciesConfig;
use crate::agencies::{Agency, Dataset};
use crate::launch::{BoundAgency, Shutdown};
use crate::pki::{self, CertificateAuthority, LeafRequest, PkiError, Usage};
use gateway::config::{Config, ConfigBuilder};
use gateway::consent::artefact::{ConsentSigner, IssuerKeys};
use gateway::exchange_log;
use gateway::identity::MemberId;
use gateway::proxy::Gateway;

/// The development configuration, also shipped as `config/govbridge.toml`.
pub const CONFIG_TEMPLATE: &str = include_str!("../../../config/govbridge.toml");

/// The dev policies, also shipped in `config/policies/`: (file, contents).
pub const DEV_POLICIES: [(&str, &str); 8] = [
    (
        "schema.cedarschema",
        include_str!("../../../config/policies/schema.cedarschema"),
    ),
    (
        "00-gateway.cedar",
        include_str!("../../../config/policies/00-gateway.cedar"),
    ),
    (
        "civil-registry.cedar",
        include_str!("../../../config/policies/civil-registry.cedar"),
    ),
    (
        "tax.cedar",
        include_str!("../../../config/policies/tax.cedar"),
    ),
    (
        "business-registry.cedar",
        include_str!("../../../config/policies/business-registry.cedar"),
    ),
    (
        "banks.cedar",
        include_str!("../../../config/policies/banks.cedar"),
    ),
    (
        "mygov.cedar",
        include_str!("../../../config/policies/mygov.cedar"),
    ),
    (
        "tests.toml",
        include_str!("../../../config/policies/tests.toml"),
    ),
];

/// Writes the dev policies into `dir`.
pub fn write_policies(dir: &Path) -> Result<(), PkiError> {
    for (name, contents) in DEV_POLICIES {
        pki::write_file(&dir.join(name), contents.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Where the dev configuration's services find their descriptor sets.
pub const DESCRIPTORS: &str = "descriptors";

/// The path, relative to the configuration, of the descriptor set that
/// declares the agency service `service` (`govbridge.tax.v1.TaxAuthority`
/// is in `descriptors/tax.binpb`), if an agency publishes it.
pub fn descriptor_of(service: &str) -> Option<PathBuf> {
    let package = service.strip_prefix("govbridge.")?.split('.').next()?;
    gateway::proto::AGENCY_DESCRIPTOR_SETS
        .iter()
        .any(|(name, _)| *name == package)
        .then(|| Path::new(DESCRIPTORS).join(format!("{package}.binpb")))
}

/// Writes the agencies' descriptor sets (built from `proto/` with this
/// binary) into `dir/descriptors/`, replacing those that differ. Returns
/// how many it wrote.
pub fn write_descriptors(dir: &Path) -> Result<usize, PkiError> {
    let mut written = 0;
    for (name, set) in gateway::proto::AGENCY_DESCRIPTOR_SETS {
        let path = dir.join(DESCRIPTORS).join(format!("{name}.binpb"));
        if std::fs::read(&path).ok().as_deref() != Some(set) {
            pki::write_file(&path, set, 0o644)?;
            written += 1;
        }
    }
    Ok(written)
}

/// MyGov's consent signing key (PKCS#8 PEM) in the dev PKI.
pub const CONSENT_KEY: &str = "mygov-consent.key";
/// The key set the gateway trusts for consent artefacts (JWKS).
pub const CONSENT_KEYS: &str = "mygov-consent.jwks";
/// The key id of the dev consent key.
pub const CONSENT_KEY_ID: &str = "mygov-dev-1";

/// The gateway's identity towards backends in the dev PKI.
pub const GATEWAY_IDENTITY: &str = "SN/GOV/GOVBRIDGE/gateway";

/// Partner members that get a client certificate in the dev PKI:
/// (file stem, member id). Files are `pki/member-STEM.pem` and `.key`.
pub const DEMO_MEMBERS: [(&str, &str); 7] = [
    ("cbao-kyc", "SN/COM/CBAO/kyc"),
    ("cbao-credit", "SN/COM/CBAO/credit"),
    ("ecobank-kyc", "SN/COM/ECOBANK/kyc"),
    ("treasury", "SN/GOV/DGCPT/treasury"),
    ("sonatel-payroll", "SN/COM/SONATEL/payroll"),
    ("mygov", "SN/GOV/MYGOV/app"),
    ("dgid-tax", "SN/GOV/DGID/tax"),
];

fn member(id: &str) -> Result<MemberId, PkiError> {
    MemberId::parse(id).map_err(|error| PkiError::Name(format!("{id}: {error}")))
}

/// Points `config` at the gateway's own files of a dev PKI in `pki`, as
/// [`init_pki`] names them.
pub fn gateway_tls<'a>(config: &'a mut ConfigBuilder, pki: &Path) -> &'a mut ConfigBuilder {
    config
        .server_tls(
            &pki.join("gateway.pem"),
            &pki.join("gateway.key"),
            &pki.join("ca.pem"),
            &[&pki.join("crl.pem")],
        )
        .upstream_tls(
            &pki.join("gateway-upstream.pem"),
            &pki.join("gateway-upstream.key"),
            &pki.join("ca.pem"),
        )
}

/// Writes a complete dev PKI into `dir`: the CA, an empty CRL, the
/// gateway's server and upstream certificates, one server certificate per
/// mock agency and one client certificate per demo member.
pub fn init_pki(dir: &Path) -> Result<(), PkiError> {
    let ca = CertificateAuthority::generate("govbridge dev root CA")?;
    ca.write(dir)?;
    pki::write_empty_crl(&ca, dir)?;
    for (stem, request) in leaves()? {
        ca.issue(&request)?.write(dir, &stem)?;
    }
    write_consent_keys(dir)
}

/// The dev PKI's leaves, by file stem: the gateway's (its listener's, and
/// its client certificate towards the agencies), each agency's, each demo
/// member's.
fn leaves() -> Result<Vec<(String, LeafRequest)>, PkiError> {
    let gateway = member(GATEWAY_IDENTITY)?;
    let mut server = LeafRequest::loopback_server("govbridge gateway");
    server.member = Some(gateway.clone());
    let mut leaves = vec![
        ("gateway".to_owned(), server),
        ("gateway-upstream".to_owned(), LeafRequest::member(&gateway)),
    ];
    for agency in Agency::ALL {
        let mut request = LeafRequest::loopback_server(agency.name());
        request.member = Some(agency.member_id());
        request.usage = Usage::ServerAndClient;
        leaves.push((format!("agency-{}", agency.name()), request));
    }
    for (stem, id) in DEMO_MEMBERS {
        leaves.push((format!("member-{stem}"), LeafRequest::member(&member(id)?)));
    }
    Ok(leaves)
}

/// MyGov's consent signing key, and the key set the gateway trusts.
fn write_consent_keys(dir: &Path) -> Result<(), PkiError> {
    let signer = ConsentSigner::generate(CONSENT_KEY_ID)
        .map_err(|error| PkiError::Name(error.to_string()))?;
    let key = dir.join(CONSENT_KEY);
    signer
        .write(&key)
        .map_err(|source| PkiError::Io { path: key, source })?;
    pki::write_file(
        &dir.join(CONSENT_KEYS),
        IssuerKeys::jwks(&[&signer]).as_bytes(),
        0o644,
    )
}

/// How long a dev leaf may have left before a start issues it again.
pub const RENEW_WITHIN: time::Duration = time::Duration::days(30);

/// Issues again, from the dev CA in `dir`, each leaf that is missing or
/// has less than [`RENEW_WITHIN`] left (leaves last a year: a dev
/// directory used again later would otherwise refuse every handshake),
/// and the consent keys if either is missing. Returns the stems issued.
pub fn renew_pki(dir: &Path) -> Result<Vec<String>, PkiError> {
    let due = (time::OffsetDateTime::now_utc() + RENEW_WITHIN).unix_timestamp();
    let mut renewed = Vec::new();
    let mut ca = None;
    for (stem, request) in leaves()? {
        let pem = dir.join(format!("{stem}.pem"));
        let expires = gateway::identity::tls::load_certificates(&pem)
            .ok()
            .and_then(|chain| gateway::identity::tls::certificate_not_after(chain.first()?));
        let key_there = dir.join(format!("{stem}.key")).exists();
        if key_there && expires.is_some_and(|expires| expires > due) {
            continue;
        }
        let ca = match &ca {
            Some(ca) => ca,
            None => ca.insert(CertificateAuthority::load(dir)?),
        };
        ca.issue(&request)?.write(dir, &stem)?;
        renewed.push(stem);
    }
    if !dir.join(CONSENT_KEY).exists() || !dir.join(CONSENT_KEYS).exists() {
        write_consent_keys(dir)?;
        renewed.push("consent keys".to_owned());
    }
    Ok(renewed)
}

/// Makes `dir/govbridge.toml`, `dir/pki/` and `dir/policies/` if they are
/// missing, writes the agencies' descriptor sets (`dir/descriptors/`, kept
/// up to date with this binary's protos), and returns the configuration's
/// path.
pub fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    let config = dir.join("govbridge.toml");
    let pki_dir = dir.join("pki");
    if !pki_dir.join(pki::CA_CERT).exists() {
        init_pki(&pki_dir)
            .with_context(|| format!("creating the dev PKI in {}", pki_dir.display()))?;
        say!("created the dev PKI in {}", pki_dir.display());
    } else {
        if pki::refresh_crl(&pki_dir)
            .with_context(|| format!("renewing the dev CRL in {}", pki_dir.display()))?
        {
            say!(
                "renewed the dev CRL in {} (30 days more)",
                pki_dir.display()
            );
        }
        let renewed = renew_pki(&pki_dir)
            .with_context(|| format!("renewing the dev PKI in {}", pki_dir.display()))?;
        if !renewed.is_empty() {
            say!(
                "issued again in {} (missing, or expiring within 30 days): {}",
                pki_dir.display(),
                renewed.join(", ")
            );
        }
    }
    if !config.exists() {
        pki::write_file(&config, CONFIG_TEMPLATE.as_bytes(), 0o644)?;
        say!("wrote {}", config.display());
    }
    let policies = dir.join("policies");
    if !policies.exists() {
        write_policies(&policies)?;
        say!("wrote the dev policies in {}", policies.display());
    }
    if write_descriptors(dir)? > 0 {
        say!(
            "wrote the agencies' descriptor sets in {}",
            dir.join(DESCRIPTORS).display()
        );
    }
    Ok(config)
}

/// A dev configuration that no longer loads: written by an older
/// govbridge, it may lack what this one needs (a service's descriptor,
/// say), so an error in the file itself also says how to get a fresh one.
pub fn stale_hint(config: &Path, error: gateway::config::ConfigError) -> anyhow::Error {
    if error.file != config {
        return error.into();
    }
    anyhow::anyhow!(
        "{error}\n(`govbridge dev` wrote {} if it was missing, maybe with an older version: if \
         it is not your own mistake, move it aside and run again for a fresh one, then carry \
         your edits over)",
        config.display()
    )
}

/// Writes `dir/node-N.toml` for node `index` (0-based) of a fleet: the dev
/// configuration with its own node id (`<node_id>-N`), ports (the dev
/// ports plus `index`), exchange log (`node-N-data/`) and the fleet's
/// `[store] url`. Returns its path.
pub fn write_node_config(config_path: &Path, index: usize, url: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not TOML", config_path.display()))?;
    let number = index + 1;
    let offset = u16::try_from(index).context("too many nodes")?;
    let shifted = |value: Option<&toml::Value>, key: &str| -> anyhow::Result<toml::Value> {
        let address: std::net::SocketAddr = value
            .and_then(toml::Value::as_str)
            .with_context(|| format!("{}: no gateway.{key}", config_path.display()))?
            .parse()
            .with_context(|| format!("{}: gateway.{key}", config_path.display()))?;
        let port = address
            .port()
            .checked_add(offset)
            .context("port out of range")?;
        Ok(std::net::SocketAddr::new(address.ip(), port)
            .to_string()
            .into())
    };
    let gateway = table
        .get_mut("gateway")
        .and_then(toml::Value::as_table_mut)
        .with_context(|| format!("{}: no [gateway]", config_path.display()))?;
    let node_id = gateway
        .get("node_id")
        .and_then(toml::Value::as_str)
        .unwrap_or("gw")
        .to_owned();
    gateway.insert("node_id".into(), format!("{node_id}-{number}").into());
    let listen = shifted(gateway.get("listen"), "listen")?;
    gateway.insert("listen".into(), listen);
    if gateway.contains_key("admin") {
        let admin = shifted(gateway.get("admin"), "admin")?;
        gateway.insert("admin".into(), admin);
    }
    let log = table
        .entry("exchange_log")
        .or_insert_with(|| toml::Table::new().into());
    if let Some(log) = log.as_table_mut() {
        log.insert("data_dir".into(), format!("node-{number}-data").into());
        // One log for the fleet, under one name (the nodes' ids differ).
        log.entry("origin")
            .or_insert_with(|| format!("govbridge/{node_id}").into());
    }
    let mut store = toml::Table::new();
    store.insert("url".into(), url.into());
    table.insert("store".into(), store.into());
    let path = config_path.with_file_name(format!("node-{number}.toml"));
    let text = format!(
        "# Node {number} of the dev fleet, written by `govbridge dev --nodes` from \
         govbridge.toml at each start: edits here last until the next start.\n{table}"
    );
    pki::write_file(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}

/// Writes `dir/federation.toml`: the dev configuration with what reaches
/// `partner` (its CA, gateway and key; its providers as further providers
/// of the services) and policies (`dir/policies-federation/`: the dev
/// ones, and licensed banks calling the partner for trade finance).
pub(crate) fn write_federated_config(
    config_path: &Path,
    config: &Config,
    partner: &crate::partner::PartnerInstance,
    key: &Path,
    federation: Federation,
) -> anyhow::Result<PathBuf> {
    let path = config_path.with_file_name("federation.toml");
    federate_config(config_path, config, partner, key, federation, &path)?;
    Ok(path)
}

/// The gateway file `config_path` (`config`) federated with `partner` as
/// `dev --federation` federates the dev configuration, written to `out`
/// (which may be `config_path`): `[federation.AZ]` (the partner
/// witnessing this log; with `federation.receipts`, its receipts kept and
/// its log witnessed here), its providers and services, and the dev
/// policies plus licensed banks calling the partner for trade finance
/// (`policies-federation/` beside it). `key` is this gateway's federation
/// key.
pub fn federate_config(
    config_path: &Path,
    config: &Config,
    partner: &crate::partner::PartnerInstance,
    key: &Path,
    federation: Federation,
    out: &Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not TOML", config_path.display()))?;
    let home: Vec<(&str, &str)> = config
        .services
        .values()
        .flat_map(|service| {
            service
                .providers
                .iter()
                .map(|provider| (provider.as_str(), service.name.as_str()))
        })
        .collect();
    let fragment: toml::Table = partner.home_fragment(key, &home).parse()?;
    merge(&mut table, fragment);
    // The partner's receipt of each call forwarded there, fetched and kept
    // (checked under its log key).
    if let Some(log) = partner.exchange_log().filter(|_| federation.receipts) {
        let log_key = log.dir().join(gateway::exchange_log::store::VERIFIER_FILE);
        let mut partner_table = toml::Table::new();
        partner_table.insert("log_key".into(), log_key.display().to_string().into());
        partner_table.insert("receipts".into(), true.into());
        let mut federation = toml::Table::new();
        federation.insert(crate::partner::INSTANCE.into(), partner_table.into());
        let mut receipts = toml::Table::new();
        receipts.insert("federation".into(), federation.into());
        merge(&mut table, receipts);
    }
    // Or all of that learned from the partner's directory: where it is,
    // and under which CA and key, is all the section says.
    if let Some(directory) = &federation.directory
        && let Some(section) = table
            .get_mut("federation")
            .and_then(|federation| federation.get_mut(crate::partner::INSTANCE))
            .and_then(toml::Value::as_table_mut)
    {
        for written in [
            "ca",
            "crls",
            "gateway",
            "endpoints",
            "tls_name",
            "key",
            "log_key",
        ] {
            section.remove(written);
        }
        section.insert("directory".into(), directory.url.clone().into());
        section.insert(
            "directory_ca".into(),
            directory.ca.display().to_string().into(),
        );
        section.insert(
            "directory_key".into(),
            directory.key.display().to_string().into(),
        );
    }
    let dir = config_path.parent().unwrap_or(Path::new("."));
    // The dev policies as they are now (a member's policy added to them
    // included), and the partner's on top: made anew at each start.
    let policies = dir.join("policies-federation");
    let source = table
        .get("policy")
        .and_then(|policy| policy.get("policies"))
        .and_then(toml::Value::as_str)
        .map_or_else(|| dir.join("policies"), |path| dir.join(path));
    if policies.exists() {
        std::fs::remove_dir_all(&policies)
            .with_context(|| format!("removing {}", policies.display()))?;
    }
    match std::fs::read_dir(&source) {
        Ok(entries) => {
            std::fs::create_dir_all(&policies)
                .with_context(|| format!("creating {}", policies.display()))?;
            for path in entries.flatten().map(|entry| entry.path()) {
                if path.is_file() && path.extension().is_some_and(|ext| ext == "cedar") {
                    let to = policies.join(path.file_name().unwrap_or_default());
                    std::fs::copy(&path, &to).with_context(|| {
                        format!("copying {} to {}", path.display(), to.display())
                    })?;
                }
            }
        }
        Err(_) => write_policies(&policies)?,
    }
    let providers: Vec<String> = crate::partner::PROVIDERS
        .iter()
        .map(|(id, _, _)| format!("resource == Provider::\"{id}\""))
        .collect();
    let abroad = format!(
        "// Licensed banks may call the partner instance's services, for trade finance.\n\
         @id(\"licensed-banks-trade-finance-abroad\")\n\
         permit (principal in Group::\"licensed-banks\", action, resource)\n\
         when {{ context.purpose == \"{}\" && ({}) }};\n",
        crate::partner::PURPOSE,
        providers.join(" || ")
    );
    pki::write_file(&policies.join("abroad.cedar"), abroad.as_bytes(), 0o644)?;
    if let Some(policy) = table.get_mut("policy").and_then(toml::Value::as_table_mut) {
        policy.insert("policies".into(), "policies-federation".into());
    }
    let text = format!(
        "# The dev configuration federated with a partner instance, written by \
         `govbridge dev --federation` at each start: edits here last until the next start.\n{table}"
    );
    pki::write_file(out, text.as_bytes(), 0o644)?;
    Ok(())
}

/// `from` merged into `into`: tables merge, other values replace.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                merge(existing, table);
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Copies the fleet log's signing key `key` into node data directory
/// `data`, unless the node has one.
pub(crate) fn share_key(key: &Path, data: &Path) -> anyhow::Result<()> {
    let target = data.join(exchange_log::store::KEY_FILE);
    if target.exists() {
        return Ok(());
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data)
            .with_context(|| format!("cannot create {}", data.display()))?;
    }
    let pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    pki::write_file(&target, &pem, 0o600)?;
    Ok(())
}

/// Where `govbridge dev --federation` runs the partner instance's gateway
/// and its admin endpoint.
pub const PARTNER_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 9443);
pub const PARTNER_ADMIN: ([u8; 4], u16) = ([127, 0, 0, 1], 9465);

/// Runs every mock agency and the gateway until Ctrl-C or SIGTERM. With
/// `faults`, the agencies fail on request (the `govbridge-fault` header,
/// see [`crate::agencies::fault`]). With `nodes` above one, the gateway
/// is a fleet of that many nodes on consecutive ports, sharing a
/// throwaway PostgreSQL cluster in `dir/postgres`. With `federation`, a
/// partner instance (Azerbaijan, [`crate::partner`]) runs in `dir/az`,
/// federated with this one.
/// How `dev` runs a partner instance beside this one.
#[derive(Debug, Clone, Default)]
pub struct Federation {
    /// Whether this instance's gateway keeps the partner's receipts.
    pub receipts: bool,
    /// The partner's directory, which this instance's gateway follows to
    /// learn how to reach and trust it; without one, that is written out
    /// in `[federation.XX]`.
    pub directory: Option<crate::partner::PartnerDirectory>,
}

pub async fn run(
    dir: &Path,
    faults: bool,
    nodes: usize,
    federation: Option<Federation>,
) -> anyhow::Result<()> {
    if federation.is_some() && nodes > 1 {
        anyhow::bail!("--federation runs one node of each instance: leave out --nodes");
    }
    // `dev` belongs to its terminal: when it closes (SIGHUP), everything
    // stops as on Ctrl-C, the fleet's database included. (It reloads by
    // itself when its files change.) Listened for from the start, so that
    // a signal while starting does not kill it before it can clean up: it
    // finishes starting, then stops.
    let mut stop = crate::sandbox::manifest::Stop::listen(false)?;
    let config_path = prepare(dir)?;
    let config = Config::load(&config_path).map_err(|error| stale_hint(&config_path, error))?;
    let agencies = AgenciesConfig::load(&config_path)?;
    let agencies = agencies
        .as_ref()
        .with_context(|| format!("{}: no [agencies] section", config_path.display()))?;
    let data = Arc::new(Dataset::generate(agencies.seed));

    let (trigger, shutdown) = Shutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = Vec::new();
    for agency in agencies.agencies.values() {
        let bound = BoundAgency::bind(
            agency.agency,
            agency.listen,
            &agencies.server_tls(agency),
            config.gateway.identity.clone(),
            data.clone(),
            agency.signing_key.as_ref(),
        )
        .await?;
        let bound = if faults { bound.with_faults().0 } else { bound };
        started.push((agency.agency.name(), bound.local_addr()?));
        tasks.spawn(bound.serve(shutdown.clone().wait()));
    }
    let (cluster, node_configs) = if nodes > 1 {
        let postgres = dir.join("postgres");
        let cluster =
            tokio::task::spawn_blocking(move || crate::postgres::Cluster::start(&postgres))
                .await?
                .context("starting the fleet's PostgreSQL")?;
        say!("PostgreSQL for the fleet: {}", cluster.url());
        let configs = (0..nodes)
            .map(|index| write_node_config(&config_path, index, &cluster.url()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        (Some(cluster), configs)
    } else {
        (None, vec![config_path.clone()])
    };
    let partner = if let Some(mut federation) = federation {
        let partner = crate::partner::PartnerInstance::start(
            &dir.join("az"),
            SocketAddr::from(PARTNER_LISTEN),
            SocketAddr::from(PARTNER_ADMIN),
            agencies.seed,
            &shutdown,
        )
        .await
        .context("starting the partner instance")?;
        let key = dir.join("pki").join("federation.key");
        crate::partner::write_federation_key(&key, config.gateway.identity.instance())?;
        // Its directory, which this instance's gateway learns it from.
        federation.directory = Some(
            partner
                .serve_directory(&dir.join("az").join("directory"), &shutdown)
                .await
                .context("serving the partner's directory")?,
        );
        Some((partner, key, federation))
    } else {
        None
    };
    let node_configs = match &partner {
        Some((partner, key, federation)) => {
            let path =
                write_federated_config(&config_path, &config, partner, key, federation.clone())?;
            // What the partner publishes, fetched before the gateway
            // loads it, as `govbridge serve` does.
            gateway::proxy::global::prepare(&path)
                .await
                .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?
                .log();
            vec![path]
        }
        None => node_configs,
    };
    // Stopped before the agencies, so that the calls they let finish can
    // still reach them.
    let (stop_gateway, gateway_stopping) = Shutdown::new();
    let mut gateways = Vec::new();
    let mut listening = Vec::new();
    let mut log_key = None;
    for path in &node_configs {
        let config = Config::load(path)?;
        // The first node makes the fleet log's key; the others sign with
        // the same.
        match &log_key {
            None => {
                log_key = Some(
                    config
                        .exchange_log
                        .data_dir
                        .join(exchange_log::store::KEY_FILE),
                )
            }
            Some(key) => share_key(key, &config.exchange_log.data_dir)?,
        }
        let gateway = Gateway::bind(&config).await?;
        if let Some((partner, key, _)) = &partner {
            // Trusted by the partner before this gateway starts calling it
            // (its health checks first); its log, just opened, witnessed.
            partner.federate(&crate::partner::Home {
                ca: dir.join("pki").join(pki::CA_CERT),
                gateway: config.gateway.identity.clone(),
                endpoint: gateway.local_addr()?,
                key: key.clone(),
                log_key: Some(
                    config
                        .exchange_log
                        .data_dir
                        .join(exchange_log::store::VERIFIER_FILE),
                ),
                witnessed: false,
            })?;
        }
        listening.push((
            config.gateway.node_id.clone(),
            gateway.local_addr()?,
            gateway.admin_addr(),
        ));
        gateway
            .reloader()
            .reload_on_file_change(std::time::Duration::from_secs(2));
        gateway.reloader().follow_partners();
        gateways.push(tokio::spawn(gateway.serve(gateway_stopping.clone().wait())));
    }

    let pki_dir = dir.join("pki");
    say!();
    for (node, address, admin) in &listening {
        let admin = admin
            .map(|admin| format!(", admin http://{admin}"))
            .unwrap_or_default();
        say!(
            "govbridge gateway {node} listening on https://{address} (mutual TLS: gRPC, and JSON over HTTP/1.1 or HTTP/2){admin}"
        );
    }
    if let Some(node) = node_configs.first().filter(|_| nodes > 1) {
        say!(
            "  fleet               govbridge fleet status --config {}",
            node.display()
        );
    }
    say!(
        "  CA certificate      {}",
        pki_dir.join(pki::CA_CERT).display()
    );
    for (stem, id) in DEMO_MEMBERS {
        say!(
            "  member certificate  {}  (+ .key)  {id}",
            pki_dir.join(format!("member-{stem}.pem")).display()
        );
    }
    for (name, address) in &started {
        say!("  agency              {name:<18} https://{address}");
    }
    say!(
        "  synthetic data      seed {} ({} citizens)",
        agencies.seed,
        data.citizens.len()
    );
    if let Some((partner, _, federation)) = &partner {
        let (_, home, _) = listening.first().context("no gateway started")?;
        let admin = partner
            .admin_addr()
            .map(|admin| format!(", admin http://{admin}"))
            .unwrap_or_default();
        say!(
            "partner instance {} gateway on https://{}{admin}, in {}",
            crate::partner::INSTANCE,
            partner.address(),
            partner.path("").display()
        );
        if let Some(directory) = &federation.directory {
            say!(
                "  its directory       {} (signed by {}; this instance's gateway learns it \
                 from there)",
                directory.url,
                directory.key.display()
            );
        }
        let company = &partner.companies().companies()[0].voen;
        say!(
            "  across the border   grpcurl -cacert {ca} -cert {cert} -key {key} \\\n    \
             -H 'bridge-purpose: {purpose}' -H 'bridge-reason: letter of credit' \\\n    \
             -H 'bridge-user-id: officer-17' -d '{{\"voen\": \"{company}\"}}' \\\n    \
             {home} govbridge.azbusiness.v1.CompanyRegistry/GetCompany",
            ca = pki_dir.join(pki::CA_CERT).display(),
            cert = pki_dir.join("member-cbao-kyc.pem").display(),
            key = pki_dir.join("member-cbao-kyc.key").display(),
            purpose = crate::partner::PURPOSE,
        );
    }
    say!("Stop with Ctrl-C.");

    let reason = stop.next().await;
    say!("stopping ({reason}): draining open calls; stop again to end at once");
    stop_gateway.trigger();
    let drained = async {
        for gateway in gateways {
            let _ = gateway.await;
        }
        trigger.trigger();
        while tasks.join_next().await.is_some() {}
    };
    tokio::select! {
        () = drained => {}
        reason = stop.next() => say!("stopped at once ({reason})"),
    }
    // The database last: the nodes said they stopped.
    drop(cluster);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each node of a dev fleet gets its own id, ports and log, and the
    /// fleet's database; the rest is the dev configuration.
    #[test]
    fn node_configurations_differ_only_where_nodes_must() {
        let dir = tempfile::tempdir().unwrap();
        let base = prepare(dir.path()).unwrap();
        let url = "postgres://govbridge@127.0.0.1:5999/govbridge";
        let first = Config::load(&write_node_config(&base, 0, url).unwrap()).unwrap();
        let third = Config::load(&write_node_config(&base, 2, url).unwrap()).unwrap();
        let dev = Config::load(&base).unwrap();
        assert_eq!(first.gateway.node_id, format!("{}-1", dev.gateway.node_id));
        assert_eq!(third.gateway.node_id, format!("{}-3", dev.gateway.node_id));
        assert_eq!(first.gateway.listen, dev.gateway.listen);
        assert_eq!(third.gateway.listen.port(), dev.gateway.listen.port() + 2);
        assert_eq!(
            third.gateway.admin.unwrap().port(),
            dev.gateway.admin.unwrap().port() + 2
        );
        assert_eq!(third.exchange_log.data_dir, dir.path().join("node-3-data"));
        assert_eq!(third.store.as_ref().unwrap().url, url);
        assert_eq!(first.fleet_fingerprint(), third.fleet_fingerprint());
    }

    /// `--federation` runs the dev policies as they are, a member's policy
    /// added to them included, with the partner's on top.
    #[tokio::test]
    async fn the_federated_configuration_runs_the_dev_policies_as_edited() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = prepare(dir.path()).unwrap();
        let added = "@id(\"a-new-member\")\npermit (principal, action, resource) when { false };\n";
        std::fs::write(dir.path().join("policies/new-member.cedar"), added).unwrap();
        let config = Config::load(&config_path).unwrap();
        let (stop, shutdown) = crate::launch::Shutdown::new();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let partner = crate::partner::PartnerInstance::start(
            &dir.path().join("az"),
            loopback,
            loopback,
            221,
            &shutdown,
        )
        .await
        .unwrap();
        let key = dir.path().join("pki/federation.key");
        crate::partner::write_federation_key(&key, "SN").unwrap();
        let federation = Federation {
            receipts: false,
            directory: None,
        };
        let federated =
            write_federated_config(&config_path, &config, &partner, &key, federation).unwrap();
        let loaded = Config::load(&federated).unwrap();
        let policies = &loaded.policy.policies;
        assert_eq!(
            std::fs::read_to_string(policies.join("new-member.cedar")).unwrap(),
            added
        );
        assert!(policies.join("abroad.cedar").is_file());
        drop(stop);
        partner.stopped().await;
    }

    /// A dev directory used again after its leaves expired (or lost one)
    /// has them issued again from its CA at the next start; the CA and the
    /// leaves still good stay as they were.
    #[test]
    fn expired_or_missing_leaves_are_issued_again() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path()).unwrap();
        let pki = dir.path().join("pki");
        let read = |name: &str| std::fs::read(pki.join(name)).unwrap();
        let (ca, kept) = (read(pki::CA_CERT), read("member-treasury.pem"));
        let authority = CertificateAuthority::load(&pki).unwrap();
        let now = time::OffsetDateTime::now_utc();
        for stem in ["gateway", "agency-tax", "member-cbao-kyc"] {
            let mut old = LeafRequest::member(&member("SN/COM/CBAO/kyc").unwrap());
            (old.not_before, old.not_after) = (
                now - time::Duration::days(400),
                now - time::Duration::days(35),
            );
            authority.issue(&old).unwrap().write(&pki, stem).unwrap();
        }
        std::fs::remove_file(pki.join("member-dgid-tax.pem")).unwrap();
        std::fs::remove_file(pki.join(CONSENT_KEYS)).unwrap();

        prepare(dir.path()).unwrap();
        let due = (now + RENEW_WITHIN).unix_timestamp();
        for stem in [
            "gateway",
            "agency-tax",
            "member-cbao-kyc",
            "member-dgid-tax",
        ] {
            let chain = gateway::identity::tls::load_certificates(&pki.join(format!("{stem}.pem")))
                .unwrap();
            let expires = gateway::identity::tls::certificate_not_after(&chain[0]).unwrap();
            assert!(expires > due, "{stem}");
        }
        assert!(pki.join(CONSENT_KEYS).exists());
        assert_eq!(read(pki::CA_CERT), ca);
        assert_eq!(read("member-treasury.pem"), kept);
        // The configuration loads, and every handshake would: the leaves
        // are the CA's.
        Config::load(&dir.path().join("govbridge.toml")).unwrap();
    }
}
