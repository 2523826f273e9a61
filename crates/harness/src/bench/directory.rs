//! `govbridge bench directory`: the instance's directory publishing to
//! gateways that poll it, with a large global configuration, under load.
//!
//! ```text
//!   load (open loop) -> govbridge 1 (child) --> echo
//!                       govbridge 2 (child)
//!        both poll the directory (this process, HTTPS) every --interval
//! ```
//!
//! The global configuration is the everything-on gateway's (split with
//! `global::split`) plus generated members and services: --members members
//! in all, of which --services are providers, each publishing a service
//! of its own, described by a generated descriptor set (endpoints that
//! refuse connections: those services are routed, never called). While
//! the load runs, a new version (one member more) is published every two
//! intervals; for each, the time until every gateway runs it (its
//! `govbridge_global_configuration_version`) and each gateway's own measure
//! of applying it (`..._last_apply_seconds`: load, build, swap).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::bench::compare::{Bed, GATEWAY_READY, TargetCheck, free_port};
use crate::bench::load::{self, LoadPlan, Pacing, Scenario, Target};
use crate::bench::process::{ChildProcess, metrics_text, sample};
use crate::bench::report::{self, RunSummary};
use crate::bench::setup::GatewayProfile;
use crate::pki;
use gateway::global::Bundle;
use gateway::note::SigningKey;

/// The instance the bench's gateways belong to.
const INSTANCE: &str = "SN";

/// What `bench directory` measures.
#[derive(Debug, Clone)]
pub struct DirectoryOptions {
    pub dir: Option<PathBuf>,
    pub exe: PathBuf,
    pub members: usize,
    pub services: usize,
    pub gateways: usize,
    pub interval: Duration,
    pub publications: u64,
    pub rate: u64,
    pub connections: usize,
    pub progress: bool,
}

/// Everything `bench directory` measured: what `--json` prints.
#[derive(Debug, Serialize)]
pub struct DirectoryReport {
    pub members: usize,
    pub services: usize,
    pub bundle_bytes: usize,
    pub interval_ms: u128,
    pub publications: Vec<Publication>,
    pub load: RunSummary,
    pub targets: Vec<TargetCheck>,
}

/// One publication, as each gateway took it.
#[derive(Debug, Serialize)]
pub struct Publication {
    pub version: u64,
    pub gateway: String,
    /// From the bundle written to the gateway running it.
    pub reached_ms: f64,
    /// The gateway's own measure: load, build, swap.
    pub apply_ms: f64,
}

/// Where the generated services' descriptor set is, in the publication.
const GENERATED_DESCRIPTOR: &str = "descriptors/generated.binpb";

/// The descriptor set of the generated services: one file, each service
/// with one unary method.
fn generated_descriptor(services: impl Iterator<Item = usize>) -> Vec<u8> {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        MethodDescriptorProto, ServiceDescriptorProto,
    };
    let field = |name: &str, kind: Type| FieldDescriptorProto {
        name: Some(name.to_owned()),
        number: Some(1),
        label: Some(Label::Optional as i32),
        r#type: Some(kind as i32),
        json_name: Some(name.to_owned()),
        ..FieldDescriptorProto::default()
    };
    let message = |name: &str, field: FieldDescriptorProto| DescriptorProto {
        name: Some(name.to_owned()),
        field: vec![field],
        ..DescriptorProto::default()
    };
    let file = FileDescriptorProto {
        name: Some("bench/generated/v1/services.proto".to_owned()),
        package: Some("bench.generated.v1".to_owned()),
        syntax: Some("proto3".to_owned()),
        message_type: vec![
            message("CheckRequest", field("nin", Type::String)),
            message("CheckResponse", field("found", Type::Bool)),
        ],
        service: services
            .map(|index| ServiceDescriptorProto {
                name: Some(format!("Service{index:04}")),
                method: vec![MethodDescriptorProto {
                    name: Some("Check".to_owned()),
                    input_type: Some(".bench.generated.v1.CheckRequest".to_owned()),
                    output_type: Some(".bench.generated.v1.CheckResponse".to_owned()),
                    ..MethodDescriptorProto::default()
                }],
                ..ServiceDescriptorProto::default()
            })
            .collect(),
        ..FileDescriptorProto::default()
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

/// The publication directory's `global.toml` additions: `members`
/// members in all, the last `services` of them providers of a service
/// each.
fn generated(members: usize, services: usize) -> String {
    let mut text = String::from("\n# Generated by `govbridge bench directory`.\n");
    for index in 0..members {
        let provider = index >= members.saturating_sub(services);
        let _ = write!(
            text,
            "\n[members.\"SN/{}/BENCH{index:04}/api\"]\nname = \"Benchmark member {index}\"\n\
             groups = [\"bench-{}\"]\n",
            if provider { "GOV" } else { "COM" },
            index % 16
        );
        if provider {
            // A port nothing listens on: routed, health-checked, never
            // called.
            let _ = write!(
                text,
                "\n[providers.\"SN/GOV/BENCH{index:04}/api\"]\nendpoints = [\"https://127.0.0.1:9\"]\n\
                 \n[services.\"bench.generated.v1.Service{index:04}\"]\n\
                 providers = [\"SN/GOV/BENCH{index:04}/api\"]\n\
                 descriptor = \"{GENERATED_DESCRIPTOR}\"\n"
            );
        }
    }
    text
}

/// Signs version `version` of the publication in `dir` into `bundle`.
fn publish(dir: &Path, version: u64, key: &SigningKey, bundle: &Path) -> anyhow::Result<usize> {
    let built = Bundle::build(dir, INSTANCE, version, Duration::from_secs(24 * 3600), key)?;
    let json = built.to_json();
    pki::write_file(bundle, &json, 0o644)?;
    Ok(json.len())
}

/// Runs the measurement.
pub async fn directory(options: &DirectoryOptions) -> anyhow::Result<DirectoryReport> {
    let bed = Bed::start(
        options.dir.as_deref(),
        options.connections,
        options.exe.clone(),
    )?;
    let dir = bed.dir.dir.clone();
    let echo_tls = bed.dir.echo_tls();
    let bundle = dir.join("bundle.json");
    let server = gateway::global::http::Server::bind(
        "127.0.0.1:0".parse()?,
        &echo_tls.certificate,
        &echo_tls.private_key,
        &bundle,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let url = format!(
        "https://{}{}",
        server.local_addr()?,
        gateway::global::http::BUNDLE_PATH
    );
    tokio::spawn(server.serve());

    let key = SigningKey::generate("SN-directory")?;
    let key_file = dir.join("directory-key.pub");
    pki::write_file(&key_file, format!("{}\n", key.verifier()).as_bytes(), 0o644)?;
    let whole = bed.dir.gateway_config(
        GatewayProfile::EverythingOn,
        bed.echo.address,
        options.connections,
        None,
    )?;
    let interval = format!("{}ms", options.interval.as_millis());
    let settings = gateway::global::split::DirectorySettings {
        url: &url,
        ca: Some(&echo_tls.client_ca.display().to_string()),
        key: &key_file.display().to_string(),
        interval: &interval,
    };
    let split = gateway::global::split::split(&whole, &settings).map_err(anyhow::Error::msg)?;
    let publication = dir.join("publication");
    gateway::global::split::write_publication(&split, &publication).map_err(anyhow::Error::msg)?;
    let global = publication.join(gateway::global::GLOBAL_FILE);
    let mut text = std::fs::read_to_string(&global)?;
    text.push_str(&generated(options.members, options.services));
    std::fs::write(&global, &text)?;
    let first_service = options.members.saturating_sub(options.services);
    pki::write_file(
        &publication.join(GENERATED_DESCRIPTOR),
        &generated_descriptor(first_service..options.members),
        0o644,
    )?;
    let bundle_bytes = publish(&publication, 1, &key, &bundle)?;

    let mut gateways = Vec::new();
    for number in 1..=options.gateways {
        gateways.push(start_gateway(&bed, &split.local, number)?);
    }
    let target = Target {
        name: "gateway-1".to_owned(),
        address: gateways[0].0.address,
        server_name: "localhost".to_owned(),
        pid: Some(gateways[0].0.id()),
    };
    let spacing = options.interval * 2;
    let plan = LoadPlan {
        scenario: Scenario::Unary1k,
        pacing: Pacing::Open { rate: options.rate },
        connections: options.connections,
        warmup: Duration::from_secs(1),
        duration: spacing * u32::try_from(options.publications + 1).unwrap_or(u32::MAX),
    };
    if options.progress {
        eprintln!(
            "{} publications of {} members and {} services, one every {:?}, to {} gateways; {}",
            options.publications,
            options.members,
            options.services,
            spacing,
            options.gateways,
            report::title(&plan)
        );
    }
    let admins: Vec<(String, SocketAddr)> = gateways
        .iter()
        .map(|(_, name, admin)| (name.clone(), *admin))
        .collect();
    let publishing = async {
        // The load's warm-up first, then a publication every `spacing`.
        tokio::time::sleep(plan.warmup + spacing / 2).await;
        let mut publications = Vec::new();
        for version in 2..=options.publications + 1 {
            // Each publication registers one member more, as most do.
            text.push_str(&format!(
                "\n[members.\"SN/COM/JOINED{version:04}/api\"]\nname = \"Joined in publication {version}\"\n"
            ));
            std::fs::write(&global, &text)?;
            publish(&publication, version, &key, &bundle)?;
            let written = Instant::now();
            for (name, admin) in &admins {
                let reached = until_version(*admin, version).await?;
                let metrics = metrics_text(*admin).await?;
                let apply = sample(
                    &metrics,
                    "govbridge_global_configuration_last_apply_seconds",
                );
                publications.push(Publication {
                    version,
                    gateway: name.clone(),
                    reached_ms: reached.duration_since(written).as_secs_f64() * 1e3,
                    apply_ms: apply * 1e3,
                });
            }
            tokio::time::sleep(spacing.saturating_sub(written.elapsed())).await;
        }
        anyhow::Ok(publications)
    };
    let (outcome, publications) =
        tokio::join!(load::run(&target, &bed.members, &plan, false), publishing);
    let load = RunSummary::new(&target, &plan, &outcome?);
    let publications = publications?;
    let targets = checks(options, &publications, &load);
    drop(gateways);
    Ok(DirectoryReport {
        members: options.members,
        services: options.services,
        bundle_bytes,
        interval_ms: options.interval.as_millis(),
        publications,
        load,
        targets,
    })
}

/// Starts gateway `number` with the split gateway file `local`, its own
/// node id, admin endpoint and data directory.
fn start_gateway(
    bed: &Bed,
    local: &str,
    number: usize,
) -> anyhow::Result<(ChildProcess, String, SocketAddr)> {
    let mut table: toml::Table = local.parse().context("the split gateway file")?;
    let name = format!("gateway-{number}");
    let admin = free_port()?;
    if let Some(gateway) = table.get_mut("gateway").and_then(toml::Value::as_table_mut) {
        gateway.insert("node_id".into(), name.clone().into());
        gateway.insert("admin".into(), admin.to_string().into());
    }
    let data = bed.dir.dir.join(format!("data-{name}"));
    let mut log = toml::Table::new();
    log.insert("data_dir".into(), data.display().to_string().into());
    table.insert("exchange_log".into(), log.into());
    let config = bed.dir.dir.join(format!("{name}.toml"));
    pki::write_file(&config, table.to_string().as_bytes(), 0o644)?;
    let mut command = Command::new(bed.exe());
    command
        .args(["serve", "--stop-with-parent", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error");
    let process = ChildProcess::spawn(&name, command, GATEWAY_READY)?;
    Ok((process, name, admin))
}

/// Waits until the gateway at `admin` runs `version`; when it first did.
async fn until_version(admin: SocketAddr, version: u64) -> anyhow::Result<Instant> {
    let series =
        format!("govbridge_global_configuration_version{{config_instance=\"{INSTANCE}\"}}");
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let running = sample(&metrics_text(admin).await?, &series);
        if running >= version as f64 {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "the gateway at {admin} never ran version {version} (it runs {running})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn checks(
    options: &DirectoryOptions,
    publications: &[Publication],
    load: &RunSummary,
) -> Vec<TargetCheck> {
    let max = |value: fn(&Publication) -> f64| publications.iter().map(value).fold(0.0, f64::max);
    let (reached, applied) = (max(|p| p.reached_ms), max(|p| p.apply_ms));
    let bound = (options.interval + Duration::from_secs(1)).as_secs_f64() * 1e3;
    vec![
        TargetCheck {
            name: format!(
                "a publication reaches every polling gateway ({} gateways, interval {:?})",
                options.gateways, options.interval
            ),
            measured: format!("slowest {reached:.0} ms"),
            goal: format!("<= interval + 1 s = {bound:.0} ms"),
            met: Some(reached <= bound),
        },
        TargetCheck {
            name: format!(
                "applying a bundle of {} members and {} services",
                options.members, options.services
            ),
            measured: format!("slowest {applied:.1} ms"),
            goal: "< 100 ms".to_owned(),
            met: Some(applied < 100.0),
        },
        TargetCheck {
            name: format!(
                "calls dropped while publications were applied ({})",
                load.pacing
            ),
            measured: format!("{} of {}", load.errors, load.calls),
            goal: "0".to_owned(),
            met: Some(load.errors == 0),
        },
    ]
}

/// The report as tables.
pub fn render(report: &DirectoryReport) -> String {
    let mut out = format!(
        "global configuration: {} members, {} services, bundle {} KiB, interval {} ms\n\n",
        report.members,
        report.services,
        report.bundle_bytes / 1024,
        report.interval_ms
    );
    out.push_str("version  gateway     reached after  applied in\n");
    for publication in &report.publications {
        let _ = writeln!(
            out,
            "{:<8} {:<11} {:>10.0} ms {:>8.1} ms",
            publication.version, publication.gateway, publication.reached_ms, publication.apply_ms
        );
    }
    out.push('\n');
    out.push_str(&report::table("load while publishing", &[&report.load]));
    out.push('\n');
    out.push_str(&report::verdicts(&report.targets));
    out
}
