//! Turning measurements into a table and JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bench::load::{LoadOutcome, LoadPlan, Pacing, Scenario, Target};
use crate::bench::process::ProcessUsage;

/// One measurement, summarised: what `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub target: String,
    pub scenario: Scenario,
    pub pacing: Pacing,
    pub connections: usize,
    pub duration_s: f64,
    pub calls: u64,
    pub errors: u64,
    pub statuses: BTreeMap<&'static str, u64>,
    /// Successful calls per second.
    pub calls_per_s: f64,
    /// Messages received per second (streams: many per call).
    pub messages_per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Open loop: sends that left more than 5 ms after their intended time
    /// (the generator fell behind; latencies still count from the intended
    /// time).
    pub late_sends: u64,
    pub pid: Option<u32>,
    /// The target process over the measured window (CPU) and its life
    /// (peak RSS).
    pub process: Option<ProcessUsage>,
}

impl RunSummary {
    pub fn new(target: &Target, plan: &LoadPlan, outcome: &LoadOutcome) -> Self {
        let seconds = outcome.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let latency = &outcome.latency_us;
        let ok = outcome.statuses.get("OK").copied().unwrap_or(0);
        let at = |quantile: f64| {
            if latency.is_empty() {
                0
            } else {
                latency.value_at_quantile(quantile)
            }
        };
        Self {
            target: target.name.clone(),
            scenario: plan.scenario,
            pacing: plan.pacing,
            connections: plan.connections,
            duration_s: seconds,
            calls: outcome.calls(),
            errors: outcome.errors(),
            statuses: outcome.statuses.clone(),
            calls_per_s: ok as f64 / seconds,
            messages_per_s: outcome.messages as f64 / seconds,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: latency.max(),
            late_sends: outcome.late_sends,
            pid: target.pid,
            process: outcome.usage,
        }
    }

    /// Whether any call ended with a status other than OK.
    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }

    /// The non-OK statuses, `CODE xN` each.
    pub fn error_summary(&self) -> String {
        self.statuses
            .iter()
            .filter(|(code, _)| **code != "OK")
            .map(|(code, count)| format!("{code} x{count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The header of [`row`].
pub fn header() -> String {
    format!(
        "{:<14} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9}",
        "target",
        "calls/s",
        "msgs/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "errors",
        "cpu s",
        "peak MiB"
    )
}

/// One line of the table.
pub fn row(run: &RunSummary) -> String {
    let (cpu, peak) = run
        .process
        .map_or(("-".to_owned(), "-".to_owned()), |usage| {
            (
                format!("{:.2}", usage.cpu_seconds),
                format!("{:.1}", usage.peak_rss_kib as f64 / 1024.0),
            )
        });
    format!(
        "{:<14} {:>10.0} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9}",
        run.target,
        run.calls_per_s,
        run.messages_per_s,
        run.p50_us,
        run.p90_us,
        run.p99_us,
        run.p999_us,
        run.max_us,
        run.errors,
        cpu,
        peak
    )
}

/// A titled table of runs, with a line per run that had errors.
pub fn table(title: &str, runs: &[&RunSummary]) -> String {
    let mut out = format!("{title}\n{}\n", header());
    for run in runs {
        out.push_str(&row(run));
        out.push('\n');
    }
    for run in runs {
        if run.has_errors() {
            out.push_str(&format!(
                "  WITH ERRORS: {}: {} of {} calls failed ({})\n",
                run.target,
                run.errors,
                run.calls,
                run.error_summary()
            ));
        }
        if run.late_sends > 0 {
            out.push_str(&format!(
                "  note: {}: {} sends left over 5 ms late (generator behind)\n",
                run.target, run.late_sends
            ));
        }
    }
    out
}

/// The title of a measurement.
pub fn title(plan: &LoadPlan) -> String {
    format!(
        "{}, {}, {} connections, {:.1} s (+{:.1} s warm-up)",
        plan.pacing,
        plan.scenario.describe(),
        plan.connections,
        plan.duration.as_secs_f64(),
        plan.warmup.as_secs_f64()
    )
}

/// Target checks, one line each: verdict, what, measured, goal.
pub fn verdicts(checks: &[crate::bench::compare::TargetCheck]) -> String {
    let mut out = String::new();
    for check in checks {
        let verdict = match check.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "-",
        };
        out.push_str(&format!(
            "  {verdict:<7} {}: {} (goal {})\n",
            check.name, check.measured, check.goal
        ));
    }
    out
}
