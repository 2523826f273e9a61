//! `govbridge sandbox --manifest FILE`: the [sandbox](super) for tests
//! written in any language.
//!
//! Starts the same sandbox as [`super::Sandbox::builder`] (dev policies,
//! every mock agency, a fresh PKI, ports the system picks), writes a JSON
//! manifest describing it, prints `sandbox ready: FILE` and serves until
//! SIGTERM, Ctrl-C or, with `--stop-with-parent`, the end of its standard
//! input. The manifest is written whole or not at all (a temporary file
//! renamed into place), and removed on exit with the sandbox's files.
//!
//! Faults are asked per call with the `govbridge-fault` request header,
//! which the sandbox's agencies obey (see [`crate::agencies::fault`]).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use super::{Roles, SERVER_NAME, Sandbox};
use crate::agencies::Agency;
use crate::agencies::fault::FAULT_HEADER;
use crate::dev::DEMO_MEMBERS;

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
    /// `http://127.0.0.1:PORT`: `/metrics`, `/readyz`.
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
    pub values: [&'static str; 5],
}

impl Manifest {
    /// The manifest of `sandbox`.
    pub fn of(sandbox: &Sandbox) -> anyhow::Result<Self> {
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
                ],
            },
            dir: sandbox.dir().to_owned(),
            exchange_log: sandbox.exchange_log().log().map(|log| log.dir().to_owned()),
        })
    }

    /// Writes the manifest to `path` atomically: a reader sees the whole
    /// manifest or no file.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        let name = path
            .file_name()
            .with_context(|| format!("{}: not a file name", path.display()))?;
        let temporary = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
        let mut file = std::fs::File::create(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        file.write_all(&json)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
    }
}

/// Runs `govbridge sandbox`: starts it, writes the manifest to
/// `manifest`, serves until stopped, then removes the manifest.
pub async fn run(manifest: &Path, seed: u64, stop_with_parent: bool) -> anyhow::Result<()> {
    let sandbox = Sandbox::builder().seed(seed).start().await?;
    Manifest::of(&sandbox)?.write(manifest)?;
    // A harness may stop reading once it has the ready line: printing then
    // fails, which must not stop the sandbox.
    say(&format!(
        "sandbox ready: {}\n  gateway https://{} (certificate for {SERVER_NAME}), admin http://{}\nStop with Ctrl-C.",
        manifest.display(),
        sandbox.gateway_addr(),
        sandbox.admin_addr()
    ));

    let stdin_closed = async {
        if stop_with_parent {
            stdin_closed().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = crate::launch::termination_signal() => {}
        () = stdin_closed => {}
    }
    say("stopping the sandbox");
    let _ = std::fs::remove_file(manifest);
    sandbox.shutdown().await;
    Ok(())
}

/// Resolves when standard input reaches its end. The read runs on a
/// thread of its own, not the runtime's blocking pool, so that a sandbox
/// stopped by a signal does not wait for its input to close.
async fn stdin_closed() {
    let (closed, wait) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = closed.send(());
    });
    let _ = wait.await;
}

/// Prints `text` and a newline to standard output, if anyone listens.
fn say(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}
