//! This instance's log, witnessed: each new checkpoint goes to the partner
//! instances that witness it (`federation."XX".witness = true`), with a
//! consistency proof from the last one each cosigned, and their
//! cosignatures are kept with the checkpoint, in the store and in what the
//! log serves (see [`crate::exchange_log::witness`]).
//!
//! Partners are sent to side by side, each within [`ATTEMPT`]: a partner
//! that hangs delays no other, and one that fails is tried again after a
//! pause that doubles up to [`MAX_PAUSE`]. When the gateway stops, its
//! final checkpoint is sent once more ([`flush`]), so a log closed cleanly
//! ends witnessed.
//!
//! A fleet's log is sent by one node at a time, whichever holds the lease
//! in the fleet's database ([`crate::database::witness`]): it reads the
//! fleet's latest checkpoint there, cosignatures kept by other nodes
//! included, and keeps the ones it gets there. A node that dies hands the
//! sending over within the lease.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::SharedState;
use crate::config::Partner;
use crate::database::Database;
use crate::exchange_log::merkle;
use crate::exchange_log::store::{StoreError, StoredCheckpoint};
use crate::exchange_log::{ExchangeLog, Reader};
use crate::net::client::Channel;
use crate::proto::witness::v1::AddCheckpointRequest;
use crate::proto::witness::v1::witness_client::WitnessClient;

/// The longest cosignature line kept: `— NAME BASE64(76 bytes)`.
const MAX_COSIGNATURE: usize = 256;

/// How often the latest checkpoint is looked at.
const EVERY: Duration = Duration::from_secs(1);

/// How long a partner has to cosign one checkpoint, connecting included.
const ATTEMPT: Duration = Duration::from_secs(5);

/// The longest pause after failures.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// A partner's failures in a row, and when to try it again: a pause from
/// two seconds, doubling up to [`MAX_PAUSE`]. Shared by the tasks that
/// call partners in the background (witnesses, receipts).
#[derive(Debug, Default)]
pub(super) struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    /// Whether the partner is not to be tried at `now`.
    pub(super) fn pausing(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    pub(super) fn succeeded(&mut self) {
        *self = Self::default();
    }

    /// Counts a failure; the pause until the next try.
    pub(super) fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let pause = EVERY
            .saturating_mul(1 << self.failures.min(6))
            .min(MAX_PAUSE);
        self.until = Some(Instant::now() + pause);
        pause
    }
}

/// How long a stopping gateway waits for its final checkpoint's
/// cosignatures.
const FLUSH: Duration = Duration::from_secs(3);

/// What this node knows of one partner's witness.
#[derive(Default)]
struct Follower {
    /// The size it cosigned last, as far as this node knows.
    cosigned: u64,
    /// When this node last sent it a checkpoint it had cosigned, for a
    /// fresher cosignature: once per `exchange_log.witness_refresh`,
    /// whatever the witness's clock says.
    refreshed: Option<Instant>,
    /// The connection to its gateway, kept while it works.
    connection: Option<Connection>,
    backoff: Backoff,
}

/// A connection to a partner's gateway, and what it was made with.
struct Connection {
    endpoint: String,
    tls: Arc<rustls::ClientConfig>,
    channel: Channel,
}

/// Why a checkpoint was not cosigned.
enum Unsent {
    /// The witness cosigned more of this log than it holds: records were
    /// lost (an older copy restored) or the log's key signed another log.
    Ahead {
        witnessed: u64,
        size: u64,
    },
    Failed(String),
}

impl fmt::Display for Unsent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ahead { witnessed, size } => write!(
                f,
                "the witness cosigned {witnessed} records of this log, which holds {size}: \
                 records were lost (an older copy restored?) or this log's key signed a log \
                 this gateway did not write"
            ),
            Self::Failed(reason) => f.write_str(reason),
        }
    }
}

impl From<String> for Unsent {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

/// A fleet node's share in sending the fleet's checkpoints.
pub(super) struct Fleet {
    pub database: Arc<Database>,
    pub node: String,
}

/// Sends each new checkpoint of `log` to the partners that witness it,
/// for as long as the gateway runs; on a fleet's node (`fleet`), while it
/// holds the sending.
pub(super) async fn follow(state: SharedState, log: ExchangeLog, fleet: Option<Fleet>) {
    let mut followers = HashMap::new();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending = fleet.is_none();
    loop {
        ticks.tick().await;
        if !state.load().federation.partners.values().any(|p| p.witness) {
            continue;
        }
        let latest = match &fleet {
            None => log.latest_checkpoint(),
            Some(fleet) => {
                let holds = fleet.database.send_checkpoints(&fleet.node).await;
                let holds = holds.unwrap_or_else(|error| {
                    tracing::debug!(%error, "cannot take the sending of checkpoints");
                    false
                });
                if holds != sending {
                    sending = holds;
                    tracing::info!(
                        node = fleet.node,
                        sending,
                        "{} the fleet's checkpoints to its witnesses",
                        if sending {
                            "this node now sends"
                        } else {
                            "this node no longer sends"
                        }
                    );
                }
                if !holds {
                    followers.clear();
                    continue;
                }
                // The fleet's, with the cosignatures any node kept.
                let stored = read(&log, |reader| reader.latest_checkpoint()).await;
                stored
                    .unwrap_or_else(|error| {
                        tracing::debug!(%error, "cannot read the fleet's latest checkpoint");
                        None
                    })
                    .map(Arc::new)
            }
        };
        if let Some(latest) = latest {
            send_round(&state, &log, &latest, &mut followers, ATTEMPT, false).await;
        }
    }
}

/// Sends the final checkpoint of the closed `log` to the partners that
/// witness it, waiting at most [`FLUSH`].
pub(super) async fn flush(state: &SharedState, log: &ExchangeLog) {
    let Some(latest) = log.latest_checkpoint() else {
        return;
    };
    send_round(state, log, &latest, &mut HashMap::new(), FLUSH, true).await;
}

/// One round: `latest` to every witnessing partner that has not cosigned
/// it and is not pausing (unless `now`), side by side, each within
/// `attempt`.
async fn send_round(
    state: &SharedState,
    log: &ExchangeLog,
    latest: &Arc<StoredCheckpoint>,
    followers: &mut HashMap<String, Follower>,
    attempt: Duration,
    now: bool,
) {
    let state = state.load_full();
    let partners = &state.federation.partners;
    followers.retain(|instance, _| partners.get(instance).is_some_and(|p| p.witness));
    let started = Instant::now();
    let mut sending = tokio::task::JoinSet::new();
    let now_s = crate::unix_time::now();
    let refresh = state.exchange_log.witness_refresh;
    // None to a partner whose configuration has expired, or whose CRL is
    // out of date: nothing of it is trusted to be current, its address
    // and its certificates included.
    for partner in partners.values().filter(|partner| {
        partner.witness && state.partner_refused_at(&partner.instance, now_s).is_none()
    }) {
        let follower = followers.entry(partner.instance.clone()).or_default();
        // Cosigned already (before a restart, or a round that timed out
        // while its cosignature was being kept): not sent again...
        let cosigned_at = partner.key.cosigned(&latest.note).ok();
        if follower.cosigned < latest.size && cosigned_at.is_some() {
            follower.cosigned = latest.size;
        }
        // ...until its cosignature is `refresh` old: an idle log signs no
        // newer checkpoint, and the witness cosigns the same one again.
        let age = cosigned_at.map(|time| u64::try_from(now_s).unwrap_or(0).saturating_sub(time));
        let stale = age.is_some_and(|age| age >= refresh.as_secs())
            && follower
                .refreshed
                .is_none_or(|refreshed| started.duration_since(refreshed) >= refresh);
        let pausing = follower.backoff.pausing(started);
        if (follower.cosigned >= latest.size && !stale) || (pausing && !now) {
            continue;
        }
        if follower.cosigned >= latest.size {
            follower.refreshed = Some(started);
        }
        let Some(tls) = state.federation.partner_tls.get(&partner.instance) else {
            continue;
        };
        let mut follower = std::mem::take(follower);
        let (partner, tls) = (partner.clone(), Arc::clone(tls));
        let (log, latest) = (log.clone(), Arc::clone(latest));
        sending.spawn(async move {
            let sent =
                tokio::time::timeout(attempt, send(&partner, &tls, &log, &latest, &mut follower))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Unsent::Failed(format!(
                            "no answer within {} s",
                            attempt.as_secs()
                        )))
                    });
            (partner.instance.clone(), latest.size, follower, sent)
        });
    }
    while let Some(sent) = sending.join_next().await {
        let Ok((instance, size, mut follower, sent)) = sent else {
            continue;
        };
        match sent {
            Ok(()) => follower.backoff.succeeded(),
            Err(error) => {
                follower.connection = None;
                // A refresh that failed is tried again as the backoff
                // allows, not an interval later.
                follower.refreshed = None;
                let pause = follower.backoff.failed();
                if matches!(error, Unsent::Ahead { .. }) {
                    tracing::error!(
                        partner = instance,
                        size,
                        %error,
                        "this log is behind what its witness cosigned"
                    );
                } else {
                    tracing::warn!(
                        partner = instance,
                        size,
                        %error,
                        retry_in_s = pause.as_secs(),
                        "checkpoint not cosigned by the partner witnessing this log"
                    );
                }
            }
        }
        followers.insert(instance, follower);
    }
}

/// Has `partner` cosign `latest`, starting from the size `follower`
/// believes it cosigned last; keeps the cosignature.
async fn send(
    partner: &Partner,
    tls: &Arc<rustls::ClientConfig>,
    log: &ExchangeLog,
    latest: &StoredCheckpoint,
    follower: &mut Follower,
) -> Result<(), Unsent> {
    let endpoint = partner
        .endpoints
        .first()
        .ok_or("the partner has no endpoint".to_owned())?;
    let name = endpoint.to_string();
    // The connection of the last round, unless it closed or a reload
    // changed where or how to connect.
    let kept = follower.connection.take().filter(|kept| {
        kept.endpoint == name && Arc::ptr_eq(&kept.tls, tls) && !kept.channel.is_closed()
    });
    let connection = match kept {
        Some(kept) => kept,
        None => Connection {
            endpoint: name.clone(),
            tls: Arc::clone(tls),
            channel: connect(partner, endpoint, tls).await?,
        },
    };
    let mut client = WitnessClient::new(connection.channel.clone());
    // The checkpoint as this log signed it, without the cosignatures of
    // other witnesses: each cosignature is checked on its own against it.
    let signed = crate::note::Checkpoint::open_signed(&latest.note, log.verifier())
        .map_err(|error| format!("this log's own checkpoint does not open: {error}"))?;
    let note = signed.note();
    let mut known = follower.cosigned;
    // At most twice: once more from the size the witness says it holds.
    for _ in 0..2 {
        if known > latest.size {
            return Err(Unsent::Ahead {
                witnessed: known,
                size: latest.size,
            });
        }
        let consistency = proof(log, known, latest.size).await?;
        let answer = client
            .add_checkpoint(AddCheckpointRequest {
                old_size: known,
                consistency,
                checkpoint: note.clone(),
            })
            .await
            .map_err(|status| format!("{name}: {}", status.message()))?
            .into_inner();
        if answer.cosignature.is_empty() {
            known = answer.known_size;
            continue;
        }
        // Kept only once it is one signature line (anything more in the
        // stored note would make it fail to open), the partner's, for
        // this checkpoint.
        let line = answer.cosignature;
        let one_line = line.len() <= MAX_COSIGNATURE
            && line.ends_with('\n')
            && line.matches('\n').count() == 1
            && line.starts_with(&format!("\u{2014} {} ", partner.key.name()));
        if !one_line {
            return Err(format!("{name}: the answer is not one cosignature line").into());
        }
        partner
            .key
            .cosigned(&format!("{note}{line}"))
            .map_err(|error| format!("{name}: the cosignature does not verify: {error}"))?;
        let (log, size) = (log.clone(), latest.size);
        tokio::task::spawn_blocking(move || log.add_cosignature(size, &line))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?;
        follower.cosigned = latest.size;
        follower.connection = Some(connection);
        return Ok(());
    }
    Err(format!("{name}: the witness answered another size at each try ({known})").into())
}

/// A connection to `partner`'s gateway at `endpoint`, which must prove it
/// is that gateway.
pub(super) async fn connect(
    partner: &Partner,
    endpoint: &crate::config::Endpoint,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Channel, String> {
    let address = tokio::net::lookup_host(&endpoint.address)
        .await
        .map_err(|error| format!("{endpoint}: {error}"))?
        .next()
        .ok_or_else(|| format!("{endpoint}: no address"))?;
    Channel::connect_to_member(
        address,
        &endpoint.server_name.to_str(),
        Arc::clone(tls),
        &partner.gateway,
    )
    .await
    .map_err(|error| format!("{endpoint}: {error}"))
}

/// The consistency proof from `old` to `new` records of `log`, read on
/// the blocking pool.
async fn proof(log: &ExchangeLog, old: u64, new: u64) -> Result<Vec<Vec<u8>>, String> {
    if old == 0 || old >= new {
        return Ok(Vec::new());
    }
    let proof = read(log, move |reader| {
        merkle::consistency_proof(reader, old, new)
    })
    .await?;
    let proof = proof.map_err(|error| error.to_string())?;
    Ok(proof.into_iter().map(|hash| hash.to_vec()).collect())
}

/// What `read` reads from `log`, on the blocking pool.
async fn read<T: Send + 'static>(
    log: &ExchangeLog,
    read: impl FnOnce(&Reader) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || read(&log.reader()?))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())
}
