//! `govbridge sandbox --manifest FILE`: the [sandbox](super) for tests
//! written in any language.
//!
//! Starts the same sandbox as [`super::Sandbox::builder`] (dev policies,
//! every mock agency, a fresh PKI, ports the system picks), writes a JSON
//! manifest describing it, prints `sandbox ready: FILE` and serves until
//! SIGTERM, Ctrl-C, SIGHUP or, with `--stop-with-parent`, the end of its
//! standard input. The manifest is written whole or not at all (a
//! temporary file renamed into place), and removed, with the sandbox's
//! files, once the sandbox has stopped.
//!
//! Faults are asked per call with the `govbridge-fault` request header,
//! which the sandbox's agencies obey (see [`crate::agencies::fault`]).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{Roles, SERVER_NAME, Sandbox, SandboxError};
use crate::agencies::Agency;
use crate::agencies::fault::FAULT_HEADER;
use crate::dev::DEMO_MEMBERS;
use gateway::proxy::signals::stdin_closed;

/// Everything a test in another language needs to call the sandbox.
#[derive(Debug, Serialize)]
pub struct Manifest {
    /// The manifest's format; 1.
    pub version: u32,
    pub gateway: GatewayInfo,
    /// Per demo member id (`SN/COM/CBAO/kyc`...): its certificate and key.
    pub members: BTreeMap<String, Credentials>,
    /// Per mock agency (`civil-registry`, `tax`, ...): who publishes what.
    pub agencies: BTreeMap<&'static str, AgencyInfo>,
    /// Known people, companies and accounts by role.
    pub test_data: Roles,
    /// The seed of the synthetic dataset.
    pub seed: u64,
    pub faults: FaultInfo,
    /// The sandbox's directory (configuration, PKI, exchange log).
    pub dir: PathBuf,
    /// The exchange log's directory (`govbridge audit ... --data DIR`).
    pub exchange_log: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct GatewayInfo {
    /// `127.0.0.1:PORT`: mutual TLS, HTTP/2.
    pub address: String,
    /// The name the gateway's certificate is issued for; clients that
    /// connect by address must check this name (grpcio:
    /// `grpc.ssl_target_name_override`).
    pub server_name: &'static str,
    /// The CA certificate that signed every certificate of the sandbox.
    pub ca_certificate: PathBuf,
    /// `http://127.0.0.1:PORT`: `/metrics`, `/readyz`; `POST /reload`
    /// with the header `x-govbridge-admin`.
    pub admin: String,
}

#[derive(Debug, Serialize)]
pub struct Credentials {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct AgencyInfo {
    /// The provider's member id, for `bridge-target` and consents.
    pub provider: String,
    /// The gRPC service it publishes, `package.Service`.
    pub service: &'static str,
}

#[derive(Debug, Serialize)]
pub struct FaultInfo {
    /// The request header that makes the called agency fail.
    pub header: &'static str,
    /// What it takes, joined by `,`.
    pub values: [&'static str; 6],
}

impl Manifest {
    /// The manifest of `sandbox`.
    pub fn of(sandbox: &Sandbox) -> Result<Self, SandboxError> {
        let mut members = BTreeMap::new();
        for (_, id) in DEMO_MEMBERS {
            let (certificate, private_key) = sandbox.credentials(id)?;
            members.insert(
                id.to_owned(),
                Credentials {
                    certificate,
                    private_key,
                },
            );
        }
        let agencies = Agency::ALL
            .into_iter()
            .map(|agency| {
                let info = AgencyInfo {
                    provider: agency.member_id().to_string(),
                    service: agency.service_name(),
                };
                (agency.name(), info)
            })
            .collect();
        Ok(Self {
            version: 1,
            gateway: GatewayInfo {
                address: sandbox.gateway_addr().to_string(),
                server_name: SERVER_NAME,
                ca_certificate: sandbox.ca_certificate(),
                admin: format!("http://{}", sandbox.admin_addr()),
            },
            members,
            agencies,
            test_data: sandbox.roles().clone(),
            seed: sandbox.dataset().seed,
            faults: FaultInfo {
                header: FAULT_HEADER,
                values: [
                    "delay=DURATION (250ms, 2s)",
                    "status=CODE (UNAVAILABLE or 14)",
                    "message=TEXT (after status=)",
                    "reset",
                    "drop",
                    "garble",
                ],
            },
            dir: sandbox.dir().to_owned(),
            exchange_log: sandbox.exchange_log().log().map(|log| log.dir().to_owned()),
        })
    }
}

/// Runs `govbridge sandbox`: starts it, writes the manifest to
/// `manifest`, serves until stopped, then removes the manifest once the
/// sandbox has stopped. A stop asked for while it starts ends it there; a
/// second one while it drains ends it at once.
pub async fn run(manifest: &Path, seed: u64, stop_with_parent: bool) -> anyhow::Result<()> {
    // The manifest is replaced, then removed: never an operator's file
    // (`--manifest README.md`), only one a sandbox left behind.
    if let Some(theirs) = not_a_manifest(manifest) {
        anyhow::bail!(
            "{}: {theirs}; the manifest is written there and removed at the end: name a \
             new file",
            manifest.display()
        );
    }
    // Listening before anything is made: a signal during the start must
    // not leave the sandbox's keys behind.
    let mut stop = Stop::listen(stop_with_parent)?;
    let sandbox = tokio::select! {
        started = Sandbox::builder().seed(seed).start() => started?,
        reason = stop.next() => {
            say(&format!("stopped before the sandbox was ready: {reason}"));
            return Ok(());
        }
    };
    Manifest::of(&sandbox)?.write(manifest)?;
    // A harness may stop reading once it has the ready line: printing then
    // fails, which must not stop the sandbox.
    say(&format!(
        "sandbox ready: {}\n  gateway https://{} (certificate for {SERVER_NAME}), admin http://{}\nStop with Ctrl-C.",
        manifest.display(),
        sandbox.gateway_addr(),
        sandbox.admin_addr()
    ));

    let reason = stop.next().await;
    say(&format!(
        "stopping the sandbox ({reason}): open calls may finish; stop again to end at once"
    ));
    tokio::select! {
        () = sandbox.shutdown() => {}
        reason = stop.next() => say(&format!("stopped at once ({reason})")),
    }
    let _ = std::fs::remove_file(manifest);
    Ok(())
}

/// Why the file at `path` is not one a sandbox may replace and remove:
/// it exists and is not a sandbox's manifest (JSON of this format).
fn not_a_manifest(path: &Path) -> Option<String> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => return Some(format!("cannot be read ({error})")),
    };
    let manifest = serde_json::from_slice::<serde_json::Value>(&text).ok();
    let is_manifest = manifest.is_some_and(|value| {
        value["version"] == 1 && value["gateway"].is_object() && value["dir"].is_string()
    });
    (!is_manifest).then(|| "exists and is not a sandbox's manifest".to_owned())
}

impl Manifest {
    /// Writes the manifest to `path` atomically: a reader sees the whole
    /// manifest or no file. The temporary file has a random name and is
    /// created exclusively, so a link planted beside `path` (in `/tmp`, say)
    /// is never followed.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        crate::pki::write_file(path, &json, 0o644)
            .with_context(|| format!("writing the manifest {}", path.display()))
    }
}

/// What stops `govbridge sandbox`, `dev` and `demo`: SIGTERM, Ctrl-C,
/// SIGHUP (its terminal closed) and, with `--stop-with-parent`, the end
/// of standard input. Listened for from the start: a signal while they
/// start is taken, not the default action that would leave their keys and
/// database behind.
pub(crate) struct Stop {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    /// Resolves when standard input ends; `None` once it has, or when not
    /// watched.
    stdin: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Stop {
    pub(crate) fn listen(stop_with_parent: bool) -> anyhow::Result<Self> {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("listening for {name}"))
        };
        Ok(Self {
            terminate: listen(SignalKind::terminate(), "SIGTERM")?,
            interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
            hangup: listen(SignalKind::hangup(), "SIGHUP")?,
            stdin: stop_with_parent.then(stdin_closed),
        })
    }

    /// Waits for the next reason to stop, and names it.
    pub(crate) async fn next(&mut self) -> &'static str {
        let stdin = async {
            match self.stdin.as_mut() {
                Some(closed) => {
                    let _ = closed.await;
                }
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "Ctrl-C",
            _ = self.hangup.recv() => "SIGHUP",
            () = stdin => "standard input closed (--stop-with-parent)",
        };
        if reason.starts_with("standard input") {
            self.stdin = None;
        }
        reason
    }
}

/// Prints `text` and a newline to standard output, if anyone listens.
fn say(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}
