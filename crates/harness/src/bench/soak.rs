//! `govbridge bench soak`: the gateway with everything on, driven at
//! saturation for a long time, watched as an operator would watch it.
//!
//! Every `every` (10 s by default) one line: calls per second and p99 of
//! the window, the exchange log's journal (its WAL) and store, the bytes
//! the gateway process wrote (`/proc/PID/io`), its RSS and open files.
//! The journal's size is also polled every 50 ms, so that a peak between
//! two lines is not missed. At the end, the gateway is killed (SIGKILL:
//! what it acknowledged must be on disk), `audit verify` runs over its
//! log, and a verdict compares the run with the guarantees (a failure
//! makes the command fail) and with the targets of docs/benchmarks.md
//! (reported, met or missed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::time::Instant;

use crate::bench::compare::{Bed, free_port};
use crate::bench::load::{self, LoadPlan, Pacing, Scenario, Windows};
use crate::bench::setup::GatewayProfile;
use gateway::exchange_log::note::Verifier;
use gateway::exchange_log::store::{DATABASE_FILE, VERIFIER_FILE};
use gateway::exchange_log::verify;

/// The journal's bound the soak holds the gateway to by default: the
/// issue's 64 MiB (the gateway itself restarts its WAL past 16 MiB).
pub const JOURNAL_BOUND: u64 = 64 << 20;

/// How often the journal's size is polled between two lines.
const JOURNAL_POLL: Duration = Duration::from_millis(50);

/// Commits slower than this count against the target.
const SLOW_COMMIT_SECONDS: f64 = 0.02;

/// Written bytes per record, at most this many times the bytes the store
/// keeps per record.
const WRITE_AMPLIFICATION_TARGET: f64 = 3.0;

/// RSS after the first minute may grow by this much (and 8 MiB) before
/// it counts as a trend.
const RSS_GROWTH_TOLERANCE: f64 = 0.10;

/// What `bench soak` runs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub dir: Option<PathBuf>,
    pub exe: PathBuf,
    pub duration: Duration,
    /// Time between two lines.
    pub every: Duration,
    pub callers: usize,
    pub connections: usize,
    /// The journal's bound, in bytes.
    pub journal_bound: u64,
}

/// One line of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub elapsed_s: f64,
    pub calls_per_s: f64,
    /// Calls of the window that did not end OK.
    pub errors: u64,
    pub p99_ms: f64,
    /// The journal now, and at its largest during the window.
    pub journal_bytes: u64,
    pub journal_peak_bytes: u64,
    /// The database file.
    pub store_bytes: u64,
    /// Records committed so far.
    pub records: u64,
    /// Bytes the gateway process wrote since it started.
    pub written_bytes: u64,
    pub rss_kib: u64,
    pub open_files: u64,
}

/// A line of the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// What is asked.
    pub target: String,
    /// What the run did.
    pub measured: String,
    pub met: bool,
    /// A guarantee fails the command; a performance target is reported.
    pub guarantee: bool,
}

/// What a soak saw.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub duration_s: f64,
    pub callers: usize,
    pub samples: Vec<Sample>,
    pub calls: u64,
    pub errors: u64,
    pub calls_per_s: f64,
    pub p99_ms: f64,
    pub records: u64,
    pub journal_peak_bytes: u64,
    /// Store growth (database and journal) per record.
    pub stored_bytes_per_record: f64,
    /// Bytes the gateway wrote per record.
    pub written_bytes_per_record: f64,
    pub commits: u64,
    pub slow_commits: u64,
    /// `audit verify` over the log once the gateway was killed.
    pub verify: String,
    pub checks: Vec<Check>,
}

impl SoakReport {
    /// Whether every guarantee held.
    pub fn guarantees_held(&self) -> bool {
        self.checks
            .iter()
            .all(|check| check.met || !check.guarantee)
    }
}

/// Runs a soak; `line` is called with each sample as it is taken.
pub async fn soak(
    options: &SoakOptions,
    mut line: impl FnMut(&Sample),
) -> anyhow::Result<SoakReport> {
    let bed = Bed::start(
        options.dir.as_deref(),
        options.connections,
        options.exe.clone(),
    )?;
    let profile = GatewayProfile::EverythingOn;
    let log_dir = bed.dir.exchange_log_dir(profile);
    // A fresh log: the verdict reads the growth of this run's store.
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)
            .with_context(|| format!("removing the last run's log in {}", log_dir.display()))?;
    }
    let admin = free_port().context("finding a port for the admin endpoint")?;
    let (gateway, target) = bed.gateway_with_admin(profile, options.connections, Some(admin))?;
    let pid = gateway.id();
    let files = LogFiles::new(&log_dir);

    let journal_peak = Arc::new(AtomicU64::new(0));
    let window_peak = Arc::new(AtomicU64::new(0));
    let poller = tokio::spawn(poll_journal(
        files.journal.clone(),
        journal_peak.clone(),
        window_peak.clone(),
    ));

    let windows = Windows::default();
    let plan = LoadPlan {
        scenario: Scenario::Unary1k,
        pacing: Pacing::Closed {
            callers: options.callers,
        },
        connections: options.connections,
        warmup: Duration::ZERO,
        duration: options.duration,
    };
    let started = Instant::now();
    let mut running = {
        let (target, members, windows) = (target.clone(), bed.members.clone(), windows.clone());
        tokio::spawn(async move {
            load::run_watched(&target, &members, &plan, false, Some(windows)).await
        })
    };
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval_at(started + options.every, options.every);
    let mut last = started;
    let outcome = loop {
        tokio::select! {
            finished = &mut running => break finished,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let window = windows.take();
        let metrics = scrape(admin).await.unwrap_or_default();
        let usage = crate::bench::process::ProcessUsage::read(pid).unwrap_or_default();
        let sample = Sample {
            elapsed_s: now.duration_since(started).as_secs_f64(),
            calls_per_s: window.calls as f64 / now.duration_since(last).as_secs_f64(),
            errors: window.errors,
            p99_ms: milliseconds(window.latency_us.value_at_quantile(0.99)),
            journal_bytes: files.journal_bytes(),
            journal_peak_bytes: window_peak.swap(0, Ordering::Relaxed),
            store_bytes: files.store_bytes(),
            records: metrics.records,
            written_bytes: written_bytes(pid).unwrap_or(0),
            rss_kib: usage.rss_kib,
            open_files: open_files(pid),
        };
        line(&sample);
        samples.push(sample);
        last = now;
    };
    let outcome = outcome.context("the load generator panicked")??;
    let metrics = scrape(admin)
        .await
        .context("reading the gateway's metrics at the end")?;
    let written = written_bytes(pid).context("reading the gateway's /proc/PID/io")?;
    // Killed, not stopped: what it acknowledged must already be on disk.
    drop(gateway);
    poller.abort();
    let journal_peak = journal_peak
        .load(Ordering::Relaxed)
        .max(files.journal_bytes());
    let stored = files.store_bytes() + files.journal_bytes();
    let verify = verify_log(&log_dir);

    let records = metrics.records.max(1) as f64;
    let latency = &outcome.latency_us;
    let mut report = SoakReport {
        duration_s: options.duration.as_secs_f64(),
        callers: options.callers,
        calls: outcome.calls(),
        errors: outcome.errors(),
        calls_per_s: outcome.calls() as f64 / options.duration.as_secs_f64(),
        p99_ms: if latency.is_empty() {
            0.0
        } else {
            milliseconds(latency.value_at_quantile(0.99))
        },
        records: metrics.records,
        journal_peak_bytes: journal_peak,
        stored_bytes_per_record: stored as f64 / records,
        written_bytes_per_record: written as f64 / records,
        commits: metrics.commits,
        slow_commits: metrics.commits - metrics.commits_within_slow,
        verify: match &verify {
            Ok(()) => "ok".to_owned(),
            Err(error) => format!("{error:#}"),
        },
        samples,
        checks: Vec::new(),
    };
    report.checks = checks(&report, options);
    Ok(report)
}

/// The verdict.
fn checks(report: &SoakReport, options: &SoakOptions) -> Vec<Check> {
    let mut checks = vec![
        Check {
            name: "journal",
            target: format!("at most {}", mib(options.journal_bound)),
            measured: format!("peak {}", mib(report.journal_peak_bytes)),
            met: report.journal_peak_bytes <= options.journal_bound,
            guarantee: true,
        },
        Check {
            name: "errors",
            target: "none".to_owned(),
            measured: format!("{} of {} calls", report.errors, report.calls),
            met: report.errors == 0 && report.calls > 0,
            guarantee: true,
        },
        Check {
            name: "audit verify",
            target: "passes after SIGKILL".to_owned(),
            measured: report.verify.clone(),
            met: report.verify == "ok",
            guarantee: true,
        },
        Check {
            name: "bytes written",
            target: format!(
                "at most {WRITE_AMPLIFICATION_TARGET}x the {:.0} B stored per record",
                report.stored_bytes_per_record
            ),
            measured: format!(
                "{:.0} B per record ({:.1}x)",
                report.written_bytes_per_record,
                report.written_bytes_per_record / report.stored_bytes_per_record.max(1.0)
            ),
            met: report.written_bytes_per_record
                <= WRITE_AMPLIFICATION_TARGET * report.stored_bytes_per_record,
            guarantee: false,
        },
        Check {
            name: "commits",
            target: format!("none above {:.0} ms", SLOW_COMMIT_SECONDS * 1e3),
            measured: format!("{} of {}", report.slow_commits, report.commits),
            met: report.slow_commits == 0,
            guarantee: false,
        },
    ];
    if let Some(rss) = rss_trend(&report.samples) {
        checks.push(rss);
    }
    checks
}

/// RSS flat after the first minute (after the first sixth of a shorter
/// run): its largest value since is within 10 % and 8 MiB of its value
/// then.
fn rss_trend(samples: &[Sample]) -> Option<Check> {
    let end = samples.last()?.elapsed_s;
    let settled = 60.0_f64.min(end / 6.0);
    let base = samples.iter().find(|sample| sample.elapsed_s >= settled)?;
    let peak = samples
        .iter()
        .filter(|sample| sample.elapsed_s >= base.elapsed_s)
        .map(|sample| sample.rss_kib)
        .max()?;
    let allowed = (base.rss_kib as f64 * (1.0 + RSS_GROWTH_TOLERANCE)) as u64 + 8 * 1024;
    Some(Check {
        name: "rss",
        target: format!(
            "flat after {settled:.0} s (within {:.0} % and 8 MiB)",
            RSS_GROWTH_TOLERANCE * 100.0
        ),
        measured: format!(
            "{:.0} MiB at {:.0} s, at most {:.0} MiB after",
            base.rss_kib as f64 / 1024.0,
            base.elapsed_s,
            peak as f64 / 1024.0
        ),
        met: peak <= allowed,
        guarantee: false,
    })
}

/// The header of the lines.
pub fn header() -> String {
    format!(
        "{:>7} {:>9} {:>7} {:>8} {:>10} {:>10} {:>10} {:>11} {:>10} {:>8} {:>6}",
        "time",
        "calls/s",
        "errors",
        "p99 ms",
        "journal",
        "peak",
        "store",
        "records",
        "written",
        "RSS",
        "files"
    )
}

/// One line.
pub fn row(sample: &Sample) -> String {
    format!(
        "{:>6.0}s {:>9.0} {:>7} {:>8.1} {:>10} {:>10} {:>10} {:>11} {:>10} {:>8} {:>6}",
        sample.elapsed_s,
        sample.calls_per_s,
        sample.errors,
        sample.p99_ms,
        mib(sample.journal_bytes),
        mib(sample.journal_peak_bytes),
        mib(sample.store_bytes),
        sample.records,
        mib(sample.written_bytes),
        format!("{:.0} MiB", sample.rss_kib as f64 / 1024.0),
        sample.open_files
    )
}

/// The summary and the verdict.
pub fn render(report: &SoakReport) -> String {
    let mut out = format!(
        "\n{} calls in {:.0} s ({:.0} calls/s, p99 {:.1} ms), {} records; \
         stored {:.0} B and written {:.0} B per record\n\nverdict:\n",
        report.calls,
        report.duration_s,
        report.calls_per_s,
        report.p99_ms,
        report.records,
        report.stored_bytes_per_record,
        report.written_bytes_per_record,
    );
    for check in &report.checks {
        let status = match (check.met, check.guarantee) {
            (true, _) => "ok",
            (false, true) => "FAILED",
            (false, false) => "missed",
        };
        out.push_str(&format!(
            "  {:<14} {:<7} {} (target: {})\n",
            check.name, status, check.measured, check.target
        ));
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn milliseconds(micros: u64) -> f64 {
    micros as f64 / 1e3
}

/// The exchange log's files.
struct LogFiles {
    store: PathBuf,
    journal: PathBuf,
}

impl LogFiles {
    fn new(dir: &Path) -> Self {
        Self {
            store: dir.join(DATABASE_FILE),
            journal: dir.join(format!("{DATABASE_FILE}-wal")),
        }
    }

    fn store_bytes(&self) -> u64 {
        file_size(&self.store)
    }

    fn journal_bytes(&self) -> u64 {
        file_size(&self.journal)
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |file| file.len())
}

/// Keeps `peak` and `window` at the largest journal size seen.
async fn poll_journal(journal: PathBuf, peak: Arc<AtomicU64>, window: Arc<AtomicU64>) {
    let mut ticker = tokio::time::interval(JOURNAL_POLL);
    loop {
        ticker.tick().await;
        let size = file_size(&journal);
        peak.fetch_max(size, Ordering::Relaxed);
        window.fetch_max(size, Ordering::Relaxed);
    }
}

/// `write_bytes` of `/proc/PID/io`: what the process caused to be written
/// to storage.
fn written_bytes(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("reading /proc/{pid}/io"))?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("/proc/{pid}/io has no write_bytes"))
}

fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count() as u64)
}

/// What the soak reads from the gateway's metrics.
#[derive(Debug, Default)]
struct Metrics {
    records: u64,
    commits: u64,
    /// Commits that took at most [`SLOW_COMMIT_SECONDS`].
    commits_within_slow: u64,
}

/// Reads the admin endpoint's `/metrics` (plain HTTP on loopback).
async fn scrape(admin: SocketAddr) -> anyhow::Result<Metrics> {
    let text = crate::bench::process::metrics_text(admin).await?;
    let value = |name: &str| crate::bench::process::sample(&text, name) as u64;
    let slow =
        format!("govbridge_exchange_log_commit_seconds_bucket{{le=\"{SLOW_COMMIT_SECONDS}\"}}");
    anyhow::ensure!(
        text.contains(&slow),
        "the gateway's metrics have no `{slow}` bucket"
    );
    Ok(Metrics {
        records: value("govbridge_exchange_log_records"),
        commits: value("govbridge_exchange_log_commit_seconds_count"),
        commits_within_slow: value(&slow),
    })
}

/// `audit verify` over the log in `dir`, with the key the gateway wrote.
fn verify_log(dir: &Path) -> anyhow::Result<()> {
    let verifier = Verifier::read(&dir.join(VERIFIER_FILE)).map_err(anyhow::Error::msg)?;
    let report = verify::verify_log(dir, &verifier)?;
    match report.problem {
        Some(problem) => anyhow::bail!("{problem}"),
        None => Ok(()),
    }
}
