//! The per-call and per-connection pieces of the gateway, one at a time,
//! under criterion: what each costs on one core with warm caches.
//!
//! ```text
//! cargo bench --bench hot_paths                 # ~1 min
//! cargo bench --bench hot_paths -- routing      # one group
//! cargo bench --bench hot_paths -- --quick      # fewer samples
//! ```
//!
//! - `identity`: the member id read from a verified client certificate
//!   (`member_of_certificate`), its expiry, and both from one parse
//!   (`peer_of_chain`, what a listener does once per connection);
//! - `routing`: `RouteTable::route` on the dev configuration, for the
//!   default provider, a chosen one (`bridge-target`) and an unknown method;
//! - `policy`: one `PolicyEngine::authorize` with the dev policies (see
//!   `benches/policy.rs` for 100 policies and 1,000 members);
//! - `consent`: `consent::check_artefact`, first and later uses of an
//!   artefact (see `benches/consent.rs` for the whole consent step);
//! - `exchange_log`: a typical record encoded, its Merkle leaf hash, the
//!   frontier append, and the SHA-256 the gateway runs over the messages.
//!
//! Not measured here: the TLS handshake, HTTP/2 and the network, which the
//! load generator (`govbridge bench`) and `benches/exchange_log.rs` see.
//! Figures are for this machine in this run: compare them as ratios.

// A benchmark stops at its first failure, saying which.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{Context, SHA256};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use govbridge::config::Config;
use govbridge::consent::artefact::{ConsentClaims, ConsentSigner, IssuerKeys};
use govbridge::consent::{self, ConsentVerifier};
use govbridge::exchange_log::merkle::{self, Frontier};
use govbridge::exchange_log::{ExchangeRecord, Phase, RECORD_VERSION};
use govbridge::identity::tls::{certificate_not_after, load_certificates, peer_of_chain};
use govbridge::identity::{MemberId, member_of_certificate};
use govbridge::policy::{CallFacts, CallScope, PolicyEngine};
use govbridge::routing::{Connectors, RouteTable, UpstreamConnector};
use prost::Message as _;

const CALLER: &str = "SN/COM/CBAO/kyc";
const VERIFY_IDENTITY: &str = "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity";
const VERIFY_ACCOUNT: &str = "/govbridge.bank.v1.AccountVerification/VerifyAccountHolder";

/// The dev configuration, PKI and policies, written once into a directory
/// that lives as long as the benchmark.
fn dev_setup() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = govbridge::dev::prepare(dir.path()).expect("the dev setup is written");
    let config = Config::load(&path).expect("the dev configuration is valid");
    (dir, config)
}

fn identity(c: &mut Criterion, pki: &Path) {
    let chain = load_certificates(&pki.join("member-cbao-kyc.pem")).expect("a member certificate");
    let certificate = &chain[0];
    assert_eq!(
        member_of_certificate(certificate).map(|member| member.to_string()),
        Ok(CALLER.to_owned())
    );
    let mut group = c.benchmark_group("identity");
    group.bench_function("member_of_certificate", |b| {
        b.iter(|| member_of_certificate(black_box(certificate)))
    });
    group.bench_function("certificate_not_after", |b| {
        b.iter(|| certificate_not_after(black_box(certificate)))
    });
    // What a listener does per connection: both, from one parse.
    group.bench_function("peer_of_chain", |b| {
        b.iter(|| peer_of_chain(black_box(Some(&chain[..1]))))
    });
    group.finish();
}

fn routing(c: &mut Criterion, config: &Config) {
    let tls = config
        .upstream
        .tls
        .client_config()
        .expect("the dev upstream TLS material");
    let connectors = Connectors {
        own: Arc::new(UpstreamConnector::new(
            tls,
            None,
            config.upstream.connect_timeout,
        )),
        partners: Default::default(),
    };
    let table = RouteTable::new(config, &connectors, None, false);
    let ecobank = MemberId::parse("SN/COM/ECOBANK/accounts").expect("a valid member id");
    assert!(table.route(VERIFY_IDENTITY, None).is_ok());
    assert!(table.route(VERIFY_ACCOUNT, Some(&ecobank)).is_ok());
    let unknown = "/govbridge.civilregistry.v1.CivilRegistry/NoSuchMethod";
    assert!(table.route(unknown, None).is_err());

    let mut group = c.benchmark_group("routing");
    group.bench_function("route, default provider", |b| {
        b.iter(|| table.route(black_box(VERIFY_IDENTITY), None).is_ok())
    });
    group.bench_function("route, bridge-target", |b| {
        b.iter(|| {
            table
                .route(black_box(VERIFY_ACCOUNT), Some(black_box(&ecobank)))
                .is_ok()
        })
    });
    // Refusals build an error with owned strings: the price of a typo.
    group.bench_function("route, unknown method", |b| {
        b.iter(|| table.route(black_box(unknown), None).is_err())
    });
    group.finish();
}

fn policy(c: &mut Criterion, config: &Config) {
    let engine = PolicyEngine::load(config).expect("the dev policies load");
    let caller = MemberId::parse(CALLER).expect("a valid member id");
    let provider = MemberId::parse("SN/GOV/ANEC/civil-registry").expect("a valid member id");
    let facts = |purpose| CallFacts {
        scope: CallScope {
            caller: &caller,
            method: VERIFY_IDENTITY,
            provider: &provider,
            purpose: Some(purpose),
        },
        has_reason: true,
        has_user_id: true,
        consent_verified: false,
        hour: 12,
        certificate_days_left: 200,
    };
    let allowed = facts("KYC");
    let denied = facts("TAX-ASSESSMENT");
    assert!(engine.authorize(&allowed).allowed);
    assert!(!engine.authorize(&denied).allowed);

    let mut group = c.benchmark_group("policy");
    group.bench_function("authorize, allowed (dev policies)", |b| {
        b.iter(|| engine.authorize(black_box(&allowed)))
    });
    group.bench_function("authorize, denied (dev policies)", |b| {
        b.iter(|| engine.authorize(black_box(&denied)))
    });
    group.finish();
}

fn consent_check(c: &mut Criterion) {
    const METHOD: &str = "/govbridge.tax.v1.TaxAuthority/GetTaxClearance";
    const CONSUMER: &str = "SN/COM/CBAO/credit";
    const PROVIDER: &str = "SN/GOV/DGID/tax";
    let now: i64 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
        .try_into()
        .expect("the time fits in an i64");
    let signer = ConsentSigner::generate("mygov-bench").expect("a fresh signing key");
    let keys = IssuerKeys::from_jwks(&IssuerKeys::jwks(&[&signer])).expect("the JWK Set");
    let claims = ConsentClaims {
        consent_id: uuid::Uuid::new_v4().to_string(),
        subject: "1001199012345".to_owned(),
        consumer: CONSUMER.to_owned(),
        providers: vec![PROVIDER.to_owned()],
        methods: vec![METHOD.to_owned()],
        purpose: "CREDIT-SCORING".to_owned(),
        not_before: now - 3_600,
        expires: now + 30 * 86_400,
        max_uses: 10,
        issuer: "SN/GOV/MYGOV/app".to_owned(),
        issued_at: now - 3_600,
    };
    let token = signer.sign(&claims);
    let caller = MemberId::parse(CONSUMER).expect("a valid member id");
    let provider = MemberId::parse(PROVIDER).expect("a valid member id");
    let scope = CallScope {
        caller: &caller,
        method: METHOD,
        provider: &provider,
        purpose: Some("CREDIT-SCORING"),
    };
    let verifier = ConsentVerifier::new(keys.clone());
    assert!(consent::check_artefact(&verifier, &token, &scope, now).is_ok());

    let mut group = c.benchmark_group("consent");
    // A verifier per iteration: nothing kept, the Ed25519 check runs.
    group.bench_function("check_artefact, first use", |b| {
        b.iter(|| {
            let fresh = ConsentVerifier::new(keys.clone());
            consent::check_artefact(&fresh, black_box(&token), &scope, now).is_ok()
        })
    });
    group.bench_function("check_artefact, later use (kept)", |b| {
        b.iter(|| consent::check_artefact(&verifier, black_box(&token), &scope, now).is_ok())
    });
    group.finish();
}

/// A record as the gateway writes for a forwarded call's outcome.
fn outcome_record() -> ExchangeRecord {
    ExchangeRecord {
        version: RECORD_VERSION,
        phase: Phase::Outcome.into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        node_id: "gw-dakar-1".to_owned(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
        caller: CALLER.to_owned(),
        provider: "SN/GOV/ANEC/civil-registry".to_owned(),
        method: VERIFY_IDENTITY.to_owned(),
        purpose: "KYC".to_owned(),
        reason: "account opening 2025-0042".to_owned(),
        user_id: "agent-17".to_owned(),
        subject: "1001199012345".to_owned(),
        allowed: true,
        policies: vec!["banks-kyc-verify-identity".to_owned()],
        grpc_status: 0,
        decision_index: 41_999,
        received_us: 1_760_000_000_000_000,
        forwarded_us: 1_760_000_000_000_120,
        first_byte_us: 1_760_000_000_000_900,
        completed_us: 1_760_000_000_000_950,
        request_bytes: 1_029,
        request_sha256: vec![0xab; 32],
        response_bytes: 87,
        response_sha256: vec![0xcd; 32],
        ..ExchangeRecord::default()
    }
}

fn exchange_log(c: &mut Criterion) {
    let record = outcome_record();
    let encoded = record.encode_to_vec();
    let message = vec![0x5a_u8; 1024 + 5];

    let mut group = c.benchmark_group("exchange_log");
    group.bench_function("record encode", |b| {
        let mut buffer = Vec::with_capacity(512);
        b.iter(|| {
            buffer.clear();
            black_box(&record)
                .encode(&mut buffer)
                .expect("a Vec grows as needed");
            buffer.len()
        })
    });
    group.bench_function("record leaf hash", |b| {
        b.iter(|| merkle::leaf_hash(black_box(&encoded)))
    });
    group.bench_function("frontier append", |b| {
        let mut frontier = Frontier::default();
        let leaf = merkle::leaf_hash(&encoded);
        b.iter(|| frontier.append(black_box(leaf)).len())
    });
    // The request tally: SHA-256 over the message as it passes, and the
    // digest finished for the record.
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("message sha256, 1 KiB", |b| {
        b.iter(|| {
            let mut digest = Context::new(&SHA256);
            digest.update(black_box(&message));
            digest.finish()
        })
    });
    group.finish();
    println!(
        "exchange_log: a typical outcome record is {} bytes encoded",
        encoded.len()
    );
}

fn hot_paths(c: &mut Criterion) {
    let (dir, config) = dev_setup();
    identity(c, &dir.path().join("pki"));
    routing(c, &config);
    policy(c, &config);
    consent_check(c);
    exchange_log(c);
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
