//! The demand through each node of a fleet for each rate-limited member,
//! which each node's share of the member's rate follows (see
//! [`crate::proxy::limits::share`]).
//!
//! Every heartbeat a node reports the calls a second each member attempted
//! through it, under the second of the database's clock the report was
//! written in (its epoch). Each node then reads the same closed epochs:
//! the latest one whose reports can no longer change (two seconds back)
//! and the one before. Every node reading one epoch sees the same reports
//! and so computes the same shares, which sum to the member's rate; a node
//! takes the smaller of its shares in the two epochs, so that whichever of
//! the two its peers have reached, the shares in force sum to no more than
//! the rate.

use std::collections::HashMap;

use super::{Database, DatabaseError};
use crate::identity::MemberId;

/// What a node reported of the calls through it, by member id.
pub type Demand = HashMap<String, f64>;

/// The nodes that reported in an epoch or the one before it (a heartbeat
/// may slip past a second), each with its latest report, by node id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub nodes: Vec<(String, Demand)>,
}

impl Snapshot {
    /// Where `node` is among the nodes, if it reported.
    pub fn position(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|(id, _)| id == node)
    }
}

/// The two latest closed epochs: what shares are computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshots {
    pub latest: Snapshot,
    pub before: Snapshot,
}

/// Reports older than this many seconds are removed.
const KEEP_EPOCHS: i64 = 10;

impl Database {
    /// Reports `node`'s demand (calls a second, by member) in the current
    /// epoch, replacing a report of the same epoch.
    pub async fn report_demand(
        &self,
        node: &str,
        demand: &[(MemberId, f64)],
    ) -> Result<(), DatabaseError> {
        let demand = serde_json::Value::Object(
            demand
                .iter()
                .filter_map(|(member, rate)| {
                    let rate = serde_json::Number::from_f64(*rate)?;
                    Some((member.as_str().to_owned(), rate.into()))
                })
                .collect(),
        )
        .to_string();
        let (node, demand) = (&node, &demand);
        self.run(|client| async move {
            client
                .execute(
                    "INSERT INTO rate_demand (epoch, node, demand)
                     VALUES (floor(extract(epoch FROM now()))::bigint, $1, $2)
                     ON CONFLICT (epoch, node) DO UPDATE SET demand = excluded.demand",
                    &[node, demand],
                )
                .await
        })
        .await
        .map(drop)
    }

    /// The reports of the two latest closed epochs (two and three seconds
    /// back by the database's clock).
    pub async fn demand_snapshots(&self) -> Result<Snapshots, DatabaseError> {
        let rows = self
            .run(|client| async move {
                client
                    .query(
                        "WITH now AS (SELECT floor(extract(epoch FROM now()))::bigint AS epoch)
                         SELECT now.epoch - 2 - r.epoch, r.node, r.demand
                         FROM rate_demand r, now
                         WHERE r.epoch BETWEEN now.epoch - 4 AND now.epoch - 2",
                        &[],
                    )
                    .await
            })
            .await?;
        let reports: Vec<(i64, String, String)> = rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        Ok(snapshots(&reports))
    }

    /// Removes the reports no node reads any longer.
    pub async fn forget_demand(&self) -> Result<u64, DatabaseError> {
        self.run(|client| async move {
            client
                .execute(
                    "DELETE FROM rate_demand
                     WHERE epoch < floor(extract(epoch FROM now()))::bigint - $1",
                    &[&KEEP_EPOCHS],
                )
                .await
        })
        .await
    }
}

/// The snapshots `reports` make: each is `(age, node, demand)`, `age` the
/// epochs before the latest closed one (0 to 2).
fn snapshots(reports: &[(i64, String, String)]) -> Snapshots {
    // Of each node, the latest report among epochs `ages`.
    let of = |ages: std::ops::RangeInclusive<i64>| {
        let mut latest: HashMap<&str, (i64, &str)> = HashMap::new();
        for (age, node, demand) in reports.iter().filter(|(age, ..)| ages.contains(age)) {
            let entry = latest.entry(node).or_insert((*age, demand));
            if *age < entry.0 {
                *entry = (*age, demand);
            }
        }
        let mut nodes: Vec<(String, Demand)> = latest
            .into_iter()
            .map(|(node, (_, demand))| (node.to_owned(), parse(demand)))
            .collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot { nodes }
    };
    Snapshots {
        latest: of(0..=1),
        before: of(1..=2),
    }
}

/// Another node's report, read as far as it makes sense: figures that are
/// not numbers are left out, a report that is not an object is empty.
fn parse(demand: &str) -> Demand {
    serde_json::from_str::<HashMap<String, serde_json::Value>>(demand)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(member, rate)| Some((member, rate.as_f64()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(age: i64, node: &str, demand: &str) -> (i64, String, String) {
        (age, node.to_owned(), demand.to_owned())
    }

    /// Each snapshot takes each node's latest report in its two epochs,
    /// in the order of the nodes' ids; a garbled report counts as none.
    #[test]
    fn snapshots_take_each_nodes_latest_report_in_their_epochs() {
        let got = snapshots(&[
            report(2, "b", r#"{"M": 1.0}"#),
            report(1, "b", r#"{"M": 2.0}"#),
            report(0, "a", r#"{"M": 3.0, "N": "x"}"#),
            report(2, "c", "not json"),
        ]);
        let demand = |pairs: &[(&str, f64)]| -> Demand {
            pairs.iter().map(|(m, d)| ((*m).to_owned(), *d)).collect()
        };
        assert_eq!(
            got.latest.nodes,
            [
                ("a".to_owned(), demand(&[("M", 3.0)])),
                ("b".to_owned(), demand(&[("M", 2.0)])),
            ]
        );
        assert_eq!(
            got.before.nodes,
            [
                ("b".to_owned(), demand(&[("M", 2.0)])),
                ("c".to_owned(), Demand::new()),
            ]
        );
        assert_eq!(got.latest.position("b"), Some(1));
        assert_eq!(got.latest.position("c"), None);
    }
}
