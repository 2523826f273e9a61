//! The gateway's metrics, exposed as Prometheus text on the admin endpoint.
//!
//! Label values come from the configuration (registered members, published
//! methods, the fixed set of `bridge-error` kinds), never from the wire
//! alone, so the number of series stays bounded whatever callers send.
//! Recording a call takes a read lock and atomic adds; a new series takes
//! the write lock once.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 15] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations with `BUCKETS`.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket, the last one for +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    /// The sum, in microseconds: some 584,000 years of durations, where
    /// nanoseconds would wrap within weeks of a gateway holding ten
    /// thousand long streams open.
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        // Rounded: no bias for calls of a few hundred microseconds.
        let micros = u64::try_from((duration.as_nanos() + 500) / 1_000).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// How many durations it counted, and their sum.
    pub fn total(&self) -> (u64, Duration) {
        let micros = self.sum_micros.load(Ordering::Relaxed);
        (
            self.count.load(Ordering::Relaxed),
            Duration::from_micros(micros),
        )
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (index, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[index].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(
            out,
            "{name}_count{braced} {}",
            self.count.load(Ordering::Relaxed)
        );
    }
}

/// Series of one metric, by label values.
#[derive(Debug)]
struct Family<K, V> {
    series: RwLock<BTreeMap<K, Arc<V>>>,
}

impl<K, V> Default for Family<K, V> {
    fn default() -> Self {
        Self {
            series: RwLock::new(BTreeMap::new()),
        }
    }
}

impl<K: Ord + Clone, V: Default> Family<K, V> {
    fn get(&self, key: &K) -> Arc<V> {
        if let Some(value) = self
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return value.clone();
        }
        self.series
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn snapshot(&self) -> Vec<(K, Arc<V>)> {
        self.series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }
}

/// Who called what, and how it ended: the labels of a forwarded call.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallLabels {
    pub caller: String,
    pub provider: String,
    pub method: String,
    /// The gRPC status code's name, e.g. `OK`, `NOT_FOUND`.
    pub code: &'static str,
}

/// A call's shape, as its method's descriptor says: the
/// `kind` label of `govbridge_call_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// One request, one response.
    Unary,
    /// Requests, responses or both streamed.
    Stream,
}

/// Everything the gateway counts.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    calls: Family<CallLabels, AtomicU64>,
    /// Total duration of forwarded unary calls, by method ...
    durations: Family<String, Histogram>,
    /// ... and of streams, apart: a stream lasts as long as its parties
    /// want, and would drown the unary calls' latency (a watch of an hour
    /// is no slow call).
    stream_durations: Family<String, Histogram>,
    /// Time to the backend's response headers, by provider.
    upstream: Family<crate::identity::MemberId, Histogram>,
    /// Calls the gateway refused or failed, by `bridge-error` kind.
    refusals: Family<&'static str, AtomicU64>,
    reloads: Family<&'static str, AtomicU64>,
    /// Polls of the directory for the global configuration, by result
    /// and, for refusals, reason.
    global_fetches: Family<(&'static str, &'static str), AtomicU64>,
    /// By partner instance (from the configuration), result and reason.
    partner_fetches: Family<(String, &'static str, &'static str), AtomicU64>,
    /// How long the last global configuration applied took to load and
    /// swap in, in microseconds.
    global_apply_us: AtomicU64,
    /// When the last reload of each result happened, seconds since the
    /// epoch.
    last_reload: Family<&'static str, AtomicU64>,
    /// Calls whose response has not ended: each is one HTTP/2 stream.
    in_flight: Arc<AtomicU64>,
    /// Calls refused by a limit, by member and `bridge-error` kind.
    limit_refusals: Family<(crate::identity::MemberId, &'static str), AtomicU64>,
    /// Refusals of a stranger's calls that the exchange log does not
    /// record: all after the first on a connection.
    unrecorded_refusals: Family<&'static str, AtomicU64>,
    /// CRLs past their next update when loaded, `refused` or `tolerated`
    /// (within their grace).
    stale_crls: Family<&'static str, AtomicU64>,
}

/// One call in flight; counted until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            calls: Family::default(),
            durations: Family::default(),
            stream_durations: Family::default(),
            upstream: Family::default(),
            refusals: Family::default(),
            reloads: Family::default(),
            global_fetches: Family::default(),
            partner_fetches: Family::default(),
            global_apply_us: AtomicU64::new(0),
            last_reload: Family::default(),
            in_flight: Arc::default(),
            limit_refusals: Family::default(),
            unrecorded_refusals: Family::default(),
            stale_crls: Family::default(),
        }
    }
}

/// What the exchange log reports, read when metrics are rendered.
#[derive(Debug, Clone, Copy)]
pub struct LogGauges<'a> {
    pub records: u64,
    pub queued: u64,
    /// A fleet's log: records past its lookups' seal.
    pub unsealed: Option<u64>,
    pub writable: bool,
    /// How long each group commit took.
    pub commits: &'a Histogram,
    /// How long the commit in progress has taken so far (zero between
    /// commits).
    pub committing: Duration,
}

impl Metrics {
    /// A call arrived; it is in flight until the guard is dropped.
    pub fn call_started(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    /// A forwarded call ended.
    pub fn call(&self, labels: &CallLabels, kind: CallKind, total: Duration) {
        self.calls.get(labels).fetch_add(1, Ordering::Relaxed);
        let durations = match kind {
            CallKind::Unary => &self.durations,
            CallKind::Stream => &self.stream_durations,
        };
        durations.get(&labels.method).observe(total);
    }

    /// A backend's response headers arrived after `elapsed`.
    pub fn upstream(&self, provider: &crate::identity::MemberId, elapsed: Duration) {
        self.upstream.get(provider).observe(elapsed);
    }

    /// The gateway refused or failed a call with `kind`.
    pub fn refusal(&self, kind: &'static str) {
        self.refusals.get(&kind).fetch_add(1, Ordering::Relaxed);
    }

    /// A limit refused a call of `member` (a registered member) with
    /// `kind`.
    pub fn limit_refusal(&self, member: &crate::identity::MemberId, kind: &'static str) {
        self.limit_refusals
            .get(&(member.clone(), kind))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A stranger's call was refused with `kind` and, not being its
    /// connection's first, not recorded in the exchange log.
    pub fn unrecorded_refusal(&self, kind: &'static str) {
        self.unrecorded_refusals
            .get(&kind)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A reload was applied (`ok`) or rejected (`failed`).
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get(&result).fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(crate::unix_time::now()).unwrap_or(0);
        self.last_reload.get(&result).store(now, Ordering::Relaxed);
    }

    /// A poll of the directory ended with `result`: `applied`,
    /// `unchanged`, `refused` (for `reason`: a bundle that fails a check,
    /// or a configuration that would not load) or `unreachable`.
    pub fn global_fetch(&self, result: &'static str, reason: &'static str) {
        self.global_fetches
            .get(&(result, reason))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A poll of followed partner `instance`'s directory, as
    /// [`Metrics::global_fetch`] counts the instance's own.
    pub fn partner_configuration_fetch(
        &self,
        instance: &str,
        result: &'static str,
        reason: &'static str,
    ) {
        self.partner_fetches
            .get(&(instance.to_owned(), result, reason))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A global configuration was applied in `took` (loaded, built and
    /// swapped in).
    pub fn global_applied(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.global_apply_us.store(micros, Ordering::Relaxed);
    }

    /// A CRL past its next update was loaded: `refused` (a failed reload)
    /// or tolerated within its grace.
    pub fn stale_crl(&self, refused: bool) {
        let outcome = if refused { "refused" } else { "tolerated" };
        self.stale_crls
            .get(&outcome)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Calls counted with `labels` so far.
    pub fn calls_with(&self, labels: &CallLabels) -> u64 {
        self.calls.get(labels).load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4), with the gauges read
    /// at render time: the exchange log's, the expiry (seconds since the
    /// epoch) of each certificate in use and the next update of each CRL.
    pub fn render(
        &self,
        log: Option<LogGauges<'_>>,
        certificates: &[(String, i64)],
        crls: &[(String, i64)],
        listener: &crate::net::ListenerStats,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        header(
            &mut out,
            "govbridge_uptime_seconds",
            "gauge",
            "Seconds since the gateway started.",
        );
        let _ = writeln!(
            out,
            "govbridge_uptime_seconds {}",
            self.started.elapsed().as_secs_f64()
        );
        header(
            &mut out,
            "govbridge_otlp_spans_dropped_total",
            "counter",
            "Spans not exported to the OTLP collector: its queue was full or the collector did \
             not take their batch (0 without [telemetry] otlp_endpoint).",
        );
        let _ = writeln!(
            out,
            "govbridge_otlp_spans_dropped_total {}",
            super::otlp::spans_dropped()
        );

        header(
            &mut out,
            "govbridge_calls_total",
            "counter",
            "Forwarded calls by caller, provider, method and final gRPC status.",
        );
        for (labels, count) in self.calls.snapshot() {
            let _ = writeln!(
                out,
                "govbridge_calls_total{{caller=\"{}\",provider=\"{}\",method=\"{}\",code=\"{}\"}} {}",
                escape(&labels.caller),
                escape(&labels.provider),
                escape(&labels.method),
                labels.code,
                count.load(Ordering::Relaxed)
            );
        }

        header(
            &mut out,
            "govbridge_call_duration_seconds",
            "histogram",
            "Duration of forwarded calls, from request to final status, by method and kind \
             (unary or stream).",
        );
        for (kind, durations) in [
            ("unary", &self.durations),
            ("stream", &self.stream_durations),
        ] {
            for (method, histogram) in durations.snapshot() {
                let labels = format!("method=\"{}\",kind=\"{kind}\"", escape(&method));
                histogram.render(&mut out, "govbridge_call_duration_seconds", &labels);
            }
        }

        header(
            &mut out,
            "govbridge_upstream_response_seconds",
            "histogram",
            "Time from forwarding a call to the backend's response headers, by provider.",
        );
        for (provider, histogram) in self.upstream.snapshot() {
            let labels = format!("provider=\"{}\"", escape(provider.as_str()));
            histogram.render(&mut out, "govbridge_upstream_response_seconds", &labels);
        }

        header(
            &mut out,
            "govbridge_refusals_total",
            "counter",
            "Calls the gateway refused or failed itself, by bridge-error kind.",
        );
        for (kind, count) in self.refusals.snapshot() {
            let _ = writeln!(
                out,
                "govbridge_refusals_total{{kind=\"{kind}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }

        header(
            &mut out,
            "govbridge_limit_refusals_total",
            "counter",
            "Calls refused by a limit (rate, calls in flight, gateway overload, message size), by member and bridge-error kind.",
        );
        for ((member, kind), count) in self.limit_refusals.snapshot() {
            let _ = writeln!(
                out,
                "govbridge_limit_refusals_total{{member=\"{}\",kind=\"{kind}\"}} {}",
                escape(member.as_str()),
                count.load(Ordering::Relaxed)
            );
        }

        header(
            &mut out,
            "govbridge_unrecorded_refusals_total",
            "counter",
            "Calls of peers that are not members, or that no policy permits anything, refused without an exchange-log record: every such call on a connection after its first.",
        );
        for (kind, count) in self.unrecorded_refusals.snapshot() {
            let _ = writeln!(
                out,
                "govbridge_unrecorded_refusals_total{{kind=\"{kind}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }

        header(
            &mut out,
            "govbridge_global_configuration_fetches_total",
            "counter",
            "Polls of the directory for the global configuration: applied, unchanged, refused \
             (with the reason: unsigned, altered, replayed, expired, invalid...) or unreachable.",
        );
        // The reason label, when there is one.
        let reason_label = |reason: &str| {
            if reason.is_empty() {
                String::new()
            } else {
                format!(",reason=\"{reason}\"")
            }
        };
        for ((result, reason), count) in self.global_fetches.snapshot() {
            let reason = reason_label(reason);
            let _ = writeln!(
                out,
                "govbridge_global_configuration_fetches_total{{result=\"{result}\"{reason}}} {}",
                count.load(Ordering::Relaxed)
            );
        }

        let partners = self.partner_fetches.snapshot();
        if !partners.is_empty() {
            header(
                &mut out,
                "govbridge_partner_configuration_fetches_total",
                "counter",
                "Polls of followed partners' directories for their global configurations, as \
                 govbridge_global_configuration_fetches_total counts the instance's own.",
            );
        }
        for ((instance, result, reason), count) in partners {
            let reason = reason_label(reason);
            let _ = writeln!(
                out,
                "govbridge_partner_configuration_fetches_total{{config_instance=\"{instance}\",\
                 result=\"{result}\"{reason}}} {}",
                count.load(Ordering::Relaxed)
            );
        }

        let applied = self.global_apply_us.load(Ordering::Relaxed);
        if applied > 0 {
            header(
                &mut out,
                "govbridge_global_configuration_last_apply_seconds",
                "gauge",
                "How long the last global configuration applied took to load, build and swap in.",
            );
            let _ = writeln!(
                out,
                "govbridge_global_configuration_last_apply_seconds {}",
                applied as f64 / 1e6
            );
        }

        header(
            &mut out,
            "govbridge_reloads_total",
            "counter",
            "Configuration reloads, applied (ok) or rejected (failed).",
        );
        for (result, count) in self.reloads.snapshot() {
            let _ = writeln!(
                out,
                "govbridge_reloads_total{{result=\"{result}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }

        header(
            &mut out,
            "govbridge_connections_open",
            "gauge",
            "Partner connections past the TLS handshake and still open.",
        );
        let _ = writeln!(out, "govbridge_connections_open {}", listener.open());
        header(
            &mut out,
            "govbridge_calls_in_flight",
            "gauge",
            "Calls (HTTP/2 streams) whose response has not ended.",
        );
        let _ = writeln!(
            out,
            "govbridge_calls_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "govbridge_tls_handshake_failures_total",
            "counter",
            "Refused TLS handshakes by reason.",
        );
        for (reason, count) in listener.refused() {
            let _ = writeln!(
                out,
                "govbridge_tls_handshake_failures_total{{reason=\"{reason}\"}} {count}"
            );
        }
        header(
            &mut out,
            "govbridge_connections_closed_total",
            "counter",
            "Partner connections the gateway closed itself, by reason.",
        );
        for (reason, count) in listener.closed() {
            let _ = writeln!(
                out,
                "govbridge_connections_closed_total{{reason=\"{reason}\"}} {count}"
            );
        }

        header(
            &mut out,
            "govbridge_last_reload_timestamp_seconds",
            "gauge",
            "When the last reload with this result happened.",
        );
        for (result, at) in self.last_reload.snapshot() {
            let _ = writeln!(
                out,
                "govbridge_last_reload_timestamp_seconds{{result=\"{result}\"}} {}",
                at.load(Ordering::Relaxed)
            );
        }

        // One gauge per certificate or CRL, each family whole under its
        // header (Prometheus' text format).
        let per_file = |out: &mut String,
                        name: &str,
                        help: &str,
                        label: &str,
                        values: &mut dyn Iterator<Item = (&String, i64)>| {
            header(out, name, "gauge", help);
            for (file, value) in values {
                let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {value}", escape(file));
            }
        };
        per_file(
            &mut out,
            "govbridge_certificate_expiry_timestamp_seconds",
            "When each certificate in use expires.",
            "certificate",
            &mut certificates.iter().map(|(name, at)| (name, *at)),
        );
        let now = crate::unix_time::now();
        per_file(
            &mut out,
            "govbridge_crl_overdue_seconds",
            "Seconds each CRL in use is past its next update; 0 while fresh.",
            "crl",
            &mut crls
                .iter()
                .map(|(crl, next)| (crl, now.saturating_sub(*next).max(0))),
        );
        // Apart from the certificates: a CRL is due again within days by
        // design, and an alert on certificates expiring within weeks would
        // never clear.
        per_file(
            &mut out,
            "govbridge_crl_next_update_timestamp_seconds",
            "When each CRL in use is due to be replaced.",
            "crl",
            &mut crls.iter().map(|(crl, next)| (crl, *next)),
        );
        header(
            &mut out,
            "govbridge_stale_crls_total",
            "counter",
            "CRLs past their next update when loaded: refused, or tolerated within their grace.",
        );
        for (outcome, count) in self.stale_crls.snapshot() {
            let _ = writeln!(
                out,
                "govbridge_stale_crls_total{{outcome=\"{outcome}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }

        if let Some(log) = log {
            header(
                &mut out,
                "govbridge_exchange_log_records",
                "gauge",
                "Records committed to the exchange log.",
            );
            let _ = writeln!(out, "govbridge_exchange_log_records {}", log.records);
            header(
                &mut out,
                "govbridge_exchange_log_queue_depth",
                "gauge",
                "Records waiting for the exchange log's writer.",
            );
            let _ = writeln!(out, "govbridge_exchange_log_queue_depth {}", log.queued);
            if let Some(unsealed) = log.unsealed {
                header(
                    &mut out,
                    "govbridge_fleet_log_unsealed_records",
                    "gauge",
                    "Records of the fleet's log past its lookups' seal, read directly by lookups \
                     by request id and subject until sealed.",
                );
                let _ = writeln!(out, "govbridge_fleet_log_unsealed_records {unsealed}");
            }
            header(
                &mut out,
                "govbridge_exchange_log_writable",
                "gauge",
                "1 while the exchange log can write; calls are refused at 0.",
            );
            let _ = writeln!(
                out,
                "govbridge_exchange_log_writable {}",
                u8::from(log.writable)
            );
            header(
                &mut out,
                "govbridge_exchange_log_commit_seconds",
                "histogram",
                "Duration of each group commit (transaction and fsync) of the exchange log.",
            );
            log.commits
                .render(&mut out, "govbridge_exchange_log_commit_seconds", "");
            header(
                &mut out,
                "govbridge_exchange_log_commit_in_progress_seconds",
                "gauge",
                "How long the exchange log's commit in progress has taken so far (0 between \
                 commits): calls wait for it, and /readyz says not ready past 2 s.",
            );
            let _ = writeln!(
                out,
                "govbridge_exchange_log_commit_in_progress_seconds {}",
                log.committing.as_secs_f64()
            );
        }
        out
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The name of a gRPC status code, as metrics label it.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histograms_sum_holds_centuries_of_durations() {
        let histogram = Histogram::default();
        // Twice ten thousand streams open for a year each: 6.3 * 10^11 s,
        // past what a sum in nanoseconds holds (1.8 * 10^10 s).
        let year = Duration::from_secs(365 * 86_400);
        for _ in 0..2 {
            histogram.observe(year * 10_000);
        }
        assert_eq!(histogram.total(), (2, year * 20_000));
        // Rounded to the nearest microsecond, not truncated.
        let short = Histogram::default();
        for _ in 0..4 {
            short.observe(Duration::from_nanos(700));
        }
        assert_eq!(short.total(), (4, Duration::from_micros(4)));
    }

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let metrics = Metrics::default();
        let labels = CallLabels {
            caller: "SN/COM/CBAO/kyc".into(),
            provider: "SN/GOV/ANEC/civil-registry".into(),
            method: "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity".into(),
            code: "OK",
        };
        metrics.call(&labels, CallKind::Unary, Duration::from_micros(700));
        metrics.call(&labels, CallKind::Unary, Duration::from_millis(30));
        let watch = CallLabels {
            method: "/govbridge.civilregistry.v1.CivilRegistry/WatchLifeEvents".into(),
            ..labels.clone()
        };
        metrics.call(&watch, CallKind::Stream, Duration::from_secs(3600));
        metrics.refusal("policy-denied");
        let listener = crate::net::ListenerStats::default();
        let text = metrics.render(
            None,
            &[("gateway".to_owned(), 1_900_000_000)],
            &[],
            &listener,
        );
        assert!(text.contains("govbridge_calls_total{caller=\"SN/COM/CBAO/kyc\",provider=\"SN/GOV/ANEC/civil-registry\",method=\"/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity\",code=\"OK\"} 2"), "{text}");
        let method =
            "method=\"/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity\",kind=\"unary\"";
        assert!(text.contains(&format!(
            "govbridge_call_duration_seconds_bucket{{{method},le=\"0.0005\"}} 0"
        )));
        assert!(text.contains(&format!(
            "govbridge_call_duration_seconds_bucket{{{method},le=\"0.001\"}} 1"
        )));
        assert!(text.contains(&format!(
            "govbridge_call_duration_seconds_bucket{{{method},le=\"0.05\"}} 2"
        )));
        assert!(text.contains(&format!(
            "govbridge_call_duration_seconds_bucket{{{method},le=\"+Inf\"}} 2"
        )));
        assert!(text.contains(&format!(
            "govbridge_call_duration_seconds_count{{{method}}} 2"
        )));
        // The hour's watch is a stream's, not the method's latency.
        let watch = "method=\"/govbridge.civilregistry.v1.CivilRegistry/WatchLifeEvents\"";
        assert!(text.contains(&format!(
            "govbridge_call_duration_seconds_bucket{{{watch},kind=\"stream\",le=\"+Inf\"}} 1"
        )));
        assert!(!text.contains(&format!("{watch},kind=\"unary\"")), "{text}");
        assert!(text.contains("govbridge_refusals_total{kind=\"policy-denied\"} 1"));
        assert!(text.contains(
            "govbridge_certificate_expiry_timestamp_seconds{certificate=\"gateway\"} 1900000000"
        ));
        assert_eq!(code_name(7), "PERMISSION_DENIED");
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
