//! Partners without gRPC: JSON over HTTPS through the real gateway and mock
//! agencies, under the dev policies. Every unary agency method answers as
//! it does over gRPC, with the same exchange-log records (marked as JSON);
//! consent binds as for gRPC; streams are NDJSON; mistakes are 400s naming
//! the field; the OpenAPI document lists what the caller may call.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::LazyLock;

use govbridge::catalog::Catalog;
use govbridge::catalog::json::convert;
use govbridge::json_client::{HttpVersion, JsonAnswer, JsonClient};
use govbridge::proto::directory::v1::GetServiceDescriptorRequest;
use govbridge::proto::directory::v1::directory_client::DirectoryClient;
use govbridge::sandbox::{Consent, ConsentGrant};
use http::Method;
use http_body_util::BodyExt;
use prost::Message;
use protox::prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{Value, json};
use support::{Bed, H2Client, dev_bed};

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    Catalog::with_sets(&govbridge::proto::AGENCY_DESCRIPTOR_SETS.map(|(_, set)| set)).unwrap()
});

const REASON: (&str, &str) = ("bridge-reason", "dossier 2025-0042");
const AGENT: (&str, &str) = ("bridge-user-id", "agent-17");

/// What a gRPC client sees of a call: status, `bridge-error`, the
/// answers as JSON.
#[derive(Debug, PartialEq)]
struct Seen {
    code: i32,
    bridge_error: Option<String>,
    messages: Vec<Value>,
}

/// Calls `path` over gRPC with `request` (JSON, read as the method's
/// request message) and `headers`.
async fn grpc(client: &mut H2Client, path: &str, request: Value, headers: &[(&str, &str)]) -> Seen {
    use tower::{Service, ServiceExt};
    let (service, method) = path[1..].split_once('/').unwrap();
    let method = CATALOG
        .pool()
        .get_service_by_name(service)
        .unwrap()
        .methods()
        .find(|m| m.name() == method)
        .unwrap();
    let lines = match request {
        Value::Array(lines) => lines,
        one => vec![one],
    };
    let mut body = Vec::new();
    for line in lines {
        let message = convert::read_message(&method.input(), line)
            .unwrap()
            .encode_to_vec();
        body.push(0);
        body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&message);
    }
    let mut request = http::Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .unwrap_or_else(|| parts.headers.clone());
    let data = collected.to_bytes();
    let mut messages = Vec::new();
    let mut at = 0;
    while at + 5 <= data.len() {
        let length = u32::from_be_bytes(data[at + 1..at + 5].try_into().unwrap()) as usize;
        let message =
            DynamicMessage::decode(method.output(), &data[at + 5..at + 5 + length]).unwrap();
        let mut json = serde_json::Serializer::new(Vec::new());
        message
            .serialize_with_options(
                &mut json,
                &SerializeOptions::new().skip_default_fields(false),
            )
            .unwrap();
        messages.push(serde_json::from_slice(&json.into_inner()).unwrap());
        at += 5 + length;
    }
    Seen {
        code: trailers["grpc-status"].to_str().unwrap().parse().unwrap(),
        bridge_error: trailers
            .get("bridge-error")
            .map(|value| value.to_str().unwrap().to_owned()),
        messages,
    }
}

/// What a JSON client sees of the same call.
fn seen_as_json(answer: &JsonAnswer) -> Seen {
    let ndjson = answer.header("content-type") == Some("application/x-ndjson");
    if answer.status.is_success() {
        let messages = if ndjson {
            answer.lines()
        } else {
            vec![answer.json()]
        };
        return Seen {
            code: 0,
            bridge_error: None,
            messages,
        };
    }
    let error = answer.json();
    Seen {
        code: i32::try_from(error["code"].as_i64().unwrap()).unwrap(),
        bridge_error: error["bridge_error"].as_str().map(str::to_owned),
        messages: Vec::new(),
    }
}

/// A JSON refusal's HTTP status and `bridge_error`.
fn refusal(answer: &JsonAnswer) -> (u16, Value) {
    (
        answer.status.as_u16(),
        answer.json()["bridge_error"].clone(),
    )
}

async fn json_client(bed: &Bed, stem: &str, version: HttpVersion) -> JsonClient {
    JsonClient::connect(bed.gateway, &bed.member_tls(stem), version)
        .await
        .unwrap()
}

/// One method, called both ways.
struct Case {
    member: &'static str,
    grpc_path: &'static str,
    grpc_request: Value,
    verb: Method,
    json_path: String,
    json_body: String,
    headers: Vec<(&'static str, String)>,
    /// The HTTP status expected of the JSON call.
    status: u16,
}

impl Case {
    fn headers<'a>(&'a self, request_id: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut headers: Vec<(&str, &str)> =
            self.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        headers.extend([REASON, AGENT, ("bridge-request-id", request_id)]);
        headers
    }
}

fn purpose(purpose: &str) -> Vec<(&'static str, String)> {
    vec![("bridge-purpose", purpose.to_owned())]
}

/// Calls every case over gRPC and as JSON (over `version`): the same
/// answers and statuses, the same exchange-log records, the JSON call's
/// marked.
async fn same_both_ways(bed: &Bed, cases: &[Case], version: HttpVersion) {
    for case in cases {
        let (grpc_id, json_id) = (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        );
        let mut client = bed.client(case.member).await;
        let over_grpc = grpc(
            &mut client,
            case.grpc_path,
            case.grpc_request.clone(),
            &case.headers(&grpc_id),
        )
        .await;
        let answer = json_client(bed, case.member, version)
            .await
            .call(
                case.verb.clone(),
                &case.json_path,
                &case.headers(&json_id),
                &case.json_body,
            )
            .await
            .unwrap();
        assert_eq!(
            answer.status.as_u16(),
            case.status,
            "{} {}: {}",
            case.verb,
            case.json_path,
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.header("bridge-request-id"), Some(json_id.as_str()));
        assert_eq!(
            seen_as_json(&answer),
            over_grpc,
            "{} {}",
            case.verb,
            case.json_path
        );

        let log = bed.sandbox.exchange_log();
        let (by_grpc, by_json) = (
            log.of_request(&grpc_id).unwrap(),
            log.of_request(&json_id).unwrap(),
        );
        assert_eq!(by_grpc.len(), by_json.len(), "{}", case.json_path);
        assert!(!by_json.is_empty());
        for (grpc, json) in by_grpc.iter().zip(&by_json) {
            let (grpc, json) = (&grpc.record, &json.record);
            assert!(json.json && !grpc.json, "only the JSON call is marked");
            assert_eq!(
                (
                    &json.method,
                    &json.caller,
                    &json.purpose,
                    &json.subject,
                    json.allowed
                ),
                (
                    &grpc.method,
                    &grpc.caller,
                    &grpc.purpose,
                    &grpc.subject,
                    grpc.allowed
                )
            );
            assert_eq!(
                (json.grpc_status, &json.error_kind),
                (grpc.grpc_status, &grpc.error_kind)
            );
            // The same request message went to the provider.
            assert_eq!(
                (json.request_bytes, &json.request_sha256),
                (grpc.request_bytes, &grpc.request_sha256),
                "{}",
                case.json_path
            );
        }
    }
}

#[tokio::test]
async fn every_unary_agency_method_answers_as_json_as_over_grpc() {
    let bed = dev_bed().await;
    let citizen = &bed.data.citizens[3];
    let nin = citizen.nin.to_string();
    let company = bed.data.companies[2].ninea.to_string();
    let account = bed.data.accounts.iter().find(|a| a.is_open()).unwrap();
    let (iban, holder) = (account.iban.to_string(), account.holder.to_string());
    let bank = govbridge::agencies::Agency::Bank(account.bank)
        .member_id()
        .to_string();
    let declaration = &bed.data.declarations[0];
    let (declarant, year) = (declaration.nin.to_string(), declaration.fiscal_year);
    let consent = bed
        .grant_consent(
            &ConsentGrant::new(
                &declarant,
                "SN/COM/CBAO/credit",
                "/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome",
                "CREDIT-SCORING",
            )
            .max_uses(2),
        )
        .await
        .unwrap();
    let identity = json!({
        "firstNames": citizen.first_names,
        "lastName": citizen.last_name,
        "dateOfBirth": citizen.date_of_birth.to_string(),
    });
    let mut with_nin = identity.clone();
    with_nin["nin"] = json!(nin);
    let mut consented = purpose("CREDIT-SCORING");
    consented.push(("bridge-consent", consent.artefact.clone()));
    let cases = [
        Case {
            member: "dgid-tax",
            grpc_path: "/govbridge.civilregistry.v1.CivilRegistry/GetPerson",
            grpc_request: json!({ "nin": nin }),
            verb: Method::GET,
            json_path: format!("/v1/persons/{nin}"),
            json_body: String::new(),
            headers: purpose("TAX-ASSESSMENT"),
            status: 200,
        },
        Case {
            member: "dgid-tax",
            grpc_path: "/govbridge.civilregistry.v1.CivilRegistry/GetPerson",
            grpc_request: json!({ "nin": "1999199900000" }),
            verb: Method::GET,
            json_path: "/v1/persons/1999199900000".to_owned(),
            json_body: String::new(),
            headers: purpose("TAX-ASSESSMENT"),
            status: 404,
        },
        Case {
            member: "cbao-kyc",
            grpc_path: "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity",
            grpc_request: with_nin.clone(),
            verb: Method::POST,
            json_path: format!("/v1/persons/{nin}:verify-identity"),
            json_body: identity.to_string(),
            headers: purpose("KYC"),
            status: 200,
        },
        // The default route, and a refusal by policy.
        Case {
            member: "cbao-kyc",
            grpc_path: "/govbridge.civilregistry.v1.CivilRegistry/GetPerson",
            grpc_request: json!({ "nin": nin }),
            verb: Method::POST,
            json_path: "/govbridge.civilregistry.v1.CivilRegistry/GetPerson".to_owned(),
            json_body: json!({ "nin": nin }).to_string(),
            headers: purpose("KYC"),
            status: 403,
        },
        Case {
            member: "treasury",
            grpc_path: "/govbridge.tax.v1.TaxAuthority/GetTaxClearance",
            grpc_request: json!({ "ninea": company }),
            verb: Method::GET,
            json_path: format!("/v1/tax-clearances/companies/{company}"),
            json_body: String::new(),
            headers: purpose("PUBLIC-PROCUREMENT"),
            status: 200,
        },
        Case {
            member: "cbao-credit",
            grpc_path: "/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome",
            grpc_request: json!({ "nin": declarant, "fiscalYear": year }),
            verb: Method::GET,
            json_path: format!("/v1/persons/{declarant}/declared-income/{year}"),
            json_body: String::new(),
            headers: consented,
            status: 200,
        },
        Case {
            member: "cbao-kyc",
            grpc_path: "/govbridge.business.v1.BusinessRegistry/GetCompany",
            grpc_request: json!({ "ninea": company }),
            verb: Method::GET,
            json_path: format!("/v1/companies/{company}"),
            json_body: String::new(),
            headers: purpose("KYC"),
            status: 200,
        },
        Case {
            member: "cbao-kyc",
            grpc_path: "/govbridge.business.v1.BusinessRegistry/ListDirectors",
            grpc_request: json!({ "ninea": company }),
            verb: Method::GET,
            json_path: format!("/v1/companies/{company}/directors"),
            json_body: String::new(),
            headers: purpose("KYC"),
            status: 200,
        },
        Case {
            member: "treasury",
            grpc_path: "/govbridge.bank.v1.AccountVerification/VerifyAccountHolder",
            grpc_request: json!({ "iban": iban, "nin": holder }),
            verb: Method::POST,
            json_path: "/v1/accounts:verify-holder".to_owned(),
            json_body: json!({ "iban": iban, "nin": holder }).to_string(),
            headers: vec![
                ("bridge-purpose", "BENEFIT-PAYMENT".to_owned()),
                ("bridge-target", bank),
            ],
            status: 200,
        },
        Case {
            member: "mygov",
            grpc_path: "/govbridge.consent.v1.Consent/List",
            grpc_request: json!({ "nin": declarant }),
            verb: Method::GET,
            json_path: format!("/v1/persons/{declarant}/consents"),
            json_body: String::new(),
            headers: purpose("CITIZEN-SELF-SERVICE"),
            status: 200,
        },
    ];
    same_both_ways(&bed, &cases, HttpVersion::Http1).await;
    // The consent's two uses are spent: a third call is refused, as JSON.
    let answer = json_client(&bed, "cbao-credit", HttpVersion::Http2)
        .await
        .call(
            Method::GET,
            &format!("/v1/persons/{declarant}/declared-income/{year}"),
            &[
                ("bridge-purpose", "CREDIT-SCORING"),
                ("bridge-consent", &consent.artefact),
                REASON,
                AGENT,
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json()["bridge_error"], "consent-exhausted");
    assert_eq!(answer.header("bridge-error"), Some("consent-exhausted"));

    // The consent methods that change things, as a citizen's portal would
    // call them in JSON: grant, pause, resume, revoke.
    let mut portal = json_client(&bed, "mygov", HttpVersion::Http2).await;
    let headers = [("bridge-purpose", "CITIZEN-SELF-SERVICE"), REASON, AGENT];
    let granted = portal
        .call(
            Method::POST,
            &format!("/v1/persons/{nin}/consents"),
            &headers,
            &json!({
                "consumer": "SN/COM/CBAO/credit",
                "providers": ["SN/GOV/DGID/tax"],
                "methods": ["/govbridge.tax.v1.TaxAuthority/GetTaxClearance"],
                "purpose": "CREDIT-SCORING",
                "maxUses": 2,
            })
            .to_string(),
        )
        .await
        .unwrap();
    assert_eq!(granted.status, 200, "{:?}", granted.json());
    let id = granted.json()["consentId"].as_str().unwrap().to_owned();
    for (verb, state) in [
        ("pause", "CONSENT_STATE_PAUSED"),
        ("resume", "CONSENT_STATE_ACTIVE"),
        ("revoke", "CONSENT_STATE_REVOKED"),
    ] {
        let changed = portal
            .call(
                Method::POST,
                &format!("/v1/persons/{nin}/consents/{id}:{verb}"),
                &headers,
                "",
            )
            .await
            .unwrap();
        assert_eq!(changed.status, 200, "{verb}: {:?}", changed.json());
        assert_eq!(changed.json()["state"], state, "{verb}");
    }
}

#[tokio::test]
async fn consent_bound_json_calls_are_refused_as_over_grpc() {
    let bed = dev_bed().await;
    let declaration = &bed.data.declarations[0];
    let (nin, year) = (declaration.nin.to_string(), declaration.fiscal_year);
    let other = bed
        .data
        .citizens
        .iter()
        .find(|c| c.nin != declaration.nin)
        .unwrap()
        .nin
        .to_string();
    let method = "/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome";
    let consent = one_use_consent(&bed, &nin, method).await;
    let mut bank = json_client(&bed, "cbao-credit", HttpVersion::Http1).await;
    let mut income = async |about: &str| {
        let answer = bank
            .call(
                Method::GET,
                &format!("/v1/persons/{about}/declared-income/{year}"),
                &[
                    ("bridge-purpose", "CREDIT-SCORING"),
                    ("bridge-consent", &consent.artefact),
                    REASON,
                    AGENT,
                ],
                "",
            )
            .await
            .unwrap();
        let kind = answer.json()["bridge_error"].as_str().map(str::to_owned);
        (answer.status.as_u16(), kind)
    };
    assert_eq!(
        income(&other).await,
        (403, Some("consent-subject-mismatch".into()))
    );
    assert_eq!(income(&nin).await, (200, None));
    assert_eq!(income(&nin).await, (403, Some("consent-exhausted".into())));

    let again = bed
        .grant_consent(&ConsentGrant::new(
            &nin,
            "SN/COM/CBAO/credit",
            method,
            "CREDIT-SCORING",
        ))
        .await
        .unwrap();
    bed.revoke_consent(&again).await.unwrap();
    let answer = bank
        .call(
            Method::GET,
            &format!("/v1/persons/{nin}/declared-income/{year}"),
            &[
                ("bridge-purpose", "CREDIT-SCORING"),
                ("bridge-consent", &again.artefact),
                REASON,
                AGENT,
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(refusal(&answer), (403, json!("consent-revoked")));
    // Each refusal is in the log, as JSON.
    let records = bed.sandbox.exchange_log().records().unwrap();
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.record.json && r.record.error_kind.starts_with("consent-"))
        .map(|r| r.record.error_kind.as_str())
        .collect();
    assert_eq!(
        refused,
        [
            "consent-subject-mismatch",
            "consent-exhausted",
            "consent-revoked"
        ]
    );
    // And `govbridge audit query` shows how they came.
    let data = bed.exchange_log().dir().to_str().unwrap().to_owned();
    let query = support::govbridge(&[
        "audit",
        "query",
        "--data",
        &data,
        "--status",
        "PERMISSION_DENIED",
        "--json",
    ]);
    let lines: Vec<Value> = String::from_utf8_lossy(&query.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", support::text(&query));
    assert!(lines.iter().all(|line| line["json"] == true), "{lines:?}");
}

/// A consent of citizen `nin` for CBAO's credit desk to call `method`
/// for credit scoring, once.
/// A JSON answer is given whole with its status: one whose outcome cannot
/// be logged is not given (500, `exchange-log-outcome-unrecorded`), and
/// spends no use of the consent it was called under, since the caller had
/// nothing.
#[tokio::test]
async fn a_json_answer_whose_outcome_is_not_logged_spends_no_use() {
    let bed = dev_bed().await;
    let declaration = &bed.data.declarations[0];
    let (nin, year) = (declaration.nin.to_string(), declaration.fiscal_year);
    let method = "/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome";
    let consent = one_use_consent(&bed, &nin, method).await;
    let mut bank = json_client(&bed, "cbao-credit", HttpVersion::Http1).await;
    let path = format!("/v1/persons/{nin}/declared-income/{year}");
    let call = (Method::GET, path.as_str(), "");
    let log = bed.exchange_log();
    let before = log.size();
    // The tax authority answers after a second; meanwhile, once the
    // call's decision is durable, the log's disk fills.
    let (answer, _) = tokio::join!(
        credit_call(&mut bank, &consent.artefact, call.clone(), Some("delay=1s")),
        async {
            while log.size() == before {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            log.simulate_fault(Some(govbridge::exchange_log::StoreFault::DiskFull));
        }
    )
    .0;
    assert_eq!(
        refusal(&answer),
        (500, json!("exchange-log-outcome-unrecorded")),
        "{:?}",
        answer.json()
    );
    log.simulate_fault(None);
    // The use is still there.
    let (answer, _) = credit_call(&mut bank, &consent.artefact, call.clone(), None).await;
    assert_eq!(answer.status.as_u16(), 200, "{:?}", answer.json());
    let (answer, _) = credit_call(&mut bank, &consent.artefact, call, None).await;
    assert_eq!(refusal(&answer), (403, json!("consent-exhausted")));
}

async fn one_use_consent(bed: &Bed, nin: &str, method: &str) -> Consent {
    let grant = ConsentGrant::new(nin, "SN/COM/CBAO/credit", method, "CREDIT-SCORING");
    bed.grant_consent(&grant.max_uses(1)).await.unwrap()
}

/// A JSON call (verb, path, body) as CBAO's credit desk, for credit
/// scoring under `consent`, asking the agency for `fault` if any: the
/// answer, and the call's request id.
async fn credit_call(
    bank: &mut JsonClient,
    consent: &str,
    (verb, path, body): (Method, &str, &str),
    fault: Option<&str>,
) -> (JsonAnswer, String) {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut headers = vec![
        ("bridge-purpose", "CREDIT-SCORING"),
        ("bridge-consent", consent),
        ("bridge-request-id", request_id.as_str()),
        REASON,
        AGENT,
    ];
    headers.extend(fault.map(|fault| ("govbridge-fault", fault)));
    let answer = bank.call(verb, path, &headers, body).await.unwrap();
    (answer, request_id)
}

/// The gRPC status and `bridge-error` kind of call `request_id`'s
/// outcome, as logged.
fn outcome_of(bed: &Bed, request_id: &str) -> (i32, String) {
    let records = bed.sandbox.exchange_log().of_request(request_id).unwrap();
    let outcome = &records.last().unwrap().record;
    (outcome.grpc_status, outcome.error_kind.clone())
}

#[tokio::test]
async fn an_answer_the_gateway_cannot_give_as_json_is_the_calls_outcome_and_spends_no_consent() {
    let bed = dev_bed().await;
    let declaration = &bed.data.declarations[0];
    let (nin, year) = (declaration.nin.to_string(), declaration.fiscal_year);
    let method = "/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome";
    let consent = one_use_consent(&bed, &nin, method).await;
    let mut bank = json_client(&bed, "cbao-credit", HttpVersion::Http2).await;
    let path = format!("/v1/persons/{nin}/declared-income/{year}");
    let unary = (Method::GET, path.as_str(), "");
    let mut income =
        async |fault| credit_call(&mut bank, &consent.artefact, unary.clone(), fault).await;
    // The tax authority answers OK with a message that is not a
    // DeclaredIncome: the caller gets the gateway's 502, and nothing else.
    let (garbled, garbled_id) = income(Some("garble")).await;
    assert_eq!(refusal(&garbled), (502, json!("bad-answer")));
    assert!(
        garbled.json()["message"]
            .as_str()
            .unwrap()
            .contains("cannot be given as JSON"),
        "{:?}",
        garbled.json()
    );
    // Its outcome says so, where the backend said OK.
    let records = bed.sandbox.exchange_log().of_request(&garbled_id).unwrap();
    let outcome = &records.last().unwrap().record;
    assert_eq!(records.len(), 2, "a decision and an outcome");
    assert_eq!(
        (
            outcome.grpc_status,
            outcome.error_kind.as_str(),
            outcome.json
        ),
        (13, "bad-answer", true)
    );
    assert!(
        outcome.response_bytes > 0,
        "the backend's bytes are counted"
    );
    let indexes: Vec<String> = garbled
        .headers
        .get_all("bridge-audit-index")
        .iter()
        .map(|index| index.to_str().unwrap().to_owned())
        .collect();
    let logged: Vec<String> = records.iter().map(|r| r.index.to_string()).collect();
    assert_eq!(indexes, logged, "the answer names both records");
    // The one use the consent allows was not spent on it.
    let (answered, _) = income(None).await;
    assert_eq!(answered.status, 200, "{:?}", answered.json());
    assert_eq!(answered.json()["nin"], json!(nin));
    let (after, _) = income(None).await;
    assert_eq!(refusal(&after), (403, json!("consent-exhausted")));

    // The same of a stream: its first message, that the gateway cannot
    // give, ends the call before any line; nothing was given.
    let stream = "/govbridge.tax.v1.TaxAuthority/StreamDeclaredIncome";
    let consent = one_use_consent(&bed, &nin, stream).await;
    let request = format!("{}\n", json!({ "nin": nin, "fiscalYear": year }));
    let lines = (Method::POST, stream, request.as_str());
    let mut streamed =
        async |fault| credit_call(&mut bank, &consent.artefact, lines.clone(), fault).await;
    let (garbled, garbled_id) = streamed(Some("garble")).await;
    assert_eq!(refusal(&garbled), (502, json!("bad-answer")));
    assert_eq!(outcome_of(&bed, &garbled_id), (13, "bad-answer".to_owned()));
    let (answered, _) = streamed(None).await;
    assert_eq!(answered.status, 200, "{:?}", answered.body);
    assert_eq!(answered.lines().len(), 1, "{:?}", answered.body);
    assert_eq!(answered.lines()[0]["nin"], json!(nin));
    let (after, _) = streamed(None).await;
    assert_eq!(refusal(&after), (403, json!("consent-exhausted")));
}

/// A stream's messages that the gateway can give are given, even when a
/// bad one follows them in the same DATA frame; the call then ends with
/// the gateway's `bad-answer` as its last line and its outcome, and the
/// lines given spend the consent's use. An answer with no gRPC status at
/// all (a proxy's 503 before the backend) is the gateway's `bad-answer`
/// too, and spends nothing.
#[tokio::test]
async fn good_lines_before_a_bad_message_are_given_and_an_answer_without_status_is_bad() {
    let bed = dev_bed().await;
    let declaration = &bed.data.declarations[0];
    let (nin, year) = (declaration.nin.to_string(), declaration.fiscal_year);
    let mut bank = json_client(&bed, "cbao-credit", HttpVersion::Http2).await;

    let stream = "/govbridge.tax.v1.TaxAuthority/StreamDeclaredIncome";
    let consent = one_use_consent(&bed, &nin, stream).await;
    let request = format!("{}\n", json!({ "nin": nin, "fiscalYear": year }));
    let lines = (Method::POST, stream, request.as_str());
    let (answer, request_id) = credit_call(
        &mut bank,
        &consent.artefact,
        lines.clone(),
        Some("garble=second"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let given = answer.lines();
    assert_eq!(given.len(), 2, "{:?}", answer.body);
    assert_eq!(given[0]["nin"], json!(nin));
    assert_eq!(given[1]["error"]["bridge_error"], json!("bad-answer"));
    assert_eq!(outcome_of(&bed, &request_id), (13, "bad-answer".to_owned()));
    // A line went out: the use is spent.
    let (after, _) = credit_call(&mut bank, &consent.artefact, lines, None).await;
    assert_eq!(refusal(&after), (403, json!("consent-exhausted")));

    let method = "/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome";
    let consent = one_use_consent(&bed, &nin, method).await;
    let path = format!("/v1/persons/{nin}/declared-income/{year}");
    let unary = (Method::GET, path.as_str(), "");
    let (answer, request_id) = credit_call(
        &mut bank,
        &consent.artefact,
        unary.clone(),
        Some("nostatus"),
    )
    .await;
    assert_eq!(refusal(&answer), (502, json!("bad-answer")));
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("without a gRPC status"),
        "{:?}",
        answer.json()
    );
    assert_eq!(outcome_of(&bed, &request_id), (13, "bad-answer".to_owned()));
    let (answered, _) = credit_call(&mut bank, &consent.artefact, unary, None).await;
    assert_eq!(answered.status, 200, "{:?}", answered.json());
}

#[tokio::test]
async fn streams_are_ndjson_both_ways() {
    let bed = dev_bed().await;
    let headers = [("bridge-purpose", "BENEFIT-PAYMENT"), REASON, AGENT];
    // Server streaming: one line per event, as over gRPC.
    let case = Case {
        member: "treasury",
        grpc_path: "/govbridge.civilregistry.v1.CivilRegistry/WatchLifeEvents",
        grpc_request: json!({ "maxEvents": 3 }),
        verb: Method::GET,
        json_path: "/v1/life-events?maxEvents=3".to_owned(),
        json_body: String::new(),
        headers: purpose("BENEFIT-PAYMENT"),
        status: 200,
    };
    same_both_ways(&bed, std::slice::from_ref(&case), HttpVersion::Http2).await;
    let mut treasury = json_client(&bed, "treasury", HttpVersion::Http1).await;
    let events = treasury
        .call(
            Method::GET,
            "/v1/life-events?maxEvents=3&afterSequence=2",
            &headers,
            "",
        )
        .await
        .unwrap();
    assert_eq!(events.header("content-type"), Some("application/x-ndjson"));
    let lines = events.lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["sequence"], "3", "64-bit integers are strings");

    // Client streaming: one request message per line of the body.
    let employer = bed.data.companies[0].ninea.to_string();
    let employee = bed
        .data
        .citizens
        .iter()
        .find(|c| c.date_of_death.is_none())
        .unwrap()
        .nin
        .to_string();
    let line = |id: &str, period: &str| {
        json!({
            "lineId": id,
            "payerNinea": employer,
            "subjectNin": employee,
            "period": period,
            "grossAmountXof": "500000",
            "taxWithheldXof": 50000,
        })
        .to_string()
    };
    let upload = format!("{}\n{}\n", line("a", "2025-01"), line("b", "2025-13"));
    let answer = json_client(&bed, "sonatel-payroll", HttpVersion::Http1)
        .await
        .call(
            Method::POST,
            "/govbridge.tax.v1.TaxAuthority/SubmitWithholdings",
            &[("bridge-purpose", "TAX-WITHHOLDING"), REASON, AGENT],
            &upload,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    let receipt = answer.json();
    assert_eq!(receipt["linesReceived"], "2", "{receipt}");
    assert_eq!(receipt["linesAccepted"], "1", "{receipt}");
    assert_eq!(receipt["rejections"][0]["lineId"], "b", "{receipt}");
    assert_eq!(
        receipt["rejections"][0]["reason"],
        "REJECTION_REASON_MALFORMED_PERIOD"
    );
    // A bad line is named by its number.
    let answer = json_client(&bed, "sonatel-payroll", HttpVersion::Http1)
        .await
        .call(
            Method::POST,
            "/govbridge.tax.v1.TaxAuthority/SubmitWithholdings",
            &[("bridge-purpose", "TAX-WITHHOLDING"), REASON, AGENT],
            &format!("{}\n{{\"lineId\": 7}}\n", line("a", "2025-01")),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 400);
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("line 2: lineId"),
        "{:?}",
        answer.json()
    );

    // A stream with nothing to say is an empty 200.
    let none = treasury
        .call(
            Method::GET,
            "/v1/life-events?afterSequence=999999999",
            &headers,
            "",
        )
        .await
        .unwrap();
    assert_eq!(none.status, 200, "{:?}", none.body);
    assert!(none.lines().is_empty(), "{:?}", none.body);

    // gRPC is HTTP/2's: over HTTP/1.1 it is refused.
    let grpc = treasury
        .call(
            Method::POST,
            "/govbridge.civilregistry.v1.CivilRegistry/WatchLifeEvents",
            &[
                ("content-type", "application/grpc"),
                ("bridge-purpose", "BENEFIT-PAYMENT"),
            ],
            "\0\0\0\0\0",
        )
        .await
        .unwrap();
    assert_eq!(
        grpc.header("bridge-error"),
        Some("not-grpc"),
        "{:?}",
        grpc.headers
    );
}

/// A request over the member's message size is 413, not 429: a client
/// retries a 429 by itself, and the same body would be refused again.
#[tokio::test]
async fn a_json_request_too_large_is_413() {
    let bed = Bed::builder()
        .dev_policies()
        .limits("[limits.members.\"SN/COM/CBAO/kyc\"]\nmax_message_bytes = 64\n")
        .start()
        .await;
    let mut bank = json_client(&bed, "cbao-kyc", HttpVersion::Http2).await;
    let headers = [("bridge-purpose", "KYC"), REASON, AGENT];
    let body = format!(r#"{{"firstNames": "{}"}}"#, "Awa ".repeat(40));
    let answer = bank
        .call(
            Method::POST,
            "/v1/persons/1234567890123:verify-identity",
            &headers,
            &body,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 413, "{:?}", answer.json());
    assert_eq!(answer.header("bridge-error"), Some("message-too-large"));
    assert!(answer.header("retry-after").is_none());
}

/// A body refused whose refusal the log could not take is answered as
/// the log's failure (503), as any call's is: not as a 400 that says the
/// refusal was logged.
#[tokio::test]
async fn bad_json_the_log_cannot_record_is_503() {
    let bed = dev_bed().await;
    let mut bank = json_client(&bed, "cbao-kyc", HttpVersion::Http2).await;
    let headers = [("bridge-purpose", "KYC"), REASON, AGENT];
    bed.exchange_log()
        .simulate_fault(Some(govbridge::exchange_log::StoreFault::DiskFull));
    let answer = bank
        .call(
            Method::POST,
            "/v1/persons/1234567890123:verify-identity",
            &headers,
            r#"{"firstNames": 7}"#,
        )
        .await
        .unwrap();
    bed.exchange_log().simulate_fault(None);
    assert_eq!(answer.status, 503, "{:?}", answer.json());
    assert_eq!(
        answer.header("bridge-error"),
        Some("exchange-log-unavailable")
    );
    assert!(answer.header("bridge-audit-index").is_none());
}

#[tokio::test]
async fn json_mistakes_are_400s_naming_the_field_and_the_gateway_keeps_serving() {
    let bed = dev_bed().await;
    let mut bank = json_client(&bed, "cbao-kyc", HttpVersion::Http2).await;
    let headers = [("bridge-purpose", "KYC"), REASON, AGENT];
    let verify = "/v1/persons/1234567890123:verify-identity";
    for (body, field, says) in [
        (
            r#"{"firstNames": "Awa", "colour": "blue"}"#,
            Some("colour"),
            "no such field",
        ),
        (r#"{"firstNames": 7}"#, Some("firstNames"), "invalid type"),
        (r#"{"firstNames": "Awa""#, None, "not JSON"),
        ("[1, 2]", None, "must be a JSON object"),
    ] {
        let answer = bank
            .call(Method::POST, verify, &headers, body)
            .await
            .unwrap();
        assert_eq!(answer.status, 400, "{body}");
        let error = answer.json();
        assert_eq!(error["field"].as_str(), field, "{error}");
        assert!(error["message"].as_str().unwrap().contains(says), "{error}");
        assert_eq!(error["bridge_error"], "bad-json");
        assert_eq!(error["status"], "INVALID_ARGUMENT");
        // Refused and recorded, as any call: where the log holds it.
        assert!(answer.headers.contains_key("bridge-audit-index"), "{body}");
        assert_eq!(answer.headers["bridge-instance"], "SN");
    }
    let path = bank
        .call(
            Method::GET,
            "/v1/companies/x/directors?colour=1",
            &headers,
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        (path.status.as_u16(), path.json()["field"].clone()),
        (400, json!("colour"))
    );
    // A path variable that is not UTF-8 once decoded (Latin-1's é): the
    // route is found, and the call refused as a bad one, not as a 404.
    let latin1 = bank
        .call(Method::GET, "/v1/companies/%E9/directors", &headers, "")
        .await
        .unwrap();
    assert_eq!(
        (latin1.status.as_u16(), latin1.json()["field"].clone()),
        (400, json!("ninea")),
        "{:?}",
        latin1.json()
    );
    assert!(
        latin1.json()["message"]
            .as_str()
            .unwrap()
            .contains("not UTF-8"),
        "{:?}",
        latin1.json()
    );
    let huge = format!("{{\"firstNames\": \"{}\"}}", "a".repeat(5 * 1024 * 1024));
    let answer = bank
        .call(Method::POST, verify, &headers, &huge)
        .await
        .unwrap();
    assert_eq!(answer.status, 400);
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("larger than")
    );

    // A body that does not say it is JSON (a browser's cross-site form
    // post), and a query where every field is in the body.
    let form = bank
        .call(
            Method::POST,
            verify,
            &[
                ("bridge-purpose", "KYC"),
                REASON,
                AGENT,
                ("content-type", "text/plain"),
            ],
            r#"{"firstNames": "Awa"}"#,
        )
        .await
        .unwrap();
    assert_eq!(form.status, 400, "{:?}", form.json());
    assert!(
        form.json()["message"]
            .as_str()
            .unwrap()
            .contains("content-type")
    );
    let query = bank
        .call(
            Method::POST,
            &format!("{verify}?lastName=Fall"),
            &headers,
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(
        (query.status.as_u16(), query.json()["field"].clone()),
        (400, json!("lastName"))
    );
    // Each refusal is the call's record, as any refusal: admitted first.
    let records = bed.sandbox.exchange_log().records().unwrap();
    let bad_json = records
        .iter()
        .filter(|r| r.record.json && r.record.error_kind == "bad-json")
        .count();
    assert!(bad_json >= 7, "{bad_json} bad-json records");
    let bad_id = bank
        .call(
            Method::POST,
            verify,
            &[("bridge-request-id", "not-a-uuid")],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(refusal(&bad_id), (400, json!("bad-header")));
    // Refused once the bank was admitted, as over gRPC: recorded, under
    // the id the answer names.
    let answered_id = bad_id.header("bridge-request-id").unwrap().to_owned();
    let records = bed.sandbox.exchange_log().of_request(&answered_id).unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.record.json && r.record.error_kind == "bad-header"),
        "{records:?}"
    );
    let nowhere = bank
        .call(Method::GET, "/v1/nowhere", &headers, "")
        .await
        .unwrap();
    assert_eq!(refusal(&nowhere), (404, json!("no-json-route")));
    let verb = bank
        .call(Method::DELETE, "/v1/companies/x", &headers, "")
        .await
        .unwrap();
    assert_eq!(verb.status, 405);
    assert_eq!(verb.headers["allow"], "GET");
    // The default route of every method takes POST only.
    let default = bank
        .call(
            Method::GET,
            "/govbridge.business.v1.BusinessRegistry/GetCompany",
            &headers,
            "",
        )
        .await
        .unwrap();
    assert_eq!(default.status, 405);
    assert_eq!(default.headers["allow"], "POST");
    let openapi = bank
        .call(Method::POST, "/openapi.json", &headers, "{}")
        .await
        .unwrap();
    assert_eq!(openapi.status, 405);
    assert_eq!(openapi.headers["allow"], "GET");

    // HTTP/1.1's connection headers stay on the caller's hop.
    let mut http1 = json_client(&bed, "cbao-kyc", HttpVersion::Http1).await;
    let company = bed.data.companies[0].ninea.to_string();
    let kept_alive = http1
        .call(
            Method::GET,
            &format!("/v1/companies/{company}"),
            &[
                ("bridge-purpose", "KYC"),
                REASON,
                AGENT,
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(kept_alive.status, 200, "{:?}", kept_alive.json());

    // Still serving, on the same connection and on gRPC.
    let company = bed.data.companies[0].ninea.to_string();
    let answer = bank
        .call(
            Method::GET,
            &format!("/v1/companies/{company}"),
            &headers,
            "",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["ninea"], company);
}

#[tokio::test]
async fn openapi_describes_what_the_caller_may_call() {
    let bed = dev_bed().await;
    let operations = async |stem: &str| {
        let answer = json_client(&bed, stem, HttpVersion::Http1)
            .await
            .call(Method::GET, "/openapi.json", &[], "")
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        let document = answer.json();
        assert_eq!(document["openapi"], "3.1.0");
        // Where to call: the address the request named.
        let server = document["servers"][0]["url"].as_str().unwrap_or_default();
        assert!(server.starts_with("https://"), "{server}");
        let mut ids: Vec<String> = document["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|operation| operation["operationId"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let kyc = operations("cbao-kyc").await;
    assert!(
        kyc.contains(&"CivilRegistry_VerifyIdentity".to_owned()),
        "{kyc:?}"
    );
    assert!(
        !kyc.iter()
            .any(|id| id.starts_with("CivilRegistry_GetPerson")),
        "{kyc:?}"
    );
    assert!(
        !kyc.iter().any(|id| id.starts_with("TaxAuthority")),
        "{kyc:?}"
    );
    let tax = operations("dgid-tax").await;
    assert!(
        tax.contains(&"CivilRegistry_GetPerson".to_owned()),
        "{tax:?}"
    );
    // The gateway's own services are there too, and answer in JSON.
    assert!(kyc.contains(&"ExchangeLog_GetRecord".to_owned()), "{kyc:?}");
    assert!(
        kyc.contains(&"Directory_ListServices".to_owned()),
        "{kyc:?}"
    );
    let listed = json_client(&bed, "cbao-kyc", HttpVersion::Http2)
        .await
        .call(
            Method::POST,
            "/govbridge.directory.v1.Directory/ListServices",
            &[],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(listed.status, 200, "{:?}", listed.json());
    let services: Vec<Value> = listed.json()["services"].as_array().unwrap().clone();
    assert!(
        services
            .iter()
            .any(|service| service["name"] == "govbridge.civilregistry.v1.CivilRegistry"),
        "{services:?}"
    );

    // The directory offers each service's part.
    let mut directory = DirectoryClient::new(bed.client("cbao-kyc").await);
    let described = directory
        .get_service_descriptor(GetServiceDescriptorRequest {
            service: "govbridge.civilregistry.v1.CivilRegistry".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let document: Value = serde_json::from_str(&described.openapi).unwrap();
    let paths: Vec<&String> = document["paths"].as_object().unwrap().keys().collect();
    assert_eq!(
        paths,
        [
            "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity",
            "/v1/persons/{nin}:verify-identity"
        ]
    );
}

#[tokio::test]
async fn a_busy_json_connection_is_not_taken_for_a_flood() {
    // A JSON answer is whole in memory: hyper stops polling its body after
    // the last data frame. Counted as reset by the client, 500 such calls
    // on one connection looked like a rapid-reset flood and the gateway
    // dropped the connection.
    let bed = dev_bed().await;
    for version in [HttpVersion::Http2, HttpVersion::Http1] {
        let mut bank = json_client(&bed, "cbao-kyc", version).await;
        for call in 0..700 {
            let answer = bank
                .call(Method::GET, "/v1/nowhere", &[], "")
                .await
                .unwrap_or_else(|error| panic!("{version:?}, call {call}: {error}"));
            assert_eq!(answer.status, 404);
        }
    }
}

/// `/openapi.json` is served within the member's limits, as its calls
/// are, and the same document each time.
#[tokio::test]
async fn openapi_counts_against_the_members_rate() {
    let bed = Bed::builder()
        .dev_policies()
        .limits("[limits.members.\"SN/COM/CBAO/kyc\"]\nrequests_per_second = 1\nburst = 2\n")
        .start()
        .await;
    let mut client = json_client(&bed, "cbao-kyc", HttpVersion::Http2).await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(
            client
                .call(Method::GET, "/openapi.json", &[], "")
                .await
                .unwrap(),
        );
    }
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[1].status, 200);
    assert_eq!(answers[0].json(), answers[1].json());
    let refused = &answers[2];
    assert_eq!(refused.status, 429, "{:?}", refused.json());
    assert_eq!(refused.header("bridge-error"), Some("rate-limited"));
    assert_eq!(refused.json()["status"], "RESOURCE_EXHAUSTED");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
}

/// A request hyper cannot parse, sent with a body behind it, gets its 400
/// and a clean end of the connection (TLS `close_notify`). (The reset this
/// guards against depends on timing: this test passed here with the
/// lingering close taken out too; schemathesis' runs in json_clients.rs
/// are what showed it.)
#[tokio::test]
async fn a_malformed_http1_request_gets_its_400_and_a_clean_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bed = Bed::builder().dev_policies().start().await;
    let mut tls = (*bed.member_tls("cbao-kyc")).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    for _ in 0..5 {
        let tcp = tokio::net::TcpStream::connect(bed.gateway).await.unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls.clone()))
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let body = vec![b'x'; 64 * 1024];
        let mut request = format!(
            "POST /v1/persons/1:verify-identity HTTP/1.1\r\nhost: localhost\r\n\
             content-type: application/json\r\nbridge-reason: a\x01b\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        // The gateway may stop reading before the body is all sent.
        let _ = stream.write_all(&request).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut answer),
        )
        .await
        .expect("the connection stays open");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{read:?}: {text:?}");
        // read_to_end fails on an end without close_notify.
        assert!(read.is_ok(), "{read:?}");
    }
}

#[tokio::test]
async fn an_http1_client_trickling_its_headers_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bed = Bed::builder()
        .dev_policies()
        .handshake_timeout("500ms")
        .start()
        .await;
    let mut tls = (*bed.member_tls("cbao-kyc")).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(bed.gateway).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // The start of a request, then nothing more.
    stream
        .write_all(b"GET /v1/companies/x HTTP/1.1\r\nhost: localhost\r\nbridge-purpose: K")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut sink = [0_u8; 512];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                // hyper may answer 408 first.
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection is still open after 20 s");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stranger_is_refused_before_its_json_is_read() {
    let bed = dev_bed().await;
    let stranger = govbridge::identity::MemberId::parse("SN/COM/NOBODY/app").unwrap();
    let tls = bed.issue_client("stranger", &govbridge::pki::LeafRequest::member(&stranger));
    let answer = JsonClient::connect(bed.gateway, &tls, HttpVersion::Http1)
        .await
        .unwrap()
        .call(
            Method::POST,
            "/v1/persons/2002196400009:verify-identity",
            &[("bridge-purpose", "KYC")],
            "{this is not JSON",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 401, "{:?}", answer.json());
    assert_eq!(answer.json()["bridge_error"], "unknown-member");
}

/// The README's curl examples send their bodies as JSON: curl's `-d`
/// alone says `application/x-www-form-urlencoded`, which is refused.
#[test]
fn the_readmes_curl_examples_say_their_bodies_are_json() {
    let readme = include_str!("../README.md");
    let helper = readme
        .split("bankj() {")
        .nth(1)
        .and_then(|rest| rest.split("\n}\n").next())
        .expect("the README defines bankj");
    assert!(
        helper.contains("content-type: application/json"),
        "{helper}"
    );
    for line in readme.lines() {
        let curl = line.trim_start().starts_with("curl ");
        assert!(
            !(curl && line.contains(" -d ")) || line.contains("content-type"),
            "{line}"
        );
    }
}
