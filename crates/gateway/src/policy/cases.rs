//! Decision tables: the expected decisions operators keep next to their
//! policies, run by `govbridge policy test` and in CI.
//!
//! ```toml
//! [[case]]
//! name = "a bank verifies an identity for KYC"
//! client = "SN/COM/CBAO/kyc"
//! method = "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity"
//! purpose = "KYC"
//! expect = "allow"
//! policies = ["banks-verify-identity-for-kyc"]   # optional: who decides
//! ```
//!
//! Optional facts: `provider` (default: the method's first provider),
//! `reason` and `user_id` (present, default true), `consent` (verified,
//! default false), `hour` (default 12), `certificate_days_left` (default
//! 365).

use std::path::Path;

use serde::Deserialize;

use super::{CallFacts, CallScope, PolicyEngine};
use crate::identity::MemberId;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(rename = "case")]
    cases: Vec<toml::Spanned<Case>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

fn yes() -> bool {
    true
}

fn noon() -> u8 {
    12
}

fn a_year() -> i64 {
    365
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    client: String,
    method: String,
    provider: Option<String>,
    purpose: Option<String>,
    #[serde(default = "yes")]
    reason: bool,
    #[serde(default = "yes")]
    user_id: bool,
    #[serde(default)]
    consent: bool,
    #[serde(default = "noon")]
    hour: u8,
    #[serde(default = "a_year")]
    certificate_days_left: i64,
    expect: Expect,
    policies: Option<Vec<String>>,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    pub name: String,
    pub passed: bool,
    /// What was decided, and why the case failed if it did.
    pub detail: String,
}

/// Runs every case of a decision table.
pub fn run(engine: &PolicyEngine, path: &Path, text: &str) -> Result<Vec<CaseOutcome>, String> {
    let file: CaseFile = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(line) => format!("{}:{line}: {}", path.display(), e.message().trim()),
            None => format!("{}: {}", path.display(), e.message().trim()),
        }
    })?;
    // A table that tests nothing must not pass a check that relies on it.
    if file.cases.is_empty() {
        return Err(format!(
            "{}: no cases: a decision table has at least one [[case]]",
            path.display()
        ));
    }
    file.cases
        .iter()
        .map(|spanned| {
            let case = spanned.get_ref();
            let line = text[..spanned.span().start.min(text.len())]
                .matches('\n')
                .count()
                + 1;
            run_case(engine, case).map_err(|message| {
                format!(
                    "{}:{line}: case \"{}\": {message}",
                    path.display(),
                    case.name
                )
            })
        })
        .collect()
}

fn run_case(engine: &PolicyEngine, case: &Case) -> Result<CaseOutcome, String> {
    if case.hour > 23 {
        return Err(format!("hour {}: an hour of the day, 0 to 23", case.hour));
    }
    let client = MemberId::parse(&case.client).map_err(|e| format!("client: {e}"))?;
    let providers = engine
        .methods()
        .get(&case.method)
        .ok_or_else(|| format!("method {} is not published", case.method))?;
    let provider = match &case.provider {
        Some(provider) => MemberId::parse(provider).map_err(|e| format!("provider: {e}"))?,
        None => providers
            .first()
            .cloned()
            .ok_or_else(|| format!("method {} has no provider", case.method))?,
    };
    engine.precheck(&client, &case.method, &provider, case.purpose.as_deref())?;
    let decision = engine.authorize(&CallFacts {
        scope: CallScope {
            caller: &client,
            method: &case.method,
            provider: &provider,
            purpose: case.purpose.as_deref(),
        },
        has_reason: case.reason,
        has_user_id: case.user_id,
        consent_verified: case.consent,
        hour: case.hour,
        certificate_days_left: case.certificate_days_left,
    });
    let decided = if decision.allowed {
        Expect::Allow
    } else {
        Expect::Deny
    };
    let by = if decision.policies.is_empty() {
        "no policy (deny by default)".to_owned()
    } else {
        decision.policies.join(", ")
    };
    let mut detail = format!(
        "{} by {by}",
        if decision.allowed { "allow" } else { "deny" }
    );
    let mut passed = decided == case.expect;
    if !passed {
        detail += &format!(", expected {:?}", case.expect).to_lowercase();
    }
    if let Some(expected) = &case.policies {
        let mut got = decision.policies.clone();
        got.sort();
        let mut want = expected.clone();
        want.sort();
        if got != want {
            passed = false;
            detail += &format!(", expected the decision from {}", want.join(", "));
        }
    }
    Ok(CaseOutcome {
        name: case.name.clone(),
        passed,
        detail,
    })
}
