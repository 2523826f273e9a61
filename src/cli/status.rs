//! `govbridge status --admin ADDR`: a short human summary of a running
//! gateway, from its admin endpoint. Text read from the endpoint is shown
//! escaped: it may quote what callers sent.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use govbridge::identity::tls::days_left;
use govbridge::wire::escape::Escaped;
use rustls::pki_types::ServerName;

/// The admin endpoint, and how to reach it: plain HTTP, or HTTPS
/// (`gateway.admin_tls`) trusting a CA for a server name.
pub struct AdminEndpoint {
    address: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl AdminEndpoint {
    /// `address`, over HTTPS when `ca` is given: the gateway's certificate
    /// must chain to it and name `name` (default: the address's IP).
    pub fn new(address: SocketAddr, ca: Option<&Path>, name: Option<&str>) -> anyhow::Result<Self> {
        let tls = match ca {
            None => None,
            Some(ca) => {
                let config = govbridge::identity::tls::verifying_client_config(ca)?;
                let name = match name {
                    Some(name) => ServerName::try_from(name.to_owned())
                        .with_context(|| format!("--admin-name {name}: not a server name"))?,
                    None => ServerName::IpAddress(address.ip().into()),
                };
                Some((config, name))
            }
        };
        Ok(Self { address, tls })
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    /// What to try when the endpoint does not answer in this scheme.
    fn other_scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "if the endpoint is plain HTTP, leave out --admin-ca"
        } else {
            "if the endpoint is HTTPS (gateway.admin_tls), give --admin-ca with its CA"
        }
    }
}

/// One GET to the admin endpoint: (status code, body).
fn get(endpoint: &AdminEndpoint, path: &str) -> anyhow::Result<(u16, String)> {
    let admin = endpoint.address;
    let mut tcp = TcpStream::connect_timeout(&admin, Duration::from_secs(3))
        .with_context(|| format!("cannot reach the admin endpoint at {admin}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n");
    let mut response = String::new();
    let reading = || {
        format!(
            "reading {path} from {} ({})",
            endpoint.url(),
            endpoint.other_scheme()
        )
    };
    match &endpoint.tls {
        None => {
            tcp.write_all(request.as_bytes())?;
            tcp.read_to_string(&mut response).with_context(reading)?;
        }
        Some((config, name)) => {
            let connection = rustls::ClientConnection::new(Arc::clone(config), name.clone())?;
            let mut tls = rustls::StreamOwned::new(connection, tcp);
            // A certificate refused is the endpoint speaking TLS: the
            // scheme is right, the CA or the name is not.
            let refused = |error: std::io::Error| {
                let certificate = error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|inner| matches!(inner, rustls::Error::InvalidCertificate(_)));
                let hint = if certificate {
                    format!(
                        "reading {path} from {}: its certificate is not one --admin-ca trusts \
                         for {}; give the CA that issued it, and --admin-name with the name \
                         it carries",
                        endpoint.url(),
                        name.to_str()
                    )
                } else {
                    reading()
                };
                anyhow::Error::new(error).context(hint)
            };
            tls.write_all(request.as_bytes()).map_err(refused)?;
            tls.read_to_string(&mut response).map_err(refused)?;
        }
    }
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!(
            "{}{path}: not an HTTP response ({})",
            endpoint.url(),
            endpoint.other_scheme()
        );
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{admin}{path}: no status line"))?;
    Ok((status, body.to_owned()))
}

/// Samples by series (name with labels).
fn samples(text: &str) -> BTreeMap<&str, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
        .collect()
}

/// The value of label `name` in a series.
fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

fn ago(seconds: f64) -> String {
    super::span(seconds.max(0.0) as u64)
}

/// Prints the summary; fails when the endpoint cannot be read, is not a
/// gateway's, or the gateway is not ready (after saying why), so that a
/// script can tell.
pub fn run(endpoint: &AdminEndpoint) -> anyhow::Result<()> {
    let admin = endpoint.url();
    let (ready, reasons) = get(endpoint, "/readyz")?;
    let (answered, metrics) = get(endpoint, "/metrics")?;
    let samples = samples(&metrics);
    if answered != 200 || !samples.contains_key("govbridge_uptime_seconds") {
        anyhow::bail!(
            "{admin}/metrics answered {answered} without a gateway's metrics: is this a \
             govbridge admin endpoint (gateway.admin)?"
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    let sum = |prefix: &str, keep: &dyn Fn(&str) -> bool| -> f64 {
        samples
            .iter()
            .filter(|(series, _)| series.starts_with(prefix) && keep(series))
            .map(|(_, value)| value)
            // The sum of nothing is -0.0: printed "-0".
            .fold(0.0, |total, value| total + value)
    };

    if ready == 200 {
        println!("govbridge at {admin}: ready");
    } else {
        println!("govbridge at {admin}: NOT READY");
        for reason in reasons.lines().skip(1) {
            println!("  {}", Escaped(reason));
        }
    }
    let uptime = samples
        .get("govbridge_uptime_seconds")
        .copied()
        .unwrap_or_default();
    println!("  uptime          {}", ago(uptime));
    let calls = sum("govbridge_calls_total{", &|_| true);
    let failed = sum("govbridge_calls_total{", &|series| {
        label(series, "code") != Some("OK")
    });
    let refused = sum("govbridge_refusals_total{", &|_| true);
    println!(
        "  calls           {calls:.0} forwarded ({:.1}/s since start), {:.1}% not OK; {refused:.0} refused by the gateway",
        if uptime > 0.0 { calls / uptime } else { 0.0 },
        if calls > 0.0 {
            100.0 * failed / calls
        } else {
            0.0
        },
    );
    match (
        samples.get("govbridge_exchange_log_records"),
        samples.get("govbridge_exchange_log_writable"),
    ) {
        (Some(records), Some(writable)) => println!(
            "  exchange log    {records:.0} records, {}, {:.0} queued",
            if *writable > 0.0 {
                "writable"
            } else {
                "CANNOT WRITE"
            },
            samples
                .get("govbridge_exchange_log_queue_depth")
                .copied()
                .unwrap_or_default()
        ),
        _ => println!("  exchange log    off"),
    }
    for (series, version) in &samples {
        if series.starts_with("govbridge_global_configuration_version{") {
            let instance = label(series, "config_instance").unwrap_or_default();
            let expiry = format!(
                "govbridge_global_configuration_expiry_timestamp_seconds{{config_instance=\"{instance}\"}}"
            );
            let expires = samples.get(expiry.as_str()).copied().unwrap_or_default();
            let left = expires - now;
            let when = if left <= 0.0 {
                "EXPIRED".to_owned()
            } else {
                format!("expires in {}", ago(left))
            };
            println!(
                "  global configuration: version {version:.0} of {}, {when}",
                Escaped(instance)
            );
        }
    }
    for (series, usable) in &samples {
        if series.starts_with("govbridge_partner_usable{") {
            let partner = Escaped(label(series, "partner").unwrap_or(series));
            if *usable > 0.0 {
                println!("  partner         {partner}: usable");
            } else {
                println!(
                    "  partner         {partner}: REFUSED, every call to or from it \
                     (`govbridge check-config` on this gateway's file says why)"
                );
            }
        }
    }
    for (series, not_after) in &samples {
        if series.starts_with("govbridge_certificate_expiry_timestamp_seconds{") {
            // The metric is whole seconds, exported as a float.
            let days = days_left(*not_after as i64, govbridge::unix_time::now());
            let name = Escaped(label(series, "certificate").unwrap_or(series));
            if days < 0 {
                println!("  certificate     {name}: EXPIRED");
            } else {
                println!("  certificate     {name}: expires in {days} days");
            }
        }
    }
    let last = |result: &str| {
        samples
            .get(format!("govbridge_last_reload_timestamp_seconds{{result=\"{result}\"}}").as_str())
            .map_or_else(|| "never".to_owned(), |at| format!("{} ago", ago(now - at)))
    };
    println!(
        "  last reload     ok {}, failed {}",
        last("ok"),
        last("failed")
    );
    if ready != 200 {
        anyhow::bail!("govbridge at {admin} is not ready");
    }
    Ok(())
}
