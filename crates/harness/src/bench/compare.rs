//! `govbridge bench run` and `govbridge bench compare`: the targets
//! started as child processes of this binary, one echo backend behind all
//! of them, and the load generator in this process.
//!
//! ```text
//! load generator (this process)
//!   -> direct ------------------------------------> echo (child)
//!   -> govbridge routing-only (child)  -----------> echo
//!   -> govbridge everything-on (child) -----------> echo
//!   -> nginx (child, with --nginx) ----------------> echo
//! ```
//!
//! Every target is measured one after the other, with the same
//! certificates, the same TLS settings and the same echo backend.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::ClientConfig;
use serde::Serialize;

use crate::bench::load::{self, LoadPlan, Pacing, Scenario, Target};
use crate::bench::process::{ChildProcess, ProcessUsage};
use crate::bench::report::{self, RunSummary};
use crate::bench::setup::{BenchDir, GatewayProfile, TemporaryDir};

/// What the echo backend prints once it listens.
pub const ECHO_READY: &str = "echo backend listening on https://";
/// What `govbridge serve` prints once it listens.
pub const GATEWAY_READY: &str = "listening on https://";

/// The echo backend and the material every target shares.
#[derive(Debug)]
pub struct Bed {
    /// Removes the directory last, after every child has stopped.
    _temporary: Option<TemporaryDir>,
    pub dir: BenchDir,
    /// The `govbridge` binary the children run.
    exe: PathBuf,
    pub echo: ChildProcess,
    /// One client configuration per load member.
    pub members: Vec<Arc<ClientConfig>>,
}

impl Bed {
    /// Sets up `dir` (a temporary directory when `None`), issues `members`
    /// member certificates and starts the echo backend.
    pub fn start(dir: Option<&Path>, members: usize, exe: PathBuf) -> anyhow::Result<Self> {
        let (temporary, path) = match dir {
            Some(dir) => (None, dir.to_owned()),
            None => {
                let temporary = TemporaryDir::new().context("making a temporary directory")?;
                let path = temporary.0.clone();
                (Some(temporary), path)
            }
        };
        let dir = BenchDir::create(&path)?;
        let members = dir.load_members(members)?;
        let mut command = Command::new(&exe);
        command
            .args(["bench", "echo", "--stop-with-parent", "--dir"])
            .arg(&dir.dir)
            .env("RUST_LOG", "error");
        let echo = ChildProcess::spawn("echo backend", command, ECHO_READY)?;
        Ok(Self {
            _temporary: temporary,
            dir,
            exe,
            echo,
            members,
        })
    }

    /// The `govbridge` binary the children run.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The echo backend itself, called directly.
    pub fn direct(&self) -> Target {
        Target {
            name: "direct".to_owned(),
            address: self.echo.address,
            server_name: "localhost".to_owned(),
            pid: Some(self.echo.id()),
        }
    }

    /// Starts a gateway in front of the echo backend with `members` load
    /// members registered.
    pub fn gateway(
        &self,
        profile: GatewayProfile,
        members: usize,
    ) -> anyhow::Result<(ChildProcess, Target)> {
        self.gateway_with_admin(profile, members, None)
    }

    /// [`Bed::gateway`], with its admin endpoint (metrics) at `admin`.
    pub fn gateway_with_admin(
        &self,
        profile: GatewayProfile,
        members: usize,
        admin: Option<SocketAddr>,
    ) -> anyhow::Result<(ChildProcess, Target)> {
        let config = self
            .dir
            .gateway_config(profile, self.echo.address, members, admin)?;
        let mut command = Command::new(&self.exe);
        command
            .args(["serve", "--stop-with-parent", "--config"])
            .arg(&config)
            .env("RUST_LOG", "error");
        let process = ChildProcess::spawn(profile.name(), command, GATEWAY_READY)?;
        let target = Target {
            name: profile.name().to_owned(),
            address: process.address,
            server_name: "localhost".to_owned(),
            pid: Some(process.id()),
        };
        Ok((process, target))
    }

    /// Renders `template` and starts nginx (`binary`) with it.
    pub fn nginx(&self, binary: &Path, template: &Path) -> anyhow::Result<(ChildProcess, Target)> {
        let text = std::fs::read_to_string(template)
            .with_context(|| format!("reading the nginx template {}", template.display()))?;
        let prefix = self.dir.dir.join("nginx");
        std::fs::create_dir_all(&prefix)?;
        let listen = free_port()?;
        let path = |name: &str| self.dir.pki(name).display().to_string();
        let rendered = [
            ("{{LISTEN}}", listen.to_string()),
            ("{{PREFIX}}", prefix.display().to_string()),
            ("{{SERVER_CERT}}", path("nginx.pem")),
            ("{{SERVER_KEY}}", path("nginx.key")),
            ("{{CLIENT_CA}}", path("ca.pem")),
            ("{{UPSTREAM}}", self.echo.address.to_string()),
            ("{{UPSTREAM_NAME}}", "localhost".to_owned()),
            ("{{UPSTREAM_CERT}}", path("nginx-upstream.pem")),
            ("{{UPSTREAM_KEY}}", path("nginx-upstream.key")),
            ("{{UPSTREAM_CA}}", path("ca.pem")),
        ]
        .iter()
        .fold(text, |text, (key, value)| text.replace(key, value));
        // Placeholders left outside comments are ones this bench does not
        // know: nginx would fail on them with a less helpful message.
        if let Some(line) = rendered
            .lines()
            .find(|line| !line.trim_start().starts_with('#') && line.contains("{{"))
        {
            anyhow::bail!(
                "{}: unknown placeholder in `{}`",
                template.display(),
                line.trim()
            );
        }
        let config = prefix.join("nginx.conf");
        std::fs::write(&config, rendered)?;
        let mut command = Command::new(binary);
        command
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&config)
            .args(["-g", "daemon off;"])
            .stderr(Stdio::inherit());
        let process = ChildProcess::spawn_listening("nginx", command, listen)?;
        let target = Target {
            name: "nginx".to_owned(),
            address: listen,
            server_name: "localhost".to_owned(),
            pid: Some(process.id()),
        };
        Ok((process, target))
    }
}

/// A port free a moment ago, for nginx, which cannot report the one it
/// got for port 0.
pub fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.local_addr()
}

/// What `bench compare` measures.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub dir: Option<PathBuf>,
    pub exe: PathBuf,
    pub nginx: Option<PathBuf>,
    pub nginx_template: PathBuf,
    pub duration: Duration,
    pub warmup: Duration,
    pub callers: usize,
    pub connections: usize,
    pub rate: u64,
    pub idle_connections: usize,
    /// More closed-loop scenarios, after the targets'.
    pub scenarios: Vec<Scenario>,
    pub progress: bool,
}

/// Everything `bench compare` measured: what `--json` prints.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub runs: Vec<RunSummary>,
    pub idle: Vec<IdleSummary>,
    pub targets: Vec<TargetCheck>,
    /// What "everything on" includes.
    pub everything_on: &'static str,
}

/// A gateway's memory with many idle connections open.
#[derive(Debug, Clone, Serialize)]
pub struct IdleSummary {
    pub target: String,
    pub connections: usize,
    pub failed_calls: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub rss_before_kib: u64,
}

/// One of the issue's targets, as measured.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub name: String,
    pub measured: String,
    pub goal: String,
    pub met: Option<bool>,
}

const EVERYTHING_ON: &str = "policy (dev rules: purpose, agent and reason required, plus a \
    permit for the echo service), exchange log with fsync; consent off (the echo service \
    names no data subject, so no policy asks for consent)";

/// Runs every target one after the other.
pub async fn compare(options: &CompareOptions) -> anyhow::Result<Comparison> {
    let members = options.connections.max(options.idle_connections);
    let bed = Bed::start(options.dir.as_deref(), members, options.exe.clone())?;
    let tls = &bed.members;
    let (_routing, routing) = bed.gateway(GatewayProfile::RoutingOnly, members)?;
    let (_full, full) = bed.gateway(GatewayProfile::EverythingOn, members)?;
    let nginx = match &options.nginx {
        Some(binary) => Some(bed.nginx(binary, &options.nginx_template)?),
        None => None,
    };
    let mut targets = vec![bed.direct(), routing.clone(), full.clone()];
    if let Some((_, target)) = &nginx {
        targets.push(target.clone());
    }

    let mut plans = vec![
        LoadPlan {
            scenario: Scenario::Unary1k,
            pacing: Pacing::Closed {
                callers: options.callers,
            },
            connections: options.connections,
            warmup: options.warmup,
            duration: options.duration,
        },
        LoadPlan {
            scenario: Scenario::Unary1k,
            pacing: Pacing::Open { rate: options.rate },
            connections: options.connections,
            warmup: options.warmup,
            duration: options.duration,
        },
    ];
    for scenario in &options.scenarios {
        plans.push(LoadPlan {
            scenario: *scenario,
            pacing: Pacing::Closed {
                callers: options.callers,
            },
            ..plans[0]
        });
    }

    let mut runs = Vec::new();
    for plan in &plans {
        let title = report::title(plan);
        if options.progress {
            eprintln!("{title}");
        }
        let mut these = Vec::new();
        for target in &targets {
            let outcome = load::run(target, tls, plan, options.progress).await?;
            these.push(RunSummary::new(target, plan, &outcome));
        }
        runs.extend(these);
    }

    // A fresh routing-only gateway, so that its memory is that of idle
    // connections, not of the load before.
    let mut idle = Vec::new();
    if options.idle_connections > 0 {
        let (fresh, mut target) = bed.gateway(GatewayProfile::RoutingOnly, members)?;
        target.name = "routing-only".to_owned();
        if options.progress {
            eprintln!(
                "{} idle mTLS connections to a fresh routing-only gateway",
                options.idle_connections
            );
        }
        idle.push(measure_idle(&target, tls, options.idle_connections).await?);
        drop(fresh);
    }
    let targets = checks(&runs, &idle, options);
    drop(nginx);
    Ok(Comparison {
        runs,
        idle,
        targets,
        everything_on: EVERYTHING_ON,
    })
}

async fn measure_idle(
    target: &Target,
    tls: &[Arc<ClientConfig>],
    count: usize,
) -> anyhow::Result<IdleSummary> {
    let pid = target.pid.context("no process to measure")?;
    let before = ProcessUsage::read(pid)?;
    let (connections, statuses) = load::idle_connections(target, tls, count).await?;
    let after = ProcessUsage::read(pid)?;
    let failed_calls = statuses
        .iter()
        .filter(|(code, _)| **code != "OK")
        .map(|(_, count)| count)
        .sum();
    drop(connections);
    Ok(IdleSummary {
        target: target.name.clone(),
        connections: count,
        failed_calls,
        rss_kib: after.rss_kib,
        peak_rss_kib: after.peak_rss_kib,
        rss_before_kib: before.rss_kib,
    })
}

fn find<'a>(
    runs: &'a [RunSummary],
    target: &str,
    open: bool,
    scenario: Scenario,
) -> Option<&'a RunSummary> {
    runs.iter().find(|run| {
        run.target == target
            && run.scenario == scenario
            && matches!(run.pacing, Pacing::Open { .. }) == open
    })
}

/// The issue's four targets, as measured.
fn checks(runs: &[RunSummary], idle: &[IdleSummary], options: &CompareOptions) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    let closed = |target| find(runs, target, false, Scenario::Unary1k);
    let open = |target| find(runs, target, true, Scenario::Unary1k);
    let callers = options.callers;
    if let (Some(routing), Some(nginx)) = (closed("routing-only"), closed("nginx")) {
        let ratio = routing.calls_per_s / nginx.calls_per_s.max(f64::MIN_POSITIVE);
        checks.push(TargetCheck {
            name: format!("routing-only vs nginx, {callers} callers, 1 KiB unary"),
            measured: format!(
                "{ratio:.2}x throughput, p99 {} us vs {} us",
                routing.p99_us, nginx.p99_us
            ),
            goal: ">= 1.0x, p99 no worse".to_owned(),
            met: Some(ratio >= 1.0 && routing.p99_us <= nginx.p99_us),
        });
    }
    if let (Some(full), Some(routing)) = (closed("everything-on"), closed("routing-only")) {
        let ratio = full.calls_per_s / routing.calls_per_s.max(f64::MIN_POSITIVE);
        checks.push(TargetCheck {
            name: format!("everything-on vs routing-only, {callers} callers, 1 KiB unary"),
            measured: format!("{ratio:.2}x throughput"),
            goal: ">= 0.7x".to_owned(),
            met: Some(ratio >= 0.7),
        });
    }
    if let (Some(routing), Some(direct)) = (open("routing-only"), open("direct")) {
        let p50 = routing.p50_us as i64 - direct.p50_us as i64;
        let p99 = routing.p99_us as i64 - direct.p99_us as i64;
        checks.push(TargetCheck {
            name: format!(
                "routing-only added latency over direct, {} calls/s open loop",
                options.rate
            ),
            measured: format!("p50 +{p50} us, p99 +{p99} us"),
            goal: "p50 < 150 us, p99 < 1000 us".to_owned(),
            met: Some(p50 < 150 && p99 < 1000),
        });
    }
    for idle in idle {
        let mib = idle.rss_kib as f64 / 1024.0;
        checks.push(TargetCheck {
            name: format!(
                "{} RSS with {} idle mTLS connections",
                idle.target, idle.connections
            ),
            measured: format!(
                "{mib:.1} MiB (peak {:.1} MiB, {:.1} MiB before){}",
                idle.peak_rss_kib as f64 / 1024.0,
                idle.rss_before_kib as f64 / 1024.0,
                if idle.failed_calls > 0 {
                    format!(", {} calls failed", idle.failed_calls)
                } else {
                    String::new()
                }
            ),
            goal: "< 50 MiB".to_owned(),
            met: Some(mib < 50.0 && idle.failed_calls == 0),
        });
    }
    checks
}

/// The comparison as tables: per measurement, then ratios, then targets.
/// The lines between which [`write_docs`] puts the tables.
const DOCS_START: &str = "<!-- bench:table:start -->";
const DOCS_END: &str = "<!-- bench:table:end -->";

/// Replaces what stands between the markers of `file` with `rendered`, as
/// a fenced block headed by the day and the command that measured it.
pub fn write_docs(file: &Path, rendered: &str, command: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let day = time::OffsetDateTime::now_utc().date();
    let table = format!(
        "Measured on {day} by `govbridge {command}`, on this machine, in one run:\n\n\
         ```text\n{}\n```",
        rendered.trim_end()
    );
    let text = between_markers(&text, &table)
        .with_context(|| format!("{}: no {DOCS_START} ... {DOCS_END} lines", file.display()))?;
    std::fs::write(file, text).with_context(|| format!("{}: cannot write", file.display()))
}

/// `text` with the lines between the markers replaced by `table`.
fn between_markers(text: &str, table: &str) -> Option<String> {
    let start = text.find(DOCS_START)? + DOCS_START.len();
    let end = start + text[start..].find(DOCS_END)?;
    Some(format!("{}\n{table}\n{}", &text[..start], &text[end..]))
}

pub fn render(comparison: &Comparison) -> String {
    let mut out = String::new();
    let mut seen: Vec<(Scenario, Pacing)> = Vec::new();
    for run in &comparison.runs {
        if !seen.contains(&(run.scenario, run.pacing)) {
            seen.push((run.scenario, run.pacing));
        }
    }
    for (scenario, pacing) in seen {
        let runs: Vec<&RunSummary> = comparison
            .runs
            .iter()
            .filter(|run| run.scenario == scenario && run.pacing == pacing)
            .collect();
        let Some(first) = runs.first() else { continue };
        let title = format!(
            "{pacing}, {}, {} connections, {:.0} s",
            scenario.describe(),
            first.connections,
            first.duration_s
        );
        out.push_str(&report::table(&title, &runs));
        out.push_str(&ratios(&runs));
        out.push('\n');
    }
    out.push_str(&format!("everything-on: {}\n\n", comparison.everything_on));
    out.push_str("targets (issue 8)\n");
    out.push_str(&report::verdicts(&comparison.targets));
    out
}

/// Throughput against nginx and routing-only, latency added over direct.
fn ratios(runs: &[&RunSummary]) -> String {
    let by_name = |name: &str| runs.iter().find(|run| run.target == name);
    let (nginx, routing, direct) = (by_name("nginx"), by_name("routing-only"), by_name("direct"));
    let mut out = format!(
        "{:<14} {:>9} {:>11} {:>14} {:>14}\n",
        "", "vs nginx", "vs routing", "+p50 vs direct", "+p99 vs direct"
    );
    for run in runs {
        let ratio = |base: Option<&&&RunSummary>| {
            base.filter(|base| base.calls_per_s > 0.0)
                .map_or("-".to_owned(), |base| {
                    format!("{:.2}x", run.calls_per_s / base.calls_per_s)
                })
        };
        let added = |pick: fn(&RunSummary) -> u64| {
            direct.map_or("-".to_owned(), |direct| {
                format!("{:+} us", pick(run) as i64 - pick(direct) as i64)
            })
        };
        out.push_str(&format!(
            "{:<14} {:>9} {:>11} {:>14} {:>14}\n",
            run.target,
            ratio(nginx.as_ref()),
            ratio(routing.as_ref()),
            added(|run| run.p50_us),
            added(|run| run.p99_us)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_goes_between_the_markers_and_nowhere_else() {
        let text = format!("# Benchmarks\n\n{DOCS_START}\nold\ntable\n{DOCS_END}\n\nAfter.\n");
        let replaced = between_markers(&text, "new").unwrap();
        assert_eq!(
            replaced,
            format!("# Benchmarks\n\n{DOCS_START}\nnew\n{DOCS_END}\n\nAfter.\n")
        );
        // Twice gives the same document.
        assert_eq!(between_markers(&replaced, "new").unwrap(), replaced);
        assert_eq!(between_markers("no markers", "new"), None);
    }
}
