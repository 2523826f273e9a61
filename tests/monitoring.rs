//! The alerting rules and the Grafana dashboard in docs/monitoring/ name
//! only metrics the gateway exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

/// Every `govbridge_*` metric a text names, without the histogram suffixes.
fn metrics_named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("govbridge_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name)
            .to_owned();
        names.insert(name);
    }
    names
}

fn monitoring() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = BTreeSet::new();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root.join("docs/monitoring").join(file)).unwrap();
        names.extend(metrics_named(&text));
    }
    names
}

#[test]
fn alerts_and_dashboard_name_only_documented_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let operators = std::fs::read_to_string(root.join("docs/operators.md")).unwrap();
    let documented: BTreeSet<String> = operators
        .lines()
        .filter_map(|line| line.strip_prefix("| `govbridge_"))
        .map(|rest| format!("govbridge_{}", rest.split('`').next().unwrap()))
        .collect();
    let named = monitoring();
    assert!(named.len() > 15, "{named:?}");
    let undocumented: Vec<_> = named.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/operators.md: {undocumented:?}"
    );
}

/// A gateway with consent, the exchange log and a call behind it exports
/// every metric the rules and the dashboard use, but the fleet's (which
/// need `[store]`: tests/fleet.rs reads those), the partners' (which
/// need `[federation."XX"]`: tests/federation.rs reads those) and the
/// global configuration's (`[directory]`: tests/global_configuration.rs).
#[tokio::test]
async fn a_gateway_exports_what_the_alerts_and_dashboard_use() {
    let bed = support::dev_bed().await;
    let mut registry =
        govbridge::proto::civilregistry::v1::civil_registry_client::CivilRegistryClient::new(
            bed.client("cbao-kyc").await,
        );
    registry
        .verify_identity(support::declared(
            support::verify_identity_of(&bed, 0),
            "KYC",
        ))
        .await
        .unwrap();
    let (_, text) = support::admin_request(bed.admin, "GET", "/metrics").await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .map(ToOwned::to_owned)
        .collect();
    let missing: Vec<_> = monitoring()
        .into_iter()
        .filter(|name| {
            !name.starts_with("govbridge_fleet_")
                && !name.starts_with("govbridge_partner_")
                && !name.starts_with("govbridge_global_")
                && !exported.contains(name)
        })
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{text}");
    bed.stop().await;
}
