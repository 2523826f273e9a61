//! The four gRPC call kinds through the gateway to the mock agencies, with
//! routing, statuses and the `bridge-*` header contract.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use govbridge::agencies::Bank;
use govbridge::proto::bank::v1::account_verification_client::AccountVerificationClient;
use govbridge::proto::bank::v1::{
    AccountVerificationResult, VerifyAccountHolderRequest, VerifyAccountHoldersRequest,
};
use govbridge::proto::business::v1::business_registry_client::BusinessRegistryClient;
use govbridge::proto::business::v1::{GetCompanyRequest, ListDirectorsRequest};
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::civilregistry::v1::{
    GetPersonRequest, VerificationResult, VerifyIdentityRequest, WatchLifeEventsRequest,
};
use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
use govbridge::proto::tax::v1::{WithholdingLine, get_tax_clearance_request};
use support::probe::Probe;
use support::{Bed, H2Client, bridge_error, with_header};
use tonic::Code;

#[tokio::test]
async fn unary_calls_reach_the_civil_registry() {
    let bed = Bed::start().await;
    let citizen = bed.data.citizens.iter().find(|c| c.is_alive()).unwrap();
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);

    let response = registry
        .get_person(GetPersonRequest {
            nin: citizen.nin.to_string(),
        })
        .await
        .unwrap();
    assert!(response.metadata().get("bridge-request-id").is_some());
    let person = response.into_inner().person.unwrap();
    assert_eq!(person.nin, citizen.nin.to_string());
    assert_eq!(person.first_names, citizen.first_names);
    assert_eq!(person.last_name, citizen.last_name);
    assert_eq!(person.date_of_birth, citizen.date_of_birth.to_string());

    let verdict = registry
        .verify_identity(VerifyIdentityRequest {
            nin: citizen.nin.to_string(),
            first_names: citizen.first_names.clone(),
            last_name: citizen.last_name.to_owned(),
            date_of_birth: citizen.date_of_birth.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict.result(), VerificationResult::Match);
    bed.stop().await;
}

#[tokio::test]
async fn unary_calls_reach_the_business_registry_and_tax_authority() {
    let bed = Bed::start().await;
    let company = &bed.data.companies[0];
    let mut business = BusinessRegistryClient::new(bed.client("cbao-kyc").await);
    let found = business
        .get_company(GetCompanyRequest {
            ninea: company.ninea.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.legal_name, company.legal_name);
    let directors = business
        .list_directors(ListDirectorsRequest {
            ninea: company.ninea.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(directors.directors.len(), company.directors.len());

    let mut tax = TaxAuthorityClient::new(bed.client("cbao-kyc").await);
    let clearance = tax
        .get_tax_clearance(govbridge::proto::tax::v1::GetTaxClearanceRequest {
            taxpayer: Some(get_tax_clearance_request::Taxpayer::Ninea(
                company.ninea.to_string(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(clearance.taxpayer_name, company.legal_name);
    bed.stop().await;
}

#[tokio::test]
async fn server_streaming_relays_every_life_event_in_order() {
    let bed = Bed::start().await;
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let mut stream = registry
        .watch_life_events(WatchLifeEventsRequest {
            after_sequence: 10,
            max_events: 500,
        })
        .await
        .unwrap()
        .into_inner();
    let mut sequences = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        sequences.push(event.sequence);
    }
    assert_eq!(sequences.len(), 500);
    assert!(sequences[0] > 10);
    assert!(sequences.windows(2).all(|pair| pair[0] < pair[1]));
    let expected: Vec<u64> = bed
        .data
        .life_events
        .iter()
        .filter(|event| event.sequence > 10)
        .take(500)
        .map(|event| event.sequence)
        .collect();
    assert_eq!(sequences, expected);
    bed.stop().await;
}

#[tokio::test]
async fn client_streaming_uploads_withholdings_for_one_receipt() {
    let bed = Bed::start().await;
    let employer = &bed.data.companies[0];
    let employees: Vec<_> = bed
        .data
        .citizens
        .iter()
        .filter(|c| c.is_alive() && c.age() >= 18)
        .take(300)
        .collect();
    let lines: Vec<WithholdingLine> = employees
        .iter()
        .enumerate()
        .map(|(index, employee)| WithholdingLine {
            line_id: format!("L{index}"),
            payer_ninea: employer.ninea.to_string(),
            subject_nin: employee.nin.to_string(),
            period: "2025-06".to_owned(),
            gross_amount_xof: 450_000,
            tax_withheld_xof: 36_000,
        })
        .collect();
    let mut tax = TaxAuthorityClient::new(bed.client("sonatel-payroll").await);
    let receipt = tax
        .submit_withholdings(tokio_stream::iter(lines))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.lines_received, 300);
    assert_eq!(receipt.lines_accepted + receipt.lines_rejected, 300);
    assert!(!receipt.receipt_id.is_empty());
    bed.stop().await;
}

#[tokio::test]
async fn bidirectional_streaming_checks_a_payment_batch_line_by_line() {
    let bed = Bed::start().await;
    let accounts: Vec<_> = bed
        .data
        .accounts
        .iter()
        .filter(|account| account.bank == Bank::Cbao && account.is_open())
        .take(50)
        .collect();
    assert_eq!(accounts.len(), 50);
    let stranger = bed
        .data
        .citizens
        .iter()
        .find(|c| c.nin != accounts[0].holder)
        .unwrap();
    let mut lines: Vec<VerifyAccountHoldersRequest> = accounts
        .iter()
        .enumerate()
        .map(|(index, account)| VerifyAccountHoldersRequest {
            line_id: format!("P{index}"),
            iban: account.iban.to_string(),
            nin: account.holder.to_string(),
        })
        .collect();
    lines.push(VerifyAccountHoldersRequest {
        line_id: "wrong-holder".to_owned(),
        iban: accounts[0].iban.to_string(),
        nin: stranger.nin.to_string(),
    });

    // Send one line, read its answer, then the next: a true conversation.
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let mut bank = AccountVerificationClient::new(bed.client("treasury").await);
    sender.send(lines[0].clone()).await.unwrap();
    let mut responses = bank
        .verify_account_holders(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    for (index, line) in lines.iter().enumerate() {
        if index > 0 {
            sender.send(line.clone()).await.unwrap();
        }
        let answer = responses.message().await.unwrap().unwrap();
        assert_eq!(answer.line_id, line.line_id);
        let expected = if line.line_id == "wrong-holder" {
            AccountVerificationResult::NoMatch
        } else {
            AccountVerificationResult::Match
        };
        assert_eq!(answer.result(), expected, "line {}", line.line_id);
    }
    drop(sender);
    assert!(responses.message().await.unwrap().is_none());
    bed.stop().await;
}

#[tokio::test]
async fn bridge_target_chooses_among_providers() {
    let bed = Bed::start().await;
    let account = bed
        .data
        .accounts
        .iter()
        .find(|account| account.bank == Bank::Ecobank && account.is_open())
        .unwrap();
    let request = || VerifyAccountHolderRequest {
        iban: account.iban.to_string(),
        nin: account.holder.to_string(),
    };
    let mut bank = AccountVerificationClient::new(bed.client("treasury").await);
    // The first provider (CBAO) is the default and does not hold the account.
    let default = bank
        .verify_account_holder(request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.result(), AccountVerificationResult::AccountUnknown);
    let targeted = bank
        .verify_account_holder(with_header(
            tonic::Request::new(request()),
            "bridge-target",
            "SN/COM/ECOBANK/accounts",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(targeted.result(), AccountVerificationResult::Match);

    let status = bank
        .verify_account_holder(with_header(
            tonic::Request::new(request()),
            "bridge-target",
            "SN/GOV/ANEC/civil-registry",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(bridge_error(&status).as_deref(), Some("unknown-target"));
    bed.stop().await;
}

#[tokio::test]
async fn backend_statuses_pass_through_unchanged() {
    let bed = Bed::start().await;
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    // Well-formed, but nobody's: a known citizen's prefix, another sequence.
    let prefix = &bed.data.citizens[0].nin.to_string()[..8];
    let nobody = (0..100_000)
        .map(|sequence| format!("{prefix}{sequence:05}"))
        .find(|nin| {
            bed.data
                .citizen(govbridge::agencies::parse_nin(nin).unwrap())
                .is_none()
        })
        .unwrap();
    let unknown = registry
        .get_person(GetPersonRequest { nin: nobody })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert_eq!(
        bridge_error(&unknown),
        None,
        "the backend answered, not the gateway"
    );

    let malformed = registry
        .get_person(GetPersonRequest {
            nin: "12-34".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
    assert_eq!(bridge_error(&malformed), None);
    assert!(malformed.metadata().get("bridge-request-id").is_some());
    bed.stop().await;
}

/// Errors answered with HEADERS + END_STREAM must reach the caller that way:
/// strict clients (gRPC C-core, so Python, C++, Ruby...) reject a status in
/// headers followed by an empty DATA frame.
#[tokio::test]
async fn trailers_only_answers_stay_trailers_only() {
    use http_body::Body as _;
    let bed = Bed::start().await;
    let mut client = bed.client("cbao-kyc").await;
    let malformed = GetPersonRequest {
        nin: "12-34".to_owned(),
    };
    let from_backend = support::raw_call(
        &mut client,
        "/govbridge.civilregistry.v1.CivilRegistry/GetPerson",
        &malformed,
    )
    .await;
    assert_eq!(from_backend.headers()["grpc-status"], "3");
    assert!(
        from_backend.body().is_end_stream(),
        "the backend's trailers-only answer grew a body"
    );

    let from_gateway = support::raw_call(
        &mut client,
        "/govbridge.land.v1.Cadastre/GetParcel",
        &malformed,
    )
    .await;
    assert_eq!(from_gateway.headers()["grpc-status"], "12");
    assert!(
        from_gateway.body().is_end_stream(),
        "the gateway's own answer grew a body"
    );
    bed.stop().await;
}

/// Calls `path` with an empty message: for services the client has no stub of.
async fn call_path(client: H2Client, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(client);
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<(), ()> = tonic_prost::ProstCodec::default();
    grpc.unary(
        tonic::Request::new(()),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn unknown_services_and_methods_are_unimplemented() {
    let bed = Bed::start().await;
    let status = call_path(
        bed.client("cbao-kyc").await,
        "/govbridge.land.v1.Cadastre/GetParcel",
    )
    .await;
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(bridge_error(&status).as_deref(), Some("unknown-service"));
    assert!(
        status.message().contains("govbridge.land.v1.Cadastre"),
        "{}",
        status.message()
    );

    let status = call_path(
        bed.client("cbao-kyc").await,
        "/govbridge.civilregistry.v1.CivilRegistry/DeletePerson",
    )
    .await;
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(bridge_error(&status).as_deref(), Some("unknown-method"));
    bed.stop().await;
}

#[tokio::test]
async fn a_spoofed_bridge_client_never_reaches_a_backend() {
    let probe = Probe::default();
    let bed = Bed::with_probe(&probe).await;
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let mut request = tonic::Request::new(GetPersonRequest { nin: "1".into() });
    let metadata = request.metadata_mut();
    metadata.insert("bridge-client", "SN/GOV/DGID/tax".parse().unwrap());
    metadata.append(
        "bridge-client",
        "SN/GOV/ANEC/civil-registry".parse().unwrap(),
    );
    metadata.insert("bridge-consent-id", "forged".parse().unwrap());
    metadata.insert("bridge-purpose", "KYC".parse().unwrap());
    metadata.insert(
        "bridge-request-id",
        "6f1c2a52-3c1e-4e0b-9a57-0f4f1f2b8d10".parse().unwrap(),
    );
    let response = registry.get_person(request).await.unwrap();
    assert_eq!(
        response.metadata().get("bridge-request-id").unwrap(),
        "6f1c2a52-3c1e-4e0b-9a57-0f4f1f2b8d10"
    );

    let seen = probe.seen();
    let upstream = &seen[0].metadata;
    let clients: Vec<_> = upstream.get_all("bridge-client").iter().collect();
    assert_eq!(clients, ["SN/COM/CBAO/kyc"]);
    assert!(upstream.get("bridge-consent-id").is_none());
    assert_eq!(upstream.get("bridge-purpose").unwrap(), "KYC");
    assert_eq!(
        upstream.get("bridge-request-id").unwrap(),
        "6f1c2a52-3c1e-4e0b-9a57-0f4f1f2b8d10"
    );
    assert!(
        upstream.get("traceparent").is_some(),
        "the gateway starts a trace"
    );
    bed.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_reused_across_calls_and_callers() {
    let probe = Probe::default();
    let bed = Bed::with_probe(&probe).await;
    for member in ["cbao-kyc", "treasury", "cbao-kyc"] {
        let mut registry = CivilRegistryClient::new(bed.client(member).await);
        for _ in 0..3 {
            registry
                .get_person(GetPersonRequest { nin: "1".into() })
                .await
                .unwrap();
        }
    }
    let seen = probe.seen();
    assert_eq!(seen.len(), 9);
    assert!(
        seen.iter()
            .all(|call| call.remote_addr == seen[0].remote_addr),
        "one upstream HTTP/2 connection carries every call"
    );
    bed.stop().await;
}

#[tokio::test]
async fn malformed_bridge_headers_are_invalid_arguments_naming_the_header() {
    let probe = Probe::default();
    let bed = Bed::with_probe(&probe).await;
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    for (header, value) in [
        ("bridge-purpose", "know your customer"),
        ("bridge-reason", &"why ".repeat(80)),
        ("bridge-target", "CBAO"),
        ("bridge-request-id", "42"),
    ] {
        let request = with_header(
            tonic::Request::new(GetPersonRequest { nin: "1".into() }),
            header,
            value,
        );
        let status = registry.get_person(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{header}");
        assert_eq!(bridge_error(&status).as_deref(), Some("bad-header"));
        assert!(
            status.message().contains(header),
            "{header}: {}",
            status.message()
        );
    }
    assert!(probe.seen().is_empty());
    bed.stop().await;
}

#[tokio::test]
async fn a_backend_that_is_down_gives_unavailable_quickly() {
    let bed = Bed::builder()
        .without_agencies()
        .dead_provider("govbridge.tax.v1.TaxAuthority")
        .start()
        .await;
    let mut tax = TaxAuthorityClient::new(bed.client("cbao-kyc").await);
    let started = Instant::now();
    let status = tax
        .get_tax_clearance(govbridge::proto::tax::v1::GetTaxClearanceRequest {
            taxpayer: Some(get_tax_clearance_request::Taxpayer::SubjectNin("1".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        bridge_error(&status).as_deref(),
        Some("upstream-unavailable")
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    bed.stop().await;
}

/// A backend that accepts TCP and never speaks TLS: concurrent calls share
/// one connection attempt instead of queueing for one each.
#[tokio::test]
async fn a_silent_backend_fails_concurrent_calls_together() {
    let bed = Bed::builder()
        .without_agencies()
        .silent_provider("govbridge.tax.v1.TaxAuthority")
        .start()
        .await;
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = bed.client("cbao-kyc").await;
        calls.spawn(async move {
            TaxAuthorityClient::new(client)
                .get_tax_clearance(govbridge::proto::tax::v1::GetTaxClearanceRequest {
                    taxpayer: Some(get_tax_clearance_request::Taxpayer::SubjectNin("1".into())),
                })
                .await
                .unwrap_err()
        });
    }
    while let Some(status) = calls.join_next().await {
        let status = status.unwrap();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            !status.message().contains("127.0.0.1"),
            "internal addresses leak: {}",
            status.message()
        );
    }
    // One 1 s connect timeout, not eight in a row.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    bed.stop().await;
}

#[tokio::test]
async fn agencies_refuse_callers_other_than_the_gateway() {
    let bed = Bed::start().await;
    let direct = H2Client::connect(bed.agencies["civil-registry"], bed.member_tls("cbao-kyc"))
        .await
        .unwrap();
    let status = CivilRegistryClient::new(direct)
        .get_person(GetPersonRequest {
            nin: bed.data.citizens[0].nin.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    bed.stop().await;
}

/// A malformed request id is answered only once the caller is a member
/// within its limits: a stranger gets `unknown-member` (one record, then
/// its connection is closed), not a refusal per call on an open
/// connection.
#[tokio::test]
async fn a_stranger_with_a_bad_request_id_is_refused_as_a_stranger() {
    let bed = Bed::start().await;
    let stranger = govbridge::identity::MemberId::parse("SN/COM/NOBODY/app").unwrap();
    let tls = bed.issue_client("stranger", &govbridge::pki::LeafRequest::member(&stranger));
    let channel = H2Client::connect(bed.gateway, tls).await.unwrap();
    let before = bed.exchange_log().size();
    let request = with_header(
        support::declared(support::verify_identity_of(&bed, 0), "KYC"),
        "bridge-request-id",
        "not-a-uuid",
    );
    let status = CivilRegistryClient::new(channel)
        .verify_identity(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(bridge_error(&status).as_deref(), Some("unknown-member"));
    assert_eq!(bed.exchange_log().size(), before + 1);

    // A member hears of its malformed id.
    let request = with_header(
        support::declared(support::verify_identity_of(&bed, 0), "KYC"),
        "bridge-request-id",
        "not-a-uuid",
    );
    let status = CivilRegistryClient::new(bed.client("cbao-kyc").await)
        .verify_identity(request)
        .await
        .unwrap_err();
    assert_eq!(
        bridge_error(&status).as_deref(),
        Some("bad-header"),
        "{status:?}"
    );
}

/// A gRPC path has no query: one is refused before routing, so nothing
/// reaches a backend with a path other than the one routed and recorded.
#[tokio::test]
async fn a_query_in_the_path_is_refused_before_routing() {
    let bed = Bed::start().await;
    let mut client = bed.client("cbao-kyc").await;
    let request = support::verify_identity_of(&bed, 0);
    let plain = support::raw_call(
        &mut client,
        "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity",
        &request,
    )
    .await;
    assert!(plain.headers().get("bridge-error").is_none());

    for path in [
        "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity?debug=1",
        "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity?",
        "/govbridge.directory.v1.Directory/ListServices?all=1",
    ] {
        let refused = support::raw_call(&mut client, path, &request).await;
        assert_eq!(refused.headers()["grpc-status"], "3", "{path}");
        assert_eq!(refused.headers()["bridge-error"], "bad-path", "{path}");
    }
    bed.stop().await;
}
