//! Admit: the caller is a registered member whom some policy permits
//! something, within the gateway's and its own limits.

use super::Call;
use crate::identity::MemberId;
use crate::proxy::GatewayError;
use crate::proxy::limits::CallPermit;

/// A caller let in: who it is, and the slots its call holds until the
/// response ends.
pub(super) struct Admitted {
    pub(super) caller: MemberId,
    pub(super) permit: CallPermit,
}

impl Call<'_> {
    /// The first authorization point, then the limits. A peer that is not
    /// a registered member, or that no policy permits anything, gets one
    /// answer and then its connection is closed. Limits come before any
    /// other work, so that shedding load is cheap (see
    /// [`GatewayError::is_limit_refusal`]).
    pub(super) fn admit(&self) -> Result<Admitted, GatewayError> {
        let caller = self.caller()?;
        let permit = self.state.limits.permit(&caller).inspect_err(|refused| {
            self.conn.metrics.limit_refusal(&caller, refused.kind());
        })?;
        Ok(Admitted { caller, permit })
    }

    /// The caller, checked against the registry and the policies of this
    /// snapshot.
    fn caller(&self) -> Result<MemberId, GatewayError> {
        let peer = &self.conn.peer;
        let refused = match &peer.member {
            Err(reason) => GatewayError::NoMemberIdentity(reason.clone()),
            Ok(member) if !self.state.registry.contains_key(member) => {
                GatewayError::UnknownMember(member.clone())
            }
            Ok(member) if !self.state.policy.may_be_permitted(member) => {
                GatewayError::NoPermits(member.clone())
            }
            Ok(member) => return Ok(member.clone()),
        };
        peer.control.close();
        Err(refused)
    }
}
