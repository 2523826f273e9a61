//! Graceful shutdown of the real binary: on SIGTERM the gateway stops
//! accepting, sends GOAWAY, lets the calls in flight finish (up to the
//! drain timeout), flushes the exchange log and exits 0.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use govbridge::exchange_log::{ExchangeRecord, Phase, Store};
use govbridge::proto::civilregistry::v1::GetPersonRequest;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use support::probe::Probe;
use support::process::GatewayProcess;
use support::{Bed, H2Client, admin_request};

/// A GetPerson call with a known request id, on its own task.
fn slow_call(
    client: &H2Client,
    id: &str,
) -> tokio::task::JoinHandle<
    Result<tonic::Response<govbridge::proto::civilregistry::v1::GetPersonResponse>, tonic::Status>,
> {
    let mut registry = CivilRegistryClient::new(client.clone());
    let mut request = tonic::Request::new(GetPersonRequest {
        nin: "1234567890123".to_owned(),
    });
    request
        .metadata_mut()
        .insert("bridge-request-id", id.parse().unwrap());
    tokio::spawn(async move { registry.get_person(request).await })
}

/// Waits until the probe has seen `count` calls.
async fn arrived(probe: &Probe, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe.seen().len() < count {
        assert!(
            Instant::now() < deadline,
            "{} calls arrived",
            probe.seen().len()
        );
        tokio::time::timeout(Duration::from_millis(200), probe.state.arrived.notified())
            .await
            .ok();
    }
}

/// The phases of the records of request `id`, and the last one's status.
fn records_of(data: &Path, id: &str) -> (Vec<Phase>, i32) {
    let store = Store::open_read_only(data).unwrap();
    let records: Vec<ExchangeRecord> = store
        .records_of_request(id)
        .unwrap()
        .iter()
        .map(|record| record.decode().unwrap())
        .collect();
    let phases = records.iter().map(ExchangeRecord::phase).collect();
    (
        phases,
        records.last().map_or(-1, |record| record.grpc_status),
    )
}

fn verify_log(data: &Path) {
    let key = govbridge::exchange_log::note::Verifier::read(&data.join("log-key.pub")).unwrap();
    let report = govbridge::exchange_log::verify::verify_log(data, &key).unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_lets_calls_finish_refuses_new_ones_and_exits_zero() {
    // Each call takes 4 s at the backend: they are all in flight when the
    // signal comes.
    let probe = Probe::new(Duration::from_secs(4), 0);
    let bed = Bed::with_probe(&probe).await;
    let mut gateway = GatewayProcess::spawn(&bed, "shutdown", &["drain_timeout = \"30s\""]);
    let tls = bed.member_tls("cbao-kyc");
    let first = H2Client::connect(gateway.address, tls.clone())
        .await
        .unwrap();
    let second = H2Client::connect(gateway.address, tls.clone())
        .await
        .unwrap();
    let idle = H2Client::connect(gateway.address, tls.clone())
        .await
        .unwrap();
    let ids: Vec<String> = (0..8).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let calls: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| slow_call(if index % 2 == 0 { &first } else { &second }, id))
        .collect();
    arrived(&probe, ids.len()).await;

    gateway.sigterm();
    // New connections are refused...
    let refused = async {
        while tokio::net::TcpStream::connect(gateway.address)
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("the gateway kept accepting after SIGTERM");
    // ...readiness says why, while the calls finish...
    let (code, body) = admin_request(gateway.admin, "GET", "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    // ...a connection without calls gets GOAWAY and closes...
    assert!(idle.closed_by_server().await);
    // ...and every call in flight finishes.
    for call in calls {
        let person = call.await.unwrap().unwrap().into_inner();
        assert_eq!(person.person.unwrap().nin, "probe");
    }
    let status = gateway.exit_status(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(probe.seen().len(), ids.len());

    // The exchange log was flushed: both records of every call, and the
    // log verifies up to its last checkpoint.
    verify_log(&gateway.data);
    for id in &ids {
        assert_eq!(
            records_of(&gateway.data, id),
            (vec![Phase::Decision, Phase::Outcome], 0),
            "call {id}"
        );
    }
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_drain_timeout_are_cut_and_the_gateway_still_exits_zero() {
    let probe = Probe::new(Duration::from_secs(120), 0);
    let bed = Bed::with_probe(&probe).await;
    let mut gateway = GatewayProcess::spawn(&bed, "shutdown", &["drain_timeout = \"500ms\""]);
    let client = H2Client::connect(gateway.address, bed.member_tls("cbao-kyc"))
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let call = slow_call(&client, &id);
    arrived(&probe, 1).await;

    let signalled = Instant::now();
    gateway.sigterm();
    let status = gateway.exit_status(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(signalled.elapsed() >= Duration::from_millis(400));
    let cut = call.await.unwrap().unwrap_err();
    assert_ne!(cut.code(), tonic::Code::Ok);

    // The cut call still has its outcome in the log.
    verify_log(&gateway.data);
    let (phases, grpc_status) = records_of(&gateway.data, &id);
    assert_eq!(phases, [Phase::Decision, Phase::Outcome], "call {id}");
    assert_ne!(grpc_status, 0);
    bed.stop().await;
}
