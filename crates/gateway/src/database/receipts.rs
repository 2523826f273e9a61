//! Partners' receipts kept by a fleet's nodes, in one place: whichever
//! node forwarded a call, its receipt is in the fleet's database, and
//! `audit pull` copies them with the log (see
//! [`crate::exchange_log::receipts`]).

use super::{Database, DatabaseError};

/// A receipt as stored: its order, partner, index, call and proof bundle
/// (JSON).
#[derive(Debug, Clone)]
pub struct StoredReceipt {
    pub seq: i64,
    pub instance: String,
    pub index: u64,
    pub request_id: String,
    pub bundle: String,
}

impl Database {
    /// Keeps `receipts` (partner, index, call, bundle), fetched at `now`;
    /// one kept already stays.
    pub async fn keep_receipts(
        &self,
        receipts: &[(String, u64, String, String)],
        now: i64,
    ) -> Result<(), DatabaseError> {
        let mut instances = Vec::with_capacity(receipts.len());
        let mut indexes = Vec::with_capacity(receipts.len());
        let mut request_ids = Vec::with_capacity(receipts.len());
        let mut bundles = Vec::with_capacity(receipts.len());
        for (instance, index, request_id, bundle) in receipts {
            instances.push(instance.clone());
            indexes.push(i64::try_from(*index).unwrap_or(i64::MAX));
            request_ids.push(request_id.clone());
            bundles.push(bundle.clone());
        }
        self.run(|client| async move {
            client
                .execute(
                    "INSERT INTO log_receipts (instance, idx, request_id, fetched_at, bundle)
                     SELECT instance, idx, request_id, $5, bundle
                     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[])
                         AS t(instance, idx, request_id, bundle)
                     ON CONFLICT (instance, idx) DO NOTHING",
                    &[&instances, &indexes, &request_ids, &bundles, &now],
                )
                .await
        })
        .await?;
        Ok(())
    }

    /// Up to `limit` receipts kept after `seq`, in order, once the
    /// receipts being kept meanwhile are committed (or not): none of a
    /// lower `seq` commits after this read.
    pub async fn receipts_after(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredReceipt>, DatabaseError> {
        let rows = self
            .run(|client| async move {
                client
                    .query(
                        "SELECT seq, instance, idx, request_id, bundle \
                         FROM log_receipts_after($1, $2)",
                        &[&seq, &limit],
                    )
                    .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|row| StoredReceipt {
                seq: row.get(0),
                instance: row.get(1),
                index: u64::try_from(row.get::<_, i64>(2)).unwrap_or_default(),
                request_id: row.get(3),
                bundle: row.get(4),
            })
            .collect())
    }
}
