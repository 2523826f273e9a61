//! The gateway's own services: directory metaservices, health and
//! reflection, each showing the caller its own view of the exchange.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use govbridge::proto::directory::v1::directory_client::DirectoryClient;
use govbridge::proto::directory::v1::{
    AllowedMethodsRequest, GetServiceDescriptorRequest, ListMembersRequest, ListServicesRequest,
};
use prost::Message;
use support::{Bed, H2Client, health, reflect};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn dev_bed() -> Bed {
    Bed::builder().dev_policies().start().await
}

async fn allowed(client: H2Client) -> BTreeSet<(String, String, Vec<String>)> {
    let response = DirectoryClient::new(client)
        .allowed_methods(AllowedMethodsRequest {})
        .await
        .unwrap()
        .into_inner();
    response
        .methods
        .into_iter()
        .map(|method| (method.method, method.provider, method.purposes))
        .collect()
}

#[tokio::test]
async fn allowed_methods_differ_as_the_policies_say() {
    let bed = dev_bed().await;
    let bank = allowed(bed.client("cbao-kyc").await).await;
    let treasury = allowed(bed.client("treasury").await).await;
    let verify = (
        "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity".to_owned(),
        "SN/GOV/ANEC/civil-registry".to_owned(),
        vec!["AML".to_owned(), "KYC".to_owned()],
    );
    assert!(bank.contains(&verify), "{bank:#?}");
    assert!(
        !bank
            .iter()
            .any(|(method, ..)| method.ends_with("/GetPerson"))
    );
    assert!(
        !bank
            .iter()
            .any(|(method, ..)| method.contains("AccountVerification"))
    );
    assert!(treasury.contains(&(
        "/govbridge.bank.v1.AccountVerification/VerifyAccountHolders".to_owned(),
        "SN/COM/ECOBANK/accounts".to_owned(),
        vec!["BENEFIT-PAYMENT".to_owned()],
    )));
    assert_ne!(bank, treasury);
    bed.stop().await;
}

#[tokio::test]
async fn the_directory_lists_members_and_services_without_addresses() {
    let bed = dev_bed().await;
    let mut directory = DirectoryClient::new(bed.client("cbao-kyc").await);
    let members = directory
        .list_members(ListMembersRequest {})
        .await
        .unwrap()
        .into_inner();
    let anec = members
        .members
        .iter()
        .find(|member| member.id == "SN/GOV/ANEC/civil-registry")
        .unwrap();
    assert!(anec.provider);
    assert_eq!(anec.name, "SN/GOV/ANEC/civil-registry");

    let services = DirectoryClient::new(bed.client("treasury").await)
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    let banks = services
        .services
        .iter()
        .find(|service| service.name == "govbridge.bank.v1.AccountVerification")
        .unwrap();
    assert_eq!(
        banks.providers,
        ["SN/COM/CBAO/accounts", "SN/COM/ECOBANK/accounts"]
    );
    assert_eq!(
        banks.methods,
        ["VerifyAccountHolder", "VerifyAccountHolders"]
    );
    assert!(
        !format!("{services:?}").contains("127.0.0.1"),
        "an endpoint address leaked"
    );

    // Descriptors, like reflection, only of what the caller may call.
    let hidden = directory
        .get_service_descriptor(GetServiceDescriptorRequest {
            service: "govbridge.tax.v1.TaxAuthority".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let set = DirectoryClient::new(bed.client("treasury").await)
        .get_service_descriptor(GetServiceDescriptorRequest {
            service: "govbridge.tax.v1.TaxAuthority".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let set = prost_types::FileDescriptorSet::decode(set.file_descriptor_set.as_slice()).unwrap();
    assert!(
        set.file
            .iter()
            .any(|file| file.service.iter().any(|s| s.name() == "TaxAuthority"))
    );

    let missing = directory
        .get_service_descriptor(GetServiceDescriptorRequest {
            service: "govbridge.land.v1.Cadastre".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    bed.stop().await;
}

fn listed(answer: &MessageResponse) -> BTreeSet<String> {
    match answer {
        MessageResponse::ListServicesResponse(list) => {
            list.service.iter().map(|s| s.name.clone()).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test]
async fn reflection_shows_each_caller_only_what_it_may_call() {
    let bed = dev_bed().await;
    let answers = reflect(
        bed.client("cbao-kyc").await,
        vec![
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol(
                "govbridge.civilregistry.v1.CivilRegistry".to_owned(),
            ),
            MessageRequest::FileContainingSymbol(
                "govbridge.bank.v1.AccountVerification".to_owned(),
            ),
        ],
    )
    .await;
    let bank_view = listed(&answers[0]);
    assert!(bank_view.contains("govbridge.civilregistry.v1.CivilRegistry"));
    assert!(bank_view.contains("govbridge.business.v1.BusinessRegistry"));
    assert!(bank_view.contains("grpc.health.v1.Health"));
    assert!(bank_view.contains("grpc.reflection.v1.ServerReflection"));
    assert!(!bank_view.contains("govbridge.bank.v1.AccountVerification"));
    assert!(!bank_view.contains("govbridge.tax.v1.TaxAuthority"));
    match &answers[1] {
        MessageResponse::FileDescriptorResponse(files) => {
            let names: Vec<String> = files
                .file_descriptor_proto
                .iter()
                .map(|bytes| {
                    prost_types::FileDescriptorProto::decode(bytes.as_slice())
                        .unwrap()
                        .name()
                        .to_owned()
                })
                .collect();
            assert!(
                names.contains(&"govbridge/civilregistry/v1/civil_registry.proto".to_owned()),
                "{names:?}"
            );
            // Served as registered: the custom options survive, so a client
            // sees which field names the data subject.
            let mut set = Vec::new();
            for file in &files.file_descriptor_proto {
                prost::encoding::bytes::encode(1, file, &mut set);
            }
            let subjects = govbridge::catalog::subject::SubjectFields::from_descriptors(&set)
                .unwrap_or_else(|error| panic!("{error}"));
            assert!(
                subjects
                    .field("/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity")
                    .is_some(),
                "the data_subject option was lost"
            );
        }
        other => panic!("{other:?}"),
    }
    match &answers[2] {
        MessageResponse::ErrorResponse(error) => {
            assert_eq!(error.error_code, Code::NotFound as i32)
        }
        other => panic!("a hidden service was described: {other:?}"),
    }

    let treasury_view = listed(
        &reflect(
            bed.client("treasury").await,
            vec![MessageRequest::ListServices(String::new())],
        )
        .await[0],
    );
    assert!(treasury_view.contains("govbridge.bank.v1.AccountVerification"));
    assert_ne!(bank_view, treasury_view);
    bed.stop().await;
}

#[tokio::test]
async fn v1alpha_reflection_answers_too() {
    use tonic_reflection::pb::v1alpha;
    let bed = dev_bed().await;
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = v1alpha::server_reflection_client::ServerReflectionClient::new(
        bed.client("cbao-kyc").await,
    )
    .server_reflection_info(tokio_stream::iter([request]))
    .await
    .unwrap()
    .into_inner();
    let answer = stream.message().await.unwrap().unwrap();
    match answer.message_response.unwrap() {
        v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
            assert!(
                list.service
                    .iter()
                    .any(|s| s.name == "govbridge.civilregistry.v1.CivilRegistry")
            );
        }
        other => panic!("{other:?}"),
    }
    bed.stop().await;
}

/// Like reflection, the directory and health answer each caller only about
/// what it may call: a bank does not learn who the tax authority's
/// partners are, nor which services it could probe.
#[tokio::test]
async fn the_directory_and_health_show_each_caller_only_what_it_may_call() {
    let bed = dev_bed().await;
    let bank = bed.client("cbao-kyc").await;
    let mut directory = DirectoryClient::new(bank.clone());
    let members = directory
        .list_members(ListMembersRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: BTreeSet<&str> = members.members.iter().map(|m| m.id.as_str()).collect();
    assert!(ids.contains("SN/GOV/ANEC/civil-registry"), "{ids:?}");
    assert!(ids.contains("SN/COM/CBAO/kyc"), "itself: {ids:?}");
    for hidden in [
        "SN/GOV/DGCPT/treasury",
        "SN/COM/SONATEL/payroll",
        "SN/GOV/DGID/tax",
    ] {
        assert!(!ids.contains(hidden), "{hidden} listed to a bank: {ids:?}");
    }

    let services = directory
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: BTreeSet<&str> = services.services.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains("govbridge.civilregistry.v1.CivilRegistry"),
        "{names:?}"
    );
    assert!(
        !names.contains("govbridge.tax.v1.TaxAuthority"),
        "{names:?}"
    );
    assert!(
        !names.contains("govbridge.bank.v1.AccountVerification"),
        "{names:?}"
    );

    assert_eq!(
        health(bank.clone(), "govbridge.civilregistry.v1.CivilRegistry")
            .await
            .unwrap(),
        ServingStatus::Serving
    );
    let hidden = health(bank.clone(), "govbridge.tax.v1.TaxAuthority")
        .await
        .unwrap_err();
    let unpublished = health(bank, "govbridge.nothing.v1.Nothing")
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(
        hidden
            .message()
            .replace("TaxAuthority", "X")
            .replace("tax", "x"),
        unpublished
            .message()
            .replace("Nothing", "X")
            .replace("nothing", "x"),
        "a hidden service must read like an unpublished one"
    );
    // The treasury may call the tax authority: it sees it.
    let treasury = bed.client("treasury").await;
    assert_eq!(
        health(treasury, "govbridge.tax.v1.TaxAuthority")
            .await
            .unwrap(),
        ServingStatus::Serving
    );
    bed.stop().await;
}

#[tokio::test]
async fn health_reports_the_gateway_and_each_service() {
    // The civil registry served by a probe; the tax authority by a
    // provider that refuses connections.
    let probe = support::probe::Probe::new(std::time::Duration::ZERO, 0);
    let bed = Bed::builder()
        .without_agencies()
        .probe(support::probe::SERVICE, probe.server())
        .dead_provider("govbridge.tax.v1.TaxAuthority")
        .start()
        .await;
    let client = bed.client("cbao-kyc").await;
    assert_eq!(
        health(client.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        health(client.clone(), "govbridge.civilregistry.v1.CivilRegistry")
            .await
            .unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        health(client.clone(), "govbridge.tax.v1.TaxAuthority")
            .await
            .unwrap(),
        ServingStatus::NotServing
    );
    assert_eq!(
        health(client, "govbridge.nothing.v1.Nothing")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    bed.stop().await;
}
