//! Services the gateway answers itself: the directory metaservices,
//! `grpc.health.v1.Health`, gRPC server reflection (v1 and v1alpha) and the
//! exchange log's proofs and Data Tracker (implemented in
//! [`crate::directory::exchange_log`]).
//!
//! They are reached through the gateway's own listener with a member
//! certificate, like any published service, but never forwarded. What they
//! show depends on the caller: reflection lists only the services the
//! caller's policies let it call, so that grpcurl, Postman or a reflection
//! client sees exactly its own view of the exchange. They never show
//! internal endpoint addresses.

pub mod exchange_log;
mod health;
mod metaservices;
mod reflection;
mod witness;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use tower::ServiceExt;

use crate::catalog::{
    DATA_TRACKER, DIRECTORY, EXCHANGE_LOG, HEALTH, LOCAL_SERVICES, REFLECTION_V1, WITNESS,
};
use crate::config::{ExchangeLogConfig, Member};
use crate::identity::MemberId;
use crate::policy::PolicyEngine;
use crate::routing::ProviderPool;

/// What the gateway's own services read of the configuration in force.
///
/// The proxy's state snapshot is the one implementation; the trait lets the
/// directory sit below the proxy, which calls into it.
pub trait GatewayView: Send + Sync + std::fmt::Debug {
    /// The member registry.
    fn registry(&self) -> &BTreeMap<MemberId, Member>;
    /// Whether `member` publishes at least one service.
    fn is_provider(&self, member: &MemberId) -> bool;
    /// The published services and their providers.
    fn services(&self) -> &BTreeMap<String, Vec<MemberId>>;
    /// The provider pools of one service.
    fn service_pools(&self, service: &str) -> Option<&[Arc<ProviderPool>]>;
    /// The policies in force.
    fn policy(&self) -> &PolicyEngine;
    /// The exchange log's settings (who may call the Data Tracker).
    fn exchange_log_config(&self) -> &ExchangeLogConfig;
    /// What the gateway knows of services: methods and descriptors.
    fn catalog(&self) -> &Arc<crate::catalog::Catalog>;
    /// The witness of partner instances' logs, when this gateway is one.
    fn witness(&self) -> Option<&Arc<crate::exchange_log::witness::Witness>>;
    /// Whether every forwarded call is refused at `now` (seconds since the
    /// epoch): the global configuration has expired.
    fn refuses_every_call_at(&self, now: i64) -> bool;
    /// Whether calls to partner `instance` are refused at `now`.
    fn refuses_partner_at(&self, instance: &str, now: i64) -> bool;
}

/// The configuration in force now, for a local service that outlives the
/// one its call started under (health's `Watch`).
pub trait CurrentView: Send + Sync + std::fmt::Debug {
    fn load(&self) -> Arc<dyn GatewayView>;
}

/// Who is asking, under which configuration. Put in the extensions of
/// every request handed to a local service.
#[derive(Debug, Clone)]
pub struct LocalContext {
    pub caller: MemberId,
    pub state: Arc<dyn GatewayView>,
    pub certificate_days_left: i64,
    /// The exchange log, for its proof and Data Tracker services.
    pub log: Option<crate::exchange_log::ExchangeLog>,
    /// The configuration in force now, after reloads.
    pub current: Arc<dyn CurrentView>,
}

impl LocalContext {
    pub(crate) fn from_request<T>(request: &tonic::Request<T>) -> Result<&Self, tonic::Status> {
        request
            .extensions()
            .get::<Self>()
            .ok_or_else(|| tonic::Status::internal("local service called without its context"))
    }

    /// Whether the caller may use one of the gateway's own services: the
    /// log's only when there is a log, the Data Tracker only for its
    /// configured clients.
    fn may_use_local(&self, service: &str) -> bool {
        match service {
            EXCHANGE_LOG => self.log.is_some(),
            DATA_TRACKER => {
                self.log.is_some()
                    && self
                        .state
                        .exchange_log_config()
                        .data_tracker_clients
                        .contains(&self.caller)
            }
            // A partner's gateway whose log this gateway witnesses.
            WITNESS => self.state.witness().is_some_and(|witness| {
                witness
                    .witnessed(self.caller.instance())
                    .is_some_and(|log| log.gateway == self.caller)
            }),
            _ => true,
        }
    }

    /// The gateway's own services the caller may call in JSON: those it
    /// may use, but health and reflection (gRPC's own).
    pub fn json_local_services(&self) -> BTreeSet<String> {
        LOCAL_SERVICES
            .iter()
            .filter(|service| {
                ![HEALTH, REFLECTION_V1, crate::catalog::REFLECTION_V1ALPHA].contains(service)
            })
            .filter(|service| self.may_use_local(service))
            .map(|service| (*service).to_owned())
            .collect()
    }

    /// Services the caller may call at least one method of, plus the
    /// gateway's own that it may use.
    fn visible_services(&self) -> BTreeSet<String> {
        let mut services: BTreeSet<String> = self
            .state
            .policy()
            .permits(&self.caller, self.certificate_days_left)
            .into_iter()
            .filter_map(|permit| {
                permit
                    .method
                    .strip_prefix('/')
                    .and_then(|rest| rest.split_once('/'))
                    .map(|(service, _)| service.to_owned())
            })
            .collect();
        services.extend(
            LOCAL_SERVICES
                .iter()
                .filter(|service| self.may_use_local(service))
                .map(|service| (*service).to_owned()),
        );
        services
    }
}

/// The OpenAPI document of the JSON operations `caller` may call (all
/// services', or `service`'s): what its policies may permit, as
/// reflection shows, with the purposes they permit each under, and the
/// methods of the gateway's own services in `local`.
pub fn openapi(
    policy: &PolicyEngine,
    catalog: &crate::catalog::Catalog,
    caller: &MemberId,
    certificate_days_left: i64,
    (service, local): (Option<&str>, &BTreeSet<String>),
    server: Option<&str>,
) -> serde_json::Value {
    use crate::catalog::json::openapi::{Declared, Permitted, document};
    use crate::wire::headers;
    let mut permitted: BTreeMap<String, Permitted> = BTreeMap::new();
    for own in local {
        if service.is_some_and(|service| service != own) {
            continue;
        }
        for method in catalog.service_methods().get(own).into_iter().flatten() {
            permitted.insert(format!("/{own}/{method}"), Permitted::default());
        }
    }
    for permit in policy.permits(caller, certificate_days_left) {
        let of_service = service.is_none_or(|service| {
            crate::catalog::split_path(&permit.method).is_some_and(|(s, _)| s == service)
        });
        if !of_service || (permit.purposes.is_empty() && permit.purposes_with_consent.is_empty()) {
            continue;
        }
        let entry = permitted.entry(permit.method).or_default();
        entry.purposes.extend(permit.purposes);
        entry.with_consent.extend(permit.purposes_with_consent);
    }
    let title = match service {
        Some(service) => format!("{service} through govbridge, for {caller}"),
        None => format!(
            "govbridge {}: the operations of {caller}",
            caller.instance()
        ),
    };
    let declared = Declared {
        purpose: headers::BRIDGE_PURPOSE,
        consent: headers::BRIDGE_CONSENT,
        request_id: headers::BRIDGE_REQUEST_ID,
        deadline: headers::GRPC_TIMEOUT,
        others: &[
            (
                headers::BRIDGE_REASON,
                "Why, in words (printable UTF-8).",
                Some(headers::MAX_REASON_LEN),
            ),
            (
                headers::BRIDGE_USER_ID,
                "The person acting at the partner (printable).",
                Some(headers::MAX_USER_ID_LEN),
            ),
            (headers::TRACEPARENT, "W3C trace context.", None),
        ],
    };
    document(catalog.json_routes(), &permitted, &declared, &title, server)
}

/// Answers a call to one of the gateway's own services.
pub async fn call<B>(mut request: Request<B>, context: LocalContext) -> Response<tonic::body::Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    request.extensions_mut().insert(context);
    let service = request
        .uri()
        .path()
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .map(|(service, _)| service.to_owned())
        .unwrap_or_default();
    let response: Result<Response<tonic::body::Body>, Infallible> = match service.as_str() {
        DIRECTORY => {
            crate::proto::directory::v1::directory_server::DirectoryServer::new(
                metaservices::DirectoryService,
            )
            .oneshot(request)
            .await
        }
        HEALTH => {
            tonic_health::pb::health_server::HealthServer::new(health::HealthService)
                .oneshot(request)
                .await
        }
        REFLECTION_V1 => {
            tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer::new(
                reflection::ReflectionV1,
            )
            .oneshot(request)
            .await
        }
        EXCHANGE_LOG => {
            crate::proto::audit::v1::exchange_log_server::ExchangeLogServer::new(
                crate::directory::exchange_log::ExchangeLogService,
            )
            .oneshot(request)
            .await
        }
        DATA_TRACKER => {
            crate::proto::audit::v1::data_tracker_server::DataTrackerServer::new(
                crate::directory::exchange_log::DataTrackerService,
            )
            .oneshot(request)
            .await
        }
        WITNESS => {
            crate::proto::witness::v1::witness_server::WitnessServer::new(witness::WitnessService)
                .max_decoding_message_size(witness::MAX_REQUEST)
                .oneshot(request)
                .await
        }
        _ => {
            tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer::new(
                reflection::ReflectionV1Alpha,
            )
            .oneshot(request)
            .await
        }
    };
    match response {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
