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

use prost::Message;

use crate::config::Config;
use crate::identity::MemberId;
use crate::proxy::GatewayError;
pub use upstream::{ProviderPool, UpstreamConnector};

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
    pub fn new(
        config: &Config,
        connector: &Arc<UpstreamConnector>,
        previous: Option<&RouteTable>,
    ) -> Self {
        let known = service_methods();
        let pools: HashMap<MemberId, Arc<ProviderPool>> = config
            .providers
            .values()
            .map(|provider| {
                let before = previous.and_then(|table| table.pools.get(&provider.id));
                let pool = ProviderPool::new(
                    provider,
                    connector.clone(),
                    &config.upstream.pool,
                    before.map(AsRef::as_ref),
                );
                (provider.id.clone(), Arc::new(pool))
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
    ) -> Result<Route<'a>, GatewayError> {
        let (service, method) =
            split_path(path).ok_or_else(|| GatewayError::BadPath(path.to_owned()))?;
        let route = self
            .services
            .get(service)
            .ok_or_else(|| GatewayError::UnknownService(service.to_owned()))?;
        if let Some(methods) = &route.methods
            && !methods.contains(method)
        {
            return Err(GatewayError::UnknownMethod {
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
            Some(target) => GatewayError::UnknownTarget {
                service: service.to_owned(),
                target: target.clone(),
            },
            None => GatewayError::UnknownService(service.to_owned()),
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

/// Splits `/package.Service/Method` into its service and method.
pub(crate) fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    (valid(service) && valid(method) && !method.contains('.')).then_some((service, method))
}

/// Every service of the compiled-in descriptors, by full name.
fn compiled_services() -> Vec<(String, prost_types::ServiceDescriptorProto)> {
    let Ok(set) = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    let mut services = Vec::new();
    for file in set.file {
        let package = file.package.unwrap_or_default();
        for service in file.service {
            let name = match &service.name {
                Some(name) if package.is_empty() => name.clone(),
                Some(name) => format!("{package}.{name}"),
                None => continue,
            };
            services.push((name, service));
        }
    }
    services
}

/// Methods of every service in the compiled-in descriptors, by full
/// service name.
pub fn service_methods() -> HashMap<String, HashSet<String>> {
    compiled_services()
        .into_iter()
        .map(|(name, service)| {
            let methods = service.method.into_iter().filter_map(|method| method.name);
            (name, methods.collect())
        })
        .collect()
}

/// `/package.Service/Method` of every method of the compiled-in
/// descriptors whose client streams its requests.
pub fn client_streaming_methods() -> HashSet<String> {
    compiled_services()
        .into_iter()
        .flat_map(|(name, service)| {
            service
                .method
                .into_iter()
                .filter(|method| method.client_streaming())
                .filter_map(move |method| Some(format!("/{name}/{}", method.name?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_method_paths() {
        assert_eq!(
            split_path("/govbridge.tax.v1.TaxAuthority/GetTaxClearance"),
            Some(("govbridge.tax.v1.TaxAuthority", "GetTaxClearance"))
        );
        assert_eq!(split_path("/a.B/"), None);
        assert_eq!(split_path("a.B/C"), None);
        assert_eq!(split_path("/a.B/C/D"), None);
        assert_eq!(split_path("/a.B/C?x=1"), None);
    }

    #[test]
    fn knows_the_compiled_services() {
        let known = service_methods();
        let civil = &known["govbridge.civilregistry.v1.CivilRegistry"];
        assert!(civil.contains("GetPerson"));
        assert!(civil.contains("WatchLifeEvents"));
    }
}
