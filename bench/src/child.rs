//! A server under test as a child of the bench: a fresh folder for it, its output logs, its
//! start-up, and stopping it (SIGTERM, then SIGKILL) until its ports are free again.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

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
