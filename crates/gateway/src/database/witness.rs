//! Witnessing in a fleet: what the nodes must agree on so that the fleet
//! witnesses partners' logs, and is witnessed, as one gateway.
//!
//! - The last checkpoint of each partner's log the fleet cosigned
//!   (`witness_checkpoints`): a node moves it forward only from the one
//!   it read (compare and swap), so two nodes sent two forks cannot both
//!   cosign: the second finds the first's and refuses its own.
//! - Which node sends the fleet's checkpoints to its witnesses
//!   (`log_witness_sender`): a lease on the database's clock, renewed
//!   every second by its holder and taken by another node once it lapses.

use std::time::Duration;

use super::{Database, DatabaseError};

/// How long a node holds the sending of checkpoints without renewing it:
/// a node that dies hands it over within this. Renewed before each round
/// of sending, which may take 5 s: three times that, so that a slow
/// partner does not let the lease lapse under a live node.
pub const SENDER_LEASE: Duration = Duration::from_secs(15);

impl Database {
    /// The last checkpoint of `instance`'s log the fleet cosigned, as kept
    /// (the log's note, without cosignatures).
    pub async fn witnessed(&self, instance: &str) -> Result<Option<String>, DatabaseError> {
        let instance = instance.to_owned();
        let row = self
            .run(|client| async move {
                client
                    .query_opt(
                        "SELECT note FROM witness_checkpoints WHERE instance = $1",
                        &[&instance],
                    )
                    .await
            })
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Replaces the checkpoint of `instance`'s log the fleet cosigned,
    /// `old` (`None`: none yet), by `note` at `size`; false if another
    /// node replaced `old` first.
    pub async fn witness_moved(
        &self,
        instance: &str,
        old: Option<&str>,
        size: u64,
        note: &str,
    ) -> Result<bool, DatabaseError> {
        let (instance, old, note) = (instance.to_owned(), old.map(str::to_owned), note.to_owned());
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let moved = self
            .run(|client| async move {
                match old {
                    None => {
                        client
                            .execute(
                                "INSERT INTO witness_checkpoints (instance, size, note)
                                 VALUES ($1, $2, $3) ON CONFLICT (instance) DO NOTHING",
                                &[&instance, &size, &note],
                            )
                            .await
                    }
                    Some(old) => {
                        client
                            .execute(
                                "UPDATE witness_checkpoints SET size = $2, note = $3,
                                     cosigned_at = now()
                                 WHERE instance = $1 AND note = $4",
                                &[&instance, &size, &note, &old],
                            )
                            .await
                    }
                }
            })
            .await?;
        Ok(moved == 1)
    }

    /// Takes or renews, for node `node`, the sending of the fleet's
    /// checkpoints to its witnesses; false while another node holds it.
    pub async fn send_checkpoints(&self, node: &str) -> Result<bool, DatabaseError> {
        let node = node.to_owned();
        let lease = format!("{} milliseconds", SENDER_LEASE.as_millis());
        let row = self
            .run(|client| async move {
                client
                    .query_opt(
                        "INSERT INTO log_witness_sender (node, until)
                         VALUES ($1, now() + $2::text::interval)
                         ON CONFLICT (one) DO UPDATE
                             SET node = excluded.node, until = excluded.until
                             WHERE log_witness_sender.node = excluded.node
                                OR log_witness_sender.until < now()
                         RETURNING node",
                        &[&node, &lease],
                    )
                    .await
            })
            .await?;
        Ok(row.is_some())
    }

    /// Gives up the sending of checkpoints, if `node` holds it.
    pub async fn stop_sending_checkpoints(&self, node: &str) -> Result<(), DatabaseError> {
        let node = node.to_owned();
        self.run(|client| async move {
            client
                .execute("DELETE FROM log_witness_sender WHERE node = $1", &[&node])
                .await
        })
        .await?;
        Ok(())
    }
}
