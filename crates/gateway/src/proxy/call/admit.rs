//! Admit: the caller is a registered member whom some policy permits
//! something, within the gateway's and its own limits. On a partner
//! instance's gateway connection, the caller is the member its signed
//! assertion names.

use http::HeaderMap;

use super::Call;
use crate::config::Partner;
use crate::federation::{Assertion, AssertionError};
use crate::identity::MemberId;
use crate::proxy::GatewayError;
use crate::proxy::limits::CallPermit;
use crate::wire::headers::{BRIDGE_ASSERTION, CallHeaders};

/// A caller let in: who it is, and the slots its call holds until the
/// response ends.
pub(super) struct Admitted {
    pub(super) caller: MemberId,
    pub(super) permit: CallPermit,
    /// What the partner gateway the call came through asserted of it.
    pub(super) assertion: Option<Assertion>,
}

impl Call<'_> {
    /// The first authorization point, then the limits. A peer that is not
    /// a registered member, or that no policy permits anything, gets one
    /// answer and then its connection is closed. Limits come before any
    /// other work, so that shedding load is cheap (see
    /// [`GatewayError::is_limit_refusal`]).
    ///
    /// A partner gateway's calls count against the partner gateway's
    /// limits (its entry in the registry, if it has one), taken before its
    /// assertion is even read: a partner's flood is shed as any member's;
    /// then against the asserted caller's own.
    pub(super) async fn admit(&mut self, headers: &HeaderMap) -> Result<Admitted, GatewayError> {
        let limited = |call: &Self, member: &MemberId| {
            call.state.limits.permit(member).inspect_err(|refused| {
                call.conn.metrics.limit_refusal(member, refused.kind());
            })
        };
        match self.partner_of_peer() {
            Some((partner, gateway)) => {
                if gateway != partner.gateway {
                    return Err(self.foreign_member(&partner, gateway));
                }
                self.partner_current(&partner.instance)?;
                let permit = limited(self, &gateway)?;
                let (caller, assertion) = self.asserted(&partner, &gateway, headers)?;
                // The member behind it counts on its own, once asserted
                // (the gateway's own business counts once).
                let permit = if caller == gateway {
                    permit
                } else {
                    self.state
                        .limits
                        .with_asserted(permit, &caller)
                        .inspect_err(|refused| {
                            self.conn.metrics.limit_refusal(&caller, refused.kind());
                        })?
                };
                // Its nonce taken last: a call that takes one goes on to
                // its decision, which the log keeps (and a restart reads
                // back), unless the partner cuts it first. A call the
                // limits refuse is not logged, and so takes none: its
                // assertion could be sent again, and be refused or served
                // once.
                if let Some(assertion) = &assertion {
                    self.take_nonce(assertion).await?;
                    // Refused for this call only (and logged, its nonce
                    // taken): the connection is the partner's.
                    if !self.state.registry.contains_key(&caller) {
                        return Err(GatewayError::UnknownMember(caller));
                    }
                    if !self.state.policy.may_be_permitted(&caller) {
                        return Err(GatewayError::NoPermits(caller));
                    }
                }
                Ok(Admitted {
                    caller,
                    permit,
                    assertion,
                })
            }
            None => {
                let caller = self.caller()?;
                let permit = limited(self, &caller)?;
                Ok(Admitted {
                    caller,
                    permit,
                    assertion: None,
                })
            }
        }
    }

    /// When the caller's certificate expires: the connection's, or on a
    /// partner gateway's call, the one its assertion says the caller
    /// presented at home (the partner gateway's own when it does not say).
    pub(super) fn caller_not_after(&self, admitted: &Admitted) -> Option<i64> {
        admitted
            .assertion
            .as_ref()
            .and_then(|assertion| assertion.caller_not_after)
            .or(self.conn.peer.certificate_not_after)
    }

    /// Whole days left on the caller's certificate at `now`, as policies
    /// see them (`certificate_days_left`); 0 when unknown.
    pub(super) fn caller_days_left(&self, admitted: &Admitted, now: i64) -> i64 {
        self.caller_not_after(admitted).map_or(0, |not_after| {
            crate::identity::tls::days_left(not_after, now)
        })
    }

    /// A partner's member other than its gateway: refused, disconnected.
    fn foreign_member(&self, partner: &Partner, member: MemberId) -> GatewayError {
        self.conn.peer.control.close();
        GatewayError::ForeignMember {
            member,
            instance: partner.instance.clone(),
        }
    }

    /// The caller, checked against the registry and the policies of this
    /// snapshot.
    fn caller(&self) -> Result<MemberId, GatewayError> {
        let peer = &self.conn.peer;
        let refused = match &peer.member {
            Err(reason) => GatewayError::NoMemberIdentity(reason.clone()),
            // Another instance's member calls through its own instance's
            // gateway, whatever CA vouched for its certificate (this
            // instance's, for a partner whose own is not known yet).
            Ok(member) if member.instance() != self.state.federation.instance => {
                GatewayError::ForeignMember {
                    member: member.clone(),
                    instance: member.instance().to_owned(),
                }
            }
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

    /// Refuses a call to or from partner `instance` while one of its CRLs
    /// is out of date, while it is followed from its directory and not
    /// learned yet, or once the global configuration it was learned from
    /// has expired.
    pub(super) fn partner_current(&self, instance: &str) -> Result<(), GatewayError> {
        self.state
            .partner_refused_at(instance, crate::unix_time::now())
            .map_or(Ok(()), Err)
    }

    /// Whether the peer is a partner instance's gateway, whose calls are
    /// each its own caller's.
    pub(super) fn peer_is_partner_gateway(&self) -> bool {
        self.partner_of_peer()
            .is_some_and(|(partner, peer)| partner.gateway == peer)
    }

    /// The partner instance the peer belongs to, and the peer, when it is
    /// one; a partner's member other than its gateway is refused (and its
    /// connection closed): it calls through its own instance's gateway.
    fn partner_of_peer(&self) -> Option<(std::sync::Arc<Partner>, MemberId)> {
        let member = self.conn.peer.member.as_ref().ok()?;
        let partner = self.state.federation.partners.get(member.instance())?;
        Some((partner.clone(), member.clone()))
    }

    /// The caller a partner's gateway asserts, once the assertion holds:
    /// signed by the partner, from this gateway's peer, for this call,
    /// fresh and not seen before (its nonce is taken once the limits
    /// admit the call: [`Self::take_nonce`]). Of the gateway's own services, only
    /// health, the witness and the exchange log answer a partner's gateway
    /// (itself: its health checks, its log's checkpoints, the records of
    /// the calls it vouched for): a partner forwards calls to published
    /// services only.
    fn asserted(
        &mut self,
        partner: &Partner,
        peer: &MemberId,
        headers: &HeaderMap,
    ) -> Result<(MemberId, Option<Assertion>), GatewayError> {
        let path = self.uri.path();
        if crate::catalog::is_local(path) {
            // Health checks, the partner's checkpoints to witness, and
            // this log's records of the calls the partner vouched for: the
            // gateways' own business, with no caller behind it.
            let own = crate::catalog::split_path(path).is_some_and(|(service, _)| {
                [
                    crate::catalog::HEALTH,
                    crate::catalog::WITNESS,
                    crate::catalog::EXCHANGE_LOG,
                ]
                .contains(&service)
            });
            return if own && !headers.contains_key(BRIDGE_ASSERTION) {
                Ok((peer.clone(), None))
            } else {
                Err(AssertionError::Mismatch(format!(
                    "is for {path}, a service of this gateway's own, which partners' gateways \
                     do not forward"
                ))
                .into())
            };
        }
        let Some(value) = headers.get(BRIDGE_ASSERTION) else {
            return Err(AssertionError::Missing.into());
        };
        let federation = &self.state.federation;
        let now = crate::unix_time::now();
        let assertion = Assertion::open(value.as_bytes(), &partner.key)?;
        assertion.check(&partner.instance, &federation.instance, peer, path, now)?;
        // Seen before, it goes no further (its nonce is taken once the
        // limits admit the call: `take_nonce`).
        federation.replays.not_seen(&assertion, now)?;
        let caller = assertion.caller.clone();
        if let Some(record) = self.record.as_mut() {
            record.asserted(&assertion, value);
        }
        Ok((caller, Some(assertion)))
    }

    /// Takes `assertion`'s nonce: across the fleet first (a call refused
    /// for want of an answer leaves it untaken here too), then here.
    async fn take_nonce(&self, assertion: &Assertion) -> Result<(), GatewayError> {
        let federation = &self.state.federation;
        let now = crate::unix_time::now();
        if let Some(database) = federation.fleet.get() {
            first_in_fleet(database, assertion, now).await?;
        }
        federation.replays.admit(assertion, now)?;
        Ok(())
    }

    /// A partner gateway's call declares what its assertion says: purpose,
    /// reason, user and request id.
    pub(super) fn check_declared(
        &self,
        assertion: &Assertion,
        headers: &CallHeaders,
    ) -> Result<(), GatewayError> {
        let user_id = headers.user_id.as_ref().and_then(|id| id.to_str().ok());
        let declared = [
            (
                "purpose",
                headers.purpose_code(),
                assertion.purpose.as_deref(),
            ),
            (
                "reason",
                headers.reason.as_deref(),
                assertion.reason.as_deref(),
            ),
            ("user id", user_id, assertion.user_id.as_deref()),
            (
                "request id",
                self.request_id.to_str().ok(),
                Some(assertion.request_id.as_str()),
            ),
        ];
        match declared
            .iter()
            .find(|(_, header, asserted)| header != asserted)
        {
            Some((what, header, asserted)) => Err(AssertionError::Mismatch(format!(
                "says {what} {}, the call {}",
                asserted.unwrap_or("(none)"),
                header.unwrap_or("(none)")
            ))
            .into()),
            None => Ok(()),
        }
    }
}

/// Takes `assertion`'s nonce in the fleet's database: a replay to another
/// node of the fleet is refused too. Without an answer the call is
/// refused: an assertion is never taken on trust.
async fn first_in_fleet(
    database: &crate::database::Database,
    assertion: &Assertion,
    now: i64,
) -> Result<(), GatewayError> {
    // Boxed: only partners' calls on a fleet's node wait on it, and inline
    // it would make every call's future larger.
    let first = Box::pin(database.first_use_of_nonce(
        &assertion.from,
        &assertion.nonce,
        assertion.remembered_until(),
        now,
    ))
    .await
    .map_err(|error| GatewayError::ReplayUnchecked(error.to_string()))?;
    if first {
        Ok(())
    } else {
        Err(AssertionError::Replayed(assertion.nonce.clone()).into())
    }
}
