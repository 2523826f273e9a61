//! Every kind of call leaves its records: unary, server, client and
//! bidirectional streaming, a call whose backend cannot be reached after it
//! was allowed, and a call its client abandons.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use govbridge::agencies::Bank;
use govbridge::exchange_log::{ExchangeRecord, Phase, Store};
use govbridge::proto::bank::v1::VerifyAccountHoldersRequest;
use govbridge::proto::bank::v1::account_verification_client::AccountVerificationClient;
use govbridge::proto::civilregistry::v1::WatchLifeEventsRequest;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::tax::v1::WithholdingLine;
use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
use support::{Bed, with_header};
use tonic::Code;

/// The records of one call, in order.
fn records(bed: &Bed, request_id: &str) -> Vec<(u64, ExchangeRecord)> {
    Store::open_read_only(bed.exchange_log().dir())
        .unwrap()
        .records_of_request(request_id)
        .unwrap()
        .into_iter()
        .map(|stored| (stored.index, stored.decode().unwrap()))
        .collect()
}

/// Checks that a forwarded call left an allowed decision and an outcome
/// pointing to it; returns the outcome.
fn forwarded(bed: &Bed, request_id: &str, method: &str, caller: &str) -> ExchangeRecord {
    let records = records(bed, request_id);
    let phases: Vec<Phase> = records.iter().map(|(_, r)| r.phase()).collect();
    assert_eq!(phases, [Phase::Decision, Phase::Outcome], "{method}");
    let (decision_index, decision) = &records[0];
    let (_, outcome) = &records[1];
    assert!(decision.allowed, "{method}");
    assert_eq!(decision.method, method);
    assert_eq!(decision.caller, caller);
    assert_eq!(decision.grpc_status, 0, "a decision has no status yet");
    assert!(decision.error_kind.is_empty());
    assert_eq!(outcome.decision_index, *decision_index);
    assert_eq!(outcome.method, method);
    assert!(outcome.received_us <= outcome.forwarded_us, "{outcome:?}");
    assert!(outcome.forwarded_us <= outcome.first_byte_us, "{outcome:?}");
    assert!(outcome.first_byte_us <= outcome.completed_us, "{outcome:?}");
    outcome.clone()
}

/// The outcome of a call its client abandoned. The gateway learns of the
/// reset on its own time and nothing announces the record: poll for it,
/// for at most 5 s.
async fn abandoned_outcome(bed: &Bed, request_id: &str) -> ExchangeRecord {
    let step = std::time::Duration::from_millis(5);
    for _ in 0..1000 {
        if let Some((_, record)) = records(bed, request_id).into_iter().nth(1) {
            return record;
        }
        tokio::time::sleep(step).await;
    }
    panic!("the abandoned call {request_id} has no outcome record");
}

/// A request with its `bridge-request-id`, to find its records.
fn identified<T>(message: T, request_id: &str) -> tonic::Request<T> {
    with_header(
        tonic::Request::new(message),
        "bridge-request-id",
        request_id,
    )
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn streaming_calls_are_recorded_with_their_sizes_and_status() {
    let bed = Bed::start().await;

    // Server streaming: 200 events back for one request.
    let id = request_id();
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let mut events = registry
        .watch_life_events(identified(
            WatchLifeEventsRequest {
                after_sequence: 0,
                max_events: 200,
            },
            &id,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(support::count_to_end(&mut events).await, 200);
    let outcome = forwarded(
        &bed,
        &id,
        "/govbridge.civilregistry.v1.CivilRegistry/WatchLifeEvents",
        "SN/COM/CBAO/kyc",
    );
    assert_eq!(outcome.grpc_status, 0);
    assert!(outcome.response_bytes > 200 * 5, "{outcome:?}");
    assert!(outcome.request_bytes > 0 && outcome.request_bytes < 64);
    assert_eq!(outcome.response_sha256.len(), 32);

    // Client streaming: 50 lines up, one receipt back.
    let id = request_id();
    let lines: Vec<WithholdingLine> = bed
        .data
        .citizens
        .iter()
        .filter(|c| c.is_alive() && c.age() >= 18)
        .take(50)
        .enumerate()
        .map(|(index, employee)| WithholdingLine {
            line_id: format!("L{index}"),
            payer_ninea: bed.data.companies[0].ninea.to_string(),
            subject_nin: employee.nin.to_string(),
            period: "2025-06".to_owned(),
            gross_amount_xof: 450_000,
            tax_withheld_xof: 36_000,
        })
        .collect();
    let mut tax = TaxAuthorityClient::new(bed.client("sonatel-payroll").await);
    tax.submit_withholdings(identified(tokio_stream::iter(lines), &id))
        .await
        .unwrap();
    let outcome = forwarded(
        &bed,
        &id,
        "/govbridge.tax.v1.TaxAuthority/SubmitWithholdings",
        "SN/COM/SONATEL/payroll",
    );
    assert_eq!(outcome.grpc_status, 0);
    assert!(outcome.request_bytes > 50 * 40, "{outcome:?}");
    assert!(outcome.response_bytes > 0);

    // Bidirectional: 20 lines, 20 answers.
    let id = request_id();
    let lines: Vec<VerifyAccountHoldersRequest> = bed
        .data
        .accounts
        .iter()
        .filter(|account| account.bank == Bank::Cbao && account.is_open())
        .take(20)
        .enumerate()
        .map(|(index, account)| VerifyAccountHoldersRequest {
            line_id: format!("P{index}"),
            iban: account.iban.to_string(),
            nin: account.holder.to_string(),
        })
        .collect();
    let mut bank = AccountVerificationClient::new(bed.client("treasury").await);
    let mut answers = bank
        .verify_account_holders(identified(tokio_stream::iter(lines), &id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(support::count_to_end(&mut answers).await, 20);
    let outcome = forwarded(
        &bed,
        &id,
        "/govbridge.bank.v1.AccountVerification/VerifyAccountHolders",
        "SN/GOV/DGCPT/treasury",
    );
    assert_eq!(outcome.grpc_status, 0);
    assert!(outcome.request_bytes > 0 && outcome.response_bytes > 0);
    bed.stop().await;
}

#[tokio::test]
async fn an_allowed_call_that_cannot_be_forwarded_is_closed_by_its_outcome() {
    let bed = Bed::builder()
        .without_agencies()
        .dead_provider(support::probe::SERVICE)
        .start()
        .await;
    let id = request_id();
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let status = registry
        .watch_life_events(identified(
            WatchLifeEventsRequest {
                after_sequence: 0,
                max_events: 1,
            },
            &id,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let records = records(&bed, &id);
    assert_eq!(records.len(), 2);
    let (decision_index, decision) = &records[0];
    let (outcome_index, outcome) = &records[1];
    assert_eq!(decision.phase(), Phase::Decision);
    assert!(decision.allowed);
    assert_eq!(outcome.phase(), Phase::Outcome);
    assert_eq!(outcome.decision_index, *decision_index);
    assert_eq!(outcome.error_kind, "upstream-unavailable");
    assert_eq!(outcome.grpc_status, Code::Unavailable as i32);
    // The refusal names the record that closed the call.
    let index: u64 = status
        .metadata()
        .get("bridge-audit-index")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(index, *outcome_index);
    bed.stop().await;
}

#[tokio::test]
async fn a_call_its_client_abandons_is_closed_as_cancelled() {
    let bed = Bed::start().await;
    let account = bed
        .data
        .accounts
        .iter()
        .find(|account| account.bank == Bank::Cbao && account.is_open())
        .unwrap();
    let line = VerifyAccountHoldersRequest {
        line_id: "P0".to_owned(),
        iban: account.iban.to_string(),
        nin: account.holder.to_string(),
    };
    let id = request_id();
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender.send(line).await.unwrap();
    let mut bank = AccountVerificationClient::new(bed.client("treasury").await);
    let mut answers = bank
        .verify_account_holders(identified(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
            &id,
        ))
        .await
        .unwrap()
        .into_inner();
    answers.message().await.unwrap().unwrap();
    // Mid-conversation, the client goes: its stream is reset.
    drop(answers);
    drop(sender);

    let outcome = abandoned_outcome(&bed, &id).await;
    assert_eq!(outcome.phase(), Phase::Outcome);
    assert_eq!(outcome.grpc_status, Code::Cancelled as i32);
    assert_eq!(outcome.error_kind, "cancelled");
    assert!(outcome.request_bytes > 0 && outcome.response_bytes > 0);
    bed.stop().await;
}

#[tokio::test]
async fn a_call_abandoned_before_its_backend_answers_is_closed_as_cancelled() {
    let bed = Bed::builder()
        .without_agencies()
        .silent_provider(support::probe::SERVICE)
        .start()
        .await;
    let id = request_id();
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let mut call = Box::pin(registry.watch_life_events(identified(
        WatchLifeEventsRequest {
            after_sequence: 0,
            max_events: 1,
        },
        &id,
    )));
    // Drive the call until its decision is in the log (the backend never
    // answers), then abandon it while the gateway waits for the backend:
    // the client resets the stream.
    while records(&bed, &id).is_empty() {
        tokio::select! {
            result = &mut call => panic!("the silent backend answered: {result:?}"),
            written = bed.exchange_log().checkpoint() => { written.unwrap(); }
        }
    }
    drop(call);

    let outcome = abandoned_outcome(&bed, &id).await;
    assert_eq!(outcome.phase(), Phase::Outcome);
    assert_eq!(outcome.grpc_status, Code::Cancelled as i32);
    assert_eq!(outcome.first_byte_us, 0, "no byte came back");
    bed.stop().await;
}
