//! `govbridge audit`, run as an operator and a partner would, against the
//! exchange log of a real gateway: verifying it, proving records offline,
//! noticing tampering, reading and searching it.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::civilregistry::v1::{GetPersonRequest, VerifyIdentityRequest};
use support::{Bed, CBAO_KYC, govbridge, text};
use tonic::Code;

const VERIFY_IDENTITY: &str = "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity";
const GET_PERSON: &str = "/govbridge.civilregistry.v1.CivilRegistry/GetPerson";

/// Runs `govbridge` and expects success; returns standard output.
fn ok(args: &[&str]) -> String {
    let output = govbridge(args);
    assert!(
        output.status.success(),
        "govbridge {}: {}",
        args.join(" "),
        text(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `govbridge` and expects failure; returns everything it printed.
fn fails(args: &[&str]) -> String {
    let output = govbridge(args);
    assert!(
        !output.status.success(),
        "govbridge {} succeeded: {}",
        args.join(" "),
        text(&output)
    );
    text(&output)
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A gateway with the dev policies.
async fn bed() -> Bed {
    Bed::builder().dev_policies().start().await
}

/// The exchange log's data directory.
fn data_dir(bed: &Bed) -> PathBuf {
    bed.exchange_log().dir().to_owned()
}

/// Signs a checkpoint of every record so far, as the gateway does every
/// `exchange_log.checkpoint_interval`.
async fn checkpoint(bed: &Bed) {
    bed.exchange_log().checkpoint().await.unwrap().unwrap();
}

fn declared<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("bridge-purpose", "KYC".parse().unwrap());
    metadata.insert("bridge-reason", "dossier 2025-0042".parse().unwrap());
    metadata.insert("bridge-user-id", "agent-17".parse().unwrap());
    metadata.insert("bridge-request-id", request_id.parse().unwrap());
    request
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A call the dev policies allow (a bank verifies an identity); returns its
/// request id.
async fn allowed_call(bed: &Bed) -> String {
    let citizen = bed.data.citizens.iter().find(|c| c.is_alive()).unwrap();
    let request_id = new_request_id();
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    registry
        .verify_identity(declared(
            VerifyIdentityRequest {
                nin: citizen.nin.to_string(),
                first_names: citizen.first_names.clone(),
                last_name: citizen.last_name.to_owned(),
                date_of_birth: citizen.date_of_birth.to_string(),
            },
            &request_id,
        ))
        .await
        .unwrap();
    request_id
}

/// A call the dev policies deny (a bank reads a civil record); returns its
/// request id.
async fn denied_call(bed: &Bed) -> String {
    let citizen = bed.data.citizens.iter().find(|c| c.is_alive()).unwrap();
    let request_id = new_request_id();
    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let status = registry
        .get_person(declared(
            GetPersonRequest {
                nin: citizen.nin.to_string(),
            },
            &request_id,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    request_id
}

/// Decodes `tail --json` or `query --json` output.
fn json_lines(output: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_log_verifies_and_its_records_prove_offline() {
    let bed = bed().await;
    let data = data_dir(&bed);
    let key = data.join("log-key.pub");
    let allowed = allowed_call(&bed).await;
    let denied = denied_call(&bed).await;
    // The records are durable, but no checkpoint signs them yet (the first
    // is due exchange_log.checkpoint_interval, 10 s, after the start).
    let early = fails(&[
        "audit",
        "prove",
        "--data",
        path(&data),
        "--request-id",
        &allowed,
    ]);
    assert!(
        early.contains("exchange_log.checkpoint_interval"),
        "{early}"
    );
    checkpoint(&bed).await;

    let report = ok(&[
        "audit",
        "verify",
        "--data",
        path(&data),
        "--key",
        path(&key),
    ]);
    assert!(report.contains("3 records"), "{report}");
    assert!(report.trim_end().ends_with("ok"), "{report}");
    // Without --key, the key next to the log is used, with a warning.
    let output = govbridge(&["audit", "verify", "--data", path(&data)]);
    assert!(output.status.success(), "{}", text(&output));
    let warning = String::from_utf8_lossy(&output.stderr);
    assert!(
        warning.contains("warning") && warning.contains("--key"),
        "{warning}"
    );

    // The partner gets a bundle for its call and checks it with the key
    // alone.
    let scratch = tempfile::tempdir().unwrap();
    let bundle = scratch.path().join("proof.json");
    // What the proof of the allowed call goes into `out` says, once it
    // succeeded (or failed, as `written` says).
    let prove_into = |out: &Path, written: bool| {
        let (data, out) = (path(&data), path(out));
        let args = [
            "audit",
            "prove",
            "--data",
            data,
            "--request-id",
            &allowed,
            "--out",
            out,
        ];
        if written { ok(&args) } else { fails(&args) }
    };
    prove_into(&bundle, true);
    // Never over a file that is not a proof: the log's own database least
    // of all.
    let database = data.join("exchange-log.sqlite");
    for existing in [&database, &data.join("log-key.pub")] {
        let refused = prove_into(existing, false);
        assert!(refused.contains("is not a proof bundle"), "{refused}");
    }
    let header = std::fs::read(&database).unwrap();
    assert!(
        header.starts_with(b"SQLite format 3\0"),
        "the database was written over"
    );
    ok(&[
        "audit",
        "verify",
        "--data",
        path(&data),
        "--key",
        path(&key),
    ]);
    let checked = ok(&["audit", "check-proof", path(&bundle), "--key", path(&key)]);
    assert!(checked.contains("OK: record 0 "), "{checked}");
    assert!(checked.contains("OK: record 1 "), "{checked}");
    assert!(checked.contains(&allowed), "{checked}");
    assert!(checked.contains(VERIFY_IDENTITY), "{checked}");
    assert!(checked.contains(CBAO_KYC), "{checked}");

    // One byte of the record changed: the proof fails, naming the record.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    let record = json[0]["record"].as_str().unwrap();
    let mut bytes = BASE64.decode(record).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    json[0]["record"] = BASE64.encode(&bytes).into();
    let forged = scratch.path().join("forged.json");
    std::fs::write(&forged, json.to_string()).unwrap();
    let refused = fails(&["audit", "check-proof", path(&forged), "--key", path(&key)]);
    assert!(refused.contains("forged.json: record 0"), "{refused}");
    assert!(refused.contains("not in the checkpointed log"), "{refused}");

    // The refusal is provable too, to standard output.
    let denial = ok(&[
        "audit",
        "prove",
        "--data",
        path(&data),
        "--request-id",
        &denied,
    ]);
    let denial_file = scratch.path().join("denial.json");
    std::fs::write(&denial_file, denial).unwrap();
    let checked = ok(&[
        "audit",
        "check-proof",
        path(&denial_file),
        "--key",
        path(&key),
    ]);
    assert!(checked.contains("OK: record 2 "), "{checked}");
    assert!(checked.contains("denied"), "{checked}");
    assert!(checked.contains("PERMISSION_DENIED"), "{checked}");

    // Another key proves nothing.
    let other = scratch.path().join("other.pub");
    let other_key = govbridge::exchange_log::note::SigningKey::generate(
        std::fs::read_to_string(&key)
            .unwrap()
            .split('+')
            .next()
            .unwrap(),
    )
    .unwrap();
    std::fs::write(&other, format!("{}\n", other_key.verifier())).unwrap();
    let refused = fails(&["audit", "check-proof", path(&bundle), "--key", path(&other)]);
    assert!(refused.contains("no valid signature"), "{refused}");

    // A partner saves a checkpoint; later the log has grown and still
    // extends it.
    let old = scratch.path().join("old.checkpoint");
    std::fs::write(&old, ok(&["audit", "checkpoint", "--data", path(&data)])).unwrap();
    allowed_call(&bed).await;
    denied_call(&bed).await;
    checkpoint(&bed).await;
    let consistent = ok(&[
        "audit",
        "consistency",
        "--data",
        path(&data),
        "--old",
        path(&old),
        "--key",
        path(&key),
    ]);
    assert!(consistent.starts_with("OK"), "{consistent}");
    assert!(
        consistent.contains("(6 records)") && consistent.contains("(3 records)"),
        "{consistent}"
    );
    assert!(consistent.contains("proof ("), "{consistent}");

    // A checkpoint that is not the log's.
    let text = std::fs::read_to_string(&old).unwrap();
    std::fs::write(&old, text.replacen("\n3\n", "\n2\n", 1)).unwrap();
    let refused = fails(&[
        "audit",
        "consistency",
        "--data",
        path(&data),
        "--old",
        path(&old),
        "--key",
        path(&key),
    ]);
    assert!(refused.contains("old.checkpoint"), "{refused}");
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_cosignature_older_than_the_auditor_allows_fails_verify() {
    use govbridge::exchange_log::store;
    use govbridge::note::{Checkpoint, SigningKey, Verifier};

    let bed = bed().await;
    allowed_call(&bed).await;
    checkpoint(&bed).await;
    let data = data_dir(&bed);
    let latest = store::Store::open_read_only(&data)
        .unwrap()
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    let log_key = Verifier::read(&data.join("log-key.pub")).unwrap();
    let text = Checkpoint::open(&latest.note, &log_key).unwrap().text();
    // The partner's witness cosigned the latest checkpoint two hours ago
    // and nothing since: what a log cut back to that checkpoint shows.
    let witness = SigningKey::generate("AZ-federation").unwrap();
    let two_hours_ago = u64::try_from(govbridge::unix_time::now()).unwrap() - 7_200;
    let cosignature = witness.cosign(&text, two_hours_ago);
    store::add_cosignature(&data, latest.size, &cosignature).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let key = scratch.path().join("AZ-federation.pub");
    std::fs::write(&key, witness.verifier().to_string()).unwrap();
    let (data_arg, key_arg) = (path(&data), path(&key));
    let verify = |age: Option<&'static str>| {
        let mut args = vec!["audit", "verify", "--data", data_arg, "--witness", key_arg];
        args.extend(["--max-unwitnessed", "1000000"]);
        args.extend(age.into_iter().flat_map(|age| ["--max-witness-age", age]));
        args
    };
    let unbounded = ok(&verify(None));
    assert!(
        unbounded.contains("cosigned by AZ-federation"),
        "{unbounded}"
    );
    let stale = fails(&verify(Some("1h")));
    assert!(
        stale.contains("the newest cosignature by AZ-federation is from")
            && stale.contains("2 h 0 min ago, older than --max-witness-age 1 h 0 min"),
        "{stale}"
    );
    ok(&verify(Some("3h")));
    ok(&verify(Some("1d")));
    // An age with no witness to apply it to is a mistake, said as one.
    let alone = fails(&[
        "audit",
        "verify",
        "--data",
        path(&data),
        "--max-witness-age",
        "1h",
    ]);
    assert!(alone.contains("--witness"), "{alone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_database_is_named() {
    let bed = bed().await;
    let data = data_dir(&bed);
    let key = data.join("log-key.pub");
    allowed_call(&bed).await;
    denied_call(&bed).await;
    allowed_call(&bed).await;
    let verify = [
        "audit",
        "verify",
        "--data",
        path(&data),
        "--key",
        path(&key),
    ];
    ok(&verify);

    let database = rusqlite::Connection::open(data.join("exchange-log.sqlite")).unwrap();
    // A column edited with sqlite3: the record says otherwise.
    database
        .execute(
            "UPDATE records SET caller = 'SN/GOV/DGID/tax' WHERE idx = 2",
            [],
        )
        .unwrap();
    let refused = fails(&verify);
    assert!(refused.contains("exchange-log.sqlite"), "{refused}");
    assert!(refused.contains("record 2: column `caller`"), "{refused}");
    database
        .execute("UPDATE records SET caller = ?1 WHERE idx = 2", [CBAO_KYC])
        .unwrap();
    ok(&verify);

    // The denial rewritten as an allowed call.
    let bytes: Vec<u8> = database
        .query_row("SELECT record FROM records WHERE idx = 2", [], |row| {
            row.get(0)
        })
        .unwrap();
    let mut record =
        <govbridge::exchange_log::ExchangeRecord as prost::Message>::decode(bytes.as_slice())
            .unwrap();
    assert!(!record.allowed);
    record.allowed = true;
    database
        .execute(
            "UPDATE records SET record = ?1, allowed = 1 WHERE idx = 2",
            [prost::Message::encode_to_vec(&record)],
        )
        .unwrap();
    let refused = fails(&verify);
    assert!(refused.contains("record 2 was altered"), "{refused}");
    database
        .execute(
            "UPDATE records SET record = ?1, allowed = 0 WHERE idx = 2",
            [bytes],
        )
        .unwrap();
    ok(&verify);

    // A record deleted.
    database
        .execute("DELETE FROM records WHERE idx = 1", [])
        .unwrap();
    let refused = fails(&verify);
    assert!(refused.contains("record 1 is missing"), "{refused}");
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_query_select_the_expected_records() {
    let bed = bed().await;
    let data = data_dir(&bed);
    let first = allowed_call(&bed).await;
    let denied = denied_call(&bed).await;
    let second = allowed_call(&bed).await;

    let lines = ok(&["audit", "tail", "--data", path(&data), "--from", "0"]);
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(lines[0].starts_with("0 "), "{}", lines[0]);
    assert!(lines[0].contains("decision"), "{}", lines[0]);
    assert!(
        lines[0].contains(&format!("{CBAO_KYC} -> ")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(VERIFY_IDENTITY) && lines[0].contains(&first));
    assert!(
        lines[1].contains("outcome") && lines[1].contains(" OK "),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("DENY PERMISSION_DENIED (policy-denied)"),
        "{}",
        lines[2]
    );
    let records = json_lines(&ok(&[
        "audit",
        "tail",
        "--data",
        path(&data),
        "--from",
        "3",
        "--json",
    ]));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["index"], 3);
    assert_eq!(records[0]["request_id"], second.as_str());
    assert_eq!(records[1]["phase"], "outcome");
    assert_eq!(records[1]["decision_index"], 3);
    assert_eq!(records[1]["grpc_status"], 0);

    let query = |filters: &[&str]| {
        let mut args = vec!["audit", "query", "--data", path(&data), "--json"];
        args.extend_from_slice(filters);
        json_lines(&ok(&args))
    };
    let indexes = |records: &[serde_json::Value]| -> Vec<u64> {
        records
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect()
    };
    let refusals = query(&["--decision", "deny"]);
    assert_eq!(indexes(&refusals), [2]);
    assert_eq!(refusals[0]["request_id"], denied.as_str());
    assert_eq!(indexes(&query(&["--status", "PERMISSION_DENIED"])), [2]);
    assert_eq!(indexes(&query(&["--method", GET_PERSON])), [2]);
    assert_eq!(indexes(&query(&["--decision", "allow"])), [0, 1, 3, 4]);
    assert_eq!(
        indexes(&query(&["--caller", CBAO_KYC, "--status", "0"])),
        [1, 4]
    );
    assert!(query(&["--caller", "SN/GOV/DGID/tax"]).is_empty());
    assert!(query(&["--since", "2999-01-01T00:00:00Z"]).is_empty());
    assert_eq!(query(&["--until", "2999-01-01T00:00:00Z"]).len(), 5);
    assert!(query(&["--until", "0"]).is_empty());
    let subject = records[1]["subject"].as_str().unwrap().to_owned();
    if !subject.is_empty() {
        assert_eq!(indexes(&query(&["--subject", &subject])), [1, 4]);
    }

    // Pages, with the cursor to the next.
    let page = ok(&["audit", "query", "--data", path(&data), "--limit", "2"]);
    let page: Vec<&str> = page.lines().collect();
    assert_eq!(page.len(), 3, "{page:#?}");
    assert_eq!(page[2], "next page: --after 1");
    let page = ok(&[
        "audit",
        "query",
        "--data",
        path(&data),
        "--limit",
        "2",
        "--after",
        "3",
    ]);
    assert_eq!(page.lines().count(), 1, "{page}");
    assert!(page.starts_with("4 "), "{page}");

    let refused = fails(&[
        "audit",
        "query",
        "--data",
        path(&data),
        "--since",
        "yesterday",
    ]);
    assert!(refused.contains("--since yesterday"), "{refused}");
    bed.stop().await;
}

/// Characters that end a line, drive a terminal or reorder text.
fn unsafe_for_a_terminal(c: char) -> bool {
    govbridge::wire::escape::is_unsafe(c)
}

/// What a caller sends (a subject in its request, a method in its path)
/// cannot forge a line of `audit tail`, `query` or `check-proof`, nor
/// repaint the operator's terminal: it is shown escaped, one record per
/// line, while the log keeps the bytes received.
#[tokio::test]
async fn caller_text_is_shown_escaped_and_stored_as_received() {
    use prost::Message as _;
    // Every call allowed: the request reaches the registry, and its
    // subject the exchange log.
    let bed = Bed::start().await;
    let data = data_dir(&bed);
    let subject = "19\x1b[2J\u{202e}0 OK\n7 decision forged";
    let method = "/govbridge.civilregistry.v1.CivilRegistry/Get\u{9b}31m\u{202e}nosreP";

    let mut registry = CivilRegistryClient::new(bed.client("cbao-kyc").await);
    let status = registry
        .get_person(GetPersonRequest {
            nin: subject.to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut client = bed.client("cbao-kyc").await;
    let refused = support::raw_call(
        &mut client,
        method,
        &GetPersonRequest {
            nin: "1".to_owned(),
        },
    )
    .await;
    assert_eq!(refused.headers()["bridge-error"], "bad-path");

    // Stored as received.
    let store = govbridge::exchange_log::Store::open_read_only(&data).unwrap();
    let records: Vec<govbridge::exchange_log::ExchangeRecord> = store
        .records_from(0, 10)
        .unwrap()
        .iter()
        .map(|stored| {
            govbridge::exchange_log::ExchangeRecord::decode(stored.bytes.as_slice()).unwrap()
        })
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].subject, subject);
    assert_eq!(records[2].method, method);
    drop(store);

    // Shown escaped: one record per line, nothing a terminal acts on.
    let shown = ok(&["audit", "tail", "--data", path(&data), "--from", "0"]);
    assert!(
        !shown.contains(|c| c != '\n' && unsafe_for_a_terminal(c)),
        "{shown:?}"
    );
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    for (index, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&format!("{index} ")), "{line}");
    }
    assert!(
        lines[2].contains("/Get\\u{9b}31m\\u{202e}nosreP"),
        "{}",
        lines[2]
    );

    // JSON: the exact values for a parser, escaped for a terminal.
    for args in [
        vec![
            "audit",
            "tail",
            "--data",
            path(&data),
            "--from",
            "0",
            "--json",
        ],
        vec!["audit", "query", "--data", path(&data), "--json"],
    ] {
        let shown = ok(&args);
        assert!(
            !shown.contains(|c| c != '\n' && unsafe_for_a_terminal(c)),
            "{shown:?}"
        );
        let records = json_lines(&shown);
        assert_eq!(records.len(), 3, "{shown}");
        assert_eq!(records[1]["subject"], subject);
        assert_eq!(records[2]["method"], method);
    }

    // `query` finds by the raw value and shows it escaped.
    let found = ok(&["audit", "query", "--data", path(&data), "--method", method]);
    assert_eq!(found.lines().count(), 1, "{found}");
    assert!(
        !found.contains(|c| c != '\n' && unsafe_for_a_terminal(c)),
        "{found:?}"
    );

    // `check-proof` describes the record field by field, escaped too.
    checkpoint(&bed).await;
    let scratch = tempfile::tempdir().unwrap();
    let bundle = scratch.path().join("proof.json");
    let request_id = records[1].request_id.clone();
    ok(&[
        "audit",
        "prove",
        "--data",
        path(&data),
        "--request-id",
        &request_id,
        "--out",
        path(&bundle),
    ]);
    let key = data.join("log-key.pub");
    let checked = ok(&["audit", "check-proof", path(&bundle), "--key", path(&key)]);
    assert!(
        !checked.contains(|c| c != '\n' && unsafe_for_a_terminal(c)),
        "{checked:?}"
    );
    let subject_lines: Vec<&str> = checked
        .lines()
        .filter(|line| line.trim_start().starts_with("subject "))
        .collect();
    assert_eq!(
        subject_lines,
        ["  subject        19\\u{1b}[2J\\u{202e}0 OK\\u{a}7 decision forged"],
        "{checked}"
    );
    bed.stop().await;
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    // No log: said of the log (not of the key beside it), once.
    let database = missing.join("exchange-log.sqlite");
    for command in [
        &["verify"][..],
        &["prove", "--index", "1"],
        &["consistency", "--old", "1"],
    ] {
        let args: Vec<&str> = ["audit"]
            .into_iter()
            .chain(command.iter().copied())
            .chain(["--data", path(&missing)])
            .collect();
        let refused = fails(&args);
        assert_eq!(
            refused.trim(),
            format!("error: {}: no exchange log here", database.display()),
            "{command:?}"
        );
    }

    let key = dir.path().join("key.pub");
    std::fs::write(&key, "not a key\n").unwrap();
    let refused = fails(&[
        "audit",
        "verify",
        "--data",
        path(&missing),
        "--key",
        path(&key),
    ]);
    assert!(refused.contains("key.pub"), "{refused}");

    let refused = fails(&["audit", "tail", "--data", path(&missing)]);
    assert!(
        refused.contains("nowhere/exchange-log.sqlite") && refused.contains("no exchange log"),
        "{refused}"
    );

    let valid_key = dir.path().join("valid.pub");
    let signing = govbridge::exchange_log::note::SigningKey::generate("govbridge/test").unwrap();
    std::fs::write(&valid_key, format!("{}\n", signing.verifier())).unwrap();
    let bundle = dir.path().join("bundle.json");
    std::fs::write(&bundle, "{\"format\": \"something else\"}").unwrap();
    let refused = fails(&[
        "audit",
        "check-proof",
        path(&bundle),
        "--key",
        path(&valid_key),
    ]);
    assert!(
        refused.contains("bundle.json") && refused.contains("not a proof bundle"),
        "{refused}"
    );

    let refused = fails(&["audit", "prove", "--data", path(&missing)]);
    assert!(refused.contains("--request-id"), "{refused}");
}
