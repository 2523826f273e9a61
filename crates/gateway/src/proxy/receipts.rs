//! Receipts of the calls forwarded to partner instances, fetched and kept
//! (`federation."XX".receipts = true`): shortly after each call, the
//! partner's record of it, with an inclusion proof under the partner's
//! signed checkpoint, is asked of the partner's gateway (`ExchangeLog/
//! GetRecords`, by the index its answer carried, many at a time), checked
//! under the partner's log key, and kept in
//! [`crate::exchange_log::receipts`] (or, on a fleet's node, in the
//! fleet's database).
//!
//! Calls queue their receipts ([`ReceiptQueue`]), due a second later.
//! Every [`TICK`], each partner not busy with a round gets one: the
//! partner's latest checkpoint first, then the receipts it covers,
//! [`BATCH`] to a request and [`IN_FLIGHT`] requests at a time over one
//! connection; those it does not cover yet wait for the next round. One
//! request for many receipts reads the partner's log once and checks its
//! checkpoint once: one request per receipt took the cores both gateways'
//! calls needed (docs/benchmarks.md). Partners' rounds run side by side:
//! one that hangs delays no other. A partner that fails is asked again
//! after a pause that doubles up to a minute (the witness sender's
//! [`super::witness::Backoff`]); a receipt still not fetched after
//! [`GIVE_UP`], or one the partner archived, is dropped and counted
//! (`audit receipt --fetch` can still fetch it by hand). The queue is in
//! memory: receipts waiting when the gateway stops are not fetched after
//! it starts again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::SharedState;
use crate::database::Database;
use crate::exchange_log::ExchangeLog;
use crate::exchange_log::receipts::{Receipt, Receipts};
use crate::exchange_log::verify::{self, ProofBundle};
use crate::net::client::Channel;
use crate::proto::audit::v1::exchange_log_client::ExchangeLogClient;
use crate::proto::audit::v1::{
    GetCheckpointRequest, GetRecordsRequest, MissingRecord, RecordProof, RecordProofs,
};

/// Receipts waiting for one partner, at most: past it a call's receipt is
/// dropped (and counted) rather than hold memory for a partner that never
/// answers. Each partner has its own room: one partner down for an hour
/// must not cost the others their receipts.
const MAX_PENDING: usize = 100_000;

/// How long after its call a receipt is first asked for, and again after
/// each try that finds it not under the partner's checkpoint yet.
const EVERY: Duration = Duration::from_secs(1);

/// How often partners are given a round: often, so that each takes a
/// few receipts rather than a second's worth at once (a burst of them
/// every second stalled the partner's calls).
const TICK: Duration = Duration::from_millis(100);

/// The most receipts one partner's round takes.
const PER_ROUND: usize = 1024;

/// Receipts asked of one partner in one request (`GetRecords`).
const BATCH: usize = 64;

/// Requests to one partner at once.
const IN_FLIGHT: usize = 2;

/// How long one request may take, connecting included.
const ATTEMPT: Duration = Duration::from_secs(5);

/// How long a receipt is tried for.
const GIVE_UP: Duration = Duration::from_secs(3600);

/// A receipt to fetch.
#[derive(Debug, Clone)]
struct Pending {
    instance: String,
    index: u64,
    call: Forwarded,
    queued: Instant,
    due: Instant,
}

/// A call forwarded to a partner instance, as its receipt must name it.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub request_id: String,
    pub caller: String,
    pub method: String,
    pub provider: String,
    /// The nonce of the assertion this gateway sealed for the call: one
    /// request id may name several calls (a caller's retry), and only the
    /// partner's record of this one is its receipt.
    pub nonce: String,
}

/// The receipts calls left to fetch, in the order they are due, and what
/// became of them; kept across reloads.
#[derive(Debug, Default)]
pub struct ReceiptQueue {
    pending: Mutex<Queue>,
    /// Receipts by partner and result (`kept`, `refused`, `dropped`).
    outcomes: Mutex<BTreeMap<(String, &'static str), u64>>,
}

/// Receipts in the order they fall due, and how many are each partner's.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Pending>,
    by_partner: HashMap<String, usize>,
}

impl Queue {
    fn push_back(&mut self, item: Pending) {
        *self.by_partner.entry(item.instance.clone()).or_default() += 1;
        self.items.push_back(item);
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let item = self.items.pop_front()?;
        if let Some(count) = self.by_partner.get_mut(&item.instance) {
            *count -= 1;
            if *count == 0 {
                self.by_partner.remove(&item.instance);
            }
        }
        Some(item)
    }

    fn of(&self, instance: &str) -> usize {
        self.by_partner.get(instance).copied().unwrap_or(0)
    }
}

impl ReceiptQueue {
    /// Queues the receipt of `call`: record `index` of `instance`'s log.
    pub fn push(&self, instance: &str, index: u64, call: Forwarded) {
        let now = Instant::now();
        let queued = self.pending.lock().is_ok_and(|mut pending| {
            if pending.of(instance) >= MAX_PENDING {
                return false;
            }
            pending.push_back(Pending {
                instance: instance.to_owned(),
                index,
                call,
                queued: now,
                // The partner signs a checkpoint over it within its
                // interval: no use asking at once.
                due: now + EVERY,
            });
            true
        });
        if !queued {
            self.count(instance, "dropped", 1);
        }
    }

    /// Receipts waiting to be fetched.
    pub fn pending(&self) -> usize {
        self.pending.lock().map_or(0, |pending| pending.items.len())
    }

    /// Receipts by (partner, result) since the gateway started.
    pub fn outcomes(&self) -> Vec<((String, &'static str), u64)> {
        self.outcomes.lock().map_or_else(
            |_| Vec::new(),
            |outcomes| outcomes.iter().map(|(key, n)| (key.clone(), *n)).collect(),
        )
    }

    fn count(&self, instance: &str, result: &'static str, n: u64) {
        if let Ok(mut outcomes) = self.outcomes.lock() {
            *outcomes.entry((instance.to_owned(), result)).or_default() += n;
        }
    }

    /// Up to `most` receipts due at `now`, taken from the front: receipts
    /// are queued (and queued again) in the order they fall due, so the
    /// look stops at the first that is not.
    fn due(&self, now: Instant, most: usize) -> Vec<Pending> {
        let Ok(mut pending) = self.pending.lock() else {
            return Vec::new();
        };
        let mut due = Vec::new();
        while due.len() < most && pending.items.front().is_some_and(|item| item.due <= now) {
            due.extend(pending.pop_front());
        }
        due
    }

    /// Queues `items` again, a second from now.
    fn again(&self, items: impl IntoIterator<Item = Pending>) {
        let due = Instant::now() + EVERY;
        if let Ok(mut pending) = self.pending.lock() {
            for item in items {
                pending.push_back(Pending { due, ..item });
            }
        }
    }
}

/// What the fetcher knows of one partner between its rounds.
#[derive(Default)]
struct Partner {
    channel: Option<(Arc<rustls::ClientConfig>, Channel)>,
    backoff: super::witness::Backoff,
}

/// Why a receipt was not fetched this time.
#[derive(Clone)]
enum Unfetched {
    /// The partner's checkpoint does not cover the record yet, or the
    /// round stopped before asking.
    NotYet,
    /// The partner's answer does not hold: kept nowhere, alarmed.
    Refused(String),
    /// The partner no longer serves it (archived): dropped.
    Gone(String),
    /// The partner or the way to it failed: asked again after a pause.
    Failed(String),
}

/// One partner's round: its state back, and each receipt's result.
struct Round {
    instance: String,
    partner: Partner,
    results: Vec<(Pending, Result<Receipt, Unfetched>)>,
}

/// Where receipts are kept: beside a single node's log, or in the fleet's
/// database, where `audit pull` finds every node's.
enum Sink {
    Local(Arc<Mutex<Receipts>>),
    Fleet(Arc<Database>),
}

impl Sink {
    async fn keep(&self, receipts: Vec<Receipt>, now: i64) -> Result<(), String> {
        match self {
            Self::Local(local) => {
                let local = Arc::clone(local);
                tokio::task::spawn_blocking(move || {
                    let mut local = local.lock().unwrap_or_else(PoisonError::into_inner);
                    local.keep(&receipts, now)
                })
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| error.to_string())
            }
            Self::Fleet(database) => {
                let rows: Vec<_> = receipts
                    .into_iter()
                    .map(|receipt| {
                        let json = verify::bundles_to_json(std::slice::from_ref(&receipt.bundle));
                        (
                            receipt.instance,
                            receipt.bundle.index,
                            receipt.request_id,
                            json,
                        )
                    })
                    .collect();
                database
                    .keep_receipts(&rows, now)
                    .await
                    .map_err(|error| error.to_string())
            }
        }
    }
}

/// Fetches and keeps the receipts calls queue in `queue`: beside `log`,
/// or in `fleet`'s database on a fleet's node; for as long as the gateway
/// runs.
pub(super) async fn follow(
    state: SharedState,
    log: ExchangeLog,
    queue: Arc<ReceiptQueue>,
    fleet: Option<Arc<Database>>,
) {
    let sink = match fleet {
        Some(database) => Sink::Fleet(database),
        None => {
            let dir = log.dir().to_owned();
            match tokio::task::spawn_blocking(move || Receipts::open(&dir)).await {
                Ok(Ok(receipts)) => Sink::Local(Arc::new(Mutex::new(receipts))),
                Ok(Err(error)) => {
                    tracing::error!(%error, "receipts of partners cannot be kept");
                    return;
                }
                Err(_) => return,
            }
        }
    };
    // Partners between rounds; those in a round are in `rounds`.
    let mut partners: HashMap<String, Partner> = HashMap::new();
    // The partner of each round in flight, by task.
    let mut busy: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut rounds = tokio::task::JoinSet::new();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let now = Instant::now();
                let mut by_partner: HashMap<String, Vec<Pending>> = HashMap::new();
                let mut waiting = Vec::new();
                for item in queue.due(now, PER_ROUND * 4) {
                    let pausing = partners
                        .get(&item.instance)
                        .is_some_and(|partner| partner.backoff.pausing(now));
                    let taken = by_partner.get(&item.instance).map_or(0, Vec::len);
                    let in_round = busy.values().any(|instance| *instance == item.instance);
                    if in_round || pausing || taken >= PER_ROUND {
                        waiting.push(item);
                    } else {
                        by_partner.entry(item.instance.clone()).or_default().push(item);
                    }
                }
                queue.again(waiting);
                let current = state.load_full();
                for (instance, items) in by_partner {
                    let partner = partners.remove(&instance).unwrap_or_default();
                    let current = Arc::clone(&current);
                    let name = instance.clone();
                    let task = rounds.spawn(async move {
                        let (partner, results) = round(&current, &instance, partner, items).await;
                        Round { instance, partner, results }
                    });
                    busy.insert(task.id(), name);
                }
            }
            Some(done) = rounds.join_next_with_id(), if !rounds.is_empty() => {
                match done {
                    Ok((task, round)) => {
                        busy.remove(&task);
                        let partner = settle(&queue, &sink, &round.instance, round.partner, round.results).await;
                        partners.insert(round.instance, partner);
                    }
                    // Its receipts are lost with it: said, not hidden.
                    Err(error) => {
                        let instance = busy.remove(&error.id()).unwrap_or_default();
                        tracing::error!(partner = instance, %error, "a round of fetching a partner's receipts failed");
                    }
                }
            }
        }
    }
}

/// What a round brought: receipts kept (or queued again if they cannot
/// be), refused, dropped or queued again; the partner paused if it
/// failed.
async fn settle(
    queue: &ReceiptQueue,
    sink: &Sink,
    instance: &str,
    mut partner: Partner,
    results: Vec<(Pending, Result<Receipt, Unfetched>)>,
) -> Partner {
    let mut retry = Vec::new();
    let mut fetched = Vec::new();
    let mut failed = None;
    for (item, result) in results {
        match result {
            Ok(receipt) => fetched.push((item, receipt)),
            Err(Unfetched::Refused(reason)) => {
                tracing::error!(
                    partner = instance,
                    index = item.index,
                    request_id = item.call.request_id,
                    reason,
                    "a partner's receipt does not hold: not kept"
                );
                queue.count(instance, "refused", 1);
            }
            Err(Unfetched::Gone(reason)) => {
                tracing::warn!(
                    partner = instance,
                    index = item.index,
                    request_id = item.call.request_id,
                    reason,
                    "a partner's receipt can no longer be fetched"
                );
                queue.count(instance, "dropped", 1);
            }
            Err(unfetched) => {
                if let Unfetched::Failed(reason) = unfetched {
                    failed = Some(reason);
                }
                if item.queued.elapsed() > GIVE_UP {
                    queue.count(instance, "dropped", 1);
                } else {
                    retry.push(item);
                }
            }
        }
    }
    if !fetched.is_empty() {
        let (items, receipts): (Vec<Pending>, Vec<Receipt>) = fetched.into_iter().unzip();
        let count = u64::try_from(receipts.len()).unwrap_or(u64::MAX);
        match sink.keep(receipts, crate::unix_time::now()).await {
            Ok(()) => queue.count(instance, "kept", count),
            Err(error) => {
                // Fetched again at the next round.
                tracing::error!(%error, "receipts fetched but not kept: asked again");
                retry.extend(items);
            }
        }
    }
    queue.again(retry);
    match failed {
        None => partner.backoff.succeeded(),
        Some(reason) => {
            partner.channel = None;
            let pause = partner.backoff.failed();
            tracing::warn!(
                partner = instance,
                reason,
                retry_in_s = pause.as_secs(),
                waiting = queue.pending(),
                "receipts not fetched from the partner"
            );
        }
    }
    partner
}

/// One partner's round: its latest checkpoint, then the receipts in
/// `items` it covers, [`IN_FLIGHT`] at a time; stops at the first failure.
async fn round(
    state: &super::GatewayState,
    instance: &str,
    mut partner: Partner,
    items: Vec<Pending>,
) -> (Partner, Vec<(Pending, Result<Receipt, Unfetched>)>) {
    let fail = |items: Vec<Pending>, reason: String| {
        items
            .into_iter()
            .map(|item| (item, Err(Unfetched::Failed(reason.clone()))))
            .collect()
    };
    let (Some(config), Some(tls), Some(key)) = (
        state.federation.partners.get(instance),
        state.federation.partner_tls.get(instance),
        state.federation.key.as_ref(),
    ) else {
        return (
            partner,
            fail(items, format!("{instance} is no longer a partner")),
        );
    };
    if let Some(refused) = state.partner_refused_at(instance, crate::unix_time::now()) {
        return (partner, fail(items, refused.to_string()));
    }
    let Some((log_key, _)) = config.log_key.as_ref().filter(|_| config.receipts) else {
        return (
            partner,
            fail(items, format!("receipts of {instance} are no longer kept")),
        );
    };
    // The connection of the last round, unless it closed or a reload
    // changed how to connect.
    let kept = partner
        .channel
        .take()
        .filter(|(made_with, channel)| Arc::ptr_eq(made_with, tls) && !channel.is_closed());
    let channel = match kept {
        Some((_, channel)) => channel,
        None => {
            let Some(endpoint) = config.endpoints.first() else {
                return (
                    partner,
                    fail(items, "the partner has no endpoint".to_owned()),
                );
            };
            match tokio::time::timeout(ATTEMPT, super::witness::connect(config, endpoint, tls))
                .await
            {
                Ok(Ok(channel)) => channel,
                Ok(Err(reason)) => return (partner, fail(items, reason)),
                Err(_) => return (partner, fail(items, format!("{endpoint}: no answer"))),
            }
        }
    };
    partner.channel = Some((Arc::clone(tls), channel.clone()));
    // What the partner's checkpoint covers: the rest waits.
    let mut client = ExchangeLogClient::new(channel.clone());
    let covered =
        match tokio::time::timeout(ATTEMPT, client.get_checkpoint(GetCheckpointRequest {})).await {
            Ok(Ok(checkpoint)) => checkpoint.into_inner().tree_size,
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => 0,
            Ok(Err(status)) => {
                let reason = format!("{:?}: {}", status.code(), status.message());
                return (partner, fail(items, reason));
            }
            Err(_) => {
                return (
                    partner,
                    fail(items, format!("no answer within {ATTEMPT:?}")),
                );
            }
        };
    let federation = key.verifier();
    let gateway = state.federation.gateway.to_string();
    let (ready, later): (Vec<Pending>, Vec<Pending>) =
        items.into_iter().partition(|item| item.index < covered);
    let mut results: Vec<_> = later
        .into_iter()
        .map(|item| (item, Err(Unfetched::NotYet)))
        .collect();
    let mut batches = batched(ready).into_iter();
    let mut asking = tokio::task::JoinSet::new();
    let mut failed = false;
    loop {
        // A window of requests in flight, refilled as each ends.
        while !failed && asking.len() < IN_FLIGHT {
            let Some(batch) = batches.next() else { break };
            let mut client = ExchangeLogClient::new(channel.clone());
            asking.spawn(async move {
                let request = GetRecordsRequest {
                    indexes: batch.iter().map(|item| item.index).collect(),
                };
                let answer = tokio::time::timeout(ATTEMPT, client.get_records(request)).await;
                (batch, answer)
            });
        }
        let Some(done) = asking.join_next().await else {
            break;
        };
        let Ok((batch, answer)) = done else {
            continue;
        };
        let each = |batch: Vec<Pending>, unfetched: Unfetched| {
            batch
                .into_iter()
                .map(|item| (item, Err(unfetched.clone())))
                .collect::<Vec<_>>()
        };
        let answered = match answer {
            Err(_) => each(
                batch,
                Unfetched::Failed(format!("no answer within {ATTEMPT:?}")),
            ),
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                each(batch, Unfetched::NotYet)
            }
            Ok(Err(status)) => each(
                batch,
                Unfetched::Failed(format!("{:?}: {}", status.code(), status.message())),
            ),
            Ok(Ok(answer)) => check_all(answer.into_inner(), batch, log_key, &federation, &gateway),
        };
        failed |= answered
            .iter()
            .any(|(_, result)| matches!(result, Err(Unfetched::Failed(_))));
        results.extend(answered);
    }
    // Not asked, the round having failed: next time.
    results.extend(batches.flatten().map(|item| (item, Err(Unfetched::NotYet))));
    (partner, results)
}

/// `items` in requests of at most [`BATCH`].
fn batched(items: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut batches = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        batches.push(items.by_ref().take(BATCH).collect());
    }
    batches
}

/// The partner's answer for `batch`, each receipt checked (its checkpoint
/// once, for all): what [`check`] says of those it holds, and of those it
/// leaves out, why.
fn check_all(
    answer: RecordProofs,
    batch: Vec<Pending>,
    log_key: &crate::note::Verifier,
    federation: &crate::note::Verifier,
    gateway: &str,
) -> Vec<(Pending, Result<Receipt, Unfetched>)> {
    let refuse_all = |batch: Vec<Pending>, reason: String| {
        batch
            .into_iter()
            .map(|item| (item, Err(Unfetched::Refused(reason.clone()))))
            .collect()
    };
    let Some(checkpoint) = answer.checkpoint else {
        return refuse_all(batch, "the answer holds no checkpoint".to_owned());
    };
    let opened = match crate::note::Checkpoint::open(&checkpoint.note, log_key) {
        Ok(opened) => opened,
        Err(error) => return refuse_all(batch, format!("its checkpoint: {error}")),
    };
    let mut records: HashMap<u64, RecordProof> = answer
        .records
        .into_iter()
        .map(|record| (record.index, record))
        .collect();
    let mut missing: HashMap<u64, MissingRecord> = answer
        .missing
        .into_iter()
        .map(|missing| (missing.index, missing))
        .collect();
    batch
        .into_iter()
        .map(|item| {
            let result = match (records.remove(&item.index), missing.remove(&item.index)) {
                (Some(record), _) => check(
                    record,
                    &checkpoint.note,
                    &opened,
                    &item,
                    federation,
                    gateway,
                ),
                (None, Some(missing)) => Err(match missing.kind.as_str() {
                    "record-archived" => Unfetched::Gone(missing.message),
                    "not-checkpointed" => Unfetched::NotYet,
                    kind => Unfetched::Failed(format!("{kind}: {}", missing.message)),
                }),
                (None, None) => Err(Unfetched::Refused(format!(
                    "the partner's answer leaves record {} out",
                    item.index
                ))),
            };
            (item, result)
        })
        .collect()
}

/// The partner's record for `item`, under `checkpoint` (its note, and the
/// note opened with the partner's log key), checked: the record asked
/// for, included in that checkpoint, of this call, vouched for by this
/// gateway with an assertion of its own key.
fn check(
    answer: RecordProof,
    note: &str,
    checkpoint: &crate::note::Checkpoint,
    item: &Pending,
    federation: &crate::note::Verifier,
    gateway: &str,
) -> Result<Receipt, Unfetched> {
    let refused = |reason: String| Err(Unfetched::Refused(reason));
    let Ok(inclusion_proof) = answer
        .inclusion_proof
        .iter()
        .map(|hash| <[u8; 32]>::try_from(hash.as_slice()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return refused("the inclusion proof holds a malformed hash".to_owned());
    };
    let bundle = ProofBundle {
        index: answer.index,
        record: answer.record,
        tree_size: checkpoint.size,
        inclusion_proof,
        checkpoint: note.to_owned(),
    };
    if bundle.index != item.index {
        return refused(format!("record {} came for {}", bundle.index, item.index));
    }
    let record = match verify::check_bundle_under(&bundle, checkpoint) {
        Ok(record) => record,
        Err(error) => return refused(error.to_string()),
    };
    let call = &item.call;
    if record.via_gateway != gateway {
        return refused(format!(
            "record {} is vouched for by {}, not {gateway}",
            item.index, record.via_gateway
        ));
    }
    let assertion =
        match crate::federation::Assertion::open(record.assertion.as_bytes(), federation) {
            Ok(assertion) => assertion,
            Err(error) => return refused(format!("its assertion is not this gateway's: {error}")),
        };
    // The call itself, as the partner logged it and as this gateway
    // asserted it: a caller's request id alone may name several calls
    // (`audit receipt` compares the same).
    if assertion.nonce != call.nonce {
        return refused(format!(
            "record {} is of another call: its assertion is not the one this gateway sealed for \
             this call (nonce {}, this call's {})",
            item.index, assertion.nonce, call.nonce
        ));
    }
    for (field, ours, logged, asserted) in [
        (
            "request id",
            &call.request_id,
            &record.request_id,
            assertion.request_id.clone(),
        ),
        (
            "caller",
            &call.caller,
            &record.caller,
            assertion.caller.to_string(),
        ),
        (
            "method",
            &call.method,
            &record.method,
            assertion.method.clone(),
        ),
        (
            "provider",
            &call.provider,
            &record.provider,
            assertion.provider.to_string(),
        ),
    ] {
        if logged != ours || asserted != *ours {
            return refused(format!(
                "record {} is of another call: its {field} is {logged} (asserted {asserted}), \
                 this call's {ours}",
                item.index
            ));
        }
    }
    Ok(Receipt {
        instance: item.instance.clone(),
        request_id: call.request_id.clone(),
        bundle,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::exchange_log::{ExchangeRecord, merkle};
    use crate::federation::Assertion;
    use crate::identity::MemberId;
    use crate::note::{Checkpoint, SigningKey};

    const GATEWAY: &str = "SN/GOV/GOVBRIDGE/gateway";

    fn call(method: &str) -> Forwarded {
        Forwarded {
            request_id: "chosen-by-the-caller".to_owned(),
            caller: "SN/COM/CBAO/trade".to_owned(),
            method: method.to_owned(),
            provider: "AZ/GOV/ASAN/business-registry".to_owned(),
            nonce: "0123456789abcdef0123456789abcdef".to_owned(),
        }
    }

    /// The partner's record of `logged`, vouched for by this gateway's
    /// assertion of it, alone in a log of one record.
    fn proof(logged: &Forwarded, key: &SigningKey) -> (RecordProof, Checkpoint) {
        let member = |id: &str| MemberId::parse(id).unwrap();
        let assertion = Assertion {
            from: "SN".into(),
            to: "AZ".into(),
            gateway: member(GATEWAY),
            caller: member(&logged.caller),
            method: logged.method.clone(),
            provider: member(&logged.provider),
            request_id: logged.request_id.clone(),
            nonce: logged.nonce.clone(),
            issued: crate::unix_time::now(),
            caller_not_after: None,
            purpose: None,
            reason: None,
            user_id: None,
        }
        .seal(key);
        let record = ExchangeRecord {
            request_id: logged.request_id.clone(),
            caller: logged.caller.clone(),
            method: logged.method.clone(),
            provider: logged.provider.clone(),
            via_gateway: GATEWAY.to_owned(),
            assertion,
            ..ExchangeRecord::default()
        }
        .encode_to_vec();
        let checkpoint = Checkpoint {
            origin: "govbridge/az-1".to_owned(),
            size: 1,
            root: merkle::leaf_hash(&record),
        };
        let answer = RecordProof {
            index: 0,
            record,
            checkpoint: None,
            inclusion_proof: Vec::new(),
        };
        (answer, checkpoint)
    }

    /// One partner that never answers fills its own room only: another's
    /// receipts are still queued.
    #[test]
    fn a_partner_that_never_answers_keeps_no_other_from_its_receipts() {
        let queue = ReceiptQueue::default();
        let company = "/govbridge.az.business.v1.CompanyRegistry/GetCompany";
        for index in 0..=MAX_PENDING as u64 {
            queue.push("AZ", index, call(company));
        }
        assert_eq!(queue.pending(), MAX_PENDING);
        queue.push("KE", 0, call(company));
        assert_eq!(queue.pending(), MAX_PENDING + 1);
        let outcomes = queue.outcomes();
        assert_eq!(outcomes, [(("AZ".to_owned(), "dropped"), 1)]);
        // Taken and queued again, a receipt keeps its partner's count.
        let later = Instant::now() + 2 * EVERY;
        let due = queue.due(later, 10);
        assert_eq!(due.len(), 10);
        queue.again(due);
        queue.push("AZ", 0, call(company));
        assert_eq!(queue.outcomes(), [(("AZ".to_owned(), "dropped"), 2)]);
    }

    /// A caller's request id may name several calls: the partner's record
    /// at the index asked for is this call's only if its caller, method
    /// and provider are too, as logged and as asserted.
    #[test]
    fn a_record_of_another_call_under_the_same_request_id_is_no_receipt() {
        let key = SigningKey::generate("SN-federation").unwrap();
        let pending = |call| Pending {
            instance: "AZ".to_owned(),
            index: 0,
            call,
            queued: Instant::now(),
            due: Instant::now(),
        };
        let company = "/govbridge.az.business.v1.CompanyRegistry/GetCompany";
        let taxes = "/govbridge.az.tax.v1.TaxService/GetTaxpayerStatus";
        let (answer, checkpoint) = proof(&call(company), &key);
        let ours = pending(call(company));
        let kept = check(
            answer.clone(),
            "note",
            &checkpoint,
            &ours,
            &key.verifier(),
            GATEWAY,
        );
        assert!(kept.is_ok());
        let other = pending(call(taxes));
        let refused = check(
            answer,
            "note",
            &checkpoint,
            &other,
            &key.verifier(),
            GATEWAY,
        );
        let Err(Unfetched::Refused(reason)) = refused else {
            panic!("taken as the receipt of another call");
        };
        assert!(reason.contains("its method is"), "{reason}");

        // The same call's request id again (a caller's retry), which the
        // partner logged once: that record is the first call's receipt,
        // not the second's.
        let mut again = call(company);
        again.nonce = "fedcba9876543210fedcba9876543210".to_owned();
        let (answer, checkpoint) = proof(&call(company), &key);
        let refused = check(
            answer,
            "note",
            &checkpoint,
            &pending(again),
            &key.verifier(),
            GATEWAY,
        );
        let Err(Unfetched::Refused(reason)) = refused else {
            panic!("taken as the receipt of another call under the same request id");
        };
        assert!(reason.contains("nonce"), "{reason}");
    }
}
