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
}

/// What the book's writer is sent.
#[derive(Debug)]
enum Entry {
    Count(Count),
    /// Forget the counts of consents that expired before this (seconds
    /// since the epoch).
    Forget(i64),
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
    counts: mpsc::Sender<Entry>,
}

/// Each consent's uses counted, and when it expires (seconds since the
/// epoch), by consent id.
pub type Counted = HashMap<String, (u32, i64)>;

/// A count on its way to the file: resolves once it is durable.
pub type Durable = oneshot::Receiver<Result<(), UseBookError>>;

impl UseBook {
    /// Opens (or creates) the book at `path`, forgets consents expired
    /// [`FORGET_AFTER`] before `now`, and returns the counts of the
    /// others, with their expiry.
    pub fn open(path: &Path, now: i64) -> Result<(Self, Counted), UseBookError> {
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
        if let Err(mpsc::SendError(Entry::Count(count))) = self.counts.send(Entry::Count(count)) {
            // The writer is gone (it only stops when the book is dropped):
            // the waiting call hears of it and is refused.
            if let Some(durable) = count.durable {
                let _ = durable.send(Err(UseBookError::Write("the writer stopped".to_owned())));
            }
        }
        answer
    }

    /// Forgets, on the writer's time, the counts of consents that expired
    /// before `before` (seconds since the epoch).
    pub fn forget(&self, before: i64) {
        let _ = self.counts.send(Entry::Forget(before));
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
    /// The connection expired counts are forgotten on (so that no take
    /// waits behind a batch), and the task forgetting them.
    forgetting: (Arc<Database>, tokio::task::AbortHandle),
}

impl Drop for SharedUses {
    fn drop(&mut self) {
        self.close();
    }
}

impl SharedUses {
    /// Uses counts in `database`. From now on, and every hour
    /// while the node runs, counts of consents that expired
    /// [`FORGET_AFTER`] ago by the database's clock are forgotten, a batch
    /// at a time ([`Self::forget_expired`]): by nodes that run for months
    /// the table would otherwise only grow, and a start that first had to
    /// clear it all in one statement could fail on a large one.
    ///
    /// Within a Tokio runtime: the forgetting runs on it.
    pub fn open(database: Arc<Database>) -> Self {
        let sibling = database.sibling();
        let forgetter = Arc::clone(&sibling);
        let forgetting = tokio::spawn(async move {
            let mut every = tokio::time::interval(FORGET_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match Self::forget_expired(&forgetter).await {
                    Ok(0) => {}
                    Ok(forgotten) => {
                        tracing::info!(forgotten, "expired consent use counts forgotten");
                    }
                    // Tried again at the next turn; nothing else waits for it.
                    Err(error) => {
                        tracing::warn!(%error, "expired consent use counts not forgotten");
                    }
                }
            }
        });
        Self {
            database,
            forgetting: (sibling, forgetting.abort_handle()),
        }
    }

    /// Stops forgetting, and closes the connection that did: the node
    /// stops.
    pub fn close(&self) {
        let (connection, task) = &self.forgetting;
        task.abort();
        connection.close();
    }

    /// Forgets the counts of consents that expired [`FORGET_AFTER`] ago
    /// by the database's clock, 10,000 in a statement, each
    /// within the query timeout; counts another session holds are left
    /// for the next time. Returns how many were forgotten.
    pub async fn forget_expired(database: &Database) -> Result<u64, DatabaseError> {
        let mut forgotten = 0;
        loop {
            let deleted = database
                .run(|client| async move {
                    client
                        .execute(
                            "DELETE FROM consent_uses WHERE consent IN (
                                 SELECT consent FROM consent_uses
                                 WHERE expires < extract(epoch FROM now())::bigint - $1
                                 ORDER BY expires LIMIT $2
                                 FOR UPDATE SKIP LOCKED
                             )",
                            &[&FORGET_AFTER, &FORGET_BATCH],
                        )
                        .await
                })
                .await?;
            forgotten += deleted;
            if deleted < FORGET_BATCH.unsigned_abs() {
                return Ok(forgotten);
            }
        }
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
                         ON CONFLICT (consent) DO UPDATE
                         SET counted = uses.counted + 1,
                             expires = greatest(uses.expires, EXCLUDED.expires)
                         WHERE uses.counted < $2
                         RETURNING counted",
                        &[&consent, &max_uses, &expires, &ONCE_LOCK_TIMEOUT],
                    )
                    .await
            })
            .await
            .unwrap_or_else(|not_run| Err(not_run.error))
            .map_err(write_error)?;
        if taken.is_none() {
            self.keep_until(consent, max_uses, expires);
        }
        Ok(taken.is_some())
    }

    /// Keeps the count of `consent`, all `max_uses` spent, until `expires`
    /// at least: the same consent issued again may expire later than its
    /// count says, and forgetting the count then would hand its uses
    /// back. Forgotten meanwhile (by another node), it is written back all
    /// spent. Not waited for: the refused call's answer does not depend
    /// on it, and the next refusal tries again.
    fn keep_until(&self, consent: &str, max_uses: i32, expires: i64) {
        let (database, consent) = (Arc::clone(&self.database), consent.to_owned());
        tokio::spawn(async move {
            let kept = database
                .run(|client| async move {
                    client
                        .execute(
                            "INSERT INTO consent_uses AS uses (consent, counted, expires)
                             SELECT $1::text, $2, $3::bigint
                             FROM (SELECT set_config('lock_timeout', $4, true)) AS bounded
                             ON CONFLICT (consent) DO UPDATE
                             SET expires = EXCLUDED.expires
                             WHERE uses.expires < EXCLUDED.expires",
                            &[&consent, &max_uses, &expires, &ONCE_LOCK_TIMEOUT],
                        )
                        .await
                })
                .await;
            if let Err(error) = kept {
                tracing::warn!(%error, "a consent's later expiry not kept with its count");
            }
        });
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

/// How often a fleet's node forgets the counts of consents long expired.
const FORGET_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Expired counts a fleet forgets in one statement, at most: some tens of
/// milliseconds of work, found through their expiry's index.
const FORGET_BATCH: i64 = 10_000;

/// The first wait before a give-back is tried again, doubled each time up
/// to [`GIVE_BACK_RETRY_MOST`].
const GIVE_BACK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const GIVE_BACK_RETRY_MOST: std::time::Duration = std::time::Duration::from_secs(30);

fn write_error(error: DatabaseError) -> UseBookError {
    UseBookError::Write(error.to_string())
}

fn prepare(connection: &Connection, now: i64) -> rusqlite::Result<Counted> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    // The index finds what to forget while the gateway runs.
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS consent_uses (
             consent_id TEXT PRIMARY KEY,
             counted INTEGER NOT NULL,
             expires INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS consent_uses_by_expiry ON consent_uses (expires);",
    )?;
    forget_before(connection, now.saturating_sub(FORGET_AFTER))?;
    let mut statement =
        connection.prepare("SELECT consent_id, counted, expires FROM consent_uses")?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, (row.get(1)?, row.get(2)?))))?;
    rows.collect()
}

/// Forgets the counts of consents that expired before `before`.
fn forget_before(connection: &Connection, before: i64) -> rusqlite::Result<()> {
    while forget_batch(connection, before)? == usize::from(MAX_FORGET) {}
    Ok(())
}

/// Forgets up to [`MAX_FORGET`] counts of consents that expired before
/// `before`, in one commit; returns how many.
fn forget_batch(connection: &Connection, before: i64) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM consent_uses WHERE consent_id IN (
             SELECT consent_id FROM consent_uses WHERE expires <= ?1 LIMIT ?2
         )",
        params![before, MAX_FORGET],
    )
}

/// Expired counts forgotten in one transaction at most.
const MAX_FORGET: u16 = 10_000;

/// The writer thread: each batch of waiting counts in one transaction.
/// Asked to forget, it forgets a batch of expired counts before each
/// batch of counts until none is left: a count waits for one such batch
/// at most, and one sent after the ask is written once the counts it
/// covers are forgotten, if they fit in one batch.
fn write_counts(connection: &Connection, received: &mpsc::Receiver<Entry>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Counts that expired before this are still to be forgotten.
    let mut forgetting: Option<i64> = None;
    let mut forgotten = 0;
    loop {
        let first = if forgetting.is_some() {
            match received.try_recv() {
                Ok(entry) => Some(entry),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        } else {
            match received.recv() {
                Ok(entry) => Some(entry),
                Err(mpsc::RecvError) => return,
            }
        };
        let mut next = first;
        while let Some(entry) = next.take() {
            match entry {
                Entry::Count(count) => batch.push(count),
                Entry::Forget(before) => forgetting = forgetting.max(Some(before)),
            }
            if batch.len() < MAX_BATCH {
                next = received.try_recv().ok();
            }
        }
        if let Some(before) = forgetting {
            match forget_batch(connection, before) {
                Ok(deleted) if deleted == usize::from(MAX_FORGET) => forgotten += deleted,
                Ok(deleted) => {
                    forgotten += deleted;
                    if forgotten > 0 {
                        tracing::info!(forgotten, "expired consent use counts forgotten");
                    }
                    (forgetting, forgotten) = (None, 0);
                }
                // Tried again the next time the ledger forgets.
                Err(error) => {
                    tracing::warn!(%error, "expired consent use counts not forgotten");
                    (forgetting, forgotten) = (None, 0);
                }
            }
        }
        if !batch.is_empty() {
            let written = write_batch(connection, &batch).map_err(|sql| {
                let error = UseBookError::Write(sql.to_string());
                tracing::error!(%error, counts = batch.len(), "consent use counts not written");
                error
            });
            for count in batch.drain(..) {
                if let Some(durable) = count.durable {
                    let _ = durable.send(written.clone());
                }
            }
        }
    }
}

fn write_batch(connection: &Connection, batch: &[Count]) -> rusqlite::Result<()> {
    let transaction = connection.unchecked_transaction()?;
    {
        let mut upsert = transaction.prepare_cached(
            "INSERT INTO consent_uses (consent_id, counted, expires) VALUES (?1, ?2, ?3)
             ON CONFLICT (consent_id) DO UPDATE
             SET counted = excluded.counted, expires = max(expires, excluded.expires)",
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
        assert_eq!(
            counted,
            HashMap::from([("c1".into(), (1, 200)), ("c2".into(), (3, 150))])
        );
        // A clock hours ahead at a start forgets no count: put right, it
        // finds its consents valid again, and their uses spent.
        let (_, counted) = UseBook::open(&path, 160 + 7_200).unwrap();
        assert_eq!(
            counted,
            HashMap::from([("c1".into(), (1, 200)), ("c2".into(), (3, 150))])
        );
        // A day past its expiry, a consent's count is dropped.
        let (_, counted) = UseBook::open(&path, 160 + FORGET_AFTER).unwrap();
        assert_eq!(counted, HashMap::from([("c1".into(), (1, 200))]));
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
