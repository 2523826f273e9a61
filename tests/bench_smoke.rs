//! CI's smoke run of `govbridge bench run`: the real binary starts the echo
//! backend and a gateway as its children, drives them for a moment, and
//! must report calls, no errors, and the gateway's CPU and memory; and of
//! `govbridge bench fleet --stores-only`, against a cluster of its own.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `govbridge bench run` process, killed if the test fails half-way
/// (its own children stop when it goes: their stdin closes).
struct BenchProcess(Child);

impl Drop for BenchProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `govbridge bench run ARGS`; returns (success, stdout, stderr).
fn bench_run(args: &[&str]) -> (bool, String, String) {
    bench(&["run"], args)
}

/// Runs `govbridge bench COMMAND --quiet ARGS`; returns (success, stdout,
/// stderr).
fn bench(command: &[&str], args: &[&str]) -> (bool, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .arg("bench")
        .args(command)
        .arg("--quiet")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut process = BenchProcess(child);
    let mut stdout = process.0.stdout.take().unwrap();
    let mut stderr = process.0.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "bench {command:?} did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

#[test]
fn a_two_second_closed_loop_through_the_gateway_has_no_errors() {
    let (ok, stdout, stderr) = bench_run(&[
        "--target",
        "routing-only",
        "--duration",
        "2s",
        "--warmup",
        "200ms",
        "--connections",
        "4",
        "--callers",
        "16",
    ]);
    assert!(ok, "bench run failed:\n{stdout}\n{stderr}");
    let mut lines = stdout.lines();
    assert!(lines.next().unwrap().starts_with("closed loop, 16 callers"));
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header[0], "target");
    assert!(header.contains(&"p99.9"), "{header:?}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "routing-only");
    let calls_per_s: f64 = row[1].parse().unwrap();
    assert!(calls_per_s > 10.0, "{stdout}");
    let (p50, p99, max): (u64, u64, u64) = (
        row[3].parse().unwrap(),
        row[5].parse().unwrap(),
        row[7].parse().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{stdout}");
    assert_eq!(row[8], "0", "errors: {stdout}");
    // CPU seconds and peak RSS of the gateway process.
    assert!(row[9].parse::<f64>().unwrap() > 0.0, "{stdout}");
    assert!(row[10].parse::<f64>().unwrap() > 1.0, "{stdout}");
    assert!(!stdout.contains("WITH ERRORS"), "{stdout}");
}

#[test]
fn an_open_loop_with_everything_on_counts_every_status_as_ok() {
    let (ok, stdout, stderr) = bench_run(&[
        "--target",
        "everything-on",
        "--scenario",
        "stream-1000",
        "--rate",
        "20",
        "--duration",
        "1s",
        "--warmup",
        "100ms",
        "--connections",
        "2",
        "--json",
    ]);
    assert!(ok, "bench run failed:\n{stdout}\n{stderr}");
    let run: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(run["target"], "everything-on");
    assert_eq!(run["errors"], 0, "{run}");
    let calls = run["calls"].as_u64().unwrap();
    assert!((15..=25).contains(&calls), "{run}");
    assert_eq!(run["statuses"]["OK"].as_u64(), Some(calls), "{run}");
    assert_eq!(
        run["messages_per_s"].as_f64(),
        Some(calls as f64 * 1000.0),
        "{run}"
    );
    assert!(
        run["process"]["peak_rss_kib"].as_u64().unwrap() > 1024,
        "{run}"
    );
}

/// Real PostgreSQL (the bench starts its own cluster, as `bench fleet`
/// does in full): both stores take records and report their commits, and
/// the bench stops after them.
#[test]
fn the_fleet_bench_can_measure_the_stores_alone() {
    let (ok, stdout, stderr) = bench(
        &["fleet"],
        &[
            "--stores-only",
            "--duration",
            "1s",
            "--callers",
            "8",
            "--json",
        ],
    );
    assert!(ok, "bench fleet failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let stores = report["stores"].as_array().unwrap();
    let names: Vec<&str> = stores
        .iter()
        .map(|s| s["store"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["SQLite", "PostgreSQL"], "{report}");
    for store in stores {
        assert_eq!(store["appenders"], 8, "{report}");
        let (records, commits) = (
            store["records"].as_u64().unwrap(),
            store["commits"].as_u64().unwrap(),
        );
        assert!(records > 0 && commits > 0 && commits <= records, "{report}");
        assert!(store["records_per_s"].as_f64().unwrap() > 0.0, "{report}");
    }
    assert_eq!(report["runs"].as_array().map(Vec::len), Some(0), "{report}");
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{report}");
    assert!(
        targets[0]["name"]
            .as_str()
            .unwrap()
            .starts_with("records committed per second, each store alone"),
        "{report}"
    );
}
