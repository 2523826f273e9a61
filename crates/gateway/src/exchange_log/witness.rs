//! Witnessing partner instances' logs, as C2SP tlog-witness does.
//!
//! Whoever holds a log's signing key can rewrite the log from any point
//! and sign it again. A witness makes that visible: it cosigns a
//! checkpoint of a partner's log only if it extends the last one it
//! cosigned (a consistency proof), keeps that checkpoint, and refuses, and
//! alarms, on anything else. The partner keeps the cosignatures with its
//! checkpoints; `audit verify --witness` then requires the log's latest
//! checkpoint to carry one, so a rewrite made after cosigning, which no
//! honest witness would cosign, fails.
//!
//! Each partner's last cosigned checkpoint (the checkpoint's text and the
//! log's signature) is kept durably before the cosignature is returned: a
//! file, `DIR/witness/INSTANCE.checkpoint`, written atomically, on a
//! single node; a row of the fleet's database on a fleet's nodes, moved
//! forward only from the checkpoint the node read, so that the fleet
//! cosigns one history of each log whichever node is sent it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::merkle::{self, Hash};
use crate::database::Database;
use crate::identity::MemberId;
use crate::note::{Checkpoint, NoteError, SigningKey, Verifier};

/// The witness's directory, in the exchange log's data directory.
pub const STATE_DIR: &str = "witness";

/// The longest checkpoint note a witness reads: three lines, a few
/// extension lines and signatures (C2SP tlog-witness allows 16 KiB of
/// body; a checkpoint of this project's logs is about 200 bytes).
pub const MAX_NOTE: usize = 4096;

/// The longest consistency proof a witness checks: two hashes per level of
/// a tree of 2^64 leaves is more than any proof needs.
pub const MAX_PROOF: usize = 128;

/// How many times a fleet's node looks again at what is held when other
/// nodes keep moving it: a partner sends one checkpoint at a time, so
/// more than one move means a partner sending to several nodes at once.
const MAX_MOVES: usize = 4;

/// A partner log this gateway witnesses: whose gateway may send its
/// checkpoints, and the key they are signed with.
#[derive(Debug, Clone)]
pub struct Witnessed {
    pub gateway: MemberId,
    pub log_key: Verifier,
}

/// What a witness does with a checkpoint it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Cosigned: the signature line to append to the checkpoint's note.
    Cosigned(String),
    /// The sender's idea of what was cosigned last is not the witness's:
    /// it holds `known` (send a proof from there).
    Conflict { known: u64 },
}

/// Why a checkpoint is refused.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("this gateway witnesses no log of {0}")]
    NotWitnessed(String),
    #[error("the checkpoint is not one of {instance}'s log: {error}")]
    Checkpoint { instance: String, error: NoteError },
    #[error("{instance}'s log at {size} is older than the {known} records this witness cosigned")]
    Older {
        instance: String,
        size: u64,
        known: u64,
    },
    /// The log forked or was rewritten: the alarm.
    #[error(
        "{instance}'s checkpoint at {new} is not consistent with the one this witness cosigned \
         at {old}: {reason}"
    )]
    Inconsistent {
        instance: String,
        old: u64,
        new: u64,
        reason: String,
    },
    #[error("the {what} is larger than a witness reads ({limit})")]
    TooLarge { what: &'static str, limit: usize },
    #[error("the witness cannot keep its state in {place}: {reason}")]
    State { place: String, reason: String },
}

impl WitnessError {
    /// Whether the partner's log itself is at fault (forked, rewritten):
    /// operators must hear of it.
    pub fn is_alarm(&self) -> bool {
        matches!(self, Self::Inconsistent { .. })
    }

    /// The `result` label of the witness's metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotWitnessed(_) => "not-witnessed",
            Self::Checkpoint { .. } => "bad-checkpoint",
            Self::Older { .. } => "older",
            Self::Inconsistent { .. } => "inconsistent",
            Self::TooLarge { .. } => "too-large",
            Self::State { .. } => "state-unwritable",
        }
    }
}

/// What a witness keeps across configurations: checkpoints are taken one
/// at a time, even while a reload replaces the [`Witness`] (two taken at
/// once could each extend the same cosigned one along another fork), and
/// counted.
#[derive(Debug, Default)]
pub struct Book {
    lock: Mutex<()>,
    /// Each partner's turn: one of its checkpoints at a time reaches the
    /// blocking pool, however many it sends (or cancels).
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Checkpoints sent, by partner and result (`cosigned`, `conflict`, or
    /// an error's kind), since the gateway started.
    outcomes: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// The size of each partner's log this node saw cosigned last.
    sizes: Mutex<HashMap<String, u64>>,
    /// A fleet's database, where its nodes keep what they cosigned.
    fleet: OnceLock<(Arc<Database>, tokio::runtime::Handle)>,
}

impl Book {
    /// Keeps the witness's state in `database`, the fleet's, from now on
    /// (reached from the blocking pool through `runtime`).
    pub fn share(&self, database: Arc<Database>, runtime: tokio::runtime::Handle) {
        let _ = self.fleet.set((database, runtime));
    }

    fn saw(&self, instance: &str, size: u64) {
        if let Ok(mut sizes) = self.sizes.lock() {
            sizes.insert(instance.to_owned(), size);
        }
    }
}

/// This gateway's witness of its partners' logs.
#[derive(Debug)]
pub struct Witness {
    dir: PathBuf,
    key: Arc<SigningKey>,
    logs: HashMap<String, Witnessed>,
    book: Arc<Book>,
}

impl Witness {
    /// A witness keeping its state in `dir`, cosigning with `key`, taking
    /// checkpoints one at a time through `book`.
    pub fn new(
        dir: &Path,
        key: Arc<SigningKey>,
        logs: HashMap<String, Witnessed>,
        book: Arc<Book>,
    ) -> Self {
        Self {
            dir: dir.to_owned(),
            key,
            logs,
            book,
        }
    }

    /// `instance`'s turn: hold it while its checkpoint is taken.
    pub fn turn(&self, instance: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self
            .book
            .turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(turns.entry(instance.to_owned()).or_default())
    }

    /// Checkpoints sent, by (partner, result).
    pub fn outcomes(&self) -> Vec<((String, &'static str), u64)> {
        self.book
            .outcomes
            .lock()
            .map(|outcomes| {
                outcomes
                    .iter()
                    .map(|(key, count)| (key.clone(), *count))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The partners whose logs this witness follows.
    pub fn instances(&self) -> impl Iterator<Item = &str> {
        self.logs.keys().map(String::as_str)
    }

    /// The log of `instance` this witness follows, if any.
    pub fn witnessed(&self, instance: &str) -> Option<&Witnessed> {
        self.logs.get(instance)
    }

    fn state_file(&self, instance: &str) -> PathBuf {
        self.dir.join(format!("{instance}.checkpoint"))
    }

    /// The note of the last checkpoint of `instance`'s log this witness
    /// cosigned, as kept. Blocking.
    fn held(&self, instance: &str) -> Result<Option<String>, WitnessError> {
        if let Some((database, runtime)) = self.book.fleet.get() {
            return runtime
                .block_on(database.witnessed(instance))
                .map_err(|error| WitnessError::State {
                    place: database.url(),
                    reason: error.to_string(),
                });
        }
        let path = self.state_file(instance);
        match std::fs::read_to_string(&path) {
            Ok(note) => Ok(Some(note)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(WitnessError::State {
                place: path.display().to_string(),
                reason: error.to_string(),
            }),
        }
    }

    /// Keeps `note`, of `size` records, as the last checkpoint of
    /// `instance`'s log cosigned, in place of `held`; false if another
    /// node of the fleet moved it first. Blocking.
    fn keep(
        &self,
        instance: &str,
        held: Option<&str>,
        size: u64,
        note: &str,
    ) -> Result<bool, WitnessError> {
        if let Some((database, runtime)) = self.book.fleet.get() {
            return runtime
                .block_on(database.witness_moved(instance, held, size, note))
                .map_err(|error| WitnessError::State {
                    place: database.url(),
                    reason: error.to_string(),
                });
        }
        // One at a time in this process ([`Book::lock`]): nothing else
        // moves the file.
        let path = self.state_file(instance);
        crate::keys::write_file(&path, note.as_bytes(), 0o600).map_err(|error| {
            WitnessError::State {
                place: path.display().to_string(),
                reason: error.to_string(),
            }
        })?;
        Ok(true)
    }

    /// The last checkpoint of `instance`'s log this witness cosigned.
    /// Blocking.
    pub fn last(&self, instance: &str) -> Result<Option<Checkpoint>, WitnessError> {
        let witnessed = self
            .logs
            .get(instance)
            .ok_or_else(|| WitnessError::NotWitnessed(instance.to_owned()))?;
        let Some(note) = self.held(instance)? else {
            return Ok(None);
        };
        self.open_held(instance, witnessed, &note).map(Some)
    }

    fn open_held(
        &self,
        instance: &str,
        witnessed: &Witnessed,
        note: &str,
    ) -> Result<Checkpoint, WitnessError> {
        Checkpoint::open(note, &witnessed.log_key).map_err(|error| WitnessError::State {
            place: match self.book.fleet.get() {
                Some((database, _)) => format!("{} (witness_checkpoints)", database.url()),
                None => self.state_file(instance).display().to_string(),
            },
            reason: error.to_string(),
        })
    }

    /// The size of `instance`'s log as of the checkpoint this witness
    /// cosigned last, as this node knows it: without blocking, for
    /// metrics.
    pub fn cosigned_size(&self, instance: &str) -> Option<u64> {
        let seen = self
            .book
            .sizes
            .lock()
            .ok()
            .and_then(|sizes| sizes.get(instance).copied());
        if seen.is_some() || self.book.fleet.get().is_some() {
            return seen;
        }
        // A small file: read it, so that the gauge is there from the start.
        let size = self.last(instance).ok().flatten()?.size;
        self.book.saw(instance, size);
        Some(size)
    }

    /// Takes `note`, a checkpoint of `instance`'s log, sent with a
    /// consistency proof from `old_size`, the size the sender believes
    /// this witness cosigned last; cosigns it at `now` if it extends that.
    pub fn add(
        &self,
        instance: &str,
        old_size: u64,
        proof: &[Hash],
        note: &str,
        now: u64,
    ) -> Result<Added, WitnessError> {
        let added = self.try_add(instance, old_size, proof, note, now);
        let result = match &added {
            Ok(Added::Cosigned(_)) => "cosigned",
            Ok(Added::Conflict { .. }) => "conflict",
            Err(error) => error.kind(),
        };
        if let Ok(mut outcomes) = self.book.outcomes.lock() {
            *outcomes.entry((instance.to_owned(), result)).or_default() += 1;
        }
        added
    }

    fn try_add(
        &self,
        instance: &str,
        old_size: u64,
        proof: &[Hash],
        note: &str,
        now: u64,
    ) -> Result<Added, WitnessError> {
        let witnessed = self
            .logs
            .get(instance)
            .ok_or_else(|| WitnessError::NotWitnessed(instance.to_owned()))?;
        if note.len() > MAX_NOTE {
            return Err(WitnessError::TooLarge {
                what: "checkpoint",
                limit: MAX_NOTE,
            });
        }
        if proof.len() > MAX_PROOF {
            return Err(WitnessError::TooLarge {
                what: "consistency proof",
                limit: MAX_PROOF,
            });
        }
        let signed = Checkpoint::open_signed(note, &witnessed.log_key).map_err(|error| {
            WitnessError::Checkpoint {
                instance: instance.to_owned(),
                error,
            }
        })?;
        let new = &signed.checkpoint;
        // Files are moved one at a time; a fleet's row is moved by compare
        // and swap, without holding every partner's checkpoints up while
        // the database answers.
        let _one_at_a_time = self.book.fleet.get().is_none().then(|| {
            self.book
                .lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
        // On a fleet, another node may move what is held between the look
        // and the keep: look again, and judge the checkpoint against that.
        for _ in 0..MAX_MOVES {
            let held = self.held(instance)?;
            let last = held
                .as_deref()
                .map(|note| self.open_held(instance, witnessed, note))
                .transpose()?;
            let known = last.as_ref().map_or(0, |last| last.size);
            if old_size != known {
                return Ok(Added::Conflict { known });
            }
            if new.size < known {
                return Err(WitnessError::Older {
                    instance: instance.to_owned(),
                    size: new.size,
                    known,
                });
            }
            if let Some(last) = &last {
                let inconsistent = |reason: String| WitnessError::Inconsistent {
                    instance: instance.to_owned(),
                    old: last.size,
                    new: new.size,
                    reason,
                };
                if new.size == last.size {
                    if new.root != last.root {
                        return Err(inconsistent("two roots for one size".to_owned()));
                    }
                } else {
                    merkle::verify_consistency(last.size, &last.root, new.size, &new.root, proof)
                        .map_err(|error| inconsistent(error.to_string()))?;
                }
            }
            // Kept without the note's other signatures: what the witness
            // holds is the log's word, bounded. The same checkpoint again
            // is cosigned again, not kept again.
            let same = last
                .as_ref()
                .is_some_and(|last| last.size == new.size && last.root == new.root);
            if same || self.keep(instance, held.as_deref(), new.size, &signed.note())? {
                self.book.saw(instance, new.size);
                // The text as it came, extension lines and all: the
                // cosignature verifies on the sender's note.
                return Ok(Added::Cosigned(self.key.cosign(signed.text, now)));
            }
        }
        Err(WitnessError::State {
            place: "the fleet's database".to_owned(),
            reason: format!(
                "other nodes moved {instance}'s witnessed checkpoint {MAX_MOVES} times while \
                 this one looked"
            ),
        })
    }
}

/// Brings what a gateway's witness cosigned alone into the fleet it now
/// joins (`[store]` added): each `DIR/witness/INSTANCE.checkpoint` of a
/// partner in `logs` goes into the fleet's database unless the fleet holds
/// a checkpoint of that log already, which must then be at least as far
/// along. Otherwise the start is refused: the fleet, knowing nothing of
/// what this node cosigned, could cosign a fork of it. The files stay, no
/// longer read.
pub async fn join_fleet(
    dir: &Path,
    logs: &HashMap<String, Verifier>,
    database: &Database,
) -> Result<(), WitnessError> {
    let state = |path: &Path, reason: String| WitnessError::State {
        place: path.display().to_string(),
        reason,
    };
    for (instance, log_key) in logs {
        let path = dir.join(format!("{instance}.checkpoint"));
        let note = match std::fs::read_to_string(&path) {
            Ok(note) => note,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(state(&path, error.to_string())),
        };
        let mine =
            Checkpoint::open(&note, log_key).map_err(|error| state(&path, error.to_string()))?;
        let in_database = |error: crate::database::DatabaseError| WitnessError::State {
            place: database.url(),
            reason: error.to_string(),
        };
        if database
            .witness_moved(instance, None, mine.size, &note)
            .await
            .map_err(in_database)?
        {
            tracing::info!(
                partner = instance,
                size = mine.size,
                "what this node's witness cosigned is now the fleet's"
            );
            continue;
        }
        let Some(held) = database.witnessed(instance).await.map_err(in_database)? else {
            continue;
        };
        let fleets = Checkpoint::open(&held, log_key)
            .map_err(|error| state(Path::new("witness_checkpoints"), error.to_string()))?;
        if fleets.size < mine.size || (fleets.size == mine.size && fleets.root != mine.root) {
            return Err(state(
                &path,
                format!(
                    "this node cosigned {instance}'s log at {} records, the fleet at {}{}: \
                     the fleet could cosign a fork of what this node cosigned. Find out which \
                     is right; then move this file aside, or put its checkpoint in the fleet's \
                     witness_checkpoints row",
                    mine.size,
                    fleets.size,
                    if fleets.size == mine.size {
                        " with another root"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "govbridge/gw-dakar-1";

    /// A log's roots at each size, from leaves 0..n.
    fn roots(n: u64) -> Vec<Hash> {
        let mut frontier = merkle::Frontier::default();
        let mut roots = vec![frontier.root()];
        for leaf in 0..n {
            frontier.append(merkle::leaf_hash(&leaf.to_be_bytes()));
            roots.push(frontier.root());
        }
        roots
    }

    /// Proof nodes of a log of `n` leaves.
    struct Nodes(Vec<Hash>);

    impl merkle::Nodes for Nodes {
        type Error = std::convert::Infallible;

        fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
            let width = 1u64 << level;
            let start = index * width;
            let leaves: Vec<Hash> = (start..start + width)
                .map(|leaf| self.0[leaf as usize])
                .collect();
            let mut frontier = merkle::Frontier::default();
            for leaf in leaves {
                frontier.append(leaf);
            }
            Ok(frontier.root())
        }
    }

    #[test]
    fn cosigns_extensions_and_alarms_on_a_fork() {
        let dir = tempfile::tempdir().unwrap();
        let log = SigningKey::generate(ORIGIN).unwrap();
        let witness_key = std::sync::Arc::new(SigningKey::generate("AZ-federation").unwrap());
        let witness = Witness::new(
            dir.path(),
            witness_key.clone(),
            HashMap::from([(
                "SN".to_owned(),
                Witnessed {
                    gateway: MemberId::parse("SN/GOV/GOVBRIDGE/gateway").unwrap(),
                    log_key: log.verifier(),
                },
            )]),
            Arc::default(),
        );
        let roots = roots(20);
        let note = |size: u64, root: Hash| {
            Checkpoint {
                origin: ORIGIN.to_owned(),
                size,
                root,
            }
            .sign(&log)
        };
        let leaves: Vec<Hash> = (0..20u64)
            .map(|leaf| merkle::leaf_hash(&leaf.to_be_bytes()))
            .collect();
        let nodes = Nodes(leaves);
        let proof = |old, new| {
            merkle::consistency_proof(&nodes, old, new)
                .unwrap()
                .unwrap()
        };

        // The first checkpoint needs no proof; the cosignature verifies.
        let first = note(5, roots[5]);
        let Added::Cosigned(line) = witness.add("SN", 0, &[], &first, 1_000).unwrap() else {
            panic!("not cosigned");
        };
        assert_eq!(
            witness_key.verifier().cosigned(&format!("{first}{line}")),
            Ok(1_000)
        );
        // The log's own key still opens the cosigned note.
        Checkpoint::open(&format!("{first}{line}"), &log.verifier()).unwrap();

        // From a size the witness does not hold: it says which it holds.
        let second = note(12, roots[12]);
        assert_eq!(
            witness.add("SN", 0, &[], &second, 1_001).unwrap(),
            Added::Conflict { known: 5 }
        );
        assert!(matches!(
            witness.add("SN", 5, &proof(5, 12), &second, 1_001).unwrap(),
            Added::Cosigned(_)
        ));

        // A fork: another root at a later size, with a proof of the real
        // log's, is refused and alarmed; so is another root at the same
        // size. The witness still holds 12.
        let forged = note(15, merkle::leaf_hash(b"rewritten"));
        let error = witness
            .add("SN", 12, &proof(12, 15), &forged, 1_002)
            .unwrap_err();
        assert!(error.is_alarm(), "{error}");
        let same_size = note(12, merkle::leaf_hash(b"rewritten"));
        assert!(
            witness
                .add("SN", 12, &[], &same_size, 1_002)
                .unwrap_err()
                .is_alarm()
        );
        assert_eq!(witness.last("SN").unwrap().unwrap().size, 12);

        // Older, another key, another instance: refused.
        assert!(matches!(
            witness.add("SN", 12, &[], &first, 1_003),
            Err(WitnessError::Older { .. })
        ));
        let stranger = SigningKey::generate(ORIGIN).unwrap();
        let unsigned = Checkpoint {
            origin: ORIGIN.to_owned(),
            size: 20,
            root: roots[20],
        }
        .sign(&stranger);
        assert!(matches!(
            witness.add("SN", 12, &proof(12, 20), &unsigned, 1_003),
            Err(WitnessError::Checkpoint { .. })
        ));
        assert!(matches!(
            witness.add("KE", 0, &[], &first, 1_003),
            Err(WitnessError::NotWitnessed(_))
        ));
    }
    #[test]
    fn cosigns_the_text_as_sent_keeps_only_the_logs_signature_and_reads_little() {
        let dir = tempfile::tempdir().unwrap();
        let log = SigningKey::generate(ORIGIN).unwrap();
        let witness_key = Arc::new(SigningKey::generate("AZ-federation").unwrap());
        let logs = HashMap::from([(
            "SN".to_owned(),
            Witnessed {
                gateway: MemberId::parse("SN/GOV/GOVBRIDGE/gateway").unwrap(),
                log_key: log.verifier(),
            },
        )]);
        let book = Arc::new(Book::default());
        let witness = Witness::new(dir.path(), witness_key.clone(), logs.clone(), book.clone());

        // An extension line, and another witness's signature line.
        let root = roots(3)[3];
        let text = format!(
            "{}extension line\n",
            Checkpoint {
                origin: ORIGIN.to_owned(),
                size: 3,
                root,
            }
            .text()
        );
        let other = SigningKey::generate("another-witness").unwrap();
        let note = format!("{}{}", log.sign(&text), other.cosign(&text, 7));
        let Added::Cosigned(line) = witness.add("SN", 0, &[], &note, 1_000).unwrap() else {
            panic!("not cosigned");
        };
        assert_eq!(
            witness_key.verifier().cosigned(&format!("{note}{line}")),
            Ok(1_000)
        );
        let kept = std::fs::read_to_string(dir.path().join("SN.checkpoint")).unwrap();
        assert_eq!(kept, log.sign(&text));

        // Too large to read: refused before any signature is checked.
        let padded = format!("{note}{}", "\u{2014} x AAAA\n".repeat(MAX_NOTE / 8));
        assert!(matches!(
            witness.add("SN", 3, &[], &padded, 1_001),
            Err(WitnessError::TooLarge { .. })
        ));
        let long_proof = vec![[0; 32]; MAX_PROOF + 1];
        assert!(matches!(
            witness.add("SN", 3, &long_proof, &note, 1_001),
            Err(WitnessError::TooLarge { .. })
        ));

        // A witness of the next configuration counts on the same book.
        let reloaded = Witness::new(dir.path(), witness_key, logs, book);
        assert!(matches!(
            reloaded.add("SN", 3, &[], &note, 1_002).unwrap(),
            Added::Cosigned(_)
        ));
        let outcomes = reloaded.outcomes();
        let count = |result| {
            outcomes
                .iter()
                .find(|((_, kind), _)| *kind == result)
                .map_or(0, |(_, count)| *count)
        };
        assert_eq!((count("cosigned"), count("too-large")), (2, 2));
    }
}
