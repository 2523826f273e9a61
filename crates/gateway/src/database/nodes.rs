//! The fleet's nodes, as each registers itself: who is up, where, with
//! which version, configuration and policies.
//!
//! A node registers at start, beats every [`HEARTBEAT`] with its current
//! fingerprints (a reload changes them), and says it stopped when it stops
//! cleanly. Times are the database's (`now()`), so that the nodes' clocks
//! never matter; a node silent for [`STALE_AFTER`] is reported down.

use std::collections::HashMap;
use std::time::Duration;

use super::{Database, DatabaseError};

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Silent this long, a node is down (three missed heartbeats and some).
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// What a node says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `gateway.node_id`.
    pub id: String,
    /// Where partners reach it (`gateway.listen`).
    pub address: String,
    /// The gateway's version.
    pub version: String,
    /// What must be the same on every node: see `Config::fleet_fingerprint`.
    pub config_fingerprint: String,
    /// The policies in force: see `PolicyEngine::fingerprint`.
    pub policy_fingerprint: String,
}

/// A node as the registry knows it.
#[derive(Debug, Clone)]
pub struct Node {
    pub info: NodeInfo,
    /// Seconds since it started.
    pub up_for: f64,
    /// Seconds since its last heartbeat.
    pub silent_for: f64,
    /// It said it stopped.
    pub stopped: bool,
}

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Up,
    /// Silent for [`STALE_AFTER`] without saying it stopped: killed, cut
    /// off, or hung.
    Down,
    Stopped,
}

impl Node {
    pub fn state(&self) -> NodeState {
        if self.stopped {
            NodeState::Stopped
        } else if self.silent_for >= STALE_AFTER.as_secs_f64() {
            NodeState::Down
        } else {
            NodeState::Up
        }
    }
}

impl Database {
    /// Registers `node` as started now. An earlier run under the same id
    /// is replaced once it stopped or went silent; while it is up, two
    /// nodes share an id and the registration is refused.
    ///
    /// A run killed a moment ago (SIGKILL, out of memory: a supervisor
    /// restarts it at once) left a heartbeat that is still fresh: the start
    /// waits for it to go stale, at most [`STALE_AFTER`], and is refused
    /// at once if it moves (another node beats under this id).
    pub async fn register(&self, node: &NodeInfo) -> Result<(), DatabaseError> {
        // However the database's clock moves meanwhile.
        let give_up = tokio::time::Instant::now() + STALE_AFTER + 2 * HEARTBEAT;
        let mut seen = None;
        loop {
            if self.upsert(node, true).await? {
                return Ok(());
            }
            let Some((beat, silent_for)) = self.last_beat(&node.id).await? else {
                continue;
            };
            let taken = || DatabaseError::Failed {
                url: self.url(),
                detail: format!(
                    "a node with id `{}` is up in the fleet (it beats every {} s): give each \
                     node its own gateway.node_id, or stop the other first",
                    node.id,
                    HEARTBEAT.as_secs()
                ),
            };
            match seen {
                Some(before) if before != beat => return Err(taken()),
                Some(_) => {}
                None => tracing::warn!(
                    node_id = node.id,
                    silent_for_s = format!("{silent_for:.1}"),
                    "a node under this id beat a moment ago: waiting to see whether it is still \
                     up (a run killed just now) or not (another node with this id)"
                ),
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(taken());
            }
            seen = Some(beat);
            tokio::time::sleep(HEARTBEAT / 4).await;
        }
    }

    /// When node `id` last beat (the database's clock, as a number to
    /// compare), and how many seconds ago; `None` if it has no row.
    async fn last_beat(&self, id: &str) -> Result<Option<(f64, f64)>, DatabaseError> {
        let id = id.to_owned();
        self.run(|client| async move {
            let row = client
                .query_opt(
                    "SELECT extract(epoch FROM heartbeat_at)::float8,
                            extract(epoch FROM now() - heartbeat_at)::float8
                     FROM nodes WHERE id = $1",
                    &[&id],
                )
                .await?;
            Ok(row.map(|row| (row.get(0), row.get(1))))
        })
        .await
    }

    /// `node` is alive, with these fingerprints.
    pub async fn heartbeat(&self, node: &NodeInfo) -> Result<(), DatabaseError> {
        self.upsert(node, false).await.map(drop)
    }

    /// Whether the row was written: a start does not take over a live id.
    async fn upsert(&self, node: &NodeInfo, start: bool) -> Result<bool, DatabaseError> {
        let stale = STALE_AFTER.as_secs_f64();
        self.run(|client| async move {
            client
                .execute(
                    "INSERT INTO nodes AS n (id, address, version, config_fingerprint,
                                             policy_fingerprint, started_at, heartbeat_at)
                     VALUES ($1, $2, $3, $4, $5, now(), now())
                     ON CONFLICT (id) DO UPDATE SET
                         address = excluded.address,
                         version = excluded.version,
                         config_fingerprint = excluded.config_fingerprint,
                         policy_fingerprint = excluded.policy_fingerprint,
                         started_at = CASE WHEN $6 THEN now() ELSE n.started_at END,
                         heartbeat_at = now(),
                         stopped_at = NULL
                     WHERE NOT $6 OR n.stopped_at IS NOT NULL
                         OR n.heartbeat_at < now() - make_interval(secs => $7)",
                    &[
                        &node.id,
                        &node.address,
                        &node.version,
                        &node.config_fingerprint,
                        &node.policy_fingerprint,
                        &start,
                        &stale,
                    ],
                )
                .await
        })
        .await
        .map(|written| written == 1)
    }

    /// The database's size on disk, in bytes (`pg_database_size`: its
    /// tables and indexes, not the server's WAL).
    pub async fn size(&self) -> Result<u64, DatabaseError> {
        self.run(|client| async move {
            let row = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
        .await
    }

    /// Node `id` stopped cleanly.
    pub async fn deregister(&self, id: &str) -> Result<(), DatabaseError> {
        self.run(|client| async move {
            client
                .execute("UPDATE nodes SET stopped_at = now() WHERE id = $1", &[&id])
                .await
        })
        .await
        .map(drop)
    }

    /// Every node that ever registered, by id.
    pub async fn nodes(&self) -> Result<Vec<Node>, DatabaseError> {
        let rows = self
            .run(|client| async move {
                client
                    .query(
                        "SELECT id, address, version, config_fingerprint, policy_fingerprint,
                                extract(epoch FROM now() - started_at)::float8,
                                extract(epoch FROM now() - heartbeat_at)::float8,
                                stopped_at IS NOT NULL
                         FROM nodes ORDER BY id",
                        &[],
                    )
                    .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|row| Node {
                info: NodeInfo {
                    id: row.get(0),
                    address: row.get(1),
                    version: row.get(2),
                    config_fingerprint: row.get(3),
                    policy_fingerprint: row.get(4),
                },
                up_for: row.get(5),
                silent_for: row.get(6),
                stopped: row.get(7),
            })
            .collect())
    }
}

/// The nodes that are up and whose configuration or policies differ from
/// what most nodes that are up run (ties: the fingerprint of the node
/// first by id wins, so that the answer is stable).
pub fn differing(nodes: &[Node]) -> Vec<&str> {
    let up: Vec<&Node> = nodes
        .iter()
        .filter(|node| node.state() == NodeState::Up)
        .collect();
    let key = |node: &Node| {
        (
            node.info.config_fingerprint.clone(),
            node.info.policy_fingerprint.clone(),
        )
    };
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for node in &up {
        *counts.entry(key(node)).or_default() += 1;
    }
    // `up` is ordered by id: the first node with the highest count wins.
    let Some(most) = up
        .iter()
        .map(|node| key(node))
        .max_by(|a, b| counts[a].cmp(&counts[b]).then(std::cmp::Ordering::Greater))
    else {
        return Vec::new();
    };
    up.iter()
        .filter(|node| key(node) != most)
        .map(|node| node.info.id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, config: &str, silent_for: f64, stopped: bool) -> Node {
        Node {
            info: NodeInfo {
                id: id.to_owned(),
                address: "127.0.0.1:8443".to_owned(),
                version: "0.1.0".to_owned(),
                config_fingerprint: config.to_owned(),
                policy_fingerprint: "p".to_owned(),
            },
            up_for: 60.0,
            silent_for,
            stopped,
        }
    }

    #[test]
    fn the_odd_node_out_is_flagged_among_those_up() {
        let nodes = [
            node("a", "x", 0.5, false),
            node("b", "y", 0.5, false),
            node("c", "x", 0.5, false),
            // Down or stopped: neither counted nor flagged.
            node("d", "z", 30.0, false),
            node("e", "z", 0.5, true),
        ];
        assert_eq!(differing(&nodes), ["b"]);
        assert_eq!(nodes[3].state(), NodeState::Down);
        assert_eq!(nodes[4].state(), NodeState::Stopped);
    }

    #[test]
    fn a_tie_is_broken_by_the_first_node() {
        let nodes = [node("a", "x", 0.5, false), node("b", "y", 0.5, false)];
        assert_eq!(differing(&nodes), ["b"]);
        assert!(differing(&[]).is_empty());
    }
}
