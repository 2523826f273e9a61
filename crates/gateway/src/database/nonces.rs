//! The nonces of partners' assertions a fleet accepted: an assertion is
//! used once across the fleet, not once per node (see
//! [`crate::federation::ReplayGuard`]).

use super::{Database, DatabaseError};

impl Database {
    /// Takes the nonce `nonce` of an assertion of `instance`, remembered
    /// until `until` (Unix seconds): false if a node took it before and it
    /// is still remembered at `now`.
    pub async fn first_use_of_nonce(
        &self,
        instance: &str,
        nonce: &str,
        until: i64,
        now: i64,
    ) -> Result<bool, DatabaseError> {
        let (instance, nonce) = (instance.to_owned(), nonce.to_owned());
        let taken = self
            .run(|client| async move {
                client
                    .execute(
                        "INSERT INTO assertion_nonces (instance, nonce, until) VALUES ($1, $2, $3)
                         ON CONFLICT (instance, nonce) DO UPDATE SET until = excluded.until
                             WHERE assertion_nonces.until < $4",
                        &[&instance, &nonce, &until, &now],
                    )
                    .await
            })
            .await?;
        Ok(taken == 1)
    }

    /// Forgets the nonces no assertion can be accepted with any more, by
    /// any node: those past `until` by `margin` seconds more than this
    /// node's clock says (another node's clock may be behind).
    pub async fn forget_nonces(&self, now: i64, margin: i64) -> Result<u64, DatabaseError> {
        let before = now.saturating_sub(margin);
        self.run(|client| async move {
            client
                .execute("DELETE FROM assertion_nonces WHERE until < $1", &[&before])
                .await
        })
        .await
    }
}
