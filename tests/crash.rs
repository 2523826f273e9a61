//! The exchange log survives a crash: the gateway, a separate process, is
//! killed with SIGKILL while concurrent calls run; after a restart the log
//! verifies and every call a client saw succeed has both its records.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use govbridge::exchange_log::{ExchangeRecord, Phase, Store};
use govbridge::proto::audit::v1::ListAccessesRequest;
use govbridge::proto::audit::v1::data_tracker_client::DataTrackerClient;
use govbridge::proto::civilregistry::v1::VerifyIdentityRequest;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use support::{Bed, H2Client};
use tokio::sync::Notify;

/// The citizens' portal: the Data Tracker's client.
const MYGOV: &str = "SN/GOV/MYGOV/app";

/// A gateway process, killed if the test fails half-way.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `govbridge serve` on `config`; returns the process and the
/// address it listens on, read from its log.
fn spawn_gateway(config: &Path) -> (Process, SocketAddr) {
    let child = Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Process(child);
    let (lines, received) = std::sync::mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    loop {
        let line = received
            .recv_timeout(Duration::from_secs(20))
            .expect("the gateway never said where it listens");
        if let Some((_, rest)) = line.split_once("listening on https://") {
            let address: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            return (child, address.parse().unwrap());
        }
    }
}

/// Sends `signal` and waits for the process to end.
fn kill(process: &mut Process, signal: &str) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    process.0.wait().unwrap()
}

/// Calls made until the gateway goes away.
struct Load {
    tls: Arc<rustls::ClientConfig>,
    message: VerifyIdentityRequest,
    succeeded: AtomicUsize,
    /// Told once `KILL_AFTER` calls succeeded.
    enough: Notify,
    /// Set just before the gateway is killed: a call failing earlier was
    /// refused.
    killed: AtomicBool,
}

/// Successful calls after which the gateway is killed.
const KILL_AFTER: usize = 300;

/// Calls VerifyIdentity with a known request id until the gateway goes
/// away; returns the ids of the calls that succeeded.
async fn caller(load: Arc<Load>, gateway: SocketAddr) -> Vec<String> {
    let mut ok = Vec::new();
    let Ok(channel) = H2Client::connect(gateway, load.tls.clone()).await else {
        return ok;
    };
    let mut registry = CivilRegistryClient::new(channel);
    loop {
        let id = uuid::Uuid::new_v4().to_string();
        let mut request = tonic::Request::new(load.message.clone());
        request
            .metadata_mut()
            .insert("bridge-request-id", id.parse().unwrap());
        // Every call succeeds until the kill (the bed allows everything);
        // then the connection breaks and the client is told nothing.
        if let Err(status) = registry.verify_identity(request).await {
            assert!(
                load.killed.load(Ordering::Acquire),
                "a call failed while the gateway served: {status:?}"
            );
            return ok;
        }
        ok.push(id);
        if load.succeeded.fetch_add(1, Ordering::Relaxed) + 1 == KILL_AFTER {
            load.enough.notify_one();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_call() {
    let bed = Bed::start().await;
    let (config, data) = crash_config(&bed);

    let (mut child, gateway) = spawn_gateway(&config);
    // Kill it mid-load, once a few hundred calls went through.
    let (load, callers) = load_until_enough(&bed, gateway).await;
    load.killed.store(true, Ordering::Release);
    kill(&mut child, "KILL");
    let mut acknowledged = Vec::new();
    for caller in callers {
        acknowledged.extend(caller.await.unwrap());
    }
    assert!(acknowledged.len() >= KILL_AFTER);

    // The log reopens (the frontier reloads from what was committed)...
    let (mut child, gateway) = spawn_gateway(&config);
    let after = caller_once(&bed, gateway).await;
    assert!(kill(&mut child, "TERM").success());

    // ...verifies from the first record to the last...
    let key = govbridge::exchange_log::note::Verifier::read(&data.join("log-key.pub")).unwrap();
    let report = govbridge::exchange_log::verify::verify_log(&data, &key).unwrap();
    assert!(report.is_ok(), "{report:?}");

    // ...and holds both records of every call a client saw succeed.
    let store = Store::open_read_only(&data).unwrap();
    for id in acknowledged.iter().chain([&after]) {
        let records: Vec<ExchangeRecord> = store
            .records_of_request(id)
            .unwrap()
            .iter()
            .map(|record| record.decode().unwrap())
            .collect();
        let phases: Vec<Phase> = records.iter().map(ExchangeRecord::phase).collect();
        assert_eq!(phases, [Phase::Decision, Phase::Outcome], "call {id}");
        assert_eq!(records[1].grpc_status, 0, "call {id}");
    }
}

/// The same, with an archive run while the calls go on: the oldest
/// segment (records of long ago, written before) leaves the hot store for
/// an archive file; no call is refused; after the kill and a restart the
/// log verifies with its archive, and every acknowledged call has its
/// records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_run_under_load_then_sigkill_loses_nothing() {
    use govbridge::exchange_log::lookup::SEGMENT;

    let bed = Bed::start().await;
    let (config, data) = crash_config(&bed);
    let archives = bed.dir().join("archives");

    // A segment of calls made long ago (1970), written as the gateway's
    // writer would, before the gateway first starts (and makes its key).
    let origin =
        govbridge::config::Config::parse(&config, &std::fs::read_to_string(&config).unwrap())
            .unwrap()
            .exchange_log
            .origin;
    std::fs::create_dir_all(&data).unwrap();
    {
        let mut store = Store::open(&data, &origin).unwrap();
        let mut frontier = store.frontier().unwrap();
        let old: Vec<ExchangeRecord> = (0..SEGMENT)
            .map(|n| ExchangeRecord {
                request_id: format!("old-{}", n / 2),
                phase: if n % 2 == 1 {
                    Phase::Outcome
                } else {
                    Phase::Decision
                }
                .into(),
                decision_index: if n % 2 == 1 { n - 1 } else { 0 },
                received_us: 1_000_000,
                completed_us: if n % 2 == 1 { 2_000_000 } else { 0 },
                ..ExchangeRecord::default()
            })
            .collect();
        for chunk in old.chunks(4096) {
            let chunk: Vec<&ExchangeRecord> = chunk.iter().collect();
            store.append(&mut frontier, &chunk, None).unwrap();
        }
    }

    let (mut child, gateway) = spawn_gateway(&config);
    let (load, callers) = load_until_enough(&bed, gateway).await;
    // Calls are checkpointed within 50 ms: the old segment then is too.
    let archived = tokio::task::spawn_blocking({
        let (data, archives) = (data.clone(), archives.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_govbridge"))
                .args(["audit", "archive", "--retain", "1d", "--data"])
                .arg(&data)
                .arg("--out")
                .arg(&archives)
                .arg("--key")
                .arg(data.join("log-key.pub"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        archived.status.success(),
        "{}",
        String::from_utf8_lossy(&archived.stderr)
    );
    assert!(
        String::from_utf8_lossy(&archived.stdout).contains(&format!("{SEGMENT} records archived")),
        "{}",
        String::from_utf8_lossy(&archived.stdout)
    );
    load.killed.store(true, Ordering::Release);
    kill(&mut child, "KILL");
    let mut acknowledged = Vec::new();
    for caller in callers {
        acknowledged.extend(caller.await.unwrap());
    }

    let (mut child, gateway) = spawn_gateway(&config);
    acknowledged.push(caller_once(&bed, gateway).await);
    // The Data Tracker says when an answer reaches into archived time
    // (the old calls ended 2 s after the epoch), and only then.
    let mut tracker = DataTrackerClient::new(
        H2Client::connect(gateway, bed.member_tls("mygov"))
            .await
            .unwrap(),
    );
    for (since_unix, archived_until_unix) in [(0, 2), (2, 2), (3, 0)] {
        let answer = tracker
            .list_accesses(ListAccessesRequest {
                subject: bed.data.citizens[0].nin.to_string(),
                since_unix,
                limit: 0,
                before_index: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.archived_until_unix, archived_until_unix,
            "since {since_unix}"
        );
        assert!(!answer.accesses.is_empty(), "since {since_unix}");
    }
    assert!(kill(&mut child, "TERM").success());
    // So does `audit query`.
    for (since, noted) in [(None, true), (Some("1970-01-01T00:00:03Z"), false)] {
        let mut args = vec!["audit", "query", "--limit", "1", "--data"];
        args.push(data.to_str().unwrap());
        args.extend(since.iter().flat_map(|since| ["--since", since]));
        let output = Command::new(env!("CARGO_BIN_EXE_govbridge"))
            .args(&args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            said.contains(&format!(
                "note: records up to 1970-01-01T00:00:02Z are archived (records before {SEGMENT})"
            )),
            noted,
            "since {since:?}: {said}"
        );
    }

    let key = govbridge::exchange_log::note::Verifier::read(&data.join("log-key.pub")).unwrap();
    let report =
        govbridge::exchange_log::verify::verify_with_archives(&data, Some(&archives), &key)
            .unwrap();
    assert!(report.is_ok(), "{report:?}");
    // As an auditor does it: archives and hot store verified together,
    // then an archived call proven by its request id and checked offline.
    let public = data.join("log-key.pub");
    let audit = |args: &[&std::ffi::OsStr]| {
        let output = Command::new(env!("CARGO_BIN_EXE_govbridge"))
            .arg("audit")
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let verified = audit(&[
        "verify".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--archives".as_ref(),
        archives.as_os_str(),
        "--key".as_ref(),
        public.as_os_str(),
    ]);
    assert!(verified.ends_with("ok\n"), "{verified}");
    let proof = bed.dir().join("old-5.json");
    audit(&[
        "prove".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--archives".as_ref(),
        archives.as_os_str(),
        "--request-id".as_ref(),
        "old-5".as_ref(),
        "--out".as_ref(),
        proof.as_os_str(),
    ]);
    let checked = audit(&[
        "check-proof".as_ref(),
        proof.as_os_str(),
        "--key".as_ref(),
        public.as_os_str(),
    ]);
    assert!(checked.contains("old-5"), "{checked}");
    // A call proven from the hot store alone: the archives may hold
    // another call under its request id (the callers choose them).
    let output = Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args([
            "audit",
            "prove",
            "--request-id",
            acknowledged[0].as_str(),
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains(&format!(
            "note: records before {SEGMENT} are archived and were not searched"
        )),
        "{said}"
    );
    let store = Store::open_read_only(&data).unwrap();
    assert_eq!(store.archived_end().unwrap(), SEGMENT);
    for id in &acknowledged {
        let phases: Vec<Phase> = store
            .records_of_request(id)
            .unwrap()
            .iter()
            .map(|record| record.decode().unwrap().phase())
            .collect();
        assert_eq!(phases, [Phase::Decision, Phase::Outcome], "call {id}");
    }
}

/// A second configuration next to the bed's, with its own log: the child
/// gateway uses the bed's agencies and certificates. Returns it and the
/// log's directory.
fn crash_config(bed: &Bed) -> (std::path::PathBuf, std::path::PathBuf) {
    let config = bed.dir().join("crash.toml");
    let text = std::fs::read_to_string(bed.dir().join("govbridge.toml")).unwrap();
    assert!(!text.contains("[exchange_log]"));
    std::fs::write(
        &config,
        format!(
            "{text}\n[exchange_log]\ndata_dir = \"crash-data\"\ncheckpoint_interval = \"50ms\"\n\
             data_tracker_clients = [\"{MYGOV}\"]\n"
        ),
    )
    .unwrap();
    (config, bed.dir().join("crash-data"))
}

/// VerifyIdentity of the bed's first citizen.
fn verify_identity(bed: &Bed) -> VerifyIdentityRequest {
    let citizen = &bed.data.citizens[0];
    VerifyIdentityRequest {
        nin: citizen.nin.to_string(),
        first_names: citizen.first_names.clone(),
        last_name: citizen.last_name.to_owned(),
        date_of_birth: citizen.date_of_birth.to_string(),
    }
}

/// Starts 16 callers on `gateway` and returns once `KILL_AFTER` of their
/// calls succeeded.
async fn load_until_enough(
    bed: &Bed,
    gateway: SocketAddr,
) -> (Arc<Load>, Vec<tokio::task::JoinHandle<Vec<String>>>) {
    let load = Arc::new(Load {
        tls: bed.member_tls("cbao-kyc"),
        message: verify_identity(bed),
        succeeded: AtomicUsize::new(0),
        enough: Notify::new(),
        killed: AtomicBool::new(false),
    });
    let callers = (0..16)
        .map(|_| tokio::spawn(caller(load.clone(), gateway)))
        .collect();
    tokio::time::timeout(Duration::from_secs(120), load.enough.notified())
        .await
        .expect("the calls do not get through");
    (load, callers)
}

/// One successful call; returns its request id.
async fn caller_once(bed: &Bed, gateway: SocketAddr) -> String {
    let channel = H2Client::connect(gateway, bed.member_tls("cbao-kyc"))
        .await
        .unwrap();
    let mut registry = CivilRegistryClient::new(channel);
    let id = uuid::Uuid::new_v4().to_string();
    let mut request = tonic::Request::new(verify_identity(bed));
    request
        .metadata_mut()
        .insert("bridge-request-id", id.parse().unwrap());
    registry.verify_identity(request).await.unwrap();
    id
}
