//! What a publication changes, for the operator about to sign it: entries
//! of `global.toml` added, removed or changed (a member, a service, a
//! purpose...), and files added, removed or changed (a policy, a CA).

use std::collections::{BTreeMap, BTreeSet};

use super::{Bundle, GLOBAL_FILE};

/// One change between two bundles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `+` added, `-` removed, `~` changed.
    pub sign: char,
    /// Where: `members`, `services`, `files`...
    pub section: String,
    /// What: a member id, a service name, a file's path, a key.
    pub name: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.sign, self.section, self.name)
    }
}

/// The changes from `old` to `new`, in order of section and name. A
/// `global.toml` that does not parse is compared as a file only.
pub fn diff(old: &Bundle, new: &Bundle) -> Vec<Change> {
    let mut changes = Vec::new();
    let sections = |bundle: &Bundle| {
        bundle
            .files
            .get(GLOBAL_FILE)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .and_then(|text| text.parse::<toml::Table>().ok())
            .unwrap_or_default()
    };
    let (old_sections, new_sections) = (sections(old), sections(new));
    let names: BTreeSet<&String> = old_sections.keys().chain(new_sections.keys()).collect();
    for section in names {
        let entries = |table: &toml::Table| -> BTreeMap<String, toml::Value> {
            match table.get(section) {
                Some(toml::Value::Table(entries)) => entries.clone().into_iter().collect(),
                Some(value) => BTreeMap::from([(String::new(), value.clone())]),
                None => BTreeMap::new(),
            }
        };
        compare(
            section,
            &entries(&old_sections),
            &entries(&new_sections),
            &mut changes,
        );
    }
    compare(
        "files",
        &old.manifest.files,
        &new.manifest.files,
        &mut changes,
    );
    changes
}

fn compare<V: PartialEq>(
    section: &str,
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    changes: &mut Vec<Change>,
) {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let sign = match (old.get(name), new.get(name)) {
            (None, Some(_)) => '+',
            (Some(_), None) => '-',
            (Some(before), Some(after)) if before != after => '~',
            _ => continue,
        };
        changes.push(Change {
            sign,
            section: section.to_owned(),
            name: name.clone(),
        });
    }
}
