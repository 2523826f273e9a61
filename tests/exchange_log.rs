//! The exchange log through the gateway: what an allowed and a refused call
//! leave in it, the proofs a member gets and checks, who may read which
//! record, the citizens' Data Tracker, and calls refused while the log
//! cannot write.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use aws_lc_rs::digest::{SHA256, digest};
use bytes::Bytes;
use govbridge::exchange_log::merkle::{self, Hash};
use govbridge::exchange_log::note;
use govbridge::exchange_log::{ExchangeRecord, Phase, StoreFault};
use govbridge::proto::audit::v1::data_tracker_client::DataTrackerClient;
use govbridge::proto::audit::v1::exchange_log_client::ExchangeLogClient;
use govbridge::proto::audit::v1::get_record_request::Key;
use govbridge::proto::audit::v1::{
    Access, Checkpoint, GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest,
    GetRecordRequest, GetRecordsRequest, ListAccessesRequest, RecordProof,
};
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::civilregistry::v1::{
    GetPersonRequest, VerificationResult, VerifyIdentityResponse,
};
use govbridge::proto::directory::v1::GetServiceDescriptorRequest;
use govbridge::proto::directory::v1::directory_client::DirectoryClient;
use govbridge::proto::tax::v1::GetDeclaredIncomeRequest;
use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use prost::Message;
use support::probe::Probe;
use support::{Bed, CBAO_KYC, H2Client, bridge_error, declared, dev_bed, verify_identity_of};
use tonic::Code;
use tower::{Service, ServiceExt};

const ANEC: &str = "SN/GOV/ANEC/civil-registry";
const DGID: &str = "SN/GOV/DGID/tax";
const MYGOV: &str = "SN/GOV/MYGOV/app";
const VERIFY_IDENTITY: &str = "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity";
const GET_PERSON: &str = "/govbridge.civilregistry.v1.CivilRegistry/GetPerson";

/// A message as on the wire: uncompressed flag, length, bytes.
fn framed(message: &impl Message) -> Vec<u8> {
    let payload = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    digest(&SHA256, bytes).as_ref().to_vec()
}

/// One unary call with its exact bytes both ways, headers and trailers
/// apart (a generated client merges them).
struct RawExchange {
    request: Vec<u8>,
    headers: HeaderMap,
    response: Bytes,
    trailers: HeaderMap,
}

async fn raw_unary(
    client: &mut H2Client,
    path: &str,
    message: &impl Message,
    purpose: &str,
) -> RawExchange {
    let frame = framed(message);
    let request = http::Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("bridge-purpose", purpose)
        .header("bridge-reason", "dossier 2025-0042")
        .header("bridge-user-id", "agent-17")
        .body(tonic::body::Body::new(Full::new(Bytes::from(
            frame.clone(),
        ))))
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap();
    RawExchange {
        request: frame,
        headers: parts.headers,
        trailers: body.trailers().cloned().unwrap_or_default(),
        response: body.to_bytes(),
    }
}

fn audit_index(headers: &HeaderMap) -> u64 {
    headers["bridge-audit-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn metadata_text(status: &tonic::Status, name: &str) -> String {
    status
        .metadata()
        .get(name)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

fn hash(bytes: &[u8]) -> Hash {
    bytes.try_into().unwrap()
}

fn hashes(proof: &[Vec<u8>]) -> Vec<Hash> {
    proof.iter().map(|h| hash(h)).collect()
}

/// Signs a checkpoint of everything so far and returns it as a member
/// fetches it, after checking its signature with the log's public key.
async fn signed_checkpoint(bed: &Bed, log: &mut ExchangeLogClient<H2Client>) -> Checkpoint {
    bed.exchange_log().checkpoint().await.unwrap();
    let checkpoint = log
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    let opened = note::Checkpoint::open(&checkpoint.note, bed.exchange_log().verifier()).unwrap();
    assert_eq!(opened.size, checkpoint.tree_size);
    assert_eq!(opened.root.to_vec(), checkpoint.root_hash);
    assert_eq!(checkpoint.tree_size, bed.exchange_log().size());
    checkpoint
}

/// Checks a record's inclusion proof against its checkpoint and decodes it.
fn proven(proof: &RecordProof) -> ExchangeRecord {
    let checkpoint = proof.checkpoint.as_ref().unwrap();
    merkle::verify_inclusion(
        &merkle::leaf_hash(&proof.record),
        proof.index,
        checkpoint.tree_size,
        &hashes(&proof.inclusion_proof),
        &hash(&checkpoint.root_hash),
    )
    .unwrap();
    ExchangeRecord::decode(proof.record.as_slice()).unwrap()
}

/// The record of request `id` as its caller fetches it, its proof
/// checked.
async fn proven_by_request(log: &mut ExchangeLogClient<H2Client>, id: &str) -> ExchangeRecord {
    proven(&log.get_record(by_request(id)).await.unwrap().into_inner())
}

fn by_request(id: &str) -> GetRecordRequest {
    GetRecordRequest {
        key: Some(Key::RequestId(id.to_owned())),
    }
}

fn by_index(index: u64) -> GetRecordRequest {
    GetRecordRequest {
        key: Some(Key::Index(index)),
    }
}

#[tokio::test]
async fn an_allowed_call_is_recorded_and_provable() {
    let bed = dev_bed().await;
    let message = verify_identity_of(&bed, 0);
    let mut client = bed.client("cbao-kyc").await;
    let call = raw_unary(&mut client, VERIFY_IDENTITY, &message, "KYC").await;
    assert_eq!(call.trailers["grpc-status"], "0");
    let answer = VerifyIdentityResponse::decode(&call.response[5..]).unwrap();
    assert_eq!(answer.result(), VerificationResult::Match);
    // The decision before the call went out, the outcome before its status.
    let decision = audit_index(&call.headers);
    let outcome = audit_index(&call.trailers);
    assert!(outcome > decision);
    let request_id = call.headers["bridge-request-id"].to_str().unwrap();

    let mut log = ExchangeLogClient::new(client.clone());
    let checkpoint = signed_checkpoint(&bed, &mut log).await;
    let proof = log
        .get_record(by_request(request_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proof.index, outcome);
    assert_eq!(proof.checkpoint.as_ref(), Some(&checkpoint));
    let record = proven(&proof);
    assert_eq!(record.phase(), Phase::Outcome);
    assert_eq!(record.request_id, request_id);
    assert_eq!(record.node_id, "sandbox");
    assert_eq!(record.caller, CBAO_KYC);
    assert_eq!(record.provider, ANEC);
    assert_eq!(record.method, VERIFY_IDENTITY);
    assert_eq!(record.purpose, "KYC");
    assert_eq!(record.reason, "dossier 2025-0042");
    assert_eq!(record.user_id, "agent-17");
    assert_eq!(record.subject, message.nin);
    assert!(record.allowed);
    assert_eq!(record.policies, ["banks-verify-identity"]);
    assert_eq!(record.concealed_until_unix, 0);
    assert_eq!(record.grpc_status, 0);
    assert_eq!(record.error_kind, "");
    assert_eq!(record.decision_index, decision);
    assert_eq!(record.request_bytes, call.request.len() as u64);
    assert_eq!(record.request_sha256, sha256(&call.request));
    assert_eq!(record.response_bytes, call.response.len() as u64);
    assert_eq!(record.response_sha256, sha256(&call.response));
    assert!(record.received_us <= record.forwarded_us);
    assert!(record.forwarded_us <= record.first_byte_us);
    assert!(record.first_byte_us <= record.completed_us);

    // The decision, by index: written before the call was forwarded.
    let decided = proven(
        &log.get_record(by_index(decision))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(decided.phase(), Phase::Decision);
    assert_eq!(decided.request_id, request_id);
    assert!(decided.allowed);
    assert_eq!(decided.forwarded_us, 0);

    // Proofs by index are hashes only: any member may ask, and checks them
    // against the checkpoint.
    let mut other = ExchangeLogClient::new(bed.client("treasury").await);
    let inclusion = other
        .get_inclusion_proof(GetInclusionProofRequest {
            index: outcome,
            tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inclusion.tree_size, checkpoint.tree_size);
    merkle::verify_inclusion(
        &merkle::leaf_hash(&proof.record),
        outcome,
        inclusion.tree_size,
        &hashes(&inclusion.hashes),
        &hash(&checkpoint.root_hash),
    )
    .unwrap();

    // A later call, a later checkpoint: the old tree is a prefix of the new.
    CivilRegistryClient::new(client)
        .verify_identity(declared(verify_identity_of(&bed, 1), "KYC"))
        .await
        .unwrap();
    let later = signed_checkpoint(&bed, &mut log).await;
    assert!(later.tree_size > checkpoint.tree_size);
    let consistency = other
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: checkpoint.tree_size,
            new_size: later.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    merkle::verify_consistency(
        checkpoint.tree_size,
        &hash(&checkpoint.root_hash),
        later.tree_size,
        &hash(&later.root_hash),
        &hashes(&consistency.hashes),
    )
    .unwrap();

    // Nothing is proven beyond what is signed.
    let beyond = other
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: 1,
            new_size: later.tree_size + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(beyond.code(), Code::OutOfRange, "{beyond:?}");
    assert_eq!(bridge_error(&beyond).as_deref(), Some("beyond-checkpoint"));
    let backwards = other
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: 2,
            new_size: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(backwards.code(), Code::InvalidArgument, "{backwards:?}");
    let outside = other
        .get_inclusion_proof(GetInclusionProofRequest {
            index: 2,
            tree_size: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Code::InvalidArgument, "{outside:?}");
    bed.stop().await;
}

#[tokio::test]
async fn a_record_newer_than_the_checkpoint_waits_for_the_next_one() {
    let bed = dev_bed().await;
    let mut client = bed.client("cbao-kyc").await;
    let mut log = ExchangeLogClient::new(client.clone());
    let none = log
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::FailedPrecondition, "{none:?}");
    assert!(
        none.message().contains("no signed checkpoint yet"),
        "{none:?}"
    );

    raw_unary(
        &mut client,
        VERIFY_IDENTITY,
        &verify_identity_of(&bed, 0),
        "KYC",
    )
    .await;
    signed_checkpoint(&bed, &mut log).await;
    let call = raw_unary(
        &mut client,
        VERIFY_IDENTITY,
        &verify_identity_of(&bed, 1),
        "KYC",
    )
    .await;
    let request_id = call.headers["bridge-request-id"].to_str().unwrap();
    let waiting = log.get_record(by_request(request_id)).await.unwrap_err();
    assert_eq!(waiting.code(), Code::FailedPrecondition, "{waiting:?}");
    assert_eq!(bridge_error(&waiting).as_deref(), Some("not-checkpointed"));
    assert!(
        waiting
            .message()
            .contains("not yet in a signed checkpoint; checkpoints are signed every 10s"),
        "{waiting:?}"
    );
    signed_checkpoint(&bed, &mut log).await;
    log.get_record(by_request(request_id)).await.unwrap();
    bed.stop().await;
}

#[tokio::test]
async fn records_are_proven_many_at_a_time_and_each_one_missing_says_why() {
    let bed = dev_bed().await;
    let mut client = bed.client("cbao-kyc").await;
    let mut indexes = Vec::new();
    for n in 0..2 {
        let call = raw_unary(
            &mut client,
            VERIFY_IDENTITY,
            &verify_identity_of(&bed, n),
            "KYC",
        )
        .await;
        indexes.extend([audit_index(&call.headers), audit_index(&call.trailers)]);
    }
    // Another member's call: its records are not CBAO's to read.
    let mut treasury = bed.client("treasury").await;
    let theirs = raw_unary(
        &mut treasury,
        VERIFY_IDENTITY,
        &verify_identity_of(&bed, 2),
        "KYC",
    )
    .await;
    let theirs = theirs
        .headers
        .get("bridge-audit-index")
        .or_else(|| theirs.trailers.get("bridge-audit-index"))
        .unwrap()
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let mut log = ExchangeLogClient::new(client.clone());
    let checkpoint = signed_checkpoint(&bed, &mut log).await;
    // After the checkpoint: not covered yet.
    let call = raw_unary(
        &mut client,
        VERIFY_IDENTITY,
        &verify_identity_of(&bed, 3),
        "KYC",
    )
    .await;
    let later = audit_index(&call.headers);

    let asked = [
        indexes[1],
        indexes[2],
        theirs,
        later,
        later + 1000,
        indexes[0],
    ];
    let answer = log
        .get_records(GetRecordsRequest {
            indexes: asked.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.checkpoint.as_ref(), Some(&checkpoint));
    let answered: Vec<u64> = answer.records.iter().map(|record| record.index).collect();
    assert_eq!(answered, [indexes[1], indexes[2], indexes[0]]);
    for mut record in answer.records {
        // Each proven in the one checkpoint given with them.
        assert_eq!(record.checkpoint, None);
        record.checkpoint = Some(checkpoint.clone());
        assert_eq!(proven(&record).caller, CBAO_KYC);
    }
    let missing: Vec<(u64, &str)> = answer
        .missing
        .iter()
        .map(|missing| (missing.index, missing.kind.as_str()))
        .collect();
    assert_eq!(
        missing,
        [
            (theirs, "record-not-found"),
            (later, "not-checkpointed"),
            (later + 1000, "record-not-found"),
        ]
    );
    // As GetRecord says it, one by one.
    let one = log.get_record(by_index(theirs)).await.unwrap_err();
    assert_eq!(answer.missing[0].message, one.message());

    let too_many = log
        .get_records(GetRecordsRequest {
            indexes: vec![indexes[0]; 257],
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");
    assert!(too_many.message().contains("at most 256"), "{too_many:?}");
    bed.stop().await;
}

#[tokio::test]
async fn a_refused_call_is_recorded_never_forwarded_and_private_to_its_parties() {
    let probe = Probe::default();
    let bed = Bed::builder()
        .dev_policies()
        .probe(support::probe::SERVICE, probe.server())
        .start()
        .await;
    // The probe is the civil registry's default provider; the dev policies
    // grant its methods at ANEC only.
    let client = bed.client("cbao-kyc").await;
    let status = CivilRegistryClient::new(client.clone())
        .verify_identity(declared(verify_identity_of(&bed, 0), "KYC"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(probe.seen().is_empty(), "a denied call reached the backend");
    let request_id = metadata_text(&status, "bridge-request-id");
    let index: u64 = metadata_text(&status, "bridge-audit-index")
        .parse()
        .unwrap();

    let mut log = ExchangeLogClient::new(client);
    signed_checkpoint(&bed, &mut log).await;
    let proof = log
        .get_record(by_request(&request_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proof.index, index);
    let record = proven(&proof);
    assert_eq!(record.phase(), Phase::Decision);
    assert!(!record.allowed);
    assert!(record.policies.is_empty(), "denied by default");
    assert_eq!(record.error_kind, "policy-denied");
    assert_eq!(record.grpc_status, Code::PermissionDenied as i32);
    assert_eq!(record.caller, CBAO_KYC);
    assert_eq!(record.provider, support::PROBE);
    assert_eq!(record.forwarded_us, 0);

    // Another member learns nothing, not even that the record exists: the
    // same answer as for a record that does not.
    let mut other = ExchangeLogClient::new(bed.client("treasury").await);
    for request in [by_request(&request_id), by_index(index)] {
        let hidden = other.get_record(request).await.unwrap_err();
        assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");
        assert_eq!(bridge_error(&hidden).as_deref(), Some("record-not-found"));
    }
    let missing = other.get_record(by_index(index + 1000)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let hidden = other.get_record(by_index(index)).await.unwrap_err();
    assert_eq!(
        hidden.message().replace(&index.to_string(), "N"),
        missing.message().replace(&(index + 1000).to_string(), "N")
    );
    // Its hashes are no secret.
    other
        .get_inclusion_proof(GetInclusionProofRequest {
            index,
            tree_size: 0,
        })
        .await
        .unwrap();
    bed.stop().await;
}

async fn accesses(tracker: &mut DataTrackerClient<H2Client>, nin: &str, limit: u32) -> Vec<Access> {
    tracker
        .list_accesses(ListAccessesRequest {
            subject: nin.to_owned(),
            since_unix: 0,
            limit,
            before_index: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .accesses
}

#[tokio::test]
async fn the_data_tracker_shows_a_citizen_who_read_their_data() {
    let bed = dev_bed().await;
    bed.allow_data_tracker(&[MYGOV]);
    let first = bed.data.citizens[0].nin.to_string();
    let second = bed.data.citizens[1].nin.to_string();

    let mut bank = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    for citizen in [0, 1] {
        bank.verify_identity(declared(verify_identity_of(&bed, citizen), "KYC"))
            .await
            .unwrap();
    }
    let mut tax = CivilRegistryClient::new(bed.client("dgid-tax").await);
    let at_anec = |purpose: &str| {
        let mut request = declared(GetPersonRequest { nin: first.clone() }, purpose);
        request
            .metadata_mut()
            .insert("bridge-target", ANEC.parse().unwrap());
        request
    };
    tax.get_person(at_anec("TAX-ASSESSMENT")).await.unwrap();
    // A fraud investigation: lawful, and concealed from the citizen.
    let investigation = tax
        .get_person(at_anec("TAX-FRAUD-INVESTIGATION"))
        .await
        .unwrap();
    let concealed_id = support::request_id_of(investigation.metadata());

    let mut tracker = DataTrackerClient::new(bed.client("mygov").await);
    let seen = accesses(&mut tracker, &first, 0).await;
    let summary: Vec<(&str, &str, &str, &str)> = seen
        .iter()
        .map(|a| {
            (
                a.caller.as_str(),
                a.provider.as_str(),
                a.method.as_str(),
                a.purpose.as_str(),
            )
        })
        .collect();
    // Newest first; the investigation is not there.
    assert_eq!(
        summary,
        [
            (DGID, ANEC, GET_PERSON, "TAX-ASSESSMENT"),
            (CBAO_KYC, ANEC, VERIFY_IDENTITY, "KYC"),
        ]
    );
    for access in &seen {
        assert!(access.allowed);
        assert_eq!(access.grpc_status, 0);
        // The bed names each member after its id.
        assert_eq!(access.caller_name, access.caller);
        assert!(access.at_unix > 1_700_000_000);
    }
    assert!(seen[0].index > seen[1].index);
    assert_eq!(accesses(&mut tracker, &first, 1).await, seen[..1]);
    // Page by page: a full page says where the next begins, the last
    // says there is none.
    let page = |before_index| ListAccessesRequest {
        subject: first.clone(),
        since_unix: 0,
        limit: 1,
        before_index,
    };
    let one = tracker.list_accesses(page(0)).await.unwrap().into_inner();
    assert_eq!(one.accesses, seen[..1]);
    assert_ne!(one.next_before_index, 0);
    let two = tracker
        .list_accesses(page(one.next_before_index))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.accesses, seen[1..]);
    let three = tracker
        .list_accesses(page(two.next_before_index))
        .await
        .unwrap()
        .into_inner();
    assert!(
        three.accesses.is_empty(),
        "{seen:?} then {:?}",
        three.accesses
    );
    assert_eq!(three.next_before_index, 0);
    let other = accesses(&mut tracker, &second, 0).await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].caller, CBAO_KYC);
    let future = tracker
        .list_accesses(ListAccessesRequest {
            subject: first.clone(),
            since_unix: i64::MAX / 2,
            limit: 0,
            before_index: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(future.accesses.is_empty());

    // The concealed access is in the log all the same, with its date.
    let mut log = ExchangeLogClient::new(bed.client("dgid-tax").await);
    signed_checkpoint(&bed, &mut log).await;
    let record = proven_by_request(&mut log, &concealed_id).await;
    assert_eq!(record.subject, first);
    assert_eq!(
        record.policies,
        ["tax-fraud-investigation-reads-civil-records"]
    );
    let a_year = 365 * 86_400;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert!((record.concealed_until_unix - now - a_year).abs() < 120);

    let bad = tracker
        .list_accesses(ListAccessesRequest {
            subject: "12345".to_owned(),
            since_unix: 0,
            limit: 0,
            before_index: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(bridge_error(&bad).as_deref(), Some("bad-subject"));

    // Only the citizens' portal asks about anyone's data.
    for member in ["cbao-kyc", "dgid-tax"] {
        let refused = DataTrackerClient::new(bed.client(member).await)
            .list_accesses(ListAccessesRequest {
                subject: first.clone(),
                since_unix: 0,
                limit: 0,
                before_index: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{member}");
        assert_eq!(
            bridge_error(&refused).as_deref(),
            Some("not-a-data-tracker-client")
        );
        assert!(
            refused
                .message()
                .contains("exchange_log.data_tracker_clients"),
            "{refused:?}"
        );
    }
    bed.stop().await;
}

#[tokio::test]
async fn each_member_sees_the_log_services_it_may_use() {
    let bed = dev_bed().await;
    bed.allow_data_tracker(&[MYGOV]);
    let describe = |client: H2Client, service: &str| {
        let service = service.to_owned();
        async move {
            DirectoryClient::new(client)
                .get_service_descriptor(GetServiceDescriptorRequest { service })
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        }
    };
    let log = "govbridge.audit.v1.ExchangeLog";
    let tracker = "govbridge.audit.v1.DataTracker";
    assert_eq!(describe(bed.client("cbao-kyc").await, log).await, Ok(()));
    assert_eq!(
        describe(bed.client("cbao-kyc").await, tracker).await,
        Err(Code::NotFound)
    );
    assert_eq!(describe(bed.client("mygov").await, tracker).await, Ok(()));
    bed.stop().await;
}

#[tokio::test]
async fn calls_are_refused_while_the_log_cannot_write() {
    let bed = dev_bed().await;
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let mut health = HealthClient::new(bed.client("cbao-kyc").await);
    let mut status_of = async |service: &str| {
        health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    };
    let request = || declared(verify_identity_of(&bed, 0), "KYC");
    registry.verify_identity(request()).await.unwrap();
    for fault in [StoreFault::DiskFull, StoreFault::ReadOnly] {
        bed.exchange_log().simulate_fault(Some(fault));
        let status = registry.verify_identity(request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{fault:?}: {status:?}");
        assert_eq!(
            bridge_error(&status).as_deref(),
            Some("exchange-log-unavailable"),
            "{fault:?}"
        );
        assert!(!bed.exchange_log().is_healthy());
        // Health says so: the gateway and its published services are
        // not serving while every call would be refused.
        assert_eq!(status_of("").await, ServingStatus::NotServing);
        assert_eq!(
            status_of("govbridge.civilregistry.v1.CivilRegistry").await,
            ServingStatus::NotServing
        );
        bed.exchange_log().simulate_fault(None);
        // With no call to try it, the log finds out by itself that it can
        // write again (it probes every half second).
        let mut waited = std::time::Duration::ZERO;
        while !bed.exchange_log().is_healthy() {
            assert!(waited.as_secs() < 5, "the log never recovered by itself");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            waited += std::time::Duration::from_millis(20);
        }
        assert_eq!(status_of("").await, ServingStatus::Serving);
        registry.verify_identity(request()).await.unwrap();
    }
    bed.stop().await;
}

/// Request ids come from callers: one reused many times, by one member or
/// several, neither makes a lookup read every record carrying it nor hides
/// a member's own record of its call.
#[tokio::test]
async fn a_reused_request_id_is_bounded_and_hides_nothing() {
    let bed = dev_bed().await;
    let id = "0b5b7a4e-3f0e-4c8e-9a57-2f9f1c0d7e11";
    let call = |stem: &'static str| {
        let bed = &bed;
        async move {
            let request = support::with_header(
                declared(verify_identity_of(bed, 0), "KYC"),
                "bridge-request-id",
                id,
            );
            CivilRegistryClient::new(bed.client(stem).await)
                .verify_identity(request)
                .await
        }
    };
    call("cbao-kyc").await.unwrap();
    // Another member's calls, each leaving at least one record, with the
    // same id.
    for _ in 0..70 {
        let _ = call("treasury").await;
    }
    let store = govbridge::exchange_log::Store::open_read_only(bed.exchange_log().dir()).unwrap();
    assert_eq!(
        store.records_of_request(id).unwrap().len(),
        govbridge::exchange_log::store::MAX_RECORDS_OF_REQUEST
    );

    let mut log = ExchangeLogClient::new(bed.client("cbao-kyc").await);
    signed_checkpoint(&bed, &mut log).await;
    let proof = log.get_record(by_request(id)).await.unwrap().into_inner();
    let record = proven(&proof);
    assert_eq!(record.caller, CBAO_KYC);
    assert_eq!(record.phase(), Phase::Outcome);
}

const STREAM_DECLARED_INCOME: &str = "/govbridge.tax.v1.TaxAuthority/StreamDeclaredIncome";

/// Streams a declared-income question about each of `nins` as CBAO's
/// credit desk (the bed's default policy needs no consent for it), and
/// returns the call's request id and how it ended.
async fn ask_incomes(bed: &Bed, nins: &[String]) -> (String, Result<usize, tonic::Status>) {
    let requests: Vec<GetDeclaredIncomeRequest> = nins
        .iter()
        .map(|nin| GetDeclaredIncomeRequest {
            nin: nin.clone(),
            fiscal_year: 2023,
        })
        .collect();
    // Refused before any answer, the call ends trailers-only.
    let response = match TaxAuthorityClient::new(bed.client("cbao-credit").await)
        .stream_declared_income(declared(tokio_stream::iter(requests), "CREDIT-SCORING"))
        .await
    {
        Ok(response) => response,
        Err(status) => return (support::request_id_of(status.metadata()), Err(status)),
    };
    let request_id = support::request_id_of(response.metadata());
    let mut answers = response.into_inner();
    let mut answered = 0;
    loop {
        match answers.message().await {
            Ok(Some(_)) => answered += 1,
            Ok(None) => return (request_id, Ok(answered)),
            Err(status) => return (request_id, Err(status)),
        }
    }
}

/// A stream without consent may ask about several citizens, one per
/// message: the record keeps every one, and each one's Data Tracker shows
/// the call, not only the first one's.
#[tokio::test]
async fn every_citizen_a_stream_asks_about_sees_it_in_their_data_tracker() {
    let bed = Bed::builder().start().await;
    bed.allow_data_tracker(&[MYGOV]);
    let nin = |n: usize| bed.data.citizens[n].nin.to_string();
    let asked = [nin(0), nin(1), nin(0), nin(2), nin(1)];
    let (request_id, ended) = ask_incomes(&bed, &asked).await;
    assert_eq!(ended.unwrap(), asked.len());

    let mut log = ExchangeLogClient::new(bed.client("cbao-credit").await);
    signed_checkpoint(&bed, &mut log).await;
    let record = proven_by_request(&mut log, &request_id).await;
    assert_eq!(record.phase(), Phase::Outcome);
    assert_eq!(record.subject, nin(0));
    let mut others = vec![nin(1), nin(2)];
    others.sort();
    assert_eq!(record.more_subjects, others);
    assert!(!record.subject_unreadable);

    let mut tracker = DataTrackerClient::new(bed.client("mygov").await);
    for citizen in [0, 1, 2] {
        let seen = accesses(&mut tracker, &nin(citizen), 0).await;
        let methods: Vec<&str> = seen.iter().map(|a| a.method.as_str()).collect();
        assert_eq!(methods, [STREAM_DECLARED_INCOME], "citizen {citizen}");
        assert_eq!(seen[0].caller, "SN/COM/CBAO/credit");
    }
    assert!(accesses(&mut tracker, &nin(3), 0).await.is_empty());
    bed.stop().await;
}

/// A record keeps at most so many subjects: the stream ends, unrelayed,
/// at the message naming one more, and every subject that was relayed is
/// in the record.
#[tokio::test]
async fn a_stream_ends_at_the_message_naming_one_subject_too_many() {
    use govbridge::catalog::subject::MAX_SUBJECTS;
    let bed = Bed::builder().start().await;
    bed.allow_data_tracker(&[MYGOV]);
    let nins: Vec<String> = bed.data.citizens[..=MAX_SUBJECTS]
        .iter()
        .map(|citizen| citizen.nin.to_string())
        .collect();
    let (request_id, ended) = ask_incomes(&bed, &nins).await;
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(bridge_error(&status).as_deref(), Some("too-many-subjects"));
    assert!(status.message().contains("split the stream"), "{status:?}");

    let mut log = ExchangeLogClient::new(bed.client("cbao-credit").await);
    signed_checkpoint(&bed, &mut log).await;
    let record = proven_by_request(&mut log, &request_id).await;
    assert_eq!(record.error_kind, "too-many-subjects");
    assert_eq!(record.subject, nins[0]);
    assert_eq!(record.more_subjects.len(), MAX_SUBJECTS - 1);
    let mut tracker = DataTrackerClient::new(bed.client("mygov").await);
    assert_eq!(
        accesses(&mut tracker, &nins[MAX_SUBJECTS - 1], 0)
            .await
            .len(),
        1
    );
    // The message about this one was never relayed.
    assert!(
        accesses(&mut tracker, &nins[MAX_SUBJECTS], 0)
            .await
            .is_empty()
    );
    bed.stop().await;
}
