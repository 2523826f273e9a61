//! Read headers: a gRPC request, its `bridge-*` headers well-formed, its
//! purpose a registered one.

use http::Request;

use super::Call;
use crate::federation::Assertion;
use crate::proxy::GatewayError;
use crate::wire::headers::{self, CallHeaders};

impl Call<'_> {
    /// Reads what the caller declares, once it is admitted: before that, a
    /// malformed request id would let anyone write to the exchange log.
    /// On a partner gateway's call they must say what its `assertion`
    /// says.
    pub(super) fn read_headers<B>(
        &mut self,
        request: &Request<B>,
        assertion: Option<&Assertion>,
    ) -> Result<CallHeaders, GatewayError> {
        if let Some(error) = self.bad_request_id.take() {
            return Err(error);
        }
        headers::check_grpc(request)?;
        // gRPC paths have no query. One would reach the backend, which may
        // route or log by it, though the gateway routed and recorded the
        // path alone: refused before anything looks at the path.
        if self.uri.query().is_some() {
            return Err(GatewayError::BadPath(
                self.uri
                    .path_and_query()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ));
        }
        let declared = CallHeaders::read(request.headers())?;
        if let Some(assertion) = assertion {
            self.check_declared(assertion, &declared)?;
        }
        if let Some(record) = self.record.as_mut() {
            record.declared(&declared);
        }
        if let Some(purpose) = declared.purpose_code()
            && !self.state.purposes.contains(purpose)
        {
            return Err(GatewayError::UnknownPurpose(purpose.to_owned()));
        }
        Ok(declared)
    }
}
