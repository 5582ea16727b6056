//! A network namespace of a test's own (root only: the test fails, never skips, without it),
//! with its loopback up, deleted on drop. [`Netns::run`] runs a closure on a thread that has
//! entered it: every socket that thread opens and every process it starts (the service,
//! browsers, clients) live in the namespace, so the harness's helpers work unchanged there.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::run;

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add est-<tag>-<pid>-<n>` and `lo` up.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "est-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let out = run(Command::new("ip").args(["netns", "add", &name]));
        assert!(
            out.status.success(),
            "ip netns add {name} (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Self { name };
        let out = run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        assert!(out.status.success(), "lo up in {}", ns.name);
        ns
    }

    /// Drops every UDP datagram to or from `port` inside the namespace, both ways, counting
    /// them (table `inet estuary_test`).
    pub fn block_udp_port(&self, port: u16) {
        block_udp_port(&self.name, port);
    }

    /// Datagrams the rules of [`Netns::block_udp_port`] dropped so far.
    pub fn udp_dropped(&self) -> u64 {
        udp_dropped(&self.name)
    }

    /// Runs `f` on a thread inside the namespace and returns what it returns (a panic in it
    /// is this test's failure).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        let handle = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// [`Netns::block_udp_port`] by the namespace's name (callable from inside [`Netns::run`]).
pub fn block_udp_port(ns: &str, port: u16) {
    use std::io::Write;
    let rules = format!(
        "table inet estuary_test {{\n\
         chain output {{ type filter hook output priority 0; udp dport {port} counter drop; udp sport {port} counter drop; }}\n\
         chain input {{ type filter hook input priority 0; udp dport {port} counter drop; udp sport {port} counter drop; }}\n\
         }}\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run ip netns exec nft: {e} (apt-get install nftables)"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("nft rules");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`Netns::udp_dropped`] by the namespace's name.
pub fn udp_dropped(ns: &str) -> u64 {
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "nft",
        "list",
        "table",
        "inet",
        "estuary_test",
    ]));
    assert!(
        out.status.success(),
        "nft list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "packets")?;
            words.get(i + 1)?.parse::<u64>().ok()
        })
        .sum()
}
