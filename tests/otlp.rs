//! Span export over OTLP/gRPC: the gateway's spans reach a collector in the
//! caller's trace, with its flags, and the backend's parent is the
//! gateway's call span; a trace the caller does not sample is not
//! exported.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use govbridge::config::OtlpConfig;
use govbridge::proto::civilregistry::v1::GetPersonRequest;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::opentelemetry::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use govbridge::proto::opentelemetry::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use govbridge::proto::opentelemetry::common::v1::any_value;
use govbridge::proto::opentelemetry::trace::v1::{Span, span, status};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use support::probe::Probe;
use support::{Bed, with_header};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing_subscriber::prelude::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// A trace its caller does not sample (flags `00`).
const UNSAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
const UNSAMPLED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// An OTLP collector that hands over what it receives.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A collector on a port of its own, plain HTTP/2 as OTLP receivers listen.
async fn collector() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let service =
                TowerToHyperService::new(TraceServiceServer::new(Collector(sender.clone())));
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (address, receiver)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

fn string_attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attribute(span, key)? {
        any_value::Value::StringValue(value) => Some(value),
        _ => None,
    }
}

/// Spans received until `done` holds of them all.
async fn spans_until(
    received: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    done: impl Fn(&[Span]) -> bool,
) -> Vec<Span> {
    let mut spans = Vec::new();
    while !done(&spans) {
        let request = tokio::time::timeout(Duration::from_secs(30), received.recv())
            .await
            .expect("the collector received nothing for 30 s")
            .unwrap();
        for resource in request.resource_spans {
            let name = resource
                .resource
                .as_ref()
                .and_then(|resource| resource.attributes.first())
                .map(|attribute| attribute.key.clone());
            assert_eq!(name.as_deref(), Some("service.name"));
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    spans
}

#[tokio::test]
async fn spans_reach_the_collector_in_the_callers_trace() {
    let (address, mut received) = collector().await;
    let config = OtlpConfig {
        endpoint: address.to_string().parse().unwrap(),
        service_name: "govbridge-test".to_owned(),
    };
    // This test binary's only subscriber.
    tracing_subscriber::registry()
        .with(govbridge::telemetry::otlp::layer(&config, "test").unwrap())
        .init();

    let probe = Probe::default();
    let bed = Bed::with_probe(&probe).await;
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    // First, a trace its caller does not sample: none of its spans is
    // exported, and the spans of the calls after it come after them in
    // the one queue, so their arrival means these were never sent.
    let person = |purpose: &str| {
        with_header(
            tonic::Request::new(GetPersonRequest {
                nin: "1001199012345".to_owned(),
            }),
            "bridge-purpose",
            purpose,
        )
    };
    let unsampled = with_header(person("KYC"), "traceparent", UNSAMPLED);
    registry.get_person(unsampled).await.unwrap();
    let traced = with_header(person("KYC"), "traceparent", TRACEPARENT);
    registry.get_person(traced).await.unwrap();
    // A refused call: its span ends in error, in a trace of its own.
    let status = registry
        .get_person(person("NOT-A-PURPOSE"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let calls = |spans: &[Span]| spans.iter().filter(|span| span.name == "call").count();
    let spans = spans_until(&mut received, |spans| {
        calls(spans) >= 2 && spans.iter().any(|span| span.name == "upstream")
    })
    .await;

    assert!(
        spans
            .iter()
            .all(|span| hex(&span.trace_id) != UNSAMPLED_TRACE_ID),
        "an unsampled trace was exported: {spans:#?}"
    );
    let traced: Vec<&Span> = spans
        .iter()
        .filter(|span| hex(&span.trace_id) == TRACE_ID)
        .collect();
    let call = traced
        .iter()
        .find(|span| span.name == "call")
        .expect("no call span in the caller's trace");
    assert_eq!(hex(&call.parent_span_id), CALLER_SPAN);
    assert_eq!(call.kind, i32::from(span::SpanKind::Server));
    // Sampled, as the caller said; its parent is remote (the caller's).
    assert_eq!(call.flags, 0x301);
    assert!(call.end_time_unix_nano >= call.start_time_unix_nano);
    assert_eq!(
        string_attribute(call, "method"),
        Some("/govbridge.civilregistry.v1.CivilRegistry/GetPerson")
    );
    assert_eq!(
        attribute(call, "rpc.grpc.status_code"),
        Some(&any_value::Value::IntValue(0))
    );
    assert_eq!(
        call.status.as_ref().map(|status| status.code),
        Some(i32::from(status::StatusCode::Unset))
    );

    // The backend's parent is the gateway's call span, with the caller's
    // flags: an unsampled trace stays unsampled.
    let traceparent = |call: usize| {
        probe.seen()[call]
            .metadata
            .get("traceparent")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    let unsampled_upstream = traceparent(0);
    assert!(
        unsampled_upstream.starts_with(&format!("00-{UNSAMPLED_TRACE_ID}-"))
            && unsampled_upstream.ends_with("-00"),
        "{unsampled_upstream}"
    );
    let upstream = traceparent(1);
    assert_eq!(upstream, format!("00-{TRACE_ID}-{}-01", hex(&call.span_id)));

    // The steps are children of the call span.
    for name in ["policy", "exchange_log", "upstream"] {
        let step = traced
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| panic!("no {name} span in {traced:#?}"));
        assert_eq!(step.parent_span_id, call.span_id, "{name}");
        // Sampled, its parent in this process.
        assert_eq!(step.flags, 0x101, "{name}");
        assert_ne!(step.span_id, call.span_id, "{name}");
        assert!(
            step.start_time_unix_nano >= call.start_time_unix_nano,
            "{name}"
        );
    }

    let refused = spans
        .iter()
        .find(|span| span.name == "call" && hex(&span.trace_id) != TRACE_ID)
        .expect("no span for the refused call");
    assert!(
        refused.parent_span_id.is_empty(),
        "a trace started here is a root"
    );
    assert_eq!(refused.flags, 0x101, "a trace started here is sampled");
    let status = refused.status.as_ref().unwrap();
    assert_eq!(status.code, i32::from(status::StatusCode::Error));
    assert_eq!(status.message, "bad-header");
    assert_eq!(
        attribute(refused, "rpc.grpc.status_code"),
        Some(&any_value::Value::IntValue(
            tonic::Code::InvalidArgument as i64
        ))
    );
}
