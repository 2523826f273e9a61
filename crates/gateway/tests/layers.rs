//! The gateway's architecture, checked: its top-level modules form layers,
//! each importing only from the layers below it (so there is no cycle),
//! each contract has one owner, and the call path runs as its diagram.
//!
//! Read from the source rather than the compiler: `crate::module` paths in
//! code outside test modules and comments. Unit tests (`#[cfg(test)] mod
//! tests`, sibling `tests.rs` files) may reach anywhere.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom. A module may import from any layer below its own, never
/// from its own layer or above. docs/architecture.md explains each.
const LAYERS: &[&[&str]] = &[
    &["proxy"],
    &["directory"],
    &["policy", "consent", "exchange_log", "routing"],
    &["telemetry", "database"],
    &["config"],
    &["net", "global", "federation"],
    &["wire", "catalog", "note", "addresses"],
    &["identity", "keys", "unix_time", "proto"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// The crate's non-test source files: (top-level module, code without
/// comments or unit tests).
fn code() -> Vec<(String, PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    let mut code = Vec::new();
    for path in files {
        let relative = path.strip_prefix(&root).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_owned();
        if relative.file_name().is_some_and(|name| name == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests close a file, by this crate's convention.
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(at) => &text[..at],
            None => &text[..],
        };
        let text: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        code.push((module, relative.to_owned(), text));
    }
    code
}

/// The top-level modules `code` names through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::B, c}`: the first segment of each path.
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for path in group.split(',') {
                let name = ident(path.trim());
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found
}

#[test]
fn modules_import_only_from_the_layers_below() {
    let mut violations = BTreeMap::new();
    for (module, file, text) in code() {
        if module == "lib" {
            continue;
        }
        let own = layer_of(&module)
            .unwrap_or_else(|| panic!("module `{module}` is in no layer of tests/layers.rs"));
        for imported in imports(&text) {
            if imported == module {
                continue;
            }
            let theirs = layer_of(&imported).unwrap_or_else(|| {
                panic!("{}: `crate::{imported}` is in no layer", file.display())
            });
            if theirs <= own {
                violations
                    .entry(format!("{module} -> {imported}"))
                    .or_insert_with(Vec::new)
                    .push(file.display().to_string());
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports from the same layer or above: {violations:#?}"
    );
}

#[test]
fn only_wire_names_the_bridge_headers() {
    let mut declared = Vec::new();
    for (module, file, text) in code() {
        if module == "wire" {
            continue;
        }
        for (at, _) in text.match_indices("\"bridge-") {
            let rest = &text[at + 1..];
            let literal = &rest[..rest.find('"').unwrap_or(rest.len())];
            // A whole literal that is a header name, not a message about one.
            if literal.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
                declared.push(format!("{}: \"{literal}\"", file.display()));
            }
        }
    }
    assert!(
        declared.is_empty(),
        "bridge-* names outside crate::wire: {declared:#?}"
    );
}

#[test]
fn only_the_catalog_reads_the_descriptors() {
    let mut readers = Vec::new();
    for (module, file, text) in code() {
        if module == "catalog" {
            continue;
        }
        for needle in [
            "FILE_DESCRIPTOR_SET",
            "DescriptorPool",
            "FileDescriptorSet",
            "FileDescriptorProto",
        ] {
            // `proto.rs` embeds the set the build wrote; nothing else may.
            if text.contains(needle) && !(module == "proto" && needle == "FILE_DESCRIPTOR_SET") {
                readers.push(format!("{}: {needle}", file.display()));
            }
        }
    }
    assert!(
        readers.is_empty(),
        "descriptors read outside crate::catalog: {readers:#?}"
    );
}

/// The phases of the request path, in the order of the diagram in the
/// crate docs and docs/architecture.md.
const PHASES: &[&str] = &[
    "admit",
    "read_headers",
    "transcode",
    "route",
    "authorize",
    "bind_consent",
    "record_decision",
    "forward",
    "relay",
];

/// The body of `fn name` in `text`, up to its closing brace at the same
/// indentation.
fn function<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text
        .find(&format!("fn {name}("))
        .or_else(|| text.find(&format!("fn {name}<")))?;
    let line_start = text[..start].rfind('\n').map_or(0, |at| at + 1);
    let indent = &text[line_start..start];
    let indent = &indent[..indent.len() - indent.trim_start().len()];
    let end = text[start..].find(&format!("\n{indent}}}\n"))?;
    Some(&text[start..start + end])
}

#[test]
fn the_call_path_reads_as_its_diagram() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy/call");
    let run_file = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
    let run = function(&run_file, "run").expect("Call::run in proxy/call/mod.rs");
    // `run` fits on a screen: the phases are elsewhere.
    let lines = run.lines().count();
    assert!(lines <= 40, "Call::run is {lines} lines long");
    // It calls every phase, in the diagram's order.
    let mut last = 0;
    for phase in PHASES {
        let at = run
            .find(&format!(".{phase}("))
            .unwrap_or_else(|| panic!("Call::run does not call the phase `{phase}`"));
        assert!(at > last, "`{phase}` runs out of the diagram's order");
        last = at;
    }
    // A phase longer than a few lines is in a file of its own.
    let mut files = Vec::new();
    sources(&dir, &mut files);
    for phase in PHASES {
        let (file, lines) = files
            .iter()
            .find_map(|file| {
                let text = std::fs::read_to_string(file).unwrap();
                Some((file, function(&text, phase)?.lines().count()))
            })
            .unwrap_or_else(|| panic!("the phase `{phase}` is no function in proxy/call/"));
        assert!(
            lines <= 25 || !file.ends_with("mod.rs"),
            "the phase `{phase}` ({lines} lines) is not in a file of its own"
        );
    }
}

#[test]
fn a_long_run_or_a_missing_phase_is_seen() {
    let text = "impl Call {\n    async fn run(&mut self) {\n        self.admit();\n    }\n}\n";
    let run = function(text, "run").unwrap();
    assert!(run.contains(".admit("));
    assert!(!run.contains(".route("));
    assert_eq!(run.lines().count(), 2);
}

/// The reader of this file would trust it less if it could not fail: a
/// made-up upward import is caught.
#[test]
fn an_upward_import_is_seen() {
    let found = imports(
        "use crate::{proxy::Gateway, wire};\nlet x = crate::exchange_log::ExchangeLog::open();",
    );
    assert_eq!(
        found,
        ["exchange_log", "proxy", "wire"]
            .map(str::to_owned)
            .into_iter()
            .collect()
    );
    assert!(layer_of("wire") > layer_of("proxy"));
}
