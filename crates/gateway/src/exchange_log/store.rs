//! The exchange log on disk: one SQLite database (WAL, `synchronous=FULL`)
//! in the data directory, next to the log's signing key.
//!
//! ```sql
//! -- One row per record (leaf), in append order. `record` holds the encoded
//! -- ExchangeRecord exactly as hashed; the other columns copy some of its
//! -- fields for queries and are not trusted by `audit verify` unless they
//! -- match the record.
//! CREATE TABLE records (
//!   idx INTEGER PRIMARY KEY,          -- leaf index, from 0, no gaps
//!   phase TEXT NOT NULL,              -- 'decision' or 'outcome'
//!   request_id TEXT NOT NULL,
//!   at_us INTEGER NOT NULL,           -- received (decision) or completed (outcome)
//!   caller TEXT NOT NULL, provider TEXT NOT NULL, method TEXT NOT NULL,
//!   purpose TEXT NOT NULL, subject TEXT,
//!   allowed INTEGER NOT NULL,         -- 0 or 1
//!   grpc_status INTEGER,              -- NULL in the decision of a forwarded call
//!   error_kind TEXT,                  -- bridge-error, if any
//!   concealed_until INTEGER NOT NULL, -- hidden from the Data Tracker until (unix s)
//!   record BLOB NOT NULL,
//!   leaf BLOB,                        -- the record's leaf hash; NULL in logs written before
//!   more_subjects TEXT                -- the other subjects a stream named, as a JSON
//!                                     -- array; NULL when none
//! );
//! -- The complete subtrees of the Merkle tree of 256 leaves or more
//! -- (level 8 and up; (0, i) would be leaf i's hash). Those below are
//! -- not stored: they are hashed again from their records when needed.
//! -- `pos` numbers nodes in the order they are completed (a leaf, then the
//! -- subtrees it completes), so appends only ever touch the table's end.
//! CREATE TABLE tree_nodes (pos INTEGER PRIMARY KEY, level INTEGER NOT NULL,
//!                          idx INTEGER NOT NULL, hash BLOB NOT NULL);
//! -- How a record is found by request id or subject: for each sealed
//! -- segment of 65,536 records, its (key, idx) pairs in key order, written
//! -- once at the table's end (see `lookup`). `key` is a hash of the value.
//! CREATE TABLE lookups (segment INTEGER, key INTEGER, idx INTEGER,
//!                       PRIMARY KEY (segment, key, idx)) WITHOUT ROWID;
//! -- Signed checkpoints (C2SP signed notes), one per tree size.
//! CREATE TABLE checkpoints (tree_size INTEGER PRIMARY KEY,
//!                           signed_at INTEGER NOT NULL, note TEXT NOT NULL);
//! -- schema_version, origin; sealed_end: the records before it have
//! -- their lookups in `lookups`; archived_end and archived_until_us: the
//! -- records before it (up to that time) are in archive files, and their
//! -- lookups and the tree nodes inside their segments left with them.
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
//! ```
//!
//! Operators read it with `sqlite3 -readonly DIR/exchange-log.sqlite`.
//! Only the gateway's writer thread writes, in one transaction per batch of
//! records; readers (the CLI, the gateway's gRPC services) never block it.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::lookup::{self, Kind, Recent, SEGMENT, Sealing};
use super::merkle::{self, Frontier, Hash, Nodes};
use super::note::{Checkpoint, SigningKey};
use crate::proto::audit::v1::{ExchangeRecord, Phase};

/// The database file in the data directory.
pub const DATABASE_FILE: &str = "exchange-log.sqlite";
/// The log's Ed25519 signing key (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "log-key.pem";
/// The log's public key, as a signed-note verifier key.
pub const VERIFIER_FILE: &str = "log-key.pub";

/// How long after its call ended an outcome is written, at most
/// ([`Store::assertions_since`]): the queue and a commit, milliseconds; a
/// store stalled for longer holds every call with it.
pub const OUTCOME_LAG_US: i64 = 30_000_000;

/// 3: records carry their leaf, and the tree is stored from level 8 up.
const SCHEMA_VERSION: &str = "4";

/// The lowest level of the tree whose nodes are stored: a node covering
/// 256 records or more. Below, a node is hashed again from the records it
/// covers (at most 255 of them), as a tile of C2SP tlog-tiles would be.
///
/// A leaf completes two nodes on average: storing them all wrote three
/// rows a record, and each commit rewrote the right edge of a second
/// B-tree. Stored from level 8, the nodes are a row per 128 records.
/// (Logs written before kept every node; those below level 8 are neither
/// read nor checked any longer.)
pub const STORED_LEVEL: u32 = 8;

/// The most records [`Store::records_of_request`] returns: a call has a
/// decision and an outcome, and a request id reused many times must not
/// make one lookup read them all.
pub const MAX_RECORDS_OF_REQUEST: usize = 64;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
  idx INTEGER PRIMARY KEY,
  phase TEXT NOT NULL,
  request_id TEXT NOT NULL,
  at_us INTEGER NOT NULL,
  caller TEXT NOT NULL,
  provider TEXT NOT NULL,
  method TEXT NOT NULL,
  purpose TEXT NOT NULL,
  subject TEXT,
  allowed INTEGER NOT NULL,
  grpc_status INTEGER,
  error_kind TEXT,
  concealed_until INTEGER NOT NULL,
  record BLOB NOT NULL,
  leaf BLOB,
  more_subjects TEXT
);
CREATE TABLE IF NOT EXISTS lookups (
  segment INTEGER NOT NULL,
  key INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  PRIMARY KEY (segment, key, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tree_nodes (
  pos INTEGER PRIMARY KEY,
  level INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
  tree_size INTEGER PRIMARY KEY,
  signed_at INTEGER NOT NULL,
  note TEXT NOT NULL
);
";

/// A failure of the store, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// The fleet's log, in PostgreSQL.
    #[error(transparent)]
    Database(#[from] crate::database::DatabaseError),
}

impl StoreError {
    fn invalid(path: &Path, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// A SQLite error, tagged with the database path.
pub(super) trait AtPath<T> {
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> AtPath<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        })
    }
}

/// A fault to simulate, for drills and tests of the fail-closed path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// Every write fails as on a read-only file system (`SQLITE_READONLY`).
    ReadOnly,
    /// The database cannot grow, as on a full disk (`SQLITE_FULL`).
    DiskFull,
}

/// What [`Store::select_windows`] read.
#[derive(Debug)]
pub struct Windows {
    pub rows: Vec<StoredRecord>,
    /// The archived end, when it is past the range's start once the
    /// windows are read (an archive run moved it meanwhile, for a range
    /// that starts in the hot store): rows before it may be missing (they
    /// are in the archive files).
    pub archived_meanwhile: Option<u64>,
}

/// A record's columns, as stored.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub index: u64,
    /// The encoded record: the leaf's data.
    pub bytes: Vec<u8>,
}

impl StoredRecord {
    /// The decoded record.
    pub fn decode(&self) -> Result<ExchangeRecord, prost::DecodeError> {
        ExchangeRecord::decode(self.bytes.as_slice())
    }
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub size: u64,
    pub signed_at: i64,
    pub note: String,
}

/// The columns that copy a record's fields for queries, in table order.
pub const COLUMNS: [&str; 13] = [
    "phase",
    "request_id",
    "at_us",
    "caller",
    "provider",
    "method",
    "purpose",
    "subject",
    "allowed",
    "grpc_status",
    "error_kind",
    "concealed_until",
    "more_subjects",
];

/// Whether `record` ends its call: an outcome, or a decision that refused
/// it. Such a record carries the call's status, and is what the Data
/// Tracker shows of the call.
pub fn ends_call(record: &ExchangeRecord) -> bool {
    record.phase() == Phase::Outcome || !record.error_kind.is_empty()
}

/// The values of [`COLUMNS`] for `record`: what `append` writes and what
/// `audit verify` expects.
pub fn columns(record: &ExchangeRecord) -> [Value; 13] {
    let outcome = record.phase() == Phase::Outcome;
    // A decision carries a status only when it is also the call's end.
    let finished = ends_call(record);
    let text = |text: &str| Value::Text(text.to_owned());
    let optional = |value: &str| {
        if value.is_empty() {
            Value::Null
        } else {
            text(value)
        }
    };
    [
        text(if outcome { "outcome" } else { "decision" }),
        text(&record.request_id),
        Value::Integer(if outcome {
            record.completed_us
        } else {
            record.received_us
        }),
        text(&record.caller),
        text(&record.provider),
        text(&record.method),
        text(&record.purpose),
        optional(&record.subject),
        Value::Integer(i64::from(record.allowed)),
        if finished {
            Value::Integer(i64::from(record.grpc_status))
        } else {
            Value::Null
        },
        optional(&record.error_kind),
        Value::Integer(record.concealed_until_unix),
        more_subjects(&record.more_subjects),
    ]
}

/// The `more_subjects` column of a record naming `subjects` besides its
/// first: a JSON array, or NULL when there are none.
fn more_subjects(subjects: &[String]) -> Value {
    if subjects.is_empty() {
        return Value::Null;
    }
    // Strings always serialize.
    Value::Text(serde_json::to_string(subjects).unwrap_or_default())
}

/// The subjects a `more_subjects` column holds, as [`columns`] wrote them.
fn parse_more_subjects(column: Option<&str>) -> Vec<String> {
    column
        .and_then(|column| serde_json::from_str(column).ok())
        .unwrap_or_default()
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A connection to the log database, read-write (the writer) or
/// read-only (everyone else).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    connection: Connection,
    /// The lookups of records not sealed yet: the writer's, or shared by
    /// the writer with a reader in the gateway. Other readers scan.
    recent: Option<Arc<Recent>>,
    /// The writer's seal in progress.
    sealing: Option<Sealing>,
    /// The writer's first record not sealed.
    sealed_end: u64,
    /// Whether records carry their leaf hash, once looked at.
    leaves: std::cell::OnceCell<bool>,
    /// Whether records have their `more_subjects` column, once looked at.
    more_subjects: std::cell::OnceCell<bool>,
}

impl Store {
    /// Opens (creating it if needed) the database in `dir` for writing.
    pub fn open(dir: &Path, origin: &str) -> Result<Self, StoreError> {
        let path = dir.join(DATABASE_FILE);
        let connection = Connection::open(&path).at(&path)?;
        let mut store = Self {
            path,
            connection,
            recent: Some(Arc::default()),
            sealing: None,
            sealed_end: 0,
            leaves: std::cell::OnceCell::new(),
            more_subjects: std::cell::OnceCell::new(),
        };
        store.configure_writer()?;
        store.connection.execute_batch(SCHEMA).at(&store.path)?;
        if !store.has_leaves()? {
            store
                .connection
                .execute_batch("ALTER TABLE records ADD COLUMN leaf BLOB")
                .at(&store.path)?;
        }
        if !store.has_more_subjects()? {
            store
                .connection
                .execute_batch("ALTER TABLE records ADD COLUMN more_subjects TEXT")
                .at(&store.path)?;
        }
        store.check_meta(origin)?;
        store.catch_up_lookups()?;
        Ok(store)
    }

    /// Seals every complete segment not sealed yet (all of them when a
    /// log of schema 1 is opened the first time) and gathers the lookups
    /// of the rest into memory.
    fn catch_up_lookups(&mut self) -> Result<(), StoreError> {
        let size = self.size()?;
        self.sealed_end = self.sealed_end()?;
        let archived = self.archived_end()?;
        if !self.sealed_end.is_multiple_of(SEGMENT)
            || !archived.is_multiple_of(SEGMENT)
            || archived > self.sealed_end
            || self.sealed_end > size
        {
            return Err(StoreError::invalid(
                &self.path,
                format!(
                    "meta says archived_end {archived} and sealed_end {}, which do not fit a log \
                     of {size} records (multiples of {SEGMENT}, archived_end <= sealed_end <= \
                     records): the database was edited; run `govbridge audit verify`",
                    self.sealed_end
                ),
            ));
        }
        // A row numbered past the others (or one deleted) would have the
        // segments up to it sealed, every empty one of them: refused
        // before anything is written.
        let unsealed: i64 = self
            .connection
            .query_row(
                "SELECT COUNT(*) FROM records WHERE idx >= ?1",
                [to_i64(self.sealed_end)],
                |row| row.get(0),
            )
            .at(&self.path)?;
        if u64::try_from(unsealed).ok() != Some(size - self.sealed_end) {
            return Err(StoreError::invalid(
                &self.path,
                format!(
                    "{unsealed} records from {} on, but the last index is {}: records are \
                     missing; run `govbridge audit verify`",
                    self.sealed_end,
                    size.saturating_sub(1)
                ),
            ));
        }
        while self.sealed_end + SEGMENT <= size {
            let (from, to) = (self.sealed_end, self.sealed_end + SEGMENT);
            let entries = self.scan_lookups(from, to)?;
            let transaction = self
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .at(&self.path)?;
            // A seal cut short leaves part of its run: written again whole.
            transaction
                .execute(
                    "DELETE FROM lookups WHERE segment = ?1",
                    [to_i64(lookup::segment_of(from))],
                )
                .at(&self.path)?;
            write_lookups(&transaction, lookup::segment_of(from), &entries).at(&self.path)?;
            set_sealed_end(&transaction, to).at(&self.path)?;
            transaction.commit().at(&self.path)?;
            self.sealed_end = to;
        }
        let tail = self.scan_lookups(self.sealed_end, size)?;
        if let Some(recent) = &self.recent {
            recent.add(tail);
            recent.forget_before(self.sealed_end);
        }
        Ok(())
    }

    /// The lookups of records `[from, to)`, read from the records, sorted.
    fn scan_lookups(&self, from: u64, to: u64) -> Result<Vec<(i64, u64)>, StoreError> {
        let more = self.more_subjects_column()?;
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT idx, request_id, subject, {more} FROM records WHERE idx >= ?1 AND idx < ?2"
            ))
            .at(&self.path)?;
        let mut rows = statement.query([to_i64(from), to_i64(to)]).at(&self.path)?;
        let mut entries = Vec::new();
        while let Some(row) = rows.next().at(&self.path)? {
            let index = u64::try_from(row.get::<_, i64>(0).at(&self.path)?).unwrap_or(0);
            let request: String = row.get(1).at(&self.path)?;
            entries.push((lookup::key(Kind::Request, &request), index));
            if let Some(subject) = row.get::<_, Option<String>>(2).at(&self.path)? {
                entries.push((lookup::key(Kind::Subject, &subject), index));
            }
            let more: Option<String> = row.get(3).at(&self.path)?;
            for subject in parse_more_subjects(more.as_deref()) {
                entries.push((lookup::key(Kind::Subject, &subject), index));
            }
        }
        // Two values of a record can share a key (a hash): one lookup.
        entries.sort_unstable();
        entries.dedup();
        Ok(entries)
    }

    /// The first record whose lookups are not sealed (0 in a log of
    /// schema 1, which has none).
    pub(super) fn sealed_end(&self) -> Result<u64, StoreError> {
        self.meta_number("sealed_end")
    }

    /// The first record still in this store: those before it are in
    /// archive files ([`super::archive`]).
    pub fn archived_end(&self) -> Result<u64, StoreError> {
        self.meta_number("archived_end")
    }

    /// A number kept in `meta`, 0 when absent.
    fn meta_number(&self, key: &str) -> Result<u64, StoreError> {
        let value: Option<String> = self
            .connection
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .at(&self.path)?;
        match value {
            None => Ok(0),
            Some(value) => value.parse().map_err(|_| {
                StoreError::invalid(&self.path, format!("meta {key} is `{value}`, not a number"))
            }),
        }
    }

    /// Starts a read transaction, unless one is open: what is read until
    /// it is dropped comes from one state of the database, whatever the
    /// writer or an archive run commit meanwhile.
    pub fn snapshot(&self) -> Result<Option<rusqlite::Transaction<'_>>, StoreError> {
        if !self.connection.is_autocommit() {
            return Ok(None);
        }
        self.connection
            .unchecked_transaction()
            .map(Some)
            .at(&self.path)
    }

    /// Whether this log seals its lookups (schema 2 and later; a log of
    /// schema 1 is sealed when a gateway first opens it).
    pub fn seals_lookups(&self) -> Result<bool, StoreError> {
        Ok(self.meta_number("schema_version")? >= 2)
    }

    /// The highest segment with lookups stored, if any.
    pub fn last_lookup_segment(&self) -> Result<Option<u64>, StoreError> {
        let segment: Option<i64> = self
            .connection
            .query_row("SELECT MAX(segment) FROM lookups", [], |row| row.get(0))
            .at(&self.path)?;
        Ok(segment.map(|segment| u64::try_from(segment).unwrap_or(u64::MAX)))
    }

    /// The lowest index of a row below 0, which no append writes.
    pub fn first_foreign_row(&self) -> Result<Option<i64>, StoreError> {
        self.connection
            .query_row("SELECT MIN(idx) FROM records WHERE idx < 0", [], |row| {
                row.get(0)
            })
            .at(&self.path)
    }

    /// Segments whose lookups are sealed.
    pub fn sealed_segments(&self) -> Result<u64, StoreError> {
        Ok(lookup::segment_of(self.sealed_end()?))
    }

    /// Segment `segment`'s lookups as stored, sorted.
    pub fn lookup_run(&self, segment: u64) -> Result<Vec<(i64, u64)>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT key, idx FROM lookups WHERE segment = ?1 ORDER BY key, idx")
            .at(&self.path)?;
        let rows = statement
            .query_map([to_i64(segment)], |row| {
                Ok((
                    row.get(0)?,
                    u64::try_from(row.get::<_, i64>(1)?).unwrap_or(u64::MAX),
                ))
            })
            .at(&self.path)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().at(&self.path)
    }

    /// Shares the gateway writer's lookups of unsealed records with this
    /// reader, which then needs not scan them.
    #[must_use]
    pub fn with_recent(mut self, recent: Arc<Recent>) -> Self {
        self.recent = Some(recent);
        self
    }

    /// The lookups of unsealed records, held by the writer.
    pub fn recent(&self) -> Option<Arc<Recent>> {
        self.recent.clone()
    }

    /// Opens the database in `dir` read-only.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DATABASE_FILE);
        if !path.exists() {
            return Err(StoreError::invalid(&path, "no exchange log here"));
        }
        let connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .at(&path)?;
        connection.busy_timeout(Duration::from_secs(5)).at(&path)?;
        Ok(Self {
            path,
            connection,
            recent: None,
            sealing: None,
            sealed_end: 0,
            leaves: std::cell::OnceCell::new(),
            more_subjects: std::cell::OnceCell::new(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaf `index`'s hash among the tree's level-0 nodes, where logs
    /// written before records carried their leaf kept it.
    pub fn stored_leaf_node(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.connection
            .prepare_cached("SELECT hash FROM tree_nodes WHERE pos = ?1 AND level = 0 AND idx = ?2")
            .and_then(|mut statement| {
                statement
                    .query_row(
                        params![to_i64(node_position(0, index)), to_i64(index)],
                        |row| row.get(0),
                    )
                    .optional()
            })
            .at(&self.path)
    }

    /// Whether records carry their leaf hash (a log written before does
    /// not until a gateway opens it).
    fn has_leaves(&self) -> Result<bool, StoreError> {
        self.has_column(&self.leaves, "leaf")
    }

    /// Whether records have the column of the subjects a stream named
    /// besides its first (a log written before has not until a gateway
    /// opens it).
    fn has_more_subjects(&self) -> Result<bool, StoreError> {
        self.has_column(&self.more_subjects, "more_subjects")
    }

    /// The `more_subjects` column in a query: NULL in a log without it.
    pub fn more_subjects_column(&self) -> Result<&'static str, StoreError> {
        Ok(if self.has_more_subjects()? {
            "more_subjects"
        } else {
            "NULL"
        })
    }

    fn has_column(
        &self,
        known: &std::cell::OnceCell<bool>,
        name: &str,
    ) -> Result<bool, StoreError> {
        if let Some(present) = known.get() {
            return Ok(*present);
        }
        let present = self
            .connection
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('records') WHERE name = ?1",
                [name],
                |row| row.get::<_, i64>(0),
            )
            .map(|count| count > 0)
            .at(&self.path)?;
        // A read-only store may see the column added later by a gateway:
        // only its presence is kept.
        if present {
            let _ = known.set(true);
        }
        Ok(present)
    }

    fn configure_writer(&mut self) -> Result<(), StoreError> {
        let connection = &mut self.connection;
        let mode: String = connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .at(&self.path)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::invalid(
                &self.path,
                format!("cannot use write-ahead logging (journal mode is {mode})"),
            ));
        }
        // Every commit reaches the disk before any caller hears of it.
        connection
            .pragma_update(None, "synchronous", "FULL")
            .at(&self.path)?;
        // The WAL is copied into the database by a `WalCheckpointer` on
        // its own connection, never inside a commit that calls wait for.
        connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .at(&self.path)?;
        connection.busy_handler(Some(wait_briefly)).at(&self.path)?;
        Ok(())
    }

    fn check_meta(&self, origin: &str) -> Result<(), StoreError> {
        let meta = |key: &str| -> Result<Option<String>, StoreError> {
            self.connection
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()
                .at(&self.path)
        };
        if meta("schema_version")?.as_deref() == Some("1") {
            // Schema 1 kept B-tree indexes on request_id and subject; 2
            // finds records through `lookups`, filled as the log opens.
            self.connection
                .execute_batch(
                    "DROP INDEX IF EXISTS records_by_request; \
                     DROP INDEX IF EXISTS records_by_subject; \
                     UPDATE meta SET value = '2' WHERE key = 'schema_version';",
                )
                .at(&self.path)?;
        }
        if meta("schema_version")?.as_deref() == Some("2") {
            // The `leaf` column was added as the log opened; older records
            // have their leaf among the tree's level-0 nodes.
            self.connection
                .execute(
                    "UPDATE meta SET value = '3' WHERE key = 'schema_version'",
                    [],
                )
                .at(&self.path)?;
        }
        if meta("schema_version")?.as_deref() == Some("3") {
            // The `more_subjects` column was added as the log opened; the
            // records before have none. A gateway of schema 3 would seal
            // lookups without them: it must not open this log again.
            self.connection
                .execute(
                    "UPDATE meta SET value = '4' WHERE key = 'schema_version'",
                    [],
                )
                .at(&self.path)?;
        }
        match meta("schema_version")? {
            None => {
                self.connection
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1), ('origin', ?2)",
                        params![SCHEMA_VERSION, origin],
                    )
                    .at(&self.path)?;
            }
            Some(version) if version != SCHEMA_VERSION => {
                return Err(StoreError::invalid(
                    &self.path,
                    format!("schema version {version}; this gateway reads {SCHEMA_VERSION}"),
                ));
            }
            Some(_) => {}
        }
        match meta("origin")? {
            Some(stored) if stored != origin => Err(StoreError::invalid(
                &self.path,
                format!(
                    "this log's origin is `{stored}`, the configuration says `{origin}` \
                     (exchange_log.origin); a log never changes its name"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The log's origin, as recorded when it was created.
    pub fn origin(&self) -> Result<String, StoreError> {
        self.connection
            .query_row("SELECT value FROM meta WHERE key = 'origin'", [], |row| {
                row.get(0)
            })
            .at(&self.path)
    }

    /// Number of records.
    pub fn size(&self) -> Result<u64, StoreError> {
        // `MAX(idx) + 1` would turn into a float past `i64::MAX`.
        let last: Option<i64> = self
            .connection
            .query_row("SELECT MAX(idx) FROM records", [], |row| row.get(0))
            .at(&self.path)?;
        let next = last.map_or(0, |last| u64::try_from(last).map_or(0, |last| last + 1));
        // Every record may be archived.
        Ok(next.max(self.archived_end()?))
    }

    /// The index of the first record at or after `from`, if any.
    pub fn first_index_from(&self, from: u64) -> Result<Option<u64>, StoreError> {
        let first: Option<i64> = self
            .connection
            .query_row(
                "SELECT MIN(idx) FROM records WHERE idx >= ?1",
                [to_i64(from)],
                |row| row.get(0),
            )
            .at(&self.path)?;
        Ok(first.and_then(|first| u64::try_from(first).ok()))
    }

    /// The `bridge-assertion`s carried by the decisions logged since
    /// `since_us` (by the records' own clock): those of the partners'
    /// gateways' calls this gateway took, newest first. Read back from the
    /// newest record, so that a long log costs only the window; the
    /// records of callers of instance `own` are not decoded.
    ///
    /// A decision is timed when its call came, but written once its first
    /// message (or JSON body) is read, up to `late` after: one older than
    /// the window may follow one inside it. The read ends at the first
    /// record older than that allows, or at an outcome (timed when its
    /// call ended, and written then) [`OUTCOME_LAG_US`] older than the
    /// window: every record before it was written before the window.
    pub fn assertions_since(
        &self,
        since_us: i64,
        own: &str,
        late: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let own = format!("{own}/");
        let late_us = i64::try_from(late.as_micros()).unwrap_or(i64::MAX);
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT idx, at_us, phase = 'outcome', CASE WHEN phase = 'decision' \
                     AND substr(caller, 1, length(?2)) <> ?2 THEN record END \
                 FROM records WHERE idx < ?1 ORDER BY idx DESC LIMIT 4096",
            )
            .at(&self.path)?;
        let mut before = to_i64(self.size()?);
        let mut assertions = Vec::new();
        loop {
            let rows = statement
                .query_map(params![before, own], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })
                .at(&self.path)?
                .collect::<rusqlite::Result<Vec<(i64, i64, bool, Option<Vec<u8>>)>>>()
                .at(&self.path)?;
            let Some(&(last, ..)) = rows.last() else {
                return Ok(assertions);
            };
            for (index, at_us, outcome, record) in rows {
                let written_before = if outcome { OUTCOME_LAG_US } else { late_us };
                if at_us < since_us.saturating_sub(written_before) {
                    return Ok(assertions);
                }
                let Some(bytes) = record.filter(|_| at_us >= since_us) else {
                    continue;
                };
                let record = ExchangeRecord::decode(bytes.as_slice()).map_err(|error| {
                    StoreError::invalid(&self.path, format!("record {index}: {error}"))
                })?;
                if !record.assertion.is_empty() {
                    assertions.push(record.assertion);
                }
            }
            before = last;
        }
    }

    /// The record at `index`.
    pub fn record(&self, index: u64) -> Result<Option<StoredRecord>, StoreError> {
        self.connection
            .prepare_cached("SELECT record FROM records WHERE idx = ?1")
            .and_then(|mut statement| {
                statement
                    .query_row([to_i64(index)], |row| {
                        Ok(StoredRecord {
                            index,
                            bytes: row.get(0)?,
                        })
                    })
                    .optional()
            })
            .at(&self.path)
    }

    /// The records of one call, in order: at most
    /// [`MAX_RECORDS_OF_REQUEST`], the first ones. Request ids come from
    /// callers, so calls of several members may share one.
    pub fn records_of_request(&self, request_id: &str) -> Result<Vec<StoredRecord>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT record FROM records WHERE idx = ?1 AND request_id = ?2")
            .at(&self.path)?;
        let mut found = Vec::new();
        for index in self.find(Kind::Request, request_id)? {
            if found.len() == MAX_RECORDS_OF_REQUEST {
                break;
            }
            let bytes: Option<Vec<u8>> = statement
                .query_row(params![to_i64(index), request_id], |row| row.get(0))
                .optional()
                .at(&self.path)?;
            found.extend(bytes.map(|bytes| StoredRecord { index, bytes }));
        }
        Ok(found)
    }

    /// The last record of call `request_id` that `member` made or served:
    /// what another member's reuse of the same request id cannot hide.
    pub fn last_record_of_request_for(
        &self,
        request_id: &str,
        member: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT record FROM records WHERE idx = ?1 AND request_id = ?2 \
                 AND (caller = ?3 OR provider = ?3)",
            )
            .at(&self.path)?;
        let mut found = None;
        self.visit_newest_first(Kind::Request, request_id, |index| {
            let bytes: Option<Vec<u8>> = statement
                .query_row(params![to_i64(index), request_id, member], |row| row.get(0))
                .optional()
                .at(&self.path)?;
            found = bytes.map(|bytes| StoredRecord { index, bytes });
            Ok(if found.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        Ok(found)
    }

    /// What the Data Tracker shows of `subject`: the records that end a
    /// call naming it (outcomes, and decisions that were the call's end),
    /// at or after `since_us`, before index `before`, no longer concealed
    /// at `now` (unix seconds), the newest `limit` in log order.
    pub fn accesses_to(
        &self,
        subject: &str,
        since_us: i64,
        before: u64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let more = self.more_subjects_column()?;
        let mut statement = self
            .connection
            .prepare_cached(&format!(
                "SELECT record FROM records WHERE idx = ?1 \
                 AND (subject = ?2 OR ?2 IN (SELECT value FROM json_each({more}))) \
                 AND at_us >= ?3 AND concealed_until <= ?4 \
                 AND (phase = 'outcome' OR error_kind IS NOT NULL)",
            ))
            .at(&self.path)?;
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        self.visit_newest_first(Kind::Subject, subject, |index| {
            if index >= before {
                return Ok(ControlFlow::Continue(()));
            }
            let bytes: Option<Vec<u8>> = statement
                .query_row(params![to_i64(index), subject, since_us, now], |row| {
                    row.get(0)
                })
                .optional()
                .at(&self.path)?;
            found.extend(bytes.map(|bytes| StoredRecord { index, bytes }));
            Ok(if found.len() == limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        Ok(found)
    }

    /// Records from index `from`, at most `limit`, in order.
    pub fn records_from(&self, from: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        // Not rows an archive run has yet to remove: they are read, and
        // checked, from their archive.
        let from = from.max(self.archived_end()?);
        self.select(
            "SELECT idx, record FROM records WHERE idx >= ?1 ORDER BY idx LIMIT ?2",
            [to_i64(from), to_i64(limit as u64)],
        )
    }

    /// The indexes of the records whose `kind` column may hold `value`, in
    /// order: every one that does, and perhaps others (keys are hashes).
    pub fn find(&self, kind: Kind, value: &str) -> Result<Vec<u64>, StoreError> {
        let mut found = Vec::new();
        self.visit_newest_first(kind, value, |index| {
            found.push(index);
            Ok(ControlFlow::Continue(()))
        })?;
        found.reverse();
        Ok(found)
    }

    /// Calls `visit` with the indexes [`Store::find`] gives, newest first,
    /// until it breaks: the unsealed records, then each sealed segment's
    /// run from the newest. A lookup that is answered by a recent record
    /// (a member asking for its receipt) probes a few runs, not all of
    /// them. Everything is read in one snapshot.
    fn visit_newest_first(
        &self,
        kind: Kind,
        value: &str,
        mut visit: impl FnMut(u64) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        let key = lookup::key(kind, value);
        // What the snapshot below has not sealed is still here (see
        // `Recent`), and what it has, in its runs.
        let recent = self.recent.as_ref().map(|recent| recent.find(key));
        let _snapshot = self.snapshot()?;
        // Bounded by the records, whatever `meta` says, and never below
        // what the writer knows it sealed: a `sealed_end` edited down would
        // otherwise skip the runs between (`audit verify` names the edit).
        let sealed_end = self
            .sealed_end()?
            .min(self.size()?)
            .max(recent.as_ref().map_or(0, |(_, start)| *start));
        let archived = lookup::segment_of(self.archived_end()?);
        let mut unsealed = match recent {
            Some((recent, _)) => recent,
            None => {
                let matches = match kind {
                    Kind::Request => "request_id = ?2".to_owned(),
                    Kind::Subject => format!(
                        "(subject = ?2 OR ?2 IN (SELECT value FROM json_each({})))",
                        self.more_subjects_column()?
                    ),
                };
                let mut scan = self
                    .connection
                    .prepare_cached(&format!(
                        "SELECT idx FROM records WHERE idx >= ?1 AND {matches}"
                    ))
                    .at(&self.path)?;
                let rows = scan
                    .query_map(params![to_i64(sealed_end), value], |row| {
                        row.get::<_, i64>(0)
                    })
                    .at(&self.path)?;
                rows.map(|index| Ok(u64::try_from(index.at(&self.path)?).unwrap_or(0)))
                    .collect::<Result<Vec<_>, StoreError>>()?
            }
        };
        // Lookups kept in memory for a segment sealed since are in its run.
        unsealed.retain(|index| *index >= sealed_end);
        unsealed.sort_unstable();
        for index in unsealed.into_iter().rev() {
            if visit(index)?.is_break() {
                return Ok(());
            }
        }
        let mut probe = self
            .connection
            .prepare_cached("SELECT idx FROM lookups WHERE segment = ?1 AND key = ?2")
            .at(&self.path)?;
        for segment in (archived..lookup::segment_of(sealed_end)).rev() {
            let rows = probe
                .query_map([to_i64(segment), key], |row| row.get::<_, i64>(0))
                .at(&self.path)?;
            let run = rows
                .map(|index| Ok(u64::try_from(index.at(&self.path)?).unwrap_or(0)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            // A run is in key order, then index order.
            for index in run.into_iter().rev() {
                if visit(index)?.is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Runs a query returning `(idx, record)` rows; for the query command.
    pub fn select(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let mut statement = self.connection.prepare_cached(sql).at(&self.path)?;
        let rows = statement
            .query_map(params, |row| {
                Ok(StoredRecord {
                    index: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                    bytes: row.get(1)?,
                })
            })
            .at(&self.path)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().at(&self.path)
    }

    /// [`Self::select`] over the records of `range`, a window of
    /// 65,536 records (`READ_CHUNK`) at a time, until `wanted`
    /// rows came: `sql_for(window, still_wanted)` is the statement for one
    /// window. Each window is read in a snapshot of its own, so that a
    /// gateway writing beside can restart its WAL between two: one
    /// statement over a large log would keep it growing for as long as it
    /// ran (`audit query --caller`, say, reads every record).
    ///
    /// An archive run beside may then remove rows of a window not read
    /// yet: [`Windows::archived_meanwhile`] says so.
    pub fn select_windows(
        &self,
        range: std::ops::Range<u64>,
        wanted: usize,
        sql_for: impl FnMut(std::ops::Range<u64>, usize) -> (String, Vec<Value>),
    ) -> Result<Windows, StoreError> {
        self.select_windows_pausing(range, wanted, sql_for, || {
            std::thread::sleep(super::BETWEEN_READS);
        })
    }

    fn select_windows_pausing(
        &self,
        range: std::ops::Range<u64>,
        wanted: usize,
        mut sql_for: impl FnMut(std::ops::Range<u64>, usize) -> (String, Vec<Value>),
        mut between: impl FnMut(),
    ) -> Result<Windows, StoreError> {
        let mut rows = Vec::new();
        let mut from = range.start;
        while from < range.end && rows.len() < wanted {
            if from > range.start {
                between();
            }
            let end = range
                .end
                .min((from / super::READ_CHUNK + 1) * super::READ_CHUNK);
            let (sql, values) = sql_for(from..end, wanted - rows.len());
            rows.extend(self.select(&sql, rusqlite::params_from_iter(values))?);
            // On at the next record: windows with none (a row numbered far
            // past the others, in an edited log) are not read one by one.
            from = match self.first_index_from(end)? {
                Some(next) if next >= end => next,
                _ => break,
            };
        }
        // A run moves `archived_end` before it removes rows, and only
        // forward: if it did not pass the range's start (at or past the
        // hot store's start when the caller chose it), nothing went.
        let archived = self.archived_end()?;
        let archived_meanwhile = (archived > range.start).then_some(archived);
        Ok(Windows {
            rows,
            archived_meanwhile,
        })
    }

    /// The latest checkpoint.
    pub fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.connection
            .query_row(
                "SELECT tree_size, signed_at, note FROM checkpoints ORDER BY tree_size DESC LIMIT 1",
                [],
                checkpoint_row,
            )
            .optional()
            .at(&self.path)
    }

    /// Keeps a checkpoint signed elsewhere (a copy of a fleet's log keeps
    /// the fleet's), once it was checked against the records it covers.
    pub fn add_checkpoint(&self, checkpoint: &StoredCheckpoint) -> Result<(), StoreError> {
        self.connection
            .execute(
                "INSERT OR IGNORE INTO checkpoints (tree_size, signed_at, note) VALUES (?1, ?2, ?3)",
                params![
                    to_i64(checkpoint.size),
                    checkpoint.signed_at,
                    checkpoint.note
                ],
            )
            .at(&self.path)?;
        Ok(())
    }

    /// Every checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT tree_size, signed_at, note FROM checkpoints ORDER BY tree_size")
            .at(&self.path)?;
        let rows = statement.query_map([], checkpoint_row).at(&self.path)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().at(&self.path)
    }

    /// Every stored node of one level, in order, as `(index, hash)`.
    pub fn level(&self, level: u32) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT idx, hash, pos FROM tree_nodes WHERE level = ?1 ORDER BY idx")
            .at(&self.path)?;
        let rows = statement
            .query_map([level], |row| {
                Ok((row.get::<_, i64>(0)?, row.get(1)?, row.get::<_, i64>(2)?))
            })
            .at(&self.path)?;
        // A node is read where it was written (by its position, as proofs
        // read it): one moved elsewhere is not there.
        let mut nodes = Vec::new();
        for row in rows {
            let (index, hash, position) = row.at(&self.path)?;
            let placed = u64::try_from(index)
                .is_ok_and(|index| to_i64(node_position(level, index)) == position);
            if placed {
                nodes.push((index, hash));
            }
        }
        Ok(nodes)
    }

    /// Simulates (or stops simulating) a store failure.
    pub fn set_fault(&self, fault: Option<StoreFault>) -> Result<(), StoreError> {
        let connection = &self.connection;
        // Switching writes this connection's temp schema: not read-only yet.
        connection
            .pragma_update(None, "query_only", false)
            .at(&self.path)?;
        // The page limit below fails only a write that needs a new page; a
        // write that fits in a page already there would still succeed. This
        // trigger, on this connection only and never in the file, fails
        // every write, as a full disk does once the last free page is used.
        connection
            .execute_batch(if fault == Some(StoreFault::DiskFull) {
                "CREATE TEMP TRIGGER IF NOT EXISTS simulated_disk_full BEFORE INSERT ON records \
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full (simulated)'); END;"
            } else {
                "DROP TRIGGER IF EXISTS temp.simulated_disk_full;"
            })
            .at(&self.path)?;
        connection
            .pragma_update(None, "query_only", fault == Some(StoreFault::ReadOnly))
            .at(&self.path)?;
        let pages: i64 = if fault == Some(StoreFault::DiskFull) {
            connection
                .query_row("PRAGMA page_count", [], |row| row.get(0))
                .at(&self.path)?
        } else {
            i64::from(u32::MAX - 1)
        };
        connection
            .pragma_update(None, "max_page_count", pages)
            .at(&self.path)?;
        Ok(())
    }

    /// Writes a record-sized row and rolls it back: whether the store can
    /// take records again, leaving no trace.
    pub fn probe(&mut self) -> Result<(), StoreError> {
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&self.path)?;
        transaction
            .execute(
                "INSERT INTO records (idx, phase, request_id, at_us, caller, provider, method, \
                 purpose, subject, allowed, grpc_status, error_kind, concealed_until, record) \
                 VALUES (-1, 'probe', '', 0, '', '', '', '', NULL, 0, NULL, NULL, 0, \
                 zeroblob(4096))",
                [],
            )
            .at(&self.path)?;
        // Dropped, the transaction rolls back.
        Ok(())
    }

    /// Appends records in one transaction, with the tree nodes they
    /// complete and, if `checkpoint` says so, a signed checkpoint of the
    /// result. `frontier` is advanced only if everything commits.
    pub fn append(
        &mut self,
        frontier: &mut Frontier,
        records: &[&ExchangeRecord],
        checkpoint: Option<(&str, &SigningKey)>,
    ) -> Result<u64, StoreError> {
        let mut next = frontier.clone();
        let first = next.size();
        let mut added = Vec::new();
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&self.path)?;
        {
            let mut insert_record = transaction
                .prepare_cached(
                    "INSERT INTO records (idx, phase, request_id, at_us, caller, provider, method, \
                     purpose, subject, allowed, grpc_status, error_kind, concealed_until, \
                     more_subjects, record, leaf) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .at(&self.path)?;
            let mut insert_node = transaction
                .prepare_cached(
                    "INSERT INTO tree_nodes (pos, level, idx, hash) VALUES (?1, ?2, ?3, ?4)",
                )
                .at(&self.path)?;
            let mut buffer = Vec::with_capacity(512);
            added.reserve(records.len() * 2);
            for record in records {
                buffer.clear();
                record.encode(&mut buffer).map_err(|error| {
                    StoreError::invalid(&self.path, format!("cannot encode a record: {error}"))
                })?;
                let index = next.size();
                added.extend(lookup::entries(record, index));
                let leaf = merkle::leaf_hash(&buffer);
                let values = std::iter::once(Value::Integer(to_i64(index)))
                    .chain(columns(record))
                    .chain(std::iter::once(Value::Blob(std::mem::take(&mut buffer))))
                    .chain(std::iter::once(Value::Blob(leaf.to_vec())));
                insert_record
                    .execute(rusqlite::params_from_iter(values))
                    .at(&self.path)?;
                for (level, index, hash) in next.append(leaf) {
                    if level < STORED_LEVEL {
                        continue;
                    }
                    insert_node
                        .execute(params![
                            to_i64(node_position(level, index)),
                            level,
                            to_i64(index),
                            hash.as_slice()
                        ])
                        .at(&self.path)?;
                }
            }
        }
        if let Some((origin, key)) = checkpoint {
            let note = Checkpoint {
                origin: origin.to_owned(),
                size: next.size(),
                root: next.root(),
            }
            .sign(key);
            transaction
                .execute(
                    "INSERT OR REPLACE INTO checkpoints (tree_size, signed_at, note) VALUES (?1, ?2, ?3)",
                    params![to_i64(next.size()), crate::unix_time::now(), note],
                )
                .at(&self.path)?;
        }
        let chunk = match &self.sealing {
            Some(sealing) => {
                let chunk = sealing.next_chunk(records.len());
                write_lookups(&transaction, sealing.segment, chunk).at(&self.path)?;
                if sealing.ends_with_next_chunk(records.len()) {
                    let end = (sealing.segment + 1) * SEGMENT;
                    set_sealed_end(&transaction, end).at(&self.path)?;
                }
                chunk.len()
            }
            None => 0,
        };
        transaction.commit().at(&self.path)?;
        *frontier = next;
        self.after_commit(added, chunk, frontier.size());
        Ok(first)
    }

    /// Moves the lookups along once a commit is durable: the new records'
    /// into memory, the seal by the chunk it wrote, and the next complete
    /// segment into a seal.
    fn after_commit(&mut self, added: Vec<(i64, u64)>, chunk: usize, size: u64) {
        let Some(recent) = &self.recent else { return };
        recent.add(added);
        if let Some(sealing) = &mut self.sealing {
            sealing.written += chunk;
            if sealing.written == sealing.entries.len() {
                self.sealed_end = (sealing.segment + 1) * SEGMENT;
                self.sealing = None;
                // Kept one seal longer than needed: a reader whose snapshot
                // began before this seal committed still finds them here.
                recent.forget_before(self.sealed_end.saturating_sub(SEGMENT));
            }
        }
        let (from, to) = (self.sealed_end, self.sealed_end + SEGMENT);
        if self.sealing.is_none() && size >= to {
            self.sealing = Some(Sealing {
                segment: lookup::segment_of(from),
                entries: recent.between(from, to),
                written: 0,
            });
        }
    }

    /// Opens the database in `dir` to move archived records out, beside a
    /// gateway that may be writing: no seal, no schema change.
    pub fn open_for_archiving(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DATABASE_FILE);
        if !path.exists() {
            return Err(StoreError::invalid(&path, "no exchange log here"));
        }
        let connection = Connection::open(&path).at(&path)?;
        connection.busy_timeout(BUSY_TIMEOUT).at(&path)?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .at(&path)?;
        // The gateway's checkpointer copies the WAL; this run only adds to it.
        connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .at(&path)?;
        Ok(Self {
            path,
            connection,
            recent: None,
            sealing: None,
            sealed_end: 0,
            leaves: std::cell::OnceCell::new(),
            more_subjects: std::cell::OnceCell::new(),
        })
    }

    /// The first segment complete, sealed and not archived, with the
    /// latest `at_us` of its records: what an archive run may take next.
    pub fn next_to_archive(&self) -> Result<Option<(u64, i64)>, StoreError> {
        let first = self.archived_end()?;
        if first + SEGMENT > self.sealed_end()? {
            return Ok(None);
        }
        let latest: Option<i64> = self
            .connection
            .query_row(
                "SELECT MAX(at_us) FROM records WHERE idx >= ?1 AND idx < ?2",
                [to_i64(first), to_i64(first + SEGMENT)],
                |row| row.get(0),
            )
            .at(&self.path)?;
        Ok(latest.map(|latest| (lookup::segment_of(first), latest)))
    }

    /// Until when (`at_us`, the latest of archived records) records are
    /// archived; 0 when none is.
    pub fn archived_until_us(&self) -> Result<i64, StoreError> {
        Ok(i64::try_from(self.meta_number("archived_until_us")?).unwrap_or(i64::MAX))
    }

    /// Removes segment `segment`, now in an archive file whose latest
    /// record happened at `last_at_us`, from this store: first its claim
    /// (`archived_end`, from then on the records before it are read from
    /// archives), then its rows, in short transactions.
    pub fn remove_archived(&mut self, segment: u64, last_at_us: i64) -> Result<(), StoreError> {
        let (first, end) = (segment * SEGMENT, (segment + 1) * SEGMENT);
        let archived = self.archived_end()?;
        if archived != first {
            return Err(StoreError::invalid(
                &self.path,
                format!(
                    "records before {archived} are archived, and segment {segment} starts at \
                     {first}: segments are archived in order"
                ),
            ));
        }
        let until = self.archived_until_us()?.max(last_at_us.max(0));
        self.connection
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) \
                 VALUES ('archived_end', ?1), ('archived_until_us', ?2)",
                [end.to_string(), until.to_string()],
            )
            .at(&self.path)?;
        self.remove_archived_rows()
    }

    /// Removes what this store still holds of archived records (all of it
    /// after a run cut short): the records, their lookups, and the tree
    /// nodes inside the archived segments. Short transactions, so that a
    /// gateway writing beside never waits long. Every node above the
    /// segments stays: the tree is never rewritten, and proofs of archived
    /// records climb through it.
    pub fn remove_archived_rows(&mut self) -> Result<(), StoreError> {
        let end = self.archived_end()?;
        let segments = lookup::segment_of(end);
        if segments == 0 {
            return Ok(());
        }
        self.remove_in_chunks(
            "DELETE FROM records WHERE idx IN \
             (SELECT idx FROM records WHERE idx < ?1 ORDER BY idx LIMIT ?2)",
            to_i64(end),
        )?;
        self.remove_in_chunks(
            "DELETE FROM lookups WHERE (segment, key, idx) IN \
             (SELECT segment, key, idx FROM lookups WHERE segment < ?1 LIMIT ?2)",
            to_i64(segments),
        )?;
        // In completion order, the nodes inside the archived segments come
        // before the last one's root; the roots (level 16) stay.
        let level = SEGMENT.trailing_zeros();
        self.remove_in_chunks(
            &format!(
                "DELETE FROM tree_nodes WHERE pos IN \
                 (SELECT pos FROM tree_nodes WHERE pos < ?1 AND level < {level} LIMIT ?2)"
            ),
            to_i64(node_position(level, segments - 1)),
        )
    }

    /// Runs `delete` (with `bound` and a chunk size) until it removes
    /// nothing, a transaction per chunk, leaving the lock to the gateway's
    /// writer a moment between two.
    fn remove_in_chunks(&self, delete: &str, bound: i64) -> Result<(), StoreError> {
        /// Rows removed per transaction: a few milliseconds of lock.
        const CHUNK: i64 = 2048;
        loop {
            let removed = self
                .connection
                .execute(delete, [bound, CHUNK])
                .at(&self.path)?;
            if removed == 0 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Restarts the write-ahead log once it has grown past `bound` bytes:
    /// copies what the background checkpoints have not yet copied, then
    /// truncates the file. Only the writer can do this: the WAL restarts
    /// from its beginning only when a writer finds every frame copied, and
    /// a writer that commits every few milliseconds never does, so with
    /// background checkpoints alone the file grows by every commit (some
    /// 8 KB a record) until the gateway stops. Called between batches,
    /// once their calls have their answers.
    pub fn restart_wal_above(&mut self, bound: u64) {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        if std::fs::metadata(&wal).map_or(0, |file| file.len()) <= bound {
            return;
        }
        // Never wait: a reader in the middle of a long read (`audit
        // verify`, an operator's sqlite3) would hold every call for the
        // busy timeout. Without waiting, the checkpoint copies what it can
        // and the restart is tried again after the next batch; the WAL
        // cannot restart while a reader uses it anyway.
        let connection = &mut self.connection;
        let restarted = connection.busy_handler(None::<fn(i32) -> bool>);
        let restarted = restarted.and_then(|()| {
            connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
        });
        // The handler back, whatever failed: commits wait as before.
        if let Err(error) = connection.busy_handler(Some(wait_briefly)).and(restarted) {
            tracing::warn!(file = %self.path.display(), %error, "WAL restart failed");
        }
    }

    /// The frontier of the stored tree, after checking that records and
    /// nodes agree in number.
    pub fn frontier(&self) -> Result<Frontier, StoreError> {
        let size = self.size()?;
        let archived = self.archived_end()?;
        let count: i64 = self
            .connection
            .query_row(
                "SELECT COUNT(*) FROM records WHERE idx >= ?1",
                [to_i64(archived)],
                |row| row.get(0),
            )
            .at(&self.path)?;
        if u64::try_from(count).ok() != Some(size - archived) {
            return Err(StoreError::invalid(
                &self.path,
                format!(
                    "{count} records but the last index is {}: records are missing; \
                     run `govbridge audit verify`",
                    size.saturating_sub(1)
                ),
            ));
        }
        let frontier = Frontier::load(self, size)?;
        self.check_latest_checkpoint(size)?;
        Ok(frontier)
    }

    /// The latest signed checkpoint must cover records the log still holds,
    /// and be the tree they give: a writer that went on from a log cut
    /// short or edited would reuse indexes and sign another history.
    fn check_latest_checkpoint(&self, size: u64) -> Result<(), StoreError> {
        let Some(latest) = self.latest_checkpoint()? else {
            return Ok(());
        };
        if latest.size > size {
            return Err(StoreError::invalid(
                &self.path,
                format!(
                    "the log holds {size} records but its latest checkpoint covers {}: records \
                     were deleted; run `govbridge audit verify`",
                    latest.size
                ),
            ));
        }
        let text = latest
            .note
            .split_once("\n\n")
            .map_or(latest.note.as_str(), |(text, _)| text);
        let signed = super::note::Checkpoint::parse(&format!("{text}\n")).map_err(|error| {
            StoreError::invalid(
                &self.path,
                format!(
                    "the checkpoint of size {} is malformed: {error}",
                    latest.size
                ),
            )
        })?;
        if merkle::root(self, latest.size)? != signed.root {
            return Err(StoreError::invalid(
                &self.path,
                format!(
                    "the records before {} are not those its latest checkpoint signed: the log \
                     was edited; run `govbridge audit verify`",
                    latest.size
                ),
            ));
        }
        Ok(())
    }

    /// Calls `each` with every record from index `from` to `end`, in
    /// order: its index, its queryable columns as stored (named, as SQLite
    /// values, whatever their type), its bytes and its leaf hash as stored
    /// (`None` if the log was written without). For `audit verify`, which
    /// checks every column against the record: the columns are only a
    /// copy, and a copy can be edited. One statement: outside a
    /// transaction, one snapshot.
    pub fn for_each_row(
        &self,
        from: u64,
        end: u64,
        mut each: impl FnMut(
            i64,
            &[(&'static str, rusqlite::types::Value)],
            Vec<u8>,
            Option<Vec<u8>>,
        ) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let leaf = if self.has_leaves()? { "leaf" } else { "NULL" };
        let more = self.more_subjects_column()?;
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT idx, phase, request_id, at_us, caller, provider, method, purpose, \
                 subject, allowed, grpc_status, error_kind, concealed_until, {more}, record, \
                 {leaf} FROM records WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
            ))
            .at(&self.path)?;
        let mut rows = statement
            .query([to_i64(from), to_i64(end)])
            .at(&self.path)?;
        let mut columns = Vec::with_capacity(COLUMNS.len());
        while let Some(row) = rows.next().at(&self.path)? {
            columns.clear();
            for (offset, name) in COLUMNS.iter().enumerate() {
                columns.push((*name, row.get::<_, Value>(offset + 1).at(&self.path)?));
            }
            // A record edited into another type still gets hashed, and
            // then fails to match its leaf.
            let bytes = match row.get::<_, Value>(COLUMNS.len() + 1).at(&self.path)? {
                Value::Blob(bytes) => bytes,
                Value::Text(text) => text.into_bytes(),
                Value::Integer(_) | Value::Real(_) | Value::Null => Vec::new(),
            };
            // A leaf edited into another type is a leaf that does not match.
            let leaf = match row.get::<_, Value>(COLUMNS.len() + 2).at(&self.path)? {
                Value::Null => None,
                Value::Blob(leaf) => Some(leaf),
                Value::Text(text) => Some(text.into_bytes()),
                Value::Integer(_) | Value::Real(_) => Some(Vec::new()),
            };
            each(row.get(0).at(&self.path)?, &columns, bytes, leaf)?;
        }
        Ok(())
    }
}

/// Appends `entries`, sorted by key, to segment `segment`'s run.
fn write_lookups(
    transaction: &rusqlite::Transaction<'_>,
    segment: u64,
    entries: &[(i64, u64)],
) -> rusqlite::Result<()> {
    let mut insert = transaction
        .prepare_cached("INSERT INTO lookups (segment, key, idx) VALUES (?1, ?2, ?3)")?;
    for (key, index) in entries {
        insert.execute(params![to_i64(segment), key, to_i64(*index)])?;
    }
    Ok(())
}

/// Records before `end` have their lookups sealed.
fn set_sealed_end(transaction: &rusqlite::Transaction<'_>, end: u64) -> rusqlite::Result<()> {
    transaction.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('sealed_end', ?1)",
        [end.to_string()],
    )?;
    Ok(())
}

/// Where node `(level, index)` sits in the order nodes are completed:
/// leaf n comes right after the nodes leaf n - 1 completed, and a node of
/// level l + 1 right after its right child. (Go's `tlog.StoredHashIndex`.)
pub fn node_position(level: u32, index: u64) -> u64 {
    // The node's last leaf, then everything stored before that leaf and
    // its completed ancestors up to this level.
    let mut n = index;
    for _ in 0..level {
        n = 2 * n + 1;
    }
    let mut position = 0;
    while n > 0 {
        position += n;
        n >>= 1;
    }
    position + u64::from(level)
}

fn checkpoint_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredCheckpoint> {
    Ok(StoredCheckpoint {
        size: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
        signed_at: row.get(1)?,
        note: row.get(2)?,
    })
}

impl Store {
    /// Node `(level, index)` below [`STORED_LEVEL`], hashed from the
    /// leaves of the records it covers (each record's own, hashed again,
    /// where a log written before leaves were kept has none).
    fn hash_records(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        let (first, count) = (index << level, 1_u64 << level);
        let leaves = if self.has_leaves()? { "leaf" } else { "NULL" };
        let sql = format!(
            "SELECT idx, {leaves}, CASE WHEN {leaves} IS NULL THEN record END FROM records \
             WHERE idx >= ?1 AND idx < ?2 ORDER BY idx"
        );
        let mut statement = self.connection.prepare_cached(&sql).at(&self.path)?;
        let leaves = statement
            .query_map(params![to_i64(first), to_i64(first + count)], |row| {
                let index = u64::try_from(row.get::<_, i64>(0)?).unwrap_or(u64::MAX);
                let stored = row
                    .get::<_, Option<Vec<u8>>>(1)?
                    .and_then(|leaf| Hash::try_from(leaf.as_slice()).ok());
                let leaf = match stored {
                    Some(leaf) => leaf,
                    None => {
                        merkle::leaf_hash(&row.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default())
                    }
                };
                Ok((index, leaf))
            })
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .at(&self.path)?;
        merkle::subtree_of_leaves(first, count, leaves).map_err(|missing| {
            StoreError::invalid(
                &self.path,
                format!(
                    "tree node ({level}, {index}) cannot be hashed: record {missing} is missing"
                ),
            )
        })
    }
}

impl Nodes for Store {
    type Error = StoreError;

    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        if level < STORED_LEVEL {
            return self.hash_records(level, index);
        }
        let hash: Option<Vec<u8>> = self
            .connection
            .prepare_cached(
                "SELECT hash FROM tree_nodes WHERE pos = ?1 AND level = ?2 AND idx = ?3",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(
                        params![to_i64(node_position(level, index)), level, to_i64(index)],
                        |row| row.get(0),
                    )
                    .optional()
            })
            .at(&self.path)?;
        hash.and_then(|hash| Hash::try_from(hash).ok())
            .ok_or_else(|| {
                StoreError::invalid(
                    &self.path,
                    format!("tree node ({level}, {index}) is missing or malformed"),
                )
            })
    }
}

/// Keeps a witness's cosignature `line` in the note of the checkpoint at
/// `size` in the store in `dir`, in the place of the one it gave before
/// ([`crate::note::with_cosignature`]).
pub fn add_cosignature(dir: &Path, size: u64, line: &str) -> Result<(), StoreError> {
    let path = dir.join(DATABASE_FILE);
    let mut connection = Connection::open(&path).at(&path)?;
    connection.busy_timeout(Duration::from_secs(5)).at(&path)?;
    // Witnesses answer side by side: one note moves at a time.
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .at(&path)?;
    let note: Option<String> = transaction
        .query_row(
            "SELECT note FROM checkpoints WHERE tree_size = ?1",
            [to_i64(size)],
            |row| row.get(0),
        )
        .optional()
        .at(&path)?;
    if let Some(note) = note.filter(|note| !note.contains(line)) {
        transaction
            .execute(
                "UPDATE checkpoints SET note = ?2 WHERE tree_size = ?1",
                params![to_i64(size), crate::note::with_cosignature(&note, line)],
            )
            .at(&path)?;
    }
    transaction.commit().at(&path)
}

/// Copies the write-ahead log into the database in the background, on its
/// own connection: the writer's commits then only append to the WAL.
#[derive(Debug)]
pub struct WalCheckpointer {
    path: PathBuf,
    connection: Connection,
    /// How often the WAL is copied into the database.
    every: Duration,
}

/// The write-ahead log's size past which the writer restarts it
/// ([`Store::restart_wal_above`]): the journal stays within this and the
/// batch being committed.
pub const WAL_BOUND: u64 = 16 << 20;

/// How long the writer waits for a lock a checkpoint or an archive run
/// holds...
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// ...trying again this often.
const BUSY_STEP: Duration = Duration::from_micros(200);

/// The writer's busy handler: waits for a lock in short steps, up to
/// [`BUSY_TIMEOUT`]. SQLite's own handler sleeps longer at each try (up to
/// 100 ms), which holds calls long after a short lock is released: with
/// it, an archive run beside a gateway at 500 calls/s took p99 from 3 to
/// 73 ms.
fn wait_briefly(attempt: i32) -> bool {
    let attempts = BUSY_TIMEOUT.as_micros() / BUSY_STEP.as_micros();
    if u128::try_from(attempt).unwrap_or(u128::MAX) >= attempts {
        return false;
    }
    std::thread::sleep(BUSY_STEP);
    true
}

/// How often the WAL is copied into the database.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

impl WalCheckpointer {
    /// Opens a connection for checkpointing the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DATABASE_FILE);
        let connection = Connection::open(&path).at(&path)?;
        connection.busy_timeout(Duration::from_secs(5)).at(&path)?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .at(&path)?;
        Ok(Self {
            path,
            connection,
            every: WAL_CHECKPOINT_EVERY,
        })
    }

    /// Checkpoints every 50 ms until `stopped` disconnects, then
    /// once more, truncating the WAL.
    pub fn run(self, stopped: &std::sync::mpsc::Receiver<()>) {
        use std::sync::mpsc::RecvTimeoutError;
        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(self.every) {
            // PASSIVE never waits for the writer or readers; what it
            // cannot copy now it copies next time.
            self.checkpoint("PASSIVE");
        }
        self.checkpoint("TRUNCATE");
    }

    fn checkpoint(&self, mode: &str) {
        let result =
            self.connection
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
        if let Err(error) = result {
            tracing::warn!(file = %self.path.display(), %error, "WAL checkpoint failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A select over every record reads a window at a time, each in a
    /// snapshot of its own: a writer beside restarts its WAL between two.
    #[test]
    fn a_writer_beside_a_windowed_select_restarts_its_wal_between_windows() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Store::open(dir.path(), "test.example/log").unwrap();
        let mut frontier = writer.frontier().unwrap();
        let decision = |call: u64| ExchangeRecord {
            phase: Phase::Decision.into(),
            request_id: format!("req-{call}"),
            caller: "SN/COM/CBAO/kyc".to_owned(),
            ..ExchangeRecord::default()
        };
        let records: Vec<ExchangeRecord> =
            (0..super::super::READ_CHUNK + 10).map(decision).collect();
        for batch in records.chunks(8192) {
            let batch: Vec<&ExchangeRecord> = batch.iter().collect();
            writer.append(&mut frontier, &batch, None).unwrap();
        }
        let reader = Store::open_read_only(dir.path()).unwrap();
        let size = reader.size().unwrap();
        let wal = dir.path().join(format!("{DATABASE_FILE}-wal"));
        let late = decision(size);
        let mut sizes = Vec::new();
        let select = |condition: &'static str| {
            move |window: std::ops::Range<u64>, rows: usize| {
                let sql = format!(
                    "SELECT idx, record FROM records WHERE idx >= ?1 AND idx < ?2 AND {condition} \
                     ORDER BY idx LIMIT ?3"
                );
                let bound = |index: u64| Value::Integer(to_i64(index));
                (
                    sql,
                    vec![bound(window.start), bound(window.end), bound(rows as u64)],
                )
            }
        };
        let indexes =
            |rows: Vec<StoredRecord>| rows.iter().map(|row| row.index).collect::<Vec<_>>();
        // The last records only: both windows read, the writer between.
        let last = reader
            .select_windows_pausing(0..size, 5, select("idx >= 65540 AND idx < 65543"), || {
                writer.append(&mut frontier, &[&late], None).unwrap();
                writer.restart_wal_above(0);
                sizes.push(std::fs::metadata(&wal).unwrap().len());
            })
            .unwrap();
        assert_eq!(indexes(last.rows), [65_540, 65_541, 65_542]);
        assert_eq!(last.archived_meanwhile, None);
        assert_eq!(sizes, [0], "the WAL did not restart between the windows");
        // As many as wanted, from the first window alone; the record the
        // writer appended meanwhile is past the select's range.
        let first = reader
            .select_windows_pausing(0..size, 2, select("caller != ''"), || {
                panic!("read past its rows")
            })
            .unwrap();
        assert_eq!(indexes(first.rows), [0, 1]);
        let none = reader
            .select_windows_pausing(0..size, 2, select("idx >= 65546"), || {})
            .unwrap();
        assert!(none.rows.is_empty());

        // An archive run between two windows (its claim, then its
        // removals) is told; rows it removed are not in the answer.
        let archiving = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        let archived = reader
            .select_windows_pausing(10..size, 8, select("idx % 8192 = 0"), || {
                archiving
                    .execute_batch(
                        "INSERT INTO meta (key, value) VALUES ('archived_end', '65544');
                         DELETE FROM records WHERE idx < 65544;",
                    )
                    .unwrap();
            })
            .unwrap();
        assert_eq!(
            indexes(archived.rows),
            (1..8).map(|n| n * 8192).collect::<Vec<_>>()
        );
        assert_eq!(archived.archived_meanwhile, Some(65_544));
        // Past the run's end, nothing is missing.
        let after = reader
            .select_windows_pausing(65_544..size, 8, select("1"), || {})
            .unwrap();
        assert_eq!(after.archived_meanwhile, None);
    }

    /// A decision is timed when its call came and written once its first
    /// message was read: one written late, older than the window, does
    /// not end the read-back of the assertions before it; an outcome
    /// older than the window (and its lag) does.
    #[test]
    fn assertions_are_read_back_past_a_decision_written_late() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "test.example/log").unwrap();
        let mut frontier = store.frontier().unwrap();
        let since = 1_700_000_000_000_000_i64;
        let second = 1_000_000;
        let decision = |at_us: i64, caller: &str, assertion: &str| ExchangeRecord {
            phase: Phase::Decision.into(),
            received_us: at_us,
            caller: caller.to_owned(),
            assertion: assertion.to_owned(),
            ..ExchangeRecord::default()
        };
        let partner = "AZ/COM/KAPITAL/kyc";
        let records = [
            // Never read: the outcome after it ends the read-back.
            decision(since + 5 * second, partner, "hidden"),
            ExchangeRecord {
                phase: Phase::Outcome.into(),
                completed_us: since - OUTCOME_LAG_US - second,
                ..ExchangeRecord::default()
            },
            decision(since + 10 * second, partner, "first"),
            decision(since + 20 * second, "SN/COM/CBAO/kyc", "own"),
            // A slow call's, written 50 s after it came.
            decision(since - 50 * second, partner, "late"),
            decision(since + 30 * second, partner, "second"),
        ];
        let batch: Vec<&ExchangeRecord> = records.iter().collect();
        store.append(&mut frontier, &batch, None).unwrap();
        let read = |late| store.assertions_since(since, "SN", late).unwrap();
        assert_eq!(read(Duration::from_secs(60)), ["second", "first"]);
        // Had no call a deadline of more than 10 s, the late one could not
        // have been: it ends the read-back.
        assert_eq!(read(Duration::from_secs(10)), ["second"]);
    }

    /// Positions follow the order `Frontier::append` completes nodes, with
    /// no gaps and no repeats.
    #[test]
    fn node_positions_are_the_completion_order() {
        let mut frontier = Frontier::default();
        let mut next = 0;
        for leaf in 0..1000_u64 {
            for (level, index, _) in frontier.append(merkle::leaf_hash(&leaf.to_be_bytes())) {
                assert_eq!(node_position(level, index), next, "({level}, {index})");
                next += 1;
            }
        }
    }

    /// A writer that never pauses must not starve the checkpoints: the WAL
    /// stays bounded however long the appends go on (without the restart,
    /// it passes 40 MB here).
    #[test]
    fn the_wal_stays_bounded_while_the_writer_never_pauses() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "test.example/log").unwrap();
        let mut frontier = store.frontier().unwrap();
        let mut checkpointer = WalCheckpointer::open(dir.path()).unwrap();
        checkpointer.every = Duration::from_millis(10);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let checkpoints = std::thread::spawn(move || checkpointer.run(&stopped));
        let wal = dir.path().join(format!("{DATABASE_FILE}-wal"));
        let mut largest = 0;
        let mut appended = 0;
        for batch in 0..1500 {
            let records: Vec<ExchangeRecord> = (0..4)
                .map(|i| ExchangeRecord {
                    request_id: uuid_like(batch * 4 + i),
                    caller: "SN/COM/CBAO/kyc".to_owned(),
                    method: "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity".to_owned(),
                    ..ExchangeRecord::default()
                })
                .collect();
            let records: Vec<&ExchangeRecord> = records.iter().collect();
            store.append(&mut frontier, &records, None).unwrap();
            store.restart_wal_above(1 << 20);
            appended += records.len();
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |file| file.len()));
        }
        drop(stop);
        checkpoints.join().unwrap();
        assert_eq!(store.size().unwrap(), appended as u64);
        assert!(
            largest <= 4 << 20,
            "the WAL reached {largest} bytes over {appended} records"
        );
    }

    /// Record `n`: request `req-{n / 2}`, and every third names subject
    /// `s{n % 7}`; of those, every fifth names `m{n % 11}` and `z` too.
    fn numbered(n: u64) -> ExchangeRecord {
        let more = n.is_multiple_of(15);
        ExchangeRecord {
            more_subjects: if more {
                vec![format!("m{}", n % 11), "z".to_owned()]
            } else {
                Vec::new()
            },
            request_id: format!("req-{}", n / 2),
            caller: "SN/COM/CBAO/kyc".to_owned(),
            subject: if n.is_multiple_of(3) {
                format!("s{}", n % 7)
            } else {
                String::new()
            },
            phase: if n % 2 == 1 {
                Phase::Outcome.into()
            } else {
                Phase::Decision.into()
            },
            ..ExchangeRecord::default()
        }
    }

    fn append_numbered(store: &mut Store, frontier: &mut Frontier, records: std::ops::Range<u64>) {
        let records: Vec<ExchangeRecord> = records.map(numbered).collect();
        for batch in records.chunks(1024) {
            let batch: Vec<&ExchangeRecord> = batch.iter().collect();
            store.append(frontier, &batch, None).unwrap();
        }
    }

    /// However large the batches, the seal of a segment is done before
    /// the records are a segment further: `audit verify` holds a log to
    /// that, and would otherwise call a busy gateway's log edited.
    #[test]
    fn the_seal_keeps_up_with_the_largest_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "test.example/log").unwrap();
        let mut frontier = store.frontier().unwrap();
        let records: Vec<ExchangeRecord> = (0..3 * SEGMENT + 8192).map(numbered).collect();
        for batch in records.chunks(super::super::MAX_BATCH) {
            let batch: Vec<&ExchangeRecord> = batch.iter().collect();
            store.append(&mut frontier, &batch, None).unwrap();
            let complete = frontier.size() / SEGMENT * SEGMENT;
            let sealed_end = store.sealed_end().unwrap();
            assert!(
                sealed_end + SEGMENT >= complete,
                "sealed up to {sealed_end} of {} records",
                frontier.size()
            );
        }
    }

    fn indexes(records: Vec<StoredRecord>) -> Vec<u64> {
        records.iter().map(|record| record.index).collect()
    }

    /// Whoever reads (the writer, a reader of the gateway sharing its
    /// recent lookups, a reader of another process scanning them), records
    /// are found by request id and by subject, in sealed segments, in the
    /// one being sealed and in the open one; and after a restart, which
    /// finishes the seal cut short.
    #[test]
    fn records_are_found_in_every_segment_by_every_reader() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "test.example/log").unwrap();
        let mut frontier = store.frontier().unwrap();
        let size = 2 * SEGMENT + 100;
        append_numbered(&mut store, &mut frontier, 0..size);
        // Segment 0 sealed, segment 1 being sealed.
        assert_eq!(store.sealed_segments().unwrap(), 1);
        assert!(store.sealing.is_some());

        let check = |reader: &Store| {
            for n in [
                0,
                1,
                SEGMENT - 1,
                SEGMENT,
                2 * SEGMENT - 1,
                2 * SEGMENT,
                size - 1,
            ] {
                let call = n / 2;
                let found = indexes(reader.records_of_request(&format!("req-{call}")).unwrap());
                assert_eq!(found, [2 * call, 2 * call + 1], "request of record {n}");
                let last = reader
                    .last_record_of_request_for(&format!("req-{call}"), "SN/COM/CBAO/kyc")
                    .unwrap();
                assert_eq!(last.map(|record| record.index), Some(2 * call + 1));
            }
            assert!(reader.records_of_request("req-none").unwrap().is_empty());
            // Subject s3 (odd n only, n % 3 == 0, n % 7 == 3): outcomes.
            let accesses = indexes(
                reader
                    .accesses_to("s3", 0, u64::MAX, i64::MAX, usize::MAX)
                    .unwrap(),
            );
            let expected: Vec<u64> = (0..size)
                .rev()
                .filter(|n| n % 2 == 1 && n % 3 == 0 && n % 7 == 3)
                .collect();
            assert_eq!(accesses, expected);
            assert_eq!(
                indexes(reader.accesses_to("s3", 0, u64::MAX, i64::MAX, 2).unwrap()),
                expected[..2]
            );
            // Page after page, from the oldest of each: all of them, once.
            let mut paged: Vec<u64> = Vec::new();
            let mut before = u64::MAX;
            for _ in 0..expected.len() + 1 {
                let page = indexes(reader.accesses_to("s3", 0, before, i64::MAX, 3).unwrap());
                paged.extend(&page);
                match page.last() {
                    Some(oldest) if page.len() == 3 => before = *oldest,
                    _ => break,
                }
            }
            assert_eq!(paged, expected);
            // Found by a subject named besides the first, too.
            let accesses = indexes(
                reader
                    .accesses_to("m4", 0, u64::MAX, i64::MAX, usize::MAX)
                    .unwrap(),
            );
            let expected: Vec<u64> = (0..size)
                .rev()
                .filter(|n| n % 2 == 1 && n % 15 == 0 && n % 11 == 4)
                .collect();
            assert!(!expected.is_empty());
            assert_eq!(accesses, expected);
        };
        check(&store);
        let scanning = Store::open_read_only(dir.path()).unwrap();
        check(&scanning);
        let sharing = Store::open_read_only(dir.path())
            .unwrap()
            .with_recent(store.recent().unwrap());
        check(&sharing);

        drop((store, scanning, sharing));
        let store = Store::open(dir.path(), "test.example/log").unwrap();
        assert_eq!(store.sealed_segments().unwrap(), 2);
        check(&store);
        check(&Store::open_read_only(dir.path()).unwrap());
        // The seal cut short was written again, not twice.
        let sealed: usize = (0..2).map(|s| store.lookup_run(s).unwrap().len()).sum();
        let expected = store.scan_lookups(0, 2 * SEGMENT).unwrap().len();
        assert_eq!(sealed, expected);
    }

    /// A log of schema 1 (B-tree indexes on request_id and subject) is
    /// upgraded when the gateway opens it: indexes dropped, lookups built.
    #[test]
    fn a_log_of_schema_1_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "test.example/log").unwrap();
        let mut frontier = store.frontier().unwrap();
        append_numbered(&mut store, &mut frontier, 0..SEGMENT + 10);
        drop(store);
        let connection = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        connection
            .execute_batch(
                "DELETE FROM lookups; DELETE FROM meta WHERE key = 'sealed_end'; \
                 UPDATE meta SET value = '1' WHERE key = 'schema_version'; \
                 CREATE INDEX records_by_request ON records (request_id);",
            )
            .unwrap();
        drop(connection);

        let store = Store::open(dir.path(), "test.example/log").unwrap();
        assert_eq!(store.sealed_segments().unwrap(), 1);
        let text = |sql: &str| -> String {
            store
                .connection
                .query_row(sql, [], |row| row.get(0))
                .unwrap()
        };
        let indexes_left = text(
            "SELECT COUNT(*) || '' FROM sqlite_schema WHERE type = 'index' \
             AND name LIKE 'records_by%'",
        );
        assert_eq!(indexes_left, "0");
        let version = text("SELECT value FROM meta WHERE key = 'schema_version'");
        assert_eq!(version, SCHEMA_VERSION);
        let found = indexes(
            store
                .records_of_request(&format!("req-{}", SEGMENT / 2))
                .unwrap(),
        );
        assert_eq!(found, [SEGMENT, SEGMENT + 1]);
    }

    /// A request id as random as a UUID's: its index's pages are touched
    /// all over, as in production.
    fn uuid_like(n: usize) -> String {
        format!(
            "{:032x}",
            (n as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        )
    }

    /// A reader in the middle of a long read keeps the WAL from restarting,
    /// but must not make the writer wait for it: appends past the bound go
    /// on at their pace, and the WAL restarts once the reader is done.
    #[test]
    fn a_long_reader_does_not_hold_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "test.example/log").unwrap();
        let mut frontier = store.frontier().unwrap();
        let record = ExchangeRecord {
            request_id: "0".repeat(32),
            ..ExchangeRecord::default()
        };
        let reader = Store::open_read_only(dir.path()).unwrap();
        store.append(&mut frontier, &[&record], None).unwrap();
        reader.connection.execute_batch("BEGIN").unwrap();
        assert_eq!(reader.size().unwrap(), 1);
        let started = std::time::Instant::now();
        for _ in 0..20 {
            store.append(&mut frontier, &[&record], None).unwrap();
            // Past a bound of 0, every batch tries a restart.
            store.restart_wal_above(0);
        }
        // Waiting for the reader would have cost the busy timeout (5 s)
        // for each of the 20 batches.
        assert!(
            started.elapsed() < BUSY_TIMEOUT,
            "the writer waited for the reader: {:?}",
            started.elapsed()
        );
        let wal = dir.path().join(format!("{DATABASE_FILE}-wal"));
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        reader.connection.execute_batch("COMMIT").unwrap();
        store.restart_wal_above(0);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        assert_eq!(store.size().unwrap(), 21);
        // And commits wait for locks as before: one held a moment by
        // another writer (an archive run) delays the append, never fails it.
        let other = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.execute_batch("COMMIT").unwrap();
        });
        store.append(&mut frontier, &[&record], None).unwrap();
        holder.join().unwrap();
        assert_eq!(store.size().unwrap(), 22);
    }
}
