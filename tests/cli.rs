//! The `govbridge` command: PKI management and `check-config`, run as a
//! user would.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::{govbridge, text};

#[test]
fn pki_init_issue_revoke_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki = pki.to_str().unwrap();

    let output = govbridge(&["pki", "init", "--dir", pki]);
    assert!(output.status.success(), "{}", text(&output));
    for file in [
        "ca.pem",
        "ca.key",
        "crl.pem",
        "gateway.pem",
        "gateway-upstream.key",
        "member-cbao-kyc.pem",
        "agency-civil-registry.key",
    ] {
        assert!(
            Path::new(pki).join(file).exists(),
            "pki init did not write {file}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(Path::new(pki).join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "keys are private");

    // A second init refuses to overwrite.
    let output = govbridge(&["pki", "init", "--dir", pki]);
    assert!(!output.status.success());
    assert!(text(&output).contains("--force"), "{}", text(&output));

    let output = govbridge(&[
        "pki",
        "issue",
        "--dir",
        pki,
        "--member",
        "SN/COM/CBAO/kyc",
        "--out",
        "alice",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let certificate = Path::new(pki).join("alice.pem");
    let der = govbridge::identity::tls::load_certificates(&certificate).unwrap();
    assert_eq!(
        govbridge::identity::member_of_certificate(&der[0])
            .unwrap()
            .as_str(),
        "SN/COM/CBAO/kyc"
    );

    let output = govbridge(&[
        "pki", "issue", "--dir", pki, "--member", "CBAO", "--out", "bob",
    ]);
    assert!(!output.status.success());
    assert!(text(&output).contains("--member CBAO"), "{}", text(&output));

    let before = std::fs::read(Path::new(pki).join("crl.pem")).unwrap();
    let output = govbridge(&[
        "pki",
        "revoke",
        "--dir",
        pki,
        "--cert",
        certificate.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert_ne!(
        std::fs::read(Path::new(pki).join("crl.pem")).unwrap(),
        before
    );

    // The dev template checks out against this PKI...
    let config = dir.path().join("govbridge.toml");
    std::fs::write(&config, govbridge::dev::CONFIG_TEMPLATE).unwrap();
    govbridge::dev::write_policies(&dir.path().join("policies")).unwrap();
    govbridge::dev::write_descriptors(dir.path()).unwrap();
    let output = govbridge(&["check-config", config.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("ok"), "{}", text(&output));

    // ...fails when the upstream certificate is not the gateway's identity...
    for extension in ["pem", "key"] {
        std::fs::copy(
            Path::new(pki).join(format!("member-cbao-kyc.{extension}")),
            Path::new(pki).join(format!("gateway-upstream.{extension}")),
        )
        .unwrap();
    }
    let output = govbridge(&["check-config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("gateway.identity"),
        "{}",
        text(&output)
    );

    // ...and fails, naming the key and file, when a certificate is missing.
    std::fs::remove_file(Path::new(pki).join("gateway-upstream.pem")).unwrap();
    let output = govbridge(&["check-config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("gateway-upstream.pem"),
        "{}",
        text(&output)
    );
}

#[test]
fn check_config_names_the_key_of_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        govbridge::dev::CONFIG_TEMPLATE.replace("node_id = \"gw-dakar-1\"\n", ""),
    )
    .unwrap();
    let output = govbridge(&["check-config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(message.contains("bad.toml"), "{message}");
    assert!(
        message.contains("gateway.node_id: missing key"),
        "{message}"
    );
}

/// A dev configuration left by an older version, which this one cannot
/// load (its services declare no descriptor set, as before they had to):
/// `dev` names the file and says how to get a fresh one, starting nothing.
#[test]
fn dev_on_a_configuration_from_an_older_version_says_how_to_renew_it() {
    let dir = tempfile::tempdir().unwrap();
    let older: String = govbridge::dev::CONFIG_TEMPLATE
        .lines()
        .filter(|line| !line.starts_with("descriptor = "))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(dir.path().join("govbridge.toml"), older).unwrap();
    let output = govbridge(&["dev", "--dir", dir.path().to_str().unwrap()]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(message.contains("govbridge.toml"), "{message}");
    assert!(message.contains("move it aside and run again"), "{message}");
}

/// A dev setup in a temporary directory: PKI, the dev config and policies.
fn dev_setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    govbridge::dev::init_pki(&dir.path().join("pki")).unwrap();
    std::fs::write(
        dir.path().join("govbridge.toml"),
        govbridge::dev::CONFIG_TEMPLATE,
    )
    .unwrap();
    govbridge::dev::write_policies(&dir.path().join("policies")).unwrap();
    govbridge::dev::write_descriptors(dir.path()).unwrap();
    dir
}

#[test]
fn policy_check_explain_and_test() {
    let dir = dev_setup();
    let config = dir.path().join("govbridge.toml");
    let config = config.to_str().unwrap();

    let output = govbridge(&["policy", "check", "--config", config]);
    assert!(output.status.success(), "{}", text(&output));
    let listing = text(&output);
    assert!(listing.contains("policies valid"), "{listing}");
    assert!(
        listing.contains("/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity at SN/GOV/ANEC/civil-registry  [AML, KYC]"),
        "{listing}"
    );

    let explain = |method: &str| {
        govbridge(&[
            "policy",
            "explain",
            "--config",
            config,
            "--client",
            "SN/COM/CBAO/kyc",
            "--method",
            method,
            "--purpose",
            "KYC",
        ])
    };
    let output = explain("/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity");
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).starts_with("ALLOW"), "{}", text(&output));
    assert!(
        text(&output).contains("decided by banks-verify-identity"),
        "{}",
        text(&output)
    );
    let output = explain("/govbridge.civilregistry.v1.CivilRegistry/GetPerson");
    assert!(text(&output).starts_with("DENY"), "{}", text(&output));
    assert!(
        text(&output).contains("denied by default"),
        "{}",
        text(&output)
    );
    let output = explain("/govbridge.civilregistry.v1.CivilRegistry/Nothing");
    assert!(!output.status.success());
    assert!(
        text(&output).contains("not a published method"),
        "{}",
        text(&output)
    );

    // The decision table shipped with the dev policies passes...
    let cases = dir.path().join("policies/tests.toml");
    let output = govbridge(&[
        "policy",
        "test",
        "--config",
        config,
        cases.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("19 passed, 0 failed"),
        "{}",
        text(&output)
    );

    // ...and a wrong expectation fails it, saying which case and why.
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        "[[case]]\nname = \"banks read civil records\"\nclient = \"SN/COM/CBAO/kyc\"\n\
         method = \"/govbridge.civilregistry.v1.CivilRegistry/GetPerson\"\npurpose = \"KYC\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    let output = govbridge(&[
        "policy",
        "test",
        "--config",
        config,
        wrong.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("FAIL banks read civil records: deny by no policy"),
        "{}",
        text(&output)
    );

    // A table that tests nothing fails; a case's mistake is named at its
    // line.
    let table = |name: &str, cases: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, cases).unwrap();
        let output = govbridge(&["policy", "test", "--config", config, file.to_str().unwrap()]);
        assert!(!output.status.success(), "{}", text(&output));
        text(&output)
    };
    let said = table("empty.toml", "case = []\n");
    assert!(said.contains("empty.toml: no cases"), "{said}");
    let said = table(
        "late.toml",
        "# A case at a time no day has.\n[[case]]\nname = \"late\"\nclient = \"SN/COM/CBAO/kyc\"\n\
         method = \"/govbridge.civilregistry.v1.CivilRegistry/GetPerson\"\nhour = 200\nexpect = \"deny\"\n",
    );
    assert!(
        said.contains("late.toml:2: case \"late\": hour 200"),
        "{said}"
    );

    // A broken policy stops everything with Cedar's message and position.
    let policy = dir.path().join("policies/tax.cedar");
    let source = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        source.replacen("context.consent.verified", "context.consent.verifed", 1),
    )
    .unwrap();
    for command in [
        &["policy", "check", "--config", config][..],
        &["check-config", config][..],
    ] {
        let output = govbridge(command);
        assert!(!output.status.success());
        let message = text(&output);
        let at = message.find("tax.cedar:").expect("the file is named");
        let position: Vec<&str> = message[at + "tax.cedar:".len()..].splitn(3, ':').collect();
        assert!(
            position.len() == 3
                && position[0].parse::<usize>().is_ok()
                && position[1].parse::<usize>().is_ok(),
            "no line:column in {message}"
        );
        assert!(message.contains("verifed"), "{message}");
    }
}

/// `govbridge serve` reloads on SIGHUP (and keeps running), and stops
/// cleanly on SIGTERM.
#[test]
fn serve_reloads_on_sighup_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = dev_setup();
    let config = dir.path().join("govbridge.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("127.0.0.1:8443", "127.0.0.1:0")
            .replace("127.0.0.1:9464", "127.0.0.1:0"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--config",
            config.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
    }
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match received.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("govbridge serve never printed `{needle}`");
    };
    wait_for("listening on https://");

    let pid = child.id().to_string();
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("HUP");
    wait_for("configuration reloaded");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the gateway"
    );

    signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop the gateway"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn pki_issue_never_overwrites_a_key_it_did_not_create() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let output = govbridge(&["pki", "init", "--dir", pki.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let issue = |out: &str, force: bool| {
        let mut args = vec![
            "pki",
            "issue",
            "--dir",
            pki.to_str().unwrap(),
            "--member",
            "SN/COM/CBAO/kyc",
            "--out",
            out,
        ];
        if force {
            args.push("--force");
        }
        govbridge(&args)
    };

    // The consent signing key `pki init` made has no certificate beside it.
    let consent_key = pki.join(govbridge::dev::CONSENT_KEY);
    let before = std::fs::read(&consent_key).unwrap();
    for force in [false, true] {
        let output = issue("mygov-consent", force);
        assert!(!output.status.success(), "{}", text(&output));
        assert_eq!(std::fs::read(&consent_key).unwrap(), before);
    }
    assert!(!pki.join("mygov-consent.pem").exists());

    // Nor a key put there by hand, even with --force.
    let stray = pki.join("stray.key");
    std::fs::write(&stray, "a key from elsewhere").unwrap();
    let output = issue("stray", true);
    let message = text(&output);
    assert!(!output.status.success(), "{message}");
    assert!(
        message.contains("stray.key") && message.contains("did not create"),
        "{message}"
    );
    assert_eq!(std::fs::read(&stray).unwrap(), b"a key from elsewhere");

    // A pair it issued is replaced with --force only.
    assert!(issue("carol", false).status.success());
    let key = std::fs::read(pki.join("carol.key")).unwrap();
    assert!(!issue("carol", false).status.success());
    assert_eq!(std::fs::read(pki.join("carol.key")).unwrap(), key);
    let output = issue("carol", true);
    assert!(output.status.success(), "{}", text(&output));
    assert_ne!(std::fs::read(pki.join("carol.key")).unwrap(), key);
}

#[test]
fn a_world_readable_private_key_is_refused_at_load() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let output = govbridge(&["pki", "init", "--dir", pki.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let config = dir.path().join("govbridge.toml");
    std::fs::write(&config, govbridge::dev::CONFIG_TEMPLATE).unwrap();
    govbridge::dev::write_policies(&dir.path().join("policies")).unwrap();
    govbridge::dev::write_descriptors(dir.path()).unwrap();
    let check = || govbridge(&["check-config", config.to_str().unwrap()]);
    assert!(check().status.success(), "{}", text(&check()));

    let key = pki.join("gateway.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = check();
    let message = text(&output);
    assert!(!output.status.success(), "{message}");
    assert!(
        message.contains("gateway.key") && message.contains("0644"),
        "{message}"
    );
    assert!(message.contains("chmod 600"), "{message}");

    // Shared with its group on purpose: loaded, with a warning.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let output = check();
    assert!(output.status.success(), "{}", text(&output));
}

/// Output piped into a reader that stops early (`| head -1`) ends the
/// command quietly, as SIGPIPE ends a Unix tool, not with a panic.
#[test]
fn a_reader_that_stops_early_ends_a_command_quietly() {
    let dir = dev_setup();
    let config = dir.path().join("govbridge.toml");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(["policy", "check", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before the command writes a line.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        matches!(output.status.code(), Some(0 | 141)),
        "{:?}: {stderr}",
        output.status
    );
}
