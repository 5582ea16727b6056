//! The two SFUs of `sfu-vs-janus`, each a child of the bench pinned to CPU 0 with its own
//! config in its own folder: `estuary sfu` (release binary) and Debian's Janus 1.1 with the
//! VideoRoom plugin and the HTTP transport only (not the system service).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use crate::child::{self, ServerProcess};

/// Ports; none clash with the other subcommands.
pub const ESTUARY_HTTP: u16 = 17300;
pub const ESTUARY_UDP: u16 = 17301;
pub const JANUS_HTTP: u16 = 17302;
/// Janus's media ports.
pub const JANUS_RTP: (u16, u16) = (30000, 39999);
/// The SFU's room token key.
pub const KEY_ID: &str = "k1";
pub const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SfuServer {
    Estuary,
    Janus,
}

impl SfuServer {
    pub const ALL: [SfuServer; 2] = [SfuServer::Estuary, SfuServer::Janus];

    pub fn label(self) -> &'static str {
        match self {
            SfuServer::Estuary => "Estuary SFU",
            SfuServer::Janus => "Janus VideoRoom",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            SfuServer::Estuary => "estuary",
            SfuServer::Janus => "janus",
        }
    }

    pub fn base_url(self) -> String {
        match self {
            SfuServer::Estuary => format!("http://127.0.0.1:{ESTUARY_HTTP}"),
            SfuServer::Janus => format!("http://127.0.0.1:{JANUS_HTTP}/janus"),
        }
    }

    fn ports(self) -> Vec<u16> {
        match self {
            SfuServer::Estuary => vec![ESTUARY_HTTP],
            SfuServer::Janus => vec![JANUS_HTTP],
        }
    }
}

/// A running SFU; stopped when dropped.
pub struct Running {
    pub process: ServerProcess,
}

impl Running {
    /// Writes the config into a fresh folder, starts the server on CPU 0 and waits for its
    /// HTTP port.
    pub fn start(
        server: SfuServer,
        work: &Path,
        estuary: &Path,
        janus: &Path,
        rooms: usize,
        (shards, bwe): (usize, Option<u64>),
        address: std::net::IpAddr,
    ) -> anyhow::Result<Self> {
        for p in server.ports() {
            child::check_port_free(p, server.label())?;
        }
        let dir = work.join("servers").join(server.slug());
        child::fresh_dir(&dir)?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]);
        match server {
            SfuServer::Estuary => {
                if !estuary.is_file() {
                    bail!(
                        "{} not found (cargo build --release -p estuary)",
                        estuary.display()
                    );
                }
                let path = dir.join("sfu.toml");
                fs::write(&path, estuary_config(shards, bwe, address))?;
                cmd.arg(estuary)
                    .arg("sfu")
                    .arg("--config")
                    .arg(&path)
                    .env("RUST_LOG", "warn");
            }
            SfuServer::Janus => {
                write_janus_configs(&dir, rooms, address)?;
                cmd.arg(janus)
                    .arg("-F")
                    .arg(&dir)
                    .arg("-C")
                    .arg(dir.join("janus.jcfg"));
            }
        }
        let mut process = ServerProcess::spawn(server.label(), server.ports(), cmd, &dir)?;
        let port = server.ports()[0];
        process.wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        Ok(Self { process })
    }

    pub fn cpu_ticks(&self) -> u64 {
        self.process.cpu_ticks()
    }
}

fn estuary_config(shards: usize, bwe: Option<u64>, address: std::net::IpAddr) -> String {
    let bwe = bwe
        .map(|b| format!("bwe_initial_bps = {b}\n"))
        .unwrap_or_default();
    format!(
        r#"# Written by estuary-bench sfu-vs-janus.
[node]
id = "bench-sfu"
site = "bench"

[listen]
http = "127.0.0.1:{ESTUARY_HTTP}"
udp = "{address}:{ESTUARY_UDP}"
public_ip = "{address}"

[auth.keys]
{KEY_ID} = "{KEY_HEX}"

[media]
shards = {shards}
codecs = ["opus", "vp8"]
{bwe}

[rooms]
max_participants = 1000
max_publishers = 100
# Every publisher's audio to every subscriber, as Janus does (the default forwards the three
# loudest; the load's audio carries no levels).
max_audio_forwarded = 64

[limits]
max_connections = 4000
max_connections_per_ip = 4000
"#
    )
}

/// Janus's configs: VideoRoom and HTTP only, host candidates on the bench's address only
/// (libnice never offers a loopback address), rooms 1..=rooms with
/// room for 100 publishers each, no bitrate cap, no periodic keyframe requests, no session
/// timeout (the load's sessions send no keepalives).
fn write_janus_configs(dir: &Path, rooms: usize, address: std::net::IpAddr) -> anyhow::Result<()> {
    let lib = PathBuf::from("/usr/lib/x86_64-linux-gnu/janus");
    let plugins = [
        "audiobridge",
        "duktape",
        "echotest",
        "lua",
        "nosip",
        "recordplay",
        "sip",
        "streaming",
        "textroom",
        "videocall",
        "voicemail",
    ]
    .iter()
    .map(|p| format!("libjanus_{p}.so"))
    .collect::<Vec<_>>()
    .join(",");
    let transports = ["mqtt", "nanomsg", "pfunix", "rabbitmq", "websockets"]
        .iter()
        .map(|p| format!("libjanus_{p}.so"))
        .collect::<Vec<_>>()
        .join(",");
    fs::write(
        dir.join("janus.jcfg"),
        format!(
            r#"general: {{
	configs_folder = "{cfg}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 3
	session_timeout = 0
	protected_folders = []
}}
certificates: {{
}}
media: {{
	rtp_port_range = "{lo}-{hi}"
}}
nat: {{
	ice_enforce_list = "{address}"
	ignore_mdns = true
}}
plugins: {{
	disable = "{plugins}"
}}
transports: {{
	disable = "{transports}"
}}
events: {{
	broadcast = false
	disable = "*"
}}
loggers: {{
	disable = "*"
}}
"#,
            cfg = dir.display(),
            lib = lib.display(),
            lo = JANUS_RTP.0,
            hi = JANUS_RTP.1,
        ),
    )?;
    fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{\n\tjson = \"compact\"\n\tbase_path = \"/janus\"\n\thttp = true\n\tport = {JANUS_HTTP}\n\tip = \"127.0.0.1\"\n\thttps = false\n}}\nadmin: {{\n\tadmin_http = false\n}}\n"
        ),
    )?;
    let mut vr = String::from("general: {\n}\n");
    for r in 1..=rooms {
        vr.push_str(&format!(
            "room-{r}: {{\n\tdescription = \"bench {r}\"\n\tpublishers = 100\n\tbitrate = 0\n\tfir_freq = 0\n\taudiocodec = \"opus\"\n\tvideocodec = \"vp8\"\n}}\n"
        ));
    }
    fs::write(dir.join("janus.plugin.videoroom.jcfg"), vr)?;
    // Janus reads one file per logger and event handler it finds, disabled or not.
    fs::write(
        dir.join("janus.logger.jsonlog.jcfg"),
        "general: {\n\tenabled = false\n}\n",
    )?;
    Ok(())
}
