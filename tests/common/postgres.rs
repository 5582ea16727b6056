//! A real PostgreSQL server (Debian's `postgresql` package) for the control plane's tests:
//! a fresh cluster per test in a temporary folder, on a loopback port, trust authentication,
//! stopped and removed on drop. As root the server runs as the `postgres` user (PostgreSQL
//! refuses to run as root).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{free_port, run};

pub struct Postgres {
    dir: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
}

/// The folder of PostgreSQL's programs (`initdb`, `postgres`, `psql`).
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt-get install postgresql; scripts/test.sh does)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

fn is_root() -> bool {
    let out = run(Command::new("id").arg("-u"));
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

impl Postgres {
    pub fn start(name: &str) -> Self {
        let bin = bin_dir();
        let as_postgres_user = is_root();
        // Under /tmp: the `postgres` user must be able to reach it.
        let dir = std::env::temp_dir().join(format!(
            "estuary-pg-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        let command = |program: &str| {
            let mut c = if as_postgres_user {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            };
            c.current_dir(&dir);
            c
        };
        if as_postgres_user {
            run(Command::new("chown").args(["postgres:"]).arg(&dir));
        }
        let data = dir.join("data");
        let out = run(command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "estuary",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.join("postgres.log")).expect("log");
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=100",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let pg = Self {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while pg.psql("postgres", "SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(pg.dir.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        pg
    }

    /// Runs one SQL statement with `psql` in database `db`; its output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = run(Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .args(["-U", "estuary", "-d", db, "-c", sql]));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Creates database `db`; its URL for `[database] url`.
    pub fn database(&self, db: &str) -> String {
        if let Err(e) = self.psql("postgres", &format!("CREATE DATABASE {db}")) {
            panic!("create database {db}: {e}");
        }
        format!("postgres://estuary@{}/{db}", self.addr)
    }
}

impl Postgres {
    /// The server's processes: the postmaster (named in its pid file) and its children (the
    /// backends and background workers).
    fn processes(&self) -> Vec<String> {
        let postmaster = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
            .expect("postmaster.pid");
        let out = run(Command::new("pgrep").args(["-P", &postmaster]));
        let mut pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        pids.push(postmaster);
        pids
    }

    /// Freezes the whole server (SIGSTOP to every process of it): connections stay open and
    /// nothing answers, as a hung database host does.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    /// Lets a frozen server go on.
    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, signal: &str) {
        let pids = self.processes();
        let st = Command::new("kill")
            .arg(signal)
            .args(&pids)
            .status()
            .expect("kill");
        assert!(st.success(), "kill {signal} {pids:?}");
    }

    /// Adds a line at the top of `pg_hba.conf` and reloads the configuration.
    pub fn hba_first(&self, line: &str) {
        let path = self.dir.join("data/pg_hba.conf");
        let old = std::fs::read_to_string(&path).expect("pg_hba.conf");
        std::fs::write(&path, format!("{line}\n{old}")).expect("write pg_hba.conf");
        self.psql("postgres", "SELECT pg_reload_conf()")
            .expect("reload");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT to the postmaster (named in its pid file; as root the child is
            // `runuser`): immediate shutdown, the cluster is thrown away anyway.
            let pid = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().map(str::to_owned))
                .unwrap_or_else(|| child.id().to_string());
            let _ = Command::new("kill").args(["-QUIT", pid.trim()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
