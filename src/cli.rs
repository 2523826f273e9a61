//! The command line: `serve`, `agency`, `pki`, `policy`, `audit`,
//! `consent`, `status`, `bench`, `check-config`, `dev` and `demo`.
//!
//! Parses arguments, sets up logging and calls into the library. Errors are
//! printed once, with their context chain, and give exit status 1.

mod audit;
mod bench;
mod consent;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::agencies::Dataset;
use crate::config::{Config, OtlpConfig};
use crate::identity::MemberId;
use crate::launch::{BoundAgency, termination_signal};
use crate::pki::{self, CertificateAuthority, LeafRequest};
use crate::proxy::Gateway;

/// govbridge: a gRPC interconnection gateway for government e-services.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Also stop when standard input closes: for a gateway started by
        /// `govbridge bench`, so that it never outlives its parent.
        #[arg(long, hide = true)]
        stop_with_parent: bool,
    },
    /// Run one mock agency (civil-registry, tax, business-registry,
    /// bank-cbao, bank-ecobank, mygov).
    Agency {
        name: String,
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Development PKI: a CA, certificates and a CRL.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Authorization policies: check, explain a decision, run decision tables.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The exchange log: verify it, prove records, read it.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Citizens' consents at the MyGov portal: grant, list and revoke them
    /// through the gateway, as the portal's app (SN/GOV/MYGOV/app).
    Consent(consent::ConsentArgs),
    /// A short summary of a running gateway, read from its admin endpoint.
    Status {
        /// The admin endpoint, `gateway.admin` in its configuration.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
        admin: std::net::SocketAddr,
    },
    /// Benchmarks: a load generator, and govbridge side by side with a
    /// direct call and nginx.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Validate a configuration as a start would, then exit.
    CheckConfig {
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// Play the story of govbridge step by step against the dev setup run
    /// in this process (a citizen's consent, a bank's calls, a treasury
    /// batch, a revocation, the Data Tracker, a proof), then keep serving.
    Demo {
        /// Where to write the dev PKI, configuration and exchange log
        /// [default: a temporary directory, removed at the end].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Stop after the story instead of serving.
        #[arg(long)]
        once: bool,
    },
    /// A sandbox for integration tests in any language: the gateway with
    /// the dev policies and every mock agency (faults on), on ports the
    /// system picks, described in a JSON manifest; serves until stopped.
    Sandbox {
        /// Where to write the manifest (gateway address, CA, member
        /// certificates, test data by role); removed on exit.
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// The seed of the synthetic dataset.
        #[arg(long, default_value_t = crate::sandbox::DEFAULT_SEED)]
        seed: u64,
        /// Also stop when standard input closes: for a test harness that
        /// starts the sandbox, so that it never outlives the harness.
        #[arg(long)]
        stop_with_parent: bool,
    },
    /// Create a dev PKI and config under DIR if missing, then run every mock
    /// agency and the gateway in one process.
    Dev {
        #[arg(long, value_name = "DIR", default_value = "./dev")]
        dir: PathBuf,
        /// Let calls ask the mock agencies to fail, with the
        /// `govbridge-fault` header (`delay=250ms`, `status=UNAVAILABLE`,
        /// `reset`, `drop`): for trying the gateway's resilience.
        #[arg(long)]
        faults: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate the policies against the schema and the member registry,
    /// and list what each member may call.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Decide one call as the gateway would, and say which policies decided.
    Explain {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The calling member, e.g. SN/COM/CBAO/kyc.
        #[arg(long)]
        client: String,
        /// The full method, e.g. /govbridge.civilregistry.v1.CivilRegistry/GetPerson.
        #[arg(long)]
        method: String,
        /// The declared purpose (bridge-purpose).
        #[arg(long)]
        purpose: Option<String>,
        /// The provider (bridge-target); default: the method's first.
        #[arg(long)]
        provider: Option<String>,
        /// The call gives no bridge-reason.
        #[arg(long)]
        no_reason: bool,
        /// The call gives no bridge-user-id.
        #[arg(long)]
        no_user_id: bool,
        /// The citizen's consent was verified.
        #[arg(long)]
        consent: bool,
        /// Hour of the day, UTC.
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u8).range(0..=23))]
        hour: u8,
        /// Days until the caller's certificate expires.
        #[arg(long, default_value_t = 365)]
        certificate_days_left: i64,
    },
    /// Run a table of expected decisions (see config/policies/tests.toml).
    Test {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(value_name = "CASES")]
        cases: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create a CA, an empty CRL, and certificates for the gateway, the mock
    /// agencies and the demo members.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace an existing PKI in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Issue a member client certificate: DIR/NAME.pem and DIR/NAME.key.
    Issue {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The member id, e.g. SN/COM/CBAO/kyc.
        #[arg(long)]
        member: String,
        /// File stem of the new certificate and key.
        #[arg(long, value_name = "NAME")]
        out: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
        days: i64,
        /// Replace NAME.pem and NAME.key if they exist.
        #[arg(long)]
        force: bool,
    },
    /// Add a certificate to the CRL (DIR/crl.pem).
    Revoke {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The certificate to revoke (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command, cli.log_format) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), and exports
/// spans when `otlp` names a collector. The filter applies to the log only:
/// exported spans include the debug-level ones (policy, exchange log,
/// upstream) whatever `RUST_LOG` says.
fn init_logging(
    format: LogFormat,
    otlp: Option<&OtlpConfig>,
    instance: &str,
) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;

    // The demo tells its own story on stdout: only warnings by default.
    let default = if instance == "demo" { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a person at a terminal: in a file or a pipe the
    // escape codes are noise, and cost time on every line.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let log = match format {
        LogFormat::Pretty => log.boxed(),
        LogFormat::Json => log.json().boxed(),
    };
    let export = otlp
        .map(|otlp| crate::telemetry::otlp::layer(otlp, instance))
        .transpose()
        .context("starting OTLP export")?;
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(export)
        .init();
    Ok(())
}

/// The collector named by the configuration, or else by OpenTelemetry's
/// standard `OTEL_EXPORTER_OTLP_ENDPOINT` (and `OTEL_SERVICE_NAME`).
fn otlp_of(config: Option<&Config>) -> anyhow::Result<Option<OtlpConfig>> {
    if let Some(otlp) = config.and_then(|config| config.telemetry.otlp.as_ref()) {
        return Ok(Some(otlp.clone()));
    }
    let Some(endpoint) = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT") else {
        return Ok(None);
    };
    let endpoint = endpoint.to_string_lossy();
    let endpoint = OtlpConfig::parse_endpoint(&endpoint)
        .map_err(|message| anyhow::anyhow!("OTEL_EXPORTER_OTLP_ENDPOINT: {message}"))?;
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "govbridge".to_owned());
    Ok(Some(OtlpConfig {
        endpoint,
        service_name,
    }))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(command: Command, log_format: LogFormat) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            config,
            stop_with_parent,
        } => {
            let config = Config::load(&config)?;
            init_logging(
                log_format,
                otlp_of(Some(&config))?.as_ref(),
                &config.gateway.node_id,
            )?;
            runtime()?.block_on(async {
                let gateway = Gateway::bind(&config).await?;
                gateway.reloader().reload_on_sighup();
                gateway
                    .reloader()
                    .reload_on_file_change(std::time::Duration::from_secs(2));
                println!(
                    "govbridge gateway listening on https://{}",
                    gateway.local_addr()?
                );
                if let Some(admin) = gateway.admin_addr() {
                    println!("admin endpoint on http://{admin}");
                }
                // SIGTERM: stop accepting, GOAWAY, let open calls finish
                // (gateway.drain_timeout), flush the exchange log, exit 0.
                let stop = async move {
                    tokio::select! {
                        () = termination_signal() => {}
                        () = async {
                            if stop_with_parent {
                                crate::bench::process::stdin_closed().await;
                            } else {
                                std::future::pending::<()>().await;
                            }
                        } => {}
                    }
                };
                gateway.serve(stop).await;
                println!("govbridge gateway stopped");
                Ok(())
            })
        }
        Command::Demo { dir, once } => {
            init_logging(log_format, None, "demo")?;
            runtime()?.block_on(crate::demo::run(dir.as_deref(), once))
        }
        Command::Sandbox {
            manifest,
            seed,
            stop_with_parent,
        } => {
            init_logging(log_format, None, "sandbox")?;
            runtime()?.block_on(crate::sandbox::manifest::run(
                &manifest,
                seed,
                stop_with_parent,
            ))
        }
        Command::Dev { dir, faults } => {
            init_logging(log_format, otlp_of(None)?.as_ref(), "dev")?;
            runtime()?.block_on(crate::dev::run(&dir, faults))
        }
        command => {
            init_logging(log_format, None, "")?;
            match command {
                Command::Agency { name, config } => run_agency(&name, &config),
                Command::Pki { command } => run_pki(command),
                Command::Policy { command } => run_policy(command),
                Command::Audit { command } => audit::run(command),
                Command::Consent(args) => consent::run(args),
                Command::CheckConfig { config } => check_config(&config),
                Command::Status { admin } => status::run(admin),
                Command::Bench { command } => bench::run(command),
                Command::Serve { .. }
                | Command::Dev { .. }
                | Command::Demo { .. }
                | Command::Sandbox { .. } => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

fn run_agency(name: &str, config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let agencies = config
        .agencies
        .as_ref()
        .with_context(|| format!("{}: no [agencies] section", config_path.display()))?;
    let agency: crate::agencies::Agency = name.parse()?;
    let server = agencies.agencies.get(agency.name()).with_context(|| {
        format!(
            "{}: agencies.servers.{}: missing key",
            config_path.display(),
            agency.name()
        )
    })?;
    let data = Arc::new(Dataset::generate(agencies.seed));
    runtime()?.block_on(async {
        let bound = BoundAgency::bind(
            agency,
            server.listen,
            &agencies.server_tls(server),
            config.gateway.identity.clone(),
            data,
            server.signing_key.as_ref(),
        )
        .await?;
        println!(
            "agency {} listening on https://{}",
            agency.name(),
            bound.local_addr()?
        );
        bound.serve(termination_signal()).await;
        Ok(())
    })
}

fn run_pki(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init { dir, force } => {
            if dir.join(pki::CA_CERT).exists() && !force {
                bail!(
                    "{}: a PKI exists already; pass --force to replace it",
                    dir.join(pki::CA_CERT).display()
                );
            }
            crate::dev::init_pki(&dir)?;
            println!("created the dev PKI in {}", dir.display());
        }
        PkiCommand::Issue {
            dir,
            member,
            out,
            days,
            force,
        } => {
            let member = MemberId::parse(&member).with_context(|| format!("--member {member}"))?;
            if out.is_empty() || out.contains('/') || out.starts_with('.') {
                bail!("--out {out}: a file stem, without directories");
            }
            let consent_key = crate::dev::CONSENT_KEY.trim_end_matches(".key");
            if ["ca", "crl", "gateway", "gateway-upstream", consent_key].contains(&out.as_str())
                || out.starts_with("agency-")
            {
                bail!("--out {out}: that name belongs to the PKI itself; choose another");
            }
            check_issue_target(&dir, &out, force)?;
            let ca = CertificateAuthority::load(&dir)?;
            let mut request = LeafRequest::member(&member);
            request.not_after = request.not_before + time::Duration::days(days);
            let (certificate, key) = ca.issue(&request)?.write(&dir, &out)?;
            println!(
                "issued {} for {member}\n  certificate {}\n  private key {}",
                out,
                certificate.display(),
                key.display()
            );
        }
        PkiCommand::Revoke { dir, cert } => {
            pki::revoke(&dir, &cert)?;
            println!(
                "revoked {}; the CRL is {}. Reload or restart the gateway to apply it.",
                cert.display(),
                dir.join(pki::CRL).display()
            );
        }
    }
    Ok(())
}

/// Whether `pki issue --out NAME` may write `NAME.pem` and `NAME.key`.
/// A key is replaced only with `--force`, and only when its certificate
/// of the same name is beside it: a pair `pki issue` made. A key alone (the
/// MyGov consent signing key, a key copied in by hand) is never replaced.
fn check_issue_target(dir: &Path, out: &str, force: bool) -> anyhow::Result<()> {
    let certificate = dir.join(format!("{out}.pem"));
    let key = dir.join(format!("{out}.key"));
    // `symlink_metadata`: a dangling link is a file in the way too.
    let exists = |path: &Path| path.symlink_metadata().is_ok();
    if exists(&key) && !exists(&certificate) {
        bail!(
            "{}: a key this command did not create (there is no {}); choose another --out",
            key.display(),
            certificate.display()
        );
    }
    if !force && let Some(existing) = [&certificate, &key].into_iter().find(|path| exists(path)) {
        bail!(
            "{}: exists already; pass --force to replace it",
            existing.display()
        );
    }
    Ok(())
}

fn run_policy(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { config } => {
            let (config, engine) = load_policies(&config)?;
            println!(
                "{}: {} policies valid against {}",
                config.policy.policies.display(),
                engine.policy_count(),
                config.policy.schema.display()
            );
            for member in config.members.keys() {
                println!("{member}");
                let permits = engine.permits(member, 365);
                if permits.is_empty() {
                    println!("  no permits: its calls are refused and its connections closed");
                }
                for permit in permits {
                    let name = |p: &String| {
                        if p.is_empty() {
                            "(no purpose)".to_owned()
                        } else {
                            p.clone()
                        }
                    };
                    let mut purposes: Vec<String> = permit.purposes.iter().map(name).collect();
                    purposes.extend(
                        permit
                            .purposes_with_consent
                            .iter()
                            .map(|p| format!("{} with consent", name(p))),
                    );
                    println!(
                        "  {} at {}  [{}]",
                        permit.method,
                        permit.provider,
                        purposes.join(", ")
                    );
                }
            }
        }
        PolicyCommand::Explain {
            config,
            client,
            method,
            purpose,
            provider,
            no_reason,
            no_user_id,
            consent,
            hour,
            certificate_days_left,
        } => {
            let (_, engine) = load_policies(&config)?;
            let client = MemberId::parse(&client).with_context(|| format!("--client {client}"))?;
            let providers = engine
                .methods()
                .get(&method)
                .with_context(|| format!("--method {method}: not a published method"))?;
            let provider = match provider {
                Some(provider) => {
                    MemberId::parse(&provider).with_context(|| format!("--provider {provider}"))?
                }
                None => providers
                    .first()
                    .cloned()
                    .with_context(|| format!("{method} has no provider"))?,
            };
            engine
                .precheck(&client, &method, &provider, purpose.as_deref())
                .map_err(anyhow::Error::msg)?;
            let decision = engine.authorize(&crate::policy::CallFacts {
                caller: &client,
                method: &method,
                provider: &provider,
                purpose: purpose.as_deref(),
                has_reason: !no_reason,
                has_user_id: !no_user_id,
                consent_verified: consent,
                hour,
                certificate_days_left,
            });
            println!(
                "{}: {client} calling {method} at {provider}{}",
                if decision.allowed { "ALLOW" } else { "DENY" },
                purpose.map(|p| format!(" for {p}")).unwrap_or_default()
            );
            if decision.policies.is_empty() {
                println!("  no policy permits it: denied by default");
            }
            for id in &decision.policies {
                match engine.source(id) {
                    Some(source) if source.line > 0 => {
                        println!(
                            "  decided by {id} ({}:{})",
                            source.file.display(),
                            source.line
                        );
                    }
                    Some(source) => println!("  decided by {id} ({})", source.file.display()),
                    None => println!("  decided by {id}"),
                }
            }
            for error in &decision.errors {
                println!("  could not evaluate: {error}");
            }
        }
        PolicyCommand::Test { config, cases } => {
            let (_, engine) = load_policies(&config)?;
            let text =
                std::fs::read_to_string(&cases).with_context(|| cases.display().to_string())?;
            let outcomes =
                crate::policy::cases::run(&engine, &cases, &text).map_err(anyhow::Error::msg)?;
            let failed = outcomes.iter().filter(|outcome| !outcome.passed).count();
            for outcome in &outcomes {
                println!(
                    "{} {}: {}",
                    if outcome.passed { "ok  " } else { "FAIL" },
                    outcome.name,
                    outcome.detail
                );
            }
            println!("{} passed, {failed} failed", outcomes.len() - failed);
            if failed > 0 {
                bail!("{failed} of {} cases failed", outcomes.len());
            }
        }
    }
    Ok(())
}

fn load_policies(path: &Path) -> anyhow::Result<(Config, crate::policy::PolicyEngine)> {
    let config = Config::load(path)?;
    let engine = crate::policy::PolicyEngine::load(&config)?;
    Ok((config, engine))
}

fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    Gateway::check(&config).with_context(|| path.display().to_string())?;
    if let Some(agencies) = &config.agencies {
        for agency in agencies.agencies.values() {
            agencies
                .server_tls(agency)
                .server_config()
                .with_context(|| {
                    format!(
                        "{}: agencies.servers.{}",
                        path.display(),
                        agency.agency.name()
                    )
                })?;
        }
    }
    println!(
        "{}: ok ({} members, {} providers, {} services)",
        path.display(),
        config.members.len(),
        config.providers.len(),
        config.services.len()
    );
    Ok(())
}
