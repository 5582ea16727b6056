//! A server under test as a child of the bench: a fresh folder for it, its output logs, its
//! start-up, and stopping it (SIGTERM, then SIGKILL) until its ports are free again.

use std::fs::{self, File};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::procfs;

/// Empties `dir` (removing what an earlier run left there) and creates it.
pub fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir)?;
    Ok(())
}

/// Fails early when something already listens on one of `ports` (a server left over from an
/// interrupted run, or another program).
pub fn check_tcp_ports_free(ports: impl IntoIterator<Item = u16>, who: &str) -> anyhow::Result<()> {
    for port in ports {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "127.0.0.1:{port} is in use; the bench needs it for {who} (a server left over from an earlier run?)"
            );
        }
    }
    Ok(())
}

/// Creates (or truncates) a log file for a server's output.
pub fn log_file(path: &Path) -> anyhow::Result<File> {
    File::create(path).with_context(|| format!("creating {}", path.display()))
}

/// Starts `cmd` in `dir` with no input and its output in `dir`'s `stdout.txt` and
/// `stderr.txt`.
pub fn spawn_in(mut cmd: Command, dir: &Path, label: &str) -> anyhow::Result<Child> {
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file(&dir.join("stdout.txt"))?)
        .stderr(log_file(&dir.join("stderr.txt"))?);
    cmd.spawn().with_context(|| format!("starting {label}"))
}

/// How a server's start-up ended.
#[derive(Debug)]
pub enum Startup {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

/// Polls `ready` every `poll` until it holds, the server exits, or `within` has passed.
pub fn wait_ready(
    child: &mut Child,
    within: Duration,
    poll: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<Startup> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Startup::Exited(status));
        }
        if ready() {
            return Ok(Startup::Ready);
        }
        if Instant::now() > deadline {
            return Ok(Startup::TimedOut);
        }
        std::thread::sleep(poll);
    }
}

/// Sends SIGTERM to a server still running, and SIGKILL if it has not exited within ten
/// seconds.
pub fn terminate(child: &mut Child, label: &str) -> anyhow::Result<()> {
    if child.try_wait()?.is_none() {
        let pid = child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!("{label} did not exit within 10 s of SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Waits up to ten seconds for `ports_free` to hold, and returns its last answer.
pub fn wait_ports_free(ports_free: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports_free().is_err() {
        if Instant::now() > deadline {
            return ports_free();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Fails early when something holds a port a server needs (UDP or TCP).
pub fn check_port_free(port: u16, who: &str) -> anyhow::Result<()> {
    if TcpListener::bind(("127.0.0.1", port)).is_err()
        || UdpSocket::bind(("127.0.0.1", port)).is_err()
    {
        bail!(
            "127.0.0.1:{port} is in use; the bench needs it for {who} (a server left over from an earlier run?)"
        );
    }
    Ok(())
}

/// A running server; stopped when dropped.
pub struct ServerProcess {
    pub label: String,
    ports: Vec<u16>,
    child: Child,
    dir: PathBuf,
}

impl ServerProcess {
    /// Starts `cmd` in `dir` (see [`spawn_in`]) as the server `label` that listens on `ports`.
    pub fn spawn(label: &str, ports: Vec<u16>, cmd: Command, dir: &Path) -> anyhow::Result<Self> {
        let child = spawn_in(cmd, dir, label)?;
        Ok(Self {
            label: label.to_owned(),
            ports,
            child,
            dir: dir.to_owned(),
        })
    }

    /// Waits until `ready` holds, failing with the last line of its stderr if it exits first.
    pub fn wait_until(&mut self, within: Duration, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        match wait_ready(&mut self.child, within, Duration::from_millis(100), ready)? {
            Startup::Ready => Ok(()),
            Startup::Exited(status) => {
                let stderr = fs::read_to_string(self.dir.join("stderr.txt")).unwrap_or_default();
                let last = stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                bail!(
                    "{} exited during start-up ({status}): {last} (logs in {})",
                    self.label,
                    self.dir.display()
                );
            }
            Startup::TimedOut => bail!(
                "{} did not become ready within {within:?}; see the logs in {}",
                self.label,
                self.dir.display()
            ),
        }
    }

    /// The server's processes: the one started (taskset execs the server) and its
    /// descendants.
    pub fn pids(&self) -> Vec<u32> {
        procfs::with_descendants(self.child.id())
    }

    /// CPU time of all server processes so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        procfs::total_cpu_ticks(&self.pids())
    }

    /// Threads of the main process.
    pub fn threads(&self) -> usize {
        procfs::threads(self.child.id())
    }

    /// SIGTERM, then SIGKILL after ten seconds; then waits for the ports to be free.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        terminate(&mut self.child, &self.label)?;
        wait_ports_free(|| {
            match self
                .ports
                .iter()
                .find(|p| check_port_free(**p, &self.label).is_err())
            {
                Some(p) => bail!("{}: port {p} still in use after it stopped", self.label),
                None => Ok(()),
            }
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}
