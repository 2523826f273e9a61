//! `govbridge consent`, run as an operator would against a real gateway
//! with the dev policies: granting, listing and revoking a citizen's
//! consent at the MyGov portal, and the errors a mistake gets.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use govbridge::consent::artefact::IssuerKeys;
use support::{Bed, dev_bed, govbridge, text};

const CBAO_CREDIT: &str = "SN/COM/CBAO/credit";
const TAX: &str = "SN/GOV/DGID/tax";
const CLEARANCE: &str = "/govbridge.tax.v1.TaxAuthority/GetTaxClearance";
const INCOME: &str = "/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome";
const GRANT: &str = "/govbridge.consent.v1.Consent/Grant";

/// Runs `govbridge consent ARGS` against the bed's gateway, off the
/// runtime that serves it.
async fn consent(bed: &Bed, args: &[&str]) -> std::process::Output {
    let config = bed.dir().join("govbridge.toml");
    let mut all: Vec<String> = vec!["consent".into()];
    all.extend(args.iter().map(|arg| (*arg).to_owned()));
    all.extend([
        "--config".into(),
        config.to_str().unwrap().to_owned(),
        "--gateway".into(),
        bed.gateway.to_string(),
    ]);
    tokio::task::spawn_blocking(move || {
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        govbridge(&all)
    })
    .await
    .unwrap()
}

/// Expects success; returns standard output.
async fn ok(bed: &Bed, args: &[&str]) -> String {
    let output = consent(bed, args).await;
    assert!(
        output.status.success(),
        "govbridge consent {}: {}",
        args.join(" "),
        text(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Expects failure; returns everything printed.
async fn fails(bed: &Bed, args: &[&str]) -> String {
    let output = consent(bed, args).await;
    assert!(
        !output.status.success(),
        "govbridge consent {} succeeded: {}",
        args.join(" "),
        text(&output)
    );
    text(&output)
}

/// The table row of consent `id` in `list` output.
fn row<'a>(list: &'a str, id: &str) -> &'a str {
    list.lines()
        .find(|line| line.starts_with(id))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_list_and_revoke_a_consent_through_the_gateway() {
    let bed = dev_bed().await;
    let nin = bed.data.citizens[0].nin.to_string();

    let granted = ok(
        &bed,
        &[
            "grant",
            "--nin",
            &nin,
            "--consumer",
            CBAO_CREDIT,
            "--provider",
            TAX,
            "--method",
            CLEARANCE,
            "--method",
            INCOME,
            "--purpose",
            "CREDIT-SCORING",
            "--max-uses",
            "3",
            "--valid-for",
            "30d",
            "--user",
            "operator-7",
            "--reason",
            "demo for the board",
        ],
    )
    .await;
    // One consent may cover several services, each at its own provider
    // (another citizen's: the list below is the first citizen's).
    let other = bed.data.citizens[1].nin.to_string();
    let both = ok(
        &bed,
        &[
            "grant",
            "--nin",
            &other,
            "--consumer",
            CBAO_CREDIT,
            "--provider",
            TAX,
            "--provider",
            "SN/GOV/ANEC/civil-registry",
            "--method",
            CLEARANCE,
            "--method",
            "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity",
            "--purpose",
            "CREDIT-SCORING",
        ],
    )
    .await;
    assert!(both.starts_with("granted consent "), "{both}");
    let id = granted
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("granted consent "))
        .unwrap_or_else(|| panic!("no consent id in:\n{granted}"))
        .to_owned();
    assert!(granted.contains(&format!("citizen    {nin}")), "{granted}");
    assert!(granted.contains("max uses   3"), "{granted}");
    // The artefact is the portal's signed consent, as the bank will send it.
    let artefact = granted.lines().last().unwrap();
    let keys = IssuerKeys::load(&bed.pki.join(govbridge::dev::CONSENT_KEYS)).unwrap();
    let claims = keys.verify(artefact).unwrap();
    assert_eq!(claims.consent_id, id);
    assert_eq!(claims.subject, nin);
    assert_eq!(claims.consumer, CBAO_CREDIT);
    assert_eq!(claims.methods, [CLEARANCE, INCOME]);
    assert_eq!(claims.max_uses, 3);
    let days = (claims.expires - claims.not_before) / 86_400;
    assert!((29..=30).contains(&days), "valid for {days} days");

    let list = ok(&bed, &["list", "--nin", &nin]).await;
    assert!(list.starts_with("ID "), "{list}");
    let line = row(&list, &id);
    for cell in [
        CBAO_CREDIT,
        "CREDIT-SCORING",
        " active ",
        " 3 ",
        CLEARANCE,
        INCOME,
    ] {
        assert!(line.contains(cell), "{cell} missing from {line}");
    }
    let json = ok(&bed, &["list", "--nin", &nin, "--json"]).await;
    let records: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{json}");
    assert_eq!(records[0]["consent_id"], id.as_str());
    assert_eq!(records[0]["state"], "active");
    assert_eq!(records[0]["artefact"], artefact);

    let revoked = ok(&bed, &["revoke", "--nin", &nin, "--id", &id]).await;
    assert!(
        revoked.starts_with(&format!("revoked consent {id}")),
        "{revoked}"
    );
    let list = ok(&bed, &["list", "--nin", &nin]).await;
    assert!(row(&list, &id).contains(" revoked "), "{list}");

    // A second revocation is the portal's refusal, named as such.
    let again = fails(&bed, &["revoke", "--nin", &nin, "--id", &id]).await;
    assert!(
        again.contains("the MyGov portal answered FAILED_PRECONDITION: the consent is revoked"),
        "{again}"
    );
    // Another citizen sees none of it.
    let other = bed.data.citizens[2].nin.to_string();
    let list = ok(&bed, &["list", "--nin", &other]).await;
    assert_eq!(list, format!("no consents for {other}\n"));

    // Each call was the portal app's, declared as the dev policies ask:
    // the grant's decision record names the operator and their reason.
    let data = bed.exchange_log().dir().to_str().unwrap().to_owned();
    let query = tokio::task::spawn_blocking(move || {
        govbridge(&[
            "audit", "query", "--data", &data, "--method", GRANT, "--json",
        ])
    })
    .await
    .unwrap();
    assert!(query.status.success(), "{}", text(&query));
    let record: serde_json::Value = serde_json::from_str(
        String::from_utf8(query.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["phase"], "decision");
    assert_eq!(record["allowed"], true);
    assert_eq!(record["caller"], "SN/GOV/MYGOV/app");
    assert_eq!(record["purpose"], "CITIZEN-SELF-SERVICE");
    assert_eq!(record["user_id"], "operator-7");
    assert_eq!(record["reason"], "demo for the board");
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_are_named_and_exit_nonzero() {
    let bed = dev_bed().await;
    let nin = bed.data.citizens[0].nin.to_string();
    let grant = |consumer: &'static str, method: &'static str, purpose: &'static str| {
        [
            "grant",
            "--nin",
            "NIN",
            "--consumer",
            consumer,
            "--provider",
            TAX,
            "--method",
            method,
            "--purpose",
            purpose,
        ]
    };
    let with_nin = |args: [&'static str; 11]| -> Vec<String> {
        args.iter()
            .map(|arg| {
                if *arg == "NIN" {
                    nin.clone()
                } else {
                    (*arg).to_owned()
                }
            })
            .collect()
    };
    let cases: [(Vec<String>, &str); 9] = [
        (
            with_nin(grant("SN/COM/NOBODY/kyc", CLEARANCE, "CREDIT-SCORING")),
            "--consumer SN/COM/NOBODY/kyc: not a member registered in",
        ),
        (
            with_nin(grant("CBAO", CLEARANCE, "CREDIT-SCORING")),
            "--consumer CBAO",
        ),
        (
            with_nin(grant(CBAO_CREDIT, "GetTaxClearance", "CREDIT-SCORING")),
            "--method GetTaxClearance: expected a gRPC path",
        ),
        (
            with_nin(grant(CBAO_CREDIT, "/acme.v1.Acme/Get", "CREDIT-SCORING")),
            "the service acme.v1.Acme is not published",
        ),
        (
            with_nin(grant(
                CBAO_CREDIT,
                "/govbridge.tax.v1.TaxAuthority/GetTaxClearence",
                "CREDIT-SCORING",
            )),
            "govbridge.tax.v1.TaxAuthority has no method GetTaxClearence",
        ),
        (
            with_nin(grant(
                CBAO_CREDIT,
                "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity",
                "CREDIT-SCORING",
            )),
            "no --provider given serves govbridge.civilregistry.v1.CivilRegistry",
        ),
        (
            with_nin(grant(CBAO_CREDIT, CLEARANCE, "FUN")),
            "--purpose FUN: not a purpose registered",
        ),
        (
            vec!["list".into(), "--nin".into(), "12345".into()],
            "--nin 12345: a NIN is 13 digits",
        ),
        (
            vec![
                "revoke".into(),
                "--nin".into(),
                nin.clone(),
                "--id".into(),
                "no-such-consent".into(),
            ],
            "the MyGov portal answered NOT_FOUND",
        ),
    ];
    for (args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let printed = fails(&bed, &args).await;
        assert!(printed.contains(expected), "{expected:?} not in: {printed}");
    }

    // TLS material: a missing file, another member's certificate.
    let missing = bed.dir().join("nowhere.pem");
    let printed = fails(
        &bed,
        &["list", "--nin", &nin, "--cert", missing.to_str().unwrap()],
    )
    .await;
    assert!(printed.contains("nowhere.pem"), "{printed}");
    let bank = bed.pki.join("member-cbao-kyc.pem");
    let printed = fails(
        &bed,
        &["list", "--nin", &nin, "--cert", bank.to_str().unwrap()],
    )
    .await;
    assert!(
        printed.contains("certifies SN/COM/CBAO/kyc; only the citizens' portal"),
        "{printed}"
    );

    // The gateway's own refusals carry their bridge-error.
    let printed = fails(&bed, &["list", "--nin", &nin, "--reason", "   "]).await;
    assert!(
        printed.contains("refused the call: INVALID_ARGUMENT (bridge-error: bad-header)"),
        "{printed}"
    );
    assert!(printed.contains("bridge-request-id"), "{printed}");

    // A configuration that is not there.
    let output = tokio::task::spawn_blocking(move || {
        govbridge(&[
            "consent",
            "list",
            "--nin",
            &nin,
            "--config",
            "/nonexistent/govbridge.toml",
        ])
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    assert!(
        text(&output).contains("/nonexistent/govbridge.toml: cannot read"),
        "{}",
        text(&output)
    );
    bed.stop().await;
}
