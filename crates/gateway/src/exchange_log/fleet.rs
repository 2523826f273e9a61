//! The exchange log of a fleet, in the PostgreSQL database its nodes share
//! (`[store] url`): one Merkle log for every node's calls.
//!
//! Every node appends, one at a time, and the database sequences them. A
//! node's writer gathers its batch as the single node's does, hashes the
//! records' leaves, grows the tree from the head its last append left, and
//! calls `log_append_grown` (a function of the schema) in one statement:
//! under the head row's lock, it gives the records the next indexes and,
//! if the head is still the one the node grew from, stores the subtrees
//! the node completed and moves the head to the node's. If another node
//! appended since, it grows the tree's right edge itself, with SHA-256 as
//! RFC 9162 does, from the leaves. Either way it returns the head. The lock
//! is held while that runs and its commit is flushed, never across a round
//! trip to a node. The calls are answered once it is committed: a record
//! is durable in PostgreSQL before anything reaches the backend, as on one
//! node. A checkpoint, signed by the node with the fleet's key over the
//! head it got back, is committed before anyone can read it. A node that
//! dies mid-append holds
//! nothing: PostgreSQL ends its statement with its connection. There is
//! no lease to take over and no sequencer to lose: see
//! docs/architecture.md for why this and not Trillian's
//! queue-then-sequence.
//!
//! Readers (the Data Tracker, proofs) query the tables directly: the log
//! only grows, and what they read is bounded by a signed checkpoint's
//! size, so no snapshot is needed. A record is found by request id or
//! subject through `log_lookups`, which each node's sealer (`seal`)
//! fills a few times a second, in sorted runs, outside the head's lock;
//! records not yet sealed are read directly, in the same statement. An
//! append updates no index of `log_records` but its primary key. An
//! auditor copies the log into a local one with [`pull`], which rebuilds
//! the tree from the records rather than trusting the stored one, and
//! then checks it with the same tools as a single node's.

use std::path::Path;
use std::sync::Arc;

use prost::Message;
use rusqlite::types::Value;
use tokio::runtime::Handle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

use super::merkle::{self, Frontier, Hash, Nodes};
use super::note::{Checkpoint, SigningKey, Verifier};
use super::store::{self, Store, StoreError, StoredCheckpoint, StoredRecord};
use super::verify::{Problem, ProblemKind};
use super::{ExchangeRecord, StoreFault};
use crate::database::{Database, DatabaseError};

/// The writer's session, whatever the server's or role's defaults:
///
/// - every commit flushed before it returns: a call is answered only once
///   its record is on disk;
/// - a wait for other nodes' appends, and the append itself, that the
///   server gives up before the query's own timeout
///   ([`crate::database::QUERY_TIMEOUT`]) does: an append the node stops
///   waiting for must not commit afterwards, behind the back of the calls
///   it refused. Only its commit's flush, which no timeout covers, is
///   left to that margin.
const SESSION: &str =
    "SET synchronous_commit = on; SET lock_timeout = '1500ms'; SET statement_timeout = '1800ms'";

/// The append, in the database (`log_append_grown`, in the schema).
const APPEND: &str = "SELECT first, size, frontier FROM log_append_grown($1, $2, $3, $4, $5, \
     $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)";

/// How often a node's sealer looks for records to seal ([`seal`]).
const SEAL_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Records sealed in one transaction, at most: some 100 ms of work, well
/// within the session's statement timeout however far behind the seal is.
const SEAL_MOST: i64 = 16_384;

/// ... and at least, after seals that failed.
const SEAL_LEAST: i64 = 1_024;

/// The sealer's session: its transactions write only what can be written
/// again from the records (`log_lookups`, and how far they go, rolled back
/// together), so a commit need not wait for its flush.
///
/// Its sort (some 30,000 lookups at the default interval under load)
/// stays in memory.
const SEAL_SESSION: &str =
    "SET synchronous_commit = off; SET statement_timeout = '1800ms'; SET work_mem = '64MB'";

/// How many of the copy's latest checkpoints [`pull`] looks at for
/// cosignatures given since they were copied.
const RECENT_CHECKPOINTS: usize = 64;

/// Tries at keeping a cosignature in a checkpoint's note that other nodes
/// keep others in at the same time ([`FleetReader::add_cosignature`]).
const MAX_NOTE_MOVES: usize = 8;

/// Records read at a time by [`pull`].
const PULL_PAGE: i64 = 4096;

/// Checkpoints read at a time by [`pull`].
const CHECKPOINT_PAGE: usize = 1024;

/// The fleet's log as one node's writer appends to it.
#[derive(Debug)]
pub struct SharedStore {
    database: Arc<Database>,
    runtime: Handle,
    /// This node's id, kept with each record it commits.
    node: String,
    fault: Option<StoreFault>,
    /// [`APPEND`] prepared on the writer's connection.
    prepared: Option<(Arc<Client>, Statement)>,
    /// The largest size of the log this node has seen...
    seen: u64,
    /// ... and, once the database held a smaller one, why it stays
    /// refused ([`Self::not_behind`]).
    behind: Option<String>,
}

/// The columns of a batch, one array per column, in [`store::COLUMNS`]
/// order, and the records' bytes; the tree as the batch grows it from the
/// head the node last saw.
#[derive(Debug, Default)]
struct Batch {
    texts: [Vec<Option<String>>; 13],
    integers: [Vec<Option<i64>>; 13],
    bytes: Vec<Vec<u8>>,
    leaves: Vec<Hash>,
    /// The head the tree below grows from.
    from: Frontier,
    /// The head after the batch, if no other node appends first.
    grown: Frontier,
    /// The stored nodes (from [`store::STORED_LEVEL`] up) the batch
    /// completes, as `(level, index, hash)`.
    nodes: Vec<(i16, i64, Hash)>,
}

impl Batch {
    fn of(records: &[&ExchangeRecord], from: &Frontier) -> Self {
        let mut batch = Self {
            from: from.clone(),
            grown: from.clone(),
            ..Self::default()
        };
        for record in records {
            for (column, value) in store::columns(record).into_iter().enumerate() {
                let (text, integer) = match value {
                    Value::Text(text) => (Some(text), None),
                    Value::Integer(integer) => (None, Some(integer)),
                    _ => (None, None),
                };
                batch.texts[column].push(text);
                batch.integers[column].push(integer);
            }
            let bytes = record.encode_to_vec();
            let leaf = merkle::leaf_hash(&bytes);
            batch.nodes.extend(
                batch
                    .grown
                    .append(leaf)
                    .into_iter()
                    .filter(|(level, _, _)| *level >= store::STORED_LEVEL)
                    .map(|(level, index, hash)| (level as i16, to_i64(index), hash)),
            );
            batch.leaves.push(leaf);
            batch.bytes.push(bytes);
        }
        batch
    }

    /// The tree's arguments of [`APPEND`], after the node's id.
    fn tree(&self) -> Tree<'_> {
        Tree {
            expected_size: to_i64(self.from.size()),
            expected_frontier: self.from.peak_bytes(),
            grown_frontier: self.grown.peak_bytes(),
            levels: self.nodes.iter().map(|(level, _, _)| *level).collect(),
            indexes: self.nodes.iter().map(|(_, index, _)| *index).collect(),
            hashes: self
                .nodes
                .iter()
                .map(|(_, _, hash)| hash.as_slice())
                .collect(),
            leaves: self.leaves.iter().map(<[u8; 32]>::as_slice).collect(),
        }
    }

    /// The records' arguments of [`APPEND`], after the tree's.
    fn columns(&self) -> impl Iterator<Item = &(dyn ToSql + Sync)> {
        let columns = TEXT_COLUMNS.iter().enumerate().map(|(column, text)| {
            if *text {
                &self.texts[column] as &(dyn ToSql + Sync)
            } else {
                &self.integers[column]
            }
        });
        std::iter::once(&self.bytes as &(dyn ToSql + Sync)).chain(columns)
    }
}

/// What [`APPEND`] is told of the tree: the head the batch grows from,
/// the head and the stored nodes it grows, and its leaves.
struct Tree<'a> {
    expected_size: i64,
    expected_frontier: Vec<u8>,
    grown_frontier: Vec<u8>,
    levels: Vec<i16>,
    indexes: Vec<i64>,
    hashes: Vec<&'a [u8]>,
    leaves: Vec<&'a [u8]>,
}

impl Tree<'_> {
    fn arguments(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.expected_size,
            &self.expected_frontier,
            &self.grown_frontier,
            &self.levels,
            &self.indexes,
            &self.hashes,
            &self.leaves,
        ]
    }
}

/// The column types of the records' query columns, text or integer.
const TEXT_COLUMNS: [bool; 13] = [
    true, true, false, true, true, true, true, true, false, false, true, false, true,
];

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn invalid(database: &Database, detail: String) -> StoreError {
    StoreError::Database(DatabaseError::Failed {
        url: database.url(),
        detail,
    })
}

/// The head row's size and frontier, from a simple query's text answer.
fn head_of(database: &Database, rows: &[SimpleQueryMessage]) -> Result<Frontier, StoreError> {
    let row = rows.iter().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let Some(row) = row else {
        return Err(invalid(
            database,
            "the exchange log has no head row: a node must open it first".to_owned(),
        ));
    };
    let size = row.get(0).and_then(|size| size.parse::<u64>().ok());
    let peaks = row.get(1).and_then(|hex| {
        (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
    });
    size.zip(peaks)
        .and_then(|(size, peaks)| Frontier::from_peak_bytes(size, &peaks))
        .ok_or_else(|| {
            invalid(
                database,
                "the exchange log's head row is malformed: run `govbridge audit pull` to check \
                 the log"
                    .to_owned(),
            )
        })
}

impl SharedStore {
    /// Opens the fleet's log, creating it on first use: a node joins a log
    /// of the same origin signed with the same key, and refuses any other.
    /// Blocks: call it where blocking is allowed.
    pub(super) fn open(
        fleet: &super::FleetStore,
        origin: &str,
        verifier: &Verifier,
    ) -> Result<(Self, Frontier), StoreError> {
        let (database, runtime) = (Arc::clone(&fleet.writer), fleet.runtime.clone());
        let key = verifier.to_string();
        let (found_origin, found_key) = runtime.block_on(database.run(|client| async move {
            client
                .execute(
                    "INSERT INTO log_head (origin, verifier, size, frontier) \
                     VALUES ($1, $2, 0, '') ON CONFLICT (one) DO NOTHING",
                    &[&origin, &key],
                )
                .await?;
            let row = client
                .query_one("SELECT origin, verifier FROM log_head", &[])
                .await?;
            Ok((row.get::<_, String>(0), row.get::<_, String>(1)))
        }))?;
        if found_origin != origin {
            return Err(invalid(
                &database,
                format!(
                    "the fleet's exchange log is `{found_origin}`, and this node's \
                     exchange_log.origin is `{origin}`: every node of a fleet writes one log, \
                     under one origin"
                ),
            ));
        }
        if found_key != verifier.to_string() {
            return Err(invalid(
                &database,
                format!(
                    "the fleet's exchange log is signed by {found_key}, and this node's key (in \
                     exchange_log.data_dir) is {verifier}: copy the fleet's log-key.pem to every \
                     node"
                ),
            ));
        }
        let store = Self {
            database,
            runtime,
            node: fleet.node.clone(),
            fault: None,
            prepared: None,
            seen: 0,
            behind: None,
        };
        let mut store = store;
        let frontier = store.head()?;
        Ok((store, frontier))
    }

    /// Checks that the fleet's log, of `size` records now, holds all this
    /// node has seen it hold. Records are never removed from it: a smaller
    /// log is a database that lost commits (a failover to a standby that
    /// had not received them, a restore to an earlier time). Appending
    /// there would give the lost records' indexes, which callers hold in
    /// their receipts, to other records, and the next checkpoint would
    /// sign a tree that does not extend the one partners and witnesses
    /// hold. The node refuses every call from then on, until an operator
    /// has looked (and restarts it).
    fn not_behind(&mut self, size: u64) -> Result<(), StoreError> {
        if self.behind.is_none() && size < self.seen {
            let message = format!(
                "the fleet's exchange log holds {size} records, and this node saw it hold {}: \
                 the database lost commits (a failover to a standby that had not received \
                 them, or a restore to an earlier time). Calls are refused: records would \
                 take the indexes of the lost ones, and checkpoints would fork the log. \
                 Restore the lost commits, or have an operator decide, then restart the node",
                self.seen
            );
            tracing::error!(size, seen = self.seen, "{message}");
            self.behind = Some(message);
        }
        if let Some(behind) = &self.behind {
            return Err(invalid(&self.database, behind.clone()));
        }
        self.seen = size;
        Ok(())
    }

    /// The log as it is now, without a lock.
    pub fn head(&mut self) -> Result<Frontier, StoreError> {
        let rows = self
            .runtime
            .block_on(self.database.run(|client| async move {
                client
                    .simple_query("SELECT size, encode(frontier, 'hex') FROM log_head")
                    .await
            }))?;
        let head = head_of(&self.database, &rows)?;
        self.not_behind(head.size())?;
        Ok(head)
    }

    /// Appends `records` after whatever the fleet's nodes appended, with
    /// the tree nodes they complete and, if asked, a signed checkpoint of
    /// the result; `frontier` becomes the log's. Returns the first record's
    /// index.
    pub fn append(
        &mut self,
        frontier: &mut Frontier,
        records: &[&ExchangeRecord],
        checkpoint: Option<(&str, &SigningKey)>,
    ) -> Result<u64, StoreError> {
        if let Some(fault) = self.fault {
            return Err(simulated(&self.database, fault));
        }
        if let Some(behind) = &self.behind {
            return Err(invalid(&self.database, behind.clone()));
        }
        // Everything but the tree is done here, before the lock.
        let batch = Batch::of(records, frontier);
        let node = self.node.as_str();
        let database = &self.database;
        let cache = &mut self.prepared;
        let appended = self.runtime.block_on(database.run(|client| async move {
            append_batch(database, &client, cache, &batch, node).await
        }))??;
        let first = appended.size() - records.len() as u64;
        // Committed, but not to be answered if the log went back. (This
        // node's frontier may lag the log, other nodes appending: the log
        // as the database gives it is what is compared.)
        self.not_behind(first)?;
        self.seen = appended.size();
        // On its own time: the records are committed, and a slow
        // checkpoint must not make their calls' wait run out.
        if let Some((origin, key)) = checkpoint
            && appended.size() > 0
        {
            let (database, node, head) = (&self.database, self.node.as_str(), &appended);
            let stored = self.runtime.block_on(database.run(|client| async move {
                store_checkpoint(&client, head, node, origin, key).await
            }));
            // Their calls go on; the next checkpoint covers them.
            if let Err(error) = stored {
                tracing::warn!(%error, size = appended.size(), "cannot store a checkpoint of the fleet's log");
            }
        }
        *frontier = appended;
        Ok(first)
    }

    /// The latest signed checkpoint of the fleet's log.
    pub fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        latest_checkpoint(&self.database, &self.runtime)
    }

    /// Whether the database answers again.
    pub fn probe(&mut self) -> Result<(), StoreError> {
        if let Some(fault) = self.fault {
            return Err(simulated(&self.database, fault));
        }
        self.head().map(drop)
    }

    /// Simulates (or stops simulating) a failure of the store.
    pub fn set_fault(&mut self, fault: Option<StoreFault>) {
        self.fault = fault;
    }
}

fn simulated(database: &Database, fault: StoreFault) -> StoreError {
    invalid(database, format!("a simulated {fault:?} fault"))
}

/// Appends `batch` (in one statement, [`APPEND`]: the tree the node grew is
/// taken if no other node appended since, and grown in the database
/// otherwise, under the head's lock, held for no round trip). Returns the
/// log after it. The outer error is the database's; the
/// inner one, an answer that makes no sense.
///
/// It commits synchronously: the append's lock is held through its
/// flush. An asynchronous commit with a separate flush outside the lock
/// (one synchronous write for every append waiting) was tried: it cost
/// each append a second round trip and served fewer calls, with one node
/// and with two (docs/benchmarks.md).
async fn append_batch(
    database: &Database,
    client: &Arc<Client>,
    cache: &mut Option<(Arc<Client>, Statement)>,
    batch: &Batch,
    node: &str,
) -> Result<Result<Frontier, StoreError>, tokio_postgres::Error> {
    let statement = prepared(client, cache).await?;
    let next = if batch.leaves.is_empty() {
        let rows = client
            .simple_query("SELECT size, encode(frontier, 'hex') FROM log_head")
            .await?;
        match head_of(database, &rows) {
            Ok(head) => head,
            Err(error) => return Ok(Err(error)),
        }
    } else {
        let tree = batch.tree();
        let mut arguments: Vec<&(dyn ToSql + Sync)> = vec![&node];
        arguments.extend(tree.arguments());
        arguments.extend(batch.columns());
        let row = client.query_one(&statement, &arguments).await?;
        let (size, edge): (i64, Vec<u8>) = (row.get(1), row.get(2));
        match Frontier::from_peak_bytes(to_u64(size), &edge) {
            Some(next) => next,
            None => {
                return Ok(Err(invalid(
                    database,
                    format!("log_append_grown returned a malformed head (size {size})"),
                )));
            }
        }
    };
    Ok(Ok(next))
}

/// Signs a checkpoint of the log at `head` and stores it, unless another
/// node stored one of that size first.
async fn store_checkpoint(
    client: &Client,
    head: &Frontier,
    node: &str,
    origin: &str,
    key: &SigningKey,
) -> Result<(), tokio_postgres::Error> {
    let note = Checkpoint {
        origin: origin.to_owned(),
        size: head.size(),
        root: head.root(),
    }
    .sign(key);
    client
        .query_typed(
            "INSERT INTO log_checkpoints (size, signed_at, node, note) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (size) DO NOTHING",
            &[
                (&to_i64(head.size()), Type::INT8),
                (&crate::unix_time::now(), Type::INT8),
                (&node, Type::TEXT),
                (&note, Type::TEXT),
            ],
        )
        .await
        .map(|_| ())
}

/// [`APPEND`] prepared on `client`'s connection (parsed and planned once
/// per connection, not at every append), whose session is set up first.
async fn prepared(
    client: &Arc<Client>,
    cache: &mut Option<(Arc<Client>, Statement)>,
) -> Result<Statement, tokio_postgres::Error> {
    if let Some((of, statement)) = cache.as_ref()
        && Arc::ptr_eq(of, client)
    {
        return Ok(statement.clone());
    }
    client.batch_execute(SESSION).await?;
    let statement = client.prepare(APPEND).await?;
    *cache = Some((Arc::clone(client), statement.clone()));
    Ok(statement)
}

fn latest_checkpoint(
    database: &Database,
    runtime: &Handle,
) -> Result<Option<StoredCheckpoint>, StoreError> {
    let row = runtime.block_on(database.run(|client| async move {
        client
            .query_opt(
                "SELECT size, signed_at, note FROM log_checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )
            .await
    }))?;
    Ok(row.map(|row| checkpoint_of(&row)))
}

fn checkpoint_of(row: &tokio_postgres::Row) -> StoredCheckpoint {
    StoredCheckpoint {
        size: to_u64(row.get(0)),
        signed_at: row.get(1),
        note: row.get(2),
    }
}

fn records_of(rows: &[tokio_postgres::Row]) -> Vec<StoredRecord> {
    rows.iter()
        .map(|row| StoredRecord {
            index: to_u64(row.get(0)),
            bytes: row.get(1),
        })
        .collect()
}

/// A node's sealer: every [`SEAL_EVERY`], moves the lookups of the records
/// the fleet appended since into `log_lookups`, in sorted runs, on its own
/// connection `database` (a seal must not hold up the node's other
/// queries, nor wait behind them), until `running` is dropped. One node
/// seals at a time: the others find the seal locked and leave it. A seal
/// that fails is tried again at the next look, half as large (records
/// past the seal are read directly meanwhile: lookups are only slower).
pub(super) async fn seal(
    database: Arc<Database>,
    shared: Arc<super::Shared>,
    running: std::sync::mpsc::Receiver<()>,
) {
    let mut every = tokio::time::interval(SEAL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The connection whose session is set up: not kept open by this.
    let mut session = std::sync::Weak::new();
    let mut most = SEAL_MOST;
    let mut failing = false;
    // A function, not a closure: a borrow of `running` (not `Sync`) kept
    // across the awaits would make this task not `Send`.
    fn stopped(running: &std::sync::mpsc::Receiver<()>) -> bool {
        matches!(
            running.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        )
    }
    loop {
        every.tick().await;
        if stopped(&running) {
            break;
        }
        loop {
            let set_up = &session;
            let sealed = database
                .run(|client| async move {
                    if !std::ptr::eq(set_up.as_ptr(), Arc::as_ptr(&client)) {
                        client.batch_execute(SEAL_SESSION).await?;
                    }
                    let row = client
                        .query_one("SELECT sealed, behind FROM log_seal($1)", &[&most])
                        .await?;
                    let sealed = row.get::<_, Option<i64>>(0);
                    Ok((Arc::downgrade(&client), sealed, row.get::<_, i64>(1)))
                })
                .await;
            match sealed {
                Ok((client, sealed, behind)) => {
                    session = client;
                    most = SEAL_MOST;
                    shared
                        .unsealed
                        .store(to_u64(behind), std::sync::atomic::Ordering::Relaxed);
                    if std::mem::take(&mut failing) {
                        tracing::info!("the fleet's log lookups are sealed again");
                    }
                    // Sealed all there was, or another node seals.
                    if sealed.is_none() || behind == 0 {
                        break;
                    }
                }
                // The log closed (and the connection with it) while this
                // sealed: nothing to report.
                Err(_) if stopped(&running) => return,
                Err(error) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, "cannot seal the fleet's log lookups; trying again");
                    }
                    most = (most / 2).max(SEAL_LEAST);
                    break;
                }
            }
        }
    }
}

/// Reads of the fleet's log, for the Data Tracker and proofs. Blocking,
/// as a SQLite store's are: run them on the blocking pool.
#[derive(Debug, Clone)]
pub struct FleetReader {
    database: Arc<Database>,
    runtime: Handle,
}

impl FleetReader {
    pub fn new(database: Arc<Database>, runtime: Handle) -> Self {
        Self { database, runtime }
    }

    fn rows(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        Ok(self.runtime.block_on(
            self.database
                .run(|client| async move { client.query(sql, params).await }),
        )?)
    }

    /// The record at `index`.
    pub fn record(&self, index: u64) -> Result<Option<StoredRecord>, StoreError> {
        let rows = self.rows(
            "SELECT idx, record FROM log_records WHERE idx = $1",
            &[&to_i64(index)],
        )?;
        Ok(records_of(&rows).pop())
    }

    /// The last record of call `request_id` that `member` made or served.
    pub fn last_record_of_request_for(
        &self,
        request_id: &str,
        member: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        // The records not yet sealed, then the sealed ones' lookups: one
        // statement, one snapshot, so that each record is in one or the
        // other. The lookups' order names the segment first, as their
        // index does, so that their scan walks back from the newest and
        // stops at the limit rather than reading every match.
        let rows = self.rows(
            "(SELECT idx, record FROM log_records \
              WHERE idx >= (SELECT sealed FROM log_sealed) AND request_id = $1 \
              AND (caller = $2 OR provider = $2) ORDER BY idx DESC LIMIT 1) \
             UNION ALL \
             (SELECT r.idx, r.record FROM log_lookups l JOIN log_records r ON r.idx = l.idx \
              WHERE (l.idx >> 18) = ANY(log_lookup_segments()) AND l.key = log_lookup_key('r', $1) \
              AND r.request_id = $1 \
              AND (r.caller = $2 OR r.provider = $2) \
              ORDER BY (l.idx >> 18) DESC, l.idx DESC LIMIT 1) \
             ORDER BY idx DESC LIMIT 1",
            &[&request_id, &member],
        )?;
        Ok(records_of(&rows).pop())
    }

    /// What the Data Tracker shows of `subject`, newest first: as
    /// [`Store::accesses_to`], across every node's calls.
    pub fn accesses_to(
        &self,
        subject: &str,
        since_us: i64,
        before: u64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let limit = to_i64(limit as u64);
        let before = to_i64(before);
        // A record is found by its first subject (among the records not
        // yet sealed, or by its sealed lookup: one statement, one
        // snapshot, so in one of the two) or by one of the others, never
        // both: each branch walks from the newest.
        let rows = self.rows(
            "(SELECT idx, record FROM log_records WHERE idx >= (SELECT sealed FROM log_sealed) \
              AND subject = $1 AND at_us >= $2 AND idx < $5 \
              AND concealed_until <= $3 AND (phase = 'outcome' OR error_kind IS NOT NULL) \
              ORDER BY idx DESC LIMIT $4) \
             UNION ALL \
             (SELECT r.idx, r.record FROM log_lookups l JOIN log_records r ON r.idx = l.idx \
              WHERE (l.idx >> 18) = ANY(log_lookup_segments()) AND l.key = log_lookup_key('s', $1) \
              AND r.subject = $1 AND r.at_us >= $2 AND l.idx < $5 \
              AND r.concealed_until <= $3 AND (r.phase = 'outcome' OR r.error_kind IS NOT NULL) \
              ORDER BY (l.idx >> 18) DESC, l.idx DESC LIMIT $4) \
             UNION ALL \
             (SELECT r.idx, r.record FROM log_subjects s JOIN log_records r ON r.idx = s.idx \
              WHERE s.subject = $1 AND r.at_us >= $2 AND s.idx < $5 AND r.concealed_until <= $3 \
              AND (r.phase = 'outcome' OR r.error_kind IS NOT NULL) \
              ORDER BY s.idx DESC LIMIT $4) \
             ORDER BY idx DESC LIMIT $4",
            &[&subject, &since_us, &now, &limit, &before],
        )?;
        Ok(records_of(&rows))
    }

    /// The first `limit` checkpoints of more than `size` records, oldest
    /// first.
    pub fn checkpoints_after(
        &self,
        size: u64,
        limit: usize,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let rows = self.rows(
            "SELECT size, signed_at, note FROM log_checkpoints WHERE size > $1 \
             ORDER BY size LIMIT $2",
            &[&to_i64(size), &to_i64(limit as u64)],
        )?;
        Ok(rows.iter().map(checkpoint_of).collect())
    }

    /// The last `limit` checkpoints of `size` records or fewer, oldest
    /// first.
    pub fn checkpoints_up_to(
        &self,
        size: u64,
        limit: usize,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let rows = self.rows(
            "SELECT size, signed_at, note FROM log_checkpoints WHERE size <= $1 \
             ORDER BY size DESC LIMIT $2",
            &[&to_i64(size), &to_i64(limit as u64)],
        )?;
        Ok(rows.iter().rev().map(checkpoint_of).collect())
    }

    /// The latest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        latest_checkpoint(&self.database, &self.runtime)
    }

    /// Keeps a witness's cosignature `line` in the note of the fleet's
    /// checkpoint at `size`, in the place of the one it gave before
    /// ([`crate::note::with_cosignature`]); a line the note has already
    /// (two nodes had the same checkpoint cosigned) changes nothing.
    pub fn add_cosignature(&self, size: u64, line: &str) -> Result<(), StoreError> {
        // In the place of the line the witness gave before, compared and
        // swapped: another node may keep another witness's meanwhile.
        for _ in 0..MAX_NOTE_MOVES {
            let rows = self.rows(
                "SELECT note FROM log_checkpoints WHERE size = $1",
                &[&to_i64(size)],
            )?;
            let Some(note) = rows.first().map(|row| row.get::<_, String>(0)) else {
                return Ok(());
            };
            if note.contains(line) {
                return Ok(());
            }
            let kept = crate::note::with_cosignature(&note, line);
            let moved = self.rows_changed(
                "UPDATE log_checkpoints SET note = $3 WHERE size = $1 AND note = $2",
                &[&to_i64(size), &note, &kept],
            )?;
            if moved == 1 {
                return Ok(());
            }
        }
        Err(invalid(
            &self.database,
            format!(
                "other nodes changed the cosignatures of checkpoint {size} {MAX_NOTE_MOVES} times \
                 while this one kept a witness's"
            ),
        ))
    }

    fn rows_changed(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        Ok(self.runtime.block_on(
            self.database
                .run(|client| async move { client.execute(sql, params).await }),
        )?)
    }
}

impl FleetReader {
    /// Node `(level, index)` below [`store::STORED_LEVEL`], hashed from
    /// the leaves of the records it covers, as the SQLite store does (each
    /// record's own, hashed again, where a row written before leaves were
    /// kept has none).
    fn hash_records(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        let (first, count) = (index << level, 1_u64 << level);
        let rows = self.rows(
            "SELECT idx, leaf, CASE WHEN leaf IS NULL THEN record END FROM log_records \
             WHERE idx >= $1 AND idx < $2 ORDER BY idx",
            &[&to_i64(first), &to_i64(first + count)],
        )?;
        let leaves = rows.iter().map(|row| {
            let stored = row
                .get::<_, Option<&[u8]>>(1)
                .and_then(|leaf| Hash::try_from(leaf).ok());
            let leaf = stored.unwrap_or_else(|| {
                merkle::leaf_hash(row.get::<_, Option<&[u8]>>(2).unwrap_or_default())
            });
            (to_u64(row.get(0)), leaf)
        });
        merkle::subtree_of_leaves(first, count, leaves).map_err(|missing| {
            invalid(
                &self.database,
                format!(
                    "tree node ({level}, {index}) cannot be hashed: record {missing} is missing"
                ),
            )
        })
    }
}

impl Nodes for FleetReader {
    type Error = StoreError;

    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        if level < store::STORED_LEVEL {
            return self.hash_records(level, index);
        }
        let level = i16::try_from(level).unwrap_or(i16::MAX);
        let rows = self.rows(
            "SELECT hash FROM log_nodes WHERE level = $1 AND idx = $2",
            &[&level, &to_i64(index)],
        )?;
        rows.first()
            .and_then(|row| Hash::try_from(row.get::<_, &[u8]>(0)).ok())
            .ok_or_else(|| {
                invalid(
                    &self.database,
                    format!("tree node ({level}, {index}) is missing or malformed"),
                )
            })
    }
}

/// What [`pull`] did.
#[derive(Debug)]
pub struct Pulled {
    /// Records copied by this pull.
    pub records: u64,
    /// Records in the copy.
    pub size: u64,
    /// Checkpoints checked and kept by this pull.
    pub checkpoints: usize,
    /// Partners' receipts copied.
    pub receipts: u64,
    /// The first damage found in the fleet's log; the copy holds what came
    /// before it.
    pub problem: Option<Problem>,
}

/// Copies the fleet's log, up to its latest checkpoint, into a log
/// directory `dir` (a single node's layout, which every `audit` command
/// reads), continuing a copy made before. Nothing is taken on trust: the
/// copy's tree is rebuilt from the records, each checkpoint must be
/// signed by `verifier` with the root of the records it covers, and the
/// fleet's stored tree nodes and query columns must be those the records
/// give (proofs and the Data Tracker are served from them). The first
/// damage stops the copy and is reported.
pub fn pull(reader: &FleetReader, dir: &Path, verifier: &Verifier) -> Result<Pulled, StoreError> {
    pull_watched(reader, dir, verifier, &mut |_| {})
}

/// [`pull`], telling `progress` how many records it has checked so far
/// (copied, or to be copied with the checkpoint that covers them), after
/// each page read from the fleet.
pub fn pull_watched(
    reader: &FleetReader,
    dir: &Path,
    verifier: &Verifier,
    progress: &mut dyn FnMut(u64),
) -> Result<Pulled, StoreError> {
    let mut copy = Store::open(dir, verifier.name())?;
    let mut frontier = copy.frontier()?;
    let mut pulled = Pulled {
        records: 0,
        size: frontier.size(),
        checkpoints: 0,
        receipts: 0,
        problem: None,
    };
    let problem = |kind, index, message: String| Problem {
        kind,
        index,
        message,
    };
    let start = frontier.size();
    let copied = reader.checkpoints_up_to(start, RECENT_CHECKPOINTS)?;
    cosignatures_since(&copy, dir, &copied, start, verifier)?;
    // The checkpoints first, a page at a time (a fleet signs thousands a
    // day): every record they cover is committed.
    let mut checkpoints = Vec::new();
    let mut next = 0;
    loop {
        if next == checkpoints.len() {
            checkpoints = reader.checkpoints_after(frontier.size(), CHECKPOINT_PAGE)?;
            next = 0;
            if checkpoints.is_empty() {
                break;
            }
        }
        let stored = &checkpoints[next];
        next += 1;
        let checkpoint = match Checkpoint::open(&stored.note, verifier) {
            Ok(checkpoint) if checkpoint.size == stored.size => checkpoint,
            Ok(checkpoint) => {
                pulled.problem = Some(problem(
                    ProblemKind::CheckpointInvalid,
                    frontier.size(),
                    format!(
                        "the checkpoint stored for size {} says size {}",
                        stored.size, checkpoint.size
                    ),
                ));
                break;
            }
            Err(error) => {
                pulled.problem = Some(problem(
                    ProblemKind::CheckpointInvalid,
                    frontier.size(),
                    format!("the checkpoint of size {}: {error}", stored.size),
                ));
                break;
            }
        };
        // The records up to it, checked in full before any is copied: the
        // copy only ever holds records under a checkpoint it verified, and
        // the next pull goes on from there.
        let mut checked = frontier.clone();
        let mut range = Vec::new();
        while checked.size() < checkpoint.size {
            let from = checked.size();
            let count = (checkpoint.size - from).min(PULL_PAGE as u64);
            match check_page(reader, &mut checked, from, count)? {
                Ok(records) => {
                    range.extend(records);
                    progress(pulled.records + range.len() as u64);
                }
                Err(damage) => {
                    pulled.problem = Some(damage);
                    break;
                }
            }
        }
        if pulled.problem.is_some() {
            break;
        }
        if checked.root() != checkpoint.root {
            pulled.problem = Some(problem(
                ProblemKind::CheckpointRoot,
                frontier.size(),
                format!(
                    "the checkpoint of size {}: its root is not the root of the records; records \
                     and tree were rewritten",
                    checkpoint.size
                ),
            ));
            break;
        }
        for page in range.chunks(PULL_PAGE as usize) {
            let page: Vec<&ExchangeRecord> = page.iter().collect();
            copy.append(&mut frontier, &page, None)?;
        }

        copy.add_checkpoint(stored)?;
        pulled.records += range.len() as u64;
        pulled.checkpoints += 1;
    }
    pulled.size = frontier.size();
    pulled.receipts = pull_receipts(reader, dir)?;
    Ok(pulled)
}

/// Copies the partners' receipts the fleet's nodes kept since the last
/// pull into the copy's `receipts.sqlite`; returns how many. Copied as
/// stored: `audit receipt` checks each under the partner's key.
fn pull_receipts(reader: &FleetReader, dir: &Path) -> Result<u64, StoreError> {
    let mut receipts = super::receipts::Receipts::open(dir)?;
    let mut seq = receipts.pulled()?;
    let mut copied = 0;
    loop {
        let page = reader
            .runtime
            .block_on(reader.database.receipts_after(seq, PULL_PAGE))?;
        let Some(last) = page.last() else {
            return Ok(copied);
        };
        seq = last.seq;
        receipts.keep_pulled(&page, crate::unix_time::now())?;
        copied += page.len() as u64;
    }
}

/// Copies the cosignatures that witnesses gave the checkpoints already in
/// the copy (`start` records) since they were copied: a checkpoint is
/// cosigned a moment after it is signed, and again while the log is idle.
/// Only signature lines the copy lacks, each in the place of its signer's
/// older one, and only if the note still opens as that checkpoint: what
/// the cosignatures are worth is for `audit verify --witness` to say.
fn cosignatures_since(
    copy: &Store,
    dir: &Path,
    checkpoints: &[StoredCheckpoint],
    start: u64,
    verifier: &Verifier,
) -> Result<(), StoreError> {
    // Cosignatures come within seconds of a checkpoint: the last ones
    // copied are those that may lack them.
    let mut copied = copy.checkpoints()?;
    let recent = copied.len().saturating_sub(RECENT_CHECKPOINTS);
    let copied: std::collections::HashMap<u64, String> = copied
        .drain(recent..)
        .map(|checkpoint| (checkpoint.size, checkpoint.note))
        .collect();
    for stored in checkpoints.iter().filter(|stored| stored.size <= start) {
        let Some(before) = copied
            .get(&stored.size)
            .filter(|note| **note != stored.note)
        else {
            continue;
        };
        let same = Checkpoint::open(&stored.note, verifier).is_ok_and(|opened| {
            Checkpoint::open(before, verifier)
                .is_ok_and(|before| before.size == opened.size && before.root == opened.root)
        });
        if !same {
            continue;
        }
        for line in crate::note::cosignature_lines(&stored.note) {
            if !before.contains(line) {
                store::add_cosignature(dir, stored.size, line)?;
            }
        }
    }
    Ok(())
}

/// Reads records `from..from + count` and checks them against the fleet's
/// query columns and tree nodes, growing `frontier` (a working copy of the
/// tree) with them. The outer error is a failure to read; the inner one,
/// damage in the fleet's log.
fn check_page(
    reader: &FleetReader,
    frontier: &mut Frontier,
    from: u64,
    count: u64,
) -> Result<Result<Vec<ExchangeRecord>, Problem>, StoreError> {
    let end = to_i64(from + count);
    // A record written before leaves were kept beside it has its leaf in
    // `log_nodes` (level 0).
    let rows = reader.rows(
        "SELECT r.idx, r.phase, r.request_id, r.at_us, r.caller, r.provider, r.method, \
         r.purpose, r.subject, r.allowed, r.grpc_status, r.error_kind, r.concealed_until, \
         r.more_subjects, r.record, coalesce(r.leaf, n.hash) \
         FROM log_records r LEFT JOIN log_nodes n ON r.leaf IS NULL AND n.level = 0 \
         AND n.idx = r.idx WHERE r.idx >= $1 AND r.idx < $2 ORDER BY r.idx",
        &[&to_i64(from), &end],
    )?;
    let mut records = Vec::with_capacity(rows.len());
    let mut leaves = Vec::with_capacity(rows.len());
    let mut expected = from;
    for row in &rows {
        let index: i64 = row.get(0);
        if to_u64(index) != expected || index < 0 {
            return Ok(Err(Problem {
                kind: ProblemKind::MissingRecord,
                index: expected,
                message: format!(
                    "record {expected} is missing (the next record is {index}): it was deleted"
                ),
            }));
        }
        let bytes: Vec<u8> = row.get(14);
        let stored_leaf: Option<&[u8]> = row.get(15);
        if stored_leaf != Some(merkle::leaf_hash(&bytes).as_slice()) {
            return Ok(Err(Problem {
                kind: ProblemKind::RecordAltered,
                index: expected,
                message: format!(
                    "record {expected} was altered: its bytes are not those the tree holds"
                ),
            }));
        }
        let Ok(record) = ExchangeRecord::decode(bytes.as_slice()) else {
            return Ok(Err(Problem {
                kind: ProblemKind::Undecodable,
                index: expected,
                message: format!("record {expected} is not an ExchangeRecord"),
            }));
        };
        let want = store::columns(&record);
        for (column, name) in store::COLUMNS.iter().enumerate() {
            let found = if TEXT_COLUMNS[column] {
                row.get::<_, Option<String>>(column + 1).map(Value::Text)
            } else {
                row.get::<_, Option<i64>>(column + 1).map(Value::Integer)
            }
            .unwrap_or(Value::Null);
            if found != want[column] {
                return Ok(Err(Problem {
                    kind: ProblemKind::ColumnEdited,
                    index: expected,
                    message: format!(
                        "record {expected}: column `{name}` is not what the record says: the \
                         database was edited, and the Data Tracker may miss or invent accesses"
                    ),
                }));
            }
        }
        // The copy stores the record encoded again: a record with fields
        // this version does not know would not survive that.
        if record.encode_to_vec() != bytes {
            return Err(invalid(
                &reader.database,
                format!(
                    "record {expected} does not encode here as the fleet stored it: copy the log \
                     with a govbridge as recent as its nodes"
                ),
            ));
        }
        records.push(record);
        leaves.push(merkle::leaf_hash(&bytes));
        expected += 1;
    }
    if expected != from + count {
        return Ok(Err(Problem {
            kind: ProblemKind::MissingRecord,
            index: expected,
            message: format!(
                "record {expected} is missing, though a checkpoint covers it: it was deleted"
            ),
        }));
    }
    if let Err(problem) = check_subjects(reader, from, &records)? {
        return Ok(Err(problem));
    }
    if let Err(problem) = check_lookups(reader, from, &records)? {
        return Ok(Err(problem));
    }
    // The fleet's stored nodes over these records must be the ones they
    // give: the Data Tracker's proofs are made of them.
    let mut inner = Vec::new();
    for leaf in leaves {
        inner.extend(
            frontier
                .append(leaf)
                .into_iter()
                .filter(|(level, _, _)| *level >= store::STORED_LEVEL),
        );
    }
    let levels: Vec<i16> = inner.iter().map(|(level, _, _)| *level as i16).collect();
    let indexes: Vec<i64> = inner.iter().map(|(_, index, _)| to_i64(*index)).collect();
    let stored: std::collections::HashMap<(i16, i64), Vec<u8>> = reader
        .rows(
            "SELECT level, idx, hash FROM log_nodes \
             JOIN unnest($1::smallint[], $2::bigint[]) AS wanted (l, i) ON level = l AND idx = i",
            &[&levels, &indexes],
        )?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    for (level, index, hash) in inner {
        let found = stored.get(&(level as i16, to_i64(index)));
        if found.map(Vec::as_slice) != Some(hash.as_slice()) {
            let first = index << level;
            return Ok(Err(Problem {
                kind: ProblemKind::TreeNode,
                index: first,
                message: format!(
                    "tree node ({level}, {index}) over records {first} to {} is missing or not \
                     the one the records give: the tree was edited",
                    first + (1 << level) - 1
                ),
            }));
        }
    }
    Ok(Ok(records))
}

/// Each of `records` (from index `from`) that is sealed must have its
/// lookups: by request id, and by first subject if the Data Tracker shows
/// the record (an outcome, or a refusal). The Data Tracker and `directory`
/// queries find sealed records only through them. (A lookup too many
/// invents nothing: every hit is checked against the record.)
fn check_lookups(
    reader: &FleetReader,
    from: u64,
    records: &[ExchangeRecord],
) -> Result<Result<(), Problem>, StoreError> {
    let (mut kinds, mut values, mut indexes) = (Vec::new(), Vec::new(), Vec::new());
    for (index, record) in (from..).zip(records) {
        let shown = store::ends_call(record) && !record.subject.is_empty();
        let subject = shown.then_some(record.subject.as_str());
        kinds.push("r");
        values.push(record.request_id.as_str());
        if let Some(subject) = subject {
            kinds.push("s");
            values.push(subject);
        }
        indexes.resize(values.len(), to_i64(index));
    }
    let missing = reader.rows(
        "SELECT e.i FROM unnest($1::text[], $2::text[], $3::bigint[]) AS e (k, v, i) \
         WHERE e.i < (SELECT sealed FROM log_sealed) AND NOT EXISTS \
         (SELECT 1 FROM log_lookups l WHERE (l.idx >> 18) = (e.i >> 18) \
         AND l.key = log_lookup_key(e.k, e.v) AND l.idx = e.i) \
         ORDER BY e.i LIMIT 1",
        &[&kinds, &values, &indexes],
    )?;
    Ok(match missing.first() {
        Some(row) => {
            let index = to_u64(row.get(0));
            Err(Problem {
                kind: ProblemKind::LookupEdited,
                index,
                message: format!(
                    "record {index}: a lookup of its request id or subject is missing from \
                     `log_lookups`: the database was edited, and the Data Tracker may miss \
                     accesses"
                ),
            })
        }
        None => Ok(()),
    })
}

/// The rows of `log_subjects` for `records` (from index `from`) must be
/// the subjects each names besides its first: the Data Tracker finds them
/// there.
fn check_subjects(
    reader: &FleetReader,
    from: u64,
    records: &[ExchangeRecord],
) -> Result<Result<(), Problem>, StoreError> {
    let end = from + records.len() as u64;
    let stored: Vec<(i64, String)> = reader
        .rows(
            "SELECT idx, subject FROM log_subjects WHERE idx >= $1 AND idx < $2 \
             ORDER BY idx, subject COLLATE \"C\"",
            &[&to_i64(from), &to_i64(end)],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut stored = stored.iter().peekable();
    for (index, record) in (from..).zip(records) {
        let mut found = Vec::new();
        while let Some((_, subject)) = stored.next_if(|(at, _)| to_u64(*at) <= index) {
            found.push(subject.as_str());
        }
        // Byte order, as the record keeps them and "C" sorts them.
        if found != record.more_subjects {
            return Ok(Err(Problem {
                kind: ProblemKind::LookupEdited,
                index,
                message: format!(
                    "record {index}: its subjects in `log_subjects` are not those the record \
                     names: the database was edited, and the Data Tracker may miss or invent \
                     accesses"
                ),
            }));
        }
    }
    Ok(Ok(()))
}
