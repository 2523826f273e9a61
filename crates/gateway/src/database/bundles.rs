//! The global configuration of a fleet's instance, kept in its database
//! (`[directory] url = "store"`): `directory publish --to-store` adds each
//! version, and the nodes read the latest one instead of polling HTTPS.
//! The bundle is stored as published: its signature, checked by every
//! node, is what they trust, not the database.

use super::{Database, DatabaseError};

impl Database {
    /// The latest bundle published for `instance`, if any.
    pub async fn latest_bundle(&self, instance: &str) -> Result<Option<Vec<u8>>, DatabaseError> {
        let instance = instance.to_owned();
        let row = self
            .run(|client| async move {
                client
                    .query_opt(
                        "SELECT bundle FROM global_bundles WHERE instance = $1
                         ORDER BY version DESC LIMIT 1",
                        &[&instance],
                    )
                    .await
            })
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// The latest version published for `instance`, if any.
    pub async fn latest_bundle_version(
        &self,
        instance: &str,
    ) -> Result<Option<u64>, DatabaseError> {
        let instance = instance.to_owned();
        let row = self
            .run(|client| async move {
                client
                    .query_one(
                        "SELECT max(version) FROM global_bundles WHERE instance = $1",
                        &[&instance],
                    )
                    .await
            })
            .await?;
        Ok(row
            .get::<_, Option<i64>>(0)
            .and_then(|version| u64::try_from(version).ok()))
    }

    /// Publishes `bundle` as `version` of `instance`'s global
    /// configuration; false when that version or a newer one is there
    /// already (versions only grow).
    pub async fn publish_bundle(
        &self,
        instance: &str,
        version: u64,
        bundle: &[u8],
    ) -> Result<bool, DatabaseError> {
        let (instance, bundle) = (instance.to_owned(), bundle.to_vec());
        let Ok(version) = i64::try_from(version) else {
            // A version no manifest carries (`Bundle::build` refuses it).
            return Ok(false);
        };
        let inserted = self
            .run(|client| async move {
                client
                    .execute(
                        "INSERT INTO global_bundles (instance, version, bundle)
                         SELECT $1, $2, $3
                         WHERE NOT EXISTS (
                             SELECT 1 FROM global_bundles WHERE instance = $1 AND version >= $2)",
                        &[&instance, &version, &bundle],
                    )
                    .await
            })
            .await?;
        Ok(inserted == 1)
    }
}
