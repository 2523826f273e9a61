//! The real `govbridge` binary as a separate process, in front of a bed's
//! backends: for tests that send it signals or measure its memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Bed;

/// A `govbridge serve` process, killed if the test fails half-way.
pub struct GatewayProcess {
    child: Child,
    pub address: SocketAddr,
    pub admin: SocketAddr,
    /// Its exchange log's directory.
    pub data: PathBuf,
    /// Its log's lines, when started with [`Self::spawn_config_logging`].
    log: Option<std::sync::mpsc::Receiver<String>>,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    /// Starts `govbridge serve` with the bed's configuration, its own
    /// exchange log (`name-data/`) and `gateway` lines added to
    /// `[gateway]`; returns once it says where it listens.
    pub fn spawn(bed: &Bed, name: &str, gateway: &[&str]) -> Self {
        Self::spawn_with(bed, name, gateway, "")
    }

    /// [`Self::spawn`], with `extra` (whole TOML sections) appended.
    pub fn spawn_with(bed: &Bed, name: &str, gateway: &[&str], extra: &str) -> Self {
        let config = Self::config(bed, name, gateway, extra);
        Self::spawn_config(bed, name, &config)
    }

    /// Writes the configuration [`Self::spawn_with`] runs: `name.toml`.
    pub fn config(bed: &Bed, name: &str, gateway: &[&str], extra: &str) -> PathBuf {
        let text = std::fs::read_to_string(bed.dir().join("govbridge.toml")).unwrap();
        assert!(!text.contains("[exchange_log]"));
        let lines: String = gateway.iter().map(|line| format!("{line}\n")).collect();
        // A line given replaces the file's line for the same key.
        let mut text = text;
        for line in gateway {
            if let Some((key, _)) = line.split_once(" = ") {
                let prefix = format!("\n{key} = ");
                if let Some(start) = text.find(&prefix) {
                    let end = text[start + 1..]
                        .find('\n')
                        .map_or(text.len(), |end| start + 1 + end);
                    text.replace_range(start..end, "");
                }
            }
        }
        let text = text.replacen("[gateway]\n", &format!("[gateway]\n{lines}"), 1);
        let config = bed.dir().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!("{text}\n[exchange_log]\ndata_dir = \"{name}-data\"\n{extra}"),
        )
        .unwrap();
        config
    }

    /// Starts `govbridge serve --config config`.
    pub fn spawn_config(bed: &Bed, name: &str, config: &std::path::Path) -> Self {
        // GOVBRIDGE_CHILD_LOG=<filter> shows the process's log, to debug.
        let log = std::env::var("GOVBRIDGE_CHILD_LOG").ok();
        let stderr = if log.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        Self::start(bed, name, config, log.as_deref().unwrap_or("warn"), stderr)
    }

    /// [`Self::spawn_config`], its log (`RUST_LOG=filter`) kept for
    /// [`Self::logged`].
    pub fn spawn_config_logging(
        bed: &Bed,
        name: &str,
        config: &std::path::Path,
        filter: &str,
    ) -> Self {
        let mut process = Self::start(bed, name, config, filter, Stdio::piped());
        process.log = Some(lines_of(process.child.stderr.take().unwrap()));
        process
    }

    /// The first line of its log from now on that contains `needle`, if
    /// one comes within `within`.
    pub fn logged(&self, needle: &str, within: Duration) -> Option<String> {
        let log = self.log.as_ref().expect("started without keeping its log");
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = log.recv_timeout(left).ok()?;
            if line.contains(needle) {
                return Some(line);
            }
        }
    }

    fn start(bed: &Bed, name: &str, config: &std::path::Path, filter: &str, stderr: Stdio) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_govbridge"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let received = lines_of(child.stdout.take().unwrap());
        let address_after = |line: &str, prefix: &str| -> Option<SocketAddr> {
            let (_, rest) = line.split_once(prefix)?;
            let address: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            address.parse().ok()
        };
        let (mut address, mut admin) = (None, None);
        while address.is_none() || admin.is_none() {
            let line = received
                .recv_timeout(Duration::from_secs(30))
                .expect("the gateway never said where it listens");
            address = address.or(address_after(&line, "listening on https://"));
            admin = admin.or(address_after(&line, "admin endpoint on http://"));
        }
        Self {
            child,
            address: address.unwrap(),
            admin: admin.unwrap(),
            data: bed.dir().join(format!("{name}-data")),
            log: None,
        }
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the gateway did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its resident set size, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// The lines `from` writes, as they come.
fn lines_of(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    received
}
