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

use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use support::process::GatewayProcess;
use support::{Bed, H2Client, bridge_error, declared, dev_bed, govbridge, metric, text};

const VERSION: &str = "govbridge_global_configuration_version{instance=\"SN\"}";

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
        let dir = bed.dir();
        let key = dir.join("directory-key.pem");
        run(&[
            "directory",
            "keygen",
            "--name",
            "SN-directory",
            "--out",
            path(&key),
        ]);
        let bundle = dir.join("bundle.json");
        let server = govbridge::global::http::Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            &bed.pki.join("gateway.pem"),
            &bed.pki.join("gateway.key"),
            &bundle,
        )
        .await
        .unwrap();
        let url = format!(
            "https://{}{}",
            server.local_addr().unwrap(),
            govbridge::global::http::BUNDLE_PATH
        );
        tokio::spawn(server.serve());
        let whole = GatewayProcess::config(bed, "whole", &[], "");
        let publication = dir.join("publication");
        run(&[
            "directory",
            "init",
            "--config",
            path(&whole),
            "--publication",
            path(&publication),
            "--out",
            path(&dir.join("split.toml")),
            "--url",
            &url,
            "--ca",
            "pki/ca.pem",
            "--key",
            "directory-key.pub",
            "--interval",
            "200ms",
        ]);
        let directory = Self {
            publication,
            key,
            bundle,
        };
        directory.publish(&[]);
        directory
    }

    /// `directory publish` of the publication directory, with `extra`
    /// arguments; returns its output.
    fn publish(&self, extra: &[&str]) -> String {
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
        run(&args)
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
    run(&[
        "directory",
        "keygen",
        "--name",
        "SN-directory",
        "--out",
        path(&stranger),
    ]);
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

    // A version the gateway cannot run (a policy that does not parse):
    // refused whole.
    std::fs::write(&directory.bundle, &version_2).unwrap();
    let broken = directory.publication.join("policy/policies/broken.cedar");
    std::fs::write(&broken, "permit(principal,").unwrap();
    directory.publish(&[]);
    until_metric(gateway.admin, &refused("invalid"), 2.0).await;
    std::fs::remove_file(&broken).unwrap();
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

    // Version 4, without the limit and valid for two seconds, is taken,
    // then expires: every call is refused, and /readyz says why, until a
    // newer one comes.
    std::fs::write(&directory.bundle, &version_3).unwrap();
    std::fs::write(directory.publication.join("global.toml"), &global_1).unwrap();
    directory.publish(&["--valid", "2s"]);
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

    directory.publish(&[]);
    until_metric(gateway.admin, VERSION, 5.0).await;
    verify_identity(&bed, gateway.address).await.unwrap();
    let (status, body) = support::admin_request(gateway.admin, "GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");
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
