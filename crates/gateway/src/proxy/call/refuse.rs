//! Refuse: a refused or failed call is logged, recorded, and answered with
//! its gRPC status.

use std::sync::atomic::Ordering;

use http::Response;

use super::Call;
use crate::proxy::GatewayError;
use crate::proxy::body::ResponseBody;
use crate::proxy::record;
use crate::wire::escape::Escaped;

impl Call<'_> {
    /// Answers a refused or failed call, once the refusal is logged.
    pub(in crate::proxy) async fn refuse(mut self, error: GatewayError) -> Response<ResponseBody> {
        let request_id = &self.request_id;
        let path = self.uri.path();
        let metrics = &self.conn.metrics;
        let span = tracing::Span::current();
        span.record("grpc_status", error.code() as i32);
        span.record("bridge_error", error.kind());
        // Two refusals leave no record and only a debug line, so that a
        // flood costs neither disk nor log volume:
        // - for load, before anything was decided (see
        //   `GatewayError::is_limit_refusal`;
        //   `govbridge_limit_refusals_total` counts them);
        // - a stranger's after its connection's first: a peer the gateway
        //   does not serve gets one record and one log line per
        //   connection, however many streams it opens before the
        //   connection closes (`govbridge_unrecorded_refusals_total`).
        // On a partner gateway's connection each call is its own caller's.
        let stranger = error.is_stranger_refusal() && !self.peer_is_partner_gateway();
        let unrecorded = error.is_limit_refusal()
            || (stranger && self.conn.stranger_recorded.swap(true, Ordering::Relaxed));
        if unrecorded {
            tracing::debug!(
                request_id = request_id.to_str().unwrap_or_default(),
                path = %Escaped(path),
                bridge_error = error.kind(),
                "call refused, not recorded: {}",
                Escaped(&error)
            );
            metrics.refusal(error.kind());
            if stranger {
                metrics.unrecorded_refusal(error.kind());
            }
            return self.refusal(error);
        }
        tracing::info!(
            request_id = request_id.to_str().unwrap_or_default(),
            caller = self
                .conn
                .peer
                .member
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            path = %Escaped(path),
            bridge_error = error.kind(),
            code = ?error.code(),
            blame = ?error.blame(),
            detail = %Escaped(error.detail().unwrap_or_default()),
            "call refused: {}",
            Escaped(&error)
        );
        metrics.refusal(error.kind());
        let logged = match self.record.take() {
            // Nothing to write with: the log has just failed.
            Some(_) if matches!(error, GatewayError::ExchangeLogUnavailable(_)) => None,
            Some(record) => match record.write_refusal(&error).await {
                Ok(index) => Some(index),
                Err(log_error) => {
                    tracing::error!(
                        request_id = request_id.to_str().unwrap_or_default(),
                        detail = log_error.detail().unwrap_or_default(),
                        "refusal not logged: {log_error}"
                    );
                    return self.refusal(log_error);
                }
            },
            None => None,
        };
        let mut response = self.refusal(error);
        if let Some(index) = logged {
            let (name, value) = record::audit_index(index);
            response.headers_mut().insert(name, value);
        }
        response
    }

    /// The answer to a refused call: its status, `bridge-error`, and this
    /// gateway's instance, which refused it.
    fn refusal(&self, error: GatewayError) -> Response<ResponseBody> {
        let mut response = error.into_response(Some(&self.request_id));
        response.headers_mut().insert(
            crate::wire::headers::names::BRIDGE_INSTANCE,
            self.state.federation.instance_header.clone(),
        );
        response
    }
}
