//! `govbridge backup` and `govbridge restore`: what a gateway holds, in
//! one signed directory, and back.
//!
//! A backup holds the gateway's file, the exchange log's signing key, a
//! consistent copy of its SQLite store (`VACUUM INTO`, taken while the
//! gateway runs) and its archives, the consent ledger, and the global
//! configuration it runs (the bundle in its cache). `MANIFEST` names every
//! file with its SHA-256 and where it came from, as a C2SP signed note
//! signed with the log's key: whoever holds the log's public key can tell
//! a backup of this log from any other, and any change to it.
//!
//! A restore checks all of it (the signature, every hash, the exchange log
//! copy as `audit verify` does) before it writes anything, and never
//! overwrites: each file goes where the gateway file given names, and a
//! file already there stops it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use govbridge::config::Config;
use govbridge::exchange_log::store::{DATABASE_FILE, KEY_FILE, VERIFIER_FILE};
use govbridge::note::{SigningKey, Verifier};

/// The manifest's file name and first line.
const MANIFEST: &str = "MANIFEST";
const HEADER: &str = "govbridge backup v1";

/// What each part of a backup is, and where it goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The gateway file: written to `--config`.
    Config,
    /// The exchange log's data directory (store, key).
    Log,
    /// The exchange log's archives.
    Archives,
    /// The consent ledger file.
    Ledger,
    /// The directory's cache (the bundle in use).
    Directory,
}

impl Part {
    const ALL: [Self; 5] = [
        Self::Config,
        Self::Log,
        Self::Archives,
        Self::Ledger,
        Self::Directory,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Log => "exchange-log",
            Self::Archives => "archives",
            Self::Ledger => "consent",
            Self::Directory => "directory",
        }
    }

    fn of(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|part| part.name() == name)
    }
}

/// `govbridge backup --config FILE --out DIR`.
pub fn backup(config_path: &Path, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!(
            "{}: exists; a backup goes into a new directory",
            out.display()
        );
    }
    let config = Config::load(config_path)?;
    let log = &config.exchange_log;
    let key_pem = std::fs::read_to_string(log.data_dir.join(KEY_FILE))
        .with_context(|| format!("{}: the log's signing key", log.data_dir.display()))?;
    let key = SigningKey::from_pem(&log.origin, &key_pem)?;
    let mut staging = Staging {
        dir: out.with_extension("partial"),
        files: Vec::new(),
    };
    let _ = std::fs::remove_dir_all(&staging.dir);
    let file_name = config_path.file_name().map_or_else(
        || "govbridge.toml".to_owned(),
        |name| name.to_string_lossy().into_owned(),
    );
    staging.copy(Part::Config, config_path, &file_name)?;
    staging.copy(Part::Log, &log.data_dir.join(KEY_FILE), KEY_FILE)?;
    staging.copy(Part::Log, &log.data_dir.join(VERIFIER_FILE), VERIFIER_FILE)?;
    let store = log.data_dir.join(DATABASE_FILE);
    if config.store.is_none() && store.exists() {
        staging.snapshot(Part::Log, &store, DATABASE_FILE)?;
    }
    if let Ok(entries) = std::fs::read_dir(&log.archive_dir) {
        for entry in entries.flatten().filter(|entry| entry.path().is_file()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            staging.copy(Part::Archives, &entry.path(), &name)?;
        }
    }
    if let Some(consent) = config.consent.as_ref().filter(|_| config.store.is_none())
        && consent.ledger.exists()
    {
        staging.snapshot(Part::Ledger, &consent.ledger, "consent-ledger.sqlite")?;
    }
    if let Some(global) = &config.global {
        let version = format!("v{}", global.version);
        for (name, from) in walk(&global.dir)? {
            staging.copy(Part::Directory, &from, &format!("{version}/{name}"))?;
        }
        staging.write(
            Part::Directory,
            "current",
            format!("{}\n", global.version).as_bytes(),
        )?;
    }
    let mut text = format!(
        "{HEADER}\nnode {}\ntaken {}\n",
        config.gateway.node_id,
        govbridge::unix_time::now()
    );
    for (part, name) in &staging.files {
        let bytes = std::fs::read(staging.dir.join(part.name()).join(name))?;
        text.push_str(&format!(
            "file {} {} {name}\n",
            govbridge::keys::sha256_hex(&bytes),
            part.name()
        ));
    }
    govbridge::keys::write_file(
        &staging.dir.join(MANIFEST),
        key.sign(&text).as_bytes(),
        0o644,
    )?;
    std::fs::rename(&staging.dir, out)
        .with_context(|| format!("renaming into {}", out.display()))?;
    println!(
        "{}: backup of {} ({} files), signed by {}",
        out.display(),
        config.gateway.node_id,
        staging.files.len(),
        key.verifier().name()
    );
    if config.store.is_some() {
        println!(
            "  the fleet's exchange log and consent uses are in its PostgreSQL database: back it \
             up there (pg_dump)"
        );
    }
    Ok(())
}

/// A backup being written, under a temporary name.
struct Staging {
    dir: PathBuf,
    /// What it holds so far.
    files: Vec<(Part, String)>,
}

impl Staging {
    fn path(&self, part: Part, name: &str) -> PathBuf {
        self.dir.join(part.name()).join(name)
    }

    fn write(&mut self, part: Part, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let to = self.path(part, name);
        govbridge::keys::write_file(&to, bytes, 0o600)
            .with_context(|| format!("writing {}", to.display()))?;
        self.files.push((part, name.to_owned()));
        Ok(())
    }

    fn copy(&mut self, part: Part, from: &Path, name: &str) -> anyhow::Result<()> {
        let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        self.write(part, name, &bytes)
    }

    /// A consistent copy of the SQLite database at `from`.
    fn snapshot(&mut self, part: Part, from: &Path, name: &str) -> anyhow::Result<()> {
        let to = self.path(part, name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        snapshot(from, &to)?;
        self.files.push((part, name.to_owned()));
        Ok(())
    }
}

/// A consistent copy of the SQLite database at `from`, taken while its
/// writer runs.
fn snapshot(from: &Path, to: &Path) -> anyhow::Result<()> {
    let connection = rusqlite::Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", from.display()))?;
    connection
        .busy_timeout(std::time::Duration::from_secs(10))
        .and_then(|()| connection.execute("VACUUM INTO ?1", [to.display().to_string()]))
        .with_context(|| format!("copying {} into {}", from.display(), to.display()))?;
    Ok(())
}

/// Every file under `dir`, by its path from `dir`.
fn walk(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).with_context(|| format!("{}", next.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(name) = path.strip_prefix(dir) {
                found.push((name.to_string_lossy().into_owned(), path.clone()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// One file of a backup, as its manifest names it.
struct Entry {
    hash: String,
    part: Part,
    name: String,
}

/// `govbridge restore --from DIR --config FILE [--key PUB]`.
pub fn restore(from: &Path, config_path: &Path, key: Option<&Path>) -> anyhow::Result<()> {
    let note = std::fs::read_to_string(from.join(MANIFEST))
        .with_context(|| format!("{}: no {MANIFEST}: not a backup", from.display()))?;
    let (verifier, self_signed) = match key {
        Some(key) => (Verifier::read(key).map_err(anyhow::Error::msg)?, false),
        None => (
            Verifier::read(&from.join(Part::Log.name()).join(VERIFIER_FILE))
                .map_err(anyhow::Error::msg)?,
            true,
        ),
    };
    let text = verifier
        .open(&note)
        .with_context(|| format!("{}/{MANIFEST}", from.display()))?;
    let entries = manifest_entries(text)?;
    for entry in &entries {
        let path = from.join(entry.part.name()).join(&entry.name);
        let bytes = std::fs::read(&path).with_context(|| format!("{}: missing", path.display()))?;
        if govbridge::keys::sha256_hex(&bytes) != entry.hash {
            bail!("{}: altered since the backup was signed", path.display());
        }
    }
    for (name, path) in walk(from)? {
        let listed = name == MANIFEST
            || entries
                .iter()
                .any(|entry| format!("{}/{}", entry.part.name(), entry.name) == name);
        if !listed {
            bail!("{}: not in the backup's manifest", path.display());
        }
    }
    let log_copy = from.join(Part::Log.name());
    if log_copy.join(DATABASE_FILE).exists() {
        let archives = from.join(Part::Archives.name());
        let log_key = Verifier::read(&log_copy.join(VERIFIER_FILE)).map_err(anyhow::Error::msg)?;
        let report = govbridge::exchange_log::verify::verify_with_archives(
            &log_copy,
            archives.is_dir().then_some(archives.as_path()),
            &log_key,
        )?;
        if let Some(problem) = report.problem {
            bail!("the backup's exchange log does not verify: {problem}");
        }
        println!(
            "exchange log verified: {} records, latest checkpoint at {}",
            report.records,
            report.latest.map_or(0, |checkpoint| checkpoint.size)
        );
    }

    // Where each part goes: the gateway file given, its [directory] first
    // (the rest of the file needs the bundle).
    let targets = |part: Part, config: Option<&Config>| -> anyhow::Result<Option<PathBuf>> {
        Ok(match (part, config) {
            (Part::Config, _) => Some(config_path.to_owned()),
            (Part::Directory, _) => {
                Config::directory_of_file(config_path)?.map(|directory| directory.cache)
            }
            (Part::Log, Some(config)) => Some(config.exchange_log.data_dir.clone()),
            (Part::Archives, Some(config)) => Some(config.exchange_log.archive_dir.clone()),
            (Part::Ledger, Some(config)) => config
                .consent
                .as_ref()
                .and_then(|consent| consent.ledger.parent().map(Path::to_owned)),
            (_, None) => None,
        })
    };
    if !config_path.exists() {
        let entry = entries
            .iter()
            .find(|entry| entry.part == Part::Config)
            .context("the backup holds no gateway file")?;
        place(
            &from.join(Part::Config.name()).join(&entry.name),
            config_path,
        )?;
    }
    let mut restored = 0;
    for part in [Part::Directory, Part::Log, Part::Archives, Part::Ledger] {
        let config = if part == Part::Directory {
            None
        } else {
            Some(Config::load(config_path)?)
        };
        let Some(target) = targets(part, config.as_ref())? else {
            continue;
        };
        for entry in entries.iter().filter(|entry| entry.part == part) {
            let name = if part == Part::Ledger {
                config
                    .as_ref()
                    .and_then(|config| config.consent.as_ref())
                    .and_then(|consent| consent.ledger.file_name())
                    .map_or_else(
                        || entry.name.clone(),
                        |name| name.to_string_lossy().into_owned(),
                    )
            } else {
                entry.name.clone()
            };
            place(
                &from.join(part.name()).join(&entry.name),
                &target.join(name),
            )?;
            restored += 1;
        }
    }
    println!("restored {restored} files for {}", config_path.display());
    if self_signed {
        println!(
            "  the backup's signature was checked against the key it carries: give --key with \
             the log's public key you keep to know it is your log's backup"
        );
    }
    Ok(())
}

fn manifest_entries(text: &str) -> anyhow::Result<Vec<Entry>> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        bail!("{MANIFEST}: not a govbridge backup manifest");
    }
    let mut entries = Vec::new();
    for line in lines.filter(|line| line.starts_with("file ")) {
        let mut fields = line.splitn(4, ' ').skip(1);
        let (Some(hash), Some(part), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!("{MANIFEST}: malformed line `{line}`");
        };
        let part = Part::of(part).with_context(|| format!("{MANIFEST}: unknown part {part}"))?;
        if name
            .split('/')
            .any(|piece| piece.is_empty() || piece == "..")
        {
            bail!("{MANIFEST}: `{name}` is not a path a backup may hold");
        }
        entries.push(Entry {
            hash: hash.to_owned(),
            part,
            name: name.to_owned(),
        });
    }
    Ok(entries)
}

/// Copies `from` to `to`, which must not exist.
fn place(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        bail!(
            "{}: exists; a restore never overwrites (move it aside first)",
            to.display()
        );
    }
    let bytes = std::fs::read(from)?;
    govbridge::keys::write_file(to, &bytes, 0o600)
        .with_context(|| format!("writing {}", to.display()))
}
