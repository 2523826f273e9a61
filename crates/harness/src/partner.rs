//! A partner instance on this machine: Azerbaijan's, next to the dev
//! (Senegalese) one, for `govbridge dev --federation` and the tests.
//!
//! The partner has everything of its own: a CA, its gateway's certificates
//! and federation key, its policies (Senegal's licensed banks may read its
//! business registry and use its tax authority, for trade finance), its
//! exchange log, and its agencies (Azerbaijan's company registry, with
//! synthetic companies identified by VÖEN; the tax authority mock under an
//! Azerbaijani member id) and an echo backend.
//! [`PartnerInstance::home_fragment`] is what the home instance adds to
//! its configuration to reach it; [`PartnerInstance::federate`] makes the
//! partner trust the home instance in return.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gateway::config::{Config, ConfigBuilder};
use gateway::exchange_log::ExchangeLog;
use gateway::identity::MemberId;
use gateway::identity::tls::ServerTls;
use gateway::note::SigningKey;
use gateway::proxy::{Gateway, Reloader};

use crate::agencies::{Agency, Dataset};
use crate::bench::echo::EchoBackend;
use crate::launch::{BoundAgency, Shutdown};
use crate::pki::{self, CertificateAuthority, LeafRequest};

/// The partner's instance code.
pub const INSTANCE: &str = "AZ";
/// Its gateways' identity.
pub const GATEWAY: &str = "AZ/GOV/BRIDGE/gateway";
/// Its providers, with the service each publishes and its descriptor.
pub const PROVIDERS: [(&str, &str, &str); 3] = [
    (
        "AZ/GOV/ASAN/business-registry",
        "govbridge.azbusiness.v1.CompanyRegistry",
        "azbusiness",
    ),
    (
        "AZ/GOV/VERGI/tax-authority",
        "govbridge.aztax.v1.TaxService",
        "aztax",
    ),
    ("AZ/GOV/BRIDGE/echo", "govbridge.bench.v1.Echo", "bench"),
];
/// The home instance's members the partner serves (group `sn-banks`).
pub const HOME_MEMBERS: [&str; 2] = ["SN/COM/CBAO/kyc", "SN/COM/ECOBANK/kyc"];
/// The purpose the partner's policies serve them for.
pub const PURPOSE: &str = "TRADE-FINANCE";

/// The name of an instance's federation key (and of its verifier).
pub fn key_name(instance: &str) -> String {
    format!("{instance}-federation")
}

/// Writes a federation key and its verifiers (`path`; `path` with the
/// extension `.pub`, and `.witness.pub` for its cosignatures), unless
/// they exist.
pub fn write_federation_key(path: &Path, instance: &str) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let key = SigningKey::generate(&key_name(instance))?;
    pki::write_file(path, key.to_pem().as_bytes(), 0o600)?;
    pki::write_file(
        &path.with_extension("pub"),
        format!("{}\n", key.verifier()).as_bytes(),
        0o644,
    )?;
    // The same key as a witness's, for tlog tools (C2SP: type 0x04).
    pki::write_file(
        &path.with_extension("witness.pub"),
        format!("{}\n", key.cosignature_verifier()).as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// What the partner must know of the home instance to trust it.
#[derive(Debug, Clone)]
pub struct Home {
    /// Its CA certificate; the CRL beside it (`crl.pem`) when there is one.
    pub ca: PathBuf,
    /// Its gateway's identity.
    pub gateway: MemberId,
    /// Where its gateway listens.
    pub endpoint: SocketAddr,
    /// Its federation key (the `.pub` beside it is read).
    pub key: PathBuf,
    /// Its exchange log's verifier key: the partner then witnesses the
    /// home instance's log.
    pub log_key: Option<PathBuf>,
    /// Whether the home instance witnesses the partner's log: the partner
    /// then sends it its checkpoints.
    pub witnessed: bool,
}

/// A running partner instance.
#[derive(Clone)]
pub struct PartnerInstance {
    /// Its gateway's tasks, until [`Self::stopped`] takes them.
    tasks: Arc<std::sync::Mutex<Option<Tasks>>>,
    dir: PathBuf,
    address: SocketAddr,
    admin: Option<SocketAddr>,
    config: PathBuf,
    reloader: Reloader,
    log: Option<ExchangeLog>,
    agencies: Vec<(MemberId, SocketAddr)>,
    /// The registry's and the tax authority's fault switches.
    faults: Vec<crate::agencies::fault::FaultSwitch>,
    data: Arc<Dataset>,
    companies: Arc<crate::agencies::azerbaijan::Registry>,
}

/// A partner instance's gateway, serving until the shutdown given at its
/// start, and what reloads it as its files change.
#[derive(Debug)]
struct Tasks {
    serving: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
}

impl PartnerInstance {
    /// Writes the partner's PKI, keys, policies and configuration under
    /// `dir` and starts its backends and its gateway (on `listen`, admin on
    /// `admin`), until `shutdown`. It trusts no other instance until
    /// [`Self::federate`].
    pub async fn start(
        dir: &Path,
        listen: SocketAddr,
        admin: SocketAddr,
        seed: u64,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let pki = dir.join("pki");
        let gateway = member(GATEWAY)?;
        let ca = if pki.join(pki::CA_CERT).exists() {
            pki::refresh_crl(&pki)?;
            CertificateAuthority::load(&pki)?
        } else {
            let ca = CertificateAuthority::generate("Azerbaijan dev CA")?;
            ca.write(&pki)?;
            pki::write_empty_crl(&ca, &pki)?;
            ca
        };
        let server = |id: &MemberId, name: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
            let request = LeafRequest {
                member: Some(id.clone()),
                ..LeafRequest::loopback_server(name)
            };
            Ok(ca.issue(&request)?.write(&pki, name)?)
        };
        server(&gateway, "gateway")?;
        ca.issue(&LeafRequest::member(&gateway))?
            .write(&pki, "gateway-upstream")?;
        write_federation_key(&pki.join("federation.key"), INSTANCE)?;
        crate::dev::write_descriptors(dir)?;

        // Its own synthetic data: another seed than the home instance's.
        let data = Arc::new(Dataset::generate(seed.wrapping_add(1)));
        let mut agencies = Vec::new();
        let mut faults = Vec::new();
        for (index, (id, _, name)) in PROVIDERS.iter().enumerate() {
            let id = member(id)?;
            let (certificate, private_key) = server(&id, name)?;
            let tls = ServerTls {
                certificate,
                private_key,
                client_ca: pki.join(pki::CA_CERT),
                crls: Vec::new(),
                crl_grace: Duration::ZERO,
                partners: Vec::new(),
            };
            let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
            let address = match index {
                0 | 1 => {
                    let agency = if index == 0 {
                        Agency::AzCompanyRegistry
                    } else {
                        Agency::AzTaxService
                    };
                    let bound = BoundAgency::bind(
                        agency,
                        loopback,
                        &tls,
                        gateway.clone(),
                        data.clone(),
                        None,
                    )
                    .await?;
                    let (bound, switch) = bound.with_faults();
                    faults.push(switch);
                    let address = bound.local_addr()?;
                    tokio::spawn(bound.serve(shutdown.clone().wait()));
                    address
                }
                _ => {
                    let echo = EchoBackend::bind(loopback, &tls).await?;
                    let address = echo.local_addr()?;
                    tokio::spawn(echo.serve(shutdown.clone().wait()));
                    address
                }
            };
            agencies.push((id, address));
        }

        let policies = dir.join("policies");
        let (schema_name, schema) = crate::dev::DEV_POLICIES[0];
        pki::write_file(&policies.join(schema_name), schema.as_bytes(), 0o644)?;
        pki::write_file(
            &policies.join("home.cedar"),
            home_policy().as_bytes(),
            0o644,
        )?;

        let mut config = ConfigBuilder::new("gw-baku-1", &gateway);
        config
            .admin(admin)
            .server_tls(
                &pki.join("gateway.pem"),
                &pki.join("gateway.key"),
                &pki.join(pki::CA_CERT),
                &[&pki.join(pki::CRL)],
            )
            .upstream_tls(
                &pki.join("gateway-upstream.pem"),
                &pki.join("gateway-upstream.key"),
                &pki.join(pki::CA_CERT),
            )
            .policy(&policies.join(schema_name), &policies)
            .exchange_log_in(Path::new("data"))
            .purpose(PURPOSE, "Trade finance")
            .purpose("CREDIT-SCORING", "Credit scoring")
            .purpose("KYC", "Know your customer");
        for id in HOME_MEMBERS {
            config.member(&member(id)?, id, &["sn-banks"]);
        }
        for ((id, address), (_, service, descriptor)) in agencies.iter().zip(PROVIDERS) {
            config
                .member(id, id.as_str(), &[])
                .provider(id, [*address])
                .service(service, std::slice::from_ref(id))
                .descriptor(
                    service,
                    &Path::new(crate::dev::DESCRIPTORS).join(format!("{descriptor}.binpb")),
                );
        }
        let mut table = config.into_table();
        if let Some(gateway) = table.get_mut("gateway").and_then(toml::Value::as_table_mut) {
            gateway.insert("listen".into(), listen.to_string().into());
            gateway.insert("federation_key".into(), "pki/federation.key".into());
        }
        let config = dir.join("govbridge.toml");
        let text = format!(
            "# The partner instance of `govbridge dev --federation`, written at each start.\n{}",
            toml::to_string(&table)?
        );
        pki::write_file(&config, text.as_bytes(), 0o644)?;
        let bound = Gateway::bind(&Config::load(&config)?).await?;
        let address = bound.local_addr()?;
        let admin = bound.admin_addr();
        let reloader = bound.reloader();
        // As an operator's gateway would: a CRL or key dropped in place
        // takes effect.
        let watcher = reloader
            .clone()
            .reload_on_file_change(Duration::from_millis(100));
        let log = bound.exchange_log().cloned();
        let serving = tokio::spawn(bound.serve(shutdown.clone().wait()));
        Ok(Self {
            tasks: Arc::new(std::sync::Mutex::new(Some(Tasks { serving, watcher }))),
            dir: dir.to_owned(),
            address,
            admin,
            config,
            reloader,
            log,
            agencies,
            faults,
            companies: Arc::new(crate::agencies::azerbaijan::Registry::generate(data.seed)),
            data,
        })
    }

    /// Once the shutdown given at its start is triggered: its gateway
    /// stopped, and its files no longer watched, so that they can be
    /// removed without a reload complaining of them.
    pub async fn stopped(&self) {
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(Tasks { serving, watcher }) = tasks else {
            return;
        };
        watcher.abort();
        let _ = watcher.await;
        let _ = serving.await;
    }

    /// Trusts `home`, by a reload, as an operator would: its CA (and the
    /// CRL beside it), its gateway and its federation key.
    pub fn federate(&self, home: &Home) -> anyhow::Result<()> {
        let mut text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("cannot read {}", self.config.display()))?;
        let crl = home.ca.with_file_name(pki::CRL);
        let crls = if crl.exists() {
            format!("crls = [{}]\n", quote(&crl))
        } else {
            String::new()
        };
        let log_key = home
            .log_key
            .as_ref()
            .map(|key| format!("log_key = {}\n", quote(key)))
            .unwrap_or_default();
        let witness = if home.witnessed {
            "witness = true\n"
        } else {
            ""
        };
        text.push_str(&format!(
            "\n[federation.{}]\nca = {}\n{crls}gateway = \"{}\"\nendpoints = [\"https://{}\"]\n\
             key = {}\n{log_key}{witness}",
            home.gateway.instance(),
            quote(&home.ca),
            home.gateway,
            home.endpoint,
            quote(&home.key.with_extension("pub")),
        ));
        pki::write_file(&self.config, text.as_bytes(), 0o644)?;
        self.reloader.reload()?;
        Ok(())
    }

    /// Adds `text` (TOML tables) to the partner's configuration and
    /// `policy` (Cedar) to its policies as `NAME.cedar`, by a reload, as
    /// its operator would: to let its own members call out.
    pub fn extend(&self, text: &str, policy: Option<(&str, &str)>) -> anyhow::Result<()> {
        if let Some((name, policy)) = policy {
            pki::write_file(
                &self.dir.join("policies").join(format!("{name}.cedar")),
                policy.as_bytes(),
                0o644,
            )?;
        }
        let mut config = std::fs::read_to_string(&self.config)
            .with_context(|| format!("cannot read {}", self.config.display()))?;
        config.push('\n');
        config.push_str(text);
        pki::write_file(&self.config, config.as_bytes(), 0o644)?;
        self.reloader.reload()?;
        Ok(())
    }

    /// Publishes the partner's global configuration as its directory
    /// would, as `version`, with `[instance]` (its gateway, endpoint,
    /// federation and log keys) for partners to learn: its gateway file
    /// split into a publication under `dir`, checked, and signed into
    /// `dir/bundle.json` with the directory key of `dir` (`directory.key`,
    /// made at the first publication, and `directory.pub`). Returns the
    /// bundle and the key's verifier file.
    pub fn publish_configuration(
        &self,
        dir: &Path,
        version: u64,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.publish_configuration_with(dir, version, self.address, Duration::from_secs(7 * 86_400))
    }

    /// [`PartnerInstance::publish_configuration`], naming `gateway` as
    /// its gateway's address, valid for `valid_for`.
    pub fn publish_configuration_with(
        &self,
        dir: &Path,
        version: u64,
        gateway: SocketAddr,
        valid_for: Duration,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        use gateway::global::split::{self, DirectorySettings};
        let settings = DirectorySettings {
            url: "https://directory.az.invalid/bundle.json",
            ca: Some("pki/ca.pem"),
            key: "directory.pub",
            interval: "60s",
        };
        let publication = dir.join("publication");
        let split = split::split(&self.config, &settings).map_err(anyhow::Error::msg)?;
        split::write_publication(&split, &publication).map_err(anyhow::Error::msg)?;
        std::fs::copy(
            self.dir.join("pki/federation.pub"),
            publication.join("instance-federation.pub"),
        )?;
        let log_key = self
            .log
            .as_ref()
            .map(|log| log.dir().join(gateway::exchange_log::store::VERIFIER_FILE))
            .context("the partner's exchange log is off")?;
        std::fs::copy(log_key, publication.join("instance-log-key.pub"))?;
        let global = publication.join(gateway::global::GLOBAL_FILE);
        let mut text = std::fs::read_to_string(&global)?;
        text.push_str(&format!(
            "\n[instance]\ngateway = \"{GATEWAY}\"\nendpoints = [\"https://{}\"]\n\
             tls_name = \"localhost\"\nfederation_key = \"instance-federation.pub\"\n\
             log_key = \"instance-log-key.pub\"\n",
            gateway
        ));
        pki::write_file(&global, text.as_bytes(), 0o644)?;
        Config::load_publication(&global)?;
        let (secret, verifier) = (dir.join("directory.key"), dir.join("directory.pub"));
        let key = if secret.exists() {
            SigningKey::read(&secret).map_err(anyhow::Error::msg)?
        } else {
            let key = SigningKey::generate("AZ-directory")?;
            pki::write_file(&secret, key.to_pem().as_bytes(), 0o600)?;
            pki::write_file(&verifier, format!("{}\n", key.verifier()).as_bytes(), 0o644)?;
            key
        };
        let bundle =
            gateway::global::Bundle::build(&publication, INSTANCE, version, valid_for, &key)?;
        let path = dir.join("bundle.json");
        pki::write_file(&path, &bundle.to_json(), 0o644)?;
        Ok((path, verifier))
    }

    /// Publishes the partner's global configuration (its version the time
    /// in seconds, valid for a week, as [`Self::publish_configuration`])
    /// under `dir` and serves
    /// it over HTTPS on loopback, until `shutdown`, as its directory
    /// would: where, and under which CA and key, a home instance's gateway
    /// follows it.
    pub async fn serve_directory(
        &self,
        dir: &Path,
        shutdown: &Shutdown,
    ) -> anyhow::Result<PartnerDirectory> {
        // A new version at each start, as a directory would publish one:
        // a gateway that has an earlier one cached takes it.
        let version = u64::try_from(gateway::unix_time::now()).unwrap_or(1);
        let (bundle, key) = self.publish_configuration(dir, version)?;
        let server = gateway::global::http::Server::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &self.dir.join("pki/gateway.pem"),
            &self.dir.join("pki/gateway.key"),
            &bundle,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let url = format!(
            "https://{}{}",
            server.local_addr()?,
            gateway::global::http::BUNDLE_PATH
        );
        let stopping = shutdown.clone().wait();
        tokio::spawn(async move {
            tokio::select! {
                () = server.serve() => {}
                () = stopping => {}
            }
        });
        Ok(PartnerDirectory {
            url,
            ca: self.dir.join("pki").join(pki::CA_CERT),
            key,
        })
    }

    /// A client certificate and key of the partner's CA for `member`, in
    /// its PKI directory as `NAME.pem` and `NAME.key`.
    pub fn issue_member(
        &self,
        member: &MemberId,
        name: &str,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let pki = self.dir.join("pki");
        let ca = CertificateAuthority::load(&pki)?;
        Ok(ca.issue(&LeafRequest::member(member))?.write(&pki, name)?)
    }

    /// What the home instance's configuration adds to reach this partner:
    /// `[federation.AZ]`, the partner's providers (no endpoints: reached
    /// through its gateway) as members, and `services` each published by
    /// `home_providers` (the home's own, if any, first) and the partner's.
    /// `key` is the home gateway's federation key.
    pub fn home_fragment(&self, key: &Path, home_providers: &[(&str, &str)]) -> String {
        let mut text = format!(
            "[gateway]\nfederation_key = {}\n\n[federation.{INSTANCE}]\nca = {}\ncrls = [{}]\n\
             gateway = \"{GATEWAY}\"\nendpoints = [\"https://{}\"]\nkey = {}\n\
             # It witnesses this instance's log.\nwitness = true\n\n\
             [purposes]\n{PURPOSE} = \"Trade finance\"\n",
            quote(key),
            quote(&self.path("pki/ca.pem")),
            quote(&self.path("pki/crl.pem")),
            self.address,
            quote(&self.path("pki/federation.pub")),
        );
        for (id, service, descriptor) in PROVIDERS {
            let mut providers: Vec<String> = home_providers
                .iter()
                .filter(|(_, published)| *published == service)
                .map(|(home, _)| format!("\"{home}\""))
                .collect();
            providers.push(format!("\"{id}\""));
            text.push_str(&format!(
                "\n[members.\"{id}\"]\nname = \"{id}\"\n\n[providers.\"{id}\"]\n\n\
                 [services.\"{service}\"]\nproviders = [{}]\n\
                 descriptor = \"{}/{descriptor}.binpb\"\n",
                providers.join(", "),
                crate::dev::DESCRIPTORS
            ));
        }
        text
    }

    /// A file or directory of the partner's.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where its gateway listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its gateway's admin endpoint.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Its exchange log.
    pub fn exchange_log(&self) -> Option<&ExchangeLog> {
        self.log.as_ref()
    }

    /// Its gateway's reloader.
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// The fault switch of the business registry (0) or the tax
    /// authority (1): to make them slow or fail.
    pub fn faults(&self, index: usize) -> Option<&crate::agencies::fault::FaultSwitch> {
        self.faults.get(index)
    }

    /// Its synthetic data (the tax authority's).
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.data
    }

    /// The companies of its registry (the first is active).
    pub fn companies(&self) -> &crate::agencies::azerbaijan::Registry {
        &self.companies
    }

    /// Its backends: (provider, address).
    pub fn agencies(&self) -> &[(MemberId, SocketAddr)] {
        &self.agencies
    }
}

impl std::fmt::Debug for PartnerInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerInstance")
            .field("dir", &self.dir)
            .field("address", &self.address)
            .field("agencies", &self.agencies)
            .finish_non_exhaustive()
    }
}

/// Where a partner's directory serves its global configuration, and what
/// checks it: its HTTPS certificate's CA, its verifier key.
#[derive(Debug, Clone)]
pub struct PartnerDirectory {
    pub url: String,
    pub ca: PathBuf,
    pub key: PathBuf,
}

/// The partner's policy: the home instance's licensed banks read its
/// registry and use its tax authority and echo, for trade finance.
fn home_policy() -> String {
    let mut text = String::from(
        "// Senegal's licensed banks may call Azerbaijan's services, for trade finance only.\n",
    );
    for (id, service, name) in PROVIDERS {
        text.push_str(&format!(
            "\n@id(\"sn-banks-use-{name}-for-trade-finance\")\n\
             permit (\n  principal in Group::\"sn-banks\",\n  action in Action::\"{service}\",\n  \
             resource == Provider::\"{id}\"\n)\nwhen {{ context.purpose == \"{PURPOSE}\" }};\n"
        ));
    }
    text
}

fn member(id: &str) -> anyhow::Result<MemberId> {
    MemberId::parse(id).map_err(|error| anyhow::anyhow!("{id}: {error}"))
}

/// A path as a TOML string.
fn quote(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}
