//! Receipts kept: for each call this gateway forwarded to a partner
//! instance, the partner's own record of it, proved under a checkpoint the
//! partner's log signed (a [`ProofBundle`], as `audit prove` writes).
//! Fetched from the partner's gateway shortly after the call
//! (`federation."XX".receipts`), checked, and kept in `receipts.sqlite`
//! beside the exchange log, so that this instance can show the partner's
//! signed evidence of an exchange without the partner's help later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::store::{AtPath, StoreError};
use super::verify::ProofBundle;

/// The receipts' database, in the exchange log's data directory.
pub const RECEIPTS_FILE: &str = "receipts.sqlite";

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS receipts (
        -- the partner instance, and its index of the call's record
        instance TEXT NOT NULL,
        idx INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        -- Unix seconds
        fetched_at INTEGER NOT NULL,
        -- the proof bundle, as JSON (audit prove's format)
        bundle TEXT NOT NULL,
        PRIMARY KEY (instance, idx)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS receipts_request ON receipts (request_id);
    -- In an auditor's copy of a fleet's log: how far `audit pull` copied
    -- the fleet's receipts.
    CREATE TABLE IF NOT EXISTS pulled (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        seq INTEGER NOT NULL
    );";

const INSERT: &str =
    "INSERT OR IGNORE INTO receipts (instance, idx, request_id, fetched_at, bundle)
     VALUES (?1, ?2, ?3, ?4, ?5)";

/// A receipt: the partner's proof of its record of a call.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub instance: String,
    pub request_id: String,
    pub bundle: ProofBundle,
}

/// The receipts kept by a gateway.
#[derive(Debug)]
pub struct Receipts {
    path: PathBuf,
    connection: Connection,
}

impl Receipts {
    /// Opens (creating it on first use) the receipts' database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(RECEIPTS_FILE);
        let connection = Connection::open(&path).at(&path)?;
        connection.busy_timeout(Duration::from_secs(5)).at(&path)?;
        connection
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; {SCHEMA}"
            ))
            .at(&path)?;
        Ok(Self { path, connection })
    }

    /// Keeps `receipts`, in one transaction; one kept already stays.
    pub fn keep(&mut self, receipts: &[Receipt], now: i64) -> Result<(), StoreError> {
        let rows = receipts.iter().map(|receipt| {
            let json = super::verify::bundles_to_json(std::slice::from_ref(&receipt.bundle));
            (
                &receipt.instance,
                receipt.bundle.index,
                &receipt.request_id,
                json,
            )
        });
        self.insert(rows, now, None)
    }

    /// Inserts `rows` (partner, index, call, bundle as JSON) and, for a
    /// pulled copy, how far the copy went, in one transaction.
    fn insert<'a>(
        &mut self,
        rows: impl Iterator<Item = (&'a String, u64, &'a String, String)>,
        now: i64,
        pulled: Option<i64>,
    ) -> Result<(), StoreError> {
        let path = &self.path;
        let transaction = self.connection.transaction().at(path)?;
        {
            let mut insert = transaction.prepare_cached(INSERT).at(path)?;
            for (instance, index, request_id, bundle) in rows {
                let index = i64::try_from(index).unwrap_or(i64::MAX);
                insert
                    .execute(params![instance, index, request_id, now, bundle])
                    .at(path)?;
            }
            if let Some(seq) = pulled {
                transaction
                    .execute(
                        "INSERT INTO pulled (one, seq) VALUES (1, ?1)
                         ON CONFLICT (one) DO UPDATE SET seq = excluded.seq",
                        [seq],
                    )
                    .at(path)?;
            }
        }
        transaction.commit().at(path)
    }

    /// How far `audit pull` copied a fleet's receipts into this copy (the
    /// last one's `seq`), 0 before the first.
    pub fn pulled(&self) -> Result<i64, StoreError> {
        self.connection
            .query_row("SELECT seq FROM pulled", [], |row| row.get(0))
            .optional()
            .at(&self.path)
            .map(Option::unwrap_or_default)
    }

    /// Keeps receipts copied from a fleet's database, as stored there, and
    /// how far the copy went, in one transaction.
    pub fn keep_pulled(
        &mut self,
        receipts: &[crate::database::receipts::StoredReceipt],
        now: i64,
    ) -> Result<(), StoreError> {
        let Some(last) = receipts.last() else {
            return Ok(());
        };
        let rows = receipts.iter().map(|receipt| {
            (
                &receipt.instance,
                receipt.index,
                &receipt.request_id,
                receipt.bundle.clone(),
            )
        });
        self.insert(rows, now, Some(last.seq))
    }

    /// The receipts kept for call `request_id`, if the database exists.
    /// A database the gateway has created but not yet given its tables
    /// (it is starting) holds none.
    pub fn of_request(dir: &Path, request_id: &str) -> Result<Vec<Receipt>, StoreError> {
        let path = dir.join(RECEIPTS_FILE);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let connection =
            Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .at(&path)?;
        connection.busy_timeout(Duration::from_secs(5)).at(&path)?;
        let made = connection
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'receipts'",
                [],
                |_| Ok(()),
            )
            .optional()
            .at(&path)?;
        if made.is_none() {
            return Ok(Vec::new());
        }
        let mut query = connection
            .prepare("SELECT instance, bundle FROM receipts WHERE request_id = ?1 ORDER BY idx")
            .at(&path)?;
        let rows = query
            .query_map([request_id], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .at(&path)?;
        let mut receipts = Vec::new();
        for row in rows {
            let (instance, json) = row.at(&path)?;
            let bundle = ProofBundle::parse_all(&json)
                .ok()
                .and_then(|mut bundles| bundles.pop())
                .ok_or_else(|| StoreError::Invalid {
                    path: path.clone(),
                    message: format!("the receipt of request {request_id} is malformed"),
                })?;
            receipts.push(Receipt {
                instance,
                request_id: request_id.to_owned(),
                bundle,
            });
        }
        Ok(receipts)
    }

    /// Whether the receipt of `instance`'s record `index` is kept.
    pub fn holds(&self, instance: &str, index: u64) -> Result<bool, StoreError> {
        self.connection
            .query_row(
                "SELECT 1 FROM receipts WHERE instance = ?1 AND idx = ?2",
                params![instance, i64::try_from(index).unwrap_or(i64::MAX)],
                |_| Ok(()),
            )
            .optional()
            .at(&self.path)
            .map(|found| found.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_are_kept_once_and_found_by_request() {
        let dir = tempfile::tempdir().unwrap();
        let mut receipts = Receipts::open(dir.path()).unwrap();
        let receipt = |index: u64, request_id: &str| Receipt {
            instance: "AZ".to_owned(),
            request_id: request_id.to_owned(),
            bundle: ProofBundle {
                index,
                record: vec![1, 2, 3],
                tree_size: index + 1,
                inclusion_proof: vec![[7; 32]],
                checkpoint: "note\n".to_owned(),
            },
        };
        receipts
            .keep(&[receipt(4, "a"), receipt(9, "b")], 1_000)
            .unwrap();
        receipts.keep(&[receipt(4, "a")], 2_000).unwrap();
        assert!(receipts.holds("AZ", 4).unwrap());
        assert!(!receipts.holds("AZ", 5).unwrap());
        let found = Receipts::of_request(dir.path(), "a").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].bundle.index, 4);
        assert_eq!(found[0].bundle.inclusion_proof, vec![[7; 32]]);
        assert!(
            Receipts::of_request(tempfile::tempdir().unwrap().path(), "a")
                .unwrap()
                .is_empty()
        );
    }

    /// `Connection::open` makes the file before `open` gives it its tables:
    /// a reader in between finds no receipts, not an error.
    #[test]
    fn a_database_without_its_tables_yet_holds_no_receipts() {
        let dir = tempfile::tempdir().unwrap();
        Connection::open(dir.path().join(RECEIPTS_FILE)).unwrap();
        assert!(dir.path().join(RECEIPTS_FILE).exists());
        assert!(Receipts::of_request(dir.path(), "a").unwrap().is_empty());
    }
}
