//! What the compiled protos say: the services a gateway can publish and
//! their methods, which methods stream, the gateway's own services, where a
//! request names its data subject, and the descriptors reflection serves.
//!
//! The one owner of the descriptor set: no other module decodes
//! [`crate::proto::FILE_DESCRIPTOR_SET`] or walks descriptors. Routing,
//! configuration and policy ask here which services and methods exist;
//! consent binding and the exchange log ask [`subject`] where the subject
//! is.

pub mod descriptors;
pub mod subject;

use std::collections::{HashMap, HashSet};

use prost::Message as _;

pub const DIRECTORY: &str = "govbridge.directory.v1.Directory";
pub const HEALTH: &str = "grpc.health.v1.Health";
pub const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
pub const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
pub const EXCHANGE_LOG: &str = crate::proto::audit::v1::exchange_log_server::SERVICE_NAME;
pub const DATA_TRACKER: &str = crate::proto::audit::v1::data_tracker_server::SERVICE_NAME;

/// The services the gateway answers itself.
pub const LOCAL_SERVICES: [&str; 6] = [
    DIRECTORY,
    HEALTH,
    REFLECTION_V1,
    REFLECTION_V1ALPHA,
    EXCHANGE_LOG,
    DATA_TRACKER,
];

/// Whether `path` (`/package.Service/Method`) is one of the gateway's own
/// services.
pub fn is_local(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, _)| LOCAL_SERVICES.contains(&service))
}

/// Splits `/package.Service/Method` into its service and method.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
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
/// service name. Decoded once: configurations, routes and policies ask at
/// every load, and the set is some hundreds of kilobytes.
pub fn service_methods() -> &'static HashMap<String, HashSet<String>> {
    static METHODS: std::sync::OnceLock<HashMap<String, HashSet<String>>> =
        std::sync::OnceLock::new();
    METHODS.get_or_init(|| {
        compiled_services()
            .into_iter()
            .map(|(name, service)| {
                let methods = service.method.into_iter().filter_map(|method| method.name);
                (name, methods.collect())
            })
            .collect()
    })
}

/// `/package.Service/Method` of every method of the compiled-in
/// descriptors whose client streams its requests. Decoded once.
pub fn client_streaming_methods() -> &'static HashSet<String> {
    static STREAMING: std::sync::OnceLock<HashSet<String>> = std::sync::OnceLock::new();
    STREAMING.get_or_init(|| {
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
    })
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
