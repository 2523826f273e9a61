//! What the gateway writes into the exchange log about one call.
//!
//! A [`CallRecord`] follows a call through the request path, gathering
//! who, what and why, then the decision. Its decision is appended (and
//! durable) before the call is forwarded; when a forwarded call ends, its
//! outcome is appended before the caller reads the final status. The
//! request's bytes are tallied as they pass ([`Tally`]): sizes, SHA-256 and
//! the data subject, never the bytes themselves.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use aws_lc_rs::digest::{Context, SHA256};
use http::{HeaderMap, HeaderValue};

use super::error::GatewayError;
use crate::catalog::subject::{SubjectField, SubjectReader, TooManySubjects};
use crate::exchange_log::{Appending, ExchangeLog, ExchangeRecord, Phase, RECORD_VERSION};
use crate::identity::MemberId;
use crate::policy::Decision;
use crate::wire::headers::CallHeaders;
use crate::wire::trace_context::TraceContext;

/// The `bridge-audit-index` value of a leaf index.
pub fn audit_index(index: u64) -> (http::header::HeaderName, HeaderValue) {
    (
        crate::wire::headers::names::BRIDGE_AUDIT_INDEX,
        HeaderValue::from(index),
    )
}

/// Bytes of one direction of a call as they pass: count, SHA-256 and,
/// for requests, the data subjects their messages name.
pub struct Tally {
    bytes: u64,
    digest: Context,
    subject: Option<SubjectReader>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("bytes", &self.bytes)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Tally {
    pub fn new(subject_field: Option<SubjectField>) -> Self {
        Self {
            bytes: 0,
            digest: Context::new(&SHA256),
            subject: subject_field.map(SubjectReader::new),
        }
    }

    /// Counts a DATA frame of a request, unless a message it completes
    /// names one data subject more than a call may: that frame is then not
    /// to be relayed.
    pub fn add(&mut self, data: &[u8]) -> Result<(), TooManySubjects> {
        if let Some(subject) = self.subject.as_mut() {
            subject.feed(data)?;
        }
        self.count(data);
        Ok(())
    }

    /// Counts a DATA frame, reading no subject: a response's.
    pub fn count(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.digest.update(data);
    }

    fn write_into(&self, bytes: &mut u64, digest: &mut Vec<u8>) {
        *bytes = self.bytes;
        *digest = self.digest.clone().finish().as_ref().to_vec();
    }

    /// Writes a request's size, digest and subject into `record`.
    fn write_request(&self, record: &mut ExchangeRecord) {
        self.write_into(&mut record.request_bytes, &mut record.request_sha256);
        if let Some(reader) = &self.subject {
            if let Some(subject) = reader.subject() {
                subject.clone_into(&mut record.subject);
            }
            record.more_subjects = reader.more_subjects().map(str::to_owned).collect();
            // The method names a subject but a message's could not be read
            // (compressed, too large, malformed, absent), or the request
            // ended before its first message: auditors must be able to
            // find such calls.
            record.subject_unreadable = reader.is_unreadable() || reader.subject().is_none();
        }
    }
}

/// A request tally shared between the request body (polled by the
/// upstream connection) and the response (which writes the outcome).
pub type SharedTally = Arc<Mutex<Tally>>;

fn lock(tally: &SharedTally) -> std::sync::MutexGuard<'_, Tally> {
    // A tally is plain counters: a panic half-way breaks nothing.
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a forwarded call ended, as its outcome records it.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// With these trailers (the backend's, or the gateway's own error).
    Trailers(&'a HeaderMap),
    /// The caller went away before the end.
    Cancelled,
}

impl Ending<'_> {
    /// The gRPC status the call ended with, and the `bridge-error` kind
    /// (empty when the backend's own status).
    pub fn status(&self) -> (i32, &str) {
        match self {
            Ending::Trailers(trailers) => (
                // Trailers without a status: gRPC clients report UNKNOWN.
                trailers
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok()?.parse().ok())
                    .unwrap_or(tonic::Code::Unknown as i32),
                trailers
                    .get(crate::wire::headers::BRIDGE_ERROR)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default(),
            ),
            Ending::Cancelled => (tonic::Code::Cancelled as i32, "cancelled"),
        }
    }
}

/// The exchange-log record of one call in progress.
///
/// Whatever happens to the call, it ends with its records: a decision
/// written (or being written) and never followed by an outcome gets a
/// `CANCELLED` outcome when the record is dropped, which is what happens
/// when the caller resets the stream while the gateway waits.
#[derive(Debug)]
pub struct CallRecord {
    log: ExchangeLog,
    record: ExchangeRecord,
    /// The decision's append while it is in flight.
    pending: Option<Appending>,
    /// Leaf index of the decision, once durable.
    decision: Option<u64>,
    /// The request's bytes, once the call is forwarded.
    request: Option<SharedTally>,
    /// True once the call's last record is queued.
    closed: bool,
    /// The data subject read before the decision, for a refusal or an
    /// outcome without a request tally.
    named: Option<String>,
}

impl CallRecord {
    /// Starts the record of a call received at `received`.
    pub fn new(
        log: ExchangeLog,
        node_id: &str,
        request_id: &HeaderValue,
        method: &str,
        caller: Option<&MemberId>,
        trace: &TraceContext,
        received: SystemTime,
    ) -> Self {
        Self {
            log,
            record: ExchangeRecord {
                version: RECORD_VERSION,
                phase: Phase::Decision.into(),
                request_id: request_id.to_str().unwrap_or_default().to_owned(),
                node_id: node_id.to_owned(),
                caller: caller.map(ToString::to_string).unwrap_or_default(),
                method: method.to_owned(),
                trace_id: trace.trace_id_hex(),
                received_us: crate::unix_time::micros(received),
                ..ExchangeRecord::default()
            },
            pending: None,
            decision: None,
            request: None,
            closed: false,
            named: None,
        }
    }

    /// The call came as JSON, transcoded by the gateway.
    pub fn came_as_json(&mut self) {
        self.record.json = true;
    }

    /// What the caller declared.
    pub fn declared(&mut self, call: &CallHeaders) {
        let record = &mut self.record;
        record.purpose = call.purpose_code().unwrap_or_default().to_owned();
        record.reason = call.reason.clone().unwrap_or_default();
        record.user_id = call
            .user_id
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
    }

    /// The call came from a partner instance's gateway, which asserted
    /// (`sealed`, as received) who called.
    pub fn asserted(&mut self, assertion: &crate::federation::Assertion, sealed: &HeaderValue) {
        let record = &mut self.record;
        record.caller = assertion.caller.to_string();
        record.via_gateway = assertion.gateway.to_string();
        record.assertion = sealed.to_str().unwrap_or_default().to_owned();
    }

    /// The partner instance's gateway the call went to logged it at
    /// `index` of its own log.
    pub fn receipt(&mut self, instance: &str, index: u64) {
        instance.clone_into(&mut self.record.receipt_instance);
        self.record.receipt_index = Some(index);
    }

    /// The citizen's consent the call runs under.
    pub fn consented(&mut self, consent_id: &str) {
        consent_id.clone_into(&mut self.record.consent_id);
    }

    /// The data subject the request names, read before the decision (a
    /// consent is bound to it): a refusal, or an outcome before anything
    /// was forwarded, names it, so that the person's Data Tracker lists
    /// the attempt. Decisions name none, as those of calls whose first
    /// message the gateway does not read before.
    pub fn about(&mut self, subject: &str) {
        self.named = Some(subject.to_owned());
    }

    /// The provider the call is routed to.
    pub fn routed(&mut self, provider: &MemberId) {
        self.record.provider = provider.to_string();
    }

    /// The policy decision; `concealed_until` is when the Data Tracker may
    /// show the access (0: at once).
    pub fn decided(&mut self, decision: &Decision, concealed_until: i64) {
        self.record.allowed = decision.allowed;
        self.record.policies.clone_from(&decision.policies);
        self.record.concealed_until_unix = concealed_until;
    }

    /// Appends the decision of an allowed call; it is durable when this
    /// returns. Returns its leaf index. If this future is dropped half-way
    /// (a deadline), the append stays with the record, which then settles
    /// it before writing anything else.
    pub async fn write_decision(&mut self) -> Result<u64, GatewayError> {
        let appending = self.pending.insert(self.log.append(self.record.clone()));
        let written = appending.await;
        self.pending = None;
        let index =
            written.map_err(|error| GatewayError::ExchangeLogUnavailable(error.to_string()))?;
        self.decision = Some(index);
        Ok(index)
    }

    /// Leaf index of the decision, once durable.
    pub fn decision_index(&self) -> Option<u64> {
        self.decision
    }

    /// The request's bytes, tallied as they go upstream.
    pub fn forwarding(&mut self, request: SharedTally, at: SystemTime) {
        self.request = Some(request);
        self.record.forwarded_us = crate::unix_time::micros(at);
    }

    /// The response headers arrived.
    pub fn first_byte(&mut self, at: SystemTime) {
        self.record.first_byte_us = crate::unix_time::micros(at);
    }

    /// Records that the gateway refused or failed the call with `error`:
    /// as the decision itself when none was written, else as the outcome.
    /// Durable when this returns.
    pub async fn write_refusal(mut self, error: &GatewayError) -> Result<u64, GatewayError> {
        if let Some(pending) = self.pending.take() {
            // The decision went in, or failed: either way it is settled.
            self.decision = pending.await.ok();
        }
        self.closed = true;
        let mut record = std::mem::take(&mut self.record);
        record.error_kind = error.kind().to_owned();
        record.grpc_status = error.code() as i32;
        match self.decision {
            None => record.allowed = false,
            Some(decision) => {
                record.phase = Phase::Outcome.into();
                record.decision_index = decision;
                record.completed_us = crate::unix_time::micros(SystemTime::now());
                if let Some(request) = &self.request {
                    lock(request).write_request(&mut record);
                }
            }
        }
        if record.subject.is_empty()
            && let Some(named) = self.named.take()
        {
            record.subject = named;
        }
        self.log
            .append(record)
            .await
            .map_err(|error| GatewayError::ExchangeLogUnavailable(error.to_string()))
    }

    /// Appends the outcome of a forwarded call; `response` is what came
    /// back.
    pub fn write_outcome(mut self, ending: Ending<'_>, response: Option<&Tally>) -> Appending {
        self.closed = true;
        let record = self.outcome(ending, response);
        self.log.append(record)
    }

    fn outcome(&mut self, ending: Ending<'_>, response: Option<&Tally>) -> ExchangeRecord {
        let mut record = std::mem::take(&mut self.record);
        record.phase = Phase::Outcome.into();
        record.completed_us = crate::unix_time::micros(SystemTime::now());
        record.decision_index = self.decision.unwrap_or_default();
        let (status, kind) = ending.status();
        record.grpc_status = status;
        kind.clone_into(&mut record.error_kind);
        if let Some(request) = &self.request {
            lock(request).write_request(&mut record);
        }
        // Ended before it was forwarded (its caller left): the subject
        // read to bind its consent.
        if record.subject.is_empty()
            && let Some(named) = self.named.take()
        {
            record.subject = named;
        }
        if let Some(response) = response {
            response.write_into(&mut record.response_bytes, &mut record.response_sha256);
        }
        record
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if self.closed || (self.pending.is_none() && self.decision.is_none()) {
            return;
        }
        // The call was allowed (or was being allowed) and never ended:
        // its caller left. The outcome waits for the decision's index.
        let pending = self.pending.take();
        let mut outcome = self.outcome(Ending::Cancelled, None);
        let log = self.log.clone();
        let request_id = outcome.request_id.clone();
        let lost = move |reason: String| {
            tracing::error!(
                request_id,
                "the outcome of an abandoned call is lost: {reason}"
            );
        };
        match pending {
            None => {
                if let Err(error) = log.append(outcome).queued() {
                    lost(error.to_string());
                }
            }
            Some(pending) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        // A decision that failed needs no outcome.
                        if let Ok(decision) = pending.await {
                            outcome.decision_index = decision;
                            if let Err(error) = log.append(outcome).queued() {
                                lost(error.to_string());
                            }
                        }
                    });
                }
                Err(_) => lost("no runtime to finish it on".to_owned()),
            },
        }
    }
}

/// Locks a shared tally to count request bytes.
pub fn count(tally: &SharedTally, data: &[u8]) -> Result<(), TooManySubjects> {
    lock(tally).add(data)
}
