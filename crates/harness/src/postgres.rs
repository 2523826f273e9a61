//! A throwaway PostgreSQL cluster, from the server binaries installed on
//! the machine: what `govbridge dev --nodes` and the fleet's tests run
//! their nodes against.
//!
//! `initdb` creates the cluster in a directory of its own (trust
//! authentication for its one role, `govbridge`, on loopback only, no Unix
//! socket), `pg_ctl start -w` returns once the server accepts connections
//! on a free port, and dropping the [`Cluster`] stops it and removes the
//! directory if it was temporary. PostgreSQL refuses to run as root: run as
//! root, the cluster belongs to and runs as `postgres` (Debian's package
//! creates that user) or else `nobody`.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, bail};

/// The role and database the gateway uses.
pub const ROLE: &str = "govbridge";

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    /// The cluster's data directory.
    data: PathBuf,
    port: u16,
    /// Who runs the server, when not the current user.
    user: Option<User>,
    /// The server's certificate and key files, when it speaks TLS.
    tls: Option<(PathBuf, PathBuf)>,
    running: bool,
    /// A lock on `dir/cluster.lock` while this run uses the cluster: the
    /// kernel lets it go when the process ends, however it ends.
    _lock: Option<std::fs::File>,
    _temporary: Option<tempfile::TempDir>,
}

/// An unprivileged user to run the server as.
#[derive(Debug, Clone)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl Cluster {
    /// Creates and starts a cluster in a new temporary directory.
    pub fn start_temporary() -> anyhow::Result<Self> {
        Self::temporary(None)
    }

    /// [`Self::start_temporary`], the server speaking TLS (as well as
    /// plain text) with this certificate and key (PEM).
    pub fn start_temporary_with_tls(certificate: &str, key: &str) -> anyhow::Result<Self> {
        Self::temporary(Some((certificate, key)))
    }

    fn temporary(tls: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let temporary = tempfile::Builder::new()
            .prefix("govbridge-pg-")
            .tempdir_in(std::env::temp_dir())
            .context("cannot create a directory for PostgreSQL")?;
        let mut cluster = Self::start_with(temporary.path(), tls)?;
        cluster._temporary = Some(temporary);
        Ok(cluster)
    }

    /// Creates a cluster in `dir/pgdata` (unless one is there already) and
    /// starts it on a free port of 127.0.0.1.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, None)
    }

    fn start_with(dir: &Path, tls: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let bin = server_binaries()?;
        let user = unprivileged_user()?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if let Some(user) = &user {
            std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
                .with_context(|| format!("cannot give {} to {}", dir.display(), user.name))?;
            reachable_by(dir, user)?;
        }
        let data = dir.join("pgdata");
        let tls = match tls {
            Some((certificate, key)) => {
                let files = (dir.join("server.crt"), dir.join("server.key"));
                crate::pki::write_file(&files.0, certificate.as_bytes(), 0o644)?;
                crate::pki::write_file(&files.1, key.as_bytes(), 0o600)?;
                if let Some(user) = &user {
                    for file in [&files.0, &files.1] {
                        std::os::unix::fs::chown(file, Some(user.uid), Some(user.gid))
                            .with_context(|| {
                                format!("cannot give {} to {}", file.display(), user.name)
                            })?;
                    }
                }
                Some(files)
            }
            None => None,
        };
        let mut cluster = Self {
            bin,
            data,
            port: 0,
            user,
            tls,
            running: false,
            _lock: Some(lock_cluster(dir)?),
            _temporary: None,
        };
        if !cluster.data.join("PG_VERSION").exists() {
            cluster.initdb()?;
        } else if cluster.data.join("postmaster.pid").exists() && cluster.stop_left_over() {
            // A run killed before it could stop its server (SIGKILL, or
            // Ctrl-C while starting: the server is in a session of its own).
            eprintln!(
                "stopped the PostgreSQL server an earlier run left in {}",
                cluster.data.display()
            );
        }
        // A free port can be taken between looking and binding: try again.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = crate::bench::compare::free_port()?.port();
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.running = true;
                    cluster.create_database()?;
                    return Ok(cluster);
                }
                Err(error) => {
                    // One still starting when `pg_ctl -w` gave up must not
                    // outlive this.
                    cluster.stop_left_over();
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    /// Stops a server running on this data directory that this value did
    /// not start; whether there was one.
    fn stop_left_over(&self) -> bool {
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["stop", "-D", &data, "-m", "fast", "-w"])
            .is_ok()
    }

    /// The URL the gateway's `[store] url` takes.
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{ROLE}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (`immediate`: like a crash, recovered at
    /// the next start).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.running {
            self.running = false;
            let data = self.data.display().to_string();
            self.run("pg_ctl", &["stop", "-D", &data, "-m", "immediate", "-w"])?;
        }
        Ok(())
    }

    /// Starts it again after [`Self::stop`], on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if !self.running {
            self.pg_ctl_start()?;
            self.running = true;
        }
        Ok(())
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let data = self.data.display().to_string();
        self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                ROLE,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )
        .map(drop)
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let data = self.data.display().to_string();
        let log = self.data.join("server.log").display().to_string();
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='' \
             -c max_connections=200",
            self.port
        );
        if let Some((certificate, key)) = &self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                certificate.display(),
                key.display()
            ));
        }
        // -w: returns once the server accepts connections, or fails.
        self.run(
            "pg_ctl",
            &[
                "start", "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options,
            ],
        )
        .with_context(|| format!("PostgreSQL did not start; its log: {log}"))
        .map(drop)
    }

    fn create_database(&self) -> anyhow::Result<()> {
        let query = format!("SELECT 1 FROM pg_database WHERE datname = '{ROLE}'");
        if self.psql("postgres", &query)? != "1" {
            let port = self.port.to_string();
            self.run(
                "createdb",
                &["-h", "127.0.0.1", "-p", &port, "-U", ROLE, ROLE],
            )?;
        }
        Ok(())
    }

    /// Runs `sql` in `database` with `psql`; its output, unaligned. The
    /// statements go in on standard input, so they may be of any length.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let port = self.port.to_string();
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            ROLE,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-tA",
        ];
        let output = self.run_with_input("psql", &args, Some(sql))?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Runs one of the server binaries, as the cluster's user.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.run_with_input(program, args, None)
    }

    /// Runs one of the server binaries, as the cluster's user, with `input`
    /// on its standard input.
    fn run_with_input(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> anyhow::Result<Output> {
        use std::io::Write as _;
        let path = self.bin.join(program);
        let mut command = match &self.user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", &user.name, "--"]).arg(&path);
                command
            }
            None => Command::new(&path),
        };
        let cannot_run = || format!("cannot run {}", path.display());
        let mut child = command
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(cannot_run)?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // Written whole before reading: psql reads all of its input
            // before its (short) output can fill a pipe.
            stdin.write_all(input.as_bytes()).with_context(cannot_run)?;
        }
        let output = child.wait_with_output().with_context(cannot_run)?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("cannot stop PostgreSQL: {error:#}");
        }
    }
}

/// Takes the lock of the cluster in `dir` for this run, or says which
/// directory another run (alive: the kernel drops a dead one's lock) uses.
/// Without it, the start would stop that run's server as one left over.
fn lock_cluster(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("cluster.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{}: another run uses the PostgreSQL cluster there (it holds {}): stop it first",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Where `initdb`, `pg_ctl` and `postgres` are: `GOVBRIDGE_PG_BIN`, else
/// the newest `/usr/lib/postgresql/N/bin` (Debian), else the `PATH`.
fn server_binaries() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("GOVBRIDGE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = debian {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists());
    on_path.context(
        "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: install Debian's \
         `postgresql` package, or set GOVBRIDGE_PG_BIN to their directory",
    )
}

/// The user to run the server as when this process is root.
fn unprivileged_user() -> anyhow::Result<Option<User>> {
    let root = std::fs::metadata("/proc/self").is_ok_and(|proc| proc.uid() == 0);
    if !root {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    let find = |wanted: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == wanted).then(|| User {
                name: wanted.to_owned(),
                uid: fields[2].parse().unwrap_or(u32::MAX),
                gid: fields[3].parse().unwrap_or(u32::MAX),
            })
        })
    };
    find("postgres")
        .or_else(|| find("nobody"))
        .map(Some)
        .context("running as root, and neither `postgres` nor `nobody` exists to run PostgreSQL as")
}

/// Fails, naming the directory, when `user` cannot reach `dir`.
fn reachable_by(dir: &Path, user: &User) -> anyhow::Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    for ancestor in dir.ancestors().skip(1) {
        let metadata = std::fs::metadata(ancestor)
            .with_context(|| format!("cannot read {}", ancestor.display()))?;
        let mode = metadata.mode();
        let traversable = mode & 0o001 != 0
            || (metadata.uid() == user.uid && mode & 0o100 != 0)
            || (metadata.gid() == user.gid && mode & 0o010 != 0);
        if !traversable {
            bail!(
                "PostgreSQL runs as {} (not as root), which cannot enter {}: choose a directory \
                 it can reach (under /tmp, say), or `chmod o+x` that one",
                user.name,
                ancestor.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cluster starts, takes connections as `govbridge`, stops, and
    /// starts again with its data.
    #[test]
    fn a_throwaway_cluster_starts_answers_and_restarts() {
        let mut cluster = Cluster::start_temporary().unwrap();
        let psql = |cluster: &Cluster, sql: &str| cluster.psql(ROLE, sql).unwrap();
        psql(
            &cluster,
            "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)",
        );
        cluster.stop().unwrap();
        cluster.restart().unwrap();
        assert_eq!(psql(&cluster, "SELECT n FROM kept"), "42");
        assert!(cluster.url().starts_with("postgres://govbridge@127.0.0.1:"));
    }

    /// A run killed without stopping its server (its `Drop` never ran)
    /// does not keep the next run in the same directory from starting.
    #[test]
    fn a_server_left_running_is_stopped_by_the_next_start() {
        let dir = tempfile::Builder::new()
            .prefix("govbridge-pg-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let killed = Cluster::start(dir.path()).unwrap();
        killed
            .psql(
                ROLE,
                "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)",
            )
            .unwrap();
        // A run still going holds the lock: its server is left alone, and
        // the start says so.
        let Err(refused) = Cluster::start(dir.path()) else {
            panic!("a live run's server is taken over");
        };
        assert!(
            format!("{refused:#}").contains("another run"),
            "{refused:#}"
        );
        // Killed (its lock gone with it, its server not stopped), the next
        // start stops that server and takes the data over.
        // Unlocked, not only closed: a process another test forks at that
        // moment holds a copy of the descriptor until it execs, and the
        // lock with it.
        let mut killed = killed;
        if let Some(lock) = killed._lock.take() {
            lock.unlock().unwrap();
        }
        std::mem::forget(killed);
        let cluster = Cluster::start(dir.path()).unwrap();
        assert_eq!(cluster.psql(ROLE, "SELECT n FROM kept").unwrap(), "7");
    }
}
