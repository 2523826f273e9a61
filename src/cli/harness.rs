//! The commands that run the mock agencies and what is built from them:
//! `agency`, `pki`, `consent`, `bench`, `demo`, `sandbox` and `dev`. Built
//! with the `harness` feature only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;

use govbridge::agencies::Dataset;
use govbridge::agencies::config::AgenciesConfig;
use govbridge::config::Config;
use govbridge::identity::MemberId;
use govbridge::launch::BoundAgency;
use govbridge::pki::{self, CertificateAuthority, LeafRequest};
use govbridge::proxy::signals::termination_signal;

use super::{LogFormat, bench, consent, init_logging, otlp_of, runtime};

#[derive(Debug, Subcommand)]
pub(super) enum HarnessCommand {
    /// Run one mock agency (civil-registry, tax, business-registry,
    /// bank-cbao, bank-ecobank, mygov).
    Agency {
        name: String,
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Development PKI: a CA, certificates and a CRL.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Citizens' consents at the MyGov portal: grant, list and revoke them
    /// through the gateway, as the portal's app (SN/GOV/MYGOV/app).
    Consent(consent::ConsentArgs),
    /// Benchmarks: a load generator, and govbridge side by side with a
    /// direct call and nginx.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Play the story of govbridge step by step against the dev setup run
    /// in this process (a citizen's consent, a bank's calls, a treasury
    /// batch, a revocation, the Data Tracker, a proof), then keep serving.
    Demo {
        /// Where to write the dev PKI, configuration and exchange log
        /// [default: a temporary directory, removed at the end].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Stop after the story instead of serving.
        #[arg(long)]
        once: bool,
        /// Play it through a fleet of this many gateway nodes sharing a
        /// throwaway PostgreSQL cluster (started from the installed server
        /// binaries) in DIR/postgres.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        nodes: u16,
    },
    /// A sandbox for integration tests in any language: the gateway with
    /// the dev policies and every mock agency (faults on), on ports the
    /// system picks, described in a JSON manifest; serves until stopped.
    Sandbox {
        /// Where to write the manifest (gateway address, CA, member
        /// certificates, test data by role); removed on exit.
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// The seed of the synthetic dataset.
        #[arg(long, default_value_t = govbridge::sandbox::DEFAULT_SEED)]
        seed: u64,
        /// Also stop when standard input closes: for a test harness that
        /// starts the sandbox, so that it never outlives the harness.
        #[arg(long)]
        stop_with_parent: bool,
    },
    /// Create a dev PKI and config under DIR if missing, then run every mock
    /// agency and the gateway in one process.
    Dev {
        #[arg(long, value_name = "DIR", default_value = "./dev")]
        dir: PathBuf,
        /// Let calls ask the mock agencies to fail, with the
        /// `govbridge-fault` header (`delay=250ms`, `status=UNAVAILABLE`,
        /// `reset`, `drop`): for trying the gateway's resilience.
        #[arg(long)]
        faults: bool,
        /// Run a fleet of this many gateway nodes on consecutive ports,
        /// sharing a throwaway PostgreSQL cluster in DIR/postgres (needs
        /// PostgreSQL's server binaries: Debian's `postgresql` package).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        nodes: u16,
        /// Run a partner instance (Azerbaijan: its own CA, gateway on
        /// 127.0.0.1:9443, policies, log and agencies, in DIR/az) federated
        /// with this one.
        #[arg(long)]
        federation: bool,
        /// With --federation: Senegal's gateway fetches and keeps
        /// Azerbaijan's receipt of each call forwarded there
        /// (`federation.AZ.receipts`), one more call to Azerbaijan's
        /// gateway each.
        #[arg(long, requires = "federation")]
        receipts: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum PkiCommand {
    /// Create a CA, an empty CRL, and certificates for the gateway, the mock
    /// agencies and the demo members.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace an existing PKI in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Issue a member client certificate: DIR/NAME.pem and DIR/NAME.key.
    Issue {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The member id, e.g. SN/COM/CBAO/kyc.
        #[arg(long)]
        member: String,
        /// File stem of the new certificate and key.
        #[arg(long, value_name = "NAME")]
        out: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
        days: i64,
        /// Replace NAME.pem and NAME.key if they exist.
        #[arg(long)]
        force: bool,
    },
    /// Add a certificate to the CRL (DIR/crl.pem).
    Revoke {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The certificate to revoke (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
}

pub(super) fn run(command: HarnessCommand, log_format: LogFormat) -> anyhow::Result<()> {
    match command {
        HarnessCommand::Demo { dir, once, nodes } => {
            init_logging(log_format, None, "demo")?;
            runtime()?.block_on(govbridge::demo::run(
                dir.as_deref(),
                once,
                usize::from(nodes),
            ))
        }
        HarnessCommand::Sandbox {
            manifest,
            seed,
            stop_with_parent,
        } => {
            init_logging(log_format, None, "sandbox")?;
            runtime()?.block_on(govbridge::sandbox::manifest::run(
                &manifest,
                seed,
                stop_with_parent,
            ))
        }
        HarnessCommand::Dev {
            dir,
            faults,
            nodes,
            federation,
            receipts,
        } => {
            init_logging(log_format, otlp_of(None)?.as_ref(), "dev")?;
            runtime()?.block_on(govbridge::dev::run(
                &dir,
                faults,
                usize::from(nodes),
                federation.then_some(govbridge::dev::Federation {
                    receipts,
                    directory: None,
                }),
            ))
        }
        HarnessCommand::Agency { name, config } => {
            init_logging(log_format, None, "")?;
            run_agency(&name, &config)
        }
        HarnessCommand::Pki { command } => {
            init_logging(log_format, None, "")?;
            run_pki(command)
        }
        HarnessCommand::Consent(args) => {
            init_logging(log_format, None, "")?;
            consent::run(args)
        }
        HarnessCommand::Bench { command } => {
            init_logging(log_format, None, "bench")?;
            bench::run(command)
        }
    }
}

fn run_agency(name: &str, config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let agencies = AgenciesConfig::load(config_path)?;
    let agencies = agencies
        .as_ref()
        .with_context(|| format!("{}: no [agencies] section", config_path.display()))?;
    let agency: govbridge::agencies::Agency = name.parse()?;
    let server = agencies.agencies.get(agency.name()).with_context(|| {
        format!(
            "{}: agencies.servers.{}: missing key",
            config_path.display(),
            agency.name()
        )
    })?;
    let data = Arc::new(Dataset::generate(agencies.seed));
    runtime()?.block_on(async {
        let bound = BoundAgency::bind(
            agency,
            server.listen,
            &agencies.server_tls(server),
            config.gateway.identity.clone(),
            data,
            server.signing_key.as_ref(),
        )
        .await?;
        println!(
            "agency {} listening on https://{}",
            agency.name(),
            bound.local_addr()?
        );
        bound.serve(termination_signal()).await;
        Ok(())
    })
}

fn run_pki(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init { dir, force } => {
            if dir.join(pki::CA_CERT).exists() && !force {
                bail!(
                    "{}: a PKI exists already; pass --force to replace it",
                    dir.join(pki::CA_CERT).display()
                );
            }
            govbridge::dev::init_pki(&dir)?;
            println!("created the dev PKI in {}", dir.display());
        }
        PkiCommand::Issue {
            dir,
            member,
            out,
            days,
            force,
        } => {
            let member = MemberId::parse(&member).with_context(|| format!("--member {member}"))?;
            if out.is_empty() || out.contains('/') || out.starts_with('.') {
                bail!("--out {out}: a file stem, without directories");
            }
            let consent_key = govbridge::dev::CONSENT_KEY.trim_end_matches(".key");
            if ["ca", "crl", "gateway", "gateway-upstream", consent_key].contains(&out.as_str())
                || out.starts_with("agency-")
            {
                bail!("--out {out}: that name belongs to the PKI itself; choose another");
            }
            check_issue_target(&dir, &out, force)?;
            let ca = CertificateAuthority::load(&dir)?;
            let mut request = LeafRequest::member(&member);
            request.not_after = request.not_before + time::Duration::days(days);
            let (certificate, key) = ca.issue(&request)?.write(&dir, &out)?;
            println!(
                "issued {} for {member}\n  certificate {}\n  private key {}",
                out,
                certificate.display(),
                key.display()
            );
        }
        PkiCommand::Revoke { dir, cert } => {
            pki::revoke(&dir, &cert)?;
            println!(
                "revoked {}; the CRL is {}. Reload or restart the gateway to apply it.",
                cert.display(),
                dir.join(pki::CRL).display()
            );
        }
    }
    Ok(())
}

/// Whether `pki issue --out NAME` may write `NAME.pem` and `NAME.key`.
/// A key is replaced only with `--force`, and only when its certificate
/// of the same name is beside it: a pair `pki issue` made. A key alone (the
/// MyGov consent signing key, a key copied in by hand) is never replaced.
fn check_issue_target(dir: &Path, out: &str, force: bool) -> anyhow::Result<()> {
    let certificate = dir.join(format!("{out}.pem"));
    let key = dir.join(format!("{out}.key"));
    // `symlink_metadata`: a dangling link is a file in the way too.
    let exists = |path: &Path| path.symlink_metadata().is_ok();
    if exists(&key) && !exists(&certificate) {
        bail!(
            "{}: a key this command did not create (there is no {}); choose another --out",
            key.display(),
            certificate.display()
        );
    }
    if !force && let Some(existing) = [&certificate, &key].into_iter().find(|path| exists(path)) {
        bail!(
            "{}: exists already; pass --force to replace it",
            existing.display()
        );
    }
    Ok(())
}
