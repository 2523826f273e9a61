//! Checking an exchange log, and the proofs a partner checks offline.
//!
//! - [`verify_log`] walks a whole log: every record against the tree, the
//!   tree against the records, every checkpoint against both, and the
//!   queryable columns against the records they copy.
//! - [`prove`] makes a self-contained [`ProofBundle`] (record, inclusion
//!   proof, signed checkpoint) that [`check_bundle`] verifies with nothing
//!   but the log's public key.
//! - [`consistency`] proves that the log today extends a checkpoint a
//!   partner saved earlier.
//!
//! Everything here opens the store read-only and never writes, so it runs
//! beside a serving gateway. Nothing here trusts the store: what is
//! reported as good has been checked against signed checkpoints.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost::Message;
use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use super::archive;
use super::lookup;
use super::merkle::{self, Hash, MemoryTree, ProofError};
use super::note::{Checkpoint, NoteError, Verifier};
use super::store::{self, Store, StoreError};
use super::{ExchangeRecord, Phase};

/// What kind of damage [`verify_log`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// An index is missing: the record was deleted.
    MissingRecord,
    /// A record's bytes are not those the tree holds: altered or moved.
    RecordAltered,
    /// A record's bytes are not an `ExchangeRecord`.
    Undecodable,
    /// A queryable column says something else than the record.
    ColumnEdited,
    /// An outcome does not point to an earlier decision of the same call.
    BrokenLink,
    /// A stored tree node is not the one the records give.
    TreeNode,
    /// A checkpoint is not signed by the key, or not what its row says.
    CheckpointInvalid,
    /// A checkpoint covers more records than the log holds.
    CheckpointBeyondLog,
    /// A checkpoint's root is not the root of the records it covers.
    CheckpointRoot,
    /// A sealed segment's lookups are not those its records give: lookups
    /// by request id or subject (the Data Tracker) would miss or invent
    /// records.
    LookupEdited,
    /// An archive file is damaged: edited, truncated, or its proof or
    /// checkpoint does not hold.
    ArchiveDamaged,
    /// Archived records are in no archive file.
    ArchiveMissing,
    /// A row outside the log's numbering (an index below 0), which no
    /// append writes.
    ForeignRecord,
}

impl ProblemKind {
    /// A short name, for summaries and scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingRecord => "missing-record",
            Self::RecordAltered => "record-altered",
            Self::Undecodable => "undecodable-record",
            Self::ColumnEdited => "column-edited",
            Self::BrokenLink => "broken-link",
            Self::TreeNode => "tree-node",
            Self::CheckpointInvalid => "checkpoint-invalid",
            Self::CheckpointBeyondLog => "checkpoint-beyond-log",
            Self::CheckpointRoot => "checkpoint-root",
            Self::LookupEdited => "lookup-edited",
            Self::ArchiveDamaged => "archive-damaged",
            Self::ArchiveMissing => "archive-missing",
            Self::ForeignRecord => "foreign-record",
        }
    }
}

/// The first problem [`verify_log`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The first record concerned.
    pub index: u64,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

/// What [`verify_log`] checked, and the first problem if any.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Checkpoints found valid; `None` when damage in the records stopped
    /// the check before the checkpoints that sign them.
    pub checkpoints: Option<usize>,
    /// The latest valid checkpoint.
    pub latest: Option<Checkpoint>,
    pub problem: Option<Problem>,
    /// What is not damage but worth saying (lookups not sealed yet).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Whether the log is intact.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Why a log could not be checked at all (as opposed to a [`Problem`]
/// found in it).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "records before {0} are archived: give the directory of their archives to check them too"
    )]
    ArchivesNeeded(u64),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
}

/// Checks the whole log in `dir` against `verifier`, the log's public key.
/// A log with archived records needs [`verify_with_archives`].
pub fn verify_log(dir: &Path, verifier: &Verifier) -> Result<VerifyReport, VerifyError> {
    verify_with_archives(dir, None, verifier)
}

/// Checks the archives in `archives`, then the log in `dir` after them, as
/// one log.
pub fn verify_with_archives(
    dir: &Path,
    archives: Option<&Path>,
    verifier: &Verifier,
) -> Result<VerifyReport, VerifyError> {
    verify_watched(dir, archives, verifier, &mut |_| {})
}

/// How far a verification has gone, as [`verify_watched`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Records checked so far (archived ones included)...
    pub records: u64,
    /// ... of the log's records when the verification began.
    pub of: u64,
}

/// How many records of the hot store [`verify_watched`] reads in one
/// snapshot, and then reports.
const CHUNK: u64 = super::READ_CHUNK;

/// [`verify_with_archives`], telling `progress` how far it has gone: after
/// each archive file, and after each 65,536 records of the hot store (then
/// with no snapshot held, unless an archive run beside keeps it); the last
/// report comes before the tree and the checkpoints are checked, which
/// take a fraction of the time.
pub fn verify_watched(
    dir: &Path,
    archives: Option<&Path>,
    verifier: &Verifier,
    progress: &mut dyn FnMut(Checked),
) -> Result<VerifyReport, VerifyError> {
    verify_beside(dir, archives, verifier, progress, &mut || {})
}

/// [`verify_watched`], with `meanwhile` run once the store's snapshot is
/// read from, as an archive run beside may (for tests).
pub(super) fn verify_beside(
    dir: &Path,
    archives: Option<&Path>,
    verifier: &Verifier,
    progress: &mut dyn FnMut(Checked),
    meanwhile: &mut dyn FnMut(),
) -> Result<VerifyReport, VerifyError> {
    let store = Store::open_read_only(dir)?;
    // Only an archive run removes what was written. While this holds the
    // archive lock none runs, and the records are read a chunk at a time,
    // each in a snapshot of its own, so that a gateway writing beside can
    // restart its WAL between two (a snapshot held for the minutes a large
    // log takes would keep every frame written meanwhile). Without the
    // lock (a run is going on, or no gateway ever made its file: a copy),
    // one snapshot for everything.
    let archive_lock = archive::lock_if_there(dir);
    // The archives there before the snapshot: a run beside may write more
    // while this reads (`archive::list_with`).
    let before = match archives.filter(|dir| dir.exists()) {
        Some(dir) => archive::list(dir)?,
        None => Vec::new(),
    };
    let snapshot = store.snapshot()?;
    // Checkpoints first: each was committed with the records it covers, so
    // the records read next include them all even while the gateway
    // appends.
    let checkpoints = store.checkpoints()?;
    // Likewise, the segments sealed now were sealed with their records.
    let sealed_end = store.sealed_end()?;
    let last_lookup_segment = store.last_lookup_segment()?;
    let sealed = lookup::segment_of(sealed_end);
    let archived_end = store.archived_end()?;
    // Records appended from now on are left for the next verification.
    let of = store.size()?;
    meanwhile();
    let whole = if archive_lock.is_ok() {
        drop(snapshot);
        None
    } else {
        snapshot
    };
    let sizes = checkpoints
        .iter()
        .map(|checkpoint| checkpoint.size)
        .collect();
    let mut walk = Walk {
        store: &store,
        // The levels the store keeps, compared below; the roots of the
        // checkpoints' sizes taken as the walk passes them.
        tree: MemoryTree::from_level(store::STORED_LEVEL),
        roots: std::collections::HashMap::from([(0, merkle::Frontier::default().root())]),
        sizes,
        rows: 0,
        problem: None,
        sealed,
        lookups: Vec::new(),
        archived_decisions: std::collections::HashMap::new(),
        archived_end,
        last_archive: 0..0,
        archive_checkpoints: Vec::new(),
        archived_until_us: 0,
        archives_left: 0,
        progress,
        of,
    };
    if archived_end > 0 {
        let archives = archives.ok_or(VerifyError::ArchivesNeeded(archived_end))?;
        walk.problem = walk.archives(archives, &before, verifier)?;
    } else if let Some(archives) = archives.filter(|dir| dir.exists()) {
        // Nothing archived here, yet archives given: each is checked, and
        // the checkpoint it carries with the store's (a store from before
        // the archives were written, restored beside them, is behind them).
        // A directory not made yet holds none.
        walk.problem = walk.archives(archives, &before, verifier)?;
    }
    let mut from = archived_end;
    while walk.problem.is_none() && from < of {
        if from > archived_end && whole.is_none() {
            // The moment a gateway's writer needs to restart its WAL.
            std::thread::sleep(super::BETWEEN_READS);
        }
        let end = of.min((from / CHUNK + 1) * CHUNK);
        store.for_each_row(from, end, |index, columns, bytes, leaf| {
            walk.row(index, columns, &bytes, leaf.as_deref())
        })?;
        walk.report();
        from = end;
        // Records end before the chunk did: the gap is named with the row
        // after it, not after walking every empty chunk up to a row
        // numbered far past the others.
        let expected = walk.tree.size();
        if walk.problem.is_none() && expected < from {
            let Some(next) = store.first_index_from(from)? else {
                break;
            };
            walk.problem = Some(missing_record(expected, next));
        }
    }
    let Walk {
        tree,
        roots,
        rows,
        mut problem,
        archive_checkpoints,
        archived_until_us,
        archives_left,
        ..
    } = walk;
    if problem.is_none() {
        problem = check_tree(&store, &tree, archived_end)?;
    }
    if problem.is_none() {
        problem = check_archive_checkpoints(&archive_checkpoints, &roots, tree.size());
    }
    if problem.is_none() && archived_end > 0 {
        let said = store.archived_until_us()?;
        if said != archived_until_us {
            problem = Some(Problem {
                kind: ProblemKind::LookupEdited,
                index: archived_end,
                message: format!(
                    "meta says the archives reach {said} us since the epoch ({}), and their \
                     records reach {archived_until_us} ({}): the Data Tracker and audit query \
                     would not say rightly where an answer reaches into archived time",
                    crate::unix_time::rfc3339(said / 1_000_000),
                    crate::unix_time::rfc3339(archived_until_us / 1_000_000)
                ),
            });
        }
    }
    let mut notes = Vec::new();
    if let Err(why) = &archive_lock
        && super::writer_running(dir)
    {
        let why = match why {
            archive::NotLocked::NoFile => {
                "the log has no archive lock file (its gateway is of \
                 an earlier version: it makes one when it opens the log)"
            }
            archive::NotLocked::Busy => "an archive run held the archive lock",
            archive::NotLocked::Unusable => "the archive lock cannot be taken by this user",
        };
        notes.push(format!(
            "read in one snapshot, since {why}: the gateway writing beside could not restart \
             its journal (WAL) meanwhile"
        ));
    }
    if archives_left > 0 {
        notes.push(format!(
            "{archives_left} archive file(s) written beside while this ran are left for the \
             next verification: their records were checked in the hot store"
        ));
    }
    if problem.is_none() && store.seals_lookups()? {
        match check_sealed_end(sealed_end, archived_end, tree.size(), last_lookup_segment) {
            Ok(note) => notes.extend(note),
            Err(edited) => problem = Some(edited),
        }
    }
    if problem.is_none() {
        problem = store.first_foreign_row()?.map(|index| Problem {
            kind: ProblemKind::ForeignRecord,
            index: 0,
            message: format!(
                "a row at index {index} is outside the log's numbering (from 0): the database \
                 was edited, and `audit query` would have shown a record no append wrote"
            ),
        });
    }
    let mut report = VerifyReport {
        records: rows,
        checkpoints: None,
        latest: None,
        problem,
        notes,
    };
    if report.problem.is_none() {
        check_checkpoints(&checkpoints, &roots, tree.size(), verifier, &mut report);
    }
    Ok(report)
}

/// The record-by-record part of [`verify_log`].
struct Walk<'a> {
    store: &'a Store,
    /// The tree the records give, from the level the store keeps.
    tree: MemoryTree,
    /// Its roots at the checkpoints' sizes, once reached...
    roots: std::collections::HashMap<u64, Hash>,
    /// ... and the sizes to come (the store's checkpoints', and those the
    /// archives carry, added as they are read).
    sizes: std::collections::BTreeSet<u64>,
    rows: u64,
    problem: Option<Problem>,
    /// Segments whose lookups are sealed.
    sealed: u64,
    /// The lookups the records of the current segment give.
    lookups: Vec<(i64, u64)>,
    /// The request ids of the decisions of the last archive read: the
    /// outcomes of calls that spanned its end point to them.
    archived_decisions: std::collections::HashMap<u64, String>,
    /// Records before this are in archives.
    archived_end: u64,
    /// The records of the last archive read.
    last_archive: std::ops::Range<u64>,
    /// The checkpoint each archive file carries, every file of the
    /// directory's: checked against the records like the store's, so
    /// that a store cut back below what the archives signed is found.
    archive_checkpoints: Vec<(PathBuf, Checkpoint)>,
    /// When the latest record of the archives read happened.
    archived_until_us: i64,
    /// Archive files written beside, after the snapshot: not read.
    archives_left: usize,
    /// Told how far the walk has gone...
    progress: &'a mut dyn FnMut(Checked),
    /// ... in records of these.
    of: u64,
}

impl Walk<'_> {
    /// Grows the tree by `leaf`, keeping its root if a checkpoint is of
    /// that size.
    fn push(&mut self, leaf: Hash) {
        self.tree.push(leaf);
        let size = self.tree.size();
        while let Some(wanted) = self.sizes.first().copied().filter(|wanted| *wanted <= size) {
            self.sizes.pop_first();
            if wanted == size {
                self.roots.insert(size, self.tree.root());
            }
        }
    }

    fn row(
        &mut self,
        index: i64,
        columns: &[(&'static str, Value)],
        bytes: &[u8],
        leaf: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.rows += 1;
        if self.problem.is_none() {
            self.problem = self.check(index, columns, bytes, leaf)?.err();
        }
        Ok(())
    }

    fn report(&mut self) {
        (self.progress)(Checked {
            records: self.rows,
            // A log edited to hold more rows than its numbering says.
            of: self.of.max(self.rows),
        });
    }

    /// Reads the archives in `dir`, which must hold records 0 to
    /// `archived_end` in order, each intact and proven by its own signed
    /// checkpoint, into the tree; the first damage names the file. Of the
    /// files after those, only the ones in `before` (listed before the
    /// store's snapshot) are read.
    fn archives(
        &mut self,
        dir: &Path,
        before: &[PathBuf],
        verifier: &Verifier,
    ) -> Result<Option<Problem>, VerifyError> {
        let archived_end = self.archived_end;
        let (paths, left) = archive::list_with(dir, before, archived_end)?;
        self.archives_left = left;
        for path in paths {
            let expected = self.tree.size();
            if expected >= archived_end {
                // A run cut short archived a segment still in the store:
                // its records are read there, its checkpoint checked with
                // the others. More files than that are a store cut back.
                match archive::check(&path, verifier) {
                    Ok(checked) => {
                        if let Some(problem) = misnamed(&path, &checked.manifest, expected) {
                            return Ok(Some(problem));
                        }
                        self.carried(path, checked.checkpoint);
                    }
                    Err(error) => {
                        return Ok(Some(Problem {
                            kind: ProblemKind::ArchiveDamaged,
                            index: expected,
                            message: error.to_string(),
                        }));
                    }
                }
                continue;
            }
            let problem = |kind, message: String| {
                Some(Problem {
                    kind,
                    index: expected,
                    message,
                })
            };
            let checked = match archive::check(&path, verifier) {
                Ok(checked) => checked,
                Err(error) => return Ok(problem(ProblemKind::ArchiveDamaged, error.to_string())),
            };
            let manifest = &checked.manifest;
            if let Some(problem) = misnamed(&path, manifest, expected) {
                return Ok(Some(problem));
            }
            if manifest.first < expected {
                return Ok(problem(
                    ProblemKind::ArchiveDamaged,
                    format!(
                        "{} holds records {} to {}, which an earlier file holds too",
                        path.display(),
                        manifest.first,
                        manifest.end - 1
                    ),
                ));
            }
            if manifest.first > expected {
                return Ok(problem(
                    ProblemKind::ArchiveMissing,
                    format!(
                        "records {expected} to {} are archived but in no file of {} (the next, \
                         {}, starts at {})",
                        manifest.first.min(archived_end) - 1,
                        dir.display(),
                        path.display(),
                        manifest.first
                    ),
                ));
            }
            self.archived_until_us = self.archived_until_us.max(manifest.last_at_us);
            self.carried(path.clone(), checked.checkpoint.clone());
            for leaf in &checked.leaves {
                self.push(*leaf);
            }
            self.rows += checked.leaves.len() as u64;
            self.report();
            self.last_archive = manifest.first..manifest.end;
            self.archived_decisions = archive::records(&path)?
                .iter()
                .filter_map(|stored| {
                    let record = stored.decode().ok()?;
                    (record.phase() == Phase::Decision).then_some((stored.index, record.request_id))
                })
                .collect();
        }
        let read = self.tree.size();
        if read < archived_end {
            return Ok(Some(Problem {
                kind: ProblemKind::ArchiveMissing,
                index: read,
                message: format!(
                    "records {read} to {} are archived but in no file of {}",
                    archived_end - 1,
                    dir.display()
                ),
            }));
        }
        Ok(None)
    }

    /// Keeps the checkpoint the archive at `path` carries, to check its
    /// root when the walk reaches its size.
    fn carried(&mut self, path: PathBuf, checkpoint: Checkpoint) {
        if checkpoint.size > self.tree.size() {
            self.sizes.insert(checkpoint.size);
        }
        self.archive_checkpoints.push((path, checkpoint));
    }

    /// The outer error is a failure to read; the inner one, damage.
    fn check(
        &mut self,
        index: i64,
        columns: &[(&'static str, Value)],
        bytes: &[u8],
        stored_leaf: Option<&[u8]>,
    ) -> Result<Result<(), Problem>, StoreError> {
        let expected = self.tree.size();
        if u64::try_from(index).ok() != Some(expected) {
            return Ok(Err(missing_record(expected, index)));
        }
        // The leaf stored beside the record names an altered record; one
        // altered with its leaf is caught by the stored nodes over it
        // ([`check_tree`]) and the signed checkpoints.
        let leaf = merkle::leaf_hash(bytes);
        self.push(leaf);
        // A record written before leaves were kept beside it has its leaf
        // among the tree's level-0 nodes; one with neither lost its leaf.
        let stored = match stored_leaf {
            Some(stored) => Some(stored.to_vec()),
            None => self.store.stored_leaf_node(expected)?,
        };
        let Some(stored) = stored else {
            return Ok(Err(Problem {
                kind: ProblemKind::RecordAltered,
                index: expected,
                message: format!("record {expected} has no leaf hash: the database was edited"),
            }));
        };
        if stored != leaf.as_slice() {
            return Ok(Err(Problem {
                kind: ProblemKind::RecordAltered,
                index: expected,
                message: format!(
                    "record {expected} was altered: its bytes are not those the log took"
                ),
            }));
        }
        let Ok(record) = ExchangeRecord::decode(bytes) else {
            return Ok(Err(Problem {
                kind: ProblemKind::Undecodable,
                index: expected,
                message: format!("record {expected} is not an ExchangeRecord"),
            }));
        };
        if let Err(problem) = check_columns(expected, &record, columns) {
            return Ok(Err(problem));
        }
        if let Err(problem) = self.check_lookups(expected, &record)? {
            return Ok(Err(problem));
        }
        self.check_link(expected, &record)
    }

    /// At the end of a sealed segment, its lookups must be the ones its
    /// records give, no more and no fewer.
    fn check_lookups(
        &mut self,
        index: u64,
        record: &ExchangeRecord,
    ) -> Result<Result<(), Problem>, StoreError> {
        let segment = lookup::segment_of(index);
        if segment >= self.sealed {
            return Ok(Ok(()));
        }
        self.lookups.extend(lookup::entries(record, index));
        if lookup::segment_of(index + 1) == segment {
            return Ok(Ok(()));
        }
        let mut given = std::mem::take(&mut self.lookups);
        given.sort_unstable();
        given.dedup();
        let stored = self.store.lookup_run(segment)?;
        if stored == given {
            return Ok(Ok(()));
        }
        let from = segment * lookup::SEGMENT;
        // The first record whose lookups differ, to name it.
        let first = given
            .iter()
            .zip(&stored)
            .find(|(given, stored)| given != stored)
            .map(|(given, _)| given.1)
            .or_else(|| {
                given
                    .get(stored.len())
                    .or(stored.get(given.len()))
                    .map(|entry| entry.1)
            })
            .unwrap_or(from)
            .clamp(from, index);
        Ok(Err(Problem {
            kind: ProblemKind::LookupEdited,
            index: first,
            message: format!(
                "the lookups of records {from} to {index} ({} stored, {} given by the records) \
                 are not those the records give: the database was edited, and finding records \
                 by request id or subject (the Data Tracker) would miss or invent some",
                stored.len(),
                given.len()
            ),
        }))
    }

    /// An outcome must follow the decision of the same call.
    fn check_link(
        &self,
        index: u64,
        record: &ExchangeRecord,
    ) -> Result<Result<(), Problem>, StoreError> {
        if record.phase() != Phase::Outcome {
            return Ok(Ok(()));
        }
        let decision = record.decision_index;
        let linked = if self.last_archive.contains(&decision) {
            self.archived_decisions.get(&decision) == Some(&record.request_id)
        } else if decision < self.archived_end {
            // A call longer than a segment: its decision is in an earlier
            // archive, checked as a record there but not as this link.
            true
        } else if decision < index {
            self.store
                .record(decision)?
                .and_then(|stored| ExchangeRecord::decode(stored.bytes.as_slice()).ok())
                .is_some_and(|earlier| {
                    earlier.phase() == Phase::Decision && earlier.request_id == record.request_id
                })
        } else {
            false
        };
        if linked {
            return Ok(Ok(()));
        }
        Ok(Err(Problem {
            kind: ProblemKind::BrokenLink,
            index,
            message: format!(
                "record {index} is the outcome of request {} but its decision_index {decision} \
                 is not an earlier decision of that request",
                record.request_id
            ),
        }))
    }
}

fn check_columns(
    index: u64,
    record: &ExchangeRecord,
    stored: &[(&'static str, Value)],
) -> Result<(), Problem> {
    let expected = super::store::columns(record);
    for (name, value) in stored {
        let Some(want) = super::store::COLUMNS
            .iter()
            .position(|column| column == name)
            .map(|position| &expected[position])
        else {
            continue;
        };
        if value != want {
            return Err(Problem {
                kind: ProblemKind::ColumnEdited,
                index,
                message: format!(
                    "record {index}: column `{name}` says {} but the record says {}: \
                     the database was edited",
                    show(value),
                    show(want)
                ),
            });
        }
    }
    Ok(())
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_owned(),
        Value::Integer(integer) => integer.to_string(),
        Value::Real(real) => real.to_string(),
        Value::Text(text) => format!("{text:?}"),
        Value::Blob(blob) => format!("a blob of {} bytes", blob.len()),
    }
}

/// Compares every stored node with the tree the records give. Nodes beyond
/// the records read may be a running gateway's appends, unless a record
/// they cover is gone: nodes and records are committed together. Nodes
/// below [`store::STORED_LEVEL`] are not stored (logs written before
/// stored them; they are not read).
/// `meta.sealed_end` as a writer keeps it: whole segments, from the
/// archives' end to the records' end, and no lookups stored past the
/// segment being sealed. Edited down, the gateway's readers would skip
/// the lookups of the segments between, and the check of each sealed
/// segment's lookups with them: a problem.
///
/// A writer of this version seals each segment before the records are a
/// segment further; further behind (a log written by an earlier version,
/// or a start stopped while it sealed) is said in a note: the gateway
/// seals the rest when it opens the log.
fn check_sealed_end(
    sealed_end: u64,
    archived_end: u64,
    size: u64,
    last_lookup_segment: Option<u64>,
) -> Result<Option<String>, Problem> {
    let segment = lookup::SEGMENT;
    let complete = size / segment * segment;
    let edited = |what: String| Problem {
        kind: ProblemKind::LookupEdited,
        index: sealed_end.min(size),
        message: format!(
            "{what}: the database was edited, and the Data Tracker would miss the records of \
             the segments between"
        ),
    };
    if !sealed_end.is_multiple_of(segment) || archived_end > sealed_end || sealed_end > size {
        return Err(edited(format!(
            "meta says the lookups of the records before {sealed_end} are sealed, which is not \
             whole segments of {segment} between the archives' end ({archived_end}) and the \
             records' ({size})"
        )));
    }
    if let Some(last) = last_lookup_segment.filter(|last| *last > lookup::segment_of(sealed_end)) {
        return Err(edited(format!(
            "meta says the lookups of the records before {sealed_end} are sealed, and lookups \
             of segment {last} are stored, past the one being sealed"
        )));
    }
    Ok((sealed_end + segment < complete).then(|| {
        format!(
            "the lookups of records {sealed_end} to {complete} are not sealed yet (the log was \
             written by an earlier version, or a start stopped while sealing): the gateway \
             seals them when it opens the log; until then a gateway's readers find those \
             records by scanning them"
        )
    }))
}

fn check_tree(
    store: &Store,
    tree: &MemoryTree,
    archived_end: u64,
) -> Result<Option<Problem>, StoreError> {
    let size = tree.size();
    for level in store::STORED_LEVEL..64 {
        let mut stored = store.level(level)?;
        let recomputed = tree.level(level);
        if stored.is_empty() && recomputed.is_empty() {
            break;
        }
        // The nodes inside archived segments left the store with them.
        let archived = if level < archive::SEGMENT_LEVEL {
            usize::try_from(archived_end >> level).unwrap_or(usize::MAX)
        } else {
            0
        };
        // Unless an archive run stopped before removing them.
        stored.retain(|(index, _)| usize::try_from(*index).is_ok_and(|index| index >= archived));
        for (position, want) in recomputed.iter().enumerate().skip(archived) {
            let matches = stored
                .get(position - archived)
                .is_some_and(|(index, hash)| {
                    usize::try_from(*index).ok() == Some(position) && hash.as_slice() == want
                });
            if !matches {
                let first = (position as u64) << level;
                let last = first + (1 << level) - 1;
                return Ok(Some(Problem {
                    kind: ProblemKind::TreeNode,
                    index: first,
                    message: format!(
                        "tree node ({level}, {position}) over records {first} to {last} \
                         is missing or not the one the records give: a record among them, \
                         or the tree, was edited"
                    ),
                }));
            }
        }
        let Some(&(beyond, _)) = stored.get(recomputed.len().saturating_sub(archived)) else {
            continue;
        };
        let last = u64::try_from(beyond)
            .unwrap_or(0)
            .saturating_add(1)
            .saturating_mul(1 << level)
            - 1;
        for index in [size, last] {
            if store.record(index)?.is_none() {
                return Ok(Some(Problem {
                    kind: ProblemKind::MissingRecord,
                    index,
                    message: format!(
                        "record {index} is missing: tree node ({level}, {beyond}) covers it \
                         but the records end at {size}; it was deleted"
                    ),
                }));
            }
        }
    }
    Ok(None)
}

/// Checks each checkpoint against `roots`, the roots the records give at
/// the checkpoints' sizes, of a log of `size` records.
/// The checkpoints the archives carry, against the records: one past the
/// log's end says records were deleted since the archive was written,
/// one whose root differs that they were rewritten.
fn check_archive_checkpoints(
    carried: &[(PathBuf, Checkpoint)],
    roots: &std::collections::HashMap<u64, Hash>,
    size: u64,
) -> Option<Problem> {
    carried.iter().find_map(|(path, checkpoint)| {
        if checkpoint.size > size {
            return Some(Problem {
                kind: ProblemKind::CheckpointBeyondLog,
                index: size,
                message: format!(
                    "{} carries a checkpoint of size {}, and the log holds only {size} records: \
                     records were deleted",
                    path.display(),
                    checkpoint.size
                ),
            });
        }
        (roots.get(&checkpoint.size) != Some(&checkpoint.root)).then(|| Problem {
            kind: ProblemKind::CheckpointRoot,
            index: checkpoint.size,
            message: format!(
                "{} carries a checkpoint of size {} whose root is not the root of the records: \
                 records and tree were rewritten",
                path.display(),
                checkpoint.size
            ),
        })
    })
}

fn check_checkpoints(
    checkpoints: &[super::StoredCheckpoint],
    roots: &std::collections::HashMap<u64, Hash>,
    size: u64,
    verifier: &Verifier,
    report: &mut VerifyReport,
) {
    let mut good = 0;
    report.checkpoints = Some(0);
    for stored in checkpoints {
        let covers = || {
            format!(
                "it covers records {good} to {} since the last good checkpoint",
                stored.size.saturating_sub(1)
            )
        };
        let problem = |kind, index, what: String| Problem {
            kind,
            index,
            message: format!("checkpoint of size {}: {what}; {}", stored.size, covers()),
        };
        let checkpoint = match Checkpoint::open(&stored.note, verifier) {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                report.problem = Some(problem(
                    ProblemKind::CheckpointInvalid,
                    good,
                    error.to_string(),
                ));
                return;
            }
        };
        if checkpoint.size != stored.size {
            report.problem = Some(problem(
                ProblemKind::CheckpointInvalid,
                good,
                format!("its note says size {}", checkpoint.size),
            ));
            return;
        }
        if checkpoint.size > size {
            report.problem = Some(problem(
                ProblemKind::CheckpointBeyondLog,
                size,
                format!("the log holds only {size} records: records were deleted"),
            ));
            return;
        }
        if roots.get(&checkpoint.size) != Some(&checkpoint.root) {
            report.problem = Some(problem(
                ProblemKind::CheckpointRoot,
                good,
                "its root is not the root of the records: records and tree were rewritten"
                    .to_owned(),
            ));
            return;
        }
        good = checkpoint.size;
        report.checkpoints = Some(report.checkpoints.unwrap_or(0) + 1);
        report.latest = Some(checkpoint);
    }
}

/// Which record(s) to prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    Index(u64),
    /// Every record of one call: its decision and, if any, its outcome.
    RequestId(String),
}

/// The format name in every bundle.
pub const BUNDLE_FORMAT: &str = "govbridge-inclusion-proof/1";

/// One record with everything needed to check, offline, that the log
/// holds it: the record, its inclusion proof and the signed checkpoint the
/// proof leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofBundle {
    pub index: u64,
    /// The record's stored bytes: the leaf's data.
    pub record: Vec<u8>,
    pub tree_size: u64,
    pub inclusion_proof: Vec<Hash>,
    /// The checkpoint's signed note, as signed.
    pub checkpoint: String,
}

/// A bundle as JSON: binary as base64.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleJson {
    format: String,
    index: u64,
    record: String,
    tree_size: u64,
    inclusion_proof: Vec<String>,
    checkpoint: String,
}

impl ProofBundle {
    fn to_json(&self) -> BundleJson {
        BundleJson {
            format: BUNDLE_FORMAT.to_owned(),
            index: self.index,
            record: BASE64.encode(&self.record),
            tree_size: self.tree_size,
            inclusion_proof: self
                .inclusion_proof
                .iter()
                .map(|hash| BASE64.encode(hash))
                .collect(),
            checkpoint: self.checkpoint.clone(),
        }
    }

    fn from_json(json: BundleJson) -> Result<Self, BundleError> {
        if json.format != BUNDLE_FORMAT {
            return Err(BundleError::Malformed(format!(
                "format `{}`, expected `{BUNDLE_FORMAT}`",
                json.format
            )));
        }
        let record = BASE64
            .decode(&json.record)
            .map_err(|_| BundleError::Malformed("`record` is not base64".into()))?;
        let inclusion_proof = json
            .inclusion_proof
            .iter()
            .map(|hash| {
                BASE64
                    .decode(hash)
                    .ok()
                    .and_then(|hash| Hash::try_from(hash).ok())
                    .ok_or_else(|| {
                        BundleError::Malformed(
                            "`inclusion_proof` must hold base64 SHA-256 hashes".into(),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            index: json.index,
            record,
            tree_size: json.tree_size,
            inclusion_proof,
            checkpoint: json.checkpoint,
        })
    }

    /// The bundles in a file written by [`bundles_to_json`].
    pub fn parse_all(text: &str) -> Result<Vec<Self>, BundleError> {
        let malformed = |error: serde_json::Error| BundleError::Malformed(error.to_string());
        let bundles: Vec<BundleJson> = match serde_json::from_str(text).map_err(malformed)? {
            serde_json::Value::Array(several) => several
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .map_err(malformed)?,
            one => vec![serde_json::from_value(one).map_err(malformed)?],
        };
        if bundles.is_empty() {
            return Err(BundleError::Malformed("no bundle in the file".into()));
        }
        bundles.into_iter().map(Self::from_json).collect()
    }
}

/// The file for `bundles`: one JSON object, or an array when several.
pub fn bundles_to_json(bundles: &[ProofBundle]) -> String {
    let json: Vec<BundleJson> = bundles.iter().map(ProofBundle::to_json).collect();
    let text = match json.as_slice() {
        [one] => serde_json::to_string_pretty(one),
        several => serde_json::to_string_pretty(several),
    };
    // Strings and integers only: serializing cannot fail.
    let mut text = text.unwrap_or_default();
    text.push('\n');
    text
}

/// Why no proof could be made.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no record has index {index}: the log holds {size} records")]
    NoSuchIndex { index: u64, size: u64 },
    #[error("no record has request id `{0}`")]
    NoSuchRequest(String),
    #[error(
        "record {index} is newer than the latest checkpoint (which covers {covered} records): \
         the next checkpoint is signed within exchange_log.checkpoint_interval; try again then"
    )]
    NotYetCheckpointed { index: u64, covered: u64 },
    #[error("the log does not match its latest checkpoint ({0}): run `govbridge audit verify`")]
    Inconsistent(String),
    #[error(
        "records before {archived_end} are archived: give the directory of their archives, and \
         name an archived record by its index"
    )]
    Archived { archived_end: u64 },
    #[error(
        "records before {archived_end} are archived, and call `{id}` is not wholly in the log \
         here: give the directory of the archives to look for it there too"
    )]
    ArchivedRequest { id: String, archived_end: u64 },
    #[error(transparent)]
    Archive(#[from] archive::RunError),
}

/// The records of call `id` in the archives in `dir` (only those of
/// records before `archived_end`: a run cut short left a copy of one
/// segment in the store too), oldest first. Every archive is read: they
/// keep no lookups.
fn archived_records_of_request(
    dir: &Path,
    archived_end: u64,
    id: &str,
) -> Result<Vec<store::StoredRecord>, ProveError> {
    let mut found = Vec::new();
    for path in archive::list(dir).map_err(archive::RunError::from)? {
        let records = archive::records(&path).map_err(archive::RunError::from)?;
        found.extend(records.into_iter().filter(|stored| {
            stored.index < archived_end
                && stored.decode().is_ok_and(|record| record.request_id == id)
        }));
    }
    Ok(found)
}

/// Proof bundles for the record(s) `key` names in the log in `dir`, against
/// its latest checkpoint: one bundle per record.
pub fn prove(dir: &Path, key: &RecordKey) -> Result<Vec<ProofBundle>, ProveError> {
    prove_with_archives(dir, None, key)
}

/// [`prove`], for a log whose older records are archived in `archives`.
pub fn prove_with_archives(
    dir: &Path,
    archives: Option<&Path>,
    key: &RecordKey,
) -> Result<Vec<ProofBundle>, ProveError> {
    let store = Store::open_read_only(dir)?;
    let _snapshot = store.snapshot()?;
    let archived_end = store.archived_end()?;
    let tree = match (archived_end, archives) {
        (0, _) => None,
        (_, Some(archives)) => Some(archive::ArchivedTree::new(&store, archives)?),
        // Records still in the store are proven without the archives.
        (_, None) => match key {
            RecordKey::Index(index) if *index < archived_end => {
                return Err(ProveError::Archived { archived_end });
            }
            _ => None,
        },
    };
    // The checkpoint before the records: anything it covers is there.
    let latest = store.latest_checkpoint()?;
    let records = match key {
        RecordKey::Index(index) => match match &tree {
            Some(tree) => tree.record(*index)?,
            None => store.record(*index)?,
        } {
            Some(record) => vec![record],
            None => {
                return Err(ProveError::NoSuchIndex {
                    index: *index,
                    size: store.size()?,
                });
            }
        },
        RecordKey::RequestId(id) => {
            // The archives have no lookups: a call is looked for in each.
            let mut records = match archives.filter(|_| archived_end > 0) {
                Some(archives) => archived_records_of_request(archives, archived_end, id)?,
                None => Vec::new(),
            };
            records.extend(store.records_of_request(id)?);
            records.truncate(store::MAX_RECORDS_OF_REQUEST);
            if archives.is_none() && archived_end > 0 {
                // A call whose decision left for an archive would be
                // proven by half.
                let decided_before = records.iter().any(|record| {
                    record.decode().is_ok_and(|record| {
                        record.phase() == Phase::Outcome && record.decision_index < archived_end
                    })
                });
                if records.is_empty() || decided_before {
                    return Err(ProveError::ArchivedRequest {
                        id: id.clone(),
                        archived_end,
                    });
                }
            }
            if records.is_empty() {
                return Err(ProveError::NoSuchRequest(id.clone()));
            }
            records
        }
    };
    let covered = latest.as_ref().map_or(0, |latest| latest.size);
    if let Some(newer) = records.iter().find(|record| record.index >= covered) {
        return Err(ProveError::NotYetCheckpointed {
            index: newer.index,
            covered,
        });
    }
    let Some(latest) = latest else {
        return Err(ProveError::Inconsistent("no checkpoint".into()));
    };
    let checkpoint = Checkpoint::parse(&latest.note)
        .map_err(|error| ProveError::Inconsistent(error.to_string()))?;
    let mut bundles = Vec::with_capacity(records.len());
    for record in records {
        let proof = match &tree {
            Some(tree) => merkle::inclusion_proof(tree, record.index, checkpoint.size)?,
            None => merkle::inclusion_proof(&store, record.index, checkpoint.size)?,
        }
        .map_err(|error| ProveError::Inconsistent(error.to_string()))?;
        merkle::verify_inclusion(
            &merkle::leaf_hash(&record.bytes),
            record.index,
            checkpoint.size,
            &proof,
            &checkpoint.root,
        )
        .map_err(|error| ProveError::Inconsistent(format!("record {}: {error}", record.index)))?;
        bundles.push(ProofBundle {
            index: record.index,
            record: record.bytes,
            tree_size: checkpoint.size,
            inclusion_proof: proof,
            checkpoint: latest.note.clone(),
        });
    }
    Ok(bundles)
}

/// Why a bundle does not prove its record.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a proof bundle: {0}")]
    Malformed(String),
    #[error("the checkpoint: {0}")]
    Checkpoint(NoteError),
    #[error("the bundle says tree size {bundle} but its checkpoint {checkpoint}")]
    SizeMismatch { bundle: u64, checkpoint: u64 },
    #[error("record {index} is not in the checkpointed log: {reason}")]
    NotIncluded { index: u64, reason: ProofError },
    #[error("record {index} is in the log but is not an ExchangeRecord")]
    Undecodable { index: u64 },
}

/// Checks `bundle` with the log's public key alone: the checkpoint's
/// signature, then that the record's leaf leads to the signed root.
/// Returns the record.
pub fn check_bundle(
    bundle: &ProofBundle,
    verifier: &Verifier,
) -> Result<ExchangeRecord, BundleError> {
    let checkpoint =
        Checkpoint::open(&bundle.checkpoint, verifier).map_err(BundleError::Checkpoint)?;
    check_bundle_under(bundle, &checkpoint)
}

/// [`check_bundle`] for a bundle whose checkpoint is `checkpoint`, opened
/// (its signature checked) already: many bundles under one checkpoint
/// check it once.
pub fn check_bundle_under(
    bundle: &ProofBundle,
    checkpoint: &Checkpoint,
) -> Result<ExchangeRecord, BundleError> {
    if checkpoint.size != bundle.tree_size {
        return Err(BundleError::SizeMismatch {
            bundle: bundle.tree_size,
            checkpoint: checkpoint.size,
        });
    }
    merkle::verify_inclusion(
        &merkle::leaf_hash(&bundle.record),
        bundle.index,
        checkpoint.size,
        &bundle.inclusion_proof,
        &checkpoint.root,
    )
    .map_err(|reason| BundleError::NotIncluded {
        index: bundle.index,
        reason,
    })?;
    ExchangeRecord::decode(bundle.record.as_slice()).map_err(|_| BundleError::Undecodable {
        index: bundle.index,
    })
}

/// A cross receipt, checked: this instance's records of a call it
/// forwarded to a partner instance, and the partner's record of the same
/// call, each under a checkpoint its own log signed.
#[derive(Debug, Clone)]
pub struct CrossReceipt {
    /// This instance's outcome record of the call, and its index.
    pub home: (u64, ExchangeRecord),
    /// The partner's record the outcome names, and its index.
    pub partner: (u64, ExchangeRecord),
}

/// Why a cross receipt does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("this instance's proof: {0}")]
    Home(BundleError),
    #[error("the partner's proof: {0}")]
    Partner(BundleError),
    #[error("{0}")]
    Missing(String),
    #[error("the partner's record {index} is not this call: {what}")]
    Mismatch { index: u64, what: String },
}

/// Checks a cross receipt: `home`, this instance's proofs of a call's
/// records (`audit prove --request-id` here), under `home_key`; `partner`,
/// the partner's proof of the record this instance's outcome names
/// (`audit prove --index` there), under `partner_key`. The two records
/// must be the same call (request id, caller, method and provider), and
/// the partner's must hold the assertion this instance's gateway signed
/// for it: it opens under `federation_key` (this instance's federation
/// verifier) and says the same.
pub fn check_receipt(
    home: &[ProofBundle],
    home_key: &Verifier,
    partner: &[ProofBundle],
    partner_key: &Verifier,
    federation_key: &Verifier,
) -> Result<CrossReceipt, ReceiptError> {
    let mut outcome = None;
    for bundle in home {
        let record = check_bundle(bundle, home_key).map_err(ReceiptError::Home)?;
        if record.receipt_index.is_some() {
            if outcome.is_some() {
                return Err(ReceiptError::Missing(
                    "several forwarded calls have this request id: a receipt cannot tell them \
                     apart"
                        .to_owned(),
                ));
            }
            outcome = Some((bundle.index, record));
        }
    }
    let (home_index, home_record) = outcome.ok_or_else(|| {
        ReceiptError::Missing(
            "no record of this call names a partner's receipt (was it forwarded to a partner \
             instance, and has it ended?)"
                .to_owned(),
        )
    })?;
    let wanted = home_record.receipt_index.unwrap_or_default();
    let bundle = partner
        .iter()
        .find(|bundle| bundle.index == wanted)
        .ok_or_else(|| {
            ReceiptError::Missing(format!(
                "the partner's proofs hold no record {wanted}, the one {} logged this call at",
                home_record.receipt_instance
            ))
        })?;
    let theirs = check_bundle(bundle, partner_key).map_err(ReceiptError::Partner)?;
    let mismatch = |what: String| ReceiptError::Mismatch {
        index: wanted,
        what,
    };
    for (field, ours, other) in [
        ("request id", &home_record.request_id, &theirs.request_id),
        ("caller", &home_record.caller, &theirs.caller),
        ("method", &home_record.method, &theirs.method),
        ("provider", &home_record.provider, &theirs.provider),
    ] {
        if ours != other {
            return Err(mismatch(format!("{field} {other}, here {ours}")));
        }
    }
    let assertion = crate::federation::Assertion::open(theirs.assertion.as_bytes(), federation_key)
        .map_err(|error| {
            mismatch(format!(
                "it holds no assertion of this instance's gateway ({error})"
            ))
        })?;
    for (field, asserted, ours) in [
        (
            "request id",
            assertion.request_id.clone(),
            &home_record.request_id,
        ),
        ("caller", assertion.caller.to_string(), &home_record.caller),
        ("method", assertion.method.clone(), &home_record.method),
        (
            "provider",
            assertion.provider.to_string(),
            &home_record.provider,
        ),
        (
            "instance",
            assertion.to.clone(),
            &home_record.receipt_instance,
        ),
        (
            "gateway",
            assertion.gateway.to_string(),
            &theirs.via_gateway,
        ),
    ] {
        if asserted != *ours {
            return Err(mismatch(format!(
                "its assertion says {field} {asserted}, not {ours}"
            )));
        }
    }
    Ok(CrossReceipt {
        home: (home_index, home_record),
        partner: (wanted, theirs),
    })
}

/// A checked proof that the log's latest checkpoint extends an older one.
#[derive(Debug, Clone)]
pub struct Consistency {
    pub old: Checkpoint,
    pub new: Checkpoint,
    /// The latest checkpoint's signed note, to save for next time.
    pub new_note: String,
    pub proof: Vec<Hash>,
}

/// Why the log cannot be shown to extend an old checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConsistencyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the old checkpoint: {0}")]
    OldCheckpoint(NoteError),
    #[error("the log's latest checkpoint: {0}")]
    NewCheckpoint(NoteError),
    #[error("the log has no checkpoint yet")]
    NoCheckpoint,
    #[error(
        "the old checkpoint covers {old} records but the log's latest only {new}: \
         the log was truncated, or this is another log"
    )]
    Shrunk { old: u64, new: u64 },
    #[error(
        "the log's latest checkpoint ({new} records) does not extend the old one \
         ({old} records): {reason}; the log was rewritten"
    )]
    NotExtension {
        old: u64,
        new: u64,
        reason: ProofError,
    },
    #[error(
        "the old checkpoint ends inside archived records (records before {archived_end} are \
         archived): give the directory of their archives"
    )]
    Archived { archived_end: u64 },
    #[error(transparent)]
    Archive(#[from] archive::RunError),
}

/// Proves that the latest checkpoint of the log in `dir` extends
/// `old_note`, a checkpoint of the same log saved earlier; both must be
/// signed by `verifier`.
pub fn consistency(
    dir: &Path,
    old_note: &str,
    verifier: &Verifier,
) -> Result<Consistency, ConsistencyError> {
    consistency_with_archives(dir, None, old_note, verifier)
}

/// [`consistency`], for a log whose older records are archived in
/// `archives`: an old checkpoint that ends inside an archived segment is
/// proven with the nodes its archive gives.
pub fn consistency_with_archives(
    dir: &Path,
    archives: Option<&Path>,
    old_note: &str,
    verifier: &Verifier,
) -> Result<Consistency, ConsistencyError> {
    let old = Checkpoint::open(old_note, verifier).map_err(ConsistencyError::OldCheckpoint)?;
    let store = Store::open_read_only(dir)?;
    let _snapshot = store.snapshot()?;
    let latest = store
        .latest_checkpoint()?
        .ok_or(ConsistencyError::NoCheckpoint)?;
    let new = Checkpoint::open(&latest.note, verifier).map_err(ConsistencyError::NewCheckpoint)?;
    if old.size > new.size {
        return Err(ConsistencyError::Shrunk {
            old: old.size,
            new: new.size,
        });
    }
    let not_extension = |reason| ConsistencyError::NotExtension {
        old: old.size,
        new: new.size,
        reason,
    };
    let archived_end = store.archived_end()?;
    let inside_archives =
        old.size < archived_end && !old.size.is_multiple_of(super::lookup::SEGMENT);
    let proof = match archives {
        Some(archives) if inside_archives => {
            let tree = archive::ArchivedTree::new(&store, archives)?;
            merkle::consistency_proof(&tree, old.size, new.size)?
        }
        None if inside_archives => return Err(ConsistencyError::Archived { archived_end }),
        _ => merkle::consistency_proof(&store, old.size, new.size)?,
    }
    .map_err(not_extension)?;
    merkle::verify_consistency(old.size, &old.root, new.size, &new.root, &proof)
        .map_err(not_extension)?;
    Ok(Consistency {
        old,
        new,
        new_note: latest.note,
        proof,
    })
}

/// An archive not under the name of the records it holds: proofs, backups
/// and archive runs look for a segment's file by its name, and would miss
/// it (or, for a copy beside, take the wrong one for damaged).
fn misnamed(path: &Path, manifest: &archive::Manifest, expected: u64) -> Option<Problem> {
    let name = archive::file_name(manifest.first, manifest.end);
    (path.file_name() != Some(std::ffi::OsStr::new(&name))).then(|| Problem {
        kind: ProblemKind::ArchiveDamaged,
        index: expected,
        message: format!(
            "{} holds records {} to {} but is not named {name}, where proofs, backups and archive \
             runs look for them: rename it, or remove it if it is a copy",
            path.display(),
            manifest.first,
            manifest.end.saturating_sub(1)
        ),
    })
}

/// Record `expected` is not where the next, `next`, is.
fn missing_record(expected: u64, next: impl std::fmt::Display) -> Problem {
    Problem {
        kind: ProblemKind::MissingRecord,
        index: expected,
        message: format!(
            "record {expected} is missing (the next record is {next}): it was deleted"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange_log::note::SigningKey;
    use crate::exchange_log::store::DATABASE_FILE;
    use rusqlite::{Connection, params};

    const ORIGIN: &str = "govbridge.test/gw-verify";

    /// A log of `calls` calls, each a decision and an outcome, with a
    /// checkpoint after every `every` calls (and none after the rest).
    struct TestLog {
        dir: tempfile::TempDir,
        key: SigningKey,
        store: Store,
        frontier: merkle::Frontier,
    }

    fn record(call: u64, phase: Phase, decision_index: u64) -> ExchangeRecord {
        ExchangeRecord {
            version: 1,
            phase: phase.into(),
            request_id: format!("req-{call}"),
            node_id: "gw-verify".into(),
            caller: "SN/COM/CBAO/kyc".into(),
            provider: "SN/GOV/ANSD/civil-registry".into(),
            method: "/govbridge.civilregistry.v1.CivilRegistry/GetPerson".into(),
            purpose: "kyc".into(),
            subject: if phase == Phase::Outcome {
                format!("1{call:012}")
            } else {
                String::new()
            },
            allowed: true,
            decision_index,
            grpc_status: 0,
            received_us: 1_700_000_000_000_000 + i64::try_from(call).unwrap(),
            completed_us: if phase == Phase::Outcome {
                1_700_000_000_100_000
            } else {
                0
            },
            ..ExchangeRecord::default()
        }
    }

    impl TestLog {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), ORIGIN).unwrap();
            Self {
                dir,
                key: SigningKey::generate(ORIGIN).unwrap(),
                store,
                frontier: merkle::Frontier::default(),
            }
        }

        fn with_calls(calls: u64, every: u64) -> Self {
            let mut log = Self::new();
            log.calls(0..calls, every);
            log
        }

        fn calls(&mut self, calls: std::ops::Range<u64>, every: u64) {
            for call in calls {
                let decision = self.frontier.size();
                let records = [
                    record(call, Phase::Decision, 0),
                    record(call, Phase::Outcome, decision),
                ];
                self.append(&records, (call + 1) % every == 0);
            }
        }

        fn append(&mut self, records: &[ExchangeRecord], checkpoint: bool) {
            let refs: Vec<&ExchangeRecord> = records.iter().collect();
            let signing = checkpoint.then_some((ORIGIN, &self.key));
            self.store
                .append(&mut self.frontier, &refs, signing)
                .unwrap();
        }

        /// Calls `calls`, `per_commit` of them in each commit: for logs
        /// of more than a segment.
        fn many_calls(&mut self, calls: std::ops::Range<u64>, per_commit: u64) {
            let mut records = Vec::new();
            for call in calls {
                let decision = self.frontier.size() + records.len() as u64;
                records.push(record(call, Phase::Decision, 0));
                records.push(record(call, Phase::Outcome, decision));
                if (call + 1) % per_commit == 0 {
                    self.append(&std::mem::take(&mut records), false);
                }
            }
            self.append(&records, true);
        }

        fn verify(&self) -> VerifyReport {
            verify_log(self.dir.path(), &self.key.verifier()).unwrap()
        }

        fn problem(&self) -> Problem {
            self.verify().problem.expect("damage goes unnoticed")
        }

        /// A second connection, as an operator with `sqlite3` has.
        fn tamper(&self, sql: &str, params: impl rusqlite::Params) {
            let connection = Connection::open(self.dir.path().join(DATABASE_FILE)).unwrap();
            connection.execute(sql, params).unwrap();
        }

        fn bytes(&self, index: u64) -> Vec<u8> {
            self.store.record(index).unwrap().unwrap().bytes
        }
    }

    /// The lookups of a sealed segment are derived from its records: one
    /// removed hides a record from the Data Tracker, one added invents
    /// one. Both are found, and the record named.
    #[test]
    fn edited_lookups_are_named() {
        let mut log = TestLog::new();
        log.many_calls(0..lookup::SEGMENT / 2 + 10, 512);
        // Reopened, the writer seals the complete segment at once.
        log.store = Store::open(log.dir.path(), ORIGIN).unwrap();
        assert_eq!(log.store.sealed_segments().unwrap(), 1);
        assert_eq!(log.verify().problem, None);

        let subject = lookup::key(lookup::Kind::Subject, &record(5, Phase::Outcome, 0).subject);
        log.tamper(
            "DELETE FROM lookups WHERE segment = 0 AND key = ?1 AND idx = 11",
            [subject],
        );
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::LookupEdited, 11)
        );
        assert!(problem.message.contains("Data Tracker"), "{problem}");

        log.tamper(
            "INSERT INTO lookups (segment, key, idx) VALUES (0, ?1, 11)",
            [subject],
        );
        assert_eq!(log.verify().problem, None);
        log.tamper(
            "INSERT INTO lookups (segment, key, idx) VALUES (0, ?1, 12)",
            [subject],
        );
        assert_eq!(log.problem().kind, ProblemKind::LookupEdited);
    }

    #[test]
    fn a_sealed_end_edited_down_is_named_and_not_trusted() {
        let mut log = TestLog::new();
        log.many_calls(0..lookup::SEGMENT + 10, 512);
        log.store = Store::open(log.dir.path(), ORIGIN).unwrap();
        assert_eq!(log.store.sealed_segments().unwrap(), 2);
        assert_eq!(log.verify().problem, None);
        let subject = record(5, Phase::Outcome, 0).subject;

        // Said to be sealed up to 0: the runs of segments 0 and 1 would
        // never be read, nor checked.
        log.tamper("UPDATE meta SET value = '0' WHERE key = 'sealed_end'", []);
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::LookupEdited, 0)
        );
        assert!(problem.message.contains("Data Tracker"), "{problem}");
        // The gateway's reader still finds the record, in its run.
        assert!(
            log.store
                .find(lookup::Kind::Subject, &subject)
                .unwrap()
                .contains(&11)
        );

        // Nor is a sealed end inside a segment.
        let inside = (lookup::SEGMENT + 1).to_string();
        log.tamper(
            "UPDATE meta SET value = ?1 WHERE key = 'sealed_end'",
            [inside],
        );
        assert_eq!(log.problem().kind, ProblemKind::LookupEdited);
        // One segment behind the records is what a writer stopped while
        // sealing leaves.
        let behind = lookup::SEGMENT.to_string();
        log.tamper(
            "UPDATE meta SET value = ?1 WHERE key = 'sealed_end'",
            [behind],
        );
        assert_eq!(log.verify().problem, None);

        // Further behind with nothing stored past (a log an earlier
        // version wrote, not reopened since): said, not damage.
        log.tamper("DELETE FROM lookups", []);
        log.tamper("UPDATE meta SET value = '0' WHERE key = 'sealed_end'", []);
        let report = log.verify();
        assert_eq!(report.problem, None);
        assert!(
            report.notes[0].contains("not sealed yet"),
            "{:?}",
            report.notes
        );
    }

    #[test]
    fn a_row_below_zero_is_named() {
        let log = TestLog::with_calls(6, 2);
        log.tamper(
            "INSERT INTO records SELECT -1, phase, request_id, at_us, caller, provider, method, \
             purpose, subject, allowed, grpc_status, error_kind, concealed_until, record, leaf, \
             more_subjects FROM records WHERE idx = 0",
            [],
        );
        let problem = log.problem();
        assert_eq!(problem.kind, ProblemKind::ForeignRecord);
        assert!(problem.message.contains("index -1"), "{problem}");
    }

    /// A row copied far past the others is named at the gap it leaves,
    /// at once: not after walking every empty chunk before it (hours at
    /// 2^40, never at 2^50), nor as a column "of type Real" at `i64::MAX`.
    /// The writer refuses to open the log before it seals anything.
    #[test]
    fn a_row_far_past_the_end_is_named_at_once() {
        use rusqlite::OptionalExtension as _;
        for far in [1_i64 << 50, i64::MAX] {
            let log = TestLog::with_calls(6, 2);
            log.tamper(
                "INSERT INTO records SELECT ?1, phase, request_id, at_us, caller, provider, \
                 method, purpose, subject, allowed, grpc_status, error_kind, concealed_until, \
                 record, leaf, more_subjects FROM records WHERE idx = 0",
                [far],
            );
            let (dir, verifier) = (log.dir.path().to_owned(), log.key.verifier());
            let (done, report) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = done.send(verify_log(&dir, &verifier));
            });
            let problem = report
                .recv_timeout(std::time::Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("verify still walking towards {far}"))
                .unwrap()
                .problem
                .expect("damage goes unnoticed");
            assert_eq!(problem.kind, ProblemKind::MissingRecord, "{problem}");
            assert_eq!(problem.index, 12, "{problem}");

            let sealed = || -> Option<String> {
                Connection::open(log.dir.path().join(DATABASE_FILE))
                    .unwrap()
                    .query_row(
                        "SELECT value FROM meta WHERE key = 'sealed_end'",
                        [],
                        |row| row.get(0),
                    )
                    .optional()
                    .unwrap()
            };
            let before = sealed();
            let error = Store::open(log.dir.path(), ORIGIN).unwrap_err().to_string();
            assert!(error.contains("records are missing"), "{error}");
            assert_eq!(sealed(), before);
        }
    }

    #[test]
    fn an_intact_log_verifies() {
        let log = TestLog::with_calls(13, 4);
        let before = std::fs::read_dir(log.dir.path()).unwrap().count();
        let report = log.verify();
        // Nothing is made where it reads (a backup, a copy, someone
        // else's directory).
        assert_eq!(std::fs::read_dir(log.dir.path()).unwrap().count(), before);
        assert_eq!(report.problem, None);
        assert_eq!(report.records, 26);
        assert_eq!(report.checkpoints, Some(3));
        let latest = report.latest.unwrap();
        assert_eq!(latest.size, 24);
        assert_eq!(latest.root, merkle::root(&log.store, 24).unwrap());
    }

    #[test]
    fn a_verification_tells_how_far_it_has_gone() {
        let mut log = TestLog::new();
        log.many_calls(0..CHUNK / 2 + 10, 512);
        let all = CHUNK + 20;
        let mut told = Vec::new();
        let report = verify_watched(log.dir.path(), None, &log.key.verifier(), &mut |checked| {
            told.push(checked)
        })
        .unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(report.records, all);
        assert_eq!(
            told,
            [
                Checked {
                    records: CHUNK,
                    of: all
                },
                Checked {
                    records: all,
                    of: all
                },
            ]
        );
    }

    /// Beside a gateway, the records are read a chunk at a time: between
    /// two, the writer restarts its WAL. Beside an archive run (which
    /// holds the archive lock), one snapshot for all, and it cannot.
    #[test]
    fn a_writer_beside_a_verification_restarts_its_wal_between_chunks() {
        let mut log = TestLog::new();
        log.many_calls(0..CHUNK + 10, 512);
        let wal = log.dir.path().join(format!("{}-wal", store::DATABASE_FILE));
        let TestLog {
            dir,
            key,
            store,
            frontier,
        } = &mut log;
        // As a gateway does when it opens the log: it holds the writer's
        // lock, and makes the archive lock's file.
        let _gateway = super::super::lock_writer(dir.path()).unwrap();
        archive::create_lock_file(&dir.path().join(archive::LOCK_FILE), 0o640).unwrap();
        let late = record(1 << 20, Phase::Decision, 0);
        let mut verify = || {
            let mut sizes = Vec::new();
            let report = verify_watched(dir.path(), None, &key.verifier(), &mut |_| {
                store.append(frontier, &[&late], None).unwrap();
                store.restart_wal_above(0);
                sizes.push(std::fs::metadata(&wal).unwrap().len());
            })
            .unwrap();
            assert_eq!(report.problem, None);
            (sizes, report.notes)
        };
        let (beside_a_gateway, notes) = verify();
        assert!(
            beside_a_gateway.len() == 3 && beside_a_gateway.iter().all(|size| *size == 0),
            "{beside_a_gateway:?}"
        );
        assert!(notes.is_empty(), "{notes:?}");
        let _run = archive::lock(dir.path()).unwrap();
        let (beside_a_run, notes) = verify();
        assert!(
            beside_a_run.len() == 3 && beside_a_run.iter().all(|size| *size > 0),
            "{beside_a_run:?}"
        );
        // And says so.
        assert!(
            notes
                .iter()
                .any(|note| note.contains("read in one snapshot, since an archive run")),
            "{notes:?}"
        );
    }

    #[test]
    fn an_empty_log_verifies() {
        let log = TestLog::new();
        let report = log.verify();
        assert_eq!(
            (report.records, report.checkpoints, report.problem),
            (0, Some(0), None)
        );
    }

    #[test]
    fn an_altered_record_is_named() {
        let log = TestLog::with_calls(6, 2);
        let mut bytes = log.bytes(7);
        bytes[3] ^= 1;
        log.tamper(
            "UPDATE records SET record = ?1 WHERE idx = 7",
            params![bytes],
        );
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::RecordAltered, 7)
        );
        assert!(problem.message.contains("record 7"), "{problem}");
    }

    /// A log written before records carried their leaf (schema 2: every
    /// node stored, leaves among them) verifies as it is, and a record of
    /// it altered is named by its level-0 node; the gateway that opens it
    /// adds the column, and the records it appends then carry their leaf.
    #[test]
    fn a_log_written_without_leaves_verifies_and_gets_them() {
        let mut log = TestLog::with_calls(4, 2);
        log.tamper("ALTER TABLE records DROP COLUMN leaf", []);
        log.tamper(
            "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
            [],
        );
        for index in 0..8 {
            log.tamper(
                "INSERT INTO tree_nodes (pos, level, idx, hash) VALUES (?1, 0, ?2, ?3)",
                params![
                    i64::try_from(store::node_position(0, index)).unwrap(),
                    i64::try_from(index).unwrap(),
                    merkle::leaf_hash(&log.bytes(index)).as_slice()
                ],
            );
        }
        assert_eq!(log.verify().problem, None);
        let old = log.bytes(6);
        let mut altered = ExchangeRecord::decode(old.as_slice()).unwrap();
        altered.node_id = "gw-elsewhere".into();
        log.tamper(
            "UPDATE records SET record = ?1 WHERE idx = 6",
            params![altered.encode_to_vec()],
        );
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::RecordAltered, 6)
        );
        log.tamper("UPDATE records SET record = ?1 WHERE idx = 6", params![old]);

        log.store = Store::open(log.dir.path(), ORIGIN).unwrap();
        log.calls(4..8, 2);
        assert_eq!(log.verify().problem, None);
        let original = log.bytes(13);
        let mut bytes = original.clone();
        bytes[3] ^= 1;
        log.tamper(
            "UPDATE records SET record = ?1 WHERE idx = 13",
            params![bytes],
        );
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::RecordAltered, 13)
        );
        // A new record's leaf taken away is named too.
        log.tamper(
            "UPDATE records SET record = ?1 WHERE idx = 13",
            params![original],
        );
        log.tamper("UPDATE records SET leaf = NULL WHERE idx = 12", []);
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::RecordAltered, 12)
        );
        assert!(problem.message.contains("no leaf hash"), "{problem}");
    }

    /// A writer does not go on from a log cut short below its latest
    /// checkpoint, or edited under it: it would reuse indexes and sign
    /// another history.
    #[test]
    fn a_writer_does_not_go_on_from_a_log_cut_short_or_edited() {
        let log = TestLog::with_calls(6, 2);
        let reopened = || Store::open(log.dir.path(), ORIGIN).unwrap().frontier();
        assert_eq!(reopened().unwrap().size(), 12);

        let original = log.bytes(5);
        let mut altered = ExchangeRecord::decode(original.as_slice()).unwrap();
        altered.node_id = "gw-elsewhere".into();
        let bytes = altered.encode_to_vec();
        log.tamper(
            "UPDATE records SET record = ?1, leaf = ?2 WHERE idx = 5",
            params![bytes, merkle::leaf_hash(&bytes).as_slice()],
        );
        let edited = reopened().unwrap_err().to_string();
        assert!(
            edited.contains("not those its latest checkpoint signed"),
            "{edited}"
        );
        log.tamper(
            "UPDATE records SET record = ?1, leaf = ?2 WHERE idx = 5",
            params![original, merkle::leaf_hash(&original).as_slice()],
        );
        assert!(reopened().is_ok());

        log.tamper("DELETE FROM records WHERE idx >= 10", []);
        let cut = reopened().unwrap_err().to_string();
        assert!(cut.contains("latest checkpoint covers 12"), "{cut}");
    }

    /// A record altered with its leaf: the checkpoint over it names the
    /// records it covers (a tree this small stores no node over them).
    #[test]
    fn an_altered_record_is_caught_by_its_checkpoint() {
        let log = TestLog::with_calls(6, 2);
        let mut altered = ExchangeRecord::decode(log.bytes(7).as_slice()).unwrap();
        altered.node_id = "gw-elsewhere".into();
        let bytes = altered.encode_to_vec();
        log.tamper(
            "UPDATE records SET record = ?1, leaf = ?2 WHERE idx = 7",
            params![bytes, merkle::leaf_hash(&bytes).as_slice()],
        );
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::CheckpointRoot, 4)
        );
        assert!(problem.message.contains("records 4 to 7"), "{problem}");
    }

    /// A record altered with its leaf, above 256 records: the stored node
    /// over its block names the block, checkpoint or not.
    #[test]
    fn an_altered_record_is_caught_by_the_node_over_it() {
        let mut log = TestLog::new();
        log.many_calls(0..200, 50);
        let mut altered = ExchangeRecord::decode(log.bytes(100).as_slice()).unwrap();
        altered.node_id = "gw-elsewhere".into();
        let bytes = altered.encode_to_vec();
        log.tamper("DELETE FROM checkpoints", []);
        log.tamper(
            "UPDATE records SET record = ?1, leaf = ?2 WHERE idx = 100",
            params![bytes, merkle::leaf_hash(&bytes).as_slice()],
        );
        let problem = log.problem();
        assert_eq!((problem.kind, problem.index), (ProblemKind::TreeNode, 0));
        assert!(problem.message.contains("records 0 to 255"), "{problem}");
    }

    #[test]
    fn a_record_replaced_by_another_valid_one_is_named() {
        let log = TestLog::with_calls(6, 2);
        let mut forged = record(3, Phase::Outcome, 6);
        forged.allowed = false;
        log.tamper(
            "UPDATE records SET record = ?1 WHERE idx = 7",
            params![forged.encode_to_vec()],
        );
        assert_eq!(log.problem().index, 7);
    }

    #[test]
    fn a_deleted_record_is_named() {
        let log = TestLog::with_calls(6, 2);
        log.tamper("DELETE FROM records WHERE idx = 4", []);
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::MissingRecord, 4)
        );
        assert!(problem.message.contains("record 4"), "{problem}");
    }

    #[test]
    fn swapped_records_are_named_at_the_first() {
        let log = TestLog::with_calls(6, 2);
        let (two, five) = (log.bytes(2), log.bytes(5));
        log.tamper(
            "UPDATE records SET record = ?1 WHERE idx = 2",
            params![five],
        );
        log.tamper("UPDATE records SET record = ?1 WHERE idx = 5", params![two]);
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::RecordAltered, 2)
        );
    }

    #[test]
    fn an_edited_column_is_named() {
        for (sql, column) in [
            (
                "UPDATE records SET caller = 'SN/GOV/DGID/tax' WHERE idx = 5",
                "caller",
            ),
            ("UPDATE records SET allowed = 0 WHERE idx = 5", "allowed"),
            ("UPDATE records SET subject = NULL WHERE idx = 5", "subject"),
            (
                "UPDATE records SET grpc_status = 7 WHERE idx = 5",
                "grpc_status",
            ),
            (
                "UPDATE records SET at_us = at_us + 1 WHERE idx = 5",
                "at_us",
            ),
        ] {
            let log = TestLog::with_calls(6, 2);
            log.tamper(sql, []);
            let problem = log.problem();
            assert_eq!(
                (problem.kind, problem.index),
                (ProblemKind::ColumnEdited, 5),
                "{sql}"
            );
            assert!(problem.message.contains(column), "{problem}");
        }
    }

    #[test]
    fn an_edited_tree_node_is_named() {
        // 1,024 records: nodes (8, 0) to (8, 3), (9, 0), (9, 1), (10, 0).
        let mut log = TestLog::new();
        log.many_calls(0..512, 64);
        log.tamper(
            "UPDATE tree_nodes SET hash = ?1 WHERE level = 8 AND idx = 1",
            params![[9_u8; 32].as_slice()],
        );
        let problem = log.problem();
        assert_eq!((problem.kind, problem.index), (ProblemKind::TreeNode, 256));
    }

    /// Proofs read a node by its position: one moved is missing.
    #[test]
    fn a_tree_node_moved_is_named() {
        let mut log = TestLog::new();
        log.many_calls(0..512, 64);
        log.tamper(
            "UPDATE tree_nodes SET pos = pos + 1000000000 WHERE level = 8 AND idx = 0",
            [],
        );
        let problem = log.problem();
        assert_eq!((problem.kind, problem.index), (ProblemKind::TreeNode, 0));
    }

    /// Below level 8 nothing is stored: a node there is hashed from its
    /// records, and a proof that needs it still checks.
    #[test]
    fn nodes_below_the_stored_level_are_hashed_from_their_records() {
        let mut log = TestLog::new();
        log.many_calls(0..300, 7);
        assert!(log.store.level(store::STORED_LEVEL - 1).unwrap().is_empty());
        assert_eq!(log.store.level(8).unwrap().len(), 2);
        assert_eq!(log.store.level(9).unwrap().len(), 1);
        let mut tree = MemoryTree::default();
        for index in 0..600 {
            tree.push(merkle::leaf_hash(&log.bytes(index)));
        }
        for (level, index) in [(0, 599), (3, 70), (7, 3), (8, 1), (9, 0)] {
            assert_eq!(
                merkle::Nodes::node(&log.store, level, index).unwrap(),
                tree.level(level)[index as usize],
                "({level}, {index})"
            );
        }
        let proof = merkle::inclusion_proof(&log.store, 517, 600)
            .unwrap()
            .unwrap();
        merkle::verify_inclusion(
            &merkle::leaf_hash(&log.bytes(517)),
            517,
            600,
            &proof,
            &tree.root(),
        )
        .unwrap();
        // A node over a record that is gone cannot be hashed.
        log.tamper("DELETE FROM records WHERE idx = 520", []);
        let error = merkle::Nodes::node(&log.store, 3, 65).unwrap_err();
        assert!(
            error.to_string().contains("record 520 is missing"),
            "{error}"
        );
        assert!(
            verify_log(log.dir.path(), &log.key.verifier())
                .unwrap()
                .problem
                .is_some()
        );
    }

    #[test]
    fn an_edited_checkpoint_is_named() {
        let log = TestLog::with_calls(6, 2);
        // The checkpoint of size 8 now claims 9 records.
        log.tamper(
            "UPDATE checkpoints SET note = replace(note, char(10) || '8' || char(10), \
             char(10) || '9' || char(10)) WHERE tree_size = 8",
            [],
        );
        let problem = log.problem();
        assert_eq!(problem.kind, ProblemKind::CheckpointInvalid);
        assert_eq!(problem.index, 4);
        assert!(
            problem.message.contains("size 8") && problem.message.contains("records 4 to 7"),
            "{problem}"
        );
    }

    #[test]
    fn a_log_rewritten_with_its_tree_is_caught_by_the_checkpoints() {
        let log = TestLog::with_calls(6, 2);
        // Rewrite record 5 with its leaf (a tree this small stores no
        // node: its nodes are hashed from the records): only the signed
        // checkpoints still know the truth.
        let mut forged = record(2, Phase::Outcome, 4);
        forged.grpc_status = 7;
        let bytes = forged.encode_to_vec();
        log.tamper(
            "UPDATE records SET record = ?1, grpc_status = 7, leaf = ?2 WHERE idx = 5",
            params![bytes, merkle::leaf_hash(&bytes).as_slice()],
        );
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::CheckpointRoot, 4)
        );
        assert!(problem.message.contains("records 4 to 7"), "{problem}");
    }

    #[test]
    fn a_checkpoint_beyond_the_records_is_named() {
        let log = TestLog::with_calls(6, 3);
        // The last records go, with every node that covers them.
        log.tamper("DELETE FROM records WHERE idx >= 9", []);
        log.tamper("DELETE FROM tree_nodes WHERE ((idx + 1) << level) > 9", []);
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::CheckpointBeyondLog, 9)
        );
        assert!(problem.message.contains("size 12"), "{problem}");
    }

    #[test]
    fn deleted_last_records_under_a_remaining_node_are_named() {
        // 512 records, the last checkpoint at 256: node (8, 1) covers the
        // records deleted.
        let mut log = TestLog::new();
        log.many_calls(0..128, 8);
        log.many_calls(128..256, 16);
        log.tamper("DELETE FROM checkpoints WHERE tree_size > 256", []);
        log.tamper("DELETE FROM records WHERE idx >= 500", []);
        let problem = log.problem();
        assert_eq!(
            (problem.kind, problem.index),
            (ProblemKind::MissingRecord, 500)
        );
    }

    #[test]
    fn an_outcome_must_follow_its_decision() {
        let mut log = TestLog::with_calls(2, 1);
        // The gateway never writes this: an outcome naming another call's
        // decision.
        log.append(&[record(9, Phase::Outcome, 2)], true);
        let problem = log.problem();
        assert_eq!((problem.kind, problem.index), (ProblemKind::BrokenLink, 4));
    }

    #[test]
    fn another_key_proves_nothing() {
        let log = TestLog::with_calls(2, 1);
        let other = SigningKey::generate(ORIGIN).unwrap().verifier();
        let report = verify_log(log.dir.path(), &other).unwrap();
        assert_eq!(
            report.problem.map(|problem| problem.kind),
            Some(ProblemKind::CheckpointInvalid)
        );
    }

    #[test]
    fn bundles_prove_records_offline() {
        let log = TestLog::with_calls(5, 5);
        let verifier = log.key.verifier();
        let bundles = prove(log.dir.path(), &RecordKey::RequestId("req-3".into())).unwrap();
        assert_eq!(bundles.len(), 2);
        let text = bundles_to_json(&bundles);
        assert!(text.contains(BUNDLE_FORMAT));
        let parsed = ProofBundle::parse_all(&text).unwrap();
        assert_eq!(parsed, bundles);
        for bundle in &parsed {
            let record = check_bundle(bundle, &verifier).unwrap();
            assert_eq!(record.request_id, "req-3");
        }
        let one = prove(log.dir.path(), &RecordKey::Index(0)).unwrap();
        let parsed = ProofBundle::parse_all(&bundles_to_json(&one)).unwrap();
        assert_eq!(
            check_bundle(&parsed[0], &verifier).unwrap().request_id,
            "req-0"
        );

        let mut altered = bundles[0].clone();
        altered.record[5] ^= 1;
        assert!(matches!(
            check_bundle(&altered, &verifier),
            Err(BundleError::NotIncluded { index: 6, .. })
        ));
        let mut moved = bundles[0].clone();
        moved.index = 5;
        assert!(check_bundle(&moved, &verifier).is_err());
        let other = SigningKey::generate(ORIGIN).unwrap().verifier();
        assert!(matches!(
            check_bundle(&bundles[0], &other),
            Err(BundleError::Checkpoint(_))
        ));
    }

    #[test]
    fn records_newer_than_the_checkpoint_cannot_be_proved_yet() {
        let log = TestLog::with_calls(5, 2);
        let error = prove(log.dir.path(), &RecordKey::Index(8)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("exchange_log.checkpoint_interval"),
            "{error}"
        );
        assert!(matches!(
            prove(log.dir.path(), &RecordKey::Index(99)),
            Err(ProveError::NoSuchIndex {
                index: 99,
                size: 10
            })
        ));
        assert!(matches!(
            prove(log.dir.path(), &RecordKey::RequestId("nope".into())),
            Err(ProveError::NoSuchRequest(_))
        ));
    }

    #[test]
    fn the_log_extends_an_old_checkpoint() {
        let mut log = TestLog::with_calls(3, 1);
        let old = log.store.latest_checkpoint().unwrap().unwrap().note;
        log.calls(3..11, 1);
        let verifier = log.key.verifier();
        let proved = consistency(log.dir.path(), &old, &verifier).unwrap();
        assert_eq!((proved.old.size, proved.new.size), (6, 22));
        assert!(!proved.proof.is_empty());
        // The same checkpoint is consistent with itself.
        let same = consistency(log.dir.path(), &proved.new_note, &verifier).unwrap();
        assert!(same.proof.is_empty());

        // A checkpoint of another history, under the same key, is not.
        let mut fork = TestLog::new();
        fork.key = SigningKey::from_pem(ORIGIN, &log.key.to_pem()).unwrap();
        fork.calls(100..103, 1);
        let forked = fork.store.latest_checkpoint().unwrap().unwrap().note;
        assert!(matches!(
            consistency(log.dir.path(), &forked, &verifier),
            Err(ConsistencyError::NotExtension { .. })
        ));
        // A newer checkpoint than the log has: truncated.
        fork.calls(103..200, 1);
        let longer = fork.store.latest_checkpoint().unwrap().unwrap().note;
        assert!(matches!(
            consistency(log.dir.path(), &longer, &verifier),
            Err(ConsistencyError::Shrunk { old: 200, new: 22 })
        ));
        let other = SigningKey::generate(ORIGIN).unwrap();
        let unsigned = Checkpoint {
            origin: ORIGIN.into(),
            size: 2,
            root: [0; 32],
        }
        .sign(&other);
        assert!(matches!(
            consistency(log.dir.path(), &unsigned, &verifier),
            Err(ConsistencyError::OldCheckpoint(_))
        ));
    }
}
