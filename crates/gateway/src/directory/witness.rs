//! The witness service: a partner's gateway sends its log's checkpoints to
//! be cosigned (see [`crate::exchange_log::witness`]).

use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::LocalContext;
use crate::exchange_log::witness::{Added, MAX_NOTE, MAX_PROOF, WitnessError};
use crate::proto::witness::v1::witness_server::Witness;
use crate::proto::witness::v1::{AddCheckpointRequest, AddCheckpointResponse};

/// The largest request decoded: a checkpoint and a proof at their bounds,
/// with room for framing.
pub(super) const MAX_REQUEST: usize = MAX_NOTE + MAX_PROOF * 34 + 64;

pub(super) struct WitnessService;

#[tonic::async_trait]
impl Witness for WitnessService {
    async fn add_checkpoint(
        &self,
        request: Request<AddCheckpointRequest>,
    ) -> Result<Response<AddCheckpointResponse>, Status> {
        let context = LocalContext::from_request(&request)?;
        let caller = &context.caller;
        let instance = caller.instance();
        let witness = context
            .state
            .witness()
            .ok_or_else(|| Status::unimplemented("this gateway witnesses no partner's log"))?;
        if witness
            .witnessed(instance)
            .is_none_or(|log| log.gateway != *caller)
        {
            return Err(Status::permission_denied(format!(
                "{caller} is not the gateway of a partner whose log this gateway witnesses"
            )));
        }
        let body = request.get_ref();
        let proof = body
            .consistency
            .iter()
            .map(|hash| <[u8; 32]>::try_from(hash.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Status::invalid_argument("a consistency proof holds SHA-256 hashes"))?;
        let now = u64::try_from(crate::unix_time::now()).unwrap_or_default();
        // Signatures, a proof and an fsync: off the gateway's workers, one
        // of this partner's at a time (a cancelled call's work finishes
        // before its next starts).
        let turn = witness.turn(instance).lock_owned().await;
        let (witness, partner) = (Arc::clone(witness), instance.to_owned());
        let (old_size, note) = (body.old_size, body.checkpoint.clone());
        let added = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            witness.add(&partner, old_size, &proof, &note, now)
        })
        .await
        .map_err(|_| Status::internal("the witness failed"))?;
        match added {
            Ok(Added::Cosigned(cosignature)) => Ok(Response::new(AddCheckpointResponse {
                cosignature,
                known_size: 0,
            })),
            Ok(Added::Conflict { known }) => Ok(Response::new(AddCheckpointResponse {
                cosignature: String::new(),
                known_size: known,
            })),
            Err(error) if error.is_alarm() => {
                tracing::error!(
                    partner = instance,
                    %error,
                    "a partner's log is not consistent with the checkpoint this witness \
                     cosigned: it forked or was rewritten"
                );
                Err(Status::failed_precondition(error.to_string()))
            }
            Err(error @ WitnessError::State { .. }) => {
                // Its file or database, and why, are for this side's log:
                // the partner is told to come back.
                tracing::error!(%error, "the witness cannot keep its state");
                Err(Status::unavailable(
                    "this witness cannot keep its state now; offer the checkpoint again later",
                ))
            }
            Err(error @ WitnessError::TooLarge { .. }) => {
                Err(Status::invalid_argument(error.to_string()))
            }
            Err(error) => Err(Status::failed_precondition(error.to_string())),
        }
    }
}
