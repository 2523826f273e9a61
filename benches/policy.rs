//! Policy decision latency: 100 policies, 1,000 members.
//!
//! `cargo bench --bench policy` prints the distribution of one
//! `PolicyEngine::authorize` call (the per-call authorization work of the
//! gateway), for a mix of allowed and denied calls. Figures are for this
//! machine in this run: compare them as ratios, not across machines.

// A benchmark stops at its first failure, saying which.
#![allow(clippy::expect_used)]

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use govbridge::config::Config;
use govbridge::identity::MemberId;
use govbridge::policy::{CallFacts, CallScope, PolicyEngine};

const MEMBERS: usize = 1_000;
const POLICIES: usize = 100;
const DECISIONS: usize = 50_000;

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = setup(dir.path());
    let started = Instant::now();
    let engine = PolicyEngine::load(&config).expect("the generated policies load");
    let load = started.elapsed();

    let methods: Vec<(&String, &Vec<MemberId>)> = engine.methods().iter().collect();
    let members: Vec<&MemberId> = config.members.keys().collect();
    let purposes = ["KYC", "AML", "CREDIT-SCORING", "BENEFIT-PAYMENT"];
    let mut samples = Vec::with_capacity(DECISIONS);
    let mut allowed = 0;
    for index in 0..DECISIONS {
        let (method, providers) = methods[index % methods.len()];
        let facts = CallFacts {
            scope: CallScope {
                caller: members[(index * 7919) % members.len()],
                method,
                provider: &providers[0],
                purpose: Some(purposes[index % purposes.len()]),
            },
            has_reason: true,
            has_user_id: true,
            consent_verified: index % 2 == 0,
            hour: 12,
            certificate_days_left: 200,
        };
        let started = Instant::now();
        let decision = engine.authorize(&facts);
        samples.push(started.elapsed().as_nanos());
        allowed += usize::from(decision.allowed);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64 / 1_000.0;
    println!(
        "policy decisions: {POLICIES} policies, {MEMBERS} members, {DECISIONS} decisions ({allowed} allowed)"
    );
    println!(
        "  load + validate  {:>9.1} ms",
        load.as_secs_f64() * 1_000.0
    );
    println!("  p50              {:>9.1} us", at(0.50));
    println!("  p90              {:>9.1} us", at(0.90));
    println!("  p99              {:>9.1} us", at(0.99));
    println!("  max              {:>9.1} us", at(1.0));
    let total: u128 = samples.iter().sum();
    println!(
        "  throughput       {:>9.0} decisions/s on one core",
        DECISIONS as f64 / (total as f64 / 1e9)
    );
}

/// Writes the dev schema and 100 policies, and returns a configuration
/// with 1,000 members in 20 groups.
fn setup(dir: &Path) -> Config {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("a policy directory");
    let schema = govbridge::dev::DEV_POLICIES[0];
    std::fs::write(policies.join(schema.0), schema.1).expect("the schema");

    // The dev policies, plus generated ones: per-member and per-group
    // permits on single methods and whole services, and a few forbids.
    let mut text = String::new();
    for (name, contents) in &govbridge::dev::DEV_POLICIES[1..6] {
        std::fs::write(policies.join(name), contents).expect("a dev policy");
    }
    let services = [
        "govbridge.civilregistry.v1.CivilRegistry",
        "govbridge.tax.v1.TaxAuthority",
        "govbridge.business.v1.BusinessRegistry",
    ];
    let generated = POLICIES - 12;
    for index in 0..generated {
        let service = services[index % services.len()];
        let principal = if index % 3 == 0 {
            format!("principal in Group::\"group-{}\"", index % 20)
        } else {
            format!(
                "principal == Member::\"SN/COM/BANK{}/kyc\"",
                index * 11 % MEMBERS
            )
        };
        let effect = if index % 10 == 9 { "forbid" } else { "permit" };
        writeln!(
            text,
            "@id(\"generated-{index}\")\n{effect} ({principal}, action in Action::\"{service}\", resource)\nwhen {{ context.purpose == \"KYC\" && context.consent.verified }};\n"
        )
        .expect("writing to a string");
    }
    std::fs::write(policies.join("generated.cedar"), text).expect("generated policies");

    let mut config = govbridge::dev::CONFIG_TEMPLATE.replace("[agencies]", "[unused-agencies]");
    // Drop the agency servers: only the registry and services matter here.
    config.truncate(
        config
            .find("[unused-agencies]")
            .expect("the template has agencies"),
    );
    for index in 0..MEMBERS {
        writeln!(
            config,
            "[members.\"SN/COM/BANK{index}/kyc\"]\nname = \"Bank {index}\"\ngroups = [\"group-{}\", \"licensed-banks\"]\n",
            index % 20
        )
        .expect("writing to a string");
    }
    let path = dir.join("govbridge.toml");
    std::fs::write(&path, &config).expect("the configuration");
    govbridge::dev::write_descriptors(dir).expect("the agencies' descriptors");
    Config::load(&path).expect("the generated configuration is valid")
}
