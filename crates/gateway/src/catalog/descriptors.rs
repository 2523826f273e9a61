//! An index of the protobuf descriptors the gateway knows: its agencies',
//! its own services, gRPC health and reflection, and the services its
//! configuration adds; what reflection and `GetServiceDescriptor` serve.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// Files by name, and the file that defines each symbol.
#[derive(Debug, Default)]
pub struct DescriptorIndex {
    files: HashMap<String, FileDescriptorProto>,
    symbols: HashMap<String, String>,
    services: HashMap<String, String>,
}

impl DescriptorIndex {
    /// An index of `files`; of two files of the same name, the first.
    pub fn of(files: impl IntoIterator<Item = FileDescriptorProto>) -> Self {
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
    fn add(&mut self, file: FileDescriptorProto) {
        let name = file.name().to_owned();
        if self.files.contains_key(&name) {
            return;
        }
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
        self.files.insert(name, file);
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
                pending.extend(file.dependency.iter().cloned());
            }
        }
        seen
    }

    /// The files named, encoded, dependencies first.
    pub fn encoded(&self, names: &BTreeSet<String>) -> Vec<Vec<u8>> {
        let mut ordered: Vec<&FileDescriptorProto> = Vec::new();
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
                    let ready = file.dependency.iter().all(|dependency| {
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
        ordered.into_iter().map(Message::encode_to_vec).collect()
    }

    /// The descriptors of one service as an encoded FileDescriptorSet.
    pub fn service_set(&self, service: &str) -> Option<Vec<u8>> {
        let file = self.file_of_service(service)?;
        let names = self.closure(file);
        let set = FileDescriptorSet {
            file: names
                .iter()
                .filter_map(|name| self.files.get(name).cloned())
                .collect(),
        };
        Some(set.encode_to_vec())
    }
}
