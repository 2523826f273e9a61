//! The sandbox as a partner uses it: only the public API
//! (`govbridge::sandbox`, the generated clients, `govbridge sandbox
//! --manifest`), no test support code.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use govbridge::agencies::Agency;
use govbridge::identity::tls::ClientTls;
use govbridge::net::client::Channel;
use govbridge::proto::business::v1::GetCompanyRequest;
use govbridge::proto::business::v1::business_registry_client::BusinessRegistryClient;
use govbridge::proto::civilregistry::v1::VerificationResult;
use govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient;
use govbridge::proto::tax::v1::get_tax_clearance_request::Taxpayer;
use govbridge::proto::tax::v1::tax_authority_client::TaxAuthorityClient;
use govbridge::proto::tax::v1::{ClearanceStatus, GetTaxClearanceRequest};
use govbridge::sandbox::{self, ConsentGrant, Sandbox};
use tonic::Code;

const CBAO_KYC: &str = "SN/COM/CBAO/kyc";
const CBAO_CREDIT: &str = "SN/COM/CBAO/credit";
const CLEARANCE: &str = "/govbridge.tax.v1.TaxAuthority/GetTaxClearance";

async fn registry(sandbox: &Sandbox, member: &str) -> CivilRegistryClient<Channel> {
    CivilRegistryClient::new(sandbox.channel_as(member).await.unwrap())
}

fn clearance_of(nin: &str) -> GetTaxClearanceRequest {
    GetTaxClearanceRequest {
        taxpayer: Some(Taxpayer::SubjectNin(nin.to_owned())),
    }
}

#[tokio::test]
async fn known_people_answer_as_their_roles_say_under_the_dev_policies() {
    let sandbox = Sandbox::builder().start().await.unwrap();
    let roles = sandbox.roles();
    let mut kyc = registry(&sandbox, CBAO_KYC).await;

    let verify = |person: &sandbox::roles::Person| {
        sandbox::declared(person.verify_identity_request(), "KYC")
    };
    let adult = kyc
        .verify_identity(verify(&roles.adult_with_account))
        .await
        .unwrap();
    assert_eq!(adult.get_ref().result(), VerificationResult::Match);
    let deceased = kyc.verify_identity(verify(&roles.deceased)).await.unwrap();
    assert_eq!(deceased.get_ref().result(), VerificationResult::Deceased);

    // The exchange log holds the call: its decision, then its outcome.
    let records = sandbox.exchange_log().of_call(adult.metadata()).unwrap();
    let phases: Vec<_> = records.iter().map(|logged| logged.record.phase()).collect();
    assert_eq!(
        phases,
        [
            govbridge::exchange_log::Phase::Decision,
            govbridge::exchange_log::Phase::Outcome
        ]
    );
    assert_eq!(records[0].record.caller, CBAO_KYC);
    assert_eq!(records[1].record.subject, roles.adult_with_account.nin);
    assert!(sandbox.exchange_log().records().unwrap().len() >= 4);

    // The KYC desk may verify, not read the whole record.
    let request = govbridge::proto::civilregistry::v1::GetPersonRequest {
        nin: roles.adult_with_account.nin.clone(),
    };
    let refused = kyc
        .get_person(sandbox::declared(request, "KYC"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(sandbox::bridge_error(&refused), Some("policy-denied"));

    // A member the gateway does not know gets a certificate, and is
    // refused as unknown.
    let mut stranger = registry(&sandbox, "SN/COM/STRANGER/kyc").await;
    let refused = stranger
        .verify_identity(verify(&roles.adult_with_account))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(sandbox::bridge_error(&refused), Some("unknown-member"));
}

#[tokio::test]
async fn consent_shortcuts_grant_and_revoke_through_the_portal() {
    let sandbox = Sandbox::builder().start().await.unwrap();
    let citizen = sandbox.roles().adult_with_account.clone();
    let other = sandbox.roles().person_with_tax_arrears.clone();
    let mut credit = TaxAuthorityClient::new(sandbox.channel_as(CBAO_CREDIT).await.unwrap());
    let ask = |nin: &str| sandbox::declared(clearance_of(nin), "CREDIT-SCORING");

    // Without consent, the policy refuses.
    let refused = credit
        .get_tax_clearance(ask(&citizen.nin))
        .await
        .unwrap_err();
    assert_eq!(sandbox::bridge_error(&refused), Some("consent-missing"));

    let consent = sandbox
        .grant_consent(
            &ConsentGrant::new(&citizen.nin, CBAO_CREDIT, CLEARANCE, "CREDIT-SCORING").max_uses(10),
        )
        .await
        .unwrap();
    let answer = credit
        .get_tax_clearance(consent.attach(ask(&citizen.nin)))
        .await
        .unwrap();
    assert_eq!(answer.get_ref().status(), ClearanceStatus::Clear);
    let records = sandbox.exchange_log().of_call(answer.metadata()).unwrap();
    assert!(
        records
            .iter()
            .all(|logged| logged.record.consent_id == consent.id)
    );

    // The consent is the citizen's: it reads no one else.
    let refused = credit
        .get_tax_clearance(consent.attach(ask(&other.nin)))
        .await
        .unwrap_err();
    assert_eq!(
        sandbox::bridge_error(&refused),
        Some("consent-subject-mismatch")
    );

    // Revoked in the portal, refused at the gateway once its feed says so.
    sandbox.revoke_consent(&consent).await.unwrap();
    let revoked = Instant::now();
    loop {
        match credit
            .get_tax_clearance(consent.attach(ask(&citizen.nin)))
            .await
        {
            Err(status) if sandbox::bridge_error(&status) == Some("consent-revoked") => break,
            outcome => assert!(
                revoked.elapsed() < Duration::from_secs(2),
                "still {outcome:?} two seconds after the revocation"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn fault_switches_give_the_promised_statuses_through_the_gateway() {
    let sandbox = Sandbox::builder().start().await.unwrap();
    let citizen = sandbox.roles().adult_with_account.clone();
    let mut kyc = registry(&sandbox, CBAO_KYC).await;
    let verify = || sandbox::declared(citizen.verify_identity_request(), "KYC");
    let faults = sandbox.faults(Agency::CivilRegistry);

    // Latency: a caller's deadline passes at the gateway.
    faults.delay(Duration::from_secs(5));
    let mut late = verify();
    late.set_timeout(Duration::from_millis(200));
    let status = kyc.verify_identity(late).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // An error status: the agency's, relayed unchanged.
    faults.fail(Code::ResourceExhausted);
    let status = kyc.verify_identity(verify()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        sandbox::bridge_error(&status),
        None,
        "the agency's own status"
    );

    // Other agencies are untouched.
    let mut companies = BusinessRegistryClient::new(sandbox.channel_as(CBAO_KYC).await.unwrap());
    let request = GetCompanyRequest {
        ninea: sandbox.roles().company_in_good_standing.ninea.clone(),
    };
    companies
        .get_company(sandbox::declared(request, "KYC"))
        .await
        .unwrap();

    faults.clear();
    kyc.verify_identity(verify()).await.unwrap();

    // The agency falls over: the gateway answers UNAVAILABLE itself.
    faults.unavailable();
    let status = kyc.verify_identity(verify()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(sandbox::bridge_error(&status).is_some(), "{status:?}");
}

#[tokio::test]
async fn two_sandboxes_run_side_by_side_without_clashing() {
    let (first, second) = tokio::join!(
        Sandbox::builder().start(),
        Sandbox::builder().seed(7).start()
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_ne!(first.gateway_addr(), second.gateway_addr());
    assert_ne!(first.dir(), second.dir());
    assert_ne!(first.roles(), second.roles(), "another seed, other people");

    for sandbox in [&first, &second] {
        let person = &sandbox.roles().adult_with_account;
        let answer = registry(sandbox, CBAO_KYC)
            .await
            .verify_identity(sandbox::declared(person.verify_identity_request(), "KYC"))
            .await
            .unwrap();
        assert_eq!(answer.get_ref().result(), VerificationResult::Match);
        // Each exchange log holds its own call, and only that: the two
        // seeds have no citizen in common.
        let records = sandbox.exchange_log().records().unwrap();
        let subjects: Vec<&str> = records
            .iter()
            .map(|logged| logged.record.subject.as_str())
            .filter(|subject| !subject.is_empty())
            .collect();
        assert_eq!(subjects, [person.nin.as_str()], "{records:?}");
    }

    // Each has its own CA: the first's member certificate is no good at
    // the second.
    let (certificate, private_key) = first.credentials(CBAO_KYC).unwrap();
    let tls = ClientTls::new(second.ca_certificate(), certificate, private_key)
        .client_config()
        .unwrap();
    let logged = second.exchange_log().records().unwrap().len();
    // TLS 1.3: the client may finish its handshake before the server
    // refuses its certificate; then the first call fails instead.
    if let Ok(channel) = Channel::connect(second.gateway_addr(), sandbox::SERVER_NAME, tls).await {
        let person = &second.roles().adult_with_account;
        let refused = CivilRegistryClient::new(channel)
            .verify_identity(sandbox::declared(person.verify_identity_request(), "KYC"))
            .await
            .unwrap_err();
        assert_eq!(sandbox::bridge_error(&refused), None, "{refused:?}");
    }
    assert_eq!(
        second.exchange_log().records().unwrap().len(),
        logged,
        "a stranger's call reached the second gateway"
    );

    // Stopping one leaves the other serving; its files go with it.
    let dir = first.dir().to_owned();
    first.shutdown().await;
    assert!(!dir.exists());
    let person = &second.roles().adult_with_account;
    registry(&second, CBAO_KYC)
        .await
        .verify_identity(sandbox::declared(person.verify_identity_request(), "KYC"))
        .await
        .unwrap();
}

/// The manifest `govbridge sandbox` writes, as another language reads it.
#[derive(serde::Deserialize)]
struct Manifest {
    gateway: GatewayEntry,
    members: std::collections::HashMap<String, Credentials>,
    test_data: serde_json::Value,
    dir: std::path::PathBuf,
}

#[derive(serde::Deserialize)]
struct GatewayEntry {
    address: std::net::SocketAddr,
    server_name: String,
    ca_certificate: std::path::PathBuf,
}

#[derive(serde::Deserialize)]
struct Credentials {
    certificate: std::path::PathBuf,
    private_key: std::path::PathBuf,
}

/// `--manifest` names a file the sandbox replaces and then removes: one
/// that is there and is not a sandbox's manifest is refused, untouched.
#[test]
fn the_sandbox_command_never_takes_an_operators_file_for_its_manifest() {
    let scratch = tempfile::tempdir().unwrap();
    let notes = scratch.path().join("notes.md");
    std::fs::write(&notes, "# keep me\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(["sandbox", "--stop-with-parent", "--manifest"])
        .arg(&notes)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a sandbox's manifest"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "# keep me\n");
}

#[tokio::test]
async fn the_sandbox_command_writes_a_manifest_and_serves_until_its_input_closes() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("sandbox.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(["sandbox", "--stop-with-parent", "--manifest"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Readiness is the line it prints once the manifest is in place.
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        lines.find_map(|line| {
            line.ok()?
                .strip_prefix("sandbox ready: ")
                .map(str::to_owned)
        })
    });
    let announced = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("the sandbox did not start within 60 s")
        .unwrap()
        .expect("the sandbox exited before it was ready");
    assert_eq!(announced, path.display().to_string());

    let manifest: Manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let member = &manifest.members[CBAO_KYC];
    let tls = ClientTls::new(
        manifest.gateway.ca_certificate.clone(),
        member.certificate.clone(),
        member.private_key.clone(),
    )
    .client_config()
    .unwrap();
    let channel = Channel::connect(manifest.gateway.address, &manifest.gateway.server_name, tls)
        .await
        .unwrap();
    let mut kyc = CivilRegistryClient::new(channel);
    let adult = &manifest.test_data["adult_with_account"];
    let request = govbridge::proto::civilregistry::v1::VerifyIdentityRequest {
        nin: adult["nin"].as_str().unwrap().to_owned(),
        first_names: adult["first_names"].as_str().unwrap().to_owned(),
        last_name: adult["last_name"].as_str().unwrap().to_owned(),
        date_of_birth: adult["date_of_birth"].as_str().unwrap().to_owned(),
    };
    let answer = kyc
        .verify_identity(sandbox::declared(request.clone(), "KYC"))
        .await
        .unwrap();
    assert_eq!(answer.get_ref().result(), VerificationResult::Match);

    // Faults on request, from any language: a header.
    let mut failing = sandbox::declared(request, "KYC");
    failing
        .metadata_mut()
        .insert("govbridge-fault", "status=UNAVAILABLE".parse().unwrap());
    let status = kyc.verify_identity(failing).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    // Closing its input stops it; the manifest and its files go.
    drop(child.stdin.take());
    let exited = tokio::task::spawn_blocking(move || child.wait());
    let status = tokio::time::timeout(Duration::from_secs(30), exited)
        .await
        .expect("the sandbox did not stop within 30 s")
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!path.exists(), "the manifest outlived the sandbox");
    assert!(!manifest.dir.exists(), "the sandbox's files outlived it");
}

#[tokio::test]
async fn a_partner_brings_its_own_policies_and_settings() {
    // A bank rehearsing a narrower policy: Ecobank's KYC desk may verify
    // identities for AML, and nothing else is allowed to anyone.
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("narrow.cedar"),
        r#"@id("ecobank-aml-only")
permit (
  principal == Member::"SN/COM/ECOBANK/kyc",
  action == Action::"/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity",
  resource == Provider::"SN/GOV/ANEC/civil-registry"
)
when { context.purpose == "AML" };
"#,
    )
    .unwrap();
    let sandbox = Sandbox::builder()
        .policies(policies.path())
        .config("[limits.members.\"SN/COM/ECOBANK/kyc\"]\nmax_message_bytes = 4096\n")
        .start()
        .await
        .unwrap();
    let adult = sandbox.roles().adult_with_account.clone();
    let call = |purpose| sandbox::declared(adult.verify_identity_request(), purpose);

    let mut ecobank = registry(&sandbox, "SN/COM/ECOBANK/kyc").await;
    ecobank.verify_identity(call("AML")).await.unwrap();
    let refused = ecobank.verify_identity(call("KYC")).await.unwrap_err();
    assert_eq!(sandbox::bridge_error(&refused), Some("policy-denied"));
    // Allowed by the dev policies; these give CBAO no permit at all.
    let refused = registry(&sandbox, CBAO_KYC)
        .await
        .verify_identity(call("KYC"))
        .await
        .unwrap_err();
    assert_eq!(sandbox::bridge_error(&refused), Some("no-permits"));

    // The fragment's limit holds: a message over 4 KiB is refused.
    let mut oversized = adult.verify_identity_request();
    oversized.last_name = "x".repeat(5000);
    let refused = ecobank
        .verify_identity(sandbox::declared(oversized, "AML"))
        .await
        .unwrap_err();
    assert_eq!(sandbox::bridge_error(&refused), Some("message-too-large"));

    // A fragment naming an unknown key fails the start, saying which.
    let error = Sandbox::builder()
        .setting("upstream", "max_dedline = \"1s\"")
        .start()
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("max_dedline"), "{error:#}");
}

#[tokio::test]
async fn faults_on_calls_leave_the_agency_in_rotation() {
    // Health checks every 20 ms, one failure enough to eject: a switch
    // that reached them would turn the agency's status into the gateway's
    // UNAVAILABLE within a few checks.
    let sandbox = Sandbox::builder()
        .setting("upstream", "health_check_interval = \"20ms\"")
        .setting("upstream", "unhealthy_threshold = 1")
        .start()
        .await
        .unwrap();
    let person = sandbox.roles().adult_with_account.clone();
    let mut kyc = registry(&sandbox, CBAO_KYC).await;
    let verify = || sandbox::declared(person.verify_identity_request(), "KYC");

    sandbox
        .faults(Agency::CivilRegistry)
        .fail(Code::FailedPrecondition);
    // Time for ten checks: this waits for nothing to happen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let status = kyc.verify_identity(verify()).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(sandbox::bridge_error(&status), None, "{status:?}");
    }
}

#[tokio::test]
async fn a_dropped_sandbox_leaves_no_port_or_file_behind() {
    let sandbox = Sandbox::builder().start().await.unwrap();
    let (gateway, dir) = (sandbox.gateway_addr(), sandbox.dir().to_owned());
    let agency = sandbox.agency_addrs(Agency::Tax)[0];
    sandbox.channel_as(CBAO_KYC).await.unwrap();
    drop(sandbox);
    assert!(!dir.exists(), "{} outlived its sandbox", dir.display());
    // Aborted tasks release their listeners when next polled: let them run.
    tokio::task::yield_now().await;
    for address in [gateway, agency] {
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "{address} still accepts connections"
        );
    }
}

/// The manifest is written through a temporary file of its own: a link
/// planted beside it (in a shared `/tmp`, say) under the name a writer
/// might pick is never followed.
#[tokio::test]
async fn the_manifest_is_written_without_following_a_planted_link() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("sandbox.json");
    let victim = scratch.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let planted = scratch.path().join(".sandbox.json.partial");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();

    let sandbox = Sandbox::builder().start().await.unwrap();
    sandbox::manifest::Manifest::of(&sandbox)
        .unwrap()
        .write(&path)
        .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(&planted).unwrap().is_symlink());
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(manifest["version"], 1);
    let mut names: Vec<String> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".sandbox.json.partial", "sandbox.json", "victim"]);
    sandbox.shutdown().await;
}
