//! `grpc.health.v1.Health` for a mock agency, which the gateway's active
//! health checks call: `SERVING` for the server (`""`) and the agency's
//! service. Any peer the listener admits may ask; it reveals nothing.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The path prefix of the health service's methods.
pub const PATH: &str = "/grpc.health.v1.Health/";

#[derive(Debug, Clone, Copy)]
pub struct AgencyHealth {
    /// The agency's gRPC service, e.g. `govbridge.tax.v1.TaxAuthority`.
    service: &'static str,
}

impl AgencyHealth {
    pub fn server(service: &'static str) -> HealthServer<Self> {
        HealthServer::new(Self { service })
    }

    fn status(&self, asked: &str) -> Result<HealthCheckResponse, Status> {
        if asked.is_empty() || asked == self.service {
            Ok(HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            })
        } else {
            Err(Status::not_found(format!(
                "this server serves {} only",
                self.service
            )))
        }
    }
}

#[tonic::async_trait]
impl Health for AgencyHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(self.status(&request.get_ref().service)?))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    /// Answers once, then keeps the stream open: a mock's status never
    /// changes while it runs.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let first = self.status(&request.get_ref().service)?;
        let stream = tokio_stream::once(Ok(first)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}
