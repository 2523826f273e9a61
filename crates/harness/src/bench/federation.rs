//! `govbridge bench federation`: what the second hop adds to a call.
//!
//! One run of `govbridge dev --federation` as a child process (both
//! instances, everything on: policies, both exchange logs), driven from
//! here as a partner would: the CBAO bank reads a company from its own
//! instance's business registry (member -> SN gateway -> registry), then
//! from Azerbaijan's company registry (member -> SN gateway -> AZ gateway
//! -> registry), in an open loop at the same rate, one after the other.
//! Both registries answer from memory, so the difference of their
//! latencies is the second hop: the partner gateway's TLS, policy,
//! assertion check and log record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use rustls::ClientConfig;
use tokio::time::Instant;
use tonic::Code;

use crate::agencies::Dataset;
use crate::agencies::config::AgenciesConfig;
use crate::bench::compare::GATEWAY_READY;
use crate::bench::load::{self, Target};
use crate::bench::process::ChildProcess;
use crate::bench::setup::TemporaryDir;
use gateway::identity::tls::ClientTls;
use gateway::proto::azbusiness::v1::GetCompanyRequest as AzGetCompanyRequest;
use gateway::proto::azbusiness::v1::company_registry_client::CompanyRegistryClient;
use gateway::proto::business::v1::GetCompanyRequest;
use gateway::proto::business::v1::business_registry_client::BusinessRegistryClient;

/// How the run goes.
#[derive(Debug, Clone)]
pub struct FederationOptions {
    pub dir: Option<PathBuf>,
    pub exe: PathBuf,
    /// Calls per second, each path.
    pub rate: u64,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub progress: bool,
    /// Senegal's gateway fetches and keeps Azerbaijan's receipts meanwhile.
    pub receipts: bool,
}

/// One path's figures.
#[derive(Debug, serde::Serialize)]
pub struct PathFigures {
    pub path: &'static str,
    pub calls: u64,
    pub errors: BTreeMap<String, u64>,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Calls that left more than 5 ms late: the generator fell behind.
    pub late_sends: u64,
}

/// One exchange log's durable commits while a path was measured: what
/// each call waits for twice (its decision before forwarding, its
/// outcome before answering).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Commits {
    pub commits: u64,
    pub mean_us: u64,
}

/// The run's figures.
#[derive(Debug, serde::Serialize)]
pub struct FederationReport {
    pub rate: u64,
    pub duration_s: f64,
    /// Whether Senegal's gateway fetched Azerbaijan's receipts meanwhile.
    pub receipts: bool,
    pub home: PathFigures,
    pub across: PathFigures,
    /// Senegal's log's commits during the one-instance run, then Senegal's
    /// and Azerbaijan's during the two-instance run.
    pub home_commits: Commits,
    pub across_home_commits: Commits,
    pub across_partner_commits: Commits,
    /// With receipts: what became of them by the end of the run.
    pub receipts_seen: Option<ReceiptsSeen>,
}

/// Senegal's gateway's receipts of its calls to Azerbaijan, counted at the
/// end of the run (each is asked for a second after its call).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ReceiptsSeen {
    pub kept: u64,
    pub refused: u64,
    pub dropped: u64,
    pub waiting: u64,
}

impl ReceiptsSeen {
    async fn of(admin: std::net::SocketAddr) -> anyhow::Result<Self> {
        let text = crate::bench::process::metrics_text(admin).await?;
        let count = |series: &str| {
            // A counter or gauge of whole receipts.
            let value = crate::bench::process::sample(&text, series);
            if value.is_finite() && value >= 0.0 {
                value as u64
            } else {
                0
            }
        };
        let of = |result: &str| {
            count(&format!(
                "govbridge_receipts_total{{partner=\"AZ\",result=\"{result}\"}}"
            ))
        };
        Ok(Self {
            kept: of("kept"),
            refused: of("refused"),
            dropped: of("dropped"),
            waiting: count("govbridge_receipts_pending"),
        })
    }
}

impl FederationReport {
    /// p50 and p99 the second hop adds, in microseconds.
    pub fn added(&self) -> (i64, i64) {
        let delta = |a: u64, b: u64| {
            i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(i64::MAX)
        };
        (
            delta(self.across.p50_us, self.home.p50_us),
            delta(self.across.p99_us, self.home.p99_us),
        )
    }

    /// Whether the targets hold: p50 under 300 us and p99 under
    /// 2 ms added, and no call failed.
    pub fn meets_targets(&self) -> bool {
        let (p50, p99) = self.added();
        p50 < 300 && p99 < 2000 && self.home.errors.is_empty() && self.across.errors.is_empty()
    }
}

/// Runs the measurement.
pub async fn federation(options: &FederationOptions) -> anyhow::Result<FederationReport> {
    let (_temporary, dir) = match &options.dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temporary = TemporaryDir::new().context("making a temporary directory")?;
            let path = temporary.0.clone();
            (Some(temporary), path)
        }
    };
    let mut command = Command::new(&options.exe);
    command
        .args(["dev", "--federation", "--dir"])
        .arg(&dir)
        .env("RUST_LOG", "error");
    if options.receipts {
        command.arg("--receipts");
    }
    // It writes the dev directory before it listens.
    let dev = ChildProcess::spawn("govbridge dev --federation", command, GATEWAY_READY)?;
    let seed = AgenciesConfig::load(&dir.join("govbridge.toml"))?
        .map(|agencies| agencies.seed)
        .context("the dev configuration has no [agencies]")?;
    let target = Target {
        name: "home gateway".to_owned(),
        address: dev.address,
        server_name: "localhost".to_owned(),
        pid: Some(dev.id()),
    };
    let tls = member_tls(&dir.join("pki"))?;
    let channels = load::connect(&target, &[tls], options.connections).await?;
    let home_company = Dataset::generate(seed).companies[0].ninea.to_string();
    // The partner's data is drawn from the next seed.
    let partner_company = crate::agencies::azerbaijan::Registry::generate(seed.wrapping_add(1))
        .companies()[0]
        .voen
        .to_string();

    let home = Path {
        name: "one instance (SN registry)",
        provider: "SN/GOV/APIX/business-registry",
        purpose: "KYC",
        company: Company::Ninea(home_company),
    };
    let across = Path {
        name: "two instances (AZ registry)",
        provider: crate::partner::PROVIDERS[0].0,
        purpose: crate::partner::PURPOSE,
        company: Company::Voen(partner_company),
    };
    // Both gateways' admin endpoints, from the files dev wrote.
    let admin_of = |file: PathBuf| -> anyhow::Result<std::net::SocketAddr> {
        gateway::config::Config::load(&file)?
            .gateway
            .admin
            .with_context(|| format!("{} has no admin endpoint", file.display()))
    };
    let admins = [
        admin_of(dir.join("federation.toml"))?,
        admin_of(dir.join("az").join("govbridge.toml"))?,
    ];
    let (home, [home_commits, _]) = measure(&channels, &Arc::new(home), options, admins).await?;
    let (across, [across_home_commits, across_partner_commits]) =
        measure(&channels, &Arc::new(across), options, admins).await?;
    let receipts_seen = if options.receipts {
        Some(ReceiptsSeen::of(admins[0]).await?)
    } else {
        None
    };
    drop(dev);
    Ok(FederationReport {
        receipts: options.receipts,
        rate: options.rate,
        duration_s: options.duration.as_secs_f64(),
        home,
        across,
        home_commits,
        across_home_commits,
        across_partner_commits,
        receipts_seen,
    })
}

/// The commit count and total time of the exchange log of the gateway
/// whose admin endpoint is `admin`.
async fn commit_totals(admin: std::net::SocketAddr) -> anyhow::Result<(f64, f64)> {
    let text = crate::bench::process::metrics_text(admin).await?;
    let sample = |name| crate::bench::process::sample(&text, name);
    Ok((
        sample("govbridge_exchange_log_commit_seconds_count"),
        sample("govbridge_exchange_log_commit_seconds_sum"),
    ))
}

/// The CBAO bank's client TLS in the dev PKI.
fn member_tls(pki: &std::path::Path) -> anyhow::Result<Arc<ClientConfig>> {
    Ok(ClientTls::new(
        pki.join(crate::pki::CA_CERT),
        pki.join("member-cbao-kyc.pem"),
        pki.join("member-cbao-kyc.key"),
    )
    .client_config()?)
}

/// What one path's calls send.
struct Path {
    name: &'static str,
    provider: &'static str,
    purpose: &'static str,
    company: Company,
}

/// The company asked for, in its registry's terms.
enum Company {
    /// Senegal's business registry.
    Ninea(String),
    /// Azerbaijan's company registry.
    Voen(String),
}

impl Path {
    /// One call of this path on `channel`.
    async fn call(&self, channel: gateway::net::client::Channel) -> Result<(), tonic::Status> {
        match &self.company {
            Company::Ninea(ninea) => {
                let request = self.declared(GetCompanyRequest {
                    ninea: ninea.clone(),
                });
                BusinessRegistryClient::new(channel)
                    .get_company(request)
                    .await
                    .map(drop)
            }
            Company::Voen(voen) => {
                let request = self.declared(AzGetCompanyRequest { voen: voen.clone() });
                CompanyRegistryClient::new(channel)
                    .get_company(request)
                    .await
                    .map(drop)
            }
        }
    }

    /// `message` with this path's headers.
    fn declared<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        for (name, value) in [
            ("bridge-target", self.provider),
            ("bridge-purpose", self.purpose),
            ("bridge-reason", "benchmark"),
            ("bridge-user-id", "bench"),
        ] {
            if let Ok(value) = value.parse() {
                metadata.insert(name, value);
            }
        }
        request
    }
}

/// Warms up, then measures `path` in an open loop at `options.rate`.
async fn measure(
    channels: &[gateway::net::client::Channel],
    path: &Arc<Path>,
    options: &FederationOptions,
    admins: [std::net::SocketAddr; 2],
) -> anyhow::Result<(PathFigures, [Commits; 2])> {
    if options.progress {
        eprintln!(
            "{}: {} calls/s, {:?} warm-up then {:?}",
            path.name, options.rate, options.warmup, options.duration
        );
    }
    // From a disk with nothing left to write, as every bench's runs.
    tokio::task::spawn_blocking(crate::bench::process::write_out).await?;
    let _ = open_loop(channels, path, options.rate, options.warmup).await?;
    let before = [
        commit_totals(admins[0]).await?,
        commit_totals(admins[1]).await?,
    ];
    let (latency, statuses, late) =
        open_loop(channels, path, options.rate, options.duration).await?;
    let mut commits = [Commits::default(); 2];
    for (index, admin) in admins.into_iter().enumerate() {
        let (count, seconds) = commit_totals(admin).await?;
        let (count, seconds) = (count - before[index].0, seconds - before[index].1);
        commits[index] = Commits {
            commits: count as u64,
            mean_us: if count > 0.0 {
                (seconds / count * 1e6) as u64
            } else {
                0
            },
        };
    }
    let quantile = |q: f64| latency.value_at_quantile(q);
    let calls = statuses.values().sum();
    let errors = statuses
        .into_iter()
        .filter(|(code, _)| *code != "OK")
        .map(|(code, count)| (code.to_owned(), count))
        .collect();
    Ok((
        PathFigures {
            path: path.name,
            calls,
            errors,
            p50_us: quantile(0.5),
            p90_us: quantile(0.9),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            late_sends: late,
        },
        commits,
    ))
}

type Outcome = (Histogram<u64>, BTreeMap<&'static str, u64>, u64);

/// Calls at fixed intended times, `rate` a second for `duration`; a
/// call's latency counts from its intended time (no coordinated
/// omission).
async fn open_loop(
    channels: &[gateway::net::client::Channel],
    path: &Arc<Path>,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_max(60_000_000, 3)?));
    let statuses: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let total = (duration.as_secs_f64() * rate as f64) as u64;
    let start = Instant::now();
    let mut late = 0;
    let mut calls = tokio::task::JoinSet::new();
    for index in 0..total {
        let intended = start + period.mul_f64(index as f64);
        tokio::time::sleep_until(intended).await;
        if intended.elapsed() > Duration::from_millis(5) {
            late += 1;
        }
        let channel = channels[index as usize % channels.len()].clone();
        let path = Arc::clone(path);
        let (latency, statuses) = (latency.clone(), statuses.clone());
        calls.spawn(async move {
            let code = match path.call(channel).await {
                Ok(()) => {
                    let micros = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX);
                    if let Ok(mut latency) = latency.lock() {
                        let _ = latency.record(micros.max(1));
                    }
                    Code::Ok
                }
                Err(status) => status.code(),
            };
            if let Ok(mut statuses) = statuses.lock() {
                *statuses.entry(load::code_name(code)).or_default() += 1;
            }
        });
    }
    while calls.join_next().await.is_some() {}
    let latency = std::mem::replace(
        &mut *latency.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
        Histogram::new(3)?,
    );
    let statuses = std::mem::take(&mut *statuses.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok((latency, statuses, late))
}

/// The report as a table.
pub fn render(report: &FederationReport) -> String {
    let mut text = format!(
        "govbridge bench federation: open loop, {} calls/s per path, {:.0} s each, \
         everything on (policies, both exchange logs){}\n\n",
        report.rate,
        report.duration_s,
        if report.receipts {
            ", Azerbaijan's receipts fetched and kept"
        } else {
            ""
        }
    );
    text.push_str(&format!(
        "{:<30} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>5}\n",
        "path", "calls", "errors", "p50 us", "p90 us", "p99 us", "p99.9 us", "late"
    ));
    for figures in [&report.home, &report.across] {
        text.push_str(&format!(
            "{:<30} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>5}\n",
            figures.path,
            figures.calls,
            figures.errors.values().sum::<u64>(),
            figures.p50_us,
            figures.p90_us,
            figures.p99_us,
            figures.p999_us,
            figures.late_sends
        ));
    }
    text.push_str(&format!(
        "\ndurable commits (each call waits for two in each log it crosses: its decision \
         before forwarding, its outcome before answering):\n\
         {:<30} {:>7} commits, mean {:>5} us\n\
         {:<30} {:>7} commits, mean {:>5} us\n\
         {:<30} {:>7} commits, mean {:>5} us\n",
        "one instance: SN's log",
        report.home_commits.commits,
        report.home_commits.mean_us,
        "two instances: SN's log",
        report.across_home_commits.commits,
        report.across_home_commits.mean_us,
        "two instances: AZ's log",
        report.across_partner_commits.commits,
        report.across_partner_commits.mean_us,
    ));
    if let Some(seen) = report.receipts_seen {
        text.push_str(&format!(
            "Azerbaijan's receipts at the end: {} kept, {} refused, {} dropped, {} waiting \
             (each asked for a second after its call)\n",
            seen.kept, seen.refused, seen.dropped, seen.waiting
        ));
    }
    text.push_str(&format!(
        "AZ's two commits per call alone: {} us of the second hop (the p50 target is 300 us)\n",
        2 * report.across_partner_commits.mean_us
    ));
    let (p50, p99) = report.added();
    text.push_str(&format!(
        "\nadded by the second hop: p50 {p50:+} us (target < 300), p99 {p99:+} us (target < 2000): {}\n",
        if report.meets_targets() { "met" } else { "NOT met" }
    ));
    for figures in [&report.home, &report.across] {
        if !figures.errors.is_empty() {
            text.push_str(&format!("{} failed: {:?}\n", figures.path, figures.errors));
        }
    }
    text
}
