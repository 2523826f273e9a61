//! Bind consent: a consent is about one person, the one the request names
//! in its first message before anything is forwarded, then in every other;
//! each use of it is counted before the call goes on; and a stream goes on
//! only while the consent holds.

use super::{Call, Exchange, within};
use crate::consent::artefact::ConsentClaims;
use crate::consent::{ConsentRefusal, UseError};
use crate::proxy::GatewayError;
use crate::proxy::body::{self, CallerBody, SubjectGuard};

impl Call<'_> {
    /// Reads the request's first message and checks its subject against
    /// the consent's, then reserves a use of the consent, durably. Returns
    /// the guard that checks every later message of the request.
    pub(super) async fn bind_consent(
        &mut self,
        claims: &ConsentClaims,
        body: &mut CallerBody,
        exchange: &mut Exchange,
    ) -> Result<SubjectGuard, GatewayError> {
        let deadline = &exchange.routed.deadline;
        let field = self.state.catalog.subjects().field(self.uri.path()).ok_or(
            ConsentRefusal::SubjectMismatch("this method's requests name no data subject"),
        )?;
        let admitted = &exchange.admitted;
        let sizes = admitted
            .permit
            .message_limit(&self.conn.metrics, &admitted.caller);
        let read = within(deadline, body::first_message(body, sizes)).await??;
        let reading = crate::catalog::subject::read_subject(body::first_of(&read), field);
        // The person the request names, the consent's or not: their Data
        // Tracker lists the attempt, refused here or later. Named twice,
        // the one a decoder keeping the last value would read.
        if let (Some(record), Some(named)) = (self.record.as_mut(), reading.decoded()) {
            record.about(named);
        }
        body::bind_subject(&reading, &claims.subject)?;
        let ledger = self
            .conn
            .consent
            .as_ref()
            .ok_or(ConsentRefusal::StatusUnknown)?;
        let mut reservation = ledger.admit(claims)?;
        within(deadline, reservation.durable())
            .await?
            .map_err(|error| match error {
                UseError::Refused(refusal) => GatewayError::Consent(refusal),
                UseError::Unrecorded(error) => {
                    GatewayError::ConsentUseUnrecorded(error.to_string())
                }
            })?;
        let hold = reservation.hold();
        exchange.consent_use = Some(reservation);
        if let Some(record) = self.record.as_mut() {
            record.consented(&claims.consent_id);
        }
        Ok(SubjectGuard::new(&claims.subject, field.clone(), read).holding(hold))
    }
}
