//! JSON clients from outside Rust against the real gateway and mock
//! agencies, under the dev policies: the Python `requests` example
//! (`examples/python/verify_identity_json.py`), and schemathesis fuzzing
//! every operation the OpenAPI document served to a bank lists.
//!
//! Needs python3 with requests and schemathesis (examples/python/
//! requirements.txt); `.ci/run` installs them and runs these with
//! `--ignored`. Without them the tests fail and say so: they never skip.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use govbridge::json_client::{HttpVersion, JsonClient};
use support::{Bed, dev_bed};

/// Longer than schemathesis takes for its bounded run on a busy machine.
const TIME_LIMIT: Duration = Duration::from_secs(300);

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `python3` with `args`, its output going to files under the bed's
/// directory, never through a proxy (the gateway is on loopback); waited
/// for without blocking the runtime the gateway serves on.
async fn python(bed: &Bed, name: &str, args: &[&str]) -> (Output, String) {
    let hint = "run `.ci/run`, which installs them, or `python3 -m pip install --user -r \
                examples/python/requirements.txt`";
    let checked = Command::new("python3")
        .args(["-c", "import requests, schemathesis"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("python3 cannot be run ({error}); {hint}"));
    assert!(
        checked.status.success(),
        "python3 lacks requests or schemathesis ({}); {hint}",
        String::from_utf8_lossy(&checked.stderr).trim()
    );
    let (stdout, stderr): (PathBuf, PathBuf) = (
        bed.dir().join(format!("{name}.stdout")),
        bed.dir().join(format!("{name}.stderr")),
    );
    let mut child = Command::new("python3")
        .args(args)
        .current_dir(bed.dir())
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIME_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("python3 {args:?} ran longer than {TIME_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = Output {
        status,
        stdout: std::fs::read(&stdout).unwrap(),
        stderr: std::fs::read(&stderr).unwrap(),
    };
    let shown = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, shown)
}

/// The value of each `NAME: VALUE` line of `output`.
fn values<'a>(output: &'a Output, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}: ");
    std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .collect()
}

#[tokio::test]
#[ignore = "needs python3 with requests: .ci/run installs it and runs this"]
async fn the_python_requests_example_verifies_an_identity_and_shows_refusals() {
    let bed = dev_bed().await;
    assert_eq!(bed.pki, bed.dir().join("pki"));
    let citizen = &bed.data.citizens[0];
    let (nin, born) = (citizen.nin.to_string(), citizen.date_of_birth.to_string());
    let example = repository().join("examples/python/verify_identity_json.py");
    let gateway = bed.gateway.to_string();
    let dev_dir = bed.dir().to_str().unwrap().to_owned();
    let mut args = vec![
        example.to_str().unwrap(),
        "--gateway",
        &gateway,
        "--dev-dir",
        &dev_dir,
        "--nin",
        &nin,
        "--first-names",
        &citizen.first_names,
        "--last-name",
        citizen.last_name,
        "--date-of-birth",
        &born,
    ];
    let (verified, shown) = python(&bed, "verified", &args).await;
    assert!(verified.status.success(), "{shown}");
    assert_eq!(values(&verified, "status"), ["OK"], "{shown}");
    assert_eq!(
        values(&verified, "result"),
        ["VERIFICATION_RESULT_MATCH"],
        "{shown}"
    );
    // The decision's index and the outcome's, in one header.
    let indexes = values(&verified, "bridge-audit-index");
    assert_eq!(indexes.len(), 1, "{shown}");
    assert_eq!(indexes[0].split(',').count(), 2, "{shown}");

    args.extend(["--purpose", "CREDIT-SCORING"]);
    let (refused, shown) = python(&bed, "refused", &args).await;
    assert_eq!(refused.status.code(), Some(1), "{shown}");
    assert_eq!(values(&refused, "http-status"), ["403"], "{shown}");
    assert_eq!(
        values(&refused, "bridge-error"),
        ["policy-denied"],
        "{shown}"
    );
    assert!(
        values(&refused, "message")[0].contains("for purpose CREDIT-SCORING"),
        "{shown}"
    );
    bed.stop().await;
}

#[tokio::test]
#[ignore = "needs python3 with schemathesis: .ci/run installs it and runs this"]
async fn schemathesis_finds_no_server_error_and_no_answer_off_its_schema() {
    let bed = dev_bed().await;
    let tls = bed.member_tls("cbao-kyc");
    let document = JsonClient::connect(bed.gateway, &tls, HttpVersion::Http1)
        .await
        .unwrap()
        .call(http::Method::GET, "/openapi.json", &[], "")
        .await
        .unwrap();
    assert_eq!(document.status, 200);
    let schema = bed.dir().join("openapi-cbao-kyc.json");
    std::fs::write(&schema, &document.body).unwrap();
    let pki = bed.dir().join("pki");
    let url = format!("https://{}", bed.gateway);
    let paths = [
        schema,
        pki.join("ca.pem"),
        pki.join("member-cbao-kyc.pem"),
        pki.join("member-cbao-kyc.key"),
    ];
    let [schema, ca, certificate, key] = paths.each_ref().map(|path| path.to_str().unwrap());
    let (run, shown) = python(
        &bed,
        "schemathesis",
        &[
            "-m",
            "schemathesis.cli",
            "run",
            schema,
            "--url",
            &url,
            "--tls-verify",
            ca,
            "--request-cert",
            certificate,
            "--request-cert-key",
            key,
            "--header",
            "bridge-reason: schemathesis",
            "--header",
            "bridge-user-id: fuzzer",
            // A deadline the fuzzer chose (`0n`) would end its call in 504,
            // `deadline-exceeded`: the caller's doing, not a server error.
            "--header",
            "grpc-timeout: 30S",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--max-examples",
            "25",
            "--seed",
            "23",
            "--workers",
            "2",
            "--no-color",
        ],
    )
    .await;
    assert!(run.status.success(), "{shown}");
    // Every operation of the document was tried: the agencies' the bank
    // may call, and the gateway's own (directory, exchange log).
    let operations: usize = document.json()["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert!(operations > 6, "{operations}");
    let printed = String::from_utf8_lossy(&run.stdout);
    let tested = format!("Tested: {operations}");
    assert!(printed.contains(&tested), "{tested}?\n{shown}");

    // The gateway kept serving: a call after the run is answered.
    let company = bed.data.companies[0].ninea.to_string();
    let answer = JsonClient::connect(bed.gateway, &tls, HttpVersion::Http2)
        .await
        .unwrap()
        .call(
            http::Method::GET,
            &format!("/v1/companies/{company}"),
            &[
                ("bridge-purpose", "KYC"),
                ("bridge-reason", "after the fuzzing"),
                ("bridge-user-id", "agent-1"),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    bed.stop().await;
}
