//! An index of the protobuf descriptors the gateway knows: its own
//! services, gRPC health and reflection, and the services its
//! configuration registers; what reflection and `GetServiceDescriptor`
//! serve.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto};

/// One file of a descriptor set: decoded, and as it was encoded, which is
/// what is served (prost-types drops extension options such as
/// `govbridge.options.v1.data_subject` when it encodes a file again).
#[derive(Debug, Clone)]
pub struct DescribedFile {
    pub proto: FileDescriptorProto,
    pub encoded: Vec<u8>,
}

/// A `FileDescriptorSet` whose files are kept as their bytes.
#[derive(Clone, PartialEq, Message)]
struct EncodedSet {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

impl DescribedFile {
    /// The files of an encoded `FileDescriptorSet`.
    pub fn of_set(bytes: &[u8]) -> Result<Vec<Self>, prost::DecodeError> {
        EncodedSet::decode(bytes)?
            .file
            .into_iter()
            .map(|encoded| {
                Ok(Self {
                    proto: FileDescriptorProto::decode(encoded.as_slice())?,
                    encoded,
                })
            })
            .collect()
    }

    pub fn name(&self) -> &str {
        self.proto.name()
    }
}

/// Files by name, and the file that defines each symbol.
#[derive(Debug, Default)]
pub struct DescriptorIndex {
    files: HashMap<String, DescribedFile>,
    symbols: HashMap<String, String>,
    services: HashMap<String, String>,
}

impl DescriptorIndex {
    /// An index of `files`; of two files of the same name, the first.
    pub fn of(files: impl IntoIterator<Item = DescribedFile>) -> Self {
        let mut index = Self::default();
        for file in files {
            index.add(file);
        }
        index
    }
}

fn qualify(package: &str, name: &str) -> String {
    if package.is_empty() {
        name.to_owned()
    } else {
        format!("{package}.{name}")
    }
}

impl DescriptorIndex {
    fn add(&mut self, described: DescribedFile) {
        let name = described.name().to_owned();
        if self.files.contains_key(&name) {
            return;
        }
        let file = &described.proto;
        let package = file.package().to_owned();
        for message in &file.message_type {
            self.add_message(&package, message, &name);
        }
        for enumeration in &file.enum_type {
            self.symbols
                .insert(qualify(&package, enumeration.name()), name.clone());
        }
        for service in &file.service {
            let full = qualify(&package, service.name());
            for method in &service.method {
                self.symbols
                    .insert(format!("{full}.{}", method.name()), name.clone());
            }
            self.symbols.insert(full.clone(), name.clone());
            self.services.insert(full, name.clone());
        }
        self.files.insert(name, described);
    }

    fn add_message(&mut self, scope: &str, message: &DescriptorProto, file: &str) {
        let full = qualify(scope, message.name());
        for nested in &message.nested_type {
            self.add_message(&full, nested, file);
        }
        for enumeration in &message.enum_type {
            self.symbols
                .insert(qualify(&full, enumeration.name()), file.to_owned());
        }
        self.symbols.insert(full, file.to_owned());
    }

    /// The file that defines `symbol` (a message, enum, service or method).
    pub fn file_of_symbol(&self, symbol: &str) -> Option<&str> {
        self.symbols
            .get(symbol.trim_start_matches('.'))
            .map(String::as_str)
    }

    /// The file that defines `service`.
    pub fn file_of_service(&self, service: &str) -> Option<&str> {
        self.services.get(service).map(String::as_str)
    }

    /// Whether the index has a file of that name.
    pub fn has_file(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    /// `name` and every file it imports, transitively.
    pub fn closure(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut pending = vec![name.to_owned()];
        while let Some(next) = pending.pop() {
            if let Some(file) = self.files.get(&next)
                && seen.insert(next)
            {
                pending.extend(file.proto.dependency.iter().cloned());
            }
        }
        seen
    }

    /// The files named, encoded, dependencies first.
    pub fn encoded(&self, names: &BTreeSet<String>) -> Vec<Vec<u8>> {
        let mut ordered: Vec<&DescribedFile> = Vec::new();
        let mut placed = BTreeSet::new();
        // Repeatedly place files whose imports are placed: a topological
        // order, which some reflection clients expect.
        while placed.len() < names.len() {
            let before = placed.len();
            for name in names {
                if placed.contains(name) {
                    continue;
                }
                if let Some(file) = self.files.get(name) {
                    let ready = file.proto.dependency.iter().all(|dependency| {
                        placed.contains(dependency) || !names.contains(dependency)
                    });
                    if ready {
                        placed.insert(name.clone());
                        ordered.push(file);
                    }
                } else {
                    placed.insert(name.clone());
                }
            }
            if placed.len() == before {
                break;
            }
        }
        ordered
            .into_iter()
            .map(|file| file.encoded.clone())
            .collect()
    }

    /// The descriptors of one service as an encoded FileDescriptorSet.
    pub fn service_set(&self, service: &str) -> Option<Vec<u8>> {
        let file = self.file_of_service(service)?;
        let names = self.closure(file);
        let set = EncodedSet {
            file: names
                .iter()
                .filter_map(|name| Some(self.files.get(name)?.encoded.clone()))
                .collect(),
        };
        Some(set.encode_to_vec())
    }
}
