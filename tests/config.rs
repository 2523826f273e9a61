//! Configuration errors name the file, the line and the key; `check-config`
//! validates what a start would.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use govbridge::config::{Config, ConfigError};

const PATH: &str = "/etc/govbridge/govbridge.toml";

/// The dev configuration, with `from` replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    let template = govbridge::dev::CONFIG_TEMPLATE;
    assert!(template.contains(from), "the template has no `{from}`");
    template.replacen(from, to, 1)
}

fn error_of(text: &str) -> ConfigError {
    Config::parse(Path::new(PATH), text).expect_err("the configuration was accepted")
}

fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

#[test]
fn the_dev_template_is_valid() {
    let config = Config::parse(Path::new(PATH), govbridge::dev::CONFIG_TEMPLATE).unwrap();
    assert_eq!(config.services.len(), 5);
    assert_eq!(
        config.services["govbridge.bank.v1.AccountVerification"]
            .providers
            .len(),
        2
    );
    assert_eq!(config.agencies.unwrap().agencies.len(), 6);
    assert_eq!(
        config.gateway.tls.client_ca,
        Path::new("/etc/govbridge/pki/ca.pem"),
        "paths are relative to the file"
    );
}

#[test]
fn a_missing_key_is_named() {
    let text = edited("listen = \"127.0.0.1:8443\"\n", "");
    let error = error_of(&text);
    assert_eq!(error.key, "gateway.listen");
    assert_eq!(error.message, "missing key");
    assert_eq!(error.file, Path::new(PATH));
    assert!(error.to_string().starts_with(PATH), "{error}");
}

#[test]
fn a_bad_member_id_is_named_with_its_line() {
    let text = edited(
        "[members.\"SN/COM/SONATEL/payroll\"]",
        "[members.\"SN/COM/SONATEL\"]",
    );
    let error = error_of(&text);
    assert_eq!(error.key, "members.\"SN/COM/SONATEL\"");
    assert!(error.message.contains("four segments"), "{}", error.message);
    assert_eq!(error.line, Some(line_of(&text, "SN/COM/SONATEL\"]")));
}

#[test]
fn a_bad_gateway_identity_is_named() {
    let text = edited(
        "identity = \"SN/GOV/GOVBRIDGE/gateway\"",
        "identity = \"SN/GOV/GOV BRIDGE/gateway\"",
    );
    let error = error_of(&text);
    assert_eq!(error.key, "gateway.identity");
    assert_eq!(error.line, Some(line_of(&text, "identity = ")));
}

#[test]
fn an_unknown_provider_is_named() {
    let text = edited(
        "providers = [\"SN/GOV/DGID/tax\"]",
        "providers = [\"SN/GOV/DGID/taxes\"]",
    );
    let error = error_of(&text);
    assert_eq!(
        error.key,
        "services.\"govbridge.tax.v1.TaxAuthority\".providers[0]"
    );
    assert!(
        error.message.contains("unknown provider SN/GOV/DGID/taxes"),
        "{}",
        error.message
    );
    assert_eq!(error.line, Some(line_of(&text, "SN/GOV/DGID/taxes")));
}

#[test]
fn a_provider_must_be_a_registered_member() {
    let text = edited(
        "[members.\"SN/GOV/DGID/tax\"]",
        "[members.\"SN/GOV/DGID/tax-office\"]",
    );
    let error = error_of(&text);
    assert_eq!(error.key, "providers.\"SN/GOV/DGID/tax\"");
    assert!(
        error.message.contains("not a registered member"),
        "{}",
        error.message
    );
}

#[test]
fn typos_in_keys_and_values_are_errors() {
    let error = error_of(&edited(
        "connect_timeout = \"1s\"",
        "conect_timeout = \"1s\"",
    ));
    assert!(error.message.contains("conect_timeout"), "{error}");
    assert_eq!(error.key, "upstream.conect_timeout");

    let error = error_of(&edited(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1 second\"",
    ));
    assert_eq!(error.key, "upstream.connect_timeout");

    let error = error_of(&edited(
        "max_deadline = \"60s\"",
        "max_deadline = \"99999999999999999h\"",
    ));
    assert_eq!(error.key, "upstream.max_deadline");
    assert!(error.message.contains("between"), "{error}");
    let error = error_of(&edited(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"0s\"",
    ));
    assert_eq!(error.key, "upstream.connect_timeout");

    let error = error_of(&edited(
        "[providers.\"SN/GOV/DGID/tax\"]",
        "[providers.\"sn/GOV/DGID/tax\"]\nendpoints = [\"https://127.0.0.1:1\"]\n\n[providers.\"SN/GOV/DGID/tax\"]",
    ));
    assert!(error.message.contains("configured twice"), "{error}");

    let error = error_of(&edited("https://127.0.0.1:7102", "http://127.0.0.1:7102"));
    assert_eq!(error.key, "providers.\"SN/GOV/DGID/tax\".endpoints[0]");
    assert!(error.message.contains("TLS is mandatory"), "{error}");

    let error = error_of(&edited(
        "listen = \"127.0.0.1:8443\"",
        "listen = \"localhost:eight\"",
    ));
    assert_eq!(error.key, "gateway.listen");

    let error = error_of(&edited(
        "[agencies.servers.tax]",
        "[agencies.servers.taxes]",
    ));
    assert_eq!(error.key, "agencies.servers.taxes");
}

#[test]
fn a_syntax_error_names_the_line() {
    let text = edited("[upstream]", "[upstream");
    let error = error_of(&text);
    assert_eq!(error.line, Some(line_of(&text, "[upstream")));
}

#[test]
fn an_otlp_collector_is_an_http_address_with_a_port() {
    let config = Config::parse(
        Path::new(PATH),
        &format!(
            "{}\n[telemetry]\notlp_endpoint = \"http://otel-collector:4317\"\n",
            govbridge::dev::CONFIG_TEMPLATE
        ),
    )
    .unwrap();
    let otlp = config.telemetry.otlp.unwrap();
    assert_eq!(otlp.endpoint, "otel-collector:4317");
    assert_eq!(otlp.service_name, "govbridge");
    assert!(
        Config::parse(Path::new(PATH), govbridge::dev::CONFIG_TEMPLATE)
            .unwrap()
            .telemetry
            .otlp
            .is_none(),
        "export is off by default"
    );

    for (endpoint, expected) in [
        ("https://collector:4317", "only plain `http://`"),
        ("http://collector", "must be `http://host:port`"),
        ("collector:4317", "must be `http://host:port`"),
        (
            "http://collector:4317/v1/traces",
            "must be `http://host:port`",
        ),
    ] {
        let text = format!(
            "{}\n[telemetry]\notlp_endpoint = \"{endpoint}\"\n",
            govbridge::dev::CONFIG_TEMPLATE
        );
        let error = error_of(&text);
        assert_eq!(error.key, "telemetry.otlp_endpoint", "{endpoint}");
        assert_eq!(
            error.line,
            Some(line_of(&text, &format!("otlp_endpoint = \"{endpoint}\"")))
        );
        assert!(
            error.message.contains(expected),
            "{endpoint}: {}",
            error.message
        );
    }
}
