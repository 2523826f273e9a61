//! `govbridge.audit.v1.ExchangeLog` and `govbridge.audit.v1.DataTracker`,
//! answered by the gateway itself like the directory services (see
//! [`crate::directory`]): signed checkpoints, records with their inclusion
//! proofs, consistency proofs, and the citizens' "who looked at my data".
//!
//! A member reads only the records of calls it made or served. Proofs by
//! index are hashes only and open to every member. The Data Tracker answers
//! only the members named in `exchange_log.data_tracker_clients` (the
//! citizens' portal) and never shows an access that a lawful-basis policy
//! conceals.
//!
//! Everything here only reads, and only what a signed checkpoint covers:
//! a proof is always against a checkpoint the caller can fetch and check
//! offline. It must never write the log. SQLite reads block, so each call
//! reads on the blocking pool through its own read-only connection.

use std::fmt;
use std::time::Duration;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::directory::LocalContext;
use crate::exchange_log::lookup::SEGMENT;
use crate::exchange_log::merkle::{self, Hash};
use crate::exchange_log::note;
use crate::exchange_log::store::{StoreError, StoredRecord};
use crate::exchange_log::{ExchangeLog, ExchangeRecord, Phase, Reader};
use crate::identity::MemberId;
use crate::identity::national::{InvalidNin, parse_nin};
use crate::proto::audit::v1::get_record_request::Key;
use crate::proto::audit::v1::{
    Access, Checkpoint, ConsistencyProof, GetCheckpointRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest, GetRecordRequest, GetRecordsRequest, InclusionProof,
    ListAccessesRequest, ListAccessesResponse, MissingRecord, RecordProof, RecordProofs,
    data_tracker_server, exchange_log_server,
};
use crate::wire::headers::BRIDGE_ERROR;

/// Accesses listed when the request gives no limit.
pub const DEFAULT_ACCESSES: u32 = 100;
/// Accesses listed at most, whatever the request asks.
pub const MAX_ACCESSES: u32 = 1000;
/// Records asked for at most in one `GetRecords`.
pub const MAX_RECORDS: usize = 256;

/// When checkpoints are signed, for messages that ask the caller to wait
/// for the next one.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    interval: Duration,
    records: u64,
}

impl Cadence {
    fn of(context: &LocalContext) -> Self {
        let config = context.state.exchange_log_config();
        Self {
            interval: config.checkpoint_interval,
            records: config.checkpoint_records,
        }
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checkpoints are signed every {:?} and every {} records",
            self.interval, self.records
        )
    }
}

/// How a record was asked for.
#[derive(Debug, Clone)]
pub enum RecordKey {
    Index(u64),
    RequestId(String),
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index(index) => write!(f, "at index {index}"),
            Self::RequestId(id) => write!(f, "of request {id}"),
        }
    }
}

/// Why a read of the exchange log is refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the exchange log is off on this gateway")]
    Off,
    #[error("the exchange log has no signed checkpoint yet; {0}")]
    NoCheckpoint(Cadence),
    /// Also the answer for a record the caller is not party to: a member
    /// must not learn that other members' records exist.
    #[error("no record {0} among the calls you made or served")]
    NotFound(RecordKey),
    #[error(
        "record {index} is not yet in a signed checkpoint; {cadence}, and the latest covers \
         {size} records: ask again after the next one"
    )]
    NotCheckpointed {
        index: u64,
        size: u64,
        cadence: Cadence,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "{what} is {requested}, beyond the latest signed checkpoint ({latest} records); \
         ask for at most {latest}, or 0 for the latest"
    )]
    BeyondCheckpoint {
        what: &'static str,
        requested: u64,
        latest: u64,
    },
    #[error(
        "{0} may not call the Data Tracker: it answers only the citizens' portal \
         (exchange_log.data_tracker_clients)"
    )]
    NotDataTrackerClient(MemberId),
    #[error("subject: {0}")]
    BadSubject(InvalidNin),
    #[error(
        "record {index} is archived (records before {archived_end} left this gateway's store \
         for archive files): its proofs come from the archives, through the gateway's \
         operator (`govbridge audit prove --archives`)"
    )]
    Archived { index: u64, archived_end: u64 },
    /// The detail (file paths, SQLite errors) is for the gateway's logs.
    #[error("the exchange log cannot be read right now; retry later")]
    Unreadable(String),
}

impl From<StoreError> for ReadError {
    fn from(error: StoreError) -> Self {
        Self::Unreadable(error.to_string())
    }
}

impl ReadError {
    fn code(&self) -> Code {
        match self {
            Self::Off | Self::Unreadable(_) => Code::Unavailable,
            Self::NoCheckpoint(_) | Self::NotCheckpointed { .. } | Self::Archived { .. } => {
                Code::FailedPrecondition
            }
            Self::NotFound(_) => Code::NotFound,
            Self::BadRequest(_) | Self::BadSubject(_) => Code::InvalidArgument,
            Self::BeyondCheckpoint { .. } => Code::OutOfRange,
            Self::NotDataTrackerClient(_) => Code::PermissionDenied,
        }
    }

    /// The `bridge-error` kind.
    fn kind(&self) -> &'static str {
        match self {
            Self::Off => "exchange-log-off",
            Self::NoCheckpoint(_) | Self::NotCheckpointed { .. } => "not-checkpointed",
            Self::NotFound(_) => "record-not-found",
            Self::Archived { .. } => "record-archived",
            Self::BadRequest(_) => "bad-request",
            Self::BeyondCheckpoint { .. } => "beyond-checkpoint",
            Self::NotDataTrackerClient(_) => "not-a-data-tracker-client",
            Self::BadSubject(_) => "bad-subject",
            Self::Unreadable(_) => "exchange-log-unreadable",
        }
    }

    /// The one place a read failure becomes a gRPC status.
    fn into_status(self) -> Status {
        if let Self::Unreadable(detail) = &self {
            tracing::error!(detail, "exchange log read failed");
        }
        let mut metadata = MetadataMap::new();
        metadata.insert(BRIDGE_ERROR, MetadataValue::from_static(self.kind()));
        Status::with_metadata(self.code(), self.to_string(), metadata)
    }
}

/// The log, unless this gateway runs without one.
fn log_of(context: &LocalContext) -> Result<&ExchangeLog, ReadError> {
    context.log.as_ref().ok_or(ReadError::Off)
}

/// The latest signed checkpoint, with the root hash read from its note.
fn latest_checkpoint(log: &ExchangeLog, cadence: Cadence) -> Result<Checkpoint, ReadError> {
    let stored = log
        .latest_checkpoint()
        .ok_or(ReadError::NoCheckpoint(cadence))?;
    // Opening checks the gateway's own signature: a note that does not
    // verify must never be handed out as the log's word.
    let opened = note::Checkpoint::open(&stored.note, log.verifier()).map_err(|error| {
        ReadError::Unreadable(format!("the latest checkpoint does not verify: {error}"))
    })?;
    Ok(Checkpoint {
        note: stored.note.clone(),
        tree_size: opened.size,
        root_hash: opened.root.to_vec(),
    })
}

/// Runs `read` on the blocking pool with a fresh read-only connection.
async fn read<T, F>(log: &ExchangeLog, read: F) -> Result<T, ReadError>
where
    T: Send + 'static,
    F: FnOnce(&Reader) -> Result<T, ReadError> + Send + 'static,
{
    let log = log.clone();
    tokio::task::spawn_blocking(move || {
        let store = log.reader()?;
        // One state of the log for the whole answer, whatever the writer
        // or an archive run commit meanwhile.
        let _snapshot = store.snapshot()?;
        read(&store)
    })
    .await
    .map_err(|error| ReadError::Unreadable(format!("the read task failed: {error}")))?
}

fn decode(stored: &StoredRecord) -> Result<ExchangeRecord, ReadError> {
    stored.decode().map_err(|error| {
        ReadError::Unreadable(format!("record {} does not decode: {error}", stored.index))
    })
}

fn hashes(proof: Vec<Hash>) -> Vec<Vec<u8>> {
    proof.into_iter().map(|hash| hash.to_vec()).collect()
}

/// A proof the store cannot make although the sizes were checked: the
/// store and the checkpoint disagree.
fn unprovable(error: &merkle::ProofError) -> ReadError {
    ReadError::Unreadable(format!("cannot make a proof: {error}"))
}

/// A requested tree size: 0 means the latest checkpoint's, anything else
/// must not exceed it (beyond it nothing is signed yet).
fn tree_size(what: &'static str, requested: u64, latest: u64) -> Result<u64, ReadError> {
    match requested {
        0 => Ok(latest),
        requested if requested > latest => Err(ReadError::BeyondCheckpoint {
            what,
            requested,
            latest,
        }),
        requested => Ok(requested),
    }
}

/// `govbridge.audit.v1.ExchangeLog`.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeLogService;

impl ExchangeLogService {
    fn checkpoint(context: &LocalContext) -> Result<Checkpoint, ReadError> {
        latest_checkpoint(log_of(context)?, Cadence::of(context))
    }

    async fn record(context: &LocalContext, key: Option<Key>) -> Result<RecordProof, ReadError> {
        let log = log_of(context)?;
        let cadence = Cadence::of(context);
        let key = match key {
            Some(Key::Index(index)) => RecordKey::Index(index),
            Some(Key::RequestId(id)) if !id.is_empty() => RecordKey::RequestId(id),
            _ => {
                return Err(ReadError::BadRequest(
                    "give the record's index or its call's request_id".to_owned(),
                ));
            }
        };
        let checkpoint = latest_checkpoint(log, cadence)?;
        let size = checkpoint.tree_size;
        let member = context.caller.to_string();
        let (record, proof) = read(log, move |store| {
            // Of a call's records, the last the member is party to: the
            // outcome once there is one. Request ids come from callers, so
            // records of someone else's call may share one.
            let found = match &key {
                RecordKey::Index(index) => {
                    archived(store, *index)?;
                    store.record(*index)?
                }
                RecordKey::RequestId(id) => store.last_record_of_request_for(id, &member)?,
            };
            proven(store, found, key, &member, size, cadence)
        })
        .await?;
        Ok(RecordProof {
            index: record.index,
            record: record.bytes,
            checkpoint: Some(checkpoint),
            inclusion_proof: hashes(proof),
        })
    }

    /// The records at `indexes`, each proven in the latest checkpoint, in
    /// one read of the log; those that cannot be given, with why.
    async fn records(context: &LocalContext, indexes: Vec<u64>) -> Result<RecordProofs, ReadError> {
        if indexes.len() > MAX_RECORDS {
            return Err(ReadError::BadRequest(format!(
                "at most {MAX_RECORDS} indexes at a time, not {}",
                indexes.len()
            )));
        }
        let log = log_of(context)?;
        let cadence = Cadence::of(context);
        let checkpoint = latest_checkpoint(log, cadence)?;
        let size = checkpoint.tree_size;
        let member = context.caller.to_string();
        let answers = read(log, move |store| {
            let one = |index| {
                archived(store, index)?;
                let found = store.record(index)?;
                proven(
                    store,
                    found,
                    RecordKey::Index(index),
                    &member,
                    size,
                    cadence,
                )
            };
            indexes
                .into_iter()
                .map(|index| match one(index) {
                    Ok(proven) => Ok(Ok(proven)),
                    // What this record's own GetRecord would have said.
                    Err(
                        why @ (ReadError::NotFound(_)
                        | ReadError::NotCheckpointed { .. }
                        | ReadError::Archived { .. }),
                    ) => Ok(Err(MissingRecord {
                        index,
                        kind: why.kind().to_owned(),
                        message: why.to_string(),
                    })),
                    // The log itself: nothing is answered.
                    Err(error) => Err(error),
                })
                .collect::<Result<Vec<_>, ReadError>>()
        })
        .await?;
        let mut proofs = RecordProofs {
            checkpoint: Some(checkpoint),
            records: Vec::new(),
            missing: Vec::new(),
        };
        for answer in answers {
            match answer {
                Ok((record, proof)) => proofs.records.push(RecordProof {
                    index: record.index,
                    record: record.bytes,
                    checkpoint: None,
                    inclusion_proof: hashes(proof),
                }),
                Err(missing) => proofs.missing.push(missing),
            }
        }
        Ok(proofs)
    }

    async fn inclusion(
        context: &LocalContext,
        request: GetInclusionProofRequest,
    ) -> Result<InclusionProof, ReadError> {
        let log = log_of(context)?;
        let latest = latest_checkpoint(log, Cadence::of(context))?.tree_size;
        let size = tree_size("tree_size", request.tree_size, latest)?;
        let index = request.index;
        if index >= size {
            return Err(ReadError::BadRequest(format!(
                "index {index} is not in a tree of {size} records"
            )));
        }
        let proof = read(log, move |store| {
            archived(store, index)?;
            merkle::inclusion_proof(store, index, size)?.map_err(|error| unprovable(&error))
        })
        .await?;
        Ok(InclusionProof {
            index,
            tree_size: size,
            hashes: hashes(proof),
        })
    }

    async fn consistency(
        context: &LocalContext,
        request: GetConsistencyProofRequest,
    ) -> Result<ConsistencyProof, ReadError> {
        let log = log_of(context)?;
        let latest = latest_checkpoint(log, Cadence::of(context))?.tree_size;
        let new = tree_size("new_size", request.new_size, latest)?;
        let old = request.old_size;
        if old > new {
            return Err(ReadError::BadRequest(format!(
                "old_size {old} is larger than new_size {new}: a log only grows"
            )));
        }
        let proof = read(log, move |store| consistency(store, old, new)).await?;
        Ok(ConsistencyProof {
            old_size: old,
            new_size: new,
            hashes: hashes(proof),
        })
    }
}

/// The consistency proof from tree size `old` to `new`.
fn consistency(store: &Reader, old: u64, new: u64) -> Result<Vec<Hash>, ReadError> {
    // A tree that ends inside an archived segment is made of nodes that
    // left with it; one that ends at a segment's end is not.
    for size in [old, new] {
        if !size.is_multiple_of(SEGMENT) {
            archived(store, size)?;
        }
    }
    merkle::consistency_proof(store, old, new)?.map_err(|error| unprovable(&error))
}

/// Fails when record `index` has left the store for an archive.
fn archived(store: &Reader, index: u64) -> Result<(), ReadError> {
    let archived_end = store.archived_end()?;
    if index < archived_end {
        return Err(ReadError::Archived {
            index,
            archived_end,
        });
    }
    Ok(())
}

/// `found`, the record asked for as `key`, with its inclusion proof in
/// the tree of `size`: if `member` is party to its call (else it is not
/// found, as one that is not there) and `size` covers it.
fn proven(
    store: &Reader,
    found: Option<StoredRecord>,
    key: RecordKey,
    member: &str,
    size: u64,
    cadence: Cadence,
) -> Result<(StoredRecord, Vec<Hash>), ReadError> {
    // A partner's gateway is party to the calls it vouched for.
    let party = |stored: &StoredRecord| {
        decode(stored).map(|record| {
            record.caller == member || record.provider == member || record.via_gateway == member
        })
    };
    let record = match found {
        Some(stored) if party(&stored)? => stored,
        _ => return Err(ReadError::NotFound(key)),
    };
    if record.index >= size {
        return Err(ReadError::NotCheckpointed {
            index: record.index,
            size,
            cadence,
        });
    }
    let proof =
        merkle::inclusion_proof(store, record.index, size)?.map_err(|error| unprovable(&error))?;
    Ok((record, proof))
}

fn answer<T>(result: Result<T, ReadError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(ReadError::into_status)
}

#[tonic::async_trait]
impl exchange_log_server::ExchangeLog for ExchangeLogService {
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        let context = LocalContext::from_request(&request)?;
        answer(Self::checkpoint(context))
    }

    async fn get_record(
        &self,
        request: Request<GetRecordRequest>,
    ) -> Result<Response<RecordProof>, Status> {
        let context = LocalContext::from_request(&request)?;
        answer(Self::record(context, request.get_ref().key.clone()).await)
    }

    async fn get_records(
        &self,
        request: Request<GetRecordsRequest>,
    ) -> Result<Response<RecordProofs>, Status> {
        let context = LocalContext::from_request(&request)?;
        let indexes = request.get_ref().indexes.clone();
        answer(Self::records(context, indexes).await)
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<InclusionProof>, Status> {
        let context = LocalContext::from_request(&request)?;
        answer(Self::inclusion(context, *request.get_ref()).await)
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        let context = LocalContext::from_request(&request)?;
        answer(Self::consistency(context, *request.get_ref()).await)
    }
}

/// `govbridge.audit.v1.DataTracker`.
#[derive(Debug, Clone, Copy)]
pub struct DataTrackerService;

/// The records that end a call about one subject: outcomes, and refusals
/// (a refused call has only its decision record). Concealed ones are left
/// out here rather than after the limit, so that a concealed access never
/// takes the place of a visible one.
/// An access as the citizen sees it; `caller_name` is filled in later.
fn access(stored: &StoredRecord) -> Result<Access, ReadError> {
    let record = decode(stored)?;
    let outcome = record.phase() == Phase::Outcome;
    let at_us = if outcome {
        record.completed_us
    } else {
        record.received_us
    };
    Ok(Access {
        at_unix: at_us.div_euclid(1_000_000),
        caller: record.caller,
        caller_name: String::new(),
        provider: record.provider,
        method: record.method,
        purpose: record.purpose,
        consent_id: record.consent_id,
        allowed: record.allowed,
        grpc_status: record.grpc_status,
        index: if outcome {
            record.decision_index
        } else {
            stored.index
        },
    })
}

impl DataTrackerService {
    async fn accesses(
        context: &LocalContext,
        request: ListAccessesRequest,
    ) -> Result<ListAccessesResponse, ReadError> {
        let clients = &context.state.exchange_log_config().data_tracker_clients;
        if !clients.contains(&context.caller) {
            return Err(ReadError::NotDataTrackerClient(context.caller.clone()));
        }
        let log = log_of(context)?;
        let subject = parse_nin(&request.subject)
            .map_err(ReadError::BadSubject)?
            .to_string();
        let limit = match request.limit {
            0 => DEFAULT_ACCESSES,
            limit => limit.min(MAX_ACCESSES),
        };
        let since_us = request.since_unix.max(0).saturating_mul(1_000_000);
        let before = match request.before_index {
            0 => u64::MAX,
            index => index,
        };
        let now = crate::unix_time::now();
        let (mut accesses, oldest, archived_until_us) = read(log, move |store| {
            let records = store.accesses_to(&subject, since_us, before, now, limit as usize)?;
            let accesses = records.iter().map(access).collect::<Result<Vec<_>, _>>()?;
            let oldest = records.last().map(|record| record.index);
            Ok((accesses, oldest, store.archived_until_us()?))
        })
        .await?;
        let registry = context.state.registry();
        for access in &mut accesses {
            if let Some(member) = MemberId::parse(&access.caller)
                .ok()
                .and_then(|caller| registry.get(&caller))
            {
                access.caller_name.clone_from(&member.name);
            }
        }
        // Whether the answer reaches into archived time: then it says so.
        let archived_until_unix = if archived_until_us > 0 && since_us <= archived_until_us {
            archived_until_us.div_euclid(1_000_000)
        } else {
            0
        };
        // A full page: older ones may follow, below its oldest record (an
        // outcome's index: an access names its call's decision).
        let next_before_index = match oldest {
            Some(oldest) if accesses.len() == limit as usize => oldest,
            _ => 0,
        };
        Ok(ListAccessesResponse {
            accesses,
            archived_until_unix,
            next_before_index,
        })
    }
}

#[tonic::async_trait]
impl data_tracker_server::DataTracker for DataTrackerService {
    async fn list_accesses(
        &self,
        request: Request<ListAccessesRequest>,
    ) -> Result<Response<ListAccessesResponse>, Status> {
        let context = LocalContext::from_request(&request)?;
        answer(Self::accesses(context, request.get_ref().clone()).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_sizes_default_to_the_checkpoint_and_stay_within_it() {
        assert_eq!(tree_size("tree_size", 0, 7).ok(), Some(7));
        assert_eq!(tree_size("tree_size", 5, 7).ok(), Some(5));
        assert_eq!(tree_size("tree_size", 7, 7).ok(), Some(7));
        let beyond = tree_size("tree_size", 8, 7).err();
        assert!(matches!(
            beyond,
            Some(ReadError::BeyondCheckpoint {
                requested: 8,
                latest: 7,
                ..
            })
        ));
    }

    /// Records that left for an archive are named as such, never as
    /// missing or unreadable.
    #[test]
    fn archived_records_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::exchange_log::Store::open(dir.path(), "test.example/log").unwrap();
        let store = Reader::Local(store);
        assert!(archived(&store, 0).is_ok());
        rusqlite::Connection::open(dir.path().join(crate::exchange_log::store::DATABASE_FILE))
            .unwrap()
            .execute(
                "INSERT INTO meta (key, value) VALUES ('archived_end', ?1)",
                [SEGMENT.to_string()],
            )
            .unwrap();
        assert!(archived(&store, SEGMENT).is_ok());
        let status = archived(&store, 5).unwrap_err().into_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.metadata().get(BRIDGE_ERROR).unwrap(),
            "record-archived"
        );
        assert!(
            status.message().contains("audit prove --archives"),
            "{status:?}"
        );
        // A consistency proof between two sizes inside archived segments
        // needs their nodes: archived, not unreadable.
        rusqlite::Connection::open(dir.path().join(crate::exchange_log::store::DATABASE_FILE))
            .unwrap()
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'archived_end'",
                [(2 * SEGMENT).to_string()],
            )
            .unwrap();
        let error = consistency(&store, SEGMENT, SEGMENT + 1).unwrap_err();
        assert!(matches!(error, ReadError::Archived { .. }), "{error:?}");
    }

    #[test]
    fn errors_carry_their_kind_and_hide_details() {
        let status =
            ReadError::Unreadable("/var/lib/govbridge: disk I/O error".into()).into_status();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("/var/lib"));
        assert_eq!(
            status
                .metadata()
                .get(BRIDGE_ERROR)
                .and_then(|v| v.to_str().ok()),
            Some("exchange-log-unreadable")
        );
        let status = ReadError::NotFound(RecordKey::Index(3)).into_status();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.message(),
            "no record at index 3 among the calls you made or served"
        );
    }
}
