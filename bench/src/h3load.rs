//! HTTP/3 load: several QUIC connections, several request streams on each, every stream
//! fetching the next path in a list until the time is up.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use estuary_bench::h3client::H3Client;

use crate::load::{Measurement, percentile};

/// Concurrency of the HTTP/3 load.
#[derive(Debug, Clone, Copy)]
pub struct H3Shape {
    pub connections: usize,
    pub streams_per_connection: usize,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    bytes: u64,
    errors: u64,
    latencies_us: Vec<u64>,
}

/// Fetches `paths` round-robin from `addr` for `duration`, with `shape.connections`
/// connections of `shape.streams_per_connection` requests in flight each.
pub fn run(
    addr: SocketAddr,
    ca: &Path,
    paths: &[String],
    shape: H3Shape,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("h3load")
        .build()
        .context("starting the HTTP/3 client runtime")?;
    runtime.block_on(async {
        anyhow::ensure!(!paths.is_empty(), "no paths to fetch");
        let mut clients = Vec::with_capacity(shape.connections);
        for _ in 0..shape.connections {
            clients.push(
                H3Client::connect(addr, "localhost", ca)
                    .await
                    .with_context(|| format!("connecting over QUIC to {addr}"))?,
            );
        }
        load(clients, addr.port(), paths, shape, duration).await
    })
}

/// Runs the load over connected `clients` to `localhost:port` until `duration` has passed.
async fn load(
    clients: Vec<H3Client>,
    port: u16,
    paths: &[String],
    shape: H3Shape,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    let paths: Arc<Vec<String>> = Arc::new(paths.to_vec());
    let authority = format!("localhost:{port}");
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for s in 0..shape.streams_per_connection {
            let sender = client.sender();
            let paths = Arc::clone(&paths);
            let authority = authority.clone();
            let first = (c * shape.streams_per_connection + s) * 17;
            tasks.spawn(stream_loop(sender, authority, paths, first, deadline));
        }
    }
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        let t = joined.context("an HTTP/3 load task panicked")??;
        total.requests += t.requests;
        total.bytes += t.bytes;
        total.errors += t.errors;
        total.latencies_us.extend(t.latencies_us);
    }
    let seconds = started.elapsed().as_secs_f64();
    for client in clients {
        client.close().await;
    }
    total.latencies_us.sort_unstable();
    Ok(Measurement {
        requests: total.requests,
        bytes: total.bytes,
        seconds,
        p50_ms: percentile(&total.latencies_us, 50.0).map(|us| us as f64 / 1e3),
        p99_ms: percentile(&total.latencies_us, 99.0).map(|us| us as f64 / 1e3),
        errors: total.errors,
        server_cpu_seconds: None,
        unattributed_cpu: None,
        runs_requests_per_second: Vec::new(),
    })
}

/// One request stream at a time on one connection, until the deadline. Body bytes are counted
/// (response heads are not: QUIC compresses them with QPACK).
async fn stream_loop(
    mut sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    authority: String,
    paths: Arc<Vec<String>>,
    first: usize,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut i = first;
    while Instant::now() < deadline {
        let path = &paths[i % paths.len()];
        i += 1;
        let t0 = Instant::now();
        let (status, n) =
            estuary_bench::h3client::get_discard_with(&mut sender, &authority, path).await?;
        if (200..300).contains(&status) {
            tally.requests += 1;
            tally.bytes += n;
            tally.latencies_us.push(t0.elapsed().as_micros() as u64);
        } else {
            tally.errors += 1;
        }
    }
    Ok(tally)
}
