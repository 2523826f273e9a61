//! The instance's directory: gateways run the global configuration it
//! publishes (signed, versioned, with an expiry), follow its new versions,
//! refuse what fails a check, and stop forwarding once theirs expires.
//!
//! Each test splits the bed's gateway file with `govbridge directory
//! init`, signs the publication with `directory publish` and serves it
//! over HTTPS from the test; the gateways are `govbridge serve` processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use govbridge::json_client::{HttpVersion, JsonClient};
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::sandbox::ConsentGrant;
use support::process::GatewayProcess;
use support::{Bed, H2Client, bridge_error, declared, dev_bed, govbridge, metric, reflect, text};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const VERSION: &str = "govbridge_global_configuration_version{config_instance=\"SN\"}";

/// Polls refused for `reason`.
fn refused(reason: &str) -> String {
    format!(
        "govbridge_global_configuration_fetches_total{{result=\"refused\",reason=\"{reason}\"}}"
    )
}

/// The instance's directory: its publication directory, key, and the
/// bundle file it serves over HTTPS.
struct Directory {
    publication: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
}

impl Directory {
    /// Splits the bed's gateway file, publishes version 1, and serves it.
    async fn start(bed: &Bed) -> Self {
        let bundle = bed.dir().join("bundle.json");
        let server = directory_server(bed, &bundle).await;
        let url = format!(
            "https://{}{}",
            server.local_addr().unwrap(),
            govbridge::global::http::BUNDLE_PATH
        );
        tokio::spawn(server.serve());
        let directory = Self::init(bed, "", &["--url", &url, "--ca", "pki/ca.pem"]);
        directory.publish(&[]);
        // The agencies' services travel as any provider's: their
        // descriptor sets are files of the bundle.
        let bundle: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&directory.bundle).unwrap()).unwrap();
        assert!(
            bundle["files"]["descriptors/civilregistry.binpb"].is_string(),
            "{:?}",
            bundle["files"]
                .as_object()
                .map(|files| files.keys().collect::<Vec<_>>())
        );
        directory
    }

    /// The instance's key, and the bed's gateway file (with `extra` in its
    /// `[exchange_log]`) split by `directory init` with `source` (`--url`
    /// and its `--ca`), polling every 200 ms; nothing published yet.
    fn init(bed: &Bed, extra: &str, source: &[&str]) -> Self {
        let dir = bed.dir();
        let key = dir.join("directory-key.pem");
        keygen(&key);
        let whole = GatewayProcess::config(bed, "whole", &[], extra);
        let publication = dir.join("publication");
        let split = dir.join("split.toml");
        let mut args = vec![
            "directory",
            "init",
            "--config",
            path(&whole),
            "--publication",
            path(&publication),
            "--out",
            path(&split),
            "--key",
            "directory-key.pub",
            "--interval",
            "200ms",
        ];
        args.extend(source);
        run(&args);
        Self {
            publication,
            key,
            bundle: dir.join("bundle.json"),
        }
    }

    /// `directory publish` of the publication directory, with `extra`
    /// arguments; returns its output.
    fn publish(&self, extra: &[&str]) -> String {
        let output = self.try_publish(extra);
        assert!(
            output.status.success(),
            "directory publish: {}",
            text(&output)
        );
        text(&output)
    }

    /// `directory publish`, which may fail.
    fn try_publish(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "directory",
            "publish",
            "--from",
            path(&self.publication),
            "--key",
            path(&self.key),
            "--instance",
            "SN",
            "--out",
            path(&self.bundle),
        ];
        args.extend(extra);
        govbridge(&args)
    }

    /// Adds `text` to the publication's global.toml.
    fn append(&self, text: &str) {
        let global = self.publication.join("global.toml");
        let mut toml = std::fs::read_to_string(&global).unwrap();
        toml.push_str(text);
        std::fs::write(global, toml).unwrap();
    }

    /// Gateway `name`'s file: the split file, with its own node id and
    /// data directory.
    fn gateway_config(&self, bed: &Bed, name: &str) -> PathBuf {
        let split = std::fs::read_to_string(bed.dir().join("split.toml")).unwrap();
        let own = split
            .replace("node_id = \"", &format!("node_id = \"{name}-"))
            .replace("whole-data", &format!("{name}-data"));
        let config = bed.dir().join(format!("{name}.toml"));
        std::fs::write(&config, own).unwrap();
        config
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `directory keygen`: a configuration key named as the instance's, at
/// `key` (and its `.pub` beside it).
fn keygen(key: &Path) {
    run(&[
        "directory",
        "keygen",
        "--name",
        "SN-directory",
        "--out",
        path(key),
    ]);
}

/// Runs `govbridge args`, which must succeed; returns its output.
fn run(args: &[&str]) -> String {
    let output = govbridge(args);
    assert!(
        output.status.success(),
        "govbridge {args:?}: {}",
        text(&output)
    );
    text(&output)
}

/// `directory init --out` elsewhere than the file it splits is refused,
/// nothing written: the relative paths it keeps (a `data_dir`) would name
/// other files there, and the gateway start a new exchange log.
#[tokio::test]
async fn a_split_gateway_file_is_written_beside_its_original() {
    let bed = Bed::builder().start().await;
    let dir = bed.dir();
    let whole = GatewayProcess::config(&bed, "whole", &[], "");
    keygen(&dir.join("directory-key.pem"));
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let publication = dir.join("publication");
    let output = govbridge(&[
        "directory",
        "init",
        "--config",
        path(&whole),
        "--publication",
        path(&publication),
        "--out",
        path(&elsewhere.join("split.toml")),
        "--url",
        "https://127.0.0.1:8450/bundle.json",
        "--ca",
        path(&dir.join("pki/ca.pem")),
        "--key",
        path(&dir.join("directory-key.pub")),
    ]);
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("write it beside"), "{said}");
    assert!(!publication.exists());
    assert!(!elsewhere.join("split.toml").exists());
    bed.stop().await;
}

/// Waits until `series` of the gateway at `admin` reaches `at_least`.
async fn until_metric(admin: SocketAddr, series: &str, at_least: f64) -> Duration {
    let started = Instant::now();
    loop {
        let value = metric(admin, series).await;
        if value >= at_least {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{series} is {value}, never {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first citizen's identity checked by CBAO's KYC subsystem through
/// the gateway at `gateway`.
async fn verify_identity(bed: &Bed, gateway: SocketAddr) -> Result<(), tonic::Status> {
    let client = H2Client::connect(gateway, bed.member_tls("cbao-kyc"))
        .await
        .unwrap();
    let request = declared(support::verify_identity_of(bed, 0), "KYC");
    CivilRegistryClient::new(client)
        .verify_identity(request)
        .await
        .map(drop)
}

/// What `grpc.health.v1.Health/Check` says of `service`, asked as a bank.
async fn health(bed: &Bed, gateway: SocketAddr, service: &str) -> ServingStatus {
    let client = H2Client::connect(gateway, bed.member_tls("cbao-kyc"))
        .await
        .unwrap();
    support::health(client, service).await.unwrap()
}

/// A directory's server for `bundle`, with the bed's gateway certificate.
async fn directory_server(bed: &Bed, bundle: &Path) -> govbridge::global::http::Server {
    govbridge::global::http::Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        &bed.pki.join("gateway.pem"),
        &bed.pki.join("gateway.key"),
        bundle,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_runs_what_its_directory_publishes_and_refuses_the_rest() {
    let bed = dev_bed().await;
    let directory = Directory::start(&bed).await;
    let config = directory.gateway_config(&bed, "gw");
    let mut gateway = GatewayProcess::spawn_config(&bed, "gw", &config);
    assert_eq!(metric(gateway.admin, VERSION).await, 1.0);
    verify_identity(&bed, gateway.address).await.unwrap();

    // Version 2 limits CBAO's KYC subsystem to one call at a time: the
    // gateway takes it within its interval.
    let version_1 = std::fs::read(&directory.bundle).unwrap();
    let global_1 = std::fs::read_to_string(directory.publication.join("global.toml")).unwrap();
    directory
        .append("\n[limits.members.\"SN/COM/CBAO/kyc\"]\nrequests_per_second = 1\nburst = 1\n");
    let published = directory.publish(&[]);
    assert!(published.contains("published version 2"), "{published}");
    assert!(published.contains("+ limits members"), "{published}");
    until_metric(gateway.admin, VERSION, 2.0).await;
    let _ = verify_identity(&bed, gateway.address).await;
    let limited = verify_identity(&bed, gateway.address).await.unwrap_err();
    assert_eq!(bridge_error(&limited).as_deref(), Some("rate-limited"));
    let version_2 = std::fs::read(&directory.bundle).unwrap();

    // A file changed after signing: refused, version 2 serves on.
    let mut wire: serde_json::Value = serde_json::from_slice(&version_2).unwrap();
    let global = wire["files"]["global.toml"].as_str().unwrap().to_owned();
    let tampered = {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::STANDARD;
        let toml = String::from_utf8(engine.decode(global).unwrap()).unwrap();
        engine.encode(toml.replace("requests_per_second = 1", "requests_per_second = 1000"))
    };
    wire["files"]["global.toml"] = tampered.into();
    std::fs::write(&directory.bundle, serde_json::to_vec(&wire).unwrap()).unwrap();
    until_metric(gateway.admin, &refused("altered"), 2.0).await;

    // Signed by a key that is not the instance's: refused.
    let stranger = bed.dir().join("stranger.pem");
    keygen(&stranger);
    // Neither half of a key is ever overwritten: not through another name
    // for the private half, nor by naming the key as its public half.
    let public = std::fs::read(bed.dir().join("stranger.pub")).unwrap();
    for (out, named) in [
        ("stranger.pem", "stranger.pem: exists"),
        ("stranger.key", "stranger.pub: exists"),
        ("other.pub", "other.pub: the key's public half"),
    ] {
        let refused = govbridge(&[
            "directory",
            "keygen",
            "--name",
            "SN-directory",
            "--out",
            path(&bed.dir().join(out)),
        ]);
        assert!(!refused.status.success(), "{out}: {}", text(&refused));
        assert!(text(&refused).contains(named), "{}", text(&refused));
    }
    assert_eq!(
        std::fs::read(bed.dir().join("stranger.pub")).unwrap(),
        public
    );
    assert!(!bed.dir().join("stranger.key").exists());
    assert!(!bed.dir().join("other.pub").exists());
    std::fs::remove_file(&directory.bundle).unwrap();
    run(&[
        "directory",
        "publish",
        "--from",
        path(&directory.publication),
        "--key",
        path(&stranger),
        "--instance",
        "SN",
        "--out",
        path(&directory.bundle),
        "--version",
        "9",
    ]);
    until_metric(gateway.admin, &refused("unsigned"), 2.0).await;

    // Version 1 served again (replayed): refused.
    std::fs::write(&directory.bundle, &version_1).unwrap();
    until_metric(gateway.admin, &refused("replayed"), 2.0).await;

    // A version the gateway cannot run (members' CA file is no
    // certificate: `publish` does not read TLS material, gateways do):
    // refused whole.
    std::fs::write(&directory.bundle, &version_2).unwrap();
    let ca = directory.publication.join("pki/members/ca.pem");
    let good_ca = std::fs::read(&ca).unwrap();
    std::fs::write(&ca, "not a certificate\n").unwrap();
    directory.publish(&[]);
    until_metric(gateway.admin, &refused("invalid"), 2.0).await;
    std::fs::write(&ca, good_ca).unwrap();
    let version_3 = std::fs::read(&directory.bundle).unwrap();

    // Through all of it, version 2 serves, and is what the gateway keeps.
    assert_eq!(metric(gateway.admin, VERSION).await, 2.0);
    let kept = std::fs::read_to_string(gateway.data.join("directory/current")).unwrap();
    assert_eq!(kept.trim(), "2");
    let _ = verify_identity(&bed, gateway.address).await;
    let limited = verify_identity(&bed, gateway.address).await.unwrap_err();
    assert_eq!(bridge_error(&limited).as_deref(), Some("rate-limited"));

    // With the directory down, a restart runs the copy it kept.
    std::fs::remove_file(&directory.bundle).unwrap();
    gateway.kill();
    let gateway = GatewayProcess::spawn_config(&bed, "gw", &config);
    assert_eq!(metric(gateway.admin, VERSION).await, 2.0);

    // Version 4, without the limit and valid for three seconds, is taken,
    // then expires: every call is refused, and /readyz says why, until a
    // newer one comes.
    std::fs::write(&directory.bundle, &version_3).unwrap();
    std::fs::write(directory.publication.join("global.toml"), &global_1).unwrap();
    directory.publish(&["--valid", "3s"]);
    until_metric(gateway.admin, VERSION, 4.0).await;
    verify_identity(&bed, gateway.address).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let expired = loop {
        match verify_identity(&bed, gateway.address).await {
            Err(status)
                if bridge_error(&status).as_deref() == Some("global-configuration-expired") =>
            {
                break status;
            }
            Ok(()) => assert!(Instant::now() < deadline, "version 4 never expired"),
            Err(status) => panic!("{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(expired.code(), tonic::Code::Unavailable);
    assert!(
        expired.message().contains("version 4"),
        "{}",
        expired.message()
    );
    let (status, body) = support::admin_request(gateway.admin, "GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("global configuration (version 4) expired"),
        "{body}"
    );
    // gRPC health says what /readyz says.
    const REGISTRY: &str = "govbridge.civilregistry.v1.CivilRegistry";
    for service in ["", REGISTRY] {
        assert_eq!(
            health(&bed, gateway.address, service).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }

    directory.publish(&[]);
    until_metric(gateway.admin, VERSION, 5.0).await;
    verify_identity(&bed, gateway.address).await.unwrap();
    let (status, body) = support::admin_request(gateway.admin, "GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");
    for service in ["", REGISTRY] {
        assert_eq!(
            health(&bed, gateway.address, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
}

/// A directory serves so many connections at once and closes the rest as
/// they come: clients that never read cannot pile up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_serves_so_many_connections_and_no_more() {
    use tokio::io::AsyncReadExt as _;

    let bed = dev_bed().await;
    let bundle = bed.dir().join("bundle.json");
    std::fs::write(&bundle, "{}\n").unwrap();
    let server = directory_server(&bed, &bundle)
        .await
        .with_max_connections(2);
    let address = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    let url: http::Uri = format!("https://{address}{}", govbridge::global::http::BUNDLE_PATH)
        .parse()
        .unwrap();
    let ca = bed.pki.join("ca.pem");
    let fetch = || govbridge::global::http::fetch(&url, &ca, Duration::from_secs(5));

    // Two connections that never speak hold both places; a third is
    // closed at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    let mut third = tokio::net::TcpStream::connect(address).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), third.read(&mut [0; 1]))
        .await
        .expect("the third connection is closed, not held");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    // Once they go, the bundle is served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        match fetch().await {
            Ok(bundle) => break bundle,
            Err(error) => assert!(
                Instant::now() < deadline,
                "the places were never given back: {error}"
            ),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(served, b"{}\n");

    // Without a cap of its own, one address holds so many places and no
    // more: the others' stay free.
    let server = directory_server(&bed, &bundle).await;
    let address = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    let per_address = govbridge::global::http::MAX_CONNECTIONS_PER_ADDRESS;
    let mut held = Vec::new();
    for _ in 0..per_address {
        held.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    let mut one_more = tokio::net::TcpStream::connect(address).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), one_more.read(&mut [0; 1]))
        .await
        .expect("a connection past the address's share is closed, not held");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

/// A new exchange_log.data_dir takes effect at restart, and the reload
/// takes the rest of the file: the directory's cache, in the data
/// directory unless set, stays the running one's too, and is no reason to
/// refuse the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_moved_in_the_file_does_not_stop_reloads() {
    let bed = dev_bed().await;
    let directory = Directory::start(&bed).await;
    let config = directory.gateway_config(&bed, "gw");
    let gateway = GatewayProcess::spawn_config(&bed, "gw", &config);
    const RELOADED: &str = "govbridge_reloads_total{result=\"ok\"}";
    let reloads = metric(gateway.admin, RELOADED).await;
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("gw-data"), "{text}");
    std::fs::write(&config, text.replace("gw-data", "gw-data-moved")).unwrap();
    until_metric(gateway.admin, RELOADED, reloads + 1.0).await;
    assert_eq!(metric(gateway.admin, VERSION).await, 1.0);
    verify_identity(&bed, gateway.address).await.unwrap();
}

/// The configuration key is replaced without an outage: versions signed
/// by both keys while gateways learn the new one (a reload of the file
/// with the new key keeps following, a restart takes it), then by the new
/// key alone; a gateway stopped all along starts on the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_key_is_replaced_without_an_outage() {
    let bed = dev_bed().await;
    let directory = Directory::start(&bed).await;
    let config = directory.gateway_config(&bed, "gw");
    let mut gateway = GatewayProcess::spawn_config(&bed, "gw", &config);
    assert_eq!(metric(gateway.admin, VERSION).await, 1.0);
    // Away through the rotation: its cache holds version 1, signed by the
    // old key alone.
    let away_config = directory.gateway_config(&bed, "gw-away");
    let mut away = GatewayProcess::spawn_config(&bed, "gw-away", &away_config);
    assert_eq!(metric(away.admin, VERSION).await, 1.0);
    away.kill();

    // Version 2, signed by the old key and the new.
    let new_key = bed.dir().join("directory-key-2.pem");
    keygen(&new_key);
    directory.publish(&["--key", path(&new_key)]);
    until_metric(gateway.admin, VERSION, 2.0).await;

    // The gateway's file names the new key: reloaded, it keeps following
    // (the new [directory] waits for the restart), and takes version 3.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("directory-key.pub"), "{text}");
    const RELOADED: &str = "govbridge_reloads_total{result=\"ok\"}";
    let reloads = metric(gateway.admin, RELOADED).await;
    std::fs::write(
        &config,
        text.replace("directory-key.pub", "directory-key-2.pub"),
    )
    .unwrap();
    until_metric(gateway.admin, RELOADED, reloads + 1.0).await;
    directory.publish(&["--key", path(&new_key)]);
    until_metric(gateway.admin, VERSION, 3.0).await;

    // Restarted with the new key: version 3 from its cache, then
    // version 4, signed by the new key alone.
    gateway.kill();
    let gateway = GatewayProcess::spawn_config(&bed, "gw", &config);
    assert_eq!(metric(gateway.admin, VERSION).await, 3.0);
    let rotated = Directory {
        publication: directory.publication.clone(),
        key: new_key,
        bundle: directory.bundle.clone(),
    };
    rotated.publish(&[]);
    until_metric(gateway.admin, VERSION, 4.0).await;
    verify_identity(&bed, gateway.address).await.unwrap();

    // Another directory (its url) is refused at a reload: the running
    // configuration would come from one, the polls from the other.
    const FAILED: &str = "govbridge_reloads_total{result=\"failed\"}";
    let failed = metric(gateway.admin, FAILED).await;
    let text = std::fs::read_to_string(&config).unwrap();
    let (before, after) = text.split_once("url = \"").unwrap();
    let rest = after.split_once('"').unwrap().1;
    std::fs::write(
        &config,
        format!("{before}url = \"https://127.0.0.1:9/bundle.json\"{rest}"),
    )
    .unwrap();
    until_metric(gateway.admin, FAILED, failed + 1.0).await;
    assert_eq!(metric(gateway.admin, VERSION).await, 4.0);
    // Meanwhile the directory it follows is followed still: version 5 is
    // taken, the file's other url waiting for the restart.
    rotated.publish(&[]);
    until_metric(gateway.admin, VERSION, 5.0).await;

    // Back with the new key: its cache's version cannot be checked any
    // more, but it names the floor; the directory's version 5 is taken.
    let text = std::fs::read_to_string(&away_config).unwrap();
    std::fs::write(
        &away_config,
        text.replace("directory-key.pub", "directory-key-2.pub"),
    )
    .unwrap();
    let away = GatewayProcess::spawn_config(&bed, "gw-away", &away_config);
    assert_eq!(metric(away.admin, VERSION).await, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_polling_one_directory_converge_on_its_version() {
    let bed = dev_bed().await;
    let directory = Directory::start(&bed).await;
    let gateways: Vec<GatewayProcess> = ["gw-a", "gw-b"]
        .into_iter()
        .map(|name| GatewayProcess::spawn_config(&bed, name, &directory.gateway_config(&bed, name)))
        .collect();
    for version in 2..=4 {
        directory.append(&format!("\n# publication {version}\n"));
        directory.publish(&[]);
        let mut slowest = Duration::ZERO;
        for gateway in &gateways {
            slowest = slowest.max(until_metric(gateway.admin, VERSION, f64::from(version)).await);
        }
        // Figures, not a timed test: the interval is 200 ms.
        println!("version {version}: every gateway within {slowest:?}");
    }
    for gateway in &gateways {
        verify_identity(&bed, gateway.address).await.unwrap();
    }
    let status = run(&["status", "--admin", &gateways[0].admin.to_string()]);
    assert!(
        status.contains("global configuration: version 4"),
        "{status}"
    );
}

#[tokio::test]
async fn a_gateway_with_a_directory_takes_the_shared_sections_from_it_only() {
    let bed = dev_bed().await;
    let directory = Directory::start(&bed).await;
    let config = directory.gateway_config(&bed, "gw");
    // No bundle fetched yet: check-config says where it would come from.
    let output = govbridge(&["check-config", path(&config)]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("no global configuration yet"),
        "{}",
        text(&output)
    );

    // A path out of the publication: its signature would not cover what
    // gateways load.
    let global = directory.publication.join("global.toml");
    let original = std::fs::read_to_string(&global).unwrap();
    let escaped = original.replacen(
        "client_ca = \"pki/members/ca.pem\"",
        "client_ca = \"/etc/ssl/certs/ca-certificates.crt\"",
        1,
    );
    assert_ne!(escaped, original);
    std::fs::write(&global, &escaped).unwrap();
    let refused = directory.try_publish(&[]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("trust.client_ca") && said.contains("not a file of the global configuration"),
        "{said}"
    );
    std::fs::write(&global, &original).unwrap();

    // A hidden policy file: the check reads it, the bundle would not
    // carry it (a forbid checked, never enforced).
    let hidden = directory.publication.join("policy/policies/.deny.cedar");
    std::fs::create_dir_all(hidden.parent().unwrap()).unwrap();
    std::fs::write(&hidden, "forbid (principal, action, resource);\n").unwrap();
    let refused = directory.try_publish(&[]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains(".deny.cedar: a hidden policy file"), "{said}");
    std::fs::remove_file(&hidden).unwrap();

    // Another instance's name over the bundle this url serves, and a
    // bundle written inside what it bundles: refused, saying why.
    let key = path(&directory.key);
    let publish = |instance: &str, out: &Path| {
        govbridge(&[
            "directory",
            "publish",
            "--from",
            path(&directory.publication),
            "--key",
            key,
            "--instance",
            instance,
            "--out",
            path(out),
        ])
    };
    let refused = publish("SM", &directory.bundle);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("holds instance `SN`'s configuration"),
        "{said}"
    );
    // (its directory not made yet, as publish would make it)
    let inside = directory.publication.join("bundles").join("bundle.json");
    let refused = publish("SN", &inside);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("is inside --from"), "{said}");
    assert!(!inside.parent().unwrap().exists());
    // (through a directory not made yet and back out of it)
    let back = directory.publication.join("new").join("..").join("b.json");
    let refused = publish("SN", &back);
    let said = text(&refused);
    assert!(said.contains("is inside --from"), "{said}");
    assert!(!directory.publication.join("b.json").exists());

    let mut own = std::fs::read_to_string(&config).unwrap();
    own.push_str("\n[purposes]\nKYC = \"here\"\n");
    std::fs::write(&config, &own).unwrap();
    let output = govbridge(&["check-config", path(&config)]);
    let said = text(&output);
    assert!(!output.status.success());
    let line = own.lines().position(|line| line == "[purposes]").unwrap() + 2;
    assert!(
        said.contains(&format!("gw.toml:{line}: purposes:"))
            && said.contains("comes from the instance's global configuration"),
        "{said}"
    );
}

// ---------------------------------------------------------------------------
// A service no govbridge build knows, published at runtime.

/// The land registry's proto, as its provider writes it.
const LAND_PROTO: &str = r#"syntax = "proto3";
package govbridge.land.v1;

import "google/api/annotations.proto";
import "govbridge/options/v1/options.proto";

// The land registry: the parcels a person owns.
service LandRegistry {
  rpc GetParcels(GetParcelsRequest) returns (GetParcelsResponse) {
    option (google.api.http) = { get: "/v1/persons/{owner_nin}/parcels" };
  }
}

message GetParcelsRequest {
  string owner_nin = 1 [(govbridge.options.v1.data_subject) = true];
}

message GetParcelsResponse {
  repeated string parcels = 1;
}
"#;
const LAND_SERVICE: &str = "govbridge.land.v1.LandRegistry";
const GET_PARCELS: &str = "/govbridge.land.v1.LandRegistry/GetParcels";
const LAND_PROVIDER: &str = "SN/GOV/ANCT/land-registry";

/// The messages, as the provider's and the bank's generated code would
/// declare them.
#[derive(Clone, PartialEq, prost::Message)]
struct GetParcelsRequest {
    #[prost(string, tag = "1")]
    owner_nin: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetParcelsResponse {
    #[prost(string, repeated, tag = "1")]
    parcels: Vec<String>,
}

/// The land registry's backend: answers GetParcels and remembers whose
/// parcels it was asked for.
#[derive(Debug, Clone, Default)]
struct LandRegistry {
    owners: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl tonic::server::UnaryService<GetParcelsRequest> for LandRegistry {
    type Response = GetParcelsResponse;
    type Future = std::future::Ready<Result<tonic::Response<GetParcelsResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<GetParcelsRequest>) -> Self::Future {
        let owner = request.into_inner().owner_nin;
        self.owners.lock().unwrap().push(owner.clone());
        std::future::ready(Ok(tonic::Response::new(GetParcelsResponse {
            parcels: vec![format!("DK-{owner}-001")],
        })))
    }
}

/// Serves `registry` over mutual TLS with a certificate naming the land
/// registry, issued by the bed's CA; returns its address.
async fn serve_land_registry(bed: &Bed, registry: LandRegistry) -> SocketAddr {
    use govbridge::identity::MemberId;
    use govbridge::identity::tls::ServerTls;
    use govbridge::net::{ListenerSettings, TlsListener, with_peer};
    use govbridge::pki::{CertificateAuthority, LeafRequest};
    let ca = CertificateAuthority::load(&bed.pki).unwrap();
    let mut request = LeafRequest::loopback_server("land-registry");
    request.member = Some(MemberId::parse(LAND_PROVIDER).unwrap());
    ca.issue(&request)
        .unwrap()
        .write(&bed.pki, "land-registry")
        .unwrap();
    let tls = ServerTls {
        certificate: bed.pki.join("land-registry.pem"),
        private_key: bed.pki.join("land-registry.key"),
        client_ca: bed.pki.join("ca.pem"),
        crls: Vec::new(),
        crl_grace: Duration::ZERO,
        partners: Vec::new(),
    };
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = tcp.local_addr().unwrap();
    let listener = TlsListener::new(
        tcp,
        tls.listener_tls().unwrap(),
        ListenerSettings::backend(),
    );
    let service = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let registry = registry.clone();
        async move {
            let response = if request.uri().path() == GET_PARCELS {
                let codec =
                    tonic_prost::ProstCodec::<GetParcelsResponse, GetParcelsRequest>::default();
                tonic::server::Grpc::new(codec)
                    .unary(registry, request)
                    .await
            } else {
                tonic::Status::unimplemented("the land registry has one method").into_http()
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    tokio::spawn(listener.serve(
        move |peer| with_peer(peer, service.clone()),
        std::future::pending::<()>(),
    ));
    address
}

/// The proto compiled with its imports at test time, as `protoc
/// --descriptor_set_out --include_imports` would.
fn land_descriptor(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("land.proto"), LAND_PROTO).unwrap();
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut compiler = protox::Compiler::new([dir, protos.as_path()]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("land.proto").unwrap();
    compiler.encode_file_descriptor_set()
}

/// GetParcels of `owner` through `gateway`, by CBAO's credit subsystem for
/// credit scoring, with `consent` if given.
async fn get_parcels(
    bed: &Bed,
    gateway: SocketAddr,
    owner: &str,
    consent: Option<&govbridge::sandbox::Consent>,
) -> Result<GetParcelsResponse, tonic::Status> {
    let client = H2Client::connect(gateway, bed.member_tls("cbao-credit"))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(client);
    grpc.ready().await.unwrap();
    let mut request = declared(
        GetParcelsRequest {
            owner_nin: owner.to_owned(),
        },
        "CREDIT-SCORING",
    );
    if let Some(consent) = consent {
        request = consent.attach(request);
    }
    let codec = tonic_prost::ProstCodec::<GetParcelsRequest, GetParcelsResponse>::default();
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(GET_PARCELS),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_published_at_runtime_is_routed_authorized_bound_to_its_subject_and_logged() {
    let bed = dev_bed().await;
    let directory = Directory::start(&bed).await;
    let config = directory.gateway_config(&bed, "gw");
    let gateway = GatewayProcess::spawn_config(&bed, "gw", &config);
    let (owner, other) = (
        bed.data.citizens[0].nin.to_string(),
        bed.data.citizens[1].nin.to_string(),
    );
    let unknown = get_parcels(&bed, gateway.address, &owner, None)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented, "{unknown:?}");

    // The provider's backend, its proto compiled to a descriptor set, a
    // policy naming its method: published, with no rebuild or restart.
    let registry = LandRegistry::default();
    let backend = serve_land_registry(&bed, registry.clone()).await;
    let descriptor = land_descriptor(&bed.dir().join("land-proto"));
    let descriptors = directory.publication.join("descriptors");
    std::fs::create_dir_all(&descriptors).unwrap();
    std::fs::write(descriptors.join("land.binpb"), descriptor).unwrap();
    directory.append(&format!(
        "\n[members.\"{LAND_PROVIDER}\"]\nname = \"Agence nationale du cadastre\"\n\
         \n[providers.\"{LAND_PROVIDER}\"]\nendpoints = [\"https://{backend}\"]\n\
         \n[services.\"{LAND_SERVICE}\"]\nproviders = [\"{LAND_PROVIDER}\"]\n\
         descriptor = \"descriptors/land.binpb\"\n"
    ));
    let policy = format!(
        "// Banks read a borrower's parcels, with their consent.\n\
         @id(\"bank-credit-reads-parcels-with-consent\")\n\
         permit (\n  principal in Group::\"bank-credit\",\n  \
         action == Action::\"{GET_PARCELS}\",\n  \
         resource == Provider::\"{LAND_PROVIDER}\"\n)\n\
         when {{ context.purpose == \"CREDIT-SCORING\" && context.consent.verified }};\n"
    );
    let policies = directory.publication.join("policy/policies");
    // A policy naming a method no descriptor declares: the publication
    // fails, naming the file and line.
    let mistaken = policy.replace("/GetParcels", "/DeleteParcels");
    std::fs::write(policies.join("land.cedar"), mistaken).unwrap();
    let refused = directory.try_publish(&[]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("land.cedar:5"), "{said}");
    std::fs::write(policies.join("land.cedar"), policy).unwrap();
    directory.publish(&[]);
    until_metric(gateway.admin, VERSION, 2.0).await;

    // Authorized by its policy, which asks for consent.
    let refused = get_parcels(&bed, gateway.address, &owner, None)
        .await
        .unwrap_err();
    assert_eq!(bridge_error(&refused).as_deref(), Some("consent-missing"));
    let consent = bed
        .grant_consent(
            &ConsentGrant::new(&owner, "SN/COM/CBAO/credit", GET_PARCELS, "CREDIT-SCORING")
                .providers(&[LAND_PROVIDER]),
        )
        .await
        .unwrap();
    let answer = get_parcels(&bed, gateway.address, &owner, Some(&consent))
        .await
        .unwrap();
    assert_eq!(answer.parcels, [format!("DK-{owner}-001")]);

    // Bound to the person its data_subject field names.
    let elsewhere = get_parcels(&bed, gateway.address, &other, Some(&consent))
        .await
        .unwrap_err();
    assert_eq!(
        elsewhere.code(),
        tonic::Code::PermissionDenied,
        "{elsewhere:?}"
    );
    assert!(
        bridge_error(&elsewhere).is_some_and(|kind| kind.starts_with("consent-")),
        "{elsewhere:?}"
    );
    assert_eq!(
        *registry.owners.lock().unwrap(),
        std::slice::from_ref(&owner)
    );

    // Described by reflection to those who may call it.
    let client = H2Client::connect(gateway.address, bed.member_tls("cbao-credit"))
        .await
        .unwrap();
    let answers = reflect(
        client,
        vec![
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol(LAND_SERVICE.to_owned()),
        ],
    )
    .await;
    match &answers[0] {
        MessageResponse::ListServicesResponse(list) => {
            assert!(
                list.service
                    .iter()
                    .any(|service| service.name == LAND_SERVICE)
            );
        }
        other => panic!("{other:?}"),
    }
    match &answers[1] {
        MessageResponse::FileDescriptorResponse(files) => {
            let names: Vec<String> = files
                .file_descriptor_proto
                .iter()
                .map(|bytes| {
                    use prost::Message as _;
                    prost_types::FileDescriptorProto::decode(bytes.as_slice())
                        .unwrap()
                        .name()
                        .to_owned()
                })
                .collect();
            assert!(names.contains(&"land.proto".to_owned()), "{names:?}");
        }
        other => panic!("{other:?}"),
    }

    // Called in JSON on its annotated route, and described to the bank in
    // OpenAPI: from its descriptor alone, no rebuild.
    let tls = bed.member_tls("cbao-credit");
    let mut bank = JsonClient::connect(gateway.address, &tls, HttpVersion::Http1)
        .await
        .unwrap();
    let answer = bank
        .call(
            http::Method::GET,
            &format!("/v1/persons/{owner}/parcels"),
            &[
                ("bridge-purpose", "CREDIT-SCORING"),
                ("bridge-reason", "loan file 7"),
                ("bridge-user-id", "agent-3"),
                ("bridge-consent", &consent.artefact),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    assert_eq!(answer.json()["parcels"][0], format!("DK-{owner}-001"));
    let document = bank
        .call(http::Method::GET, "/openapi.json", &[], "")
        .await
        .unwrap()
        .json();
    let operation = &document["paths"]["/v1/persons/{owner_nin}/parcels"]["get"];
    assert_eq!(
        operation["operationId"], "LandRegistry_GetParcels",
        "{document}"
    );

    // In the exchange log, with its subject, like any call.
    let logged = run(&[
        "audit",
        "query",
        "--data",
        path(&gateway.data),
        "--method",
        GET_PARCELS,
        "--subject",
        &owner,
    ]);
    assert!(
        logged.contains(GET_PARCELS) && logged.contains(" OK "),
        "{logged}"
    );
}

// ---------------------------------------------------------------------------
// Backup and restore.

/// `govbridge restore` of `backup` for the gateway file `config`, checked
/// against `key`.
fn restore(backup: &Path, config: &Path, key: &Path) -> std::process::Output {
    govbridge(&[
        "restore",
        "--from",
        path(backup),
        "--config",
        path(config),
        "--key",
        path(key),
    ])
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Every file under `dir`.
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walkdir(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_is_checked_and_restored_elsewhere() {
    let bed = dev_bed().await;
    let directory = Directory::start(&bed).await;
    let config = directory.gateway_config(&bed, "gw");
    let gateway = GatewayProcess::spawn_config(&bed, "gw", &config);
    for _ in 0..5 {
        verify_identity(&bed, gateway.address).await.unwrap();
    }
    // What the gateway's witness cosigned last of a partner's log (as it
    // keeps it; any bytes do here), and a temporary file beside it.
    let witnessed = gateway.data.join("witness");
    std::fs::create_dir_all(&witnessed).unwrap();
    std::fs::write(witnessed.join("AZ.checkpoint"), "AZ's checkpoint\n").unwrap();
    std::fs::write(witnessed.join(".AZ.checkpoint.1.tmp"), "half").unwrap();
    // The cache of a partner's directory the gateway follows (any bytes
    // do here): the version it runs is the floor of the next it takes.
    let followed = gateway.data.join("partners/AZ/0123abcd");
    std::fs::create_dir_all(followed.join("v3/policies")).unwrap();
    std::fs::write(followed.join("current"), "3\n").unwrap();
    std::fs::write(followed.join("v3/manifest.note"), "AZ's manifest\n").unwrap();
    std::fs::write(followed.join("v3/policies/az.cedar"), "// AZ\n").unwrap();
    std::fs::write(followed.join(".v4.1.tmp"), "half").unwrap();
    // What an archive run killed part-way leaves in the archives.
    let archives = gateway.data.join("archives");
    std::fs::create_dir_all(&archives).unwrap();
    let half_archive = ".records-000000000000-000000065536.jsonl.gz.1.tmp";
    std::fs::write(archives.join(half_archive), "half").unwrap();
    let backup = bed.dir().join("backup");
    // A gateway file whose name a backup cannot hold as it is (a space),
    // and the backup's directory given with a trailing slash.
    let spaced = config.with_file_name("gw prod.toml");
    std::fs::copy(&config, &spaced).unwrap();
    let said = run(&[
        "backup",
        "--config",
        path(&spaced),
        "--out",
        &format!("{}/", path(&backup)),
    ]);
    assert!(backup.join("MANIFEST").is_file(), "{said}");
    assert!(said.contains("signed by"), "{said}");
    // A backup's directory whose name is not UTF-8 is made as named, and
    // nothing else beside it.
    {
        use std::os::unix::ffi::OsStrExt as _;
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9");
        let out = bed.dir().join(odd).join("backup");
        let backed_up = std::process::Command::new(env!("CARGO_BIN_EXE_govbridge"))
            .args(["backup", "--config"])
            .arg(&spaced)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(backed_up.status.success(), "{backed_up:?}");
        assert!(out.join("MANIFEST").is_file());
        let made: Vec<std::ffi::OsString> = std::fs::read_dir(bed.dir())
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name())
            .filter(|name| name.as_bytes().starts_with(b"caf"))
            .collect();
        assert_eq!(made, [odd]);
        let within: Vec<_> = std::fs::read_dir(bed.dir().join(odd))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(within.len(), 1, "{within:?}");
    }
    // Private, as the data directory is.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode(&backup) & 0o077, 0, "{}", backup.display());
        for entry in walkdir(&backup) {
            assert_eq!(mode(&entry) & 0o077, 0, "{}", entry.display());
        }
    }
    let log_key = gateway.data.join("log-key.pub");

    // Another machine: its own certificates and the directory's key, and
    // the backup's gateway file written there by the restore.
    let machine = bed.dir().join("machine");
    copy_dir(&bed.pki, &machine.join("pki"));
    std::fs::copy(
        bed.dir().join("directory-key.pub"),
        machine.join("directory-key.pub"),
    )
    .unwrap();
    let restored = machine.join("gw.toml");

    // A backup changed after it was signed, or checked against another
    // log's key, is refused before anything is written.
    let tampered = bed.dir().join("backup-tampered");
    copy_dir(&backup, &tampered);
    let store = tampered.join("exchange-log/exchange-log.sqlite");
    let mut bytes = std::fs::read(&store).unwrap();
    bytes.push(0);
    std::fs::write(&store, bytes).unwrap();
    let refused = restore(&tampered, &restored, &log_key);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("altered"), "{}", text(&refused));
    let stranger = bed.dir().join("stranger-log.pub");
    let other = govbridge::note::SigningKey::generate("govbridge/gw").unwrap();
    std::fs::write(&stranger, format!("{}\n", other.verifier())).unwrap();
    let refused = restore(&backup, &restored, &stranger);
    assert!(!refused.status.success());
    assert!(!restored.exists());

    // A journal left beside where the log's store goes counts as a store:
    // SQLite would replay it into the copy.
    let data = machine.join("gw-data");
    std::fs::create_dir_all(&data).unwrap();
    let stale = data.join("exchange-log.sqlite-wal");
    std::fs::write(&stale, "an old log's frames").unwrap();
    let refused = restore(&backup, &restored, &log_key);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("sqlite-wal: exists"),
        "{}",
        text(&refused)
    );
    assert!(!restored.exists());
    std::fs::remove_file(&stale).unwrap();

    // The backup restores, its log verifies, and a second restore
    // overwrites nothing.
    let said = {
        let output = restore(&backup, &restored, &log_key);
        assert!(output.status.success(), "{}", text(&output));
        text(&output)
    };
    assert!(said.contains("exchange log verified"), "{said}");
    let verified = run(&[
        "audit",
        "verify",
        "--data",
        path(&data),
        "--key",
        path(&log_key),
    ]);
    assert!(
        verified.contains("10 records") || verified.contains("records: 10"),
        "{verified}"
    );
    assert!(data.join("directory/current").is_file());
    assert_eq!(
        std::fs::read_to_string(data.join("witness/AZ.checkpoint")).unwrap(),
        "AZ's checkpoint\n"
    );
    assert!(!data.join("witness/.AZ.checkpoint.1.tmp").exists());
    let followed = data.join("partners/AZ/0123abcd");
    assert_eq!(
        std::fs::read_to_string(followed.join("current")).unwrap(),
        "3\n"
    );
    assert_eq!(
        std::fs::read_to_string(followed.join("v3/policies/az.cedar")).unwrap(),
        "// AZ\n"
    );
    assert!(followed.join("v3/manifest.note").is_file());
    assert!(!followed.join(".v4.1.tmp").exists());
    let checked = run(&["check-config", path(&restored)]);
    assert!(
        checked.contains("global configuration: version 1"),
        "{checked}"
    );
    let again = restore(&backup, &restored, &log_key);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("never overwrites"),
        "{}",
        text(&again)
    );
}

// ---------------------------------------------------------------------------
// A fleet's global configuration, in its database.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_reads_its_global_configuration_from_its_database() {
    let bed = dev_bed().await;
    let cluster = govbridge::postgres::Cluster::start_temporary().unwrap();
    let url = cluster.url();
    let directory = Directory::init(
        &bed,
        &format!("enabled = false\n\n[store]\nurl = \"{url}\"\n"),
        &["--url", "store"],
    );
    let said = directory.publish(&["--to-store", &url]);
    assert!(said.contains("in the file and the database"), "{said}");
    let gateways: Vec<GatewayProcess> = ["node-a", "node-b"]
        .into_iter()
        .map(|name| GatewayProcess::spawn_config(&bed, name, &directory.gateway_config(&bed, name)))
        .collect();
    for gateway in &gateways {
        assert_eq!(metric(gateway.admin, VERSION).await, 1.0);
        verify_identity(&bed, gateway.address).await.unwrap();
    }

    directory.append("\n# publication 2\n");
    directory.publish(&["--to-store", &url]);
    for gateway in &gateways {
        until_metric(gateway.admin, VERSION, 2.0).await;
    }

    // A bundle changed on its way into the database (one byte of a file):
    // refused, as from any directory.
    directory.append("\n# publication 3\n");
    directory.publish(&[]);
    let mut wire: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&directory.bundle).unwrap()).unwrap();
    let encoded = wire["files"]["global.toml"].as_str().unwrap().to_owned();
    let flipped = if encoded.starts_with('A') { "B" } else { "A" };
    wire["files"]["global.toml"] = format!("{flipped}{}", &encoded[1..]).into();
    let tampered: String = serde_json::to_vec(&wire)
        .unwrap()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    cluster
        .psql(
            govbridge::postgres::ROLE,
            &format!(
                "INSERT INTO global_bundles (instance, version, bundle) \
                 VALUES ('SN', 3, decode('{tampered}', 'hex'))"
            ),
        )
        .unwrap();
    for gateway in &gateways {
        until_metric(gateway.admin, &refused("altered"), 2.0).await;
        assert_eq!(metric(gateway.admin, VERSION).await, 2.0);
    }
}

#[tokio::test]
async fn directory_init_keeps_nothing_a_gateway_could_not_load() {
    let bed = dev_bed().await;
    let dir = bed.dir();
    let whole = GatewayProcess::config(&bed, "whole", &[], "");
    let publication = dir.join("publication");
    let split = dir.join("split.toml");
    let init = |key: &str, source: &[&str]| {
        let mut args = vec!["directory", "init", "--config", path(&whole)];
        args.extend(["--publication", path(&publication), "--out", path(&split)]);
        args.extend(["--key", key]);
        args.extend(source);
        govbridge(&args)
    };
    let refused = |output: std::process::Output, naming: &str| {
        let said = text(&output);
        assert!(!output.status.success(), "{said}");
        assert!(
            said.contains("split into files a gateway cannot load, so none were kept")
                && said.contains(naming),
            "{said}"
        );
        assert!(!publication.exists() && !split.exists(), "{said}");
    };
    keygen(&dir.join("directory-key.pem"));
    let https = [
        "--url",
        "https://127.0.0.1:1/bundle.json",
        "--ca",
        "pki/ca.pem",
    ];
    // A fleet's database named as the source, in a file without [store].
    refused(
        init("directory-key.pub", &["--url", "store"]),
        "split.toml:4: directory.url",
    );
    // A verifier key, or a directory's CA, that is not there.
    refused(init("nowhere.pub", &https), "nowhere.pub");
    let no_ca = ["--url", https[1], "--ca", "nowhere-ca.pem"];
    refused(init("directory-key.pub", &no_ca), "nowhere-ca.pem");
    // A split a gateway can load is kept, as private as its source (which
    // may hold the fleet database's password).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&whole, std::fs::Permissions::from_mode(0o600)).unwrap();
    let kept = init("directory-key.pub", &https);
    assert!(kept.status.success(), "{}", text(&kept));
    assert!(publication.join("global.toml").exists() && split.exists());
    let mode = std::fs::metadata(&split).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");

    // [instance], what partners learn of this one, is the instance's: it
    // moves to the publication, its key with it.
    let with_instance = GatewayProcess::config(
        &bed,
        "with-instance",
        &[],
        "\n[instance]\ngateway = \"SN/GOV/GOVBRIDGE/gateway\"\nendpoints = \
         [\"https://127.0.0.1:8443\"]\nfederation_key = \"directory-key.pub\"\n",
    );
    let (publication, split) = (dir.join("publication-2"), dir.join("split-2.toml"));
    let mut args = vec!["directory", "init", "--config", path(&with_instance)];
    args.extend(["--publication", path(&publication), "--out", path(&split)]);
    args.extend(["--key", "directory-key.pub"]);
    args.extend(https);
    let kept = govbridge(&args);
    assert!(kept.status.success(), "{}", text(&kept));
    let global = std::fs::read_to_string(publication.join("global.toml")).unwrap();
    assert!(
        global.contains("[instance]")
            && global.contains("federation_key = \"instance/directory-key.pub\""),
        "{global}"
    );
    assert!(publication.join("instance/directory-key.pub").is_file());
    let own = std::fs::read_to_string(&split).unwrap();
    assert!(!own.contains("[instance]"), "{own}");
}
