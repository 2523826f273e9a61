//! `govbridge backup` and `govbridge restore`: what a gateway holds, in
//! one signed directory, and back.
//!
//! A backup holds the gateway's file, the exchange log's signing key, a
//! consistent copy of its SQLite store (taken while the gateway runs, a
//! chunk at a time: `govbridge::exchange_log::copy`) and its archives, the consent ledger, and the global
//! configuration it runs (the bundle in its cache), what its witness of
//! partners' logs cosigned last, and the partners' receipts it kept. `MANIFEST` names every
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

use govbridge::config::{Config, PARTNERS_DIR};
use govbridge::exchange_log::archive;
use govbridge::exchange_log::receipts::RECEIPTS_FILE;
use govbridge::exchange_log::store::{DATABASE_FILE, KEY_FILE, VERIFIER_FILE};
use govbridge::exchange_log::witness::STATE_DIR;
use govbridge::note::{SigningKey, Verifier};

/// The manifest's file name and first line.
const MANIFEST: &str = "MANIFEST";
const HEADER: &str = "govbridge backup v1";
/// The consent ledger's name in a backup.
const LEDGER_FILE: &str = "consent-ledger.sqlite";

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
    /// The checkpoints of partners' logs this gateway cosigned last: a
    /// witness that lost them would cosign a fork.
    Witness,
    /// The caches of the partners' directories this gateway follows: the
    /// version each runs is the floor of the next it takes, and without it
    /// a restored gateway would take an older one back (a rollback of what
    /// the partner revoked since).
    Partners,
}

impl Part {
    const ALL: [Self; 7] = [
        Self::Config,
        Self::Log,
        Self::Archives,
        Self::Ledger,
        Self::Directory,
        Self::Witness,
        Self::Partners,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Log => "exchange-log",
            Self::Archives => "archives",
            Self::Ledger => "consent",
            Self::Directory => "directory",
            Self::Witness => "witness",
            Self::Partners => "partners",
        }
    }

    fn of(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|part| part.name() == name)
    }
}

/// `govbridge backup --config FILE --out DIR`.
pub fn backup(config_path: &Path, out: &Path) -> anyhow::Result<()> {
    // `DIR/` is `DIR`: the staging directory goes beside it, not in it.
    let out: &Path = &out.components().collect::<PathBuf>();
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
        // Beside it, whatever bytes its name holds (its display would
        // put U+FFFD in a name that is not UTF-8, and make a stray parent).
        dir: {
            let mut dir = out.as_os_str().to_owned();
            dir.push(format!(".partial-{}", unique()));
            PathBuf::from(dir)
        },
        files: Vec::new(),
    };
    // Private, as the data directory is: the copies hold who asked what
    // about whom.
    {
        use std::os::unix::fs::DirBuilderExt as _;
        if let Some(parent) = staging
            .dir
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Made here, not found: nobody else chose its mode or owner.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging.dir)
            .with_context(|| format!("creating {}", staging.dir.display()))?;
    }
    let written = write_backup(config_path, &config, &key, &mut staging).and_then(|()| {
        std::fs::rename(&staging.dir, out)
            .with_context(|| format!("renaming into {}", out.display()))
    });
    // Nothing of a failed backup is left: it holds who asked what about
    // whom.
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging.dir);
    }
    written?;
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

/// Writes every part of the backup of the gateway at `config_path` into
/// `staging`, then its signed manifest.
fn write_backup(
    config_path: &Path,
    config: &Config,
    key: &SigningKey,
    staging: &mut Staging,
) -> anyhow::Result<()> {
    let log = &config.exchange_log;
    // Its name is only a label (a restore writes the file where its
    // --config says): one a backup cannot hold (a space, a leading dot,
    // not ASCII) is replaced.
    let file_name = config_path
        .file_name()
        .and_then(|name| name.to_str())
        .filter(|name| Part::Config.may_hold(name))
        .unwrap_or("govbridge.toml")
        .to_owned();
    staging.copy(Part::Config, config_path, &file_name)?;
    staging.copy(Part::Log, &log.data_dir.join(KEY_FILE), KEY_FILE)?;
    staging.copy(Part::Log, &log.data_dir.join(VERIFIER_FILE), VERIFIER_FILE)?;
    // The archives there before the store's copy: an archive run beside
    // may write more meanwhile (`archive::list_with`).
    let archives_before = if log.archive_dir.exists() {
        archive::list(&log.archive_dir)?
    } else {
        Vec::new()
    };
    let store = log.data_dir.join(DATABASE_FILE);
    let mut archived_end = 0;
    if config.store.is_none() && store.exists() {
        staging.copy_log(&log.data_dir)?;
        let copy = staging.dir.join(Part::Log.name());
        archived_end = govbridge::exchange_log::Store::open_read_only(&copy)
            .and_then(|copy| copy.archived_end())
            .with_context(|| format!("reading the copy of {}", store.display()))?;
    }
    // The partners' receipts this node kept (a fleet's nodes each keep
    // their own).
    let receipts = log.data_dir.join(RECEIPTS_FILE);
    if receipts.exists() {
        staging.snapshot(Part::Log, &receipts, RECEIPTS_FILE)?;
    }
    // The archives only: not a run's temporary file, nor anything else an
    // operator keeps there. A directory that cannot be read fails the
    // backup, which would otherwise miss records the store no longer has.
    if log.archive_dir.exists() {
        let (archives, _later) =
            archive::list_with(&log.archive_dir, &archives_before, archived_end)?;
        for from in archives {
            let name = from
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            staging.copy(Part::Archives, &from, &name)?;
        }
    }
    // What the witness cosigned last of each partner: without it, a
    // restored witness could cosign a fork. Unreadable, it fails the
    // backup.
    let witness = log.data_dir.join(STATE_DIR);
    let entries = match std::fs::read_dir(&witness) {
        Ok(entries) => Some(entries),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", witness.display()));
        }
    };
    for entry in entries.into_iter().flatten() {
        let entry = entry.with_context(|| format!("reading {}", witness.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if Part::Witness.may_hold(&name) {
            staging.copy(Part::Witness, &entry.path(), &name)?;
        }
    }
    let partners = log.data_dir.join(PARTNERS_DIR);
    if partners.is_dir() {
        for (name, from) in walk(&partners)? {
            if Part::Partners.may_hold(&name) {
                staging.copy(Part::Partners, &from, &name)?;
            }
        }
    }
    if let Some(consent) = config.consent.as_ref().filter(|_| config.store.is_none())
        && consent.ledger.exists()
    {
        staging.snapshot(Part::Ledger, &consent.ledger, LEDGER_FILE)?;
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
    // Checked as a restore will check it, so that a backup said to be
    // taken can be restored.
    let log_copy = staging.dir.join(Part::Log.name());
    if log_copy.join(DATABASE_FILE).exists() {
        let archives = staging.dir.join(Part::Archives.name());
        let report = super::audit::verify_showing(
            &log_copy,
            archives.is_dir().then_some(archives.as_path()),
            &key.verifier(),
        )?;
        if let Some(problem) = report.problem {
            bail!("the exchange log's copy does not verify: {problem}");
        }
    }
    let mut text = format!(
        "{HEADER}\nnode {}\ntaken {}\n",
        config.gateway.node_id,
        govbridge::unix_time::now()
    );
    for (part, name) in &staging.files {
        let path = staging.path(*part, name);
        let hash = govbridge::keys::sha256_file_hex(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.push_str(&format!("file {hash} {} {name}\n", part.name()));
    }
    let manifest = staging.dir.join(MANIFEST);
    govbridge::keys::write_file(&manifest, key.sign(&text).as_bytes(), 0o600)
        .with_context(|| format!("writing {}", manifest.display()))
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
        self.database(part, name, |to| snapshot(from, to))
    }

    /// A consistent copy of the exchange log's database in `data`, taken
    /// a chunk at a time beside its gateway (see
    /// `govbridge::exchange_log::copy`).
    fn copy_log(&mut self, data: &Path) -> anyhow::Result<()> {
        self.database(Part::Log, DATABASE_FILE, |to| {
            let mut progress = super::progress::Progress::on_stderr("copied");
            govbridge::exchange_log::copy::copy_log_watched(data, to, &mut |copied, of| {
                progress.records(copied, Some(of));
            })
            .with_context(|| format!("copying {} into {}", data.display(), to.display()))
            .map(drop)
        })
    }

    /// The database `name` of `part`, made by `make` and made private.
    fn database(
        &mut self,
        part: Part,
        name: &str,
        make: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let to = self.path(part, name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        make(&to)?;
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .with_context(|| format!("{}: making it private", to.display()))?;
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
        .and_then(|()| {
            connection.execute(
                "VACUUM INTO CAST(?1 AS TEXT)",
                [govbridge::exchange_log::copy::sql_name(to)],
            )
        })
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

impl Entry {
    fn source(&self, backup: &Path) -> PathBuf {
        backup.join(self.part.name()).join(&self.name)
    }
}

/// `govbridge restore --from DIR --config FILE --key PUB`.
pub fn restore(from: &Path, config_path: &Path, key: &Path) -> anyhow::Result<()> {
    // 1. The backup, checked whole before anything is written.
    let verifier = Verifier::read(key).map_err(anyhow::Error::msg)?;
    let manifest = from.join(MANIFEST);
    let note = std::fs::read_to_string(&manifest)
        .with_context(|| format!("{}: not a backup", manifest.display()))?;
    let text = verifier
        .open(&note)
        .with_context(|| format!("{}: not signed by {}", manifest.display(), key.display()))?;
    let entries = manifest_entries(&manifest, text)?;
    for entry in &entries {
        let path = entry.source(from);
        let hash = govbridge::keys::sha256_file_hex(&path)
            .with_context(|| format!("{}: missing from the backup", path.display()))?;
        if hash != entry.hash {
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
        let report = super::audit::verify_showing(
            &log_copy,
            archives.is_dir().then_some(archives.as_path()),
            &verifier,
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

    // 2. Where each file goes: the gateway file given (or the backup's),
    // with the backup's bundle as its global configuration.
    let config_entry = entries.iter().find(|entry| entry.part == Part::Config);
    let config_text = if config_path.exists() {
        std::fs::read_to_string(config_path)
            .with_context(|| format!("reading {}", config_path.display()))?
    } else {
        let entry = config_entry.context("the backup holds no gateway file")?;
        std::fs::read_to_string(entry.source(from))?
    };
    let directory = Config::directory_of(config_path, &config_text)?;
    let staged = match &directory {
        Some(directory) => {
            let pointer = from.join(Part::Directory.name()).join("current");
            let version = std::fs::read_to_string(&pointer)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .with_context(|| {
                    format!(
                        "{}: the backup holds no global configuration",
                        pointer.display()
                    )
                })?;
            let dir = from
                .join(Part::Directory.name())
                .join(format!("v{version}"));
            Some(
                govbridge::global::cache::Cache::read_dir(&dir, Some(version), &directory.verifier)
                    .with_context(|| format!("{}", dir.display()))?,
            )
        }
        None => None,
    };
    let config = Config::parse_with(config_path, &config_text, staged.as_ref())?;
    let mut moves: Vec<(&Entry, PathBuf)> = Vec::new();
    // What the backup holds and the gateway file has no place for.
    let mut left: std::collections::BTreeMap<&str, (usize, &str)> = Default::default();
    let mut leave = |entry: &Entry, why: &'static str| {
        left.entry(entry.part.name()).or_insert((0, why)).0 += 1;
    };
    for entry in &entries {
        let target = match entry.part {
            Part::Config if config_path.exists() => continue,
            Part::Config => config_path.to_owned(),
            Part::Directory => match &directory {
                Some(directory) => directory.cache.join(&entry.name),
                None => {
                    leave(entry, "the gateway file has no [directory]");
                    continue;
                }
            },
            Part::Log => config.exchange_log.data_dir.join(&entry.name),
            Part::Archives => config.exchange_log.archive_dir.join(&entry.name),
            Part::Witness => config
                .exchange_log
                .data_dir
                .join(STATE_DIR)
                .join(&entry.name),
            Part::Partners => config
                .exchange_log
                .data_dir
                .join(PARTNERS_DIR)
                .join(&entry.name),
            Part::Ledger => match &config.consent {
                Some(consent) => consent.ledger.clone(),
                None => {
                    leave(
                        entry,
                        "the gateway file has no [consent]: the uses it counted are lost",
                    );
                    continue;
                }
            },
        };
        moves.push((entry, target));
    }
    // A database's journal left beside its target counts as the database:
    // SQLite would replay an old log's frames into the restored copy.
    let taken = moves.iter().find_map(|(_, target)| {
        std::iter::once(target.clone())
            .chain(["-wal", "-shm", "-journal"].map(|suffix| {
                let mut path = target.clone().into_os_string();
                path.push(suffix);
                PathBuf::from(path)
            }))
            .find(|path| path.exists())
    });
    if let Some(taken) = taken {
        bail!(
            "{}: exists; a restore never overwrites (move it aside first): nothing was written",
            taken.display()
        );
    }

    // 3. Each file copied beside its target, checked again, then linked
    // into place (which fails rather than replace a file that appeared
    // meanwhile); on any failure, what was placed is removed.
    let mut placed: Vec<PathBuf> = Vec::new();
    let result = moves.iter().try_for_each(|(entry, target)| {
        place(&entry.source(from), target, &entry.hash)?;
        placed.push(target.clone());
        anyhow::Ok(())
    });
    if let Err(error) = result {
        for path in placed.iter().rev() {
            let _ = std::fs::remove_file(path);
        }
        return Err(error.context("restore undone: nothing is left of it"));
    }
    println!(
        "restored {} files for {}",
        placed.len(),
        config_path.display()
    );
    for (part, (files, why)) in left {
        eprintln!("warning: not restored: the backup's {part} ({files} files): {why}");
    }
    Ok(())
}

/// The files a backup's manifest (`path`, signed text `text`) names, each
/// a name its part may hold.
fn manifest_entries(path: &Path, text: &str) -> anyhow::Result<Vec<Entry>> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        bail!("{}: not a govbridge backup manifest", path.display());
    }
    let mut entries = Vec::new();
    for line in lines.filter(|line| line.starts_with("file ")) {
        let mut fields = line.splitn(4, ' ').skip(1);
        let (Some(hash), Some(part), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!("{}: malformed line `{line}`", path.display());
        };
        let part =
            Part::of(part).with_context(|| format!("{}: unknown part {part}", path.display()))?;
        if !part.may_hold(name) {
            bail!("{}: {} cannot hold `{name}`", path.display(), part.name());
        }
        entries.push(Entry {
            hash: hash.to_owned(),
            part,
            name: name.to_owned(),
        });
    }
    Ok(entries)
}

impl Part {
    /// Whether a backup's `part` may hold a file named `name`: only what
    /// `backup` writes there, so that a restore writes nowhere else.
    fn may_hold(self, name: &str) -> bool {
        let plain = |name: &str| govbridge::global::is_bundle_path(name) && !name.contains('/');
        match self {
            Self::Config | Self::Archives => plain(name),
            Self::Log => [KEY_FILE, VERIFIER_FILE, DATABASE_FILE, RECEIPTS_FILE].contains(&name),
            Self::Ledger => name == LEDGER_FILE,
            // `INSTANCE.checkpoint`, and not a temporary file.
            Self::Witness => plain(name) && name.ends_with(".checkpoint"),
            Self::Directory => {
                name == "current"
                    || name.split_once('/').is_some_and(|(version, rest)| {
                        version.strip_prefix('v').is_some_and(|number| {
                            !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
                        }) && govbridge::global::is_bundle_path(rest)
                    })
            }
            // `INSTANCE/KEY-ID/` and what a directory's cache holds.
            Self::Partners => {
                let mut parts = name.splitn(3, '/');
                let (Some(instance), Some(key), Some(rest)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return false;
                };
                govbridge::global::is_instance(instance)
                    && !key.is_empty()
                    && key.bytes().all(|b| b.is_ascii_hexdigit())
                    && Self::Directory.may_hold(rest)
            }
        }
    }
}

/// Copies `from` to `to`, which must not exist, checking what was copied
/// against `hash`.
fn place(from: &Path, to: &Path, hash: &str) -> anyhow::Result<()> {
    let parent = to.parent().unwrap_or(Path::new("."));
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let temporary = parent.join(format!(".restore-{}.tmp", unique()));
    let copied = (|| {
        std::fs::copy(from, &temporary)?;
        std::fs::set_permissions(
            &temporary,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        std::fs::File::open(&temporary)?.sync_all()?;
        if govbridge::keys::sha256_file_hex(&temporary)? != hash {
            return Err(std::io::Error::other("changed while it was copied"));
        }
        std::fs::hard_link(&temporary, to)
    })();
    let _ = std::fs::remove_file(&temporary);
    copied.with_context(|| format!("placing {}", to.display()))
}

/// A name no other run of this program uses at the same time.
fn unique() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{}-{now}", std::process::id())
}
