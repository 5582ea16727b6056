//! A userspace UDP impairment proxy (this kernel has no netem): it listens where the SFU's
//! candidate points, relays each client's datagrams to the SFU from a socket of its own, and
//! relays the SFU's answers back, dropping a seeded share of the SRTP/SRTCP datagrams that
//! go towards the clients (STUN and DTLS pass, so that connections set up the same way every
//! run). Stops when dropped.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub struct LossProxy {
    stop: Arc<AtomicBool>,
    /// SRTP/SRTCP datagrams towards clients dropped so far.
    pub dropped: Arc<AtomicU64>,
    /// All datagrams relayed towards clients.
    pub relayed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// xorshift64: deterministic loss from a seed.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

impl LossProxy {
    /// Listens on `listen`, relays to `upstream`; drops `loss_percent` of the media towards
    /// clients.
    pub fn start(listen: SocketAddr, upstream: SocketAddr, loss_percent: u64, seed: u64) -> Self {
        let front = Arc::new(UdpSocket::bind(listen).expect("bind the proxy"));
        front
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let relayed = Arc::new(AtomicU64::new(0));
        let (new_tx, new_rx) = std::sync::mpsc::channel::<(SocketAddr, Arc<UdpSocket>)>();
        // Client to SFU: one upstream socket per client address.
        let front_in = Arc::clone(&front);
        let stop_in = Arc::clone(&stop);
        let inbound = std::thread::spawn(move || {
            let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 2048];
            while !stop_in.load(Ordering::Relaxed) {
                let Ok((n, from)) = front_in.recv_from(&mut buf) else {
                    continue;
                };
                let up = clients.entry(from).or_insert_with(|| {
                    let s = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind upstream"));
                    s.set_read_timeout(Some(Duration::from_millis(100)))
                        .expect("timeout");
                    let _ = new_tx.send((from, Arc::clone(&s)));
                    s
                });
                let _ = up.send_to(&buf[..n], upstream);
            }
        });
        // SFU to clients: a thread per client's upstream socket, with the loss.
        let stop_out = Arc::clone(&stop);
        let (d, r) = (Arc::clone(&dropped), Arc::clone(&relayed));
        let outbound = std::thread::spawn(move || {
            let mut threads = Vec::new();
            while !stop_out.load(Ordering::Relaxed) {
                let Ok((client, up)) = new_rx.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let (front, stop, d, r) = (
                    Arc::clone(&front),
                    Arc::clone(&stop_out),
                    Arc::clone(&d),
                    Arc::clone(&r),
                );
                let mut rng = seed ^ (u64::from(client.port()) << 17) | 1;
                threads.push(std::thread::spawn(move || {
                    let mut buf = vec![0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, _)) = up.recv_from(&mut buf) else {
                            continue;
                        };
                        let media = matches!(buf.first(), Some(128..=191));
                        if media && next(&mut rng) % 100 < loss_percent {
                            d.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        r.fetch_add(1, Ordering::Relaxed);
                        let _ = front.send_to(&buf[..n], client);
                    }
                }));
            }
            for t in threads {
                let _ = t.join();
            }
        });
        Self {
            stop,
            dropped,
            relayed,
            threads: vec![inbound, outbound],
        }
    }
}

impl Drop for LossProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
