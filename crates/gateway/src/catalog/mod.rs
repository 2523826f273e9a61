//! What the protos say: the services a gateway can publish and their
//! methods, which methods stream, the gateway's own services, where a
//! request names its data subject, and the descriptors reflection serves.
//!
//! A [`Catalog`] holds the compiled-in protos (the gateway's own services,
//! health and reflection) and the descriptor sets a configuration adds
//! (`[services."X"] descriptor`, what `protoc --descriptor_set_out
//! --include_imports` or `buf build` writes). Every published service is
//! known that way, the mock agencies' included: the development
//! configuration registers their sets ([`crate::proto::AGENCY_DESCRIPTOR_SETS`])
//! as any provider would.
//!
//! The one owner of descriptors: no other module decodes
//! [`crate::proto::FILE_DESCRIPTOR_SET`] or a configuration's sets, or walks
//! descriptors. Routing, configuration and policy ask a catalog which
//! services and methods exist; consent binding and the exchange log ask
//! its [`subject`] fields where the subject is; the proxy asks its
//! [`json`] routes which method a JSON request calls, and how to read and
//! write that method's messages as JSON.

pub mod descriptors;
pub mod json;
pub mod subject;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use descriptors::DescribedFile;

pub const DIRECTORY: &str = "govbridge.directory.v1.Directory";
pub const HEALTH: &str = "grpc.health.v1.Health";
pub const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
pub const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
pub const EXCHANGE_LOG: &str = crate::proto::audit::v1::exchange_log_server::SERVICE_NAME;
pub const DATA_TRACKER: &str = crate::proto::audit::v1::data_tracker_server::SERVICE_NAME;
pub const WITNESS: &str = crate::proto::witness::v1::witness_server::SERVICE_NAME;

/// The services the gateway answers itself.
pub const LOCAL_SERVICES: [&str; 7] = [
    DIRECTORY,
    HEALTH,
    REFLECTION_V1,
    REFLECTION_V1ALPHA,
    EXCHANGE_LOG,
    DATA_TRACKER,
    WITNESS,
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

/// What the gateway knows of services: the compiled-in protos and the
/// descriptor sets its configuration adds. Built once per configuration
/// (shared by the state built from it), never on the request path.
#[derive(Debug)]
pub struct Catalog {
    /// Methods of every service, by full service name.
    methods: HashMap<String, HashSet<String>>,
    /// `/package.Service/Method` of every method that streams, and
    /// whether its requests do (else its responses alone).
    streaming: HashMap<String, bool>,
    subjects: subject::SubjectFields,
    descriptors: descriptors::DescriptorIndex,
    /// Every file, linked: what JSON calls are read and written with.
    pool: prost_reflect::DescriptorPool,
    /// The JSON routes of every method.
    json: crate::catalog::json::Routes,
}

/// Why a descriptor set cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("not an encoded FileDescriptorSet: {0}")]
    Decode(String),
    #[error(
        "its file {0} is also one the gateway (or another set) has, with other content: a \
         proto file's name must name one content"
    )]
    Conflict(String),
    #[error(
        "its descriptors do not link (build the set with its imports: protoc \
             --include_imports, or buf build): {0}"
    )]
    Link(String),
    #[error(transparent)]
    Subject(#[from] subject::SubjectError),
    #[error(
        "{0}: one service's JSON route may not take another's requests; change one of the two \
         google.api.http rules"
    )]
    RouteOverlap(String),
}

impl Catalog {
    /// The compiled-in protos alone, decoded once per process.
    pub fn compiled() -> &'static Arc<Self> {
        static COMPILED: LazyLock<Arc<Catalog>> = LazyLock::new(|| {
            Arc::new(Catalog::with_sets(&[]).unwrap_or_else(|error| {
                // A unit test proves the compiled protos load; were they
                // broken, the gateway would know no service.
                tracing::error!(%error, "the compiled-in descriptors are unusable");
                Catalog::empty()
            }))
        });
        &COMPILED
    }

    fn empty() -> Self {
        Self {
            methods: HashMap::new(),
            streaming: HashMap::new(),
            subjects: subject::SubjectFields::default(),
            descriptors: descriptors::DescriptorIndex::default(),
            pool: prost_reflect::DescriptorPool::new(),
            json: crate::catalog::json::Routes::default(),
        }
    }

    /// The compiled-in protos and `sets`, each an encoded
    /// `FileDescriptorSet` with its imports. A file of a set that the
    /// gateway has already is taken once if it says the same (source
    /// comments aside, options included), refused otherwise; but a set's
    /// copy of a well-known type the gateway compiles in
    /// (`google/protobuf/descriptor.proto`, which every protobuf release
    /// extends and none changes on the wire) gives way to the gateway's,
    /// whichever `protoc` or `buf` built it. Two sets' copies of another
    /// (`timestamp.proto`) must say the same.
    pub fn with_sets(sets: &[&[u8]]) -> Result<Self, CatalogError> {
        let compiled = Compiled::get()?;
        let mut files = compiled.files.clone();
        let mut known: HashMap<String, usize> = files
            .iter()
            .enumerate()
            .map(|(at, file)| (file.name().to_owned(), at))
            .collect();
        for bytes in sets {
            let set = DescribedFile::of_set(bytes)
                .map_err(|error| CatalogError::Decode(error.to_string()))?;
            for file in set {
                if let Some(&at) = known.get(file.name()) {
                    let gateways_well_known =
                        at < compiled.files.len() && file.name().starts_with(WELL_KNOWN);
                    if !gateways_well_known
                        && !same_content(&compiled.pool, &files[at].encoded, &file.encoded)
                    {
                        return Err(CatalogError::Conflict(file.name().to_owned()));
                    }
                    continue;
                }
                known.insert(file.name().to_owned(), files.len());
                files.push(file);
            }
        }
        // The compiled pool, decoded once, with the new files linked to it;
        // from the bytes, which keep the options prost-types drops (the
        // data subject markings). Files it has are skipped.
        let mut pool = compiled.pool.clone();
        for bytes in sets {
            pool.decode_file_descriptor_set(*bytes)
                .map_err(|error| CatalogError::Link(error.to_string()))?;
        }
        Self::of(&pool, files)
    }

    fn of(
        pool: &prost_reflect::DescriptorPool,
        files: Vec<DescribedFile>,
    ) -> Result<Self, CatalogError> {
        let mut methods: HashMap<String, HashSet<String>> = HashMap::new();
        let mut streaming = HashMap::new();
        for service in pool.services() {
            let known = methods.entry(service.full_name().to_owned()).or_default();
            for method in service.methods() {
                known.insert(method.name().to_owned());
                if method.is_client_streaming() || method.is_server_streaming() {
                    let path = format!("/{}/{}", service.full_name(), method.name());
                    streaming.insert(path, method.is_client_streaming());
                }
            }
        }
        Ok(Self {
            methods,
            streaming,
            subjects: subject::SubjectFields::of_pool(pool)?,
            descriptors: descriptors::DescriptorIndex::of(files),
            json: {
                let routes = crate::catalog::json::Routes::of(pool);
                if let Some(overlap) = routes.overlapping().first() {
                    return Err(CatalogError::RouteOverlap(overlap.to_string()));
                }
                for refused in routes.refused() {
                    tracing::warn!(method = %refused.method, reason = %refused.reason, "a google.api.http route is not used; the method keeps its default JSON route");
                }
                routes
            },
            pool: pool.clone(),
        })
    }

    /// Methods of every service, by full service name.
    pub fn service_methods(&self) -> &HashMap<String, HashSet<String>> {
        &self.methods
    }

    /// Whether a service of that full name is described.
    pub fn declares(&self, service: &str) -> bool {
        self.methods.contains_key(service)
    }

    /// Whether the method at `/package.Service/Method` streams its
    /// requests (a retry would replay them).
    pub fn streams_requests(&self, path: &str) -> bool {
        self.streaming.get(path).copied().unwrap_or(false)
    }

    /// Whether the method at `/package.Service/Method` streams its
    /// requests, its responses or both: a call that lasts as long as its
    /// parties want, not a request's latency.
    pub fn streams(&self, path: &str) -> bool {
        self.streaming.contains_key(path)
    }

    /// Where each method's request names its data subject.
    pub fn subjects(&self) -> &subject::SubjectFields {
        &self.subjects
    }

    /// The descriptors, for reflection and `GetServiceDescriptor`.
    pub fn descriptors(&self) -> &descriptors::DescriptorIndex {
        &self.descriptors
    }

    /// Every message, enum and service, linked.
    pub fn pool(&self) -> &prost_reflect::DescriptorPool {
        &self.pool
    }

    /// The JSON routes of every method (`crate::catalog::json`).
    pub fn json_routes(&self) -> &crate::catalog::json::Routes {
        &self.json
    }
}

/// The compiled-in descriptors, decoded and linked once per process.
struct Compiled {
    files: Vec<DescribedFile>,
    pool: prost_reflect::DescriptorPool,
}

impl Compiled {
    fn get() -> Result<&'static Self, CatalogError> {
        static COMPILED: LazyLock<Result<Compiled, String>> = LazyLock::new(|| {
            let compiled = [
                crate::proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ];
            let mut files: Vec<DescribedFile> = Vec::new();
            let mut pool = prost_reflect::DescriptorPool::new();
            for bytes in compiled {
                let set = DescribedFile::of_set(bytes).map_err(|error| error.to_string())?;
                for file in set {
                    // The sets share some files (descriptor.proto).
                    if files.iter().all(|known| known.name() != file.name()) {
                        files.push(file);
                    }
                }
                pool.decode_file_descriptor_set(bytes)
                    .map_err(|error| error.to_string())?;
            }
            Ok(Compiled { files, pool })
        });
        COMPILED
            .as_ref()
            .map_err(|error| CatalogError::Link(format!("the compiled-in descriptors: {error}")))
    }
}

/// Where the well-known types' files are.
const WELL_KNOWN: &str = "google/protobuf/";

/// Whether two encoded files say the same, source comments and positions
/// aside: options included, the custom ones too (a field's
/// `data_subject`, a method's `google.api.http`), which `prost_types`
/// would drop.
fn same_content(pool: &prost_reflect::DescriptorPool, a: &[u8], b: &[u8]) -> bool {
    let Some(file) = pool.get_message_by_name("google.protobuf.FileDescriptorProto") else {
        return a == b;
    };
    let strip = |bytes: &[u8]| {
        let mut decoded = prost_reflect::DynamicMessage::decode(file.clone(), bytes).ok()?;
        decoded.clear_field_by_name("source_code_info");
        Some(decoded)
    };
    match (strip(a), strip(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
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
    fn knows_its_own_services_and_the_registered_ones() {
        let compiled = Catalog::compiled();
        assert!(compiled.declares(DIRECTORY));
        assert!(compiled.declares(EXCHANGE_LOG));
        assert!(compiled.declares(HEALTH));
        let civil = "govbridge.civilregistry.v1.CivilRegistry";
        assert!(
            !compiled.declares(civil),
            "agencies are registered, not compiled in"
        );

        let known = testing::agencies().service_methods();
        assert!(known[civil].contains("GetPerson"));
        assert!(known[civil].contains("WatchLifeEvents"));
        assert!(known.contains_key(DIRECTORY));
    }

    /// The files of an encoded set, each as its bytes, and a set of them.
    fn files_of(set: &[u8]) -> Vec<DescribedFile> {
        DescribedFile::of_set(set).unwrap()
    }

    /// An encoded `FileDescriptorSet` of files as they are encoded.
    fn raw_set(files: Vec<Vec<u8>>) -> Vec<u8> {
        let mut set = Vec::new();
        for file in &files {
            prost::encoding::bytes::encode(1, file, &mut set);
        }
        set
    }

    fn agency_set(name: &str) -> &'static [u8] {
        crate::proto::AGENCY_DESCRIPTOR_SETS
            .iter()
            .find(|(agency, _)| *agency == name)
            .unwrap()
            .1
    }

    /// A set built by another protobuf release than the gateway's: its
    /// `descriptor.proto` lacks what came since (here, its last message).
    #[test]
    fn a_set_with_another_releases_well_known_types_is_taken() {
        let mut older = Vec::new();
        for file in files_of(agency_set("civilregistry")) {
            if file.name() == "google/protobuf/descriptor.proto" {
                let mut proto = file.proto.clone();
                proto.message_type.pop();
                older.push(prost::Message::encode_to_vec(&proto));
            } else {
                older.push(file.encoded);
            }
        }
        let catalog = Catalog::with_sets(&[&raw_set(older)]).unwrap();
        // Its data subject markings are read as before.
        assert!(
            catalog
                .subjects()
                .field("/govbridge.civilregistry.v1.CivilRegistry/GetPerson")
                .is_some()
        );
    }

    /// A well-known type the gateway does not compile in is compared like
    /// any shared file: two sets' copies must say the same.
    #[test]
    fn two_sets_copies_of_another_well_known_type_must_agree() {
        use prost_types::field_descriptor_proto::{Label, Type};
        use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
        let timestamp = |fields: i32| {
            let file = FileDescriptorProto {
                name: Some("google/protobuf/timestamp.proto".to_owned()),
                package: Some("google.protobuf".to_owned()),
                syntax: Some("proto3".to_owned()),
                message_type: vec![DescriptorProto {
                    name: Some("Timestamp".to_owned()),
                    field: (1..=fields)
                        .map(|number| FieldDescriptorProto {
                            name: Some(format!("f{number}")),
                            number: Some(number),
                            r#type: Some(Type::Int64.into()),
                            label: Some(Label::Optional.into()),
                            ..FieldDescriptorProto::default()
                        })
                        .collect(),
                    ..DescriptorProto::default()
                }],
                ..FileDescriptorProto::default()
            };
            raw_set(vec![prost::Message::encode_to_vec(&file)])
        };
        let (two, three) = (timestamp(2), timestamp(3));
        Catalog::with_sets(&[&two, &two]).unwrap();
        let error = Catalog::with_sets(&[&two, &three]).unwrap_err();
        assert!(
            matches!(&error, CatalogError::Conflict(file) if file == "google/protobuf/timestamp.proto"),
            "{error}"
        );
    }

    /// Two sets whose shared file differs only in its custom options (a
    /// field's `data_subject` dropped): which copy wins must not depend
    /// on the order, so the second is refused.
    #[test]
    fn a_shared_file_with_other_options_is_refused() {
        let set = agency_set("civilregistry");
        let stripped: Vec<Vec<u8>> = files_of(set)
            .into_iter()
            .map(|file| {
                // prost_types keeps no extension: every custom option goes.
                prost::Message::encode_to_vec(&file.proto)
            })
            .collect();
        let error = Catalog::with_sets(&[set, &raw_set(stripped)]).unwrap_err();
        assert!(
            matches!(&error, CatalogError::Conflict(file) if file.contains("civil_registry")),
            "{error}"
        );
    }

    #[test]
    fn knows_which_methods_stream() {
        let agencies = testing::agencies();
        let civil = "/govbridge.civilregistry.v1.CivilRegistry";
        assert!(!agencies.streams(&format!("{civil}/GetPerson")));
        // responses streamed, requests streamed, both
        assert!(agencies.streams(&format!("{civil}/WatchLifeEvents")));
        assert!(agencies.streams("/govbridge.tax.v1.TaxAuthority/SubmitWithholdings"));
        assert!(agencies.streams("/govbridge.tax.v1.TaxAuthority/StreamDeclaredIncome"));
        assert!(!agencies.streams(&format!("{civil}/NoSuchMethod")));
        // Only the ones whose requests stream cannot be replayed.
        assert!(!agencies.streams_requests(&format!("{civil}/WatchLifeEvents")));
        assert!(agencies.streams_requests("/govbridge.tax.v1.TaxAuthority/SubmitWithholdings"));
        assert!(!agencies.streams_requests(&format!("{civil}/GetPerson")));
    }
}

/// The mock agencies' services, as the development configuration
/// registers them.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;
    use std::sync::LazyLock;

    use super::Catalog;
    use crate::proto::AGENCY_DESCRIPTOR_SETS;

    /// The compiled-in protos and every agency's set.
    pub fn agencies() -> &'static Catalog {
        static AGENCIES: LazyLock<Catalog> = LazyLock::new(|| {
            Catalog::with_sets(&AGENCY_DESCRIPTOR_SETS.map(|(_, set)| set))
                .expect("the agencies' descriptor sets load")
        });
        &AGENCIES
    }

    /// Writes each agency's set to `dir/descriptors/NAME.binpb`, where the
    /// development configuration names them.
    pub fn write_agency_descriptors(dir: &Path) {
        let descriptors = dir.join("descriptors");
        std::fs::create_dir_all(&descriptors).expect("a descriptors directory");
        for (name, set) in AGENCY_DESCRIPTOR_SETS {
            std::fs::write(descriptors.join(format!("{name}.binpb")), set)
                .expect("a descriptor set written");
        }
    }
}
