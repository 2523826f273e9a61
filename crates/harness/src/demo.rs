//! `govbridge demo`: the dev setup in one process, and a scenario played
//! through the real gateway step by step, for a newcomer to watch.
//!
//! Everything runs as `govbridge dev` runs it (the dev PKI, configuration
//! and policies, the mock agencies, the gateway), on ports the system
//! picks, so that a demo never clashes with a running `dev`. Each step
//! says what it does, then what the gateway answered: the gRPC status, the
//! `bridge-error` if any, and the exchange-log index. A step that does not
//! end as the story says stops the demo with an error: CI runs it with
//! `--once`. With `--nodes N`, the gateway is a fleet of N nodes sharing a
//! throwaway PostgreSQL cluster, and the story moves between them: the
//! consent granted through one node, used through another, revoked
//! through a third, and the fleet's one log proven at the end. On one
//! node, Azerbaijan's instance runs beside it ([`crate::partner`]) and the
//! story ends across the border: a Senegalese bank verifies an Azerbaijani
//! company through both gateways, and both operators check their logs and
//! the cross receipt.

/// Prints a line to standard output, if anyone still reads it: `govbridge
/// demo | head` must not panic, nor stop serving.
macro_rules! say {
    ($($line:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($line)*);
    }};
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::agencies::Bank;
use crate::agencies::config::AgenciesConfig;
use crate::agencies::{Agency, Dataset};
use crate::launch::{BoundAgency, Shutdown};
use gateway::config::{Config, Endpoint};
use gateway::exchange_log::verify::{self, RecordKey};
use gateway::identity::tls::ClientTls;
use gateway::net::client::Channel;
use gateway::proto::audit::v1::ListAccessesRequest;
use gateway::proto::audit::v1::data_tracker_client::DataTrackerClient;
use gateway::proto::bank::v1::VerifyAccountHoldersRequest;
use gateway::proto::bank::v1::account_verification_client::AccountVerificationClient;
use gateway::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use gateway::proto::civilregistry::v1::{GetPersonRequest, VerifyIdentityRequest};
use gateway::proto::consent::v1::consent_client::ConsentClient;
use gateway::proto::consent::v1::{ConsentRef, GrantRequest};
use gateway::proto::tax::v1::GetTaxClearanceRequest;
use gateway::proto::tax::v1::get_tax_clearance_request::Taxpayer;
use gateway::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
use gateway::proxy::Gateway;
use gateway::wire::headers;

/// The story's steps on a fleet; one node adds the cross-border ones.
const STEPS: usize = 9;
const CROSS_BORDER_STEPS: usize = 2;
const TAX: &str = "SN/GOV/DGID/tax";
const CBAO_CREDIT: &str = "SN/COM/CBAO/credit";
const CLEARANCE: &str = "/govbridge.tax.v1.TaxAuthority/GetTaxClearance";
/// Lines of the treasury's batch.
const BATCH: usize = 1_000;

/// Runs the demo in `dir` (a fresh temporary directory when `None`),
/// through a fleet of `nodes` gateway nodes when above one.
pub async fn run(dir: Option<&Path>, once: bool, nodes: usize) -> anyhow::Result<()> {
    // Listened for before anything is made: a Ctrl-C while the demo starts
    // or plays stops it here, its database and directory with it, rather
    // than kill it and leave them behind.
    let mut stop = crate::sandbox::manifest::Stop::listen(false)?;
    // A directory made for this run (never one found there, with another
    // run's CA), removed when the run ends, however it ends; declared
    // first, it is dropped after everything that uses it.
    let (dir, temporary) = match dir {
        Some(dir) => (dir.to_owned(), None),
        None => {
            // Readable by others (0755, as a directory made by hand): a
            // fleet's PostgreSQL runs as an unprivileged user when the
            // demo runs as root, and must reach its data inside.
            let temporary = tempfile::Builder::new()
                .prefix("govbridge-demo-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .tempdir()
                .context("cannot create a directory for the demo")?;
            (temporary.path().to_owned(), Some(temporary))
        }
    };
    let (stop_partner, partner_stopping) = Shutdown::new();
    // A stop while starting waits for the start to end (a database half
    // made, a partner half up, must not lose their directory under them),
    // then stops what it started, the story left unplayed.
    let starting = start(&dir, nodes, &partner_stopping);
    tokio::pin!(starting);
    let (started, stopped) = tokio::select! {
        started = &mut starting => (started, None),
        reason = stop.next() => {
            say!("stopping once started ({reason}); stop again to end at once");
            tokio::select! {
                started = &mut starting => (started, Some(reason)),
                again = stop.next() => {
                    say!("stopped at once ({again})");
                    stop_partner.trigger();
                    return Ok(());
                }
            }
        }
    };
    let Started {
        config,
        running,
        partner,
        cluster,
    } = started?;
    let mut demo = Demo {
        gateways: running.gateways.clone(),
        via: 0,
        pki: dir.join("pki"),
        log: running.log.clone(),
        store: config.store.clone(),
        copy: dir.join("audit-copy"),
        data: running.data.clone(),
        step: 0,
        steps: STEPS + partner.as_ref().map_or(0, |_| CROSS_BORDER_STEPS),
        partner,
    };
    let played = match stopped {
        Some(_) => None,
        None => tokio::select! {
            played = demo.play() => Some(played),
            reason = stop.next() => {
                say!("\nstopping ({reason})");
                None
            }
        },
    };
    if let Some(Err(error)) = &played {
        eprintln!("\nthe demo went off script: {error:#}");
    } else if played.is_some() && !once {
        demo.how_to_call();
        say!("\nServing until Ctrl-C.");
        let reason = stop.next().await;
        say!("stopping ({reason})");
    }
    // Senegal's gateway first: its last checkpoint goes to Azerbaijan's
    // witness as it stops.
    running.stop().await;
    stop_partner.trigger();
    if let Some(partner) = demo.partner.take() {
        partner.instance.stopped().await;
    }
    drop(cluster);
    drop(temporary);
    played.unwrap_or(Ok(()))
}

/// What [`start`] started.
struct Started {
    config: Config,
    running: Running,
    partner: Option<Partner>,
    cluster: Option<crate::postgres::Cluster>,
}

/// Prepares the dev setup in `dir`, then starts Azerbaijan's instance
/// (one node) or the fleet's database (more), the agencies and the nodes.
/// Dropped before its end, what it started stops.
async fn start(dir: &Path, nodes: usize, partner_stopping: &Shutdown) -> anyhow::Result<Started> {
    let config_path = crate::dev::prepare(dir)?;
    let mut config =
        Config::load(&config_path).map_err(|error| crate::dev::stale_hint(&config_path, error))?;
    let agencies = AgenciesConfig::load(&config_path)?
        .ok_or_else(|| anyhow!("the dev configuration has no [agencies] section"))?;
    // One node: Azerbaijan's instance beside it, and Senegal's gateway
    // running the dev configuration federated with it.
    let partner = if nodes > 1 {
        None
    } else {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let instance = crate::partner::PartnerInstance::start(
            &dir.join("az"),
            loopback,
            loopback,
            agencies.seed,
            partner_stopping,
        )
        .await
        .map_err(|error| anyhow!("starting Azerbaijan's instance: {error:#}"))?;
        let key = dir.join("pki").join("federation.key");
        crate::partner::write_federation_key(&key, config.gateway.identity.instance())?;
        // Senegal's gateway learns Azerbaijan from its directory.
        let directory = instance
            .serve_directory(&dir.join("az").join("directory"), partner_stopping)
            .await
            .map_err(|error| anyhow!("serving Azerbaijan's directory: {error:#}"))?;
        let federated = crate::dev::write_federated_config(
            &config_path,
            &config,
            &instance,
            &key,
            crate::dev::Federation {
                receipts: false,
                directory: Some(directory.clone()),
            },
        )?;
        let prepared = gateway::proxy::global::prepare(&federated)
            .await
            .map_err(|error| anyhow!("{}: {error}", federated.display()))?;
        use gateway::proxy::global::Prepared;
        match prepared.partners.first() {
            Some((_, Prepared::Fetched { .. } | Prepared::Current)) => {}
            // A demo run again in the same directory: it runs.
            Some((_, Prepared::FromCache { why })) => {
                say!("Azerbaijan's configuration from the cache: {why}");
            }
            other => {
                bail!("Azerbaijan's configuration was not learned from its directory: {other:?}")
            }
        }
        say!(
            "Senegal's gateway learned Azerbaijan's instance from its signed global \
             configuration, at {}",
            directory.url
        );
        config = Config::load(&federated)?;
        Some(Partner { instance, key })
    };
    // Proofs need a signed checkpoint: the demo does not wait ten seconds.
    config.exchange_log.checkpoint_interval = Duration::from_secs(1);
    say!("govbridge demo: the dev setup in {}", dir.display());
    let cluster = if nodes > 1 {
        let postgres = dir.join("postgres");
        let cluster =
            tokio::task::spawn_blocking(move || crate::postgres::Cluster::start(&postgres))
                .await?
                .map_err(|error| anyhow!("starting the fleet's PostgreSQL: {error:#}"))?;
        config.store =
            Some(gateway::config::StoreConfig::parse(&cluster.url()).map_err(anyhow::Error::msg)?);
        say!("PostgreSQL for the fleet: {}", cluster.url());
        Some(cluster)
    } else {
        None
    };
    let running =
        Running::start(&mut config, &agencies, nodes.max(1), dir, partner.as_ref()).await?;
    Ok(Started {
        config,
        running,
        partner,
        cluster,
    })
}

/// The mock agencies and the gateway's nodes, serving.
struct Running {
    gateways: Vec<SocketAddr>,
    /// The first node's log directory (its key, for a fleet).
    log: PathBuf,
    data: Arc<Dataset>,
    stop_gateway: crate::launch::ShutdownTrigger,
    gateway_tasks: Vec<tokio::task::JoinHandle<()>>,
    stop_agencies: crate::launch::ShutdownTrigger,
    agencies: tokio::task::JoinSet<()>,
}

impl Running {
    /// Starts every agency, then `nodes` gateway nodes (sharing
    /// `config.store`, each with its log directory in `dir`), on ports
    /// the system picks; `config`'s addresses are rewritten to match.
    async fn start(
        config: &mut Config,
        agencies: &AgenciesConfig,
        nodes: usize,
        dir: &Path,
        partner: Option<&Partner>,
    ) -> anyhow::Result<Self> {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let data = Arc::new(Dataset::generate(agencies.seed));
        let (stop_agencies, stopping) = Shutdown::new();
        let mut tasks = tokio::task::JoinSet::new();
        for agency in agencies.agencies.values() {
            let bound = BoundAgency::bind(
                agency.agency,
                loopback,
                &agencies.server_tls(agency),
                config.gateway.identity.clone(),
                data.clone(),
                agency.signing_key.as_ref(),
            )
            .await?;
            point_at(config, agency.agency, bound.local_addr()?)?;
            tasks.spawn(bound.serve(stopping.clone().wait()));
        }
        config.gateway.listen = loopback;
        config.gateway.admin = None;
        let (stop_gateway, gateway_stopping) = Shutdown::new();
        let (mut gateways, mut gateway_tasks) = (Vec::new(), Vec::new());
        let first_log = config.exchange_log.data_dir.clone();
        for number in 1..=nodes {
            let mut node = config.clone();
            if nodes > 1 {
                node.gateway.node_id = format!("{}-{number}", config.gateway.node_id);
                node.exchange_log.data_dir = dir.join(format!("node-{number}-data"));
                if number > 1 {
                    // One log for the fleet, signed with one key.
                    crate::dev::share_key(
                        &config
                            .exchange_log
                            .data_dir
                            .join(gateway::exchange_log::store::KEY_FILE),
                        &node.exchange_log.data_dir,
                    )?;
                } else {
                    config.exchange_log.data_dir = node.exchange_log.data_dir.clone();
                }
            }
            let gateway = Gateway::bind(&node).await?;
            let address = gateway.local_addr()?;
            if let Some(partner) = partner {
                // Trusted by the partner before this gateway calls it (its
                // health checks first); its log witnessed there.
                partner.instance.federate(&crate::partner::Home {
                    ca: dir.join("pki").join(crate::pki::CA_CERT),
                    gateway: node.gateway.identity.clone(),
                    endpoint: address,
                    key: partner.key.clone(),
                    log_key: Some(
                        node.exchange_log
                            .data_dir
                            .join(gateway::exchange_log::store::VERIFIER_FILE),
                    ),
                    witnessed: false,
                })?;
            }
            gateway_tasks.push(tokio::spawn(gateway.serve(gateway_stopping.clone().wait())));
            say!("gateway {} on https://{address}", node.gateway.node_id);
            gateways.push(address);
        }
        say!("six mock agencies behind it");
        let log = if nodes > 1 {
            config.exchange_log.data_dir.clone()
        } else {
            first_log
        };
        Ok(Self {
            gateways,
            log,
            data,
            stop_gateway,
            gateway_tasks,
            stop_agencies,
            agencies: tasks,
        })
    }

    async fn stop(mut self) {
        self.stop_gateway.trigger();
        for task in self.gateway_tasks {
            let _ = task.await;
        }
        self.stop_agencies.trigger();
        while self.agencies.join_next().await.is_some() {}
    }
}

/// Points the provider of `agency` at `address`.
fn point_at(config: &mut Config, agency: Agency, address: SocketAddr) -> anyhow::Result<()> {
    let provider = config
        .providers
        .get_mut(&agency.member_id())
        .ok_or_else(|| {
            anyhow!(
                "the dev configuration has no provider {}",
                agency.member_id()
            )
        })?;
    for endpoint in &mut provider.endpoints {
        *endpoint = Endpoint {
            address: address.to_string(),
            authority: http::uri::Authority::try_from(address.to_string())?,
            server_name: endpoint.server_name.clone(),
        };
    }
    Ok(())
}

/// Azerbaijan's instance, and Senegal's gateway's federation key.
struct Partner {
    instance: crate::partner::PartnerInstance,
    key: PathBuf,
}

struct Demo {
    /// The gateway's nodes: one, or a fleet.
    gateways: Vec<SocketAddr>,
    /// The node the next channels go through.
    via: usize,
    pki: PathBuf,
    /// The log's directory (for a fleet: the first node's, with the key).
    log: PathBuf,
    /// The fleet's database, when there is one.
    store: Option<gateway::config::StoreConfig>,
    /// Where the operator copies the fleet's log to check it.
    copy: PathBuf,
    data: Arc<Dataset>,
    step: usize,
    steps: usize,
    /// Azerbaijan's instance, on one node.
    partner: Option<Partner>,
}

/// How a call ended, as the demo shows it.
struct Outcome {
    code: Code,
    bridge_error: Option<String>,
    index: Option<String>,
    message: String,
}

impl Outcome {
    fn of<T>(result: &Result<tonic::Response<T>, tonic::Status>) -> Self {
        match result {
            Ok(response) => Self {
                code: Code::Ok,
                bridge_error: None,
                index: value(response.metadata(), headers::BRIDGE_AUDIT_INDEX),
                message: String::new(),
            },
            Err(status) => Self {
                code: status.code(),
                bridge_error: value(status.metadata(), headers::BRIDGE_ERROR),
                index: value(status.metadata(), headers::BRIDGE_AUDIT_INDEX),
                message: status.message().to_owned(),
            },
        }
    }

    /// Prints the outcome; an error if it is not `expected`.
    fn expect(&self, expected: Code, kind: Option<&str>) -> anyhow::Result<()> {
        let mut line = format!("      gateway: {:?}", self.code);
        if let Some(kind) = &self.bridge_error {
            line += &format!(", bridge-error {kind}");
        }
        if let Some(index) = &self.index {
            line += &format!(", exchange log #{index}");
        }
        say!("{line}");
        if !self.message.is_empty() {
            say!("      \"{}\"", self.message);
        }
        if self.code != expected || self.bridge_error.as_deref() != kind {
            bail!(
                "expected {expected:?}{}, got {:?} {:?}: {}",
                kind.map(|kind| format!(" {kind}")).unwrap_or_default(),
                self.code,
                self.bridge_error,
                self.message
            );
        }
        Ok(())
    }
}

fn value(metadata: &MetadataMap, name: &str) -> Option<String> {
    metadata
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// `message` with the headers every call to personal data carries.
fn declared<T>(message: T, purpose: &str, user: &str, reason: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    for (name, value) in [
        (headers::BRIDGE_PURPOSE, purpose),
        (headers::BRIDGE_USER_ID, user),
        (headers::BRIDGE_REASON, reason),
    ] {
        if let Ok(value) = AsciiMetadataValue::try_from(value) {
            metadata.insert(name, value);
        }
    }
    request
}

fn with<T>(mut request: tonic::Request<T>, name: &'static str, value: &str) -> tonic::Request<T> {
    if let Ok(value) = AsciiMetadataValue::try_from(value) {
        request.metadata_mut().insert(name, value);
    }
    request
}

impl Demo {
    /// A channel to the gateway with demo member `stem`'s certificate.
    async fn channel(&self, stem: &str) -> anyhow::Result<Channel> {
        let tls = ClientTls::new(
            self.pki.join(crate::pki::CA_CERT),
            self.pki.join(format!("member-{stem}.pem")),
            self.pki.join(format!("member-{stem}.key")),
        )
        .client_config()?;
        let gateway = self.gateways[self.via % self.gateways.len()];
        Channel::connect(gateway, "localhost", tls)
            .await
            .map_err(|error| anyhow!("cannot connect to the gateway as {stem}: {error}"))
    }

    fn step(&mut self, title: &str) {
        self.step += 1;
        say!("\n[{}/{}] {title}", self.step, self.steps);
    }

    /// Sends the next channels through node `index` (of a fleet) and says
    /// so.
    fn through(&mut self, index: usize) {
        self.via = index;
        if self.gateways.len() > 1 {
            say!(
                "      (through node {} of {}, https://{})",
                index % self.gateways.len() + 1,
                self.gateways.len(),
                self.gateways[index % self.gateways.len()]
            );
        }
    }

    async fn play(&mut self) -> anyhow::Result<()> {
        let data = Arc::clone(&self.data);
        let a = &data.citizens[0];
        let b = &data.citizens[1];
        let (nin_a, nin_b) = (a.nin.to_string(), b.nin.to_string());
        let name_a = format!("{} {}", a.first_names, a.last_name);

        self.step(&format!(
            "{name_a} (NIN {nin_a}) lets CBAO's credit department read their tax \
             clearance, three times, in the MyGov app"
        ));
        self.through(0);
        let mut mygov = ConsentClient::new(self.channel("mygov").await?);
        let granted = mygov
            .grant(declared(
                GrantRequest {
                    nin: nin_a.clone(),
                    consumer: CBAO_CREDIT.to_owned(),
                    providers: vec![TAX.to_owned()],
                    methods: vec![CLEARANCE.to_owned()],
                    purpose: "CREDIT-SCORING".to_owned(),
                    not_before: 0,
                    expires: 0,
                    max_uses: 3,
                },
                "CITIZEN-SELF-SERVICE",
                &nin_a,
                "the citizen grants a consent",
            ))
            .await;
        Outcome::of(&granted).expect(Code::Ok, None)?;
        let consent = granted?.into_inner();
        say!(
            "      consent {}, signed by MyGov: {}...",
            consent.consent_id,
            consent.artefact.get(..40).unwrap_or_default()
        );

        self.step("CBAO's KYC desk checks the citizen's identity at the civil registry");
        self.through(1);
        let mut kyc = CivilRegistryClient::new(self.channel("cbao-kyc").await?);
        let verified = kyc
            .verify_identity(declared(
                VerifyIdentityRequest {
                    nin: nin_a.clone(),
                    first_names: a.first_names.clone(),
                    last_name: a.last_name.to_owned(),
                    date_of_birth: a.date_of_birth.to_string(),
                },
                "KYC",
                "agent-0042",
                "opening a current account",
            ))
            .await;
        Outcome::of(&verified).expect(Code::Ok, None)?;
        if let Ok(answer) = &verified {
            say!("      civil registry: {:?}", answer.get_ref().result());
        }

        self.step("CBAO's KYC desk tries to read the citizen's full civil record");
        let person = kyc
            .get_person(declared(
                GetPersonRequest { nin: nin_a.clone() },
                "KYC",
                "agent-0042",
                "curiosity",
            ))
            .await;
        Outcome::of(&person).expect(Code::PermissionDenied, Some("policy-denied"))?;

        self.step("CBAO's credit department reads the tax clearance, with the consent");
        self.through(1);
        let mut credit = TaxAuthorityClient::new(self.channel("cbao-credit").await?);
        let clearance = |nin: &str| {
            with(
                declared(
                    GetTaxClearanceRequest {
                        taxpayer: Some(Taxpayer::SubjectNin(nin.to_owned())),
                    },
                    "CREDIT-SCORING",
                    "analyst-17",
                    "loan application 2026-118",
                ),
                headers::BRIDGE_CONSENT,
                &consent.artefact,
            )
        };
        let read = credit.get_tax_clearance(clearance(&nin_a)).await;
        Outcome::of(&read).expect(Code::Ok, None)?;
        let request_id = read
            .as_ref()
            .ok()
            .and_then(|answer| value(answer.metadata(), headers::BRIDGE_REQUEST_ID))
            .ok_or_else(|| anyhow!("the answer carries no bridge-request-id"))?;
        if let Ok(answer) = &read {
            let certificate = answer.get_ref();
            say!(
                "      tax authority: {} {:?}",
                certificate.certificate_number,
                certificate.status()
            );
        }

        self.step(&format!(
            "... and tries the same consent on another person, NIN {nin_b}"
        ));
        let other = credit.get_tax_clearance(clearance(&nin_b)).await;
        Outcome::of(&other).expect(Code::PermissionDenied, Some("consent-subject-mismatch"))?;

        self.step(&format!(
            "The treasury checks {BATCH} benefit payments against CBAO's accounts over one \
             bidirectional stream"
        ));
        let lines: Vec<VerifyAccountHoldersRequest> = data
            .accounts
            .iter()
            .filter(|account| account.bank == Bank::Cbao)
            .cycle()
            .take(BATCH)
            .enumerate()
            .map(|(index, account)| VerifyAccountHoldersRequest {
                line_id: format!("line-{index}"),
                iban: account.iban.to_string(),
                // Every tenth line names someone else: a payment to stop.
                nin: if index % 10 == 9 {
                    nin_b.clone()
                } else {
                    account.holder.to_string()
                },
            })
            .collect();
        if lines.len() < BATCH {
            bail!("the dataset holds no CBAO account");
        }
        let started = Instant::now();
        self.through(2);
        let mut treasury = AccountVerificationClient::new(self.channel("treasury").await?);
        let answers = treasury
            .verify_account_holders(with(
                declared(
                    tokio_stream::iter(lines),
                    "BENEFIT-PAYMENT",
                    "batch-2026-11",
                    "monthly family allowance",
                ),
                headers::BRIDGE_TARGET,
                "SN/COM/CBAO/accounts",
            ))
            .await;
        Outcome::of(&answers).expect(Code::Ok, None)?;
        let mut answers = answers?.into_inner();
        let mut results = std::collections::BTreeMap::<String, usize>::new();
        while let Some(answer) = answers.message().await? {
            *results.entry(format!("{:?}", answer.result())).or_default() += 1;
        }
        let counted: usize = results.values().sum();
        say!(
            "      {counted} answers in {} ms: {results:?}",
            started.elapsed().as_millis()
        );
        if counted != BATCH {
            bail!("{counted} answers to {BATCH} lines");
        }

        self.step("The citizen revokes the consent; the bank's next call is refused");
        self.through(2);
        let mut mygov = ConsentClient::new(self.channel("mygov").await?);
        let revoked = mygov
            .revoke(declared(
                ConsentRef {
                    nin: nin_a.clone(),
                    consent_id: consent.consent_id.clone(),
                },
                "CITIZEN-SELF-SERVICE",
                &nin_a,
                "the citizen revokes a consent",
            ))
            .await;
        Outcome::of(&revoked).expect(Code::Ok, None)?;
        let since = Instant::now();
        let refused = loop {
            let outcome = credit.get_tax_clearance(clearance(&nin_a)).await;
            // Calls made before the revocation reaches the gateway spend the
            // consent's uses; once it does, revoked is the answer, spent or
            // not.
            let exhausted =
                Outcome::of(&outcome).bridge_error.as_deref() == Some("consent-exhausted");
            let done = (outcome.is_err() && !exhausted) || since.elapsed() > Duration::from_secs(3);
            if done {
                break outcome;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        say!(
            "      refused {} ms after the revocation",
            since.elapsed().as_millis()
        );
        Outcome::of(&refused).expect(Code::PermissionDenied, Some("consent-revoked"))?;

        self.step("The citizen asks MyGov who read their data (the Data Tracker)");
        self.through(0);
        let mut tracker = DataTrackerClient::new(self.channel("mygov").await?);
        let accesses = tracker
            .list_accesses(declared(
                ListAccessesRequest {
                    subject: nin_a.clone(),
                    since_unix: 0,
                    limit: 20,
                    before_index: 0,
                },
                "CITIZEN-SELF-SERVICE",
                &nin_a,
                "the citizen looks at who read their data",
            ))
            .await;
        Outcome::of(&accesses).expect(Code::Ok, None)?;
        for access in &accesses?.get_ref().accesses {
            say!(
                "      #{:<4} {:<28} {:<48} {:<15} {}",
                access.index,
                access.caller_name,
                access.method,
                access.purpose,
                if access.allowed { "allowed" } else { "refused" }
            );
        }

        self.step("The operator verifies the exchange log and proves the tax clearance read");
        self.prove(&request_id).await?;
        if self.partner.is_some() {
            self.across_the_border().await?;
        }
        say!("\nThe story went as told: every step answered as expected.");
        Ok(())
    }

    /// Verifies the whole log, then checks the proofs of one call's records
    /// against the log's key, once a checkpoint covers them.
    async fn prove(&self, request_id: &str) -> anyhow::Result<()> {
        let verifier = gateway::exchange_log::note::Verifier::read(
            &self.log.join(gateway::exchange_log::store::VERIFIER_FILE),
        )
        .map_err(|error| anyhow!("the log's key: {error}"))?;
        let log = match &self.store {
            None => self.log.clone(),
            Some(store) => {
                self.pull(store, &verifier, request_id).await?;
                self.copy.clone()
            }
        };
        let report = verify::verify_log(&log, &verifier)?;
        if let Some(problem) = report.problem {
            bail!("the exchange log does not verify: {problem}");
        }
        say!(
            "      {} records, every hash and checkpoint verified",
            report.records
        );
        let key = RecordKey::RequestId(request_id.to_owned());
        let since = Instant::now();
        let bundles = loop {
            match verify::prove(&log, &key) {
                Ok(bundles) => break bundles,
                Err(verify::ProveError::NotYetCheckpointed { .. })
                    if since.elapsed() < Duration::from_secs(5) =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        for bundle in &bundles {
            let record = verify::check_bundle(bundle, &verifier)?;
            say!(
                "      record #{} ({:?}, {} -> {}) is in the signed tree of {} records",
                bundle.index,
                record.phase(),
                record.caller,
                record.provider,
                bundle.tree_size
            );
        }
        Ok(())
    }

    /// Copies the fleet's log, as an auditor does (`govbridge audit pull`),
    /// until the copy holds the records of `request_id` under a checkpoint.
    async fn pull(
        &self,
        store: &gateway::config::StoreConfig,
        verifier: &gateway::exchange_log::note::Verifier,
        request_id: &str,
    ) -> anyhow::Result<()> {
        use gateway::exchange_log::fleet;
        let database = gateway::database::Database::open(store).await?;
        let reader = fleet::FleetReader::new(database, tokio::runtime::Handle::current());
        let since = Instant::now();
        loop {
            let (reader, copy, verifier) = (reader.clone(), self.copy.clone(), verifier.clone());
            let pulled = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&copy)?;
                anyhow::Ok(fleet::pull(&reader, &copy, &verifier)?)
            })
            .await??;
            if let Some(problem) = pulled.problem {
                bail!("the fleet's exchange log does not verify: {problem}");
            }
            let key = RecordKey::RequestId(request_id.to_owned());
            // Copied once a checkpoint covers it (signed every second).
            match verify::prove(&self.copy, &key) {
                Err(_) if since.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    say!(
                        "      the fleet's log copied into {} (govbridge audit pull): {} records",
                        self.copy.display(),
                        pulled.size
                    );
                    return Ok(());
                }
            }
        }
    }

    /// A Senegalese bank verifies an Azerbaijani company through both
    /// gateways; both operators verify their logs, and Senegal's auditor
    /// checks Azerbaijan's signed record of the same call.
    async fn across_the_border(&mut self) -> anyhow::Result<()> {
        use gateway::exchange_log::note::Verifier;
        use gateway::proto::azbusiness::v1::GetCompanyRequest;
        use gateway::proto::azbusiness::v1::company_registry_client::CompanyRegistryClient;
        use gateway::proto::aztax::v1::GetTaxpayerStatusRequest;
        use gateway::proto::aztax::v1::tax_service_client::TaxServiceClient;

        let Some((instance, federation_key)) = self
            .partner
            .as_ref()
            .map(|partner| (partner.instance.clone(), partner.key.with_extension("pub")))
        else {
            return Ok(());
        };
        let company = instance.companies().companies()[0].clone();
        self.step(&format!(
            "CBAO's trade-finance desk verifies an Azerbaijani company (VÖEN {}) at \
             Azerbaijan's registry and tax service, through Senegal's gateway and Azerbaijan's",
            company.voen
        ));
        let mut registry = CompanyRegistryClient::new(self.channel("cbao-kyc").await?);
        let answer = registry
            .get_company(declared(
                GetCompanyRequest {
                    voen: company.voen.to_string(),
                },
                crate::partner::PURPOSE,
                "officer-17",
                "letter of credit 2026-118",
            ))
            .await;
        Outcome::of(&answer).expect(Code::Ok, None)?;
        let answer = answer?;
        let request_id = value(answer.metadata(), headers::BRIDGE_REQUEST_ID)
            .ok_or_else(|| anyhow!("the answer carries no bridge-request-id"))?;
        let found = answer.into_inner();
        let address = found.address.unwrap_or_default();
        say!(
            "      {}, {}, registered {}, head {}",
            found.name,
            if address.district.is_empty() {
                address.city
            } else {
                format!("{}, {}", address.district, address.city)
            },
            found.registration_date,
            found.head
        );
        // Its tax standing, from Azerbaijan's tax service, before the
        // letter of credit goes out.
        let standing = TaxServiceClient::new(self.channel("cbao-kyc").await?)
            .get_taxpayer_status(declared(
                GetTaxpayerStatusRequest {
                    voen: company.voen.to_string(),
                },
                crate::partner::PURPOSE,
                "officer-17",
                "letter of credit 2026-118",
            ))
            .await;
        Outcome::of(&standing).expect(Code::Ok, None)?;
        let standing = standing?.into_inner();
        use gateway::proto::aztax::v1::Standing;
        say!(
            "      tax service: {}{}, {}",
            match standing.standing() {
                Standing::InGoodStanding => "in good standing".to_owned(),
                Standing::InArrears => format!("{} AZN in arrears", standing.arrears_azn),
                Standing::Suspended => "activity suspended".to_owned(),
                Standing::Deregistered | Standing::Unspecified => "deregistered".to_owned(),
            },
            if standing.vat_payer {
                format!(", VAT payer since {}", standing.vat_registered_on)
            } else {
                String::new()
            },
            standing.tax_office
        );

        self.step(
            "Both operators verify their logs; Senegal's auditor checks Azerbaijan's signed \
             record of the same call",
        );
        let az_log = instance.path("data");
        let az_key = Verifier::read(&az_log.join(gateway::exchange_log::store::VERIFIER_FILE))
            .map_err(|error| anyhow!("Azerbaijan's log key: {error}"))?;
        let sn_key = Verifier::read(&self.log.join(gateway::exchange_log::store::VERIFIER_FILE))
            .map_err(|error| anyhow!("Senegal's log key: {error}"))?;
        let federation_key = Verifier::read(&federation_key)
            .map_err(|error| anyhow!("Senegal's federation key: {error}"))?;
        // Azerbaijan signs a checkpoint now; Senegal's comes every second.
        if let Some(log) = instance.exchange_log() {
            log.checkpoint().await?;
        }
        let key = RecordKey::RequestId(request_id.clone());
        let since = Instant::now();
        let home = loop {
            match verify::prove(&self.log, &key) {
                Ok(bundles) => break bundles,
                Err(verify::ProveError::NotYetCheckpointed { .. })
                    if since.elapsed() < Duration::from_secs(5) =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        for (name, log, key) in [
            ("Senegal", &self.log, &sn_key),
            ("Azerbaijan", &az_log, &az_key),
        ] {
            let report = verify::verify_log(log, key)?;
            if let Some(problem) = report.problem {
                bail!("{name}'s exchange log does not verify: {problem}");
            }
            say!(
                "      {name}'s log: {} records, every hash and checkpoint verified",
                report.records
            );
        }
        let abroad = verify::prove(&az_log, &key)?;
        let receipt = verify::check_receipt(&home, &sn_key, &abroad, &az_key, &federation_key)?;
        let ((home_index, record), (partner_index, theirs)) = (&receipt.home, &receipt.partner);
        say!(
            "      request {request_id}: record #{home_index} of Senegal's log, #{partner_index} \
             of Azerbaijan's, each under a checkpoint its own key signed"
        );
        say!(
            "      {} called {}; Azerbaijan holds Senegal's signed assertion for it, names {} \
             as the gateway that vouched, and {} the call",
            record.caller,
            record.method,
            theirs.via_gateway,
            if theirs.allowed { "allowed" } else { "refused" }
        );
        Ok(())
    }

    fn how_to_call(&self) {
        let pki = self.pki.display();
        say!(
            "\nCall the gateway yourself, as CBAO's KYC desk:\n\
             \n  grpcurl -cacert {pki}/ca.pem -cert {pki}/member-cbao-kyc.pem \\\n    \
             -key {pki}/member-cbao-kyc.key -servername localhost \\\n    \
             -H 'bridge-purpose: KYC' -H 'bridge-user-id: agent-1' -H 'bridge-reason: demo' \\\n    \
             {} list\n\
             \nor from Python (grpcio): grpc.ssl_channel_credentials(root_certificates=ca, \
             private_key=key, certificate_chain=cert), target {}, \
             options=[('grpc.ssl_target_name_override', 'localhost')].",
            self.gateways[0],
            self.gateways[0]
        );
    }
}
