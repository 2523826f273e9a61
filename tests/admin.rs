//! The admin endpoint: metrics that count calls exactly and follow the
//! Prometheus conventions, readiness that follows the exchange log, the
//! effective configuration without key material, and reloads.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use govbridge::exchange_log::StoreFault;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::civilregistry::v1::{GetPersonRequest, WatchLifeEventsRequest};
use support::{
    Bed, admin_request, admin_request_with, bridge_error, operator_request, verify_identity_of,
};
use tonic::Code;

const VERIFY_IDENTITY: &str = "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity";
const GET_PERSON: &str = "/govbridge.civilregistry.v1.CivilRegistry/GetPerson";
const WATCH_LIFE_EVENTS: &str = "/govbridge.civilregistry.v1.CivilRegistry/WatchLifeEvents";

/// Sample name (without labels) -> value, for the lines with `labels`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Every sample belongs to a declared metric, counters end in `_total`,
/// histograms in `_seconds`, and names are `[a-z_]` and prefixed.
fn check_conventions(text: &str) {
    let mut types = BTreeMap::new();
    for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
        let mut parts = line["# TYPE ".len()..].split(' ');
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(name.starts_with("govbridge_"), "{name}");
        assert!(
            name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{name}"
        );
        match kind {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
            "gauge" => assert!(!name.ends_with("_total"), "{name}"),
            other => panic!("unexpected type {other}"),
        }
        assert!(
            types.insert(name.to_owned(), kind).is_none(),
            "{name} twice"
        );
    }
    let declared: BTreeSet<&String> = types.keys().collect();
    for series in samples(text).keys() {
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|family| types.get(*family) == Some(&"histogram"))
            .unwrap_or(name);
        assert!(
            declared.contains(&family.to_owned()),
            "{series} is undeclared"
        );
    }
}

#[tokio::test]
async fn metrics_count_a_known_sequence_of_calls_exactly() {
    let bed = Bed::start().await;
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    for _ in 0..3 {
        registry
            .verify_identity(verify_identity_of(&bed, 0))
            .await
            .unwrap();
    }
    let status = registry
        .get_person(GetPersonRequest {
            nin: "1999999999999".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A stream, read to its end: its duration is a stream's.
    let mut events = registry
        .watch_life_events(WatchLifeEventsRequest {
            after_sequence: 0,
            max_events: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(support::count_to_end(&mut events).await, 2);
    // Refused by the gateway itself: a method the service does not have.
    let mut client = bed.client("cbao-kyc").await;
    let response = support::raw_call(
        &mut client,
        "/govbridge.civilregistry.v1.CivilRegistry/NoSuchMethod",
        &verify_identity_of(&bed, 0),
    )
    .await;
    assert_eq!(response.headers()["bridge-error"], "unknown-method");

    let (code, text) = admin_request(bed.admin, "GET", "/metrics").await;
    assert_eq!(code, 200);
    check_conventions(&text);
    let samples = samples(&text);
    let calls = |method: &str, code: &str| {
        let series = format!(
            "govbridge_calls_total{{caller=\"SN/COM/CBAO/kyc\",provider=\"SN/GOV/ANEC/civil-registry\",method=\"{method}\",code=\"{code}\"}}"
        );
        samples.get(&series).copied().unwrap_or_default()
    };
    assert_eq!(calls(VERIFY_IDENTITY, "OK"), 3.0, "{text}");
    assert_eq!(calls(GET_PERSON, "INVALID_ARGUMENT"), 1.0, "{text}");
    assert_eq!(calls(GET_PERSON, "OK"), 0.0);
    assert_eq!(calls(WATCH_LIFE_EVENTS, "OK"), 1.0, "{text}");
    // Unary calls' latency and streams' durations, apart.
    let durations = |method: &str, kind: &str| {
        let series =
            format!("govbridge_call_duration_seconds_count{{method=\"{method}\",kind=\"{kind}\"}}");
        samples.get(&series).copied().unwrap_or_default()
    };
    assert_eq!(durations(VERIFY_IDENTITY, "unary"), 3.0, "{text}");
    assert_eq!(durations(WATCH_LIFE_EVENTS, "stream"), 1.0, "{text}");
    assert_eq!(durations(WATCH_LIFE_EVENTS, "unary"), 0.0, "{text}");
    assert_eq!(
        samples["govbridge_refusals_total{kind=\"unknown-method\"}"],
        1.0
    );
    assert_eq!(
        samples["govbridge_upstream_response_seconds_count{provider=\"SN/GOV/ANEC/civil-registry\"}"],
        5.0
    );
    // The log holds the forwarded calls (decision and outcome each) and
    // the refusal.
    assert_eq!(samples["govbridge_exchange_log_records"], 11.0);
    assert_eq!(samples["govbridge_exchange_log_writable"], 1.0);
    // Every commit is timed: at least one per forwarded call's record
    // batch, at most one per record.
    let commits = samples["govbridge_exchange_log_commit_seconds_count"];
    assert!((1.0..=11.0).contains(&commits), "{text}");
    // Each certificate in use, with when it expires, and each CRL with
    // when it is due: apart, since a CRL is due within days by design.
    for (metric, label, name) in [
        (
            "govbridge_certificate_expiry_timestamp_seconds",
            "certificate",
            "gateway.tls.certificate",
        ),
        (
            "govbridge_certificate_expiry_timestamp_seconds",
            "certificate",
            "upstream.certificate",
        ),
        (
            "govbridge_crl_next_update_timestamp_seconds",
            "crl",
            "gateway.tls.crls",
        ),
    ] {
        let prefix = format!("{metric}{{{label}=\"{name} (");
        assert!(
            samples
                .iter()
                .any(|(series, at)| series.starts_with(&prefix) && *at > 1.7e9),
            "{name}: {text}"
        );
    }
    assert!(
        !samples.keys().any(|series| series.starts_with(
            "govbridge_certificate_expiry_timestamp_seconds{certificate=\"gateway.tls.crls"
        )),
        "{text}"
    );
    // No label a scrape renames: Prometheus adds `instance` and `job`.
    for series in samples.keys() {
        assert!(
            !series.contains("{instance=")
                && !series.contains(",instance=")
                && !series.contains("{job=")
                && !series.contains(",job="),
            "{series}"
        );
    }
    bed.stop().await;
}

/// One service's providers out of reach do not make the node unready: a
/// balancer would take every node out, and every other service with
/// them. Its calls are refused; readiness says so beside `ready`.
#[tokio::test]
async fn a_service_out_of_reach_leaves_the_node_ready_for_the_others() {
    let bed = Bed::builder().cuttable("tax").start().await;
    bed.cut("tax");
    let (code, body) = admin_request(bed.admin, "GET", "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("no provider of govbridge.tax.v1.TaxAuthority is reachable"),
        "{body}"
    );
    CivilRegistryClient::new(bed.client("cbao-kyc").await)
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap();
    bed.stop().await;
}

/// A commit that does not end (a disk or database that stalls; here
/// another writer holding the log's lock) makes the node unready before
/// any write fails, and ready again once it ends; the call waiting for it
/// goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_exchange_log_commit_makes_the_node_unready() {
    let bed = Bed::start().await;
    let database = bed.exchange_log().dir().join("exchange-log.sqlite");
    let holder = rusqlite::Connection::open(&database).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let request = verify_identity_of(&bed, 0);
    let call = tokio::spawn(async move { registry.verify_identity(request).await });
    let gauge = "govbridge_exchange_log_commit_in_progress_seconds";
    loop {
        let (code, body) = admin_request(bed.admin, "GET", "/readyz").await;
        assert!(
            !body.contains("cannot write"),
            "the store gave up first: {body}"
        );
        if code == 503 {
            assert!(body.contains("commit in progress has taken"), "{body}");
            break;
        }
        assert_eq!(code, 200, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(support::metric(bed.admin, gauge).await >= 2.0);
    holder.execute_batch("ROLLBACK").unwrap();
    call.await.unwrap().unwrap();
    let (code, body) = admin_request(bed.admin, "GET", "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(support::metric(bed.admin, gauge).await, 0.0);
    bed.stop().await;
}

#[tokio::test]
async fn readiness_follows_the_exchange_log() {
    let bed = Bed::start().await;
    assert_eq!(admin_request(bed.admin, "GET", "/healthz").await.0, 200);
    assert_eq!(admin_request(bed.admin, "GET", "/readyz").await.0, 200);

    bed.exchange_log()
        .simulate_fault(Some(StoreFault::DiskFull));
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let status = registry
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap_err();
    assert_eq!(
        bridge_error(&status).as_deref(),
        Some("exchange-log-unavailable")
    );
    let (code, body) = admin_request(bed.admin, "GET", "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("exchange log cannot write"), "{body}");
    // Alive all the same.
    assert_eq!(admin_request(bed.admin, "GET", "/healthz").await.0, 200);

    bed.exchange_log().simulate_fault(None);
    registry
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap();
    assert_eq!(admin_request(bed.admin, "GET", "/readyz").await.0, 200);
    bed.stop().await;
}

#[tokio::test]
async fn config_shows_settings_but_no_key_material() {
    let bed = Bed::start().await;
    let (code, body) = admin_request(bed.admin, "GET", "/config").await;
    assert_eq!(code, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["gateway"]["node_id"], "sandbox");
    assert_eq!(config["gateway"]["tls"]["private_key"], "(redacted)");
    assert_eq!(config["upstream"]["private_key"], "(redacted)");
    assert!(!body.contains("PRIVATE KEY"));
    assert!(!body.contains(".key"), "{body}");
    // The routing settings a reload changes are there, to see it did.
    assert_eq!(config["upstream"]["ejection_failures"], 5);
    assert!(config["upstream"]["connections_per_endpoint"].is_number());
    let registry = config["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|service| service["name"] == "govbridge.civilregistry.v1.CivilRegistry")
        .unwrap();
    assert!(registry["idempotent"].is_array(), "{registry}");
    assert_eq!(admin_request(bed.admin, "GET", "/nowhere").await.0, 404);
    assert_eq!(admin_request(bed.admin, "DELETE", "/metrics").await.0, 405);
    bed.stop().await;
}

#[tokio::test]
async fn config_shows_the_member_registry_to_operators_only() {
    let bed = Bed::start().await;
    let (code, body) = admin_request(bed.admin, "GET", "/config").await;
    assert_eq!(code, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        config["members"].as_str().unwrap().starts_with("(hidden: "),
        "{body}"
    );
    assert!(!body.contains("SN/COM/CBAO/kyc\""), "{body}");
    // What an operator needs is all there.
    assert_eq!(config["gateway"]["node_id"], "sandbox");
    assert!(config["services"].as_array().is_some_and(|s| !s.is_empty()));

    let (code, body) = operator_request(bed.admin, "GET", "/config").await;
    assert_eq!(code, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    let members = config["members"].as_array().unwrap();
    assert!(
        members
            .iter()
            .any(|member| member["id"] == "SN/COM/CBAO/kyc"),
        "{body}"
    );
    bed.stop().await;
}

#[tokio::test]
async fn reload_refuses_a_cross_site_request_and_accepts_an_operator() {
    let bed = Bed::start().await;
    // What a form on another site makes a browser send: no custom header.
    let form = [
        ("origin", "https://attacker.example"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let (code, body) = admin_request_with(bed.admin, "POST", "/reload", &form).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("x-govbridge-admin"), "{body}");
    // A page that rebound its own name to 127.0.0.1 may send the header,
    // but not a loopback Host: it is answered nothing, not even what
    // anyone on the machine may read.
    let rebound = [("host", "attacker.example"), ("x-govbridge-admin", "1")];
    for (method, path) in [("POST", "/reload"), ("GET", "/config"), ("GET", "/metrics")] {
        let (code, body) = admin_request_with(bed.admin, method, path, &rebound).await;
        assert_eq!(code, 421, "{path}: {body}");
        assert!(body.contains("localhost"), "{body}");
    }

    let (_, text) = admin_request(bed.admin, "GET", "/metrics").await;
    assert!(!text.contains("govbridge_reloads_total{"), "{text}");

    let (code, body) = operator_request(bed.admin, "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    bed.stop().await;
}

/// Writes `token` into `file` as an operator would (mode 0600); the
/// setting that names it.
fn token_file(file: &std::path::Path, token: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("\"{}\"", file.display())
}

#[tokio::test]
async fn a_token_guards_reload_and_the_member_registry() {
    let secrets = tempfile::tempdir().unwrap();
    let token = "7f3c1a9e5b2d48f0a6c4e1b3d5f7092a";
    let file = token_file(&secrets.path().join("admin.token"), token);
    let bed = Bed::builder()
        .gateway("admin_token_file", &file)
        .start()
        .await;

    let bearer = format!("Bearer {token}");
    let wrong = format!("Bearer {}", token.replace('7', "8"));
    for headers in [
        vec![],
        vec![("x-govbridge-admin", "1")],
        vec![("authorization", wrong.as_str())],
    ] {
        let (code, body) = admin_request_with(bed.admin, "POST", "/reload", &headers).await;
        assert_eq!(code, 401, "{headers:?}: {body}");
    }
    let (code, body) = admin_request(bed.admin, "GET", "/config").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"(hidden: "), "{body}");

    let operator = [("authorization", bearer.as_str())];
    let (code, body) = admin_request_with(bed.admin, "POST", "/reload", &operator).await;
    assert_eq!(code, 200, "{body}");
    let (_, body) = admin_request_with(bed.admin, "GET", "/config", &operator).await;
    assert!(body.contains("\"SN/COM/CBAO/kyc\""), "{body}");
    assert!(!body.contains(token), "{body}");
    bed.stop().await;
}

#[tokio::test]
async fn an_admin_endpoint_over_tls_takes_the_token_encrypted_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let secrets = tempfile::tempdir().unwrap();
    let token = "3b9d0f7a1c5e48b2a6d4f0c8e2b6a9d1";
    let file = token_file(&secrets.path().join("admin.token"), token);
    let bed = Bed::builder()
        .gateway("admin_token_file", &file)
        .gateway("admin_tls", "true")
        .start()
        .await;
    let ca = bed.ca_certificate();

    // Over HTTPS, with the gateway's own certificate: the probes answer,
    // and the token is taken.
    let bearer = format!("Bearer {token}");
    let tls =
        |method, path, headers| support::admin_request_tls(bed.admin, &ca, method, path, headers);
    let (code, metrics) = tls("GET", "/metrics", &[]).await;
    assert_eq!(code, 200);
    assert!(metrics.contains("govbridge_uptime_seconds"), "{metrics}");
    assert_eq!(tls("POST", "/reload", &[]).await.0, 401);
    let operator = [("authorization", bearer.as_str())];
    let (code, body) = tls("POST", "/reload", &operator).await;
    assert_eq!(code, 200, "{body}");

    // In plain HTTP the request, token and all, is never answered: the
    // endpoint reads a TLS handshake, and closes.
    let mut tcp = tokio::net::TcpStream::connect(bed.admin).await.unwrap();
    let request = format!(
        "POST /reload HTTP/1.1\r\nhost: {}\r\nauthorization: {bearer}\r\ncontent-length: 0\r\n\r\n",
        bed.admin
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "{answer:?}"
    );
    let (_, metrics) = tls("GET", "/metrics", &[]).await;
    assert!(
        metrics.contains("govbridge_reloads_total{result=\"ok\"} 1"),
        "the plain request reloaded nothing: {metrics}"
    );

    // `govbridge status` reaches it with the CA.
    let admin = bed.admin.to_string();
    let ca_arg = ca.display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        support::govbridge(&["status", "--admin", &admin, "--admin-ca", &ca_arg])
    })
    .await
    .unwrap();
    let text = support::text(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(&format!("govbridge at https://{}: ready", bed.admin)),
        "{text}"
    );
    // Without the CA, it says what to try.
    let admin = bed.admin.to_string();
    let output =
        tokio::task::spawn_blocking(move || support::govbridge(&["status", "--admin", &admin]))
            .await
            .unwrap();
    let text = support::text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("give --admin-ca"), "{text}");
    // With the CA and a name the certificate does not carry, it says so,
    // not that the endpoint may be plain HTTP.
    let admin = bed.admin.to_string();
    let ca_arg = ca.display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        support::govbridge(&[
            "status",
            "--admin",
            &admin,
            "--admin-ca",
            &ca_arg,
            "--admin-name",
            "elsewhere.example",
        ])
    })
    .await
    .unwrap();
    let text = support::text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("not one --admin-ca trusts for elsewhere.example"),
        "{text}"
    );
    assert!(!text.contains("plain HTTP"), "{text}");
    bed.stop().await;
}

#[tokio::test]
async fn reload_applies_a_good_configuration_and_refuses_a_broken_one() {
    let bed = Bed::start().await;
    let (code, body) = operator_request(bed.admin, "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");

    let broken = bed.dir().join("policies").join("broken.cedar");
    std::fs::write(&broken, "permit (principal, action, resource) when {").unwrap();
    let (code, body) = operator_request(bed.admin, "POST", "/reload").await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("broken.cedar"), "{body}");
    // The running configuration still serves.
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    registry
        .verify_identity(verify_identity_of(&bed, 0))
        .await
        .unwrap();

    let (_, text) = admin_request(bed.admin, "GET", "/metrics").await;
    let samples = samples(&text);
    assert_eq!(samples["govbridge_reloads_total{result=\"ok\"}"], 1.0);
    assert_eq!(samples["govbridge_reloads_total{result=\"failed\"}"], 1.0);
    bed.stop().await;
}

#[tokio::test]
async fn status_summarizes_a_running_gateway() {
    let bed = Bed::start().await;
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    for _ in 0..2 {
        registry
            .verify_identity(verify_identity_of(&bed, 0))
            .await
            .unwrap();
    }
    assert_eq!(operator_request(bed.admin, "POST", "/reload").await.0, 200);
    let admin = bed.admin.to_string();
    let output =
        tokio::task::spawn_blocking(move || support::govbridge(&["status", "--admin", &admin]))
            .await
            .unwrap();
    let text = support::text(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains(": ready"), "{text}");
    assert!(text.contains("2 forwarded"), "{text}");
    assert!(text.contains("0.0% not OK"), "{text}");
    // Nothing refused reads 0, not the "-0" of an empty float sum.
    assert!(text.contains("; 0 refused by the gateway"), "{text}");
    assert!(
        text.contains("exchange log    4 records, writable"),
        "{text}"
    );
    assert!(text.contains("gateway.tls.certificate"), "{text}");
    assert!(text.contains("expires in"), "{text}");
    assert!(text.contains("last reload     ok "), "{text}");
    assert!(text.contains(" s ago, failed never"), "{text}");

    // An endpoint that is not there is a clear error.
    let output =
        tokio::task::spawn_blocking(|| support::govbridge(&["status", "--admin", "127.0.0.1:9"]))
            .await
            .unwrap();
    assert!(!output.status.success());
    assert!(support::text(&output).contains("cannot reach the admin endpoint at 127.0.0.1:9"));

    // Nor is another HTTP server taken for a gateway.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = other.local_addr().unwrap().to_string();
    let answering = std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for stream in other.incoming().take(2) {
            let mut stream = stream.unwrap();
            let mut request = [0; 1024];
            let _ = stream.read(&mut request).unwrap();
            stream
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        }
    });
    let output =
        tokio::task::spawn_blocking(move || support::govbridge(&["status", "--admin", &address]))
            .await
            .unwrap();
    answering.join().unwrap();
    assert!(!output.status.success(), "{}", support::text(&output));
    assert!(
        support::text(&output).contains("without a gateway's metrics"),
        "{}",
        support::text(&output)
    );
    bed.stop().await;
}

#[tokio::test]
async fn connections_and_refused_handshakes_are_counted() {
    let probe = support::probe::Probe::default();
    let bed = Bed::builder()
        .probe(support::probe::SERVICE, probe.server())
        .start()
        .await;
    // A partner whose certificate comes from a CA the gateway does not
    // trust, and one that sends no certificate.
    let stranger_ca = govbridge::pki::CertificateAuthority::generate("stranger").unwrap();
    let member = govbridge::identity::MemberId::parse("SN/COM/CBAO/kyc").unwrap();
    let (certificate, key) = stranger_ca
        .issue(&govbridge::pki::LeafRequest::member(&member))
        .unwrap()
        .write(&bed.dir().join("stranger"), "member")
        .unwrap();
    assert!(support::handshake_refused(bed.gateway, bed.client_tls(&certificate, &key)).await);

    let client = bed.client("cbao-kyc").await;
    // The gateway counts the refusal right after its alert leaves, which
    // the client may read first; and the client's handshake ends before
    // the gateway's (TLS 1.3: the client's Finished comes last), so its
    // connection may not be counted yet either. Look again until they are.
    let refused = "govbridge_tls_handshake_failures_total{reason=\"unknown-issuer\"}";
    support::wait_for_metric(bed.admin, refused, |count| count == 1.0).await;
    support::wait_for_metric(bed.admin, "govbridge_connections_open", |open| open == 1.0).await;
    assert_eq!(
        support::metric(bed.admin, "govbridge_calls_in_flight").await,
        0.0
    );

    // An open stream is a call in flight until it ends: the probe's
    // endless stream (`max_events: 0`), which cannot end before the test
    // drops it.
    let mut registry = CivilRegistryClient::new(client);
    let mut events = registry
        .watch_life_events(WatchLifeEventsRequest {
            after_sequence: 0,
            max_events: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(events.message().await.unwrap().is_some());
    let in_flight = || async {
        let text = admin_request(bed.admin, "GET", "/metrics").await.1;
        samples(&text)["govbridge_calls_in_flight"]
    };
    assert_eq!(in_flight().await, 1.0);
    drop(events);
    // The caller's reset reaches the gateway on its own time.
    let mut left = in_flight().await;
    for _ in 0..100 {
        if left == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        left = in_flight().await;
    }
    assert_eq!(left, 0.0);
    drop(registry);
    bed.stop().await;
}

/// A leaked token is revoked by rewriting its file: the file watcher
/// reloads it, and only the new token is an operator's.
#[tokio::test]
async fn a_rewritten_token_file_revokes_the_old_token() {
    let secrets = tempfile::tempdir().unwrap();
    let path = secrets.path().join("admin.token");
    let write = |token: &str| token_file(&path, token);
    let (old, new) = (
        "7f3c1a9e5b2d48f0a6c4e1b3d5f7092a",
        "0b9e8d7c6a5f4e3d2c1b0a9f8e7d6c5b",
    );
    let file = write(old);
    let bed = Bed::builder()
        .gateway("admin_token_file", &file)
        .start()
        .await;
    bed.reloader
        .clone()
        .reload_on_file_change(std::time::Duration::from_millis(20));
    // Whether `token` is an operator's: the member registry is theirs to
    // read (a reload would read the file again itself).
    let operator = |token: &str| {
        let bearer = format!("Bearer {token}");
        async move {
            let (_, body) =
                admin_request_with(bed.admin, "GET", "/config", &[("authorization", &bearer)])
                    .await;
            body.contains("SN/COM/CBAO/kyc")
        }
    };
    assert!(operator(old).await);
    assert!(!operator(new).await);
    write(new);
    let mut revoked = false;
    for _ in 0..250 {
        if !operator(old).await {
            revoked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(revoked, "the old token still works");
    assert!(operator(new).await);

    // The file removed: the reload that follows is rejected (the file is
    // named, and not there), and the token stops all the same.
    std::fs::remove_file(&path).unwrap();
    let mut revoked = false;
    for _ in 0..250 {
        if !operator(new).await {
            revoked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(revoked, "a token whose file is gone still works");
    bed.stop().await;
}
