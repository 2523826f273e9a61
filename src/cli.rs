//! The command line: `serve`, `agency`, `pki`, `policy`, `audit`,
//! `consent`, `status`, `fleet`, `directory`, `backup`, `restore`, `bench`,
//! `check-config`, `dev` and `demo`.
//!
//! Parses arguments, sets up logging and calls into the library. Errors are
//! printed once, with their context chain, and give exit status 1.

mod audit;
mod backup;
#[cfg(feature = "harness")]
mod bench;
#[cfg(feature = "harness")]
mod consent;
mod directory;
mod fleet;
#[cfg(feature = "harness")]
mod harness;
mod progress;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use govbridge::config::{Config, OtlpConfig};
use govbridge::identity::MemberId;
use govbridge::proxy::Gateway;
use govbridge::proxy::signals::{stdin_closed, termination_signal};

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
    /// A short summary of a running gateway, read from its admin endpoint.
    Status {
        /// The admin endpoint, `gateway.admin` in its configuration.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
        admin: std::net::SocketAddr,
        /// Reach it over HTTPS (`gateway.admin_tls`), trusting the CA
        /// certificates in PEM for the gateway's certificate.
        #[arg(long, value_name = "PEM")]
        admin_ca: Option<PathBuf>,
        /// The name the gateway's certificate must carry, with
        /// --admin-ca (default: ADDR's IP address).
        #[arg(long, value_name = "NAME", requires = "admin_ca")]
        admin_name: Option<String>,
    },
    /// A fleet of nodes sharing a PostgreSQL database (`[store]`).
    Fleet {
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// The instance's directory: its configuration key, publishing the
    /// signed global configuration, serving it, comparing publications.
    Directory {
        #[command(subcommand)]
        command: directory::DirectoryCommand,
    },
    /// Back up what a gateway holds (its file, the log's key, store and
    /// archives, the consent ledger, the global configuration it runs)
    /// into a new directory, signed with the log's key; safe while the
    /// gateway runs.
    Backup {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Check a backup (signature, every file, the exchange log) and put it
    /// back where the gateway file FILE says (written from the backup if
    /// it does not exist); never overwrites.
    Restore {
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The log's public key you keep: the backup must be signed by it.
        #[arg(long, value_name = "KEY.pub")]
        key: PathBuf,
    },
    /// Print the OpenAPI 3.1 document of the JSON operations a member's
    /// policies may permit, as the gateway serves it at /openapi.json.
    Openapi {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The calling member, e.g. SN/COM/CBAO/kyc.
        #[arg(long, value_name = "ID")]
        member: String,
        /// Only this service's operations, e.g. govbridge.civilregistry.v1.CivilRegistry.
        #[arg(long)]
        service: Option<String>,
        /// The gateway's address, for the document's `servers`, e.g. https://gw.example.sn:8443.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
    /// Validate a configuration as a start would, then exit.
    CheckConfig {
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// The mock agencies and the setups built from them.
    #[cfg(feature = "harness")]
    #[command(flatten)]
    Harness(harness::HarnessCommand),
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

/// Entry point of the binary.
pub fn main() -> ExitCode {
    quiet_on_a_closed_pipe();
    let cli = Cli::parse();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(cli.command, cli.log_format)
    }));
    match ran {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
        // Unwound, what the command started stopped on the way (a
        // benchmark's processes): ended as SIGPIPE ends a Unix tool.
        Err(_) if CLOSED_PIPE.load(std::sync::atomic::Ordering::Relaxed) => ExitCode::from(141),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Set once printing to standard output failed for want of a reader.
static CLOSED_PIPE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A command whose output is piped into a reader that stops early
/// (`govbridge policy check | head -1`) ends there, quietly, as a Unix
/// tool killed by SIGPIPE would (status 141, once unwound: see [`main`]),
/// instead of reporting its `println!` failing as a panic. Any other
/// panic is reported as before.
fn quiet_on_a_closed_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            CLOSED_PIPE.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        report(info);
    }));
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

    // The demo tells its own story on stdout, and benchmarks print their
    // figures: only warnings by default (RUST_LOG says otherwise).
    let default = if matches!(instance, "demo" | "bench") {
        "warn"
    } else {
        "info"
    };
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
        .map(|otlp| govbridge::telemetry::otlp::layer(otlp, instance))
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

/// `seconds` for a reader: `42 s`, `5 min`, `3 h 20 min`, `12 days`.
fn span(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{} days", seconds / 86_400),
    }
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
            let runtime = runtime()?;
            // With [directory], the rest of the file needs the global
            // configuration: fetch it first; what happened is logged once
            // logging is set up from the configuration.
            let prepared = runtime.block_on(govbridge::proxy::global::prepare(&config));
            let path = config;
            let prepared =
                prepared.map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
            let config = Config::load(&path)?;
            init_logging(
                log_format,
                otlp_of(Some(&config))?.as_ref(),
                &config.gateway.node_id,
            )?;
            prepared.log();
            runtime.block_on(async {
                let gateway = Gateway::bind(&config).await?;
                gateway.reloader().reload_on_sighup();
                if let Some(directory) = &config.directory {
                    gateway.reloader().follow_directory(directory.clone());
                }
                gateway.reloader().follow_partners();
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
                                let _ = stdin_closed().await;
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
        #[cfg(feature = "harness")]
        Command::Harness(command) => harness::run(command, log_format),
        Command::Policy { command } => {
            init_logging(log_format, None, "")?;
            run_policy(command)
        }
        Command::Audit { command } => {
            init_logging(log_format, None, "")?;
            audit::run(command)
        }
        Command::CheckConfig { config } => {
            init_logging(log_format, None, "")?;
            check_config(&config)
        }
        Command::Openapi {
            config,
            member,
            service,
            server,
        } => {
            init_logging(log_format, None, "")?;
            openapi(&config, &member, service.as_deref(), server.as_deref())
        }
        Command::Fleet { command } => {
            init_logging(log_format, None, "")?;
            fleet::run(command)
        }
        Command::Backup { config, out } => {
            init_logging(log_format, None, "")?;
            backup::backup(&config, &out)
        }
        Command::Restore { from, config, key } => {
            init_logging(log_format, None, "")?;
            backup::restore(&from, &config, &key)
        }
        Command::Directory { command } => {
            init_logging(log_format, None, "")?;
            directory::run(command)
        }
        Command::Status {
            admin,
            admin_ca,
            admin_name,
        } => {
            init_logging(log_format, None, "")?;
            let endpoint =
                status::AdminEndpoint::new(admin, admin_ca.as_deref(), admin_name.as_deref())?;
            status::run(&endpoint)
        }
    }
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
            let decision = engine.authorize(&govbridge::policy::CallFacts {
                scope: govbridge::policy::CallScope {
                    caller: &client,
                    method: &method,
                    provider: &provider,
                    purpose: purpose.as_deref(),
                },
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
            let outcomes = govbridge::policy::cases::run(&engine, &cases, &text)
                .map_err(anyhow::Error::msg)?;
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

fn load_policies(path: &Path) -> anyhow::Result<(Config, govbridge::policy::PolicyEngine)> {
    let config = Config::load(path)?;
    let engine = govbridge::policy::PolicyEngine::load(&config)?;
    Ok((config, engine))
}

fn openapi(
    path: &Path,
    member: &str,
    service: Option<&str>,
    server: Option<&str>,
) -> anyhow::Result<()> {
    let (config, engine) = load_policies(path)?;
    let member = govbridge::identity::MemberId::parse(member)
        .with_context(|| format!("--member {member}"))?;
    if !config.members.contains_key(&member) {
        anyhow::bail!(
            "--member {member}: not a member of {} (its [members] table)",
            path.display()
        );
    }
    if let Some(service) = service
        && !config.catalog.declares(service)
    {
        anyhow::bail!(
            "--service {service}: {} registers no such service",
            path.display()
        );
    }
    // The gateway's own services depend on what runs (the log, the Data
    // Tracker's clients): the served document lists them, this one not.
    let local = std::collections::BTreeSet::new();
    let document = govbridge::directory::openapi(
        &engine,
        &config.catalog,
        &member,
        365,
        (service, &local),
        server,
    );
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}

fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let state = Gateway::check(&config).with_context(|| path.display().to_string())?;
    #[cfg(feature = "harness")]
    if let Some(agencies) = &govbridge::agencies::config::AgenciesConfig::load(path)? {
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
    if let Some(global) = &config.global {
        let expired = if global.expires <= govbridge::unix_time::now() {
            " (EXPIRED: the gateway forwards no call until the directory gives a newer one)"
        } else {
            ""
        };
        println!(
            "  global configuration: version {} of {}, from {}, expires {}{expired}",
            global.version,
            global.instance,
            global.dir.display(),
            govbridge::unix_time::rfc3339(global.expires)
        );
    }
    for line in partner_lines(&config, &state, govbridge::unix_time::now()) {
        println!("  {line}");
    }
    for refused in config.catalog.json_routes().refused() {
        println!(
            "  warning: a google.api.http route is not used (its method keeps its default JSON route): {refused}"
        );
    }
    Ok(())
}

/// What `check-config` says of each partner instance: where its
/// configuration comes from and, when no call would go to or come from it
/// now, why (the error its calls would get).
fn partner_lines(config: &Config, state: &govbridge::proxy::GatewayState, now: i64) -> Vec<String> {
    let federation = &config.federation;
    let mut lines = Vec::new();
    for instance in state.partner_instances() {
        let published = federation
            .partners
            .get(instance)
            .and_then(|partner| partner.published.as_ref());
        let source = match (federation.followed.get(instance), published) {
            (Some(followed), Some(version)) => format!(
                "followed from {}: version {} in {}, expires {}",
                followed.url,
                version.version,
                version.dir.display(),
                govbridge::unix_time::rfc3339(version.expires)
            ),
            (Some(followed), None) => format!(
                "followed from {}: no usable version in {}",
                followed.url,
                followed.cache.display()
            ),
            (None, _) => "configured in this file".to_owned(),
        };
        lines.push(format!("partner {instance}: {source}"));
        if let Some(refused) = state.partner_refused_at(instance, now) {
            lines.push(format!("  REFUSED ({}): {refused}", refused.kind()));
        }
    }
    lines
}
