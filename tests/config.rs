//! Configuration errors name the file, the line and the key; `check-config`
//! validates what a start would.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use govbridge::agencies::config::AgenciesConfig;
use govbridge::config::{Config, ConfigError};

/// Where the dev configuration is parsed: a directory that holds the
/// agencies' descriptor sets it names, as `govbridge dev` writes them.
fn path() -> &'static Path {
    static PATH: LazyLock<PathBuf> = LazyLock::new(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-tests");
        govbridge::dev::write_descriptors(&dir).unwrap();
        dir.join("govbridge.toml")
    });
    &PATH
}

/// `relative`, resolved as the configuration's paths are.
fn beside(relative: &str) -> PathBuf {
    path().with_file_name(relative)
}

/// The dev configuration, with `from` replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    let template = govbridge::dev::CONFIG_TEMPLATE;
    assert!(template.contains(from), "the template has no `{from}`");
    template.replacen(from, to, 1)
}

fn error_of(text: &str) -> ConfigError {
    Config::parse(path(), text).expect_err("the configuration was accepted")
}

fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

#[test]
fn the_dev_template_is_valid() {
    let config = Config::parse(path(), govbridge::dev::CONFIG_TEMPLATE).unwrap();
    assert_eq!(config.services.len(), 5);
    assert_eq!(
        config.services["govbridge.bank.v1.AccountVerification"]
            .providers
            .len(),
        2
    );
    let agencies = AgenciesConfig::parse(path(), govbridge::dev::CONFIG_TEMPLATE)
        .unwrap()
        .unwrap();
    assert_eq!(agencies.agencies.len(), 6);
    assert_eq!(
        config.gateway.tls.client_ca,
        beside("pki/ca.pem"),
        "paths are relative to the file"
    );
}

#[test]
fn a_missing_key_is_named() {
    let text = edited("listen = \"127.0.0.1:8443\"\n", "");
    let error = error_of(&text);
    assert_eq!(error.key, "gateway.listen");
    assert_eq!(error.message, "missing key");
    assert_eq!(error.file, path());
    assert!(
        error.to_string().starts_with(path().to_str().unwrap()),
        "{error}"
    );
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
    assert!(error.message.contains("longer than a century"), "{error}");
    let error = error_of(&edited("max_deadline = \"60s\"", "max_deadline = \"999h\""));
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

    // `[agencies]` is the harness's: read with the same errors.
    let error = AgenciesConfig::parse(
        path(),
        &edited("[agencies.servers.tax]", "[agencies.servers.taxes]"),
    )
    .unwrap_err();
    assert_eq!(error.key, "agencies.servers.taxes");
}

/// An endpoint listed twice, with a user, a query or port 0, and a
/// `tls_name` that is not one, are each named at their own key and line.
#[test]
fn endpoints_and_their_tls_name_are_checked_and_named() {
    let text = edited(
        "endpoints = [\"https://127.0.0.1:7102\"]",
        "endpoints = [\"https://127.0.0.1:7102\", \"https://127.0.0.1:7102/\"]",
    );
    let error = error_of(&text);
    assert_eq!(error.key, "providers.\"SN/GOV/DGID/tax\".endpoints[1]");
    assert!(error.message.contains("listed twice"), "{error}");
    assert_eq!(
        error.line,
        Some(line_of(&text, "https://127.0.0.1:7102\", "))
    );
    for bad in [
        "https://user:pw@127.0.0.1:7102",
        "https://127.0.0.1:7102?x=1",
        "https://127.0.0.1:0",
    ] {
        let error = error_of(&edited("https://127.0.0.1:7102", bad));
        assert_eq!(
            error.key, "providers.\"SN/GOV/DGID/tax\".endpoints[0]",
            "{bad}"
        );
    }
    let text = edited(
        "endpoints = [\"https://127.0.0.1:7102\"]",
        "endpoints = [\"https://127.0.0.1:7102\"]\ntls_name = \"not a name\"",
    );
    let error = error_of(&text);
    assert_eq!(error.key, "providers.\"SN/GOV/DGID/tax\".tls_name");
    assert_eq!(error.line, Some(line_of(&text, "tls_name")));
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
        path(),
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
        Config::parse(path(), govbridge::dev::CONFIG_TEMPLATE)
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

// ---------------------------------------------------------------------------
// Limits (`[limits]`).

/// The dev configuration with `lines` added to `[limits]` and `tables`
/// (`[limits.groups.*]`, `[limits.members.*]`) appended.
fn with_limits(lines: &str, tables: &str) -> String {
    const FIRST: &str = "gateway_concurrent_calls = 10000\n";
    format!("{}\n{tables}", edited(FIRST, &format!("{FIRST}{lines}")))
}

fn member_id(id: &str) -> govbridge::identity::MemberId {
    govbridge::identity::MemberId::parse(id).unwrap()
}

#[test]
fn limits_come_from_the_member_then_its_groups_then_the_defaults() {
    use govbridge::config::{MemberLimits, RateLimit};
    use std::num::NonZeroU32;
    let n = |n: u32| NonZeroU32::new(n).unwrap();
    let rate = |per_second, burst| {
        Some(RateLimit {
            per_second: n(per_second),
            burst: n(burst),
        })
    };
    let text = with_limits(
        "requests_per_second = 100\n",
        "[limits.groups.licensed-banks]\nrequests_per_second = 10\nburst = 20\n\n\
         [limits.groups.bank-credit]\nrequests_per_second = 99\nconcurrent_calls = 3\n\n\
         [limits.members.\"SN/COM/CBAO/kyc\"]\nmax_message_bytes = 1024\n",
    );
    let limits = Config::parse(path(), &text).unwrap().limits;
    assert_eq!(limits.gateway_concurrent_calls.get(), 10_000);
    // In licensed-banks, then bank-credit: the rate of the first that
    // sets one, the cap of the other.
    assert_eq!(
        limits.members[&member_id("SN/COM/CBAO/credit")],
        MemberLimits {
            rate: rate(10, 20),
            concurrent_calls: Some(n(3)),
            max_message_bytes: n(16 << 20),
        }
    );
    assert_eq!(
        limits.members[&member_id("SN/COM/CBAO/kyc")],
        MemberLimits {
            rate: rate(10, 20),
            concurrent_calls: None,
            max_message_bytes: n(1024),
        }
    );
    // The defaults; a burst defaults to the rate.
    assert_eq!(
        limits.members[&member_id("SN/GOV/DGCPT/treasury")],
        MemberLimits {
            rate: rate(100, 100),
            ..MemberLimits::default()
        }
    );

    // Without `[limits]`: no rate or cap, 16 MiB messages.
    let text = govbridge::dev::CONFIG_TEMPLATE.replace("[limits]\n", "[limits-removed]\n");
    let start = text.find("[limits-removed]").unwrap();
    let end = text.find("# The same keys for the members").unwrap();
    let text = format!("{}{}", &text[..start], &text[end..]);
    let limits = Config::parse(path(), &text).unwrap().limits;
    assert_eq!(limits.gateway_concurrent_calls.get(), 10_000);
    assert!(
        limits
            .members
            .values()
            .all(|limits| *limits == MemberLimits::default())
    );
    assert_eq!(limits.members.len(), 12);
}

#[test]
fn bad_limits_are_named_with_their_line() {
    let kyc = "[limits.members.\"SN/COM/CBAO/kyc\"]\n";
    for (lines, tables, key, needle, message) in [
        (
            "requests_per_second = 0\n",
            "",
            "limits.requests_per_second",
            "requests_per_second = 0",
            "must be between 1 and 1000000",
        ),
        (
            "concurrent_calls = 1000001\n",
            "",
            "limits.concurrent_calls",
            "concurrent_calls = 1000001",
            "must be between 1 and 1000000",
        ),
        (
            "",
            &format!("{kyc}max_message_bytes = 4294967296\n"),
            "limits.members.\"SN/COM/CBAO/kyc\".max_message_bytes",
            "max_message_bytes = 4294967296",
            "must be between 1 and 4294967295",
        ),
        (
            "",
            &format!("{kyc}burst = 7\n"),
            "limits.members.\"SN/COM/CBAO/kyc\".burst",
            "burst = 7",
            "needs `requests_per_second` in the same table",
        ),
        (
            "",
            "[limits.groups.licenced-banks]\nconcurrent_calls = 4\n",
            "limits.groups.licenced-banks",
            "[limits.groups.licenced-banks]",
            "no registered member is in group `licenced-banks`",
        ),
        (
            "",
            "[limits.groups.Banks]\nconcurrent_calls = 4\n",
            "limits.groups.Banks",
            "[limits.groups.Banks]",
            "is not a group name",
        ),
        (
            "",
            "[limits.members.\"SN/COM/NOBODY/kyc\"]\nconcurrent_calls = 4\n",
            "limits.members.\"SN/COM/NOBODY/kyc\"",
            "[limits.members.\"SN/COM/NOBODY/kyc\"]",
            "member SN/COM/NOBODY/kyc is not registered",
        ),
        (
            "",
            "[limits.members.\"SN/COM/CBAO\"]\nconcurrent_calls = 4\n",
            "limits.members.\"SN/COM/CBAO\"",
            "[limits.members.\"SN/COM/CBAO\"]",
            "is not a member id",
        ),
    ] {
        let text = with_limits(lines, tables);
        let error = error_of(&text);
        assert_eq!(error.key, key, "{error}");
        assert_eq!(error.line, Some(line_of(&text, needle)), "{error}");
        assert!(error.message.contains(message), "{error}");
        assert!(
            error.to_string().starts_with(path().to_str().unwrap()),
            "{error}"
        );
    }
}

#[test]
fn typos_and_wrong_types_in_limits_are_named() {
    let text = edited(
        "gateway_concurrent_calls = 10000",
        "gateway_concurrent_calls = -1",
    );
    let error = error_of(&text);
    assert_eq!(error.key, "limits.gateway_concurrent_calls", "{error}");
    assert_eq!(
        error.line,
        Some(line_of(&text, "gateway_concurrent_calls = -1"))
    );
    assert!(
        error.message.contains("must be between 1 and 1000000"),
        "{error}"
    );

    let text = with_limits("request_per_second = 5\n", "");
    let error = error_of(&text);
    assert_eq!(error.key, "limits.request_per_second", "{error}");
    assert_eq!(error.line, Some(line_of(&text, "request_per_second = 5")));

    let text = with_limits("requests_per_second = 1.5\n", "");
    let error = error_of(&text);
    assert_eq!(error.key, "limits.requests_per_second", "{error}");
    assert_eq!(
        error.line,
        Some(line_of(&text, "requests_per_second = 1.5"))
    );

    let text = with_limits(
        "",
        "[limits.members.\"SN/COM/CBAO/kyc\"]\nconcurent_calls = 4\n",
    );
    let error = error_of(&text);
    assert!(error.key.ends_with("concurent_calls"), "{error}");
    assert_eq!(error.line, Some(line_of(&text, "concurent_calls = 4")));
}

// ---------------------------------------------------------------------------
// Partner connection limits (`[gateway]`).

#[test]
fn connection_limits_default_to_what_the_template_documents() {
    let config = Config::parse(path(), govbridge::dev::CONFIG_TEMPLATE).unwrap();
    let listener = config.gateway.listener;
    let defaults = govbridge::net::ListenerSettings::default();
    assert_eq!(listener.idle_timeout, defaults.idle_timeout);
    assert_eq!(listener.max_connection_age, defaults.max_connection_age);
    assert_eq!(listener.drain_timeout, defaults.drain_timeout);
    assert_eq!(listener.keepalive_interval, defaults.keepalive_interval);
    assert_eq!(listener.keepalive_timeout, defaults.keepalive_timeout);
    assert_eq!(listener.max_header_list_size, defaults.max_header_list_size);
    assert_eq!(
        listener.max_pending_accept_reset_streams,
        defaults.max_pending_accept_reset_streams
    );
    assert_eq!(
        listener.max_local_error_reset_streams,
        defaults.max_local_error_reset_streams
    );
    assert_eq!(
        listener.max_connections_per_address,
        defaults.max_connections_per_address
    );

    let text = edited("drain_timeout = \"15s\"", "drain_timeout = \"2m\"");
    let config = Config::parse(path(), &text).unwrap();
    assert_eq!(config.gateway.listener.drain_timeout.as_secs(), 120);
}

#[test]
fn bad_connection_limits_are_named_with_their_line() {
    for (from, to, key, message) in [
        (
            "idle_timeout = \"5m\"",
            "idle_timeout = \"5\"",
            "gateway.idle_timeout",
            "has no unit",
        ),
        (
            "max_connection_age = \"1h\"",
            "max_connection_age = \"0s\"",
            "gateway.max_connection_age",
            "must be between",
        ),
        (
            "drain_timeout = \"15s\"",
            "drain_timeout = \"11m\"",
            "gateway.drain_timeout",
            "must be between",
        ),
        (
            "keepalive_timeout = \"10s\"",
            "keepalive_timeout = \"1ms\"",
            "gateway.keepalive_timeout",
            "must be between",
        ),
        (
            "max_header_list_size = 16384",
            "max_header_list_size = 100",
            "gateway.max_header_list_size",
            "must be between 4096 and 1048576",
        ),
        (
            "max_local_error_reset_streams = 256",
            "max_local_error_reset_streams = 0",
            "gateway.max_local_error_reset_streams",
            "must be between 1 and",
        ),
        (
            "max_pending_accept_reset_streams = 64",
            "max_pending_accept_reset_streams = -1",
            "gateway.max_pending_accept_reset_streams",
            "",
        ),
        (
            "max_connections_per_address = 256",
            "max_connections_per_address = 0",
            "gateway.max_connections_per_address",
            "must be between 1 and",
        ),
        (
            "max_connections_per_address = 256",
            "max_connection_per_address = 256",
            "gateway.max_connection_per_address",
            "unknown field",
        ),
    ] {
        let text = edited(from, to);
        let error = error_of(&text);
        assert_eq!(error.key, key, "{error}");
        assert_eq!(error.line, Some(line_of(&text, to)), "{error}");
        assert!(error.message.contains(message), "{error}");
        assert!(
            error.to_string().starts_with(path().to_str().unwrap()),
            "{error}"
        );
    }
}

#[test]
fn pool_settings_are_checked_and_named() {
    let text = edited("unhealthy_threshold = 2", "unhealthy_threshold = 0");
    let error = error_of(&text);
    assert_eq!(error.key, "upstream.unhealthy_threshold");
    assert!(error.message.contains("between 1 and 100"), "{error}");
    assert_eq!(error.line, Some(line_of(&text, "unhealthy_threshold = 0")));

    let text = edited("max_ejection_time = \"300s\"", "max_ejection_time = \"1s\"");
    let error = error_of(&text);
    assert_eq!(error.key, "upstream.max_ejection_time");
    assert!(error.message.contains("ejection_time"), "{error}");

    let text = edited(
        "health_check_interval = \"5s\"",
        "health_check_interval = \"0s\"",
    );
    let config = Config::parse(path(), &text).unwrap();
    assert_eq!(config.upstream.pool.health_check_interval, None);
}

#[test]
fn idempotent_methods_must_exist_and_not_stream_requests() {
    let section = "[services.\"govbridge.tax.v1.TaxAuthority\"]\n";
    let text = edited(
        section,
        &format!("{section}idempotent = [\"GetTaxClearance\", \"GetTaxClerance\"]\n"),
    );
    let error = error_of(&text);
    assert_eq!(
        error.key,
        "services.\"govbridge.tax.v1.TaxAuthority\".idempotent[1]"
    );
    assert!(
        error.message.contains("no method GetTaxClerance"),
        "{error}"
    );
    assert_eq!(
        error.line,
        Some(line_of(&text, "idempotent = [\"GetTaxClearance\""))
    );

    let text = edited(
        section,
        &format!("{section}idempotent = [\"SubmitWithholdings\"]\n"),
    );
    let error = error_of(&text);
    assert!(error.message.contains("streams its requests"), "{error}");

    let text = edited(
        section,
        &format!("{section}idempotent = [\"GetTaxClearance\"]\nmax_deadline = \"5s\"\n"),
    );
    let config = Config::parse(path(), &text).unwrap();
    let tax = &config.services["govbridge.tax.v1.TaxAuthority"];
    assert!(tax.idempotent.contains("GetTaxClearance"));
    assert_eq!(tax.max_deadline, Some(std::time::Duration::from_secs(5)));
}

#[test]
fn crls_and_their_grace_are_read_and_named() {
    let config = Config::parse(path(), govbridge::dev::CONFIG_TEMPLATE).unwrap();
    assert_eq!(
        config.upstream.tls.crls,
        [beside("pki/crl.pem")],
        "backends' certificates are checked against the dev CRL"
    );
    assert_eq!(config.gateway.tls.crl_grace, std::time::Duration::ZERO);
    assert_eq!(config.upstream.tls.crl_grace, std::time::Duration::ZERO);

    let text = edited("# crl_grace = \"6h\"", "crl_grace = \"6h\"");
    let config = Config::parse(path(), &text).unwrap();
    assert_eq!(
        config.gateway.tls.crl_grace,
        std::time::Duration::from_secs(6 * 3600)
    );

    for (value, message) in [
        ("\"10\"", "no unit"),
        ("\"6 hours\"", "unknown unit"),
        ("\"200h\"", "must be between"),
    ] {
        let text = edited("# crl_grace = \"6h\"", &format!("crl_grace = {value}"));
        let error = error_of(&text);
        assert_eq!(error.key, "gateway.tls.crl_grace", "{error}");
        assert_eq!(error.line, Some(line_of(&text, "crl_grace = ")), "{error}");
        assert!(error.message.contains(message), "{value}: {error}");
    }
    let text = edited(
        "# As gateway.tls.crl_grace, for these CRLs.\n# crl_grace = \"6h\"",
        "crl_grace = \"1d\"",
    );
    let error = error_of(&text);
    assert_eq!(error.key, "upstream.crl_grace", "{error}");
    assert_eq!(error.line, Some(line_of(&text, "crl_grace = \"1d\"")));
}

#[test]
fn an_admin_endpoint_off_loopback_needs_a_token() {
    let text = edited("admin = \"127.0.0.1:9464\"", "admin = \"0.0.0.0:9464\"");
    let error = error_of(&text);
    assert_eq!(error.key, "gateway.admin");
    assert_eq!(error.line, Some(line_of(&text, "admin = \"0.0.0.0")));
    assert!(
        error.message.contains("gateway.admin_token_file"),
        "{}",
        error.message
    );

    // With a token file, the address is accepted (the file is read at
    // start, by `check-config` and on reload).
    let text = edited(
        "admin = \"127.0.0.1:9464\"",
        "admin = \"0.0.0.0:9464\"\nadmin_token_file = \"secrets/admin.token\"",
    );
    let config = Config::parse(path(), &text).unwrap();
    assert_eq!(
        config.gateway.admin_token_file.as_deref(),
        Some(beside("secrets/admin.token").as_path())
    );

    // A token without an endpoint to protect is a mistake worth naming.
    let text = edited(
        "admin = \"127.0.0.1:9464\"",
        "admin_token_file = \"secrets/admin.token\"",
    );
    assert_eq!(error_of(&text).key, "gateway.admin_token_file");
    // So is TLS for no endpoint; for one, it is read.
    let text = edited("admin = \"127.0.0.1:9464\"", "admin_tls = true");
    assert_eq!(error_of(&text).key, "gateway.admin_tls");
    let text = edited(
        "admin = \"127.0.0.1:9464\"",
        "admin = \"127.0.0.1:9464\"\nadmin_tls = true",
    );
    assert!(Config::parse(path(), &text).unwrap().gateway.admin_tls);
}

/// The admin endpoint on the listener's own port is named at once, not
/// found by `serve` as an address in use once the log is open.
#[test]
fn an_admin_endpoint_on_the_listeners_port_is_refused() {
    for admin in ["127.0.0.1:8443", "0.0.0.0:8443"] {
        let text = edited(
            "admin = \"127.0.0.1:9464\"",
            &format!("admin = \"{admin}\"\nadmin_token_file = \"secrets/admin.token\""),
        );
        let error = error_of(&text);
        assert_eq!(error.key, "gateway.admin", "{admin}: {error}");
        assert_eq!(
            error.line,
            Some(line_of(&text, &format!("admin = \"{admin}")))
        );
        assert!(error.message.contains("gateway.listen"), "{error}");
    }
    // Another address on the same port is fine, as is IPv6 loopback
    // beside IPv4's.
    for admin in ["127.0.0.2:8443", "[::1]:8443"] {
        let text = edited(
            "admin = \"127.0.0.1:9464\"",
            &format!("admin = \"{admin}\""),
        );
        Config::parse(path(), &text).unwrap();
    }
}

#[test]
fn a_retention_is_read_and_named() {
    let config = Config::parse(path(), govbridge::dev::CONFIG_TEMPLATE).unwrap();
    assert_eq!(config.exchange_log.retain, None);
    assert_eq!(config.exchange_log.archive_dir, beside("data/archives"));

    let text = edited("# retain = \"90d\"", "retain = \"90d\"");
    let text = text.replacen(
        "# archive_dir = \"archives\"",
        "archive_dir = \"archives\"",
        1,
    );
    let config = Config::parse(path(), &text).unwrap();
    assert_eq!(
        config.exchange_log.retain,
        Some(std::time::Duration::from_secs(90 * 86_400))
    );
    assert_eq!(config.exchange_log.archive_dir, beside("archives"));

    for (value, message) in [
        ("\"30m\"", "at least 1h"),
        ("\"90\"", "no unit"),
        ("\"99999999999999999d\"", "longer than a century"),
    ] {
        let text = edited("# retain = \"90d\"", &format!("retain = {value}"));
        let error = error_of(&text);
        assert_eq!(error.key, "exchange_log.retain", "{error}");
        assert_eq!(error.line, Some(line_of(&text, "retain = ")), "{error}");
        assert!(error.message.contains(message), "{value}: {error}");
    }
}

/// A key inside a table named by a quoted id (a member, a provider, a
/// service) is named with that id, not a `?`.
#[test]
fn keys_under_quoted_ids_are_named_in_full() {
    for (from, to, key, line_of_key) in [
        (
            "groups = [\"licensed-banks\"]\n",
            "groups = [\"licensed-banks\"]\nname2 = 1\n",
            "members.\"SN/COM/CBAO/kyc\".name2",
            "name2",
        ),
        (
            "idempotent = [\"GetPerson\", \"VerifyIdentity\"]",
            "idempotent = [\"GetPerson\", \"VerifyIdentity\"]\ntimeout = 1",
            "services.\"govbridge.civilregistry.v1.CivilRegistry\".timeout",
            "timeout = 1",
        ),
        (
            "endpoints = [\"https://127.0.0.1:7102\"]",
            "endpoints = \"https://127.0.0.1:7102\"",
            "providers.\"SN/GOV/DGID/tax\".endpoints",
            "endpoints = \"https://127.0.0.1:7102\"",
        ),
    ] {
        let text = edited(from, to);
        let error = error_of(&text);
        assert_eq!(error.key, key, "{error}");
        assert_eq!(error.line, Some(line_of(&text, line_of_key)), "{error}");
    }
    // A key missing: named in its table.
    let text = edited(
        "name = \"CBAO Groupe Attijariwafa bank, customer due diligence\"\n",
        "",
    );
    let error = error_of(&text);
    assert_eq!(error.key, "members.\"SN/COM/CBAO/kyc\".name", "{error}");
    assert_eq!(error.message, "missing key");
}

/// A Data Tracker client no member is (a typo) is named: its portal's
/// calls would all be refused.
#[test]
fn a_data_tracker_client_must_be_a_member() {
    let text = edited(
        "data_tracker_clients = [\"SN/GOV/MYGOV/app\"]",
        "data_tracker_clients = [\"SN/GOV/MYGOV/app\", \"SN/GOV/MYGOV/ap\"]",
    );
    let error = error_of(&text);
    assert_eq!(error.key, "exchange_log.data_tracker_clients[1]", "{error}");
    assert_eq!(
        error.line,
        Some(line_of(&text, "data_tracker_clients")),
        "{error}"
    );
    assert!(
        error.message.contains("SN/GOV/MYGOV/ap is not a member"),
        "{error}"
    );
}

/// A node id names the node in its log's origin (a key name), its
/// records and its backups' manifests: one that cannot is refused where
/// it is written, not when the gateway starts.
#[test]
fn a_node_id_that_cannot_name_a_log_is_named() {
    for bad in ["gw dakar 1", "gw+1", "gw\\nfile", "", "gw\\t1"] {
        let text = edited("node_id = \"gw-dakar-1\"", &format!("node_id = \"{bad}\""));
        let error = error_of(&text);
        assert_eq!(error.key, "gateway.node_id", "{bad}: {error}");
        assert_eq!(error.line, Some(line_of(&text, "node_id = ")), "{error}");
        assert!(error.message.contains("without whitespace"), "{error}");
    }
    // What made a valid log name before still does.
    for good in ["gw_dakar.1-a", "dakar/gw-1", "thiès-1", "gw@dakar"] {
        let text = edited("node_id = \"gw-dakar-1\"", &format!("node_id = \"{good}\""));
        assert_eq!(Config::parse(path(), &text).unwrap().gateway.node_id, good);
    }
}

/// `[store] url`: a PostgreSQL URL, named with its line when it is not one;
/// a password never appears in the error.
#[test]
fn a_bad_store_url_is_named_without_its_password() {
    let config = |url: &str| {
        let dev = govbridge::dev::CONFIG_TEMPLATE;
        format!("{dev}\n[store]\nurl = \"{url}\"\n")
    };
    for (url, message) in [
        ("mysql://govbridge@db/govbridge", "not a PostgreSQL URL"),
        (
            "postgres://govbridge:s3cret@db/govbridge?sslmode=require",
            "sslmode=require needs `ca`",
        ),
        ("postgres://db/govbridge", "names no user"),
        ("postgres://govbridge:s3cret@db/govbridge?bogus=1", "bogus"),
        // A slash in the password, a password as an option.
        (
            "postgres://govbridge:s3cret/x@db/govbridge?bogus=1",
            "bogus",
        ),
        (
            "postgres://govbridge@db/govbridge?password=s3cret&bogus=1",
            "bogus",
        ),
    ] {
        let text = config(url);
        let error = error_of(&text);
        assert_eq!(error.key, "store.url", "{error}");
        assert_eq!(error.line, Some(line_of(&text, "url = ")), "{error}");
        assert!(error.message.contains(message), "{error}");
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }
    let store = Config::parse(
        path(),
        &config("postgres://govbridge:s3cret@127.0.0.1:5433/govbridge"),
    )
    .unwrap()
    .store
    .unwrap();
    assert_eq!(
        store.redacted(),
        "postgres://govbridge@127.0.0.1:5433/govbridge"
    );
    for url in [
        "postgres://govbridge:s3cret/x@127.0.0.1/govbridge",
        "postgres://govbridge@127.0.0.1/govbridge?password=s3cret",
    ] {
        let store = Config::parse(path(), &config(url)).unwrap().store.unwrap();
        assert_eq!(
            store.redacted(),
            "postgres://govbridge@127.0.0.1:5432/govbridge"
        );
    }
    assert!(!format!("{store:?}").contains("s3cret"));
}

/// A fleet's nodes write one exchange log: `[store]` with the log on asks
/// for the log's name (the default names the node), and refuses a
/// retention, which only a node's own store supports, naming the line.
#[test]
fn a_fleet_log_needs_its_name_and_no_retention() {
    let store = "\n[store]\nurl = \"postgres://govbridge@127.0.0.1/govbridge\"\n";
    let origin = "origin = \"govbridge/gw-dakar-1\"";
    let text = edited(origin, "# origin: the default") + store;
    let error = error_of(&text);
    assert_eq!(error.key, "store.url", "{error}");
    assert_eq!(error.line, Some(line_of(&text, "url = ")), "{error}");
    assert!(error.message.contains("exchange_log.origin"), "{error}");

    let text = edited("# retain = \"90d\"", "retain = \"90d\"") + store;
    let error = error_of(&text);
    assert_eq!(error.key, "exchange_log.retain", "{error}");
    assert_eq!(error.line, Some(line_of(&text, "retain = ")), "{error}");
    assert!(error.message.contains("audit pull"), "{error}");

    let config = Config::parse(path(), &(edited("", "") + store)).unwrap();
    assert_eq!(config.exchange_log.origin, "govbridge/gw-dakar-1");
    // The log off, nothing is asked of it.
    let off = edited(origin, "").replace("enabled = true", "enabled = false") + store;
    Config::parse(path(), &off).unwrap();
}

/// A service is known from the descriptor set the configuration names
/// for it; anything else is named with its line.
#[test]
fn services_are_known_from_their_descriptors() {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    govbridge::dev::write_descriptors(dir.path()).unwrap();
    let path = dir.path().join("govbridge.toml");
    let parse = |text: &str| Config::parse(&path, text);

    // The mock agencies' services are registered as any other: without
    // its descriptor set, the civil registry is unknown.
    let undescribed = edited("descriptor = \"descriptors/civilregistry.binpb\"\n", "");
    let error = parse(&undescribed).unwrap_err();
    assert_eq!(
        error.key,
        "services.\"govbridge.civilregistry.v1.CivilRegistry\""
    );
    assert!(error.message.contains("no descriptor declares"), "{error}");

    // A service no descriptor declares.
    let unknown = edited(
        "[services.\"govbridge.tax.v1.TaxAuthority\"]",
        "[services.\"govbridge.land.v1.LandRegistry\"]\nproviders = [\"SN/GOV/DGID/tax\"]\n\n\
         [services.\"govbridge.tax.v1.TaxAuthority\"]",
    );
    let error = parse(&unknown).unwrap_err();
    assert_eq!(error.key, "services.\"govbridge.land.v1.LandRegistry\"");
    assert!(
        error.message.contains("no descriptor declares"),
        "{}",
        error.message
    );
    assert_eq!(
        error.line,
        Some(line_of(&unknown, "[services.\"govbridge.land"))
    );

    // A descriptor that is not one, one missing, and one that does not
    // link (an import left out).
    let with_descriptor = |file: &str| {
        unknown.replacen(
            "providers = [\"SN/GOV/DGID/tax\"]\n\n",
            &format!("providers = [\"SN/GOV/DGID/tax\"]\ndescriptor = \"{file}\"\n\n"),
            1,
        )
    };
    std::fs::write(dir.path().join("garbage.binpb"), b"\xff\xff\xff").unwrap();
    let text = with_descriptor("garbage.binpb");
    let error = parse(&text).unwrap_err();
    assert_eq!(
        error.key,
        "services.\"govbridge.land.v1.LandRegistry\".descriptor"
    );
    assert!(
        error.message.contains("not an encoded FileDescriptorSet"),
        "{}",
        error.message
    );
    assert_eq!(error.line, Some(line_of(&text, "descriptor = \"garbage")));
    let error = parse(&with_descriptor("missing.binpb")).unwrap_err();
    assert!(error.message.contains("cannot read"), "{}", error.message);

    let file = |name: &str, dependency: &str, request: &str| prost_types::FileDescriptorProto {
        name: Some(name.to_owned()),
        package: Some("govbridge.land.v1".to_owned()),
        dependency: vec![dependency.to_owned()]
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect(),
        message_type: vec![prost_types::DescriptorProto {
            name: Some("Request".to_owned()),
            ..Default::default()
        }],
        service: vec![prost_types::ServiceDescriptorProto {
            name: Some("LandRegistry".to_owned()),
            method: vec![prost_types::MethodDescriptorProto {
                name: Some("GetParcels".to_owned()),
                input_type: Some(request.to_owned()),
                output_type: Some(".govbridge.land.v1.Request".to_owned()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        syntax: Some("proto3".to_owned()),
        ..Default::default()
    };
    let set = |files| prost_types::FileDescriptorSet { file: files }.encode_to_vec();
    std::fs::write(
        dir.path().join("unlinked.binpb"),
        set(vec![file("land.proto", "", ".govbridge.land.v1.Missing")]),
    )
    .unwrap();
    let error = parse(&with_descriptor("unlinked.binpb")).unwrap_err();
    assert!(error.message.contains("do not link"), "{}", error.message);

    // A file named as one of the gateway's, with other content.
    std::fs::write(
        dir.path().join("conflict.binpb"),
        set(vec![file(
            "govbridge/options/v1/options.proto",
            "",
            ".govbridge.land.v1.Request",
        )]),
    )
    .unwrap();
    let error = parse(&with_descriptor("conflict.binpb")).unwrap_err();
    assert!(
        error.message.contains("govbridge/options/v1/options.proto"),
        "{}",
        error.message
    );

    // A set that declares the service: accepted, and its methods known.
    std::fs::write(
        dir.path().join("land.binpb"),
        set(vec![file("land.proto", "", ".govbridge.land.v1.Request")]),
    )
    .unwrap();
    let config = parse(&with_descriptor("land.binpb")).unwrap();
    let methods = &config.catalog.service_methods()["govbridge.land.v1.LandRegistry"];
    assert!(methods.contains("GetParcels"));

    // One whose JSON route would take the registries' requests (`GET
    // /v1/persons/{nin}` among them): refused, naming both.
    std::fs::write(
        dir.path().join("land.proto"),
        "syntax = \"proto3\";\npackage govbridge.land.v1;\n\
         import \"google/api/annotations.proto\";\n\
         message Request { string path = 1; }\n\
         service LandRegistry {\n  rpc GetParcels(Request) returns (Request) {\n    \
         option (google.api.http) = { get: \"/v1/{path=**}\" };\n  }\n}\n",
    )
    .unwrap();
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut compiler = protox::Compiler::new([dir.path(), protos.as_path()]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("land.proto").unwrap();
    std::fs::write(
        dir.path().join("wide.binpb"),
        compiler.encode_file_descriptor_set(),
    )
    .unwrap();
    let text = with_descriptor("wide.binpb");
    let error = parse(&text).unwrap_err();
    assert_eq!(
        error.key,
        "services.\"govbridge.land.v1.LandRegistry\".descriptor"
    );
    assert!(
        error.message.contains("GET /v1/{path=**}")
            && error.message.contains("may not take another's requests"),
        "{}",
        error.message
    );
}

/// `[federation."XX"]` and what it changes: a partner's members are
/// reached through its gateways, and this gateway signs what it asserts.
#[test]
fn federation_mistakes_are_named() {
    let dir = path().parent().unwrap();
    let key = govbridge::note::SigningKey::generate("AZ-federation").unwrap();
    std::fs::write(dir.join("az.pub"), format!("{}\n", key.verifier())).unwrap();
    let ours = govbridge::note::SigningKey::generate("SN-federation").unwrap();
    std::fs::write(dir.join("sn.key"), ours.to_pem()).unwrap();
    std::fs::write(dir.join("sn.pub"), format!("{}\n", ours.verifier())).unwrap();
    let partner = |gateway: &str| {
        format!(
            "\n[federation.AZ]\nca = \"az-ca.pem\"\ngateway = \"{gateway}\"\n\
             endpoints = [\"https://127.0.0.1:9443\"]\nkey = \"az.pub\"\n\
             \n[members.\"AZ/GOV/ASAN/registry\"]\nname = \"ASAN\"\n\
             \n[providers.\"AZ/GOV/ASAN/registry\"]\n"
        )
    };
    let with_key = |text: &str| {
        edited(
            "identity = \"SN/GOV/GOVBRIDGE/gateway\"\n",
            "identity = \"SN/GOV/GOVBRIDGE/gateway\"\nfederation_key = \"sn.key\"\n",
        ) + text
    };

    let config = Config::parse(path(), &with_key(&partner("AZ/GOV/BRIDGE/gateway"))).unwrap();
    let provider =
        &config.providers[&govbridge::identity::MemberId::parse("AZ/GOV/ASAN/registry").unwrap()];
    assert_eq!(provider.partner.as_deref(), Some("AZ"));
    assert_eq!(provider.presents.as_str(), "AZ/GOV/BRIDGE/gateway");
    assert_eq!(provider.endpoints[0].address, "127.0.0.1:9443");

    let text = with_key(&partner("SN/GOV/BRIDGE/gateway"));
    let error = error_of(&text);
    assert_eq!(error.key, "federation.AZ.gateway", "{error}");
    assert!(error.message.contains("not of instance AZ"), "{error}");
    assert_eq!(
        error.line,
        Some(line_of(&text, "gateway = \"SN/GOV/BRIDGE"))
    );

    let text =
        with_key(&partner("AZ/GOV/BRIDGE/gateway")) + "endpoints = [\"https://127.0.0.1:7000\"]\n";
    let error = error_of(&text);
    assert_eq!(
        error.key, "providers.\"AZ/GOV/ASAN/registry\".endpoints",
        "{error}"
    );
    assert!(
        error.message.contains("through federation.AZ.endpoints"),
        "{error}"
    );

    let error = error_of(&(edited("", "") + &partner("AZ/GOV/BRIDGE/gateway")));
    assert_eq!(error.key, "gateway.federation_key", "{error}");

    // A section's key is an instance's name, as its members' ids start.
    for (written, key) in [
        ("az", "federation.az"),
        ("\"../AZ\"", "federation.\"../AZ\""),
    ] {
        let text = with_key(&partner("AZ/GOV/BRIDGE/gateway")).replacen(
            "[federation.AZ]",
            &format!("[federation.{written}]"),
            1,
        );
        let error = error_of(&text);
        assert_eq!(error.key, key, "{error}");
        assert!(error.message.contains("not an instance name"), "{error}");
        assert_eq!(
            error.line,
            Some(line_of(&text, &format!("[federation.{written}]")))
        );
    }

    // The consent feed is a provider of this instance: a partner's
    // provider would be dialled through its gateways, which present
    // another identity, and the feed never connects.
    let text = with_key(&partner("AZ/GOV/BRIDGE/gateway")).replacen(
        "feed_provider = \"SN/GOV/MYGOV/consent\"",
        "feed_provider = \"AZ/GOV/ASAN/registry\"",
        1,
    );
    let error = error_of(&text);
    assert_eq!(error.key, "consent.feed_provider", "{error}");
    assert!(error.message.contains("of instance AZ"), "{error}");
    assert_eq!(error.line, Some(line_of(&text, "feed_provider = \"AZ/GOV")));

    let text = with_key(&partner("AZ/GOV/BRIDGE/gateway")).replace("az.pub", "missing.pub");
    let error = error_of(&text);
    assert_eq!(error.key, "federation.AZ.key", "{error}");
    assert_eq!(error.line, Some(line_of(&text, "key = \"missing.pub")));

    // [instance], what partners learn of this one: named mistakes.
    let instance = |endpoints: &str, key: &str| {
        edited("", "")
            + &format!(
                "\n[instance]\ngateway = \"SN/GOV/GOVBRIDGE/gateway\"\nendpoints = {endpoints}\n\
                 federation_key = \"{key}\"\n"
            )
    };
    Config::parse(path(), &instance("[\"https://127.0.0.1:8443\"]", "sn.pub")).unwrap();
    let text = instance("[]", "sn.pub");
    let error = error_of(&text);
    assert_eq!(error.key, "instance.endpoints", "{error}");
    assert_eq!(error.line, Some(line_of(&text, "endpoints = []")));
    let error = error_of(&instance("[\"https://127.0.0.1:8443\"]", "missing.pub"));
    assert_eq!(error.key, "instance.federation_key", "{error}");

    // A fleet witnesses and is witnessed as one gateway (its nodes keep
    // the witness's state in the fleet's database).
    let fleet = "\n[store]\nurl = \"postgres://govbridge@127.0.0.1:5432/govbridge\"\n";
    let text = with_key(&partner("AZ/GOV/BRIDGE/gateway")).replace(
        "key = \"az.pub\"\n",
        "key = \"az.pub\"\nlog_key = \"az.pub\"\nwitness = true\n",
    ) + fleet;
    let config = Config::parse(path(), &text).unwrap();
    let az = &config.federation.partners["AZ"];
    assert!(az.witness && az.log_key.is_some());

    // Receipts are checked under the partner's log key: none, no receipts.
    let text = with_key(&partner("AZ/GOV/BRIDGE/gateway"))
        .replace("key = \"az.pub\"\n", "key = \"az.pub\"\nreceipts = true\n");
    let error = error_of(&text);
    assert_eq!(error.key, "federation.AZ.receipts", "{error}");
    assert!(error.message.contains("log_key"), "{error}");
    assert_eq!(error.line, Some(line_of(&text, "receipts = true")));

    // Followed from its directory: only where, under which key, is
    // written here; the rest is what the partner publishes.
    let directory_key = govbridge::note::SigningKey::generate("AZ-directory").unwrap();
    std::fs::write(
        dir.join("az-directory.pub"),
        format!("{}\n", directory_key.verifier()),
    )
    .unwrap();
    let followed = |lines: &str| {
        with_key(&format!(
            "\n[federation.AZ]\ndirectory = \"https://directory.az.example/bundle.json\"\n\
             directory_ca = \"az-ca.pem\"\ndirectory_key = \"az-directory.pub\"\n{lines}\
             \n[members.\"AZ/GOV/ASAN/registry\"]\nname = \"ASAN\"\n\
             \n[providers.\"AZ/GOV/ASAN/registry\"]\n"
        ))
    };
    // Nothing fetched yet: valid, the partner not learned (its calls are
    // refused until it is; tests/federation.rs).
    let config = Config::parse(path(), &followed("")).unwrap();
    assert!(config.federation.partners.is_empty());
    let az = &config.federation.followed["AZ"];
    assert_eq!(
        az.url.to_string(),
        "https://directory.az.example/bundle.json"
    );
    assert!(
        az.cache
            .starts_with(dir.join("data").join("partners").join("AZ"))
    );
    let provider =
        &config.providers[&govbridge::identity::MemberId::parse("AZ/GOV/ASAN/registry").unwrap()];
    assert_eq!(provider.partner.as_deref(), Some("AZ"));
    assert!(provider.endpoints.is_empty());
    let text = followed("gateway = \"AZ/GOV/BRIDGE/gateway\"\n");
    let error = error_of(&text);
    assert_eq!(error.key, "federation.AZ.gateway", "{error}");
    assert!(error.message.contains("publishes"), "{error}");
    assert_eq!(
        error.line,
        Some(line_of(&text, "gateway = \"AZ/GOV/BRIDGE"))
    );
    let error = error_of(&followed("").replace("https://directory.az", "http://directory.az"));
    assert_eq!(error.key, "federation.AZ.directory", "{error}");
    assert!(error.message.contains("https://"), "{error}");
    let error = error_of(&followed("").replace("directory_key = \"az-directory.pub\"\n", ""));
    assert_eq!(error.key, "federation.AZ.directory_key", "{error}");
    let error = error_of(&followed("interval = \"1ms\"\n"));
    assert_eq!(error.key, "federation.AZ.interval", "{error}");
    // What only a followed partner takes, in a section written out.
    let text = with_key(&partner("AZ/GOV/BRIDGE/gateway")).replace(
        "key = \"az.pub\"\n",
        "key = \"az.pub\"\nwitness_log = true\n",
    );
    let error = error_of(&text);
    assert_eq!(error.key, "federation.AZ.witness_log", "{error}");
    assert!(error.message.contains("no `directory`"), "{error}");
    assert_eq!(error.line, Some(line_of(&text, "witness_log = true")));
}
