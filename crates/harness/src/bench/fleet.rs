//! `govbridge bench fleet`: the fleet's PostgreSQL store against one node's
//! SQLite store, everything on, in one run.
//!
//! ```text
//!   load -> govbridge, SQLite log (child) ----------------> echo
//!   load -> govbridge node 1, log in PostgreSQL (child) --> echo
//!   load -> govbridge node 2, log in PostgreSQL (child) --> echo
//!                 (both nodes share a throwaway cluster)
//! ```
//!
//! Measured one after the other: each store alone (64 appenders in this
//! process, each waiting for its record to be durable, as calls do, with
//! no gateway around; the two stores in turns), then through the gateway:
//! each store's records per second at saturation (two per call: decision
//! and outcome, each durable before the call goes on), a two-node fleet's
//! calls per second against the SQLite node's, and each store's latency at
//! a fixed open-loop rate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::bench::compare::{Bed, TargetCheck};
use crate::bench::load::{self, LoadPlan, Pacing, Scenario, Target};
use crate::bench::process::ChildProcess;
use crate::bench::report::{self, RunSummary};
use crate::bench::setup::GatewayProfile;
use crate::pki;

/// The fleet's log name: one for both nodes.
const ORIGIN: &str = "govbridge/bench-fleet";

/// What `bench fleet` measures.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub dir: Option<PathBuf>,
    pub exe: PathBuf,
    pub duration: Duration,
    pub warmup: Duration,
    pub callers: usize,
    pub connections: usize,
    pub rate: u64,
    /// Each store alone, and nothing after.
    pub stores_only: bool,
    pub progress: bool,
}

/// Everything `bench fleet` measured: what `--json` prints.
#[derive(Debug, Serialize)]
pub struct FleetReport {
    /// Each store alone: records per second of `callers` appenders.
    pub stores: Vec<StoreRate>,
    pub runs: Vec<RunSummary>,
    pub targets: Vec<TargetCheck>,
}

/// A store's records per second, alone.
#[derive(Debug, Clone, Serialize)]
pub struct StoreRate {
    pub store: &'static str,
    pub appenders: usize,
    pub records: u64,
    pub records_per_s: f64,
    /// The writer's appends (commits) in its turns ...
    pub commits: u64,
    /// ... and the share of its turns it spent in them, waiting on the
    /// store: what is left is the time the records took to come to it.
    pub busy: f64,
}

/// Appends by `appenders` concurrent callers to `log` for `duration`,
/// each waiting for its record to be durable before the next, as a call
/// does; returns the records committed. Each caller writes what calls
/// do: a decision, then the same request's outcome, under request ids
/// of this `round`.
async fn drive_store(
    log: &gateway::exchange_log::ExchangeLog,
    round: u32,
    appenders: usize,
    duration: Duration,
) -> anyhow::Result<u64> {
    use gateway::exchange_log::{ExchangeRecord, Phase};
    let until = tokio::time::Instant::now() + duration;
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..appenders {
        let log = log.clone();
        callers.spawn(async move {
            let mut committed = 0u64;
            while tokio::time::Instant::now() < until {
                let call = committed / 2;
                let now = gateway::unix_time::micros(std::time::SystemTime::now());
                let outcome = committed % 2 == 1;
                let record = ExchangeRecord {
                    version: 1,
                    phase: if outcome {
                        Phase::Outcome
                    } else {
                        Phase::Decision
                    }
                    .into(),
                    request_id: format!("{round}-{caller:04}-{call:012}"),
                    caller: "SN/COM/CBAO/kyc".to_owned(),
                    provider: "SN/GOV/ANEC/civil-registry".to_owned(),
                    method: "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity".to_owned(),
                    purpose: "KYC".to_owned(),
                    subject: format!("1{:012}", caller * 1_000 + (call as usize % 1_000)),
                    allowed: true,
                    received_us: now,
                    completed_us: if outcome { now } else { 0 },
                    ..ExchangeRecord::default()
                };
                log.append(record)
                    .await
                    .map_err(|error| anyhow::anyhow!("{error}"))?;
                committed += 1;
            }
            anyhow::Ok(committed)
        });
    }
    let mut committed = 0;
    while let Some(done) = callers.join_next().await {
        committed += done??;
    }
    Ok(committed)
}

/// Turns each store takes in [`store_rates`].
const STORE_TURNS: u32 = 4;

/// Each store alone: a SQLite log in `dir` and a fleet's log in a
/// database of its own in `cluster`, both open, driven in turns
/// ([`STORE_TURNS`] each, the first of each pair going to each store in
/// turn), so that whatever else the shared machine does meanwhile weighs
/// on both alike. Taken one after the other, in one stretch each, their
/// ratio moved by a fifth from one run to the next.
///
/// What the fleet's store leaves to do after its turn, sealing the
/// lookups of the records appended since its sealer last looked, is done
/// before the next turn and counted in its time: it is the store's work,
/// and would otherwise fall in the next turn, SQLite's half the time.
async fn store_rates(
    dir: &Path,
    cluster: &crate::postgres::Cluster,
    appenders: usize,
    duration: Duration,
) -> anyhow::Result<Vec<StoreRate>> {
    use gateway::config::ExchangeLogConfig;
    use gateway::exchange_log::ExchangeLog;
    let config = ExchangeLogConfig::defaults(&dir.join("store-sqlite"), "bench-store");
    let sqlite = tokio::task::spawn_blocking(move || ExchangeLog::open(&config)).await??;
    let (postgres, database) = match open_fleet_store(dir, cluster).await {
        Ok(opened) => opened,
        Err(error) => {
            tokio::task::spawn_blocking(move || sqlite.close()).await?;
            return Err(error);
        }
    };

    let turn = duration / STORE_TURNS;
    let mut records = [0u64; 2];
    let mut taken = [Duration::ZERO; 2];
    let mut commits = [(0, Duration::ZERO); 2];
    let mut driven = Ok(());
    'turns: for round in 0..STORE_TURNS {
        let mut stores = [(&sqlite, 0), (&postgres, 1)];
        if round % 2 == 1 {
            stores.reverse();
        }
        for (log, store) in stores {
            let started = std::time::Instant::now();
            let before = log.commit_durations().total();
            let mut committed = drive_store(log, round, appenders, turn).await;
            let after = log.commit_durations().total();
            commits[store].0 += after.0 - before.0;
            commits[store].1 += after.1 - before.1;
            if store == 1
                && let Ok(count) = committed
            {
                committed = seal_what_is_left(&database).await.map(|()| count);
            }
            taken[store] += started.elapsed();
            match committed {
                Ok(committed) => records[store] += committed,
                Err(error) => {
                    driven = Err(error);
                    break 'turns;
                }
            }
        }
    }
    database.close();
    for log in [sqlite, postgres] {
        tokio::task::spawn_blocking(move || log.close()).await?;
    }
    driven?;
    let rate = |store, index: usize| StoreRate {
        store,
        appenders,
        records: records[index],
        records_per_s: records[index] as f64 / taken[index].as_secs_f64(),
        commits: commits[index].0,
        busy: commits[index].1.as_secs_f64() / taken[index].as_secs_f64(),
    };
    Ok(vec![rate("SQLite", 0), rate("PostgreSQL", 1)])
}

/// Seals what the fleet's log in `database` has left unsealed, as the
/// node's sealer does (the same function, in the same chunks, taking
/// turns with it), rather than waiting for its next look.
async fn seal_what_is_left(database: &gateway::database::Database) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (sealed, behind): (Option<i64>, i64) = database
            .run(|client| async move {
                let row = client
                    .query_one("SELECT sealed, behind FROM log_seal(16384)", &[])
                    .await?;
                Ok((row.get(0), row.get(1)))
            })
            .await?;
        if behind <= 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the fleet's log is still {behind} records from sealed after a minute"
        );
        // The node's sealer holds the seal: it is at work.
        if sealed.is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The fleet's log for [`store_rates`], in a database of its own in
/// `cluster`, and a connection of the bench's own to it.
async fn open_fleet_store(
    dir: &Path,
    cluster: &crate::postgres::Cluster,
) -> anyhow::Result<(
    gateway::exchange_log::ExchangeLog,
    std::sync::Arc<gateway::database::Database>,
)> {
    use gateway::config::{ExchangeLogConfig, StoreConfig};
    use gateway::exchange_log::{ExchangeLog, FleetStore};
    let database = "govbridge_store_bench";
    cluster.psql(
        crate::postgres::ROLE,
        &format!("CREATE DATABASE {database}"),
    )?;
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{database}",
        crate::postgres::ROLE,
        cluster.port()
    );
    let store = StoreConfig::parse(&url).map_err(anyhow::Error::msg)?;
    let connect = || gateway::database::Database::connect(&store);
    let fleet = FleetStore {
        writer: connect().await?,
        reader: connect().await?,
        node: "bench-store".to_owned(),
        runtime: tokio::runtime::Handle::current(),
    };
    let bench = connect().await?;
    // A seal's session, as the node's sealer sets its own.
    bench
        .run(|client| async move {
            client
                .batch_execute("SET synchronous_commit = off; SET work_mem = '64MB'")
                .await
        })
        .await?;
    let config = ExchangeLogConfig::defaults(&dir.join("store-postgres"), "bench-store");
    let log =
        tokio::task::spawn_blocking(move || ExchangeLog::open_fleet(&config, fleet)).await??;
    Ok((log, bench))
}

/// Starts a fleet node: the everything-on configuration with its log in
/// the database at `url`, under `node_id`, signing with the key in
/// `key_from` when given (the first node makes it).
fn start_node(
    bed: &Bed,
    members: usize,
    url: &str,
    number: usize,
    key_from: Option<&Path>,
) -> anyhow::Result<(ChildProcess, Target, PathBuf)> {
    let base = bed.dir.gateway_config(
        GatewayProfile::EverythingOn,
        bed.echo.address,
        members,
        None,
    )?;
    let text = std::fs::read_to_string(&base)?;
    let mut table: toml::Table = text.parse().context("the bench's gateway configuration")?;
    let name = format!("postgres-node-{number}");
    if let Some(gateway) = table.get_mut("gateway").and_then(toml::Value::as_table_mut) {
        gateway.insert("node_id".into(), name.clone().into());
    }
    let data = bed.dir.dir.join(format!("exchange-log-{name}"));
    if let Some(log) = table
        .get_mut("exchange_log")
        .and_then(toml::Value::as_table_mut)
    {
        log.insert("data_dir".into(), data.display().to_string().into());
        log.insert("origin".into(), ORIGIN.into());
    }
    let mut store = toml::Table::new();
    store.insert("url".into(), url.into());
    table.insert("store".into(), store.into());
    if let Some(key) = key_from {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data)?;
        let file = gateway::exchange_log::store::KEY_FILE;
        pki::write_file(&data.join(file), &std::fs::read(key.join(file))?, 0o600)?;
    }
    let config = bed.dir.dir.join(format!("gateway-{name}.toml"));
    pki::write_file(&config, table.to_string().as_bytes(), 0o644)?;
    let mut command = Command::new(bed.exe());
    command
        .args(["serve", "--stop-with-parent", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error");
    let process = ChildProcess::spawn(&name, command, crate::bench::compare::GATEWAY_READY)?;
    let target = Target {
        name,
        address: process.address,
        server_name: "localhost".to_owned(),
        pid: Some(process.id()),
    };
    Ok((process, target, data))
}

/// Runs the measurements one after the other.
pub async fn fleet(options: &FleetOptions) -> anyhow::Result<FleetReport> {
    let members = options.connections;
    let bed = Bed::start(options.dir.as_deref(), members, options.exe.clone())?;
    let tls = &bed.members;
    let postgres = bed.dir.dir.join("postgres");
    let cluster = tokio::task::spawn_blocking(move || crate::postgres::Cluster::start(&postgres))
        .await?
        .context("starting PostgreSQL")?;
    let url = cluster.url();
    if options.progress {
        eprintln!(
            "each store alone, {} appenders, {} s",
            options.callers,
            options.duration.as_secs_f64()
        );
    }
    let stores = store_rates(&bed.dir.dir, &cluster, options.callers, options.duration).await?;
    if options.stores_only {
        let targets = store_check(&stores);
        return Ok(FleetReport {
            stores,
            runs: Vec::new(),
            targets,
        });
    }
    let (_sqlite, sqlite) = bed.gateway(GatewayProfile::EverythingOn, members)?;
    let (_first, first, key) = start_node(&bed, members, &url, 1, None)?;
    let (_second, second, _) = start_node(&bed, members, &url, 2, Some(&key))?;

    let closed = LoadPlan {
        scenario: Scenario::Unary1k,
        pacing: Pacing::Closed {
            callers: options.callers,
        },
        connections: options.connections,
        warmup: options.warmup,
        duration: options.duration,
    };
    let open = LoadPlan {
        pacing: Pacing::Open { rate: options.rate },
        ..closed
    };
    let mut runs = Vec::new();
    for plan in [&closed, &open] {
        if options.progress {
            eprintln!("{}", report::title(plan));
        }
        for target in [&sqlite, &first] {
            let outcome = load::run(target, tls, plan, options.progress).await?;
            runs.push(RunSummary::new(target, plan, &outcome));
        }
    }
    // Both nodes at once, each with half the callers and connections.
    let half = LoadPlan {
        pacing: Pacing::Closed {
            callers: options.callers.div_ceil(2),
        },
        connections: options.connections.div_ceil(2),
        ..closed
    };
    if options.progress {
        eprintln!("two nodes at once, {}", report::title(&half));
    }
    let (one, two) = tokio::join!(
        load::run(&first, tls, &half, false),
        load::run(&second, tls, &half, false),
    );
    let (one, two) = (RunSummary::new(&first, &half, &one?), {
        RunSummary::new(&second, &half, &two?)
    });
    let mut targets = store_check(&stores);
    targets.extend(checks(&runs, &one, &two, options));
    runs.extend([one, two]);
    drop(cluster);
    Ok(FleetReport {
        stores,
        runs,
        targets,
    })
}

fn store_check(stores: &[StoreRate]) -> Vec<TargetCheck> {
    let (Some(sqlite), Some(postgres)) = (
        stores.iter().find(|rate| rate.store == "SQLite"),
        stores.iter().find(|rate| rate.store == "PostgreSQL"),
    ) else {
        return Vec::new();
    };
    let ratio = postgres.records_per_s / sqlite.records_per_s.max(f64::MIN_POSITIVE);
    vec![TargetCheck {
        name: format!(
            "records committed per second, each store alone, {} appenders",
            sqlite.appenders
        ),
        measured: format!(
            "PostgreSQL {:.0}/s vs SQLite {:.0}/s ({ratio:.2}x)",
            postgres.records_per_s, sqlite.records_per_s
        ),
        goal: ">= 1.0x".to_owned(),
        met: Some(ratio >= 1.0),
    }]
}

fn checks(
    runs: &[RunSummary],
    one: &RunSummary,
    two: &RunSummary,
    options: &FleetOptions,
) -> Vec<TargetCheck> {
    let find = |target: &str, open: bool| {
        runs.iter()
            .find(|run| run.target == target && matches!(run.pacing, Pacing::Open { .. }) == open)
    };
    let mut checks = Vec::new();
    let sqlite_name = GatewayProfile::EverythingOn.name();
    let (Some(sqlite), Some(postgres)) = (find(sqlite_name, false), find("postgres-node-1", false))
    else {
        return checks;
    };
    // Two records per unary call: its decision, then its outcome.
    let (sqlite_records, postgres_records) = (2.0 * sqlite.calls_per_s, 2.0 * postgres.calls_per_s);
    checks.push(TargetCheck {
        name: format!(
            "records committed per second through one gateway node, {} callers",
            options.callers
        ),
        measured: format!(
            "PostgreSQL {postgres_records:.0}/s vs SQLite {sqlite_records:.0}/s ({:.2}x)",
            postgres_records / sqlite_records.max(f64::MIN_POSITIVE)
        ),
        goal: ">= 1.0x".to_owned(),
        met: Some(postgres_records >= sqlite_records),
    });
    let fleet = one.calls_per_s + two.calls_per_s;
    let ratio = fleet / sqlite.calls_per_s.max(f64::MIN_POSITIVE);
    checks.push(TargetCheck {
        name: format!(
            "two PostgreSQL nodes vs one SQLite node, {} callers in all",
            options.callers
        ),
        measured: format!(
            "{fleet:.0} vs {:.0} calls/s ({ratio:.2}x)",
            sqlite.calls_per_s
        ),
        goal: ">= 0.7x".to_owned(),
        met: Some(ratio >= 0.7),
    });
    if let (Some(sqlite), Some(postgres)) = (find(sqlite_name, true), find("postgres-node-1", true))
    {
        let added = postgres.p99_us as i64 - sqlite.p99_us as i64;
        checks.push(TargetCheck {
            name: format!(
                "PostgreSQL store's added p99, {} calls/s open loop",
                options.rate
            ),
            measured: format!(
                "p99 {} us vs {} us ({added:+} us)",
                postgres.p99_us, sqlite.p99_us
            ),
            goal: "< +3000 us".to_owned(),
            met: Some(added < 3000),
        });
    }
    checks
}

/// The report as tables, then the targets.
pub fn render(report: &FleetReport) -> String {
    let mut out = String::new();
    out.push_str("each store alone, appenders waiting for their records to be durable\n");
    out.push_str(
        "store        appenders    records  records/s    commits  per commit  in commits\n",
    );
    for rate in &report.stores {
        out.push_str(&format!(
            "{:<12} {:>9} {:>10} {:>10.0} {:>10} {:>11.1} {:>10.0}%\n",
            rate.store,
            rate.appenders,
            rate.records,
            rate.records_per_s,
            rate.commits,
            rate.records as f64 / rate.commits.max(1) as f64,
            rate.busy * 100.0,
        ));
    }
    out.push('\n');
    if !report.runs.is_empty() {
        let runs: Vec<&RunSummary> = report.runs.iter().collect();
        out.push_str(&report::table("everything on, one run", &runs));
        out.push('\n');
    }
    out.push_str(&report::verdicts(&report.targets));
    out
}
