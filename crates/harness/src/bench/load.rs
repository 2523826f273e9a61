//! The load generator: closed and open loops of echo calls over many
//! HTTP/2 connections, each with its own member certificate.
//!
//! Closed loop: N callers, each sending its next call when the last one
//! ends. Open loop: calls sent at fixed intended times, whatever happens to
//! the ones before, each latency measured from its intended send time, so
//! that a stall shows up in every call it delays (no coordinated omission).
//! Only calls that start after the warm-up are counted. Every call ends in
//! a grpc-status, counted by code; latencies of successful calls go into an
//! HDR histogram (microseconds, 3 significant digits).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rustls::ClientConfig;
use tokio::time::Instant;
use tonic::Code;

use gateway::net::client::Channel;
use gateway::proto::bench::v1::echo_client::EchoClient;
use gateway::proto::bench::v1::{Payload, StreamRequest};

/// Messages of the server-streaming scenario.
const STREAM_MESSAGES: u32 = 1_000;
/// Size of each streamed message.
const STREAM_MESSAGE_SIZE: u32 = 100;
/// Round trips of one bidirectional call.
const BIDI_ROUND_TRIPS: usize = 10;
const BIDI_MESSAGE_SIZE: usize = 1024;
/// An open-loop send later than this after its intended time is counted
/// as late: the generator fell behind (tokio timers tick by the millisecond).
const LATE_SEND: Duration = Duration::from_millis(5);
/// The largest latency the histograms hold: a minute, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What one call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Unary, 100-byte messages.
    #[value(name = "unary-100")]
    Unary100,
    /// Unary, 1 KiB messages.
    #[value(name = "unary-1k")]
    Unary1k,
    /// Unary, 64 KiB messages.
    #[value(name = "unary-64k")]
    Unary64k,
    /// Server streaming: 1,000 messages of 100 bytes per call.
    #[value(name = "stream-1000")]
    Stream1000,
    /// Bidirectional: 10 round trips of 1 KiB per call.
    #[value(name = "bidi")]
    Bidi,
    /// Unary, 1 KiB messages, as JSON (the gateway transcodes): `POST
    /// /govbridge.bench.v1.Echo/Unary` over HTTP/2. Gateways only.
    #[value(name = "json-1k")]
    Json1k,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Unary100 => "unary-100",
            Self::Unary1k => "unary-1k",
            Self::Unary64k => "unary-64k",
            Self::Stream1000 => "stream-1000",
            Self::Bidi => "bidi",
            Self::Json1k => "json-1k",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Unary100 => "unary, 100 B",
            Self::Unary1k => "unary, 1 KiB",
            Self::Unary64k => "unary, 64 KiB",
            Self::Stream1000 => "server stream, 1,000 x 100 B per call",
            Self::Bidi => "bidi stream, 10 round trips of 1 KiB per call",
            Self::Json1k => "unary, 1 KiB, as JSON",
        }
    }
}

/// How calls are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pacing {
    /// `callers` concurrent callers, each calling again as soon as its
    /// call ends.
    Closed { callers: usize },
    /// `rate` calls per second at fixed intended times.
    Open { rate: u64 },
}

impl std::fmt::Display for Pacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed { callers } => write!(f, "closed loop, {callers} callers"),
            Self::Open { rate } => write!(f, "open loop, {rate} calls/s"),
        }
    }
}

/// One measurement: what to send, how, for how long.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    pub scenario: Scenario,
    pub pacing: Pacing,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Where the calls go.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub address: SocketAddr,
    /// The name its server certificate must carry.
    pub server_name: String,
    /// The process whose CPU time and memory are reported.
    pub pid: Option<u32>,
}

/// What a measurement saw.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Latencies of successful calls, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Calls by final grpc-status (canonical names).
    pub statuses: BTreeMap<&'static str, u64>,
    /// Messages received by successful calls.
    pub messages: u64,
    /// Open loop: calls that left more than 5 ms after their intended time because the
    /// generator itself fell behind.
    pub late_sends: u64,
    /// The measured window.
    pub elapsed: Duration,
    /// The target process's usage over the measured window (CPU) and since
    /// it started (peak RSS).
    pub usage: Option<crate::bench::process::ProcessUsage>,
}

impl LoadOutcome {
    pub fn calls(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn errors(&self) -> u64 {
        self.calls() - self.statuses.get("OK").copied().unwrap_or(0)
    }
}

/// Opens `count` connections to `target`, connection `i` with `tls[i %
/// tls.len()]`, all at once.
pub async fn connect(
    target: &Target,
    tls: &[Arc<ClientConfig>],
    count: usize,
) -> anyhow::Result<Vec<Channel>> {
    anyhow::ensure!(!tls.is_empty(), "no client certificate to connect with");
    let mut opening = tokio::task::JoinSet::new();
    for index in 0..count {
        let (address, name) = (target.address, target.server_name.clone());
        let tls = tls[index % tls.len()].clone();
        opening.spawn(async move { (index, Channel::connect(address, &name, tls).await) });
    }
    let mut channels: Vec<Option<Channel>> = vec![None; count];
    while let Some(opened) = opening.join_next().await {
        let (index, channel) = opened?;
        let channel = channel
            .map_err(|error| anyhow::anyhow!("{error}"))
            .with_context(|| format!("connecting to {} at {}", target.name, target.address))?;
        channels[index] = Some(channel);
    }
    Ok(channels.into_iter().flatten().collect())
}

/// Runs `plan` against `target`; prints a progress line on stderr when
/// `progress` is set and stderr is a terminal.
pub async fn run(
    target: &Target,
    tls: &[Arc<ClientConfig>],
    plan: &LoadPlan,
    progress: bool,
) -> anyhow::Result<LoadOutcome> {
    run_watched(target, tls, plan, progress, None).await
}

/// [`run`], also counting every measured call into `windows`, which
/// whoever watches the run empties as often as it reports.
pub async fn run_watched(
    target: &Target,
    tls: &[Arc<ClientConfig>],
    plan: &LoadPlan,
    progress: bool,
    windows: Option<Windows>,
) -> anyhow::Result<LoadOutcome> {
    // Each run from a disk with nothing left to write (see `write_out`).
    tokio::task::spawn_blocking(crate::bench::process::write_out).await?;
    let channels = connect(target, tls, plan.connections.max(1)).await?;
    let tally = Arc::new(Tally {
        windows,
        ..Tally::default()
    });
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;

    // The target's CPU time is read when measuring starts and ends.
    let usage_at_start = target.pid.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from).await;
            crate::bench::process::ProcessUsage::read(pid).ok()
        })
    });
    // A line rewritten in place is for a terminal; a pipe or a file gets
    // only the results.
    let progress = progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let reporter = progress.then(|| {
        tokio::spawn(report_progress(
            target.name.clone(),
            tally.clone(),
            measure_from,
            plan.duration,
        ))
    });

    let late_sends = match plan.pacing {
        Pacing::Closed { callers } => {
            let mut running = tokio::task::JoinSet::new();
            for caller in 0..callers {
                let channel = channels[caller % channels.len()].clone();
                let mut client = client(channel.clone());
                let (tally, scenario) = (tally.clone(), plan.scenario);
                running.spawn(async move {
                    tokio::time::sleep_until(start).await;
                    let mut histogram = histogram();
                    loop {
                        let sent = Instant::now();
                        if sent >= end {
                            break;
                        }
                        let result = call(&mut client, &channel, scenario).await;
                        if sent >= measure_from {
                            tally.record(&result, sent.elapsed(), &mut histogram);
                        }
                    }
                    tally.merge(&histogram);
                });
            }
            while let Some(done) = running.join_next().await {
                done?;
            }
            0
        }
        Pacing::Open { rate } => {
            anyhow::ensure!(rate > 0, "the open loop needs a rate above 0");
            let interval = Duration::from_nanos(1_000_000_000 / rate);
            let mut running = tokio::task::JoinSet::new();
            let mut late_sends = 0;
            for n in 0u32.. {
                let intended = start + interval * n;
                if intended >= end {
                    break;
                }
                tokio::time::sleep_until(intended).await;
                if intended >= measure_from && intended.elapsed() > LATE_SEND {
                    late_sends += 1;
                }
                let channel = channels[n as usize % channels.len()].clone();
                let mut client = client(channel.clone());
                let (tally, scenario) = (tally.clone(), plan.scenario);
                running.spawn(async move {
                    let result = call(&mut client, &channel, scenario).await;
                    if intended >= measure_from {
                        let mut histogram = histogram();
                        tally.record(&result, intended.elapsed(), &mut histogram);
                        tally.merge(&histogram);
                    }
                });
                // Keep the set from growing for the whole run.
                while running.try_join_next().is_some() {}
            }
            while let Some(done) = running.join_next().await {
                done?;
            }
            late_sends
        }
    };
    let elapsed = plan.duration;
    tally.done.store(true, Ordering::Relaxed);
    if let Some(reporter) = reporter {
        let _ = reporter.await;
    }
    let usage = match (target.pid, usage_at_start) {
        (Some(pid), Some(at_start)) => {
            let before = at_start.await.ok().flatten();
            let after = crate::bench::process::ProcessUsage::read(pid).ok();
            before
                .zip(after)
                .map(|(before, after)| crate::bench::process::ProcessUsage {
                    cpu_seconds: after.cpu_seconds - before.cpu_seconds,
                    ..after
                })
        }
        _ => None,
    };
    let tally = Arc::try_unwrap(tally).unwrap_or_else(|shared| shared.snapshot());
    let (latency_us, statuses, messages) = tally.into_parts();
    Ok(LoadOutcome {
        latency_us,
        statuses,
        messages,
        late_sends,
        elapsed,
        usage,
    })
}

/// Opens `count` connections to `target` and makes one call on each, then
/// leaves them open and idle; returns them (closing them is dropping
/// them).
pub async fn idle_connections(
    target: &Target,
    tls: &[Arc<ClientConfig>],
    count: usize,
) -> anyhow::Result<(Vec<Channel>, BTreeMap<&'static str, u64>)> {
    let channels = connect(target, tls, count).await?;
    let mut statuses = BTreeMap::new();
    let mut calls = tokio::task::JoinSet::new();
    for channel in &channels {
        let (channel, mut client) = (channel.clone(), client(channel.clone()));
        calls.spawn(async move { call(&mut client, &channel, Scenario::Unary100).await });
    }
    while let Some(result) = calls.join_next().await {
        *statuses
            .entry(code_name(result?.err().unwrap_or(Code::Ok)))
            .or_default() += 1;
    }
    Ok((channels, statuses))
}

fn client(channel: Channel) -> EchoClient<Channel> {
    EchoClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

fn histogram() -> Histogram<u64> {
    // Bounds and precision are constants within hdrhistogram's range.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

/// The metadata every benchmark call carries: what the dev rules require
/// (a purpose, an agent, a reason). Direct calls and nginx carry it too.
fn request<T>(message: T) -> tonic::Request<T> {
    use gateway::wire::headers;
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert(
        headers::BRIDGE_PURPOSE,
        tonic::metadata::MetadataValue::from_static(crate::bench::setup::PURPOSE),
    );
    metadata.insert(
        headers::BRIDGE_REASON,
        tonic::metadata::MetadataValue::from_static("benchmark"),
    );
    metadata.insert(
        headers::BRIDGE_USER_ID,
        tonic::metadata::MetadataValue::from_static("bench"),
    );
    request
}

/// One call of `scenario` on `channel` (through `client`, for gRPC): the
/// messages received, or the final status.
async fn call(
    client: &mut EchoClient<Channel>,
    channel: &Channel,
    scenario: Scenario,
) -> Result<u64, Code> {
    let unary = |size: usize| Payload {
        body: vec![0x5a; size],
    };
    match scenario {
        Scenario::Unary100 | Scenario::Unary1k | Scenario::Unary64k => {
            let size = match scenario {
                Scenario::Unary100 => 100,
                Scenario::Unary1k => 1024,
                _ => 64 << 10,
            };
            client
                .unary(request(unary(size)))
                .await
                .map(|_| 1)
                .map_err(|status| status.code())
        }
        Scenario::Json1k => json_call(channel.clone()).await,
        Scenario::Stream1000 => {
            let mut stream = client
                .server_stream(request(StreamRequest {
                    count: STREAM_MESSAGES,
                    size: STREAM_MESSAGE_SIZE,
                }))
                .await
                .map_err(|status| status.code())?
                .into_inner();
            let mut received = 0;
            while let Some(_message) = stream.message().await.map_err(|status| status.code())? {
                received += 1;
            }
            if received == u64::from(STREAM_MESSAGES) {
                Ok(received)
            } else {
                Err(Code::DataLoss)
            }
        }
        Scenario::Bidi => {
            let (outbox, queue) = tokio::sync::mpsc::channel(1);
            outbox
                .send(unary(BIDI_MESSAGE_SIZE))
                .await
                .map_err(|_| Code::Internal)?;
            let mut answers = client
                .bidi(request(Outbox(queue)))
                .await
                .map_err(|status| status.code())?
                .into_inner();
            let mut received = 0;
            let mut outbox = Some(outbox);
            while let Some(_answer) = answers.message().await.map_err(|status| status.code())? {
                received += 1;
                if received < BIDI_ROUND_TRIPS {
                    if let Some(outbox) = &outbox {
                        outbox
                            .send(unary(BIDI_MESSAGE_SIZE))
                            .await
                            .map_err(|_| Code::Internal)?;
                    }
                } else {
                    // Ends our side: the server ends its stream.
                    outbox = None;
                }
            }
            if received == BIDI_ROUND_TRIPS {
                Ok(received as u64)
            } else {
                Err(Code::DataLoss)
            }
        }
    }
}

/// A 1 KiB `Payload` in JSON: its bytes in base64.
static JSON_1K: std::sync::LazyLock<bytes::Bytes> = std::sync::LazyLock::new(|| {
    // 0x5a 0x5a 0x5a is "Wlpa"; 1,024 bytes are 341 such groups and one
    // byte, "Wg==".
    bytes::Bytes::from(format!("{{\"body\":\"{}Wg==\"}}", "Wlpa".repeat(341)))
});

/// A unary echo call as JSON: the answer read whole, the status from the
/// HTTP status.
async fn json_call(mut channel: Channel) -> Result<u64, Code> {
    use gateway::wire::headers;
    use http_body_util::BodyExt;
    use tower::{Service, ServiceExt};
    let request = http::Request::post("/govbridge.bench.v1.Echo/Unary")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(headers::BRIDGE_PURPOSE, crate::bench::setup::PURPOSE)
        .header(headers::BRIDGE_REASON, "benchmark")
        .header(headers::BRIDGE_USER_ID, "bench")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            JSON_1K.clone(),
        )))
        .map_err(|_| Code::Internal)?;
    let response = channel
        .ready()
        .await
        .map_err(|_| Code::Unavailable)?
        .call(request)
        .await
        .map_err(|_| Code::Unavailable)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| Code::Unavailable)?
        .to_bytes();
    match status.as_u16() {
        200 if body.len() >= JSON_1K.len() => Ok(1),
        200 => Err(Code::DataLoss),
        400 => Err(Code::InvalidArgument),
        403 => Err(Code::PermissionDenied),
        404 | 405 => Err(Code::NotFound),
        415 | 501 => Err(Code::Unimplemented),
        429 => Err(Code::ResourceExhausted),
        503 => Err(Code::Unavailable),
        504 => Err(Code::DeadlineExceeded),
        _ => Err(Code::Unknown),
    }
}

/// The request side of a bidirectional call, fed one message at a time.
struct Outbox(tokio::sync::mpsc::Receiver<Payload>);

impl tokio_stream::Stream for Outbox {
    type Item = Payload;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Payload>> {
        self.get_mut().0.poll_recv(cx)
    }
}

/// The calls of a running load since someone last looked: what a long run
/// reports as it goes.
#[derive(Debug, Clone, Default)]
pub struct Windows(Arc<Mutex<Option<Window>>>);

/// The calls that ended in one window of time.
#[derive(Debug, Clone)]
pub struct Window {
    /// Calls ended, whatever their status.
    pub calls: u64,
    /// Calls that ended in another status than OK.
    pub errors: u64,
    /// Latencies of the successful ones, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl Windows {
    /// The calls since the last `take`, and a new window for the next ones.
    pub fn take(&self) -> Window {
        let mut current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        current.take().unwrap_or_else(Window::new)
    }

    fn record(&self, result: &Result<u64, Code>, latency: Duration) {
        let mut current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let window = current.get_or_insert_with(Window::new);
        window.calls += 1;
        match result {
            Ok(_) => window
                .latency_us
                .saturating_record(latency.as_micros().max(1) as u64),
            Err(_) => window.errors += 1,
        }
    }
}

impl Window {
    fn new() -> Self {
        Self {
            calls: 0,
            errors: 0,
            latency_us: histogram(),
        }
    }
}

/// What the callers saw, shared: counters for the progress line, the
/// merged histogram and status counts for the result.
#[derive(Debug, Default)]
struct Tally {
    calls: AtomicU64,
    errors: AtomicU64,
    done: AtomicBool,
    merged: Mutex<Merged>,
    windows: Option<Windows>,
}

#[derive(Debug, Default)]
struct Merged {
    histogram: Option<Histogram<u64>>,
    statuses: BTreeMap<&'static str, u64>,
    messages: u64,
}

impl Tally {
    fn record(
        &self,
        result: &Result<u64, Code>,
        latency: Duration,
        histogram: &mut Histogram<u64>,
    ) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(windows) = &self.windows {
            windows.record(result, latency);
        }
        let mut merged = self.merged.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(messages) => {
                histogram.saturating_record(latency.as_micros().max(1) as u64);
                merged.messages += messages;
                *merged.statuses.entry("OK").or_default() += 1;
            }
            Err(code) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                *merged.statuses.entry(code_name(*code)).or_default() += 1;
            }
        }
    }

    fn merge(&self, part: &Histogram<u64>) {
        let mut merged = self.merged.lock().unwrap_or_else(PoisonError::into_inner);
        let total = merged.histogram.get_or_insert_with(histogram);
        // Same bounds everywhere, so adding cannot fail.
        let _ = total.add(part);
    }

    fn snapshot(&self) -> Self {
        let merged = self.merged.lock().unwrap_or_else(PoisonError::into_inner);
        Self {
            merged: Mutex::new(Merged {
                histogram: merged.histogram.clone(),
                statuses: merged.statuses.clone(),
                messages: merged.messages,
            }),
            ..Self::default()
        }
    }

    fn into_parts(self) -> (Histogram<u64>, BTreeMap<&'static str, u64>, u64) {
        let merged = self
            .merged
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        (
            merged.histogram.unwrap_or_else(histogram),
            merged.statuses,
            merged.messages,
        )
    }
}

/// A line on stderr, rewritten every second: elapsed, calls, errors.
async fn report_progress(
    name: String,
    tally: Arc<Tally>,
    measure_from: Instant,
    duration: Duration,
) {
    use std::io::Write;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    while !tally.done.load(Ordering::Relaxed) {
        ticker.tick().await;
        let now = Instant::now();
        let phase = if now < measure_from {
            "warm-up".to_owned()
        } else {
            format!(
                "{:>4.1}/{:.0} s",
                (now - measure_from)
                    .as_secs_f64()
                    .min(duration.as_secs_f64()),
                duration.as_secs_f64()
            )
        };
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r  {name:<14} {phase:<10} {:>9} calls {:>6} errors ",
            tally.calls.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed)
        );
        let _ = stderr.flush();
    }
    let _ = writeln!(std::io::stderr());
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
