//! Moving a gateway to a directory: splits one gateway file into what
//! stays its own and a publication directory of what its instance shares
//! (`global.toml`, the policies, the CAs and CRLs, the consent issuer
//! keys), ready for `govbridge directory publish`.
//!
//! Both are written as TOML tables: comments of the original file are not
//! carried over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// The sections that move whole.
const SHARED: [&str; 8] = [
    "members",
    "providers",
    "services",
    "purposes",
    "policy",
    "limits",
    "federation",
    "instance",
];

/// A gateway file, split.
#[derive(Debug)]
pub struct Split {
    /// The gateway's own file, with `[directory]` added.
    pub local: String,
    /// The publication directory's files, by path: `global.toml` and the
    /// files it names.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Where the gateway will find the directory.
#[derive(Debug)]
pub struct DirectorySettings<'a> {
    pub url: &'a str,
    /// Paths as the gateway file will name them; no CA for `url =
    /// "store"`.
    pub ca: Option<&'a str>,
    pub key: &'a str,
    pub interval: &'a str,
}

/// Splits the gateway file at `path` (relative paths in it resolved
/// against its directory).
pub fn split(path: &Path, directory: &DirectorySettings<'_>) -> Result<Split, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut local: Table = text
        .parse()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if local.contains_key("directory") {
        return Err(format!("{}: has [directory] already", path.display()));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut files = BTreeMap::new();
    let mut global = Table::new();
    for section in SHARED {
        if let Some(value) = local.remove(section) {
            global.insert(section.to_owned(), value);
        }
    }
    if let Some(consent) = local.remove("consent") {
        if consent.get("ledger").is_some() {
            return Err(format!(
                "{}: consent.ledger: a gateway with [directory] counts consent uses in its \
                 data directory (consent-ledger.sqlite) or in the fleet's [store]; move the \
                 ledger there and remove the key first",
                path.display()
            ));
        }
        global.insert("consent".to_owned(), consent);
    }
    let mut copy = |value: &Value, into: &str| -> Result<Value, String> {
        let name = value.as_str().ok_or("a path that is not a string")?;
        let source = base.join(name);
        let file_name = source
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{}: not a file", source.display()))?;
        let target = format!("{into}/{file_name}");
        if source.is_dir() {
            let entries = std::fs::read_dir(&source)
                .map_err(|error| format!("{}: {error}", source.display()))?;
            for entry in entries.flatten() {
                let file = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if file.is_file() && !name.starts_with('.') {
                    add(&mut files, format!("{target}/{name}"), &file)?;
                }
            }
        } else {
            add(&mut files, target.clone(), &source)?;
        }
        Ok(Value::String(target))
    };
    if let Some(Value::Table(policy)) = global.get_mut("policy") {
        for key in ["schema", "policies"] {
            if let Some(value) = policy.get(key) {
                let moved = copy(value, "policy")?;
                policy.insert(key.to_owned(), moved);
            }
        }
    }
    if let Some(Value::Table(consent)) = global.get_mut("consent")
        && let Some(keys) = consent.get("issuer_keys")
    {
        let moved = copy(keys, "consent")?;
        consent.insert("issuer_keys".to_owned(), moved);
    }
    if let Some(Value::Table(services)) = global.get_mut("services") {
        for (_, service) in services.iter_mut() {
            let Some(service) = service.as_table_mut() else {
                continue;
            };
            if let Some(descriptor) = service.get("descriptor") {
                let moved = copy(descriptor, "descriptors")?;
                service.insert("descriptor".to_owned(), moved);
            }
        }
    }
    if let Some(Value::Table(partners)) = global.get_mut("federation") {
        for (instance, partner) in partners.iter_mut() {
            let Some(partner) = partner.as_table_mut() else {
                continue;
            };
            let into = format!("federation/{instance}");
            for key in ["ca", "key", "log_key", "directory_ca", "directory_key"] {
                if let Some(value) = partner.get(key) {
                    let moved = copy(value, &into)?;
                    partner.insert(key.to_owned(), moved);
                }
            }
            if let Some(Value::Array(list)) = partner.get("crls") {
                let moved = list
                    .iter()
                    .map(|crl| copy(crl, &into))
                    .collect::<Result<Vec<_>, _>>()?;
                partner.insert("crls".to_owned(), Value::Array(moved));
            }
        }
    }
    // What partners learn of this instance, with the keys they learn.
    if let Some(Value::Table(instance)) = global.get_mut("instance") {
        for key in ["federation_key", "log_key"] {
            if let Some(value) = instance.get(key) {
                let moved = copy(value, "instance")?;
                instance.insert(key.to_owned(), moved);
            }
        }
    }
    let mut trust = Table::new();
    for (section, ca, crls, into) in [
        (
            &["gateway", "tls"][..],
            "client_ca",
            "client_crls",
            "pki/members",
        ),
        (
            &["upstream"][..],
            "server_ca",
            "server_crls",
            "pki/backends",
        ),
    ] {
        let table = table_at(&mut local, section)
            .ok_or_else(|| format!("{}: no [{}]", path.display(), section.join(".")))?;
        let ca_value = table
            .remove(ca)
            .ok_or_else(|| format!("{}: no {}.{ca}", path.display(), section.join(".")))?;
        trust.insert(ca.to_owned(), copy(&ca_value, into)?);
        if let Some(Value::Array(list)) = table.remove("crls") {
            let moved = list
                .iter()
                .map(|crl| copy(crl, into))
                .collect::<Result<Vec<_>, _>>()?;
            trust.insert(crls.to_owned(), Value::Array(moved));
        }
    }
    global.insert("trust".to_owned(), Value::Table(trust));
    let mut settings = Table::new();
    for (key, value) in [
        ("url", Some(directory.url)),
        ("ca", directory.ca),
        ("key", Some(directory.key)),
        ("interval", Some(directory.interval)),
    ] {
        if let Some(value) = value {
            settings.insert(key.to_owned(), Value::String(value.to_owned()));
        }
    }
    local.insert("directory".to_owned(), Value::Table(settings));
    let render = |table: &Table| toml::to_string_pretty(table).map_err(|error| error.to_string());
    files.insert(super::GLOBAL_FILE.to_owned(), render(&global)?.into_bytes());
    Ok(Split {
        local: render(&local)?,
        files,
    })
}

/// Adds the file at `source` to `files` as `target`; two files for one
/// target (two CRLs both named `crl.pem`, say) are refused, never one
/// dropped.
fn add(files: &mut BTreeMap<String, Vec<u8>>, target: String, source: &Path) -> Result<(), String> {
    let bytes = std::fs::read(source).map_err(|error| format!("{}: {error}", source.display()))?;
    match files.entry(target) {
        std::collections::btree_map::Entry::Occupied(taken) if *taken.get() != bytes => {
            Err(format!(
                "{}: another file already goes to {} in the publication: rename one of them",
                source.display(),
                taken.key()
            ))
        }
        std::collections::btree_map::Entry::Occupied(_) => Ok(()),
        std::collections::btree_map::Entry::Vacant(free) => {
            free.insert(bytes);
            Ok(())
        }
    }
}

fn table_at<'a>(table: &'a mut Table, path: &[&str]) -> Option<&'a mut Table> {
    path.iter()
        .try_fold(table, |table, key| table.get_mut(*key)?.as_table_mut())
}

/// Writes `split`'s publication directory under `dir`.
pub fn write_publication(split: &Split, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for (name, bytes) in &split.files {
        let path = dir.join(name);
        crate::keys::write_file(&path, bytes, 0o644)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
