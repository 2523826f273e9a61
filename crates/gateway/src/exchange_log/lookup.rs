//! Finding a call's records by request id and a citizen's by subject,
//! without an index that every commit updates at random places.
//!
//! An ordinary index on `request_id` costs each record a page of its own:
//! request ids may be random (callers choose theirs; only the gateway's
//! are ordered by time), so every insert lands on a different leaf, and a
//! commit writes each leaf it touched whole, into the WAL and again into
//! the database. That was four fifths of the bytes the log wrote (10 KB a
//! record of 600 bytes) and a fifth of its throughput.
//!
//! Instead the log is cut into segments of [`SEGMENT`] records. Once a
//! segment is complete its lookups, `(key, index)` pairs sorted by key,
//! are appended to the `lookups` table in one sorted run, a few thousand
//! per commit: the table's pages are written once, in order, at its end.
//! A lookup probes each sealed segment's run (one B-tree descent each)
//! and then the records not yet sealed: the gateway keeps their lookups in
//! memory ([`Recent`]); other readers scan them (two segments at most).
//!
//! A key is the first 8 bytes of SHA-256 over a kind byte and the value:
//! collisions only cost a record read, since every hit is checked against
//! the record's own columns. A record is found by each subject it names:
//! its first (`subject`) and those a stream named after it
//! (`more_subjects`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use aws_lc_rs::digest::{Context, SHA256};

use crate::proto::audit::v1::ExchangeRecord;

/// Records per segment.
pub const SEGMENT: u64 = 1 << 16;

/// Lookups of a sealing segment written with each commit, at least: the
/// seal of a segment spreads over some forty commits when they are small,
/// each growing by about a hundred kilobytes. A commit of many records
/// writes more (twice the segment's lookups per record it appends).
pub const SEAL_CHUNK: usize = 4096;

/// What a key finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request id of a call.
    Request,
    /// The data subject of a call.
    Subject,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Self::Request => b'r',
            Self::Subject => b's',
        }
    }
}

/// The key of `value` of `kind`.
pub fn key(kind: Kind, value: &str) -> i64 {
    let mut context = Context::new(&SHA256);
    context.update(&[kind.tag()]);
    context.update(value.as_bytes());
    let digest = context.finish();
    let mut first = [0; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(first)
}

/// The lookups of `record`, the record at `index`: by request id always,
/// by each subject it names.
pub fn entries(record: &ExchangeRecord, index: u64) -> impl Iterator<Item = (i64, u64)> {
    let subject = (!record.subject.is_empty()).then_some(record.subject.as_str());
    let subjects = subject
        .into_iter()
        .chain(record.more_subjects.iter().map(String::as_str));
    std::iter::once((key(Kind::Request, &record.request_id), index))
        .chain(subjects.map(move |subject| (key(Kind::Subject, subject), index)))
}

/// The segment holding record `index`.
pub fn segment_of(index: u64) -> u64 {
    index / SEGMENT
}

/// The lookups of the records the writer has not sealed yet, in memory,
/// shared by the writer (who adds and forgets) with the gateway's readers.
///
/// The writer adds a record's lookups before its call hears that it is
/// durable, and forgets a segment's only once the seal after its own is
/// committed. A reader takes from here what its snapshot of the database
/// has not sealed yet, so a lookup is always in one place or the other,
/// as long as the snapshot is younger than the last two seals (seconds to
/// hours of traffic: a read takes milliseconds).
#[derive(Debug, Default)]
pub struct Recent {
    entries: RwLock<BTreeSet<(i64, u64)>>,
    /// The records before it are sealed, as the writer knows (whatever
    /// `meta` says: a reader must not trust an edited `sealed_end` below
    /// it). Written under `entries`' write lock.
    start: AtomicU64,
}

impl Recent {
    /// Adds lookups.
    pub fn add(&self, entries: impl IntoIterator<Item = (i64, u64)>) {
        let mut held = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        held.extend(entries);
    }

    /// The records `key` finds here, in order, and the first record this
    /// holds lookups for: those before it are sealed.
    pub fn find(&self, key: i64) -> (Vec<u64>, u64) {
        let held = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let found = held
            .range((key, 0)..=(key, u64::MAX))
            .map(|(_, index)| *index)
            .collect();
        (found, self.start.load(Ordering::Relaxed))
    }

    /// The lookups of records in `[from, to)`, sorted by key: a seal.
    pub fn between(&self, from: u64, to: u64) -> Vec<(i64, u64)> {
        let held = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        held.iter()
            .filter(|(_, index)| (from..to).contains(index))
            .copied()
            .collect()
    }

    /// Forgets the lookups of records before `end`, now sealed.
    pub fn forget_before(&self, end: u64) {
        let mut held = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        held.retain(|(_, index)| *index >= end);
        self.start.fetch_max(end, Ordering::Relaxed);
    }

    /// Lookups held.
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A segment whose lookups are being written, a chunk per commit.
#[derive(Debug)]
pub struct Sealing {
    pub segment: u64,
    /// Its lookups, sorted by key.
    pub entries: Vec<(i64, u64)>,
    /// How many of them are committed.
    pub written: usize,
}

impl Sealing {
    /// The lookups the next commit writes, a commit appending `records`.
    pub fn next_chunk(&self, records: usize) -> &[(i64, u64)] {
        let end = (self.written + self.chunk_len(records)).min(self.entries.len());
        &self.entries[self.written..end]
    }

    /// Whether the next chunk, a commit appending `records`, is the last.
    pub fn ends_with_next_chunk(&self, records: usize) -> bool {
        self.written + self.chunk_len(records) >= self.entries.len()
    }

    /// At least [`SEAL_CHUNK`], and twice the segment's lookups per record
    /// for each record the commit appends: a seal is done before half a
    /// segment more is appended, so with batches well under half a
    /// segment (the writer's are at most 4,096 records) the seal never
    /// falls more than one segment behind the records.
    fn chunk_len(&self, records: usize) -> usize {
        let segment = usize::try_from(SEGMENT).unwrap_or(usize::MAX);
        let per_record = self.entries.len().div_ceil(segment);
        SEAL_CHUNK.max(records.saturating_mul(per_record).saturating_mul(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_do_not_share_keys() {
        assert_ne!(
            key(Kind::Request, "1234567890123"),
            key(Kind::Subject, "1234567890123")
        );
        assert_eq!(key(Kind::Request, "a"), key(Kind::Request, "a"));
    }

    #[test]
    fn a_record_is_found_by_request_and_by_subject() {
        let record = ExchangeRecord {
            request_id: "r-1".to_owned(),
            subject: "1234567890123".to_owned(),
            more_subjects: vec!["2002196400009".to_owned()],
            ..ExchangeRecord::default()
        };
        let recent = Recent::default();
        recent.add(entries(&record, 7));
        assert_eq!(recent.find(key(Kind::Request, "r-1")).0, [7]);
        assert_eq!(recent.find(key(Kind::Subject, "1234567890123")).0, [7]);
        assert_eq!(recent.find(key(Kind::Subject, "2002196400009")).0, [7]);
        let anonymous = ExchangeRecord {
            request_id: "r-2".to_owned(),
            ..ExchangeRecord::default()
        };
        assert_eq!(entries(&anonymous, 8).count(), 1);
        recent.forget_before(8);
        assert!(recent.is_empty());
    }
}
