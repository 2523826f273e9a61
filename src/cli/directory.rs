//! `govbridge directory`: the instance's directory, which publishes the
//! global configuration every gateway runs (see `govbridge::global`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use govbridge::global::{Bundle, diff};
use govbridge::note::{SigningKey, Verifier};

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Move a gateway to a directory: split its file into a publication
    /// directory (global.toml, policies, CAs and CRLs, consent keys) and
    /// a gateway file of its own settings plus `[directory]`. The file
    /// given is left as it is; comments are not carried over.
    Init {
        /// The gateway file to split.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Where the publication directory is written (must not exist).
        #[arg(long, value_name = "DIR")]
        publication: PathBuf,
        /// The gateway file to write (must not exist), beside FILE.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Where the gateway will fetch the bundle: `https://...`, or
        /// `store` (the fleet's `[store]` database).
        #[arg(long)]
        url: String,
        /// The CA the directory's certificate chains to, as the gateway
        /// file will name it (not with `--url store`).
        #[arg(long, value_name = "PEM")]
        ca: Option<String>,
        /// The instance's verifier key, as the gateway file will name it.
        #[arg(long, value_name = "KEY.pub")]
        key: String,
        #[arg(long, default_value = "60s")]
        interval: String,
    },
    /// Make the instance's configuration key: KEY (the private key, mode
    /// 0600) and KEY with `.pub` (the verifier key gateways are given).
    Keygen {
        /// The key's name, in every signature (e.g. `SN-directory`).
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "KEY.pem")]
        out: PathBuf,
    },
    /// Build a bundle from a directory of files (global.toml and what it
    /// names), sign it, and write it atomically to OUT, where `serve`
    /// serves it. Prints what it changes from the bundle OUT held.
    Publish {
        /// The directory operators edit.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The instance's configuration key (its `.pub` beside it). Given
        /// twice, the bundle carries both signatures: while the key is
        /// replaced, gateways that know either take it.
        #[arg(long, value_name = "KEY.pem", required = true)]
        key: Vec<PathBuf>,
        /// The instance, the first part of its members' ids.
        #[arg(long)]
        instance: String,
        #[arg(long, value_name = "BUNDLE")]
        out: PathBuf,
        /// Default: one more than the bundle OUT holds, or 1.
        #[arg(long)]
        version: Option<u64>,
        /// How long gateways may run it without a newer one: `90s`,
        /// `12h`, `7d`.
        #[arg(long, default_value = "7d")]
        valid: String,
        /// Also publish it in a fleet's database (`postgres://...`), where
        /// nodes with `[directory] url = "store"` read it.
        #[arg(long, value_name = "URL")]
        to_store: Option<String>,
        /// The CA certificates the database's certificate chains to (TLS).
        #[arg(long, value_name = "PEM", requires = "to_store")]
        store_ca: Option<PathBuf>,
    },
    /// Serve a bundle over HTTPS at /bundle.json, read again at every
    /// request (so that `publish` to the same file is all it takes).
    Serve {
        #[arg(long, value_name = "BUNDLE")]
        bundle: PathBuf,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8450")]
        listen: SocketAddr,
        #[arg(long, value_name = "PEM")]
        certificate: PathBuf,
        #[arg(long, value_name = "PEM")]
        private_key: PathBuf,
        /// Connections one address (an IPv6 /64) may hold at once; 0: no
        /// cap of its own (behind a proxy or NAT that shows every gateway
        /// from one address).
        #[arg(long, value_name = "N", default_value_t = govbridge::global::http::MAX_CONNECTIONS_PER_ADDRESS)]
        max_connections_per_address: u32,
    },
    /// Learn a partner instance from its own signed global configuration:
    /// check its bundle with its directory's key (obtained out of band),
    /// then write what this instance needs to reach and trust it (its CA
    /// and CRLs, its gateways' id and endpoints, its federation key, its
    /// log key) under `federation/INSTANCE/` beside CONFIG, and its
    /// `[federation."INSTANCE"]` section into CONFIG, between markers a
    /// later `learn` replaces. CONFIG is a publication's global.toml (then
    /// `publish`), or a gateway file without [directory]; it is checked
    /// as such afterwards, and left as it was if the check fails.
    Learn {
        /// The partner instance (`AZ`).
        #[arg(long)]
        partner: String,
        /// Its bundle: a file, or `https://...` (with --ca).
        #[arg(long, value_name = "FILE|URL")]
        from: String,
        /// The CA the partner's directory's certificate chains to.
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
        /// The partner's directory's verifier key.
        #[arg(long, value_name = "KEY.pub")]
        key: PathBuf,
        /// The file the section goes into.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The partner witnesses this instance's log (`witness = true`).
        #[arg(long)]
        witnessed: bool,
        /// This instance witnesses the partner's log (`log_key`, from its
        /// configuration).
        #[arg(long)]
        witness: bool,
    },
    /// What NEW changes from OLD: members, services, purposes, policies,
    /// files. Each is a bundle, or a directory not yet published.
    Diff {
        #[arg(value_name = "OLD")]
        old: PathBuf,
        #[arg(value_name = "NEW")]
        new: PathBuf,
        /// Check bundles against this verifier key.
        #[arg(long, value_name = "KEY.pub")]
        key: Option<PathBuf>,
    },
}

pub fn run(command: DirectoryCommand) -> anyhow::Result<()> {
    match command {
        DirectoryCommand::Init {
            config,
            publication,
            out,
            url,
            ca,
            key,
            interval,
        } => {
            for path in [&publication, &out] {
                if path.exists() {
                    bail!("{}: exists; init writes new files only", path.display());
                }
            }
            beside(&out, &config)?;
            let settings = govbridge::global::split::DirectorySettings {
                url: &url,
                ca: ca.as_deref(),
                key: &key,
                interval: &interval,
            };
            let split =
                govbridge::global::split::split(&config, &settings).map_err(anyhow::Error::msg)?;
            let written = (|| {
                govbridge::global::split::write_publication(&split, &publication)
                    .map_err(anyhow::Error::msg)?;
                // As private as the file it was split from.
                govbridge::keys::write_file(&out, split.local.as_bytes(), file_mode(&config)?)
                    .with_context(|| format!("writing {}", out.display()))?;
                check_split(&publication, &out, &split.local)
            })();
            if let Err(error) = written {
                // Both were new: nothing an operator had is lost.
                let _ = std::fs::remove_dir_all(&publication);
                let _ = std::fs::remove_file(&out);
                return Err(error.context(format!(
                    "{} split into files a gateway cannot load, so none were kept",
                    config.display()
                )));
            }
            println!(
                "{}: the instance's global configuration ({} files): publish it with \
                 `govbridge directory publish --from {}`",
                publication.display(),
                split.files.len(),
                publication.display()
            );
            println!(
                "{}: the gateway's own file, with [directory]",
                out.display()
            );
            Ok(())
        }
        DirectoryCommand::Keygen { name, out } => keygen(&name, &out),
        DirectoryCommand::Publish {
            from,
            key,
            instance,
            out,
            version,
            valid,
            to_store,
            store_ca,
        } => {
            let valid = govbridge::config::parse_retention(&valid)
                .map_err(|error| anyhow::anyhow!("--valid {valid}: {error}"))
                .and_then(|duration| {
                    if duration.as_secs() == 0 {
                        bail!("--valid {valid}: under a second, the bundle would be expired when published");
                    }
                    Ok(duration)
                })?;
            let store = to_store
                .map(|url| {
                    let store = govbridge::config::StoreConfig::parse(&url)
                        .map_err(|error| anyhow::anyhow!("--to-store: {error}"))?;
                    anyhow::Ok(match store_ca {
                        Some(ca) => store.with_ca(ca),
                        None => store,
                    })
                })
                .transpose()?;
            let publication = Publication {
                from: &from,
                instance: &instance,
                out: &out,
                store: store.as_ref(),
            };
            publish(&publication, &key, version, valid)
        }
        DirectoryCommand::Serve {
            bundle,
            listen,
            certificate,
            private_key,
            max_connections_per_address,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let server = govbridge::global::http::Server::bind(
                    listen,
                    &certificate,
                    &private_key,
                    &bundle,
                )
                .await
                .map_err(anyhow::Error::msg)?
                .with_max_connections_per_address(max_connections_per_address);
                println!(
                    "directory serving {} at https://{}{}",
                    bundle.display(),
                    server.local_addr()?,
                    govbridge::global::http::BUNDLE_PATH
                );
                tokio::select! {
                    () = server.serve() => {}
                    () = govbridge::proxy::signals::termination_signal() => {}
                }
                anyhow::Ok(())
            })
        }
        DirectoryCommand::Learn {
            partner,
            from,
            ca,
            key,
            config,
            witnessed,
            witness,
        } => learn(&Learning {
            partner: &partner,
            from: &from,
            ca: ca.as_deref(),
            key: &key,
            config: &config,
            witnessed,
            witness,
        }),
        DirectoryCommand::Diff { old, new, key } => {
            let verifier = key
                .map(|key| Verifier::read(&key).map_err(anyhow::Error::msg))
                .transpose()?;
            let (old, new) = (
                read(&old, verifier.as_ref())?,
                read(&new, verifier.as_ref())?,
            );
            println!(
                "version {} -> {}",
                old.manifest.version, new.manifest.version
            );
            let changes = diff::diff(&old, &new);
            if changes.is_empty() {
                println!("no change");
            }
            for change in changes {
                println!("{change}");
            }
            Ok(())
        }
    }
}

fn keygen(name: &str, out: &Path) -> anyhow::Result<()> {
    let public = out.with_extension("pub");
    if public == out {
        bail!(
            "{}: the key's public half is written beside it as KEY.pub: name the key otherwise \
             (directory.key)",
            out.display()
        );
    }
    for path in [out, &public] {
        if path.exists() {
            bail!(
                "{}: exists; a configuration key is never overwritten",
                path.display()
            );
        }
    }
    let key = SigningKey::generate(name)?;
    govbridge::keys::write_file(out, key.to_pem().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", out.display()))?;
    govbridge::keys::write_file(&public, format!("{}\n", key.verifier()).as_bytes(), 0o644)
        .with_context(|| format!("writing {}", public.display()))?;
    println!("{}: the configuration key; keep it offline", out.display());
    println!(
        "{}: give it to every gateway (directory.key)",
        public.display()
    );
    Ok(())
}

/// The version of a partner's configuration learned into `dir` before
/// (its `v<N>` directory), if any.
fn learned_version(dir: &Path) -> anyhow::Result<Option<u64>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
    };
    Ok(entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            name.to_str()?.strip_prefix('v')?.parse::<u64>().ok()
        })
        .max())
}

/// Refuses a gateway file `out` written elsewhere than `config`, the file
/// it is split from: the relative paths it keeps (`data_dir`, certificates,
/// keys) are read from its own directory, and elsewhere they would name
/// other files: a gateway starting a new exchange log, under a new key.
fn beside(out: &Path, config: &Path) -> anyhow::Result<()> {
    let dir_of = |file: &Path| {
        let dir = file
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::canonicalize(dir).with_context(|| format!("{}: cannot be read", dir.display()))
    };
    let (from, to) = (dir_of(config)?, dir_of(out)?);
    if from != to {
        bail!(
            "--out {}: write it beside {} (in {}): the paths it keeps from that file \
             (exchange_log.data_dir, certificates, keys) are read from its own directory, and in \
             {} they would name other files (a new exchange log, under a new key)",
            out.display(),
            config.display(),
            from.display(),
            to.display()
        );
    }
    Ok(())
}

/// What `learn` learns, from where, and into which file.
struct Learning<'a> {
    partner: &'a str,
    from: &'a str,
    ca: Option<&'a Path>,
    key: &'a Path,
    config: &'a Path,
    witnessed: bool,
    witness: bool,
}

fn learn(learning: &Learning<'_>) -> anyhow::Result<()> {
    let partner = learning.partner;
    if !govbridge::global::is_instance(partner) {
        bail!("`{partner}` is not an instance name: 1 to 16 of A-Z, 0-9 and '-'");
    }
    let bytes = if learning.from.starts_with("https://") {
        let url: http::Uri = learning
            .from
            .parse()
            .with_context(|| format!("{}: not a URL", learning.from))?;
        let ca = learning
            .ca
            .context("an https:// bundle needs --ca, its directory's CA")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime
            .block_on(govbridge::global::http::fetch(
                &url,
                ca,
                Duration::from_secs(30),
            ))
            .map_err(anyhow::Error::msg)?
    } else {
        std::fs::read(learning.from).with_context(|| format!("reading {}", learning.from))?
    };
    let verifier = Verifier::read(learning.key).map_err(anyhow::Error::msg)?;
    let bundle = Bundle::open(&bytes, &verifier)
        .with_context(|| format!("{}: {partner}'s global configuration", learning.from))?;
    bundle
        .accept(partner, None, govbridge::unix_time::now())
        .with_context(|| format!("{}: {partner}'s global configuration", learning.from))?;
    let dir = learning.config.parent().unwrap_or(Path::new("."));
    let learned_dir = dir.join("federation").join(partner);
    // Never back: an older version would trust again what the partner
    // revoked since (its CRLs, its keys).
    if let Some(before) = learned_version(&learned_dir)?
        && bundle.manifest.version < before
    {
        bail!(
            "{}: version {} of {partner}'s global configuration is older than version {before}, \
             learned before ({}): learning it would undo what {partner} changed since, revoked \
             certificates included; nothing was written (remove {} to learn it anyway)",
            learning.from,
            bundle.manifest.version,
            learned_dir.join(format!("v{before}")).display(),
            learned_dir.display()
        );
    }
    let learned = govbridge::global::partner::Published::of(
        partner,
        bundle.manifest.version,
        std::str::from_utf8(
            bundle
                .files
                .get(govbridge::global::GLOBAL_FILE)
                .map_or(&[][..], Vec::as_slice),
        )
        .unwrap_or_default(),
        |path| bundle.files.get(path).cloned(),
    )
    .map_err(anyhow::Error::msg)?;
    let bytes_of = |path: &str| bundle.files.get(path).map_or(&[][..], Vec::as_slice);

    if learning.witness && learned.log_key.is_none() {
        bail!("--witness: {partner}'s configuration publishes no log key ([instance] log_key)");
    }

    // Its files, then its section. Each version's files in a directory of
    // their own: the section in place keeps naming whole, unchanged files
    // until the new one replaces it.
    let version_dir = format!("v{}", bundle.manifest.version);
    let files = Path::new("federation").join(partner).join(&version_dir);
    let fresh = !dir.join(&files).exists();
    // A version directory this run made goes with it whatever fails:
    // left, it would count as learned (`learned_version`), a floor no
    // configuration names.
    let unwritten = |error: anyhow::Error| {
        if fresh {
            let _ = std::fs::remove_dir_all(dir.join(&files));
        }
        error
    };
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(&files).join(name);
        govbridge::keys::write_file(&path, bytes, 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
        anyhow::Ok(files.join(name).display().to_string())
    };
    let written = (|| {
        let ca = write("ca.pem", bytes_of(&learned.ca))?;
        let crls = learned
            .crls
            .iter()
            .enumerate()
            .map(|(index, crl)| write(&format!("crl-{index}.pem"), bytes_of(crl)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let key = write("federation.pub", bytes_of(&learned.federation_key))?;
        let log_key = match &learned.log_key {
            Some(log_key) if learning.witness => Some(write("log-key.pub", bytes_of(log_key))?),
            _ => None,
        };
        anyhow::Ok((ca, crls, key, log_key))
    })();
    let (ca, crls, key, log_key) = written.map_err(unwritten)?;
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|item| quote(item)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let (begin, end) = markers(partner);
    let manifest = &bundle.manifest;
    let mut block = format!(
        "{begin}\n# version {} of {partner}'s global configuration, issued {}, expires {}, \
         signed by {}\n[federation.{}]\nca = {}\ncrls = {}\ngateway = {}\nendpoints = {}\n",
        manifest.version,
        govbridge::unix_time::rfc3339(manifest.issued),
        govbridge::unix_time::rfc3339(manifest.expires),
        verifier.name(),
        quote(partner),
        quote(&ca),
        list(&crls),
        quote(learned.gateway.as_str()),
        list(&learned.endpoints),
    );
    if let Some(tls_name) = &learned.tls_name {
        block.push_str(&format!("tls_name = {}\n", quote(tls_name)));
    }
    block.push_str(&format!("key = {}\n", quote(&key)));
    if let Some(log_key) = &log_key {
        block.push_str(&format!("log_key = {}\n", quote(log_key)));
    }
    if learning.witnessed {
        block.push_str("witness = true\n");
    }
    block.push_str(&end);
    block.push('\n');

    let config = learning.config;
    let after = std::fs::read_to_string(config)
        .with_context(|| format!("reading {}", config.display()))
        .and_then(|before| {
            with_block(&before, partner, &block).with_context(|| format!("{}", config.display()))
        })
        .map_err(unwritten)?;
    // Checked beside the file (its relative paths resolve the same), as
    // the gateway will load it, the partner's CA read (not only named),
    // then renamed over it: a gateway watching the file never sees a
    // version that would not run, and the versions it runs from stay.
    let name = config
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trial = config.with_file_name(format!(".{name}.learning-{}", std::process::id()));
    // The file keeps its mode: a gateway's may hold the fleet database's
    // password (`[store] url`), readable by its owner only.
    let mode = file_mode(config).map_err(unwritten)?;
    let checked: anyhow::Result<()> = govbridge::keys::write_file(&trial, after.as_bytes(), mode)
        .with_context(|| format!("writing {}", trial.display()))
        .and_then(|()| {
            let loaded: anyhow::Result<()> = if name == govbridge::global::GLOBAL_FILE {
                govbridge::config::Config::load_publication(&trial)
                    .map_err(anyhow::Error::new)
                    .and_then(|loaded| Ok(loaded.gateway.tls.check_trust()?))
            } else {
                govbridge::config::Config::load(&trial)
                    .map_err(anyhow::Error::new)
                    .and_then(|loaded| Ok(govbridge::proxy::Gateway::check(&loaded).map(drop)?))
            };
            // What went wrong, said of the file the operator named.
            loaded.map_err(|error| {
                anyhow::anyhow!(
                    "{}",
                    format!("{error:#}")
                        .replace(&trial.display().to_string(), &config.display().to_string())
                )
                .context(format!(
                    "{} would not load with what {partner} publishes (checked as check-config \
                     does)",
                    config.display()
                ))
            })
        })
        .and_then(|()| {
            std::fs::rename(&trial, config)
                .with_context(|| format!("renaming {} to {}", trial.display(), config.display()))
        });
    if let Err(error) = checked {
        let _ = std::fs::remove_file(&trial);
        return Err(unwritten(error).context(format!("{}: left as it was", config.display())));
    }
    // The versions learned before are no longer named. Only those: an
    // operator may keep what else there (the partner's key, notes), and a
    // link is never followed.
    for entry in std::fs::read_dir(&learned_dir)
        .with_context(|| format!("reading {}", learned_dir.display()))?
        .flatten()
    {
        let name = entry.file_name();
        let earlier = name.to_str().is_some_and(|name| {
            name != version_dir
                && name
                    .strip_prefix('v')
                    .is_some_and(|n| n.parse::<u64>().is_ok())
        });
        let directory = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if earlier && directory {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    println!(
        "learned {partner} from version {} of its global configuration (signed by {}): gateway \
         {}, {} endpoint(s), {} CRL(s){}",
        manifest.version,
        verifier.name(),
        learned.gateway,
        learned.endpoints.len(),
        crls.len(),
        if log_key.is_some() {
            ", its log witnessed here"
        } else {
            ""
        }
    );
    println!(
        "{}: [federation.{partner}] written; its files in {}",
        config.display(),
        dir.join(&files).display()
    );
    Ok(())
}

/// The lines around what `learn` writes of `partner`.
fn markers(partner: &str) -> (String, String) {
    (
        format!(
            "# >>> learned from {partner}'s global configuration by `govbridge directory learn`: \
             edits between these lines are replaced"
        ),
        format!("# <<< end of what was learned from {partner}'s global configuration"),
    )
}

/// `text` with `block` in place of what `learn` wrote of `partner` before,
/// or added at its end; refused if `text` has a `[federation]` section of
/// `partner` written by hand.
fn with_block(text: &str, partner: &str, block: &str) -> anyhow::Result<String> {
    let (begin, end) = markers(partner);
    if let Some(start) = text.find(&begin) {
        let stop = text[start..]
            .find(&end)
            .map(|offset| start + offset + end.len())
            .context("the lines `learn` wrote before are cut: their end marker is gone")?;
        let rest = text[stop..].strip_prefix('\n').unwrap_or(&text[stop..]);
        return Ok(format!("{}{block}{rest}", &text[..start]));
    }
    let table: toml::Table = text.parse().context("not TOML")?;
    if table
        .get("federation")
        .and_then(toml::Value::as_table)
        .is_some_and(|federation| federation.contains_key(partner))
    {
        bail!(
            "it already has a [federation.{partner}] section written by hand: remove it, and \
             learn writes one"
        );
    }
    let separator = if text.is_empty() || text.ends_with("\n\n") {
        ""
    } else if text.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    Ok(format!("{text}{separator}{block}"))
}

/// `path` made absolute, its links resolved as far as it exists: where a
/// file not written yet will be.
fn resolved(path: &Path) -> Option<PathBuf> {
    let mut absolute = PathBuf::new();
    for part in std::path::absolute(path).ok()?.components() {
        match part {
            std::path::Component::ParentDir => {
                absolute.pop();
            }
            std::path::Component::CurDir => {}
            part => absolute.push(part),
        }
    }
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        rest.push(existing.file_name()?.to_owned());
        existing = existing.parent()?;
    }
    let mut resolved = existing.canonicalize().ok()?;
    resolved.extend(rest.iter().rev());
    Some(resolved)
}

/// What to publish, and where.
struct Publication<'a> {
    /// The directory operators edit.
    from: &'a Path,
    instance: &'a str,
    /// The bundle file (what `serve` serves).
    out: &'a Path,
    /// A fleet's database, too.
    store: Option<&'a govbridge::config::StoreConfig>,
}

fn publish(
    publication: &Publication<'_>,
    keys: &[PathBuf],
    version: Option<u64>,
    valid: Duration,
) -> anyhow::Result<()> {
    let Publication {
        from,
        instance,
        out,
        store,
    } = *publication;
    let keys = keys
        .iter()
        .map(|key| SigningKey::read(key).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let signers: Vec<&SigningKey> = keys.iter().collect();
    // Within what it bundles, each publication would carry the one before
    // (and grow by a third each time, until gateways refuse it).
    let Some(out_at) = resolved(out) else {
        bail!("--out {}: cannot tell where it is", out.display());
    };
    if let Ok(from) = from.canonicalize()
        && out_at.starts_with(&from)
    {
        bail!(
            "--out {} is inside --from {}: each publication would carry the one before; write \
             the bundle elsewhere",
            out.display(),
            from.display()
        );
    }
    let previous = match std::fs::read(out) {
        // Signed by one of the keys (the one being replaced, say).
        Ok(bytes) => {
            let opened = keys
                .iter()
                .find_map(|key| Bundle::open(&bytes, &key.verifier()).ok());
            Some(match (opened, keys.first()) {
                (Some(bundle), _) => bundle,
                // Signed by none: the first key's refusal says why.
                (None, Some(key)) => Bundle::open(&bytes, &key.verifier())
                    .with_context(|| format!("{}: the bundle published before", out.display()))?,
                (None, None) => bail!("no --key to sign with"),
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error).with_context(|| format!("reading {}", out.display())),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let database = store
        .map(|store| runtime.block_on(govbridge::database::Database::connect(store)))
        .transpose()?;
    let stored = database
        .as_ref()
        .map(|database| runtime.block_on(database.latest_bundle_version(instance)))
        .transpose()?
        .flatten();
    if let Some(previous) = previous
        .as_ref()
        .filter(|previous| previous.manifest.instance != instance)
    {
        bail!(
            "{} holds instance `{}`'s configuration, not `{instance}`'s: gateways following it \
             would refuse this one (wrong-instance); check --instance, or publish to another \
             --out",
            out.display(),
            previous.manifest.instance
        );
    }
    let last = previous
        .as_ref()
        .map(|bundle| bundle.manifest.version)
        .max(stored);
    let version = version.unwrap_or(last.map_or(1, |last| last + 1));
    if let Some(last) = last.filter(|last| version <= *last) {
        bail!(
            "version {version} is not newer than {last}, published before (in {}{}): gateways \
             would refuse it",
            out.display(),
            if stored.is_some() {
                " or the database"
            } else {
                ""
            }
        );
    }
    check_publication(from)?;
    let bundle = Bundle::build_signed_by(from, instance, version, valid, &signers)?;
    check_bundled(from, &bundle)?;
    let json = bundle.to_json();
    if json.len() > govbridge::global::MAX_BUNDLE_BYTES {
        bail!(
            "the bundle is {} bytes, more than the {} gateways take: every gateway would refuse \
             it (malformed)",
            json.len(),
            govbridge::global::MAX_BUNDLE_BYTES
        );
    }
    if let Some(database) = &database
        && !runtime.block_on(database.publish_bundle(instance, version, &json))?
    {
        bail!("version {version} or a newer one was published in the database meanwhile");
    }
    govbridge::keys::write_file(out, &json, 0o644)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "published version {version} of {instance}'s global configuration ({} files), valid until {}{}",
        bundle.files.len(),
        govbridge::unix_time::rfc3339(bundle.manifest.expires),
        if database.is_some() {
            ", in the file and the database"
        } else {
            ""
        }
    );
    if let Some(previous) = previous {
        for change in diff::diff(&previous, &bundle) {
            println!("{change}");
        }
    }
    Ok(())
}

/// What `directory init` wrote loads as it will be run: the publication
/// as `publish` checks it, and the gateway file with that publication as
/// its global configuration (signed by a throwaway key for the gateway's
/// instance, staged in a scratch cache).
fn check_split(publication: &Path, gateway: &Path, local: &str) -> anyhow::Result<()> {
    check_publication(publication)?;
    let instance = local
        .parse::<toml::Table>()
        .ok()
        .and_then(|table| {
            let identity = table.get("gateway")?.get("identity")?.as_str()?;
            Some(
                govbridge::identity::MemberId::parse(identity)
                    .ok()?
                    .instance()
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| "PREVIEW".to_owned());
    let key = SigningKey::generate("preview")?;
    let bundle = Bundle::build(publication, &instance, 1, Duration::from_secs(3600), &key)?;
    let scratch = tempfile::tempdir().context("a scratch directory")?;
    let staged = govbridge::global::cache::Cache::new(scratch.path()).stage(&bundle)?;
    govbridge::config::Config::load_staged(gateway, &staged)?;
    Ok(())
}

/// Checks the publication in `dir` as a gateway will load it (members,
/// providers, services and their descriptors, purposes, consent, limits,
/// and the policies against the schema and the methods the descriptors
/// declare) before anything is signed; an error names the file and line.
/// What needs a gateway's own files (its certificates) is each gateway's
/// to check.
fn check_publication(dir: &Path) -> anyhow::Result<()> {
    let config =
        govbridge::config::Config::load_publication(&dir.join(govbridge::global::GLOBAL_FILE))?;
    govbridge::policy::PolicyEngine::load(&config)?;
    Ok(())
}

/// Checks `bundle`, built from `from`, as gateways will have it: what was
/// checked in `from` is what they get. A policy file the bundle leaves
/// out (hidden, `.deny.cedar`: the check read it) is refused, and the
/// bundle's own files, staged as a gateway stages them, are checked again
/// (a file edited between the check and the build).
fn check_bundled(from: &Path, bundle: &Bundle) -> anyhow::Result<()> {
    let config =
        govbridge::config::Config::load_publication(&from.join(govbridge::global::GLOBAL_FILE))?;
    let policies = &config.policy.policies;
    let entries =
        std::fs::read_dir(policies).with_context(|| format!("reading {}", policies.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".cedar") {
            bail!(
                "{}: a hidden policy file is read by the policies' check but not published: \
                 rename it, or remove it",
                entry.path().display()
            );
        }
    }
    let scratch = tempfile::tempdir().context("a scratch directory")?;
    let staged = govbridge::global::cache::Cache::new(scratch.path()).stage(bundle)?;
    check_publication(&staged.dir).map_err(|error| {
        let said = format!("{error:#}").replace(
            &staged.dir.display().to_string(),
            &from.display().to_string(),
        );
        anyhow::anyhow!("the bundle as built, not as checked (a file changed meanwhile?): {said}")
    })
}

/// A bundle file, checked against `verifier` if given, or a directory
/// read as the bundle it would publish.
fn read(path: &Path, verifier: Option<&Verifier>) -> anyhow::Result<Bundle> {
    if path.is_dir() {
        let key = SigningKey::generate("preview")?;
        return Ok(Bundle::build(path, "PREVIEW", 0, Duration::ZERO, &key)?);
    }
    let Some(verifier) = verifier else {
        bail!(
            "{}: a bundle is checked before it is compared: give --key (the instance's \
             verifier key)",
            path.display()
        );
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Bundle::open(&bytes, verifier).with_context(|| format!("{}", path.display()))
}

/// The permission bits of `path`, for a file written in its place or from
/// it.
fn file_mode(path: &std::path::Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode()
        & 0o777)
}
