//! The two servers of `chat-vs-mosquitto`, each a child of the bench with its own config in
//! its own folder of the work folder: `estuary chat-relay` (release binary, SQLite store) and
//! Debian's mosquitto with one MQTT-over-WebSockets listener (not the system service).

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use crate::child::{self, ServerProcess};
use crate::procfs::{self, Rss};

/// The relay's port; none clash with the other subcommands (18xxx, 19xxx, 28xxx).
pub const RELAY_PORT: u16 = 17200;
pub const MOSQUITTO_PORT: u16 = 17201;
/// mosquitto's plain MQTT listener, which no client uses: 2.0.11 refuses to start with only
/// a WebSockets listener ("Unable to start any listening sockets", eclipse-mosquitto/mosquitto
/// issues 2284 and 2578).
pub const MOSQUITTO_PLAIN_PORT: u16 = 17202;

/// The key id and secret of the relay's `[auth.keys]`, with which the bench signs user
/// tokens.
pub const KEY_ID: &str = "k1";
pub const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatServer {
    Relay,
    Mosquitto,
}

impl ChatServer {
    pub const ALL: [ChatServer; 2] = [ChatServer::Relay, ChatServer::Mosquitto];

    pub fn label(self) -> &'static str {
        match self {
            ChatServer::Relay => "Estuary chat relay",
            ChatServer::Mosquitto => "mosquitto",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            ChatServer::Relay => "relay",
            ChatServer::Mosquitto => "mosquitto",
        }
    }

    pub fn port(self) -> u16 {
        match self {
            ChatServer::Relay => RELAY_PORT,
            ChatServer::Mosquitto => MOSQUITTO_PORT,
        }
    }

    pub fn addr(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    /// Every port the server listens on.
    pub fn ports(self) -> Vec<u16> {
        match self {
            ChatServer::Relay => vec![RELAY_PORT],
            ChatServer::Mosquitto => vec![MOSQUITTO_PORT, MOSQUITTO_PLAIN_PORT],
        }
    }

    /// Fails early when something already listens on one of the server's ports.
    pub fn check_ports_free(self) -> anyhow::Result<()> {
        for port in self.ports() {
            child::check_port_free(port, self.label())?;
        }
        Ok(())
    }
}

/// What the servers need to start.
#[derive(Debug, Clone)]
pub struct ChatSetup {
    pub work: PathBuf,
    pub estuary_bin: PathBuf,
    pub mosquitto_bin: PathBuf,
    /// Connections the servers must accept at once (the relay's `[limits]` are raised to it).
    pub max_connections: usize,
    /// Messages per second the relay lets one user send (the sender's rate, with room).
    pub messages_per_second: u32,
    /// Connections in one live room the relay allows.
    pub room_member_limit: usize,
}

/// A running server under test; stopped when dropped.
pub struct Running {
    process: ServerProcess,
}

impl Running {
    /// Writes the server's config into a fresh folder, starts it and waits until its port
    /// accepts connections (and, for the relay, `/readyz` answers 200).
    pub fn start(server: ChatServer, setup: &ChatSetup) -> anyhow::Result<Self> {
        server.check_ports_free()?;
        let dir = setup.work.join("servers").join(server.slug());
        child::fresh_dir(&dir)?;
        let cmd = match server {
            ChatServer::Relay => relay_command(setup, &dir)?,
            ChatServer::Mosquitto => mosquitto_command(setup, &dir)?,
        };
        let mut process = ServerProcess::spawn(server.label(), server.ports(), cmd, &dir)?;
        let addr = server.addr();
        process.wait_until(Duration::from_secs(30), || match server {
            ChatServer::Relay => crate::httpget::Http1Conn::connect(addr)
                .and_then(|mut c| c.get("/readyz"))
                .is_ok_and(|(status, _)| status == 200),
            ChatServer::Mosquitto => TcpStream::connect(addr).is_ok(),
        })?;
        Ok(Self { process })
    }

    /// Resident memory of the server's processes together.
    pub fn rss(&self) -> Rss {
        self.process
            .pids()
            .into_iter()
            .filter_map(|p| procfs::rss(p).ok())
            .fold(Rss::default(), |a, b| a + b)
    }

    /// User plus system CPU time of the server's processes so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.process.cpu_ticks()
    }

    pub fn stop(self) -> anyhow::Result<()> {
        self.process.stop()
    }
}

/// The relay's config: SQLite store in its folder, the connection limits raised to the
/// bench's load, the sender's rate and the room size raised; everything else the defaults.
fn relay_config(setup: &ChatSetup, store: &Path) -> String {
    format!(
        r#"# Written by estuary-bench chat-vs-mosquitto.
[node]
id = "bench-relay"
site = "bench"

[listen]
http = "127.0.0.1:{RELAY_PORT}"

[auth]
[auth.keys]
{KEY_ID} = "{KEY_HEX}"

[store]
path = "{store}"

[chat]
messages_per_second = {mps}
room_member_limit = {room}

[limits]
max_connections = {max}
max_connections_per_ip = {max}
"#,
        store = store.display(),
        mps = setup.messages_per_second,
        room = setup.room_member_limit,
        max = setup.max_connections,
    )
}

fn relay_command(setup: &ChatSetup, dir: &Path) -> anyhow::Result<Command> {
    if !setup.estuary_bin.is_file() {
        bail!(
            "{} not found (cargo build --release -p estuary)",
            setup.estuary_bin.display()
        );
    }
    let path = dir.join("chat-relay.toml");
    fs::write(&path, relay_config(setup, &dir.join("chat.db")))?;
    let mut cmd = Command::new(&setup.estuary_bin);
    cmd.arg("chat-relay")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .env_remove("TOKIO_WORKER_THREADS");
    Ok(cmd)
}

/// mosquitto's config: one WebSockets listener on loopback (and the plain listener it needs to
/// start at all), anonymous clients, no persistence, no connection cap, Nagle off (as the
/// relay has it), errors and warnings only.
fn mosquitto_config(as_root: bool) -> String {
    // As root, mosquitto would switch to the `mosquitto` user; stay root to read this folder.
    let user = if as_root { "user root\n" } else { "" };
    format!(
        "# Written by estuary-bench chat-vs-mosquitto.\n\
         {user}per_listener_settings false\n\
         persistence false\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         set_tcp_nodelay true\n\
         max_connections -1\n\
         allow_anonymous true\n\
         listener {MOSQUITTO_PLAIN_PORT} 127.0.0.1\n\
         listener {MOSQUITTO_PORT} 127.0.0.1\n\
         protocol websockets\n"
    )
}

fn mosquitto_command(setup: &ChatSetup, dir: &Path) -> anyhow::Result<Command> {
    let path = dir.join("mosquitto.conf");
    fs::write(&path, mosquitto_config(crate::servers::running_as_root()))?;
    let mut cmd = Command::new(&setup.mosquitto_bin);
    cmd.arg("-c").arg(&path);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_config_raises_the_limits() {
        let setup = ChatSetup {
            work: PathBuf::from("/tmp"),
            estuary_bin: PathBuf::from("estuary"),
            mosquitto_bin: PathBuf::from("mosquitto"),
            max_connections: 19_000,
            messages_per_second: 500,
            room_member_limit: 10_000,
        };
        let text = relay_config(&setup, Path::new("/tmp/chat.db"));
        assert!(text.contains("max_connections = 19000\n"));
        assert!(text.contains("max_connections_per_ip = 19000\n"));
        assert!(text.contains("messages_per_second = 500\n"));
        assert!(text.contains("room_member_limit = 10000\n"));
        let conf = mosquitto_config(true);
        assert!(conf.starts_with("# Written"));
        assert!(conf.contains("user root\n") && conf.contains("max_connections -1\n"));
        assert!(conf.ends_with(&format!(
            "listener {MOSQUITTO_PORT} 127.0.0.1\nprotocol websockets\n"
        )));
    }
}
