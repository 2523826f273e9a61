//! Citizen consent through the real gateway: MyGov grants and signs, the
//! gateway verifies the artefact, binds it to the person the request names,
//! follows revocations and counts uses.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use govbridge::consent::artefact::{ConsentClaims, ConsentSigner};
use govbridge::exchange_log::Store;
use govbridge::proto::audit::v1::data_tracker_client::DataTrackerClient;
use govbridge::proto::audit::v1::{Access, ListAccessesRequest};
use govbridge::proto::consent::v1::consent_client::ConsentClient;
use govbridge::proto::consent::v1::{ConsentRecord, ConsentRef, GrantRequest};
use govbridge::proto::tax::v1::get_tax_clearance_request::Taxpayer;
use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
use govbridge::proto::tax::v1::tax_authority_server::{TaxAuthority, TaxAuthorityServer};
use govbridge::proto::tax::v1::{
    DeclaredIncome, GetDeclaredIncomeRequest, GetTaxClearanceRequest, TaxClearanceCertificate,
    WithholdingLine, WithholdingReceipt,
};
use support::{Bed, bridge_error, declared, dev_bed, with_header};
use tokio_stream::StreamExt;
use tonic::Code;

const CLEARANCE: &str = "/govbridge.tax.v1.TaxAuthority/GetTaxClearance";
const INCOME: &str = "/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome";
const STREAM_INCOME: &str = "/govbridge.tax.v1.TaxAuthority/StreamDeclaredIncome";
const TAX: &str = "SN/GOV/DGID/tax";
const CBAO_CREDIT: &str = "SN/COM/CBAO/credit";

/// What a citizen grants; `grant` fills the rest.
struct Grant<'a> {
    nin: &'a str,
    consumer: &'a str,
    provider: &'a str,
    methods: &'a [&'a str],
    purpose: &'a str,
    max_uses: u32,
    not_before: i64,
    expires: i64,
}

impl<'a> Grant<'a> {
    fn credit(nin: &'a str) -> Self {
        Self {
            nin,
            consumer: CBAO_CREDIT,
            provider: TAX,
            methods: &[CLEARANCE],
            purpose: "CREDIT-SCORING",
            max_uses: 5,
            not_before: 0,
            expires: 0,
        }
    }

    /// As `credit`, for one declared-income answer.
    fn one_income_year(nin: &'a str) -> Self {
        Self {
            methods: &[INCOME],
            ..Self::credit(nin)
        }
        .uses(1)
    }

    /// This grant, usable `max_uses` times.
    fn uses(self, max_uses: u32) -> Self {
        Self { max_uses, ..self }
    }

    /// As `credit`, for the declared-income stream.
    fn streamed(nin: &'a str) -> Self {
        Self {
            methods: &[STREAM_INCOME],
            ..Self::credit(nin)
        }
    }

    /// This grant, for `provider`'s answers instead of the tax authority's.
    fn from(self, provider: &'a str) -> Self {
        Self { provider, ..self }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// The citizen's portal, calling MyGov through the gateway.
async fn portal(bed: &Bed) -> ConsentClient<support::H2Client> {
    ConsentClient::new(bed.client("mygov").await)
}

/// A consent of `a`'s to CBAO's credit desk for `methods`, served by the
/// tax authority a test paces ([`PacedTax`], the probe), good for 100 uses.
async fn paced_consent(bed: &Bed, a: &str, methods: &[&str]) -> ConsentRecord {
    let grant_of_a = Grant::credit(a).from(support::PROBE).uses(100);
    grant(
        bed,
        &Grant {
            methods,
            ..grant_of_a
        },
    )
    .await
}

async fn grant(bed: &Bed, grant: &Grant<'_>) -> ConsentRecord {
    portal(bed)
        .await
        .grant(declared(
            GrantRequest {
                nin: grant.nin.to_owned(),
                consumer: grant.consumer.to_owned(),
                providers: vec![grant.provider.to_owned()],
                methods: grant.methods.iter().map(|m| (*m).to_owned()).collect(),
                purpose: grant.purpose.to_owned(),
                not_before: grant.not_before,
                expires: grant.expires,
                max_uses: grant.max_uses,
            },
            "CITIZEN-SELF-SERVICE",
        ))
        .await
        .unwrap()
        .into_inner()
}

/// CBAO's credit subsystem asks for `nin`'s tax clearance under `artefact`.
async fn clearance(
    bed: &Bed,
    nin: &str,
    artefact: Option<&str>,
) -> Result<tonic::Response<TaxClearanceCertificate>, tonic::Status> {
    let mut request = declared(
        GetTaxClearanceRequest {
            taxpayer: Some(Taxpayer::SubjectNin(nin.to_owned())),
        },
        "CREDIT-SCORING",
    );
    if let Some(artefact) = artefact {
        request = with_header(request, "bridge-consent", artefact);
    }
    TaxAuthorityClient::new(bed.client("cbao-credit").await)
        .get_tax_clearance(request)
        .await
}

/// The first refusal of CBAO's clearance calls for `nin` under
/// `artefact`, asking every 20 ms: calls may pass until then, for at most
/// `seconds` (`still` says what passing after that means).
async fn first_refusal(
    bed: &Bed,
    nin: &str,
    artefact: &str,
    seconds: u64,
    still: &str,
) -> tonic::Status {
    let started = std::time::Instant::now();
    loop {
        match clearance(bed, nin, Some(artefact)).await {
            Err(status) => return status,
            Ok(_) => {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(seconds),
                    "{still}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// `nin` revokes `consent` at MyGov; returns once the gateway refuses
/// CBAO's clearance calls under it for that.
async fn revoke(bed: &Bed, nin: &str, consent: &ConsentRecord) {
    let reference = declared(
        ConsentRef {
            nin: nin.to_owned(),
            consent_id: consent.consent_id.clone(),
        },
        "CITIZEN-SELF-SERVICE",
    );
    portal(bed).await.revoke(reference).await.unwrap();
    let known = first_refusal(
        bed,
        nin,
        &consent.artefact,
        5,
        "the revocation never arrived",
    );
    assert_eq!(
        bridge_error(&known.await).as_deref(),
        Some("consent-revoked")
    );
}

/// The last record the exchange log holds of call `request_id`: its
/// outcome.
fn outcome_of(bed: &Bed, request_id: &str) -> govbridge::proto::audit::v1::ExchangeRecord {
    Store::open_read_only(bed.exchange_log().dir())
        .unwrap()
        .records_of_request(request_id)
        .unwrap()
        .pop()
        .unwrap()
        .decode()
        .unwrap()
}

/// The refusal's code and `bridge-error`.
async fn refused(bed: &Bed, nin: &str, artefact: Option<&str>) -> (Code, String) {
    let status = clearance(bed, nin, artefact).await.unwrap_err();
    (status.code(), bridge_error(&status).unwrap_or_default())
}

fn denied(kind: &str) -> (Code, String) {
    (Code::PermissionDenied, kind.to_owned())
}

fn citizen(bed: &Bed, index: usize) -> String {
    bed.data.citizens[index].nin.to_string()
}

#[tokio::test]
async fn a_consent_lets_the_bank_read_about_that_citizen_only() {
    let bed = dev_bed().await;
    let (a, b) = (citizen(&bed, 0), citizen(&bed, 1));
    let consent = grant(&bed, &Grant::credit(&a)).await;

    let answer = clearance(&bed, &a, Some(&consent.artefact)).await.unwrap();
    assert!(answer.metadata().get("bridge-audit-index").is_some());
    // The exchange log names the consent.
    let request_id = answer
        .metadata()
        .get("bridge-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    let found: Vec<_> = Store::open_read_only(bed.exchange_log().dir())
        .unwrap()
        .records_of_request(request_id)
        .unwrap()
        .into_iter()
        .map(|stored| stored.decode().unwrap())
        .collect();
    assert_eq!(found.len(), 2, "a decision and an outcome: {found:?}");
    assert!(
        found
            .iter()
            .all(|record| record.consent_id == consent.consent_id),
        "{found:?}"
    );

    // The subject-binding attack: A's consent, B's data.
    assert_eq!(
        refused(&bed, &b, Some(&consent.artefact)).await,
        denied("consent-subject-mismatch")
    );
    // Without consent, the policy does not allow the call at all.
    assert_eq!(refused(&bed, &a, None).await, denied("consent-missing"));
}

/// A bed with the dev policies and the NIN of its first citizen.
async fn bed_and_citizen() -> (Bed, String) {
    let bed = dev_bed().await;
    let a = citizen(&bed, 0);
    (bed, a)
}

/// Claims as MyGov would sign them for `Grant::credit(nin)`.
fn credit_claims(nin: &str) -> ConsentClaims {
    ConsentClaims {
        consent_id: "c-test".to_owned(),
        subject: nin.to_owned(),
        consumer: CBAO_CREDIT.to_owned(),
        providers: vec![TAX.to_owned()],
        methods: vec![CLEARANCE.to_owned()],
        purpose: "CREDIT-SCORING".to_owned(),
        not_before: now() - 60,
        expires: now() + 3600,
        max_uses: 1,
        issuer: "SN/GOV/MYGOV/app".to_owned(),
        issued_at: now(),
    }
}

#[tokio::test]
async fn a_call_without_consent_is_refused() {
    let (bed, a) = bed_and_citizen().await;
    let status = clearance(&bed, &a, None).await.unwrap_err();
    assert_eq!(
        (status.code(), bridge_error(&status).unwrap_or_default()),
        denied("consent-missing")
    );
    assert!(status.message().contains("bridge-consent"), "{status:?}");
}

#[tokio::test]
async fn an_artefact_that_is_not_a_jws_is_malformed() {
    let (bed, a) = bed_and_citizen().await;
    assert_eq!(
        refused(&bed, &a, Some("not-a-jws")).await,
        denied("consent-malformed")
    );
}

#[tokio::test]
async fn an_artefact_changed_by_one_character_has_a_bad_signature() {
    let (bed, a) = bed_and_citizen().await;
    let good = grant(&bed, &Grant::credit(&a)).await.artefact;
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let flipped = if parts[1].ends_with('A') { 'B' } else { 'A' };
    parts[1].pop();
    parts[1].push(flipped);
    assert_eq!(
        refused(&bed, &a, Some(&parts.join("."))).await,
        denied("consent-bad-signature")
    );
}

#[tokio::test]
async fn an_artefact_signed_by_an_untrusted_key_names_the_key() {
    let (bed, a) = bed_and_citizen().await;
    // Well formed and signed, but by a key the gateway does not trust.
    let stranger = ConsentSigner::generate("stranger-1").unwrap();
    let status = clearance(&bed, &a, Some(&stranger.sign(&credit_claims(&a))))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bridge_error(&status).unwrap_or_default()),
        denied("consent-unknown-key")
    );
    assert!(status.message().contains("stranger-1"), "{status:?}");
}

#[tokio::test]
async fn a_consent_given_to_another_bank_is_refused() {
    let (bed, a) = bed_and_citizen().await;
    let flawed = Grant {
        consumer: "SN/COM/ECOBANK/kyc",
        ..Grant::credit(&a)
    };
    let artefact = grant(&bed, &flawed).await.artefact;
    assert_eq!(
        refused(&bed, &a, Some(&artefact)).await,
        denied("consent-wrong-consumer")
    );
}

#[tokio::test]
async fn a_consent_for_another_method_is_out_of_scope() {
    let (bed, a) = bed_and_citizen().await;
    let flawed = Grant {
        methods: &[INCOME],
        ..Grant::credit(&a)
    };
    let artefact = grant(&bed, &flawed).await.artefact;
    assert_eq!(
        refused(&bed, &a, Some(&artefact)).await,
        denied("consent-out-of-scope")
    );
}

#[tokio::test]
async fn a_consent_for_another_purpose_is_refused() {
    let (bed, a) = bed_and_citizen().await;
    let flawed = Grant {
        purpose: "KYC",
        ..Grant::credit(&a)
    };
    let artefact = grant(&bed, &flawed).await.artefact;
    assert_eq!(
        refused(&bed, &a, Some(&artefact)).await,
        denied("consent-wrong-purpose")
    );
}

#[tokio::test]
async fn a_consent_not_yet_valid_is_refused() {
    let (bed, a) = bed_and_citizen().await;
    let flawed = Grant {
        not_before: now() + 3600,
        expires: now() + 7200,
        ..Grant::credit(&a)
    };
    let artefact = grant(&bed, &flawed).await.artefact;
    assert_eq!(
        refused(&bed, &a, Some(&artefact)).await,
        denied("consent-not-yet-valid")
    );
}

#[tokio::test]
async fn an_expired_consent_is_refused() {
    let (bed, a) = bed_and_citizen().await;
    let flawed = Grant {
        not_before: now() - 7200,
        expires: now() - 3600,
        ..Grant::credit(&a)
    };
    let artefact = grant(&bed, &flawed).await.artefact;
    assert_eq!(
        refused(&bed, &a, Some(&artefact)).await,
        denied("consent-expired")
    );
}

#[tokio::test]
async fn a_stream_is_refused_at_the_first_message_naming_someone_else() {
    let bed = dev_bed().await;
    let (a, b) = (citizen(&bed, 0), citizen(&bed, 1));
    let consent = grant(&bed, &Grant::streamed(&a)).await;
    let year = |nin: &str, fiscal_year| GetDeclaredIncomeRequest {
        nin: nin.to_owned(),
        fiscal_year,
    };
    let (asking, requests) = tokio::sync::mpsc::channel(4);
    asking.send(year(&a, 2023)).await.unwrap();
    let request = with_header(
        declared(support::feed::Feed(requests), "CREDIT-SCORING"),
        "bridge-consent",
        &consent.artefact,
    );
    let response = TaxAuthorityClient::new(bed.client("cbao-credit").await)
        .stream_declared_income(request)
        .await
        .unwrap();
    let request_id = support::request_id_of(response.metadata());
    let mut answers = response.into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().nin, a);
    asking.send(year(&a, 2022)).await.unwrap();
    assert_eq!(answers.message().await.unwrap().unwrap().fiscal_year, 2022);

    // Only the third message names B: it never reaches the tax authority,
    // and the call ends refused.
    asking.send(year(&b, 2023)).await.unwrap();
    let status = answers.message().await.unwrap_err();
    assert_eq!(
        (status.code(), bridge_error(&status).unwrap_or_default()),
        denied("consent-subject-mismatch"),
        "{status:?}"
    );
    let outcome = outcome_of(&bed, &request_id);
    assert_eq!(outcome.grpc_status, Code::PermissionDenied as i32);
    assert_eq!(outcome.error_kind, "consent-subject-mismatch");
    assert_eq!(outcome.subject, a);

    // The refused call did not spend the consent.
    assert!(
        clearance(
            &bed,
            &a,
            Some(&grant(&bed, &Grant::credit(&a)).await.artefact)
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn consent_bound_calls_fail_closed_while_the_consent_feed_is_down() {
    let bed = Bed::builder()
        .dev_policies()
        .consent_freshness("1s")
        .cuttable("mygov")
        .start()
        .await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::credit(&a).uses(1_000)).await;
    clearance(&bed, &a, Some(&consent.artefact)).await.unwrap();

    bed.cut("mygov");
    // Within the freshness window calls may still pass; past it, none does.
    let status = first_refusal(&bed, &a, &consent.artefact, 3, "still served").await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        bridge_error(&status).as_deref(),
        Some("consent-status-unknown")
    );
    // Calls that need no consent still pass.
    let supplier = TaxAuthorityClient::new(bed.client("treasury").await)
        .get_tax_clearance(declared(
            GetTaxClearanceRequest {
                taxpayer: Some(Taxpayer::Ninea(bed.data.companies[0].ninea.to_string())),
            },
            "PUBLIC-PROCUREMENT",
        ))
        .await;
    assert!(supplier.is_ok(), "{supplier:?}");
}

/// A portal endpoint that takes the connection and never answers (a hung
/// process) is left for the next one before the feed goes stale:
/// consent-bound calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_endpoint_that_never_answers_is_left_for_the_next() {
    let bed = Bed::builder()
        .dev_policies()
        .consent_freshness("1s")
        .start()
        .await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::credit(&a).uses(1_000)).await;
    clearance(&bed, &a, Some(&consent.artefact)).await.unwrap();

    // Connections to it are taken by the kernel, and never answered.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config_file = bed.dir().join("govbridge.toml");
    let mut config: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
    let endpoints = config["providers"]["SN/GOV/MYGOV/consent"]["endpoints"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap();
    let hung_first: Vec<toml::Value> =
        std::iter::once(format!("https://{}", hung.local_addr().unwrap()).into())
            .chain(endpoints)
            .collect();
    config["providers"]["SN/GOV/MYGOV/consent"]["endpoints"] = hung_first.into();
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();
    // The feed dials again, the hung endpoint first.
    bed.reloader.reload().unwrap();
    // Past three freshness windows, a feed stuck on it would have gone
    // stale for good.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(status) = clearance(&bed, &a, Some(&consent.artefact)).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the feed never left the hung endpoint: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(hung);
}

/// The consent feed dials the portal with the upstream TLS in use, not
/// the one the gateway started with: once a reload revokes the portal's
/// certificate, the feed open under the old CRL is dropped, the portal is
/// not trusted again, and consent-bound calls are refused (a portal whose
/// key leaked cannot keep the revocations to itself).
#[tokio::test]
async fn the_consent_feed_follows_a_reload_of_the_upstream_crls() {
    // Three of the portal's heartbeats (one a second) in the window: the
    // feed stays up until something drops it.
    let bed = Bed::builder()
        .dev_policies()
        .consent_freshness("3s")
        .upstream("crls", "[\"pki/crl.pem\"]")
        .start()
        .await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::credit(&a).uses(1_000)).await;
    clearance(&bed, &a, Some(&consent.artefact)).await.unwrap();

    govbridge::pki::revoke(&bed.pki, &bed.pki.join("agency-mygov.pem")).unwrap();
    bed.reloader.reload().unwrap();
    // The feed looks every second, then its freshness window runs out.
    let status = first_refusal(
        &bed,
        &a,
        &consent.artefact,
        15,
        "consent-bound calls still served on the feed of a revoked portal",
    )
    .await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        bridge_error(&status).as_deref(),
        Some("consent-status-unknown")
    );
}

/// A backend's status is the caller's only once its outcome is durable:
/// refused for want of it, the caller learnt nothing, and the consent's
/// use is given back (as it is for a JSON answer, tests/json.rs).
#[tokio::test]
async fn a_status_whose_outcome_is_not_logged_spends_no_use() {
    let bed = dev_bed().await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::one_income_year(&a)).await;
    // No declaration for 1990: the tax authority answers `NOT_FOUND`.
    let income = |fault: Option<&'static str>| {
        let mut request = with_header(
            declared(
                GetDeclaredIncomeRequest {
                    nin: a.clone(),
                    fiscal_year: 1990,
                },
                "CREDIT-SCORING",
            ),
            "bridge-consent",
            &consent.artefact,
        );
        if let Some(fault) = fault {
            request = with_header(request, "govbridge-fault", fault);
        }
        let bed = &bed;
        async move {
            TaxAuthorityClient::new(bed.client("cbao-credit").await)
                .get_declared_income(request)
                .await
        }
    };
    let log = bed.exchange_log();
    let before = log.size();
    // It answers after a second; meanwhile, once the call's decision is
    // durable, the log's disk fills.
    let (answer, ()) = tokio::join!(income(Some("delay=1s")), async {
        while log.size() == before {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        log.simulate_fault(Some(govbridge::exchange_log::StoreFault::DiskFull));
    });
    let status = answer.unwrap_err();
    assert_eq!(
        bridge_error(&status).as_deref(),
        Some("exchange-log-outcome-unrecorded"),
        "{status:?}"
    );
    log.simulate_fault(None);
    // The use is still there: the tax authority's answer spends it.
    let status = income(None).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(bridge_error(&status), None);
    let status = income(None).await.unwrap_err();
    assert_eq!(
        bridge_error(&status).as_deref(),
        Some("consent-exhausted"),
        "{status:?}"
    );
}

/// Every access to `nin`'s data, newest first, as MyGov's Data Tracker
/// lists them (the bed lets MyGov's app ask).
async fn accesses_of(bed: &Bed, nin: &str) -> Vec<Access> {
    DataTrackerClient::new(bed.client("mygov").await)
        .list_accesses(ListAccessesRequest {
            subject: nin.to_owned(),
            since_unix: 0,
            limit: 0,
            before_index: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .accesses
}

/// An attempt refused under a consent is the business of the person the
/// request names: it is in their Data Tracker, refused, whether the
/// consent was revoked or is someone else's.
#[tokio::test]
async fn the_data_tracker_lists_attempts_refused_under_a_consent() {
    let bed = dev_bed().await;
    bed.allow_data_tracker(&["SN/GOV/MYGOV/app"]);
    let (a, b) = (citizen(&bed, 0), citizen(&bed, 1));
    let consent = grant(&bed, &Grant::credit(&a)).await;
    // B named under A's consent.
    assert_eq!(
        refused(&bed, &b, Some(&consent.artefact)).await,
        denied("consent-subject-mismatch")
    );
    // A revokes; the bank tries again.
    portal(&bed)
        .await
        .revoke(declared(
            ConsentRef {
                nin: a.clone(),
                consent_id: consent.consent_id.clone(),
            },
            "CITIZEN-SELF-SERVICE",
        ))
        .await
        .unwrap();
    let revoked = std::time::Instant::now();
    while refused(&bed, &a, Some(&consent.artefact)).await != denied("consent-revoked") {
        assert!(revoked.elapsed() < std::time::Duration::from_secs(2));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let refusal = |access: &Access| {
        !access.allowed
            && access.grpc_status == Code::PermissionDenied as i32
            && access.caller == CBAO_CREDIT
            && access.method == CLEARANCE
    };
    let of_b = accesses_of(&bed, &b).await;
    assert_eq!(of_b.len(), 1, "{of_b:?}");
    assert!(refusal(&of_b[0]), "{of_b:?}");
    let of_a = accesses_of(&bed, &a).await;
    assert!(refusal(&of_a[0]), "the newest is the refusal: {of_a:?}");
}

#[tokio::test]
async fn pausing_and_revoking_take_effect_at_once() {
    let bed = dev_bed().await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::credit(&a)).await;
    clearance(&bed, &a, Some(&consent.artefact)).await.unwrap();

    let reference = || {
        declared(
            ConsentRef {
                nin: a.clone(),
                consent_id: consent.consent_id.clone(),
            },
            "CITIZEN-SELF-SERVICE",
        )
    };
    // The feed delivers the change within a second: look again until then.
    let within_a_second = |kind: &'static str| {
        let bed = &bed;
        let a = &a;
        let artefact = consent.artefact.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            loop {
                let outcome = clearance(bed, a, Some(&artefact)).await;
                match outcome {
                    Err(status) if bridge_error(&status).as_deref() == Some(kind) => return,
                    _ if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    other => panic!("still {other:?} a second later"),
                }
            }
        }
    };
    portal(&bed).await.pause(reference()).await.unwrap();
    within_a_second("consent-paused").await;
    portal(&bed).await.resume(reference()).await.unwrap();
    let resumed = std::time::Instant::now();
    while clearance(&bed, &a, Some(&consent.artefact)).await.is_err() {
        assert!(resumed.elapsed() < std::time::Duration::from_secs(1));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    portal(&bed).await.revoke(reference()).await.unwrap();
    within_a_second("consent-revoked").await;
}

#[tokio::test]
async fn exactly_max_uses_calls_succeed_out_of_fifty_concurrent() {
    let bed = dev_bed().await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::credit(&a).uses(5)).await;
    let attempts = (0..50).map(|_| clearance(&bed, &a, Some(&consent.artefact)));
    let outcomes = support::join_all(attempts).await;
    let succeeded = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(succeeded, 5);
    for outcome in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert_eq!(
            bridge_error(outcome).as_deref(),
            Some("consent-exhausted"),
            "{outcome:?}"
        );
    }
    assert_eq!(
        refused(&bed, &a, Some(&consent.artefact)).await,
        denied("consent-exhausted")
    );
}

/// The consent feed follows only a backend that proves it is the portal:
/// another member's backend at the feed's address could otherwise tell the
/// gateway that a revoked consent is active.
#[tokio::test]
async fn the_feed_connects_only_to_the_portal_itself() {
    use govbridge::identity::MemberId;
    use govbridge::net::client::Channel;

    let bed = Bed::start().await;
    let portal = MemberId::parse("SN/GOV/MYGOV/consent").unwrap();
    let tls = bed.member_tls("cbao-kyc");
    let impostor =
        Channel::connect_to_member(bed.agencies["tax"], "localhost", tls.clone(), &portal)
            .await
            .unwrap_err();
    assert!(
        impostor
            .to_string()
            .contains("presented a certificate for SN/GOV/DGID/tax"),
        "{impostor}"
    );
    Channel::connect_to_member(bed.agencies["mygov"], "localhost", tls, &portal)
        .await
        .unwrap();
}

/// A request message written byte by byte, as an attacker would: what the
/// generated clients cannot send.
#[derive(Debug, Default, Clone, PartialEq)]
struct Raw(Vec<u8>);

impl Raw {
    /// String field `number` holding `value`, appended.
    fn string(mut self, number: u8, value: &str) -> Self {
        self.0.push(number << 3 | 2);
        self.0.push(u8::try_from(value.len()).unwrap());
        self.0.extend_from_slice(value.as_bytes());
        self
    }

    fn of(message: &impl prost::Message) -> Self {
        Self(message.encode_to_vec())
    }
}

impl prost::Message for Raw {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Sends `requests` as the messages of a call to `path` from CBAO's credit
/// subsystem under `artefact`, and reads every answer.
async fn call_raw<T: prost::Message + Default + 'static>(
    bed: &Bed,
    path: &'static str,
    artefact: &str,
    requests: Vec<Raw>,
) -> Result<Vec<T>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(bed.client("cbao-credit").await);
    grpc.ready().await.unwrap();
    let request = with_header(
        declared(tokio_stream::iter(requests), "CREDIT-SCORING"),
        "bridge-consent",
        artefact,
    );
    let codec = tonic_prost::ProstCodec::<Raw, T>::default();
    let mut answers = grpc
        .streaming(request, http::uri::PathAndQuery::from_static(path), codec)
        .await?
        .into_inner();
    let mut all = Vec::new();
    while let Some(answer) = answers.message().await? {
        all.push(answer);
    }
    Ok(all)
}

fn status_kind(status: &tonic::Status) -> (Code, String) {
    (status.code(), bridge_error(status).unwrap_or_default())
}

/// The reviewer's attack: a consent for A, a request naming A's NIN and
/// then, in the same `oneof`, a company's NINEA. The tax authority would
/// decode the NINEA and answer about the company.
#[tokio::test]
async fn a_oneof_cannot_smuggle_another_subject_past_the_consent() {
    let bed = dev_bed().await;
    let a = citizen(&bed, 0);
    let company = bed.data.companies[0].ninea.to_string();
    let consent = grant(&bed, &Grant::credit(&a)).await;

    for (case, smuggled) in [
        (
            "NIN then NINEA",
            Raw::default().string(1, &a).string(2, &company),
        ),
        (
            "NINEA then NIN",
            Raw::default().string(2, &company).string(1, &a),
        ),
        ("NIN twice", Raw::default().string(1, &a).string(1, &a)),
    ] {
        let status =
            call_raw::<TaxClearanceCertificate>(&bed, CLEARANCE, &consent.artefact, vec![smuggled])
                .await
                .unwrap_err();
        assert_eq!(
            status_kind(&status),
            denied("consent-subject-ambiguous"),
            "{case}: {status:?}"
        );
    }
    // The same bytes without the smuggled field are served, on a consent
    // the refusals did not spend.
    let plain = Raw::default().string(1, &a);
    let answers =
        call_raw::<TaxClearanceCertificate>(&bed, CLEARANCE, &consent.artefact, vec![plain])
            .await
            .unwrap();
    assert_eq!(answers.len(), 1);
}

/// A first message naming A, then B, is refused; the attempt is in the
/// Data Tracker of B, whom a decoder keeping the last value reads.
#[tokio::test]
async fn a_first_message_naming_two_people_is_listed_for_the_one_decoders_read() {
    let bed = dev_bed().await;
    bed.allow_data_tracker(&["SN/GOV/MYGOV/app"]);
    let (a, b) = (citizen(&bed, 0), citizen(&bed, 1));
    let consent = grant(&bed, &Grant::credit(&a)).await;
    let twice = Raw::default().string(1, &a).string(1, &b);
    let status =
        call_raw::<TaxClearanceCertificate>(&bed, CLEARANCE, &consent.artefact, vec![twice])
            .await
            .unwrap_err();
    assert_eq!(
        status_kind(&status),
        denied("consent-subject-ambiguous"),
        "{status:?}"
    );
    let accesses = accesses_of(&bed, &b).await;
    assert_eq!(accesses.len(), 1, "{accesses:?}");
    assert!(!accesses[0].allowed, "{accesses:?}");
    assert_eq!(accesses[0].method, CLEARANCE);
}

/// A consent-bound message over the caller's size limit is refused as
/// too large (`RESOURCE_EXHAUSTED`), first message or later, before any
/// of it is read or a use spent; one under the limit but too large for
/// its subject to be checked is refused as unchecked.
#[tokio::test]
async fn a_consent_bound_message_over_the_size_limit_is_too_large() {
    let bed = Bed::builder()
        .dev_policies()
        .limits("[limits.members.\"SN/COM/CBAO/credit\"]\nmax_message_bytes = 100000\n")
        .start()
        .await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::streamed(&a).uses(1)).await;
    let too_large = || Raw(vec![0; 200_000]);
    let year = || {
        Raw::of(&GetDeclaredIncomeRequest {
            nin: a.clone(),
            fiscal_year: 2023,
        })
    };
    type Income = govbridge::proto::tax::v1::DeclaredIncome;
    for (case, messages) in [
        ("first", vec![too_large()]),
        ("second", vec![year(), too_large()]),
    ] {
        let status = call_raw::<Income>(&bed, STREAM_INCOME, &consent.artefact, messages)
            .await
            .unwrap_err();
        assert_eq!(
            status_kind(&status),
            (Code::ResourceExhausted, "message-too-large".to_owned()),
            "{case}: {status:?}"
        );
    }
    let status = call_raw::<Income>(
        &bed,
        STREAM_INCOME,
        &consent.artefact,
        vec![Raw(vec![0; 80_000])],
    )
    .await
    .unwrap_err();
    assert_eq!(
        status_kind(&status),
        denied("consent-subject-mismatch"),
        "{status:?}"
    );
}

/// On a stream, a later message that names its subject twice is refused
/// before it reaches the backend, like one naming someone else.
#[tokio::test]
async fn a_stream_message_naming_its_subject_twice_is_refused() {
    let bed = dev_bed().await;
    let (a, b) = (citizen(&bed, 0), citizen(&bed, 1));
    let consent = grant(&bed, &Grant::streamed(&a)).await;
    let year = |fiscal_year| {
        Raw::of(&GetDeclaredIncomeRequest {
            nin: a.clone(),
            fiscal_year,
        })
    };
    // B's NIN first, A's last: a decoder keeping the last reads A, one
    // keeping the first reads B.
    let twice = Raw::default().string(1, &b).string(1, &a);
    let status = call_raw::<govbridge::proto::tax::v1::DeclaredIncome>(
        &bed,
        STREAM_INCOME,
        &consent.artefact,
        vec![year(2023), twice],
    )
    .await
    .unwrap_err();
    assert_eq!(
        status_kind(&status),
        denied("consent-subject-ambiguous"),
        "{status:?}"
    );
    let answers = call_raw::<govbridge::proto::tax::v1::DeclaredIncome>(
        &bed,
        STREAM_INCOME,
        &consent.artefact,
        vec![year(2023), year(2022)],
    )
    .await
    .unwrap();
    assert_eq!(answers.len(), 2);
}

/// A caller that reads the answer of a consent-bound stream and then
/// cancels has had its data: the use is spent, whatever the call's end.
#[tokio::test]
async fn cancelling_after_an_answer_still_spends_the_use() {
    let bed = dev_bed().await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::streamed(&a).uses(1)).await;
    let year = |fiscal_year| GetDeclaredIncomeRequest {
        nin: a.clone(),
        fiscal_year,
    };
    let open = |asking: tokio::sync::mpsc::Receiver<GetDeclaredIncomeRequest>| {
        let request = with_header(
            declared(support::feed::Feed(asking), "CREDIT-SCORING"),
            "bridge-consent",
            &consent.artefact,
        );
        async {
            TaxAuthorityClient::new(bed.client("cbao-credit").await)
                .stream_declared_income(request)
                .await
        }
    };
    let (asking, requests) = tokio::sync::mpsc::channel(4);
    asking.send(year(2023)).await.unwrap();
    let mut answers = open(requests).await.unwrap().into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().nin, a);
    // The caller has its answer, and cancels.
    drop(answers);
    drop(asking);
    let cancelled = format!(
        "govbridge_calls_total{{caller=\"{CBAO_CREDIT}\",provider=\"{TAX}\",\
         method=\"{STREAM_INCOME}\",code=\"CANCELLED\"}}"
    );
    support::wait_for_metric(bed.admin, &cancelled, |count| count >= 1.0).await;

    let (asking, requests) = tokio::sync::mpsc::channel(4);
    asking.send(year(2022)).await.unwrap();
    let status = match open(requests).await {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(
        status_kind(&status),
        denied("consent-exhausted"),
        "{status:?}"
    );
}

/// Asks `gateway` for `nin`'s tax clearance under `artefact`, waiting
/// (bounded) until it has heard from the consent feed.
async fn clearance_at(
    bed: &Bed,
    gateway: std::net::SocketAddr,
    nin: &str,
    artefact: &str,
) -> Result<(), (Code, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let client = support::H2Client::connect(gateway, bed.member_tls("cbao-credit"))
            .await
            .unwrap();
        let request = with_header(
            declared(
                GetTaxClearanceRequest {
                    taxpayer: Some(Taxpayer::SubjectNin(nin.to_owned())),
                },
                "CREDIT-SCORING",
            ),
            "bridge-consent",
            artefact,
        );
        let answer = TaxAuthorityClient::new(client)
            .get_tax_clearance(request)
            .await;
        match answer {
            Ok(_) => return Ok(()),
            Err(status)
                if bridge_error(&status).as_deref() == Some("consent-status-unknown")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(status) => return Err(status_kind(&status)),
        }
    }
}

/// A use spent stays spent when the gateway is killed and started again
/// on the same data directory.
#[tokio::test]
async fn a_spent_use_stays_spent_across_a_restart() {
    let bed = dev_bed().await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::credit(&a).uses(1)).await;
    let gateway = support::process::GatewayProcess::spawn(&bed, "restarted", &[]);
    clearance_at(&bed, gateway.address, &a, &consent.artefact)
        .await
        .unwrap();
    // SIGKILL, then the same configuration and data directory again.
    drop(gateway);
    let gateway = support::process::GatewayProcess::spawn(&bed, "restarted", &[]);
    assert_eq!(
        clearance_at(&bed, gateway.address, &a, &consent.artefact).await,
        Err(denied("consent-exhausted"))
    );
}

/// A stream goes on only while its consent holds: once the citizen
/// revokes, the stream's next message is refused before it reaches the
/// backend, as a new call would be.
#[tokio::test]
async fn a_stream_ends_at_its_first_message_after_a_revocation() {
    let bed = dev_bed().await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::streamed(&a)).await;
    let year = |fiscal_year| GetDeclaredIncomeRequest {
        nin: a.clone(),
        fiscal_year,
    };
    let stream = |first: GetDeclaredIncomeRequest| {
        let bed = &bed;
        let artefact = consent.artefact.clone();
        async move {
            let (asking, requests) = tokio::sync::mpsc::channel(4);
            asking.send(first).await.unwrap();
            let request = with_header(
                declared(support::feed::Feed(requests), "CREDIT-SCORING"),
                "bridge-consent",
                &artefact,
            );
            let answers = TaxAuthorityClient::new(bed.client("cbao-credit").await)
                .stream_declared_income(request)
                .await
                .map(tonic::Response::into_inner);
            (asking, answers)
        }
    };
    let (asking, answers) = stream(year(2023)).await;
    let mut answers = answers.unwrap();
    assert_eq!(answers.message().await.unwrap().unwrap().nin, a);

    let reference = declared(
        ConsentRef {
            nin: a.clone(),
            consent_id: consent.consent_id.clone(),
        },
        "CITIZEN-SELF-SERVICE",
    );
    portal(&bed).await.revoke(reference).await.unwrap();
    // Once a new stream is refused, the gateway knows.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_asking, probe) = stream(year(2021)).await;
        let refused = match probe {
            Err(status) => Some(status),
            Ok(mut probe) => probe.message().await.err(),
        };
        if refused.is_some_and(|status| bridge_error(&status).as_deref() == Some("consent-revoked"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    asking.send(year(2022)).await.unwrap();
    let status = answers.message().await.unwrap_err();
    assert_eq!(
        (status.code(), bridge_error(&status).unwrap_or_default()),
        denied("consent-revoked"),
        "{status:?}"
    );
}

/// A tax authority under the test's control: a clearance for anyone, and
/// on the first declared-income stream, whatever the caller asks, the
/// answers the test sends when it sends them.
struct PacedTax {
    answers: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<DeclaredIncome>>>,
    /// A declared-income question has arrived.
    asked: std::sync::Arc<tokio::sync::Notify>,
    /// Once it fires, the question is answered `NOT_FOUND`.
    release: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl PacedTax {
    /// The paced tax authority, its answers sent on `answers`.
    fn new(answers: tokio::sync::mpsc::Receiver<DeclaredIncome>) -> Self {
        Self {
            answers: std::sync::Mutex::new(Some(answers)),
            asked: std::sync::Arc::default(),
            release: std::sync::Mutex::default(),
        }
    }

    /// A bed whose tax authority is `self`, the dev policies letting
    /// banks' credit desks ask it what they ask the real one; its policies
    /// live as long as the directory returned.
    async fn bed(self) -> (Bed, tempfile::TempDir) {
        let policies = tempfile::tempdir().unwrap();
        let dev = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policies");
        for file in std::fs::read_dir(dev).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, policies.path().join(file.file_name().unwrap())).unwrap();
        }
        std::fs::write(
            policies.path().join("paced-tax.cedar"),
            format!(
                "@id(\"banks-read-the-paced-tax-authority\")\n\
                 permit (\n  principal in Group::\"bank-credit\",\n  \
                 action in [Action::\"{CLEARANCE}\", Action::\"{INCOME}\", \
                 Action::\"{STREAM_INCOME}\"],\n  \
                 resource == Provider::\"{}\"\n)\n\
                 when {{ context.purpose == \"CREDIT-SCORING\" && context.consent.verified }};\n",
                support::PROBE
            ),
        )
        .unwrap();
        let bed = Bed::builder()
            .policies(policies.path())
            .probe(
                "govbridge.tax.v1.TaxAuthority",
                govbridge::agencies::AgencyService::new(TaxAuthorityServer::new(self)),
            )
            .start()
            .await;
        (bed, policies)
    }
}

#[tonic::async_trait]
impl TaxAuthority for PacedTax {
    async fn get_tax_clearance(
        &self,
        _: tonic::Request<GetTaxClearanceRequest>,
    ) -> Result<tonic::Response<TaxClearanceCertificate>, tonic::Status> {
        Ok(tonic::Response::new(TaxClearanceCertificate::default()))
    }

    async fn get_declared_income(
        &self,
        _: tonic::Request<GetDeclaredIncomeRequest>,
    ) -> Result<tonic::Response<DeclaredIncome>, tonic::Status> {
        let release = self.release.lock().unwrap().take();
        self.asked.notify_one();
        if let Some(release) = release {
            let _ = release.await;
        }
        Err(tonic::Status::not_found("nothing filed that year"))
    }

    type StreamDeclaredIncomeStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<DeclaredIncome, tonic::Status>> + Send>,
    >;

    async fn stream_declared_income(
        &self,
        request: tonic::Request<tonic::Streaming<GetDeclaredIncomeRequest>>,
    ) -> Result<tonic::Response<Self::StreamDeclaredIncomeStream>, tonic::Status> {
        let answers = self.answers.lock().unwrap().take().ok_or_else(|| {
            tonic::Status::failed_precondition("this test answers one stream only")
        })?;
        // The caller's side stays open, read or not.
        let mut asked = request.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = asked.message().await {} });
        let answers = support::feed::Feed(answers).map(Ok);
        Ok(tonic::Response::new(Box::pin(answers)))
    }

    async fn submit_withholdings(
        &self,
        _: tonic::Request<tonic::Streaming<WithholdingLine>>,
    ) -> Result<tonic::Response<WithholdingReceipt>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

/// An answer goes on only while its consent holds: once the citizen
/// revokes, the backend's next message of a stream is not relayed, though
/// the caller asked for nothing more, and the call ends with the
/// gateway's refusal, logged so.
#[tokio::test]
async fn a_streamed_answer_ends_at_its_first_message_after_a_revocation() {
    let (answer, answers) = tokio::sync::mpsc::channel(4);
    let (bed, _policies) = PacedTax::new(answers).bed().await;
    let a = citizen(&bed, 0);
    let consent = paced_consent(&bed, &a, &[CLEARANCE, STREAM_INCOME]).await;
    let income = |fiscal_year| DeclaredIncome {
        nin: a.clone(),
        fiscal_year,
        ..DeclaredIncome::default()
    };
    let (asking, requests) = tokio::sync::mpsc::channel(4);
    asking
        .send(GetDeclaredIncomeRequest {
            nin: a.clone(),
            fiscal_year: 2023,
        })
        .await
        .unwrap();
    let request = with_header(
        declared(support::feed::Feed(requests), "CREDIT-SCORING"),
        "bridge-consent",
        &consent.artefact,
    );
    answer.send(income(2023)).await.unwrap();
    let response = TaxAuthorityClient::new(bed.client("cbao-credit").await)
        .stream_declared_income(request)
        .await
        .unwrap();
    let request_id = support::request_id_of(response.metadata());
    let mut answers = response.into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().fiscal_year, 2023);

    revoke(&bed, &a, &consent).await;

    // The backend answers on, unasked: its answer stops at the gateway.
    answer.send(income(2022)).await.unwrap();
    let status = answers.message().await.unwrap_err();
    assert_eq!(
        (status.code(), bridge_error(&status).unwrap_or_default()),
        denied("consent-revoked"),
        "{status:?}"
    );
    drop(asking);
    let outcome = outcome_of(&bed, &request_id);
    assert_eq!(
        (outcome.grpc_status, outcome.error_kind.as_str()),
        (Code::PermissionDenied as i32, "consent-revoked")
    );
}

/// A status is an answer too: a backend's `NOT_FOUND` that comes after
/// the citizen revoked goes no further than the gateway, which refuses
/// the call instead, logged so.
#[tokio::test]
async fn a_status_after_a_revocation_is_refused() {
    let (_, answers) = tokio::sync::mpsc::channel(1);
    let tax = PacedTax::new(answers);
    let (release, released) = tokio::sync::oneshot::channel();
    *tax.release.lock().unwrap() = Some(released);
    let asked = std::sync::Arc::clone(&tax.asked);
    let (bed, _policies) = tax.bed().await;
    let a = citizen(&bed, 0);
    let consent = paced_consent(&bed, &a, &[CLEARANCE, INCOME]).await;
    let request = with_header(
        declared(
            GetDeclaredIncomeRequest {
                nin: a.clone(),
                fiscal_year: 1990,
            },
            "CREDIT-SCORING",
        ),
        "bridge-consent",
        &consent.artefact,
    );
    let mut client = TaxAuthorityClient::new(bed.client("cbao-credit").await);
    let call = tokio::spawn(async move { client.get_declared_income(request).await });
    asked.notified().await;

    revoke(&bed, &a, &consent).await;

    release.send(()).unwrap();
    let status = call.await.unwrap().unwrap_err();
    assert_eq!(
        (status.code(), bridge_error(&status).unwrap_or_default()),
        denied("consent-revoked"),
        "{status:?}"
    );
    let outcome = outcome_of(&bed, &support::request_id_of(status.metadata()));
    assert_eq!(
        (outcome.grpc_status, outcome.error_kind.as_str()),
        (Code::PermissionDenied as i32, "consent-revoked")
    );
}

/// The backend's own answer spends the use even without data: a
/// `NOT_FOUND` tells the caller the citizen filed nothing that year, so
/// trying year after year is not free.
#[tokio::test]
async fn an_answer_without_data_spends_the_use() {
    let bed = dev_bed().await;
    let a = citizen(&bed, 0);
    let consent = grant(&bed, &Grant::one_income_year(&a)).await;
    let ask_with = |fiscal_year, fault: Option<&'static str>| {
        let (bed, a, artefact) = (&bed, a.clone(), consent.artefact.clone());
        async move {
            let mut request = with_header(
                declared(
                    GetDeclaredIncomeRequest {
                        nin: a,
                        fiscal_year,
                    },
                    "CREDIT-SCORING",
                ),
                "bridge-consent",
                &artefact,
            );
            if let Some(fault) = fault {
                request = with_header(request, "govbridge-fault", fault);
            }
            TaxAuthorityClient::new(bed.client("cbao-credit").await)
                .get_declared_income(request)
                .await
        }
    };
    let ask = |fiscal_year| ask_with(fiscal_year, None);
    // A proxy's 503 in front of the backend, no gRPC status: the
    // gateway's failure, which tells nothing of the citizen.
    let status = ask_with(2023, Some("nostatus")).await.unwrap_err();
    assert_eq!(
        (status.code(), bridge_error(&status).as_deref()),
        (Code::Unavailable, Some("upstream-failed")),
        "{status:?}"
    );
    let status = ask(1990).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(bridge_error(&status), None, "{status:?}");
    let status = ask(2023).await.unwrap_err();
    assert_eq!(
        (status.code(), bridge_error(&status).unwrap_or_default()),
        denied("consent-exhausted"),
        "{status:?}"
    );
}
