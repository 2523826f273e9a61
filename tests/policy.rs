//! Authorization through the gateway with the dev policies: per-method
//! decisions, purposes, the connection-level check, and reloads.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use govbridge::agencies::Bank;
use govbridge::identity::MemberId;
use govbridge::pki::{LeafRequest, Usage};
use govbridge::proto::bank::v1::account_verification_client::AccountVerificationClient;
use govbridge::proto::bank::v1::{AccountVerificationResult, VerifyAccountHoldersRequest};
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::civilregistry::v1::{
    GetPersonRequest, VerificationResult, VerifyIdentityRequest, WatchLifeEventsRequest,
};
use govbridge::proto::tax::v1::WithholdingLine;
use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
use support::probe::Probe;
use support::{Bed, H2Client, bridge_error, declared, dev_bed};
use tonic::Code;

#[tokio::test]
async fn a_bank_may_verify_identities_but_not_read_civil_records() {
    let bed = dev_bed().await;
    let citizen = bed.data.citizens.iter().find(|c| c.is_alive()).unwrap();
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let verdict = registry
        .verify_identity(declared(
            VerifyIdentityRequest {
                nin: citizen.nin.to_string(),
                first_names: citizen.first_names.clone(),
                last_name: citizen.last_name.to_owned(),
                date_of_birth: citizen.date_of_birth.to_string(),
            },
            "KYC",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict.result(), VerificationResult::Match);

    let status = registry
        .get_person(declared(
            GetPersonRequest {
                nin: citizen.nin.to_string(),
            },
            "KYC",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(bridge_error(&status).as_deref(), Some("policy-denied"));
    assert_eq!(
        status.message(),
        "SN/COM/CBAO/kyc may not call /govbridge.civilregistry.v1.CivilRegistry/GetPerson \
         at SN/GOV/ANEC/civil-registry for purpose KYC: no policy permits it"
    );
    bed.stop().await;
}

#[tokio::test]
async fn the_treasury_checks_a_payment_batch_and_others_may_not() {
    let bed = dev_bed().await;
    let account = bed
        .data
        .accounts
        .iter()
        .find(|a| a.bank == Bank::Cbao && a.is_open())
        .unwrap();
    let line = VerifyAccountHoldersRequest {
        line_id: "P1".to_owned(),
        iban: account.iban.to_string(),
        nin: account.holder.to_string(),
    };
    let mut treasury = AccountVerificationClient::new(bed.client("treasury").await);
    let mut answers = treasury
        .verify_account_holders(declared(
            tokio_stream::iter([line.clone()]),
            "BENEFIT-PAYMENT",
        ))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(answer.result(), AccountVerificationResult::Match);

    let mut bank = AccountVerificationClient::new(bed.client("ecobank-kyc").await);
    let status = bank
        .verify_account_holders(declared(tokio_stream::iter([line]), "KYC"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(bridge_error(&status).as_deref(), Some("policy-denied"));
    bed.stop().await;
}

#[tokio::test]
async fn an_employer_files_withholdings_but_reads_no_civil_data() {
    let bed = dev_bed().await;
    let employee = &bed.data.citizens[0];
    let line = WithholdingLine {
        line_id: "L1".to_owned(),
        payer_ninea: bed.data.companies[0].ninea.to_string(),
        subject_nin: employee.nin.to_string(),
        period: "2025-06".to_owned(),
        gross_amount_xof: 500_000,
        tax_withheld_xof: 40_000,
    };
    let mut tax = TaxAuthorityClient::new(bed.client("sonatel-payroll").await);
    let receipt = tax
        .submit_withholdings(declared(tokio_stream::iter([line]), "TAX-WITHHOLDING"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.lines_received, 1);

    let mut registry = CivilRegistryClient::new(bed.client("sonatel-payroll").await);
    let status = registry
        .get_person(declared(
            GetPersonRequest {
                nin: employee.nin.to_string(),
            },
            "TAX-WITHHOLDING",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    bed.stop().await;
}

#[tokio::test]
async fn denied_calls_never_reach_the_backend() {
    let probe = Probe::default();
    let bed = Bed::builder()
        .dev_policies()
        .probe(support::probe::SERVICE, probe.server())
        .start()
        .await;
    // The probe is the civil registry's default provider; the dev policies
    // grant its methods at ANEC only, so every call here is denied.
    for member in ["cbao-kyc", "treasury", "dgid-tax", "mygov"] {
        let mut registry = CivilRegistryClient::new(bed.client(member).await);
        let status = registry
            .get_person(declared(GetPersonRequest { nin: "1".into() }, "KYC"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{member}");
    }
    assert!(probe.seen().is_empty(), "a denied call reached the backend");

    // The tax authority may read civil records at ANEC, and only there.
    let mut tax = CivilRegistryClient::new(bed.client("dgid-tax").await);
    let status = tax
        .get_person(declared(
            GetPersonRequest { nin: "1".into() },
            "TAX-ASSESSMENT",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(probe.seen().is_empty(), "a denied call reached the backend");
    let mut at_anec = declared(
        GetPersonRequest {
            nin: bed.data.citizens[0].nin.to_string(),
        },
        "TAX-ASSESSMENT",
    );
    at_anec.metadata_mut().insert(
        "bridge-target",
        "SN/GOV/ANEC/civil-registry".parse().unwrap(),
    );
    tax.get_person(at_anec).await.unwrap();
    bed.stop().await;
}

#[tokio::test]
async fn purposes_must_be_declared_registered_and_well_formed() {
    let bed = dev_bed().await;
    let citizen = &bed.data.citizens[0];
    let request = |purpose: Option<&str>| {
        let message = VerifyIdentityRequest {
            nin: citizen.nin.to_string(),
            first_names: citizen.first_names.clone(),
            last_name: citizen.last_name.to_owned(),
            date_of_birth: citizen.date_of_birth.to_string(),
        };
        match purpose {
            Some(purpose) => declared(message, purpose),
            None => {
                let mut request = declared(message, "KYC");
                request.metadata_mut().remove("bridge-purpose");
                request
            }
        }
    };
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);

    let missing = registry.verify_identity(request(None)).await.unwrap_err();
    assert_eq!(missing.code(), Code::PermissionDenied);
    assert!(
        missing.message().contains("without a purpose"),
        "{}",
        missing.message()
    );
    assert!(
        missing
            .message()
            .contains("personal-data-needs-purpose-agent-and-reason"),
        "{}",
        missing.message()
    );

    let unknown = registry
        .verify_identity(request(Some("MARKETING")))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(
        unknown.message().contains("bridge-purpose"),
        "{}",
        unknown.message()
    );

    let malformed = registry
        .verify_identity(request(Some("kyc")))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(
        malformed.message().contains("bridge-purpose"),
        "{}",
        malformed.message()
    );

    let mut long_reason = request(Some("KYC"));
    long_reason
        .metadata_mut()
        .insert("bridge-reason", "r".repeat(257).parse().unwrap());
    let status = registry.verify_identity(long_reason).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("bridge-reason"),
        "{}",
        status.message()
    );

    registry
        .verify_identity(request(Some("AML")))
        .await
        .unwrap();
    bed.stop().await;
}

#[tokio::test]
async fn a_member_without_any_permit_is_refused_and_disconnected() {
    let bed = dev_bed().await;
    // The banks' account services are registered members with no permit.
    let member = MemberId::parse("SN/COM/CBAO/accounts").unwrap();
    let mut request = LeafRequest::member(&member);
    request.usage = Usage::Client;
    let client = H2Client::connect(bed.gateway, bed.issue_client("cbao-accounts", &request))
        .await
        .unwrap();
    let status = CivilRegistryClient::new(client.clone())
        .verify_identity(declared(VerifyIdentityRequest::default(), "KYC"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(bridge_error(&status).as_deref(), Some("no-permits"));
    assert!(
        client.closed_by_server().await,
        "the connection stayed open"
    );
    // Its /openapi.json is refused as its calls are.
    let mut client = H2Client::connect(bed.gateway, bed.issue_client("cbao-accounts-2", &request))
        .await
        .unwrap();
    let ready = tower::ServiceExt::ready(&mut client).await.unwrap();
    let openapi = http::Request::get("/openapi.json")
        .body(tonic::body::Body::empty())
        .unwrap();
    let response = tower::Service::call(ready, openapi).await.unwrap();
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(response.headers()["bridge-error"], "no-permits");
    bed.stop().await;
}

#[tokio::test]
async fn a_reload_applies_new_policies_without_breaking_open_streams() {
    let bed = dev_bed().await;
    let citizen = &bed.data.citizens[0];
    let get_person = || {
        declared(
            GetPersonRequest {
                nin: citizen.nin.to_string(),
            },
            "KYC",
        )
    };
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    assert_eq!(
        registry.get_person(get_person()).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // An open stream, under the old policies.
    let mut treasury = CivilRegistryClient::new(bed.client("treasury").await);
    let mut events = treasury
        .watch_life_events(declared(
            WatchLifeEventsRequest {
                after_sequence: 0,
                max_events: 3_000,
            },
            "BENEFIT-PAYMENT",
        ))
        .await
        .unwrap()
        .into_inner();
    events.message().await.unwrap().unwrap();

    // An invalid policy is rejected and the running one keeps serving.
    let policies = bed.dir().join("policies");
    std::fs::write(
        policies.join("broken.cedar"),
        "permit (principal, action, resource) when { context.nope };",
    )
    .unwrap();
    let error = bed.reloader.reload().unwrap_err().to_string();
    assert!(error.contains("broken.cedar:1:"), "{error}");
    assert_eq!(
        registry.get_person(get_person()).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // A valid one applies to the next call, on the same connection.
    std::fs::write(
        policies.join("broken.cedar"),
        r#"@id("cbao-reads-records")
permit (
  principal == Member::"SN/COM/CBAO/kyc",
  action == Action::"/govbridge.civilregistry.v1.CivilRegistry/GetPerson",
  resource
) when { context.purpose == "KYC" };"#,
    )
    .unwrap();
    bed.reloader.reload().unwrap();
    let person = registry
        .get_person(get_person())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(person.person.unwrap().nin, citizen.nin.to_string());

    // The stream opened before the reloads runs to its end.
    assert_eq!(1 + support::count_to_end(&mut events).await, 3_000);
    bed.stop().await;
}
