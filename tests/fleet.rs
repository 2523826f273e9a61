//! A fleet: several gateway nodes sharing one PostgreSQL database, a real
//! server started by each test from the installed binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use govbridge::postgres::Cluster;
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
    let client = H2Client::connect(node, bed.member_tls("cbao-credit"))
        .await
        .unwrap();
    let request = declared(
        GetTaxClearanceRequest {
            taxpayer: Some(Taxpayer::SubjectNin(bed.data.citizens[0].nin.to_string())),
        },
        "CREDIT-SCORING",
    );
    TaxAuthorityClient::new(client)
        .get_tax_clearance(with_header(request, "bridge-consent", artefact))
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
    let outcomes = futures_join_all(calls).await;
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

    cluster.stop().unwrap();
    until_ready(node.admin, false).await;
    let refused = clearance(&bed, node.address, &artefact).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        bridge_error(&refused).as_deref(),
        Some("consent-ledger-unavailable")
    );
    assert!(refused.message().contains("consent ledger"), "{refused:?}");

    cluster.restart().unwrap();
    clearance(&bed, node.address, &artefact).await.unwrap();
    until_ready(node.admin, true).await;
    drop(node);
    bed.stop().await;
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

/// Runs futures concurrently on this task and collects their outputs.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(|future| Some(Box::pin(future))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}
