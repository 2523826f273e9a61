//! Revocation and expiry bind connections already open and sessions a
//! client would resume: a partner whose certificate is revoked (then
//! reloaded) or expires loses its open connection and cannot resume its
//! TLS session.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use govbridge::identity::MemberId;
use govbridge::pki::LeafRequest;
use govbridge::proto::civilregistry::v1::GetPersonRequest;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use rustls::ClientConfig;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use support::probe::Probe;
use support::{Bed, H2Client, wait_for_metric};
use time::{Duration, OffsetDateTime};

/// Calls GetPerson through the probe on an open channel.
async fn call_on(client: &H2Client) -> Result<(), tonic::Status> {
    CivilRegistryClient::new(client.clone())
        .get_person(GetPersonRequest { nin: "1".into() })
        .await
        .map(drop)
}

async fn probe_bed() -> (Bed, Probe) {
    let probe = Probe::default();
    let bed = Bed::with_probe(&probe).await;
    (bed, probe)
}

/// A certificate for the registered member CBAO, written as `name` into the
/// bed's PKI: (certificate path, client TLS).
fn member_certificate(
    bed: &Bed,
    name: &str,
    lifetime: Option<Duration>,
) -> (std::path::PathBuf, Arc<ClientConfig>) {
    let mut request = LeafRequest::member(&MemberId::parse(support::CBAO_KYC).unwrap());
    if let Some(lifetime) = lifetime {
        request.not_after = OffsetDateTime::now_utc() + lifetime;
    }
    let tls = bed.issue_client(name, &request);
    (bed.pki.join(format!("{name}.pem")), tls)
}

/// Revokes `certificate` in the bed's CRL and reloads, as `govbridge pki
/// revoke` and the file watcher would.
fn revoke_and_reload(bed: &Bed, certificate: &std::path::Path) {
    govbridge::pki::revoke(&bed.pki, certificate).unwrap();
    bed.reloader.reload().unwrap();
}

#[tokio::test]
async fn a_revoked_certificate_loses_its_open_connection() {
    let (bed, _probe) = probe_bed().await;
    let (certificate, tls) = member_certificate(&bed, "to-revoke", None);
    let client = H2Client::connect(bed.gateway, tls).await.unwrap();
    call_on(&client).await.unwrap();
    // A connection of another member, whose certificate stays good.
    let valid = bed.client("cbao-kyc").await;

    revoke_and_reload(&bed, &certificate);

    assert!(
        client.closed_by_server().await,
        "the connection of a revoked certificate stayed open after the reload"
    );
    assert!(
        call_on(&client).await.is_err(),
        "a call went through on the connection of a revoked certificate"
    );
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"certificate-revoked\"}",
        |closed| closed == 1.0,
    )
    .await;
    assert!(!valid.is_closed(), "a valid member's connection was closed");
    call_on(&valid)
        .await
        .expect("a valid member's open connection after the reload");
    bed.stop().await;
}

#[tokio::test]
async fn a_certificate_that_expires_loses_its_open_connection() {
    let (bed, _probe) = probe_bed().await;
    let (_, tls) = member_certificate(&bed, "short-lived", Some(Duration::seconds(4)));
    let client = H2Client::connect(bed.gateway, tls).await.unwrap();
    call_on(&client).await.unwrap();

    // Expires within 4 s; closed a second later, when webpki would refuse
    // it.
    assert!(
        client
            .closed_within(std::time::Duration::from_secs(15))
            .await,
        "the connection of an expired certificate stayed open"
    );
    assert!(call_on(&client).await.is_err());
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"certificate-expired\"}",
        |closed| closed == 1.0,
    )
    .await;
    bed.stop().await;
}

/// A client session store that counts the TLS 1.3 tickets the server
/// issued: rustls's in-memory cache behind it.
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    tickets: AtomicUsize,
}

impl CountingStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: ClientSessionMemoryCache::new(32),
            tickets: AtomicUsize::new(0),
        })
    }
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(
        &self,
        server_name: rustls_pki_types::ServerName<'static>,
        group: rustls::NamedGroup,
    ) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(
        &self,
        server_name: &rustls_pki_types::ServerName<'_>,
    ) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: rustls_pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(
        &self,
        server_name: &rustls_pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &rustls_pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: rustls_pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &rustls_pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}

/// `tls` with resumption through `store`.
fn resuming(tls: &ClientConfig, store: &Arc<CountingStore>) -> Arc<ClientConfig> {
    let mut tls = tls.clone();
    tls.resumption = Resumption::store(store.clone());
    Arc::new(tls)
}

#[tokio::test]
async fn a_revoked_certificate_cannot_resume_its_session() {
    let (bed, _probe) = probe_bed().await;
    let (certificate, tls) = member_certificate(&bed, "to-revoke", None);
    let store = CountingStore::new();
    let tls = resuming(&tls, &store);
    let client = H2Client::connect(bed.gateway, tls.clone()).await.unwrap();
    // TLS 1.3 tickets come after the handshake: a whole call reads them.
    call_on(&client).await.unwrap();
    drop(client);

    revoke_and_reload(&bed, &certificate);

    assert!(
        support::handshake_refused(bed.gateway, tls).await,
        "a revoked certificate got in again through its TLS session"
    );
    assert_eq!(
        store.tickets.load(Ordering::Relaxed),
        0,
        "the gateway issued session tickets: a session could be resumed without its certificate \
         being checked"
    );
    bed.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_cannot_resume_its_session() {
    let (bed, _probe) = probe_bed().await;
    // Without a reload in between: the listener's TLS configuration, and
    // any session cache in it, stays the same.
    let lifetime = Duration::seconds(4);
    let expires = OffsetDateTime::now_utc() + lifetime;
    let (_, tls) = member_certificate(&bed, "short-lived", Some(lifetime));
    let client = H2Client::connect(bed.gateway, tls.clone()).await.unwrap();
    call_on(&client).await.unwrap();
    drop(client);

    // Waiting for the clock, not for readiness: bounded by the lifetime.
    while OffsetDateTime::now_utc() <= expires + Duration::seconds(1) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        support::handshake_refused(bed.gateway, tls).await,
        "an expired certificate got in again through its TLS session"
    );
    bed.stop().await;
}
