//! Partners and strangers misbehaving on purpose, over real sockets: rapid
//! resets, more streams than allowed, oversized headers, slow TLS
//! handshakes, too many connections from one address, garbage, plaintext
//! HTTP on the TLS port, a client that never reads.
//!
//! Each case checks that the gateway answers as it should, that another
//! member's calls still go through, and that nothing is left behind: the
//! open connections and the calls in flight on the admin endpoint come
//! back to where they were.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::civilregistry::v1::{GetPersonRequest, WatchLifeEventsRequest};
use rustls::ClientConfig;
use std::net::SocketAddr;
use support::probe::{self, Probe};
use support::process::GatewayProcess;
use support::raw_h2::{self, CANCEL, ENHANCE_YOUR_CALM, REFUSED_STREAM};
use support::{Baseline, Bed, H2Client, bridge_error, metric, verify_identity_of, wait_for_metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

const GET_PERSON: &str = "/govbridge.civilregistry.v1.CivilRegistry/GetPerson";
const WATCH: &str = "/govbridge.civilregistry.v1.CivilRegistry/WatchLifeEvents";

fn person() -> GetPersonRequest {
    GetPersonRequest {
        nin: "1234567890123".to_owned(),
    }
}

/// How long the gateway may take to react to anything here: generous, for
/// a slow shared machine; the cases end as soon as it does.
const PATIENCE: Duration = Duration::from_secs(30);

/// Another member's call goes all the way to the backend and back: the
/// probe refuses every VerifyIdentity itself.
async fn still_serves(bed: &Bed) {
    still_serves_at(bed, bed.gateway).await;
}

async fn still_serves_at(bed: &Bed, gateway: SocketAddr) {
    let client = H2Client::connect(gateway, bed.member_tls("treasury"))
        .await
        .unwrap();
    let mut registry = CivilRegistryClient::new(client);
    let status = registry
        .verify_identity(verify_identity_of(bed, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(bridge_error(&status), None, "answered by the backend");
}

async fn probe_bed(probe: &Probe, gateway: &[(&str, &str)]) -> Bed {
    let mut builder = Bed::builder()
        .without_agencies()
        .probe(probe::SERVICE, probe.server());
    for (key, value) in gateway {
        builder = builder.gateway(key, value);
    }
    builder.start().await
}

/// Writes `bytes`, unless the gateway has stopped reading or closed.
async fn send(writer: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), writer.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// Opens a stream and cancels it at once, stream after stream
/// (CVE-2023-44487), until the gateway closes the connection; returns what
/// it sent and how many streams were opened.
async fn rapid_reset(gateway: SocketAddr, tls: Arc<ClientConfig>) -> (raw_h2::Received, u32) {
    let tls = raw_h2::connect(gateway, tls).await;
    let (reader, mut writer) = tokio::io::split(tls);
    let received = tokio::spawn(raw_h2::read_until_closed(reader));
    assert!(send(&mut writer, &raw_h2::preface(&[])).await);
    // Open a stream, cancel it at once, next one: CVE-2023-44487.
    let started = Instant::now();
    let mut stream = 1_u32;
    while !received.is_finished() {
        let mut batch = Vec::new();
        for _ in 0..100 {
            // Whole requests: the resets are what is wrong with them.
            batch.extend(raw_h2::grpc_headers(stream, GET_PERSON, false));
            batch.extend(raw_h2::grpc_data(stream, &person(), true));
            batch.extend(raw_h2::rst_stream(stream, CANCEL));
            stream += 2;
        }
        if !send(&mut writer, &batch).await {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{} streams reset and the connection still open",
            stream / 2
        );
    }
    let received = tokio::time::timeout(PATIENCE, received)
        .await
        .expect("the gateway did not close the connection")
        .unwrap();
    (received, stream / 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_cut_off_and_other_members_are_served() {
    // Slow answers: every stream the gateway accepts would stay open.
    let probe = Probe::new(Duration::from_secs(10), 0);
    let bed = probe_bed(&probe, &[]).await;
    let baseline = Baseline::take(bed.admin).await;

    let (received, opened) = rapid_reset(bed.gateway, bed.member_tls("cbao-kyc")).await;
    assert!(opened < 100_000, "{opened} streams before the cut");
    // h2's cap on streams reset before they are accepted, or the
    // gateway's own premature-reset rule: either way a flood.
    let floods = wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"flood\"}",
        |count| count >= 1.0,
    )
    .await;
    assert_eq!(floods, 1.0);
    if let Some(code) = received.goaways.last() {
        assert_eq!(*code, ENHANCE_YOUR_CALM, "{received:?}");
    }
    assert!(
        probe.seen().len() < 1000,
        "{} reset calls reached the backend",
        probe.seen().len()
    );

    still_serves(&bed).await;
    baseline.restored(bed.admin).await;
    bed.stop().await;
}

/// Opens 10,000 calls at once on one connection, ignoring the server's
/// limit; the backend is slow (or the requests never end), so none
/// finishes to make room. Returns what the gateway sent until it closed
/// the connection.
async fn stream_flood(
    gateway: SocketAddr,
    tls: Arc<ClientConfig>,
    requests_end: bool,
) -> raw_h2::Received {
    let tls = raw_h2::connect(gateway, tls).await;
    let (reader, mut writer) = tokio::io::split(tls);
    let received = tokio::spawn(raw_h2::read_until_closed(reader));
    assert!(send(&mut writer, &raw_h2::preface(&[])).await);
    for batch in (0..10_000_u32).collect::<Vec<_>>().chunks(500) {
        let frames: Vec<u8> = batch
            .iter()
            .flat_map(|index| {
                let stream = 2 * index + 1;
                let mut frames = raw_h2::grpc_headers(stream, GET_PERSON, false);
                if requests_end {
                    frames.extend(raw_h2::grpc_data(stream, &person(), true));
                }
                frames
            })
            .collect();
        if !send(&mut writer, &frames).await {
            break;
        }
    }
    tokio::time::timeout(PATIENCE, received)
        .await
        .expect("the gateway kept the connection open")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_on_one_connection_are_held_to_the_stream_limit() {
    let probe = Probe::new(Duration::from_secs(10), 0);
    let bed = probe_bed(&probe, &[("max_concurrent_streams", "100")]).await;
    let baseline = Baseline::take(bed.admin).await;

    let received = stream_flood(bed.gateway, bed.member_tls("cbao-kyc"), true).await;
    // Streams past the limit are refused; past the cap on refusals, the
    // connection is told to go away.
    assert!(
        received.resets.get(&REFUSED_STREAM).copied().unwrap_or(0) >= 1,
        "{received:?}"
    );
    assert_eq!(
        received.goaways.last(),
        Some(&ENHANCE_YOUR_CALM),
        "{received:?}"
    );
    assert!(
        probe.seen().len() <= 100,
        "{} calls reached the backend at once",
        probe.seen().len()
    );
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"flood\"}",
        |count| count == 1.0,
    )
    .await;

    still_serves(&bed).await;
    baseline.restored(bed.admin).await;
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_within_the_stream_limit_are_all_answered() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let probe = Probe::default();
    let bed = probe_bed(&probe, &[]).await;
    let baseline = Baseline::take(bed.admin).await;
    let client = bed.client("cbao-kyc").await;
    // One connection, 10,000 calls at once: the client queues what the
    // gateway's 256 streams do not take. The gateway answers health
    // itself, so this measures the listener, not the backend.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10_000 {
        let mut health = HealthClient::new(client.clone());
        calls.spawn(async move {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|response| response.into_inner().status)
        });
    }
    let mut answered = 0;
    while let Some(call) = tokio::time::timeout(PATIENCE, calls.join_next())
        .await
        .expect("calls stopped being answered")
    {
        assert_eq!(call.unwrap().unwrap(), ServingStatus::Serving as i32);
        answered += 1;
    }
    assert_eq!(answered, 10_000);
    drop(client);
    baseline.restored(bed.admin).await;
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_before_the_backend() {
    let probe = Probe::default();
    let bed = probe_bed(&probe, &[]).await;
    let baseline = Baseline::take(bed.admin).await;

    // Just over the 16 KiB header list limit: this call is refused...
    let client = bed.client("cbao-kyc").await;
    let mut registry = CivilRegistryClient::new(client.clone());
    let oversized = support::with_header(
        tonic::Request::new(GetPersonRequest {
            nin: "1234567890123".to_owned(),
        }),
        "x-padding",
        &"x".repeat(17 << 10),
    );
    // (HTTP 431, from the HTTP/2 layer: the call never became one)...
    let refused = registry.get_person(oversized).await.unwrap_err();
    assert!(refused.message().contains("431"), "{refused:?}");
    // ...and the connection serves on.
    let status = registry
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // ...and far over it (1 MiB, over CONTINUATION frames), the connection
    // is closed rather than buffered.
    let huge_client = bed.client("cbao-kyc").await;
    let mut huge_registry = CivilRegistryClient::new(huge_client.clone());
    let huge = support::with_header(
        tonic::Request::new(GetPersonRequest {
            nin: "1234567890123".to_owned(),
        }),
        "x-padding",
        &"x".repeat(1 << 20),
    );
    let status = huge_registry.get_person(huge).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert!(huge_client.closed_by_server().await);
    // A header block this far over the limit is abuse, not a mistake.
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"flood\"}",
        |count| count == 1.0,
    )
    .await;
    assert!(
        probe
            .seen()
            .iter()
            .all(|seen| seen.metadata.get("x-padding").is_none()),
        "an oversized call was forwarded"
    );

    still_serves(&bed).await;
    drop((registry, client, huge_registry, huge_client));
    baseline.restored(bed.admin).await;
    bed.stop().await;
}

/// The ClientHello a member's TLS client sends first.
fn client_hello(tls: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut connection = rustls::ClientConnection::new(tls, name).unwrap();
    let mut hello = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut hello).unwrap();
    }
    hello
}

/// Waits for the gateway to close `tcp`, reading whatever it sends.
async fn closed_by_gateway(tcp: &mut TcpStream) -> Instant {
    let mut sink = [0_u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, tcp.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => return Instant::now(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the gateway kept a slow handshake open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_tls_clients_are_dropped_at_the_handshake_timeout() {
    let probe = Probe::default();
    let bed = Bed::builder()
        .without_agencies()
        .probe(probe::SERVICE, probe.server())
        .handshake_timeout("500ms")
        .start()
        .await;
    let baseline = Baseline::take(bed.admin).await;
    let hello = Arc::new(client_hello(bed.member_tls("cbao-kyc")));
    assert!(
        hello.len() > 200,
        "a ClientHello is longer than the trickle"
    );

    let started = Instant::now();
    let mut slow = tokio::task::JoinSet::new();
    for index in 0..20 {
        let hello = hello.clone();
        let gateway = bed.gateway;
        slow.spawn(async move {
            let mut tcp = TcpStream::connect(gateway).await.unwrap();
            if index % 2 == 0 {
                // Trickles its ClientHello, a byte every 20 ms...
                let (mut reader, mut writer) = tcp.split();
                let trickle = async {
                    for byte in hello.iter() {
                        if writer.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    std::future::pending::<()>().await;
                };
                let mut sink = [0_u8; 64];
                tokio::select! {
                    () = trickle => unreachable!(),
                    read = tokio::time::timeout(PATIENCE, reader.read(&mut sink)) => {
                        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
                    }
                }
                Instant::now()
            } else {
                // ...or sends all of it and never says anything again.
                tcp.write_all(&hello).await.unwrap();
                closed_by_gateway(&mut tcp).await
            }
        });
    }
    // While they hang on, a member connects and calls as usual.
    still_serves(&bed).await;
    while let Some(closed) = slow.join_next().await {
        let after = closed.unwrap() - started;
        assert!(
            after >= Duration::from_millis(400),
            "closed after {after:?}"
        );
    }
    wait_for_metric(
        bed.admin,
        "govbridge_tls_handshake_failures_total{reason=\"timeout\"}",
        |count| count == 20.0,
    )
    .await;
    baseline.restored(bed.admin).await;
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_connections_than_its_cap() {
    let probe = Probe::default();
    // Silent connections hold their slot until the handshake timeout.
    let bed = Bed::builder()
        .without_agencies()
        .probe(probe::SERVICE, probe.server())
        .handshake_timeout("120s")
        .gateway("max_connections_per_address", "4")
        .start()
        .await;
    let baseline = Baseline::take(bed.admin).await;

    // Four connections that say nothing hold every slot of 127.0.0.1,
    // until one of them goes away.
    let (silent, client) = held_by_silent_connections(&bed, 4, "address-limit").await;
    let status = CivilRegistryClient::new(client.clone())
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    drop(client);
    drop(silent);
    baseline.restored(bed.admin).await;
    bed.stop().await;
}

/// Sends `bytes` on a plain TCP connection to the gateway and reads what
/// comes back until the gateway closes it, which it must do cleanly (a
/// FIN, not a reset) within `PATIENCE`.
async fn send_until_closed(bed: &Bed, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(bed.gateway).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("the gateway kept the connection open")
        .expect("closed with a reset instead of a FIN");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_closed_before_and_after_tls() {
    let probe = Probe::default();
    let bed = probe_bed(&probe, &[]).await;
    let baseline = Baseline::take(bed.admin).await;

    // Not a TLS record: closed with a FIN, nothing said.
    let answer = send_until_closed(&bed, b"\x00\xff\x13\x37 definitely not TLS \r\n\r\n").await;
    assert!(answer.is_empty());
    wait_for_metric(
        bed.admin,
        "govbridge_tls_handshake_failures_total{reason=\"not-tls\"}",
        |count| count == 1.0,
    )
    .await;

    // TLS, then garbage instead of the HTTP/2 preface.
    let mut tls = raw_h2::connect(bed.gateway, bed.member_tls("cbao-kyc")).await;
    tls.write_all(&[0x5a; 512]).await.unwrap();
    tokio::time::timeout(PATIENCE, raw_h2::read_until_closed(&mut tls))
        .await
        .expect("the gateway kept the connection open");

    // The preface, then a frame HTTP/2 forbids (DATA on stream 0).
    let tls = raw_h2::connect(bed.gateway, bed.member_tls("cbao-kyc")).await;
    let (reader, mut writer) = tokio::io::split(tls);
    let mut bytes = raw_h2::preface(&[]);
    bytes.extend(raw_h2::frame(raw_h2::DATA, 0, 0, b"garbage"));
    assert!(send(&mut writer, &bytes).await);
    let received = tokio::time::timeout(PATIENCE, raw_h2::read_until_closed(reader))
        .await
        .expect("the gateway kept the connection open");
    const PROTOCOL_ERROR: u32 = 0x1;
    assert_eq!(
        received.goaways.last(),
        Some(&PROTOCOL_ERROR),
        "{received:?}"
    );
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"protocol-error\"}",
        |count| count >= 1.0,
    )
    .await;

    still_serves(&bed).await;
    baseline.restored(bed.admin).await;
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_on_the_tls_port_is_answered_and_closed_cleanly() {
    let probe = Probe::default();
    let bed = probe_bed(&probe, &[]).await;
    let baseline = Baseline::take(bed.admin).await;

    // HTTP/1.1: a 400 that says why, then a clean close.
    let answer = send_until_closed(&bed, b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n").await;
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("mutual TLS"), "{answer}");

    // h2c with prior knowledge: closed, nothing said.
    let answer = send_until_closed(&bed, &raw_h2::preface(&[])).await;
    assert!(answer.is_empty());

    wait_for_metric(
        bed.admin,
        "govbridge_tls_handshake_failures_total{reason=\"plaintext-http\"}",
        |count| count == 2.0,
    )
    .await;
    still_serves(&bed).await;
    baseline.restored(bed.admin).await;
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected() {
    // An endless stream of 16 KiB events, to fill whatever buffer there is.
    let probe = Probe::new(Duration::ZERO, 16 << 10);
    let bed = probe_bed(
        &probe,
        &[
            ("keepalive_interval", "\"300ms\""),
            ("keepalive_timeout", "\"300ms\""),
        ],
    )
    .await;
    let baseline = Baseline::take(bed.admin).await;

    // Opens the stream with every flow-control window wide open, then
    // never reads a byte: not the events, not the PINGs.
    let mut tls = raw_h2::connect(bed.gateway, bed.member_tls("cbao-kyc")).await;
    let window = (1_u32 << 31) - 1;
    let mut bytes = raw_h2::preface(&[(raw_h2::SETTINGS_INITIAL_WINDOW_SIZE, window)]);
    bytes.extend(raw_h2::window_update(0, window - 65_535));
    bytes.extend(raw_h2::grpc_headers(1, WATCH, false));
    bytes.extend(raw_h2::grpc_data(
        1,
        &WatchLifeEventsRequest {
            after_sequence: 0,
            max_events: 0,
        },
        true,
    ));
    tls.write_all(&bytes).await.unwrap();
    tokio::time::timeout(PATIENCE, probe.state.arrived.notified())
        .await
        .expect("the stream never reached the backend");

    // The unanswered PING gives it away; the backend's stream is cut too.
    tokio::time::timeout(PATIENCE, probe.state.cancelled.notified())
        .await
        .expect("the backend kept streaming to a client that never reads");
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"keepalive-timeout\"}",
        |count| count == 1.0,
    )
    .await;
    still_serves(&bed).await;
    baseline.restored(bed.admin).await;
    drop(tls);
    bed.stop().await;
}

/// A client library used as a weapon: each call starts properly and is
/// cancelled (RST_STREAM) as soon as `probe`, the backend, has it: the
/// slow variant of a rapid reset. Returns how many calls were cancelled
/// before the gateway dropped the connection.
async fn cancelled_calls(gateway: SocketAddr, tls: Arc<ClientConfig>, probe: &Probe) -> usize {
    let client = H2Client::connect(gateway, tls).await.unwrap();
    let started = Instant::now();
    let mut cancelled = 0;
    while !client.is_closed() {
        let arrived = probe.seen().len();
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let mut registry = CivilRegistryClient::new(client.clone());
            batch.spawn(async move { registry.get_person(person()).await });
        }
        while probe.seen().len() < arrived + 50 && !client.is_closed() {
            assert!(started.elapsed() < PATIENCE, "the calls do not get through");
            let _ = tokio::time::timeout(Duration::from_millis(10), probe.state.arrived.notified())
                .await;
        }
        batch.abort_all();
        while batch.join_next().await.is_some() {}
        cancelled += 50;
        assert!(
            started.elapsed() < PATIENCE,
            "{cancelled} calls cancelled and the connection still open"
        );
    }
    cancelled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cancelled_as_soon_as_they_start_get_the_connection_dropped() {
    let probe = Probe::new(Duration::from_secs(10), 0);
    let bed = probe_bed(&probe, &[]).await;
    let baseline = Baseline::take(bed.admin).await;

    let cancelled = cancelled_calls(bed.gateway, bed.member_tls("cbao-kyc"), &probe).await;
    assert!(cancelled <= 2_000, "{cancelled} calls before the cut");
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"flood\"}",
        |count| count == 1.0,
    )
    .await;
    still_serves(&bed).await;
    baseline.restored(bed.admin).await;
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_leave_the_gateway_process_memory_where_it_was() {
    let probe = Probe::new(Duration::from_secs(10), 0);
    let bed = probe_bed(&probe, &[]).await;
    let gateway = GatewayProcess::spawn(&bed, "rss", &[]);
    let tls = bed.member_tls("cbao-kyc");
    // Warm up: pools, caches and the exchange log in use.
    for _ in 0..20 {
        still_serves_at(&bed, gateway.address).await;
    }
    let baseline = Baseline::quiet(gateway.admin).await;
    let before = gateway.rss_kib();
    for _ in 0..3 {
        rapid_reset(gateway.address, tls.clone()).await;
        stream_flood(gateway.address, tls.clone(), true).await;
        cancelled_calls(gateway.address, tls.clone(), &probe).await;
    }
    assert_eq!(
        metric(
            gateway.admin,
            "govbridge_connections_closed_total{reason=\"flood\"}"
        )
        .await,
        9.0
    );
    baseline.restored(gateway.admin).await;
    still_serves_at(&bed, gateway.address).await;
    let after = gateway.rss_kib();
    eprintln!(
        "gateway RSS: {before} KiB before 3 x (rapid reset, 10,000 streams, cancelled calls), \
         {after} KiB after"
    );
    // The allocator keeps some of what it was given; a leak per stream
    // would be far more than this.
    assert!(after < before + 64 * 1024, "{before} KiB -> {after} KiB");
    drop(gateway);
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_with_unfinished_calls_does_not_get_the_provider_ejected() {
    let probe = Probe::new(Duration::from_secs(10), 0);
    let bed = probe_bed(&probe, &[]).await;
    let gateway = GatewayProcess::spawn(&bed, "cut-off", &[]);
    still_serves_at(&bed, gateway.address).await;
    let baseline = Baseline::quiet(gateway.admin).await;
    // A rapid reset, then more streams than allowed with requests that
    // never end; the gateway cuts both connections. The calls it had taken
    // up end as cancelled, not as failures of the backend (which their
    // failing request bodies would otherwise make them).
    rapid_reset(gateway.address, bed.member_tls("cbao-kyc")).await;
    stream_flood(gateway.address, bed.member_tls("cbao-kyc"), false).await;
    baseline.restored(gateway.admin).await;
    // Nothing was wrong with the backend: another member is served.
    still_serves_at(&bed, gateway.address).await;
    drop(gateway);
    bed.stop().await;
}

/// A peer that is not a registered member gets one exchange-log record per
/// connection however many calls it opens on it at once: the rest are
/// answered, counted in the metrics, and not written.
#[tokio::test]
async fn a_stranger_opening_many_streams_leaves_one_record() {
    let probe = Probe::new(Duration::ZERO, 0);
    let bed = probe_bed(&probe, &[]).await;
    let stranger = govbridge::identity::MemberId::parse("SN/COM/UNKNOWN/kyc").unwrap();
    let tls = bed.issue_client("stranger", &govbridge::pki::LeafRequest::member(&stranger));
    let connection = raw_h2::connect(bed.gateway, tls).await;
    let (mut reader, mut writer) = tokio::io::split(connection);
    // Every call in one write: they all reach the gateway before its first
    // answer closes the connection.
    let streams = 40;
    let mut calls = raw_h2::preface(&[]);
    for stream in (1..).step_by(2).take(streams) {
        calls.extend(raw_h2::grpc_headers(stream, GET_PERSON, false));
        calls.extend(raw_h2::grpc_data(stream, &person(), true));
    }
    assert!(send(&mut writer, &calls).await);
    // Each call answered is one HEADERS frame (trailers-only); read until
    // the gateway has answered all it accepted and said GOAWAY.
    let (mut answered, mut goaway) = (0_u32, false);
    tokio::time::timeout(PATIENCE, async {
        while !(goaway && answered as usize == streams) {
            let Some(frame) = raw_h2::read_frame(&mut reader).await else {
                break;
            };
            match frame.kind {
                raw_h2::HEADERS => answered += 1,
                raw_h2::GOAWAY => goaway = true,
                _ => {}
            }
        }
    })
    .await
    .expect("the gateway neither answered nor closed");
    drop((reader, writer));
    assert!(goaway, "the connection was not closed gracefully");
    assert!(
        answered >= 2,
        "the gateway answered {answered} calls: the case needs several"
    );

    let records = govbridge::exchange_log::Store::open_read_only(bed.exchange_log().dir())
        .unwrap()
        .records_from(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|stored| stored.decode().unwrap())
        .filter(|record| record.caller == stranger.as_str())
        .count();
    assert_eq!(records, 1, "{answered} calls answered");
    let unrecorded = metric(
        bed.admin,
        "govbridge_unrecorded_refusals_total{kind=\"unknown-member\"}",
    )
    .await;
    assert_eq!(unrecorded, f64::from(answered - 1));
    assert!(probe.seen().is_empty());
    still_serves(&bed).await;
    bed.stop().await;
}

/// Before anyone is authenticated, the handshakes under way at once are
/// capped whatever the addresses they come from: connections that say
/// nothing hold every place, the next is closed at once, and once one
/// goes a member connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_hold_more_handshakes_than_the_cap() {
    let probe = Probe::default();
    let bed = Bed::builder()
        .without_agencies()
        .probe(probe::SERVICE, probe.server())
        .handshake_timeout("120s")
        .gateway("max_handshakes", "4")
        .start()
        .await;

    let (silent, client) = held_by_silent_connections(&bed, 4, "handshake-limit").await;
    drop((client, silent));
    bed.stop().await;
}

/// Opens `count` connections that say nothing, which take every place a
/// cap allows: a member's next connection is refused (and counted as
/// closed for `reason`) until one of them goes; then it is admitted.
/// Returns the silent connections left and the member's client.
async fn held_by_silent_connections(
    bed: &Bed,
    count: usize,
    reason: &str,
) -> (Vec<TcpStream>, H2Client) {
    let mut silent = Vec::new();
    for _ in 0..count {
        silent.push(TcpStream::connect(bed.gateway).await.unwrap());
    }
    // The gateway has taken them in once it refuses the next.
    let refused = async {
        loop {
            if H2Client::connect(bed.gateway, bed.member_tls("treasury"))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::time::timeout(PATIENCE, refused)
        .await
        .unwrap_or_else(|_| panic!("connection {} was let in", count + 1));
    let closed = format!("govbridge_connections_closed_total{{reason=\"{reason}\"}}");
    assert!(metric(bed.admin, &closed).await >= 1.0, "{closed}");

    drop(silent.pop());
    let admitted = async {
        loop {
            if let Ok(client) = H2Client::connect(bed.gateway, bed.member_tls("treasury")).await {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let client = tokio::time::timeout(PATIENCE, admitted)
        .await
        .expect("the place of a closed connection was not given back");
    (silent, client)
}

/// A bed whose treasury may have one call in flight, all calls ending
/// within half a second: `probe` serves the civil registry.
async fn one_call_bed(probe: &Probe) -> Bed {
    Bed::builder()
        .without_agencies()
        .probe(probe::SERVICE, probe.server())
        .upstream("max_deadline", "\"500ms\"")
        .limits("[limits.members.\"SN/GOV/DGCPT/treasury\"]\nconcurrent_calls = 1\n")
        .start()
        .await
}

/// Opens a call to `path` as the treasury with stream windows of 0, so
/// that the gateway can send the answer's headers and never a byte of
/// its messages; the connection stays open while it is held.
async fn never_read(
    bed: &Bed,
    path: &str,
    request: &impl prost::Message,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tls = raw_h2::connect(bed.gateway, bed.member_tls("treasury")).await;
    let mut bytes = raw_h2::preface(&[(raw_h2::SETTINGS_INITIAL_WINDOW_SIZE, 0)]);
    bytes.extend(raw_h2::grpc_headers(1, path, false));
    bytes.extend(raw_h2::grpc_data(1, request, true));
    tls.write_all(&bytes).await.unwrap();
    tls
}

/// Calls as the treasury until a call is not refused for its one place
/// (`stalled` still holding it fails the test after [`PATIENCE`]);
/// returns how many were.
async fn refused_until_admitted(bed: &Bed, stalled: &str) -> usize {
    let started = Instant::now();
    let mut refused = 0;
    loop {
        let client = H2Client::connect(bed.gateway, bed.member_tls("treasury"))
            .await
            .unwrap();
        let status = CivilRegistryClient::new(client)
            .verify_identity(verify_identity_of(bed, 0))
            .await
            .unwrap_err();
        if bridge_error(&status).as_deref() != Some("too-many-calls") {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            return refused;
        }
        refused += 1;
        assert!(
            started.elapsed() < PATIENCE,
            "{stalled} still holds its place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A caller that stops reading an answer (its window closed) keeps no
/// place under the limits past its call's deadline: hyper polls the
/// answer's body no more, so the place must not live in that body alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gives_its_place_back_at_the_deadline() {
    let probe = Probe::new(Duration::ZERO, 16 << 10);
    let bed = one_call_bed(&probe).await;
    let watching = WatchLifeEventsRequest {
        after_sequence: 0,
        max_events: 0,
    };
    let stalled = never_read(&bed, WATCH, &watching).await;
    tokio::time::timeout(PATIENCE, probe.state.arrived.notified())
        .await
        .expect("the stream never reached the backend");

    // The member's one place is taken until the stalled call's deadline.
    refused_until_admitted(&bed, "the stalled call").await;
    drop(stalled);
    bed.stop().await;
}

/// The gateway's own streaming services end at the call's deadline too:
/// a health watch holds no place under the limits for longer than its
/// deadline, read or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_watch_ends_at_its_deadline_and_gives_its_place_back() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let probe = Probe::new(Duration::ZERO, 0);
    let bed = one_call_bed(&probe).await;
    let client = H2Client::connect(bed.gateway, bed.member_tls("treasury"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request.set_timeout(Duration::from_millis(300));
    let mut watch = HealthClient::new(client)
        .watch(request)
        .await
        .unwrap()
        .into_inner();
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("the watch outlived its deadline");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // A watch whose reader never reads: its place is back at the
    // deadline (the service maximum here), and it is counted in flight
    // no longer.
    let health = "/grpc.health.v1.Health/Watch";
    let stalled = never_read(&bed, health, &HealthCheckRequest::default()).await;
    wait_for_metric(bed.admin, "govbridge_calls_in_flight", |n| n == 1.0).await;
    assert!(refused_until_admitted(&bed, "the stalled watch").await > 0);
    wait_for_metric(bed.admin, "govbridge_calls_in_flight", |n| n == 0.0).await;
    drop(stalled);
    bed.stop().await;
}
