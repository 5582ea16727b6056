//! Starting a node's heartbeats to the control plane, the same way for every role: who the
//! node is comes from `[node] id, site`; where and how often from `[control_plane]` (`url` or
//! `urls`, `token`, `ca_file`, `interval`, `advertise`, `capacity_gbps`, `store_capacity`:
//! [`crate::cp::ClientConfig`]). The service supplies its listen addresses (used where
//! `advertise` says nothing) and, each beat, what only it knows: readiness, load, usage,
//! inventory.

use tokio::sync::watch;

use crate::cp::{
    Addresses, Capacity, ClientConfig, CpuMeter, Heartbeat, HeartbeatReply, InventoryItem, Load,
    Role, Usage,
};

/// Who the node is and where it listens.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `[node] id`.
    pub id: String,
    /// `[node] site`.
    pub site: String,
    pub role: Role,
    /// Base URLs derived from the listen addresses; `[control_plane] advertise` overrides
    /// each one it sets.
    pub listening: Addresses,
}

impl Identity {
    /// A node serving plain HTTP on `http`, with `/metrics`, `/healthz` and `/readyz` there
    /// or on `admin` (the chat relay, the SFU).
    pub fn plain_http(
        node: &crate::config::NodeConfig,
        role: Role,
        http: std::net::SocketAddr,
        admin: Option<std::net::SocketAddr>,
    ) -> Self {
        let http = format!("http://{http}");
        Self {
            id: node.id.clone(),
            site: node.site.clone(),
            role,
            listening: Addresses {
                http: Some(http.clone()),
                https: None,
                admin: Some(admin.map_or(http, |a| format!("http://{a}"))),
            },
        }
    }
}

/// What one heartbeat reports beyond the node's identity. `load.cpu` is measured here.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The node's own readiness (its `/readyz`).
    pub ready: bool,
    pub load: Load,
    pub usage: Usage,
    pub inventory: Vec<InventoryItem>,
    /// SFUs: the rooms open now.
    pub rooms: Vec<String>,
}

/// The addresses a node advertises: each one `advertise` sets, else the listening one.
pub fn advertised(advertise: &Addresses, listening: &Addresses) -> Addresses {
    Addresses {
        http: advertise.http.clone().or_else(|| listening.http.clone()),
        https: advertise.https.clone().or_else(|| listening.https.clone()),
        admin: advertise.admin.clone().or_else(|| listening.admin.clone()),
    }
}

/// Builds the heartbeat maker: the node's identity, advertised addresses, capacity and
/// software version, with `report`'s figures and the process's CPU share since the last beat.
pub fn maker(
    node: Identity,
    config: &ClientConfig,
    mut report: impl FnMut() -> Report + Send + 'static,
) -> impl FnMut() -> Heartbeat + Send + 'static {
    let addresses = advertised(&config.advertise, &node.listening);
    let capacity = Capacity {
        gbps: config.capacity_gbps,
        disk_bytes: config.store_capacity.map_or(0, |c| c.as_u64()),
    };
    let mut cpu = CpuMeter::default();
    move || {
        let Report {
            ready,
            mut load,
            usage,
            inventory,
            rooms,
        } = report();
        load.cpu = cpu.share();
        Heartbeat {
            node: node.id.clone(),
            site: node.site.clone(),
            role: node.role,
            addresses: addresses.clone(),
            capacity: capacity.clone(),
            ready,
            load,
            usage,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            inventory,
            rooms,
            instance: String::new(),
            leaving: false,
        }
    }
}

/// Starts [`crate::cp::heartbeat_loop`] for `node` with `config`; it beats until `stop` turns
/// true, then sends its leaving beat. `on_reply` gets each reply (edges fill their
/// assignments from it).
pub fn start(
    node: Identity,
    config: ClientConfig,
    report: impl FnMut() -> Report + Send + 'static,
    on_reply: impl FnMut(HeartbeatReply) + Send + 'static,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let make = maker(node, &config, report);
    tokio::spawn(crate::cp::heartbeat_loop(config, make, on_reply, stop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_carries_the_identity_the_advertised_addresses_and_the_report() {
        let config: ClientConfig = crate::config::from_toml(
            "url = \"http://cp:7000\"\ntoken = \"0123456789abcdef\"\nadvertise = { admin = \"http://10.0.0.5:9901\" }\nstore_capacity = \"1KiB\"\n",
        )
        .expect("config");
        let node = Identity {
            id: "edge-1".into(),
            site: "lab".into(),
            role: Role::Edge,
            listening: Addresses {
                http: Some("http://0.0.0.0:80".into()),
                https: None,
                admin: Some("http://0.0.0.0:80".into()),
            },
        };
        let mut make = maker(node, &config, || Report {
            ready: true,
            load: Load {
                connections: 3,
                cpu: 0.9,
                ..Load::default()
            },
            ..Report::default()
        });
        let beat = make();
        assert_eq!((beat.node.as_str(), beat.site.as_str()), ("edge-1", "lab"));
        assert_eq!(beat.role, Role::Edge);
        assert_eq!(beat.addresses.http.as_deref(), Some("http://0.0.0.0:80"));
        assert_eq!(
            beat.addresses.admin.as_deref(),
            Some("http://10.0.0.5:9901")
        );
        assert_eq!(beat.capacity.gbps, 10.0);
        assert_eq!(beat.capacity.disk_bytes, 1024);
        assert!(beat.ready);
        assert_eq!(beat.load.connections, 3);
        // The CPU share is measured, not taken from the report.
        assert!(beat.load.cpu <= 1.0 && beat.load.cpu != 0.9);
        assert!(beat.check().is_ok());
    }
}
