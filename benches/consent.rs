//! Consent verification latency: what the gateway adds to a call that needs
//! the citizen's consent (issue 6).
//!
//! `cargo bench --bench consent` prints the distribution of each step the
//! gateway runs on such a call, in the order `proxy` runs them, then of the
//! steps together, and compares the median of the whole with the 40 us
//! target:
//!
//! - the artefact checked: `consent::check_artefact` (structure, header,
//!   Ed25519 signature, claims, then caller, method, provider, purpose and
//!   validity window), for a valid artefact seen for the first time, for
//!   the same artefact again (its verified claims are kept, see
//!   `ConsentVerifier`: a consumer sends one artefact for each use), and
//!   for one whose signature does not verify (never kept);
//! - the data subject: the method's marked field looked up, read out of the
//!   encoded request with `read_subject` (the subject named once, alone in
//!   its oneof) and compared with the consent's;
//! - a use of the consent reserved in the ledger and given back.
//!
//! The Ed25519 verification alone (aws-lc-rs, over the same bytes) is
//! printed too: it is the floor of any artefact check.
//!
//! Not measured here: the second policy evaluation a consent-bound call
//! needs (see `benches/policy.rs`) and the wait for the request's first
//! message, which the subject check holds the call for. Each step is timed
//! on one core, one call at a time; dropping what a step returns is part of
//! its cost, as the gateway frees it too. Figures are for this machine in
//! this run.

// A benchmark stops at its first failure, saying which.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use govbridge::catalog::subject::{SubjectFields, read_subject};
use govbridge::consent::artefact::{ConsentClaims, ConsentSigner, IssuerKeys};
use govbridge::consent::{self, ConsentLedger, ConsentRefusal, ConsentState, ConsentVerifier};
use govbridge::identity::MemberId;
use govbridge::proto::tax::v1::GetTaxClearanceRequest;
use govbridge::proto::tax::v1::get_tax_clearance_request::Taxpayer;
use govbridge::wire::CallScope;
use prost::Message as _;

const CALLS: usize = 20_000;
const WARM_UP: usize = 2_000;
/// Other consents the ledger holds, as a gateway that has run a while does.
const OTHER_CONSENTS: usize = 10_000;
/// The target for the median added latency, in microseconds.
const TARGET_US: f64 = 40.0;

const NIN: &str = "1001199012345";
const CONSUMER: &str = "SN/COM/CBAO/credit";
const PROVIDER: &str = "SN/GOV/DGID/tax";
const METHOD: &str = "/govbridge.tax.v1.TaxAuthority/GetTaxClearance";
const PURPOSE: &str = "CREDIT-SCORING";

fn main() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
        .try_into()
        .expect("the time fits in an i64");

    // Three trusted keys, as during a rotation; the artefact is signed by
    // the newest.
    let signers: Vec<ConsentSigner> = ["mygov-2024", "mygov-2025", "mygov-2026"]
        .into_iter()
        .map(|kid| ConsentSigner::generate(kid).expect("a fresh signing key"))
        .collect();
    let signer_refs: Vec<&ConsentSigner> = signers.iter().collect();
    let keys =
        IssuerKeys::from_jwks(&IssuerKeys::jwks(&signer_refs)).expect("the generated JWK Set");
    let claims = ConsentClaims {
        consent_id: uuid::Uuid::new_v4().to_string(),
        subject: NIN.to_owned(),
        consumer: CONSUMER.to_owned(),
        providers: vec![PROVIDER.to_owned()],
        methods: vec![METHOD.to_owned()],
        purpose: PURPOSE.to_owned(),
        not_before: now - 3_600,
        expires: now + 30 * 86_400,
        max_uses: 10,
        issuer: "SN/GOV/MYGOV/app".to_owned(),
        issued_at: now - 3_600,
    };
    let token = signers[2].sign(&claims);
    let forged = forge(&token);

    let caller = MemberId::parse(CONSUMER).expect("a valid member id");
    let provider = MemberId::parse(PROVIDER).expect("a valid member id");
    let scope = CallScope {
        caller: &caller,
        method: METHOD,
        provider: &provider,
        purpose: Some(PURPOSE),
    };
    let request = GetTaxClearanceRequest {
        taxpayer: Some(Taxpayer::SubjectNin(NIN.to_owned())),
    }
    .encode_to_vec();
    // Read once at start-up, as the gateway's first call does.
    let agencies = govbridge::catalog::Catalog::with_sets(
        &govbridge::proto::AGENCY_DESCRIPTOR_SETS.map(|(_, set)| set),
    )
    .expect("the agencies' descriptor sets load");
    let fields = agencies.subjects();
    let ledger = ledger(&claims);

    // Each step must give the gateway's answer before it is timed.
    let verifier = ConsentVerifier::new(keys.clone());
    let fresh = || ConsentVerifier::new(black_box(&keys).clone());
    let checked =
        consent::check_artefact(&verifier, &token, &scope, now).expect("the artefact is valid");
    assert_eq!(*checked, claims);
    assert_eq!(
        consent::check_artefact(&verifier, &forged, &scope, now),
        Err(ConsentRefusal::BadSignature)
    );
    assert!(subject_matches(fields, &request, &claims));
    drop(ledger.admit(&claims).expect("the consent has uses left"));

    let (signed, signature) = token.rsplit_once('.').expect("a compact JWS");
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("a base64url signature");
    let public_key = URL_SAFE_NO_PAD
        .decode(
            signers[2].public_jwk()["x"]
                .as_str()
                .expect("a JWK has its public key in x"),
        )
        .expect("a base64url public key");
    let public_key = UnparsedPublicKey::new(&ED25519, public_key);
    public_key
        .verify(signed.as_bytes(), &signature)
        .expect("the signature verifies");

    let ed25519 = measure(|| {
        black_box(&public_key).verify(black_box(signed.as_bytes()), black_box(&signature))
    });
    // A verifier made for each call: the keys' clone is part of the figure.
    let first = measure(|| consent::check_artefact(&fresh(), black_box(&token), &scope, now));
    let again = measure(|| consent::check_artefact(&verifier, black_box(&token), &scope, now));
    let refusal = measure(|| consent::check_artefact(&verifier, black_box(&forged), &scope, now));
    let subject = measure(|| subject_matches(fields, black_box(&request), &claims));
    // Given back, as when the call fails: spending it (`spend`) takes the
    // same lock and map update, but would exhaust the consent. The ledger
    // is in memory: the gateway's also waits for the use book's commit
    // (`consent::uses`), a disk write this figure leaves out.
    let admit = measure(|| ledger.admit(black_box(&claims)));
    let whole = |verifier: &ConsentVerifier| {
        let claims = consent::check_artefact(verifier, black_box(&token), &scope, now)
            .expect("the artefact is valid");
        assert!(subject_matches(fields, black_box(&request), &claims));
        ledger.admit(&claims)
    };
    let total_first = measure(|| whole(&fresh()));
    let total_again = measure(|| whole(&verifier));

    println!(
        "consent verification: {CALLS} calls after {WARM_UP} to warm up, {} keys trusted, \
         artefact of {} bytes, {OTHER_CONSENTS} other consents in the ledger",
        signers.len(),
        token.len()
    );
    println!(
        "  {:<36} {:>9} {:>9} {:>9}",
        "per call", "p50", "p90", "p99"
    );
    ed25519.print("ed25519 verify alone (aws-lc-rs)");
    first.print("check_artefact, first use");
    again.print("check_artefact, again (kept)");
    refusal.print("check_artefact, bad signature");
    subject.print("subject: look up, read, compare");
    admit.print("ledger: admit + give back");
    total_first.print("total, first use of an artefact");
    total_again.print("total, each later use");
    for (what, total) in [("first use", &total_first), ("later uses", &total_again)] {
        let median = total.at(0.50);
        println!(
            "  {what}: median added latency {median:.1} us, {} the {TARGET_US:.0} us target \
             ({:.0}% of it)",
            if median < TARGET_US { "within" } else { "OVER" },
            median / TARGET_US * 100.0
        );
    }
}

/// The subject check of `proxy`: the method's marked field, read from the
/// encoded request, must name the consent's subject.
fn subject_matches(fields: &SubjectFields, request: &[u8], claims: &ConsentClaims) -> bool {
    fields
        .field(METHOD)
        .is_some_and(|field| read_subject(request, field).sole() == Some(claims.subject.as_str()))
}

/// `token` with one signature character changed: well formed, signed by a
/// trusted key id, but the signature does not verify.
fn forge(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').expect("a compact JWS");
    // The middle of the signature: changing its last character could leave
    // non-zero padding bits, a malformed artefact rather than a forged one.
    let mut signature = signature.to_owned().into_bytes();
    let middle = signature.len() / 2;
    signature[middle] = if signature[middle] == b'A' {
        b'B'
    } else {
        b'A'
    };
    format!(
        "{signed}.{}",
        String::from_utf8(signature).expect("base64url is ASCII")
    )
}

/// A ledger heard from recently, holding other consents' states and uses
/// (consents like `template`).
fn ledger(template: &ConsentClaims) -> std::sync::Arc<ConsentLedger> {
    let ledger = ConsentLedger::new(Duration::from_secs(60));
    ledger.heartbeat(0);
    for index in 0..OTHER_CONSENTS {
        let consent = format!("other-{index}");
        if index % 10 == 0 {
            let state = if index % 20 == 0 {
                ConsentState::Revoked
            } else {
                ConsentState::Paused
            };
            ledger.apply(index as u64 + 1, &consent, state);
        } else {
            let claims = ConsentClaims {
                consent_id: consent,
                max_uses: 5,
                ..template.clone()
            };
            ledger
                .admit(&claims)
                .expect("a fresh consent has uses")
                .spend();
        }
    }
    ledger
}

/// The sorted durations of `CALLS` calls of `call`, in nanoseconds.
struct Latency(Vec<u128>);

/// Runs `call` `WARM_UP` times, then `CALLS` times timed one by one.
fn measure<T>(mut call: impl FnMut() -> T) -> Latency {
    for _ in 0..WARM_UP {
        drop(black_box(call()));
    }
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = Instant::now();
        drop(black_box(call()));
        samples.push(started.elapsed().as_nanos());
    }
    samples.sort_unstable();
    Latency(samples)
}

impl Latency {
    /// The quantile `q`, in microseconds.
    fn at(&self, q: f64) -> f64 {
        self.0[((self.0.len() - 1) as f64 * q) as usize] as f64 / 1_000.0
    }

    fn print(&self, label: &str) {
        println!(
            "  {label:<36} {:>6.2} us {:>6.2} us {:>6.2} us",
            self.at(0.50),
            self.at(0.90),
            self.at(0.99)
        );
    }
}
