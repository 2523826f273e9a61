//! The global configuration: what every gateway of an instance shares,
//! published by the instance's directory as one signed, versioned bundle
//! with an expiry, as X-Road's central server publishes its global
//! configuration.
//!
//! What is shared: members and groups, trusted CAs and CRLs, purposes,
//! providers and services, policies, consent issuer keys, limits (the
//! sections of `global.toml`, see `config/global/` for the dev instance's).
//! What stays in each gateway's own file: its addresses, keys and
//! certificates, exchange log and store, and `[directory]`, where the
//! bundle comes from and which key signs it.
//!
//! # The bundle
//!
//! One JSON document, `{"manifest": NOTE, "files": {PATH: BASE64, ...}}`,
//! where NOTE is a C2SP signed note (see [`crate::note`]) signed with the
//! instance's configuration key, whose text is the manifest:
//!
//! ```text
//! govbridge global configuration v1
//! instance SN
//! version 7
//! issued 1764880000
//! expires 1765484800
//! file 3f0a...e1 global.toml
//! file 9b2c...07 policies/banks.cedar
//! ```
//!
//! Every file is named with its SHA-256, and nothing else is a file of the
//! bundle: one signature covers the whole configuration. Versions only
//! grow; a gateway refuses a bundle older than the one it runs, one
//! republished under the same version with other content, one past its
//! expiry, and one signed by any other key.
//!
//! - [`Bundle`]: building, signing, reading and verifying a bundle.
//! - [`cache`]: the last good bundles a gateway keeps on disk.
//! - [`http`]: a directory serving a bundle over HTTPS, and fetching it.
//! - [`partner`]: what a partner instance publishes of how to reach and
//!   trust it.
//! - [`diff`]: what a publication changes.
//! - [`split`]: a gateway file split into its own part and a publication.

pub mod cache;
pub mod diff;
pub mod http;
pub mod partner;
pub mod split;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::note::{NoteError, SigningKey, Verifier};

/// The file of a bundle that holds its sections; every other file is one
/// it names.
pub const GLOBAL_FILE: &str = "global.toml";

/// The manifest's first line: the format and its version.
const HEADER: &str = "govbridge global configuration v1";

/// The largest bundle a gateway takes.
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;

/// The most files a bundle holds: an instance's policies, descriptors,
/// CAs and CRLs are tens. Each is written and synced into the cache before
/// the bundle is applied: a partner's bundle of hundreds of thousands of
/// tiny files (64 MB holds some 700,000) would fill the data volume's
/// inodes and hold every reload for as long as it took.
pub const MAX_BUNDLE_FILES: usize = 4096;

/// Why a bundle is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not a bundle: {0}")]
    Malformed(String),
    #[error("the bundle's manifest is not signed by the instance's configuration key: {0}")]
    Unsigned(NoteError),
    #[error("the bundle's file {0} does not match its manifest's SHA-256: it was altered")]
    Altered(String),
    #[error("the bundle's manifest names {0}, which the bundle does not carry")]
    Missing(String),
    #[error("the bundle carries {0}, which its manifest does not name")]
    Unlisted(String),
    #[error("the bundle is for instance `{found}`, not `{expected}`")]
    WrongInstance { expected: String, found: String },
    #[error("the bundle (version {version}) expired at {}", crate::unix_time::rfc3339(*at))]
    Expired { version: u64, at: i64 },
    #[error(
        "the bundle's version {offered} is older than version {current}, which this gateway runs"
    )]
    Replayed { offered: u64, current: u64 },
    #[error(
        "the bundle's version {offered} is older than version {floor}, which this gateway ran \
         under the instance's previous key (cache {}): versions go on across a key's rotation. \
         If that version is not to be trusted (the old key leaked), remove that cache",
        cache.display()
    )]
    Behind {
        offered: u64,
        floor: u64,
        cache: std::path::PathBuf,
    },
    #[error(
        "version {version} was published before with other content: a publication takes a new version"
    )]
    Republished { version: u64 },
    #[error("{0}")]
    Build(String),
}

impl BundleError {
    /// The refusal's kind, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::Build(_) => "malformed",
            Self::Unsigned(_) => "unsigned",
            Self::Altered(_) | Self::Missing(_) | Self::Unlisted(_) => "altered",
            Self::WrongInstance { .. } => "wrong-instance",
            Self::Expired { .. } => "expired",
            Self::Replayed { .. } | Self::Behind { .. } => "replayed",
            Self::Republished { .. } => "republished",
        }
    }
}

/// What a bundle says of itself, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The instance (`SN`): the first part of its members' ids.
    pub instance: String,
    /// Grows with every publication.
    pub version: u64,
    /// When it was signed, and until when it may be used (seconds since
    /// the epoch).
    pub issued: i64,
    pub expires: i64,
    /// Every file, by its path in the bundle, with its SHA-256.
    pub files: BTreeMap<String, [u8; 32]>,
}

impl Manifest {
    /// The manifest's text, which the note signs.
    pub fn text(&self) -> String {
        let mut text = format!(
            "{HEADER}\ninstance {}\nversion {}\nissued {}\nexpires {}\n",
            self.instance, self.version, self.issued, self.expires
        );
        for (path, hash) in &self.files {
            text.push_str(&format!("file {} {path}\n", hex(hash)));
        }
        text
    }

    /// Reads a manifest's text.
    pub fn parse(text: &str) -> Result<Self, BundleError> {
        let malformed = |what: &str| BundleError::Malformed(format!("its manifest {what}"));
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(malformed(&format!("does not start with `{HEADER}`")));
        }
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| malformed(&format!("has no `{name}` line where expected")))
        };
        let instance = field("instance")?;
        if !is_instance(&instance) {
            return Err(malformed(&format!("names instance `{instance}`")));
        }
        let number = |name: &str, value: String| {
            value
                .parse::<i64>()
                .map_err(|_| malformed(&format!("has `{name} {value}`, not a number")))
        };
        let version = number("version", field("version")?)?;
        let issued = number("issued", field("issued")?)?;
        let expires = number("expires", field("expires")?)?;
        let mut files = BTreeMap::new();
        for line in lines {
            let (hash, path) = line
                .strip_prefix("file ")
                .and_then(|rest| rest.split_once(' '))
                .ok_or_else(|| malformed(&format!("has `{line}`, not `file SHA256 PATH`")))?;
            let hash =
                unhex(hash).ok_or_else(|| malformed(&format!("has a bad hash for {path}")))?;
            check_path(path)?;
            if files.insert(path.to_owned(), hash).is_some() {
                return Err(malformed(&format!("names {path} twice")));
            }
            if files.len() > MAX_BUNDLE_FILES {
                return Err(malformed(&format!(
                    "names more than {MAX_BUNDLE_FILES} files"
                )));
            }
        }
        if !files.contains_key(GLOBAL_FILE) {
            return Err(BundleError::Missing(GLOBAL_FILE.to_owned()));
        }
        Ok(Self {
            instance,
            version: u64::try_from(version).map_err(|_| malformed("has a negative version"))?,
            issued,
            expires,
            files,
        })
    }

    /// Whether it may still be used at `now` (seconds since the epoch).
    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.expires
    }
}

/// A bundle: its signed manifest and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The signed note of [`Manifest::text`].
    pub note: String,
    pub manifest: Manifest,
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    manifest: String,
    files: BTreeMap<String, String>,
}

impl Bundle {
    /// Builds and signs a bundle of every file under `dir` (hidden files
    /// and directories aside), which must hold [`GLOBAL_FILE`].
    pub fn build(
        dir: &Path,
        instance: &str,
        version: u64,
        valid_for: Duration,
        key: &SigningKey,
    ) -> Result<Self, BundleError> {
        Self::build_signed_by(dir, instance, version, valid_for, &[key])
    }

    /// [`Self::build`], signed by each of `keys`: while the configuration
    /// key is replaced, gateways that know either take the bundle.
    pub fn build_signed_by(
        dir: &Path,
        instance: &str,
        version: u64,
        valid_for: Duration,
        keys: &[&SigningKey],
    ) -> Result<Self, BundleError> {
        if keys.is_empty() {
            return Err(BundleError::Build(
                "no key to sign the bundle with".to_owned(),
            ));
        }
        if !is_instance(instance) {
            return Err(BundleError::Build(format!(
                "`{instance}` is not an instance name: 1 to 16 of A-Z, 0-9 and '-'"
            )));
        }
        // What a manifest's reader takes: a version past it would be
        // published, and refused by every gateway.
        if i64::try_from(version).is_err() {
            return Err(BundleError::Build(format!(
                "version {version} is past the largest a gateway reads ({})",
                i64::MAX
            )));
        }
        let mut files = BTreeMap::new();
        collect(dir, dir, &mut files)?;
        if files.len() > MAX_BUNDLE_FILES {
            return Err(BundleError::Malformed(format!(
                "{} holds {} files: a bundle holds at most {MAX_BUNDLE_FILES}",
                dir.display(),
                files.len()
            )));
        }
        if !files.contains_key(GLOBAL_FILE) {
            return Err(BundleError::Build(format!(
                "{}: no {GLOBAL_FILE}: a bundle is built from the directory that holds it",
                dir.display()
            )));
        }
        let issued = crate::unix_time::now();
        let valid_for = i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX);
        let manifest = Manifest {
            instance: instance.to_owned(),
            version,
            issued,
            expires: issued.saturating_add(valid_for),
            files: files
                .iter()
                .map(|(path, bytes)| (path.clone(), sha256(bytes)))
                .collect(),
        };
        Ok(Self {
            note: SigningKey::sign_by_all(keys, &manifest.text()),
            manifest,
            files,
        })
    }

    /// The bundle as the directory serves it.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = Wire {
            manifest: self.note.clone(),
            files: self
                .files
                .iter()
                .map(|(path, bytes)| (path.clone(), BASE64.encode(bytes)))
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&wire).unwrap_or_default();
        json.push(b'\n');
        json
    }

    /// Reads a bundle and checks it is whole and signed by `verifier`:
    /// its manifest's signature, and every file against the manifest.
    /// Whether it may replace another is [`Bundle::accept`]'s question.
    pub fn open(bytes: &[u8], verifier: &Verifier) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::Malformed(format!(
                "{} bytes, over the limit of {MAX_BUNDLE_BYTES}",
                bytes.len()
            )));
        }
        let wire: Wire = serde_json::from_slice(bytes)
            .map_err(|error| BundleError::Malformed(error.to_string()))?;
        let text = verifier
            .open(&wire.manifest)
            .map_err(BundleError::Unsigned)?;
        let manifest = Manifest::parse(text)?;
        let mut files = BTreeMap::new();
        for (path, encoded) in wire.files {
            let Some(hash) = manifest.files.get(&path) else {
                return Err(BundleError::Unlisted(path));
            };
            let bytes = BASE64
                .decode(encoded)
                .map_err(|_| BundleError::Altered(path.clone()))?;
            if sha256(&bytes) != *hash {
                return Err(BundleError::Altered(path));
            }
            files.insert(path, bytes);
        }
        if let Some(missing) = manifest
            .files
            .keys()
            .find(|path| !files.contains_key(*path))
        {
            return Err(BundleError::Missing(missing.clone()));
        }
        Ok(Self {
            note: wire.manifest,
            manifest,
            files,
        })
    }

    /// Whether this bundle may replace `current` (the manifest a gateway
    /// runs, if any) at `now`: `Ok(false)` when it is the same
    /// publication, an error when it must be refused.
    pub fn accept(
        &self,
        instance: &str,
        current: Option<&Manifest>,
        now: i64,
    ) -> Result<bool, BundleError> {
        self.accept_above(instance, current, None, now)
    }

    /// [`Bundle::accept`], refusing too a version below `floor` (one run
    /// under the instance's previous key, from the cache named).
    pub fn accept_above(
        &self,
        instance: &str,
        current: Option<&Manifest>,
        floor: Option<(u64, std::path::PathBuf)>,
        now: i64,
    ) -> Result<bool, BundleError> {
        let manifest = &self.manifest;
        if manifest.instance != instance {
            return Err(BundleError::WrongInstance {
                expected: instance.to_owned(),
                found: manifest.instance.clone(),
            });
        }
        if let Some((floor, cache)) = floor.filter(|(floor, _)| manifest.version < *floor) {
            return Err(BundleError::Behind {
                offered: manifest.version,
                floor,
                cache,
            });
        }
        if let Some(current) = current {
            if manifest.version < current.version {
                return Err(BundleError::Replayed {
                    offered: manifest.version,
                    current: current.version,
                });
            }
            if manifest.version == current.version {
                return if manifest == current {
                    Ok(false)
                } else {
                    Err(BundleError::Republished {
                        version: manifest.version,
                    })
                };
            }
        }
        if manifest.is_expired(now) {
            return Err(BundleError::Expired {
                version: manifest.version,
                at: manifest.expires,
            });
        }
        Ok(true)
    }
}

/// Adds every regular file under `dir` to `files`, by its path from
/// `root`.
fn collect(
    root: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), BundleError> {
    let failed = |path: &Path, error: std::io::Error| {
        BundleError::Build(format!("{}: {error}", path.display()))
    };
    let entries = std::fs::read_dir(dir).map_err(|error| failed(dir, error))?;
    for entry in entries {
        let entry = entry.map_err(|error| failed(dir, error))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|error| failed(&path, error))?;
        if kind.is_dir() {
            collect(root, &path, files)?;
        } else if kind.is_file() {
            let name = path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .ok_or_else(|| BundleError::Build(format!("{}: not a UTF-8 path", path.display())))?
                .to_owned();
            check_path(&name)
                .map_err(|error| BundleError::Build(format!("{}: {error}", path.display())))?;
            let bytes = std::fs::read(&path).map_err(|error| failed(&path, error))?;
            files.insert(name, bytes);
        } else {
            return Err(BundleError::Build(format!(
                "{}: neither a file nor a directory (a link?): copy what it points to",
                path.display()
            )));
        }
    }
    Ok(())
}

/// A path inside a bundle: relative, `/`-separated, no `.` or `..`, no
/// hidden part, printable ASCII without spaces, and not the manifest a
/// gateway keeps beside the files. A gateway writes the files under its
/// cache: nothing may point out of it.
fn check_path(path: &str) -> Result<(), BundleError> {
    if is_bundle_path(path) && path != cache::MANIFEST {
        Ok(())
    } else {
        Err(BundleError::Malformed(format!(
            "`{path}` is not a file path a bundle may hold (relative, `/`-separated, \
             printable ASCII, no `.`, `..` or hidden part)"
        )))
    }
}

/// Whether `path` names something inside a bundle: relative,
/// `/`-separated, each part a plain name (no `.`, `..`, hidden or empty
/// part), printable ASCII without spaces or backslashes. The paths in a
/// bundle's `global.toml` must be such paths too: a configuration whose
/// signature covers its files cannot name one outside them.
pub fn is_bundle_path(path: &str) -> bool {
    !path.is_empty()
        && path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.'))
}

/// An instance name: `SN`, `AZ`, `EE-TEST`.
pub fn is_instance(name: &str) -> bool {
    (1..=16).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut hash = [0; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0; 32];
    for (at, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * at..2 * at + 2)?, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests;
