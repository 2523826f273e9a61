//! `govbridge dev`: the whole exchange on one machine, in one command.
//!
//! Creates a development PKI and configuration under a directory if they
//! are missing, then starts every mock agency and the gateway in one
//! process until Ctrl-C or SIGTERM. Nothing here is meant for production:
//! the CA key sits next to the certificates it signs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::agencies::config::AgenciesConfig;
use crate::agencies::{Agency, Dataset};
use crate::launch::{BoundAgency, Shutdown};
use crate::pki::{self, CertificateAuthority, LeafRequest, PkiError, Usage};
use gateway::config::{Config, ConfigBuilder};
use gateway::consent::artefact::{ConsentSigner, IssuerKeys};
use gateway::identity::MemberId;
use gateway::proxy::Gateway;
use gateway::proxy::signals::termination_signal;

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

    let gateway = member(GATEWAY_IDENTITY)?;
    let mut server = LeafRequest::loopback_server("govbridge gateway");
    server.member = Some(gateway.clone());
    ca.issue(&server)?.write(dir, "gateway")?;
    ca.issue(&LeafRequest::member(&gateway))?
        .write(dir, "gateway-upstream")?;

    for agency in Agency::ALL {
        let mut request = LeafRequest::loopback_server(agency.name());
        request.member = Some(agency.member_id());
        request.usage = Usage::ServerAndClient;
        ca.issue(&request)?
            .write(dir, &format!("agency-{}", agency.name()))?;
    }
    for (stem, id) in DEMO_MEMBERS {
        ca.issue(&LeafRequest::member(&member(id)?))?
            .write(dir, &format!("member-{stem}"))?;
    }

    // MyGov's consent signing key, and the key set the gateway trusts.
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
    )?;
    Ok(())
}

/// Makes `dir/govbridge.toml`, `dir/pki/` and `dir/policies/` if they are
/// missing, and
/// returns the configuration's path.
pub fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    let config = dir.join("govbridge.toml");
    let pki_dir = dir.join("pki");
    if !pki_dir.join(pki::CA_CERT).exists() {
        init_pki(&pki_dir)
            .with_context(|| format!("creating the dev PKI in {}", pki_dir.display()))?;
        println!("created the dev PKI in {}", pki_dir.display());
    }
    if !config.exists() {
        pki::write_file(&config, CONFIG_TEMPLATE.as_bytes(), 0o644)?;
        println!("wrote {}", config.display());
    }
    let policies = dir.join("policies");
    if !policies.exists() {
        write_policies(&policies)?;
        println!("wrote the dev policies in {}", policies.display());
    }
    Ok(config)
}

/// Runs every mock agency and the gateway until Ctrl-C or SIGTERM. With
/// `faults`, the agencies fail on request (the `govbridge-fault` header,
/// see [`crate::agencies::fault`]).
pub async fn run(dir: &Path, faults: bool) -> anyhow::Result<()> {
    let config_path = prepare(dir)?;
    let config = Config::load(&config_path)?;
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
    let gateway = Gateway::bind(&config).await?;
    let address = gateway.local_addr()?;
    gateway.reloader().reload_on_sighup();
    gateway
        .reloader()
        .reload_on_file_change(std::time::Duration::from_secs(2));
    // Stopped before the agencies, so that the calls it lets finish can
    // still reach them.
    let (stop_gateway, gateway_stopping) = Shutdown::new();
    let gateway = tokio::spawn(gateway.serve(gateway_stopping.wait()));

    let pki_dir = dir.join("pki");
    println!();
    println!("govbridge gateway listening on https://{address} (mutual TLS, HTTP/2)");
    println!(
        "  CA certificate      {}",
        pki_dir.join(pki::CA_CERT).display()
    );
    for (stem, id) in DEMO_MEMBERS {
        println!(
            "  member certificate  {}  (+ .key)  {id}",
            pki_dir.join(format!("member-{stem}.pem")).display()
        );
    }
    for (name, address) in &started {
        println!("  agency              {name:<18} https://{address}");
    }
    println!(
        "  synthetic data      seed {} ({} citizens)",
        agencies.seed,
        data.citizens.len()
    );
    println!("Stop with Ctrl-C.");

    termination_signal().await;
    println!("stopping: draining open calls");
    stop_gateway.trigger();
    let _ = gateway.await;
    trigger.trigger();
    while tasks.join_next().await.is_some() {}
    Ok(())
}
