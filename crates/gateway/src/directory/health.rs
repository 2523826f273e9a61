//! `grpc.health.v1.Health`: the gateway's own health (service `""`) and,
//! per published service the caller may call, whether one of its providers
//! can be reached. Of a service the caller may not call it says what it
//! says of one not published, as reflection does.

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::LocalContext;

#[derive(Debug, Clone, Copy)]
pub struct HealthService;

/// How often `Watch` re-checks.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

async fn status(context: &LocalContext, service: &str) -> Result<ServingStatus, Status> {
    let serving = |up: bool| {
        if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    // While the exchange log cannot write, or the global configuration
    // has expired, every call to a published service is refused: the
    // gateway does not serve.
    let now = crate::unix_time::now();
    let log = context.log.as_ref();
    let calls_served = log.is_none_or(crate::exchange_log::ExchangeLog::is_healthy)
        && !context.state.refuses_every_call_at(now);
    if service.is_empty() {
        return Ok(serving(calls_served));
    }
    // Every member may ask for proofs, when there is a log to prove.
    if service == crate::catalog::EXCHANGE_LOG {
        return Ok(serving(log.is_some()));
    }
    let not_found = || {
        Status::not_found(format!(
            "service {service} is not published on this gateway, or not to you"
        ))
    };
    if !context.visible_services().contains(service) {
        return Err(not_found());
    }
    if crate::catalog::LOCAL_SERVICES.contains(&service) {
        return Ok(ServingStatus::Serving);
    }
    if !calls_served {
        return Ok(ServingStatus::NotServing);
    }
    let pools = context.state.service_pools(service).ok_or_else(not_found)?;
    for pool in pools {
        // A partner whose calls are refused (its configuration out of
        // date, not learned) serves nothing, reachable or not.
        let refused = pool
            .partner()
            .is_some_and(|instance| context.state.refuses_partner_at(instance, now));
        if !refused && pool.reachable().await {
            return Ok(ServingStatus::Serving);
        }
    }
    Ok(ServingStatus::NotServing)
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let context = LocalContext::from_request(&request)?;
        let status = status(context, &request.get_ref().service).await?;
        Ok(Response::new(response(status)))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut context = LocalContext::from_request(&request)?.clone();
        let service = request.into_inner().service;
        let first = status(&context, &service).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut last = first;
            if sender.send(Ok(response(first))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    () = sender.closed() => return,
                    () = tokio::time::sleep(WATCH_INTERVAL) => {}
                }
                // Under the configuration in force now: its pools are the
                // ones checked, and its policies say whether the caller may
                // still see the service (else the watch ends).
                context.state = context.current.load();
                let Ok(now) = status(&context, &service).await else {
                    return;
                };
                if now != last {
                    last = now;
                    if sender.send(Ok(response(now))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}
