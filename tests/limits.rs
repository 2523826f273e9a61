//! Limits: a member's rate, its calls in flight and its message size, and
//! the gateway's own cap on calls in flight. A refused call gets
//! `RESOURCE_EXHAUSTED` with `bridge-error` and `grpc-retry-pushback-ms`,
//! and other members keep being served.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use govbridge::exchange_log::Store;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::civilregistry::v1::{GetPersonRequest, LifeEvent, WatchLifeEventsRequest};
use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
use govbridge::proto::tax::v1::{GetDeclaredIncomeRequest, WithholdingLine};
use support::probe::{self, Probe};
use support::{Bed, CBAO_KYC, H2Client, TREASURY, bridge_error, declared, with_header};
use tonic::Code;

/// A bed whose civil registry is `probe`, with `limits` appended to the
/// gateway's configuration.
async fn bed(probe: &Probe, limits: &str) -> Bed {
    Bed::builder()
        .without_agencies()
        .probe(probe::SERVICE, probe.server())
        .limits(limits)
        .start()
        .await
}

async fn registry(bed: &Bed, member: &str) -> CivilRegistryClient<H2Client> {
    CivilRegistryClient::new(bed.client(member).await)
}

async fn get_person(
    registry: &mut CivilRegistryClient<H2Client>,
    nin: &str,
) -> Result<(), tonic::Status> {
    registry
        .get_person(GetPersonRequest {
            nin: nin.to_owned(),
        })
        .await
        .map(drop)
}

/// The probe's endless stream (one event every 10 ms), its first event
/// read: the call is admitted and in flight until the stream is dropped.
async fn endless(registry: &mut CivilRegistryClient<H2Client>) -> tonic::Streaming<LifeEvent> {
    let mut stream = registry
        .watch_life_events(WatchLifeEventsRequest {
            after_sequence: 0,
            max_events: 0,
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    stream
}

/// The `bridge-error` of a `RESOURCE_EXHAUSTED` refusal, and its retry
/// pushback.
fn exhausted(status: &tonic::Status) -> (String, Option<Duration>) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let pushback = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .map(|value| Duration::from_millis(value.to_str().unwrap().parse().unwrap()));
    (bridge_error(status).unwrap(), pushback)
}

/// Calls until one succeeds: a slot freed by a dropped stream is released
/// once the gateway has seen the reset, a moment later.
async fn eventually_served(registry: &mut CivilRegistryClient<H2Client>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match get_person(registry, "1").await {
            Ok(()) => return,
            Err(status) => {
                let (kind, _) = exhausted(&status);
                assert!(Instant::now() < deadline, "still refused: {kind}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The exchange-log records of a call.
fn records(bed: &Bed, request_id: &str) -> Vec<govbridge::exchange_log::ExchangeRecord> {
    Store::open_read_only(bed.exchange_log().dir())
        .unwrap()
        .records_of_request(request_id)
        .unwrap()
        .into_iter()
        .map(|stored| stored.decode().unwrap())
        .collect()
}

#[tokio::test]
async fn a_flooding_member_is_refused_while_another_is_served() {
    let probe = Probe::default();
    let bed = bed(
        &probe,
        &format!("[limits.members.\"{CBAO_KYC}\"]\nrequests_per_second = 1\nburst = 5\n"),
    )
    .await;
    let flooder = registry(&bed, "cbao-kyc").await;
    let bystander = registry(&bed, "treasury").await;

    // 40 calls at once from one member, and 10 from another meanwhile.
    let started = Instant::now();
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let mut flooder = flooder.clone();
            let id = request_id();
            tokio::spawn(async move {
                let request = with_header(
                    tonic::Request::new(GetPersonRequest { nin: "1".into() }),
                    "bridge-request-id",
                    &id,
                );
                (id, flooder.get_person(request).await.map(drop))
            })
        })
        .collect();
    let served: Vec<_> = (0..10)
        .map(|_| {
            let mut bystander = bystander.clone();
            tokio::spawn(async move { get_person(&mut bystander, "2").await })
        })
        .collect();
    let mut admitted = 0;
    let mut refused = Vec::new();
    for call in flood {
        match call.await.unwrap() {
            (_, Ok(())) => admitted += 1,
            (id, Err(status)) => refused.push((id, status)),
        }
    }
    let elapsed = started.elapsed();
    assert!(!refused.is_empty(), "{admitted} admitted, none refused");
    for call in served {
        call.await
            .unwrap()
            .expect("the other member's calls are served");
    }

    // The burst, plus at most one token per second the flood lasted.
    let allowed = 5 + elapsed.as_secs() + 1;
    assert!(
        (5..=allowed).contains(&admitted),
        "{admitted} admitted in {elapsed:?}"
    );
    assert_eq!(refused.len() as u64, 40 - admitted);
    for (_, status) in &refused {
        let (kind, pushback) = exhausted(status);
        assert_eq!(kind, "rate-limited");
        let pushback = pushback.expect("a retry pushback");
        assert!(
            pushback > Duration::ZERO && pushback <= Duration::from_secs(1),
            "{pushback:?}"
        );
    }
    // Refusals for load cost the exchange log nothing; a served call has
    // its decision and outcome.
    assert!(records(&bed, &refused[0].0).is_empty());
    let metric =
        format!("govbridge_limit_refusals_total{{member=\"{CBAO_KYC}\",kind=\"rate-limited\"}}");
    assert_eq!(
        support::metric(bed.admin, &metric).await,
        refused.len() as f64
    );
    let metric =
        format!("govbridge_limit_refusals_total{{member=\"{TREASURY}\",kind=\"rate-limited\"}}");
    assert_eq!(support::metric(bed.admin, &metric).await, 0.0);
    bed.stop().await;
}

#[tokio::test]
async fn a_message_over_the_limit_never_reaches_the_backend() {
    let probe = Probe::default();
    let bed = bed(
        &probe,
        &format!("[limits.members.\"{CBAO_KYC}\"]\nmax_message_bytes = 1024\n"),
    )
    .await;
    let mut bank = registry(&bed, "cbao-kyc").await;
    get_person(&mut bank, &"1".repeat(900)).await.unwrap();

    let id = request_id();
    let request = with_header(
        tonic::Request::new(GetPersonRequest {
            nin: "1".repeat(4096),
        }),
        "bridge-request-id",
        &id,
    );
    let status = bank.get_person(request).await.unwrap_err();
    let (kind, pushback) = exhausted(&status);
    assert_eq!(kind, "message-too-large");
    assert_eq!(pushback, None, "the same message would be refused again");
    assert!(status.message().contains("1024"), "{status:?}");
    assert_eq!(probe.seen().len(), 1, "only the small message arrived");
    // Refused after its decision was logged: the outcome says why.
    let outcome = records(&bed, &id).pop().unwrap();
    assert_eq!(outcome.grpc_status, Code::ResourceExhausted as i32);
    assert_eq!(outcome.error_kind, "message-too-large");

    // The limit is this member's: another member's default is 16 MiB.
    get_person(&mut registry(&bed, "treasury").await, &"1".repeat(4096))
        .await
        .unwrap();
    // The member's next call, within its limit, is served.
    get_person(&mut bank, "1").await.unwrap();
    bed.stop().await;
}

/// The tax authority's bidirectional stream, one message at a time.
struct Feed(tokio::sync::mpsc::Receiver<GetDeclaredIncomeRequest>);

impl tokio_stream::Stream for Feed {
    type Item = GetDeclaredIncomeRequest;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<GetDeclaredIncomeRequest>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn a_stream_ends_at_its_first_message_over_the_limit() {
    let bed = Bed::builder()
        .limits("[limits]\nmax_message_bytes = 256\n")
        .start()
        .await;
    let nin = bed.data.citizens[0].nin.to_string();
    let (asking, requests) = tokio::sync::mpsc::channel(4);
    let ask = |nin: String| GetDeclaredIncomeRequest {
        nin,
        fiscal_year: 2023,
    };
    asking.send(ask(nin.clone())).await.unwrap();
    let mut answers = TaxAuthorityClient::new(bed.client("cbao-credit").await)
        .stream_declared_income(declared(Feed(requests), "CREDIT-SCORING"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().nin, nin);
    asking.send(ask(nin.clone())).await.unwrap();
    assert_eq!(answers.message().await.unwrap().unwrap().nin, nin);

    // The third message is too large: the call ends with the gateway's
    // status in the trailers.
    asking.send(ask("7".repeat(300))).await.unwrap();
    let status = answers.message().await.unwrap_err();
    assert_eq!(exhausted(&status).0, "message-too-large");
    bed.stop().await;
}

/// Refusing a member's message mid-stream ends that member's call, not the
/// provider's service: the backend did nothing wrong, so the stream the
/// gateway resets never counts towards ejecting it (else one member could
/// take a provider away from every other).
#[tokio::test]
async fn refusing_messages_mid_stream_never_ejects_the_provider() {
    let bed = Bed::builder()
        .limits("[limits.members.\"SN/COM/SONATEL/payroll\"]\nmax_message_bytes = 256\n")
        .start()
        .await;
    let employer = bed.data.companies[0].ninea.to_string();
    let employee = bed.data.citizens[0].nin.to_string();
    let line = |line_id: String| WithholdingLine {
        line_id,
        payer_ninea: employer.clone(),
        subject_nin: employee.clone(),
        period: "2025-06".to_owned(),
        gross_amount_xof: 450_000,
        tax_withheld_xof: 36_000,
    };
    let mut payroll = TaxAuthorityClient::new(bed.client("sonatel-payroll").await);
    // More refusals in a row than eject an endpoint (five by default); the
    // first line of each reaches the backend, the second is refused.
    for _ in 0..8 {
        let lines = [line("L1".to_owned()), line("L".repeat(300))];
        let status = payroll
            .submit_withholdings(tokio_stream::iter(lines))
            .await
            .unwrap_err();
        assert_eq!(exhausted(&status).0, "message-too-large");
    }
    let receipt = payroll
        .submit_withholdings(tokio_stream::iter([line("L1".to_owned())]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.lines_received, 1);
    bed.stop().await;
}

#[tokio::test]
async fn a_member_gets_only_its_calls_in_flight() {
    let probe = Probe::new(Duration::ZERO, 16);
    let bed = bed(
        &probe,
        &format!("[limits.members.\"{CBAO_KYC}\"]\nconcurrent_calls = 2\n"),
    )
    .await;
    let mut bank = registry(&bed, "cbao-kyc").await;
    let first = endless(&mut bank).await;
    let second = endless(&mut bank).await;

    let status = get_person(&mut bank, "1").await.unwrap_err();
    let (kind, pushback) = exhausted(&status);
    assert_eq!(kind, "too-many-calls");
    assert!(pushback.is_some());
    // Another member is not held back.
    get_person(&mut registry(&bed, "treasury").await, "2")
        .await
        .unwrap();

    // One stream ends: its place is free again.
    drop(first);
    eventually_served(&mut bank).await;
    drop(second);
    bed.stop().await;
}

#[tokio::test]
async fn the_gateway_sheds_calls_beyond_its_own_cap() {
    let probe = Probe::new(Duration::ZERO, 16);
    let bed = bed(&probe, "[limits]\ngateway_concurrent_calls = 2\n").await;
    let mut bank = registry(&bed, "cbao-kyc").await;
    let first = endless(&mut bank).await;
    let second = endless(&mut bank).await;

    // Whoever calls next is shed, at once and without an exchange-log
    // record.
    let mut treasury = registry(&bed, "treasury").await;
    let id = request_id();
    let request = with_header(
        tonic::Request::new(GetPersonRequest { nin: "2".into() }),
        "bridge-request-id",
        &id,
    );
    let status = treasury.get_person(request).await.unwrap_err();
    let (kind, pushback) = exhausted(&status);
    assert_eq!(kind, "gateway-overloaded");
    assert_eq!(pushback, Some(Duration::from_secs(1)));
    assert!(records(&bed, &id).is_empty());

    drop((first, second));
    eventually_served(&mut treasury).await;
    bed.stop().await;
}

#[tokio::test]
async fn calls_in_flight_still_count_after_a_reload() {
    let probe = Probe::new(Duration::ZERO, 16);
    let limits =
        |calls: u32| format!("[limits.members.\"{CBAO_KYC}\"]\nconcurrent_calls = {calls}\n");
    let bed = bed(&probe, &limits(2)).await;
    let mut bank = registry(&bed, "cbao-kyc").await;
    let streams = (endless(&mut bank).await, endless(&mut bank).await);

    // The same limits reloaded: the two streams admitted before still
    // count.
    let path = bed.dir().join("govbridge.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n")).unwrap();
    bed.reloader.reload().unwrap();
    let status = get_person(&mut bank, "1").await.unwrap_err();
    assert_eq!(exhausted(&status).0, "too-many-calls");

    // A higher cap takes effect on the next call.
    std::fs::write(&path, text.replace(&limits(2), &limits(3))).unwrap();
    bed.reloader.reload().unwrap();
    get_person(&mut bank, "1").await.unwrap();
    drop(streams);
    bed.stop().await;
}
