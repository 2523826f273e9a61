//! A fleet: several gateway nodes sharing one PostgreSQL database, a real
//! server started by each test from the installed binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use govbridge::exchange_log::note::SigningKey;
use govbridge::postgres::Cluster;
use govbridge::proto::audit::v1::ListAccessesRequest;
use govbridge::proto::audit::v1::data_tracker_client::DataTrackerClient;
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
    let id = format!("node_id = \"{name}\"");
    GatewayProcess::spawn_config(
        bed,
        &name,
        &node_config(bed, cluster, &name, &[&id], exchange_log),
    )
}

/// The name every node's log goes by: one log for the fleet.
const ORIGIN: &str = "govbridge/test-fleet";

/// The configuration of fleet node `name`: `gateway` lines, `exchange_log`
/// lines, the fleet's log name and database, and the fleet log's key in
/// its data directory, as an operator copies it to every node.
fn node_config(
    bed: &Bed,
    cluster: &Cluster,
    name: &str,
    gateway: &[&str],
    exchange_log: &str,
) -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let key = bed.dir().join("fleet-log-key.pem");
    if !key.exists() {
        let signing = SigningKey::generate(ORIGIN).unwrap();
        govbridge::keys::write_file(&key, signing.to_pem().as_bytes(), 0o600).unwrap();
        let public = format!("{}\n", signing.verifier());
        std::fs::write(bed.dir().join("fleet-log-key.pub"), public).unwrap();
    }
    let data = bed.dir().join(format!("{name}-data"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data)
        .unwrap();
    std::fs::copy(&key, data.join("log-key.pem")).unwrap();
    let extra = format!(
        "origin = \"{ORIGIN}\"\n{exchange_log}\n[store]\nurl = \"{}\"\n",
        cluster.url()
    );
    GatewayProcess::config(bed, name, gateway, &extra)
}

/// `govbridge fleet status --json`, run with node 0's configuration.
fn fleet_status(bed: &Bed) -> serde_json::Value {
    fleet_status_of(&bed.dir().join("node-0.toml"))
}

/// `govbridge fleet status --json`, run with the node configuration
/// `config`.
fn fleet_status_of(config: &std::path::Path) -> serde_json::Value {
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
    let twin = node_config(&bed, &cluster, "twin", &["node_id = \"node-2\""], "");
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

    // Killed and started again at once, as a supervisor does: its
    // heartbeat is still fresh, so the start waits for it to go stale (it
    // does not move: no other node beats under this id), then takes its
    // id back.
    first.kill();
    let config = bed.dir().join("node-0.toml");
    let mut first = GatewayProcess::spawn_config(&bed, "node-0", &config);
    assert_eq!(states(&fleet_status(&bed))[0], row("node-0", "up", false));

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
    granted(bed, max_uses).await.artefact
}

/// [`grant`], the consent's whole record.
async fn granted(bed: &Bed, max_uses: u32) -> govbridge::proto::consent::v1::ConsentRecord {
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

/// `govbridge dev --nodes 3` starts a throwaway PostgreSQL cluster, the
/// agencies and three nodes sharing it: each node serves a call, `fleet
/// status` lists the three up, and SIGTERM stops everything cleanly.
#[tokio::test]
async fn dev_runs_a_fleet_of_three_nodes() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(["dev", "--nodes", "3", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let said = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut said = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.starts_with("Stop with Ctrl-C.");
            said.push(line);
            if done {
                break;
            }
        }
        // Drained from now on, so that the process never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        said
    })
    .await
    .unwrap();
    let addresses: Vec<SocketAddr> = said
        .iter()
        .filter_map(|line| line.split_once(" listening on https://"))
        .map(|(_, rest)| rest.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(addresses.len(), 3, "{said:#?}");

    let pki = dir.path().join("pki");
    let tls = govbridge::identity::tls::ClientTls::new(
        pki.join("ca.pem"),
        pki.join("member-cbao-kyc.pem"),
        pki.join("member-cbao-kyc.key"),
    )
    .client_config()
    .unwrap();
    for address in &addresses {
        let client = H2Client::connect(*address, tls.clone()).await.unwrap();
        let answer = CivilRegistryClient::new(client)
            .verify_identity(declared(
                govbridge::proto::civilregistry::v1::VerifyIdentityRequest {
                    nin: "1001199012345".to_owned(),
                    first_names: "Awa".to_owned(),
                    last_name: "Diop".to_owned(),
                    date_of_birth: "1990-01-01".to_owned(),
                },
                "KYC",
            ))
            .await;
        // The registry's answer, whatever it is, came through the node.
        if let Err(status) = &answer {
            assert_eq!(bridge_error(status), None, "{address}: {status:?}");
        }
    }
    let status = fleet_status_of(&dir.path().join("node-1.toml"));
    let up = states(&status)
        .iter()
        .filter(|(_, state, differs)| state == "up" && !differs)
        .count();
    assert_eq!(up, 3, "{status}");

    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "dev did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

/// A node whose database it cannot use does not start, and says why:
/// nothing answers at the address, the database does not exist, or its
/// schema is newer than the node knows.
#[tokio::test]
async fn a_node_that_cannot_use_its_database_says_why_it_does_not_start() {
    let cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let config = |name: &str, url: &str| {
        let id = format!("node_id = \"{name}\"");
        let path = node_config(&bed, &cluster, name, &[&id], "");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&cluster.url(), url);
        std::fs::write(&path, text).unwrap();
        path
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nobody = format!("postgres://govbridge@127.0.0.1:{port}/govbridge");
    let said = fails_to_start(&config("nobody", &nobody)).await;
    assert!(
        said.contains(&format!("the database {nobody} is unreachable")),
        "{said}"
    );

    let (server, _) = cluster
        .url()
        .rsplit_once('/')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    let missing = format!("{server}/nosuchdb");
    let said = fails_to_start(&config("missing", &missing)).await;
    assert!(
        said.contains(&missing) && said.contains("\"nosuchdb\" does not exist"),
        "{said}"
    );

    cluster
        .psql(
            "govbridge",
            "CREATE TABLE govbridge_schema (version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO govbridge_schema (version) VALUES (999)",
        )
        .unwrap();
    let said = fails_to_start(&config("behind", &cluster.url())).await;
    assert!(
        said.contains("has schema version 999, newer than this gateway's")
            && said.contains("upgrade the gateway"),
        "{said}"
    );
    bed.stop().await;
}

/// A consent revoked at MyGov is refused by every node within a second
/// (each follows the portal's feed).
#[tokio::test]
async fn a_revocation_reaches_every_node_within_a_second() {
    let cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let nodes = nodes(&bed, &cluster, 3);
    let nin = bed.data.citizens[0].nin.to_string();
    let granted = granted(&bed, 100).await;
    for node in &nodes {
        until_the_feed_is_fresh(&bed, node.address, &granted.artefact).await;
    }
    ConsentClient::new(bed.client("mygov").await)
        .revoke(declared(
            govbridge::proto::consent::v1::ConsentRef {
                nin,
                consent_id: granted.consent_id.clone(),
            },
            "CITIZEN-SELF-SERVICE",
        ))
        .await
        .unwrap();
    let revoked = Instant::now();
    for node in &nodes {
        loop {
            match clearance(&bed, node.address, &granted.artefact).await {
                Err(status) if bridge_error(&status).as_deref() == Some("consent-revoked") => break,
                other => {
                    assert!(
                        revoked.elapsed() < Duration::from_secs(1),
                        "{}: still {other:?} a second after the revocation",
                        node.address
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    drop(nodes);
    bed.stop().await;
}

/// Consent `id` for `max_uses` calls, valid for an hour.
fn consent_claims(id: &str, max_uses: u32) -> govbridge::consent::artefact::ConsentClaims {
    govbridge::consent::artefact::ConsentClaims {
        consent_id: id.to_owned(),
        subject: "1001199012345".to_owned(),
        consumer: "SN/COM/CBAO/credit".to_owned(),
        providers: vec!["SN/GOV/DGID/tax".to_owned()],
        methods: vec![CLEARANCE.to_owned()],
        purpose: "CREDIT-SCORING".to_owned(),
        not_before: 0,
        expires: govbridge::unix_time::now() + 3600,
        max_uses,
        issuer: "SN/GOV/MYGOV/app".to_owned(),
        issued_at: 0,
    }
}

/// The uses of `consent` counted in the fleet's database, when it can be
/// reached.
async fn counted(database: &govbridge::database::Database, consent: &str) -> Option<i32> {
    let consent = consent.to_owned();
    database
        .run(|client| async move {
            let row = client
                .query_one(
                    "SELECT counted FROM consent_uses WHERE consent = $1",
                    &[&consent],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
        .ok()
}

/// A node's consent ledger on `cluster`'s database, its feed fresh, and
/// that database.
async fn shared_ledger(
    cluster: &Cluster,
) -> (
    std::sync::Arc<govbridge::database::Database>,
    std::sync::Arc<govbridge::consent::ConsentLedger>,
) {
    let database = connect(cluster).await;
    let ledger = govbridge::consent::ConsentLedger::open_shared(
        Duration::from_secs(3600),
        std::sync::Arc::clone(&database),
    );
    ledger.heartbeat(0);
    (database, ledger)
}

/// Waits until the fleet counts `uses` of `consent`.
async fn until_counted(database: &govbridge::database::Database, consent: &str, uses: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while counted(database, consent).await != Some(uses) {
        assert!(
            Instant::now() < deadline,
            "{consent}: never {uses} uses counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The counts of consents expired a day ago are forgotten by a node
/// starting, a batch at a time and without waiting for any: a count
/// another session holds neither delays the start nor the others.
/// Counts still needed (unexpired, or expired within the day, in case a
/// clock is put back) stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_forgets_long_expired_counts_in_batches_without_waiting_for_locks() {
    let cluster = Cluster::start_temporary().unwrap();
    let database = connect(&cluster).await;
    let day = govbridge::consent::uses::FORGET_AFTER;
    cluster
        .psql(
            "govbridge",
            &format!(
                "INSERT INTO consent_uses (consent, counted, expires)
                 SELECT 'old-' || n, 1, extract(epoch FROM now())::bigint - {day} - n
                 FROM generate_series(1, 25000) AS n;
                 INSERT INTO consent_uses (consent, counted, expires) VALUES
                 ('held', 1, extract(epoch FROM now())::bigint - 3 * {day}),
                 ('expired-within-the-day', 2, extract(epoch FROM now())::bigint - 3600),
                 ('valid', 3, extract(epoch FROM now())::bigint + 3600);"
            ),
        )
        .unwrap();
    let holder = holding_the_count(&cluster, "held").await;

    // Open at once: the start waits for no forgetting (in one statement
    // before, it waited for the held count past the query's timeout, and
    // the node did not start).
    let _ledger = govbridge::consent::ConsentLedger::open_shared(
        Duration::from_secs(3600),
        std::sync::Arc::clone(&database),
    );
    let left = || {
        cluster
            .psql(
                "govbridge",
                "SELECT string_agg(consent, ',' ORDER BY consent) FROM consent_uses \
                 WHERE consent NOT LIKE 'old-%' OR consent = 'old-1'",
            )
            .unwrap()
    };
    until_answered(&cluster, "SELECT count(*) FROM consent_uses", "3").await;
    assert_eq!(left(), "expired-within-the-day,held,valid");

    // Once let go, the held count goes the next time; nothing else does.
    holder
        .run(|client| async move { client.batch_execute("COMMIT").await })
        .await
        .unwrap();
    let forgotten = govbridge::consent::uses::SharedUses::forget_expired(&database)
        .await
        .unwrap();
    assert_eq!(forgotten, 1);
    assert_eq!(left(), "expired-within-the-day,valid");
}

/// A consent issued again with a later expiry keeps its fleet count
/// until then, whether its uses were spent under the first artefact (the
/// second then refused) or under both: forgetting it a day after the
/// first expired would hand its uses back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_count_is_kept_until_the_latest_expiry_of_its_consents_artefacts() {
    use govbridge::consent::uses::{FORGET_AFTER, SharedUses};
    let cluster = Cluster::start_temporary().unwrap();
    let database = connect(&cluster).await;
    // The node forgets once as it opens: after that, nothing else does
    // behind the takes below for an hour.
    cluster
        .psql(
            "govbridge",
            "INSERT INTO consent_uses VALUES ('sentinel', 1, 0)",
        )
        .unwrap();
    let uses = SharedUses::open(std::sync::Arc::clone(&database));
    until_answered(&cluster, "SELECT count(*) FROM consent_uses", "0").await;
    let now = govbridge::unix_time::now();
    let long_ago = now - 2 * FORGET_AFTER;
    assert!(uses.take("exhausted", 1, long_ago).await.unwrap());
    assert!(!uses.take("exhausted", 1, now + 3_600).await.unwrap());
    // Its later expiry kept, on the node's own time.
    until_answered(
        &cluster,
        "SELECT expires FROM consent_uses WHERE consent = 'exhausted'",
        &(now + 3_600).to_string(),
    )
    .await;
    assert!(uses.take("used-under-both", 2, long_ago).await.unwrap());
    assert!(uses.take("used-under-both", 2, now + 3_600).await.unwrap());

    SharedUses::forget_expired(&database).await.unwrap();
    assert_eq!(counted(&database, "exhausted").await, Some(1));
    assert_eq!(counted(&database, "used-under-both").await, Some(2));
    assert!(!uses.take("exhausted", 1, now + 3_600).await.unwrap());
}

/// A statement the node has given up on (no answer within the query's
/// timeout) does not run on in the server, holding what it locked: the
/// server cancels it within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_node_gave_up_on_is_cancelled_by_the_server() {
    let cluster = Cluster::start_temporary().unwrap();
    let database = connect(&cluster).await;
    let holder = connect(&cluster).await;
    holder
        .run(|client| async move {
            client
                .batch_execute("BEGIN; LOCK TABLE nodes IN ACCESS EXCLUSIVE MODE")
                .await
        })
        .await
        .unwrap();
    let given_up = database
        .run(|client| async move { client.simple_query("SELECT count(*) FROM nodes").await })
        .await
        .unwrap_err()
        .to_string();
    assert!(given_up.contains("no answer within"), "{given_up}");

    until_answered(
        &cluster,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE query = 'SELECT count(*) FROM nodes' AND state = 'active'",
        "0",
    )
    .await;
    holder
        .run(|client| async move { client.batch_execute("COMMIT").await })
        .await
        .unwrap();
}

/// A node starting while another migrates waits for that migration
/// however long it takes: its session's statement timeout does not cut
/// the wait short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waits_for_another_nodes_migration_however_long_it_takes() {
    use govbridge::database::Database;
    const MIGRATION_LOCK: i64 = 0x676f_7662_7269_6467;
    let cluster = Cluster::start_temporary().unwrap();
    let store = govbridge::config::StoreConfig::parse(&cluster.url()).unwrap();
    let migrating = Database::connect(&store).await.unwrap();
    migrating
        .run(|client| async move {
            client
                .batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"
                ))
                .await
        })
        .await
        .unwrap();

    let starting = tokio::spawn(async move { Database::connect(&store).await.map(drop) });
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'";
    until_answered(&cluster, waiting, "1").await;
    // Past the sessions' 5 s statement timeout.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        cluster.psql("govbridge", waiting).unwrap(),
        "1",
        "{:?}",
        starting.is_finished()
    );
    migrating
        .run(|client| async move { client.batch_execute("COMMIT").await })
        .await
        .unwrap();
    starting.await.unwrap().unwrap();
}

/// A node whose migration waits for a lock another session holds gives
/// up within seconds and says why, changing nothing (the nodes running
/// go on), rather than hold every node's statements on the table queued
/// behind it; started again once the lock is gone, it migrates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_held_up_by_a_lock_fails_the_start_and_changes_nothing() {
    use govbridge::database::Database;
    let cluster = Cluster::start_temporary().unwrap();
    let store = govbridge::config::StoreConfig::parse(&cluster.url()).unwrap();
    let holder = Database::connect_at_schema(&store, 12).await.unwrap();
    holder
        .run(|client| async move {
            client
                .batch_execute("BEGIN; LOCK TABLE consent_uses IN ROW EXCLUSIVE MODE")
                .await
        })
        .await
        .unwrap();

    let refused = tokio::time::timeout(Duration::from_secs(30), Database::connect(&store))
        .await
        .expect("the migration waited for the lock")
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("to version 13 waited over 2s for a lock"),
        "{refused}"
    );
    let version = || {
        cluster
            .psql("govbridge", "SELECT max(version) FROM govbridge_schema")
            .unwrap()
    };
    assert_eq!(version(), "12");

    holder
        .run(|client| async move { client.batch_execute("COMMIT").await })
        .await
        .unwrap();
    drop(Database::connect(&store).await.unwrap());
    assert_eq!(version(), "13");
}

/// Waits until `sql` on `cluster`'s database answers `expected`.
async fn until_answered(cluster: &Cluster, sql: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = cluster.psql("govbridge", sql).unwrap();
        if answer == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {answer}, never {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A call refused after its use was taken, while the database is down,
/// gives the use back once the database is back: none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_use_given_back_while_the_database_is_down_is_given_back_once_it_is_up() {
    let mut cluster = Cluster::start_temporary().unwrap();
    let (database, ledger) = shared_ledger(&cluster).await;
    let claims = consent_claims("down-then-up", 1);
    let mut reservation = ledger.admit(&claims).unwrap();
    reservation.durable().await.unwrap();
    cluster.stop().unwrap();
    // The node has seen its connection go.
    let gone = database
        .run(|client| async move { client.simple_query("SELECT 1").await })
        .await;
    assert!(gone.is_err(), "{gone:?}");
    drop(reservation);
    // Its give-back, on another worker, meets the database down (it is
    // tried again a second later).
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.restart().unwrap();
    until_counted(&database, "down-then-up", 0).await;
    // The one use is there to take again.
    let mut again = ledger.admit(&claims).unwrap();
    again.durable().await.unwrap();
}

/// Another session of `cluster`'s database, in a transaction holding the
/// row of `consent`'s count (`COMMIT` lets it go).
async fn holding_the_count(
    cluster: &Cluster,
    consent: &str,
) -> std::sync::Arc<govbridge::database::Database> {
    let holder = connect(cluster).await;
    let consent = consent.to_owned();
    holder
        .run(|client| async move {
            client.execute("BEGIN", &[]).await?;
            client
                .execute(
                    "SELECT counted FROM consent_uses WHERE consent = $1 FOR UPDATE",
                    &[&consent],
                )
                .await
        })
        .await
        .unwrap();
    holder
}

/// A call that stops waiting while its use is being taken (its deadline,
/// here a lock held on the count) gives the use back once the take lands.
#[tokio::test]
async fn a_use_taken_after_its_call_stopped_waiting_is_given_back() {
    let cluster = Cluster::start_temporary().unwrap();
    let (database, ledger) = shared_ledger(&cluster).await;
    let claims = consent_claims("slow-take", 2);
    let mut first = ledger.admit(&claims).unwrap();
    first.durable().await.unwrap();
    first.spend();
    assert_eq!(counted(&database, "slow-take").await, Some(1));

    let holder = holding_the_count(&cluster, "slow-take").await;
    let mut second = ledger.admit(&claims).unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), second.durable()).await;
    assert!(waited.is_err(), "the take did not wait for the lock");
    drop(second);
    holder
        .run(|client| async move { client.batch_execute("COMMIT").await })
        .await
        .unwrap();
    until_counted(&database, "slow-take", 1).await;
}

/// A take held up by a lock on the count (held for longer than the
/// query timeout) fails on the server, its call refused: it does not
/// spend the use once the lock goes, with no call left to give it back.
#[tokio::test]
async fn a_take_held_up_by_a_lock_spends_no_use() {
    let cluster = Cluster::start_temporary().unwrap();
    let (_, ledger) = shared_ledger(&cluster).await;
    let claims = consent_claims("stuck-take", 2);
    let mut first = ledger.admit(&claims).unwrap();
    first.durable().await.unwrap();
    first.spend();

    let holder = holding_the_count(&cluster, "stuck-take").await;
    let mut second = ledger.admit(&claims).unwrap();
    let refused = second.durable().await.unwrap_err();
    assert!(
        refused.to_string().contains("lock timeout"),
        "{refused}: not the take's own bound"
    );
    drop(second);
    holder
        .run(|client| async move {
            client.batch_execute("COMMIT").await?;
            // Queued behind the take's statement, had it still been
            // waiting for the row: this reads the count after it.
            let row = client
                .query_one(
                    "SELECT counted FROM consent_uses WHERE consent = 'stuck-take' FOR UPDATE",
                    &[],
                )
                .await?;
            assert_eq!(row.get::<_, i32>(0), 1, "the refused call spent a use");
            Ok(())
        })
        .await
        .unwrap();
    // The use is there to take.
    let mut again = ledger.admit(&claims).unwrap();
    again.durable().await.unwrap();
}

/// A node that needs its database for no call (log off, no consent)
/// serves on while the database is down, and its `/readyz` says what it
/// cannot reach.
#[tokio::test]
async fn a_node_serving_without_its_database_says_it_cannot_reach_it() {
    let mut cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let config = node_config(
        &bed,
        &cluster,
        "node-0",
        &["node_id = \"node-0\""],
        "enabled = false",
    );
    let text = format!("\n{}", std::fs::read_to_string(&config).unwrap());
    let start = text
        .find("\n[consent]\n")
        .expect("the bed configures consent");
    let end = text[start + 1..]
        .find("\n[")
        .map_or(text.len(), |end| start + 1 + end);
    std::fs::write(&config, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let node = GatewayProcess::spawn_config(&bed, "node-0", &config);
    until_ready(node.admin, true).await;
    assert_eq!(
        support::admin_request(node.admin, "GET", "/readyz").await,
        (200, "ready\n".to_owned())
    );

    cluster.stop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = support::admin_request(node.admin, "GET", "/readyz").await;
        assert_eq!(status, 200, "{body}");
        if body.contains("the fleet's database is unreachable") {
            assert!(body.starts_with("ready\n"), "{body}");
            assert!(body.contains("calls are served"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never said so: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    verify_identity(&bed, node.address).await.unwrap();
    drop(node);
    bed.stop().await;
}

/// The database stopped: a consent-bound call is refused with
/// `UNAVAILABLE` and `consent-ledger-unavailable` (never forwarded on a
/// count nobody can check), and served again once the database is back,
/// without restarting the node. (The exchange log is off here: it is in
/// the same database, and would refuse the call first.)
#[tokio::test]
async fn consent_bound_calls_fail_closed_while_the_database_is_down() {
    let mut cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let node = node(&bed, &cluster, 0, "enabled = false");
    let artefact = grant(&bed, 100).await;
    until_the_feed_is_fresh(&bed, node.address, &artefact).await;

    support::wait_for_metric(node.admin, "govbridge_fleet_database_reachable", |up| {
        up == 1.0
    })
    .await;
    let round_trip =
        support::metric(node.admin, "govbridge_fleet_database_heartbeat_seconds").await;
    assert!(round_trip > 0.0 && round_trip < 5.0, "{round_trip}");
    // The database's size, for the alert on its growth: an empty cluster's
    // database and the fleet's tables take some megabytes.
    support::wait_for_metric(node.admin, "govbridge_fleet_database_bytes", |bytes| {
        bytes > 1e6
    })
    .await;
    cluster.stop().unwrap();
    until_ready(node.admin, false).await;
    assert_eq!(
        support::metric(node.admin, "govbridge_fleet_database_reachable").await,
        0.0
    );
    // `govbridge status` says why, and fails, for a script to tell.
    let admin = node.admin.to_string();
    let status =
        tokio::task::spawn_blocking(move || support::govbridge(&["status", "--admin", &admin]))
            .await
            .unwrap();
    let said = support::text(&status);
    assert!(!status.status.success(), "{said}");
    assert!(
        said.contains("NOT READY") && said.contains("is not ready"),
        "{said}"
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
/// nodes, gets R in all (within 10 %), not R per node; its calls all
/// through one of the three, it gets R there; once two nodes leave, the
/// one left admits R by itself.
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

    // All of the member's calls through one node, as one client keeps one
    // connection: that node takes nearly the whole rate once the fleet
    // has heard of the demand: shares follow the closed epochs, two and
    // three seconds back, and grow once both have it.
    admitted_within(&bed, &nodes[..1], Duration::from_secs(5)).await;
    let admitted = admitted_within(&bed, &nodes[..1], window).await;
    eprintln!("three nodes, one called: {admitted} calls admitted in {window:?} at {RATE}/s");
    assert!(
        (expected * 0.9..=expected * 1.1 + 3.0).contains(&(admitted as f64)),
        "{admitted} calls admitted in {window:?} through one node of three, for {expected}"
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
/// connections to each, four callers on each connection: on a machine
/// busy with other tests, calls slow to a few hundred milliseconds, and
/// fewer callers would ask for less than the rate) for `window`; returns
/// the calls admitted (the others are refused as `rate-limited`).
async fn admitted_within(bed: &Bed, nodes: &[GatewayProcess], window: Duration) -> usize {
    let mut clients = Vec::new();
    for node in nodes {
        for _ in 0..4 {
            let client = H2Client::connect(node.address, bed.member_tls("cbao-kyc"))
                .await
                .unwrap();
            let client = CivilRegistryClient::new(client);
            clients.extend(std::iter::repeat_n(client, 4));
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
            "origin = \"{ORIGIN}\"\n[store]\nurl = \"{}?sslmode=require\"\nca = \"{}\"\n",
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

/// The first citizen's identity checked by CBAO's KYC subsystem through
/// the node at `node`; returns the call's request id.
async fn verify_identity(bed: &Bed, node: SocketAddr) -> Result<String, tonic::Status> {
    let client = H2Client::connect(node, bed.member_tls("cbao-kyc"))
        .await
        .unwrap();
    let request = declared(support::verify_identity_of(bed, 0), "KYC");
    let response = CivilRegistryClient::new(client)
        .verify_identity(request)
        .await?;
    Ok(support::request_id_of(response.metadata()))
}

/// `govbridge audit <args>`, which must succeed; returns its output.
fn audit(args: &[&str]) -> String {
    let output = support::govbridge(&[&["audit"], args].concat());
    assert!(output.status.success(), "{}", support::text(&output));
    support::text(&output)
}

/// Pulls the fleet's log into `copy` (with node 0's configuration and the
/// fleet's key) until it holds `records`; returns what the last pull said.
async fn pull_until(bed: &Bed, copy: &std::path::Path, records: usize) -> String {
    let config = bed.dir().join("node-0.toml");
    let key = bed.dir().join("fleet-log-key.pub");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let said = audit(&[
            "pull",
            "--config",
            config.to_str().unwrap(),
            "--data",
            copy.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        if said.contains(&format!("holds {records} records")) {
            return said;
        }
        // Records are copied once a checkpoint covers them (one a second).
        assert!(Instant::now() < deadline, "{said}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The request ids of the calls in the fleet's log, with their phases in
/// log order and the nodes that committed them.
fn logged(cluster: &Cluster) -> Vec<(String, String, String)> {
    let rows = cluster
        .psql(
            govbridge::postgres::ROLE,
            "SELECT request_id, phase, node FROM log_records ORDER BY idx",
        )
        .unwrap();
    rows.lines()
        .map(|line| {
            let mut fields = line.split('|').map(str::to_owned);
            let mut next = || fields.next().unwrap();
            (next(), next(), next())
        })
        .collect()
}

/// Asserts that every call of `answered` has its decision, then its
/// outcome, in the fleet's log.
fn every_call_recorded(cluster: &Cluster, answered: &[String]) {
    let logged = logged(cluster);
    for id in answered {
        let phases: Vec<&str> = logged
            .iter()
            .filter(|(request, _, _)| request == id)
            .map(|(_, phase, _)| phase.as_str())
            .collect();
        assert_eq!(phases, ["decision", "outcome"], "call {id}");
    }
}

const EVERY_SECOND: &str = "checkpoint_interval = \"1s\"";

/// Three nodes, calls spread across them: one log, holding every call's
/// decision and outcome whichever node took it; the Data Tracker of any
/// node lists the citizen's accesses through every node; an auditor's
/// pulled copy verifies and proves a record with the fleet's key alone;
/// and a pull notices a record or a column edited in the database.
#[tokio::test]
async fn the_fleet_keeps_one_log_and_one_data_tracker() {
    let cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let lines = format!("{EVERY_SECOND}\ndata_tracker_clients = [\"SN/GOV/MYGOV/app\"]");
    let nodes: Vec<_> = (0..3)
        .map(|index| node(&bed, &cluster, index, &lines))
        .collect();
    let calls = nodes
        .iter()
        .flat_map(|node| std::iter::repeat_n(node.address, 10))
        .map(|node| {
            let bed = &bed;
            async move { verify_identity(bed, node).await.unwrap() }
        });
    let answered = support::join_all(calls).await;
    every_call_recorded(&cluster, &answered);
    // Each node's sealer covers every node's records, and says so.
    for node in &nodes {
        support::wait_for_metric(node.admin, "govbridge_fleet_log_unsealed_records", |n| {
            n == 0.0
        })
        .await;
    }
    let committers: std::collections::BTreeSet<String> = logged(&cluster)
        .into_iter()
        .map(|(_, _, node)| node)
        .collect();
    assert_eq!(
        committers,
        ["node-0", "node-1", "node-2"].map(String::from).into()
    );

    // Any node's Data Tracker sees the accesses made through all three.
    let nin = bed.data.citizens[0].nin.to_string();
    let tracker = H2Client::connect(nodes[2].address, bed.member_tls("mygov"))
        .await
        .unwrap();
    let accesses = DataTrackerClient::new(tracker)
        .list_accesses(ListAccessesRequest {
            subject: nin,
            since_unix: 0,
            limit: 0,
            before_index: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .accesses;
    assert_eq!(accesses.len(), answered.len(), "{accesses:?}");

    // An auditor's copy: verified, and a proof checks with the key alone.
    let copy = bed.dir().join("auditor-copy");
    pull_until(&bed, &copy, 2 * answered.len()).await;
    // Without --key: the one in the node's own directory, with a warning.
    let said = audit(&[
        "pull",
        "--config",
        bed.dir().join("node-0.toml").to_str().unwrap(),
        "--data",
        copy.to_str().unwrap(),
    ]);
    assert!(said.contains("warning: using"), "{said}");
    // Not into another log's copy, whose key stays as it was.
    let other = bed.dir().join("another-log");
    std::fs::create_dir_all(&other).unwrap();
    let other_key = other.join("log-key.pub");
    let stranger = govbridge::exchange_log::note::SigningKey::generate("elsewhere/log").unwrap();
    std::fs::write(&other_key, format!("{}\n", stranger.verifier())).unwrap();
    let refused = support::govbridge(&[
        "audit",
        "pull",
        "--config",
        bed.dir().join("node-0.toml").to_str().unwrap(),
        "--data",
        other.to_str().unwrap(),
        "--key",
        bed.dir().join("fleet-log-key.pub").to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(
        support::text(&refused).contains("holds the copy of another log"),
        "{}",
        support::text(&refused)
    );
    assert_eq!(
        std::fs::read_to_string(&other_key).unwrap(),
        format!("{}\n", stranger.verifier())
    );
    let key = bed.dir().join("fleet-log-key.pub");
    let (copy_dir, key) = (copy.to_str().unwrap(), key.to_str().unwrap());
    let verified = audit(&["verify", "--data", copy_dir, "--key", key]);
    assert!(
        verified.contains(&format!("{} records", 2 * answered.len())),
        "{verified}"
    );
    let proof = bed.dir().join("proof.json");
    audit(&[
        "prove",
        "--data",
        copy_dir,
        "--request-id",
        &answered[17],
        "--out",
        proof.to_str().unwrap(),
    ]);
    let checked = audit(&["check-proof", proof.to_str().unwrap(), "--key", key]);
    assert!(checked.contains(&answered[17]), "{checked}");

    // An operator follows the fleet's log as it grows: a call made
    // through node 1 after the tail started shows up in it.
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(["audit", "tail", "--follow", "--json", "--pull"])
        .arg(bed.dir().join("node-0.toml"))
        .args(["--key", key, "--data"])
        .arg(bed.dir().join("tail-copy"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let later = verify_identity(&bed, nodes[1].address).await.unwrap();
    let followed = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut said = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match seen.recv_timeout(left) {
                Ok(line) if line.contains(&later) => return Ok(line),
                Ok(line) => said.push(line),
                Err(_) => break,
            }
        }
        Err(said)
    })
    .await
    .unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    let line = followed.unwrap_or_else(|said| panic!("never followed: {said:?}"));
    assert!(line.starts_with('{'), "{line}");

    // Edits in the database: a fresh pull names them.
    let fresh = |name: &str| bed.dir().join(name);
    let pull = |into: &std::path::Path| {
        support::govbridge(&[
            "audit",
            "pull",
            "--config",
            bed.dir().join("node-0.toml").to_str().unwrap(),
            "--data",
            into.to_str().unwrap(),
            "--key",
            key,
        ])
    };
    let sql = |statement: &str| {
        cluster.psql(govbridge::postgres::ROLE, statement).unwrap();
    };
    // A tree node edited (what proofs are made of), pulled twice into the
    // same copy: named both times, for the copy never holds records of a
    // checkpoint it could not verify. Nodes are stored from level 8 (256
    // records) up: enough calls first for one, covered by a checkpoint.
    for _ in 0..128 {
        verify_identity(&bed, nodes[0].address).await.unwrap();
    }
    let records = 2 * (answered.len() + 1 + 128);
    assert!(records >= 256);
    pull_until(&bed, &fresh("before-node-edit"), records).await;
    sql("UPDATE log_nodes SET hash = sha256(hash) WHERE level = 8 AND idx = 0");
    for _ in 0..2 {
        let edited = pull(&fresh("after-node-edit"));
        assert!(!edited.status.success());
        assert!(
            support::text(&edited).contains("tree-node"),
            "{}",
            support::text(&edited)
        );
    }
    sql("UPDATE log_records SET subject = 'SN-0000000000000' WHERE idx = 7");
    let edited = pull(&fresh("after-column-edit"));
    assert!(!edited.status.success());
    assert!(
        support::text(&edited).contains("column-edited"),
        "{}",
        support::text(&edited)
    );
    // A leaf edited beside its record: the record no longer hashes to it.
    sql("UPDATE log_records SET leaf = sha256(leaf) WHERE idx = 5");
    let altered = pull(&fresh("after-leaf-edit"));
    assert!(!altered.status.success());
    assert!(
        support::text(&altered).contains("record-altered"),
        "{}",
        support::text(&altered)
    );
    sql("UPDATE log_records SET record = record || '\\x00'::bytea WHERE idx = 3");
    let altered = pull(&fresh("after-record-edit"));
    assert!(!altered.status.success());
    assert!(
        support::text(&altered).contains("record-altered"),
        "{}",
        support::text(&altered)
    );
    drop(nodes);
    bed.stop().await;
}

/// Calls through every node until `until`; returns the request ids of
/// the answered ones and the statuses of the refused ones.
async fn load(
    bed: &Bed,
    addresses: &[SocketAddr],
    until: Instant,
) -> (Vec<String>, Vec<tonic::Status>) {
    let mut callers = tokio::task::JoinSet::new();
    for &address in addresses {
        for _ in 0..4 {
            let bed_tls = bed.member_tls("cbao-kyc");
            let request = support::verify_identity_of(bed, 0);
            callers.spawn(async move {
                let mut answered = Vec::new();
                let mut refused = Vec::new();
                while Instant::now() < until {
                    // A new connection each time: a node that dies takes
                    // only its own calls with it.
                    let Ok(client) = H2Client::connect(address, bed_tls.clone()).await else {
                        continue;
                    };
                    match CivilRegistryClient::new(client)
                        .verify_identity(declared(request.clone(), "KYC"))
                        .await
                    {
                        Ok(response) => {
                            answered.push(support::request_id_of(response.metadata()));
                        }
                        Err(status) => refused.push(status),
                    }
                }
                (answered, refused)
            });
        }
    }
    let (mut answered, mut refused) = (Vec::new(), Vec::new());
    while let Some(done) = callers.join_next().await {
        let (yes, no) = done.unwrap();
        answered.extend(yes);
        refused.extend(no);
    }
    (answered, refused)
}

/// A node killed (SIGKILL) under load, in the middle of appends: the
/// others keep serving and appending to the same log, every answered call
/// has its records, and the log verifies.
#[tokio::test]
async fn a_node_killed_under_load_loses_no_acknowledged_record() {
    let cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let mut nodes: Vec<_> = (0..3)
        .map(|index| node(&bed, &cluster, index, EVERY_SECOND))
        .collect();
    let addresses: Vec<_> = nodes.iter().map(|node| node.address).collect();
    let survivors = [addresses[0], addresses[2]];
    let killing = async {
        // Killed once it has appended for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        while logged(&cluster)
            .iter()
            .filter(|row| row.2 == "node-1")
            .count()
            < 200
        {
            assert!(Instant::now() < deadline, "node-1 appends nothing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nodes[1].kill();
        Instant::now()
    };
    let until = Instant::now() + Duration::from_secs(4);
    let ((mut answered, refused), killed_at) = tokio::join!(load(&bed, &addresses, until), killing);
    assert!(killed_at < until, "the load ended before the kill");
    // After the kill, the others still serve.
    let (after, refused_after) =
        load(&bed, &survivors, Instant::now() + Duration::from_secs(1)).await;
    assert!(
        !after.is_empty() && refused_after.is_empty(),
        "{refused_after:?}"
    );
    answered.extend(after);
    // Only calls in flight on the killed node may fail, and as the
    // connection's loss, never as a refusal of the survivors.
    for status in &refused {
        assert_eq!(bridge_error(status), None, "{status:?}");
    }
    every_call_recorded(&cluster, &answered);
    let records = logged(&cluster).len();
    let copy = bed.dir().join("auditor-copy");
    pull_until(&bed, &copy, records).await;
    let key = bed.dir().join("fleet-log-key.pub");
    audit(&[
        "verify",
        "--data",
        copy.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    drop(nodes);
    bed.stop().await;
}

/// PostgreSQL stopped under load: every node refuses calls with
/// `UNAVAILABLE` and `exchange-log-unavailable` (nothing is forwarded
/// unlogged: every answered call has its records), and serves again by
/// itself once the database is back.
#[tokio::test]
async fn the_fleet_fails_closed_while_the_database_is_down() {
    let mut cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let nodes: Vec<_> = (0..2)
        .map(|index| node(&bed, &cluster, index, EVERY_SECOND))
        .collect();
    let addresses: Vec<_> = nodes.iter().map(|node| node.address).collect();
    let stopping = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.stop().unwrap();
    };
    let ((mut answered, refused), ()) = tokio::join!(
        load(&bed, &addresses, Instant::now() + Duration::from_secs(3)),
        stopping
    );
    assert!(!refused.is_empty(), "no call was refused");
    for status in &refused {
        // A call forwarded before the stop whose outcome then cannot be
        // recorded is withheld, saying so.
        let expected = match status.code() {
            tonic::Code::Internal => "exchange-log-outcome-unrecorded",
            _ => "exchange-log-unavailable",
        };
        assert_eq!(
            bridge_error(status).as_deref(),
            Some(expected),
            "{status:?}"
        );
    }
    assert!(
        refused
            .iter()
            .any(|status| status.code() == tonic::Code::Unavailable),
        "{refused:?}"
    );
    for node in &nodes {
        let refused = verify_identity(&bed, node.address).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    }

    cluster.restart().unwrap();
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match verify_identity(&bed, node.address).await {
                Ok(id) => {
                    answered.push(id);
                    break;
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    assert!(Instant::now() < deadline, "never served again: {status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    every_call_recorded(&cluster, &answered);
    // Nothing reached the backend unlogged: every call the registry
    // received, answered or not, has its decision in the log.
    let decided: std::collections::HashSet<String> = logged(&cluster)
        .into_iter()
        .filter(|(_, phase, _)| phase == "decision")
        .map(|(request, _, _)| request)
        .collect();
    let received = bed.fault("civil-registry", 0).received();
    assert!(received.len() >= answered.len(), "{}", received.len());
    for id in &received {
        assert!(decided.contains(id), "{id} reached the backend unlogged");
    }
    drop(nodes);
    bed.stop().await;
}

/// A partner's log (`govbridge/az`) of `n` records, as leaves.
fn partner_leaves(n: u64, salt: &str) -> Vec<govbridge::exchange_log::merkle::Hash> {
    use govbridge::exchange_log::merkle::leaf_hash;
    (0..n)
        .map(|leaf| leaf_hash(format!("{salt}{leaf}").as_bytes()))
        .collect()
}

/// The nodes of a tree of `leaves`, for proofs.
struct Tree(Vec<govbridge::exchange_log::merkle::Hash>);

impl Tree {
    fn root(&self, size: u64) -> govbridge::exchange_log::merkle::Hash {
        let mut frontier = govbridge::exchange_log::merkle::Frontier::default();
        for leaf in &self.0[..size as usize] {
            frontier.append(*leaf);
        }
        frontier.root()
    }
}

impl govbridge::exchange_log::merkle::Nodes for Tree {
    type Error = std::convert::Infallible;

    fn node(&self, level: u32, index: u64) -> Result<[u8; 32], Self::Error> {
        let width = 1u64 << level;
        let mut frontier = govbridge::exchange_log::merkle::Frontier::default();
        for leaf in &self.0[(index * width) as usize..((index + 1) * width) as usize] {
            frontier.append(*leaf);
        }
        Ok(frontier.root())
    }
}

/// Two nodes of a fleet each sent, at the same moment, one of two forks
/// of a partner's log: the fleet cosigns one and refuses the other as
/// inconsistent (each node alone would have cosigned its own), and a third
/// node, which was never sent anything, goes on from what the first
/// cosigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_cosigns_one_history_of_a_partners_log_whichever_node_is_sent_it() {
    use govbridge::exchange_log::merkle;
    use govbridge::exchange_log::witness::{Added, Book, Witness, WitnessError, Witnessed};
    use govbridge::note::Checkpoint;
    use std::sync::Arc;

    const ORIGIN: &str = "govbridge/az";
    let cluster = Cluster::start_temporary().unwrap();
    let store = govbridge::config::StoreConfig::parse(&cluster.url()).unwrap();
    let log = SigningKey::generate(ORIGIN).unwrap();
    let key = Arc::new(SigningKey::generate("SN-federation").unwrap());
    let logs = std::collections::HashMap::from([(
        "AZ".to_owned(),
        Witnessed {
            gateway: govbridge::identity::MemberId::parse("AZ/GOV/BRIDGE/gateway").unwrap(),
            log_key: log.verifier(),
        },
    )]);
    // Each node its own machine: its connection, book and data directory
    // (where a single node's witness keeps its state).
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for dir in &dirs {
        let database = govbridge::database::Database::connect(&store)
            .await
            .unwrap();
        let book = Arc::new(Book::default());
        book.share(database, tokio::runtime::Handle::current());
        nodes.push(Arc::new(Witness::new(
            dir.path(),
            Arc::clone(&key),
            logs.clone(),
            book,
        )));
    }
    let note = |size: u64, root: merkle::Hash| {
        Checkpoint {
            origin: ORIGIN.to_owned(),
            size,
            root,
        }
        .sign(&log)
    };
    let add = |node: &Arc<Witness>, old: u64, proof: Vec<merkle::Hash>, note: String| {
        let node = Arc::clone(node);
        tokio::task::spawn_blocking(move || node.add("AZ", old, &proof, &note, 1_000))
    };
    let real = Tree(partner_leaves(12, "real"));
    let fork = Tree(partner_leaves(12, "fork"));

    // Alone, either node would cosign either fork: it is their shared
    // state that makes them refuse the second.
    let (first, second) = tokio::join!(
        add(&nodes[0], 0, vec![], note(5, real.root(5))),
        add(&nodes[1], 0, vec![], note(5, fork.root(5)))
    );
    let outcomes = [first.unwrap(), second.unwrap()];
    let cosigned: Vec<usize> = (0..2)
        .filter(|node| matches!(outcomes[*node], Ok(Added::Cosigned(_))))
        .collect();
    assert_eq!(cosigned.len(), 1, "{outcomes:?}");
    let (kept, other) = if cosigned[0] == 0 {
        (&real, &fork)
    } else {
        (&fork, &real)
    };
    // The other node tells its sender what the fleet holds, as a witness
    // does; sent again from there, the fork is refused and alarmed.
    let loser = 1 - cosigned[0];
    assert_eq!(
        outcomes[loser].as_ref().unwrap(),
        &Added::Conflict { known: 5 }
    );
    let refused = add(&nodes[loser], 5, vec![], note(5, other.root(5)))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Err(error @ WitnessError::Inconsistent { .. }) if error.is_alarm()),
        "{refused:?}"
    );

    // The third node knows what was cosigned: it asks for a proof from
    // there, cosigns what extends it, and refuses what extends the other.
    let answer = add(&nodes[2], 0, vec![], note(12, kept.root(12)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, Added::Conflict { known: 5 });
    let proof = |tree: &Tree| merkle::consistency_proof(tree, 5, 12).unwrap().unwrap();
    let refused = add(&nodes[2], 5, proof(other), note(12, other.root(12)))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Err(error) if error.is_alarm()),
        "{refused:?}"
    );
    let cosigned = add(&nodes[2], 5, proof(kept), note(12, kept.root(12)))
        .await
        .unwrap();
    assert!(matches!(cosigned, Ok(Added::Cosigned(_))), "{cosigned:?}");
    // Kept in the database: every node sees it (the first, read again).
    let last = tokio::task::spawn_blocking({
        let node = Arc::clone(&nodes[0]);
        move || node.last("AZ")
    })
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!((last.size, last.root), (12, kept.root(12)));
}

/// `audit verify --witness` of the auditor's copy of the fleet's log,
/// pulled again first; whether it passed, and what it said.
fn verify_witnessed(
    bed: &Bed,
    copy: &std::path::Path,
    witness: &std::path::Path,
) -> (bool, String) {
    let config = bed.dir().join("node-0.toml");
    let key = bed.dir().join("fleet-log-key.pub");
    let (config, key, copy) = (
        config.to_str().unwrap(),
        key.to_str().unwrap(),
        copy.to_str().unwrap(),
    );
    let pulled = support::govbridge(&[
        "audit", "pull", "--config", config, "--data", copy, "--key", key,
    ]);
    if !pulled.status.success() {
        return (false, support::text(&pulled));
    }
    let verified = support::govbridge(&[
        "audit",
        "verify",
        "--data",
        copy,
        "--key",
        key,
        "--witness",
        witness.to_str().unwrap(),
    ]);
    (verified.status.success(), support::text(&verified))
}

/// Waits until the auditor's copy holds every record of the fleet's log
/// and `audit verify --witness` passes on it.
async fn until_witnessed(
    bed: &Bed,
    cluster: &Cluster,
    copy: &std::path::Path,
    witness: &std::path::Path,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let records = logged(cluster).len();
        let (ok, said) = verify_witnessed(bed, copy, witness);
        if ok && said.contains(&format!("  {records} records")) {
            return said;
        }
        assert!(Instant::now() < deadline, "never witnessed: {said}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Azerbaijan's instance beside a fleet of two nodes federated with it
/// (`witness = true` both ways, the nodes on `cluster`'s database).
struct FederatedFleet {
    partner: govbridge::partner::PartnerInstance,
    nodes: Vec<GatewayProcess>,
    /// The fleet's federation key.
    sn_key: std::path::PathBuf,
    _stop: govbridge::launch::ShutdownTrigger,
    _dir: tempfile::TempDir,
}

async fn federated_fleet(bed: &Bed, cluster: &Cluster) -> FederatedFleet {
    federated_fleet_with(bed, cluster, "").await
}

/// [`federated_fleet`], with `exchange_log` more settings of the nodes'
/// `[exchange_log]`.
async fn federated_fleet_with(bed: &Bed, cluster: &Cluster, exchange_log: &str) -> FederatedFleet {
    use govbridge::identity::MemberId;
    use govbridge::launch::Shutdown;
    use govbridge::partner::{self as federation, PartnerInstance};

    let dir = tempfile::tempdir().unwrap();
    let (stop, shutdown) = Shutdown::new();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let partner = PartnerInstance::start(dir.path(), loopback, loopback, support::SEED, &shutdown)
        .await
        .unwrap();
    let sn_key = bed.dir().join("SN-federation.key");
    federation::write_federation_key(&sn_key, "SN").unwrap();
    // Each node's file federated as `dev --federation` federates the dev
    // configuration: Azerbaijan's providers, witnessing both ways, its
    // receipts kept, licensed banks calling it for trade finance.
    let lines = format!(
        "{EVERY_SECOND}\n{exchange_log}\n\n[members.\"{AZ_BANK}\"]\nname = \"Kapital Bank\"\n"
    );
    let nodes: Vec<_> = (0..2)
        .map(|index| {
            let name = format!("node-{index}");
            let id = format!("node_id = \"{name}\"");
            let config = node_config(bed, cluster, &name, &[&id], &lines);
            let loaded = govbridge::config::Config::load(&config).unwrap();
            let federation = govbridge::dev::Federation {
                receipts: true,
                directory: None,
            };
            govbridge::dev::federate_config(
                &config, &loaded, &partner, &sn_key, federation, &config,
            )
            .unwrap();
            GatewayProcess::spawn_config(bed, &name, &config)
        })
        .collect();
    // Azerbaijan trusts the fleet's gateway, witnesses the fleet's log
    // and has its own witnessed by it, through node 0.
    partner
        .federate(&federation::Home {
            ca: bed.ca_certificate(),
            gateway: MemberId::parse("SN/GOV/GOVBRIDGE/gateway").unwrap(),
            endpoint: nodes[0].address,
            key: sn_key.clone(),
            log_key: Some(bed.dir().join("fleet-log-key.pub")),
            witnessed: true,
        })
        .unwrap();
    FederatedFleet {
        partner,
        nodes,
        sn_key,
        _stop: stop,
        _dir: dir,
    }
}

/// An Azerbaijani bank, registered in the fleet's instance.
const AZ_BANK: &str = "AZ/COM/KAPITAL/kyc";

/// Client TLS of Azerbaijan's gateway, to call the fleet's nodes as it.
fn as_partner_gateway(
    bed: &Bed,
    partner: &govbridge::partner::PartnerInstance,
) -> std::sync::Arc<rustls::ClientConfig> {
    let gateway = govbridge::identity::MemberId::parse(govbridge::partner::GATEWAY).unwrap();
    let (certificate, key) = partner.issue_member(&gateway, "gateway-test").unwrap();
    govbridge::identity::tls::ClientTls::new(bed.ca_certificate(), certificate, key)
        .client_config()
        .unwrap()
}

/// A fleet federated with a partner instance, witnessing each other's
/// logs: the partner cosigns the fleet's checkpoints, sent by one node at
/// a time and by another once that one dies; the fleet cosigns the
/// partner's, and every node refuses a fork of what one node cosigned.
#[tokio::test]
async fn a_fleet_and_its_partner_witness_each_other() {
    use govbridge::note::{Checkpoint, Verifier};
    use govbridge::proto::witness::v1::AddCheckpointRequest;
    use govbridge::proto::witness::v1::witness_client::WitnessClient;

    let cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    // Every part bound, for as long as the test runs (the partner's
    // directory and shutdown trigger too).
    let FederatedFleet {
        partner,
        mut nodes,
        sn_key,
        _stop,
        _dir,
    } = federated_fleet(&bed, &cluster).await;
    let partner_log = partner.exchange_log().unwrap().clone();

    // The fleet's log, written through both nodes, ends cosigned by
    // Azerbaijan: whichever node sends, the cosignature is the fleet's.
    for node in &nodes {
        for _ in 0..3 {
            verify_identity(&bed, node.address).await.unwrap();
        }
    }
    let copy = bed.dir().join("auditor-copy");
    let az_witness = partner.path("pki/federation.pub");
    let said = until_witnessed(&bed, &cluster, &copy, &az_witness).await;
    assert!(
        said.contains("the latest checkpoint is cosigned by AZ-federation"),
        "{said}"
    );

    // Azerbaijan's log, cosigned by the fleet (sent to node 0).
    let record = govbridge::exchange_log::ExchangeRecord {
        version: 1,
        request_id: "a-call-in-azerbaijan".to_owned(),
        ..Default::default()
    };
    partner_log.append(record).await.unwrap();
    partner_log.checkpoint().await.unwrap();
    let sn_witness = Verifier::read(&sn_key.with_extension("pub")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let cosigned = loop {
        let latest = partner_log.latest_checkpoint().unwrap();
        if sn_witness.cosigned(&latest.note).is_ok() {
            break latest;
        }
        assert!(Instant::now() < deadline, "the fleet never cosigned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let held = cluster
        .psql(
            govbridge::postgres::ROLE,
            "SELECT size FROM witness_checkpoints WHERE instance = 'AZ'",
        )
        .unwrap();
    assert_eq!(held.trim(), cosigned.size.to_string());

    // Node 1 was never sent Azerbaijan's checkpoints, yet refuses a fork
    // of the one node 0 cosigned: the fleet's nodes witness as one.
    let az_log_key = SigningKey::read(&partner_log.dir().join("log-key.pem")).unwrap();
    let forged = Checkpoint {
        origin: az_log_key.name().to_owned(),
        size: cosigned.size,
        root: [7; 32],
    }
    .sign(&az_log_key);
    let tls = as_partner_gateway(&bed, &partner);
    let channel = govbridge::net::client::Channel::connect(nodes[1].address, "localhost", tls)
        .await
        .unwrap();
    let refused = WitnessClient::new(channel)
        .add_checkpoint(AddCheckpointRequest {
            old_size: cosigned.size,
            consistency: vec![],
            checkpoint: forged,
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("not consistent"), "{refused:?}");

    // The node sending the fleet's checkpoints dies: the other takes the
    // sending over, and the records after the death end cosigned too.
    let sender = cluster
        .psql(
            govbridge::postgres::ROLE,
            "SELECT node FROM log_witness_sender",
        )
        .unwrap();
    let (dead, survivor) = if sender.trim() == "node-0" {
        (0, 1)
    } else {
        (1, 0)
    };
    nodes[dead].kill();
    for _ in 0..3 {
        verify_identity(&bed, nodes[survivor].address)
            .await
            .unwrap();
    }
    let said = until_witnessed(&bed, &cluster, &copy, &az_witness).await;
    assert!(
        said.contains("the latest checkpoint is cosigned by AZ-federation"),
        "{said}"
    );
    let sender = cluster
        .psql(
            govbridge::postgres::ROLE,
            "SELECT node FROM log_witness_sender",
        )
        .unwrap();
    assert_eq!(sender.trim(), format!("node-{survivor}"));
    drop(nodes);
    bed.stop().await;
}

/// An idle fleet's latest checkpoint is cosigned again as it ages: the
/// node that sends it to the witness keeps the fresher cosignature in the
/// database, in the place of the older, and every node serves it.
#[tokio::test]
async fn an_idle_fleet_has_its_latest_checkpoint_cosigned_again() {
    use govbridge::note::Verifier;
    use govbridge::proto::audit::v1::GetCheckpointRequest;
    use govbridge::proto::audit::v1::exchange_log_client::ExchangeLogClient;

    let cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let fleet = federated_fleet_with(&bed, &cluster, "witness_refresh = \"1s\"").await;
    verify_identity(&bed, fleet.nodes[0].address).await.unwrap();
    let witness = Verifier::read(&fleet.partner.path("pki/federation.pub")).unwrap();
    let line = format!("\u{2014} {} ", witness.name());
    for node in &fleet.nodes {
        let client = H2Client::connect(node.address, bed.member_tls("cbao-kyc"))
            .await
            .unwrap();
        let mut log = ExchangeLogClient::new(client);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < 3 {
            // None until the first checkpoint is signed (`not-checkpointed`).
            let note = match log.get_checkpoint(GetCheckpointRequest {}).await {
                Ok(answer) => answer.into_inner().note,
                Err(status) if status.code() == tonic::Code::FailedPrecondition => String::new(),
                Err(status) => panic!("{status:?}"),
            };
            assert!(note.matches(&line).count() <= 1, "{note}");
            if let Ok(time) = witness.cosigned(&note)
                && seen.last() != Some(&time)
            {
                seen.push(time);
            }
            assert!(
                Instant::now() < deadline,
                "{} served cosignatures of {seen:?} only",
                node.address
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(seen.is_sorted(), "{seen:?}");
    }
    drop(fleet);
    bed.stop().await;
}

/// A partner's assertion is used once across the fleet: replayed to the
/// other node, it is refused as a replay there too.
#[tokio::test]
async fn a_partners_assertion_is_used_once_across_the_fleet() {
    use govbridge::federation::Assertion;
    use govbridge::identity::MemberId;

    let mut cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let fleet = federated_fleet(&bed, &cluster).await;
    let key = SigningKey::read(&fleet.partner.path("pki/federation.key")).unwrap();
    let verify = "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity";
    let request_id = "0b5e4c1e-3f0a-4d7e-9d0c-2a6f1c9e8b11";
    let seal = || {
        Assertion {
            from: "AZ".into(),
            to: "SN".into(),
            gateway: MemberId::parse(govbridge::partner::GATEWAY).unwrap(),
            caller: MemberId::parse(AZ_BANK).unwrap(),
            method: verify.into(),
            provider: MemberId::parse("SN/GOV/ANEC/civil-registry").unwrap(),
            request_id: request_id.into(),
            nonce: Assertion::nonce(),
            issued: govbridge::unix_time::now(),
            caller_not_after: None,
            purpose: Some("KYC".into()),
            reason: None,
            user_id: None,
        }
        .seal(&key)
    };
    let sealed = seal();
    let tls = as_partner_gateway(&bed, &fleet.partner);
    let call = |node: SocketAddr, sealed: String| {
        let tls = tls.clone();
        async move {
            let kyc = [("bridge-purpose", "KYC")];
            let answer =
                support::asserted_call(node, tls, verify, (sealed, request_id), &kyc).await;
            (
                support::header(&answer, "bridge-error"),
                support::header(&answer, "grpc-message"),
            )
        }
    };
    // Taken by node 0 (whatever its policies then say of the call)...
    let (error, message) = call(fleet.nodes[0].address, sealed.clone()).await;
    assert_ne!(error.as_deref(), Some("bad-assertion"), "{message:?}");
    // ...and refused as used by node 1, and by node 0 again.
    for node in [1, 0] {
        let (error, message) = call(fleet.nodes[node].address, sealed.clone()).await;
        assert_eq!(error.as_deref(), Some("bad-assertion"), "{message:?}");
        assert!(message.unwrap().contains("already used"));
    }
    // Without the database, no node can tell: a fresh assertion is
    // refused, not taken on trust (by the log, once it knows the
    // database is gone, or by the check of the nonce).
    cluster.stop().unwrap();
    let (error, message) = call(fleet.nodes[1].address, seal()).await;
    assert!(
        matches!(
            error.as_deref(),
            Some("replay-check-unavailable" | "exchange-log-unavailable")
        ),
        "{error:?} {message:?}"
    );
    drop(fleet);
    bed.stop().await;
}

/// A fleet node whose log is off still needs its database for its
/// partners' assertions (their nonces): with the database down, `/readyz`
/// says their calls are refused.
#[tokio::test]
async fn readyz_names_partners_calls_refused_without_the_database() {
    let mut cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let fleet = federated_fleet_with(&bed, &cluster, "enabled = false").await;
    until_ready(fleet.nodes[0].admin, true).await;
    cluster.stop().unwrap();
    until_ready(fleet.nodes[0].admin, false).await;
    let (_, body) = support::admin_request(fleet.nodes[0].admin, "GET", "/readyz").await;
    assert!(
        body.contains("calls from partner instances are refused"),
        "{body}"
    );
    drop(fleet);
    bed.stop().await;
}

/// Calls across the border through both nodes of a fleet: each node
/// keeps the partner's receipt of its calls in the fleet's database, and
/// the auditor's pulled copy checks every cross receipt in one place.
#[tokio::test]
async fn a_fleet_keeps_its_partners_receipts_in_one_place() {
    use govbridge::exchange_log::receipts::Receipts;
    use govbridge::proto::azbusiness::v1::GetCompanyRequest;
    use govbridge::proto::azbusiness::v1::company_registry_client::CompanyRegistryClient;

    let cluster = Cluster::start_temporary().unwrap();
    let bed = dev_bed().await;
    let fleet = federated_fleet(&bed, &cluster).await;
    let voen = fleet.partner.companies().companies()[0].voen.to_string();
    let mut request_ids = Vec::new();
    for node in &fleet.nodes {
        let client = H2Client::connect(node.address, bed.member_tls("cbao-kyc"))
            .await
            .unwrap();
        let request = declared(GetCompanyRequest { voen: voen.clone() }, "TRADE-FINANCE");
        let answer = CompanyRegistryClient::new(client)
            .get_company(request)
            .await
            .unwrap();
        let id = answer.metadata().get("bridge-request-id").unwrap();
        request_ids.push(id.to_str().unwrap().to_owned());
    }
    let copy = bed.dir().join("auditor-copy");
    let config = bed.dir().join("node-0.toml");
    let fleet_key = bed.dir().join("fleet-log-key.pub");
    let partner_key = fleet
        .partner
        .exchange_log()
        .unwrap()
        .dir()
        .join("log-key.pub");
    let federation_key = fleet.sn_key.with_extension("pub");
    let deadline = Instant::now() + Duration::from_secs(30);
    for request_id in &request_ids {
        loop {
            let pulled = support::govbridge(&[
                "audit",
                "pull",
                "--config",
                config.to_str().unwrap(),
                "--data",
                copy.to_str().unwrap(),
                "--key",
                fleet_key.to_str().unwrap(),
            ]);
            assert!(pulled.status.success(), "{}", support::text(&pulled));
            let checked = support::govbridge(&[
                "audit",
                "receipt",
                "--data",
                copy.to_str().unwrap(),
                "--request-id",
                request_id,
                "--partner-key",
                partner_key.to_str().unwrap(),
                "--key",
                fleet_key.to_str().unwrap(),
                "--federation-key",
                federation_key.to_str().unwrap(),
            ]);
            if checked.status.success() {
                assert!(support::text(&checked).contains("of AZ's log"));
                break;
            }
            // Until the receipt is fetched, and the call's records are
            // under a checkpoint the copy holds.
            assert!(Instant::now() < deadline, "{}", support::text(&checked));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Both in the copy, whichever node kept them.
    for request_id in &request_ids {
        assert_eq!(Receipts::of_request(&copy, request_id).unwrap().len(), 1);
    }
    assert!(!copy.join("../node-0-data/receipts.sqlite").exists());
    drop(fleet);
    bed.stop().await;
}

/// A gateway that witnessed a partner alone and joins a fleet brings what
/// it cosigned into the fleet's database; it is refused if the fleet is
/// behind it or holds another root, where the fleet could cosign a fork
/// of what the node cosigned.
#[tokio::test]
async fn a_node_joining_a_fleet_brings_what_its_witness_cosigned() {
    use govbridge::exchange_log::witness::join_fleet;
    use govbridge::note::Checkpoint;

    let cluster = Cluster::start_temporary().unwrap();
    let database = connect(&cluster).await;
    let log = SigningKey::generate("govbridge/az").unwrap();
    let logs = std::collections::HashMap::from([("AZ".to_owned(), log.verifier())]);
    let real = Tree(partner_leaves(12, "real"));
    let fork = Tree(partner_leaves(12, "fork"));
    // A node's witness directory holding AZ's checkpoint at `size`.
    let node = |tree: &Tree, size: u64| {
        let dir = tempfile::tempdir().unwrap();
        let note = Checkpoint {
            origin: "govbridge/az".to_owned(),
            size,
            root: tree.root(size),
        }
        .sign(&log);
        std::fs::write(dir.path().join("AZ.checkpoint"), note).unwrap();
        dir
    };
    let held = || {
        cluster
            .psql(
                govbridge::postgres::ROLE,
                "SELECT size FROM witness_checkpoints WHERE instance = 'AZ'",
            )
            .unwrap()
            .trim()
            .to_owned()
    };

    // The first brings its checkpoint; one behind the fleet joins as is.
    join_fleet(node(&real, 5).path(), &logs, &database)
        .await
        .unwrap();
    assert_eq!(held(), "5");
    join_fleet(node(&real, 3).path(), &logs, &database)
        .await
        .unwrap();
    assert_eq!(held(), "5");
    // Ahead of the fleet, or at its size with another root: refused.
    for (tree, size) in [(&real, 12), (&fork, 5)] {
        let error = join_fleet(node(tree, size).path(), &logs, &database)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("could cosign a fork"), "{error}");
    }
    assert_eq!(held(), "5");
    // No file: nothing to bring.
    join_fleet(tempfile::tempdir().unwrap().path(), &logs, &database)
        .await
        .unwrap();
}

/// A node that stops closes its connection to the database itself: the
/// server sees it go, where it used to stay open (held by what outlives
/// the node, a reload's file watcher for one) until the server went away
/// and the node reported it lost; and what still asks gets an error.
#[tokio::test]
async fn a_stopped_nodes_database_connection_is_closed_by_the_node() {
    let cluster = Cluster::start_temporary().unwrap();
    let database = connect(&cluster).await;
    let others = "SELECT count(*) FROM pg_stat_activity \
                  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
    let connections = || cluster.psql("govbridge", others).unwrap();
    assert_eq!(connections(), "1");
    database.close();
    let deadline = Instant::now() + Duration::from_secs(10);
    while connections() != "0" {
        assert!(Instant::now() < deadline, "the connection stays open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = database.nodes().await.unwrap_err().to_string();
    assert!(refused.contains("this node has stopped"), "{refused}");
}

/// A node that stops while it is dialling the database again keeps no
/// connection from that dial: the query that dialled fails as stopped,
/// and the connection closes.
#[tokio::test]
async fn a_connection_dialled_while_the_node_stops_is_not_kept() {
    let cluster = Cluster::start_temporary().unwrap();
    let relay = Relay::start(cluster.port()).await;
    let url = cluster.url().replace(
        &format!(":{}/", cluster.port()),
        &format!(":{}/", relay.port),
    );
    let store = govbridge::config::StoreConfig::parse(&url).unwrap();
    let database = govbridge::database::Database::connect(&store)
        .await
        .unwrap();
    database.nodes().await.unwrap();

    // The connection lost: the next query dials again, and that dial
    // waits at the relay.
    relay.hold();
    relay.cut();
    let deadline = Instant::now() + Duration::from_secs(10);
    while database.nodes().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the cut connection still answers"
        );
    }
    relay.forget_accepted().await;
    let dialling = tokio::spawn({
        let database = database.clone();
        async move { database.nodes().await }
    });
    relay.accepted().await;
    database.close();
    relay.release();

    let refused = dialling.await.unwrap().unwrap_err().to_string();
    assert!(refused.contains("this node has stopped"), "{refused}");
    let others = "SELECT count(*) FROM pg_stat_activity \
                  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.psql("govbridge", others).unwrap() != "0" {
        assert!(
            Instant::now() < deadline,
            "the connection dialled stays open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP relay to the database that can hold new connections, and cut
/// those it carries.
struct Relay {
    port: u16,
    gate: tokio::sync::watch::Sender<bool>,
    cut: tokio::sync::watch::Sender<u64>,
    accepted: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<()>>,
}

impl Relay {
    async fn start(to: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (gate, open) = tokio::sync::watch::channel(true);
        let (cut, cuts) = tokio::sync::watch::channel(0);
        let (accepted, accepts) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let _ = accepted.send(());
                let (mut open, mut cuts) = (open.clone(), cuts.clone());
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    if open.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            gate,
            cut,
            accepted: tokio::sync::Mutex::new(accepts),
        }
    }

    /// New connections wait.
    fn hold(&self) {
        self.gate.send_replace(false);
    }

    /// They go on.
    fn release(&self) {
        self.gate.send_replace(true);
    }

    /// The connections carried now are dropped.
    fn cut(&self) {
        self.cut.send_modify(|cuts| *cuts += 1);
    }

    /// Until one more connection is accepted.
    async fn accepted(&self) {
        self.accepted.lock().await.recv().await.unwrap();
    }

    /// The connections accepted so far are not waited for.
    async fn forget_accepted(&self) {
        let mut accepts = self.accepted.lock().await;
        while accepts.try_recv().is_ok() {}
    }
}

/// A connection to `cluster`'s database, its schema brought up to date.
async fn connect(cluster: &Cluster) -> std::sync::Arc<govbridge::database::Database> {
    let store = govbridge::config::StoreConfig::parse(&cluster.url()).unwrap();
    govbridge::database::Database::connect(&store)
        .await
        .unwrap()
}

/// The fleet's log as a node's writer appends to it, on `cluster`, a
/// checkpoint signed at every append.
async fn fleet_log(
    cluster: &Cluster,
    dir: &std::path::Path,
) -> govbridge::exchange_log::ExchangeLog {
    fleet_log_of(cluster, dir, "node-1").await
}

/// The same, for node `node` (`dir` holding the fleet's key).
async fn fleet_log_of(
    cluster: &Cluster,
    dir: &std::path::Path,
    node: &str,
) -> govbridge::exchange_log::ExchangeLog {
    let mut config = govbridge::config::ExchangeLogConfig::defaults(dir, "node-1");
    config.checkpoint_records = 1;
    fleet_log_with(cluster, config, node).await
}

/// The fleet's log as node `node`'s writer appends to it, configured by
/// `config`.
async fn fleet_log_with(
    cluster: &Cluster,
    config: govbridge::config::ExchangeLogConfig,
    node: &str,
) -> govbridge::exchange_log::ExchangeLog {
    let fleet = govbridge::exchange_log::FleetStore {
        writer: connect(cluster).await,
        reader: connect(cluster).await,
        node: node.to_owned(),
        runtime: tokio::runtime::Handle::current(),
    };
    tokio::task::spawn_blocking(move || {
        govbridge::exchange_log::ExchangeLog::open_fleet(&config, fleet)
    })
    .await
    .unwrap()
    .unwrap()
}

/// Makes each statement of `table`'s inserts take `seconds` more.
fn slow_inserts(cluster: &Cluster, table: &str, seconds: f64) {
    cluster
        .psql(
            "govbridge",
            &format!(
                "CREATE OR REPLACE FUNCTION slow_{table}() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$; \
                 CREATE OR REPLACE TRIGGER slow AFTER INSERT ON {table} \
                 FOR EACH STATEMENT EXECUTE FUNCTION slow_{table}();"
            ),
        )
        .unwrap();
}

/// A record of call `request_id` of CBAO's KYC desk.
fn record(request_id: &str) -> govbridge::exchange_log::ExchangeRecord {
    govbridge::exchange_log::ExchangeRecord {
        request_id: request_id.to_owned(),
        caller: "SN/COM/CBAO/kyc".to_owned(),
        ..Default::default()
    }
}

fn records_of(cluster: &Cluster, request_id: &str) -> String {
    let count = format!("SELECT count(*) FROM log_records WHERE request_id = '{request_id}'");
    cluster.psql("govbridge", &count).unwrap()
}

/// An append the node stops waiting for is not committed afterwards, and
/// a slow checkpoint does not make committed records look lost: a call is
/// refused only when its record is not in the log.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_append_is_refused_only_when_it_is_not_committed() {
    let cluster = Cluster::start_temporary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = fleet_log(&cluster, dir.path()).await;
    log.append(record("before")).await.unwrap();

    // Longer than the node waits (2 s): refused, and never committed.
    slow_inserts(&cluster, "log_records", 3.0);
    log.append(record("too-slow")).await.unwrap_err();
    let running = "SELECT count(*) FROM pg_stat_activity \
                   WHERE query LIKE '%log_append%' AND state = 'active' \
                   AND pid <> pg_backend_pid()";
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.psql("govbridge", running).unwrap() != "0" {
        assert!(Instant::now() < deadline, "the append still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(records_of(&cluster, "too-slow"), "0");

    // Each step within the wait, both together beyond it: the records are
    // committed, and their call goes on.
    slow_inserts(&cluster, "log_records", 1.2);
    slow_inserts(&cluster, "log_checkpoints", 1.2);
    log.append(record("slow-checkpoint"))
        .await
        .expect("a committed record refused for its checkpoint");
    assert_eq!(records_of(&cluster, "slow-checkpoint"), "1");
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
}

/// A record is on disk before its append resolves: PostgreSQL stopped at
/// once right after each append, losing what its WAL buffers held as a
/// crash would, keeps every record. The WAL writer is slowed and no
/// checkpoint is signed, so that only the append's own commit can have
/// flushed them. (It fails with a commit that leaves its flush to a
/// statement that writes nothing to the WAL, docs/benchmarks.md.)
#[tokio::test(flavor = "multi_thread")]
async fn an_answered_append_survives_an_immediate_stop() {
    let mut cluster = Cluster::start_temporary().unwrap();
    cluster
        .psql("govbridge", "ALTER SYSTEM SET wal_writer_delay = '10s'")
        .unwrap();
    cluster.restart().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        // No checkpoint, whose own synchronous commit would flush them.
        let mut config = govbridge::config::ExchangeLogConfig::defaults(dir.path(), "node-1");
        config.checkpoint_interval = Duration::from_secs(3600);
        config.checkpoint_records = u64::MAX;
        let log = fleet_log_with(&cluster, config, "node-1").await;
        let request_id = format!("answered-{round}");
        log.append(record(&request_id)).await.unwrap();
        cluster.stop().unwrap();
        cluster.restart().unwrap();
        assert_eq!(records_of(&cluster, &request_id), "1", "round {round}");
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap();
    }
}

/// A checkpoint the database did not take is due again: the records it
/// was to cover get one at the next interval, with no new call to bring
/// it.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_the_database_refused_is_signed_again() {
    let cluster = Cluster::start_temporary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = govbridge::config::ExchangeLogConfig::defaults(dir.path(), "node-1");
    config.checkpoint_interval = Duration::from_millis(300);
    config.checkpoint_records = 1;
    let log = fleet_log_with(&cluster, config, "node-1").await;
    cluster
        .psql(
            "govbridge",
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON log_checkpoints \
             FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .unwrap();
    // The record is committed, and its call goes on.
    assert_eq!(log.append(record("uncovered")).await.unwrap(), 0);
    let covered = "SELECT count(*) FROM log_checkpoints WHERE size >= 1";
    assert_eq!(cluster.psql("govbridge", covered).unwrap(), "0");
    cluster
        .psql("govbridge", "DROP TRIGGER refuse ON log_checkpoints")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.psql("govbridge", covered).unwrap() == "0" {
        assert!(Instant::now() < deadline, "no checkpoint covers the record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
}

/// A database that lost commits (put back to an earlier time: a restore,
/// a failover to a standby behind) holds a smaller log than the node saw:
/// the node refuses its calls, saying why, rather than give the lost
/// records' indexes to new ones and sign a fork, and goes on refusing.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_lost_commits_is_refused_not_forked() {
    let cluster = Cluster::start_temporary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = govbridge::config::ExchangeLogConfig::defaults(dir.path(), "node-1");
    config.checkpoint_interval = Duration::from_secs(3600);
    config.checkpoint_records = u64::MAX;
    let log = fleet_log_with(&cluster, config, "node-1").await;
    assert_eq!(log.append(record("kept")).await.unwrap(), 0);
    cluster
        .psql(
            "govbridge",
            "CREATE TABLE head_then AS SELECT * FROM log_head",
        )
        .unwrap();
    assert_eq!(log.append(record("lost-1")).await.unwrap(), 1);
    assert_eq!(log.append(record("lost-2")).await.unwrap(), 2);
    // The database as it was after the first record.
    cluster
        .psql(
            "govbridge",
            "DELETE FROM log_records WHERE idx >= 1; \
             UPDATE log_head SET size = earlier.size, frontier = earlier.frontier \
             FROM head_then AS earlier",
        )
        .unwrap();
    for _ in 0..2 {
        let refused = log.append(record("after")).await.unwrap_err().to_string();
        assert!(
            refused.contains("holds 1 records, and this node saw it hold 3")
                && refused.contains("lost commits"),
            "{refused}"
        );
    }
    assert!(!log.is_healthy());
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
}

/// Another node's appends are no lost commits: a node whose own view of
/// the log lags (it was failing while the other appended, and its probe
/// read the log since) appends after them.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_behind_the_others_appends_after_them() {
    let cluster = Cluster::start_temporary().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &std::path::Path, node: &str| {
        let mut config = govbridge::config::ExchangeLogConfig::defaults(dir, node);
        config.origin = "govbridge/fleet".to_owned();
        config
    };
    let first = fleet_log_with(&cluster, config(one.path(), "node-1"), "node-1").await;
    std::fs::create_dir_all(two.path().join("data")).unwrap();
    std::fs::copy(
        one.path().join("data/log-key.pem"),
        two.path().join("data/log-key.pem"),
    )
    .unwrap();
    let second = fleet_log_with(&cluster, config(two.path(), "node-2"), "node-2").await;
    assert_eq!(first.append(record("one")).await.unwrap(), 0);
    first.simulate_fault(Some(govbridge::exchange_log::StoreFault::ReadOnly));
    first.append(record("refused")).await.unwrap_err();
    for n in 1..=3 {
        assert_eq!(second.append(record("two")).await.unwrap(), n);
    }
    first.simulate_fault(None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first.is_healthy() {
        assert!(Instant::now() < deadline, "never writable again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.append(record("after")).await.unwrap(), 4);
    for log in [first, second] {
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap();
    }
}

/// The node's connections run read committed, which its queries are
/// written for, and commit durably (a consent's use taken stays taken
/// across a crash of the database), whatever the role's defaults.
#[tokio::test]
async fn the_fleet_runs_read_committed_and_durable_whatever_the_roles_defaults() {
    let cluster = Cluster::start_temporary().unwrap();
    for default in [
        "default_transaction_isolation = 'serializable'",
        "synchronous_commit = off",
    ] {
        cluster
            .psql("govbridge", &format!("ALTER ROLE govbridge SET {default}"))
            .unwrap();
    }
    let database = connect(&cluster).await;
    let (isolation, synchronous) = database
        .run(|client| async move {
            let row = client
                .query_one(
                    "SELECT current_setting('default_transaction_isolation'), \
                            current_setting('synchronous_commit')",
                    &[],
                )
                .await?;
            Ok((row.get::<_, String>(0), row.get::<_, String>(1)))
        })
        .await
        .unwrap();
    assert_eq!(isolation, "read committed");
    assert_eq!(synchronous, "on");
}

/// An auditor's pull of `cluster`'s log, signed as `log` signs, into
/// `copy`.
async fn pull(
    cluster: &Cluster,
    log: &govbridge::exchange_log::ExchangeLog,
    copy: &std::path::Path,
) -> govbridge::exchange_log::fleet::Pulled {
    let verifier = log.verifier().clone();
    let reader = govbridge::exchange_log::fleet::FleetReader::new(
        connect(cluster).await,
        tokio::runtime::Handle::current(),
    );
    let copy = copy.to_owned();
    tokio::task::spawn_blocking(move || {
        govbridge::exchange_log::fleet::pull(&reader, &copy, &verifier)
    })
    .await
    .unwrap()
    .unwrap()
}

/// `records` queued together on `log`; waits until all are committed.
async fn append_all(
    log: &govbridge::exchange_log::ExchangeLog,
    records: impl Iterator<Item = govbridge::exchange_log::ExchangeRecord>,
) {
    let appending: Vec<_> = records.map(|record| log.append(record)).collect();
    for append in appending {
        append.await.unwrap();
    }
}

/// Records queued together on `log`, each naming a citizen, every third a
/// second one; waits until all are committed.
async fn append_many(log: &govbridge::exchange_log::ExchangeLog, node: &str, count: usize) {
    let records = (0..count).map(|n| govbridge::exchange_log::ExchangeRecord {
        request_id: format!("{node}-{n}"),
        subject: format!("nin-{}", n % 7),
        more_subjects: if n % 3 == 0 {
            vec![format!("nin-{}", n % 5 + 10)]
        } else {
            Vec::new()
        },
        ..Default::default()
    });
    append_all(log, records).await;
}

/// A node appending alone sends the tree it grew and the database takes it
/// (its own growth, out of reach here, is not needed); two nodes appending
/// at once each find, now and then, that the other moved the head, and
/// the database grows their batches itself. Either way the auditor's copy
/// finds the stored nodes to be those the records give.
#[tokio::test(flavor = "multi_thread")]
async fn the_tree_a_node_grew_is_taken_only_from_the_head_it_grew_from() {
    const DATABASE_GROWS: &str = "log_append(text, bytea[], bytea[], text[], text[], \
         bigint[], text[], text[], text[], text[], text[], bigint[], bigint[], text[], bigint[], \
         text[])";
    let cluster = Cluster::start_temporary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let one = fleet_log_of(&cluster, dir.path(), "node-1").await;
    cluster
        .psql(
            "govbridge",
            &format!("ALTER FUNCTION {DATABASE_GROWS} RENAME TO away"),
        )
        .unwrap();
    append_many(&one, "alone", 700).await;
    cluster
        .psql("govbridge", "ALTER FUNCTION away RENAME TO log_append")
        .unwrap();

    // In turns: each node's batch then grows from a head it did not leave.
    let two = fleet_log_of(&cluster, dir.path(), "node-2").await;
    for turn in 0..10 {
        append_many(&one, &format!("one-{turn}"), 50).await;
        append_many(&two, &format!("two-{turn}"), 50).await;
    }
    // At once, contending for the head.
    let (first, second) = (one.clone(), two.clone());
    let running = [
        tokio::spawn(async move { append_many(&first, "one", 1_000).await }),
        tokio::spawn(async move { append_many(&second, "two", 1_000).await }),
    ];
    for node in running {
        node.await.unwrap();
    }

    let copy = tempfile::tempdir().unwrap();
    let pulled = pull(&cluster, &one, copy.path()).await;
    assert_eq!(pulled.problem, None);
    assert_eq!(pulled.records, 3_700);
    tokio::task::spawn_blocking(move || {
        one.close();
        two.close();
    })
    .await
    .unwrap();
}

/// `audit pull` reads the fleet's checkpoints a page at a time, and
/// copies every one of a log with more than a page of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_copies_a_log_of_many_checkpoints() {
    const APPENDS: u64 = 1_100;
    let cluster = Cluster::start_temporary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = fleet_log(&cluster, dir.path()).await;
    for n in 0..APPENDS {
        let record = govbridge::exchange_log::ExchangeRecord {
            request_id: format!("req-{n}"),
            ..Default::default()
        };
        log.append(record).await.unwrap();
    }
    let copy = tempfile::tempdir().unwrap();
    let pulled = pull(&cluster, &log, copy.path()).await;
    assert_eq!(pulled.problem, None);
    assert_eq!(pulled.records, APPENDS);
    // One checkpoint a record (`checkpoint_records = 1`).
    assert_eq!(pulled.checkpoints as u64, APPENDS);
    let copied = govbridge::exchange_log::Store::open_read_only(copy.path())
        .unwrap()
        .checkpoints()
        .unwrap();
    assert_eq!(copied.len() as u64, APPENDS);
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
}

/// A pull waits for the receipts being kept as it reads, so that its
/// cursor never passes over one that commits after one of a higher order.
#[tokio::test]
async fn a_pull_passes_over_no_receipt_committed_late() {
    let cluster = Cluster::start_temporary().unwrap();
    let node = connect(&cluster).await;
    let auditor = connect(&cluster).await;
    // A node's receipt, in a transaction not yet committed: it took its
    // order first.
    let (mut other, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let late = other.transaction().await.unwrap();
    late.execute(
        "INSERT INTO log_receipts (instance, idx, request_id, fetched_at, bundle) \
         VALUES ('AZ', 1, 'late', 0, '{}')",
        &[],
    )
    .await
    .unwrap();
    // Another node's, after it, committed.
    let receipt = ("AZ".to_owned(), 2, "early".to_owned(), "{}".to_owned());
    node.keep_receipts(&[receipt], 0).await.unwrap();

    let pulling = tokio::spawn(async move { auditor.receipts_after(0, 100).await });
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND query LIKE '%log_receipts_after%'";
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.psql("govbridge", waiting).unwrap() != "1" {
        assert!(Instant::now() < deadline, "the pull reads without waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    late.commit().await.unwrap();
    let pulled: Vec<String> = pulling
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|receipt| receipt.request_id)
        .collect();
    assert_eq!(pulled, ["late", "early"]);
}

/// A stream asking about several citizens through one node: each one's
/// Data Tracker on another node shows it, an auditor's copy verifies and
/// finds it by each, and a subject's row taken out of the database is
/// named by the next pull.
#[tokio::test]
async fn every_citizen_a_stream_names_is_found_across_the_fleet() {
    use govbridge::proto::tax::v1::GetDeclaredIncomeRequest;
    let cluster = Cluster::start_temporary().unwrap();
    let bed = Bed::builder().start().await;
    let lines = format!("{EVERY_SECOND}\ndata_tracker_clients = [\"SN/GOV/MYGOV/app\"]");
    let nodes: Vec<_> = (0..2)
        .map(|index| node(&bed, &cluster, index, &lines))
        .collect();
    let nins: Vec<String> = (0..3)
        .map(|n| bed.data.citizens[n].nin.to_string())
        .collect();
    let requests: Vec<_> = [0, 1, 2, 1]
        .map(|n| GetDeclaredIncomeRequest {
            nin: nins[n].clone(),
            fiscal_year: 2023,
        })
        .into();
    let credit = H2Client::connect(nodes[0].address, bed.member_tls("cbao-credit"))
        .await
        .unwrap();
    let mut answers = TaxAuthorityClient::new(credit)
        .stream_declared_income(declared(tokio_stream::iter(requests), "CREDIT-SCORING"))
        .await
        .unwrap()
        .into_inner();
    support::count_to_end(&mut answers).await;

    let tracker = H2Client::connect(nodes[1].address, bed.member_tls("mygov"))
        .await
        .unwrap();
    let mut tracker = DataTrackerClient::new(tracker);
    for nin in &nins {
        let accesses = tracker
            .list_accesses(ListAccessesRequest {
                subject: nin.clone(),
                since_unix: 0,
                limit: 0,
                before_index: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .accesses;
        let methods: Vec<&str> = accesses.iter().map(|a| a.method.as_str()).collect();
        assert_eq!(
            methods,
            ["/govbridge.tax.v1.TaxAuthority/StreamDeclaredIncome"],
            "{nin}"
        );
    }

    let copy = bed.dir().join("auditor-copy");
    pull_until(&bed, &copy, 2).await;
    let copy = copy.to_str().unwrap();
    let key = bed.dir().join("fleet-log-key.pub");
    let verified = audit(&["verify", "--data", copy, "--key", key.to_str().unwrap()]);
    assert!(verified.contains("2 records"), "{verified}");
    for nin in &nins[1..] {
        let found = audit(&["query", "--data", copy, "--subject", nin, "--json"]);
        assert_eq!(found.lines().count(), 1, "{found}");
        assert!(found.contains("StreamDeclaredIncome"), "{found}");
    }

    cluster
        .psql(
            govbridge::postgres::ROLE,
            &format!("DELETE FROM log_subjects WHERE subject = '{}'", nins[2]),
        )
        .unwrap();
    let edited = support::govbridge(&[
        "audit",
        "pull",
        "--config",
        bed.dir().join("node-0.toml").to_str().unwrap(),
        "--data",
        bed.dir().join("after-subject-edit").to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!edited.status.success());
    assert!(
        support::text(&edited).contains("lookup-edited"),
        "{}",
        support::text(&edited)
    );
    drop(nodes);
    bed.stop().await;
}

/// Records queued together on `log`, as calls leave them: by threes, a
/// call's decision and outcome (request id `{prefix}-{n}`) and another
/// call's refusal (`{prefix}-refused-{n}`), all about citizen `nin-{n % 7}`;
/// waits until all are committed.
async fn append_calls(log: &govbridge::exchange_log::ExchangeLog, prefix: &str, count: usize) {
    use govbridge::proto::audit::v1::Phase;
    let records = (0..count).map(|at| {
        let n = at / 3;
        let (request_id, phase, error_kind) = match at % 3 {
            0 => (format!("{prefix}-{n}"), Phase::Decision, ""),
            1 => (format!("{prefix}-{n}"), Phase::Outcome, ""),
            _ => (
                format!("{prefix}-refused-{n}"),
                Phase::Decision,
                "policy-denied",
            ),
        };
        govbridge::exchange_log::ExchangeRecord {
            request_id,
            phase: phase as i32,
            error_kind: error_kind.to_owned(),
            allowed: error_kind.is_empty(),
            caller: "SN/COM/CBAO/kyc".to_owned(),
            provider: "SN/GOV/ANEC/civil-registry".to_owned(),
            subject: format!("nin-{}", n % 7),
            completed_us: 1_000 + at as i64,
            ..Default::default()
        }
    });
    append_all(log, records).await;
}

/// The calls [`found`] looks up by request id: one of each batch, and a
/// refusal (a decision the Data Tracker shows, with no outcome after it).
const CALLS: [&str; 3] = ["early-10", "late-10", "early-refused-10"];

/// What the fleet's reader finds of citizen `nin-3` (all, and the newest
/// 50) and of [`CALLS`].
async fn found(
    log: &govbridge::exchange_log::ExchangeLog,
) -> (Vec<u64>, Vec<u64>, [Option<u64>; 3]) {
    let reader = log.reader().unwrap();
    tokio::task::spawn_blocking(move || {
        let page = |before, limit| -> Vec<u64> {
            let accesses = reader
                .accesses_to("nin-3", 0, before, i64::MAX, limit)
                .unwrap();
            accesses.iter().map(|record| record.index).collect()
        };
        let indexes = |limit| page(u64::MAX, limit);
        // Pages of 7, each below the oldest of the one before: the same.
        let mut paged: Vec<u64> = Vec::new();
        let mut before = u64::MAX;
        for _ in 0..1000 {
            let next = page(before, 7);
            paged.extend(&next);
            match next.last() {
                Some(oldest) if next.len() == 7 => before = *oldest,
                _ => break,
            }
        }
        assert_eq!(paged, indexes(usize::MAX));
        let call = |id: &str| {
            reader
                .last_record_of_request_for(id, "SN/COM/CBAO/kyc")
                .unwrap()
                .map(|record| record.index)
        };
        (indexes(usize::MAX), indexes(50), CALLS.map(call))
    })
    .await
    .unwrap()
}

/// What [`found`] must give, from a scan of the records themselves: the
/// records of `nin-3` the Data Tracker shows (outcomes and refusals),
/// newest first, the newest 50, and the last record of each of [`CALLS`].
fn truth(cluster: &Cluster) -> (Vec<u64>, Vec<u64>, [Option<u64>; 3]) {
    let sql = |query: &str| cluster.psql("govbridge", query).unwrap();
    let all: Vec<u64> = sql("SELECT idx FROM log_records WHERE subject = 'nin-3' \
         AND (phase = 'outcome' OR error_kind IS NOT NULL) ORDER BY idx DESC")
    .lines()
    .map(|line| line.parse().unwrap())
    .collect();
    let last = |id: &str| {
        let idx = sql(&format!(
            "SELECT max(idx) FROM log_records WHERE request_id = '{id}'"
        ));
        Some(idx.parse().unwrap())
    };
    let newest = all[..all.len().min(50)].to_vec();
    (all, newest, CALLS.map(last))
}

/// Waits for the node's sealer to seal the log up to `end`.
fn sealed_to(cluster: &Cluster, end: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster
        .psql("govbridge", "SELECT sealed FROM log_sealed")
        .unwrap()
        != end
    {
        assert!(Instant::now() < deadline, "never sealed to {end}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Data Tracker and lookups by request id find a record of the fleet's
/// log whether it is sealed (found through `log_lookups`) or not yet (read
/// directly), newest first across the two; `audit pull` finds every sealed
/// record's lookups, and names a record whose lookup was deleted.
#[tokio::test(flavor = "multi_thread")]
async fn records_are_found_sealed_or_not_and_a_lost_lookup_is_named() {
    let cluster = Cluster::start_temporary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = fleet_log(&cluster, dir.path()).await;
    let sql = |query: &str| cluster.psql("govbridge", query).unwrap();
    append_calls(&log, "early", 300).await;
    // The first batch sealed by the node's sealer; the second left
    // unsealed: the seal is held, and the sealer passes by.
    sealed_to(&cluster, "300");
    let holder = connect(&cluster).await;
    holder
        .run(|client| async move {
            client
                .batch_execute("BEGIN; SELECT 1 FROM log_sealed FOR UPDATE")
                .await
        })
        .await
        .unwrap();
    append_calls(&log, "late", 300).await;
    assert_eq!(sql("SELECT sealed FROM log_sealed"), "300");
    // The node's sealer, passing by, still says how far behind the seal is.
    let unsealed = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while log.unsealed() != Some(count) {
            assert!(Instant::now() < deadline, "{:?} unsealed", log.unsealed());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    unsealed(300);

    let truth = truth(&cluster);
    let (all, calls) = (truth.0.clone(), truth.2);
    assert_eq!(all.len(), 56);

    let half_sealed = found(&log).await;
    assert_eq!(half_sealed, truth);
    holder
        .run(|client| async move { client.batch_execute("ROLLBACK").await })
        .await
        .unwrap();
    sealed_to(&cluster, "600");
    unsealed(0);
    // A request id for each record, a subject for each that is shown.
    assert_eq!(sql("SELECT count(*) FROM log_lookups"), "1000");
    assert_eq!(found(&log).await, half_sealed);

    let copy = tempfile::tempdir().unwrap();
    let pulled = pull(&cluster, &log, copy.path()).await;
    assert_eq!(pulled.problem, None);
    assert_eq!(pulled.records, 600);
    sql(&format!(
        "DELETE FROM log_lookups WHERE key = log_lookup_key('r', 'late-10') AND idx = {}",
        calls[1].unwrap()
    ));
    let copy = tempfile::tempdir().unwrap();
    let problem = pull(&cluster, &log, copy.path()).await.problem.unwrap();
    assert_eq!(
        problem.kind,
        govbridge::exchange_log::verify::ProblemKind::LookupEdited
    );
    assert_eq!(Some(problem.index), calls[1]);
    // A lost subject lookup (of the newest access to `nin-3`) is named too.
    sql(&format!(
        "INSERT INTO log_lookups VALUES (log_lookup_key('r', 'late-10'), {})",
        calls[1].unwrap()
    ));
    sql(&format!(
        "DELETE FROM log_lookups WHERE key = log_lookup_key('s', 'nin-3') AND idx = {}",
        all[0]
    ));
    let copy = tempfile::tempdir().unwrap();
    let problem = pull(&cluster, &log, copy.path()).await.problem.unwrap();
    assert_eq!(
        problem.kind,
        govbridge::exchange_log::verify::ProblemKind::LookupEdited
    );
    assert_eq!(problem.index, all[0]);
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
}

/// A log sealed by nodes of schema 10 (lookups keyed by the values, a
/// subject for every record) is found whole once a node of schema 11 has
/// migrated the database: the migration seals every record again, under
/// the new keys, before any node reads it.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_sealed_under_schema_10_is_sealed_again_by_the_migration() {
    use govbridge::database::Database;
    let cluster = Cluster::start_temporary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sql = |query: &str| cluster.psql("govbridge", query).unwrap();
    let store = govbridge::config::StoreConfig::parse(&cluster.url()).unwrap();
    let at_10 = || async { Database::connect_at_schema(&store, 10).await.unwrap() };
    let fleet = govbridge::exchange_log::FleetStore {
        writer: at_10().await,
        reader: at_10().await,
        node: "node-1".to_owned(),
        runtime: tokio::runtime::Handle::current(),
    };
    let config = govbridge::config::ExchangeLogConfig::defaults(dir.path(), "node-1");
    let opening = config.clone();
    let log = tokio::task::spawn_blocking(move || {
        govbridge::exchange_log::ExchangeLog::open_fleet(&opening, fleet)
    })
    .await
    .unwrap()
    .unwrap();
    append_calls(&log, "early", 300).await;
    append_calls(&log, "late", 300).await;
    sealed_to(&cluster, "600");
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
    // Schema 10's lookups: a request id and a subject for every record.
    assert_eq!(
        sql("SELECT count(*) FROM log_lookups WHERE value LIKE 's%'"),
        "600"
    );

    let log = fleet_log(&cluster, dir.path()).await;
    // Migrated past 11, the one that seals again.
    assert_eq!(sql("SELECT max(version) > 10 FROM govbridge_schema"), "t");
    assert_eq!(sql("SELECT sealed FROM log_sealed"), "600");
    assert_eq!(sql("SELECT count(*) FROM log_lookups"), "1000");
    let truth = truth(&cluster);
    assert_eq!(found(&log).await, truth);
    let copy = tempfile::tempdir().unwrap();
    let pulled = pull(&cluster, &log, copy.path()).await;
    assert_eq!(pulled.problem, None);
    assert_eq!(pulled.records, 600);
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();

    // A record past the first segment (a copy of `late-10`'s outcome at
    // index 262,150, the head moved past it), sealed by the sealer's own
    // function: found through the second segment's lookups, by request id
    // and as the citizen's newest access.
    let late = truth.2[1].unwrap();
    sql(&format!(
        "INSERT INTO log_records (idx, phase, request_id, at_us, caller, provider, method, \
         purpose, subject, allowed, grpc_status, error_kind, concealed_until, node, record, leaf, \
         more_subjects) SELECT 262150, phase, 'far-1', at_us, caller, provider, method, purpose, \
         subject, allowed, grpc_status, error_kind, concealed_until, node, record, leaf, \
         more_subjects FROM log_records WHERE idx = {late}"
    ));
    sql("UPDATE log_head SET size = 262151");
    assert_eq!(sql("SELECT sealed FROM log_seal(1000000)"), "262151");
    let subject = sql(&format!(
        "SELECT subject FROM log_records WHERE idx = {late}"
    ));
    let reader = govbridge::exchange_log::fleet::FleetReader::new(
        connect(&cluster).await,
        tokio::runtime::Handle::current(),
    );
    let (far, newest) = tokio::task::spawn_blocking(move || {
        let far = reader
            .last_record_of_request_for("far-1", "SN/COM/CBAO/kyc")
            .unwrap()
            .map(|record| record.index);
        let newest = reader
            .accesses_to(&subject, 0, u64::MAX, i64::MAX, 1)
            .unwrap();
        (far, newest.first().map(|record| record.index))
    })
    .await
    .unwrap();
    assert_eq!((far, newest), (Some(262_150), Some(262_150)));

    // The segments of 2^18 records a lookup descends into: those holding
    // a sealed record, whatever the seal's place in the last.
    for (sealed, segments) in [(0, "{}"), (262_144, "{0}"), (262_145, "{0,1}")] {
        sql(&format!("UPDATE log_sealed SET sealed = {sealed}"));
        assert_eq!(sql("SELECT log_lookup_segments()"), segments);
    }
}
