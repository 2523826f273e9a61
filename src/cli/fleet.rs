//! `govbridge fleet status`: the nodes of a fleet, as they registered in
//! its database.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use govbridge::config::Config;
use govbridge::database::Database;
use govbridge::database::nodes::{self, Node, NodeState};

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// List the nodes sharing the configuration's `[store]` database: up,
    /// down (silent for 5 s) or stopped, and those whose configuration or
    /// policies differ from the others'.
    Status {
        /// A node's configuration; only its `[store] url` is used.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: FleetCommand) -> anyhow::Result<()> {
    match command {
        FleetCommand::Status { config, json } => {
            let loaded = Config::load(&config)?;
            let Some(store) = loaded.store else {
                bail!(
                    "{}: no [store] section: this gateway is a single node, not part of a fleet",
                    config.display()
                );
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let nodes = runtime.block_on(async {
                let database = Database::open(&store).await?;
                database.nodes().await
            })?;
            let differing = nodes::differing(&nodes);
            if json {
                println!("{}", to_json(&nodes, &differing)?);
            } else {
                print!("{}", table(&store.redacted(), &nodes, &differing));
            }
            Ok(())
        }
    }
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Up => "up",
        NodeState::Down => "down",
        NodeState::Stopped => "stopped",
    }
}

fn to_json(nodes: &[Node], differing: &[&str]) -> anyhow::Result<String> {
    let nodes: Vec<serde_json::Value> = nodes
        .iter()
        .map(|node| {
            serde_json::json!({
                "id": node.info.id,
                "state": state_name(node.state()),
                "address": node.info.address,
                "version": node.info.version,
                "config_fingerprint": node.info.config_fingerprint,
                "policy_fingerprint": node.info.policy_fingerprint,
                "heartbeat_seconds_ago": node.silent_for,
                "up_seconds": node.up_for,
                "differs": differing.contains(&node.info.id.as_str()),
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "nodes": nodes }))
        .context("cannot write JSON")
}

fn ago(seconds: f64) -> String {
    match seconds.max(0.0) {
        s if s < 60.0 => format!("{s:.1} s"),
        s if s < 3600.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.0} days", s / 86_400.0),
    }
}

fn table(url: &str, nodes: &[Node], differing: &[&str]) -> String {
    use std::fmt::Write as _;
    let up = nodes
        .iter()
        .filter(|node| node.state() == NodeState::Up)
        .count();
    let mut out = format!(
        "{} nodes in {url}: {up} up, {} down, {} stopped\n",
        nodes.len(),
        nodes
            .iter()
            .filter(|node| node.state() == NodeState::Down)
            .count(),
        nodes
            .iter()
            .filter(|node| node.state() == NodeState::Stopped)
            .count(),
    );
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<22} {:<8} {:<9} {:<9} {:>10} {:>9}",
        "node", "state", "address", "version", "config", "policies", "heartbeat", "up for"
    );
    for node in nodes {
        let short = |fingerprint: &str| fingerprint.chars().take(8).collect::<String>();
        let flag = if differing.contains(&node.info.id.as_str()) {
            "  <- differs"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<22} {:<8} {:<9} {:<9} {:>10} {:>9}{flag}",
            node.info.id,
            state_name(node.state()),
            node.info.address,
            node.info.version,
            short(&node.info.config_fingerprint),
            short(&node.info.policy_fingerprint),
            format!("{} ago", ago(node.silent_for)),
            ago(node.up_for),
        );
    }
    if !differing.is_empty() {
        let _ = writeln!(
            out,
            "warning: {} run(s) another configuration or other policies than most nodes up: \
             compare their files, then reload them",
            differing.join(", ")
        );
    }
    out
}
