//! Revocation and expiry bind connections already open and sessions a
//! client would resume, on both hops: a partner whose certificate is
//! revoked (then reloaded) or expires loses its open connection and cannot
//! resume its TLS session; a backend whose certificate is revoked or
//! expires is no longer called; a CRL past its next update is refused unless within the
//! grace the configuration allows.

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
use tonic::Code;

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

/// The CRL from before a revocation, put back while still within its next
/// update (an old copy served to the job that fetches CRLs), is refused at
/// the reload: the revoked certificate stays refused.
#[tokio::test]
async fn an_older_crl_put_back_does_not_undo_a_revocation() {
    let (bed, _probe) = probe_bed().await;
    let (certificate, tls) = member_certificate(&bed, "to-revoke", None);
    let crl = bed.pki.join("crl.pem");
    let before = std::fs::read(&crl).unwrap();
    // TLS 1.3: the client's side of the handshake ends before the
    // gateway has checked its certificate; the first call fails.
    let is_refused = |tls: Arc<ClientConfig>| async {
        match H2Client::connect(bed.gateway, tls).await {
            Ok(client) => call_on(&client).await.is_err(),
            Err(_) => true,
        }
    };
    assert!(!is_refused(tls.clone()).await);
    revoke_and_reload(&bed, &certificate);
    assert!(is_refused(tls.clone()).await);
    let revoked = std::fs::read(&crl).unwrap();

    std::fs::write(&crl, &before).unwrap();
    let refused = bed.reloader.reload().unwrap_err().to_string();
    assert!(
        refused.contains("crl.pem") && refused.contains("older than the list"),
        "{refused}"
    );
    assert!(
        is_refused(tls.clone()).await,
        "the revoked certificate was taken again"
    );

    // The list that revoked it back, then a newer one: taken as before.
    std::fs::write(&crl, &revoked).unwrap();
    let (other, _) = member_certificate(&bed, "revoked-next", None);
    revoke_and_reload(&bed, &other);
    assert!(is_refused(tls.clone()).await);

    // Another setting may hold its own, older copy of the same CA's list
    // (refreshed by another job): each setting keeps its own floor.
    let copy = bed.pki.join("crl-upstream-copy.pem");
    std::fs::write(&copy, &before).unwrap();
    let config_file = bed.dir().join("govbridge.toml");
    let mut config: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
    config["upstream"]
        .as_table_mut()
        .unwrap()
        .insert("crls".to_owned(), vec![copy.display().to_string()].into());
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();
    bed.reloader.reload().unwrap();
    assert!(is_refused(tls).await);
    bed.stop().await;
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

/// `tls` with resumption through `store`: a client that would resume a
/// session whenever the server offers one.
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
    // A client that resumes sessions when the server lets it (ClientTls
    // makes clients that never do).
    let tls = resuming(&tls, &CountingStore::new());
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

/// A bed whose only backend is `probe`, and whose backends' certificates
/// are checked against the bed's CRL.
async fn bed_checking_backends(probe: &Probe) -> Bed {
    Bed::builder()
        .without_agencies()
        .probe(support::probe::SERVICE, probe.server())
        .upstream("crls", "[\"pki/crl.pem\"]")
        .start()
        .await
}

#[tokio::test]
async fn a_revoked_backend_certificate_is_not_used() {
    let probe = Probe::default();
    let bed = bed_checking_backends(&probe).await;
    let client = bed.client("cbao-kyc").await;
    call_on(&client).await.unwrap();

    // The probe is the bed's first backend.
    revoke_and_reload(&bed, &bed.pki.join("backend-0.pem"));

    let seen = probe.seen().len();
    let refused = call_on(&client)
        .await
        .expect_err("a call reached a backend whose certificate is revoked");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        support::bridge_error(&refused).as_deref(),
        Some("upstream-unavailable")
    );
    assert_eq!(probe.seen().len(), seen, "the revoked backend was called");
    bed.stop().await;
}

#[tokio::test]
async fn a_backend_whose_certificate_expires_is_not_used() {
    let probe = Probe::default();
    let bed = Bed::builder()
        .without_agencies()
        .probe(support::probe::SERVICE, probe.server())
        .backend_certificate_lifetime(std::time::Duration::from_secs(6))
        .start()
        .await;
    let certificate =
        govbridge::identity::tls::load_certificates(&bed.pki.join("backend-0.pem")).unwrap();
    let not_after = govbridge::identity::tls::certificate_not_after(&certificate[0]).unwrap();
    let client = bed.client("cbao-kyc").await;
    call_on(&client).await.unwrap();

    // Waiting for the clock, not for readiness: bounded by the lifetime.
    // The pooled connection to the probe is given up a second after
    // not_after, when webpki would refuse the certificate.
    while OffsetDateTime::now_utc().unix_timestamp() <= not_after + 2 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused = call_on(&client)
        .await
        .expect_err("a call went to a backend whose certificate has expired");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(probe.seen().len(), 1, "the expired backend was called");
    bed.stop().await;
}

/// Writes a CRL of the bed's CA, empty, whose next update was `overdue`
/// ago.
fn write_stale_crl(bed: &Bed, overdue: Duration) {
    let now = OffsetDateTime::now_utc();
    let pem = bed
        .ca()
        .crl_between(7, &[], now - Duration::days(7), now - overdue)
        .unwrap();
    govbridge::pki::write_file(&bed.pki.join("crl.pem"), pem.as_bytes(), 0o644).unwrap();
}

/// Sets `[gateway.tls] crl_grace` in the bed's configuration file.
fn set_crl_grace(bed: &Bed, grace: &str) {
    let path = bed.config_path();
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.replacen(
        "crls = [\"pki/crl.pem\"]",
        &format!("crls = [\"pki/crl.pem\"]\ncrl_grace = \"{grace}\""),
        1,
    );
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_stale_crl_is_refused_unless_within_its_grace() {
    let (bed, _probe) = probe_bed().await;

    // An hour past its next update, without a grace: refused at reload and
    // at start, naming the file; the previous CRL keeps serving.
    write_stale_crl(&bed, Duration::hours(1));
    let refused = bed.reloader.reload().unwrap_err().to_string();
    assert!(refused.contains("crl.pem"), "{refused}");
    assert!(refused.contains("next update"), "{refused}");
    let config = govbridge::config::Config::load(bed.config_path()).unwrap();
    let at_start = govbridge::proxy::Gateway::check(&config)
        .unwrap_err()
        .to_string();
    assert!(at_start.contains("crl.pem"), "{at_start}");
    wait_for_metric(
        bed.admin,
        "govbridge_stale_crls_total{outcome=\"refused\"}",
        |count| count == 1.0,
    )
    .await;
    call_on(&bed.client("cbao-kyc").await)
        .await
        .expect("the previous configuration serves on");

    // Within a two-hour grace: accepted, and reported.
    set_crl_grace(&bed, "2h");
    bed.reloader.reload().unwrap();
    wait_for_metric(
        bed.admin,
        "govbridge_stale_crls_total{outcome=\"tolerated\"}",
        |count| count == 1.0,
    )
    .await;
    let crl = format!(
        "govbridge_crl_overdue_seconds{{crl=\"gateway.tls.crls ({})\"}}",
        bed.pki.join("crl.pem").display()
    );
    wait_for_metric(bed.admin, &crl, |overdue| overdue >= 3600.0).await;
    call_on(&bed.client("cbao-kyc").await)
        .await
        .expect("a call under a CRL within its grace");

    // Past the grace: refused again.
    write_stale_crl(&bed, Duration::hours(3));
    let refused = bed.reloader.reload().unwrap_err().to_string();
    assert!(refused.contains("crl.pem"), "{refused}");
    assert!(refused.contains("grace"), "{refused}");
    bed.stop().await;
}

/// Writes a CRL of the bed's CA, empty, due to be replaced `in_` from now,
/// as `file` of the bed's PKI.
fn write_crl_due_in(bed: &Bed, file: &str, in_: Duration) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let next_update = now + in_;
    let pem = bed
        .ca()
        .crl_between(8, &[], now - Duration::days(1), next_update)
        .unwrap();
    govbridge::pki::write_file(&bed.pki.join(file), pem.as_bytes(), 0o644).unwrap();
    next_update
}

/// Two CRLs of one CA in the file (a fetch that appended instead of
/// replacing): the newer is used wherever it stands. A handshake reads
/// only the first of an issuer's lists, and the lists' freshness was the
/// earliest of all of them: an older list first hid a revocation, an
/// older one out of date after refused everyone.
#[tokio::test]
async fn of_two_crls_of_one_ca_the_newer_is_used() {
    let (bed, _probe) = probe_bed().await;
    let now = OffsetDateTime::now_utc();
    let path = bed.pki.join("crl.pem");
    let chain =
        govbridge::identity::tls::load_certificates(&bed.pki.join("member-cbao-kyc.pem")).unwrap();
    let ca = bed.ca();

    // An older list, still current, before the one revoking CBAO.
    let older = ca
        .crl_between(0, &[], now - Duration::days(1), now + Duration::days(1))
        .unwrap();
    govbridge::pki::revoke(&bed.pki, &bed.pki.join("member-cbao-kyc.pem")).unwrap();
    let revoking = std::fs::read_to_string(&path).unwrap();
    govbridge::pki::write_file(&path, format!("{older}{revoking}").as_bytes(), 0o644).unwrap();
    assert_eq!(
        listener_tls(&bed).check_client(&chain),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))
    );

    // A current list, then an older one out of date: the current decides.
    let next_update = now + Duration::days(1);
    let current = ca
        .crl_between(50, &[], now - Duration::minutes(5), next_update)
        .unwrap();
    let stale = ca
        .crl_between(49, &[], now - Duration::days(2), now - Duration::days(1))
        .unwrap();
    govbridge::pki::write_file(&path, format!("{current}{stale}").as_bytes(), 0o644).unwrap();
    let tls = listener_tls(&bed);
    tls.check_client(&chain).unwrap();
    assert_eq!(
        tls.crls_stale_after(&chain),
        Some(next_update.unix_timestamp())
    );
    // Nor do the metrics and the watcher see the list left out.
    let config = govbridge::config::Config::load(bed.config_path()).unwrap();
    let state = govbridge::proxy::GatewayState::new(&config).unwrap();
    let listed: Vec<i64> = state
        .crls()
        .iter()
        .filter(|(list, _)| list.starts_with("gateway.tls.crls"))
        .map(|(_, next_update)| *next_update)
        .collect();
    assert_eq!(listed, [next_update.unix_timestamp()]);
    bed.stop().await;
}

/// The listener's TLS of the bed's configuration file, as a start or
/// reload builds it.
fn listener_tls(bed: &Bed) -> govbridge::identity::tls::ListenerTls {
    let config = govbridge::config::Config::load(bed.config_path()).unwrap();
    config.gateway.tls.listener_tls().unwrap()
}

#[tokio::test]
async fn a_crl_is_refused_at_each_handshake_once_past_its_grace() {
    let (bed, _probe) = probe_bed().await;
    let next_update = write_crl_due_in(&bed, "crl.pem", Duration::hours(1)).unix_timestamp();
    let chain =
        govbridge::identity::tls::load_certificates(&bed.pki.join("member-cbao-kyc.pem")).unwrap();
    let at = |seconds: i64| {
        rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(seconds).unwrap(),
        ))
    };
    let stale = |at_seconds: i64| {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ExpiredRevocationListContext {
                time: at(at_seconds),
                next_update: at(next_update),
            },
        ))
    };

    // Without a grace: up to its next update, and not a second after.
    let tls = listener_tls(&bed);
    assert_eq!(tls.crls_stale_after(&chain), Some(next_update));
    tls.check_client_at(&chain, at(next_update)).unwrap();
    assert_eq!(
        tls.check_client_at(&chain, at(next_update + 1)),
        stale(next_update + 1)
    );

    // With a grace of 30 minutes: until it is over.
    set_crl_grace(&bed, "30m");
    let tls = listener_tls(&bed);
    assert_eq!(tls.crls_stale_after(&chain), Some(next_update + 1800));
    tls.check_client_at(&chain, at(next_update + 1800)).unwrap();
    assert_eq!(
        tls.check_client_at(&chain, at(next_update + 1801)),
        stale(next_update + 1801)
    );
    bed.stop().await;
}

#[tokio::test]
async fn a_crl_that_goes_stale_while_serving_closes_and_refuses_its_connections() {
    let (bed, _probe) = probe_bed().await;
    // Due in a few seconds: taken by the reload, then out of date while
    // the gateway serves.
    write_crl_due_in(&bed, "crl.pem", Duration::seconds(4));
    bed.reloader.reload().unwrap();
    let client = bed.client("cbao-kyc").await;
    call_on(&client).await.unwrap();

    // Once past its next update (no grace): the open connection is closed,
    // new handshakes are refused, and the gateway says it is not ready.
    assert!(
        client
            .closed_within(std::time::Duration::from_secs(15))
            .await,
        "a connection stayed open past its CRL's next update"
    );
    wait_for_metric(
        bed.admin,
        "govbridge_connections_closed_total{reason=\"crl-stale\"}",
        |closed| closed == 1.0,
    )
    .await;
    assert!(
        support::handshake_refused(bed.gateway, bed.member_tls("cbao-kyc")).await,
        "a handshake was accepted against an out-of-date CRL"
    );
    wait_for_metric(
        bed.admin,
        "govbridge_tls_handshake_failures_total{reason=\"crl-stale\"}",
        |refused| refused >= 1.0,
    )
    .await;
    let (status, body) = support::admin_request(bed.admin, "GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("gateway.tls.crls") && body.contains("crl.pem"),
        "/readyz names neither the setting nor the file: {body}"
    );

    // A fresh CRL dropped in place and loaded: served again.
    write_crl_due_in(&bed, "crl.pem", Duration::days(30));
    bed.reloader.reload().unwrap();
    call_on(&bed.client("cbao-kyc").await)
        .await
        .expect("a call once a fresh CRL is loaded");
    let (status, body) = support::admin_request(bed.admin, "GET", "/readyz").await;
    assert!(
        !body.contains("crl"),
        "/readyz still names a CRL: {status} {body}"
    );
    bed.stop().await;
}

#[tokio::test]
async fn a_backend_is_not_called_once_the_upstream_crl_goes_stale() {
    let probe = Probe::default();
    let bed = bed_checking_backends(&probe).await;
    // The backends' CRL in a file of its own, due in a few seconds; the
    // listener's stays fresh.
    let path = bed.config_path();
    let text = std::fs::read_to_string(path).unwrap();
    let line = "crls = [\"pki/crl.pem\"]";
    let at = text
        .rfind(line)
        .expect("no upstream CRL in the configuration");
    let text = format!(
        "{}crls = [\"pki/upstream-crl.pem\"]{}",
        &text[..at],
        &text[at + line.len()..]
    );
    std::fs::write(path, text).unwrap();
    let next_update = write_crl_due_in(&bed, "upstream-crl.pem", Duration::seconds(4));
    bed.reloader.reload().unwrap();
    let client = bed.client("cbao-kyc").await;
    call_on(&client).await.unwrap();

    // Once past its next update: the pooled connection takes no new call
    // and a new one is refused at its handshake. Polls the clock, bounded.
    let refused = loop {
        match call_on(&client).await {
            Err(refused) => break refused,
            Ok(()) => assert!(
                OffsetDateTime::now_utc() < next_update + Duration::seconds(15),
                "a backend was still called well past the upstream CRL's next update"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        OffsetDateTime::now_utc() > next_update,
        "refused before the CRL's next update: {refused:?}"
    );
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        support::bridge_error(&refused).as_deref(),
        Some("upstream-unavailable")
    );
    let calls = probe.seen().len();
    assert!(call_on(&client).await.is_err());
    assert_eq!(probe.seen().len(), calls, "the backend was called again");
    let (status, body) = support::admin_request(bed.admin, "GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream.crls"), "{body}");
    bed.stop().await;
}

/// The log says a CRL went out of date in the second after it did, as
/// its refusals start: it used to look once a minute, so an operator saw
/// refused handshakes for up to a minute before the reason.
#[tokio::test]
async fn the_log_says_when_a_crl_goes_out_of_date() {
    let bed = Bed::start().await;
    // Far enough for the process to start with it fresh, on a busy
    // machine too.
    let next_update = write_crl_due_in(&bed, "crl.pem", Duration::seconds(5));
    let config = support::process::GatewayProcess::config(&bed, "crl-log", &[], "");
    let gateway =
        support::process::GatewayProcess::spawn_config_logging(&bed, "crl-log", &config, "warn");
    let line = gateway
        .logged(
            "CRL out of date beyond its grace",
            std::time::Duration::from_secs(15),
        )
        .expect("the log never said the CRL went out of date");
    assert!(line.contains("gateway.tls.crls"), "{line}");
    assert!(
        OffsetDateTime::now_utc() > next_update,
        "said early: {line}"
    );
    drop(gateway);
    bed.stop().await;
}

/// What the watcher logs: the lists that went out of date since it last
/// looked, or since the state was built when a reload just swapped it in
/// (the build said then which were already out of date), so that a CRL
/// going out of date in the second after a reload is said too.
#[tokio::test]
async fn a_state_says_which_crls_went_out_of_date_since_a_time() {
    let bed = Bed::start().await;
    set_crl_grace(&bed, "0s");
    let due = write_crl_due_in(&bed, "crl.pem", Duration::hours(1)).unix_timestamp();
    let config = govbridge::config::Config::load(bed.config_path()).unwrap();
    let state = govbridge::proxy::GatewayState::new(&config).unwrap();
    let built = state.built_at();
    assert!(built < due, "built at {built}, due at {due}");

    assert_eq!(state.crls_gone_stale(built, due), vec![]);
    let gone = state.crls_gone_stale(built, due + 1);
    let (list, why) = gone
        .iter()
        .find(|(list, _)| list == "gateway.tls.crls")
        .unwrap_or_else(|| panic!("the listener's CRL is not said: {gone:?}"));
    assert!(why.contains("crl.pem"), "{list}: {why}");
    // Said once: a look after it has nothing new.
    assert_eq!(state.crls_gone_stale(due + 1, due + 2), vec![]);
    bed.stop().await;
}

/// A CRL replaced by a fresh one that goes overdue in turn is warned of
/// again, not only the first time that setting's CRL went overdue.
#[tokio::test]
async fn each_crl_that_goes_overdue_is_warned_of() {
    const OVERDUE: &str = "CRL past its next update: publish a fresh one";
    let bed = Bed::start().await;
    set_crl_grace(&bed, "1h");
    // Far enough for the process to start with it fresh, on a busy
    // machine too.
    write_crl_due_in(&bed, "crl.pem", Duration::seconds(5));
    let config = support::process::GatewayProcess::config(&bed, "crl-again", &[], "");
    let gateway =
        support::process::GatewayProcess::spawn_config_logging(&bed, "crl-again", &config, "info");
    let first = gateway
        .logged(OVERDUE, std::time::Duration::from_secs(15))
        .expect("the first CRL going overdue is not said");
    assert!(first.contains("crl.pem"), "{first}");

    // Dropped in place, a fresh CRL is taken at the next look at the
    // files (every 2 s), well before it is due in turn.
    let next_update = write_crl_due_in(&bed, "crl.pem", Duration::seconds(6));
    gateway
        .logged("configuration reloaded", std::time::Duration::from_secs(10))
        .expect("the fresh CRL is not taken");
    assert!(
        OffsetDateTime::now_utc() < next_update,
        "reloaded too late for this test"
    );
    let again = gateway
        .logged(OVERDUE, std::time::Duration::from_secs(15))
        .expect("the fresh CRL going overdue in turn is not said");
    assert!(again.contains("crl.pem"), "{again}");
    assert!(
        OffsetDateTime::now_utc() > next_update,
        "said early: {again}"
    );
    drop(gateway);
    bed.stop().await;
}
