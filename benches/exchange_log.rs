//! What the exchange log costs: the same gateway configuration with the
//! log on (fsync per group commit) and off, in one run, against the same
//! mock civil registry, with the dev policies.
//!
//! ```text
//! cargo bench --bench exchange_log            # ~30 s
//! cargo bench --bench exchange_log -- --quick # ~8 s
//! ```
//!
//! Closed loop: 64, then 512 callers over 8 connections, as fast as they
//! can, for calls per second: with 64, the log's two commit waits per call
//! bound the throughput; with 512, the machine's cores do. Open loop: 1,000 calls per second at fixed intended
//! send times, latency measured from the intended time (so a stall is not
//! hidden by callers waiting for it), for the latency the log adds.
//! Everything (client, gateway, agency) shares this machine's cores: read
//! the ratios, not the absolute figures.

// A benchmark that cannot set up has nothing to report: fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use govbridge::agencies::Dataset;
use govbridge::config::Config;
use govbridge::identity::tls::ClientTls;
use govbridge::launch::{BoundAgency, Shutdown};
use govbridge::net::client::Channel;
use govbridge::proto::civilregistry::v1::VerifyIdentityRequest;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proxy::Gateway;

/// Concurrent callers of the closed loops: as many as a busy partner
/// would run, then enough to keep the machine's cores busy.
const CALLERS: [usize; 2] = [64, 512];
const CONNECTIONS: usize = 8;
const RATE: u64 = 1000;

struct Target {
    name: &'static str,
    address: SocketAddr,
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let closed_for = Duration::from_secs(if quick { 2 } else { 6 });
    let open_for = Duration::from_secs(if quick { 2 } else { 6 });

    let dir = tempfile::tempdir().unwrap();
    let (targets, tls, message, _shutdown) = start(dir.path()).await;

    println!("exchange log on vs off: VerifyIdentity through the gateway, dev policies");
    println!();
    for callers in CALLERS {
        println!(
            "closed loop, {callers} callers over {CONNECTIONS} connections, {closed_for:?} each"
        );
        let mut throughput = Vec::new();
        for target in &targets {
            // Warm up connections, pools and caches.
            let warm_up = Duration::from_millis(300);
            closed_loop(target.address, &tls, &message, callers, warm_up).await;
            let (calls, errors) =
                closed_loop(target.address, &tls, &message, callers, closed_for).await;
            let rate = calls as f64 / closed_for.as_secs_f64();
            println!(
                "  {:<12} {rate:>9.0} calls/s  ({errors} errors)",
                target.name
            );
            throughput.push(rate);
        }
        println!(
            "  log on / log off throughput: {:.2}x (target >= 0.80x)",
            throughput[1] / throughput[0]
        );
        println!();
    }
    println!("open loop, {RATE} calls/s for {open_for:?}, latency from the intended send time");
    let mut p99 = Vec::new();
    for target in &targets {
        let (mut latencies, errors) = open_loop(target.address, &tls, &message, open_for).await;
        latencies.sort_unstable();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "  {:<12} p50 {:>8.0} us  p90 {:>8.0} us  p99 {:>8.0} us  max {:>8.0} us  ({} calls, {errors} errors)",
            target.name,
            micros(at(0.50)),
            micros(at(0.90)),
            micros(at(0.99)),
            micros(*latencies.last().unwrap()),
            latencies.len(),
        );
        p99.push(at(0.99));
    }
    println!(
        "  p99 added by the log: {:.0} us (target < 2000 us)",
        micros(p99[1]) - micros(p99[0])
    );
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Starts the civil registry and two gateways (log off, log on) on
/// ephemeral ports.
async fn start(
    dir: &Path,
) -> (
    Vec<Target>,
    Arc<rustls::ClientConfig>,
    VerifyIdentityRequest,
    govbridge::launch::ShutdownTrigger,
) {
    let template = govbridge::dev::prepare(dir).unwrap();
    let config = Config::load(&template).unwrap();
    let agencies = govbridge::agencies::config::AgenciesConfig::load(&template)
        .unwrap()
        .unwrap();
    let agencies = &agencies;
    let data = Arc::new(Dataset::generate(agencies.seed));
    let (trigger, shutdown) = Shutdown::new();

    // Agencies on ephemeral ports; the configuration is rewritten to match.
    let mut text = std::fs::read_to_string(&template).unwrap();
    if let Some(start) = text.find("\n[exchange_log]") {
        let end = text[start + 1..]
            .find("\n[")
            .map_or(text.len(), |end| start + 1 + end);
        text.replace_range(start..end, "");
    }
    for agency in agencies.agencies.values() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bound = BoundAgency::bind(
            agency.agency,
            loopback,
            &agencies.server_tls(agency),
            config.gateway.identity.clone(),
            data.clone(),
            agency.signing_key.as_ref(),
        )
        .await
        .unwrap();
        let address = bound.local_addr().unwrap();
        text = text.replace(&agency.listen.to_string(), &address.to_string());
        tokio::spawn(bound.serve(shutdown.clone().wait()));
    }
    text = text.replace(&config.gateway.listen.to_string(), "127.0.0.1:0");
    if let Some(admin) = config.gateway.admin {
        text = text.replace(&admin.to_string(), "127.0.0.1:0");
    }

    let mut targets = Vec::new();
    for (name, log) in [
        ("log off", "enabled = false"),
        ("log on", "data_dir = \"data\""),
    ] {
        let path = dir.join(format!("{}.toml", name.replace(' ', "-")));
        std::fs::write(&path, format!("{text}\n[exchange_log]\n{log}\n")).unwrap();
        let gateway = Gateway::bind(&Config::load(&path).unwrap()).await.unwrap();
        let address = gateway.local_addr().unwrap();
        tokio::spawn(gateway.serve(shutdown.clone().wait()));
        targets.push(Target { name, address });
    }

    let pki = dir.join("pki");
    let tls = ClientTls::new(
        pki.join("ca.pem"),
        pki.join("member-cbao-kyc.pem"),
        pki.join("member-cbao-kyc.key"),
    )
    .client_config()
    .unwrap();
    let citizen = data.citizens.iter().find(|c| c.is_alive()).unwrap();
    let message = VerifyIdentityRequest {
        nin: citizen.nin.to_string(),
        first_names: citizen.first_names.clone(),
        last_name: citizen.last_name.to_owned(),
        date_of_birth: citizen.date_of_birth.to_string(),
    };
    (targets, tls, message, trigger)
}

fn request(message: &VerifyIdentityRequest) -> tonic::Request<VerifyIdentityRequest> {
    let mut request = tonic::Request::new(message.clone());
    let metadata = request.metadata_mut();
    metadata.insert("bridge-purpose", "KYC".parse().unwrap());
    metadata.insert("bridge-reason", "account opening".parse().unwrap());
    metadata.insert("bridge-user-id", "agent-17".parse().unwrap());
    request
}

async fn channels(address: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            Channel::connect(address, "localhost", tls.clone())
                .await
                .unwrap(),
        );
    }
    channels
}

/// Calls as fast as `callers` callers can for `duration`: (successes,
/// errors).
async fn closed_loop(
    address: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    message: &VerifyIdentityRequest,
    callers: usize,
    duration: Duration,
) -> (u64, u64) {
    let channels = channels(address, tls).await;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let mut running = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let mut client = CivilRegistryClient::new(channels[caller % CONNECTIONS].clone());
        let (ok, failed, message) = (ok.clone(), failed.clone(), message.clone());
        running.spawn(async move {
            while Instant::now() < end {
                match client.verify_identity(request(&message)).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while running.join_next().await.is_some() {}
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// Sends `RATE` calls per second for `duration`; returns each call's
/// latency from its intended send time, and the number of errors.
async fn open_loop(
    address: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    message: &VerifyIdentityRequest,
    duration: Duration,
) -> (Vec<Duration>, u64) {
    let channels = channels(address, tls).await;
    let interval = Duration::from_nanos(1_000_000_000 / RATE);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let count = (duration.as_nanos() / interval.as_nanos()) as u32;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..count {
        let intended = start + interval * n;
        tokio::time::sleep_until(intended).await;
        let mut client = CivilRegistryClient::new(channels[n as usize % CONNECTIONS].clone());
        let message = message.clone();
        calls.spawn(async move {
            let result = client.verify_identity(request(&message)).await;
            (intended.elapsed(), result.is_ok())
        });
    }
    let mut latencies = Vec::with_capacity(count as usize);
    let mut errors = 0;
    while let Some(done) = calls.join_next().await {
        let (latency, ok) = done.unwrap();
        if ok {
            latencies.push(latency);
        } else {
            errors += 1;
        }
    }
    (latencies, errors)
}
