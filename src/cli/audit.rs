//! `govbridge audit`: check the exchange log, prove its records to the
//! partners of a call, and read it.
//!
//! Every command opens the log read-only and may run beside a serving
//! gateway; none writes it. Records are always printed from their stored
//! bytes (what the tree hashes), never from the queryable columns, which
//! only select them. What a caller sent (method, subject, reason, user id)
//! is shown escaped ([`Escaped`], [`json_safe`]): one record is one line,
//! whatever it holds.

use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{ArgGroup, Subcommand, ValueEnum};
use prost::Message;
use rusqlite::types::Value;

use govbridge::exchange_log::lookup::Kind;
use govbridge::exchange_log::note::Verifier;
use govbridge::exchange_log::store::{DATABASE_FILE, StoredRecord, VERIFIER_FILE};
use govbridge::exchange_log::verify::{self, ProofBundle, RecordKey};
use govbridge::exchange_log::{ExchangeRecord, Phase, Store};
use govbridge::wire::escape::{Escaped, json_safe};

/// Records `tail` shows when not told where to start.
const TAIL_DEFAULT: u64 = 10;
/// How often `tail --follow` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Records read from the store at a time.
const PAGE: usize = 1000;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the whole log: every record against the Merkle tree, the tree
    /// against the records, every checkpoint's signature and root, and the
    /// queryable columns against the records.
    Verify {
        /// The exchange log's data directory (exchange_log.data_dir).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The archives of its older records (`audit archive --out`),
        /// checked first, as the start of the same log.
        #[arg(long, value_name = "DIR")]
        archives: Option<PathBuf>,
        /// The log's public key; default DIR/log-key.pub, which proves
        /// nothing against whoever controls DIR.
        #[arg(long, value_name = "PUBFILE")]
        key: Option<PathBuf>,
        /// A partner instance witnessing this log (its federation verifier
        /// key): the latest checkpoint must carry its cosignature, which
        /// it gives only to a checkpoint that extends the last it
        /// cosigned. Repeat for several witnesses.
        #[arg(long, value_name = "PUBFILE")]
        witness: Vec<PathBuf>,
        /// With --witness: how many records the latest checkpoint may
        /// sign past the newest one each witness cosigned. A gateway that
        /// crashed, or served while its partner was unreachable, leaves
        /// such a tail; a clean stop does not.
        #[arg(
            long,
            value_name = "RECORDS",
            default_value_t = 0,
            requires = "witness"
        )]
        max_unwitnessed: u64,
        /// With --witness: how old the newest cosignature of each witness
        /// may be (`30m`, `2h`, `7d`). A witness cosigns every checkpoint
        /// a live gateway sends it, a new one as records arrive and the
        /// latest again while none do (`exchange_log.witness_refresh`, 15
        /// min): only a log cut back to a checkpoint cosigned long ago, or
        /// a gateway long stopped or cut off from its partner, carries
        /// none newer.
        #[arg(long, value_name = "DURATION", requires = "witness", value_parser = age)]
        max_witness_age: Option<Duration>,
    },
    /// Copy a fleet's exchange log (the configuration's `[store]`) into a
    /// local log directory, up to its latest checkpoint, checking every
    /// record, tree node, query column and checkpoint on the way; every
    /// other `audit` command then reads the copy with `--data DIR`. A
    /// later pull continues the copy, and fails at the fleet's next
    /// checkpoint if its log no longer extends the copy.
    Pull {
        /// A node's configuration: its `[store] url` and, without --key,
        /// the key in its exchange_log.data_dir.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The local copy (created if needed).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The fleet log's public key; default the node's log-key.pub.
        #[arg(long, value_name = "PUBFILE")]
        key: Option<PathBuf>,
    },
    /// Move the records older than --retain out of the hot store into
    /// archive files in --out, a segment of 65,536 records per file, each
    /// verifiable offline. Runs beside a serving gateway; a run cut short
    /// resumes where it stopped.
    Archive {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Where the archive files go.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// How long records stay in the hot store, e.g. `90d`.
        #[arg(long, value_name = "DURATION", value_parser = retention)]
        retain: Duration,
        /// The log's public key, to check each file before records leave
        /// the store; default DIR/log-key.pub.
        #[arg(long, value_name = "PUBFILE")]
        key: Option<PathBuf>,
    },
    /// Write proof bundles: a record, its inclusion proof and the signed
    /// checkpoint, checkable offline with `check-proof`.
    #[command(group(ArgGroup::new("which").required(true).args(["request_id", "index"])))]
    Prove {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Every record of this call (bridge-request-id).
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
        /// The record at this leaf index (bridge-audit-index).
        #[arg(long, value_name = "N")]
        index: Option<u64>,
        /// The archives of the log's older records (`audit archive --out`),
        /// for a record that is archived.
        #[arg(long, value_name = "DIR")]
        archives: Option<PathBuf>,
        /// Write the bundle here instead of to standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check a proof bundle with the log's public key alone, and print the
    /// record it proves.
    CheckProof {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[arg(long, value_name = "PUBFILE")]
        key: PathBuf,
    },
    /// Check a cross receipt: this instance's records of a call forwarded
    /// to a partner instance, and the partner's proof of its own record of
    /// the same call: a file (`audit prove --index N` on its side, N being
    /// the receipt index this log holds), fetched from the partner's
    /// gateway with `--fetch`, or by default the receipt the gateway
    /// fetched and kept (`federation."XX".receipts = true`).
    #[command(group(ArgGroup::new("partner_proof").args(["proof", "fetch"])))]
    Receipt {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The call (bridge-request-id).
        #[arg(long, value_name = "ID")]
        request_id: String,
        /// The archives of the log's older records (`audit archive --out`),
        /// for a call that is archived.
        #[arg(long, value_name = "DIR")]
        archives: Option<PathBuf>,
        /// The partner's proof bundle.
        #[arg(long, value_name = "FILE")]
        proof: Option<PathBuf>,
        /// Fetch the partner's proof from its gateway, as this instance's
        /// gateway: its configuration file (its upstream certificate, the
        /// partner's CA and endpoints). The partner answers a gateway for
        /// the records of the calls it vouched for.
        #[arg(long, value_name = "CONFIG")]
        fetch: Option<PathBuf>,
        /// The partner's log public key.
        #[arg(long, value_name = "PUBFILE")]
        partner_key: PathBuf,
        /// This instance's federation verifier key (the `.pub` beside
        /// `gateway.federation_key`): the partner's record must hold an
        /// assertion signed with it.
        #[arg(long, value_name = "PUBFILE")]
        federation_key: PathBuf,
        /// This log's public key; default DIR/log-key.pub.
        #[arg(long, value_name = "PUBFILE")]
        key: Option<PathBuf>,
    },
    /// Prove that the log's latest checkpoint extends one saved earlier
    /// (with `audit checkpoint`).
    Consistency {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The saved checkpoint (a signed note).
        #[arg(long, value_name = "CHECKPOINT_FILE")]
        old: PathBuf,
        /// The archives of the log's older records, for a checkpoint that
        /// ends inside them.
        #[arg(long, value_name = "DIR")]
        archives: Option<PathBuf>,
        /// The log's public key; default DIR/log-key.pub.
        #[arg(long, value_name = "PUBFILE")]
        key: Option<PathBuf>,
    },
    /// Print the latest signed checkpoint, for a partner to keep and later
    /// pass to `consistency --old`.
    Checkpoint {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Print records, one line each, oldest first.
    Tail {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Start at this leaf index; default: the last 10 records.
        #[arg(long, value_name = "N")]
        from: Option<u64>,
        /// Keep printing new records until interrupted.
        #[arg(long)]
        follow: bool,
        /// A fleet node's configuration: DIR is a copy of the fleet's log,
        /// pulled from its `[store]` (as `audit pull` does, with the node's
        /// log key) before each look. Records appear once a checkpoint
        /// covers them.
        #[arg(long, value_name = "FILE")]
        pull: Option<PathBuf>,
        /// With --pull: the fleet log's public key; default the node's
        /// log-key.pub.
        #[arg(long, value_name = "PUBFILE", requires = "pull")]
        key: Option<PathBuf>,
    },
    /// Search records, oldest first, a page at a time.
    Query {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// At or after this time: RFC 3339 or Unix seconds.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Before this time: RFC 3339 or Unix seconds.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// The calling member.
        #[arg(long, value_name = "MEMBER")]
        caller: Option<String>,
        /// The provider the call was routed to.
        #[arg(long, value_name = "MEMBER")]
        provider: Option<String>,
        /// The full method path, /package.Service/Method.
        #[arg(long, value_name = "PATH")]
        method: Option<String>,
        /// The data subject (NIN).
        #[arg(long, value_name = "NIN")]
        subject: Option<String>,
        #[arg(long, value_enum)]
        decision: Option<DecisionFilter>,
        /// The gRPC status: a number or a name such as PERMISSION_DENIED.
        #[arg(long, value_name = "CODE")]
        status: Option<String>,
        /// Records per page.
        #[arg(long, value_name = "N", default_value_t = 50,
              value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// Only records after this leaf index: the cursor printed as
        /// "next page".
        #[arg(long, value_name = "INDEX")]
        after: Option<u64>,
        /// One JSON object per line; "next page" then goes to standard
        /// error.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DecisionFilter {
    Allow,
    Deny,
}

pub fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify {
            data,
            archives,
            key,
            witness,
            max_unwitnessed,
            max_witness_age,
        } => verify_log(
            &data,
            archives.as_deref(),
            key.as_deref(),
            &Witnesses {
                keys: witness,
                max_unwitnessed,
                max_age: max_witness_age,
            },
        ),
        AuditCommand::Archive {
            data,
            out,
            retain,
            key,
        } => archive(&data, &out, retain, key.as_deref()),
        AuditCommand::Pull { config, data, key } => pull(&config, &data, key.as_deref()),
        AuditCommand::Prove {
            data,
            request_id,
            index,
            archives,
            out,
        } => {
            let key = match (request_id, index) {
                (Some(id), _) => RecordKey::RequestId(id),
                (None, Some(index)) => RecordKey::Index(index),
                (None, None) => bail!("pass --request-id or --index"),
            };
            prove(&data, archives.as_deref(), &key, out.as_deref())
        }
        AuditCommand::CheckProof { file, key } => check_proof(&file, &key),
        AuditCommand::Receipt {
            data,
            request_id,
            archives,
            proof,
            fetch,
            partner_key,
            federation_key,
            key,
        } => receipt(
            &data,
            archives.as_deref(),
            &request_id,
            match (&proof, &fetch) {
                (Some(file), _) => PartnerProof::File(file),
                (None, Some(config)) => PartnerProof::Fetch(config),
                (None, None) => PartnerProof::Kept,
            },
            [&partner_key, &federation_key],
            key.as_deref(),
        ),
        AuditCommand::Consistency {
            data,
            archives,
            old,
            key,
        } => consistency(&data, archives.as_deref(), &old, key.as_deref()),
        AuditCommand::Checkpoint { data } => {
            let store = Store::open_read_only(&data)?;
            let Some(checkpoint) = store.latest_checkpoint()? else {
                bail!(
                    "{}: no checkpoint yet; the first is signed within \
                     exchange_log.checkpoint_interval of the first record",
                    store.path().display()
                );
            };
            print!("{}", checkpoint.note);
            Ok(())
        }
        AuditCommand::Tail {
            data,
            json,
            from,
            follow,
            pull,
            key,
        } => tail(
            &data,
            json,
            from,
            follow,
            pull.as_deref().map(|config| (config, key.as_deref())),
        ),
        AuditCommand::Query {
            data,
            since,
            until,
            caller,
            provider,
            method,
            subject,
            decision,
            status,
            limit,
            after,
            json,
        } => {
            let filter = QueryFilter {
                since: since
                    .as_deref()
                    .map(|t| parse_time("--since", t))
                    .transpose()?,
                until: until
                    .as_deref()
                    .map(|t| parse_time("--until", t))
                    .transpose()?,
                caller,
                provider,
                method,
                subject,
                decision,
                status: status.as_deref().map(parse_status).transpose()?,
                after,
            };
            query(&data, &filter, limit, json)
        }
    }
}

/// The log's public key: from `key`, or from the log's own directory with
/// a warning.
fn load_verifier(data: &Path, key: Option<&Path>) -> anyhow::Result<Verifier> {
    let path = match key {
        Some(key) => key.to_owned(),
        None => {
            // Neither a log nor a key: said of the log, not of its key. (A
            // fleet node's directory holds the key of the log its
            // database keeps.)
            let (database, path) = (data.join(DATABASE_FILE), data.join(VERIFIER_FILE));
            if !database.exists() && !path.exists() {
                bail!("{}: no exchange log here", database.display());
            }
            eprintln!(
                "warning: using {}, the key in the log's own directory: whoever controls that \
                 directory can replace key and log together. Pass --key with a copy of the key \
                 kept elsewhere.",
                path.display()
            );
            path
        }
    };
    Verifier::read(&path).map_err(anyhow::Error::msg)
}

fn retention(text: &str) -> Result<Duration, String> {
    govbridge::config::parse_retention(text)
}

fn archive(data: &Path, out: &Path, retain: Duration, key: Option<&Path>) -> anyhow::Result<()> {
    let verifier = load_verifier(data, key)?;
    govbridge::exchange_log::archive::create_private_dir(out)
        .with_context(|| format!("creating {}", out.display()))?;
    let retain_us = i64::try_from(retain.as_micros()).unwrap_or(i64::MAX);
    let cutoff_us =
        govbridge::unix_time::micros(std::time::SystemTime::now()).saturating_sub(retain_us);
    let archived =
        govbridge::exchange_log::archive::run(data, out, cutoff_us, &verifier, |file, records| {
            println!("archived {records} records into {}", file.display());
        })?;
    if let Some(waiting) = &archived.waiting {
        println!("stopped: {waiting}");
    }
    println!(
        "{} records archived into {} files; the hot store keeps what is newer than {}",
        archived.records,
        archived.files.len(),
        humantime(retain)
    );
    Ok(())
}

/// A fleet's log (a node configuration's `[store]`), copied into a local
/// log directory, as `audit pull` does.
struct FleetCopy {
    /// The database connection runs on its worker while the caller waits.
    _runtime: tokio::runtime::Runtime,
    reader: govbridge::exchange_log::fleet::FleetReader,
    verifier: Verifier,
    store: govbridge::config::StoreConfig,
    data: PathBuf,
}

impl FleetCopy {
    /// The fleet of the node configured in `config`, to be copied into
    /// `data` (created if needed), checked with `key` (default: the
    /// node's log key).
    fn open(config: &Path, data: &Path, key: Option<&Path>) -> anyhow::Result<Self> {
        let loaded = govbridge::config::Config::load(config)?;
        let Some(store) = loaded.store else {
            bail!(
                "{}: no [store] section: this gateway's log is its own, read it with --data {}",
                config.display(),
                loaded.exchange_log.data_dir.display()
            );
        };
        let verifier = load_verifier(&loaded.exchange_log.data_dir, key)?;
        // A directory holding another log's copy (its key is not this
        // fleet's) is not written over, its key least of all.
        let key_file = data.join(VERIFIER_FILE);
        if let Ok(held) = std::fs::read_to_string(&key_file)
            && held.trim() != verifier.to_string()
        {
            bail!(
                "{}: this directory holds the copy of another log (its key is not the \
                 fleet's); pull into a new directory or that log's copy",
                key_file.display()
            );
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data)
                .with_context(|| format!("creating {}", data.display()))?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let database = runtime.block_on(govbridge::database::Database::open(&store))?;
        let reader =
            govbridge::exchange_log::fleet::FleetReader::new(database, runtime.handle().clone());
        govbridge::keys::write_file(&key_file, format!("{verifier}\n").as_bytes(), 0o644)
            .with_context(|| format!("writing {}", key_file.display()))?;
        Ok(Self {
            _runtime: runtime,
            reader,
            verifier,
            store,
            data: data.to_owned(),
        })
    }

    /// Copies what the fleet's log holds past the copy, up to its latest
    /// checkpoint; fails at the first damage, the copy holding what came
    /// before it.
    fn pull(&self) -> anyhow::Result<govbridge::exchange_log::fleet::Pulled> {
        let mut progress = super::progress::Progress::on_stderr("pulled");
        let pulled = govbridge::exchange_log::fleet::pull_watched(
            &self.reader,
            &self.data,
            &self.verifier,
            &mut |records| progress.records(records, None),
        )?;
        drop(progress);
        if let Some(problem) = &pulled.problem {
            bail!(
                "{}: {problem}; the copy in {} holds the {} records of the last checkpoint it \
                 verified",
                self.store.redacted(),
                self.data.display(),
                pulled.size
            );
        }
        Ok(pulled)
    }
}

fn pull(config: &Path, data: &Path, key: Option<&Path>) -> anyhow::Result<()> {
    let copy = FleetCopy::open(config, data, key)?;
    let pulled = copy.pull()?;
    let store = &copy.store;
    println!(
        "pulled {} records, {} checkpoints and {} partners' receipts from {}",
        pulled.records,
        pulled.checkpoints,
        pulled.receipts,
        store.redacted()
    );
    println!(
        "{} holds {} records, up to the fleet's latest checkpoint; read it with --data {}",
        data.display(),
        pulled.size,
        data.display()
    );
    Ok(())
}

fn humantime(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s % 86_400 == 0 && s > 0 => format!("{} days", s / 86_400),
        s if s % 3_600 == 0 && s > 0 => format!("{} hours", s / 3_600),
        s => format!("{s} s"),
    }
}

/// The witnesses `audit verify` requires, and how far they may lag.
struct Witnesses {
    keys: Vec<PathBuf>,
    max_unwitnessed: u64,
    /// How old the newest cosignature of each may be.
    max_age: Option<Duration>,
}

/// `--max-witness-age`: a duration, or days (`7d`).
fn age(text: &str) -> Result<Duration, String> {
    govbridge::config::parse_retention(text)
}

fn verify_log(
    data: &Path,
    archives: Option<&Path>,
    key: Option<&Path>,
    witnesses: &Witnesses,
) -> anyhow::Result<()> {
    let verifier = load_verifier(data, key)?;
    let database = data.join(DATABASE_FILE);
    let report = verify_showing(data, archives, &verifier)?;
    println!("exchange log {}", database.display());
    println!("  {} records", report.records);
    match (&report.latest, report.checkpoints) {
        (Some(latest), Some(checkpoints)) => {
            println!(
                "  {checkpoints} valid checkpoints; the latest covers {} records, root {}",
                latest.size,
                BASE64.encode(latest.root)
            );
        }
        (_, None) => println!("  checkpoints not checked: the records they sign are damaged"),
        (None, Some(_)) => println!("  no valid checkpoint"),
    }
    if let Some(problem) = report.problem {
        bail!("{}: {problem}", database.display());
    }
    for note in &report.notes {
        println!("  note: {note}");
    }
    let uncovered = report.records - report.latest.map_or(0, |latest| latest.size);
    if uncovered > 0 {
        println!(
            "  {uncovered} newer records, checked but not yet under a signed checkpoint \
             (signed within exchange_log.checkpoint_interval)"
        );
    }
    if !witnesses.keys.is_empty() {
        check_witnessed(data, &verifier, report.records, witnesses)?;
    }
    println!("ok");
    Ok(())
}

/// Verifies the log in `data` after its `archives`, showing how far it has
/// gone on a terminal (a log of a busy year takes minutes).
pub(super) fn verify_showing(
    data: &Path,
    archives: Option<&Path>,
    verifier: &Verifier,
) -> Result<verify::VerifyReport, verify::VerifyError> {
    let mut progress = super::progress::Progress::on_stderr("checked");
    verify::verify_watched(data, archives, verifier, &mut |checked| {
        progress.records(checked.records, Some(checked.of));
    })
}

/// Every witness cosigned a checkpoint of the log in `data`, whose
/// `records` records were just verified with its checkpoints (signature
/// and root each), at most `max_unwitnessed` records short of them all:
/// records past the last checkpoint count too, since whoever rewrites a
/// log's tail can drop the checkpoints that signed it.
fn check_witnessed(
    data: &Path,
    log_key: &Verifier,
    records: u64,
    witnesses: &Witnesses,
) -> anyhow::Result<()> {
    let database = data.join(DATABASE_FILE);
    let store = Store::open_read_only(data).with_context(|| database.display().to_string())?;
    // Those verified: within the records checked, under the log's key
    // (a live log may have signed one more since).
    let checkpoints: Vec<_> = store
        .checkpoints()
        .with_context(|| database.display().to_string())?
        .into_iter()
        .filter(|checkpoint| {
            checkpoint.size <= records
                && govbridge::note::Checkpoint::open(&checkpoint.note, log_key)
                    .is_ok_and(|opened| opened.size == checkpoint.size)
        })
        .collect();
    if checkpoints.is_empty() {
        bail!("{}: no checkpoint to be witnessed", database.display());
    }
    for key in &witnesses.keys {
        let verifier = Verifier::read(key).map_err(anyhow::Error::msg)?;
        let name = verifier.name();
        let Some((cosigned, time)) = checkpoints.iter().rev().find_map(|checkpoint| {
            let time = verifier.cosigned(&checkpoint.note).ok()?;
            Some((checkpoint, time))
        }) else {
            bail!(
                "{}: no checkpoint carries a cosignature by {name}: the witness never cosigned \
                 this log, or the checkpoints it cosigned were removed",
                database.display()
            );
        };
        let age = u64::try_from(govbridge::unix_time::now())
            .unwrap_or(0)
            .saturating_sub(time);
        let time = govbridge::unix_time::rfc3339(i64::try_from(time).unwrap_or(i64::MAX));
        if let Some(most) = witnesses.max_age
            && age > most.as_secs()
        {
            bail!(
                "{}: the newest cosignature by {name} is from {time}, {} ago, older than \
                 --max-witness-age {}. Either the gateway has not sent {name} a checkpoint \
                 since (it was stopped or its partner unreachable; idle, it sends its latest \
                 again every exchange_log.witness_refresh), or the log was cut back to a \
                 checkpoint {name} cosigned then: ask the partner for the checkpoint of this \
                 log it cosigned last",
                database.display(),
                super::span(age),
                super::span(most.as_secs())
            );
        }
        let unwitnessed = records.saturating_sub(cosigned.size);
        if unwitnessed > witnesses.max_unwitnessed {
            bail!(
                "{}: the newest checkpoint cosigned by {name} ({time}) signs {} records of \
                 {records}: the {unwitnessed} records after it are not witnessed (more than \
                 --max-unwitnessed {}). Either the log was rewritten past what the witness \
                 saw, or the witness had not seen them (the gateway crashed, or its partner \
                 was unreachable): ask the partner for the checkpoint of this log it cosigned \
                 last",
                database.display(),
                cosigned.size,
                witnesses.max_unwitnessed
            );
        }
        if unwitnessed == 0 {
            println!("  the latest checkpoint is cosigned by {name} ({time})");
        } else {
            println!(
                "  cosigned by {name} ({time}) up to {} records; the {unwitnessed} after them \
                 are not witnessed",
                cosigned.size
            );
        }
    }
    Ok(())
}

fn prove(
    data: &Path,
    archives: Option<&Path>,
    key: &RecordKey,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let bundles =
        verify::prove_with_archives(data, archives, key).map_err(|error| match error {
            // These name their file.
            verify::ProveError::Store(_) | verify::ProveError::Archive(_) => {
                anyhow::Error::new(error)
            }
            _ => anyhow::Error::new(error).context(data.join(DATABASE_FILE).display().to_string()),
        })?;
    if let (RecordKey::RequestId(id), None) = (key, archives) {
        // Request ids are the callers': another call may have used this
        // one, in archived time.
        let archived_end = Store::open_read_only(data)?.archived_end()?;
        if archived_end > 0 {
            eprintln!(
                "note: records before {archived_end} are archived and were not searched: a call \
                 there with request id {id} too is not proven here; give --archives to look \
                 there as well"
            );
        }
    }
    let text = verify::bundles_to_json(&bundles);
    match out {
        Some(out) => {
            // Never over a file that is anything but an earlier proof (the
            // log's own database, a link): a proof goes in whole or not at
            // all.
            if let Ok(there) = std::fs::symlink_metadata(out) {
                let earlier_proof = there.is_file()
                    && std::fs::read_to_string(out)
                        .is_ok_and(|text| ProofBundle::parse_all(&text).is_ok());
                if !earlier_proof {
                    bail!(
                        "{}: already exists and is not a proof bundle; name a new file",
                        out.display()
                    );
                }
            }
            govbridge::keys::write_file(out, text.as_bytes(), 0o644)
                .with_context(|| format!("{}: cannot write", out.display()))?;
            eprintln!(
                "wrote {} proof bundle{} to {}",
                bundles.len(),
                if bundles.len() == 1 { "" } else { "s" },
                out.display()
            );
        }
        None => print!("{}", json_safe(text)),
    }
    Ok(())
}

fn check_proof(file: &Path, key: &Path) -> anyhow::Result<()> {
    let verifier = Verifier::read(key).map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let bundles = ProofBundle::parse_all(&text).with_context(|| file.display().to_string())?;
    for bundle in &bundles {
        let record =
            verify::check_bundle(bundle, &verifier).with_context(|| file.display().to_string())?;
        println!(
            "OK: record {} is in the log {} of {} records, under a checkpoint signed by {}",
            bundle.index,
            verifier.name(),
            bundle.tree_size,
            key.display()
        );
        print!("{}", describe(bundle.index, &record));
    }
    Ok(())
}

/// `audit receipt`; `keys` are the partner's log key and this instance's
/// federation key.
/// Where the partner's proof of its record comes from.
enum PartnerProof<'a> {
    File(&'a Path),
    /// Its gateway, reached as this instance's gateway (configuration).
    Fetch(&'a Path),
    /// What the gateway fetched and kept (`receipts.sqlite`).
    Kept,
}

fn receipt(
    data: &Path,
    archives: Option<&Path>,
    request_id: &str,
    proof: PartnerProof<'_>,
    [partner_key, federation_key]: [&Path; 2],
    key: Option<&Path>,
) -> anyhow::Result<()> {
    let home_key = load_verifier(data, key)?;
    let partner_verifier = Verifier::read(partner_key).map_err(anyhow::Error::msg)?;
    let federation_verifier = Verifier::read(federation_key).map_err(anyhow::Error::msg)?;
    let home =
        verify::prove_with_archives(data, archives, &RecordKey::RequestId(request_id.to_owned()))
            .with_context(|| data.join(DATABASE_FILE).display().to_string())?;
    let partner = match proof {
        PartnerProof::File(proof) => {
            let text = std::fs::read_to_string(proof)
                .with_context(|| format!("{}: cannot read", proof.display()))?;
            ProofBundle::parse_all(&text).with_context(|| proof.display().to_string())?
        }
        PartnerProof::Fetch(config) => fetch_partner_proof(config, &home, &home_key)?,
        PartnerProof::Kept => {
            use govbridge::exchange_log::receipts::{RECEIPTS_FILE, Receipts};
            let kept = Receipts::of_request(data, request_id)?;
            if kept.is_empty() {
                bail!(
                    "{}: no receipt of request {request_id} is kept (the gateway keeps them with \
                     federation.\"XX\".receipts = true, a few seconds after the call): give the \
                     partner's proof with --proof FILE or --fetch CONFIG",
                    data.join(RECEIPTS_FILE).display()
                );
            }
            kept.into_iter().map(|receipt| receipt.bundle).collect()
        }
    };
    let receipt = verify::check_receipt(
        &home,
        &home_key,
        &partner,
        &partner_verifier,
        &federation_verifier,
    )
    .with_context(|| format!("request {request_id}"))?;
    let (home_index, record) = &receipt.home;
    let (partner_index, theirs) = &receipt.partner;
    println!(
        "OK: request {request_id} is record {home_index} of the log {} and record \
         {partner_index} of {}'s log {}, each under a checkpoint its own key signed",
        home_key.name(),
        record.receipt_instance,
        partner_verifier.name()
    );
    println!(
        "{} called {} at {}; {} vouched for the caller there, with an assertion signed by {}, \
         and the partner {} the call",
        record.caller,
        record.method,
        record.provider,
        theirs.via_gateway,
        federation_verifier.name(),
        if theirs.allowed { "allowed" } else { "refused" }
    );
    Ok(())
}

/// The partner's proof of its record of the call `home` proves (the
/// record its outcome names), fetched from the partner's gateway with the
/// identity and trust of the gateway configured in `config_path`.
fn fetch_partner_proof(
    config_path: &Path,
    home: &[ProofBundle],
    home_key: &Verifier,
) -> anyhow::Result<Vec<ProofBundle>> {
    use govbridge::proto::audit::v1::GetRecordRequest;
    use govbridge::proto::audit::v1::exchange_log_client::ExchangeLogClient;
    use govbridge::proto::audit::v1::get_record_request::Key;

    let (instance, index) = home
        .iter()
        .filter_map(|bundle| verify::check_bundle(bundle, home_key).ok())
        .find_map(|record| Some((record.receipt_instance, record.receipt_index?)))
        .context(
            "no record of this call names a partner's receipt (was it forwarded to a partner \
             instance, and has it ended?)",
        )?;
    let config = govbridge::config::Config::load(config_path)?;
    let partner = config.federation.partners.get(&instance).with_context(|| {
        format!(
            "{}: no [federation.{instance}]: this gateway does not know the instance that \
             logged the call",
            config_path.display()
        )
    })?;
    let endpoint = partner
        .endpoints
        .first()
        .with_context(|| format!("federation.{instance} has no endpoint"))?;
    let tls = govbridge::identity::tls::ClientTls {
        server_ca: partner.ca.clone(),
        crls: partner.crls.clone(),
        ..config.upstream.tls.clone()
    }
    .client_config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Everything, connecting included, within 10 s.
    let fetch = async {
        let address = tokio::net::lookup_host(&endpoint.address)
            .await
            .with_context(|| endpoint.to_string())?
            .next()
            .with_context(|| format!("{endpoint}: no address"))?;
        let channel = govbridge::net::client::Channel::connect_to_member(
            address,
            &endpoint.server_name.to_str(),
            tls,
            &partner.gateway,
        )
        .await
        .map_err(|error| anyhow::anyhow!("{endpoint}: {error}"))?;
        let request = GetRecordRequest {
            key: Some(Key::Index(index)),
        };
        let answer = ExchangeLogClient::new(channel)
            .get_record(request)
            .await
            .map_err(|status| {
                anyhow::anyhow!(
                    "{instance}'s gateway ({endpoint}) does not give record {index}: {:?}: {}",
                    status.code(),
                    status.message()
                )
            })?;
        anyhow::Ok(answer.into_inner())
    };
    let fetched =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), fetch).await });
    let answer = fetched.with_context(|| format!("{endpoint}: no answer within 10 s"))??;
    let checkpoint = answer
        .checkpoint
        .with_context(|| format!("{instance}'s answer holds no checkpoint"))?;
    let inclusion_proof = answer
        .inclusion_proof
        .iter()
        .map(|hash| <[u8; 32]>::try_from(hash.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow::anyhow!("{instance}'s inclusion proof holds a malformed hash"))?;
    println!(
        "fetched {instance}'s record {} from {endpoint}, under its checkpoint of {} records",
        answer.index, checkpoint.tree_size
    );
    Ok(vec![ProofBundle {
        index: answer.index,
        record: answer.record,
        tree_size: checkpoint.tree_size,
        inclusion_proof,
        checkpoint: checkpoint.note,
    }])
}

fn consistency(
    data: &Path,
    archives: Option<&Path>,
    old: &Path,
    key: Option<&Path>,
) -> anyhow::Result<()> {
    let verifier = load_verifier(data, key)?;
    let note =
        std::fs::read_to_string(old).with_context(|| format!("{}: cannot read", old.display()))?;
    let proved =
        verify::consistency_with_archives(data, archives, &note, &verifier).map_err(|error| {
            match error {
                verify::ConsistencyError::OldCheckpoint(_) => {
                    anyhow::Error::new(error).context(old.display().to_string())
                }
                error => anyhow::Error::new(error)
                    .context(data.join(DATABASE_FILE).display().to_string()),
            }
        })?;
    println!(
        "OK: the log's latest checkpoint ({} records) extends the old one ({} records)",
        proved.new.size, proved.old.size
    );
    println!("old root {}", BASE64.encode(proved.old.root));
    println!("new root {}", BASE64.encode(proved.new.root));
    println!("proof ({} hashes):", proved.proof.len());
    for hash in &proved.proof {
        println!("  {}", BASE64.encode(hash));
    }
    Ok(())
}

fn tail(
    data: &Path,
    json: bool,
    from: Option<u64>,
    follow: bool,
    fleet: Option<(&Path, Option<&Path>)>,
) -> anyhow::Result<()> {
    let copy = fleet
        .map(|(config, key)| FleetCopy::open(config, data, key))
        .transpose()?;
    if let Some(copy) = &copy {
        copy.pull()?;
    }
    let store = Store::open_read_only(data)?;
    let mut next = match from {
        Some(from) => from,
        None => store.size()?.saturating_sub(TAIL_DEFAULT),
    };
    let archived_end = store.archived_end()?;
    if next < archived_end {
        eprintln!(
            "note: records before {archived_end} are archived: they are in the archive files \
             (`audit verify --archives`, `audit prove --archives`); the log here starts at \
             {archived_end}"
        );
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    loop {
        let page = store.records_from(next, PAGE)?;
        for stored in &page {
            if !print_record(&mut out, stored, json)? {
                return Ok(());
            }
            next = stored.index + 1;
        }
        if page.len() == PAGE {
            continue;
        }
        if !follow {
            break;
        }
        if !flushed(&mut out)? {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
        if let Some(copy) = &copy {
            copy.pull()?;
        }
    }
    flushed(&mut out)?;
    Ok(())
}

/// What `query` selects on: the records table's columns.
#[derive(Debug, Default)]
struct QueryFilter {
    /// Microseconds since the Unix epoch.
    since: Option<i64>,
    until: Option<i64>,
    caller: Option<String>,
    provider: Option<String>,
    method: Option<String>,
    subject: Option<String>,
    decision: Option<DecisionFilter>,
    status: Option<i32>,
    after: Option<u64>,
}

impl QueryFilter {
    /// The SQL for `rows` matching records of `window`, and its
    /// parameters. Values only ever travel as parameters; `candidates`, the
    /// records the subject's lookups found, are indexes. `more_subjects`
    /// is that column, or NULL in a log written before it.
    fn sql(
        &self,
        rows: usize,
        window: std::ops::Range<u64>,
        candidates: Option<&[u64]>,
        more_subjects: &str,
    ) -> (String, Vec<Value>) {
        let mut conditions: Vec<String> = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        // Each `?` of a condition is its value's parameter.
        let mut add = |condition: &str, value: Value| {
            values.push(value);
            conditions.push(condition.replace('?', &format!("?{}", values.len())));
        };
        let text = |text: &String| Value::Text(text.clone());
        let index = |index: u64| Value::Integer(i64::try_from(index).unwrap_or(i64::MAX));
        add("idx >= ?", index(window.start));
        if window.end < u64::MAX {
            add("idx < ?", index(window.end));
        }
        if let Some(since) = self.since {
            add("at_us >= ?", Value::Integer(since));
        }
        if let Some(until) = self.until {
            add("at_us < ?", Value::Integer(until));
        }
        if let Some(caller) = &self.caller {
            add("caller = ?", text(caller));
        }
        if let Some(provider) = &self.provider {
            add("provider = ?", text(provider));
        }
        if let Some(method) = &self.method {
            add("method = ?", text(method));
        }
        if let Some(subject) = &self.subject {
            // The first subject, or one a stream named after it.
            let condition =
                format!("(subject = ? OR ? IN (SELECT value FROM json_each({more_subjects})))");
            add(&condition, text(subject));
        }
        if let Some(decision) = self.decision {
            let allowed = matches!(decision, DecisionFilter::Allow);
            add("allowed = ?", Value::Integer(i64::from(allowed)));
        }
        if let Some(status) = self.status {
            add("grpc_status = ?", Value::Integer(i64::from(status)));
        }
        if let Some(after) = self.after {
            add("idx > ?", index(after));
        }
        if let Some(candidates) = candidates {
            let list: Vec<String> = candidates.iter().map(u64::to_string).collect();
            conditions.push(format!("idx IN ({})", list.join(",")));
        }
        let mut sql = String::from("SELECT idx, record FROM records");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        values.push(Value::Integer(i64::try_from(rows).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" ORDER BY idx LIMIT ?{}", values.len()));
        (sql, values)
    }
}

fn query(data: &Path, filter: &QueryFilter, limit: u64, json: bool) -> anyhow::Result<()> {
    let store = Store::open_read_only(data)?;
    let archived_until = store.archived_until_us()?;
    if archived_until > 0 && filter.since.is_none_or(|since| since <= archived_until) {
        eprintln!(
            "note: records up to {} are archived (records before {}): they are in the archive \
             files, not searched here",
            rfc3339(archived_until),
            store.archived_end()?
        );
    }
    // Records before the hot store's start are archived (rows of them an
    // archive run has yet to remove are not read: they are checked from
    // their archive).
    let from = store.archived_end()?;
    // A subject is found through its lookups, not by reading every record.
    let candidates = filter
        .subject
        .as_deref()
        .map(|subject| store.find(Kind::Subject, subject))
        .transpose()?;
    let more_subjects = store.more_subjects_column()?;
    // One more than a page, to know whether another follows.
    let wanted = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let mut rows = match &candidates {
        Some(candidates) => {
            let (sql, values) = filter.sql(wanted, from..u64::MAX, Some(candidates), more_subjects);
            let rows = store.select(&sql, rusqlite::params_from_iter(values))?;
            // The lookups and the records are read apart: an archive run
            // between the two takes rows of the candidates.
            let archived = store.archived_end()?;
            if archived > from {
                archived_meanwhile(archived);
            }
            rows
        }
        // Every record is looked at, a window at a time, as the log is
        // when the query begins.
        None => {
            // A page after the first starts at its cursor.
            let start = filter
                .after
                .map_or(from, |after| from.max(after.saturating_add(1)));
            let windows = store.select_windows(start..store.size()?, wanted, |window, rows| {
                filter.sql(rows, window, None, more_subjects)
            })?;
            if let Some(archived) = windows.archived_meanwhile {
                archived_meanwhile(archived);
            }
            windows.rows
        }
    };
    let more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let mut out = BufWriter::new(std::io::stdout().lock());
    for stored in &rows {
        if !print_record(&mut out, stored, json)? {
            return Ok(());
        }
    }
    if let (true, Some(last)) = (more, rows.last()) {
        let cursor = format!("next page: --after {}", last.index);
        if json {
            eprintln!("{cursor}");
        } else if !written(writeln!(out, "{cursor}"))? {
            return Ok(());
        }
    }
    flushed(&mut out)?;
    Ok(())
}

/// Says that an archive run moved records before `archived` out of the
/// hot store while a query read it.
fn archived_meanwhile(archived: u64) {
    eprintln!(
        "note: an archive run moved the records before {archived} into archive files while this \
         query read them: some of them may be missing here; run it again, or search the archive \
         files"
    );
}

/// Prints one record as a line, readable or JSON; false once standard
/// output is closed (`| head`).
fn print_record(out: &mut impl Write, stored: &StoredRecord, json: bool) -> anyhow::Result<bool> {
    let line = match ExchangeRecord::decode(stored.bytes.as_slice()) {
        Ok(record) if json => json_safe(record_json(stored.index, &record).to_string()),
        Ok(record) => record_line(stored.index, &record),
        Err(_) if json => serde_json::json!({
            "index": stored.index,
            "undecodable": true,
            "bytes": stored.bytes.len(),
        })
        .to_string(),
        Err(_) => format!(
            "{} undecodable record of {} bytes: run `govbridge audit verify`",
            stored.index,
            stored.bytes.len()
        ),
    };
    written(writeln!(out, "{line}"))
}

fn written(result: std::io::Result<()>) -> anyhow::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error).context("standard output"),
    }
}

fn flushed(out: &mut impl Write) -> anyhow::Result<bool> {
    written(out.flush())
}

/// The moment a record is about: received (decision) or completed
/// (outcome), as the `at_us` column.
fn record_time(record: &ExchangeRecord) -> i64 {
    if record.phase() == Phase::Outcome {
        record.completed_us
    } else {
        record.received_us
    }
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{micros}us"))
}

/// Whether the record carries the call's final status: the outcome, or a
/// decision that refused the call.
fn has_status(record: &ExchangeRecord) -> bool {
    record.phase() == Phase::Outcome || !record.error_kind.is_empty()
}

fn phase_name(record: &ExchangeRecord) -> &'static str {
    match record.phase() {
        Phase::Outcome => "outcome",
        Phase::Decision => "decision",
        Phase::Unspecified => "unspecified",
    }
}

/// The canonical gRPC status names, by code.
const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn status_name(code: i32) -> String {
    usize::try_from(code)
        .ok()
        .and_then(|code| STATUS_NAMES.get(code))
        .map_or_else(|| code.to_string(), |name| (*name).to_owned())
}

fn parse_status(text: &str) -> anyhow::Result<i32> {
    if let Ok(code) = text.parse() {
        return Ok(code);
    }
    let name = text.to_ascii_uppercase();
    STATUS_NAMES
        .iter()
        .position(|known| *known == name)
        .and_then(|code| i32::try_from(code).ok())
        .with_context(|| {
            format!(
                "--status {text}: expected a gRPC status code or name, e.g. 7 or PERMISSION_DENIED"
            )
        })
}

/// RFC 3339 or Unix seconds, as microseconds since the epoch.
fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    let invalid =
        || format!("{flag} {text}: expected RFC 3339 (2025-01-31T12:00:00Z) or Unix seconds");
    if let Ok(seconds) = text.parse::<i64>() {
        return seconds.checked_mul(1_000_000).with_context(invalid);
    }
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|error| anyhow::anyhow!("{}: {error}", invalid()))?;
    i64::try_from(at.unix_timestamp_nanos() / 1000).with_context(invalid)
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// One line: index, time, phase, caller -> provider method, purpose,
/// decision or status, error kind, request id.
fn record_line(index: u64, record: &ExchangeRecord) -> String {
    let mut verdict = if record.phase() == Phase::Outcome {
        String::new()
    } else if record.allowed {
        "ALLOW".to_owned()
    } else {
        "DENY".to_owned()
    };
    if has_status(record) {
        if !verdict.is_empty() {
            verdict.push(' ');
        }
        verdict.push_str(&status_name(record.grpc_status));
    }
    if !record.error_kind.is_empty() {
        verdict.push_str(&format!(" ({})", Escaped(&record.error_kind)));
    }
    format!(
        "{index} {} {:<8} {} -> {} {} purpose={} {verdict} request={}",
        rfc3339(record_time(record)),
        phase_name(record),
        Escaped(or_dash(&record.caller)),
        Escaped(or_dash(&record.provider)),
        Escaped(&record.method),
        Escaped(or_dash(&record.purpose)),
        Escaped(&record.request_id)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn record_json(index: u64, record: &ExchangeRecord) -> serde_json::Value {
    let outcome = record.phase() == Phase::Outcome;
    serde_json::json!({
        "index": index,
        "version": record.version,
        "phase": phase_name(record),
        "at": rfc3339(record_time(record)),
        "request_id": record.request_id,
        "node_id": record.node_id,
        "trace_id": record.trace_id,
        "caller": record.caller,
        "provider": record.provider,
        "method": record.method,
        "purpose": record.purpose,
        "reason": record.reason,
        "user_id": record.user_id,
        "consent_id": record.consent_id,
        "subject": record.subject,
        "more_subjects": record.more_subjects,
        "subject_unreadable": record.subject_unreadable,
        "allowed": record.allowed,
        "policies": record.policies,
        "concealed_until_unix": record.concealed_until_unix,
        "error_kind": record.error_kind,
        "grpc_status": has_status(record).then_some(record.grpc_status),
        "decision_index": outcome.then_some(record.decision_index),
        "received_us": record.received_us,
        "forwarded_us": record.forwarded_us,
        "first_byte_us": record.first_byte_us,
        "completed_us": record.completed_us,
        "request_bytes": record.request_bytes,
        "request_sha256": hex(&record.request_sha256),
        "response_bytes": record.response_bytes,
        "response_sha256": hex(&record.response_sha256),
        "json": record.json,
    })
}

/// A record on several lines, every field that is set.
fn describe(index: u64, record: &ExchangeRecord) -> String {
    let mut lines = vec![format!(
        "record {index}: the {} of request {}",
        phase_name(record),
        Escaped(&record.request_id)
    )];
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            lines.push(format!("  {name:<14} {}", Escaped(&value)));
        }
    };
    field("at", rfc3339(record_time(record)));
    field("node", record.node_id.clone());
    field("trace", record.trace_id.clone());
    field("caller", record.caller.clone());
    field("provider", record.provider.clone());
    field("method", record.method.clone());
    if record.json {
        field("came as", "JSON, transcoded by the gateway".to_owned());
    }
    field("purpose", record.purpose.clone());
    field("reason", record.reason.clone());
    field("user", record.user_id.clone());
    field("consent", record.consent_id.clone());
    field("subject", record.subject.clone());
    field("more subjects", record.more_subjects.join(", "));
    if record.subject_unreadable {
        field("subject", "a message's could not be read".to_owned());
    }
    field(
        "decision",
        format!(
            "{}{}",
            if record.allowed { "allowed" } else { "denied" },
            if record.policies.is_empty() {
                String::new()
            } else {
                format!(" by {}", record.policies.join(", "))
            }
        ),
    );
    if record.concealed_until_unix > 0 {
        field(
            "concealed until",
            rfc3339(record.concealed_until_unix.saturating_mul(1_000_000)),
        );
    }
    if has_status(record) {
        field(
            "status",
            format!(
                "{} ({})",
                status_name(record.grpc_status),
                record.grpc_status
            ),
        );
    }
    field("error", record.error_kind.clone());
    if record.phase() == Phase::Outcome {
        field("decision index", record.decision_index.to_string());
        field(
            "request",
            format!(
                "{} bytes, sha256 {}",
                record.request_bytes,
                hex(&record.request_sha256)
            ),
        );
        field(
            "response",
            format!(
                "{} bytes, sha256 {}",
                record.response_bytes,
                hex(&record.response_sha256)
            ),
        );
    }
    for (name, micros) in [
        ("received", record.received_us),
        ("forwarded", record.forwarded_us),
        ("first byte", record.first_byte_us),
        ("completed", record.completed_us),
    ] {
        if micros != 0 {
            field(name, rfc3339(micros));
        }
    }
    lines.push(String::new());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_travel_as_parameters() {
        let filter = QueryFilter {
            caller: Some("x' OR 1=1 --".into()),
            decision: Some(DecisionFilter::Deny),
            after: Some(7),
            ..QueryFilter::default()
        };
        let (sql, values) = filter.sql(51, 0..u64::MAX, Some(&[3, 9]), "more_subjects");
        assert_eq!(
            sql,
            "SELECT idx, record FROM records WHERE idx >= ?1 AND caller = ?2 AND allowed = ?3 \
             AND idx > ?4 AND idx IN (3,9) ORDER BY idx LIMIT ?5"
        );
        assert_eq!(
            values,
            vec![
                Value::Integer(0),
                Value::Text("x' OR 1=1 --".into()),
                Value::Integer(0),
                Value::Integer(7),
                Value::Integer(51)
            ]
        );
        // A subject is the first, or one a stream named after it.
        let filter = QueryFilter {
            subject: Some("2002196400009".into()),
            ..QueryFilter::default()
        };
        // Archived records are not read from the hot store.
        let (sql, values) = filter.sql(51, 65_536..u64::MAX, Some(&[3]), "NULL");
        assert_eq!(
            sql,
            "SELECT idx, record FROM records WHERE idx >= ?1 AND (subject = ?2 OR ?2 IN (SELECT \
             value FROM json_each(NULL))) AND idx IN (3) ORDER BY idx LIMIT ?3"
        );
        assert_eq!(values.len(), 3);
        assert_eq!(values[0], Value::Integer(65_536));
        // Without candidates every record is read, a window at a time.
        let filter = QueryFilter {
            caller: Some("SN/COM/CBAO/kyc".into()),
            ..QueryFilter::default()
        };
        let (sql, values) = filter.sql(11, 65_536..131_072, None, "NULL");
        assert_eq!(
            sql,
            "SELECT idx, record FROM records WHERE idx >= ?1 AND idx < ?2 AND caller = ?3 ORDER \
             BY idx LIMIT ?4"
        );
        assert_eq!(values[1], Value::Integer(131_072));
        assert_eq!(values[3], Value::Integer(11));
    }

    #[test]
    fn retentions_parse() {
        assert_eq!(retention("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(retention("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert!(retention("d").is_err());
        assert!(retention("90").is_err());
    }

    #[test]
    fn times_and_statuses_parse() {
        assert_eq!(parse_time("--since", "10").unwrap(), 10_000_000);
        assert_eq!(
            parse_time("--since", "1970-01-01T00:00:01.5Z").unwrap(),
            1_500_000
        );
        assert!(
            parse_time("--since", "yesterday")
                .unwrap_err()
                .to_string()
                .contains("--since yesterday")
        );
        assert_eq!(parse_status("permission_denied").unwrap(), 7);
        assert_eq!(parse_status("5").unwrap(), 5);
        assert!(parse_status("NOPE").is_err());
        assert_eq!(status_name(14), "UNAVAILABLE");
        assert_eq!(rfc3339(1_500_000), "1970-01-01T00:00:01.5Z");
    }
}
