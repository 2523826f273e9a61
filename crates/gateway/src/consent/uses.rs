//! Consent use counts that survive a restart.
//!
//! For each consent the book keeps the uses that may have been spent: those
//! spent, plus those reserved by calls in flight. The ledger writes that
//! count here, and waits for it to be durable, before a consent-bound call
//! is forwarded; a call that ends without any answer relayed gives its use
//! back, written after the fact. A gateway that dies mid-call therefore
//! comes back counting the call as spent: a crash can cost a citizen's
//! consent a use, never hand one back to the consumer.
//!
//! A fleet counts in its database instead ([`SharedUses`]).
//!
//! One SQLite file, written by one thread in batches (a group commit per
//! batch, `synchronous = FULL`). This module never blocks the runtime: the
//! ledger sends counts in order and, where it must, awaits the commit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use crate::database::{Database, DatabaseError, ONCE_LOCK_TIMEOUT};

/// Counts written in one transaction at most.
const MAX_BATCH: usize = 1024;

/// Why the use book cannot be opened or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UseBookError {
    #[error("the consent ledger {path} cannot be opened: {message}")]
    Open { path: PathBuf, message: String },
    #[error("the consent ledger cannot record a use: {0}")]
    Write(String),
    #[error("the fleet's consent ledger cannot be opened: {0}")]
    OpenShared(String),
}

/// One consent's count, on its way to the file.
#[derive(Debug)]
struct Count {
    consent: String,
    /// Uses spent or reserved.
    counted: u32,
    /// When the consent expires (seconds since the epoch): past that its
    /// count is never needed again.
    expires: i64,
    /// Told once the count is durable, when someone waits for it.
    durable: Option<oneshot::Sender<Result<(), UseBookError>>>,
}

/// How long a consent's count is kept past its expiry, in seconds: a
/// clock ahead when the count is looked at, then put right (or a node's
/// behind the database's), must not forget a count still needed, which
/// would hand the consent's uses back.
pub const FORGET_AFTER: i64 = 86_400;

/// The durable side of the consent ledger: a writer thread and its file.
#[derive(Debug)]
pub struct UseBook {
    counts: mpsc::Sender<Count>,
}

/// A count on its way to the file: resolves once it is durable.
pub type Durable = oneshot::Receiver<Result<(), UseBookError>>;

impl UseBook {
    /// Opens (or creates) the book at `path`, forgets consents expired
    /// [`FORGET_AFTER`] before `now`, and returns the counts of the others.
    pub fn open(path: &Path, now: i64) -> Result<(Self, HashMap<String, u32>), UseBookError> {
        let error = |message: String| UseBookError::Open {
            path: path.to_owned(),
            message,
        };
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|io| error(io.to_string()))?;
        }
        let connection = Connection::open(path).map_err(|sql| error(sql.to_string()))?;
        let counted = prepare(&connection, now).map_err(|sql| error(sql.to_string()))?;
        let (counts, received) = mpsc::channel();
        std::thread::Builder::new()
            .name("consent-ledger".to_owned())
            .spawn(move || write_counts(&connection, &received))
            .map_err(|io| error(io.to_string()))?;
        Ok((Self { counts }, counted))
    }

    /// Sends `consent`'s new count; the answer, if asked for, says when it
    /// is durable. Counts of one consent are written in the order sent.
    pub fn write(&self, consent: &str, counted: u32, expires: i64, wait: bool) -> Option<Durable> {
        let (durable, answer) = if wait {
            let (sender, receiver) = oneshot::channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        let count = Count {
            consent: consent.to_owned(),
            counted,
            expires,
            durable,
        };
        if let Err(mpsc::SendError(count)) = self.counts.send(count) {
            // The writer is gone (it only stops when the book is dropped):
            // the waiting call hears of it and is refused.
            if let Some(durable) = count.durable {
                let _ = durable.send(Err(UseBookError::Write("the writer stopped".to_owned())));
            }
        }
        answer
    }
}

/// Consent use counts a fleet shares, in its PostgreSQL database: each use
/// is taken by one atomic statement against the count every node sees, so
/// that a consent's `max_uses` holds across nodes. The count is durable
/// once the statement returns (PostgreSQL commits it), which is when the
/// call may go on.
#[derive(Debug)]
pub struct SharedUses {
    database: Arc<Database>,
}

impl SharedUses {
    /// Uses counts in `database`, forgetting consents that expired
    /// [`FORGET_AFTER`] ago by the database's clock.
    pub async fn open(database: Arc<Database>) -> Result<Self, UseBookError> {
        database
            .run(|client| async move {
                client
                    .execute(
                        "DELETE FROM consent_uses
                         WHERE expires < extract(epoch FROM now())::bigint - $1",
                        &[&FORGET_AFTER],
                    )
                    .await
            })
            .await
            .map_err(open_error)?;
        Ok(Self { database })
    }

    /// Takes one of `consent`'s `max_uses` if one is left: `Ok(false)`
    /// when all are spent or reserved, on any node.
    pub async fn take(
        &self,
        consent: &str,
        max_uses: u32,
        expires: i64,
    ) -> Result<bool, UseBookError> {
        let max_uses = i32::try_from(max_uses).unwrap_or(i32::MAX);
        if max_uses == 0 {
            return Ok(false);
        }
        // Run at most once: a take that waits too long for the count's row
        // fails on the server, rather than spend a use after its call was
        // refused.
        let taken = self
            .database
            .run_once(|client| async move {
                client
                    .query_opt(
                        "INSERT INTO consent_uses AS uses (consent, counted, expires)
                         SELECT $1::text, 1, $3::bigint
                         FROM (SELECT set_config('lock_timeout', $4, true)) AS bounded
                         ON CONFLICT (consent) DO UPDATE SET counted = uses.counted + 1
                         WHERE uses.counted < $2
                         RETURNING counted",
                        &[&consent, &max_uses, &expires, &ONCE_LOCK_TIMEOUT],
                    )
                    .await
            })
            .await
            .unwrap_or_else(|not_run| Err(not_run.error))
            .map_err(write_error)?;
        Ok(taken.is_some())
    }

    /// Gives back a use taken by a call that relayed no answer (refused
    /// after the use was taken, its caller gone). Not waited for. While
    /// the database cannot be reached, or the statement waited too long
    /// for the count's row, it is tried again until the consent `expires`
    /// or the node stops; one whose statement was sent and never answered
    /// is not (it may have counted, and a consent may lose a use, never
    /// gain one).
    pub fn give_back(self: &Arc<Self>, consent: &str, expires: i64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Dropped outside the runtime (at exit): the use stays spent.
            return;
        };
        let (uses, consent) = (Arc::clone(self), consent.to_owned());
        runtime.spawn(async move {
            let mut wait = GIVE_BACK_RETRY;
            loop {
                let owned = consent.clone();
                let given = uses
                    .database
                    .run_once(|client| async move {
                        client
                            .execute(
                                "UPDATE consent_uses SET counted = counted - 1
                                 FROM (SELECT set_config('lock_timeout', $2, true)) AS bounded
                                 WHERE consent = $1 AND counted > 0",
                                &[&owned.as_str(), &ONCE_LOCK_TIMEOUT],
                            )
                            .await
                    })
                    .await;
                let error = match given {
                    Ok(Ok(_)) => return,
                    Ok(Err(error)) => error,
                    Err(not_run) if !not_run.stopped && crate::unix_time::now() < expires => {
                        tracing::debug!(error = %not_run.error, consent, "a consent use waits to be given back");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(GIVE_BACK_RETRY_MOST);
                        continue;
                    }
                    Err(not_run) => not_run.error,
                };
                tracing::warn!(%error, consent, "a consent use could not be given back");
                return;
            }
        });
    }
}

/// The first wait before a give-back is tried again, doubled each time up
/// to [`GIVE_BACK_RETRY_MOST`].
const GIVE_BACK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const GIVE_BACK_RETRY_MOST: std::time::Duration = std::time::Duration::from_secs(30);

fn open_error(error: DatabaseError) -> UseBookError {
    UseBookError::OpenShared(error.to_string())
}

fn write_error(error: DatabaseError) -> UseBookError {
    UseBookError::Write(error.to_string())
}

fn prepare(connection: &Connection, now: i64) -> rusqlite::Result<HashMap<String, u32>> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS consent_uses (
             consent_id TEXT PRIMARY KEY,
             counted INTEGER NOT NULL,
             expires INTEGER NOT NULL
         ) WITHOUT ROWID;",
    )?;
    connection.execute(
        "DELETE FROM consent_uses WHERE expires <= ?1",
        [now.saturating_sub(FORGET_AFTER)],
    )?;
    let mut statement = connection.prepare("SELECT consent_id, counted FROM consent_uses")?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

/// The writer thread: each batch of waiting counts in one transaction.
fn write_counts(connection: &Connection, received: &mpsc::Receiver<Count>) {
    while let Ok(first) = received.recv() {
        let mut batch = vec![first];
        batch.extend(received.try_iter().take(MAX_BATCH - 1));
        let written = write_batch(connection, &batch).map_err(|sql| {
            let error = UseBookError::Write(sql.to_string());
            tracing::error!(%error, counts = batch.len(), "consent use counts not written");
            error
        });
        for count in batch {
            if let Some(durable) = count.durable {
                let _ = durable.send(written.clone());
            }
        }
    }
}

fn write_batch(connection: &Connection, batch: &[Count]) -> rusqlite::Result<()> {
    let transaction = connection.unchecked_transaction()?;
    {
        let mut upsert = transaction.prepare_cached(
            "INSERT INTO consent_uses (consent_id, counted, expires) VALUES (?1, ?2, ?3)
             ON CONFLICT (consent_id) DO UPDATE SET counted = excluded.counted",
        )?;
        for count in batch {
            upsert.execute(params![count.consent, count.counted, count.expires])?;
        }
    }
    transaction.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_are_durable_once_acknowledged_and_expired_ones_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger").join("consent-ledger.sqlite");
        {
            let (book, counted) = UseBook::open(&path, 100).unwrap();
            assert!(counted.is_empty());
            assert!(book.write("c1", 1, 200, false).is_none());
            book.write("c2", 3, 150, false);
            book.write("c1", 2, 200, false);
            book.write("c1", 1, 200, true)
                .unwrap()
                .await
                .unwrap()
                .unwrap();
        }
        let (_, counted) = UseBook::open(&path, 100).unwrap();
        assert_eq!(counted, HashMap::from([("c1".into(), 1), ("c2".into(), 3)]));
        // A clock hours ahead at a start forgets no count: put right, it
        // finds its consents valid again, and their uses spent.
        let (_, counted) = UseBook::open(&path, 160 + 7_200).unwrap();
        assert_eq!(counted, HashMap::from([("c1".into(), 1), ("c2".into(), 3)]));
        // A day past its expiry, a consent's count is dropped.
        let (_, counted) = UseBook::open(&path, 160 + FORGET_AFTER).unwrap();
        assert_eq!(counted, HashMap::from([("c1".into(), 1)]));
    }

    #[test]
    fn a_ledger_that_cannot_be_opened_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let error = UseBook::open(&file.join("consent-ledger.sqlite"), 0).unwrap_err();
        assert!(
            error.to_string().contains("file/consent-ledger.sqlite"),
            "{error}"
        );
    }
}
