//! `govbridge demo --once` plays its whole story against the real gateway.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn the_demo_plays_every_step_as_told() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    // Its logs on, to check they are plain text when not on a terminal.
    let (stdout, stderr) = demo(&["--dir", path], "info");
    for expected in [
        "[1/11]",
        "bridge-error policy-denied",
        "bridge-error consent-subject-mismatch",
        "1000 answers",
        "bridge-error consent-revoked",
        "is in the signed tree",
        "[10/11] CBAO's trade-finance desk verifies an Azerbaijani company",
        "tax service: in good standing, VAT payer since",
        "Azerbaijan's log: 4 records, every hash and checkpoint verified",
        "Azerbaijan holds Senegal's signed assertion for it",
        "The story went as told",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in\n{stdout}");
    }
    // Senegal's gateway stopped cleanly: Azerbaijan witnessed its log to
    // the end.
    let data = dir.path().join("data");
    let verified = std::process::Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(["audit", "verify", "--data"])
        .arg(&data)
        .arg("--key")
        .arg(data.join("log-key.pub"))
        .arg("--witness")
        .arg(dir.path().join("az/pki/federation.pub"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        said.contains("the latest checkpoint is cosigned by AZ-federation"),
        "{said}"
    );
    // Logs written to a pipe or a file carry no terminal colour codes.
    assert!(stderr.contains("gateway serving"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "colour codes in\n{stderr}");
}

/// `govbridge demo --once --nodes 3` plays the same story across a fleet
/// on a throwaway PostgreSQL cluster: the consent granted through node 1,
/// used through node 2, revoked through node 3 (and refused on node 2),
/// the Data Tracker read through node 1, and the fleet's one log copied,
/// verified and proven.
#[test]
fn the_demo_plays_across_a_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let (stdout, stderr) = demo(&["--nodes", "3", "--dir", path], "warn");
    let steps: Vec<&str> = stdout.split("\n[").collect();
    let through = |step: usize, node: &str| {
        let text = steps
            .iter()
            .find(|text| text.starts_with(&format!("{step}/9]")))
            .unwrap();
        assert!(
            text.contains(&format!("(through node {node} of 3")),
            "step {step} not through node {node}:\n{stdout}"
        );
    };
    through(1, "1");
    through(4, "2");
    through(7, "3");
    through(8, "1");
    for expected in [
        "bridge-error consent-revoked",
        "govbridge audit pull",
        "is in the signed tree",
        "The story went as told",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in\n{stdout}");
    }
    // Its nodes close their connections to the database before the
    // cluster stops, rather than report them lost.
    let warned = warnings(&stderr);
    assert!(warned.is_empty(), "{}", warned.join("\n"));
}

/// `govbridge demo --once ARGS` with `RUST_LOG=log`, which must succeed:
/// what it printed, and what it logged.
fn demo(args: &[&str], log: &str) -> (String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(["demo", "--once"])
        .args(args)
        .env("RUST_LOG", log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The lines of a log that warn or report an error.
fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains(" ERROR ") || line.contains(" WARN "))
        .collect()
}

#[test]
fn a_demo_in_a_directory_of_its_own_stops_everything_before_removing_it() {
    let (stdout, stderr) = demo(&[], "info");
    let dir = stdout
        .lines()
        .find_map(|line| line.strip_prefix("govbridge demo: the dev setup in "))
        .unwrap_or_else(|| panic!("the demo does not say where it runs:\n{stdout}"));
    assert!(!std::path::Path::new(dir).exists(), "{dir} is left behind");
    // Azerbaijan's gateway used to go on watching its files while they
    // were removed, and reload without them.
    let warned = warnings(&stderr);
    assert!(warned.is_empty(), "{}", warned.join("\n"));
}

/// A demo stopped with Ctrl-C while it starts its fleet (here, as its
/// PostgreSQL starts) leaves nothing behind: it finishes starting, stops
/// what it started, and removes its directory.
#[test]
fn a_demo_stopped_with_ctrl_c_leaves_nothing_behind() {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(["demo", "--once", "--nodes", "2"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut dir = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(found) = line.strip_prefix("govbridge demo: the dev setup in ") {
            dir = Some(found.to_owned());
            break;
        }
    }
    let dir = dir.expect("the demo says where it runs");
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    // What is left to read, so that printing never blocks it.
    let said: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {said:?}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} is left behind");
    // No process (the fleet's postgres) still runs from it.
    let running: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&dir))
        .collect();
    assert!(running.is_empty(), "still running: {running:?}");
}
