//! A sandbox for partners' integration tests: the real gateway, with the
//! real policies, in front of every mock agency, in the test's own process,
//! on ports the system picks, with a PKI made for it.
//!
//! A bank integrating with the exchange writes its tests against this long
//! before it is allowed near production:
//!
//! ```
//! # mod govbridge { pub use gateway::*; pub use govbridge_harness::*; } // as partners see it
//! use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
//! use govbridge::proto::civilregistry::v1::VerificationResult;
//! use govbridge::sandbox::{self, Sandbox};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let sandbox = Sandbox::builder().start().await?;
//! let citizen = &sandbox.roles().adult_with_account;
//!
//! // CBAO's KYC desk, with a certificate the sandbox's CA issued.
//! let channel = sandbox.channel_as("SN/COM/CBAO/kyc").await?;
//! let mut registry = CivilRegistryClient::new(channel);
//! let request = sandbox::declared(citizen.verify_identity_request(), "KYC");
//! let answer = registry.verify_identity(request).await?;
//! assert_eq!(answer.get_ref().result(), VerificationResult::Match);
//!
//! // The call is in the exchange log: a decision, then its outcome.
//! let records = sandbox.exchange_log().of_call(answer.metadata())?;
//! assert_eq!(records.len(), 2);
//! assert_eq!(records[1].record.caller, "SN/COM/CBAO/kyc");
//! # Ok(())
//! # }
//! ```
//!
//! The handle gives a channel per member ([`Sandbox::channel_as`]), known
//! people and companies by role ([`Sandbox::roles`]), consent shortcuts
//! ([`Sandbox::grant_consent`]), the exchange log
//! ([`Sandbox::exchange_log`]) and fault switches per agency
//! ([`Sandbox::faults`]). Dropping it stops everything and removes its
//! files; [`Sandbox::shutdown`] also waits for the servers to finish.
//! Sandboxes share nothing: several run side by side in one process.
//!
//! Other languages get the same sandbox from `govbridge sandbox --manifest
//! FILE` ([`manifest`]), which describes it in JSON.

pub mod manifest;
pub mod roles;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::agencies::fault::{Failure, Fault, FaultSwitch};
use crate::agencies::{Agency, AgencyService, Dataset};
use gateway::config::{Config, ConfigBuilder, ConfigError};
use gateway::exchange_log::{ExchangeLog, ExchangeRecord, Store};

use crate::agencies::config::SigningKeyConfig;
use crate::dev::{self, GATEWAY_IDENTITY};
use crate::launch::{AgencyStartError, BoundAgency, Shutdown, ShutdownTrigger};
use crate::pki::{self, CertificateAuthority, LeafRequest, PkiError, Usage};
use gateway::identity::MemberId;
use gateway::identity::tls::{ClientTls, ServerTls, TlsError};
use gateway::net::client::Channel;
use gateway::net::{ListenerSettings, TlsListener, with_peer};
use gateway::proto::consent::v1::consent_client::ConsentClient;
use gateway::proto::consent::v1::{ConsentRef, GrantRequest};
use gateway::proxy::{Gateway, Reloader, StartError};
use gateway::wire::headers;
pub use roles::Roles;

/// The seed of the sandbox's synthetic dataset unless one is chosen.
pub use crate::agencies::dataset::DEFAULT_SEED;

/// The name the sandbox gateway's certificate is issued for.
pub const SERVER_NAME: &str = "localhost";

/// Cedar policies that allow every call: for sandboxes that test the data
/// path, not authorization.
pub const ALLOW_ALL: &str = "@id(\"sandbox-allow-all\")\npermit (principal, action, resource);\n";

/// Why a sandbox could not start or do what a test asked of it.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A file or socket of the sandbox could not be made or read.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox's PKI: {0}")]
    Pki(#[from] PkiError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The generated configuration, with the builder's fragments merged,
    /// is not valid: the error names the key.
    #[error("the sandbox's configuration{}: {source}", fragments_note(.fragments))]
    Config {
        #[source]
        source: ConfigError,
        fragments: Vec<String>,
    },
    /// A fragment given to [`SandboxBuilder::config`] is not TOML.
    #[error("the configuration fragment {fragment:?} is not TOML: {message}")]
    Fragment { fragment: String, message: String },
    #[error(transparent)]
    Agency(#[from] AgencyStartError),
    #[error(transparent)]
    Gateway(#[from] StartError),
    /// The dataset of this seed lacks someone a role needs.
    #[error("{0}")]
    Roles(String),
    #[error("{0:?} is not a member id: {1}")]
    Member(String, String),
    #[error("cannot connect to the sandbox gateway as {member}: {reason}")]
    Connect { member: String, reason: String },
    /// The MyGov portal (or the gateway in front of it) refused.
    #[error("{action}: {}", described(.status))]
    Portal {
        action: &'static str,
        status: tonic::Status,
    },
    /// What a consent grant asks for cannot be sent.
    #[error("{0}")]
    Grant(String),
    #[error("the exchange log: {0}")]
    ExchangeLog(String),
}

fn fragments_note(fragments: &[String]) -> String {
    if fragments.is_empty() {
        String::new()
    } else {
        format!(" (with the fragments {fragments:?} merged)")
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// Which policies the sandbox's gateway authorizes with.
#[derive(Debug, Clone)]
enum Policies {
    /// `config/policies/`, as `govbridge dev` runs them.
    Dev,
    /// [`ALLOW_ALL`].
    AllowAll,
    /// Every file of this directory; the dev schema unless it has one.
    Dir(PathBuf),
}

/// A backend of the test's own, published by `provider` as `service`.
struct Backend {
    provider: MemberId,
    service: String,
    server: AgencyService,
}

/// How to build a [`Sandbox`]: [`Sandbox::builder`].
pub struct SandboxBuilder {
    seed: u64,
    policies: Policies,
    agencies: bool,
    replicas: Vec<(Agency, usize)>,
    cuttable: Vec<Agency>,
    backends: Vec<Backend>,
    /// How long the certificates of `backends` are valid; a year if unset.
    backend_certificate_lifetime: Option<Duration>,
    unreachable: Vec<(String, MemberId)>,
    silent: Vec<(String, MemberId)>,
    members: Vec<MemberId>,
    /// TOML fragments merged, in order, into the generated configuration.
    overlays: Vec<String>,
}

impl std::fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBuilder")
            .field("seed", &self.seed)
            .field("policies", &self.policies)
            .field("agencies", &self.agencies)
            .field("backends", &self.backends.len())
            .field("overlays", &self.overlays)
            .finish_non_exhaustive()
    }
}

impl SandboxBuilder {
    /// Generates the synthetic dataset from `seed` ([`DEFAULT_SEED`]
    /// otherwise). The same seed gives the same people, always.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Authorizes every call instead of applying the dev policies.
    pub fn allow_all(mut self) -> Self {
        self.policies = Policies::AllowAll;
        self
    }

    /// Authorizes with the Cedar policies of `dir` (every file in it is
    /// copied; the dev schema is used unless `dir` has
    /// `schema.cedarschema`) instead of the dev policies.
    pub fn policies(mut self, dir: impl Into<PathBuf>) -> Self {
        self.policies = Policies::Dir(dir.into());
        self
    }

    /// Merges a TOML fragment into the gateway's generated configuration:
    /// its keys replace the generated ones, its tables are added. For
    /// example `[limits]\nrequests_per_second = 10` or
    /// `[upstream]\nmax_deadline = "1s"`. The keys are those of
    /// `config/govbridge.toml`.
    pub fn config(mut self, fragment: impl Into<String>) -> Self {
        self.overlays.push(fragment.into());
        self
    }

    /// Sets one `key = value` line of the configuration's `[section]`, as
    /// [`Self::config`] would with `[section]\nline`.
    pub fn setting(self, section: &str, line: &str) -> Self {
        self.config(format!("[{section}]\n{line}"))
    }

    /// Runs `agency` as `count` endpoints of its provider, each with its
    /// own fault switch.
    pub fn replicas(mut self, agency: Agency, count: usize) -> Self {
        self.replicas.push((agency, count.max(1)));
        self
    }

    /// Puts a TCP relay in front of `agency`, so that
    /// [`AgencyFaults::cut`] can cut the network to it as a partition
    /// would.
    pub fn cuttable(mut self, agency: Agency) -> Self {
        self.cuttable.push(agency);
        self
    }

    /// Issues the certificates of the backends added with [`Self::backend`]
    /// valid for `lifetime` from the start (instead of a year): to see
    /// what the gateway does once a backend's certificate expires.
    pub fn backend_certificate_lifetime(mut self, lifetime: Duration) -> Self {
        self.backend_certificate_lifetime = Some(lifetime);
        self
    }

    /// Starts no mock agency: only the backends added with
    /// [`Self::backend`].
    pub fn without_agencies(mut self) -> Self {
        self.agencies = false;
        self
    }

    /// Publishes `server` (for example
    /// `AgencyService::new(MyServiceServer::new(handler))`) as `service`
    /// (`package.Service`) by `provider`, ahead of the mock agency that
    /// publishes it, if any. The backend gets a certificate for `provider`
    /// and sees the gateway's `bridge-*` headers as a real one would.
    pub fn backend(
        mut self,
        service: impl Into<String>,
        provider: MemberId,
        server: AgencyService,
    ) -> Self {
        self.backends.push(Backend {
            provider,
            service: service.into(),
            server,
        });
        self
    }

    /// Publishes `service` by `provider`, whose only endpoint refuses
    /// connections.
    pub fn unreachable_provider(mut self, service: impl Into<String>, provider: MemberId) -> Self {
        self.unreachable.push((service.into(), provider));
        self
    }

    /// Publishes `service` by `provider`, whose endpoint accepts TCP
    /// connections and then never answers.
    pub fn silent_provider(mut self, service: impl Into<String>, provider: MemberId) -> Self {
        self.silent.push((service.into(), provider));
        self
    }

    /// Registers `member` with the gateway, beside the demo members, so
    /// that a certificate issued to it by [`Sandbox::channel_as`] is
    /// accepted. Its groups are those of the dev configuration, if any.
    pub fn member(mut self, member: MemberId) -> Self {
        self.members.push(member);
        self
    }

    /// Makes the PKI, starts the mock agencies and the gateway, and returns
    /// once every listener is bound: calls can be made at once.
    pub async fn start(self) -> Result<Sandbox, SandboxError> {
        // Keys, certificates and a dataset of thousands: seconds of work
        // in a debug build, kept off the runtime's threads so that other
        // tasks (another sandbox starting) go on meanwhile.
        let seed = self.seed;
        let prepared = tokio::task::spawn_blocking(move || -> Result<_, SandboxError> {
            let dir = tempfile::Builder::new()
                .prefix("govbridge-sandbox-")
                .tempdir()
                .map_err(io("creating the sandbox's directory"))?;
            let pki = dir.path().join("pki");
            dev::init_pki(&pki)?;
            let ca = CertificateAuthority::load(&pki)?;
            let data = Arc::new(Dataset::generate(seed));
            let roles = Roles::pick(&data).map_err(SandboxError::Roles)?;
            Ok((dir, pki, ca, data, roles))
        })
        .await
        .map_err(|error| SandboxError::Io {
            what: "preparing the sandbox".to_owned(),
            source: std::io::Error::other(error),
        })?;
        let (dir, pki, ca, data, roles) = prepared?;
        let gateway_id = member_id(GATEWAY_IDENTITY)?;
        let (trigger, shutdown) = Shutdown::new();
        let mut tasks = JoinSet::new();
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let server_tls = |stem: &str| ServerTls {
            certificate: pki.join(format!("{stem}.pem")),
            private_key: pki.join(format!("{stem}.key")),
            client_ca: pki.join(pki::CA_CERT),
            crls: vec![pki.join("crl.pem")],
            crl_grace: std::time::Duration::ZERO,
            partners: Vec::new(),
        };

        let mut routes = Routes::default();
        for (index, backend) in self.backends.into_iter().enumerate() {
            let stem = format!("backend-{index}");
            let mut request = LeafRequest::loopback_server(&stem);
            request.member = Some(backend.provider.clone());
            request.usage = Usage::ServerAndClient;
            if let Some(lifetime) = self.backend_certificate_lifetime {
                request.not_after = time::OffsetDateTime::now_utc() + lifetime;
            }
            ca.issue(&request)?.write(&pki, &stem)?;
            let tcp = TcpListener::bind(loopback)
                .await
                .map_err(io("binding a backend"))?;
            let address = tcp.local_addr().map_err(io("binding a backend"))?;
            let listener = TlsListener::new(
                tcp,
                server_tls(&stem).listener_tls()?,
                ListenerSettings::backend(),
            );
            let server = backend.server;
            tasks.spawn(listener.serve(
                move |peer| with_peer(peer, server.clone()),
                shutdown.clone().wait(),
            ));
            routes.endpoint(&backend.provider, address);
            routes.publish(&backend.service, &backend.provider);
        }

        let mut agencies: HashMap<Agency, Vec<SocketAddr>> = HashMap::new();
        let mut cuts: HashMap<Agency, Vec<watch::Sender<bool>>> = HashMap::new();
        let mut faults: HashMap<Agency, Vec<FaultSwitch>> = HashMap::new();
        for agency in Agency::ALL.into_iter().filter(|_| self.agencies) {
            let tls = server_tls(&format!("agency-{}", agency.name()));
            let signing_key = (agency == Agency::MyGov).then(|| SigningKeyConfig {
                key_id: dev::CONSENT_KEY_ID.to_owned(),
                file: pki.join(dev::CONSENT_KEY),
            });
            let replicas = self
                .replicas
                .iter()
                .rfind(|(replicated, _)| *replicated == agency)
                .map_or(1, |(_, count)| *count);
            for _ in 0..replicas {
                let bound = BoundAgency::bind(
                    agency,
                    loopback,
                    &tls,
                    gateway_id.clone(),
                    data.clone(),
                    signing_key.as_ref(),
                )
                .await?;
                let (bound, switch) = bound.with_faults();
                faults.entry(agency).or_default().push(switch);
                let mut address = bound.local_addr().map_err(io("binding an agency"))?;
                tasks.spawn(bound.serve(shutdown.clone().wait()));
                if self.cuttable.contains(&agency) {
                    let listener = TcpListener::bind(loopback)
                        .await
                        .map_err(io("binding a relay"))?;
                    let target = address;
                    address = listener.local_addr().map_err(io("binding a relay"))?;
                    let (cut, watched) = watch::channel(false);
                    tasks.spawn(relay(listener, target, watched, shutdown.clone()));
                    cuts.entry(agency).or_default().push(cut);
                }
                agencies.entry(agency).or_default().push(address);
                routes.endpoint(&agency.member_id(), address);
            }
            routes.publish(agency.service_name(), &agency.member_id());
        }

        for (service, provider) in &self.unreachable {
            // Bound and dropped: the port is then (almost certainly) closed.
            let address = TcpListener::bind(loopback)
                .await
                .and_then(|listener| listener.local_addr())
                .map_err(io("finding a closed port"))?;
            routes.endpoint(provider, address);
            routes.publish(service, provider);
        }
        for (service, provider) in &self.silent {
            let listener = TcpListener::bind(loopback)
                .await
                .map_err(io("binding a silent provider"))?;
            let address = listener
                .local_addr()
                .map_err(io("binding a silent provider"))?;
            routes.endpoint(provider, address);
            routes.publish(service, provider);
            let stopped = shutdown.clone();
            tasks.spawn(async move {
                let mut held = Vec::new();
                let accept = async {
                    while let Ok((socket, _)) = listener.accept().await {
                        held.push(socket);
                    }
                };
                tokio::select! {
                    () = accept => {}
                    () = stopped.wait() => {}
                }
            });
        }

        let mut members = dev::DEMO_MEMBERS
            .iter()
            .map(|(_, id)| member_id(id))
            .collect::<Result<Vec<_>, _>>()?;
        members.extend(routes.providers.iter().map(|(id, _)| id.clone()));
        members.extend(self.members);
        members.sort();
        members.dedup();

        let policies = dir.path().join("policies");
        write_policies(&self.policies, &policies)?;
        dev::write_descriptors(dir.path())?;
        let generated = generated_config(&member_id(GATEWAY_IDENTITY)?, &members, &routes);
        let text = overlaid(generated.into_table(), &self.overlays)?;
        let config_path = dir.path().join("govbridge.toml");
        pki::write_file(&config_path, text.as_bytes(), 0o644)?;
        let config = Config::load(&config_path).map_err(|source| SandboxError::Config {
            source,
            fragments: self.overlays.clone(),
        })?;
        let gateway = Gateway::bind(&config).await?;
        let address = gateway.local_addr().map_err(io("binding the gateway"))?;
        let admin = gateway.admin_addr().ok_or_else(|| SandboxError::Io {
            what: "the gateway's admin endpoint".to_owned(),
            source: std::io::Error::other("a configuration fragment turned it off"),
        })?;
        let reloader = gateway.reloader();
        let exchange_log = gateway.exchange_log().cloned();
        tasks.spawn(gateway.serve(shutdown.clone().wait()));

        Ok(Sandbox {
            dir,
            pki,
            ca,
            config_path,
            gateway: address,
            admin,
            reloader,
            exchange_log,
            data,
            roles,
            agencies,
            cuts,
            faults,
            issued: Mutex::new(HashMap::new()),
            trigger,
            tasks,
        })
    }
}

/// Providers with their endpoints, and services with their providers, in
/// the order they were added (the first provider of a service is its
/// default).
#[derive(Default)]
struct Routes {
    providers: Vec<(MemberId, Vec<SocketAddr>)>,
    services: Vec<(String, Vec<MemberId>)>,
}

impl Routes {
    fn endpoint(&mut self, provider: &MemberId, address: SocketAddr) {
        match self.providers.iter_mut().find(|(id, _)| id == provider) {
            Some((_, endpoints)) => endpoints.push(address),
            None => self.providers.push((provider.clone(), vec![address])),
        }
    }

    fn publish(&mut self, service: &str, provider: &MemberId) {
        match self.services.iter_mut().find(|(name, _)| name == service) {
            Some((_, providers)) if providers.contains(provider) => {}
            Some((_, providers)) => providers.push(provider.clone()),
            None => self
                .services
                .push((service.to_owned(), vec![provider.clone()])),
        }
    }
}

fn member_id(id: &str) -> Result<MemberId, SandboxError> {
    MemberId::parse(id).map_err(|error| SandboxError::Member(id.to_owned(), error.to_string()))
}

fn write_policies(policies: &Policies, dir: &Path) -> Result<(), SandboxError> {
    let (schema_name, schema) = dev::DEV_POLICIES[0];
    match policies {
        Policies::Dev => dev::write_policies(dir)?,
        Policies::AllowAll => {
            pki::write_file(&dir.join(schema_name), schema.as_bytes(), 0o644)?;
            pki::write_file(&dir.join("allow-all.cedar"), ALLOW_ALL.as_bytes(), 0o644)?;
        }
        Policies::Dir(source) => {
            let reading = || format!("reading the policies in {}", source.display());
            let entries = std::fs::read_dir(source).map_err(io(reading()))?;
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            for entry in entries {
                let path = entry.map_err(io(reading()))?.path();
                if path.is_file()
                    && let Some(name) = path.file_name()
                {
                    std::fs::copy(&path, dir.join(name))
                        .map_err(io(format!("copying {}", path.display())))?;
                }
            }
            if !dir.join(schema_name).exists() {
                pki::write_file(&dir.join(schema_name), schema.as_bytes(), 0o644)?;
            }
        }
    }
    Ok(())
}

/// The gateway's configuration for the sandbox: the dev configuration's
/// members (with their groups) and purposes, the sandbox's endpoints, and
/// the agencies' descriptor sets (`descriptors/`, written beforehand).
fn generated_config(gateway: &MemberId, members: &[MemberId], routes: &Routes) -> ConfigBuilder {
    // Read as TOML: the template's paths (certificates, descriptors) are
    // the dev directory's, not the sandbox's.
    let dev: toml::Table = dev::CONFIG_TEMPLATE.parse().unwrap_or_default();
    let table = |key: &str| dev.get(key).and_then(toml::Value::as_table);
    let mut config = ConfigBuilder::new("sandbox", gateway);
    config.admin(SocketAddr::from(([127, 0, 0, 1], 0)));
    dev::gateway_tls(&mut config, Path::new("pki"))
        .upstream_timeouts(Duration::from_secs(1), Duration::from_secs(60))
        .policy(
            Path::new("policies/schema.cedarschema"),
            Path::new("policies"),
        );
    for purpose in table("purposes").into_iter().flat_map(toml::Table::keys) {
        config.purpose(purpose, purpose);
    }
    for member in members {
        let groups: Vec<&str> = table("members")
            .and_then(|members| members.get(member.as_str()))
            .and_then(|member| member.get("groups"))
            .and_then(toml::Value::as_array)
            .map(|groups| groups.iter().filter_map(toml::Value::as_str).collect())
            .unwrap_or_default();
        config.member(member, member.as_str(), &groups);
    }
    for (provider, endpoints) in &routes.providers {
        config.provider(provider, endpoints.iter().copied());
    }
    for (service, providers) in &routes.services {
        config.service(service, providers);
        if let Some(set) = dev::descriptor_of(service) {
            config.descriptor(service, &set);
        }
    }
    let portal = Agency::MyGov.member_id();
    if routes.providers.iter().any(|(id, _)| *id == portal) {
        config.consent(
            &Path::new("pki").join(dev::CONSENT_KEYS),
            &portal,
            Duration::from_secs(5),
        );
    }
    config
}

/// The text of `config` with each TOML fragment of `overlays` merged into
/// it: tables merge, other values replace.
fn overlaid(mut config: toml::Table, overlays: &[String]) -> Result<String, SandboxError> {
    let invalid = |fragment: &str, message: String| SandboxError::Fragment {
        fragment: fragment.to_owned(),
        message,
    };
    for overlay in overlays {
        let overlay: toml::Table = overlay
            .parse()
            .map_err(|error: toml::de::Error| invalid(overlay, error.message().to_owned()))?;
        merge(&mut config, overlay);
    }
    toml::to_string(&config).map_err(|error| invalid("(merged)", error.to_string()))
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(value)) => {
                merge(existing, value);
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Relays each connection accepted on `listener` to `target` while `cut`
/// is false; when it turns true, relayed connections drop and new ones are
/// closed as soon as accepted, until it turns false again.
async fn relay(
    listener: TcpListener,
    target: SocketAddr,
    mut cut: watch::Receiver<bool>,
    shutdown: Shutdown,
) {
    let mut connections = JoinSet::new();
    let stopped = shutdown.wait();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { return };
                if *cut.borrow() {
                    continue;
                }
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            changed = cut.changed() => {
                if changed.is_err() {
                    return;
                }
                if *cut.borrow() {
                    connections.abort_all();
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The gateway, every mock agency and the test's backends, running. See
/// the [module documentation](self).
pub struct Sandbox {
    dir: tempfile::TempDir,
    pki: PathBuf,
    ca: CertificateAuthority,
    config_path: PathBuf,
    gateway: SocketAddr,
    admin: SocketAddr,
    reloader: Reloader,
    exchange_log: Option<ExchangeLog>,
    data: Arc<Dataset>,
    roles: Roles,
    agencies: HashMap<Agency, Vec<SocketAddr>>,
    cuts: HashMap<Agency, Vec<watch::Sender<bool>>>,
    faults: HashMap<Agency, Vec<FaultSwitch>>,
    /// Certificates issued on demand: member -> (certificate, key).
    issued: Mutex<HashMap<MemberId, (PathBuf, PathBuf)>>,
    trigger: ShutdownTrigger,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("gateway", &self.gateway)
            .field("admin", &self.admin)
            .field("dir", &self.dir.path())
            .field("seed", &self.data.seed)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// A sandbox with every mock agency and the dev policies, until told
    /// otherwise.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder {
            seed: DEFAULT_SEED,
            policies: Policies::Dev,
            agencies: true,
            replicas: Vec::new(),
            cuttable: Vec::new(),
            backends: Vec::new(),
            backend_certificate_lifetime: None,
            unreachable: Vec::new(),
            silent: Vec::new(),
            members: Vec::new(),
            overlays: Vec::new(),
        }
    }

    /// The gateway's address (mutual TLS, HTTP/2; its certificate names
    /// [`SERVER_NAME`]).
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway
    }

    /// The gateway's admin endpoint (plain HTTP: `/metrics`, `/readyz`;
    /// `POST /reload` with the header `x-govbridge-admin`, see
    /// [`gateway::proxy::admin`]).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The sandbox's directory: `govbridge.toml`, `pki/`, `policies/` and
    /// the exchange log. Removed when the sandbox is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PKI directory: `ca.pem`, and `member-STEM.pem` / `.key` for each
    /// demo member of [`dev::DEMO_MEMBERS`].
    pub fn pki_dir(&self) -> &Path {
        &self.pki
    }

    /// The CA certificate every party of the sandbox trusts.
    pub fn ca_certificate(&self) -> PathBuf {
        self.pki.join(pki::CA_CERT)
    }

    /// The sandbox's certificate authority, to issue certificates of any
    /// shape (expired, wrong usage, another member...).
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The gateway's configuration file. Edit it and call
    /// [`Reloader::reload`] to change the running gateway, as an operator
    /// would.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Reloads the gateway's configuration and policies.
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// The whole synthetic dataset behind the mock agencies.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.data
    }

    /// Known people, companies and accounts by role.
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// The addresses of `agency`'s endpoints (one per replica); empty when
    /// the sandbox runs no agencies. Calls should go through the gateway:
    /// agencies accept only the gateway's certificate.
    pub fn agency_addrs(&self, agency: Agency) -> &[SocketAddr] {
        self.agencies.get(&agency).map_or(&[], Vec::as_slice)
    }

    /// The certificate and key files of `member`: the demo member's, or
    /// ones issued now by the sandbox's CA (then, unless `member` was
    /// registered with [`SandboxBuilder::member`], the gateway refuses it
    /// as unknown).
    pub fn credentials(&self, member: &str) -> Result<(PathBuf, PathBuf), SandboxError> {
        let member = member_id(member)?;
        if let Some((stem, _)) = dev::DEMO_MEMBERS
            .iter()
            .find(|(_, id)| *id == member.as_str())
        {
            return Ok((
                self.pki.join(format!("member-{stem}.pem")),
                self.pki.join(format!("member-{stem}.key")),
            ));
        }
        // A panic elsewhere while the lock was held left the map whole.
        let mut issued = self
            .issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(files) = issued.get(&member) {
            return Ok(files.clone());
        }
        // Numbered: member ids map to file names in more than one way.
        let stem = format!("issued-{}", issued.len());
        let files = self
            .ca
            .issue(&LeafRequest::member(&member))?
            .write(&self.pki, &stem)?;
        issued.insert(member, files.clone());
        Ok(files)
    }

    /// A channel to the gateway over mutual TLS with `member`'s
    /// certificate (see [`Self::credentials`]), for any generated tonic
    /// client. Each call opens a new HTTP/2 connection; clones share it.
    pub async fn channel_as(&self, member: &str) -> Result<Channel, SandboxError> {
        let (certificate, private_key) = self.credentials(member)?;
        let tls =
            ClientTls::new(self.ca_certificate(), certificate, private_key).client_config()?;
        Channel::connect(self.gateway, SERVER_NAME, tls)
            .await
            .map_err(|error| SandboxError::Connect {
                member: member.to_owned(),
                reason: error.to_string(),
            })
    }

    /// The citizen's consent, granted in the MyGov portal through the
    /// gateway, as the portal's app does.
    ///
    /// ```
    /// # mod govbridge { pub use gateway::*; pub use govbridge_harness::*; }
    /// # use govbridge::sandbox::{self, ConsentGrant, Sandbox};
    /// # use govbridge::proto::tax::v1::{get_tax_clearance_request::Taxpayer, GetTaxClearanceRequest};
    /// # use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sandbox = Sandbox::builder().start().await?;
    /// let citizen = &sandbox.roles().adult_with_account;
    /// let consent = sandbox
    ///     .grant_consent(&ConsentGrant::new(
    ///         &citizen.nin,
    ///         "SN/COM/CBAO/credit",
    ///         "/govbridge.tax.v1.TaxAuthority/GetTaxClearance",
    ///         "CREDIT-SCORING",
    ///     ))
    ///     .await?;
    ///
    /// let mut tax = TaxAuthorityClient::new(sandbox.channel_as("SN/COM/CBAO/credit").await?);
    /// let request = GetTaxClearanceRequest {
    ///     taxpayer: Some(Taxpayer::SubjectNin(citizen.nin.clone())),
    /// };
    /// // Without the consent the policy refuses; with it, the call passes.
    /// let refused = tax.get_tax_clearance(sandbox::declared(request.clone(), "CREDIT-SCORING")).await;
    /// assert_eq!(sandbox::bridge_error(&refused.unwrap_err()), Some("consent-missing"));
    /// let request = consent.attach(sandbox::declared(request, "CREDIT-SCORING"));
    /// tax.get_tax_clearance(request).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn grant_consent(&self, grant: &ConsentGrant) -> Result<Consent, SandboxError> {
        let providers = match &grant.providers {
            Some(providers) => providers.clone(),
            None => grant
                .methods
                .iter()
                .map(|method| provider_of(method).map(|p| p.to_string()))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let expires = match grant.valid_for {
            Some(valid_for) => SystemTime::now()
                .checked_add(valid_for)
                .and_then(unix_seconds)
                .ok_or_else(|| {
                    SandboxError::Grant(format!("valid_for({valid_for:?}) is too long"))
                })?,
            None => 0,
        };
        let request = GrantRequest {
            nin: grant.nin.clone(),
            consumer: grant.consumer.clone(),
            providers,
            methods: grant.methods.clone(),
            purpose: grant.purpose.clone(),
            not_before: 0,
            expires,
            max_uses: grant.max_uses,
        };
        let mut portal = ConsentClient::new(self.channel_as(PORTAL_APP).await?);
        let record = portal
            .grant(as_citizen(request, &grant.nin, "granted by a sandbox test"))
            .await
            .map_err(|status| SandboxError::Portal {
                action: "MyGov refused the consent",
                status,
            })?
            .into_inner();
        Ok(Consent {
            id: record.consent_id,
            nin: grant.nin.clone(),
            artefact: record.artefact,
        })
    }

    /// Revokes `consent` in the MyGov portal. The gateway hears of it over
    /// its consent feed, usually within milliseconds: a call made right
    /// after may still pass.
    pub async fn revoke_consent(&self, consent: &Consent) -> Result<(), SandboxError> {
        let mut portal = ConsentClient::new(self.channel_as(PORTAL_APP).await?);
        let request = ConsentRef {
            nin: consent.nin.clone(),
            consent_id: consent.id.clone(),
        };
        portal
            .revoke(as_citizen(
                request,
                &consent.nin,
                "revoked by a sandbox test",
            ))
            .await
            .map_err(|status| SandboxError::Portal {
                action: "MyGov did not revoke the consent",
                status,
            })?;
        Ok(())
    }

    /// The gateway's exchange log, to read the records of the calls a test
    /// made.
    pub fn exchange_log(&self) -> ExchangeLogView<'_> {
        ExchangeLogView {
            log: self.exchange_log.as_ref(),
        }
    }

    /// The fault switches of `agency`, one per replica, acting together.
    ///
    /// ```
    /// # mod govbridge { pub use gateway::*; pub use govbridge_harness::*; }
    /// # use std::time::Duration;
    /// # use govbridge::agencies::Agency;
    /// # use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
    /// # use govbridge::sandbox::{self, Sandbox};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sandbox = Sandbox::builder().start().await?;
    /// let person = &sandbox.roles().adult_with_account;
    /// let mut registry = CivilRegistryClient::new(sandbox.channel_as("SN/COM/CBAO/kyc").await?);
    ///
    /// sandbox.faults(Agency::CivilRegistry).fail(tonic::Code::Internal);
    /// let call = sandbox::declared(person.verify_identity_request(), "KYC");
    /// let failed = registry.verify_identity(call).await.unwrap_err();
    /// assert_eq!(failed.code(), tonic::Code::Internal);
    /// assert_eq!(sandbox::bridge_error(&failed), None); // the agency's, not the gateway's
    ///
    /// sandbox.faults(Agency::CivilRegistry).clear();
    /// let call = sandbox::declared(person.verify_identity_request(), "KYC");
    /// registry.verify_identity(call).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// When the sandbox runs no `agency` ([`SandboxBuilder::without_agencies`]):
    /// a switch that would do nothing is a mistake in the test.
    pub fn faults(&self, agency: Agency) -> AgencyFaults<'_> {
        let switches = self.faults.get(&agency).map_or(&[][..], Vec::as_slice);
        assert!(
            !switches.is_empty(),
            "the sandbox runs no {agency}: it was built without agencies"
        );
        AgencyFaults {
            switches,
            cuts: self.cuts.get(&agency).map_or(&[], Vec::as_slice),
        }
    }

    /// The fault switch of replica `index` of `agency` alone.
    ///
    /// # Panics
    ///
    /// When the sandbox runs no such replica: see [`SandboxBuilder::replicas`].
    pub fn replica_faults(&self, agency: Agency, index: usize) -> AgencyFaults<'_> {
        fn one<T>(all: Option<&Vec<T>>, index: usize) -> &[T] {
            all.and_then(|all| all.get(index..=index)).unwrap_or(&[])
        }
        let switches = one(self.faults.get(&agency), index);
        assert!(
            !switches.is_empty(),
            "the sandbox runs no replica {index} of {agency}"
        );
        AgencyFaults {
            switches,
            cuts: one(self.cuts.get(&agency), index),
        }
    }

    /// Stops the gateway and every agency, and waits for them to finish
    /// (calls in flight are drained, the exchange log's last records
    /// committed and its checkpoint signed).
    ///
    /// # Panics
    ///
    /// When one of them panicked: the test should fail.
    pub async fn shutdown(mut self) {
        self.trigger.trigger();
        while let Some(ended) = self.tasks.join_next().await {
            if let Err(error) = ended
                && error.is_panic()
            {
                std::panic::resume_unwind(error.into_panic());
            }
        }
    }
}

impl Drop for Sandbox {
    /// Stops everything at once: servers are told to stop and their tasks
    /// aborted, the exchange log is closed, and the directory is removed.
    fn drop(&mut self) {
        self.trigger.trigger();
        self.tasks.abort_all();
        // Its writer thread finishes what is queued before the files go.
        if let Some(log) = &self.exchange_log {
            log.close();
        }
    }
}

/// The portal's app, through which citizens grant and revoke consents.
const PORTAL_APP: &str = "SN/GOV/MYGOV/app";

/// The provider of `method` (`/package.Service/Method`) among the mock
/// agencies.
fn provider_of(method: &str) -> Result<MemberId, SandboxError> {
    let service = method
        .strip_prefix('/')
        .and_then(|path| path.split_once('/'))
        .map(|(service, _)| service)
        .ok_or_else(|| {
            SandboxError::Grant(format!(
                "{method:?} is not a method path, /package.Service/Method"
            ))
        })?;
    Agency::ALL
        .into_iter()
        .find(|agency| agency.service_name() == service)
        .map(Agency::member_id)
        .ok_or_else(|| {
            SandboxError::Grant(format!(
                "no mock agency publishes {service}: name the providers with ConsentGrant::providers"
            ))
        })
}

fn unix_seconds(time: SystemTime) -> Option<i64> {
    let seconds = time.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(seconds).ok()
}

/// `message` as the citizen `nin` sends it from the portal's app.
fn as_citizen<T>(message: T, nin: &str, reason: &str) -> tonic::Request<T> {
    let mut request = declared(message, "CITIZEN-SELF-SERVICE");
    let metadata = request.metadata_mut();
    for (name, value) in [
        (headers::BRIDGE_USER_ID, nin),
        (headers::BRIDGE_REASON, reason),
    ] {
        if let Ok(value) = AsciiMetadataValue::try_from(value) {
            metadata.insert(name, value);
        }
    }
    request
}

/// `status` with the gateway's `bridge-error`, for error messages.
fn described(status: &tonic::Status) -> String {
    match status.metadata().get(headers::BRIDGE_ERROR) {
        Some(kind) => format!(
            "{:?} {}: {}",
            status.code(),
            kind.to_str().unwrap_or("?"),
            status.message()
        ),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// `message` with the headers the dev policies ask of calls to personal
/// data: `bridge-purpose` set to `purpose`, and a `bridge-user-id` and
/// `bridge-reason` naming a sandbox test. Purposes are those of the dev
/// configuration (`KYC`, `CREDIT-SCORING`, ...).
pub fn declared<T>(message: T, purpose: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    for (name, value) in [
        (headers::BRIDGE_PURPOSE, purpose),
        (headers::BRIDGE_USER_ID, "sandbox-agent"),
        (headers::BRIDGE_REASON, "integration test"),
    ] {
        if let Ok(value) = AsciiMetadataValue::try_from(value) {
            metadata.insert(name, value);
        }
    }
    request
}

/// A consent to ask the MyGov portal for: [`Sandbox::grant_consent`].
#[derive(Debug, Clone)]
pub struct ConsentGrant {
    nin: String,
    consumer: String,
    methods: Vec<String>,
    purpose: String,
    providers: Option<Vec<String>>,
    max_uses: u32,
    valid_for: Option<Duration>,
}

impl ConsentGrant {
    /// Citizen `nin` lets `consumer` call `method` (`/package.Service/Method`)
    /// for `purpose`, about them only: three times, for the portal's
    /// default validity, unless told otherwise.
    pub fn new(nin: &str, consumer: &str, method: &str, purpose: &str) -> Self {
        Self {
            nin: nin.to_owned(),
            consumer: consumer.to_owned(),
            methods: vec![method.to_owned()],
            purpose: purpose.to_owned(),
            providers: None,
            max_uses: 3,
            valid_for: None,
        }
    }

    /// Also covers `method`.
    pub fn method(mut self, method: &str) -> Self {
        self.methods.push(method.to_owned());
        self
    }

    /// The consent may be used this many times (0 counts as 1, as the
    /// portal reads it: a consent is never without a limit).
    pub fn max_uses(mut self, uses: u32) -> Self {
        self.max_uses = uses;
        self
    }

    /// The consent expires this long after it is granted.
    pub fn valid_for(mut self, validity: Duration) -> Self {
        self.valid_for = Some(validity);
        self
    }

    /// The providers the consent covers; by default, the mock agency of
    /// each method.
    pub fn providers(mut self, providers: &[&str]) -> Self {
        self.providers = Some(providers.iter().map(|&p| p.to_owned()).collect());
        self
    }
}

/// A consent the portal granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// The consent's id in the portal.
    pub id: String,
    /// The citizen who granted it.
    pub nin: String,
    /// The signed artefact, sent in `bridge-consent`.
    pub artefact: String,
}

impl Consent {
    /// `request` carrying this consent in its `bridge-consent` header.
    pub fn attach<T>(&self, mut request: tonic::Request<T>) -> tonic::Request<T> {
        if let Ok(value) = AsciiMetadataValue::try_from(self.artefact.as_str()) {
            request
                .metadata_mut()
                .insert(headers::BRIDGE_CONSENT, value);
        }
        request
    }
}

/// One record of the exchange log, with its index.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRecord {
    pub index: u64,
    pub record: ExchangeRecord,
}

/// The sandbox gateway's exchange log: [`Sandbox::exchange_log`]. Records
/// of a call are committed before the call's answer reaches its caller.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeLogView<'a> {
    /// `None` when a configuration fragment turned the log off.
    log: Option<&'a ExchangeLog>,
}

impl<'a> ExchangeLogView<'a> {
    /// Every record, oldest first.
    pub fn records(&self) -> Result<Vec<LoggedRecord>, SandboxError> {
        decoded(self.store()?.records_from(0, usize::MAX))
    }

    /// The records of the call with this `bridge-request-id`: its decision,
    /// then its outcome if it was forwarded.
    pub fn of_request(&self, request_id: &str) -> Result<Vec<LoggedRecord>, SandboxError> {
        decoded(self.store()?.records_of_request(request_id))
    }

    /// The records of the call whose answer (response headers, or the
    /// metadata of its error status) is `metadata`.
    pub fn of_call(&self, metadata: &MetadataMap) -> Result<Vec<LoggedRecord>, SandboxError> {
        let request_id = metadata
            .get(headers::BRIDGE_REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| {
                SandboxError::ExchangeLog(format!(
                    "the answer carries no {}",
                    headers::BRIDGE_REQUEST_ID
                ))
            })?;
        self.of_request(request_id)
    }

    /// The log itself: checkpoints, its directory, simulated store faults.
    /// `None` when the sandbox was configured with
    /// `exchange_log.enabled = false`.
    pub fn log(&self) -> Option<&'a ExchangeLog> {
        self.log
    }

    fn store(&self) -> Result<Store, SandboxError> {
        let log = self.log.ok_or_else(|| {
            SandboxError::ExchangeLog("it is off (exchange_log.enabled = false)".to_owned())
        })?;
        Store::open_read_only(log.dir()).map_err(|error| {
            SandboxError::ExchangeLog(format!("opening {}: {error}", log.dir().display()))
        })
    }
}

fn decoded(
    stored: Result<
        Vec<gateway::exchange_log::store::StoredRecord>,
        gateway::exchange_log::StoreError,
    >,
) -> Result<Vec<LoggedRecord>, SandboxError> {
    let stored = stored.map_err(|error| SandboxError::ExchangeLog(error.to_string()))?;
    stored
        .into_iter()
        .map(|stored| {
            let record = stored.decode().map_err(|error| {
                SandboxError::ExchangeLog(format!("record {}: {error}", stored.index))
            })?;
            Ok(LoggedRecord {
                index: stored.index,
                record,
            })
        })
        .collect()
}

/// Failures on purpose at one agency: [`Sandbox::faults`]. Each applies to
/// every call that does not ask for a fault of its own (the
/// `govbridge-fault` header), until [`Self::clear`]. `delay` and `fail`
/// spare the gateway's own calls (health checks, the consent feed), so
/// the agency stays in rotation and callers see exactly that failure for
/// as long as it is set; `unavailable` does not.
#[derive(Debug, Clone, Copy)]
pub struct AgencyFaults<'a> {
    switches: &'a [FaultSwitch],
    cuts: &'a [watch::Sender<bool>],
}

impl<'a> AgencyFaults<'a> {
    /// Answers every call `delay` late.
    pub fn delay(&self, delay: Duration) {
        self.set(Fault::delay(delay));
    }

    /// Answers every call with `code`, without calling the agency. The
    /// gateway relays the status to the caller, without a `bridge-error`.
    pub fn fail(&self, code: Code) {
        let message = format!("fault injected: {}", code.description());
        self.set(Fault::fail(Failure::Status(code, message)));
    }

    /// The agency falls over: every connection is dropped as soon as a
    /// call arrives, health checks included. Callers get `UNAVAILABLE` from
    /// the gateway, with a `bridge-error`.
    pub fn unavailable(&self) {
        for switch in self.switches {
            switch.set(Fault::fail(Failure::Drop));
        }
    }

    /// Applies `fault` to every call but the gateway's own.
    pub fn set(&self, fault: Fault) {
        for switch in self.switches {
            switch.set_for_calls(fault.clone());
        }
    }

    /// Cuts the network to the agency, as a partition would: its
    /// connections drop and new ones close at once. Only for agencies made
    /// [`SandboxBuilder::cuttable`]; returns whether there was a relay to
    /// cut.
    pub fn cut(&self) -> bool {
        for cut in self.cuts {
            cut.send_replace(true);
        }
        !self.cuts.is_empty()
    }

    /// Answers normally again, and restores a cut network.
    pub fn clear(&self) {
        for switch in self.switches {
            switch.clear();
        }
        for cut in self.cuts {
            cut.send_replace(false);
        }
    }

    /// Restores a cut network, leaving the fault switches as they are.
    pub fn restore(&self) {
        for cut in self.cuts {
            cut.send_replace(false);
        }
    }

    /// The agency's fault switches, one per replica.
    pub fn switches(&self) -> &'a [FaultSwitch] {
        self.switches
    }
}

/// The gateway's `bridge-error` of a refused call (`policy-denied`,
/// `consent-revoked`, ...): `None` when the gateway did not make the
/// error (the backend did) or the call was not refused by it.
pub fn bridge_error(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get(headers::BRIDGE_ERROR)
        .and_then(|value| value.to_str().ok())
}
