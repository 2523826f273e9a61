//! A copy of a log's database taken while its gateway writes, for
//! `govbridge backup`.
//!
//! `VACUUM INTO` reads the whole database in one snapshot, and SQLite
//! cannot restart a WAL that a reader uses: for the minutes a large log
//! takes to copy, the gateway's journal would grow by everything it
//! writes. Only an archive run removes what was written, so under the
//! archive lock the copy is made a table and 65,536 rows at a time (paged
//! by key), each page read in a snapshot of its own, bounded by what the
//! log held when the copy began, read first with its meta: its records,
//! the tree nodes and checkpoints over them (each committed with the
//! last record it covers), the lookups of the segments sealed then. What
//! is appended meanwhile is the next copy's; a seal under way is left
//! out, and done again by the gateway that opens the copy.
//! Without the lock (an archive run going on, a log no gateway of this
//! version opened), one snapshot: `VACUUM INTO`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::archive;
use super::lookup;
use super::store::{AtPath, DATABASE_FILE, StoreError};

/// Rows read in one snapshot.
const CHUNK: i64 = super::READ_CHUNK as i64;

/// The tables copied a chunk at a time; every other one is copied whole
/// with the meta.
const CHUNKED: [&str; 4] = ["records", "tree_nodes", "checkpoints", "lookups"];

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// A chunk at a time, beside the gateway; the copy holds the log's
    /// first `records` records.
    InChunks { records: u64 },
    /// In one snapshot (`VACUUM INTO`).
    Whole,
}

/// `path` as SQL names a file: its bytes as they are, bound as a blob and
/// read with `CAST(? AS TEXT)` (a name that is not UTF-8, shown with
/// U+FFFD in its place, would name another file).
pub fn sql_name(path: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt as _;
    path.as_os_str().as_bytes()
}

/// Copies the database of the log in `dir` into `to`, a file that must
/// not exist yet.
pub fn copy_log(dir: &Path, to: &Path) -> Result<Copied, StoreError> {
    copy_log_watched(dir, to, &mut |_, _| {})
}

/// [`copy_log`], telling `progress` after each page of records how many
/// it has copied, of how many the hot store held when it began (not
/// called for a copy made whole).
pub fn copy_log_watched(
    dir: &Path,
    to: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Copied, StoreError> {
    let source = dir.join(DATABASE_FILE);
    // Held until the copy is made.
    let Ok(_archive_lock) = archive::lock_if_there(dir) else {
        let connection = open(&source)?;
        connection
            .execute("VACUUM INTO CAST(?1 AS TEXT)", [sql_name(to)])
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
        for sql in &schema {
            copy.execute_batch(sql).at(to)?;
        }
    }
    connection
        .execute("ATTACH DATABASE CAST(?1 AS TEXT) AS copy", [sql_name(to)])
        .at(&source)?;
    // The file is synced once whole: no journal, no sync per chunk.
    connection
        .execute_batch("PRAGMA copy.journal_mode = OFF; PRAGMA copy.synchronous = OFF")
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
    // Each table a page of rows at a time, by its key: `?1` the last key
    // copied (none yet: NULL), `?2` the log's size when the copy began;
    // `each` told the rows copied so far.
    let pages = |table: &str,
                 key: &str,
                 within: &str,
                 each: &mut dyn FnMut(u64)|
     -> Result<(), StoreError> {
        let mut copy = connection
            .prepare(&format!(
                "INSERT INTO copy.{table} SELECT * FROM main.{table} \
                 WHERE (?1 IS NULL OR {key} > ?1) AND {within} ORDER BY {key} LIMIT {CHUNK}"
            ))
            .at(&source)?;
        let mut last = connection
            .prepare(&format!("SELECT MAX({key}) FROM copy.{table}"))
            .at(&source)?;
        let mut after: Option<i64> = None;
        let mut so_far = 0;
        loop {
            let copied = copy
                .execute(rusqlite::params![after, bounds.records])
                .at(&source)?;
            so_far += copied as u64;
            each(so_far);
            if copied < CHUNK as usize {
                return Ok(());
            }
            after = last.query_row([], |row| row.get(0)).at(&source)?;
            std::thread::sleep(super::BETWEEN_READS);
        }
    };
    let hot = u64::try_from(bounds.records.saturating_sub(bounds.archived_end)).unwrap_or(0);
    pages("records", "idx", "idx < ?2", &mut |copied| {
        progress(copied, hot)
    })?;
    // A node is written with the last record under it, a checkpoint with
    // the records it covers: those over records appended since are left
    // out. (A checkpoint cosigned meanwhile comes with its cosignature.)
    pages(
        "tree_nodes",
        "pos",
        "(idx + 1) * (1 << level) <= ?2",
        &mut |_| {},
    )?;
    pages("checkpoints", "tree_size", "tree_size <= ?2", &mut |_| {})?;
    // A sealed segment's run at a time (some 100,000 rows); those of
    // archived segments left with them.
    let mut statement = connection
        .prepare("INSERT INTO copy.lookups SELECT * FROM main.lookups WHERE segment = ?1")
        .at(&source)?;
    for segment in bounds.archived_segments..bounds.sealed_segments {
        statement.execute([segment]).at(&source)?;
        std::thread::sleep(super::BETWEEN_READS);
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
    /// Its size: records (and tree nodes, and checkpoints) of indexes
    /// from this on were appended since.
    records: i64,
    /// Records archived...
    archived_end: i64,
    /// ... and segments, whose lookups left with them...
    archived_segments: i64,
    /// ... and those whose lookups were sealed.
    sealed_segments: i64,
}

impl Bounds {
    fn read(connection: &Connection, source: &Path) -> Result<Self, StoreError> {
        // `MAX(idx) + 1` would turn into a float past `i64::MAX`.
        let last: Option<i64> = connection
            .query_row("SELECT MAX(idx) FROM main.records", [], |row| row.get(0))
            .at(source)?;
        let next = last.map(|last| last.saturating_add(1));
        let meta = |key: &str| -> Result<u64, StoreError> {
            let value: Option<String> = connection
                .query_row("SELECT value FROM main.meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()
                .at(source)?;
            Ok(value.and_then(|value| value.parse().ok()).unwrap_or(0))
        };
        let archived_end = meta("archived_end")?;
        let segments = |end: u64| i64::try_from(lookup::segment_of(end)).unwrap_or(i64::MAX);
        Ok(Self {
            // Every record may be archived (the tree's nodes over them
            // stay).
            records: next
                .unwrap_or(0)
                .max(i64::try_from(archived_end).unwrap_or(i64::MAX)),
            archived_end: i64::try_from(archived_end).unwrap_or(i64::MAX),
            archived_segments: segments(archived_end),
            sealed_segments: segments(meta("sealed_end")?),
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

    /// A log whose every record is archived is copied with the tree's
    /// nodes over the archives, which proofs of its archived records climb
    /// through.
    #[test]
    fn a_log_archived_whole_is_copied_with_its_tree() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(ORIGIN).unwrap();
        append(
            &mut Store::open(dir.path(), ORIGIN).unwrap(),
            &key,
            0..SEGMENT,
        );
        drop(Store::open(dir.path(), ORIGIN).unwrap());
        let archives = tempfile::tempdir().unwrap();
        let archived = archive::run(
            dir.path(),
            archives.path(),
            i64::MAX,
            &key.verifier(),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(archived.records, 2 * SEGMENT);
        archive::create_lock_file(&dir.path().join(archive::LOCK_FILE), 0o640).unwrap();
        let copy = tempfile::tempdir().unwrap();
        let copied = copy_log(dir.path(), &copy.path().join(DATABASE_FILE)).unwrap();
        assert_eq!(
            copied,
            Copied::InChunks {
                records: 2 * SEGMENT
            }
        );
        let report =
            verify::verify_with_archives(copy.path(), Some(archives.path()), &key.verifier())
                .unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(report.records, 2 * SEGMENT);
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
        let mut told = Vec::new();
        let copied = std::thread::scope(|scope| {
            let copying = scope.spawn(|| {
                copy_log_watched(dir.path(), &to, &mut |copied, of| told.push((copied, of)))
                    .unwrap()
            });
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
        // A report after each page of records: 65,536, then the rest.
        assert_eq!(told, [(CHUNK as u64, records), (records, records)]);

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
