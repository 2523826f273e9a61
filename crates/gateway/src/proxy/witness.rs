//! This instance's log, witnessed: each new checkpoint goes to the partner
//! instances that witness it (`federation."XX".witness = true`), with a
//! consistency proof from the last one each cosigned, and their
//! cosignatures are kept with the checkpoint in the store (see
//! [`crate::exchange_log::witness`]).

use std::collections::HashMap;
use std::time::Duration;

use super::SharedState;
use crate::config::Partner;
use crate::exchange_log::ExchangeLog;
use crate::exchange_log::merkle;
use crate::exchange_log::store::{Store, StoredCheckpoint};
use crate::net::client::Channel;
use crate::proto::witness::v1::AddCheckpointRequest;
use crate::proto::witness::v1::witness_client::WitnessClient;

/// The longest cosignature line kept: `— NAME BASE64(76 bytes)`.
const MAX_COSIGNATURE: usize = 256;

/// How often the latest checkpoint is looked at.
const EVERY: Duration = Duration::from_secs(1);

/// Sends each new checkpoint of `log` to the partners that witness it,
/// for as long as the gateway runs.
pub(super) async fn follow(state: SharedState, log: ExchangeLog) {
    // Partner -> the size it cosigned last, as far as this node knows.
    let mut cosigned: HashMap<String, u64> = HashMap::new();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(latest) = log.latest_checkpoint() else {
            continue;
        };
        let state = state.load_full();
        for partner in state.federation.partners.values().filter(|p| p.witness) {
            if cosigned.get(&partner.instance) >= Some(&latest.size) {
                continue;
            }
            let Some(tls) = state.federation.partner_tls.get(&partner.instance) else {
                continue;
            };
            let known = cosigned.get(&partner.instance).copied().unwrap_or(0);
            match witness(partner, tls, &log, &latest, known).await {
                Ok(size) => {
                    cosigned.insert(partner.instance.clone(), size);
                }
                Err(error) => tracing::warn!(
                    partner = partner.instance,
                    size = latest.size,
                    %error,
                    "checkpoint not cosigned by the partner witnessing this log"
                ),
            }
        }
    }
}

/// Has `partner` cosign `latest`, starting from what this node believes
/// it cosigned last (`known`); keeps the cosignature. Returns the size
/// now cosigned.
async fn witness(
    partner: &Partner,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    log: &ExchangeLog,
    latest: &StoredCheckpoint,
    mut known: u64,
) -> Result<u64, String> {
    let endpoint = partner
        .endpoints
        .first()
        .ok_or("the partner has no endpoint")?;
    let address = tokio::net::lookup_host(&endpoint.address)
        .await
        .map_err(|error| format!("{endpoint}: {error}"))?
        .next()
        .ok_or_else(|| format!("{endpoint}: no address"))?;
    let channel = Channel::connect_to_member(
        address,
        &endpoint.server_name.to_str(),
        tls.clone(),
        &partner.gateway,
    )
    .await
    .map_err(|error| format!("{endpoint}: {error}"))?;
    let mut client = WitnessClient::new(channel);
    // At most twice: once more from the size the witness says it holds.
    for _ in 0..2 {
        let consistency = proof(log, known, latest.size)?;
        let answer = client
            .add_checkpoint(AddCheckpointRequest {
                old_size: known,
                consistency,
                checkpoint: latest.note.clone(),
            })
            .await
            .map_err(|status| format!("{endpoint}: {}", status.message()))?
            .into_inner();
        if answer.cosignature.is_empty() {
            known = answer.known_size;
            continue;
        }
        // Kept only once it is one signature line (anything more in the
        // stored note would make it fail to open), the partner's, for
        // this checkpoint.
        let line = &answer.cosignature;
        let one_line = line.len() <= MAX_COSIGNATURE
            && line.ends_with('\n')
            && line.matches('\n').count() == 1
            && line.starts_with(&format!("\u{2014} {} ", partner.key.name()));
        if !one_line {
            return Err(format!(
                "{endpoint}: the answer is not one cosignature line"
            ));
        }
        let cosigned = format!("{}{}", latest.note, answer.cosignature);
        partner
            .key
            .cosigned(&cosigned)
            .map_err(|error| format!("the cosignature does not verify: {error}"))?;
        let dir = log.dir().to_owned();
        let (size, line) = (latest.size, answer.cosignature);
        tokio::task::spawn_blocking(move || {
            crate::exchange_log::store::add_cosignature(&dir, size, &line)
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
        return Ok(latest.size);
    }
    Err(format!(
        "{endpoint}: the witness holds {known} records, past this log's"
    ))
}

/// The consistency proof from `old` to `new` records of `log`.
fn proof(log: &ExchangeLog, old: u64, new: u64) -> Result<Vec<Vec<u8>>, String> {
    if old == 0 || old >= new {
        return Ok(Vec::new());
    }
    let store = Store::open_read_only(log.dir()).map_err(|error| error.to_string())?;
    let proof = merkle::consistency_proof(&store, old, new)
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
    Ok(proof.into_iter().map(|hash| hash.to_vec()).collect())
}
