//! Upstream resilience through the real gateway: several endpoints per
//! provider, passive ejection and re-admission, active health checks,
//! failing fast with no endpoint left, and the mock agencies' fault
//! injection.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use govbridge::agencies::fault::{Failure, Fault};
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use support::{Bed, admin_request, bridge_error, declared, verify_identity_of, with_header};
use tonic::Code;

const REGISTRY: &str = "civil-registry";
const REGISTRY_ID: &str = "SN/GOV/ANEC/civil-registry";

/// The treasury verifies citizen 0's identity, with `headers` added.
async fn verify(bed: &Bed, headers: &[(&'static str, &str)]) -> Result<(), tonic::Status> {
    let mut request = declared(verify_identity_of(bed, 0), "BENEFIT-PAYMENT");
    for (name, value) in headers {
        request = with_header(request, name, value);
    }
    CivilRegistryClient::new(bed.client("treasury").await)
        .verify_identity(request)
        .await
        .map(drop)
}

/// The values of an endpoint `series` of the civil registry's provider, in
/// replica order.
async fn endpoints(bed: &Bed, series: &str) -> Vec<u64> {
    let (_, text) = admin_request(bed.admin, "GET", "/metrics").await;
    let prefix = format!("{series}{{provider=\"{REGISTRY_ID}\",");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// Waits, calling `probe` every 20 ms, until it holds; fails after 5 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !probe().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_endpoint_that_goes_down_is_ejected_and_later_readmitted() {
    let bed = Bed::builder()
        .replicas(REGISTRY, 3)
        .cuttable(REGISTRY)
        .upstream("health_check_interval", "\"0s\"")
        .upstream("ejection_failures", "1")
        .upstream("ejection_time", "\"300ms\"")
        .start()
        .await;
    for _ in 0..6 {
        verify(&bed, &[]).await.unwrap();
    }

    // Down: connections to it are closed as soon as they open. Calls
    // that meet it move on to another endpoint and succeed.
    bed.cut_replica(REGISTRY, 1);
    for _ in 0..30 {
        verify(&bed, &[]).await.unwrap();
    }
    let ejections = endpoints(&bed, "govbridge_upstream_endpoint_ejections_total").await;
    assert_eq!(ejections[0], 0, "{ejections:?}");
    assert!(ejections[1] >= 1, "{ejections:?}");
    assert_eq!(ejections[2], 0, "{ejections:?}");

    // Back: once its ejection has run out, calls reach it again.
    bed.restore_replica(REGISTRY, 1);
    eventually("the endpoint takes calls again", || async {
        verify(&bed, &[]).await.unwrap();
        let connections = endpoints(&bed, "govbridge_upstream_endpoint_connections").await;
        let in_rotation = endpoints(&bed, "govbridge_upstream_endpoint_in_rotation").await;
        connections[1] >= 1 && in_rotation == [1, 1, 1]
    })
    .await;
}

#[tokio::test]
async fn health_checks_take_a_failing_endpoint_out_and_put_it_back() {
    let bed = Bed::builder()
        .replicas(REGISTRY, 2)
        .upstream("health_check_interval", "\"50ms\"")
        .upstream("unhealthy_threshold", "2")
        .upstream("healthy_threshold", "1")
        // Only the health checks judge in this test.
        .upstream("ejection_failures", "1000")
        .start()
        .await;
    bed.fault(REGISTRY, 0).set(Fault::fail(Failure::Status(
        Code::Unavailable,
        "going down for maintenance".to_owned(),
    )));
    eventually("replica 0 is out of rotation", || async {
        endpoints(&bed, "govbridge_upstream_endpoint_in_rotation").await == [0, 1]
    })
    .await;
    // Every call now goes to replica 1.
    for _ in 0..20 {
        verify(&bed, &[]).await.unwrap();
    }

    bed.fault(REGISTRY, 0).clear();
    eventually("replica 0 is back in rotation", || async {
        endpoints(&bed, "govbridge_upstream_endpoint_in_rotation").await == [1, 1]
    })
    .await;
}

/// An endpoint ejected through an outage its health checks saw is back
/// as soon as they pass again, not once its ejection (here a minute)
/// runs out: a provider's only endpoint, recovered, takes calls at once.
#[tokio::test]
async fn an_endpoint_back_from_an_outage_is_readmitted_by_its_checks() {
    let bed = Bed::builder()
        .cuttable(REGISTRY)
        .upstream("health_check_interval", "\"50ms\"")
        .upstream("unhealthy_threshold", "1")
        .upstream("healthy_threshold", "1")
        .upstream("ejection_failures", "1")
        .upstream("ejection_time", "\"60s\"")
        .upstream("max_ejection_time", "\"60s\"")
        .start()
        .await;
    verify(&bed, &[]).await.unwrap();
    bed.cut_replica(REGISTRY, 0);
    eventually("the endpoint is ejected", || async {
        let _ = verify(&bed, &[]).await;
        endpoints(&bed, "govbridge_upstream_endpoint_ejections_total").await[0] >= 1
    })
    .await;
    bed.restore_replica(REGISTRY, 0);
    eventually("the endpoint takes calls again", || async {
        verify(&bed, &[]).await.is_ok()
    })
    .await;
}

/// A check refused for the caller's limits (a partner's gateway full of
/// this gateway's own calls) says the endpoint is up: it answered.
#[tokio::test]
async fn a_check_refused_for_limits_keeps_the_endpoint_in_rotation() {
    let bed = one_endpoint_failing_checks().await;
    bed.fault(REGISTRY, 0).set(Fault::fail(Failure::Status(
        Code::ResourceExhausted,
        "too many calls".to_owned(),
    )));
    eventually("the endpoint is back in rotation", || async {
        endpoints(&bed, "govbridge_upstream_endpoint_in_rotation").await == [1]
    })
    .await;
}

/// A bed whose only civil registry endpoint fails its health checks (every
/// 50 ms) and has been taken out of rotation.
async fn one_endpoint_failing_checks() -> Bed {
    let bed = Bed::builder()
        .upstream("health_check_interval", "\"50ms\"")
        .upstream("unhealthy_threshold", "1")
        .start()
        .await;
    bed.fault(REGISTRY, 0).set(Fault::fail(Failure::Status(
        Code::Unavailable,
        String::new(),
    )));
    eventually("the endpoint is out of rotation", || async {
        endpoints(&bed, "govbridge_upstream_endpoint_in_rotation").await == [0]
    })
    .await;
    bed
}

/// An interval shortened by a reload applies then, not once the longer
/// one before it is over.
#[tokio::test]
async fn a_shorter_health_check_interval_applies_at_the_reload() {
    let bed = one_endpoint_failing_checks().await;
    let reload_with = |from: &str, to: &str| {
        let config = bed.dir().join("govbridge.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let edited = text.replacen(
            &format!("health_check_interval = \"{from}\""),
            &format!("health_check_interval = \"{to}\""),
            1,
        );
        assert_ne!(text, edited);
        std::fs::write(&config, edited).unwrap();
        bed.reloader.reload().unwrap();
    };
    // Checked hourly once the check due within 50 ms has run (given
    // 200 ms, a margin, not a wait for readiness), the endpoint stays out
    // of rotation though it recovers...
    reload_with("50ms", "1h");
    tokio::time::sleep(Duration::from_millis(200)).await;
    bed.fault(REGISTRY, 0).clear();
    // ...until the operator shortens the interval again.
    reload_with("1h", "50ms");
    eventually("the endpoint is back in rotation", || async {
        endpoints(&bed, "govbridge_upstream_endpoint_in_rotation").await == [1]
    })
    .await;
}

#[tokio::test]
async fn with_no_endpoint_in_rotation_calls_fail_at_once() {
    let bed = one_endpoint_failing_checks().await;
    let started = Instant::now();
    let status = verify(&bed, &[]).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        bridge_error(&status).as_deref(),
        Some("upstream-unavailable")
    );
}

#[tokio::test]
async fn the_agencies_fail_on_request() {
    let bed = Bed::start().await;
    let status = verify(
        &bed,
        &[("govbridge-fault", "status=NOT_FOUND,message=gone")],
    )
    .await
    .unwrap_err();
    // A backend's own status passes through untouched.
    assert_eq!((status.code(), status.message()), (Code::NotFound, "gone"));
    assert_eq!(bridge_error(&status), None);

    // An answer that is not gRPC (a proxy's 503 in front of the backend)
    // is the gateway's to name.
    let status = verify(&bed, &[("govbridge-fault", "nostatus")])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(bridge_error(&status).as_deref(), Some("upstream-failed"));

    let status = verify(&bed, &[("govbridge-fault", "reset")])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(bridge_error(&status).as_deref(), Some("upstream-failed"));

    let status = verify(&bed, &[("govbridge-fault", "drop")])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let status = verify(
        &bed,
        &[("govbridge-fault", "delay=5s"), ("grpc-timeout", "200m")],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(bridge_error(&status).as_deref(), Some("deadline-exceeded"));

    let status = verify(&bed, &[("govbridge-fault", "explode")])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("govbridge-fault"), "{status:?}");

    // After all that, the gateway and the agency still serve.
    verify(&bed, &[]).await.unwrap();
}

/// An answer without a gRPC status is not whole, however it lacks one: a
/// stream that ends without trailers, trailers without `grpc-status`, or
/// HTTP 200 with nothing at all. The caller gets the gateway's
/// `upstream-failed`, logged as the call's outcome, never a success.
#[tokio::test]
async fn an_answer_ending_without_a_status_is_not_taken_for_a_success() {
    use http_body::Frame;
    use http_body_util::StreamBody;

    // The backend answers as the call's `answer` metadata says.
    let backend = tower::service_fn(|request: http::Request<hyper::body::Incoming>| {
        let answer = support::header(request.headers(), "answer").unwrap_or_default();
        async move {
            // One empty message.
            let message = Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]));
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-message", http::HeaderValue::from_static("no status"));
            let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> =
                match answer.as_str() {
                    "no-trailers" => vec![Ok(message)],
                    "trailers-without-status" => vec![Ok(message), Ok(Frame::trailers(trailers))],
                    _ => Vec::new(),
                };
            let body = StreamBody::new(tokio_stream::iter(frames));
            let mut response = http::Response::new(tonic::body::Body::new(body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let bed = Bed::builder()
        .probe(
            support::probe::SERVICE,
            tower::util::BoxCloneSyncService::new(backend),
        )
        .start()
        .await;
    for answer in ["no-trailers", "trailers-without-status", "nothing"] {
        let request = declared(verify_identity_of(&bed, 0), "BENEFIT-PAYMENT");
        let response = CivilRegistryClient::new(bed.client("treasury").await)
            .verify_identity(with_header(request, "answer", answer))
            .await;
        let status = response.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{answer}: {status:?}");
        assert_eq!(
            bridge_error(&status).as_deref(),
            Some("upstream-failed"),
            "{answer}"
        );
        let records = bed.sandbox.exchange_log().records().unwrap();
        let outcome = &records.last().unwrap().record;
        assert_eq!(
            (outcome.grpc_status, outcome.error_kind.as_str()),
            (Code::Unavailable as i32, "upstream-failed"),
            "{answer}"
        );
    }
    // Each is the gateway's failure, counted for the alerts that watch it.
    let failed = "govbridge_refusals_total{kind=\"upstream-failed\"}";
    assert_eq!(support::metric(bed.admin, failed).await, 3.0);
}

#[tokio::test]
async fn a_service_bounds_the_deadline_of_its_calls() {
    let bed = Bed::builder()
        .setting(
            "services.\"govbridge.civilregistry.v1.CivilRegistry\"",
            "max_deadline = \"300ms\"",
        )
        .start()
        .await;
    // The caller allows a minute; the service's bound applies.
    let started = Instant::now();
    let status = verify(
        &bed,
        &[("govbridge-fault", "delay=5s"), ("grpc-timeout", "60S")],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(bridge_error(&status).as_deref(), Some("deadline-exceeded"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    verify(&bed, &[]).await.unwrap();
}

/// A bed with two civil registry endpoints, the first answering every
/// call `UNAVAILABLE`; `VerifyIdentity` idempotent or not.
async fn one_of_two_refusing(idempotent: bool) -> Bed {
    let mut builder = Bed::builder()
        .replicas(REGISTRY, 2)
        .upstream("health_check_interval", "\"0s\"")
        .upstream("ejection_failures", "1000");
    if idempotent {
        builder = builder.setting(
            "services.\"govbridge.civilregistry.v1.CivilRegistry\"",
            "idempotent = [\"VerifyIdentity\"]",
        );
    }
    let bed = builder.start().await;
    bed.fault(REGISTRY, 0).set(Fault::fail(Failure::Status(
        Code::Unavailable,
        "overloaded".to_owned(),
    )));
    bed
}

async fn retries(bed: &Bed) -> u64 {
    let (_, text) = admin_request(bed.admin, "GET", "/metrics").await;
    let series = format!("govbridge_upstream_retries_total{{provider=\"{REGISTRY_ID}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_idempotent_call_is_retried_on_another_endpoint() {
    let bed = one_of_two_refusing(true).await;
    let request = verify_identity_of(&bed, 0);
    let sent = 5 + prost::Message::encoded_len(&request) as u64;
    // Half the calls meet the refusing endpoint first; all succeed.
    for _ in 0..10 {
        let answer = CivilRegistryClient::new(bed.client("treasury").await)
            .verify_identity(declared(request.clone(), "BENEFIT-PAYMENT"))
            .await
            .unwrap();
        // The exchange log counts the request once, however often sent.
        let request_id = answer.metadata().get("bridge-request-id").unwrap();
        let outcome = govbridge::exchange_log::Store::open_read_only(bed.exchange_log().dir())
            .unwrap()
            .records_of_request(request_id.to_str().unwrap())
            .unwrap()
            .pop()
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(outcome.request_bytes, sent);
    }
    assert!(retries(&bed).await >= 1);
}

#[tokio::test]
async fn a_call_not_marked_idempotent_is_not_retried() {
    let bed = one_of_two_refusing(false).await;
    let mut refused = 0;
    for _ in 0..20 {
        if let Err(status) = verify(&bed, &[]).await {
            assert_eq!(
                (status.code(), status.message()),
                (Code::Unavailable, "overloaded")
            );
            refused += 1;
        }
    }
    // Each call picks either endpoint with even odds: all 20 missing the
    // refusing one has a probability of one in a million.
    assert!(refused > 0);
    assert_eq!(retries(&bed).await, 0);
}

#[tokio::test]
async fn busy_connections_make_room_for_more() {
    let bed = Bed::builder()
        .upstream("health_check_interval", "\"0s\"")
        .upstream("connections_per_endpoint", "3")
        .upstream("streams_per_connection", "2")
        .start()
        .await;
    let mut calls = Vec::new();
    for open in 1..=7 {
        let mut client = CivilRegistryClient::new(bed.client("treasury").await);
        let request = with_header(
            declared(verify_identity_of(&bed, 0), "BENEFIT-PAYMENT"),
            "govbridge-fault",
            "delay=3s",
        );
        calls.push(tokio::spawn(async move {
            client.verify_identity(request).await
        }));
        eventually("the call is in flight", || async {
            endpoints(&bed, "govbridge_upstream_endpoint_outstanding").await == [open]
        })
        .await;
    }
    // Two calls on each of three connections, then the seventh shares one:
    // there is no room for a fourth.
    assert_eq!(
        endpoints(&bed, "govbridge_upstream_endpoint_connections").await,
        [3]
    );
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(
        endpoints(&bed, "govbridge_upstream_endpoint_outstanding").await,
        [0]
    );
}

/// A call to the civil registry that takes a second, once it is in
/// flight.
async fn call_in_flight(bed: &Bed) -> tokio::task::JoinHandle<Result<(), tonic::Status>> {
    let mut client = CivilRegistryClient::new(bed.client("treasury").await);
    let request = with_header(
        declared(verify_identity_of(bed, 0), "BENEFIT-PAYMENT"),
        "govbridge-fault",
        "delay=1s",
    );
    let call = tokio::spawn(async move { client.verify_identity(request).await.map(drop) });
    eventually("the call is in flight", || async {
        endpoints(bed, "govbridge_upstream_endpoint_outstanding").await == [1]
    })
    .await;
    call
}

/// After a reload: the new configuration's pool is the same endpoint,
/// its one connection and `call` included, and the call succeeds.
async fn kept_with_its_call(bed: &Bed, call: tokio::task::JoinHandle<Result<(), tonic::Status>>) {
    assert_eq!(
        endpoints(bed, "govbridge_upstream_endpoint_outstanding").await,
        [1]
    );
    verify(bed, &[]).await.unwrap();
    assert_eq!(
        endpoints(bed, "govbridge_upstream_endpoint_connections").await,
        [1]
    );
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_reload_keeps_backend_connections_and_their_calls() {
    let bed = Bed::builder()
        .upstream("health_check_interval", "\"0s\"")
        .start()
        .await;
    let call = call_in_flight(&bed).await;

    bed.reloader.reload().unwrap();
    kept_with_its_call(&bed, call).await;
}

/// The backends' CA moved to another file, the same certificates in it
/// (as a directory's new version puts it in a cache directory of its
/// own): the backend connections, and the calls on them, are kept.
#[tokio::test]
async fn a_reload_with_the_same_upstream_ca_elsewhere_keeps_backend_connections() {
    let bed = Bed::builder()
        .upstream("health_check_interval", "\"0s\"")
        .start()
        .await;
    let call = call_in_flight(&bed).await;

    let config_file = bed.dir().join("govbridge.toml");
    let config = std::fs::read_to_string(&config_file).unwrap();
    let line = config
        .lines()
        .find(|line| line.starts_with("server_ca = "))
        .unwrap();
    let server_ca = bed
        .dir()
        .join(line.trim_start_matches("server_ca = ").trim_matches('"'));
    let copy = bed.dir().join("backends-ca-copy.pem");
    std::fs::copy(&server_ca, &copy).unwrap();
    let moved = config.replacen(
        line,
        &format!("server_ca = {:?}", copy.display().to_string()),
        1,
    );
    std::fs::write(&config_file, moved).unwrap();
    bed.reloader.reload().unwrap();

    kept_with_its_call(&bed, call).await;
}

#[tokio::test]
async fn a_backend_killed_mid_stream_ends_the_call_and_others_are_served() {
    use govbridge::proto::tax::v1::GetDeclaredIncomeRequest;
    use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;

    let bed = Bed::builder().cuttable("tax").start().await;
    let year = |fiscal_year| GetDeclaredIncomeRequest {
        nin: bed.data.citizens[0].nin.to_string(),
        fiscal_year,
    };
    let (asking, requests) = tokio::sync::mpsc::channel(4);
    asking.send(year(2023)).await.unwrap();
    let mut answers = TaxAuthorityClient::new(bed.client("cbao-credit").await)
        .stream_declared_income(declared(support::feed::Feed(requests), "CREDIT-SCORING"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().fiscal_year, 2023);

    // The tax authority's backend goes away with the stream open.
    bed.cut("tax");
    asking.send(year(2022)).await.unwrap();
    let status = answers.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(bridge_error(&status).as_deref(), Some("upstream-failed"));
    drop(answers);
    support::wait_for_metric(bed.admin, "govbridge_calls_in_flight", |open| open == 0.0).await;

    // Everyone else is still served.
    verify(&bed, &[]).await.unwrap();
}

#[tokio::test]
async fn an_endpoint_that_never_answers_is_ejected_though_callers_give_up_first() {
    let bed = Bed::builder()
        .without_agencies()
        .silent_provider(support::probe::SERVICE)
        .upstream("health_check_interval", "\"0s\"")
        .upstream("ejection_failures", "1")
        .upstream("ejection_time", "\"60s\"")
        .start()
        .await;
    // Each caller gives up long before the dial's own timeout (1 s).
    let status = verify(&bed, &[("grpc-timeout", "100m")]).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The dial goes on without it, fails, and ejects the endpoint: later
    // calls fail at once instead of each waiting out its deadline.
    eventually("the silent endpoint is ejected", || async {
        let (_, text) = admin_request(bed.admin, "GET", "/metrics").await;
        text.lines().any(|line| {
            line.starts_with(
                "govbridge_upstream_endpoint_ejections_total{provider=\"SN/GOV/SILENT/backend\"",
            ) && line.ends_with(" 1")
        })
    })
    .await;
    let status = verify(&bed, &[("grpc-timeout", "10S")]).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn turning_health_checks_off_puts_endpoints_back_in_rotation() {
    let bed = one_endpoint_failing_checks().await;
    bed.fault(REGISTRY, 0).clear();

    // An operator silences a flapping check: nothing would ever clear the
    // verdict of the checks before, so the reload does.
    let reload_with = |from: &str, to: &str| {
        let config = bed.dir().join("govbridge.toml");
        let text = std::fs::read_to_string(&config).unwrap().replacen(
            &format!("health_check_interval = \"{from}\""),
            &format!("health_check_interval = \"{to}\""),
            1,
        );
        std::fs::write(&config, text).unwrap();
        bed.reloader.reload().unwrap();
    };
    reload_with("50ms", "0s");
    assert_eq!(
        endpoints(&bed, "govbridge_upstream_endpoint_in_rotation").await,
        [1]
    );
    verify(&bed, &[]).await.unwrap();

    // Turned on again, checks start from nothing: the verdict of those
    // before does not take the endpoint out.
    reload_with("0s", "10s");
    assert_eq!(
        endpoints(&bed, "govbridge_upstream_endpoint_in_rotation").await,
        [1]
    );
    verify(&bed, &[]).await.unwrap();
}

/// New upstream TLS files (a CA or a CRL replaced) open new connections,
/// but the backend behind an address is the same: its ejection stands.
#[tokio::test]
async fn a_reload_with_new_upstream_tls_files_keeps_ejections() {
    let bed = Bed::builder()
        .replicas(REGISTRY, 3)
        .cuttable(REGISTRY)
        .upstream("health_check_interval", "\"0s\"")
        .upstream("ejection_failures", "1")
        .upstream("ejection_time", "\"60s\"")
        .start()
        .await;
    bed.cut_replica(REGISTRY, 1);
    eventually("replica 1 is ejected", || async {
        let _ = verify(&bed, &[]).await;
        endpoints(&bed, "govbridge_upstream_endpoint_in_rotation").await == [1, 0, 1]
    })
    .await;

    // The operator drops in a new copy of the backends' CA.
    let config = std::fs::read_to_string(bed.dir().join("govbridge.toml")).unwrap();
    let server_ca = config
        .lines()
        .find_map(|line| line.strip_prefix("server_ca = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    // Relative to the configuration's directory.
    let server_ca = bed.dir().join(server_ca);
    let mut ca = std::fs::read(&server_ca).unwrap();
    ca.push(b'\n');
    std::fs::write(&server_ca, ca).unwrap();
    bed.reloader.reload().unwrap();

    assert_eq!(
        endpoints(&bed, "govbridge_upstream_endpoint_in_rotation").await,
        [1, 0, 1]
    );
    for _ in 0..10 {
        verify(&bed, &[]).await.unwrap();
    }
}
