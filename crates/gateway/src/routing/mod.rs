//! Where a call goes: from `/package.Service/Method` to the provider that
//! publishes the service.
//!
//! The route table is built once per configuration and never changes; a
//! reload builds a new one. Methods are checked against the descriptors
//! compiled into the gateway when the service is one of ours, so that a typo
//! in a method name gets `UNIMPLEMENTED` from the gateway rather than a trip
//! to the backend.

pub mod upstream;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::split_path;

use crate::config::Config;
use crate::identity::MemberId;
pub use upstream::{ProviderPool, UpstreamConnector};

/// A call that names nothing this gateway publishes: the caller's fault.
/// The edge turns it into `INVALID_ARGUMENT` (a malformed path) or
/// `UNIMPLEMENTED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("`{0}` is not a gRPC method path /package.Service/Method")]
    BadPath(String),
    #[error("service {0} is not published on this gateway")]
    UnknownService(String),
    #[error("method {method} is not part of service {service}")]
    UnknownMethod { service: String, method: String },
    #[error("provider {target} does not publish service {service}")]
    UnknownTarget { service: String, target: MemberId },
}

/// One published service and who serves it.
#[derive(Debug)]
struct ServiceRoute {
    /// Known methods, when the service's descriptor is compiled in.
    methods: Option<HashSet<String>>,
    /// Providers in configured order; the first is the default.
    providers: Vec<Arc<ProviderPool>>,
    /// The longest any call to it may run.
    max_deadline: Option<Duration>,
    /// Methods that may be retried.
    idempotent: std::collections::BTreeSet<String>,
}

/// The resolved destination of one call.
#[derive(Debug, Clone)]
pub struct Route<'a> {
    pub service: &'a str,
    pub method: &'a str,
    pub provider: Arc<ProviderPool>,
    /// The service's own bound on a call's deadline.
    pub max_deadline: Option<Duration>,
    /// Whether the method may be retried on another endpoint.
    pub idempotent: bool,
}

/// The connectors of a configuration: to its own backends, and to each
/// partner instance's gateways (trusting that instance's CAs).
#[derive(Debug)]
pub struct Connectors {
    pub own: Arc<UpstreamConnector>,
    pub partners: HashMap<String, Arc<UpstreamConnector>>,
}

impl Connectors {
    /// The connector to providers of `partner`, or to this instance's;
    /// none for a partner without one (never trusting this instance's
    /// CAs for a partner's gateway).
    fn of(&self, partner: Option<&str>) -> Option<Arc<UpstreamConnector>> {
        match partner {
            Some(partner) => self.partners.get(partner).cloned(),
            None => Some(self.own.clone()),
        }
    }
}

/// Service name -> providers, for one configuration.
#[derive(Debug)]
pub struct RouteTable {
    services: HashMap<String, ServiceRoute>,
    /// Every provider's pool.
    pools: HashMap<MemberId, Arc<ProviderPool>>,
}

impl RouteTable {
    /// Builds the table, with one connection pool per provider. Endpoints
    /// that `previous` reached too keep their connections and health.
    /// With `reuse_connections` false (the upstream TLS settings changed),
    /// endpoints keep their health but not their connections.
    pub fn new(
        config: &Config,
        connectors: &Connectors,
        previous: Option<&RouteTable>,
        reuse_connections: bool,
    ) -> Self {
        let known = config.catalog.service_methods();
        let pools: HashMap<MemberId, Arc<ProviderPool>> = config
            .providers
            .values()
            .filter_map(|provider| {
                let connector = match connectors.of(provider.partner.as_deref()) {
                    Some(connector) => connector,
                    // A partner followed from its directory and not learned
                    // yet: no endpoint, so its pool dials nothing (calls to
                    // it are refused before they are routed there).
                    None if provider.endpoints.is_empty() => connectors.own.clone(),
                    None => {
                        // Validation makes one per partner: never reached.
                        tracing::error!(provider = %provider.id, "no connector to its partner instance");
                        return None;
                    }
                };
                let before = previous.and_then(|table| table.pools.get(&provider.id));
                let pool = ProviderPool::new(
                    provider,
                    connector,
                    &config.upstream.pool,
                    before.map(AsRef::as_ref),
                    reuse_connections,
                );
                Some((provider.id.clone(), Arc::new(pool)))
            })
            .collect();
        let services = config
            .services
            .values()
            .map(|service| {
                let providers = service
                    .providers
                    .iter()
                    .filter_map(|id| pools.get(id).cloned())
                    .collect();
                let route = ServiceRoute {
                    methods: known.get(&service.name).cloned(),
                    providers,
                    max_deadline: service.max_deadline,
                    idempotent: service.idempotent.clone(),
                };
                (service.name.clone(), route)
            })
            .collect();
        Self { services, pools }
    }

    /// Every provider's pool.
    pub fn all_pools(&self) -> impl Iterator<Item = &Arc<ProviderPool>> {
        self.pools.values()
    }

    /// The pools of a published service's providers, the default first.
    pub fn pools(&self, service: &str) -> Option<&[Arc<ProviderPool>]> {
        self.services
            .get(service)
            .map(|route| route.providers.as_slice())
    }

    /// Resolves `path` (`/package.Service/Method`), choosing the provider
    /// named by `target` when there is one.
    pub fn route<'a>(
        &self,
        path: &'a str,
        target: Option<&MemberId>,
    ) -> Result<Route<'a>, RouteError> {
        let (service, method) =
            split_path(path).ok_or_else(|| RouteError::BadPath(path.to_owned()))?;
        let route = self
            .services
            .get(service)
            .ok_or_else(|| RouteError::UnknownService(service.to_owned()))?;
        if let Some(methods) = &route.methods
            && !methods.contains(method)
        {
            return Err(RouteError::UnknownMethod {
                service: service.to_owned(),
                method: method.to_owned(),
            });
        }
        let provider = match target {
            // Validation guarantees at least one provider per service.
            None => route.providers.first(),
            Some(target) => route
                .providers
                .iter()
                .find(|pool| pool.provider() == target),
        };
        let provider = provider.ok_or_else(|| match target {
            Some(target) => RouteError::UnknownTarget {
                service: service.to_owned(),
                target: target.clone(),
            },
            None => RouteError::UnknownService(service.to_owned()),
        })?;
        Ok(Route {
            service,
            method,
            provider: provider.clone(),
            max_deadline: route.max_deadline,
            idempotent: route.idempotent.contains(method),
        })
    }
}
