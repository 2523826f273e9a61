//! The benchmark's targets as child processes, and what they cost, read
//! from `/proc` (Linux only).
//!
//! A [`ChildProcess`] is stopped when dropped, so that a failed run leaves
//! nothing behind. Children of the `govbridge` binary also stop when their
//! standard input closes (`--stop-with-parent`), which covers a parent
//! killed without running its destructors.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

/// Clock ticks per second of `/proc/PID/stat` times: `USER_HZ`, 100 on
/// every Linux architecture that matters here.
const CLOCK_TICKS: f64 = 100.0;

/// How long a child may take to say where it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process, stopped on drop.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    /// Closed on drop: children of `govbridge` stop when it closes.
    _stdin: Option<ChildStdin>,
    /// Ask politely first (nginx's workers outlive a killed master).
    terminate_first: bool,
    pub address: SocketAddr,
}

impl ChildProcess {
    /// Starts `command` and waits until a line of its standard output
    /// contains `marker` followed by the address it listens on.
    pub fn spawn(name: &str, mut command: Command, marker: &str) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let mut process = Self {
            name: name.to_owned(),
            child,
            _stdin: stdin,
            terminate_first: false,
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let (lines, received) = std::sync::mpsc::channel();
        // Read to the end, also once nobody listens: a child writing to a
        // closed pipe would fail (Rust's println! panics on it).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        loop {
            let line = received
                .recv_timeout(READY_TIMEOUT)
                .with_context(|| format!("{name} never said where it listens"))?;
            if let Some(address) = address_after(&line, marker) {
                process.address = address;
                write_out();
                return Ok(process);
            }
        }
    }

    /// Starts `command` (nginx), which prints nothing: ready once `address`
    /// accepts TCP connections.
    pub fn spawn_listening(
        name: &str,
        mut command: Command,
        address: SocketAddr,
    ) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut process = Self {
            name: name.to_owned(),
            child,
            _stdin: None,
            terminate_first: true,
            address,
        };
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                write_out();
                return Ok(process);
            }
            if let Some(status) = process.child.try_wait()? {
                bail!("{name} exited before listening on {address}: {status}");
            }
            if std::time::Instant::now() > deadline {
                bail!("{name} did not listen on {address} within {READY_TIMEOUT:?}");
            }
            // Polling a port: nginx gives no other sign that it is ready.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.terminate_first {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            for _ in 0..100 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once(marker)?;
    let address: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    address.parse().ok()
}

/// What a process (and its direct children: nginx's workers) used.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessUsage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory now, in KiB.
    pub rss_kib: u64,
    /// Peak resident memory (VmHWM), in KiB: summed over the processes.
    pub peak_rss_kib: u64,
}

impl ProcessUsage {
    /// Reads `/proc` for `pid` and its direct children.
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let mut usage = one_process(pid)?;
        for child in children_of(pid) {
            if let Ok(more) = one_process(child) {
                usage.cpu_seconds += more.cpu_seconds;
                usage.rss_kib += more.rss_kib;
                usage.peak_rss_kib += more.peak_rss_kib;
            }
        }
        Ok(usage)
    }
}

fn one_process(pid: u32) -> anyhow::Result<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. utime and stime are fields 14 and 15 of the line.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: field {}", index + 3))
    };
    let cpu_seconds = (ticks(11)? + ticks(12)?) as f64 / CLOCK_TICKS;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcessUsage {
        cpu_seconds,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    })
}

/// Writes out what the machine has written but not yet put on disk: what
/// setting a target up wrote (PKI, configurations, descriptor sets, fresh
/// databases), and what the runs before wrote (a store's tables, which
/// PostgreSQL leaves to the kernel). Left to the kernel, it is written back
/// 30 s later (`vm.dirty_expire_centisecs`), in the middle of another
/// measurement, and the exchange logs' flushes queue behind it on the disk:
/// a tenth of a second in the federation bench, some 50 ms for the fleet's
/// node at 500 calls/s (docs/benchmarks.md).
pub fn write_out() {
    let _ = std::process::Command::new("sync").status();
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            std::fs::read_to_string(format!("/proc/{candidate}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A gateway's metrics, read from its admin endpoint (plain HTTP on
/// loopback).
pub async fn metrics_text(admin: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

/// The value of the sample `series` (name and labels, as exported) in
/// `metrics`; 0 when absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}
