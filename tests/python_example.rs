//! The Python example (`examples/python/verify_identity.py`), run with
//! `python3` and grpcio against the real gateway and mock agencies under the
//! dev policies: a bank's client in another language gets its answer, the
//! gateway's headers and trailers, and its refusals.
//!
//! Needs python3 with the example's requirements; `.ci/run` installs them.
//! Without them the test fails and says so: it never skips.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::{Bed, dev_bed};

/// Longer than the example's own 10 s deadline plus generating its stubs.
const EXAMPLE_TIME_LIMIT: Duration = Duration::from_secs(60);

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/verify_identity.py")
}

/// Fails, with what to do, when python3 or the example's requirements are
/// missing.
fn require_python() {
    let hint = "run `.ci/run`, which installs the example's requirements, or \
                `python3 -m pip install --user -r examples/python/requirements.txt`";
    let checked = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, pytest"])
        .stdin(Stdio::null())
        .output();
    match checked {
        Err(error) => {
            panic!(
                "python3 cannot be run ({error}): the Python example needs it with grpcio; {hint}"
            )
        }
        Ok(output) if !output.status.success() => panic!(
            "python3 lacks grpcio, grpcio-tools or pytest ({}); {hint}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Ok(_) => {}
    }
}

/// The example's process, killed if the test ends before it does.
struct ExampleRun {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Drop for ExampleRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one run printed.
struct Printed {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Printed {
    /// The value of each `NAME: VALUE` line, in order.
    fn values(&self, name: &str) -> Vec<&str> {
        let prefix = format!("{name}: ");
        self.stdout
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix(&prefix))
            .collect()
    }
}

impl std::fmt::Display for Printed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// `python3`, its output going to files, never through a proxy (the
/// gateway is on loopback).
fn python(stdout: &Path, stderr: &Path) -> Command {
    let mut command = Command::new("python3");
    command
        .env_remove("grpc_proxy")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(stdout).unwrap())
        .stderr(std::fs::File::create(stderr).unwrap());
    command
}

/// Runs the example as CBAO's KYC desk against the bed's gateway, with the
/// bed's directory as the dev directory and `args` added.
async fn run_example(bed: &Bed, name: &str, args: &[&str]) -> Printed {
    assert_eq!(bed.pki, bed.dir().join("pki"));
    let stdout = bed.dir().join(format!("{name}.stdout"));
    let stderr = bed.dir().join(format!("{name}.stderr"));
    let child = python(&stdout, &stderr)
        .arg(example())
        .args(["--gateway", &bed.gateway.to_string(), "--dev-dir"])
        .arg(bed.dir())
        .args(args)
        .spawn()
        .unwrap();
    let mut run = ExampleRun {
        child,
        stdout,
        stderr,
    };
    // The gateway serves on this test's runtime: wait without blocking it.
    let deadline = Instant::now() + EXAMPLE_TIME_LIMIT;
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the Python example ran longer than {EXAMPLE_TIME_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Printed {
        status,
        stdout: std::fs::read_to_string(&run.stdout).unwrap(),
        stderr: std::fs::read_to_string(&run.stderr).unwrap(),
    }
}

#[tokio::test]
#[ignore = "needs python3 with grpcio and grpcio-tools: .ci/run installs them and runs it"]
async fn the_python_example_verifies_an_identity_and_shows_refusals() {
    require_python();
    let bed = dev_bed().await;
    // citizens[0] is alive: the registry answers MATCH when all agrees.
    let citizen = &bed.data.citizens[0];
    let (nin, date_of_birth) = (citizen.nin.to_string(), citizen.date_of_birth.to_string());
    let identity = [
        "--nin",
        nin.as_str(),
        "--first-names",
        citizen.first_names.as_str(),
        "--last-name",
        citizen.last_name,
        "--date-of-birth",
        date_of_birth.as_str(),
    ];

    let verified = run_example(&bed, "verified", &identity).await;
    assert!(verified.status.success(), "{verified}");
    assert_eq!(verified.values("status"), ["OK"], "{verified}");
    assert_eq!(
        verified.values("result"),
        ["VERIFICATION_RESULT_MATCH"],
        "{verified}"
    );
    assert_eq!(verified.values("bridge-request-id").len(), 1, "{verified}");
    // In the headers the call's decision, in the trailers its outcome.
    let indexes: Vec<u64> = verified
        .values("bridge-audit-index")
        .iter()
        .map(|index| index.parse().unwrap())
        .collect();
    assert_eq!(indexes.len(), 2, "{verified}");
    assert!(indexes[0] < indexes[1], "{verified}");
    assert!(verified.values("bridge-error").is_empty(), "{verified}");

    // The banks' policy lets KYC desks verify identities for KYC or AML only.
    let mut wrong_purpose = identity.to_vec();
    wrong_purpose.extend(["--purpose", "CREDIT-SCORING"]);
    let refused = run_example(&bed, "refused", &wrong_purpose).await;
    assert_eq!(refused.status.code(), Some(1), "{refused}");
    assert_eq!(refused.values("status"), ["PERMISSION_DENIED"], "{refused}");
    // Once from the script's summary, once among the trailers.
    assert_eq!(
        refused.values("bridge-error"),
        ["policy-denied", "policy-denied"],
        "{refused}"
    );
    assert!(
        refused.values("message")[0].contains("for purpose CREDIT-SCORING"),
        "{refused}"
    );
    assert_eq!(refused.values("bridge-audit-index").len(), 1, "{refused}");
    assert!(refused.values("result").is_empty(), "{refused}");

    bed.stop().await;
}

/// The pytest example (`examples/python/test_sandbox.py`): its `sandbox`
/// fixture (`conftest.py`) starts `govbridge sandbox`, reads the manifest,
/// and the tests call through the gateway from Python.
#[test]
#[ignore = "needs python3 with grpcio, grpcio-tools and pytest: .ci/run installs them and runs it"]
fn the_pytest_example_runs_against_the_sandbox_command() {
    require_python();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python");
    let scratch = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (scratch.path().join("stdout"), scratch.path().join("stderr"));
    let mut child = python(&stdout, &stderr)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&examples)
        .env("GOVBRIDGE", env!("CARGO_BIN_EXE_govbridge"))
        // Nothing written into the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + EXAMPLE_TIME_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pytest ran longer than {EXAMPLE_TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = Printed {
        status,
        stdout: std::fs::read_to_string(&stdout).unwrap(),
        stderr: std::fs::read_to_string(&stderr).unwrap(),
    };
    assert!(printed.status.success(), "{printed}");
    assert!(printed.stdout.contains("5 passed"), "{printed}");
}
