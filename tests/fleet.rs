//! A fleet: several gateway nodes sharing one PostgreSQL database, a real
//! server started by each test from the installed binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use govbridge::postgres::Cluster;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::consent::v1::GrantRequest;
use govbridge::proto::consent::v1::consent_client::ConsentClient;
use govbridge::proto::tax::v1::GetTaxClearanceRequest;
use govbridge::proto::tax::v1::get_tax_clearance_request::Taxpayer;
use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::process::GatewayProcess;
use support::{Bed, H2Client, bridge_error, declared, dev_bed, with_header};

const CLEARANCE: &str = "/govbridge.tax.v1.TaxAuthority/GetTaxClearance";

/// `count` gateway nodes in front of the bed's agencies, sharing
/// `cluster`'s database.
fn nodes(bed: &Bed, cluster: &Cluster, count: usize) -> Vec<GatewayProcess> {
    (0..count)
        .map(|index| node(bed, cluster, index, ""))
        .collect()
}

/// Node `node-<index>`, with `exchange_log` lines added to its
/// `[exchange_log]`.
fn node(bed: &Bed, cluster: &Cluster, index: usize, exchange_log: &str) -> GatewayProcess {
    let name = format!("node-{index}");
    let extra = format!("{exchange_log}\n[store]\nurl = \"{}\"\n", cluster.url());
    let id = format!("node_id = \"{name}\"");
    GatewayProcess::spawn_with(bed, &name, &[&id], &extra)
}

/// `govbridge fleet status --json`, run with node 0's configuration.
fn fleet_status(bed: &Bed) -> serde_json::Value {
    let config = bed.dir().join("node-0.toml");
    let output = support::govbridge(&[
        "fleet",
        "status",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", support::text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The state of each node, by id, and whether it differs.
fn states(status: &serde_json::Value) -> Vec<(String, String, bool)> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            (
                node["id"].as_str().unwrap().to_owned(),
                node["state"].as_str().unwrap().to_owned(),
                node["differs"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Every node registers; `fleet status` lists them, flags the one whose
/// configuration differs, and sees a node stop cleanly and a node die.
#[tokio::test]
async fn nodes_register_and_fleet_status_flags_the_odd_one() {
    let cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let mut first = node(&bed, &cluster, 0, "");
    let mut second = node(&bed, &cluster, 1, "");
    let odd = node(
        &bed,
        &cluster,
        2,
        "data_tracker_clients = [\"SN/GOV/DGCPT/treasury\"]",
    );
    let row = |id: &str, state: &str, differs: bool| (id.to_owned(), state.to_owned(), differs);
    assert_eq!(
        states(&fleet_status(&bed)),
        [
            row("node-0", "up", false),
            row("node-1", "up", false),
            row("node-2", "up", true),
        ]
    );
    let status = fleet_status(&bed);
    assert_eq!(
        status["nodes"][0]["address"].as_str().unwrap(),
        first.address.to_string()
    );
    // A node that takes a live node's id is refused.
    let store = format!("\n[store]\nurl = \"{}\"\n", cluster.url());
    let twin = GatewayProcess::config(&bed, "twin", &["node_id = \"node-2\""], &store);
    let refused = fails_to_start(&twin).await;
    assert!(
        refused.contains("a node with id `node-2` is up"),
        "{refused}"
    );

    second.sigterm();
    assert!(second.exit_status(Duration::from_secs(30)).await.success());
    assert_eq!(
        states(&fleet_status(&bed))[1],
        row("node-1", "stopped", false)
    );

    // Killed: silent, then reported down after five seconds.
    first.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while states(&fleet_status(&bed))[0] != row("node-0", "down", false) {
        assert!(Instant::now() < deadline, "{:?}", fleet_status(&bed));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(odd);
    bed.stop().await;
}

/// MyGov grants CBAO's credit subsystem `max_uses` tax clearances of the
/// bed's first citizen; returns the artefact.
async fn grant(bed: &Bed, max_uses: u32) -> String {
    let nin = bed.data.citizens[0].nin.to_string();
    ConsentClient::new(bed.client("mygov").await)
        .grant(declared(
            GrantRequest {
                nin,
                consumer: "SN/COM/CBAO/credit".to_owned(),
                providers: vec!["SN/GOV/DGID/tax".to_owned()],
                methods: vec![CLEARANCE.to_owned()],
                purpose: "CREDIT-SCORING".to_owned(),
                not_before: 0,
                expires: 0,
                max_uses,
            },
            "CITIZEN-SELF-SERVICE",
        ))
        .await
        .unwrap()
        .into_inner()
        .artefact
}

/// The clearance under `artefact`, through the node at `node`.
async fn clearance(bed: &Bed, node: SocketAddr, artefact: &str) -> Result<(), tonic::Status> {
    clearance_within(bed, node, artefact, None).await
}

/// [`clearance`], giving up after `timeout` (its `grpc-timeout`).
async fn clearance_within(
    bed: &Bed,
    node: SocketAddr,
    artefact: &str,
    timeout: Option<Duration>,
) -> Result<(), tonic::Status> {
    let client = H2Client::connect(node, bed.member_tls("cbao-credit"))
        .await
        .unwrap();
    let request = declared(
        GetTaxClearanceRequest {
            taxpayer: Some(Taxpayer::SubjectNin(bed.data.citizens[0].nin.to_string())),
        },
        "CREDIT-SCORING",
    );
    let mut request = with_header(request, "bridge-consent", artefact);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    TaxAuthorityClient::new(client)
        .get_tax_clearance(request)
        .await
        .map(drop)
}

/// Calls through `node` until its consent feed has caught up (a new node
/// says `consent-status-unknown` until then).
async fn until_the_feed_is_fresh(bed: &Bed, node: SocketAddr, artefact: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match clearance(bed, node, artefact).await {
            Ok(()) => return,
            Err(status) if bridge_error(&status).as_deref() == Some("consent-status-unknown") => {
                assert!(Instant::now() < deadline, "the feed never caught up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

/// A consent with `max_uses = 3` used concurrently through three nodes:
/// three calls are answered in all, every other one is refused as
/// exhausted, on whichever node it came.
#[tokio::test]
async fn a_consent_is_used_at_most_max_uses_times_across_the_fleet() {
    let cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let nodes = nodes(&bed, &cluster, 3);
    let warm_up = grant(&bed, 100).await;
    for node in &nodes {
        until_the_feed_is_fresh(&bed, node.address, &warm_up).await;
    }

    let artefact = grant(&bed, 3).await;
    let calls = nodes
        .iter()
        .flat_map(|node| std::iter::repeat_n(node.address, 10))
        .map(|node| {
            let (bed, artefact) = (&bed, &artefact);
            async move { clearance(bed, node, artefact).await }
        });
    let outcomes = support::join_all(calls).await;
    let answered = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(answered, 3, "{outcomes:?}");
    for refused in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert_eq!(
            bridge_error(refused).as_deref(),
            Some("consent-exhausted"),
            "{refused:?}"
        );
    }
    // Spent for every node, also one that answered none of the three.
    for node in &nodes {
        let refused = clearance(&bed, node.address, &artefact).await.unwrap_err();
        assert_eq!(bridge_error(&refused).as_deref(), Some("consent-exhausted"));
    }
    drop(nodes);
    bed.stop().await;
}

/// A use taken in the database by a call that relays no answer (its
/// deadline passes while the backend is slow) is given back, once: of
/// `max_uses = 2`, one answered call and one that timed out leave one.
#[tokio::test]
async fn a_use_that_relays_no_answer_is_given_back_once() {
    let cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let node = nodes(&bed, &cluster, 1).pop().unwrap();
    let warm_up = grant(&bed, 100).await;
    until_the_feed_is_fresh(&bed, node.address, &warm_up).await;
    let artefact = grant(&bed, 2).await;
    clearance(&bed, node.address, &artefact).await.unwrap();

    // The tax authority answers partners after 3 s; the call gives up at
    // 300 ms, with the use taken and no answer relayed.
    bed.fault("tax", 0)
        .set_for_calls(govbridge::agencies::fault::Fault::delay(
            Duration::from_secs(3),
        ));
    let late = clearance_within(
        &bed,
        node.address,
        &artefact,
        Some(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert_eq!(late.code(), tonic::Code::DeadlineExceeded, "{late:?}");
    bed.fault("tax", 0).clear();

    // Given back (asynchronously): the second use comes back, and only it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(status) = clearance(&bed, node.address, &artefact).await {
        assert_eq!(bridge_error(&status).as_deref(), Some("consent-exhausted"));
        assert!(Instant::now() < deadline, "the use never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = clearance(&bed, node.address, &artefact).await.unwrap_err();
    assert_eq!(bridge_error(&refused).as_deref(), Some("consent-exhausted"));
    drop(node);
    bed.stop().await;
}

/// The database stopped: a consent-bound call is refused with
/// `UNAVAILABLE` and `consent-ledger-unavailable` (never forwarded on a
/// count nobody can check), and served again once the database is back,
/// without restarting the node.
#[tokio::test]
async fn consent_bound_calls_fail_closed_while_the_database_is_down() {
    let mut cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let node = nodes(&bed, &cluster, 1).pop().unwrap();
    let artefact = grant(&bed, 100).await;
    until_the_feed_is_fresh(&bed, node.address, &artefact).await;

    support::wait_for_metric(node.admin, "govbridge_fleet_database_reachable", |up| {
        up == 1.0
    })
    .await;
    let round_trip =
        support::metric(node.admin, "govbridge_fleet_database_heartbeat_seconds").await;
    assert!(round_trip > 0.0 && round_trip < 5.0, "{round_trip}");
    cluster.stop().unwrap();
    until_ready(node.admin, false).await;
    assert_eq!(
        support::metric(node.admin, "govbridge_fleet_database_reachable").await,
        0.0
    );
    let refused = clearance(&bed, node.address, &artefact).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        bridge_error(&refused).as_deref(),
        Some("consent-ledger-unavailable")
    );
    assert!(refused.message().contains("consent ledger"), "{refused:?}");

    // Back: the next dial after the node's one-second backoff succeeds.
    cluster.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(status) = clearance(&bed, node.address, &artefact).await {
        assert_eq!(
            bridge_error(&status).as_deref(),
            Some("consent-ledger-unavailable")
        );
        assert!(Instant::now() < deadline, "never served again: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_ready(node.admin, true).await;
    drop(node);
    bed.stop().await;
}

/// A member limited to R calls per second, its calls spread over three
/// nodes, gets R in all (within 10 %), not R per node; once two nodes
/// leave, the one left admits R by itself.
#[tokio::test]
async fn a_members_rate_holds_for_the_fleet_and_a_leaving_node_gives_its_share_back() {
    const RATE: u32 = 30;
    let cluster = Cluster::start_temporary().unwrap();
    let bed = Bed::builder()
        .dev_policies()
        .limits("[limits.members.\"SN/COM/CBAO/kyc\"]\nrequests_per_second = 30\nburst = 3\n")
        .start()
        .await;
    let mut nodes = nodes(&bed, &cluster, 3);
    for node in &nodes {
        support::wait_for_metric(node.admin, "govbridge_fleet_nodes_up", |up| up == 3.0).await;
    }
    let window = Duration::from_secs(3);
    let admitted = admitted_within(&bed, &nodes, window).await;
    let expected = f64::from(RATE) * window.as_secs_f64();
    eprintln!("three nodes: {admitted} calls admitted in {window:?} at {RATE}/s");
    // Each node's share of the burst (1) may come on top.
    assert!(
        (expected * 0.9..=expected * 1.1 + 3.0).contains(&(admitted as f64)),
        "{admitted} calls admitted in {window:?}, for {expected} at {RATE}/s"
    );

    // Two nodes stop: the last one takes the member's whole rate.
    for node in &mut nodes[1..] {
        node.sigterm();
        assert!(node.exit_status(Duration::from_secs(30)).await.success());
    }
    let last = &nodes[..1];
    support::wait_for_metric(last[0].admin, "govbridge_fleet_nodes_up", |up| up == 1.0).await;
    let admitted = admitted_within(&bed, last, window).await;
    eprintln!("one node left: {admitted} calls admitted in {window:?} at {RATE}/s");
    assert!(
        (expected * 0.9..=expected * 1.1 + 3.0).contains(&(admitted as f64)),
        "{admitted} calls admitted in {window:?} by one node, for {expected}"
    );
    drop(nodes);
    bed.stop().await;
}

/// CBAO's KYC subsystem calls as fast as it can through `nodes` (four
/// callers on each) for `window`; returns the calls admitted (the others
/// are refused as `rate-limited`).
async fn admitted_within(bed: &Bed, nodes: &[GatewayProcess], window: Duration) -> usize {
    let mut clients = Vec::new();
    for node in nodes {
        for _ in 0..4 {
            let client = H2Client::connect(node.address, bed.member_tls("cbao-kyc"))
                .await
                .unwrap();
            clients.push(CivilRegistryClient::new(client));
        }
    }
    let request = support::verify_identity_of(bed, 0);
    let until = Instant::now() + window;
    let mut callers = tokio::task::JoinSet::new();
    for mut registry in clients {
        let request = request.clone();
        callers.spawn(async move {
            let mut admitted = 0;
            while Instant::now() < until {
                match registry
                    .verify_identity(declared(request.clone(), "KYC"))
                    .await
                {
                    Ok(_) => admitted += 1,
                    Err(status) => {
                        assert_eq!(
                            bridge_error(&status).as_deref(),
                            Some("rate-limited"),
                            "{status:?}"
                        );
                        // As a well-behaved client: back off as told.
                        let pushback = status
                            .metadata()
                            .get("grpc-retry-pushback-ms")
                            .and_then(|value| value.to_str().ok()?.parse().ok())
                            .unwrap_or(10);
                        tokio::time::sleep(Duration::from_millis(pushback.min(50))).await;
                    }
                }
            }
            admitted
        });
    }
    let mut admitted = 0;
    while let Some(count) = callers.join_next().await {
        admitted += count.unwrap();
    }
    admitted
}

/// TLS to the database: with `sslmode=require` and the CA that signs the
/// server's certificate, a node connects and takes consent uses there;
/// with another CA it refuses to start, saying why.
#[tokio::test]
async fn the_database_is_reached_over_verified_tls() {
    use govbridge::pki::{CertificateAuthority, LeafRequest};
    let ca = CertificateAuthority::generate("fleet database CA").unwrap();
    let server = ca.issue(&LeafRequest::loopback_server("postgres")).unwrap();
    let cluster =
        Cluster::start_temporary_with_tls(&server.certificate_pem, &server.private_key_pem)
            .unwrap();
    let bed = dev_bed().await;
    let store = |ca_file: &std::path::Path| {
        format!(
            "\n[store]\nurl = \"{}?sslmode=require\"\nca = \"{}\"\n",
            cluster.url(),
            ca_file.display()
        )
    };
    let ca_file = bed.dir().join("database-ca.pem");
    std::fs::write(&ca_file, ca.certificate_pem()).unwrap();
    let node =
        GatewayProcess::spawn_with(&bed, "node-0", &["node_id = \"node-0\""], &store(&ca_file));
    let warm_up = grant(&bed, 100).await;
    until_the_feed_is_fresh(&bed, node.address, &warm_up).await;
    let artefact = grant(&bed, 1).await;
    clearance(&bed, node.address, &artefact).await.unwrap();
    let refused = clearance(&bed, node.address, &artefact).await.unwrap_err();
    assert_eq!(bridge_error(&refused).as_deref(), Some("consent-exhausted"));

    let stranger = CertificateAuthority::generate("another CA").unwrap();
    let stranger_file = bed.dir().join("another-ca.pem");
    std::fs::write(&stranger_file, stranger.certificate_pem()).unwrap();
    let config = GatewayProcess::config(
        &bed,
        "node-1",
        &["node_id = \"node-1\"", "listen = \"127.0.0.1:0\""],
        &store(&stranger_file),
    );
    let stderr = fails_to_start(&config).await;
    assert!(stderr.contains("store.url"), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    drop(node);
    bed.stop().await;
}

/// Runs `govbridge serve --config config`, which must fail within 30 s;
/// returns what it said.
async fn fails_to_start(config: &std::path::Path) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{} started", config.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Polls the node's `/readyz` until it says it is ready (`true`) or that
/// its database is unreachable (`false`).
async fn until_ready(admin: SocketAddr, ready: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = support::admin_request(admin, "GET", "/readyz").await;
        let done = if ready {
            status == 200
        } else {
            status == 503 && body.contains("the fleet's database is unreachable")
        };
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
