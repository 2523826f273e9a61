//! Citizen consent: signed artefacts, revocation, usage counts.
//!
//! Where a policy permits a call only with `context.consent.verified`, the
//! gateway checks the artefact in `bridge-consent` before the call goes
//! anywhere, in this order, and the first failure is the answer:
//!
//! ```text
//! present -> signed by a trusted issuer key ([`artefact`]; once per
//!            artefact, see [`ConsentVerifier`])
//!   -> for this caller -> this method and provider -> this purpose
//!   -> inside its validity window
//!   -> neither revoked nor paused, by a feed heard from recently ([`feed`])
//!   -> about the person the request names (the data subject)
//!   -> a use left: reserved and made durable now, spent as soon as any
//!      answer reaches the caller (whatever the call's end), given back if
//!      none does
//! ```
//!
//! [`ConsentLedger`] outlives reloads: it holds what the feed said of each
//! consent and the uses counted so far, the latter also on disk
//! ([`uses`]), so that a restart forgets no use.

pub mod artefact;
pub mod feed;
pub mod uses;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::identity::MemberId;
use crate::wire::CallScope;
use artefact::{ArtefactError, ConsentClaims, IssuerKeys};
use uses::{Durable, SharedUses, UseBook, UseBookError};

/// Why a consent does not allow a call. Each is one `bridge-error` kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentRefusal {
    #[error("this call needs the data subject's consent: send the artefact in bridge-consent")]
    Missing,
    #[error("bridge-consent is not a valid consent artefact: {0}")]
    Malformed(String),
    #[error("the consent artefact's signature does not verify")]
    BadSignature,
    #[error("the consent artefact is signed with key `{0}`, which this gateway does not trust")]
    UnknownKey(String),
    #[error("the consent was given to {consumer}, not to {caller}")]
    WrongConsumer { consumer: String, caller: MemberId },
    #[error("the consent does not cover {what}")]
    OutOfScope { what: String },
    #[error("the consent is for purpose {consented}, not {declared}")]
    WrongPurpose { consented: String, declared: String },
    #[error("the consent is valid only from {0} (Unix time)")]
    NotYetValid(i64),
    #[error("the consent expired at {0} (Unix time)")]
    Expired(i64),
    #[error("the consent was revoked by the citizen")]
    Revoked,
    #[error("the consent is paused by the citizen")]
    Paused,
    #[error("the consent's {0} uses are spent")]
    Exhausted(u32),
    #[error("the consent is not about the person this request names: {0}")]
    SubjectMismatch(&'static str),
    /// The request names its subject twice, or also sets another member
    /// of the subject's `oneof`: readers of it could disagree on whom it is
    /// about, so no consent is bound to it.
    #[error(
        "a request message names its data subject more than once, or with another field of \
         the same oneof: send one subject field, once"
    )]
    SubjectAmbiguous,
    #[error("whether the consent is still valid cannot be known now: the consent feed is down")]
    StatusUnknown,
}

impl ConsentRefusal {
    /// The `bridge-error` kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Missing => "consent-missing",
            Self::Malformed(_) => "consent-malformed",
            Self::BadSignature => "consent-bad-signature",
            Self::UnknownKey(_) => "consent-unknown-key",
            Self::WrongConsumer { .. } => "consent-wrong-consumer",
            Self::OutOfScope { .. } => "consent-out-of-scope",
            Self::WrongPurpose { .. } => "consent-wrong-purpose",
            Self::NotYetValid(_) => "consent-not-yet-valid",
            Self::Expired(_) => "consent-expired",
            Self::Revoked => "consent-revoked",
            Self::Paused => "consent-paused",
            Self::Exhausted(_) => "consent-exhausted",
            Self::SubjectMismatch(_) => "consent-subject-mismatch",
            Self::SubjectAmbiguous => "consent-subject-ambiguous",
            Self::StatusUnknown => "consent-status-unknown",
        }
    }
}

impl From<ArtefactError> for ConsentRefusal {
    fn from(error: ArtefactError) -> Self {
        match error {
            ArtefactError::Malformed(reason) => Self::Malformed(reason),
            ArtefactError::UnknownKey(kid) => Self::UnknownKey(kid),
            ArtefactError::BadSignature => Self::BadSignature,
            ArtefactError::Key(reason) => Self::Malformed(reason),
        }
    }
}

/// Artefacts kept verified at most; past that, expired ones are dropped,
/// then all.
const MAX_VERIFIED: usize = 4_096;

/// The trusted issuer keys, and the artefacts already verified with them.
///
/// A consumer sends the same artefact for each use of a consent, and the
/// Ed25519 verification is nearly all the cost of checking one (see
/// `cargo bench --bench consent`): each exact token is verified once, then
/// its claims are found by the token itself. Any other byte string is
/// verified afresh, refusals are never kept, and the claims are checked
/// against every call as if just verified. A verifier belongs to one
/// configuration: a reload that drops a key starts a new one, empty.
#[derive(Debug)]
pub struct ConsentVerifier {
    keys: IssuerKeys,
    verified: Mutex<HashMap<Box<str>, Arc<ConsentClaims>>>,
}

impl ConsentVerifier {
    pub fn new(keys: IssuerKeys) -> Self {
        Self {
            keys,
            verified: Mutex::default(),
        }
    }

    /// The claims of `token`, once its signature verifies.
    pub fn verify(&self, token: &str) -> Result<Arc<ConsentClaims>, ArtefactError> {
        if let Some(claims) = self.lock().get(token) {
            return Ok(Arc::clone(claims));
        }
        let claims = Arc::new(self.keys.verify(token)?);
        let mut verified = self.lock();
        if verified.len() >= MAX_VERIFIED {
            let now = crate::unix_time::now();
            verified.retain(|_, claims| claims.expires > now);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(token.into(), Arc::clone(&claims));
        Ok(claims)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<ConsentClaims>>> {
        // A map of verified claims: a panic half-way leaves it valid.
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Verifies `token` and checks it against `call` at `now` (seconds since
/// the epoch): every check up to, but not including, the feed, the subject
/// and the use count.
pub fn check_artefact(
    verifier: &ConsentVerifier,
    token: &str,
    call: &CallScope<'_>,
    now: i64,
) -> Result<Arc<ConsentClaims>, ConsentRefusal> {
    let claims = verifier.verify(token)?;
    if claims.consumer != call.caller.as_str() {
        return Err(ConsentRefusal::WrongConsumer {
            consumer: claims.consumer.clone(),
            caller: call.caller.clone(),
        });
    }
    if !claims.methods.iter().any(|method| method == call.method) {
        return Err(ConsentRefusal::OutOfScope {
            what: format!("method {}", call.method),
        });
    }
    if !claims
        .providers
        .iter()
        .any(|provider| provider == call.provider.as_str())
    {
        return Err(ConsentRefusal::OutOfScope {
            what: format!("provider {}", call.provider),
        });
    }
    let declared = call.purpose.unwrap_or_default();
    if claims.purpose != declared {
        return Err(ConsentRefusal::WrongPurpose {
            consented: claims.purpose.clone(),
            declared: if declared.is_empty() {
                "none".to_owned()
            } else {
                declared.to_owned()
            },
        });
    }
    if now < claims.not_before {
        return Err(ConsentRefusal::NotYetValid(claims.not_before));
    }
    if now >= claims.expires {
        return Err(ConsentRefusal::Expired(claims.expires));
    }
    Ok(claims)
}

/// The state of a consent as the feed last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentState {
    Active,
    Paused,
    Revoked,
}

/// What the gateway knows of consents beyond their artefacts: their state
/// from the feed, and their uses.
#[derive(Debug)]
pub struct ConsentLedger {
    /// How long the feed may stay silent before states are unknown.
    freshness: Duration,
    inner: Mutex<Ledger>,
    /// Where use counts are kept across restarts; none in tests.
    book: Option<UseBook>,
    /// A fleet's counts, shared by its nodes: instead of `uses` and `book`.
    shared: Option<Arc<SharedUses>>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Consents the feed reported as not active (active ones need no entry
    /// once resumed, but keeping them is harmless).
    states: HashMap<String, ConsentState>,
    /// The last change applied, to resume the feed after it.
    sequence: u64,
    /// The portal's latest change, as its last heartbeat said; `None`
    /// until one did (after a start or a rewind). Until `sequence` reaches
    /// it, a revocation may still be on its way: states are not known.
    portal_latest: Option<u64>,
    /// When the feed was last heard from.
    heard: Option<Instant>,
    uses: HashMap<String, Uses>,
    /// How many counts `uses` may hold before those of consents long
    /// expired are forgotten ([`Ledger::forget_is_due`]).
    forget_at: usize,
    /// The last change applied before the feed was last rewound...
    rewound_from: u64,
    /// ...and the consents paused then: until the feed is past that
    /// change again, none of them is resumed by a change read again (a
    /// replica behind the portal knows nothing of the pause yet).
    paused_before: HashSet<String>,
}

impl Ledger {
    /// Heard from within `freshness`, and every change the portal had
    /// when it last said so applied: after a restart, replaying the
    /// history is not enough until a heartbeat confirms its end.
    fn is_fresh(&self, freshness: Duration) -> bool {
        let recent = self.heard.is_some_and(|heard| heard.elapsed() < freshness);
        let caught_up = self
            .portal_latest
            .is_some_and(|latest| self.sequence >= latest);
        recent && caught_up
    }

    /// Whether calls may use `consent` now: the feed fresh, the consent
    /// neither revoked nor paused.
    fn standing(&self, consent: &str, freshness: Duration) -> Result<(), ConsentRefusal> {
        if !self.is_fresh(freshness) {
            return Err(ConsentRefusal::StatusUnknown);
        }
        match self.states.get(consent) {
            Some(ConsentState::Revoked) => Err(ConsentRefusal::Revoked),
            Some(ConsentState::Paused) => Err(ConsentRefusal::Paused),
            Some(ConsentState::Active) | None => Ok(()),
        }
    }
}

/// Counts a ledger holds before it first looks for expired ones.
const FORGET_FROM: usize = 4_096;

impl Ledger {
    /// Whether `uses` holds [`FORGET_FROM`] counts and twice as many as
    /// after the last [`Self::forget`]: a gateway that runs for months
    /// would otherwise keep every consent ever used. Amortized, a look
    /// costs a constant per count added (one look holds the ledger for a
    /// pass over its counts: some tens of milliseconds for a million).
    fn forget_is_due(&self) -> bool {
        self.uses.len() >= self.forget_at.max(FORGET_FROM)
    }

    /// Forgets the counts of consents that expired [`uses::FORGET_AFTER`]
    /// before `now` (by the latest expiry of their artefacts; those with a
    /// call in flight stay), in memory and in `book`.
    fn forget(&mut self, now: i64, book: Option<&UseBook>) {
        let before = now.saturating_sub(uses::FORGET_AFTER);
        self.uses
            .retain(|_, uses| uses.reserved > 0 || uses.expires > before);
        self.forget_at = self.uses.len().saturating_mul(2);
        if let Some(book) = book {
            book.forget(before);
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Uses {
    /// Calls whose answer reached the caller under the consent (after a
    /// restart: also those that were in flight when the gateway stopped).
    spent: u32,
    /// Calls in flight that have not relayed an answer yet.
    reserved: u32,
    /// When the consent expires (seconds since the epoch), as far as its
    /// artefacts said: its count is needed until a day after.
    expires: i64,
}

impl Uses {
    /// What the use book keeps: every use that may have been spent.
    fn counted(self) -> u32 {
        self.spent.saturating_add(self.reserved)
    }
}

impl ConsentLedger {
    /// A ledger whose states go stale after `freshness` without news, and
    /// whose use counts live in memory only.
    pub fn new(freshness: Duration) -> Arc<Self> {
        Arc::new(Self {
            freshness,
            inner: Mutex::new(Ledger::default()),
            book: None,
            shared: None,
        })
    }

    /// A ledger whose use counts are a fleet's, in its database: every
    /// node takes uses from the same counts.
    /// Within a Tokio runtime: it forgets expired counts on it.
    pub fn open_shared(freshness: Duration, database: Arc<crate::database::Database>) -> Arc<Self> {
        Arc::new(Self {
            freshness,
            inner: Mutex::new(Ledger::default()),
            book: None,
            shared: Some(Arc::new(SharedUses::open(database))),
        })
    }

    /// A ledger whose use counts are kept in the SQLite file at `path`,
    /// starting from the counts kept there.
    pub fn open(freshness: Duration, path: &std::path::Path) -> Result<Arc<Self>, UseBookError> {
        let (book, counted) = UseBook::open(path, crate::unix_time::now())?;
        let uses = counted
            .into_iter()
            .map(|(consent, (spent, expires))| {
                let uses = Uses {
                    spent,
                    reserved: 0,
                    expires,
                };
                (consent, uses)
            })
            .collect();
        Ok(Arc::new(Self {
            freshness,
            inner: Mutex::new(Ledger {
                uses,
                ..Ledger::default()
            }),
            book: Some(book),
            shared: None,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The node stops: a fleet's ledger stops forgetting expired counts
    /// and closes the connection it forgot them on.
    pub fn close(&self) {
        if let Some(shared) = &self.shared {
            shared.close();
        }
    }

    /// The feed is alive, and has said nothing new.
    pub fn heard(&self) {
        self.lock().heard = Some(Instant::now());
    }

    /// The feed's heartbeat: alive, and the portal's latest change is
    /// `latest_sequence`.
    pub fn heartbeat(&self, latest_sequence: u64) {
        let mut ledger = self.lock();
        ledger.portal_latest = Some(ledger.portal_latest.unwrap_or(0).max(latest_sequence));
        ledger.heard = Some(Instant::now());
    }

    /// The feed reported change `sequence`: `consent` is now `state`. A
    /// revocation is final, as at the portal: no change read after it
    /// undoes it (an older one read again after a rewind, say, from a
    /// replica behind the portal that revoked it). A pause holds against
    /// a change read again after a rewind until the feed is past where it
    /// was before it.
    pub fn apply(&self, sequence: u64, consent: &str, state: ConsentState) {
        let mut ledger = self.lock();
        let revoked = ledger.states.get(consent) == Some(&ConsentState::Revoked);
        let held_paused = state == ConsentState::Active && ledger.paused_before.contains(consent);
        if !revoked && !held_paused {
            ledger.states.insert(consent.to_owned(), state);
        }
        ledger.sequence = ledger.sequence.max(sequence);
        if ledger.sequence >= ledger.rewound_from {
            ledger.paused_before.clear();
        }
        ledger.heard = Some(Instant::now());
    }

    /// Reads the feed again from its start, next time it is dialled; not
    /// fresh until it has caught up again.
    pub fn rewind(&self) {
        let mut ledger = self.lock();
        if ledger.sequence > ledger.rewound_from {
            ledger.rewound_from = ledger.sequence;
            ledger.paused_before = ledger
                .states
                .iter()
                .filter(|(_, state)| **state == ConsentState::Paused)
                .map(|(consent, _)| consent.clone())
                .collect();
        }
        ledger.sequence = 0;
        ledger.portal_latest = None;
    }

    /// The last change applied.
    pub fn sequence(&self) -> u64 {
        self.lock().sequence
    }

    /// Whether the feed was heard from within the freshness window and
    /// has caught up with the portal's latest change.
    pub fn is_fresh(&self) -> bool {
        self.lock().is_fresh(self.freshness)
    }

    /// Whether a call admitted under consent `consent` (its artefact valid
    /// until `expires`) may go on: for each later message of a stream, as
    /// at its start, the consent must be neither revoked nor paused, the
    /// feed fresh and the artefact unexpired.
    fn still_holds(&self, consent: &str, expires: i64) -> Result<(), ConsentRefusal> {
        self.lock().standing(consent, self.freshness)?;
        if crate::unix_time::now() >= expires {
            return Err(ConsentRefusal::Expired(expires));
        }
        Ok(())
    }

    /// Checks the consent's state, then reserves one of its `max_uses`.
    /// The reservation is spent once an answer reaches the caller, and
    /// given back if none does; in between it counts, so that concurrent
    /// calls can never be answered more than `max_uses` times together.
    /// Before the call goes on, [`UseReservation::durable`] must resolve.
    pub fn admit(
        self: &Arc<Self>,
        claims: &ConsentClaims,
    ) -> Result<UseReservation, ConsentRefusal> {
        let (consent, max_uses) = (claims.consent_id.as_str(), claims.max_uses);
        let mut ledger = self.lock();
        ledger.standing(consent, self.freshness)?;
        if let Some(shared) = &self.shared {
            // The count is the fleet's: taken when the call waits for it.
            return Ok(UseReservation {
                ledger: self.clone(),
                consent: consent.to_owned(),
                expires: claims.expires,
                durable: Recording::Shared {
                    uses: Arc::clone(shared),
                    max_uses,
                },
                settled: false,
            });
        }
        // Only before a new consent's count: never the one admitted.
        if ledger.forget_is_due() && !ledger.uses.contains_key(consent) {
            ledger.forget(crate::unix_time::now(), self.book.as_ref());
        }
        let uses = ledger.uses.entry(consent.to_owned()).or_default();
        // The count is needed for as long as any of the consent's
        // artefacts may be presented (the same consent issued again).
        let extended = claims.expires > uses.expires;
        uses.expires = uses.expires.max(claims.expires);
        if uses.spent.saturating_add(uses.reserved) >= max_uses {
            if extended && let Some(book) = &self.book {
                book.write(consent, uses.counted(), uses.expires, false);
            }
            return Err(ConsentRefusal::Exhausted(max_uses));
        }
        uses.reserved += 1;
        let (counted, expires) = (uses.counted(), uses.expires);
        // Sent under the lock, so that the book sees each consent's counts
        // in the order they were made.
        let durable = self
            .book
            .as_ref()
            .and_then(|book| book.write(consent, counted, expires, true));
        Ok(UseReservation {
            ledger: self.clone(),
            consent: consent.to_owned(),
            expires: claims.expires,
            durable: durable.map_or(Recording::Done, Recording::Book),
            settled: false,
        })
    }

    /// A use of this node's counts ends: spent, or given back.
    fn settle(&self, consent: &str, spent: bool) {
        let mut ledger = self.lock();
        if let Some(uses) = ledger.uses.get_mut(consent) {
            uses.reserved = uses.reserved.saturating_sub(1);
            if spent {
                // Already counted in the book.
                uses.spent = uses.spent.saturating_add(1);
            } else if let Some(book) = &self.book {
                // Not waited for: a give-back that is lost only costs the
                // consent a use.
                book.write(consent, uses.counted(), uses.expires, false);
            }
        }
    }
}

/// A call's consent as it stands, checked again before each later message
/// of its request, and before its answer's headers, each message and its
/// status: once the citizen revokes or pauses it, its feed goes quiet or
/// its artefact expires, the call goes no further.
#[derive(Debug, Clone)]
pub struct ConsentHold {
    ledger: Arc<ConsentLedger>,
    consent: String,
    expires: i64,
}

impl ConsentHold {
    /// Whether the call may go on.
    pub fn check(&self) -> Result<(), ConsentRefusal> {
        self.ledger.still_holds(&self.consent, self.expires)
    }
}

/// One use of a consent, held while the call runs. Dropped without
/// [`UseReservation::spend`], the use is given back.
#[derive(Debug)]
pub struct UseReservation {
    ledger: Arc<ConsentLedger>,
    consent: String,
    expires: i64,
    /// The reservation on its way to being recorded.
    durable: Recording,
    settled: bool,
}

/// Where a reservation stands.
#[derive(Debug)]
enum Recording {
    /// Recorded, or nothing to record (counts in memory only).
    Done,
    /// On its way to the use book.
    Book(Durable),
    /// Still to be taken from the fleet's counts, which decide.
    Shared {
        uses: Arc<SharedUses>,
        max_uses: u32,
    },
    /// Being taken, on a task of its own: dropped in this state (the
    /// call's deadline passed), the task finishes and a use it took is
    /// given back.
    Taking {
        uses: Arc<SharedUses>,
        max_uses: u32,
        task: tokio::task::JoinHandle<Result<bool, UseBookError>>,
    },
    /// Taken from the fleet's counts: given back if no answer is relayed.
    Taken(Arc<SharedUses>),
    /// Refused by the fleet's counts (of these `max_uses`), or not known
    /// to be taken: there is nothing to give back.
    Refused(u32),
}

/// Why a reserved use cannot go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UseError {
    /// Every use is spent or reserved (a fleet finds out only here).
    #[error(transparent)]
    Refused(#[from] ConsentRefusal),
    #[error(transparent)]
    Unrecorded(#[from] UseBookError),
}

impl UseReservation {
    /// The consent this use belongs to.
    pub fn consent_id(&self) -> &str {
        &self.consent
    }

    /// What the rest of the call, in either direction, checks its consent
    /// against.
    pub fn hold(&self) -> ConsentHold {
        ConsentHold {
            ledger: Arc::clone(&self.ledger),
            consent: self.consent.clone(),
            expires: self.expires,
        }
    }

    /// Resolves once the reservation is on disk, as spent: only then may
    /// the call go on, so that no restart can hand the use back. In a
    /// fleet this is where the use is taken, and may be refused.
    pub async fn durable(&mut self) -> Result<(), UseError> {
        if let Recording::Shared { uses, max_uses } = &self.durable {
            let (uses, max_uses) = (Arc::clone(uses), *max_uses);
            let task = tokio::spawn({
                let (uses, consent, expires) =
                    (Arc::clone(&uses), self.consent.clone(), self.expires);
                async move { uses.take(&consent, max_uses, expires).await }
            });
            self.durable = Recording::Taking {
                uses,
                max_uses,
                task,
            };
        }
        match &mut self.durable {
            Recording::Done | Recording::Taken(_) => Ok(()),
            Recording::Book(durable) => {
                let written = durable.await;
                self.durable = Recording::Done;
                Ok(written.unwrap_or_else(|_| {
                    Err(UseBookError::Write("the writer stopped".to_owned()))
                })?)
            }
            Recording::Shared { .. } => unreachable!("taken above"),
            Recording::Taking {
                uses,
                max_uses,
                task,
            } => {
                let (uses, max_uses) = (Arc::clone(uses), *max_uses);
                // Cancelled here (the deadline), the state stays `Taking`.
                let taken = task
                    .await
                    .unwrap_or_else(|failed| Err(UseBookError::Write(failed.to_string())));
                self.durable = match taken {
                    Ok(true) => Recording::Taken(uses),
                    // Refused, or failed without saying whether the count
                    // moved: nothing to give back.
                    _ => Recording::Refused(max_uses),
                };
                match taken {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(ConsentRefusal::Exhausted(max_uses).into()),
                    Err(error) => Err(error.into()),
                }
            }
            Recording::Refused(max_uses) => Err(ConsentRefusal::Exhausted(*max_uses).into()),
        }
    }

    /// An answer reached the caller: the use is spent.
    pub fn spend(mut self) {
        self.settled = true;
        if matches!(self.durable, Recording::Done | Recording::Book(_)) {
            self.ledger.settle(&self.consent, true);
        }
    }
}

impl Drop for UseReservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        match std::mem::replace(&mut self.durable, Recording::Done) {
            Recording::Done | Recording::Book(_) => {
                self.ledger.settle(&self.consent, false);
            }
            Recording::Taken(uses) => uses.give_back(&self.consent, self.expires),
            Recording::Taking { uses, task, .. } => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let (consent, expires) = (std::mem::take(&mut self.consent), self.expires);
                runtime.spawn(async move {
                    if let Ok(Ok(true)) = task.await {
                        uses.give_back(&consent, expires);
                    }
                });
            }
            Recording::Shared { .. } | Recording::Refused(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use artefact::ConsentSigner;

    fn claims(id: &str, expires: i64) -> ConsentClaims {
        ConsentClaims {
            consent_id: id.to_owned(),
            subject: "1001199012345".to_owned(),
            consumer: "SN/COM/CBAO/credit".to_owned(),
            providers: vec!["SN/GOV/DGID/tax".to_owned()],
            methods: vec!["/govbridge.tax.v1.TaxAuthority/GetTaxClearance".to_owned()],
            purpose: "CREDIT-SCORING".to_owned(),
            not_before: 0,
            expires,
            max_uses: 1,
            issuer: "SN/GOV/MYGOV/app".to_owned(),
            issued_at: 0,
        }
    }

    /// Claims of consent `id` with `max_uses` uses, valid for ever.
    fn uses(id: &str, max_uses: u32) -> ConsentClaims {
        ConsentClaims {
            max_uses,
            ..claims(id, i64::MAX)
        }
    }

    /// The ledger kept at `path`, its feed fresh.
    fn opened(path: &std::path::Path) -> Arc<ConsentLedger> {
        let ledger = ConsentLedger::open(Duration::from_secs(5), path).unwrap();
        ledger.heartbeat(0);
        ledger
    }

    /// Spends one use of `claims`, once it is durable.
    async fn spend(ledger: &Arc<ConsentLedger>, claims: &ConsentClaims) {
        let mut reservation = ledger.admit(claims).unwrap();
        reservation.durable().await.unwrap();
        reservation.spend();
    }

    fn verifier(signer: &ConsentSigner) -> ConsentVerifier {
        ConsentVerifier::new(IssuerKeys::from_jwks(&IssuerKeys::jwks(&[signer])).unwrap())
    }

    #[test]
    fn a_verified_artefact_is_kept_and_a_forged_one_never() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let verifier = verifier(&signer);
        let token = signer.sign(&claims("c1", i64::MAX));
        let first = verifier.verify(&token).unwrap();
        assert!(Arc::ptr_eq(&first, &verifier.verify(&token).unwrap()));

        // The same claims signed by a key this verifier does not trust.
        let stranger = ConsentSigner::generate("k1").unwrap();
        let forged = stranger.sign(&claims("c1", i64::MAX));
        for _ in 0..2 {
            assert!(matches!(
                verifier.verify(&forged),
                Err(ArtefactError::BadSignature)
            ));
        }
        assert_eq!(verifier.lock().len(), 1);
        // Another configuration's verifier starts empty: a key dropped on
        // reload is not trusted through what the old one kept.
        assert!(self::verifier(&stranger).verify(&token).is_err());
    }

    #[test]
    fn kept_artefacts_stay_bounded_dropping_expired_ones_first() {
        let signer = ConsentSigner::generate("k1").unwrap();
        let verifier = verifier(&signer);
        let token = |index: usize| {
            let expires = if index.is_multiple_of(2) { 1 } else { i64::MAX };
            signer.sign(&claims(&format!("c{index}"), expires))
        };
        for index in 0..MAX_VERIFIED {
            verifier.verify(&token(index)).unwrap();
        }
        assert_eq!(verifier.lock().len(), MAX_VERIFIED);
        verifier.verify(&token(MAX_VERIFIED + 1)).unwrap();
        assert_eq!(verifier.lock().len(), MAX_VERIFIED / 2 + 1);
    }

    #[tokio::test]
    async fn uses_are_reserved_and_spent_only_once_answered() {
        let ledger = ConsentLedger::new(Duration::from_secs(5));
        assert_eq!(
            ledger.admit(&uses("c1", 2)).unwrap_err(),
            ConsentRefusal::StatusUnknown,
            "a feed never heard from knows nothing"
        );
        ledger.heartbeat(0);
        let first = ledger.admit(&uses("c1", 2)).unwrap();
        let second = ledger.admit(&uses("c1", 2)).unwrap();
        assert_eq!(
            ledger.admit(&uses("c1", 2)).unwrap_err(),
            ConsentRefusal::Exhausted(2)
        );
        drop(second);
        first.spend();
        let third = ledger.admit(&uses("c1", 2)).unwrap();
        third.spend();
        assert_eq!(
            ledger.admit(&uses("c1", 2)).unwrap_err(),
            ConsentRefusal::Exhausted(2)
        );
        assert!(
            ledger.admit(&uses("c2", 1)).is_ok(),
            "another consent is untouched"
        );
    }

    /// A restart forgets no use: spent ones stay spent, and one in flight
    /// when the gateway stopped counts as spent.
    #[tokio::test]
    async fn use_counts_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consent-ledger.sqlite");
        let ledger = opened(&path);
        let mut spent = ledger.admit(&uses("c1", 3)).unwrap();
        spent.durable().await.unwrap();
        spent.spend();
        let mut given_back = ledger.admit(&uses("c1", 3)).unwrap();
        given_back.durable().await.unwrap();
        drop(given_back);
        let mut in_flight = ledger.admit(&uses("c1", 3)).unwrap();
        in_flight.durable().await.unwrap();
        // The gateway dies with the call in flight.
        std::mem::forget(in_flight);
        drop(ledger);

        let ledger = opened(&path);
        let mut last = ledger.admit(&uses("c1", 3)).unwrap();
        last.durable().await.unwrap();
        last.spend();
        assert_eq!(
            ledger.admit(&uses("c1", 3)).unwrap_err(),
            ConsentRefusal::Exhausted(3)
        );
    }

    /// A gateway that runs for months forgets the counts of consents
    /// expired a day ago, in memory and in its book, once it holds twice
    /// as many as after it last looked; it keeps those still needed
    /// (unexpired, expired within the day; in memory, also one with a call
    /// in flight).
    #[tokio::test]
    async fn counts_of_long_expired_consents_are_forgotten_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consent-ledger.sqlite");
        let ledger = opened(&path);
        let now = crate::unix_time::now();
        let long_ago = now - 2 * uses::FORGET_AFTER;
        let spend = async |id: &str, expires: i64| spend(&ledger, &claims(id, expires)).await;
        spend("valid", i64::MAX).await;
        spend("within-the-day", now - 3_600).await;
        let mut in_flight = ledger.admit(&claims("in-flight", long_ago)).unwrap();
        in_flight.durable().await.unwrap();
        for n in 3..FORGET_FROM {
            spend(&format!("old-{n}"), long_ago).await;
        }
        assert_eq!(ledger.lock().uses.len(), FORGET_FROM);

        spend("new", i64::MAX).await;
        let mut kept: Vec<_> = ledger.lock().uses.keys().cloned().collect();
        kept.sort();
        assert_eq!(kept, ["in-flight", "new", "valid", "within-the-day"]);
        // Sent after the book was told to forget: written once it has.
        spend("after", i64::MAX).await;
        let book = rusqlite::Connection::open(&path).unwrap();
        let mut statement = book
            .prepare("SELECT consent_id FROM consent_uses ORDER BY consent_id")
            .unwrap();
        let stored: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // The book forgets as a start would: the count of a call in flight
        // under a consent a day past its expiry is needed by no start.
        assert_eq!(stored, ["after", "new", "valid", "within-the-day"]);
        // The next look waits for twice as many counts.
        assert_eq!(ledger.lock().forget_at, 6);
    }

    /// A consent issued again with a later expiry keeps its count until
    /// then, in memory and in the book, whether its uses were spent under
    /// the first artefact (the second then refused) or under both.
    #[tokio::test]
    async fn a_count_is_kept_until_the_latest_expiry_of_its_consents_artefacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consent-ledger.sqlite");
        let ledger = opened(&path);
        let now = crate::unix_time::now();
        let long_ago = now - 2 * uses::FORGET_AFTER;
        let artefact = |id: &str, max_uses: u32, expires: i64| ConsentClaims {
            max_uses,
            ..claims(id, expires)
        };
        let spend = async |claims: ConsentClaims| spend(&ledger, &claims).await;
        spend(artefact("exhausted", 1, long_ago)).await;
        let again = artefact("exhausted", 1, i64::MAX);
        assert_eq!(
            ledger.admit(&again).unwrap_err(),
            ConsentRefusal::Exhausted(1)
        );
        spend(artefact("used-under-both", 2, long_ago)).await;
        spend(artefact("used-under-both", 2, i64::MAX)).await;

        ledger.lock().forget(now, ledger.book.as_ref());
        let counted = |ledger: &ConsentLedger, id: &str| {
            ledger.lock().uses.get(id).map(|uses| uses.counted())
        };
        assert_eq!(counted(&ledger, "exhausted"), Some(1));
        assert_eq!(counted(&ledger, "used-under-both"), Some(2));
        // Written after the book forgot: a restart finds what it kept.
        spend(artefact("after", 1, i64::MAX)).await;
        drop(ledger);
        let ledger = opened(&path);
        assert_eq!(
            ledger.admit(&again).unwrap_err(),
            ConsentRefusal::Exhausted(1)
        );
        assert_eq!(
            ledger
                .admit(&artefact("used-under-both", 2, i64::MAX))
                .unwrap_err(),
            ConsentRefusal::Exhausted(2)
        );
    }

    #[tokio::test]
    async fn the_feed_revokes_pauses_and_resumes() {
        let ledger = ConsentLedger::new(Duration::from_secs(5));
        ledger.heartbeat(0);
        ledger.apply(1, "c1", ConsentState::Paused);
        assert_eq!(
            ledger.admit(&uses("c1", 9)).unwrap_err(),
            ConsentRefusal::Paused
        );
        ledger.apply(2, "c1", ConsentState::Active);
        assert!(ledger.admit(&uses("c1", 9)).is_ok());
        ledger.apply(3, "c1", ConsentState::Revoked);
        assert_eq!(
            ledger.admit(&uses("c1", 9)).unwrap_err(),
            ConsentRefusal::Revoked
        );
        assert_eq!(ledger.sequence(), 3);
    }

    #[tokio::test]
    async fn a_silent_feed_makes_states_unknown() {
        let ledger = ConsentLedger::new(Duration::from_secs(5));
        ledger.heartbeat(0);
        assert!(ledger.is_fresh());
        // A window of zero is over as soon as the feed was heard.
        let ledger = ConsentLedger::new(Duration::ZERO);
        ledger.heartbeat(0);
        assert!(!ledger.is_fresh());
        assert_eq!(
            ledger.admit(&uses("c1", 9)).unwrap_err(),
            ConsentRefusal::StatusUnknown
        );
    }

    /// After a restart the ledger replays the portal's history from the
    /// start: a change applied on the way proves the feed alive, not that
    /// the revocation further down has arrived.
    #[tokio::test]
    async fn a_restarted_ledger_is_not_fresh_until_it_has_caught_up() {
        let ledger = ConsentLedger::new(Duration::from_secs(5));
        ledger.apply(1, "c1", ConsentState::Active);
        assert_eq!(
            ledger.admit(&uses("c1", 9)).unwrap_err(),
            ConsentRefusal::StatusUnknown,
            "half-way through the history"
        );
        ledger.heartbeat(3);
        assert!(!ledger.is_fresh(), "the portal has two changes more");
        ledger.apply(2, "c2", ConsentState::Paused);
        assert!(!ledger.is_fresh());
        ledger.apply(3, "c1", ConsentState::Revoked);
        assert!(ledger.is_fresh());
        assert_eq!(
            ledger.admit(&uses("c1", 9)).unwrap_err(),
            ConsentRefusal::Revoked
        );

        // The portal's history restarted: read again, fresh once caught up.
        ledger.rewind();
        assert!(!ledger.is_fresh());
        ledger.heartbeat(0);
        assert!(ledger.is_fresh());
    }

    /// A revocation is final: a feed that rewinds (to a replica behind the
    /// portal that took it, say) and reads the consent's earlier changes
    /// again does not bring the consent back.
    #[tokio::test]
    async fn a_rewound_feed_does_not_undo_a_revocation() {
        let ledger = ConsentLedger::new(Duration::from_secs(5));
        ledger.apply(60, "c1", ConsentState::Active);
        ledger.apply(98, "c1", ConsentState::Revoked);
        ledger.heartbeat(98);
        assert_eq!(
            ledger.admit(&uses("c1", 9)).unwrap_err(),
            ConsentRefusal::Revoked
        );
        ledger.rewind();
        ledger.apply(60, "c1", ConsentState::Active);
        ledger.apply(61, "c1", ConsentState::Paused);
        ledger.apply(62, "c1", ConsentState::Active);
        // Caught up with the replica, behind the portal.
        ledger.heartbeat(62);
        assert!(ledger.is_fresh());
        assert_eq!(
            ledger.admit(&uses("c1", 9)).unwrap_err(),
            ConsentRefusal::Revoked
        );
    }

    /// The feed moved to a replica behind the portal: a consent paused at
    /// the portal stays paused while the replica has not reached the
    /// pause; what is read past where the feed was applies as always.
    #[tokio::test]
    async fn a_rewound_feed_does_not_resume_a_paused_consent() {
        let ledger = ConsentLedger::new(Duration::from_secs(5));
        ledger.apply(60, "c1", ConsentState::Active);
        ledger.apply(98, "c1", ConsentState::Paused);
        ledger.apply(99, "c2", ConsentState::Active);
        ledger.heartbeat(99);
        ledger.rewind();
        ledger.apply(60, "c1", ConsentState::Active);
        ledger.heartbeat(60);
        assert!(ledger.is_fresh());
        assert_eq!(
            ledger.admit(&uses("c1", 9)).unwrap_err(),
            ConsentRefusal::Paused
        );
        assert!(ledger.admit(&uses("c2", 9)).is_ok(), "c2 was never paused");
        // A second rewind before catching up keeps what the first knew.
        ledger.rewind();
        ledger.apply(60, "c1", ConsentState::Active);
        ledger.heartbeat(60);
        assert_eq!(
            ledger.admit(&uses("c1", 9)).unwrap_err(),
            ConsentRefusal::Paused
        );
        // Past the pause, the citizen's resumption is read as ever.
        ledger.apply(98, "c1", ConsentState::Paused);
        ledger.apply(99, "c2", ConsentState::Active);
        ledger.apply(100, "c1", ConsentState::Active);
        ledger.heartbeat(100);
        assert!(ledger.admit(&uses("c1", 9)).is_ok());
    }
}
