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
//!   record BLOB NOT NULL
//! );
//! -- Every complete subtree of the Merkle tree: (0, i) is leaf i's hash.
//! -- `pos` numbers nodes in the order they are completed (a leaf, then the
//! -- subtrees it completes), so appends only ever touch the table's end.
//! CREATE TABLE tree_nodes (pos INTEGER PRIMARY KEY, level INTEGER NOT NULL,
//!                          idx INTEGER NOT NULL, hash BLOB NOT NULL);
//! -- Signed checkpoints (C2SP signed notes), one per tree size.
//! CREATE TABLE checkpoints (tree_size INTEGER PRIMARY KEY,
//!                           signed_at INTEGER NOT NULL, note TEXT NOT NULL);
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
//! ```
//!
//! Operators read it with `sqlite3 -readonly DIR/exchange-log.sqlite`.
//! Only the gateway's writer thread writes, in one transaction per batch of
//! records; readers (the CLI, the gateway's gRPC services) never block it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::merkle::{self, Frontier, Hash, Nodes};
use super::note::{Checkpoint, SigningKey};
use crate::proto::audit::v1::{ExchangeRecord, Phase};

/// The database file in the data directory.
pub const DATABASE_FILE: &str = "exchange-log.sqlite";
/// The log's Ed25519 signing key (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "log-key.pem";
/// The log's public key, as a signed-note verifier key.
pub const VERIFIER_FILE: &str = "log-key.pub";

const SCHEMA_VERSION: &str = "1";

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
  record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_request ON records (request_id);
CREATE INDEX IF NOT EXISTS records_by_subject ON records (subject, at_us) WHERE subject IS NOT NULL;
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
trait AtPath<T> {
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
pub const COLUMNS: [&str; 12] = [
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
];

/// The values of [`COLUMNS`] for `record`: what `append` writes and what
/// `audit verify` expects.
pub fn columns(record: &ExchangeRecord) -> [Value; 12] {
    let outcome = record.phase() == Phase::Outcome;
    // A decision carries a status only when it is also the call's end.
    let finished = outcome || !record.error_kind.is_empty();
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
    ]
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
}

impl Store {
    /// Opens (creating it if needed) the database in `dir` for writing.
    pub fn open(dir: &Path, origin: &str) -> Result<Self, StoreError> {
        let path = dir.join(DATABASE_FILE);
        let connection = Connection::open(&path).at(&path)?;
        let store = Self { path, connection };
        store.configure_writer()?;
        store.connection.execute_batch(SCHEMA).at(&store.path)?;
        store.check_meta(origin)?;
        Ok(store)
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
        Ok(Self { path, connection })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn configure_writer(&self) -> Result<(), StoreError> {
        let connection = &self.connection;
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
        connection.busy_timeout(BUSY_TIMEOUT).at(&self.path)?;
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
        let next: Option<i64> = self
            .connection
            .query_row("SELECT MAX(idx) + 1 FROM records", [], |row| row.get(0))
            .at(&self.path)?;
        Ok(next.map_or(0, |next| u64::try_from(next).unwrap_or(0)))
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
        self.select(
            "SELECT idx, record FROM records WHERE request_id = ?1 ORDER BY idx LIMIT ?2",
            rusqlite::params![request_id, to_i64(MAX_RECORDS_OF_REQUEST as u64)],
        )
    }

    /// The last record of call `request_id` that `member` made or served:
    /// what another member's reuse of the same request id cannot hide.
    pub fn last_record_of_request_for(
        &self,
        request_id: &str,
        member: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let mut found = self.select(
            "SELECT idx, record FROM records WHERE request_id = ?1 \
             AND (caller = ?2 OR provider = ?2) ORDER BY idx DESC LIMIT 1",
            [request_id, member],
        )?;
        Ok(found.pop())
    }

    /// Records from index `from`, at most `limit`, in order.
    pub fn records_from(&self, from: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        self.select(
            "SELECT idx, record FROM records WHERE idx >= ?1 ORDER BY idx LIMIT ?2",
            [to_i64(from), to_i64(limit as u64)],
        )
    }

    /// Outcome records naming `subject`, completed at or after `since_us`,
    /// newest first.
    pub fn accesses_to(
        &self,
        subject: &str,
        since_us: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.select(
            "SELECT idx, record FROM records WHERE subject = ?1 AND at_us >= ?2 \
             ORDER BY at_us DESC, idx DESC LIMIT ?3",
            params![subject, since_us, to_i64(limit as u64)],
        )
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

    /// Calls `each` with every record in order, without holding them all.
    pub fn for_each_record(
        &self,
        mut each: impl FnMut(i64, Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT idx, record FROM records ORDER BY idx")
            .at(&self.path)?;
        let mut rows = statement.query([]).at(&self.path)?;
        while let Some(row) = rows.next().at(&self.path)? {
            each(row.get(0).at(&self.path)?, row.get(1).at(&self.path)?)?;
        }
        Ok(())
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
            .prepare("SELECT idx, hash FROM tree_nodes WHERE level = ?1 ORDER BY idx")
            .at(&self.path)?;
        let rows = statement
            .query_map([level], |row| Ok((row.get(0)?, row.get(1)?)))
            .at(&self.path)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().at(&self.path)
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
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&self.path)?;
        {
            let mut insert_record = transaction
                .prepare_cached(
                    "INSERT INTO records (idx, phase, request_id, at_us, caller, provider, method, \
                     purpose, subject, allowed, grpc_status, error_kind, concealed_until, record) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .at(&self.path)?;
            let mut insert_node = transaction
                .prepare_cached(
                    "INSERT INTO tree_nodes (pos, level, idx, hash) VALUES (?1, ?2, ?3, ?4)",
                )
                .at(&self.path)?;
            let mut buffer = Vec::with_capacity(512);
            for record in records {
                buffer.clear();
                record.encode(&mut buffer).map_err(|error| {
                    StoreError::invalid(&self.path, format!("cannot encode a record: {error}"))
                })?;
                let index = next.size();
                let leaf = merkle::leaf_hash(&buffer);
                let values = std::iter::once(Value::Integer(to_i64(index)))
                    .chain(columns(record))
                    .chain(std::iter::once(Value::Blob(std::mem::take(&mut buffer))));
                insert_record
                    .execute(rusqlite::params_from_iter(values))
                    .at(&self.path)?;
                for (level, index, hash) in next.append(leaf) {
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
        transaction.commit().at(&self.path)?;
        *frontier = next;
        Ok(first)
    }

    /// Restarts the write-ahead log once it has grown past `bound` bytes:
    /// copies what the background checkpoints have not yet copied, then
    /// truncates the file. Only the writer can do this: the WAL restarts
    /// from its beginning only when a writer finds every frame copied, and
    /// a writer that commits every few milliseconds never does, so with
    /// background checkpoints alone the file grows by every commit (some
    /// 8 KB a record) until the gateway stops. Called between batches,
    /// once their calls have their answers.
    pub fn restart_wal_above(&self, bound: u64) {
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
        let connection = &self.connection;
        let restarted = connection
            .busy_timeout(Duration::ZERO)
            .and_then(|()| {
                connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                    row.get::<_, i64>(0)
                })
            })
            .and_then(|busy| {
                connection.busy_timeout(BUSY_TIMEOUT)?;
                Ok(busy)
            });
        if let Err(error) = restarted {
            // The timeout back, whatever failed: commits wait as before.
            let _ = connection.busy_timeout(BUSY_TIMEOUT);
            tracing::warn!(file = %self.path.display(), %error, "WAL restart failed");
        }
    }

    /// The frontier of the stored tree, after checking that records and
    /// nodes agree in number.
    pub fn frontier(&self) -> Result<Frontier, StoreError> {
        let size = self.size()?;
        let count: i64 = self
            .connection
            .query_row("SELECT COUNT(*) FROM records", [], |row| row.get(0))
            .at(&self.path)?;
        if u64::try_from(count).ok() != Some(size) {
            return Err(StoreError::invalid(
                &self.path,
                format!(
                    "{count} records but the last index is {}: records are missing; \
                     run `govbridge audit verify`",
                    size.saturating_sub(1)
                ),
            ));
        }
        Frontier::load(self, size)
    }

    /// Calls `each` with every record in order: its index, its queryable
    /// columns as stored (named, as SQLite values, whatever their type) and
    /// its bytes. For `audit verify`, which checks every column against the
    /// record: the columns are only a copy, and a copy can be edited.
    pub fn for_each_row(
        &self,
        mut each: impl FnMut(
            i64,
            &[(&'static str, rusqlite::types::Value)],
            Vec<u8>,
        ) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT idx, phase, request_id, at_us, caller, provider, method, purpose, \
                 subject, allowed, grpc_status, error_kind, concealed_until, record \
                 FROM records ORDER BY idx",
            )
            .at(&self.path)?;
        let mut rows = statement.query([]).at(&self.path)?;
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
            each(row.get(0).at(&self.path)?, &columns, bytes)?;
        }
        Ok(())
    }
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

impl Nodes for Store {
    type Error = StoreError;

    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
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

/// How long the writer waits for a lock a checkpoint holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
        // And commits wait for locks as before.
        assert_eq!(
            store
                .connection
                .query_row("PRAGMA busy_timeout", [], |row| row.get::<_, i64>(0))
                .unwrap(),
            5_000
        );
    }
}
