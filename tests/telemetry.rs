//! What operators read: one `call ended` event per forwarded call with its
//! fields, and the caller's trace continued to the backend.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use govbridge::proto::civilregistry::v1::GetPersonRequest;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use prost::Message;
use support::probe::Probe;
use support::{Bed, with_header};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Log lines written by the subscriber under test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn events(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

#[tokio::test]
async fn a_call_ends_with_one_event_and_continues_the_callers_trace() {
    // This test binary's only subscriber: JSON lines into a buffer.
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();

    let probe = Probe::default();
    let bed = Bed::with_probe(&probe).await;
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let request_id = uuid::Uuid::new_v4().to_string();
    let request = with_header(
        with_header(
            with_header(
                tonic::Request::new(GetPersonRequest {
                    nin: "1001199012345".to_owned(),
                }),
                "traceparent",
                TRACEPARENT,
            ),
            "bridge-request-id",
            &request_id,
        ),
        "bridge-purpose",
        "KYC",
    );
    registry.get_person(request).await.unwrap();

    // The backend continues the caller's trace, under the gateway's span.
    let seen = probe.seen();
    let upstream = seen[0]
        .metadata
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap();
    let parts: Vec<&str> = upstream.split('-').collect();
    assert_eq!(parts.len(), 4, "{upstream}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE_ID, "01"));
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the gateway's hop is a span of its own"
    );

    let ended: Vec<serde_json::Value> = captured
        .events()
        .into_iter()
        .filter(|event| event["fields"]["message"] == "call ended")
        .filter(|event| event["fields"]["request_id"] == request_id.as_str())
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
    let fields = &ended[0]["fields"];
    assert_eq!(fields["trace_id"], TRACE_ID);
    assert_eq!(fields["caller"], "SN/COM/CBAO/kyc");
    assert_eq!(fields["provider"], "SN/GOV/PROBE/backend");
    assert_eq!(
        fields["method"],
        "/govbridge.civilregistry.v1.CivilRegistry/GetPerson"
    );
    assert_eq!(fields["purpose"], "KYC");
    assert_eq!(fields["decision"], "allow");
    assert_eq!(fields["grpc_status"], 0);
    assert_eq!(fields["code"], "OK");
    assert!(fields["total_us"].as_u64().unwrap() >= fields["upstream_us"].as_u64().unwrap());
    assert!(fields["bytes_out"].as_u64().unwrap() > 5);
    // The request message and its 5-byte frame header.
    assert_eq!(
        fields["bytes_in"].as_u64().unwrap(),
        5 + GetPersonRequest {
            nin: "1001199012345".to_owned()
        }
        .encoded_len() as u64
    );
    assert!(fields["policy_us"].as_u64().is_some());
    let endpoint = fields["endpoint"].as_str().unwrap();
    assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
    // A refusal is logged inside the call's span, with its request id.
    let refused_id = uuid::Uuid::new_v4().to_string();
    let status = registry
        .get_person(with_header(
            with_header(
                tonic::Request::new(GetPersonRequest {
                    nin: "1001199012345".to_owned(),
                }),
                "bridge-request-id",
                &refused_id,
            ),
            "bridge-purpose",
            "NO-SUCH-PURPOSE",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let refused: Vec<serde_json::Value> = captured
        .events()
        .into_iter()
        .filter(|event| {
            event["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("call refused"))
        })
        .filter(|event| event["span"]["request_id"] == refused_id.as_str())
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["span"]["name"], "call");
    assert_eq!(
        refused[0]["span"]["method"],
        "/govbridge.civilregistry.v1.CivilRegistry/GetPerson"
    );
    assert_eq!(refused[0]["fields"]["bridge_error"], "bad-header");

    // No personal data: the NIN in the request is nowhere in the logs.
    let everything = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!everything.contains("1001199012345"));
    bed.stop().await;
}
