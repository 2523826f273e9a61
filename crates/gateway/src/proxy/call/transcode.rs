//! Transcode: a JSON call's body becomes the request message(s) it stands
//! for, once the caller is admitted and within its limits, under the
//! call's deadline (see `proxy::json`). A gRPC call passes untouched.

use http::Request;

use super::{Call, within};
use crate::identity::MemberId;
use crate::proxy::body::CallerBody;
use crate::proxy::json::JsonCall;
use crate::proxy::{Deadline, GatewayError};
use crate::wire::headers::CallHeaders;

impl Call<'_> {
    /// Reads and converts a JSON call's body; a mistake in it refuses the
    /// call (`bad-json`, recorded like any refusal). Keeps how a unary
    /// method's answer becomes JSON, for its response body.
    pub(super) async fn transcode(
        &mut self,
        mut request: Request<CallerBody>,
        headers: &CallHeaders,
        caller: &MemberId,
    ) -> Result<Request<CallerBody>, GatewayError> {
        let Some(json) = request.extensions_mut().remove::<JsonCall>() else {
            return Ok(request);
        };
        let (parts, body) = request.into_parts();
        let deadline = Deadline::new(self.received, headers.timeout, self.state.max_deadline);
        let messages = within(&deadline, json.read(body, caller)).await??;
        self.answer = Some(json.into_answer());
        Ok(Request::from_parts(
            parts,
            CallerBody::Transcoded(Some(messages)),
        ))
    }
}
