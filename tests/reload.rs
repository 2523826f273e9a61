//! Hot reload of the listener's TLS material: a certificate and CA
//! rotation reaches new connections while an open stream completes, and a
//! certificate that does not match its key is refused.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use govbridge::identity::MemberId;
use govbridge::identity::tls::ClientTls;
use govbridge::pki::{CertificateAuthority, LeafRequest};
use govbridge::proto::civilregistry::v1::WatchLifeEventsRequest;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use support::{Bed, H2Client, admin_request, operator_request, verify_identity_of};

#[tokio::test]
async fn a_certificate_and_ca_rotation_reaches_new_connections_only() {
    let bed = Bed::start().await;

    // A stream opened under the old certificate.
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let mut events = registry
        .watch_life_events(WatchLifeEventsRequest {
            after_sequence: 0,
            max_events: 300,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(events.message().await.unwrap().is_some());

    // A new CA signs a new gateway certificate; the client CA bundle now
    // holds both CAs, so partners' existing certificates still work.
    let rotated = bed.dir().join("rotated");
    let new_ca = CertificateAuthority::generate("govbridge rotated CA").unwrap();
    new_ca.write(&rotated).unwrap();
    let mut server = LeafRequest::loopback_server("govbridge gateway");
    server.member = Some(MemberId::parse("SN/GOV/GOVBRIDGE/gateway").unwrap());
    new_ca
        .issue(&server)
        .unwrap()
        .write(&bed.pki, "gateway")
        .unwrap();
    let bundle = [
        std::fs::read_to_string(bed.pki.join("ca.pem")).unwrap(),
        std::fs::read_to_string(rotated.join("ca.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(bed.pki.join("ca.pem"), bundle).unwrap();

    // A client that trusts only the new CA: refused until the reload.
    let trusts_new_ca = ClientTls::new(
        rotated.join("ca.pem"),
        bed.pki.join("member-cbao-kyc.pem"),
        bed.pki.join("member-cbao-kyc.key"),
    )
    .client_config()
    .unwrap();
    assert!(
        H2Client::connect(bed.gateway, trusts_new_ca.clone())
            .await
            .is_err()
    );

    let (code, body) = operator_request(bed.admin, "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");

    // New connections see the new certificate...
    let mut fresh = CivilRegistryClient::new(
        H2Client::connect(bed.gateway, trusts_new_ca.clone())
            .await
            .unwrap(),
    );
    fresh
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap();
    // ...and the stream opened before the reload completes.
    assert_eq!(1 + support::count_to_end(&mut events).await, 300);

    // A certificate that does not match its key is refused; the rotated
    // certificate keeps serving.
    let other = CertificateAuthority::generate("unrelated")
        .unwrap()
        .issue(&server)
        .unwrap();
    let scratch = bed.dir().join("scratch");
    let (_, other_key) = other.write(&scratch, "gateway").unwrap();
    std::fs::copy(other_key, bed.pki.join("gateway.key")).unwrap();
    let (code, body) = operator_request(bed.admin, "POST", "/reload").await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("gateway.tls"), "{body}");
    let mut again =
        CivilRegistryClient::new(H2Client::connect(bed.gateway, trusts_new_ca).await.unwrap());
    again
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap();
    bed.stop().await;
}

/// A bed whose gateway reloads when its files change, with the series
/// of its successful and failed reloads.
async fn watched() -> (Bed, &'static str, &'static str) {
    let bed = Bed::start().await;
    bed.reloader
        .clone()
        .reload_on_file_change(std::time::Duration::from_millis(20));
    (
        bed,
        "govbridge_reloads_total{result=\"ok\"}",
        "govbridge_reloads_total{result=\"failed\"}",
    )
}

/// The value of a sample on the admin endpoint's /metrics, 0 if absent.
async fn sample(bed: &Bed, series: &str) -> f64 {
    let (_, text) = admin_request(bed.admin, "GET", "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_default()
}

/// Polls /metrics until `series` reaches `value` (at most 5 s): the file
/// watcher works on its own clock.
async fn await_sample(bed: &Bed, series: &str, value: f64) {
    for _ in 0..250 {
        if sample(bed, series).await == value {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{series} never reached {value}");
}

#[tokio::test]
async fn a_changed_file_is_reloaded_and_a_broken_one_refused() {
    let (bed, ok, failed) = watched().await;
    assert_eq!(sample(&bed, ok).await, 0.0);

    let policies = bed.dir().join("policies");
    std::fs::write(
        policies.join("more.cedar"),
        "@id(\"more\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    await_sample(&bed, ok, 1.0).await;

    std::fs::write(policies.join("more.cedar"), "permit (principal,").unwrap();
    await_sample(&bed, failed, 1.0).await;
    // The previous configuration keeps serving.
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    registry
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap();
    assert_eq!(sample(&bed, ok).await, 1.0);
    bed.stop().await;
}

/// A reload refused for a file the configuration names but that is not
/// there yet goes through once the file is put in place.
#[tokio::test]
async fn a_missing_file_put_in_place_after_its_reload_failed_reloads() {
    let (bed, ok, failed) = watched().await;

    let path = bed.dir().join("govbridge.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("tax.binpb"), "{text}");
    std::fs::write(&path, text.replacen("tax.binpb", "tax-copy.binpb", 1)).unwrap();
    await_sample(&bed, failed, 1.0).await;
    assert_eq!(sample(&bed, ok).await, 0.0);

    let descriptors = bed.dir().join("descriptors");
    std::fs::copy(
        descriptors.join("tax.binpb"),
        descriptors.join("tax-copy.binpb"),
    )
    .unwrap();
    await_sample(&bed, ok, 1.0).await;
    assert_eq!(sample(&bed, failed).await, 1.0);
    bed.stop().await;
}

/// What a reload cannot apply is told apart from what it can: the
/// listener's address is a restart's, the Data Tracker's clients a
/// reload's.
#[tokio::test]
async fn restart_only_settings_are_told_apart() {
    use govbridge::config::Config;
    let bed = Bed::start().await;
    let path = bed.dir().join("govbridge.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let before = Config::load(&path).unwrap().restart_only();

    std::fs::write(
        &path,
        format!("{text}\n[exchange_log]\ndata_tracker_clients = [\"SN/GOV/MYGOV/app\"]\n"),
    )
    .unwrap();
    assert_eq!(Config::load(&path).unwrap().restart_only(), before);

    std::fs::write(
        &path,
        text.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1),
    )
    .unwrap();
    let after = Config::load(&path).unwrap().restart_only();
    let changed: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(was, is)| was != is)
        .map(|((setting, _), _)| *setting)
        .collect();
    assert_eq!(changed, ["gateway.listen"]);

    let changed_by = |written: String| -> Vec<&'static str> {
        std::fs::write(&path, written).unwrap();
        let after = Config::load(&path).unwrap().restart_only();
        before
            .iter()
            .zip(&after)
            .filter(|(was, is)| was != is)
            .map(|((setting, _), _)| *setting)
            .collect()
    };
    // The archiver starts with the log: a retention or an archive
    // directory is a restart's.
    for archiving in ["retain = \"30d\"", "archive_dir = \"elsewhere\""] {
        assert_eq!(
            changed_by(format!("{text}\n[exchange_log]\n{archiving}\n")),
            [
                "exchange_log.enabled, data_dir, origin, checkpoint_interval, checkpoint_records, \
                 retain, archive_dir"
            ],
            "{archiving}"
        );
    }
    // So is the node's id, which a fleet node registers under.
    let node_id = text
        .lines()
        .find(|line| line.starts_with("node_id = "))
        .unwrap();
    let changed = changed_by(text.replacen(node_id, "node_id = \"another-node\"", 1));
    assert!(changed.contains(&"gateway.node_id"), "{changed:?}");
    // Reloaded, the gateway goes on under the id it started with: its
    // records do not take the new one.
    bed.reloader.reload().unwrap();
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    registry
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap();
    let log = bed.exchange_log();
    let outcome = log
        .reader()
        .unwrap()
        .record(log.size() - 1)
        .unwrap()
        .unwrap();
    let outcome = <govbridge::exchange_log::ExchangeRecord as prost::Message>::decode(
        outcome.bytes.as_slice(),
    )
    .unwrap();
    assert_eq!(outcome.node_id, "sandbox");

    // A fleet's database: its whole URL counts, password and options too.
    let with_store = |url: &str| {
        let store =
            format!("\n[exchange_log]\norigin = \"govbridge/fleet\"\n[store]\nurl = \"{url}\"\n");
        std::fs::write(&path, format!("{text}{store}")).unwrap();
        Config::load(&path).unwrap().restart_only()
    };
    let one = with_store("postgres://node:s3cr3t@127.0.0.1:5432/fleet");
    for other in [
        "postgres://node:other@127.0.0.1:5432/fleet",
        "postgres://node:s3cr3t@127.0.0.1:5432/fleet?sslmode=disable",
    ] {
        let changed: Vec<&str> = one
            .iter()
            .zip(&with_store(other))
            .filter(|(was, is)| was != is)
            .map(|((setting, _), _)| *setting)
            .collect();
        assert_eq!(changed, ["[store]"], "{other}");
    }
    assert!(one.iter().all(|(_, value)| !value.contains("s3cr3t")));
    bed.stop().await;
}
