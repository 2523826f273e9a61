//! End-to-end tests of [`super::service`]: each agency's full stack (path
//! note, gateway guard, tonic server with its size limits) served by hyper
//! over an in-memory HTTP/2 connection, called with the generated clients.
//!
//! No TLS here: the listener's job of inserting `PeerInfo` is played by a
//! `map_request`. TLS, the gateway and the real listener are covered by the
//! crate's integration tests.

use std::sync::{Arc, OnceLock};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tower::ServiceExt as _;

use super::dataset::DEFAULT_SEED;
use super::{Agency, Bank, Dataset, service};
use gateway::identity::MemberId;
use gateway::net::PeerInfo;
use gateway::proto::bank::v1 as bank_pb;
use gateway::proto::civilregistry::v1 as civil_pb;
use gateway::proto::tax::v1 as tax_pb;

const GATEWAY: &str = "SN/GOV/SENUM/gateway";

fn data() -> Arc<Dataset> {
    static DATA: OnceLock<Arc<Dataset>> = OnceLock::new();
    Arc::clone(DATA.get_or_init(|| Arc::new(Dataset::generate(DEFAULT_SEED))))
}

/// A client channel to `agency` whose TLS peer appears as `peer`; every
/// request carries `bridge-client: SN/COM/CBAO/kyc`.
async fn connect(
    agency: Agency,
    peer: &str,
) -> impl tonic::client::GrpcService<
    tonic::body::Body,
    ResponseBody = hyper::body::Incoming,
    Error = hyper::Error,
    Future = impl Send,
> + Clone {
    let peer = PeerInfo {
        remote_addr: ([127, 0, 0, 1], 50_000).into(),
        member: Ok(MemberId::parse(peer).unwrap()),
        key_exchange: None,
        certificate_not_after: None,
        control: Default::default(),
    };
    let agency_service = service(agency, data(), MemberId::parse(GATEWAY).unwrap(), None)
        .map_request(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer.clone());
            request
        });
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    tokio::spawn(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(
            TokioIo::new(server_io),
            TowerToHyperService::new(agency_service),
        ),
    );
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io))
            .await
            .unwrap();
    tokio::spawn(connection);
    tower::service_fn(move |mut request: http::Request<tonic::body::Body>| {
        let mut sender = sender.clone();
        *request.uri_mut() = format!("http://agency{}", request.uri().path())
            .parse()
            .unwrap();
        async move { sender.send_request(request).await }
    })
}

fn with_client<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("bridge-client", "SN/COM/CBAO/kyc".parse().unwrap());
    request
}

#[tokio::test]
async fn civil_registry_answers_the_gateway_only() {
    let model = &data().citizens[0];
    let ask = || civil_pb::GetPersonRequest {
        nin: model.nin.to_string(),
    };

    let channel = connect(Agency::CivilRegistry, GATEWAY).await;
    let mut client = civil_pb::civil_registry_client::CivilRegistryClient::new(channel);
    let person = client
        .get_person(with_client(ask()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(person.person.unwrap().last_name, model.last_name);

    let status = client
        .get_person(tonic::Request::new(ask()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let malformed = civil_pb::GetPersonRequest {
        nin: "12".to_owned(),
    };
    let status = client.get_person(with_client(malformed)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("nin"), "{}", status.message());

    let channel = connect(Agency::CivilRegistry, "SN/COM/CBAO/kyc").await;
    let mut intruder = civil_pb::civil_registry_client::CivilRegistryClient::new(channel);
    let status = intruder.get_person(with_client(ask())).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains(GATEWAY));
}

#[tokio::test]
async fn life_events_stream_and_large_messages() {
    let channel = connect(Agency::CivilRegistry, GATEWAY).await;
    let mut client = civil_pb::civil_registry_client::CivilRegistryClient::new(channel);
    let request = civil_pb::WatchLifeEventsRequest {
        after_sequence: 0,
        max_events: 0,
    };
    let mut events = client
        .watch_life_events(with_client(request))
        .await
        .unwrap()
        .into_inner();
    let mut count = 0_u64;
    while let Some(event) = events.message().await.unwrap() {
        count += 1;
        assert_eq!(event.sequence, count);
    }
    assert_eq!(count as usize, data().life_events.len());

    // A 4 MiB field passes the 16 MiB limits both ways and simply does not
    // match.
    let model = &data().citizens[0];
    let huge = civil_pb::VerifyIdentityRequest {
        nin: model.nin.to_string(),
        first_names: "A".repeat(4 << 20),
        last_name: model.last_name.to_owned(),
        date_of_birth: model.date_of_birth.to_string(),
    };
    let mut client = client.max_encoding_message_size(16 << 20);
    let answer = client
        .verify_identity(with_client(huge))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.result(), civil_pb::VerificationResult::NoMatch);
}

#[tokio::test]
async fn withholdings_upload_gets_one_receipt() {
    let data = data();
    let line = |i: usize| tax_pb::WithholdingLine {
        line_id: format!("L{i}"),
        payer_ninea: data.companies[0].ninea.to_string(),
        subject_nin: data.citizens[i % 4].nin.to_string(),
        period: "2025-07".to_owned(),
        gross_amount_xof: 400_000,
        tax_withheld_xof: 40_000,
    };
    let lines: Vec<_> = (0..1_000).map(line).collect();
    let channel = connect(Agency::Tax, GATEWAY).await;
    let mut client = tax_pb::tax_authority_client::TaxAuthorityClient::new(channel);
    let receipt = client
        .submit_withholdings(with_client(tokio_stream::iter(lines)))
        .await
        .unwrap()
        .into_inner();
    // citizens[1] is deceased: a quarter of the lines.
    assert_eq!(
        (receipt.lines_received, receipt.lines_accepted),
        (1_000, 750)
    );
    assert_eq!(receipt.total_withheld_xof, 750 * 40_000);
    assert!(
        receipt
            .rejections
            .iter()
            .all(|r| r.reason() == tax_pb::RejectionReason::SubjectDeceased)
    );
}

#[tokio::test]
async fn bank_checks_a_batch_line_by_line() {
    let data = data();
    let own = &data.accounts[0];
    let lines = vec![
        bank_pb::VerifyAccountHoldersRequest {
            line_id: "1".to_owned(),
            iban: own.iban.to_string(),
            nin: own.holder.to_string(),
        },
        bank_pb::VerifyAccountHoldersRequest {
            line_id: "2".to_owned(),
            iban: "SN08".to_owned(),
            nin: own.holder.to_string(),
        },
        bank_pb::VerifyAccountHoldersRequest {
            line_id: "3".to_owned(),
            iban: data.accounts[1].iban.to_string(),
            nin: own.holder.to_string(),
        },
    ];
    let channel = connect(Agency::Bank(Bank::Cbao), GATEWAY).await;
    let mut client = bank_pb::account_verification_client::AccountVerificationClient::new(channel);
    let answers: Vec<_> = client
        .verify_account_holders(with_client(tokio_stream::iter(lines)))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let answers: Vec<_> = answers
        .into_iter()
        .map(|a| {
            let a = a.unwrap();
            (a.line_id.clone(), a.result(), a.rejection.map(|r| r.field))
        })
        .collect();
    use bank_pb::AccountVerificationResult as Outcome;
    assert_eq!(
        answers,
        [
            ("1".to_owned(), Outcome::Match, None),
            (
                "2".to_owned(),
                Outcome::Unspecified,
                Some("iban".to_owned())
            ),
            ("3".to_owned(), Outcome::AccountUnknown, None),
        ]
    );
}
