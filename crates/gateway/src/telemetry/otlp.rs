//! OTLP trace export: the gateway's spans, sent to an OpenTelemetry
//! collector over gRPC.
//!
//! A [`tracing_subscriber`] layer turns each `call` span, and the spans
//! opened inside it (`policy`, `exchange_log`, `upstream`), into OTLP spans
//! in the caller's trace. The `call` span carries the ids the gateway
//! already uses on the wire ([`crate::wire::trace_context::TraceContext`]): its span id
//! is the parent the backend sees in `traceparent`, so a collector joins
//! caller, gateway and backend into one trace.
//!
//! The caller's trace flags go with its spans: a call whose
//! `traceparent` says its trace is not sampled is not exported (the
//! parent-based sampling OpenTelemetry's SDKs default to), though its
//! backend still gets the trace with its flags.
//!
//! Finished spans go through a bounded queue to an exporter thread that
//! sends them in batches; when the queue is full (the collector is slow or
//! down), or a batch cannot be sent, spans are dropped and counted
//! ([`spans_dropped`]), and calls never wait. Without an
//! endpoint the layer is not installed and costs nothing.
//!
//! Written against the OTLP protobufs directly (`proto/opentelemetry/`)
//! rather than with the OpenTelemetry SDK: the gateway needs one exporter
//! and its own span ids, not the SDK's context machinery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::config::OtlpConfig;
use crate::net::client::Channel;
use crate::proto::opentelemetry::collector::trace::v1::ExportTraceServiceRequest;
use crate::proto::opentelemetry::collector::trace::v1::trace_service_client::TraceServiceClient;
use crate::proto::opentelemetry::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value,
};
use crate::proto::opentelemetry::resource::v1::Resource;
use crate::proto::opentelemetry::trace::v1::{ResourceSpans, ScopeSpans, Span, span, status};
use crate::wire::trace_context::{random, unhex};

/// Finished spans waiting for the exporter; beyond this, spans are dropped.
const QUEUE: usize = 8192;

/// Spans not exported since the process started: the queue was full, or
/// their batch could not be sent. One exporter per process, as one
/// subscriber.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Spans not exported since the process started
/// (`govbridge_otlp_spans_dropped_total`).
pub fn spans_dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// `Span.flags`: the W3C trace flags in bits 0 to 7 ...
const TRACE_FLAGS: u32 = 0xff;
/// ... bit 0 of which says the trace is sampled ...
const SAMPLED: u32 = 0x01;
/// ... and whether the span's parent is in another process: known ...
const HAS_IS_REMOTE: u32 = 0x100;
/// ... and so.
const IS_REMOTE: u32 = 0x200;

/// Spans per export request.
const BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The layer, filtered to the gateway's own spans: other crates' spans and
/// all events are never seen by it.
pub type OtlpLayer<S> = Filtered<SpanExporter, FilterFn, S>;

/// Starts the exporter thread and returns the layer that feeds it.
pub fn layer<S>(config: &OtlpConfig, instance: &str) -> std::io::Result<OtlpLayer<S>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let (sender, receiver) = mpsc::channel(QUEUE);
    let exporter = Exporter {
        endpoint: config.endpoint.clone(),
        resource: Resource {
            attributes: vec![
                attribute("service.name", config.service_name.as_str()),
                attribute("service.instance.id", instance),
                attribute("service.version", env!("CARGO_PKG_VERSION")),
            ],
            dropped_attributes_count: 0,
        },
    };
    std::thread::Builder::new()
        .name("otlp-export".to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(exporter.run(receiver)),
                Err(error) => tracing::error!(%error, "OTLP export could not start"),
            }
        })?;
    let filter: FilterFn = FilterFn::new(is_gateway_span);
    Ok(SpanExporter { spans: sender }.with_filter(filter))
}

/// Turns finished spans under a `call` into OTLP spans.
#[derive(Debug)]
pub struct SpanExporter {
    spans: mpsc::Sender<Span>,
}

/// An exported span while it is open, kept in the span's extensions.
struct Open(Span);

impl<S> Layer<S> for SpanExporter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let Some(current) = context.span(id) else {
            return;
        };
        let name = attributes.metadata().name();
        let mut open = Span {
            name: name.to_owned(),
            kind: match name {
                "call" => span::SpanKind::Server,
                "upstream" => span::SpanKind::Client,
                _ => span::SpanKind::Internal,
            }
            .into(),
            start_time_unix_nano: crate::unix_time::nanos(SystemTime::now()),
            ..Span::default()
        };
        if name == "call" {
            open.attributes.push(attribute("rpc.system", "grpc"));
        } else {
            // Only spans inside an exported call are exported, in the
            // call's trace.
            let parent = current.parent();
            let extensions = parent.as_ref().map(|parent| parent.extensions());
            let Some(Open(parent)) = extensions.as_ref().and_then(|ext| ext.get::<Open>()) else {
                return;
            };
            open.trace_id.clone_from(&parent.trace_id);
            open.parent_span_id.clone_from(&parent.span_id);
            open.flags = (parent.flags & TRACE_FLAGS) | HAS_IS_REMOTE;
            open.span_id = random::<8>().to_vec();
        }
        attributes.record(&mut Fields(&mut open));
        if name == "call" {
            // Not in a trace its caller does not sample.
            if open.flags & SAMPLED == 0 {
                return;
            }
            // A root until its `parent_id`, the caller's span, is recorded.
            open.flags |= HAS_IS_REMOTE;
        }
        if open.trace_id.len() == 16 && open.span_id.len() == 8 {
            current.extensions_mut().insert(Open(open));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        if let Some(current) = context.span(id)
            && let Some(Open(open)) = current.extensions_mut().get_mut::<Open>()
        {
            values.record(&mut Fields(open));
        }
    }

    fn on_close(&self, id: Id, context: Context<'_, S>) {
        let Some(current) = context.span(&id) else {
            return;
        };
        let Some(Open(mut finished)) = current.extensions_mut().remove::<Open>() else {
            return;
        };
        finished.end_time_unix_nano = crate::unix_time::nanos(SystemTime::now());
        if self.spans.try_send(finished).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads a span's fields: the call's ids, its gRPC status, and the rest as
/// attributes.
struct Fields<'a>(&'a mut Span);

impl Fields<'_> {
    fn set(&mut self, key: &str, value: any_value::Value) {
        let attributes = &mut self.0.attributes;
        let value = Some(AnyValue { value: Some(value) });
        match attributes.iter_mut().find(|attribute| attribute.key == key) {
            Some(attribute) => attribute.value = value,
            None => attributes.push(KeyValue {
                key: key.to_owned(),
                value,
            }),
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.0.trace_id = unhex::<16>(value).map(Vec::from).unwrap_or_default(),
            "span_id" => self.0.span_id = unhex::<8>(value).map(Vec::from).unwrap_or_default(),
            "parent_id" => {
                self.0.parent_span_id = unhex::<8>(value).map(Vec::from).unwrap_or_default();
                if !self.0.parent_span_id.is_empty() {
                    self.0.flags |= HAS_IS_REMOTE | IS_REMOTE;
                }
            }
            "bridge_error" => {
                self.set(
                    "govbridge.bridge_error",
                    any_value::Value::StringValue(value.to_owned()),
                );
                self.0.status.get_or_insert_default().message = value.to_owned();
            }
            name => self.set(name, any_value::Value::StringValue(value.to_owned())),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "trace_flags" {
            let flags = u32::try_from(value).unwrap_or_default() & TRACE_FLAGS;
            self.0.flags = (self.0.flags & !TRACE_FLAGS) | flags;
        } else if field.name() == "grpc_status" {
            self.set("rpc.grpc.status_code", any_value::Value::IntValue(value));
            let code = if value == 0 {
                status::StatusCode::Unset
            } else {
                status::StatusCode::Error
            };
            self.0.status.get_or_insert_default().code = code.into();
        } else {
            self.set(field.name(), any_value::Value::IntValue(value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), any_value::Value::BoolValue(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), any_value::Value::DoubleValue(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// Sends batches of finished spans to the collector, reconnecting as
/// needed. A batch that cannot be sent is dropped: traces are for
/// diagnosis, the exchange log is the record.
struct Exporter {
    endpoint: http::uri::Authority,
    resource: Resource,
}

impl Exporter {
    async fn run(self, mut spans: mpsc::Receiver<Span>) {
        let mut client = None;
        let mut failing = false;
        let mut reported_drops = 0;
        while let Some(first) = spans.recv().await {
            let mut batch = vec![first];
            let flush_at = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(flush_at, spans.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            let count = batch.len();
            match tokio::time::timeout(EXPORT_TIMEOUT, self.send(&mut client, batch)).await {
                Ok(Ok(())) if failing => {
                    failing = false;
                    tracing::info!(collector = %self.endpoint, "OTLP export resumed");
                }
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    DROPPED.fetch_add(count as u64, Ordering::Relaxed);
                    client = None;
                    if !failing {
                        failing = true;
                        tracing::warn!(collector = %self.endpoint, %error, spans = count,
                            "OTLP export failed; spans are dropped until the collector answers");
                    }
                }
                Err(_) => {
                    DROPPED.fetch_add(count as u64, Ordering::Relaxed);
                    client = None;
                    if !failing {
                        failing = true;
                        tracing::warn!(collector = %self.endpoint, spans = count,
                            "OTLP export timed out; spans are dropped until the collector answers");
                    }
                }
            }
            let dropped = DROPPED.load(Ordering::Relaxed);
            if dropped > reported_drops && !failing {
                tracing::warn!(
                    dropped = dropped - reported_drops,
                    "OTLP export queue full: spans dropped"
                );
            }
            reported_drops = dropped;
        }
    }

    async fn send(
        &self,
        client: &mut Option<TraceServiceClient<Channel>>,
        spans: Vec<Span>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let client = match client {
            Some(client) => client,
            None => client.insert(TraceServiceClient::new(
                Channel::connect_plaintext(self.endpoint.clone()).await?,
            )),
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "govbridge".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        client.export(request).await?;
        Ok(())
    }
}

/// The spans the exporter sees: the gateway's, at any level.
fn is_gateway_span(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target().starts_with("govbridge")
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch the collector does not take is counted as dropped, for
    /// operators to see (`govbridge_otlp_spans_dropped_total`).
    #[tokio::test]
    async fn spans_a_collector_does_not_take_are_counted() {
        // A port nothing listens on: the connection is refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = closed.local_addr().unwrap().to_string().parse().unwrap();
        drop(closed);
        let exporter = Exporter {
            endpoint,
            resource: Resource::default(),
        };
        let (sender, receiver) = mpsc::channel(4);
        for _ in 0..3 {
            sender.send(Span::default()).await.unwrap();
        }
        drop(sender);
        let before = spans_dropped();
        exporter.run(receiver).await;
        assert_eq!(spans_dropped() - before, 3);
    }
}
