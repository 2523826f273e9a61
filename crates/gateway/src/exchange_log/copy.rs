//! A copy of a log's database taken while its gateway writes, for
//! `govbridge backup`.
//!
//! `VACUUM INTO` reads the whole database in one snapshot, and SQLite
//! cannot restart a WAL that a reader uses: for the minutes a large log
//! takes to copy, the gateway's journal would grow by everything it
//! writes. Only an archive run removes what was written, so under the
//! archive lock the copy is made a table and a chunk at a time, each
//! chunk read in a snapshot of its own, bounded by what the log held when
//! the copy began: its records, the tree nodes over them, the lookups of
//! the segments sealed then, its checkpoints and its meta, read together
//! first. What is appended meanwhile is the next copy's; a seal under way
//! is left out, and done again by the gateway that opens the copy.
//! Without the lock (an archive run going on, a log no gateway of this
//! version opened), one snapshot: `VACUUM INTO`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::archive;
use super::lookup;
use super::store::{AtPath, DATABASE_FILE, StoreError};

/// Rows read in one snapshot.
const CHUNK: i64 = 1 << 16;

/// The pause between two chunks, in which a gateway's writer may restart
/// its WAL.
const BETWEEN_CHUNKS: Duration = Duration::from_millis(10);

/// The tables copied a chunk at a time; every other one is copied whole
/// with the meta.
const CHUNKED: [&str; 3] = ["records", "tree_nodes", "lookups"];

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// A chunk at a time, beside the gateway; the copy holds the log's
    /// first `records` records.
    InChunks { records: u64 },
    /// In one snapshot (`VACUUM INTO`).
    Whole,
}

/// Copies the database of the log in `dir` into `to`, a file that must
/// not exist yet.
pub fn copy_log(dir: &Path, to: &Path) -> Result<Copied, StoreError> {
    let source = dir.join(DATABASE_FILE);
    // Held until the copy is made.
    let Ok(_archive_lock) = archive::lock_if_there(dir) else {
        let connection = open(&source)?;
        connection
            .execute("VACUUM INTO ?1", [to.display().to_string()])
            .at(&source)?;
        return Ok(Copied::Whole);
    };
    let connection = open(&source)?;
    // The schema as this log has it (its version's columns and indexes):
    // tables first.
    let schema: Vec<String> = {
        let mut statement = connection
            .prepare(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL \
                 AND name NOT LIKE 'sqlite_%' ORDER BY type <> 'table', rowid",
            )
            .at(&source)?;
        let rows = statement.query_map([], |row| row.get(0)).at(&source)?;
        rows.collect::<rusqlite::Result<_>>().at(&source)?
    };
    {
        let copy = Connection::open(to).at(to)?;
        copy.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF")
            .at(to)?;
        for sql in &schema {
            copy.execute_batch(sql).at(to)?;
        }
    }
    connection
        .execute("ATTACH DATABASE ?1 AS copy", [to.display().to_string()])
        .at(&source)?;
    let bounds = {
        let snapshot = connection.unchecked_transaction().at(&source)?;
        let bounds = Bounds::read(&connection, &source)?;
        let mut statement = connection
            .prepare("SELECT name FROM main.sqlite_master WHERE type = 'table'")
            .at(&source)?;
        let tables: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .at(&source)?
            .collect::<rusqlite::Result<_>>()
            .at(&source)?;
        drop(statement);
        for table in tables
            .iter()
            .filter(|table| !table.starts_with("sqlite_") && !CHUNKED.contains(&table.as_str()))
        {
            connection
                .execute(
                    &format!("INSERT INTO copy.\"{table}\" SELECT * FROM main.\"{table}\""),
                    [],
                )
                .at(&source)?;
        }
        snapshot.commit().at(&source)?;
        bounds
    };
    // `sql` for each chunk `?1..?2` of `from..end`, `?3` bound to
    // `records`.
    let chunks = |sql: &str, from: i64, end: i64| -> Result<(), StoreError> {
        let mut statement = connection.prepare(sql).at(&source)?;
        let mut start = from;
        while start < end {
            let stop = end.min(start.saturating_add(CHUNK));
            statement
                .execute([start, stop, bounds.records])
                .at(&source)?;
            start = stop;
            if start < end {
                std::thread::sleep(BETWEEN_CHUNKS);
            }
        }
        Ok(())
    };
    chunks(
        "INSERT INTO copy.records SELECT * FROM main.records \
         WHERE idx >= ?1 AND idx < ?2 AND idx < ?3",
        bounds.first_record,
        bounds.records,
    )?;
    // A node is written with the last record under it: those over records
    // appended since are left out.
    chunks(
        "INSERT INTO copy.tree_nodes SELECT * FROM main.tree_nodes \
         WHERE pos >= ?1 AND pos < ?2 AND (idx + 1) * (1 << level) <= ?3",
        bounds.first_node,
        bounds.nodes_end,
    )?;
    // A segment's run at a time (some 100,000 rows).
    let mut statement = connection
        .prepare("INSERT INTO copy.lookups SELECT * FROM main.lookups WHERE segment = ?1")
        .at(&source)?;
    for segment in 0..bounds.sealed_segments {
        statement.execute([segment]).at(&source)?;
        std::thread::sleep(BETWEEN_CHUNKS);
    }
    drop(statement);
    connection.execute("DETACH DATABASE copy", []).at(&source)?;
    std::fs::File::open(to)
        .and_then(|file| file.sync_all())
        .map_err(|error| StoreError::Invalid {
            path: to.to_owned(),
            message: format!("cannot sync the copy: {error}"),
        })?;
    Ok(Copied::InChunks {
        records: u64::try_from(bounds.records).unwrap_or(0),
    })
}

/// The source, opened to be read (and attached to: SQLite attaches with
/// the main database's flags).
fn open(source: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .at(source)?;
    connection
        .busy_timeout(Duration::from_secs(10))
        .at(source)?;
    Ok(connection)
}

/// What the log held when the copy began.
struct Bounds {
    /// The lowest index of a record row (below 0 only if edited: copied
    /// as it is, for `audit verify` to name).
    first_record: i64,
    /// Records before this index are copied.
    records: i64,
    /// The tree nodes' positions, from and before.
    first_node: i64,
    nodes_end: i64,
    /// Segments whose lookups were sealed.
    sealed_segments: i64,
}

impl Bounds {
    fn read(connection: &Connection, source: &Path) -> Result<Self, StoreError> {
        let (first_record, records): (Option<i64>, Option<i64>) = connection
            .query_row(
                "SELECT MIN(idx), MAX(idx) + 1 FROM main.records",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .at(source)?;
        let (first_node, nodes_end): (Option<i64>, Option<i64>) = connection
            .query_row(
                "SELECT MIN(pos), MAX(pos) + 1 FROM main.tree_nodes",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .at(source)?;
        let sealed_end: Option<String> = connection
            .query_row(
                "SELECT value FROM main.meta WHERE key = 'sealed_end'",
                [],
                |row| row.get(0),
            )
            .optional()
            .at(source)?;
        let sealed_end = sealed_end
            .and_then(|end| end.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Self {
            first_record: first_record.unwrap_or(0),
            records: records.unwrap_or(0),
            first_node: first_node.unwrap_or(0),
            nodes_end: nodes_end.unwrap_or(0),
            sealed_segments: i64::try_from(lookup::segment_of(sealed_end)).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange_log::lookup::SEGMENT;
    use crate::exchange_log::note::SigningKey;
    use crate::exchange_log::store::Store;
    use crate::exchange_log::{ExchangeRecord, Phase, verify};

    const ORIGIN: &str = "govbridge.test/copy";

    fn append(store: &mut Store, key: &SigningKey, calls: std::ops::Range<u64>) {
        let mut frontier = store.frontier().unwrap();
        let mut records = Vec::new();
        for call in calls {
            let decision = frontier.size() + records.len() as u64;
            for phase in [Phase::Decision, Phase::Outcome] {
                records.push(ExchangeRecord {
                    request_id: format!("req-{call}"),
                    subject: format!("{:013}", call % 1000),
                    phase: phase.into(),
                    decision_index: if phase == Phase::Outcome { decision } else { 0 },
                    ..ExchangeRecord::default()
                });
            }
        }
        for chunk in records.chunks(4096) {
            let chunk: Vec<&ExchangeRecord> = chunk.iter().collect();
            store
                .append(&mut frontier, &chunk, Some((ORIGIN, key)))
                .unwrap();
        }
    }

    /// A copy made a chunk at a time while a writer appends verifies, and
    /// holds every record the log had when it began; one made without the
    /// archive lock is made whole.
    #[test]
    fn a_copy_beside_a_writer_verifies_and_holds_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(ORIGIN).unwrap();
        let mut store = Store::open(dir.path(), ORIGIN).unwrap();
        append(&mut store, &key, 0..SEGMENT / 2 + 1000);
        drop(store);
        // Reopened, the writer seals the first segment.
        let mut store = Store::open(dir.path(), ORIGIN).unwrap();
        let before = store.size().unwrap();
        let copies = tempfile::tempdir().unwrap();
        let whole = copies.path().join("whole.sqlite");
        assert_eq!(copy_log(dir.path(), &whole).unwrap(), Copied::Whole);

        // As a gateway makes it when it opens the log.
        archive::create_lock_file(&dir.path().join(archive::LOCK_FILE), 0o640).unwrap();
        let to = copies.path().join("copy.sqlite");
        let copied = std::thread::scope(|scope| {
            let copying = scope.spawn(|| copy_log(dir.path(), &to).unwrap());
            let mut next = SEGMENT / 2 + 1000;
            while !copying.is_finished() {
                append(&mut store, &key, next..next + 64);
                next += 64;
            }
            copying.join().unwrap()
        });
        let Copied::InChunks { records } = copied else {
            panic!("{copied:?}");
        };
        assert!(records >= before, "{records} of {before}");

        for file in [&whole, &to] {
            let log = tempfile::tempdir().unwrap();
            std::fs::copy(file, log.path().join(DATABASE_FILE)).unwrap();
            let report = verify::verify_log(log.path(), &key.verifier()).unwrap();
            assert_eq!(report.problem, None, "{}", file.display());
            assert!(report.records >= before, "{}", file.display());
            // The first segment's lookups came along: its citizens are
            // found in the copy.
            let copy = Store::open_read_only(log.path()).unwrap();
            assert_eq!(copy.sealed_segments().unwrap(), 1);
            assert!(
                !copy
                    .find(lookup::Kind::Subject, "0000000000005")
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
