//! Two national instances federated on one machine: Senegal (the bed, its
//! dev PKI and agencies) and Azerbaijan (its own CA, gateway, policies, log
//! and business registry). A Senegalese bank's call to the Azerbaijani
//! registry is authorized and logged on both sides, each gateway with its
//! own policies; every refusal says which instance refused.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use govbridge::exchange_log::ExchangeRecord;
use govbridge::exchange_log::store::Store;
use govbridge::federation::Assertion;
use govbridge::identity::MemberId;
use govbridge::identity::tls::ClientTls;
use govbridge::launch::{Shutdown, ShutdownTrigger};
use govbridge::note::SigningKey;
use govbridge::partner::{self as federation, PartnerInstance};
use govbridge::proto::audit::v1::GetCheckpointRequest;
use govbridge::proto::audit::v1::exchange_log_client::ExchangeLogClient;
use govbridge::proto::azbusiness::v1::GetCompanyRequest as AzGetCompanyRequest;
use govbridge::proto::azbusiness::v1::company_registry_client::CompanyRegistryClient;
use govbridge::proto::aztax::v1::tax_service_client::TaxServiceClient;
use govbridge::proto::aztax::v1::{GetTaxpayerStatusRequest, Standing};
use govbridge::proto::business::v1::GetCompanyRequest;
use govbridge::proto::business::v1::business_registry_client::BusinessRegistryClient;
use support::{Bed, H2Client, bridge_error, raw_call, request_id_of};

const BUSINESS: &str = "govbridge.business.v1.BusinessRegistry";
/// Azerbaijan's company registry: no Senegalese provider publishes it, so
/// calls reach it by service.
const GET_COMPANY: &str = "/govbridge.azbusiness.v1.CompanyRegistry/GetCompany";
const AZ_REGISTRY: &str = "AZ/GOV/ASAN/business-registry";
const SN_GATEWAY: &str = "SN/GOV/GOVBRIDGE/gateway";
const CBAO: &str = "SN/COM/CBAO/kyc";
const TAX: &str = "govbridge.tax.v1.TaxAuthority";

fn member(id: &str) -> MemberId {
    MemberId::parse(id).unwrap()
}

/// Azerbaijan's instance ([`PartnerInstance`]): its own CA, gateway,
/// policies, log, registry, tax authority and echo backend.
struct Partner {
    instance: PartnerInstance,
    stop: ShutdownTrigger,
    _dir: tempfile::TempDir,
}

impl Partner {
    fn path(&self, name: &str) -> PathBuf {
        self.instance.path(name)
    }

    /// A company of Azerbaijan's registry: its VÖEN.
    fn company(&self) -> String {
        self.instance.companies().companies()[0].voen.to_string()
    }

    /// The records Azerbaijan's gateway logged for `request_id`.
    fn records(&self, request_id: &str) -> Vec<ExchangeRecord> {
        Store::open_read_only(&self.path("data"))
            .unwrap()
            .records_of_request(request_id)
            .unwrap()
            .into_iter()
            .map(|stored| stored.decode().unwrap())
            .collect()
    }

    /// Client TLS presenting `certificate` (of Senegal's CA) to this
    /// gateway.
    fn tls_for(&self, certificate: &Path, key: &Path) -> Arc<rustls::ClientConfig> {
        ClientTls::new(
            self.path("pki/ca.pem"),
            certificate.to_owned(),
            key.to_owned(),
        )
        .client_config()
        .unwrap()
    }
}

/// Both instances, federated: Senegal's gateway reaches Azerbaijan's
/// providers as further providers of its services (callers pick them with
/// `bridge-target`), and Azerbaijan trusts Senegal's gateway. Senegal's
/// policies allow everything but KYC abroad. The third value holds
/// Senegal's federation key (`SN-federation.key`).
async fn federated() -> (Partner, Bed, tempfile::TempDir) {
    federated_with(|bed, _| bed, false).await
}

/// [`federated`], the bed's builder changed by `tweak` (given a directory
/// that outlives the bed); with `receipts`, Senegal's gateway fetches and
/// keeps Azerbaijan's receipts (and so holds its log key).
async fn federated_with(
    tweak: impl FnOnce(support::BedBuilder, &Path) -> support::BedBuilder,
    receipts: bool,
) -> (Partner, Bed, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (stop, shutdown) = Shutdown::new();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let instance = PartnerInstance::start(dir.path(), loopback, loopback, support::SEED, &shutdown)
        .await
        .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let sn_key = keys.path().join("SN-federation.key");
    federation::write_federation_key(&sn_key, "SN").unwrap();
    let policies = keys.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("federation.cedar"),
        format!(
            "@id(\"everything-at-home\")\npermit (principal, action, resource);\n\n\
             // No KYC on foreign registries from here.\n\
             @id(\"no-kyc-abroad\")\nforbid (principal, action, resource == Provider::\"{AZ_REGISTRY}\")\n\
             when {{ context.purpose == \"KYC\" }};\n"
        ),
    )
    .unwrap();
    let bed = Bed::builder().policies(&policies);
    let bed = tweak(bed, keys.path())
        .config({
            let fragment = instance.home_fragment(
                &sn_key,
                &[
                    ("SN/GOV/APIX/business-registry", BUSINESS),
                    ("SN/GOV/DGID/tax", TAX),
                ],
            );
            if receipts {
                let log_key = instance.exchange_log().unwrap().dir().join("log-key.pub");
                fragment.replacen(
                    "witness = true\n",
                    &format!("witness = true\nlog_key = {log_key:?}\nreceipts = true\n"),
                    1,
                )
            } else {
                fragment
            }
        })
        .start()
        .await;
    instance.federate(&home(&bed, sn_key)).unwrap();
    let partner = Partner {
        instance,
        stop,
        _dir: dir,
    };
    (partner, bed, keys)
}

/// Senegal, as Azerbaijan's gateway is told of it: the bed's CA, gateway
/// and log, and its federation key at `key`.
fn home(bed: &Bed, key: PathBuf) -> federation::Home {
    federation::Home {
        ca: bed.ca_certificate(),
        gateway: member(SN_GATEWAY),
        endpoint: bed.gateway,
        key,
        log_key: Some(bed.exchange_log().dir().join("log-key.pub")),
        witnessed: false,
    }
}

/// A company read from Azerbaijan's registry, by its VÖEN.
fn get_company(voen: &str, purpose: &str) -> tonic::Request<AzGetCompanyRequest> {
    support::declared(
        AzGetCompanyRequest {
            voen: voen.to_owned(),
        },
        purpose,
    )
}

/// A company read from Senegal's own registry.
fn home_company(bed: &Bed, purpose: &str) -> tonic::Request<GetCompanyRequest> {
    let mut request = support::declared(
        GetCompanyRequest {
            ninea: bed.data.companies[0].ninea.to_string(),
        },
        purpose,
    );
    request.metadata_mut().insert(
        "bridge-target",
        "SN/GOV/APIX/business-registry".parse().unwrap(),
    );
    request
}

/// Runs the `govbridge` command: whether it succeeded, and all it said.
fn run(args: &[&str]) -> (bool, String) {
    let output = support::govbridge(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `govbridge audit verify` of the log in `data` (with its own key
/// beside it) and the cosignatures of `witness`, with `more` arguments.
fn verify_witnessed(data: &Path, witness: &Path, more: &[&str]) -> (bool, String) {
    let key = data.join("log-key.pub");
    let mut args = vec!["audit", "verify", "--data", data.to_str().unwrap()];
    args.extend(["--key", key.to_str().unwrap()]);
    args.extend(["--witness", witness.to_str().unwrap()]);
    args.extend(more);
    run(&args)
}

fn instance(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get("bridge-instance")
        .map(|value| value.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_call_crosses_the_border_and_both_instances_log_it() {
    let (partner, bed, _) = federated().await;
    let voen = partner.company();
    let mut registry = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());

    let answer = registry
        .get_company(get_company(&voen, "TRADE-FINANCE"))
        .await
        .unwrap();
    assert_eq!(answer.get_ref().voen, voen);
    assert!(!answer.get_ref().address.as_ref().unwrap().city.is_empty());
    // Azerbaijan's tax service answers from the same register: the
    // company, its standing, its tax office.
    let standing = TaxServiceClient::new(bed.channel_as(CBAO).await.unwrap())
        .get_taxpayer_status(support::declared(
            GetTaxpayerStatusRequest { voen: voen.clone() },
            "TRADE-FINANCE",
        ))
        .await
        .unwrap();
    assert_eq!(standing.get_ref().name, answer.get_ref().name);
    assert_eq!(standing.get_ref().standing(), Standing::InGoodStanding);
    assert!(standing.get_ref().vat_payer);
    assert!(
        standing.get_ref().tax_office.contains("Vergilər"),
        "{standing:?}"
    );
    let request_id = request_id_of(answer.metadata());

    // Senegal logged its member calling the Azerbaijani provider...
    let home = bed.sandbox.exchange_log().of_request(&request_id).unwrap();
    assert_eq!(home.len(), 2, "a decision and an outcome");
    assert_eq!(home[0].record.caller, CBAO);
    assert_eq!(home[0].record.provider, AZ_REGISTRY);
    assert!(home[0].record.allowed);
    assert_eq!(home[1].record.grpc_status, 0);
    // ...and Azerbaijan the same call, from the same caller, vouched for
    // by Senegal's gateway with an assertion it can show.
    let abroad = partner.records(&request_id);
    assert_eq!(abroad.len(), 2, "{abroad:?}");
    let decision = &abroad[0];
    assert_eq!(decision.caller, CBAO);
    assert_eq!(decision.via_gateway, SN_GATEWAY);
    assert_eq!(decision.provider, AZ_REGISTRY);
    assert_eq!(decision.purpose, "TRADE-FINANCE");
    assert_eq!(decision.reason, "dossier 2025-0042");
    assert_eq!(
        decision.policies,
        ["sn-banks-use-azbusiness-for-trade-finance"]
    );
    assert!(!decision.assertion.is_empty());
    assert_eq!(abroad[1].grpc_status, 0);
    bed.stop().await;
}

#[tokio::test]
async fn a_json_call_crosses_the_border_as_grpc_and_both_instances_log_it() {
    use govbridge::json_client::{HttpVersion, JsonClient};
    let (partner, bed, _) = federated().await;
    let voen = partner.company();
    let request_id = uuid::Uuid::new_v4().to_string();
    let answer = JsonClient::connect(bed.gateway, &bed.member_tls("cbao-kyc"), HttpVersion::Http1)
        .await
        .unwrap()
        .call(
            http::Method::GET,
            &format!("/az/v1/companies/{voen}"),
            &[
                ("bridge-purpose", "TRADE-FINANCE"),
                ("bridge-reason", "letter of credit 12"),
                ("bridge-user-id", "agent-4"),
                ("bridge-request-id", &request_id),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    assert_eq!(answer.json()["voen"], voen);
    // Senegal's record says the call came as JSON; Azerbaijan's gateway
    // saw the gRPC call Senegal's made of it.
    let home = bed.sandbox.exchange_log().of_request(&request_id).unwrap();
    assert_eq!(home.len(), 2);
    assert!(home.iter().all(|logged| logged.record.json));
    assert_eq!(home[1].record.receipt_instance, "AZ");
    let abroad = partner.records(&request_id);
    assert_eq!(abroad.len(), 2, "{abroad:?}");
    assert!(abroad.iter().all(|record| !record.json));
    assert_eq!(abroad[0].caller, CBAO);
    bed.stop().await;
}

#[tokio::test]
async fn each_instance_refuses_by_its_own_policies_and_says_so() {
    let (partner, bed, _) = federated().await;
    let voen = partner.company();
    let mut registry = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());

    // Senegal's policies keep KYC at home.
    let refused = registry
        .get_company(get_company(&voen, "KYC"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(bridge_error(&refused).as_deref(), Some("policy-denied"));
    assert_eq!(instance(&refused).as_deref(), Some("SN"));

    // Azerbaijan's allow trade finance only.
    let refused = registry
        .get_company(get_company(&voen, "CREDIT-SCORING"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(bridge_error(&refused).as_deref(), Some("policy-denied"));
    assert_eq!(instance(&refused).as_deref(), Some("AZ"));
    // Senegal logged the call it forwarded, and the partner's refusal.
    let records = bed
        .sandbox
        .exchange_log()
        .of_call(refused.metadata())
        .unwrap();
    assert!(records[0].record.allowed);
    assert_eq!(
        records.last().unwrap().record.grpc_status,
        tonic::Code::PermissionDenied as i32
    );
    // Azerbaijan logged its own refusal, against the original caller and
    // under the same request id.
    let request_id = request_id_of(refused.metadata());
    let abroad = partner.records(&request_id);
    let denial = abroad
        .iter()
        .find(|record| !record.allowed)
        .unwrap_or_else(|| panic!("no refusal in Azerbaijan's log: {abroad:?}"));
    assert_eq!(denial.error_kind, "policy-denied", "{abroad:?}");
    assert_eq!(denial.caller, CBAO);
    assert_eq!(denial.purpose, "CREDIT-SCORING");
    bed.stop().await;
}

/// Azerbaijan's policies see the certificate the caller presented in
/// Senegal, as Senegal's gateway asserts it, not Senegal's gateway's own.
#[tokio::test]
async fn the_partners_policies_see_the_callers_own_certificate() {
    // The keys' directory kept: the partner's reload reads them again.
    let (partner, bed, _keys) = federated().await;
    partner
        .instance
        .extend(
            "",
            Some((
                "expiring",
                "@id(\"no-callers-on-an-expiring-certificate\")\n\
                 forbid (principal, action, resource)\n\
                 when { context.certificate_days_left < 1 };\n",
            )),
        )
        .unwrap();
    let voen = partner.company();

    // CBAO with its usual certificate (a year): Azerbaijan answers.
    let mut registry = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());
    registry
        .get_company(get_company(&voen, "TRADE-FINANCE"))
        .await
        .unwrap();

    // CBAO with a certificate in its last day: Senegal's policies (no such
    // rule here) let it out, Azerbaijan's refuse it, though the gateway
    // that connects to Azerbaijan has a year left.
    let now = time::OffsetDateTime::now_utc();
    let expiring = govbridge::pki::LeafRequest {
        not_after: now + time::Duration::hours(12),
        ..govbridge::pki::LeafRequest::member(&member(CBAO))
    };
    let tls = bed.issue_client("cbao-expiring", &expiring);
    let client = H2Client::connect(bed.gateway, tls).await.unwrap();
    let refused = CompanyRegistryClient::new(client)
        .get_company(get_company(&voen, "TRADE-FINANCE"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(bridge_error(&refused).as_deref(), Some("policy-denied"));
    assert_eq!(instance(&refused).as_deref(), Some("AZ"));
    bed.stop().await;
}

#[tokio::test]
async fn a_foreign_member_cannot_call_straight_in() {
    let (partner, bed, _) = federated().await;
    let tls = partner.tls_for(
        &bed.pki.join("member-cbao-kyc.pem"),
        &bed.pki.join("member-cbao-kyc.key"),
    );
    let mut client = H2Client::connect(partner.instance.address(), Arc::clone(&tls))
        .await
        .unwrap();
    let response = raw_call(
        &mut client,
        GET_COMPANY,
        &AzGetCompanyRequest {
            voen: "x".to_owned(),
        },
    )
    .await;
    assert_eq!(response.headers()["grpc-status"], "7", "{response:?}");
    assert_eq!(response.headers()["bridge-error"], "foreign-member");
    assert_eq!(response.headers()["bridge-instance"], "AZ");
    // Logged where it was refused.
    let request_id = response.headers()["bridge-request-id"].to_str().unwrap();
    let records = partner.records(request_id);
    assert!(
        records
            .iter()
            .any(|record| record.error_kind == "foreign-member"),
        "{records:?}"
    );

    // Nor may it read which of this instance's operations it could call.
    let mut client = H2Client::connect(partner.instance.address(), tls)
        .await
        .unwrap();
    let request = http::Request::get("/openapi.json")
        .body(tonic::body::Body::empty())
        .unwrap();
    let ready = tower::ServiceExt::ready(&mut client).await.unwrap();
    let response = tower::Service::call(ready, request).await.unwrap();
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(response.headers()["bridge-error"], "foreign-member");
    bed.stop().await;
}

#[tokio::test]
async fn an_unknown_instance_is_refused_on_both_sides() {
    let (partner, bed, keys) = federated().await;

    // Senegal: a call naming a provider of an instance it is not
    // federated with is refused, logged, and goes nowhere.
    let mut request = get_company(&partner.company(), "TRADE-FINANCE");
    request
        .metadata_mut()
        .insert("bridge-target", "KE/GOV/BRS/registry".parse().unwrap());
    let refused = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap())
        .get_company(request)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    assert_eq!(bridge_error(&refused).as_deref(), Some("unknown-target"));
    assert_eq!(instance(&refused).as_deref(), Some("SN"));
    assert!(
        refused.message().contains("KE/GOV/BRS/registry"),
        "{refused:?}"
    );
    let records = bed
        .sandbox
        .exchange_log()
        .of_call(refused.metadata())
        .unwrap();
    assert_eq!(records.last().unwrap().record.error_kind, "unknown-target");
    let request_id = refused.metadata().get("bridge-request-id").unwrap();
    assert!(partner.records(request_id.to_str().unwrap()).is_empty());

    // Azerbaijan: a gateway of an instance it does not know (Kenya's own
    // CA) cannot even finish the handshake.
    let kenya = govbridge::pki::CertificateAuthority::generate("Kenya dev CA").unwrap();
    let (certificate, key) = kenya
        .issue(&govbridge::pki::LeafRequest::member(&member(
            "KE/GOV/BRIDGE/gateway",
        )))
        .unwrap()
        .write(keys.path(), "kenya-gateway")
        .unwrap();
    let tls = partner.tls_for(&certificate, &key);
    // TLS 1.3: the server's refusal may only arrive with the first read.
    if let Ok(client) = H2Client::connect(partner.instance.address(), tls).await {
        let refused = CompanyRegistryClient::new(client)
            .get_company(get_company(&partner.company(), "TRADE-FINANCE"))
            .await
            .unwrap_err();
        assert_eq!(bridge_error(&refused), None, "{refused:?}");
        assert_ne!(refused.code(), tonic::Code::Ok);
    }
    bed.stop().await;
}

/// The other way: an Azerbaijani bank checks a Senegalese identity, through
/// Azerbaijan's gateway then Senegal's, each under its own policies and in
/// its own log, with the consent the citizen granted in Senegal's MyGov.
#[tokio::test]
async fn an_azerbaijani_member_calls_senegal_through_both_gateways() {
    use govbridge::proto::civilregistry::v1::VerifyIdentityRequest;
    use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;

    const KAPITAL: &str = "AZ/COM/KAPITAL/kyc";
    const ANEC: &str = "SN/GOV/ANEC/civil-registry";
    // Senegal knows Azerbaijan's bank, in a group of its own choosing, and
    // lets it check an identity with the citizen's consent only.
    let (partner, bed, keys) = federated_with(|bed, kept| {
        std::fs::write(
            kept.join("policies/consent-abroad.cedar"),
            format!(
                "@id(\"az-banks-need-consent\")\n\
                 forbid (\n  principal in Group::\"az-banks\",\n  \
                 action == Action::\"/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity\",\n  \
                 resource == Provider::\"{ANEC}\"\n)\n\
                 unless {{ context.consent.verified }};\n"
            ),
        )
        .unwrap();
        bed.config(format!(
            "[members.\"{KAPITAL}\"]\nname = \"Kapital Bank\"\ngroups = [\"az-banks\"]\n"
        ))
    }, false)
    .await;
    // Azerbaijan lets its bank call Senegal's civil registry, for KYC.
    partner
        .instance
        .extend(
            &format!(
                "[members.\"{KAPITAL}\"]\nname = \"Kapital Bank\"\ngroups = [\"az-banks\"]\n\n\
                 [members.\"{ANEC}\"]\nname = \"ANEC\"\n\n[providers.\"{ANEC}\"]\n\n\
                 [services.\"govbridge.civilregistry.v1.CivilRegistry\"]\nproviders = [\"{ANEC}\"]\n\
                 descriptor = \"descriptors/civilregistry.binpb\"\n"
            ),
            Some((
                "abroad",
                &format!(
                    "@id(\"az-banks-check-identities-in-senegal\")\n\
                     permit (principal in Group::\"az-banks\", action, resource == Provider::\"{ANEC}\")\n\
                     when {{ context.purpose == \"KYC\" }};\n"
                ),
            )),
        )
        .unwrap();
    let (certificate, key) = partner
        .instance
        .issue_member(&member(KAPITAL), "member-kapital-kyc")
        .unwrap();
    let channel = govbridge::net::client::Channel::connect(
        partner.instance.address(),
        "localhost",
        partner.tls_for(&certificate, &key),
    )
    .await
    .unwrap();
    let citizen = &bed.data.citizens[0];
    let request = || {
        support::declared(
            VerifyIdentityRequest {
                nin: citizen.nin.to_string(),
                first_names: citizen.first_names.clone(),
                last_name: citizen.last_name.to_owned(),
                date_of_birth: citizen.date_of_birth.to_string(),
            },
            "KYC",
        )
    };
    let mut registry = CivilRegistryClient::new(channel);

    // Without the citizen's consent, Senegal refuses, and says so.
    let refused = registry.verify_identity(request()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(bridge_error(&refused).as_deref(), Some("consent-missing"));
    assert_eq!(instance(&refused).as_deref(), Some("SN"), "{refused:?}");

    // The citizen grants it in Senegal's MyGov; the bank sends it with
    // its call, and Azerbaijan's gateway passes it on.
    let consent = bed
        .grant_consent(&govbridge::sandbox::ConsentGrant::new(
            &citizen.nin.to_string(),
            KAPITAL,
            "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity",
            "KYC",
        ))
        .await
        .unwrap();
    let mut with_consent = request();
    with_consent
        .metadata_mut()
        .insert("bridge-consent", consent.artefact.parse().unwrap());
    let answer = registry.verify_identity(with_consent).await.unwrap();
    let request_id = request_id_of(answer.metadata());

    // Azerbaijan logged its bank calling Senegal's registry, with
    // Senegal's receipt; Senegal logged the same call, vouched for by
    // Azerbaijan's gateway.
    let abroad = partner.records(&request_id);
    assert_eq!(abroad.len(), 2, "{abroad:?}");
    assert_eq!(abroad[0].caller, KAPITAL);
    assert_eq!(abroad[0].provider, ANEC);
    assert_eq!(abroad[1].receipt_instance, "SN");
    assert!(abroad[1].receipt_index.is_some());
    let home = bed.sandbox.exchange_log().of_request(&request_id).unwrap();
    assert_eq!(home.len(), 2, "{home:?}");
    assert_eq!(home[0].record.caller, KAPITAL);
    assert_eq!(home[0].record.via_gateway, federation::GATEWAY);
    assert!(!home[0].record.assertion.is_empty());
    assert_eq!(home[0].record.consent_id, consent.id);

    // Azerbaijan's policy lets its bank out for KYC only: another purpose
    // is refused there, and says so.
    let mut refused = request();
    refused
        .metadata_mut()
        .insert("bridge-purpose", "CREDIT-SCORING".parse().unwrap());
    let refused = registry.verify_identity(refused).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(instance(&refused).as_deref(), Some("AZ"), "{refused:?}");
    drop(keys);
    bed.stop().await;
}

/// Azerbaijan limits CBAO's KYC desk, calling through Senegal's gateway,
/// to one call a second.
fn one_call_a_second_for_cbao(partner: &Partner) {
    partner
        .instance
        .extend(
            &format!("[limits.members.\"{CBAO}\"]\nrequests_per_second = 1\nburst = 1\n"),
            None,
        )
        .unwrap();
}

/// A partner's members are limited each on its own, behind the gateway
/// they all come through: one bank's flood leaves the others their share.
#[tokio::test]
async fn a_partners_members_each_keep_to_their_own_limits() {
    let (partner, bed, _keys) = federated().await;
    one_call_a_second_for_cbao(&partner);
    let voen = partner.company();
    let mut cbao = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());
    let mut refused = None;
    for _ in 0..5 {
        if let Err(status) = cbao.get_company(get_company(&voen, "TRADE-FINANCE")).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("five calls within a second, one allowed a second");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert_eq!(bridge_error(&refused).as_deref(), Some("rate-limited"));
    assert_eq!(instance(&refused).as_deref(), Some("AZ"));
    assert!(refused.message().contains(CBAO), "{refused:?}");

    // Ecobank, through the same two gateways, is not held back.
    let mut ecobank =
        CompanyRegistryClient::new(bed.channel_as("SN/COM/ECOBANK/kyc").await.unwrap());
    for _ in 0..5 {
        ecobank
            .get_company(get_company(&voen, "TRADE-FINANCE"))
            .await
            .unwrap();
    }
    bed.stop().await;
}

/// Senegal's directory learns Azerbaijan from Azerbaijan's own signed
/// global configuration, rather than from files handed over one by one:
/// its bundle is checked with its directory's key, and what it publishes
/// in `[instance]` and `[trust]` becomes Senegal's `[federation.AZ]`.
#[tokio::test]
async fn a_partner_is_learned_from_its_signed_global_configuration() {
    use govbridge::global::split::{self, DirectorySettings};

    let (partner, bed, keys) = federated().await;
    let (bundle, az_key) = partner
        .instance
        .publish_configuration(&keys.path().join("az-directory"), 1)
        .unwrap();

    // Senegal's publication, from the dev configuration.
    let sn = keys.path().join("sn");
    let config = govbridge::dev::prepare(&sn).unwrap();
    let settings = DirectorySettings {
        url: "https://directory.sn.invalid/bundle.json",
        ca: Some("pki/ca.pem"),
        key: "directory.pub",
        interval: "60s",
    };
    let publication = sn.join("publication");
    let divided = split::split(&config, &settings).unwrap();
    split::write_publication(&divided, &publication).unwrap();
    let global = publication.join("global.toml");
    let before = std::fs::read_to_string(&global).unwrap();

    let learn = |from: &Path, key: &Path, instance: &str| {
        let args: Vec<String> = [
            "directory",
            "learn",
            "--partner",
            instance,
            "--from",
            from.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--config",
            global.to_str().unwrap(),
            "--witnessed",
        ]
        .map(str::to_owned)
        .to_vec();
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Refused, the file untouched: another instance's key, another
    // instance's name, an altered bundle.
    let stranger = keys.path().join("stranger.pub");
    let other = SigningKey::generate("AZ-directory").unwrap();
    std::fs::write(&stranger, format!("{}\n", other.verifier())).unwrap();
    let (ok, text) = learn(&bundle, &stranger, "AZ");
    assert!(!ok, "{text}");
    let (ok, text) = learn(&bundle, &az_key, "KE");
    assert!(!ok, "{text}");
    assert!(text.contains("`KE`") || text.contains("KE"), "{text}");
    let altered = keys.path().join("altered.json");
    let mut wire: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let file = wire["files"]["global.toml"].as_str().unwrap().to_owned();
    let flipped = if file.starts_with('A') { "B" } else { "A" };
    wire["files"]["global.toml"] = format!("{flipped}{}", &file[1..]).into();
    std::fs::write(&altered, serde_json::to_vec(&wire).unwrap()).unwrap();
    let (ok, text) = learn(&altered, &az_key, "AZ");
    assert!(!ok, "{text}");
    assert!(text.contains("altered"), "{text}");
    assert_eq!(std::fs::read_to_string(&global).unwrap(), before);

    // Learned: the section and its files, twice over as once; the file
    // as private as it was.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&global, std::fs::Permissions::from_mode(0o600)).unwrap();
    for _ in 0..2 {
        let (ok, text) = learn(&bundle, &az_key, "AZ");
        assert!(ok, "{text}");
        assert!(text.contains("learned AZ from version 1"), "{text}");
    }
    let mode = std::fs::metadata(&global).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let after = std::fs::read_to_string(&global).unwrap();
    assert_eq!(after.matches("[federation.\"AZ\"]").count(), 1, "{after}");
    assert!(after.contains(&format!("\"https://{}\"", partner.instance.address())));
    assert!(
        after.contains("gateway = \"AZ/GOV/BRIDGE/gateway\""),
        "{after}"
    );
    assert!(after.contains("witness = true"), "{after}");
    for (learned, original) in [
        ("federation/AZ/v1/ca.pem", "pki/ca.pem"),
        ("federation/AZ/v1/federation.pub", "pki/federation.pub"),
    ] {
        assert_eq!(
            std::fs::read(publication.join(learned)).unwrap(),
            std::fs::read(partner.path(original)).unwrap(),
            "{learned}"
        );
    }
    // A publication with it is one Senegal's directory signs.
    let checked = govbridge::config::Config::load_publication(&global).unwrap();
    let az = &checked.federation.partners["AZ"];
    assert_eq!(az.gateway.as_str(), "AZ/GOV/BRIDGE/gateway");
    assert!(az.witness);

    // Azerbaijan publishes version 2: learned again, its files under v2,
    // version 1's gone, the section still one; what the operator keeps
    // beside the versions stays.
    let kept = publication.join("federation/AZ/keys");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::copy(&az_key, kept.join("AZ-directory.pub")).unwrap();
    std::fs::create_dir_all(publication.join("federation/AZ/v1-notes")).unwrap();
    let first = keys.path().join("az-version-1.json");
    std::fs::copy(&bundle, &first).unwrap();
    let (bundle, _) = partner
        .instance
        .publish_configuration(&keys.path().join("az-directory"), 2)
        .unwrap();
    let (ok, text) = learn(&bundle, &az_key, "AZ");
    assert!(ok, "{text}");
    assert!(text.contains("learned AZ from version 2"), "{text}");
    let after = std::fs::read_to_string(&global).unwrap();
    assert_eq!(after.matches("[federation.\"AZ\"]").count(), 1, "{after}");
    assert!(after.contains("federation/AZ/v2/ca.pem"), "{after}");
    assert!(!after.contains("federation/AZ/v1/"), "{after}");
    assert!(publication.join("federation/AZ/v2/ca.pem").exists());
    assert!(!publication.join("federation/AZ/v1").exists());
    assert!(kept.join("AZ-directory.pub").exists());
    assert!(publication.join("federation/AZ/v1-notes").exists());
    govbridge::config::Config::load_publication(&global).unwrap();
    // Version 1 again, still signed and unexpired, is not learned: it
    // would undo what Azerbaijan changed since.
    let (ok, text) = learn(&first, &az_key, "AZ");
    assert!(!ok, "{text}");
    assert!(text.contains("older than version 2"), "{text}");
    assert_eq!(std::fs::read_to_string(&global).unwrap(), after);
    assert!(publication.join("federation/AZ/v2/ca.pem").exists());
    // Version 3 names as its members' CA a file that is no certificate:
    // signed and newer, but what the gateway would refuse to load is not
    // learned, and version 2's files stay.
    let az_publication = keys.path().join("az-directory/publication");
    let trust: toml::Table =
        toml::from_str(&std::fs::read_to_string(az_publication.join("global.toml")).unwrap())
            .unwrap();
    let members_ca = trust["trust"]["client_ca"].as_str().unwrap();
    std::fs::write(az_publication.join(members_ca), "not a certificate\n").unwrap();
    let directory_key = SigningKey::read(&keys.path().join("az-directory/directory.key")).unwrap();
    let third = govbridge::global::Bundle::build(
        &az_publication,
        "AZ",
        3,
        std::time::Duration::from_secs(86_400),
        &directory_key,
    )
    .unwrap();
    let third_path = keys.path().join("az-version-3.json");
    std::fs::write(&third_path, third.to_json()).unwrap();
    let (ok, text) = learn(&third_path, &az_key, "AZ");
    assert!(!ok, "{text}");
    assert!(text.contains("would not load"), "{text}");
    assert_eq!(std::fs::read_to_string(&global).unwrap(), after);
    assert!(publication.join("federation/AZ/v2/ca.pem").exists());
    assert!(!publication.join("federation/AZ/v3").exists());
    // Version 4 publishes no log key: learning it to witness Azerbaijan's
    // log is refused, and no version 4 is left behind to count as learned.
    let global_toml = az_publication.join("global.toml");
    let unkeyed: String = std::fs::read_to_string(&global_toml)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("log_key"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&global_toml, unkeyed).unwrap();
    let fourth = govbridge::global::Bundle::build(
        &az_publication,
        "AZ",
        4,
        std::time::Duration::from_secs(86_400),
        &directory_key,
    )
    .unwrap();
    let fourth_path = keys.path().join("az-version-4.json");
    std::fs::write(&fourth_path, fourth.to_json()).unwrap();
    let (ok, text) = run(&[
        "directory",
        "learn",
        "--partner",
        "AZ",
        "--from",
        fourth_path.to_str().unwrap(),
        "--key",
        az_key.to_str().unwrap(),
        "--config",
        global.to_str().unwrap(),
        "--witness",
    ]);
    assert!(!ok, "{text}");
    assert!(text.contains("publishes no log key"), "{text}");
    assert_eq!(std::fs::read_to_string(&global).unwrap(), after);
    assert!(!publication.join("federation/AZ/v4").exists());

    // Or each gateway follows Azerbaijan's directory itself: the
    // publication names where, and under which key, only.
    let federation = publication.join("federation");
    std::fs::copy(&az_key, federation.join("AZ-directory.pub")).unwrap();
    std::fs::copy(
        partner.path("pki/ca.pem"),
        federation.join("AZ-directory-ca.pem"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&global).unwrap();
    let start = text.find("# >>> learned from AZ").unwrap();
    let end_marker = "# <<< end of what was learned from AZ's global configuration\n";
    let end = text.find(end_marker).unwrap() + end_marker.len();
    let followed = "[federation.AZ]\ndirectory = \"https://directory.az.example/bundle.json\"\n\
                    directory_ca = \"federation/AZ-directory-ca.pem\"\n\
                    directory_key = \"federation/AZ-directory.pub\"\n";
    std::fs::write(
        &global,
        format!("{}{followed}{}", &text[..start], &text[end..]),
    )
    .unwrap();
    let checked = govbridge::config::Config::load_publication(&global).unwrap();
    assert!(checked.federation.partners.is_empty());
    let az = &checked.federation.followed["AZ"];
    assert_eq!(
        az.url.to_string(),
        "https://directory.az.example/bundle.json"
    );
    let _ = before;
    bed.stop().await;
}

/// A gateway following two partners' directories asks both at once when
/// it starts: directories out of reach cost a start one timeout, not one
/// each. (Here both sit at an address that holds each connection until
/// two are open at once: asked in turn, the first would wait out its
/// timeout alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_directories_are_asked_at_once_at_start() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (_partner, bed, keys) = federated().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let most = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&most);
    std::thread::spawn(move || {
        use std::io::Read as _;
        // Whether the client still holds `stream` open (what it sent
        // read away).
        let alive = |stream: &mut std::net::TcpStream| {
            stream.set_nonblocking(true).unwrap();
            let mut sent = [0; 4096];
            loop {
                match stream.read(&mut sent) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(error) => return error.kind() == std::io::ErrorKind::WouldBlock,
                }
            }
        };
        let mut open: Vec<std::net::TcpStream> = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            open.retain_mut(|stream| alive(stream));
            open.push(stream);
            seen.fetch_max(open.len(), Ordering::SeqCst);
            if open.len() == 2 {
                open.clear();
            }
        }
    });
    let key_of = |instance: &str| {
        let key = SigningKey::generate(&format!("{instance}-directory")).unwrap();
        let path = keys.path().join(format!("{instance}-directory.pub"));
        std::fs::write(&path, format!("{}\n", key.verifier())).unwrap();
        path
    };
    let config = following(&bed, &format!("https://{address}/az.json"), &key_of("AZ"));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[federation.KE]\ndirectory = \"https://{address}/ke.json\"\ndirectory_ca = {:?}\n\
         directory_key = {:?}\n",
        bed.pki.join("ca.pem"),
        key_of("KE")
    ));
    std::fs::write(&config, text).unwrap();
    let gateway = support::process::GatewayProcess::spawn_config(&bed, "sn", &config);
    assert_eq!(most.load(Ordering::SeqCst), 2);
    drop(gateway);
    bed.stop().await;
}

/// Senegal's gateway configured with Azerbaijan's directory (its address,
/// the CA of its HTTPS certificate, its verifier key) and nothing else of
/// Azerbaijan's; the gateway, a `govbridge serve` process, learns the rest.
fn following(bed: &Bed, url: &str, az_key: &Path) -> PathBuf {
    let config = support::process::GatewayProcess::config(bed, "sn", &[], "");
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("[federation.AZ]\n").unwrap();
    let section = "witness = true\n";
    let end = start + text[start..].find(section).unwrap() + section.len();
    let followed = format!(
        "[federation.AZ]\ndirectory = \"{url}\"\ndirectory_ca = {:?}\ndirectory_key = {:?}\n\
         interval = \"200ms\"\n",
        bed.pki.join("ca.pem"),
        az_key
    );
    std::fs::write(
        &config,
        format!("{}{followed}{}", &text[..start], &text[end..]),
    )
    .unwrap();
    config
}

/// Azerbaijan's directory: `bundle`, served over HTTPS (with a
/// certificate of Senegal's dev CA: whose CA it is does not matter here);
/// its URL, and the server's task.
async fn serve_bundle(bed: &Bed, bundle: &Path) -> (String, tokio::task::JoinHandle<()>) {
    let server = govbridge::global::http::Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        &bed.pki.join("gateway.pem"),
        &bed.pki.join("gateway.key"),
        bundle,
    )
    .await
    .unwrap();
    let url = format!(
        "https://{}{}",
        server.local_addr().unwrap(),
        govbridge::global::http::BUNDLE_PATH
    );
    (url, tokio::spawn(server.serve()))
}

/// [`company_through`], refused with `UNAVAILABLE` and `bridge-error`
/// `kind`.
async fn company_refused_through(
    bed: &Bed,
    gateway: SocketAddr,
    voen: &str,
    kind: &str,
) -> tonic::Status {
    let refused = company_through(bed, gateway, voen)
        .await
        .expect_err("the call to Azerbaijan went through");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(bridge_error(&refused).as_deref(), Some(kind), "{refused:?}");
    refused
}

/// Senegal's own registry answers a CBAO call through `gateway`.
async fn home_answers_through(bed: &Bed, gateway: SocketAddr) {
    let client = H2Client::connect(gateway, bed.member_tls("cbao-kyc"))
        .await
        .unwrap();
    BusinessRegistryClient::new(client)
        .get_company(home_company(bed, "KYC"))
        .await
        .unwrap();
}

/// Azerbaijan's company registry read through `gateway` by the CBAO bank.
async fn company_through(bed: &Bed, gateway: SocketAddr, voen: &str) -> Result<(), tonic::Status> {
    let client = H2Client::connect(gateway, bed.member_tls("cbao-kyc"))
        .await
        .unwrap();
    CompanyRegistryClient::new(client)
        .get_company(get_company(voen, "TRADE-FINANCE"))
        .await
        .map(drop)
}

/// Polls until `check` holds, for up to 20 s.
async fn until<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(20), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_follows_its_partners_own_directory() {
    let (partner, bed, keys) = federated().await;
    let voen = partner.company();
    let az = keys.path().join("az-directory");
    let week = Duration::from_secs(7 * 86_400);
    // Azerbaijan's first publication names an address where no gateway
    // listens.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Its directory serves nothing yet: Senegal's gateway starts without
    // it, refusing calls to Azerbaijan only.
    let bundle = az.join("bundle.json");
    let az_key = az.join("directory.pub");
    let (url, serving) = serve_bundle(&bed, &bundle).await;
    let key = SigningKey::generate("AZ-directory").unwrap();
    std::fs::create_dir_all(&az).unwrap();
    std::fs::write(az.join("directory.key"), key.to_pem()).unwrap();
    std::fs::write(&az_key, format!("{}\n", key.verifier())).unwrap();
    let config = following(&bed, &url, &az_key);
    let said = checked(&config);
    assert!(
        said.contains(&format!(
            "partner AZ: followed from {url}: no usable version"
        )) && said.contains("REFUSED (partner-configuration-missing)"),
        "{said}"
    );
    let gateway = support::process::GatewayProcess::spawn_config(&bed, "sn", &config);
    let refused = company_refused_through(
        &bed,
        gateway.address,
        &voen,
        "partner-configuration-missing",
    )
    .await;
    assert!(refused.message().contains(&url), "{refused:?}");
    home_answers_through(&bed, gateway.address).await;
    let (ready, body) = support::admin_request(gateway.admin, "GET", "/readyz").await;
    assert_eq!(ready, 200, "{body}");

    // Learned once it publishes: calls go where version 1 says, and fail
    // there.
    partner
        .instance
        .publish_configuration_with(&az, 1, nowhere, week)
        .unwrap();
    let version = "govbridge_global_configuration_version{config_instance=\"AZ\"}";
    until("version 1 is learned", || async {
        support::metric(gateway.admin, version).await >= 1.0
    })
    .await;
    company_refused_through(&bed, gateway.address, &voen, "upstream-unavailable").await;

    // Azerbaijan's gateway "moves": version 2 names where it listens, and
    // Senegal's gateway follows without anyone touching its files.
    partner
        .instance
        .publish_configuration_with(&az, 2, partner.instance.address(), week)
        .unwrap();
    until(
        "Senegal's gateway reaches Azerbaijan's where version 2 says",
        || {
            let bed = &bed;
            let voen = &voen;
            let address = gateway.address;
            async move { company_through(bed, address, voen).await.is_ok() }
        },
    )
    .await;
    assert_eq!(support::metric(gateway.admin, version).await, 2.0);
    let said = checked(&config);
    assert!(
        said.contains(&format!("partner AZ: followed from {url}: version 2 in"))
            && !said.contains("REFUSED"),
        "{said}"
    );

    // A bundle signed by another key is refused; version 2 keeps serving.
    let forged = keys.path().join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    let stranger = SigningKey::generate("AZ-directory").unwrap();
    std::fs::write(forged.join("directory.key"), stranger.to_pem()).unwrap();
    std::fs::write(
        forged.join("directory.pub"),
        format!("{}\n", stranger.verifier()),
    )
    .unwrap();
    let (forgery, _) = partner
        .instance
        .publish_configuration_with(&forged, 3, nowhere, week)
        .unwrap();
    std::fs::copy(&forgery, &bundle).unwrap();
    // Refusals of Azerbaijan's bundles, by reason.
    let refused_as = |reason: &str| {
        format!(
            "govbridge_partner_configuration_fetches_total{{config_instance=\"AZ\",\
             result=\"refused\",reason=\"{reason}\"}}"
        )
    };
    until("the forged bundle is refused", || async {
        support::metric(gateway.admin, &refused_as("unsigned")).await >= 1.0
    })
    .await;
    company_through(&bed, gateway.address, &voen).await.unwrap();
    assert_eq!(support::metric(gateway.admin, version).await, 2.0);

    // Azerbaijan rotates its directory's key: version 4 is signed by the
    // new one. Senegal's operator, told out of band, replaces the key
    // file, here before Azerbaijan's directory serves anything signed by
    // it: nothing of the old key's is taken any more, and calls to
    // Azerbaijan are refused until the new key's first bundle comes.
    let (rotated, new_key) = partner
        .instance
        .publish_configuration_with(&forged, 4, partner.instance.address(), week)
        .unwrap();
    let fourth = keys.path().join("az-version-4.json");
    std::fs::copy(&rotated, &fourth).unwrap();
    partner
        .instance
        .publish_configuration_with(&az, 2, partner.instance.address(), week)
        .unwrap();
    std::fs::copy(&new_key, &az_key).unwrap();
    until("the old key's version is dropped", || async {
        company_through(&bed, gateway.address, &voen)
            .await
            .is_err_and(|refused| {
                bridge_error(&refused).as_deref() == Some("partner-configuration-missing")
            })
    })
    .await;
    // Signed by the new key, a version older than the one the old key's
    // ran is refused all the same: a rotation does not start the
    // partner's versions again.
    let (older, _) = partner
        .instance
        .publish_configuration_with(&forged, 1, partner.instance.address(), week)
        .unwrap();
    std::fs::copy(&older, &bundle).unwrap();
    until("the new key's older version is refused", || async {
        support::metric(gateway.admin, &refused_as("replayed")).await >= 1.0
    })
    .await;
    let refused = company_through(&bed, gateway.address, &voen)
        .await
        .unwrap_err();
    assert_eq!(
        bridge_error(&refused).as_deref(),
        Some("partner-configuration-missing")
    );
    std::fs::copy(&fourth, &bundle).unwrap();
    until("version 4 runs, under the new key", || async {
        support::metric(gateway.admin, version).await >= 4.0
    })
    .await;
    company_through(&bed, gateway.address, &voen).await.unwrap();

    // The operator moves the data directory in the file (that takes
    // effect at restart) while Azerbaijan's directory serves version 1
    // again: a reload keeps Azerbaijan's cache where the gateway started,
    // and with it the floor that refuses version 1.
    std::fs::copy(&older, &bundle).unwrap();
    let replayed = support::metric(gateway.admin, &refused_as("replayed")).await;
    let written = std::fs::read_to_string(&config).unwrap();
    let moved = written.replace("data_dir = \"sn-data\"", "data_dir = \"sn-data-moved\"");
    assert_ne!(moved, written);
    std::fs::write(&config, moved).unwrap();
    let (code, body) = support::operator_request(gateway.admin, "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    until("version 1 is refused again", || async {
        support::metric(gateway.admin, &refused_as("replayed")).await > replayed
    })
    .await;
    assert_eq!(support::metric(gateway.admin, version).await, 4.0);
    company_through(&bed, gateway.address, &voen).await.unwrap();
    std::fs::write(&config, written).unwrap();

    // Restarted with Azerbaijan's directory gone, the gateway runs the
    // version in its cache.
    drop(gateway);
    serving.abort();
    let gateway = support::process::GatewayProcess::spawn_config(&bed, "sn", &config);
    assert_eq!(support::metric(gateway.admin, version).await, 4.0);
    company_through(&bed, gateway.address, &voen).await.unwrap();
    let unreachable = "govbridge_partner_configuration_fetches_total{config_instance=\"AZ\",\
                       result=\"unreachable\"}";
    until("Azerbaijan's directory is missed", || async {
        support::metric(gateway.admin, unreachable).await >= 1.0
    })
    .await;
    // Before the bed, whose agencies it holds connections to.
    drop(gateway);
    bed.stop().await;
}

/// A partner's configuration that expires with no newer one from its
/// directory: no call goes to the partner, the instance's own go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_expired_configuration_stops_calls_to_it_only() {
    let (partner, bed, keys) = federated().await;
    let voen = partner.company();
    let az = keys.path().join("az-directory");
    let (bundle, az_key) = partner
        .instance
        .publish_configuration_with(
            &az,
            1,
            partner.instance.address(),
            Duration::from_secs(86_400),
        )
        .unwrap();
    let (url, _serving) = serve_bundle(&bed, &bundle).await;
    let gateway =
        support::process::GatewayProcess::spawn_config(&bed, "sn", &following(&bed, &url, &az_key));
    company_through(&bed, gateway.address, &voen).await.unwrap();
    // Version 2 is valid for a few seconds only, and no version 3 comes.
    partner
        .instance
        .publish_configuration_with(&az, 2, partner.instance.address(), Duration::from_secs(3))
        .unwrap();
    let version = "govbridge_global_configuration_version{config_instance=\"AZ\"}";
    until("version 2 is followed", || async {
        support::metric(gateway.admin, version).await >= 2.0
    })
    .await;
    let started = std::time::Instant::now();
    let status = loop {
        match company_through(&bed, gateway.address, &voen).await {
            Err(status)
                if bridge_error(&status).as_deref() == Some("partner-configuration-expired") =>
            {
                break status;
            }
            answer => assert!(
                started.elapsed() < Duration::from_secs(30),
                "never refused as expired: {answer:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("AZ's global configuration"),
        "{status:?}"
    );
    // Senegal's own registry still answers through the same gateway.
    home_answers_through(&bed, gateway.address).await;
    drop(gateway);
    bed.stop().await;
}

/// A followed partner's configuration altered in the gateway's cache: the
/// gateway starts, and only that partner's calls are refused until the
/// operator removes the cache.
// Two workers: the directory's task serves while the gateway starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_altered_cache_stops_calls_to_it_only() {
    let (partner, bed, keys) = federated().await;
    let voen = partner.company();
    let (bundle, az_key) = partner
        .instance
        .publish_configuration_with(
            &keys.path().join("az-directory"),
            1,
            partner.instance.address(),
            Duration::from_secs(86_400),
        )
        .unwrap();
    let (url, _serving) = serve_bundle(&bed, &bundle).await;
    let config = following(&bed, &url, &az_key);
    let gateway = support::process::GatewayProcess::spawn_config(&bed, "sn", &config);
    company_through(&bed, gateway.address, &voen).await.unwrap();
    drop(gateway);

    // A file of the version in the cache changed behind the gateway.
    let cache = govbridge::config::Config::load(&config)
        .unwrap()
        .federation
        .followed["AZ"]
        .cache
        .clone();
    std::fs::write(cache.join("v1").join("global.toml"), "[purposes]\n").unwrap();
    // `check-config` passes it, naming the cache and what to do.
    let said = checked(&config);
    assert!(
        said.contains("no usable version")
            && said.contains("REFUSED (partner-configuration-missing)")
            && said.contains("altered")
            && said.contains(&format!("remove {}", cache.display())),
        "{said}"
    );

    // The gateway starts; Azerbaijan's calls alone are refused, saying why
    // and what to do. The directory's version does not replace it.
    let gateway = support::process::GatewayProcess::spawn_config(&bed, "sn", &config);
    let status = company_refused_through(
        &bed,
        gateway.address,
        &voen,
        "partner-configuration-missing",
    )
    .await;
    let message = status.message();
    assert!(
        message.contains("cannot be used")
            && message.contains("altered")
            && message.contains(&format!("remove {}", cache.display())),
        "{status:?}"
    );
    home_answers_through(&bed, gateway.address).await;
    let (_, metrics) = support::admin_request(gateway.admin, "GET", "/metrics").await;
    assert!(
        metrics.contains("\ngovbridge_partner_usable{partner=\"AZ\"} 0\n"),
        "{metrics}"
    );

    // Removed: fetched again from the directory, and used.
    std::fs::remove_dir_all(&cache).unwrap();
    until("Azerbaijan's configuration is fetched again", || async {
        company_through(&bed, gateway.address, &voen).await.is_ok()
    })
    .await;
    let usable = "govbridge_partner_usable{partner=\"AZ\"}";
    assert_eq!(support::metric(gateway.admin, usable).await, 1.0);
    drop(gateway);
    bed.stop().await;
}

/// What `govbridge check-config config` says, which must pass.
fn checked(config: &Path) -> String {
    let check = support::govbridge(&["check-config", config.to_str().unwrap()]);
    let said = support::text(&check);
    assert!(check.status.success(), "{said}");
    said
}

/// Azerbaijan's CRL, empty, its next update an hour ago, written to
/// `dir`.
fn stale_partner_crl(partner: &Partner, dir: &Path) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    partner_crl(
        partner,
        &dir.join("az-stale-crl.pem"),
        now - time::Duration::hours(1),
    )
}

/// Azerbaijan's CRL, empty, its next update at `next_update`, written to
/// `path`.
fn partner_crl(partner: &Partner, path: &Path, next_update: time::OffsetDateTime) -> PathBuf {
    let ca = govbridge::pki::CertificateAuthority::load(&partner.path("pki")).unwrap();
    let this_update = time::OffsetDateTime::now_utc() - time::Duration::days(7);
    let pem = ca.crl_between(9, &[], this_update, next_update).unwrap();
    govbridge::pki::write_file(path, pem.as_bytes(), 0o644).unwrap();
    path.to_owned()
}

/// Senegal's gateway configuration for `govbridge serve`, with `crl` in
/// place of Azerbaijan's CRL.
fn config_with_partner_crl(bed: &Bed, partner: &Partner, crl: &Path) -> PathBuf {
    let config = support::process::GatewayProcess::config(bed, "sn", &[], "");
    let text = std::fs::read_to_string(&config).unwrap();
    let fresh = toml::Value::String(partner.path("pki/crl.pem").display().to_string()).to_string();
    assert!(text.contains(&fresh), "no CRL of Azerbaijan's in {text}");
    let quoted = toml::Value::String(crl.display().to_string()).to_string();
    std::fs::write(&config, text.replacen(&fresh, &quoted, 1)).unwrap();
    config
}

#[tokio::test]
async fn a_partners_stale_crl_stops_calls_to_it_only() {
    let (partner, bed, keys) = federated().await;
    let voen = partner.company();
    let stale = stale_partner_crl(&partner, keys.path());
    // Senegal's gateway, started with Azerbaijan's CRL out of date: it
    // starts, where the whole configuration used to be refused.
    let config = config_with_partner_crl(&bed, &partner, &stale);
    // `check-config` passes it, and says which partner is stopped and why.
    let said = checked(&config);
    assert!(
        said.contains("partner AZ: configured in this file")
            && said.contains("REFUSED (partner-crl-stale)")
            && said.contains("az-stale-crl.pem"),
        "{said}"
    );
    let gateway = support::process::GatewayProcess::spawn_config(&bed, "sn", &config);

    let status = company_refused_through(&bed, gateway.address, &voen, "partner-crl-stale").await;
    assert!(
        status.message().contains("az-stale-crl.pem") && status.message().contains("AZ's"),
        "the refusal names neither the partner nor its CRL: {status:?}"
    );
    // Senegal's own registry answers through the same gateway.
    home_answers_through(&bed, gateway.address).await;
    let refused = "govbridge_stale_crls_total{outcome=\"refused\"}";
    assert_eq!(support::metric(gateway.admin, refused).await, 1.0);
    // Its metric says so.
    let (_, metrics) = support::admin_request(gateway.admin, "GET", "/metrics").await;
    assert!(
        metrics.contains("\ngovbridge_partner_usable{partner=\"AZ\"} 0\n"),
        "{metrics}"
    );
    let status = support::govbridge(&["status", "--admin", &gateway.admin.to_string()]);
    let said = support::text(&status);
    assert!(said.contains("partner         AZ: REFUSED"), "{said}");
    // Nor is the gateway taken out of its balancer for it.
    let (_, ready) = support::admin_request(gateway.admin, "GET", "/readyz").await;
    assert!(!ready.contains("az-stale-crl"), "/readyz: {ready}");
    drop(gateway);

    // Inbound, the listener refuses Azerbaijan's certificates only.
    let az_member = member("AZ/COM/KAPITAL/trade");
    let (az_certificate, az_key) = partner
        .instance
        .issue_member(&az_member, "stale-crl-test")
        .unwrap();
    let listener = |crl: &Path| {
        govbridge::identity::tls::ServerTls {
            certificate: az_certificate.clone(),
            private_key: az_key.clone(),
            client_ca: bed.pki.join("ca.pem"),
            crls: Vec::new(),
            crl_grace: Duration::ZERO,
            partners: vec![govbridge::identity::tls::PartnerTrust {
                instance: "AZ".to_owned(),
                ca: partner.path("pki/ca.pem"),
                crls: vec![crl.to_owned()],
            }],
        }
        .listener_tls()
        .unwrap()
    };
    let chain = |path: &Path| govbridge::identity::tls::load_certificates(path).unwrap();
    let az = chain(&az_certificate);
    let sn = chain(&bed.pki.join("member-cbao-kyc.pem"));
    let fresh = listener(&partner.path("pki/crl.pem"));
    fresh.check_client(&az).unwrap();
    let stale = listener(&stale);
    assert!(
        matches!(
            stale.check_client(&az),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ExpiredRevocationListContext { .. }
            ))
        ),
        "an Azerbaijani certificate passes under its stale CRL"
    );
    stale.check_client(&sn).unwrap();
    bed.stop().await;
}

/// An assertion of Senegal's gateway for CBAO's `GetCompany` call at
/// Azerbaijan's registry, issued now.
fn assertion(request_id: &str) -> Assertion {
    Assertion {
        from: "SN".into(),
        to: "AZ".into(),
        gateway: member(SN_GATEWAY),
        caller: member(CBAO),
        method: GET_COMPANY.into(),
        provider: member(AZ_REGISTRY),
        request_id: request_id.into(),
        nonce: Assertion::nonce(),
        issued: govbridge::unix_time::now(),
        // As an older gateway's: the partner's own certificate counts.
        caller_not_after: None,
        purpose: Some("TRADE-FINANCE".into()),
        reason: None,
        user_id: None,
    }
}

/// Calls Azerbaijan's registry at its gateway at `address` as Senegal's
/// gateway would (`tls`), with `sealed` as its assertion: the call's
/// `grpc-status` and `bridge-error`.
async fn asserted_call(
    address: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    sealed: String,
    request_id: &str,
) -> (Option<String>, Option<String>) {
    let headers = [
        ("bridge-purpose", "TRADE-FINANCE"),
        ("bridge-target", AZ_REGISTRY),
    ];
    let answer =
        support::asserted_call(address, tls, GET_COMPANY, (sealed, request_id), &headers).await;
    (
        support::header(&answer, "grpc-status"),
        support::header(&answer, "bridge-error"),
    )
}

#[tokio::test]
async fn assertions_are_checked_and_used_once() {
    let (partner, bed, keys) = federated().await;
    let sn_key = keys.path().join("SN-federation.key");
    let tls = partner.tls_for(
        &bed.pki.join("gateway-upstream.pem"),
        &bed.pki.join("gateway-upstream.key"),
    );
    let key = SigningKey::read(&sn_key).unwrap();
    let request_id = "5b0c0a0e-8d44-4f4e-9a51-6a3e2f1b7c11";
    let assertion = assertion(request_id);
    let address = partner.instance.address();
    let call = |sealed: String| asserted_call(address, tls.clone(), sealed, request_id);
    let sealed = assertion.seal(&key);
    // Accepted once (the registry answers: an empty NINEA is not found)...
    let (status, error) = call(sealed.clone()).await;
    assert_eq!(error, None, "{status:?}");
    // ...refused when replayed...
    let (status, error) = call(sealed).await;
    assert_eq!(status.as_deref(), Some("16"));
    assert_eq!(error.as_deref(), Some("bad-assertion"));
    // ...signed by anyone else, or for another method or purpose.
    let stranger = SigningKey::generate("SN-federation").unwrap();
    let fresh = || Assertion {
        nonce: Assertion::nonce(),
        ..assertion.clone()
    };
    for sealed in [
        fresh().seal(&stranger),
        Assertion {
            method: "/govbridge.business.v1.BusinessRegistry/ListDirectors".into(),
            ..fresh()
        }
        .seal(&key),
        Assertion {
            purpose: Some("CREDIT-SCORING".into()),
            ..fresh()
        }
        .seal(&key),
        Assertion {
            issued: govbridge::unix_time::now() - 600,
            ..fresh()
        }
        .seal(&key),
    ] {
        let (status, error) = call(sealed).await;
        assert_eq!(status.as_deref(), Some("16"));
        assert_eq!(error.as_deref(), Some("bad-assertion"));
    }
    // Each refusal is logged where it was refused, as Azerbaijan's.
    let records = partner.records(request_id);
    let refused: Vec<&str> = records
        .iter()
        .filter(|record| !record.error_kind.is_empty())
        .map(|record| record.error_kind.as_str())
        .collect();
    assert_eq!(refused, ["bad-assertion"; 5], "{records:?}");
    bed.stop().await;
}

/// An assertion whose call the caller's limits refuse is not taken (such
/// a refusal is not logged, and what is taken must be, for a restart to
/// remember it): sent again once the limit allows, it is served, once.
#[tokio::test]
async fn an_assertion_refused_by_the_callers_limits_is_not_taken() {
    let (partner, bed, keys) = federated().await;
    one_call_a_second_for_cbao(&partner);
    let key = SigningKey::read(&keys.path().join("SN-federation.key")).unwrap();
    let tls = partner.tls_for(
        &bed.pki.join("gateway-upstream.pem"),
        &bed.pki.join("gateway-upstream.key"),
    );
    let request_id = "7d3f5a2c-1b4e-4c6d-9e8f-0a1b2c3d4e5f";
    let address = partner.instance.address();
    let call = |sealed: String| asserted_call(address, tls.clone(), sealed, request_id);
    // The burst spent, a second call is refused by CBAO's rate.
    assert_eq!(call(assertion(request_id).seal(&key)).await.1, None);
    let sealed = assertion(request_id).seal(&key);
    assert_eq!(
        call(sealed.clone()).await.1.as_deref(),
        Some("rate-limited")
    );
    // Once the rate allows, the same assertion is served...
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match call(sealed.clone()).await.1.as_deref() {
            None => break,
            Some("rate-limited") => assert!(std::time::Instant::now() < deadline),
            Some(other) => panic!("refused as {other}, not served"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and only once.
    assert_eq!(call(sealed).await.1.as_deref(), Some("bad-assertion"));
    bed.stop().await;
}

#[tokio::test]
async fn an_assertion_taken_before_a_restart_is_not_taken_again() {
    let (partner, bed, keys) = federated().await;
    let sn_key = keys.path().join("SN-federation.key");
    let key = SigningKey::read(&sn_key).unwrap();
    let tls = partner.tls_for(
        &bed.pki.join("gateway-upstream.pem"),
        &bed.pki.join("gateway-upstream.key"),
    );
    let request_id = "0e9c1d1e-3f7a-4b5e-8a61-2d4c6b8f9a01";
    let sealed = assertion(request_id).seal(&key);
    let taken = asserted_call(
        partner.instance.address(),
        tls.clone(),
        sealed.clone(),
        request_id,
    );
    assert_eq!(taken.await.1, None, "taken the first time");

    // Azerbaijan's gateway restarts on its files, within the minute the
    // assertion is valid: its log is what it remembers it by.
    let Partner {
        instance,
        stop,
        _dir: dir,
    } = partner;
    stop.trigger();
    instance.stopped().await;
    drop(instance);
    let (_stop, shutdown) = Shutdown::new();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let restarted =
        PartnerInstance::start(dir.path(), loopback, loopback, support::SEED, &shutdown)
            .await
            .unwrap();
    restarted.federate(&home(&bed, sn_key)).unwrap();
    let address = restarted.address();
    let replayed = asserted_call(address, tls.clone(), sealed, request_id).await;
    assert_eq!(
        replayed,
        (Some("16".to_owned()), Some("bad-assertion".to_owned()))
    );
    // A fresh one is taken: the restart refuses only what it took before.
    let fresh = assertion(request_id).seal(&key);
    assert_eq!(asserted_call(address, tls, fresh, request_id).await.1, None);
    bed.stop().await;
}

#[tokio::test]
async fn streams_of_every_kind_cross_the_border() {
    use govbridge::proto::aztax::v1::ElectronicInvoice;
    use govbridge::proto::bench::v1::echo_client::EchoClient;
    use govbridge::proto::bench::v1::{Payload, StreamRequest};

    let (partner, bed, _keys) = federated().await;
    let channel = bed.channel_as(CBAO).await.unwrap();
    let mut echo = EchoClient::new(channel.clone());
    fn declared<T>(message: T) -> tonic::Request<T> {
        support::declared(message, "TRADE-FINANCE")
    }

    let unary = echo
        .unary(declared(Payload {
            body: b"salam".to_vec(),
        }))
        .await
        .unwrap();
    assert_eq!(unary.get_ref().body, b"salam");

    let mut served = echo
        .server_stream(declared(StreamRequest { count: 3, size: 8 }))
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while let Some(payload) = served.message().await.unwrap() {
        assert_eq!(payload.body.len(), 8);
        received += 1;
    }
    assert_eq!(received, 3);

    let sent = ["bir", "iki", "üç"].map(|word| Payload {
        body: word.as_bytes().to_vec(),
    });
    let mut echoed = echo
        .bidi(declared(tokio_stream::iter(sent.clone())))
        .await
        .unwrap()
        .into_inner();
    for expected in &sent {
        assert_eq!(echoed.message().await.unwrap().as_ref(), Some(expected));
    }
    assert_eq!(echoed.message().await.unwrap(), None);

    // Client streaming: a seller's e-invoices to Azerbaijan's tax
    // service, the third with the wrong VAT.
    let companies = partner.instance.companies().companies();
    let invoices: Vec<ElectronicInvoice> = (0..3)
        .map(|index| ElectronicInvoice {
            invoice_id: format!("EQ-{index}"),
            seller_voen: companies[0].voen.to_string(),
            buyer_voen: companies[1].voen.to_string(),
            // Any day before the test runs.
            issued_on: "2025-06-30".to_owned(),
            amount_azn: 10_000,
            vat_azn: if index == 2 { 1_000 } else { 1_800 },
        })
        .collect();
    let receipt = TaxServiceClient::new(channel.clone())
        .submit_invoices(declared(tokio_stream::iter(invoices)))
        .await
        .unwrap();
    assert_eq!(receipt.get_ref().invoices_received, 3);
    assert_eq!(receipt.get_ref().invoices_accepted, 2);
    assert_eq!(receipt.get_ref().total_vat_azn, 3_600);
    assert_eq!(receipt.get_ref().rejected[0].invoice_id, "EQ-2");
    // Both sides logged the stream, request bytes included.
    let request_id = &request_id_of(receipt.metadata());
    let home = bed.sandbox.exchange_log().of_request(request_id).unwrap();
    let abroad = partner.records(request_id);
    assert_eq!(abroad[0].caller, CBAO);
    assert_eq!(
        home.last().unwrap().record.request_bytes,
        abroad.last().unwrap().request_bytes
    );
    bed.stop().await;
}

#[tokio::test]
async fn a_call_abandoned_mid_stream_is_closed_as_cancelled_on_both_sides() {
    use govbridge::proto::bench::v1::Payload;
    use govbridge::proto::bench::v1::echo_client::EchoClient;

    let (partner, bed, _keys) = federated().await;
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender
        .send(Payload {
            body: b"salam".to_vec(),
        })
        .await
        .unwrap();
    let mut echo = EchoClient::new(bed.channel_as(CBAO).await.unwrap());
    let response = echo
        .bidi(support::declared(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
            "TRADE-FINANCE",
        ))
        .await
        .unwrap();
    let request_id = request_id_of(response.metadata());
    let mut answers = response.into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().body, b"salam");
    // Mid-conversation, the bank's client goes: its stream is reset, and
    // Senegal's gateway resets the one it opened to Azerbaijan's.
    drop(answers);
    drop(sender);

    let started = std::time::Instant::now();
    let (home, abroad) = loop {
        let home = bed.sandbox.exchange_log().of_request(&request_id).unwrap();
        let abroad = partner.records(&request_id);
        if home.len() == 2 && abroad.len() == 2 {
            break (home, abroad);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the abandoned call is not closed on both sides: {home:?} {abroad:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let outcome = &home[1].record;
    assert_eq!(outcome.grpc_status, tonic::Code::Cancelled as i32);
    assert_eq!(outcome.error_kind, "cancelled");
    assert_eq!(abroad[1].grpc_status, tonic::Code::Cancelled as i32);
    assert_eq!(abroad[1].error_kind, "cancelled");
    assert!(abroad[1].request_bytes > 0 && abroad[1].response_bytes > 0);
    bed.stop().await;
}

#[tokio::test]
async fn a_partner_down_is_unavailable_at_once_and_home_goes_on() {
    let (partner, bed, _keys) = federated().await;
    let voen = partner.company();
    let channel = bed.channel_as(CBAO).await.unwrap();
    let mut registry = CompanyRegistryClient::new(channel.clone());
    // Down, not going down: a call that reaches it while it drains is
    // another test's (upstream-failed, when it may have been served).
    partner.stop.trigger();
    partner.instance.stopped().await;

    let started = std::time::Instant::now();
    let refused = registry
        .get_company(get_company(&voen, "TRADE-FINANCE"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        bridge_error(&refused).as_deref(),
        Some("upstream-unavailable")
    );
    assert_eq!(instance(&refused).as_deref(), Some("SN"));
    let records = bed
        .sandbox
        .exchange_log()
        .of_call(refused.metadata())
        .unwrap();
    assert_eq!(
        records.last().unwrap().record.error_kind,
        "upstream-unavailable"
    );

    // Senegal's own registry still answers, and Senegal's gateway stays
    // ready: a balancer must not take it out for Azerbaijan's sake.
    let home = home_company(&bed, "TRADE-FINANCE");
    BusinessRegistryClient::new(channel)
        .get_company(home)
        .await
        .unwrap();
    let (ready, body) = support::admin_request(bed.admin, "GET", "/readyz").await;
    assert_eq!(ready, 200, "{body}");
    bed.stop().await;
}

#[tokio::test]
async fn a_revoked_gateway_certificate_is_refused_by_the_partner() {
    let (partner, bed, _keys) = federated().await;
    let voen = partner.company();
    let mut registry = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());
    registry
        .get_company(get_company(&voen, "TRADE-FINANCE"))
        .await
        .unwrap();

    // Azerbaijan's file watcher has taken in the federation's reload (its
    // second: the first was `federate`'s), so that the next it makes is
    // for the CRL.
    let admin = partner.instance.admin_addr().unwrap();
    let reloads = "govbridge_reloads_total{result=\"ok\"}";
    support::wait_for_metric(admin, reloads, |value| value >= 2.0).await;
    // Senegal revokes its gateway's certificate and publishes its CRL;
    // Azerbaijan's gateway sees the file change, reloads it and drops the
    // connection that certificate opened.
    govbridge::pki::revoke(&bed.pki, &bed.pki.join("gateway-upstream.pem")).unwrap();
    // A call racing the connection's close may fail as it is sent
    // (upstream-failed); once closed, no handshake passes.
    let mut refused = None;
    let mut seen = Vec::new();
    for _ in 0..250 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Err(status) = registry
            .get_company(get_company(&voen, "TRADE-FINANCE"))
            .await
        else {
            seen.push("OK".to_owned());
            continue;
        };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        if bridge_error(&status).as_deref() == Some("upstream-unavailable") {
            refused = Some(status);
            break;
        }
        seen.push(format!("{:?}", bridge_error(&status)));
    }
    let refused =
        refused.unwrap_or_else(|| panic!("the revoked certificate still gets through: {seen:?}"));
    assert_eq!(instance(&refused).as_deref(), Some("SN"));
    bed.stop().await;
}

#[tokio::test]
async fn the_caller_side_can_show_the_partners_signed_record_of_the_exchange() {
    let (partner, bed, keys) = federated().await;
    let voen = partner.company();
    let mut registry = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());
    let answer = registry
        .get_company(get_company(&voen, "TRADE-FINANCE"))
        .await
        .unwrap();
    let request_id = request_id_of(answer.metadata());
    // Senegal's outcome record holds Azerbaijan's index of the call.
    let home = bed.sandbox.exchange_log().of_request(&request_id).unwrap();
    let outcome = &home.last().unwrap().record;
    assert_eq!(outcome.receipt_instance, "AZ");
    let index = outcome.receipt_index.expect("a receipt");
    assert_eq!(partner.records(&request_id)[0].request_id, request_id);
    bed.exchange_log().checkpoint().await.unwrap();
    partner
        .instance
        .exchange_log()
        .unwrap()
        .checkpoint()
        .await
        .unwrap();

    // Azerbaijan's operator proves its record; Senegal's checks it against
    // its own.
    let proof = partner.path("receipt.json");
    let az_data = partner.path("data");
    let (ok, text) = run(&[
        "audit",
        "prove",
        "--data",
        az_data.to_str().unwrap(),
        "--index",
        &index.to_string(),
        "--out",
        proof.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let sn_data = bed.exchange_log().dir().to_owned();
    let receipt_with = |partner_key: &Path, federation_key: &Path| {
        run(&[
            "audit",
            "receipt",
            "--data",
            sn_data.to_str().unwrap(),
            "--request-id",
            &request_id,
            "--proof",
            proof.to_str().unwrap(),
            "--partner-key",
            partner_key.to_str().unwrap(),
            "--key",
            sn_data.join("log-key.pub").to_str().unwrap(),
            "--federation-key",
            federation_key.to_str().unwrap(),
        ])
    };
    let sn_federation = keys.path().join("SN-federation.pub");
    let receipt = |partner_key: &Path| receipt_with(partner_key, &sn_federation);
    let (ok, text) = receipt(&az_data.join("log-key.pub"));
    assert!(ok, "{text}");
    assert!(text.contains("of AZ's log"), "{text}");
    assert!(text.contains("SN/GOV/GOVBRIDGE/gateway vouched"), "{text}");

    // The same, with Azerbaijan's record fetched from its gateway by
    // Senegal's (its upstream certificate): no file to exchange.
    // (Off this runtime's thread: it serves both gateways meanwhile.)
    let args: Vec<String> = [
        "audit",
        "receipt",
        "--data",
        sn_data.to_str().unwrap(),
        "--request-id",
        &request_id,
        "--fetch",
        bed.config_path().to_str().unwrap(),
        "--partner-key",
        az_data.join("log-key.pub").to_str().unwrap(),
        "--key",
        sn_data.join("log-key.pub").to_str().unwrap(),
        "--federation-key",
        sn_federation.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    let (ok, text) = tokio::task::spawn_blocking(move || {
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("fetched AZ's record {index}")),
        "{text}"
    );
    assert!(text.contains("SN/GOV/GOVBRIDGE/gateway vouched"), "{text}");

    // Under another key, or for another record, it does not hold; nor
    // when the assertion it holds is not this instance's gateway's.
    let (ok, text) = receipt(&sn_data.join("log-key.pub"));
    assert!(!ok, "{text}");
    let (ok, text) = receipt_with(
        &az_data.join("log-key.pub"),
        &partner.path("pki/federation.pub"),
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("no assertion of this instance's gateway"),
        "{text}"
    );
    let (ok, text) = run(&[
        "audit",
        "prove",
        "--data",
        az_data.to_str().unwrap(),
        "--index",
        &(index + 1).to_string(),
        "--out",
        proof.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = receipt(&az_data.join("log-key.pub"));
    assert!(!ok, "{text}");
    assert!(text.contains(&format!("no record {index}")), "{text}");
    bed.stop().await;
}

/// With `receipts = true`, Senegal's gateway fetches Azerbaijan's signed
/// record of each call it forwarded there, checks it and keeps it: the
/// auditor checks the cross receipt from Senegal's data alone.
#[tokio::test]
async fn the_calling_gateway_keeps_the_partners_receipt_of_each_call() {
    use govbridge::exchange_log::receipts::Receipts;

    let (partner, bed, keys) = federated_with(|bed, _| bed, true).await;
    let voen = partner.company();
    let mut registry = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());
    let mut request_ids = Vec::new();
    for _ in 0..3 {
        let answer = registry
            .get_company(get_company(&voen, "TRADE-FINANCE"))
            .await
            .unwrap();
        let id = answer.metadata().get("bridge-request-id").unwrap();
        request_ids.push(id.to_str().unwrap().to_owned());
    }
    // Kept once Azerbaijan's checkpoint covers them (one a second).
    let sn_data = bed.exchange_log().dir().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for request_id in &request_ids {
        loop {
            let kept = Receipts::of_request(&sn_data, request_id).unwrap();
            if let [receipt] = kept.as_slice() {
                assert_eq!(receipt.instance, "AZ");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never kept");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let admin = bed.sandbox.admin_addr();
    let kept = "govbridge_receipts_total{partner=\"AZ\",result=\"kept\"}";
    assert_eq!(support::metric(admin, kept).await, 3.0);

    // The cross receipt checks from Senegal's data alone: Azerbaijan's
    // gateway is gone.
    partner.stop.trigger();
    bed.exchange_log().checkpoint().await.unwrap();
    let receipt = |request_id: &str| {
        run(&[
            "audit",
            "receipt",
            "--data",
            sn_data.to_str().unwrap(),
            "--request-id",
            request_id,
            "--partner-key",
            partner.path("data/log-key.pub").to_str().unwrap(),
            "--key",
            sn_data.join("log-key.pub").to_str().unwrap(),
            "--federation-key",
            keys.path().join("SN-federation.pub").to_str().unwrap(),
        ])
    };
    let (ok, text) = receipt(&request_ids[1]);
    assert!(ok, "{text}");
    assert!(text.contains("of AZ's log"), "{text}");
    // A call never forwarded to a partner has no receipt, and says so.
    let home = BusinessRegistryClient::new(bed.channel_as(CBAO).await.unwrap())
        .get_company(home_company(&bed, "KYC"))
        .await
        .unwrap();
    let home = home.metadata().get("bridge-request-id").unwrap();
    bed.exchange_log().checkpoint().await.unwrap();
    let (ok, text) = receipt(home.to_str().unwrap());
    assert!(!ok, "{text}");
    assert!(text.contains("no receipt of request"), "{text}");
    // A backup keeps them.
    let backup = keys.path().join("backup");
    let (ok, text) = run(&[
        "backup",
        "--config",
        bed.config_path().to_str().unwrap(),
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let manifest = std::fs::read_to_string(backup.join("MANIFEST")).unwrap();
    assert!(
        manifest.contains(" exchange-log receipts.sqlite\n"),
        "{manifest}"
    );
    bed.stop().await;
}

#[tokio::test]
async fn a_refusal_mid_stream_says_which_instance_made_it() {
    use govbridge::proto::bench::v1::Payload;
    use govbridge::proto::bench::v1::echo_client::EchoClient;

    let (_partner, bed, _keys) = federated().await;
    let mut echo = EchoClient::new(bed.channel_as(CBAO).await.unwrap());
    // One round trip, then the caller keeps its side open past the call's
    // deadline: the answer's headers have left, so the refusal comes in
    // the trailers.
    let (outbox, queue) = tokio::sync::mpsc::channel(1);
    outbox
        .send(Payload {
            body: b"salam".to_vec(),
        })
        .await
        .unwrap();
    let mut request = support::declared(
        tokio_stream::wrappers::ReceiverStream::new(queue),
        "TRADE-FINANCE",
    );
    request.set_timeout(Duration::from_millis(300));
    let mut answers = echo.bidi(request).await.unwrap().into_inner();
    assert!(answers.message().await.unwrap().is_some());
    let refused = answers.message().await.unwrap_err();
    drop(outbox);
    assert_eq!(refused.code(), tonic::Code::DeadlineExceeded, "{refused:?}");
    assert_eq!(bridge_error(&refused).as_deref(), Some("deadline-exceeded"));
    let instance = instance(&refused);
    assert!(
        matches!(instance.as_deref(), Some("SN" | "AZ")),
        "{refused:?}"
    );
    bed.stop().await;
}

#[tokio::test]
async fn a_partner_witnesses_this_instances_log() {
    use govbridge::note::{Checkpoint, Verifier};
    use govbridge::proto::witness::v1::AddCheckpointRequest;
    use govbridge::proto::witness::v1::witness_client::WitnessClient;

    // The log outlives the bed, to be tampered with at the end.
    let (partner, bed, keys) = federated_with(
        |bed, kept| {
            let data = kept.join("log");
            bed.setting(
                "exchange_log",
                &format!("data_dir = {:?}", data.display().to_string()),
            )
        },
        false,
    )
    .await;
    let _keys = keys;
    let mut registry = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());
    registry
        .get_company(get_company(&partner.company(), "TRADE-FINANCE"))
        .await
        .unwrap();
    bed.exchange_log().checkpoint().await.unwrap();

    // Senegal's gateway sends its checkpoints to Azerbaijan, which
    // cosigns them; the cosignature is kept with the checkpoint.
    // The checkpoint a member asks the gateway for carries it too.
    let sn_data = bed.exchange_log().dir().to_owned();
    let az_witness = partner.path("pki/federation.pub");
    let witness_key = Verifier::read(&az_witness).unwrap();
    let mut proofs = ExchangeLogClient::new(bed.channel_as(CBAO).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let served = loop {
        let served = proofs
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        if witness_key.cosigned(&served.note).is_ok() {
            break served;
        }
        assert!(std::time::Instant::now() < deadline, "never cosigned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let latest = Store::open_read_only(&sn_data)
        .unwrap()
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    assert_eq!(latest.note, served.note);
    let verify = |tolerated: Option<u64>| {
        let tolerated = tolerated.map(|records| records.to_string());
        let more: Vec<&str> = tolerated
            .iter()
            .flat_map(|records| ["--max-unwitnessed", records.as_str()])
            .collect();
        verify_witnessed(&sn_data, &az_witness, &more)
    };
    let (ok, text) = verify(None);
    assert!(ok, "{text}");
    assert!(
        text.contains("the latest checkpoint is cosigned by AZ-federation"),
        "{text}"
    );

    // A checkpoint of Senegal's log that does not extend the one
    // Azerbaijan cosigned (signed with Senegal's own log key, as whoever
    // rewrites the log would) is refused.
    let log_key = SigningKey::read(&sn_data.join("log-key.pem")).unwrap();
    let forged = Checkpoint {
        origin: log_key.name().to_owned(),
        size: latest.size + 1,
        root: [7; 32],
    }
    .sign(&log_key);
    let tls = partner.tls_for(
        &bed.pki.join("gateway-upstream.pem"),
        &bed.pki.join("gateway-upstream.key"),
    );
    let channel =
        govbridge::net::client::Channel::connect(partner.instance.address(), "localhost", tls)
            .await
            .unwrap();
    let forge = || {
        let (mut witness, checkpoint) = (WitnessClient::new(channel.clone()), forged.clone());
        async move {
            witness
                .add_checkpoint(AddCheckpointRequest {
                    old_size: latest.size,
                    consistency: vec![vec![0; 32]],
                    checkpoint,
                })
                .await
        }
    };
    let refused = forge().await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("not consistent"), "{refused:?}");
    // A data directory moved in Azerbaijan's file takes effect at its
    // restart: until then its witness remembers what it cosigned.
    let az_config = partner.instance.path("govbridge.toml");
    let text = std::fs::read_to_string(&az_config).unwrap();
    assert!(text.contains("data_dir = \"data\""), "{text}");
    let moved = text.replace("data_dir = \"data\"", "data_dir = \"moved\"");
    std::fs::write(&az_config, moved).unwrap();
    partner.instance.reloader().reload().unwrap();
    let refused = forge().await.unwrap_err();
    assert!(refused.message().contains("not consistent"), "{refused:?}");
    // The witness's operators see it in its metrics.
    let admin = partner.instance.admin_addr().unwrap();
    let inconsistent =
        "govbridge_witness_checkpoints_total{partner=\"SN\",result=\"inconsistent\"}";
    assert_eq!(support::metric(admin, inconsistent).await, 2.0);
    let size = "govbridge_witness_cosigned_size{partner=\"SN\"}";
    assert_eq!(support::metric(admin, size).await, latest.size as f64);

    // Once the witness is gone, later records are not witnessed, and
    // audit verify --witness says so unless told how many to tolerate.
    partner.stop.trigger();
    let home = home_company(&bed, "KYC");
    BusinessRegistryClient::new(bed.channel_as(CBAO).await.unwrap())
        .get_company(home)
        .await
        .unwrap();
    let newest = bed.exchange_log().checkpoint().await.unwrap().unwrap();
    let unwitnessed = newest.size - latest.size;
    assert!(unwitnessed > 0);
    let (ok, text) = verify(Some(unwitnessed - 1));
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "the {unwitnessed} records after it are not witnessed"
        )),
        "{text}"
    );
    let (ok, text) = verify(Some(unwitnessed));
    assert!(ok, "{text}");
    assert!(text.contains("are not witnessed"), "{text}");

    // Whoever rewrites that tail can drop the checkpoints that signed it:
    // the records past the last cosigned checkpoint still count.
    bed.stop().await;
    let database = rusqlite::Connection::open(sn_data.join("exchange-log.sqlite")).unwrap();
    let dropped = database
        .execute(
            "DELETE FROM checkpoints WHERE tree_size > ?1",
            [i64::try_from(latest.size).unwrap()],
        )
        .unwrap();
    assert!(dropped > 0);
    drop(database);
    let (ok, text) = verify(None);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "the {unwitnessed} records after it are not witnessed"
        )),
        "{text}"
    );
}

/// A log without new records signs no new checkpoint: the gateway sends
/// the latest to its witness again once its cosignature is
/// `exchange_log.witness_refresh` old, and keeps the fresher cosignature
/// in the place of the older, so that an auditor's `--max-witness-age`
/// holds for a gateway merely idle.
#[tokio::test]
async fn an_idle_log_has_its_latest_checkpoint_cosigned_again() {
    use govbridge::note::Verifier;

    let (partner, bed, _keys) = federated_with(
        |bed, _| bed.setting("exchange_log", "witness_refresh = \"1s\""),
        false,
    )
    .await;
    let mut registry = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());
    registry
        .get_company(get_company(&partner.company(), "TRADE-FINANCE"))
        .await
        .unwrap();
    bed.exchange_log().checkpoint().await.unwrap();
    let witness_key = Verifier::read(&partner.path("pki/federation.pub")).unwrap();
    let mut proofs = ExchangeLogClient::new(bed.channel_as(CBAO).await.unwrap());
    let mut cosigned = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let served = loop {
        let served = proofs
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        if let Ok(time) = witness_key.cosigned(&served.note)
            && cosigned.last() != Some(&time)
        {
            cosigned.push(time);
            if cosigned.len() == 3 {
                break served;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cosigned at {cosigned:?} only"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // One checkpoint, cosigned three times, later each time: one line of
    // the witness's is kept, the newest, in the store too.
    assert!(cosigned.is_sorted(), "{cosigned:?}");
    let line = format!("\u{2014} {} ", witness_key.name());
    assert_eq!(served.note.matches(&line).count(), 1, "{}", served.note);
    let data = bed.exchange_log().dir().to_owned();
    let stored = Store::open_read_only(&data)
        .unwrap()
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    assert_eq!(
        witness_key.cosigned(&stored.note).ok(),
        cosigned.last().copied()
    );
    assert_eq!(stored.note.matches(&line).count(), 1, "{}", stored.note);
    let witness = partner.path("pki/federation.pub");
    let (ok, text) = verify_witnessed(&data, &witness, &["--max-witness-age", "1m"]);
    assert!(ok, "{text}");
    bed.stop().await;
}

#[tokio::test]
async fn a_clean_stop_leaves_the_log_witnessed() {
    // The log outlives the bed.
    let (partner, bed, keys) = federated_with(
        |bed, kept| {
            let data = kept.join("log");
            bed.setting(
                "exchange_log",
                &format!("data_dir = {:?}", data.display().to_string()),
            )
        },
        false,
    )
    .await;
    let sn_data = keys.path().join("log");
    assert_eq!(bed.exchange_log().dir(), sn_data);
    let mut registry = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());
    registry
        .get_company(get_company(&partner.company(), "TRADE-FINANCE"))
        .await
        .unwrap();
    // The gateway signs its last checkpoint as it stops, after the
    // records of this call: it is sent to the witness before the gateway
    // is gone.
    bed.stop().await;
    // The witness's key in the form tlog tools take (type 0x04).
    let witness = partner.path("pki/federation.witness.pub");
    let (ok, text) = verify_witnessed(&sn_data, &witness, &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("the latest checkpoint is cosigned by AZ-federation"),
        "{text}"
    );
}

#[tokio::test]
async fn a_slow_partner_runs_out_of_the_callers_deadline_quickly() {
    use govbridge::agencies::fault::Fault;

    let (partner, bed, _keys) = federated().await;
    partner
        .instance
        .faults(0)
        .unwrap()
        .set_for_calls(Fault::delay(Duration::from_secs(5)));
    let mut registry = CompanyRegistryClient::new(bed.channel_as(CBAO).await.unwrap());
    let mut request = get_company(&partner.company(), "TRADE-FINANCE");
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let refused = registry.get_company(request).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(refused.code(), tonic::Code::DeadlineExceeded, "{refused:?}");
    let records = bed
        .sandbox
        .exchange_log()
        .of_call(refused.metadata())
        .unwrap();
    assert_eq!(
        records.last().unwrap().record.grpc_status,
        tonic::Code::DeadlineExceeded as i32
    );
    // Home calls are not held up.
    let mut home = home_company(&bed, "KYC");
    home.set_timeout(Duration::from_secs(2));
    BusinessRegistryClient::new(bed.channel_as(CBAO).await.unwrap())
        .get_company(home)
        .await
        .unwrap();
    bed.stop().await;
}

#[tokio::test]
async fn a_partners_crl_stops_it_from_the_second_it_goes_out_of_date() {
    let (partner, bed, keys) = federated().await;
    let next_update = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let crl = partner_crl(&partner, &keys.path().join("az-crl.pem"), next_update);
    let config = config_with_partner_crl(&bed, &partner, &crl);
    let config = govbridge::config::Config::load(&config).unwrap();
    let next_update = next_update.unix_timestamp();

    // Calls to and from Azerbaijan: until its CRL's next update (no
    // grace), refused from the second after.
    let state = govbridge::proxy::GatewayState::new(&config).unwrap();
    assert_eq!(state.stale_partner_crl_at("AZ", next_update), None);
    let stale = state
        .stale_partner_crl_at("AZ", next_update + 1)
        .expect("Azerbaijan is still called past its CRL's next update");
    assert!(stale.contains("az-crl.pem"), "{stale}");

    // Its gateways' certificates: the same, and Senegal's are not.
    let tls = config.gateway.tls.listener_tls().unwrap();
    let az_member = member("AZ/COM/KAPITAL/trade");
    let (az_certificate, _) = partner
        .instance
        .issue_member(&az_member, "crl-freshness-test")
        .unwrap();
    let chain = |path: &Path| govbridge::identity::tls::load_certificates(path).unwrap();
    let (az, sn) = (
        chain(&az_certificate),
        chain(&bed.pki.join("member-cbao-kyc.pem")),
    );
    let at = |seconds: i64| {
        rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(seconds).unwrap(),
        ))
    };
    assert_eq!(tls.crls_stale_after(&az), Some(next_update));
    tls.check_client_at(&az, at(next_update)).unwrap();
    assert!(
        matches!(
            tls.check_client_at(&az, at(next_update + 1)),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ExpiredRevocationListContext { .. }
            ))
        ),
        "an Azerbaijani certificate passes past its CRL's next update"
    );
    tls.check_client_at(&sn, at(next_update + 1)).unwrap();
    bed.stop().await;
}
