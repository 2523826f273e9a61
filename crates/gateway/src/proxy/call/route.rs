//! Route: the provider that serves the method, and the call's deadline.

use super::{Call, Deadline, Routed};
use crate::federation::{Assertion, AssertionError};
use crate::proxy::GatewayError;
use crate::wire::headers::CallHeaders;

impl Call<'_> {
    /// Route: the provider that serves the method (the one the caller
    /// targets, or the service's; the one a partner's assertion names),
    /// and the call's deadline.
    pub(super) fn route(
        &mut self,
        headers: &CallHeaders,
        assertion: Option<&Assertion>,
    ) -> Result<Routed, GatewayError> {
        let route = self
            .state
            .routes
            .route(self.uri.path(), headers.target.as_ref())?;
        let provider = route.provider.clone();
        if let Some(assertion) = assertion
            && assertion.provider != *provider.provider()
        {
            return Err(AssertionError::Mismatch(format!(
                "is for provider {}, not {}",
                assertion.provider,
                provider.provider()
            ))
            .into());
        }
        if let Some(record) = self.record.as_mut() {
            record.routed(provider.provider());
        }
        let max_deadline = route
            .max_deadline
            .map_or(self.state.max_deadline, |service| {
                service.min(self.state.max_deadline)
            });
        Ok(Routed {
            // Not to a partner's gateway, which retries on its own side: a
            // replay would carry an assertion already used.
            idempotent: route.idempotent && provider.partner().is_none(),
            deadline: Deadline::new(self.received, headers.timeout, max_deadline),
            provider,
        })
    }
}
