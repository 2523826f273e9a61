//! The life of a partner connection: GOAWAY once idle or at its maximum
//! age, calls still open then allowed to finish up to the drain timeout,
//! and every close counted.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use govbridge::proto::civilregistry::v1::GetPersonRequest;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use support::probe::{self, Probe};
use support::{Baseline, Bed, verify_identity_of, wait_for_metric};
use tonic::Code;

async fn probe_bed(probe: &Probe, gateway: &[(&str, &str)]) -> Bed {
    let mut builder = Bed::builder()
        .without_agencies()
        .probe(probe::SERVICE, probe.server());
    for (key, value) in gateway {
        builder = builder.gateway(key, value);
    }
    builder.start().await
}

fn get_person() -> GetPersonRequest {
    GetPersonRequest {
        nin: "1234567890123".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gets_goaway() {
    let probe = Probe::default();
    let bed = probe_bed(&probe, &[("idle_timeout", "\"300ms\"")]).await;
    let client = bed.client("cbao-kyc").await;
    let status = CivilRegistryClient::new(client.clone())
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let answered = Instant::now();
    assert!(
        client.closed_by_server().await,
        "the idle connection stayed open"
    );
    assert!(answered.elapsed() >= Duration::from_millis(250));
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"idle\"}",
        |count| count == 1.0,
    )
    .await;
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_a_call_open_is_not_idle() {
    let probe = Probe::new(Duration::from_millis(1500), 0);
    let bed = probe_bed(&probe, &[("idle_timeout", "\"300ms\"")]).await;
    let client = bed.client("cbao-kyc").await;
    let mut registry = CivilRegistryClient::new(client.clone());
    registry.get_person(get_person()).await.unwrap();
    // Closed only once idle after the call.
    assert!(client.closed_by_server().await);
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_at_its_maximum_age_gets_goaway_and_its_calls_finish() {
    let probe = Probe::new(Duration::from_millis(1500), 0);
    let bed = probe_bed(
        &probe,
        &[
            ("max_connection_age", "\"300ms\""),
            ("drain_timeout", "\"20s\""),
        ],
    )
    .await;
    let baseline = Baseline::take(bed.admin).await;
    let client = bed.client("cbao-kyc").await;
    let mut registry = CivilRegistryClient::new(client.clone());
    // Outlives the connection's age: GOAWAY comes while it runs.
    let person = registry.get_person(get_person()).await.unwrap();
    assert_eq!(person.into_inner().person.unwrap().nin, "probe");
    assert!(client.closed_by_server().await);
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"max-age\"}",
        |count| count == 1.0,
    )
    .await;
    // The partner reconnects and carries on.
    let status = CivilRegistryClient::new(bed.client("cbao-kyc").await)
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    baseline.restored(bed.admin).await;
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_drain_timeout_is_cut_and_nothing_is_left_behind() {
    let probe = Probe::new(Duration::from_secs(60), 0);
    let bed = probe_bed(
        &probe,
        &[
            ("max_connection_age", "\"300ms\""),
            ("drain_timeout", "\"500ms\""),
        ],
    )
    .await;
    let baseline = Baseline::take(bed.admin).await;
    let client = bed.client("cbao-kyc").await;
    let mut registry = CivilRegistryClient::new(client.clone());
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), registry.get_person(get_person()))
        .await
        .expect("the call outlived the drain timeout")
        .unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{status:?}"
    );
    tokio::time::timeout(Duration::from_secs(30), probe.state.cancelled.notified())
        .await
        .expect("the backend's call was not cancelled");
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"drain-timeout\"}",
        |count| count == 1.0,
    )
    .await;
    drop((registry, client));
    baseline.restored(bed.admin).await;
    bed.stop().await;
}
