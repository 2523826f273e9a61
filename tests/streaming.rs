//! Bytes in motion: large messages, long streams, slow readers, deadlines
//! and cancellation, through the gateway.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::civilregistry::v1::{GetPersonRequest, WatchLifeEventsRequest};
use support::probe::{self, Probe};
use support::{Bed, H2Client, bridge_error};
use tonic::Code;

/// A bed whose only civil registry is `probe`, with a service maximum
/// deadline.
async fn bed_with_deadline(probe: &Probe, max_deadline: &'static str) -> Bed {
    Bed::builder()
        .without_agencies()
        .probe(probe::SERVICE, probe.server())
        .max_deadline(max_deadline)
        .start()
        .await
}

/// The probe's endless stream of life events (`max_events: 0`).
async fn endless_stream(
    registry: &mut CivilRegistryClient<H2Client>,
) -> tonic::Streaming<govbridge::proto::civilregistry::v1::LifeEvent> {
    registry
        .watch_life_events(WatchLifeEventsRequest {
            after_sequence: 0,
            max_events: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

fn client(channel: H2Client) -> CivilRegistryClient<H2Client> {
    CivilRegistryClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

#[tokio::test]
async fn four_mebibyte_messages_pass_both_ways() {
    let probe = Probe::default();
    let bed = Bed::with_probe(&probe).await;
    let mut registry = client(bed.client("cbao-kyc").await);
    let big = "7".repeat(4 << 20);
    let response = registry
        .get_person(GetPersonRequest { nin: big.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.person.unwrap().first_names, big);
    bed.stop().await;
}

#[tokio::test]
async fn a_ten_thousand_message_stream_passes_in_order() {
    let probe = Probe::new(Duration::ZERO, 16);
    let bed = Bed::with_probe(&probe).await;
    let mut registry = client(bed.client("cbao-kyc").await);
    let mut stream = registry
        .watch_life_events(WatchLifeEventsRequest {
            after_sequence: 0,
            max_events: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut expected = 1;
    while let Some(event) = stream.message().await.unwrap() {
        assert_eq!(event.sequence, expected);
        expected += 1;
    }
    assert_eq!(expected - 1, 10_000);
    // Trailers arrived: `message()` returned Ok(None), not an error.
    bed.stop().await;
}

/// A caller that stops reading must stall the backend through HTTP/2 flow
/// control, not make the gateway buffer the stream.
#[tokio::test]
async fn a_slow_reader_holds_back_the_backend() {
    const EVENT: usize = 64 << 10;
    const EVENTS: u32 = 2_000; // 128 MiB if the gateway buffered it all
    let probe = Probe::new(Duration::ZERO, EVENT);
    let bed = Bed::with_probe(&probe).await;
    let mut registry = client(bed.client("cbao-kyc").await);
    let mut stream = registry
        .watch_life_events(WatchLifeEventsRequest {
            after_sequence: 0,
            max_events: EVENTS,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().sequence, 1);

    // Stop reading and wait until the backend stops producing: flow control
    // has pushed back through both hops. Bounded, and not a readiness wait:
    // this is the behaviour under test.
    let mut last = probe.produced();
    let mut quiet_rounds = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = probe.produced();
        quiet_rounds = if now == last { quiet_rounds + 1 } else { 0 };
        last = now;
        if quiet_rounds == 6 {
            break;
        }
    }
    let in_flight = last as usize * EVENT;
    eprintln!(
        "the backend produced {last} events ({} KiB) for a stalled reader",
        in_flight >> 10
    );
    assert!(
        last < u64::from(EVENTS) && in_flight < 32 << 20,
        "the backend produced {last} events ({} MiB) for a reader that took one",
        in_flight >> 20
    );

    // Reading again resumes the stream to the end.
    let mut count = 1;
    while let Some(_event) = stream.message().await.unwrap() {
        count += 1;
    }
    assert_eq!(count, EVENTS);
    bed.stop().await;
}

#[tokio::test]
async fn a_short_client_deadline_gives_deadline_exceeded_and_cancels_upstream() {
    let probe = Probe::new(Duration::from_secs(30), 0);
    let bed = Bed::with_probe(&probe).await;
    let mut registry = client(bed.client("cbao-kyc").await);
    let mut request = tonic::Request::new(GetPersonRequest { nin: "1".into() });
    // The test transport has no timer of its own: the gateway enforces it.
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = registry.get_person(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(bridge_error(&status).as_deref(), Some("deadline-exceeded"));
    assert!(started.elapsed() < Duration::from_secs(5));

    // The backend got a reduced grpc-timeout and saw the call cancelled.
    let seen = probe.seen();
    let forwarded = seen[0]
        .metadata
        .get("grpc-timeout")
        .unwrap()
        .to_str()
        .unwrap();
    let forwarded = govbridge::wire::deadline::parse_grpc_timeout(forwarded.as_bytes()).unwrap();
    assert!(forwarded < Duration::from_millis(300), "{forwarded:?}");
    tokio::time::timeout(Duration::from_secs(5), probe.state.cancelled.notified())
        .await
        .expect("the backend never saw the cancellation");
    bed.stop().await;
}

#[tokio::test]
async fn the_service_maximum_bounds_calls_without_a_deadline() {
    let probe = Probe::new(Duration::from_secs(30), 0);
    let bed = bed_with_deadline(&probe, "300ms").await;
    let mut registry = client(bed.client("cbao-kyc").await);
    let status = registry
        .get_person(GetPersonRequest { nin: "1".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    tokio::time::timeout(Duration::from_secs(5), probe.state.cancelled.notified())
        .await
        .expect("the backend never saw the cancellation");
    bed.stop().await;
}

#[tokio::test]
async fn a_client_cancellation_reaches_the_backend() {
    let probe = Probe::new(Duration::from_secs(30), 0);
    let bed = Bed::with_probe(&probe).await;
    let mut registry = client(bed.client("cbao-kyc").await);
    let call = tokio::spawn(async move {
        registry
            .get_person(GetPersonRequest { nin: "1".into() })
            .await
    });
    // Wait until the call is at the backend, then abandon it.
    tokio::time::timeout(Duration::from_secs(5), probe.state.arrived.notified())
        .await
        .expect("the call never reached the backend");
    assert_eq!(probe.seen().len(), 1, "the call never reached the backend");
    call.abort();
    tokio::time::timeout(Duration::from_secs(5), probe.state.cancelled.notified())
        .await
        .expect("the backend never saw the cancellation");
    bed.stop().await;
}

#[tokio::test]
async fn a_deadline_passing_mid_stream_ends_both_sides() {
    let probe = Probe::default();
    let bed = bed_with_deadline(&probe, "300ms").await;
    let mut registry = client(bed.client("cbao-kyc").await);
    let mut stream = endless_stream(&mut registry).await;
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the endless stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert!(received > 0, "events flowed before the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(bridge_error(&status).as_deref(), Some("deadline-exceeded"));
    tokio::time::timeout(Duration::from_secs(5), probe.state.cancelled.notified())
        .await
        .expect("the backend's stream was never cancelled");
    bed.stop().await;
}

/// A caller that stops reading cannot keep its upstream stream past the
/// deadline: the gateway resets it on time, even though the caller's
/// window stays closed and the response body is never polled.
#[tokio::test]
async fn a_stalled_reader_loses_its_upstream_stream_at_the_deadline() {
    let probe = Probe::new(Duration::ZERO, 64 << 10);
    let bed = bed_with_deadline(&probe, "1s").await;
    let mut registry = client(bed.client("cbao-kyc").await);
    let mut stream = endless_stream(&mut registry).await;
    stream.message().await.unwrap().unwrap();
    // Stop reading; keep the stream open.
    tokio::time::timeout(Duration::from_secs(5), probe.state.cancelled.notified())
        .await
        .expect("the stalled call kept its upstream stream past the deadline");
    drop(stream);
    bed.stop().await;
}
