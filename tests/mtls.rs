//! Mutual TLS at the gateway: who gets in, who is refused, and that a
//! refusal never takes the gateway down.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use govbridge::identity::MemberId;
use govbridge::pki::{CertificateAuthority, LeafRequest, Usage};
use govbridge::proto::civilregistry::v1::GetPersonRequest;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use rustls::ClientConfig;
use support::probe::Probe;
use support::{Bed, H2Client, bridge_error};
use time::{Duration, OffsetDateTime};
use tonic::Code;

/// Calls GetPerson through the probe with the given client TLS.
async fn call(bed: &Bed, tls: Arc<ClientConfig>) -> Result<(), String> {
    let client = H2Client::connect(bed.gateway, tls)
        .await
        .map_err(|error| error.to_string())?;
    CivilRegistryClient::new(client)
        .get_person(GetPersonRequest { nin: "1".into() })
        .await
        .map(drop)
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

async fn probe_bed() -> (Bed, Probe) {
    let probe = Probe::default();
    let bed = Bed::with_probe(&probe).await;
    (bed, probe)
}

/// A certificate that TLS refuses must fail the call, and the gateway must
/// go on serving the next, valid partner.
async fn assert_refused_then_serving(bed: &Bed, tls: Arc<ClientConfig>, what: &str) {
    assert!(
        support::handshake_refused(bed.gateway, tls.clone()).await,
        "{what}: the TLS handshake was accepted"
    );
    assert!(
        call(bed, tls).await.is_err(),
        "{what}: the call went through"
    );
    call(bed, bed.member_tls("cbao-kyc"))
        .await
        .unwrap_or_else(|error| panic!("after {what}, a valid member was refused: {error}"));
}

#[tokio::test]
async fn a_member_certificate_gets_through() {
    let (bed, probe) = probe_bed().await;
    call(&bed, bed.member_tls("cbao-kyc")).await.unwrap();
    assert_eq!(probe.seen().len(), 1);
    bed.stop().await;
}

/// A member of another instance calls through its own instance's gateway:
/// one that connects straight here is refused, even with a certificate
/// this instance's CA issued (as a partner not yet learned from its
/// directory has no CA here to check it against) and registered here, as
/// partners' members are for policies.
#[tokio::test]
async fn another_instances_member_is_refused_whatever_ca_vouched_for_it() {
    let foreign = "AZ/COM/KAPITAL/kyc";
    let bed = Bed::builder()
        .config(format!(
            "[members.\"{foreign}\"]\nname = \"Kapital Bank\"\n"
        ))
        .start()
        .await;
    let member = MemberId::parse(foreign).unwrap();
    let tls = bed.issue_client("kapital", &LeafRequest::member(&member));
    let client = H2Client::connect(bed.gateway, tls).await.unwrap();
    let refused = CivilRegistryClient::new(client)
        .get_person(GetPersonRequest { nin: "1".into() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(bridge_error(&refused).as_deref(), Some("foreign-member"));
    assert!(
        refused.message().contains("through AZ's gateway"),
        "{refused:?}"
    );
    bed.stop().await;
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let (bed, probe) = probe_bed().await;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in govbridge::identity::tls::load_certificates(&bed.pki.join("ca.pem")).unwrap()
    {
        roots.add(certificate).unwrap();
    }
    let mut tls = ClientConfig::builder_with_provider(govbridge::identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    assert_refused_then_serving(&bed, Arc::new(tls), "no client certificate").await;
    assert_eq!(
        probe.seen().len(),
        1,
        "only the valid call reached the backend"
    );
    bed.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let (bed, _probe) = probe_bed().await;
    let rogue = CertificateAuthority::generate("rogue CA").unwrap();
    let member = MemberId::parse(support::CBAO_KYC).unwrap();
    let (certificate, key) = rogue
        .issue(&LeafRequest::member(&member))
        .unwrap()
        .write(&bed.pki, "rogue")
        .unwrap();
    let tls = bed.client_tls(&certificate, &key);
    assert_refused_then_serving(&bed, tls, "a certificate from another CA").await;
    bed.stop().await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let (bed, _probe) = probe_bed().await;
    let member = MemberId::parse(support::CBAO_KYC).unwrap();
    let now = OffsetDateTime::now_utc();

    let mut expired = LeafRequest::member(&member);
    expired.not_before = now - Duration::days(30);
    expired.not_after = now - Duration::days(1);
    let tls = bed.issue_client("expired", &expired);
    assert_refused_then_serving(&bed, tls, "an expired certificate").await;

    let mut future = LeafRequest::member(&member);
    future.not_before = now + Duration::days(1);
    future.not_after = now + Duration::days(30);
    let tls = bed.issue_client("future", &future);
    assert_refused_then_serving(&bed, tls, "a not yet valid certificate").await;
    bed.stop().await;
}

#[tokio::test]
async fn a_server_only_certificate_is_refused_as_a_client() {
    let (bed, _probe) = probe_bed().await;
    let mut request = LeafRequest::member(&MemberId::parse(support::CBAO_KYC).unwrap());
    request.usage = Usage::Server;
    let tls = bed.issue_client("server-usage", &request);
    assert_refused_then_serving(&bed, tls, "a certificate without clientAuth").await;
    bed.stop().await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused() {
    // CRLs are read when the gateway starts: revoke a certificate in the
    // bed's PKI, then start a second gateway on the same configuration.
    let (bed, _probe) = probe_bed().await;
    let member = MemberId::parse(support::CBAO_KYC).unwrap();
    let (certificate, key) = bed
        .ca()
        .issue(&LeafRequest::member(&member))
        .unwrap()
        .write(&bed.pki, "to-revoke")
        .unwrap();
    govbridge::pki::revoke(&bed.pki, &certificate).unwrap();

    let mut config = govbridge::config::Config::load(&bed.dir().join("govbridge.toml")).unwrap();
    // Its own exchange log: the bed's gateway writes the bed's.
    config.exchange_log.data_dir = bed.dir().join("second-data");
    let gateway = govbridge::proxy::Gateway::bind(&config).await.unwrap();
    let address = gateway.local_addr().unwrap();
    let (trigger, shutdown) = govbridge::launch::Shutdown::new();
    let serving = tokio::spawn(gateway.serve(shutdown.wait()));

    assert!(
        support::handshake_refused(address, bed.client_tls(&certificate, &key)).await,
        "a revoked certificate got through the handshake"
    );
    assert!(
        !support::handshake_refused(address, bed.member_tls("cbao-kyc")).await,
        "the check itself refuses valid members"
    );
    let valid = H2Client::connect(address, bed.member_tls("cbao-kyc"))
        .await
        .unwrap();
    CivilRegistryClient::new(valid)
        .get_person(GetPersonRequest { nin: "1".into() })
        .await
        .expect("a valid member after a revoked one");

    trigger.trigger();
    serving.await.unwrap();
    bed.stop().await;
}

#[tokio::test]
async fn a_certificate_without_member_san_is_unauthenticated() {
    let (bed, probe) = probe_bed().await;
    let request = LeafRequest::new("no member here", Usage::Client, 30);
    let client = H2Client::connect(bed.gateway, bed.issue_client("anonymous", &request))
        .await
        .unwrap();
    let status = CivilRegistryClient::new(client)
        .get_person(GetPersonRequest { nin: "1".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(bridge_error(&status).as_deref(), Some("no-member-identity"));
    assert!(probe.seen().is_empty());
    bed.stop().await;
}

#[tokio::test]
async fn an_unregistered_member_is_unauthenticated_and_disconnected() {
    let (bed, probe) = probe_bed().await;
    let stranger = MemberId::parse("SN/COM/UNKNOWN/kyc").unwrap();
    let tls = bed.issue_client("stranger", &LeafRequest::member(&stranger));
    // Every connection's call is refused, and the connection closed after it.
    for _ in 0..2 {
        let client = H2Client::connect(bed.gateway, tls.clone()).await.unwrap();
        let status = CivilRegistryClient::new(client.clone())
            .get_person(GetPersonRequest { nin: "1".into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(bridge_error(&status).as_deref(), Some("unknown-member"));
        assert!(
            status.message().contains("SN/COM/UNKNOWN/kyc"),
            "{}",
            status.message()
        );
        assert!(
            client.closed_by_server().await,
            "the connection stayed open"
        );
    }
    assert!(probe.seen().is_empty());
    bed.stop().await;
}

#[tokio::test]
async fn both_hops_negotiate_post_quantum_key_exchange() {
    let (bed, probe) = probe_bed().await;
    let client = bed.client("cbao-kyc").await;
    assert_eq!(
        client.key_exchange,
        Some(rustls::NamedGroup::X25519MLKEM768),
        "client -> gateway"
    );
    CivilRegistryClient::new(client)
        .get_person(GetPersonRequest { nin: "1".into() })
        .await
        .unwrap();
    let seen = probe.seen();
    assert_eq!(
        seen[0].key_exchange,
        Some(rustls::NamedGroup::X25519MLKEM768),
        "gateway -> backend"
    );
    assert_eq!(
        seen[0].peer.as_ref().map(MemberId::as_str),
        Some(govbridge::dev::GATEWAY_IDENTITY)
    );
    bed.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_dropped_at_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let probe = Probe::default();
    let bed = Bed::builder()
        .without_agencies()
        .probe(support::probe::SERVICE, probe.server())
        .handshake_timeout("200ms")
        .start()
        .await;
    let mut silent = tokio::net::TcpStream::connect(bed.gateway).await.unwrap();
    let started = std::time::Instant::now();
    let mut buffer = [0_u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut buffer))
        .await
        .expect("the gateway kept a silent connection open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    call(&bed, bed.member_tls("cbao-kyc")).await.unwrap();
    bed.stop().await;
}
