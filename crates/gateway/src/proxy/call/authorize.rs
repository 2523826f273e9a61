//! Authorize: the second authorization point, this method for this caller,
//! provider and purpose; where the policies ask for it, the citizen's
//! consent artefact, checked against the call.

use std::sync::Arc;

use super::Call;
use super::admit::Admitted;
use crate::consent::artefact::ConsentClaims;
use crate::consent::{self, ConsentRefusal};
use crate::identity::MemberId;
use crate::policy::CallFacts;
use crate::proxy::GatewayError;
use crate::wire::CallScope;
use crate::wire::headers::CallHeaders;

impl Call<'_> {
    /// Decides the call, and records the decision. Returns the consent it
    /// runs under, when the policies allow it only with one: its subject is
    /// yet to be bound to the request's.
    pub(super) fn authorize(
        &mut self,
        admitted: &Admitted,
        headers: &CallHeaders,
        provider: &MemberId,
    ) -> Result<Option<Arc<ConsentClaims>>, GatewayError> {
        let caller = &admitted.caller;
        let now = crate::unix_time::now();
        let certificate_days_left = self.caller_days_left(admitted, now);
        let policy = &self.state.policy;
        let _policy = tracing::debug_span!("policy").entered();
        let scope = CallScope {
            caller,
            method: self.uri.path(),
            provider,
            purpose: headers.purpose_code(),
        };
        let facts = |consent_verified| CallFacts {
            scope,
            has_reason: headers.reason.is_some(),
            has_user_id: headers.user_id.is_some(),
            consent_verified,
            hour: u8::try_from(now.rem_euclid(86_400) / 3600).unwrap_or(0),
            certificate_days_left,
        };
        let mut decision = policy.authorize(&facts(false));
        let mut consent = None;
        if !decision.allowed
            && let Some(keys) = &self.state.consent_keys
        {
            let with_consent = policy.authorize(&facts(true));
            if with_consent.allowed {
                // The policies allow the call with the citizen's consent:
                // the artefact decides.
                if let Some(record) = self.record.as_mut() {
                    record.decided(&with_consent, policy.concealed_until(&with_consent, now));
                }
                let _consent = tracing::debug_span!("consent").entered();
                let token = headers
                    .consent
                    .as_ref()
                    .ok_or(ConsentRefusal::Missing)?
                    .to_str()
                    .map_err(|_| ConsentRefusal::Malformed("not visible ASCII".to_owned()))?;
                consent = Some(consent::check_artefact(keys, token, &scope, now)?);
                decision = with_consent;
            }
        }
        if !decision.errors.is_empty() {
            tracing::warn!(errors = ?decision.errors, "policies failed to evaluate");
        }
        if let Some(record) = self.record.as_mut() {
            record.decided(&decision, policy.concealed_until(&decision, now));
        }
        if decision.allowed {
            Ok(consent)
        } else {
            Err(GatewayError::Denied {
                caller: caller.clone(),
                method: scope.method.to_owned(),
                provider: provider.clone(),
                purpose: scope.purpose.map(str::to_owned),
                forbidden_by: decision.policies,
            })
        }
    }
}
