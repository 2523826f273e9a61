//! Citizen consent through the real gateway: MyGov grants and signs, the
//! gateway verifies the artefact, binds it to the person the request names,
//! follows revocations and counts uses.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use govbridge::audit::Store;
use govbridge::consent::artefact::{ConsentClaims, ConsentSigner};
use govbridge::proto::consent::v1::consent_client::ConsentClient;
use govbridge::proto::consent::v1::{ConsentRecord, ConsentRef, GrantRequest};
use govbridge::proto::tax::v1::get_tax_clearance_request::Taxpayer;
use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
use govbridge::proto::tax::v1::{GetTaxClearanceRequest, TaxClearanceCertificate};
use support::{Bed, bridge_error, declared, dev_bed, with_header};
use tonic::Code;

const CLEARANCE: &str = "/govbridge.tax.v1.TaxAuthority/GetTaxClearance";
const INCOME: &str = "/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome";
const TAX: &str = "SN/GOV/DGID/tax";
const CBAO_CREDIT: &str = "SN/COM/CBAO/credit";

/// What a citizen grants; `grant` fills the rest.
struct Grant<'a> {
    nin: &'a str,
    consumer: &'a str,
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
            methods: &[CLEARANCE],
            purpose: "CREDIT-SCORING",
            max_uses: 5,
            not_before: 0,
            expires: 0,
        }
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

async fn grant(bed: &Bed, grant: &Grant<'_>) -> ConsentRecord {
    portal(bed)
        .await
        .grant(declared(
            GrantRequest {
                nin: grant.nin.to_owned(),
                consumer: grant.consumer.to_owned(),
                providers: vec![TAX.to_owned()],
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

#[tokio::test]
async fn each_flaw_of_an_artefact_has_its_own_refusal() {
    let bed = dev_bed().await;
    let a = citizen(&bed, 0);
    let good = grant(&bed, &Grant::credit(&a)).await.artefact;

    assert_eq!(
        refused(&bed, &a, Some("not-a-jws")).await,
        denied("consent-malformed")
    );

    // One changed character in the payload.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let flipped = if parts[1].ends_with('A') { 'B' } else { 'A' };
    parts[1].pop();
    parts[1].push(flipped);
    assert_eq!(
        refused(&bed, &a, Some(&parts.join("."))).await,
        denied("consent-bad-signature")
    );

    // Well formed and signed, but by a key the gateway does not trust.
    let stranger = ConsentSigner::generate("stranger-1").unwrap();
    let claims = ConsentClaims {
        consent_id: "c-stranger".to_owned(),
        subject: a.clone(),
        consumer: CBAO_CREDIT.to_owned(),
        providers: vec![TAX.to_owned()],
        methods: vec![CLEARANCE.to_owned()],
        purpose: "CREDIT-SCORING".to_owned(),
        not_before: now() - 60,
        expires: now() + 3600,
        max_uses: 1,
        issuer: "SN/GOV/MYGOV/app".to_owned(),
        issued_at: now(),
    };
    assert_eq!(
        refused(&bed, &a, Some(&stranger.sign(&claims))).await,
        denied("consent-unknown-key")
    );

    let cases = [
        (
            Grant {
                consumer: "SN/COM/ECOBANK/kyc",
                ..Grant::credit(&a)
            },
            "consent-wrong-consumer",
        ),
        (
            Grant {
                methods: &[INCOME],
                ..Grant::credit(&a)
            },
            "consent-out-of-scope",
        ),
        (
            Grant {
                purpose: "KYC",
                ..Grant::credit(&a)
            },
            "consent-wrong-purpose",
        ),
        (
            Grant {
                not_before: now() + 3600,
                expires: now() + 7200,
                ..Grant::credit(&a)
            },
            "consent-not-yet-valid",
        ),
        (
            Grant {
                not_before: now() - 7200,
                expires: now() - 3600,
                ..Grant::credit(&a)
            },
            "consent-expired",
        ),
    ];
    for (flawed, kind) in cases {
        let artefact = grant(&bed, &flawed).await.artefact;
        assert_eq!(refused(&bed, &a, Some(&artefact)).await, denied(kind));
    }
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
    let consent = grant(
        &bed,
        &Grant {
            max_uses: 5,
            ..Grant::credit(&a)
        },
    )
    .await;
    let attempts = (0..50).map(|_| clearance(&bed, &a, Some(&consent.artefact)));
    let outcomes = futures_join_all(attempts).await;
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

/// Runs futures concurrently on this task and collects their outputs.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let futures: Vec<_> = futures.map(Box::pin).collect();
    // The futures borrow the bed: poll them together here rather than
    // spawning them.
    let mut pending: Vec<_> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}
