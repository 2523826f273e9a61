//! Archives: complete segments of the log moved out of the hot store into
//! files, each verifiable offline with nothing but the log's public key.
//!
//! An archive holds the records of one segment (65,536 records, a complete
//! subtree of the Merkle tree), gzip-compressed JSON lines that `zcat` and
//! `jq` read:
//!
//! ```text
//! {"format":"govbridge-exchange-log-archive/1","origin":...,"first":0,"end":65536,
//!  "first_at_us":...,"last_at_us":...,"records_sha256":"...","subtree_root":"...",
//!  "checkpoint":"<signed note>","proof":["<base64>",...]}
//! {"idx":0,"record":"<base64 of the encoded ExchangeRecord>"}
//! ...
//! ```
//!
//! The first line is the manifest: the SHA-256 of the record lines that
//! follow, the root of the subtree they form, and a signed checkpoint with
//! the proof that this subtree is in the tree it signs. So an archive
//! proves itself: [`check`] recomputes the subtree from the records and
//! climbs the proof to the checkpoint's root. The tree itself is never
//! rewritten: the hot store keeps every node above the segments, so proofs
//! of archived records verify against checkpoints old and new.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek as _, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::Compression;
use flate2::bufread::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::lookup::SEGMENT;
use super::merkle::{self, Hash, MemoryTree};
use super::note::{Checkpoint, Verifier};
use super::store::{Store, StoreError, StoredCheckpoint, StoredRecord};
use super::{ExchangeRecord, Phase};

/// What the first line of an archive says it is.
pub const FORMAT: &str = "govbridge-exchange-log-archive/1";

/// The height of a segment's subtree.
pub const SEGMENT_LEVEL: u32 = SEGMENT.trailing_zeros();

/// The first line of an archive. A field this version does not know is
/// refused: no check covers it, and a reader of the file would take it
/// for the log's word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// The log's origin.
    pub origin: String,
    /// The records `[first, end)`.
    pub first: u64,
    pub end: u64,
    /// The earliest and latest `at_us` of its records.
    pub first_at_us: i64,
    pub last_at_us: i64,
    /// SHA-256 (hex) of the record lines as stored, newlines included.
    pub records_sha256: String,
    /// The root (base64) of the subtree the records form.
    pub subtree_root: String,
    /// A signed checkpoint of a tree that holds the records.
    pub checkpoint: String,
    /// The subtree's inclusion proof in that tree (base64, bottom up).
    pub proof: Vec<String>,
}

/// What a manifest of any version says first.
#[derive(Deserialize)]
struct Format {
    format: String,
}

/// The longest line an archive holds: a record is a few kilobytes, the
/// manifest a checkpoint, its cosignatures and a proof. A longer one is
/// damage, refused before it is held whole (gzip shrinks a run of one
/// byte a thousandfold).
const MAX_LINE: u64 = 1 << 20;

/// The header of every archive's gzip stream, as [`write_file`] makes it:
/// no name, no time, no extra field, the system unknown. Nothing of it is
/// in the records' hash: a byte of it changed is found by comparison.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// An archive's lines, as they are read.
type Lines = BufReader<GzDecoder<BufReader<File>>>;

/// Opens the archive at `path` for reading its lines, once its gzip
/// header is found to be [`GZIP_HEADER`]. The lines end with the gzip
/// stream; [`ended`] then says whether anything follows it.
fn open_lines(path: &Path) -> Result<Lines, ArchiveError> {
    let mut file = File::open(path).map_err(|e| error(path, format!("cannot open: {e}")))?;
    let mut header = [0; GZIP_HEADER.len()];
    let read = file
        .read_exact(&mut header)
        .and_then(|()| file.rewind())
        .map_err(|e| error(path, format!("not a readable archive: {e}")));
    if read.is_ok() && header != GZIP_HEADER {
        return Err(error(
            path,
            "its gzip header is not the one archives are written with: the file was edited or \
             compressed again",
        ));
    }
    read?;
    Ok(BufReader::new(GzDecoder::new(BufReader::new(file))))
}

/// Checks that nothing follows the gzip stream of the archive at `path`,
/// whose lines `lines` has read to their end: another member (records
/// `zcat` would show, or none) is something appended.
fn ended(lines: Lines, path: &Path) -> Result<(), ArchiveError> {
    let mut rest = lines.into_inner().into_inner();
    let after = rest
        .fill_buf()
        .map_err(|e| error(path, format!("not a readable archive: {e}")))?;
    if !after.is_empty() {
        return Err(error(
            path,
            "holds bytes after the end of its compressed records: something was appended to the \
             archive",
        ));
    }
    Ok(())
}

/// The next line of the archive at `path` into `line`, newline included;
/// 0 at its end.
fn read_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    path: &Path,
) -> Result<usize, ArchiveError> {
    line.clear();
    let read = reader
        .by_ref()
        .take(MAX_LINE)
        .read_until(b'\n', line)
        .map_err(|e| error(path, format!("not a readable archive: {e}")))?;
    if read as u64 == MAX_LINE && line.last() != Some(&b'\n') {
        return Err(error(
            path,
            format!("holds a line longer than {MAX_LINE} bytes: not an archive of this log"),
        ));
    }
    Ok(read)
}

/// One record line.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    idx: u64,
    record: String,
}

/// The name of the archive of records `[first, end)`.
pub fn file_name(first: u64, end: u64) -> String {
    format!("records-{first:012}-{end:012}.jsonl.gz")
}

/// What is wrong with an archive, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ArchiveError {
    pub path: PathBuf,
    pub message: String,
}

fn error(path: &Path, message: impl Into<String>) -> ArchiveError {
    ArchiveError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Writes the archive of `records` (a whole segment, in order) into `dir`,
/// atomically: a temporary file, synced, renamed, and the directory
/// synced. `proof` proves the segment's subtree in `checkpoint`'s tree.
pub fn write(
    dir: &Path,
    origin: &str,
    records: &[StoredRecord],
    checkpoint: &StoredCheckpoint,
    proof: &[Hash],
) -> Result<PathBuf, ArchiveError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(error(dir, "no records to archive"));
    };
    let (first, end) = (first.index, last.index + 1);
    let path = dir.join(file_name(first, end));
    let mut tree = MemoryTree::default();
    // The manifest, first in the file, holds the hash of the lines after
    // it: they are made twice (hashed here, written below) rather than
    // held, some 55 MB a segment.
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut line = Vec::with_capacity(1024);
    let (mut first_at_us, mut last_at_us) = (i64::MAX, i64::MIN);
    for (offset, stored) in records.iter().enumerate() {
        if stored.index != first + offset as u64 {
            return Err(error(
                &path,
                format!("record {} is missing", first + offset as u64),
            ));
        }
        let record = stored.decode().map_err(|decode| {
            error(
                &path,
                format!("record {} does not decode: {decode}", stored.index),
            )
        })?;
        let at_us = at_us(&record);
        first_at_us = first_at_us.min(at_us);
        last_at_us = last_at_us.max(at_us);
        tree.push(merkle::leaf_hash(&stored.bytes));
        line_of(stored, &mut line);
        digest.update(&line);
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        origin: origin.to_owned(),
        first,
        end,
        first_at_us,
        last_at_us,
        records_sha256: hex(digest.finish().as_ref()),
        subtree_root: BASE64.encode(tree.root()),
        checkpoint: checkpoint.note.clone(),
        proof: proof.iter().map(|hash| BASE64.encode(hash)).collect(),
    };
    // Of this process: two runs (the gateway's, a command's) never write
    // the same temporary file.
    let temporary = dir.join(temporary_name(first, end));
    if let Err(failed) = write_file(&temporary, &manifest, records) {
        // A full disk keeps no half-written file.
        let _ = std::fs::remove_file(&temporary);
        return Err(error(&temporary, failed.to_string()));
    }
    std::fs::rename(&temporary, &path)
        .map_err(|e| error(&temporary, format!("cannot rename: {e}")))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| error(dir, format!("cannot sync the directory: {e}")))?;
    Ok(path)
}

/// The temporary name of the archive of records `[first, end)` while this
/// process writes it.
fn temporary_name(first: u64, end: u64) -> String {
    format!(".{}.{}.tmp", file_name(first, end), std::process::id())
}

/// Removes the temporary files that runs killed while writing left in
/// `dir` (a segment's worth of records each): those of processes gone.
/// A live run's, the gateway's or a command's, stays.
fn remove_abandoned(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(".records-")
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|rest| rest.rsplit_once('.'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "removed what an archive run cut short left")
                }
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "cannot remove what an archive run cut short left")
                }
            }
        }
    }
}

/// Record `stored`'s line, newline included, into `line`.
fn line_of(stored: &StoredRecord, line: &mut Vec<u8>) {
    line.clear();
    line.extend_from_slice(b"{\"idx\":");
    line.extend_from_slice(stored.index.to_string().as_bytes());
    line.extend_from_slice(b",\"record\":\"");
    line.extend_from_slice(BASE64.encode(&stored.bytes).as_bytes());
    line.extend_from_slice(b"\"}\n");
}

/// The manifest's line and the record lines, compressed, synced.
fn write_file(path: &Path, manifest: &Manifest, records: &[StoredRecord]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Private, as the store is: records name who asked what about whom.
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let mut gzip = GzEncoder::new(BufWriter::new(file), Compression::default());
    serde_json::to_writer(&mut gzip, manifest)?;
    gzip.write_all(b"\n")?;
    let mut line = Vec::with_capacity(1024);
    for stored in records {
        line_of(stored, &mut line);
        gzip.write_all(&line)?;
    }
    let file = gzip
        .finish()?
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?;
    file.sync_all()
}

/// An archive found intact.
#[derive(Debug, Clone)]
pub struct Checked {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// The checkpoint the manifest carries, opened.
    pub checkpoint: Checkpoint,
    /// The leaves of its records, in order.
    pub leaves: Vec<Hash>,
}

/// Checks the archive at `path` with nothing but the log's key: its
/// records against the manifest's hash and subtree root, the subtree
/// against the signed checkpoint. The first damage is named.
pub fn check(path: &Path, verifier: &Verifier) -> Result<Checked, ArchiveError> {
    let mut reader = open_lines(path)?;
    let mut line = Vec::new();
    read_line(&mut reader, &mut line, path)?;
    // The format first: another version's manifest may have other fields.
    let format = serde_json::from_slice::<Format>(&line)
        .map_err(|e| error(path, format!("the manifest (line 1) is not valid: {e}")))?
        .format;
    if format != FORMAT {
        return Err(error(
            path,
            format!("format `{format}`, this version reads `{FORMAT}`"),
        ));
    }
    let manifest: Manifest = serde_json::from_slice(&line)
        .map_err(|e| error(path, format!("the manifest (line 1) is not valid: {e}")))?;
    // As written (`write_file`): no hash covers the line, so none of its
    // bytes may differ from what its fields give.
    let written = serde_json::to_vec(&manifest).map(|mut written| {
        written.push(b'\n');
        written
    });
    if written.ok().as_deref() != Some(line.as_slice()) {
        return Err(error(
            path,
            "the manifest (line 1) is not as archives write it: the archive was edited",
        ));
    }
    let checkpoint = Checkpoint::open(&manifest.checkpoint, verifier).map_err(|e| {
        error(
            path,
            format!("the manifest's checkpoint does not verify with the log's key: {e}"),
        )
    })?;
    if checkpoint.origin != manifest.origin {
        return Err(error(
            path,
            format!(
                "the checkpoint is of log `{}`, the manifest says `{}`",
                checkpoint.origin, manifest.origin
            ),
        ));
    }
    // Before anything is read or allocated: an archive is one segment.
    let count = manifest.end.saturating_sub(manifest.first);
    if count != SEGMENT || !manifest.first.is_multiple_of(SEGMENT) {
        return Err(error(
            path,
            format!(
                "records {} to {} are not a segment of the log ({SEGMENT} records from a \
                 multiple of {SEGMENT})",
                manifest.first, manifest.end
            ),
        ));
    }
    if manifest.end > checkpoint.size {
        return Err(error(
            path,
            format!(
                "its checkpoint covers {} records, not its records {} to {}",
                checkpoint.size,
                manifest.first,
                manifest.end - 1
            ),
        ));
    }
    let mut leaves = Vec::with_capacity(SEGMENT as usize);
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut tree = MemoryTree::default();
    let (mut first_at_us, mut last_at_us) = (i64::MAX, i64::MIN);
    loop {
        if read_line(&mut reader, &mut line, path)? == 0 {
            break;
        }
        digest.update(&line);
        if leaves.len() as u64 == count {
            return Err(error(
                path,
                format!(
                    "holds more than the {count} records the manifest says (records {} to {}): \
                     records were added",
                    manifest.first,
                    manifest.end - 1
                ),
            ));
        }
        let expected = manifest.first + leaves.len() as u64;
        let parsed: Line = serde_json::from_slice(&line).map_err(|e| {
            error(
                path,
                format!("the line of record {expected} is not valid: {e}"),
            )
        })?;
        if parsed.idx != expected {
            return Err(error(
                path,
                format!(
                    "record {expected} is missing (the next line is record {})",
                    parsed.idx
                ),
            ));
        }
        let bytes = BASE64
            .decode(parsed.record.as_bytes())
            .map_err(|e| error(path, format!("record {expected} is not base64: {e}")))?;
        let Ok(record) = ExchangeRecord::decode(bytes.as_slice()) else {
            return Err(error(
                path,
                format!("record {expected} is not an ExchangeRecord"),
            ));
        };
        first_at_us = first_at_us.min(at_us(&record));
        last_at_us = last_at_us.max(at_us(&record));
        let leaf = merkle::leaf_hash(&bytes);
        tree.push(leaf);
        leaves.push(leaf);
    }
    ended(reader, path)?;
    if leaves.len() as u64 != count {
        return Err(error(
            path,
            format!(
                "holds {} records, the manifest says {count} (records {} to {}): records were \
                 dropped",
                leaves.len(),
                manifest.first,
                manifest.end - 1
            ),
        ));
    }
    if hex(digest.finish().as_ref()) != manifest.records_sha256 {
        return Err(error(
            path,
            "its records are not those the manifest's hash covers: the archive was edited",
        ));
    }
    // Not covered by the hash or the checkpoint, and what the hot store
    // takes as archived time: recomputed.
    if (first_at_us, last_at_us) != (manifest.first_at_us, manifest.last_at_us) {
        return Err(error(
            path,
            format!(
                "the manifest's times ({} to {} us) are not those of its records ({first_at_us} \
                 to {last_at_us} us): the archive was edited",
                manifest.first_at_us, manifest.last_at_us
            ),
        ));
    }
    let root = tree.root();
    if BASE64.encode(root) != manifest.subtree_root {
        return Err(error(
            path,
            "its records do not form the subtree the manifest names: the archive was edited",
        ));
    }
    let proof = manifest
        .proof
        .iter()
        .map(|hash| {
            BASE64
                .decode(hash.as_bytes())
                .ok()
                .and_then(|bytes| Hash::try_from(bytes).ok())
        })
        .collect::<Option<Vec<Hash>>>()
        .ok_or_else(|| error(path, "the manifest's proof holds a hash that is not one"))?;
    let level = count.trailing_zeros();
    merkle::verify_subtree_inclusion(
        &root,
        level,
        manifest.first >> level,
        checkpoint.size,
        &proof,
        &checkpoint.root,
    )
    .map_err(|e| {
        error(
            path,
            format!(
                "its records are not in the tree of the checkpoint it carries (size {}): {e}",
                checkpoint.size
            ),
        )
    })?;
    Ok(Checked {
        path: path.to_owned(),
        manifest,
        checkpoint,
        leaves,
    })
}

/// The archives in `dir`, in the order of their records.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| error(dir, format!("cannot read the directory: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("records-") && name.ends_with(".jsonl.gz"))
        })
        .collect();
    // Read, a FIFO would hang verify, backup and archive runs for good.
    if let Some(odd) = paths
        .iter()
        .find(|path| !std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file()))
    {
        return Err(error(
            odd,
            "is not a regular file (a FIFO, a device, a directory, or a link to nothing): \
             an archive is a file; move it out of the archives' directory",
        ));
    }
    // Zero-padded indexes: names sort as the records do.
    paths.sort();
    Ok(paths)
}

/// The archives in `dir` ([`list`]) that go with a snapshot of the store
/// taken after `before` was listed, in which records before
/// `archived_end` are archived: every one the snapshot needs, and of the
/// others those listed before it. Any other was written after the
/// snapshot, by an archive run beside: its records are in the snapshot,
/// the checkpoint it carries perhaps not (the store's latest when it was
/// written), so it is left for the next verification or backup. Returns
/// the archives and how many were left.
pub fn list_with(
    dir: &Path,
    before: &[PathBuf],
    archived_end: u64,
) -> Result<(Vec<PathBuf>, usize), ArchiveError> {
    let (taken, left): (Vec<PathBuf>, Vec<PathBuf>) = list(dir)?.into_iter().partition(|path| {
        before.contains(path) || first_of(path).is_none_or(|first| first < archived_end)
    });
    Ok((taken, left.len()))
}

/// The first record of the archive at `path`, as its name says.
fn first_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let (first, _) = name.strip_prefix("records-")?.split_once('-')?;
    first.parse().ok()
}

/// The records of the archive at `path`, read again (after [`check`]).
pub fn records(path: &Path) -> Result<Vec<StoredRecord>, ArchiveError> {
    let mut reader = open_lines(path)?;
    let mut line = Vec::new();
    // The manifest.
    read_line(&mut reader, &mut line, path)?;
    let mut records = Vec::new();
    for number in 2.. {
        if read_line(&mut reader, &mut line, path)? == 0 {
            break;
        }
        if records.len() as u64 == SEGMENT {
            return Err(error(
                path,
                format!("holds more than the {SEGMENT} records of a segment"),
            ));
        }
        let parsed: Line = serde_json::from_slice(&line)
            .map_err(|e| error(path, format!("line {number} is not valid: {e}")))?;
        let bytes = BASE64
            .decode(parsed.record.as_bytes())
            .map_err(|e| error(path, format!("record {} is not base64: {e}", parsed.idx)))?;
        records.push(StoredRecord {
            index: parsed.idx,
            bytes,
        });
    }
    ended(reader, path)?;
    Ok(records)
}

/// What an archive run did.
#[derive(Debug, Default)]
pub struct Archived {
    /// The files written (or found already written by a run cut short).
    pub files: Vec<PathBuf>,
    /// Records moved out of the hot store.
    pub records: u64,
    /// Why the run stopped before the cutoff, if it did.
    pub waiting: Option<String>,
}

/// Why an archive run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Another run (the gateway's archiver, or `govbridge audit archive`)
    /// holds the log's archive lock: it does the work.
    #[error("{}: another archive run of this log, or an `audit verify`, holds the lock; this run stops", .0.display())]
    Busy(PathBuf),
}

/// The file whose lock one archive run of a log holds at a time, in the
/// log's directory: two runs at once would take the same segment, and one
/// could remove the other's file in the making.
pub const LOCK_FILE: &str = "exchange-log.archive.lock";

/// Takes the archive lock of the log in `data`, or says who holds it. The
/// kernel drops the lock of a run that dies.
pub(super) fn lock(data: &Path) -> Result<File, RunError> {
    let path = data.join(LOCK_FILE);
    let file = create_lock_file(&path, 0o640)
        .map_err(|e| error(&path, format!("cannot open the archive lock: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::Busy(path)),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(error(&path, format!("cannot take the archive lock: {e}")).into())
        }
    }
}

/// Opens the lock file at `path`, made with `mode` if it is new. One made
/// by another user (an earlier run as root) is opened for reading: a lock
/// is taken on it all the same (on a local disk).
pub(super) fn create_lock_file(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(mode)
        .open(path)
        .or_else(|error| match error.kind() {
            std::io::ErrorKind::PermissionDenied => File::open(path),
            _ => Err(error),
        })
}

/// The lock file at `path`, if it is there; never made.
pub(super) fn open_lock_file(path: &Path) -> std::io::Result<File> {
    File::options()
        .write(true)
        .open(path)
        .or_else(|_| File::open(path))
}

/// Why [`lock_if_there`] took no lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotLocked {
    /// No gateway opened this log since it makes the file (a copy, or a
    /// gateway of an earlier version).
    NoFile,
    /// An archive run holds it.
    Busy,
    /// The file cannot be opened or locked by this user.
    Unusable,
}

/// The archive lock of the log in `data`, if its file is there (a gateway
/// makes it when it opens the log) and no run holds it; never creates
/// anything, for readers of a log that may not be theirs to write in.
pub(super) fn lock_if_there(data: &Path) -> Result<File, NotLocked> {
    let file = open_lock_file(&data.join(LOCK_FILE)).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            NotLocked::NoFile
        } else {
            NotLocked::Unusable
        }
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(NotLocked::Busy),
        Err(std::fs::TryLockError::Error(_)) => Err(NotLocked::Unusable),
    }
}

/// Moves every segment of the log in `data` whose records all happened
/// before `cutoff_us` into an archive file in `out`, oldest first: each
/// file is written atomically and read back intact before anything leaves
/// the hot store. Runs beside a serving gateway; a run cut short (a crash,
/// a full disk) resumes where it stopped. `each` hears of every file.
pub fn run(
    data: &Path,
    out: &Path,
    cutoff_us: i64,
    verifier: &Verifier,
    each: impl FnMut(&Path, u64),
) -> Result<Archived, RunError> {
    run_until(data, out, cutoff_us, verifier, each, || false)
}

/// With no gateway writing the log in `data`, no checkpointer copies the
/// WAL into the database: the run does, after each segment, or the WAL
/// would keep every page its removals touched (some 30 MB a segment of
/// a gateway's records) until it ends. Beside a gateway, the gateway's
/// checkpointer does it without holding its calls.
fn restart_wal_alone(store: &mut Store, data: &Path) {
    if !super::writer_running(data) {
        store.restart_wal_above(0);
    }
}

/// [`run`], stopping between two segments once `stop` says so.
pub fn run_until(
    data: &Path,
    out: &Path,
    cutoff_us: i64,
    verifier: &Verifier,
    mut each: impl FnMut(&Path, u64),
    stop: impl Fn() -> bool,
) -> Result<Archived, RunError> {
    let mut store = Store::open_for_archiving(data)?;
    let _lock = lock(data)?;
    // What a run cut short left between its file and its removal.
    store.remove_archived_rows()?;
    restart_wal_alone(&mut store, data);
    remove_abandoned(out);
    let origin = store.origin()?;
    let mut archived = Archived::default();
    while let Some((segment, latest_us)) = store.next_to_archive()? {
        if latest_us >= cutoff_us {
            break;
        }
        let (first, end) = (segment * SEGMENT, (segment + 1) * SEGMENT);
        let Some(checkpoint) = store.latest_checkpoint()?.filter(|c| c.size >= end) else {
            archived.waiting = Some(format!(
                "records {first} to {} wait for a checkpoint that covers them",
                end - 1
            ));
            break;
        };
        let path = out.join(file_name(first, end));
        let found = check(&path, verifier);
        let checked = match found {
            // Written by a run that stopped before removing the records.
            Ok(checked) if checked.manifest.first == first && checked.manifest.end == end => {
                // Its writer may have stopped before syncing its name.
                sync(&path, out)?;
                checked
            }
            // None there yet: written.
            Err(_) if path.symlink_metadata().is_err() => {
                let records = store.records_from(first, SEGMENT as usize)?;
                let proof = merkle::inclusion_proof(&store, first, checkpoint.size)?
                    .map_err(|e| error(&path, format!("cannot prove the segment: {e}")))?;
                let proof = &proof[SEGMENT_LEVEL as usize..];
                let written = write(out, &origin, &records, &checkpoint, proof)?;
                check(&written, verifier)?
            }
            // Another log's archive (a directory two gateways share), a
            // file renamed or damaged: never replaced, as it may be the
            // only copy of someone's records. These ones stay in the hot
            // store.
            found => {
                let why = match found {
                    Ok(checked) => format!(
                        "it holds records {} to {}",
                        checked.manifest.first,
                        checked.manifest.end.saturating_sub(1)
                    ),
                    Err(why) => why.to_string(),
                };
                return Err(error(
                    &path,
                    format!(
                        "is in the way of this log's archive of records {first} to {}, and is not \
                         it ({why}): move it elsewhere, then run again; nothing left the hot store",
                        end - 1
                    ),
                )
                .into());
            }
        };
        // The store's own node for the segment: what proofs of the hot
        // records climb through must be what the archive holds.
        let stored = merkle::Nodes::node(&store, SEGMENT_LEVEL, segment)?;
        if BASE64.encode(stored) != checked.manifest.subtree_root {
            return Err(error(
                &path,
                format!(
                    "its records are not those the hot store's tree holds for records {first} \
                     to {}: run `govbridge audit verify`",
                    end - 1
                ),
            )
            .into());
        }
        store.remove_archived(segment, checked.manifest.last_at_us)?;
        restart_wal_alone(&mut store, data);
        archived.records += SEGMENT;
        each(&path, SEGMENT);
        archived.files.push(path);
        if stop() {
            break;
        }
    }
    Ok(archived)
}

/// Syncs the archive at `path` and its directory `dir`: both on disk
/// before its records leave the hot store.
fn sync(path: &Path, dir: &Path) -> Result<(), ArchiveError> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| error(path, format!("cannot sync: {e}")))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| error(dir, format!("cannot sync the directory: {e}")))
}

/// How often a gateway with a retention looks for segments to archive.
pub const ARCHIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// The gateway's own archive runs (`exchange_log.retain`): one when the log
/// opens, then every [`ARCHIVE_EVERY`], beside the writer, on a thread and a
/// connection of their own.
#[derive(Debug)]
pub struct Archiver {
    pub data: PathBuf,
    pub out: PathBuf,
    pub retain: std::time::Duration,
    pub verifier: Verifier,
}

impl Archiver {
    /// Runs until `stopped` disconnects.
    pub fn run(self, stopped: &std::sync::mpsc::Receiver<()>) {
        use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
        // The gateway closing stops a long pass between two segments.
        let closing = || matches!(stopped.try_recv(), Err(TryRecvError::Disconnected));
        loop {
            self.pass(&closing);
            if !matches!(
                stopped.recv_timeout(ARCHIVE_EVERY),
                Err(RecvTimeoutError::Timeout)
            ) {
                return;
            }
        }
    }

    fn pass(&self, closing: &dyn Fn() -> bool) {
        if let Err(failed) = create_private_dir(&self.out) {
            tracing::error!(dir = %self.out.display(), error = %failed, "cannot make the archive directory");
            return;
        }
        let retain = i64::try_from(self.retain.as_micros()).unwrap_or(i64::MAX);
        let cutoff = crate::unix_time::micros(std::time::SystemTime::now()).saturating_sub(retain);
        let archived = run_until(
            &self.data,
            &self.out,
            cutoff,
            &self.verifier,
            |file, records| {
                tracing::info!(file = %file.display(), records, "archived exchange log records");
            },
            closing,
        );
        match archived {
            Ok(Archived {
                waiting: Some(waiting),
                ..
            }) => tracing::info!(waiting, "exchange log archive run stopped"),
            Ok(_) => {}
            Err(busy @ RunError::Busy(_)) => {
                tracing::info!(%busy, "exchange log archive pass skipped; the next one tries again");
            }
            Err(error) => {
                tracing::error!(%error, "exchange log archive run failed; the next one resumes");
            }
        }
    }
}

/// Makes the archive directory `dir` (and what leads to it), private:
/// what `govbridge audit archive` and the gateway's archiver write into.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // Each directory made here has its name synced in its parent: records
    // leave the hot store once their archive and its directory are synced,
    // and a crash must not then lose the directory's own name.
    let made: Vec<&Path> = dir
        .ancestors()
        .take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists())
        .collect();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    for made in made.into_iter().rev() {
        let parent = made
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// The tree of a log whose older segments are archived: the nodes inside
/// an archived segment are computed from its archive file, every other
/// from the hot store. What proofs of archived records are made from.
#[derive(Debug)]
pub struct ArchivedTree<'a> {
    store: &'a Store,
    dir: &'a Path,
    archived_end: u64,
    /// Archives read so far, by segment.
    segments: RefCell<HashMap<u64, MemoryTree>>,
}

impl<'a> ArchivedTree<'a> {
    pub fn new(store: &'a Store, dir: &'a Path) -> Result<Self, StoreError> {
        Ok(Self {
            store,
            dir,
            archived_end: store.archived_end()?,
            segments: RefCell::default(),
        })
    }

    /// The record at `index`, from the hot store or its archive.
    pub fn record(&self, index: u64) -> Result<Option<StoredRecord>, RunError> {
        if index >= self.archived_end {
            return Ok(self.store.record(index)?);
        }
        let segment = index / SEGMENT;
        let path = self
            .dir
            .join(file_name(segment * SEGMENT, (segment + 1) * SEGMENT));
        Ok(records(&path)?
            .into_iter()
            .find(|record| record.index == index))
    }
}

impl merkle::Nodes for ArchivedTree<'_> {
    type Error = RunError;

    fn node(&self, level: u32, index: u64) -> Result<Hash, RunError> {
        let first = index << level;
        if level >= SEGMENT_LEVEL || first >= self.archived_end {
            return Ok(merkle::Nodes::node(self.store, level, index)?);
        }
        let segment = first / SEGMENT;
        let mut segments = self.segments.borrow_mut();
        if let std::collections::hash_map::Entry::Vacant(vacant) = segments.entry(segment) {
            let path = self
                .dir
                .join(file_name(segment * SEGMENT, (segment + 1) * SEGMENT));
            let mut tree = MemoryTree::default();
            for record in records(&path)? {
                tree.push(merkle::leaf_hash(&record.bytes));
            }
            vacant.insert(tree);
        }
        let within = index - (segment << (SEGMENT_LEVEL - level));
        segments[&segment]
            .level(level)
            .get(usize::try_from(within).unwrap_or(usize::MAX))
            .copied()
            .ok_or_else(|| {
                error(
                    self.dir,
                    format!("the archive of segment {segment} lacks tree node ({level}, {index})"),
                )
                .into()
            })
    }
}

/// When a record happened: received (decision) or completed (outcome).
fn at_us(record: &ExchangeRecord) -> i64 {
    if record.phase() == Phase::Outcome {
        record.completed_us
    } else {
        record.received_us
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange_log::note::SigningKey;
    use crate::exchange_log::verify::{self, ProblemKind, VerifyError};

    const ORIGIN: &str = "govbridge.test/archive";

    /// A FIFO named as an archive is named as what it is, not opened (a
    /// read of it would wait for a writer forever).
    #[test]
    fn a_fifo_among_the_archives_is_named_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir
            .path()
            .join("records-000000000000-000000065536.jsonl.gz");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let refused = list(dir.path()).unwrap_err();
        assert_eq!(refused.path, fifo);
        assert!(refused.message.contains("not a regular file"), "{refused}");
    }

    /// A log of `size` records (calls of a decision and an outcome) with a
    /// checkpoint over all of them, every complete segment sealed.
    struct Log {
        dir: tempfile::TempDir,
        out: tempfile::TempDir,
        key: SigningKey,
    }

    fn record(n: u64) -> ExchangeRecord {
        let outcome = n % 2 == 1;
        ExchangeRecord {
            request_id: format!("req-{}", n / 2),
            caller: "SN/COM/CBAO/kyc".to_owned(),
            phase: if outcome {
                Phase::Outcome
            } else {
                Phase::Decision
            }
            .into(),
            decision_index: if outcome { n - 1 } else { 0 },
            received_us: 1_000,
            completed_us: if outcome { 2_000 } else { 0 },
            ..ExchangeRecord::default()
        }
    }

    impl Log {
        fn new(size: u64) -> Self {
            let log = Self {
                dir: tempfile::tempdir().unwrap(),
                out: tempfile::tempdir().unwrap(),
                key: SigningKey::generate(ORIGIN).unwrap(),
            };
            log.append(0..size);
            log
        }

        fn append(&self, records: std::ops::Range<u64>) {
            let mut store = Store::open(self.dir.path(), ORIGIN).unwrap();
            let mut frontier = store.frontier().unwrap();
            let records: Vec<ExchangeRecord> = records.map(record).collect();
            let chunks: Vec<&[ExchangeRecord]> = records.chunks(4096).collect();
            for (n, chunk) in chunks.iter().enumerate() {
                let refs: Vec<&ExchangeRecord> = chunk.iter().collect();
                let last = n + 1 == chunks.len();
                let signing = last.then_some((ORIGIN, &self.key));
                store.append(&mut frontier, &refs, signing).unwrap();
            }
            drop(store);
            // Reopened, the writer seals every complete segment.
            Store::open(self.dir.path(), ORIGIN).unwrap();
        }

        fn archive(&self) -> Result<Archived, RunError> {
            run(
                self.dir.path(),
                self.out.path(),
                i64::MAX,
                &self.key.verifier(),
                |_, _| {},
            )
        }

        fn verify(&self) -> Result<verify::VerifyReport, VerifyError> {
            verify::verify_with_archives(
                self.dir.path(),
                Some(self.out.path()),
                &self.key.verifier(),
            )
        }

        fn problem(&self) -> verify::Problem {
            self.verify()
                .unwrap()
                .problem
                .expect("damage goes unnoticed")
        }

        fn files(&self) -> Vec<PathBuf> {
            list(self.out.path()).unwrap()
        }
    }

    /// A file of another log where this one's archive goes (two gateways
    /// archiving into one directory) is never replaced: the run stops,
    /// naming it, and the records stay in the hot store.
    #[test]
    fn another_logs_archive_is_never_replaced() {
        let (one, other) = (Log::new(SEGMENT + 10), Log::new(SEGMENT + 10));
        one.archive().unwrap();
        let file = one.files().pop().unwrap();
        let error = run(
            other.dir.path(),
            one.out.path(),
            i64::MAX,
            &other.key.verifier(),
            |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains(&file.display().to_string()), "{error}");
        assert!(error.contains("nothing left the hot store"), "{error}");
        check(&file, &one.key.verifier()).unwrap();
        let store = Store::open_read_only(other.dir.path()).unwrap();
        assert_eq!(store.archived_end().unwrap(), 0);
        assert!(store.record(5).unwrap().is_some());
    }

    /// Old segments leave the hot store for files that prove themselves;
    /// the log goes on, and verifies as one with its archives.
    #[test]
    fn archived_segments_leave_the_store_and_verify_with_it() {
        let log = Log::new(2 * SEGMENT + 10);
        let archived = log.archive().unwrap();
        assert_eq!(archived.records, 2 * SEGMENT);
        assert_eq!(log.files().len(), 2);
        for file in log.files() {
            check(&file, &log.key.verifier()).unwrap();
            // Private, as the store is.
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{}: {mode:o}", file.display());
        }

        let store = Store::open_read_only(log.dir.path()).unwrap();
        assert_eq!(store.archived_end().unwrap(), 2 * SEGMENT);
        // The Data Tracker says its answers reach into archived time.
        assert_eq!(store.archived_until_us().unwrap(), 2_000);
        assert_eq!(store.size().unwrap(), 2 * SEGMENT + 10);
        assert!(store.record(5).unwrap().is_none());
        assert!(store.records_of_request("req-5").unwrap().is_empty());
        assert_eq!(
            store
                .records_of_request(&format!("req-{SEGMENT}"))
                .unwrap()
                .len(),
            2
        );
        let rows: i64 = store
            .select("SELECT idx, record FROM records", [])
            .unwrap()
            .len() as i64;
        assert_eq!(rows, 10);
        // What was inside the archived segments left with them; their
        // roots, which proofs of newer records climb through, stayed.
        assert!(store.lookup_run(0).unwrap().is_empty());
        assert!(store.lookup_run(1).unwrap().is_empty());
        for level in 0..SEGMENT_LEVEL {
            let inside = store
                .level(level)
                .unwrap()
                .into_iter()
                .filter(|(index, _)| ((*index as u64) << level) < 2 * SEGMENT)
                .count();
            assert_eq!(inside, 0, "level {level}");
        }
        assert_eq!(store.level(SEGMENT_LEVEL).unwrap().len(), 2);
        // A record still in the store is proven without the archives.
        let bundles = verify::prove(
            log.dir.path(),
            &verify::RecordKey::RequestId(format!("req-{}", SEGMENT + 2)),
        )
        .unwrap();
        assert_eq!(bundles.len(), 2);

        // The writer reopens it and appends; everything verifies.
        log.append(2 * SEGMENT + 10..2 * SEGMENT + 20);
        let mut told = Vec::new();
        let report = verify::verify_watched(
            log.dir.path(),
            Some(log.out.path()),
            &log.key.verifier(),
            &mut |checked| told.push((checked.records, checked.of)),
        )
        .unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(report.records, 2 * SEGMENT + 20);
        // A report after each archive file, and at the end.
        let all = 2 * SEGMENT + 20;
        assert_eq!(told, [(SEGMENT, all), (2 * SEGMENT, all), (all, all)]);
        assert_eq!(report.latest.unwrap().size, 2 * SEGMENT + 20);
        // Without the archives, verify says what it needs.
        let without = verify::verify_log(log.dir.path(), &log.key.verifier());
        assert!(
            matches!(without, Err(VerifyError::ArchivesNeeded(end)) if end == 2 * SEGMENT),
            "{without:?}"
        );
        // Nothing left to archive: a second run changes nothing.
        assert_eq!(log.archive().unwrap().records, 0);
    }

    /// While one run holds the log's archive lock, another touches
    /// nothing and says so; once the first is done, the next run works.
    #[test]
    fn a_second_archive_run_at_once_stops_and_touches_nothing() {
        let log = Log::new(SEGMENT + 10);
        let held = lock(log.dir.path()).unwrap();
        let busy = log.archive();
        assert!(
            matches!(&busy, Err(RunError::Busy(path)) if path.ends_with(LOCK_FILE)),
            "{busy:?}"
        );
        assert!(
            busy.unwrap_err()
                .to_string()
                .contains("another archive run")
        );
        assert!(log.files().is_empty());
        let store = Store::open_read_only(log.dir.path()).unwrap();
        assert_eq!(store.archived_end().unwrap(), 0);
        drop(store);

        drop(held);
        assert_eq!(log.archive().unwrap().records, SEGMENT);
        assert_eq!(log.files().len(), 1);
    }

    /// A record of the first archive is proven against the latest
    /// checkpoint, signed after the archive run, and the proof checks
    /// offline; so is a record still in the hot store.
    #[test]
    fn archived_records_are_proven_against_new_checkpoints() {
        let log = Log::new(SEGMENT + 10);
        log.archive().unwrap();
        log.append(SEGMENT + 10..SEGMENT + 30);
        for index in [0, 12_345, SEGMENT - 1, SEGMENT + 25] {
            let bundles = verify::prove_with_archives(
                log.dir.path(),
                Some(log.out.path()),
                &verify::RecordKey::Index(index),
            )
            .unwrap();
            assert_eq!(bundles.len(), 1);
            assert_eq!(bundles[0].tree_size, SEGMENT + 30);
            verify::check_bundle(&bundles[0], &log.key.verifier()).unwrap();
        }
        let without = verify::prove(log.dir.path(), &verify::RecordKey::Index(3));
        assert!(
            matches!(without, Err(verify::ProveError::Archived { .. })),
            "{without:?}"
        );
    }

    /// A call is proven by its request id from the archives too, which
    /// have no lookups; without them, a call wholly or partly archived is
    /// said to be so, never said not to exist nor proven by half.
    #[test]
    fn archived_calls_are_proven_by_request_id() {
        let log = Log::new(SEGMENT + 10);
        log.archive().unwrap();
        // A call decided before the archive run and ended after it (a
        // stream longer than the retention): its outcome is in the store.
        {
            let mut store = Store::open(log.dir.path(), ORIGIN).unwrap();
            let mut frontier = store.frontier().unwrap();
            let late = ExchangeRecord {
                decision_index: 10,
                ..record(11)
            };
            store
                .append(&mut frontier, &[&late], Some((ORIGIN, &log.key)))
                .unwrap();
        }
        let prove = |id: &str, archives: bool| {
            verify::prove_with_archives(
                log.dir.path(),
                archives.then_some(log.out.path()),
                &verify::RecordKey::RequestId(id.to_owned()),
            )
        };
        for (id, indexes) in [
            ("req-7", vec![14, 15]),
            ("req-5", vec![10, 11, SEGMENT + 10]),
            (
                &*format!("req-{}", SEGMENT / 2 + 2),
                vec![SEGMENT + 4, SEGMENT + 5],
            ),
        ] {
            let bundles = prove(id, true).unwrap();
            let proven: Vec<u64> = bundles.iter().map(|bundle| bundle.index).collect();
            assert_eq!(proven, indexes, "{id}");
            for bundle in &bundles {
                verify::check_bundle(bundle, &log.key.verifier()).unwrap();
            }
        }
        assert!(matches!(
            prove("req-nobody", true),
            Err(verify::ProveError::NoSuchRequest(_))
        ));
        // Without the archives.
        for id in ["req-7", "req-5"] {
            let refused = prove(id, false);
            assert!(
                matches!(
                    refused,
                    Err(verify::ProveError::ArchivedRequest { archived_end, .. })
                        if archived_end == SEGMENT
                ),
                "{id}: {refused:?}"
            );
        }
        let hot = format!("req-{}", SEGMENT / 2 + 2);
        assert_eq!(prove(&hot, false).unwrap().len(), 2);
    }

    /// Run alone, the archiver keeps the WAL to about what one segment's
    /// removal writes; beside a gateway (which holds the writer's lock),
    /// it leaves the WAL to the gateway's checkpointer.
    #[test]
    fn alone_a_run_keeps_the_wal_to_a_segment() {
        // The largest the WAL is after a segment.
        let wal_peak = |beside_a_gateway: bool| {
            let log = Log::new(3 * SEGMENT + 10);
            let _gateway = beside_a_gateway.then(|| super::super::lock_writer(log.dir.path()));
            let wal = log
                .dir
                .path()
                .join(format!("{}-wal", super::super::store::DATABASE_FILE));
            let mut peak = 0;
            let archived = run(
                log.dir.path(),
                log.out.path(),
                i64::MAX,
                &log.key.verifier(),
                |_, _| peak = peak.max(std::fs::metadata(&wal).unwrap().len()),
            )
            .unwrap();
            assert_eq!(archived.records, 3 * SEGMENT);
            peak
        };
        let (alone, beside) = (wal_peak(false), wal_peak(true));
        assert!(2 * alone < beside, "WAL alone {alone} B, beside {beside} B");
    }

    /// A partner's checkpoint from before the archive run, ending inside
    /// what is now archived, is still proven a prefix of the log.
    #[test]
    fn old_checkpoints_inside_archives_stay_consistent() {
        let log = Log::new(100);
        let old = Store::open_read_only(log.dir.path())
            .unwrap()
            .latest_checkpoint()
            .unwrap()
            .unwrap()
            .note;
        log.append(100..SEGMENT + 10);
        log.archive().unwrap();
        let verifier = log.key.verifier();
        let proved = verify::consistency_with_archives(
            log.dir.path(),
            Some(log.out.path()),
            &old,
            &verifier,
        )
        .unwrap();
        assert_eq!((proved.old.size, proved.new.size), (100, SEGMENT + 10));
        let without = verify::consistency(log.dir.path(), &old, &verifier);
        assert!(
            matches!(without, Err(verify::ConsistencyError::Archived { .. })),
            "{without:?}"
        );
    }

    /// A run that stops right after claiming a segment (its file written,
    /// `archived_end` moved, nothing removed yet) leaves a log that
    /// verifies; the next run removes what is left.
    #[test]
    fn a_run_cut_short_after_its_claim_verifies_and_resumes() {
        let log = Log::new(SEGMENT + 10);
        // The same log, as it was before the run, twice.
        let copy = || {
            let copy = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(log.dir.path()).unwrap() {
                let path = entry.unwrap().path();
                std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
            }
            copy
        };
        let (before, unclaimed) = (copy(), copy());
        log.archive().unwrap();
        let file = log.files().remove(0);
        let written = std::fs::metadata(&file).unwrap().modified().unwrap();

        // Stopped after writing its file, before its claim: the next run
        // takes the file as it is.
        let verifier = log.key.verifier();
        let resumed = run(
            unclaimed.path(),
            log.out.path(),
            i64::MAX,
            &verifier,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(resumed.files, std::slice::from_ref(&file));
        assert_eq!(
            std::fs::metadata(&file).unwrap().modified().unwrap(),
            written
        );
        let report =
            verify::verify_with_archives(unclaimed.path(), Some(log.out.path()), &verifier)
                .unwrap();
        assert_eq!(report.problem, None);

        // Stopped after its claim, before removing anything.
        let claimed = || Store::open_read_only(before.path()).unwrap();
        rusqlite::Connection::open(before.path().join(super::super::store::DATABASE_FILE))
            .unwrap()
            .execute(
                "INSERT INTO meta (key, value) \
                 VALUES ('archived_end', ?1), ('archived_until_us', '2000')",
                [SEGMENT.to_string()],
            )
            .unwrap();
        // Rows before the claim's end are still there (they are read from
        // the archive, not from here).
        let left = || -> i64 {
            rusqlite::Connection::open(before.path().join(super::super::store::DATABASE_FILE))
                .unwrap()
                .query_row(
                    "SELECT COUNT(*) FROM records WHERE idx < ?1",
                    [i64::try_from(SEGMENT).unwrap()],
                    |row| row.get(0),
                )
                .unwrap()
        };
        assert!(left() > 0);
        assert_eq!(claimed().records_from(0, 10).unwrap()[0].index, SEGMENT);
        let report =
            verify::verify_with_archives(before.path(), Some(log.out.path()), &verifier).unwrap();
        assert_eq!(report.problem, None);

        let resumed = run(
            before.path(),
            log.out.path(),
            i64::MAX,
            &verifier,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(resumed.records, 0);
        assert_eq!(left(), 0);
        let report =
            verify::verify_with_archives(before.path(), Some(log.out.path()), &verifier).unwrap();
        assert_eq!(report.problem, None);
    }

    fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<String>)) {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(File::open(path).unwrap()),
            &mut text,
        )
        .unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        edit(&mut lines);
        // Compressed as archives are, with their gzip header.
        let mut gzip = GzEncoder::new(File::create(path).unwrap(), Compression::default());
        for line in lines {
            writeln!(gzip, "{line}").unwrap();
        }
        gzip.finish().unwrap();
    }

    /// Each archive carries the checkpoint that was latest when it was
    /// written: a store cut back below it (records, tree and checkpoints
    /// deleted, so that what is left agrees with itself) fails verify, and
    /// so does the time the archives reach, which the Data Tracker says,
    /// moved.
    #[test]
    fn a_store_cut_back_below_what_its_archives_signed_fails_verify() {
        let log = Log::new(2 * SEGMENT + 10);
        log.archive().unwrap();
        assert_eq!(log.verify().unwrap().problem, None);
        let database = log.dir.path().join(super::super::store::DATABASE_FILE);
        let edit = |sql: &str| {
            rusqlite::Connection::open(&database)
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        };
        edit(&format!(
            "DELETE FROM records WHERE idx >= {end}; DELETE FROM checkpoints WHERE tree_size > {end};",
            end = 2 * SEGMENT + 5
        ));
        let problem = log.problem();
        assert_eq!(problem.kind, ProblemKind::CheckpointBeyondLog, "{problem}");
        let first = log.files().remove(0);
        assert!(
            problem.message.contains(&first.display().to_string())
                && problem.message.contains("records were deleted"),
            "{problem}"
        );

        let log = Log::new(SEGMENT + 10);
        log.archive().unwrap();
        let database = log.dir.path().join(super::super::store::DATABASE_FILE);
        rusqlite::Connection::open(&database)
            .unwrap()
            .execute_batch("UPDATE meta SET value = '0' WHERE key = 'archived_until_us'")
            .unwrap();
        let problem = log.problem();
        assert_eq!(problem.kind, ProblemKind::LookupEdited, "{problem}");
        assert!(problem.message.contains("archived time"), "{problem}");

        // A copy of the store from before anything was archived, checked
        // beside the archives written since: behind what they signed.
        let log = Log::new(100);
        let before = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(log.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, before.path().join(path.file_name().unwrap())).unwrap();
        }
        log.append(100..SEGMENT + 10);
        log.archive().unwrap();
        let verifier = log.key.verifier();
        let report =
            verify::verify_with_archives(before.path(), Some(log.out.path()), &verifier).unwrap();
        let problem = report
            .problem
            .expect("a store behind its archives verifies");
        assert_eq!(problem.kind, ProblemKind::CheckpointBeyondLog, "{problem}");
        // Without the archives, the copy is a log of its own that verifies;
        // so it does with an archive directory not made yet.
        let alone = verify::verify_log(before.path(), &verifier).unwrap();
        assert_eq!(alone.problem, None);
        let nowhere = before.path().join("archives");
        let report = verify::verify_with_archives(before.path(), Some(&nowhere), &verifier);
        assert_eq!(report.unwrap().problem, None);
    }

    /// Of the archives a snapshot of the store does not need, only those
    /// there before it was taken go with it (a backup's copy).
    #[test]
    fn a_snapshot_takes_the_archives_it_needs_and_those_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let make = |first: u64| {
            let path = dir.path().join(file_name(first, first + SEGMENT));
            std::fs::write(&path, b"").unwrap();
            path
        };
        let (zero, one) = (make(0), make(SEGMENT));
        let before = list(dir.path()).unwrap();
        // Written by a run beside: the third before the snapshot took its
        // records out (it is needed), the fourth after.
        let (two, three) = (make(2 * SEGMENT), make(3 * SEGMENT));
        let (taken, left) = list_with(dir.path(), &before, 3 * SEGMENT).unwrap();
        assert_eq!((taken, left), (vec![zero.clone(), one.clone(), two], 1));
        assert!(three.exists());
        let (taken, left) = list_with(dir.path(), &before, 0).unwrap();
        assert_eq!((taken, left), (vec![zero, one], 2));
    }

    /// An archive run beside a verification (the gateway's archiver)
    /// writes the archive of records the verification's snapshot still
    /// holds, with the store's latest checkpoint, which the snapshot does
    /// not: left for the next verification, not taken for a store cut
    /// back below what its archives signed.
    #[test]
    fn an_archive_written_beside_a_verification_is_left_for_the_next() {
        let log = Log::new(SEGMENT + 10);
        let verifier = log.key.verifier();
        let report = verify::verify_beside(
            log.dir.path(),
            Some(log.out.path()),
            &verifier,
            &mut |_| {},
            &mut || {
                log.append(SEGMENT + 10..SEGMENT + 20);
                assert_eq!(log.archive().unwrap().records, SEGMENT);
            },
        )
        .unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(report.records, SEGMENT + 10);
        assert!(
            report
                .notes
                .iter()
                .any(|note| note.starts_with("1 archive file(s) written beside")),
            "{:?}",
            report.notes
        );
        let next = log.verify().unwrap();
        assert_eq!(next.problem, None);
        assert_eq!(next.records, SEGMENT + 20);
        assert!(
            next.notes.iter().all(|note| !note.contains("beside")),
            "{:?}",
            next.notes
        );
    }

    /// An archive under another name than its records' (a copy a sync
    /// tool left beside, a file renamed) is named: proofs, backups and
    /// archive runs find a segment's file by its name.
    #[test]
    fn an_archive_under_another_name_is_named() {
        let log = Log::new(SEGMENT + 10);
        log.archive().unwrap();
        let file = log.files().remove(0);
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        let named = |path: &Path| {
            let problem = log.problem();
            assert_eq!(problem.kind, ProblemKind::ArchiveDamaged, "{problem}");
            assert!(
                problem.message.contains(&path.display().to_string()),
                "{problem}"
            );
            assert!(problem.message.contains("is not named"), "{problem}");
        };

        // A copy beside it, which sorts before it: the copy is named, not
        // the file proofs need.
        let copy = file.with_file_name(name.replace(".jsonl.gz", " (1).jsonl.gz"));
        std::fs::copy(&file, &copy).unwrap();
        named(&copy);
        std::fs::remove_file(&copy).unwrap();

        // Renamed.
        let renamed = file.with_file_name("records-segment-0.jsonl.gz");
        std::fs::rename(&file, &renamed).unwrap();
        named(&renamed);
        std::fs::rename(&renamed, &file).unwrap();
        assert_eq!(log.verify().unwrap().problem, None);
    }

    /// Whatever is done to an archive file, `check` and `audit verify`
    /// find it and name the file.
    #[test]
    fn tampered_archives_are_named() {
        let log = Log::new(SEGMENT + 10);
        log.archive().unwrap();
        let file = log.files().remove(0);
        let original = std::fs::read(&file).unwrap();
        let named = |problem: verify::Problem, kind: ProblemKind, what: &str| {
            assert_eq!(problem.kind, kind, "{problem}");
            assert!(
                problem.message.contains(&file.display().to_string()),
                "{problem}"
            );
            assert!(problem.message.contains(what), "{problem}");
        };

        // A flipped byte.
        let mut flipped = original.clone();
        flipped[original.len() / 2] ^= 0x40;
        std::fs::write(&file, &flipped).unwrap();
        named(log.problem(), ProblemKind::ArchiveDamaged, "");

        // A record dropped.
        std::fs::write(&file, &original).unwrap();
        rewrite(&file, |lines| {
            lines.remove(100);
        });
        named(
            log.problem(),
            ProblemKind::ArchiveDamaged,
            "record 99 is missing",
        );

        // A record added at the end.
        std::fs::write(&file, &original).unwrap();
        rewrite(&file, |lines| {
            let extra = lines[5].clone();
            lines.push(extra);
        });
        named(
            log.problem(),
            ProblemKind::ArchiveDamaged,
            "records were added",
        );

        // Records added after the archive's gzip member, in a member of
        // their own (`zcat` shows them), or an empty member.
        let member = |text: &[u8]| {
            let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
            gzip.write_all(text).unwrap();
            gzip.finish().unwrap()
        };
        let forged = Line {
            idx: SEGMENT,
            record: BASE64.encode(record(8).encode_to_vec()),
        };
        let forged = format!("{}\n", serde_json::to_string(&forged).unwrap());
        for extra in [member(forged.as_bytes()), member(b""), vec![0]] {
            let mut appended = original.clone();
            appended.extend(extra);
            std::fs::write(&file, &appended).unwrap();
            named(log.problem(), ProblemKind::ArchiveDamaged, "was appended");
            let refused = records(&file).unwrap_err().to_string();
            assert!(refused.contains("was appended"), "{refused}");
        }

        // A byte of the gzip header (its time) changed, which decodes
        // the same.
        let mut dated = original.clone();
        dated[4] ^= 0x01;
        std::fs::write(&file, &dated).unwrap();
        named(log.problem(), ProblemKind::ArchiveDamaged, "gzip header");

        // A line with no end, refused before it is held whole.
        std::fs::write(&file, &original).unwrap();
        rewrite(&file, |lines| lines.push("a".repeat(MAX_LINE as usize + 1)));
        named(log.problem(), ProblemKind::ArchiveDamaged, "longer than");

        // A field no check covers added to the manifest.
        std::fs::write(&file, &original).unwrap();
        rewrite(&file, |lines| {
            lines[0] = lines[0].replacen('{', "{\"approved_by\":\"the auditor\",", 1);
        });
        named(
            log.problem(),
            ProblemKind::ArchiveDamaged,
            "unknown field `approved_by`",
        );

        // The manifest's fields as they were, spaced otherwise.
        std::fs::write(&file, &original).unwrap();
        rewrite(&file, |lines| lines[0] = lines[0].replacen(',', ", ", 1));
        named(
            log.problem(),
            ProblemKind::ArchiveDamaged,
            "not as archives write it",
        );

        // The manifest's times, which no hash covers, moved.
        std::fs::write(&file, &original).unwrap();
        rewrite(&file, |lines| {
            let mut manifest: Manifest = serde_json::from_str(&lines[0]).unwrap();
            manifest.last_at_us -= 1;
            lines[0] = serde_json::to_string(&manifest).unwrap();
        });
        named(
            log.problem(),
            ProblemKind::ArchiveDamaged,
            "manifest's times",
        );

        // A record altered, its line still well-formed.
        std::fs::write(&file, &original).unwrap();
        rewrite(&file, |lines| {
            let forged = Line {
                idx: 7,
                record: BASE64.encode(record(8).encode_to_vec()),
            };
            lines[8] = serde_json::to_string(&forged).unwrap();
        });
        named(
            log.problem(),
            ProblemKind::ArchiveDamaged,
            "manifest's hash",
        );

        // Its checkpoint replaced by another, validly signed, of another tree.
        std::fs::write(&file, &original).unwrap();
        let other = Checkpoint {
            origin: ORIGIN.to_owned(),
            size: SEGMENT + 10,
            root: merkle::leaf_hash(b"another tree"),
        }
        .sign(&log.key);
        rewrite(&file, |lines| {
            let mut manifest: Manifest = serde_json::from_str(&lines[0]).unwrap();
            manifest.checkpoint = other;
            lines[0] = serde_json::to_string(&manifest).unwrap();
        });
        named(
            log.problem(),
            ProblemKind::ArchiveDamaged,
            "not in the tree",
        );

        // A manifest that claims a range no segment has.
        std::fs::write(&file, &original).unwrap();
        rewrite(&file, |lines| {
            let mut manifest: Manifest = serde_json::from_str(&lines[0]).unwrap();
            manifest.end = 1 << 40;
            lines[0] = serde_json::to_string(&manifest).unwrap();
        });
        named(log.problem(), ProblemKind::ArchiveDamaged, "not a segment");

        // The file gone.
        std::fs::remove_file(&file).unwrap();
        let problem = log.problem();
        assert_eq!(problem.kind, ProblemKind::ArchiveMissing, "{problem}");
        assert_eq!(problem.index, 0);

        std::fs::write(&file, &original).unwrap();
        assert_eq!(log.verify().unwrap().problem, None);
    }

    /// A full disk while the file is written: nothing leaves the hot
    /// store, and the next run, with room again, does the work.
    #[test]
    fn a_full_disk_removes_nothing_and_the_next_run_resumes() {
        let log = Log::new(SEGMENT + 10);
        let temporary = log.out.path().join(temporary_name(0, SEGMENT));
        // Every write to /dev/full fails as on a full disk (ENOSPC).
        std::os::unix::fs::symlink("/dev/full", &temporary).unwrap();
        let failed = log.archive().unwrap_err();
        assert!(
            failed
                .to_string()
                .contains(&*temporary.display().to_string()),
            "{failed}"
        );
        let store = Store::open_read_only(log.dir.path()).unwrap();
        assert_eq!(store.archived_end().unwrap(), 0);
        assert_eq!(
            store.records_from(0, usize::MAX).unwrap().len() as u64,
            SEGMENT + 10
        );
        assert!(log.files().is_empty());

        assert!(!temporary.exists(), "a half-written file was left");
        assert_eq!(log.archive().unwrap().records, SEGMENT);
        assert_eq!(log.verify().unwrap().problem, None);
    }

    /// A full disk while the archived records are removed (the file
    /// written and checked, the segment claimed) fails the run with the
    /// disk's error; the log still verifies with its archives, and the
    /// next run finishes the removal.
    #[test]
    fn a_full_disk_while_removing_is_finished_by_the_next_run() {
        let log = Log::new(SEGMENT + 10);
        let database = log.dir.path().join(super::super::store::DATABASE_FILE);
        // Every removal fails as on a full disk (SQLITE_FULL).
        rusqlite::Connection::open(&database)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER simulated_full BEFORE DELETE ON records \
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full (simulated)'); END;",
            )
            .unwrap();
        let failed = log.archive().unwrap_err();
        assert!(failed.to_string().contains("disk is full"), "{failed}");
        assert_eq!(log.files().len(), 1);
        let store = Store::open_read_only(log.dir.path()).unwrap();
        assert_eq!(store.archived_end().unwrap(), SEGMENT);
        assert_eq!(
            store
                .select("SELECT idx, record FROM records", [])
                .unwrap()
                .len() as u64,
            SEGMENT + 10
        );
        drop(store);
        assert_eq!(log.verify().unwrap().problem, None);

        rusqlite::Connection::open(&database)
            .unwrap()
            .execute_batch("DROP TRIGGER simulated_full")
            .unwrap();
        // Nothing left to archive; the removal is finished.
        assert_eq!(log.archive().unwrap().records, 0);
        let store = Store::open_read_only(log.dir.path()).unwrap();
        assert_eq!(
            store
                .select("SELECT idx, record FROM records", [])
                .unwrap()
                .len(),
            10
        );
        assert_eq!(log.verify().unwrap().problem, None);
    }

    /// What a run killed while writing left is removed by the next run;
    /// a live run's file stays.
    #[test]
    fn a_killed_runs_temporary_file_is_removed_by_the_next() {
        let log = Log::new(SEGMENT + 10);
        let name = file_name(0, SEGMENT);
        // No process has this id (above the kernel's pid_max).
        let killed = log.out.path().join(format!(".{name}.4294967295.tmp"));
        let live = log.out.path().join(temporary_name(SEGMENT, 2 * SEGMENT));
        for file in [&killed, &live] {
            std::fs::write(file, b"half a segment").unwrap();
        }
        log.archive().unwrap();
        assert!(!killed.exists(), "a killed run's file stays");
        assert!(live.exists(), "a live run's file was removed");
        assert_eq!(log.files().len(), 1);
    }
}
