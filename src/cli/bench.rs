//! `govbridge bench`: `run` (one target, one scenario), `compare` (every
//! target, the scenarios) and `echo` (the backend they share, run
//! as a child process by the other two).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use govbridge::bench::compare::{self, Bed, CompareOptions, ECHO_READY};
use govbridge::bench::directory::{self, DirectoryOptions};
use govbridge::bench::echo::EchoBackend;
use govbridge::bench::fleet::{self, FleetOptions};
use govbridge::bench::load::{self, LoadPlan, Pacing, Scenario};
use govbridge::bench::report::{self, RunSummary};
use govbridge::bench::setup::{BenchDir, GatewayProfile};
use govbridge::bench::soak::{self, SoakOptions};
use govbridge::config::parse_duration;
use govbridge::proxy::signals::{stdin_closed, termination_signal};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure one target with one scenario: starts the echo backend and
    /// the target as child processes, then drives it.
    Run(RunArgs),
    /// Measure direct, govbridge routing-only, govbridge everything-on and
    /// (with --nginx) nginx, one after the other, and compare them.
    Compare(CompareArgs),
    /// Drive the gateway with everything on at saturation for a long time,
    /// printing every --every its calls/s, p99, exchange-log journal and
    /// store, bytes written, RSS and open files, then a verdict. Fails if
    /// the journal passes its bound, a call fails or `audit verify` fails.
    Soak(SoakArgs),
    /// Measure the fleet's PostgreSQL store against one node's SQLite
    /// store, everything on: records per second of each, a two-node fleet
    /// against one SQLite node, and the latency each adds at --rate. Starts
    /// a throwaway PostgreSQL cluster from the installed server binaries.
    Fleet(FleetArgs),
    /// Publish a large global configuration from a directory to gateways
    /// polling it, under load: how long each publication takes to reach
    /// every gateway, how long each takes to apply it, and whether any
    /// call failed meanwhile.
    Directory(DirectoryArgs),
    /// What the second hop adds: `govbridge dev --federation` driven in an
    /// open loop, a company read from this instance's registry, then from
    /// the partner instance's through its gateway; both latencies and
    /// their difference.
    Federation(FederationArgs),
    /// What JSON transcoding costs: the same method (1 KiB unary echo)
    /// through one gateway as gRPC and as JSON, closed loop then open loop
    /// at --rate, interleaved; the JSON/gRPC calls/s ratio and the p99 the
    /// transcoding adds.
    Json(JsonArgs),
    /// Serve the echo backend (used by `run` and `compare`).
    #[command(hide = true)]
    Echo {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Stop when standard input closes.
        #[arg(long)]
        stop_with_parent: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// The echo backend itself, over mTLS.
    Direct,
    /// govbridge with policy allow-all, consent and exchange log off.
    RoutingOnly,
    /// govbridge with the dev rules and the exchange log (fsync).
    EverythingOn,
    /// nginx (needs --nginx).
    Nginx,
}

/// Options shared by `run` and `compare`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Keep the PKI, configurations and logs here (default: a temporary
    /// directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// HTTP/2 connections, each with a member certificate of its own.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Concurrent callers of the closed loop.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Measured time of each run.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Unmeasured time before it.
    #[arg(long, default_value = "1s", value_parser = duration)]
    warmup: Duration,
    /// The nginx binary; nginx is measured only with it.
    #[arg(long, value_name = "PATH")]
    nginx: Option<PathBuf>,
    /// The nginx configuration template.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "benches/nginx/nginx.conf.template"
    )]
    nginx_template: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, value_enum, default_value_t = TargetKind::RoutingOnly)]
    target: TargetKind,
    #[arg(long, value_enum, default_value_t = Scenario::Unary1k)]
    scenario: Scenario,
    /// Open loop at this many calls per second (default: closed loop).
    #[arg(long)]
    rate: Option<u64>,
    /// Report the CPU time and memory of this process instead of the
    /// target's.
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The gateway measured.
    #[arg(long, value_enum, default_value_t = TargetKind::RoutingOnly)]
    target: TargetKind,
    /// Calls per second of the open loop.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Measure each way this many times, alternating (the machine's noise
    /// shows as the spread between rounds).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Calls per second of the open loop.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Idle mTLS connections opened to a fresh routing-only gateway to
    /// measure its memory (0: skip).
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// More closed-loop scenarios to measure on every target.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Also write the tables into FILE, between its
    /// `<!-- bench:table:start -->` and `<!-- bench:table:end -->` lines
    /// (docs/benchmarks.md).
    #[arg(long, value_name = "FILE")]
    docs: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Keep the PKI, configurations, logs and the exchange log here
    /// (default: a temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// How long to drive the gateway.
    #[arg(long, default_value = "10m", value_parser = duration)]
    duration: Duration,
    /// Time between two lines.
    #[arg(long, default_value = "10s", value_parser = duration)]
    every: Duration,
    /// Concurrent callers of the closed loop.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// HTTP/2 connections, each with a member certificate of its own.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// The journal's bound, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = soak::JOURNAL_BOUND >> 20)]
    journal_bound_mib: u64,
    /// Print JSON instead of lines and a verdict.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Keep the PKI, configurations, logs and the database here (default:
    /// a temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// HTTP/2 connections, each with a member certificate of its own.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Concurrent callers of the closed loop (split over the two nodes).
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Calls per second of the open loop.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Measured time of each run.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Unmeasured time before it.
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: Duration,
    /// Measure each store alone and stop there: no gateway is started.
    #[arg(long)]
    stores_only: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct DirectoryArgs {
    /// Keep the PKI, configurations, bundle and logs here (default: a
    /// temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Members in the global configuration.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Services (each with a provider of its own, among the members).
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Gateways polling the directory.
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    /// How often they poll.
    #[arg(long, default_value = "1s", value_parser = duration)]
    interval: Duration,
    /// Versions published, one every two intervals.
    #[arg(long, default_value_t = 5)]
    publications: u64,
    /// Calls per second sent to the first gateway meanwhile (open loop).
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// HTTP/2 connections of the load, each with a member certificate.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct FederationArgs {
    /// Keep the dev directories here (default: a temporary directory,
    /// removed afterwards). Its dev ports must be free (8443, 9443, ...).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Calls per second, each path (open loop).
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// HTTP/2 connections of the load.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value = "5s", value_parser = duration)]
    warmup: Duration,
    /// Measured, each path.
    #[arg(long, default_value = "20s", value_parser = duration)]
    duration: Duration,
    /// Senegal's gateway fetches and keeps Azerbaijan's receipt of each
    /// call meanwhile (`dev --federation --receipts`).
    #[arg(long)]
    receipts: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match command {
        BenchCommand::Echo {
            dir,
            listen,
            stop_with_parent,
        } => runtime.block_on(async {
            let tls = BenchDir::create(&dir)?.echo_tls();
            let backend = EchoBackend::bind(listen, &tls).await?;
            println!("{ECHO_READY}{}", backend.local_addr()?);
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
            backend.serve(stop).await;
            Ok(())
        }),
        BenchCommand::Run(args) => runtime.block_on(bench_run(args)),
        BenchCommand::Soak(args) => runtime.block_on(bench_soak(args)),
        BenchCommand::Fleet(args) => runtime.block_on(async {
            let options = FleetOptions {
                dir: args.dir,
                exe: std::env::current_exe().context("finding the govbridge binary")?,
                duration: args.duration,
                warmup: args.warmup,
                callers: args.callers,
                connections: args.connections,
                rate: args.rate,
                stores_only: args.stores_only,
                progress: !args.quiet,
            };
            let report = fleet::fleet(&options).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", fleet::render(&report));
            }
            let errors: u64 = report.runs.iter().map(|run| run.errors).sum();
            anyhow::ensure!(errors == 0, "{errors} calls failed: see WITH ERRORS above");
            Ok(())
        }),
        BenchCommand::Json(args) => runtime.block_on(bench_json(args)),
        BenchCommand::Federation(args) => runtime.block_on(async {
            let options = govbridge::bench::federation::FederationOptions {
                dir: args.dir,
                exe: std::env::current_exe().context("finding the govbridge binary")?,
                rate: args.rate,
                connections: args.connections,
                warmup: args.warmup,
                duration: args.duration,
                progress: !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                receipts: args.receipts,
            };
            let report = govbridge::bench::federation::federation(&options).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", govbridge::bench::federation::render(&report));
            }
            Ok(())
        }),
        BenchCommand::Directory(args) => runtime.block_on(async {
            anyhow::ensure!(
                args.services <= args.members,
                "--services {} is more than --members {}: each service's provider is a member",
                args.services,
                args.members
            );
            let options = DirectoryOptions {
                dir: args.dir,
                exe: std::env::current_exe().context("finding the govbridge binary")?,
                members: args.members,
                services: args.services,
                gateways: args.gateways.max(1),
                interval: args.interval,
                publications: args.publications.max(1),
                rate: args.rate,
                connections: args.connections,
                progress: !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let report = directory::directory(&options).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", directory::render(&report));
            }
            anyhow::ensure!(
                report.load.errors == 0,
                "{} calls failed while publications were applied",
                report.load.errors
            );
            Ok(())
        }),
        BenchCommand::Compare(args) => runtime.block_on(async {
            let common = &args.common;
            let options = CompareOptions {
                dir: common.dir.clone(),
                exe: std::env::current_exe().context("finding the govbridge binary")?,
                nginx: common.nginx.clone(),
                nginx_template: common.nginx_template.clone(),
                duration: common.duration,
                warmup: common.warmup,
                callers: common.callers,
                connections: common.connections,
                rate: args.rate,
                idle_connections: args.idle_connections,
                scenarios: args.scenarios.clone(),
                progress: !common.quiet,
            };
            let comparison = compare::compare(&options).await?;
            let rendered = compare::render(&comparison);
            if common.json {
                println!("{}", serde_json::to_string_pretty(&comparison)?);
            } else {
                print!("{rendered}");
            }
            if let Some(docs) = &args.docs {
                let command: Vec<String> = std::env::args().skip(1).collect();
                compare::write_docs(docs, &rendered, &command.join(" "))?;
                eprintln!("wrote the tables into {}", docs.display());
            }
            let errors: u64 = comparison.runs.iter().map(|run| run.errors).sum();
            anyhow::ensure!(errors == 0, "{errors} calls failed: see WITH ERRORS above");
            Ok(())
        }),
    }
}

async fn bench_soak(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.every.is_zero(),
        "--every: give a time between two lines above 0"
    );
    let options = SoakOptions {
        dir: args.dir,
        exe: std::env::current_exe().context("finding the govbridge binary")?,
        duration: args.duration,
        every: args.every,
        callers: args.callers,
        connections: args.connections,
        journal_bound: args.journal_bound_mib << 20,
    };
    if !args.json {
        println!(
            "soak: everything on, {} callers, {} s",
            options.callers,
            options.duration.as_secs_f64()
        );
        println!("{}", soak::header());
    }
    let json = args.json;
    let report = soak::soak(&options, |sample| {
        if !json {
            println!("{}", soak::row(sample));
        }
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", soak::render(&report));
    }
    anyhow::ensure!(
        report.guarantees_held(),
        "the soak broke a guarantee: see FAILED above"
    );
    Ok(())
}

/// Targets of issue 23: JSON calls/s at least this share of gRPC's, and
/// transcoding adds less than this to the open loop's p99.
const JSON_RATIO_GOAL: f64 = 0.7;
const JSON_ADDED_P99_GOAL_US: i64 = 200;

async fn bench_json(args: JsonArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let exe = std::env::current_exe().context("finding the govbridge binary")?;
    let bed = Bed::start(common.dir.as_deref(), common.connections, exe)?;
    let profile = match args.target {
        TargetKind::RoutingOnly => GatewayProfile::RoutingOnly,
        TargetKind::EverythingOn => GatewayProfile::EverythingOn,
        other => anyhow::bail!("--target {other:?}: JSON is transcoded by a gateway only"),
    };
    let (_gateway, target) = bed.gateway(profile, common.connections)?;
    let mut summaries: Vec<RunSummary> = Vec::new();
    let pacings = [
        Pacing::Closed {
            callers: common.callers,
        },
        Pacing::Open { rate: args.rate },
    ];
    for pacing in pacings {
        for _ in 0..args.rounds.max(1) {
            for scenario in [Scenario::Unary1k, Scenario::Json1k] {
                let plan = LoadPlan {
                    scenario,
                    pacing,
                    connections: common.connections,
                    warmup: common.warmup,
                    duration: common.duration,
                };
                if !common.quiet {
                    eprintln!("{}", report::title(&plan));
                }
                let outcome = load::run(&target, &bed.members, &plan, !common.quiet).await?;
                let mut summary = RunSummary::new(&target, &plan, &outcome);
                summary.target = format!("{} {}", target.name, scenario.name());
                summaries.push(summary);
            }
        }
    }
    let of = |scenario: Scenario, open: bool| -> Vec<&RunSummary> {
        summaries
            .iter()
            .filter(|s| s.scenario == scenario && matches!(s.pacing, Pacing::Open { .. }) == open)
            .collect()
    };
    let total = |runs: &[&RunSummary], field: fn(&RunSummary) -> f64| -> f64 {
        runs.iter().map(|run| field(run)).sum::<f64>() / runs.len().max(1) as f64
    };
    let grpc_closed = total(&of(Scenario::Unary1k, false), |s| s.calls_per_s);
    let json_closed = total(&of(Scenario::Json1k, false), |s| s.calls_per_s);
    let grpc_p99 = total(&of(Scenario::Unary1k, true), |s| s.p99_us as f64);
    let json_p99 = total(&of(Scenario::Json1k, true), |s| s.p99_us as f64);
    let ratio = json_closed / grpc_closed.max(f64::MIN_POSITIVE);
    let added = (json_p99 - grpc_p99) as i64;
    if common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "runs": summaries,
                "json_over_grpc_calls_per_s": ratio,
                "added_p99_us": added,
            }))?
        );
    } else {
        let rows: Vec<&RunSummary> = summaries.iter().collect();
        let title = format!(
            "1 KiB unary echo through govbridge {} as gRPC and as JSON ({} rounds)",
            target.name, args.rounds
        );
        print!("{}", report::table(&title, &rows));
        let verdict = |met: bool| if met { "MET" } else { "NOT MET" };
        println!(
            "  {} JSON calls/s over gRPC's, closed loop, {} callers: {ratio:.2}x ({json_closed:.0} vs {grpc_closed:.0}; goal >= {JSON_RATIO_GOAL}x)",
            verdict(ratio >= JSON_RATIO_GOAL),
            common.callers,
        );
        println!(
            "  {} p99 added by transcoding, open loop at {}/s: {added:+} us ({json_p99:.0} vs {grpc_p99:.0} us; goal < {JSON_ADDED_P99_GOAL_US} us)",
            verdict(added < JSON_ADDED_P99_GOAL_US),
            args.rate,
        );
    }
    let failed: u64 = summaries.iter().map(|s| s.errors).sum();
    anyhow::ensure!(failed == 0, "{failed} calls failed: see WITH ERRORS above");
    Ok(())
}

async fn bench_run(args: RunArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let exe = std::env::current_exe().context("finding the govbridge binary")?;
    let bed = Bed::start(common.dir.as_deref(), common.connections, exe)?;
    let started = match args.target {
        TargetKind::Direct => None,
        TargetKind::RoutingOnly => {
            Some(bed.gateway(GatewayProfile::RoutingOnly, common.connections)?)
        }
        TargetKind::EverythingOn => {
            Some(bed.gateway(GatewayProfile::EverythingOn, common.connections)?)
        }
        TargetKind::Nginx => {
            let binary = common
                .nginx
                .as_deref()
                .context("--target nginx needs --nginx PATH")?;
            Some(bed.nginx(binary, &common.nginx_template)?)
        }
    };
    let mut target = match &started {
        Some((_, target)) => target.clone(),
        None => bed.direct(),
    };
    if args.pid.is_some() {
        target.pid = args.pid;
    }
    let plan = LoadPlan {
        scenario: args.scenario,
        pacing: match args.rate {
            Some(rate) => Pacing::Open { rate },
            None => Pacing::Closed {
                callers: common.callers,
            },
        },
        connections: common.connections,
        warmup: common.warmup,
        duration: common.duration,
    };
    let title = report::title(&plan);
    if !common.quiet {
        eprintln!("{title}");
    }
    let outcome = load::run(&target, &bed.members, &plan, !common.quiet).await?;
    let summary = RunSummary::new(&target, &plan, &outcome);
    if common.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", report::table(&title, &[&summary]));
    }
    drop(started);
    anyhow::ensure!(
        !summary.has_errors(),
        "{} of {} calls failed ({})",
        summary.errors,
        summary.calls,
        summary.error_summary()
    );
    Ok(())
}
