//! The exchange log: every call, allowed or denied, recorded before it is
//! forwarded, in an append-only Merkle tree whose signed checkpoints let
//! anyone prove offline that a record is in the log and that the log only
//! grew.
//!
//! - [`archive`]: old segments moved into files verifiable on their own.
//! - [`fleet`]: the log of a fleet of nodes, in PostgreSQL.
//! - [`lookup`]: finding records by request id and subject.
//! - [`merkle`]: RFC 9162 hashing, proofs and their verification.
//! - [`note`]: checkpoints as C2SP signed notes (Ed25519).
//! - [`store`]: the SQLite database and its schema.
//! - [`verify`]: checking a whole log, and proof bundles.
//!
//! Which request field names the data subject is the catalog's
//! ([`crate::catalog::subject`]); the services that serve proofs and the
//! Data Tracker are the directory's ([`crate::directory::exchange_log`]).
//!
//! [`ExchangeLog`] is the gateway's handle. Records go to one writer thread
//! that commits whatever has queued up in one transaction (group commit):
//! under load, thousands of calls share each fsync. A caller's append
//! resolves only once its record is durable. When the store cannot write,
//! appends fail, the gateway refuses calls, and the next batch tries again:
//! service resumes by itself when the store does.

pub mod archive;
pub mod copy;
pub mod fleet;
pub mod lookup;
pub mod merkle;
pub mod receipts;
/// Signed notes: the log's checkpoints (kept here, where they began).
pub use crate::note;
pub mod store;
pub mod verify;
pub mod witness;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::oneshot;

use crate::config::ExchangeLogConfig;
pub use crate::proto::audit::v1::{ExchangeRecord, Phase};
use merkle::Frontier;
use note::{SigningKey, Verifier};
pub use store::{Store, StoreError, StoreFault, StoredCheckpoint};

/// The record format version this gateway writes.
pub const RECORD_VERSION: u32 = 1;

/// Records waiting for the writer, at most; beyond that calls are refused
/// rather than queued without bound.
const QUEUE_CAPACITY: usize = 32 * 1024;
/// Records committed in one transaction, at most.
pub(crate) const MAX_BATCH: usize = 4096;
/// How often a store that failed is tried again while no call does it.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How often an idle node of a fleet reads how far the others took the
/// log (for its size, and the checkpoint its Data Tracker serves).
const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

/// Group commit under load: once a commit has taken this many records,
/// the next one waits for more ([`Gather`]).
const GATHER_ABOVE: usize = 8;
/// ... looking again every so often, as long as records keep coming ...
const GATHER_GAP: Duration = Duration::from_micros(250);
/// ... for at most this long after its first record.
const GATHER_WINDOW: Duration = Duration::from_micros(1500);

/// How the writer gathers a batch: everything queued, and under load
/// (the previous commit took [`GATHER_ABOVE`] records or more) what
/// follows closely, so that each commit carries more records.
///
/// Every commit costs an fsync and rewrites whole pages (the last page of
/// each table, the B-trees' right edges, the header) whatever it carries:
/// at saturation, commits of some 14 records wrote 4.4 times what they
/// stored, and their fsyncs were a tenth of the gateway's CPU. Waiting up
/// to 1.5 ms for the records that arrive every few tens of microseconds
/// then makes commits two to three times larger. A call waiting for its
/// record waits that much longer, but only under load, where its latency
/// is queueing anyway; at a few hundred calls per second commits take
/// one or two records and nothing waits.
///
/// While it waits, the writer sleeps and then takes what arrived: it does
/// not wait *on the queue*, where each record would wake it (a futex call
/// in the sender, a context switch each way) only to be put back to sleep
/// for the next one. A pause without a new record ends the wait, and so
/// does a batch as large as the previous one: the calls it answered are
/// back, and the pause that found nobody else coming left the store idle
/// for 0.3 ms of each commit's cycle (64 callers each waiting for its
/// record: a quarter to a third of the cycle, docs/benchmarks.md).
struct Gather {
    /// Records (and other jobs) the previous commit took.
    last: usize,
    gap: Duration,
    window: Duration,
    /// How the writer waits: `std::thread::sleep`, but for tests.
    pause: Box<dyn FnMut(Duration) + Send>,
}

impl Default for Gather {
    fn default() -> Self {
        Self {
            last: 0,
            gap: GATHER_GAP,
            window: GATHER_WINDOW,
            pause: Box::new(std::thread::sleep),
        }
    }
}

impl Gather {
    /// Adds to `batch` (which holds the first job) what is queued, and
    /// under load what arrives soon after.
    fn fill(&mut self, queue: &Receiver<Job>, batch: &mut Vec<Job>) {
        let first = Instant::now();
        let waiting = self.last >= GATHER_ABOVE;
        let mut paused = false;
        loop {
            let before = batch.len();
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let left = self.window.saturating_sub(first.elapsed());
            let quiet = paused && batch.len() == before;
            let back = batch.len() >= self.last;
            if !waiting || back || batch.len() >= MAX_BATCH || quiet || left.is_zero() {
                break;
            }
            (self.pause)(left.min(self.gap));
            paused = true;
        }
        self.last = batch.len();
    }
}

/// Why the log cannot take a record.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LogUnavailable(pub Arc<str>);

/// Why the log cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}: {message}", path.display())]
    File {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Where a writer commits: a node's own SQLite store, or the log a fleet
/// of nodes shares in PostgreSQL.
trait Backend: Send + 'static {
    /// Whether other writers (a fleet's other nodes) append too.
    const SHARED: bool = false;
    /// Appends `records` (with a signed checkpoint if asked) after
    /// `frontier`, which becomes the log's; returns the first index.
    fn append(
        &mut self,
        frontier: &mut Frontier,
        records: &[&ExchangeRecord],
        checkpoint: Option<(&str, &SigningKey)>,
    ) -> Result<u64, StoreError>;
    fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError>;
    /// Whether the store takes writes again.
    fn probe(&mut self) -> Result<(), StoreError>;
    fn set_fault(&mut self, fault: Option<StoreFault>) -> Result<(), StoreError>;
    /// Housekeeping between batches, once the calls have their answers.
    fn rest(&mut self) {}
    /// The log as other writers left it; `None` for a store of its own.
    fn catch_up(&mut self) -> Option<Result<Frontier, StoreError>> {
        None
    }
}

/// Where a call waits for its record's index, or why it has none; its
/// record comes back with the answer.
type Reply = oneshot::Sender<Answer>;

/// A record's index, or why it has none, and the record itself: freed by
/// the call that made it, on a runtime thread. Freed by the writer, each
/// record's strings went back to a runtime thread's malloc arena under
/// its lock: glibc's lock waits and wake-ups were 6 % of the gateway's
/// samples at saturation (perf), and handing records back served 4 % more
/// calls everything-on (docs/benchmarks.md).
type Answer = (Result<u64, LogUnavailable>, Box<ExchangeRecord>);

impl Backend for Store {
    fn append(
        &mut self,
        frontier: &mut Frontier,
        records: &[&ExchangeRecord],
        checkpoint: Option<(&str, &SigningKey)>,
    ) -> Result<u64, StoreError> {
        Store::append(self, frontier, records, checkpoint)
    }

    fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        Store::latest_checkpoint(self)
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        Store::probe(self)
    }

    fn set_fault(&mut self, fault: Option<StoreFault>) -> Result<(), StoreError> {
        Store::set_fault(self, fault)
    }

    fn rest(&mut self) {
        self.restart_wal_above(store::WAL_BOUND);
    }
}

impl Backend for fleet::SharedStore {
    const SHARED: bool = true;

    fn append(
        &mut self,
        frontier: &mut Frontier,
        records: &[&ExchangeRecord],
        checkpoint: Option<(&str, &SigningKey)>,
    ) -> Result<u64, StoreError> {
        fleet::SharedStore::append(self, frontier, records, checkpoint)
    }

    fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        fleet::SharedStore::latest_checkpoint(self)
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        fleet::SharedStore::probe(self)
    }

    fn set_fault(&mut self, fault: Option<StoreFault>) -> Result<(), StoreError> {
        fleet::SharedStore::set_fault(self, fault);
        Ok(())
    }

    fn catch_up(&mut self) -> Option<Result<Frontier, StoreError>> {
        Some(self.head())
    }
}

/// The PostgreSQL side of a fleet node's log.
#[derive(Debug, Clone)]
pub struct FleetStore {
    /// The writer's own connection: its transactions hold the log's head,
    /// and nothing else may run inside them.
    pub writer: Arc<crate::database::Database>,
    /// Reads (the Data Tracker, proofs), pipelined on a shared connection.
    pub reader: Arc<crate::database::Database>,
    /// This node's id, kept with the records it commits.
    pub node: String,
    /// The runtime the connections run on.
    pub runtime: tokio::runtime::Handle,
}

/// A read-only view of the log, for proofs and queries: the node's own
/// store, or the fleet's.
#[derive(Debug)]
pub enum Reader {
    Local(Store),
    Fleet(fleet::FleetReader),
}

impl Reader {
    /// One state of a local store for as long as the guard lives; the
    /// fleet's log needs none (see [`fleet`]).
    pub fn snapshot(&self) -> Result<Option<rusqlite::Transaction<'_>>, StoreError> {
        match self {
            Self::Local(store) => store.snapshot(),
            Self::Fleet(_) => Ok(None),
        }
    }

    pub fn record(&self, index: u64) -> Result<Option<store::StoredRecord>, StoreError> {
        match self {
            Self::Local(store) => store.record(index),
            Self::Fleet(fleet) => fleet.record(index),
        }
    }

    pub fn last_record_of_request_for(
        &self,
        request_id: &str,
        member: &str,
    ) -> Result<Option<store::StoredRecord>, StoreError> {
        match self {
            Self::Local(store) => store.last_record_of_request_for(request_id, member),
            Self::Fleet(fleet) => fleet.last_record_of_request_for(request_id, member),
        }
    }

    pub fn accesses_to(
        &self,
        subject: &str,
        since_us: i64,
        before: u64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<store::StoredRecord>, StoreError> {
        match self {
            Self::Local(store) => store.accesses_to(subject, since_us, before, now, limit),
            Self::Fleet(fleet) => fleet.accesses_to(subject, since_us, before, now, limit),
        }
    }

    /// The latest signed checkpoint, as stored (with the cosignatures
    /// kept since).
    pub fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        match self {
            Self::Local(store) => store.latest_checkpoint(),
            Self::Fleet(fleet) => fleet.latest_checkpoint(),
        }
    }

    /// Records before this index are archived (a fleet's log keeps all).
    pub fn archived_end(&self) -> Result<u64, StoreError> {
        match self {
            Self::Local(store) => store.archived_end(),
            Self::Fleet(_) => Ok(0),
        }
    }

    /// The time of the last archived record, 0 when none is.
    pub fn archived_until_us(&self) -> Result<i64, StoreError> {
        match self {
            Self::Local(store) => store.archived_until_us(),
            Self::Fleet(_) => Ok(0),
        }
    }
}

impl merkle::Nodes for Reader {
    type Error = StoreError;

    fn node(&self, level: u32, index: u64) -> Result<merkle::Hash, StoreError> {
        match self {
            Self::Local(store) => store.node(level, index),
            Self::Fleet(fleet) => fleet.node(level, index),
        }
    }
}

enum Job {
    Append {
        record: Box<ExchangeRecord>,
        reply: Reply,
    },
    Fault(Option<StoreFault>),
    Checkpoint(oneshot::Sender<Result<Option<StoredCheckpoint>, LogUnavailable>>),
    /// Commit what is queued, sign a final checkpoint and stop.
    Close,
}

/// What the writer publishes for everyone else.
#[derive(Debug, Default)]
struct Shared {
    /// Records committed so far.
    size: AtomicU64,
    /// False while the store refuses writes.
    healthy: AtomicBool,
    /// The latest signed checkpoint.
    checkpoint: ArcSwapOption<StoredCheckpoint>,
    /// Records waiting for the writer.
    queued: AtomicU64,
    /// How long each commit took.
    commits: crate::telemetry::metrics::Histogram,
    /// When the commit in progress began ([`monotonic_micros`], plus one);
    /// 0 between commits.
    committing_since: AtomicU64,
    /// The writer's lookups of records not sealed yet, for readers.
    recent: Option<Arc<lookup::Recent>>,
    /// A fleet's log: the records past its lookups' seal, as this node's
    /// sealer last found them.
    unsealed: AtomicU64,
}

impl Shared {
    /// A healthy, empty log, with the writer's lookups of recent records
    /// when it keeps them.
    fn new(recent: Option<Arc<lookup::Recent>>) -> Arc<Self> {
        Arc::new(Self {
            healthy: AtomicBool::new(true),
            recent,
            ..Self::default()
        })
    }

    /// Publishes the log as opened: its size and latest checkpoint.
    fn published(&self, size: u64, checkpoint: Option<StoredCheckpoint>) {
        self.size.store(size, Ordering::Release);
        self.checkpoint.store(checkpoint.map(Arc::new));
    }
}

/// The gateway's handle on its exchange log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ExchangeLog {
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
    verifier: Arc<Verifier>,
    dir: Arc<Path>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The archiver's thread, with `exchange_log.retain`.
    archiver: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The fleet's log, when this node shares one.
    fleet: Option<fleet::FleetReader>,
    /// The connection of the fleet log's sealer, closed with the log.
    sealer: Option<Arc<crate::database::Database>>,
}

impl ExchangeLog {
    /// Opens the log in `config.data_dir` (creating the directory, the
    /// database and the signing key on first use) and starts its writer.
    pub fn open(config: &ExchangeLogConfig) -> Result<Self, OpenError> {
        let dir = &config.data_dir;
        create_private_dir(dir)?;
        let lock = lock_writer(dir)?;
        // Made here by the log's owner: `audit verify` takes it (to read
        // the hot store a chunk at a time) but never makes it. Without it
        // verify reads in one snapshot, which is no reason not to serve.
        let archive_lock = dir.join(archive::LOCK_FILE);
        if let Err(error) = archive::create_lock_file(&archive_lock, 0o640) {
            tracing::warn!(
                file = %archive_lock.display(),
                %error,
                "cannot make the log's archive lock: audit verify will hold one snapshot of \
                 the log, and its WAL, for as long as it reads"
            );
        }
        let key = load_or_create_key(dir, &config.origin)?;
        let store = Store::open(dir, &config.origin)?;
        let frontier = store.frontier()?;
        let checkpoint = store.latest_checkpoint()?;
        // Another key in the file (a replaced or restored one) would go on
        // signing this log under an identity no one checks it with.
        if let Some(latest) = &checkpoint
            && let Err(error) = note::Checkpoint::open(&latest.note, &key.verifier())
        {
            return Err(OpenError::File {
                path: dir.join(store::KEY_FILE),
                message: format!(
                    "does not sign this log: its latest checkpoint (of {} records) does not \
                     verify with it ({error}); put back the key the log was signed with",
                    latest.size
                ),
            });
        }
        publish_verifier(dir, &key)?;
        let shared = Shared::new(store.recent());
        shared.published(frontier.size(), checkpoint.clone());
        let (running, stopped) = std::sync::mpsc::channel::<()>();
        let (archiving, archive_stopped) = std::sync::mpsc::channel::<()>();
        let wal = store::WalCheckpointer::open(dir)?;
        let verifier = Arc::new(key.verifier());
        let (jobs, thread) = spawn_writer(
            config,
            store,
            frontier,
            key,
            &shared,
            Running {
                _threads: vec![running, archiving],
                _lock: Some(lock),
            },
        )?;
        let mut archiver_thread = None;
        if let Some(retain) = config.retain {
            let archiver = archive::Archiver {
                data: dir.clone(),
                out: config.archive_dir.clone(),
                retain,
                verifier: (*verifier).clone(),
            };
            let thread = std::thread::Builder::new()
                .name("exchange-log-archive".into())
                .spawn(move || archiver.run(&archive_stopped))
                .map_err(|error| OpenError::File {
                    path: dir.clone(),
                    message: format!("cannot start the archiver: {error}"),
                })?;
            archiver_thread = Some(thread);
        }
        // Copying the WAL into the database is done aside, so that commits
        // never wait for it; it stops when the writer does.
        std::thread::Builder::new()
            .name("exchange-log-wal".into())
            .spawn(move || wal.run(&stopped))
            .map_err(|error| OpenError::File {
                path: dir.clone(),
                message: format!("cannot start the WAL checkpointer: {error}"),
            })?;
        tracing::info!(
            dir = %dir.display(),
            origin = config.origin,
            records = shared.size.load(Ordering::Relaxed),
            key = %verifier,
            "exchange log open"
        );
        Ok(Self {
            jobs,
            shared,
            verifier,
            dir: Arc::from(dir.as_path()),
            writer: Arc::new(Mutex::new(Some(thread))),
            archiver: Arc::new(Mutex::new(archiver_thread)),
            fleet: None,
            sealer: None,
        })
    }

    /// Opens the fleet's log in PostgreSQL (creating it on first use),
    /// signed with the key in `config.data_dir` (created there on first
    /// use: copy it to every node), and starts this node's writer. Blocks:
    /// call it where blocking is allowed.
    pub fn open_fleet(config: &ExchangeLogConfig, fleet: FleetStore) -> Result<Self, OpenError> {
        let dir = &config.data_dir;
        if config.retain.is_some() {
            return Err(OpenError::File {
                path: dir.clone(),
                message: "exchange_log.retain: archiving a fleet's log (`[store] url`) is not \
                          supported yet; copy it with `govbridge audit pull` instead"
                    .to_owned(),
            });
        }
        create_private_dir(dir)?;
        let key = load_or_create_key(dir, &config.origin)?;
        let verifier = Arc::new(key.verifier());
        let shared = Shared::new(None);
        let (store, frontier) = fleet::SharedStore::open(&fleet, &config.origin, &verifier)?;
        publish_verifier(dir, &key)?;
        shared.published(frontier.size(), store.latest_checkpoint()?);
        let (running, stopped) = std::sync::mpsc::channel();
        let running = Running {
            _threads: vec![running],
            _lock: None,
        };
        let (jobs, thread) = spawn_writer(config, store, frontier, key, &shared, running)?;
        let sealer = fleet.reader.sibling();
        fleet.runtime.spawn(fleet::seal(
            Arc::clone(&sealer),
            Arc::clone(&shared),
            stopped,
        ));
        let reader = fleet::FleetReader::new(fleet.reader, fleet.runtime);
        tracing::info!(
            origin = config.origin,
            records = shared.size.load(Ordering::Relaxed),
            key = %verifier,
            "the fleet's exchange log open"
        );
        Ok(Self {
            jobs,
            shared,
            verifier,
            dir: Arc::from(dir.as_path()),
            writer: Arc::new(Mutex::new(Some(thread))),
            archiver: Arc::new(Mutex::new(None)),
            fleet: Some(reader),
            sealer: Some(sealer),
        })
    }

    /// Whether this node writes a fleet's shared log.
    pub fn is_shared(&self) -> bool {
        self.fleet.is_some()
    }

    /// Queues `record`; the returned future resolves with its leaf index
    /// once it is durable.
    pub fn append(&self, record: ExchangeRecord) -> Appending {
        let (reply, receiver) = oneshot::channel();
        let job = Job::Append {
            record: Box::new(record),
            reply,
        };
        // Counted before it is sent: the writer may take it (and count it
        // out) before `try_send` returns, and the gauge must never wrap.
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        let sent = self.jobs.try_send(job);
        if sent.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        }
        let state = match sent {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_)) => Err(LogUnavailable(
                "the exchange log's queue is full: the store cannot keep up".into(),
            )),
            Err(TrySendError::Disconnected(_)) => {
                Err(LogUnavailable("the exchange log writer has stopped".into()))
            }
        };
        Appending(Some(state))
    }

    /// Simulates a store failure (or ends the simulation): for drills and
    /// tests of the fail-closed path.
    pub fn simulate_fault(&self, fault: Option<StoreFault>) {
        // A full queue only delays the fault; a stopped writer has none.
        let _ = self.jobs.send(Job::Fault(fault));
    }

    /// Signs a checkpoint of everything committed so far, now, unless the
    /// latest one already covers it.
    pub async fn checkpoint(&self) -> Result<Option<StoredCheckpoint>, LogUnavailable> {
        let (reply, receiver) = oneshot::channel();
        let stopped = || LogUnavailable("the exchange log writer has stopped".into());
        self.jobs
            .try_send(Job::Checkpoint(reply))
            .map_err(|error| match error {
                TrySendError::Full(_) => LogUnavailable("the exchange log's queue is full".into()),
                TrySendError::Disconnected(_) => stopped(),
            })?;
        receiver.await.map_err(|_| stopped())?
    }

    /// Records committed so far.
    pub fn size(&self) -> u64 {
        self.shared.size.load(Ordering::Acquire)
    }

    /// Whether the last write succeeded.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    /// Records waiting to be committed.
    pub fn queued(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// A fleet's log: the records its lookups do not cover yet (read
    /// directly by the Data Tracker's queries until they are sealed).
    pub fn unsealed(&self) -> Option<u64> {
        self.fleet
            .as_ref()
            .map(|_| self.shared.unsealed.load(Ordering::Relaxed))
    }

    /// How long each group commit took.
    pub fn commit_durations(&self) -> &crate::telemetry::metrics::Histogram {
        &self.shared.commits
    }

    /// How long the commit in progress has taken so far, if one is: a
    /// disk or database that stalls shows here long before the queue
    /// fills or a write fails.
    pub fn committing_for(&self) -> Option<Duration> {
        let since = self.shared.committing_since.load(Ordering::Acquire);
        (since != 0).then(|| Duration::from_micros(monotonic_micros().saturating_sub(since - 1)))
    }

    /// The latest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Option<Arc<StoredCheckpoint>> {
        self.shared.checkpoint.load_full()
    }

    /// The log's public key.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps a witness's cosignature `line` of the checkpoint at `size`:
    /// in the store, and in the checkpoint this log serves if that is
    /// still its latest. Blocking: call it on the blocking pool.
    pub fn add_cosignature(&self, size: u64, line: &str) -> Result<(), StoreError> {
        match &self.fleet {
            Some(fleet) => fleet.add_cosignature(size, line)?,
            None => store::add_cosignature(&self.dir, size, line)?,
        }
        self.shared.checkpoint.rcu(|latest| match latest {
            Some(checkpoint) if checkpoint.size == size && !checkpoint.note.contains(line) => {
                Some(Arc::new(StoredCheckpoint {
                    note: crate::note::with_cosignature(&checkpoint.note, line),
                    ..(**checkpoint).clone()
                }))
            }
            other => other.clone(),
        });
        Ok(())
    }

    /// A read-only view, for proofs and queries: blocking, so use it on
    /// the blocking pool.
    pub fn reader(&self) -> Result<Reader, StoreError> {
        if let Some(fleet) = &self.fleet {
            return Ok(Reader::Fleet(fleet.clone()));
        }
        let store = Store::open_read_only(&self.dir)?;
        Ok(Reader::Local(match &self.shared.recent {
            Some(recent) => store.with_recent(recent.clone()),
            None => store,
        }))
    }

    /// Commits what is queued, signs a final checkpoint and stops the
    /// writer; later appends fail. Blocks until done: call it from a
    /// blocking context, once the gateway has stopped serving.
    pub fn close(&self) {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            let _ = self.jobs.send(Job::Close);
            if writer.join().is_err() {
                tracing::error!("the exchange log writer panicked");
            }
        }
        // The writer gone, the archiver ends its pass and stops.
        let archiver = self
            .archiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if archiver.is_some_and(|archiver| archiver.join().is_err()) {
            tracing::error!("the exchange log archiver panicked");
        }
        // Its connection ends as a client's, before the node says it
        // stopped (the sealer itself stops at its next look).
        if let Some(sealer) = &self.sealer {
            sealer.close();
        }
    }
}

/// A queued append: resolves with the record's leaf index once durable.
#[derive(Debug)]
pub struct Appending(Option<Result<oneshot::Receiver<Answer>, LogUnavailable>>);

impl Appending {
    /// Whether the record was queued; it is then committed whether or not
    /// anyone waits for it.
    pub fn queued(&self) -> Result<(), LogUnavailable> {
        match &self.0 {
            Some(Err(error)) => Err(error.clone()),
            _ => Ok(()),
        }
    }
}

impl Future for Appending {
    type Output = Result<u64, LogUnavailable>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let stopped = || LogUnavailable("the exchange log writer has stopped".into());
        match self.0.as_mut() {
            None => Poll::Ready(Err(stopped())),
            Some(Err(_)) => match self.0.take() {
                Some(Err(error)) => Poll::Ready(Err(error)),
                _ => Poll::Ready(Err(stopped())),
            },
            Some(Ok(receiver)) => {
                let answer = std::task::ready!(Pin::new(receiver).poll(cx));
                self.0 = None;
                // The record is dropped here, on the call's thread.
                Poll::Ready(answer.map_or_else(|_| Err(stopped()), |(index, _record)| index))
            }
        }
    }
}

/// Starts the thread that writes the log; `running` are dropped when it
/// stops, which stops whatever waits on them.
fn spawn_writer<B: Backend>(
    config: &ExchangeLogConfig,
    store: B,
    frontier: Frontier,
    key: SigningKey,
    shared: &Arc<Shared>,
    running: Running,
) -> Result<(SyncSender<Job>, std::thread::JoinHandle<()>), OpenError> {
    let (jobs, queue) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
    let checkpointed = shared
        .checkpoint
        .load()
        .as_ref()
        .map_or(0, |checkpoint| checkpoint.size);
    let writer = Writer {
        store,
        frontier,
        key,
        origin: config.origin.clone(),
        interval: config.checkpoint_interval,
        every: config.checkpoint_records,
        checkpointed,
        last_checkpoint: Instant::now(),
        checkpoint_failed: false,
        shared: shared.clone(),
        _running: running,
    };
    let thread = std::thread::Builder::new()
        .name("exchange-log".into())
        .spawn(move || writer.run(&queue))
        .map_err(|error| OpenError::File {
            path: config.data_dir.clone(),
            message: format!("cannot start the log writer: {error}"),
        })?;
    Ok((jobs, thread))
}

/// The single thread that writes the log (on each node, for a fleet).
struct Writer<B: Backend> {
    store: B,
    frontier: Frontier,
    key: SigningKey,
    origin: String,
    interval: Duration,
    every: u64,
    /// Tree size of the latest checkpoint.
    checkpointed: u64,
    last_checkpoint: Instant,
    /// The last checkpoint asked for was not stored (a fleet's database
    /// refused it): the next is due at the interval, not at every batch.
    checkpoint_failed: bool,
    shared: Arc<Shared>,
    _running: Running,
}

/// What the writer holds for as long as it runs (never read: dropping it
/// is what counts).
struct Running {
    /// Dropped when the writer stops, which stops the WAL checkpointer
    /// and the archiver.
    _threads: Vec<std::sync::mpsc::Sender<()>>,
    /// A single node's: its log is written by this writer only.
    _lock: Option<std::fs::File>,
}

/// The file whose lock a single node's writer holds in its log's
/// directory: two gateways given the same `data_dir` would each append
/// under the same indexes, the second failing every call.
pub const WRITER_LOCK: &str = "exchange-log.lock";

/// Takes the writer's lock of the log in `dir`, or says who holds it. The
/// kernel drops the lock of a process that dies.
fn lock_writer(dir: &std::path::Path) -> Result<std::fs::File, OpenError> {
    let path = dir.join(WRITER_LOCK);
    let failed = |message: String| OpenError::File {
        path: path.clone(),
        message,
    };
    let file = archive::create_lock_file(&path, 0o600)
        .map_err(|error| failed(format!("cannot open the log's lock: {error}")))?;
    // An archive run tells whether a gateway writes by taking the lock for
    // a moment (`writer_running`): a start at that moment tries again.
    let mut tries = 50;
    loop {
        tries -= 1;
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tries > 0 => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(failed(
                    "another gateway writes this exchange log (it holds this lock): give each \
                     gateway its own exchange_log.data_dir, or stop the other first"
                        .to_owned(),
                ));
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(failed(format!("cannot take the log's lock: {error}")));
            }
        }
    }
}

/// Rows that a long reader beside the writer (`audit verify`, `backup`'s
/// copy) reads in one snapshot: between two, the writer may restart its
/// WAL, which no reader may be using then.
const READ_CHUNK: u64 = 1 << 16;

/// The pause such a reader makes between two chunks, for the writer's
/// restart (tried after each of its batches).
const BETWEEN_READS: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether a gateway's writer holds the log in `dir` (or it cannot be
/// told): its checkpointer then keeps the WAL bounded. Looked at by taking
/// the lock for a moment, never making its file.
fn writer_running(dir: &std::path::Path) -> bool {
    match archive::open_lock_file(&dir.join(WRITER_LOCK)) {
        Ok(file) => file.try_lock().is_err(),
        // No gateway ever wrote here.
        Err(error) => error.kind() != std::io::ErrorKind::NotFound,
    }
}

impl<B: Backend> Writer<B> {
    fn run(mut self, queue: &Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut gather = Gather::default();
        loop {
            let healthy = self.shared.healthy.load(Ordering::Acquire);
            let wait = if !healthy {
                PROBE_EVERY
            } else if self.frontier.size() > self.checkpointed {
                self.interval.saturating_sub(self.last_checkpoint.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            let wait = if B::SHARED {
                wait.min(CATCH_UP_EVERY)
            } else {
                wait
            };
            match queue.recv_timeout(wait) {
                Ok(job) => batch.push(job),
                // Health checks may keep calls away while the store fails:
                // the writer finds out by itself when it can write again.
                Err(RecvTimeoutError::Timeout) if !healthy => self.probe(),
                Err(RecvTimeoutError::Timeout) => self.catch_up(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !batch.is_empty() {
                gather.fill(queue, &mut batch);
            }
            if self.process(&mut batch) {
                break;
            }
        }
        if self.frontier.size() > self.checkpointed {
            let _ = self.commit(&[], true);
        }
        tracing::info!(records = self.frontier.size(), "exchange log closed");
    }

    /// Handles a batch of jobs; true when the log is to close.
    fn process(&mut self, batch: &mut Vec<Job>) -> bool {
        let mut closing = false;
        let mut records = Vec::new();
        let mut replies = Vec::new();
        let mut checkpoint_replies = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Append { record, reply } => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    records.push(record);
                    replies.push(reply);
                }
                Job::Fault(fault) => {
                    // Records queued before the fault still go first.
                    // Failures are answered to the waiting calls.
                    let _ = self.flush(&mut records, &mut replies, false);
                    if let Err(error) = self.store.set_fault(fault) {
                        tracing::error!(%error, "cannot simulate a store fault");
                    }
                    tracing::warn!(?fault, "exchange log store fault simulation changed");
                }
                Job::Checkpoint(reply) => checkpoint_replies.push(reply),
                Job::Close => closing = true,
            }
        }
        let forced = !checkpoint_replies.is_empty();
        let result = self.flush(&mut records, &mut replies, forced);
        // The calls have their answers: the journal may take its turn.
        self.store.rest();
        for reply in checkpoint_replies {
            let _ = reply.send(
                result
                    .clone()
                    .map(|()| self.shared.checkpoint.load_full().map(|c| (*c).clone())),
            );
        }
        closing
    }

    /// Commits `records`, signing a checkpoint if one is due (or
    /// `force`d), and answers each waiting call with its record.
    #[expect(
        clippy::vec_box,
        reason = "each record keeps the box it came in, to go back in it (`Answer`)"
    )]
    fn flush(
        &mut self,
        records: &mut Vec<Box<ExchangeRecord>>,
        replies: &mut Vec<Reply>,
        force: bool,
    ) -> Result<(), LogUnavailable> {
        let size = self.frontier.size() + records.len() as u64;
        let due = size > self.checkpointed
            && (force
                || (!self.checkpoint_failed && size - self.checkpointed >= self.every)
                || self.last_checkpoint.elapsed() >= self.interval);
        // A store that failed is retried by calls and probes, not by
        // checkpoints alone (which would spin, and could succeed where
        // records cannot).
        let healthy = self.shared.healthy.load(Ordering::Acquire);
        if records.is_empty() && !(due && healthy) {
            return Ok(());
        }
        let refs: Vec<&ExchangeRecord> = records.iter().map(|record| &**record).collect();
        let result = self.commit(&refs, due);
        drop(refs);
        let answered = replies.drain(..).zip(records.drain(..));
        for (offset, (reply, record)) in answered.enumerate() {
            let index = match &result {
                Ok(first) => Ok(first + offset as u64),
                Err(error) => Err(error.clone()),
            };
            let _ = reply.send((index, record));
        }
        result.map(|_| ())
    }

    fn commit(
        &mut self,
        records: &[&ExchangeRecord],
        checkpoint: bool,
    ) -> Result<u64, LogUnavailable> {
        let signing = checkpoint.then_some((self.origin.as_str(), &self.key));
        let started = Instant::now();
        self.shared
            .committing_since
            .store(monotonic_micros() + 1, Ordering::Release);
        let appended = self.store.append(&mut self.frontier, records, signing);
        self.shared.committing_since.store(0, Ordering::Release);
        self.shared.commits.observe(started.elapsed());
        match appended {
            Ok(first) => {
                let size = self.frontier.size();
                self.shared.size.store(size, Ordering::Release);
                if checkpoint {
                    self.last_checkpoint = Instant::now();
                    // As stored: a fleet's records are committed even when
                    // their checkpoint is not, and it is then due again at
                    // the next interval (or when the log closes).
                    match self.store.latest_checkpoint() {
                        Ok(latest) => {
                            let stored = latest.as_ref().map_or(0, |latest| latest.size);
                            self.checkpointed = self.checkpointed.max(stored);
                            self.checkpoint_failed = self.checkpointed < size;
                            self.shared.checkpoint.store(latest.map(Arc::new));
                        }
                        Err(error) => {
                            self.checkpoint_failed = true;
                            tracing::warn!(%error, "cannot read back the checkpoint");
                        }
                    }
                }
                if !records.is_empty() {
                    self.writable();
                }
                Ok(first)
            }
            Err(error) => {
                if self.shared.healthy.swap(false, Ordering::AcqRel) {
                    tracing::error!(%error, "exchange log cannot write; refusing calls until it can");
                }
                Err(LogUnavailable(error.to_string().into()))
            }
        }
    }

    /// Takes in what other writers of a shared log appended and signed.
    fn catch_up(&mut self) {
        let Some(head) = self.store.catch_up() else {
            return;
        };
        let latest = head.and_then(|head| Ok((head, self.store.latest_checkpoint()?)));
        match latest {
            Ok((head, checkpoint)) => {
                if head.size() > self.frontier.size() {
                    self.frontier = head;
                    self.shared
                        .size
                        .store(self.frontier.size(), Ordering::Release);
                }
                // A newer checkpoint, or the same cosigned again (the
                // node that sends them to the witnesses keeps the
                // fresher cosignatures in the database).
                let served = self.shared.checkpoint.load();
                let moved = |checkpoint: &StoredCheckpoint| {
                    checkpoint.size > self.checkpointed
                        || served.as_deref().is_some_and(|served| {
                            served.size == checkpoint.size && served.note != checkpoint.note
                        })
                };
                if let Some(checkpoint) = checkpoint.filter(|checkpoint| moved(checkpoint)) {
                    self.checkpointed = self.checkpointed.max(checkpoint.size);
                    self.shared.checkpoint.store(Some(Arc::new(checkpoint)));
                }
            }
            // Calls would fail anyway: they are refused at once, and the
            // writer probes until the database answers.
            Err(error) => {
                if self.shared.healthy.swap(false, Ordering::AcqRel) {
                    tracing::error!(%error, "the fleet's log cannot be reached; refusing calls until it can");
                }
            }
        }
    }

    /// Tries a record-sized write that leaves nothing behind.
    fn probe(&mut self) {
        match self.store.probe() {
            Ok(()) => self.writable(),
            Err(error) => tracing::debug!(%error, "exchange log still cannot write"),
        }
    }

    fn writable(&self) {
        if !self.shared.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!(
                records = self.frontier.size(),
                "exchange log writable again; calls resume"
            );
        }
    }
}

impl<B: Backend> Drop for Writer<B> {
    /// A writer that stops (closed, or panicked) takes no more records.
    fn drop(&mut self) {
        self.shared.healthy.store(false, Ordering::Release);
    }
}

/// Microseconds since the first call in this process, on the monotonic
/// clock.
fn monotonic_micros() -> u64 {
    static BASE: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    u64::try_from(BASE.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn create_private_dir(dir: &Path) -> Result<(), OpenError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| OpenError::File {
            path: dir.to_owned(),
            message: format!("cannot create the data directory: {error}"),
        })
}

/// The log's signing key from the data directory, made on first use.
fn load_or_create_key(dir: &Path, origin: &str) -> Result<SigningKey, OpenError> {
    let path = dir.join(store::KEY_FILE);
    let file_error = |message: String| OpenError::File {
        path: path.clone(),
        message,
    };
    if let Err(exposed) = crate::identity::secret::check_permissions(&path) {
        return Err(file_error(exposed.to_string()));
    }
    let key = match std::fs::read_to_string(&path) {
        Ok(pem) => {
            SigningKey::from_pem(origin, &pem).map_err(|error| file_error(error.to_string()))?
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // A signed log without its key is not given a new one: its
            // checkpoints would go on under another identity, and its
            // public key file, which auditors check it with, would be
            // written over.
            let database = dir.join(store::DATABASE_FILE);
            if database.exists() && Store::open_read_only(dir)?.latest_checkpoint()?.is_some() {
                return Err(file_error(format!(
                    "missing, and the exchange log beside it ({}) holds checkpoints signed with \
                     it: put it back (from a backup: `govbridge backup` keeps it). A new key \
                     would go on with the log under another identity",
                    database.display()
                )));
            }
            let key =
                SigningKey::generate(origin).map_err(|error| file_error(error.to_string()))?;
            crate::keys::write_file(&path, key.to_pem().as_bytes(), 0o600)
                .map_err(|error| file_error(error.to_string()))?;
            tracing::info!(key = %path.display(), "created the exchange log's signing key");
            key
        }
        Err(error) => return Err(file_error(format!("cannot read: {error}"))),
    };
    Ok(key)
}

/// Writes `key`'s verifier beside the log (`log-key.pub`), once the log
/// is known to be signed with it.
fn publish_verifier(dir: &Path, key: &SigningKey) -> Result<(), OpenError> {
    let public = dir.join(store::VERIFIER_FILE);
    let verifier = format!("{}\n", key.verifier());
    if std::fs::read_to_string(&public).ok().as_deref() != Some(verifier.as_str()) {
        crate::keys::write_file(&public, verifier.as_bytes(), 0o644).map_err(|error| {
            OpenError::File {
                path: public.clone(),
                message: error.to_string(),
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gather whose pauses are `pause` instead of sleeps, with a window
    /// far longer than the cases need.
    fn gather(last: usize, pause: impl FnMut(Duration) + Send + 'static) -> Gather {
        Gather {
            last,
            gap: GATHER_GAP,
            window: Duration::from_secs(3600),
            pause: Box::new(pause),
        }
    }

    /// Under load, a batch takes the records that arrive while it pauses,
    /// until a pause brings none.
    #[test]
    fn under_load_a_batch_waits_for_the_records_that_follow() {
        let (jobs, queue) = std::sync::mpsc::sync_channel(64);
        let mut pauses = 0;
        // Each of the first four pauses sees five records arrive, fewer
        // than the previous commit took.
        let mut gather = gather(64, move |gap| {
            assert_eq!(gap, GATHER_GAP);
            pauses += 1;
            if pauses <= 4 {
                for _ in 0..5 {
                    jobs.send(Job::Close).unwrap();
                }
            }
        });
        let mut batch = vec![Job::Close];
        gather.fill(&queue, &mut batch);
        assert_eq!(batch.len(), 21);
        assert_eq!(gather.last, 21);
    }

    /// A queue holding `count` jobs, and its sender, kept open.
    fn queued(count: usize) -> (SyncSender<Job>, Receiver<Job>) {
        let (jobs, queue) = std::sync::mpsc::sync_channel(count.max(1));
        for _ in 0..count {
            jobs.send(Job::Close).unwrap();
        }
        (jobs, queue)
    }

    /// Under load, a batch as large as the previous one goes at once: the
    /// calls it answered are back, and none may follow.
    #[test]
    fn a_batch_as_large_as_the_last_goes_without_a_pause() {
        let (_jobs, queue) = queued(31);
        let mut batch = vec![Job::Close];
        let mut gather = gather(32, |_| panic!("it waited"));
        gather.fill(&queue, &mut batch);
        assert_eq!(batch.len(), 32);
    }

    /// Without load, a batch is what is queued: nothing waits for more.
    #[test]
    fn without_load_a_batch_is_what_is_queued() {
        let (_jobs, queue) = queued(3);
        let mut batch = vec![Job::Close];
        let mut gather = gather(GATHER_ABOVE - 1, |_| panic!("it waited"));
        gather.fill(&queue, &mut batch);
        assert_eq!(batch.len(), 4);
    }

    /// Under load, the wait ends with the window even if records keep
    /// coming.
    #[test]
    fn a_batch_waits_no_longer_than_its_window() {
        let (jobs, queue) = std::sync::mpsc::sync_channel(4096);
        // The previous commit as large as can be: only the window ends
        // this one.
        let mut gather = Gather {
            window: Duration::from_millis(20),
            ..gather(MAX_BATCH, move |gap| {
                std::thread::sleep(gap);
                jobs.send(Job::Close).unwrap();
            })
        };
        let mut batch = vec![Job::Close];
        let started = Instant::now();
        gather.fill(&queue, &mut batch);
        assert!(started.elapsed() >= gather.window);
        assert!(
            batch.len() > 1 && batch.len() < MAX_BATCH,
            "{}",
            batch.len()
        );
    }

    /// With `exchange_log.retain`, the gateway archives by itself, from the
    /// moment its log opens: a segment of calls from long ago leaves the
    /// store for an archive file, and the log verifies with it.
    #[test]
    fn a_gateway_with_a_retention_archives_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::ExchangeLogConfig::defaults(dir.path(), "archive-test");
        create_private_dir(&config.data_dir).unwrap();
        let key = load_or_create_key(&config.data_dir, &config.origin).unwrap();
        {
            let mut store = Store::open(&config.data_dir, &config.origin).unwrap();
            let mut frontier = store.frontier().unwrap();
            let old: Vec<ExchangeRecord> = (0..lookup::SEGMENT + 10)
                .map(|n| ExchangeRecord {
                    request_id: format!("old-{n}"),
                    received_us: 1_000_000,
                    error_kind: "policy-denied".to_owned(),
                    ..ExchangeRecord::default()
                })
                .collect();
            let old: Vec<&ExchangeRecord> = old.iter().collect();
            let signing = Some((config.origin.as_str(), &key));
            store.append(&mut frontier, &old, signing).unwrap();
        }
        config.retain = Some(Duration::from_secs(86_400));
        let log = ExchangeLog::open(&config).unwrap();
        log.close();

        let store = Store::open_read_only(&config.data_dir).unwrap();
        assert_eq!(store.archived_end().unwrap(), lookup::SEGMENT);
        assert_eq!(archive::list(&config.archive_dir).unwrap().len(), 1);
        let report = verify::verify_with_archives(
            &config.data_dir,
            Some(&config.archive_dir),
            log.verifier(),
        )
        .unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(report.records, lookup::SEGMENT + 10);
    }

    /// A log whose signing key is gone, or replaced, is not opened: it
    /// would go on under another identity, and the public key auditors
    /// check it with be written over.
    #[test]
    fn a_log_is_not_opened_without_the_key_that_signs_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::ExchangeLogConfig::defaults(dir.path(), "key-test");
        create_private_dir(&config.data_dir).unwrap();
        let key = load_or_create_key(&config.data_dir, &config.origin).unwrap();
        publish_verifier(&config.data_dir, &key).unwrap();
        {
            let mut store = Store::open(&config.data_dir, &config.origin).unwrap();
            let mut frontier = store.frontier().unwrap();
            let record = ExchangeRecord::default();
            let signing = Some((config.origin.as_str(), &key));
            store.append(&mut frontier, &[&record], signing).unwrap();
        }
        let (private, public) = (
            config.data_dir.join(store::KEY_FILE),
            config.data_dir.join(store::VERIFIER_FILE),
        );
        let published = std::fs::read(&public).unwrap();

        std::fs::remove_file(&private).unwrap();
        let refused = ExchangeLog::open(&config).expect_err("opened without its key");
        let said = refused.to_string();
        assert!(
            said.contains("log-key.pem") && said.contains("put it back"),
            "{said}"
        );
        assert!(!private.exists());
        assert_eq!(std::fs::read(&public).unwrap(), published);

        let other = SigningKey::generate(&config.origin).unwrap();
        crate::keys::write_file(&private, other.to_pem().as_bytes(), 0o600).unwrap();
        let refused = ExchangeLog::open(&config).expect_err("opened with another key");
        let said = refused.to_string();
        assert!(said.contains("does not sign this log"), "{said}");
        assert_eq!(std::fs::read(&public).unwrap(), published);

        crate::keys::write_file(&private, key.to_pem().as_bytes(), 0o600).unwrap();
        ExchangeLog::open(&config).unwrap().close();
    }

    /// One writer per log: a second gateway given the same directory is
    /// refused at start, naming the lock, until the first has closed.
    #[test]
    fn a_second_writer_of_one_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::ExchangeLogConfig::defaults(dir.path(), "lock-test");
        let log = ExchangeLog::open(&config).unwrap();
        let refused = ExchangeLog::open(&config).expect_err("a second writer opened");
        let said = refused.to_string();
        assert!(
            said.contains(WRITER_LOCK) && said.contains("another gateway"),
            "{said}"
        );
        log.close();
        ExchangeLog::open(&config).unwrap().close();
    }

    /// Calls that never let the writer rest: the journal stays within its
    /// bound while the log takes far more than that.
    #[test]
    fn the_journal_stays_bounded_under_sustained_appends() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::ExchangeLogConfig::defaults(dir.path(), "wal-test");
        let log = ExchangeLog::open(&config).unwrap();
        let wal = config
            .data_dir
            .join(format!("{}-wal", store::DATABASE_FILE));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        // 64 callers, as the benchmark's: 64,000 records, which left 390 MB
        // of WAL on this machine before the writer restarted it.
        const CALLERS: usize = 64;
        const EACH: usize = 1000;
        let largest = runtime.block_on(async {
            let mut callers = tokio::task::JoinSet::new();
            for caller in 0..CALLERS {
                let log = log.clone();
                let wal = wal.clone();
                callers.spawn(async move {
                    let mut largest = 0;
                    for call in 0..EACH {
                        let record = ExchangeRecord {
                            request_id: format!(
                                "{:032x}",
                                (caller * EACH + call) as u128 * 0x9e37_79b9_7f4a_7c15
                            ),
                            caller: "SN/COM/CBAO/kyc".to_owned(),
                            method: "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity"
                                .to_owned(),
                            ..ExchangeRecord::default()
                        };
                        log.append(record).await.unwrap();
                        largest = largest.max(std::fs::metadata(&wal).map_or(0, |file| file.len()));
                    }
                    largest
                });
            }
            let mut largest = 0;
            while let Some(seen) = callers.join_next().await {
                largest = largest.max(seen.unwrap());
            }
            largest
        });
        assert_eq!(log.size(), (CALLERS * EACH) as u64);
        assert!(
            largest <= store::WAL_BOUND + (4 << 20),
            "the WAL reached {largest} bytes (bound {})",
            store::WAL_BOUND
        );
        log.close();
    }
}
