//! The bundles a gateway keeps on disk: the one it runs, which it starts
//! from when the directory cannot be reached, and the one before.
//!
//! ```text
//! DIR/current              "7": the version in use, replaced atomically
//! DIR/v7/manifest.note     its signed manifest
//! DIR/v7/global.toml       its files, as published
//! DIR/v7/policies/...
//! ```
//!
//! A bundle is written in full (each file synced) under a temporary name,
//! renamed into place, and only then pointed to: a crash at any moment
//! leaves the previous one in use. Reading the one in use checks its
//! manifest's signature and every file's hash again.

use std::path::{Path, PathBuf};

use super::{Bundle, BundleError, Manifest};
use crate::note::{NoteError, Verifier};

/// The file that names the version in use.
const CURRENT: &str = "current";
/// The signed manifest, in each version's directory.
pub(super) const MANIFEST: &str = "manifest.note";

/// A gateway's cache of bundles, in a directory of its own.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// A bundle extracted in the cache.
#[derive(Debug, Clone)]
pub struct Installed {
    /// Where its files are.
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Why the cache cannot give the bundle in use.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Bundle { path: PathBuf, error: BundleError },
}

impl Cache {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn version_dir(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version}"))
    }

    /// The bundle in use, if any, checked again: its manifest's signature
    /// by `verifier` and every file's hash.
    pub fn current(&self, verifier: &Verifier) -> Result<Option<Installed>, CacheError> {
        let pointer = self.dir.join(CURRENT);
        let version = match std::fs::read_to_string(&pointer) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| CacheError::Bundle {
                path: pointer.clone(),
                error: BundleError::Malformed(format!("`{}` is not a version", text.trim())),
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(CacheError::Io {
                    path: pointer,
                    error,
                });
            }
        };
        self.read(version, verifier).map(Some)
    }

    /// The highest version in use in the caches beside this one, with the
    /// cache (a
    /// partner's caches, one per directory key it signed with): the floor
    /// of a version this one takes, so that a key's rotation does not
    /// start the partner's versions again from nothing. Those caches'
    /// pointers are the gateway's own files, written once their bundles
    /// were checked; they are read, not checked again.
    pub fn floor_beside(&self) -> Option<(u64, PathBuf)> {
        let parent = self.dir.parent()?;
        std::fs::read_dir(parent)
            .ok()?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| *path != self.dir && path.is_dir())
            .filter_map(|path| Some((Cache::new(&path).pointed()?, path)))
            .max()
    }

    /// The version in use, as the cache's pointer says (not checked
    /// again: see [`Cache::current`]).
    pub fn version_in_use(&self) -> Option<u64> {
        self.pointed()
    }

    /// The version the pointer names, if it names one.
    fn pointed(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join(CURRENT))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
    }

    /// The bundle of `version`, extracted in the cache, checked again.
    fn read(&self, version: u64, verifier: &Verifier) -> Result<Installed, CacheError> {
        Self::read_dir(&self.version_dir(version), Some(version), verifier)
    }

    /// The bundle extracted in `dir` (a cache's version directory, or a
    /// backup's copy of one), checked: its manifest's signature, every
    /// file's hash, and its version when `version` says which it must be.
    pub fn read_dir(
        dir: &Path,
        version: Option<u64>,
        verifier: &Verifier,
    ) -> Result<Installed, CacheError> {
        let dir = dir.to_owned();
        let read =
            |path: PathBuf| std::fs::read(&path).map_err(|error| CacheError::Io { path, error });
        let note_path = dir.join(MANIFEST);
        let note = String::from_utf8(read(note_path.clone())?).unwrap_or_default();
        let bundle_error = |path: &Path, error| CacheError::Bundle {
            path: path.to_owned(),
            error,
        };
        // Unsigned by this key is what a rotation looks like, and is read
        // so (the pointer as a floor); a manifest damaged (empty, cut,
        // not text) is damage, and the cache cannot be used.
        let text = verifier.open(&note).map_err(|error| {
            let error = match error {
                NoteError::Unsigned(_) => BundleError::Unsigned(error),
                damaged => BundleError::Malformed(format!("its manifest: {damaged}")),
            };
            bundle_error(&note_path, error)
        })?;
        let manifest = Manifest::parse(text).map_err(|error| bundle_error(&note_path, error))?;
        if let Some(version) = version.filter(|version| *version != manifest.version) {
            return Err(bundle_error(
                &note_path,
                BundleError::Malformed(format!(
                    "the cache points to version {version}, and its manifest is version {}",
                    manifest.version
                )),
            ));
        }
        for (name, hash) in &manifest.files {
            let path = dir.join(name);
            if super::sha256(&read(path.clone())?) != *hash {
                return Err(bundle_error(&path, BundleError::Altered(name.clone())));
            }
        }
        // A file added beside them would be loaded too (every policy of a
        // directory named by the configuration is): none is taken.
        if let Some(extra) = unlisted(&dir, &dir, &manifest)? {
            let name = extra
                .strip_prefix(&dir)
                .unwrap_or(&extra)
                .display()
                .to_string();
            return Err(bundle_error(&extra, BundleError::Unlisted(name)));
        }
        Ok(Installed { dir, manifest })
    }

    /// Writes `bundle` into the cache, beside the one in use, which it
    /// does not replace: that is [`Cache::commit`]'s, once the gateway has
    /// checked that it can run it.
    pub fn stage(&self, bundle: &Bundle) -> Result<Installed, CacheError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |error| CacheError::Io { path, error }
        };
        let version = bundle.manifest.version;
        if self.pointed() == Some(version) {
            return Err(CacheError::Bundle {
                path: self.dir.join(CURRENT),
                error: BundleError::Republished { version },
            });
        }
        // Versions staged before and never put in use (refused when
        // applied: they are newer than the one in use) go first: a
        // directory that keeps serving versions that cannot run must not
        // fill the disk the exchange log is on.
        let pointed = self.pointed();
        self.remove_versions(|number| pointed.is_none_or(|current| number > current));
        let dir = self.version_dir(version);
        let staging = self.dir.join(format!(
            ".v{}.{}.tmp",
            bundle.manifest.version,
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        let written = (|| {
            for (name, bytes) in &bundle.files {
                let path = staging.join(name);
                crate::keys::write_file(&path, bytes, 0o644).map_err(io(&path))?;
            }
            let path = staging.join(MANIFEST);
            crate::keys::write_file(&path, bundle.note.as_bytes(), 0o644).map_err(io(&path))?;
            // A version staged before (and never used, or used and left)
            // is replaced whole.
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            }
            std::fs::rename(&staging, &dir).map_err(io(&dir))?;
            sync_dir(&self.dir).map_err(io(&self.dir))
        })();
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        written?;
        Ok(Installed {
            dir,
            manifest: bundle.manifest.clone(),
        })
    }

    /// Makes `installed` the bundle in use, then removes every other
    /// version but the one it replaces.
    pub fn commit(&self, installed: &Installed) -> Result<(), CacheError> {
        let pointer = self.dir.join(CURRENT);
        let previous = self.pointed();
        let version = installed.manifest.version;
        let failed = |error| CacheError::Io {
            path: pointer.clone(),
            error,
        };
        crate::keys::write_file(&pointer, format!("{version}\n").as_bytes(), 0o644)
            .map_err(failed)?;
        // The rename itself survives a crash only once the directory is.
        sync_dir(&self.dir).map_err(failed)?;
        let keep = [Some(version), previous];
        self.remove_versions(|number| !keep.contains(&Some(number)));
        Ok(())
    }

    /// Removes the versions `gone` says, and what a staging cut short
    /// left.
    fn remove_versions(&self, gone: impl Fn(u64) -> bool) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .strip_prefix('v')
                .and_then(|number| number.parse::<u64>().ok())
                .is_some_and(&gone);
            if version || (name.starts_with(".v") && name.ends_with(".tmp")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The first file under `dir` (the bundle's extraction at `root`) that is
/// neither `manifest`'s nor the manifest itself.
fn unlisted(root: &Path, dir: &Path, manifest: &Manifest) -> Result<Option<PathBuf>, CacheError> {
    let io = |error| CacheError::Io {
        path: dir.to_owned(),
        error,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        // Not followed: a link is no file of the bundle's.
        if entry.file_type().map_err(io)?.is_dir() {
            if let Some(extra) = unlisted(root, &path, manifest)? {
                return Ok(Some(extra));
            }
            continue;
        }
        let name = path.strip_prefix(root).unwrap_or(&path);
        let listed = name
            .to_str()
            .is_some_and(|name| name == MANIFEST || manifest.files.contains_key(name));
        if !listed {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
