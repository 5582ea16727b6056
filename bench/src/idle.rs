//! Idle keep-alive connections: open many, make one small request on each, and keep them open
//! while the server's memory is read.

use std::net::{SocketAddr, TcpStream};

use anyhow::{Context, bail};

use crate::httpget::Http1Conn;

/// Raises this process's open-file limit so that it can hold `needed` sockets. As root the
/// hard limit can be raised too; otherwise the soft limit goes up to the hard one.
pub fn raise_nofile_limit(needed: u64) -> anyhow::Result<u64> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft >= needed {
        return Ok(soft);
    }
    if hard < needed && rlimit::setrlimit(rlimit::Resource::NOFILE, needed, needed).is_ok() {
        return Ok(needed);
    }
    Ok(rlimit::increase_nofile_limit(needed)?)
}

/// Opens `count` connections to `addr`, sends `GET path` on each and reads the response, and
/// returns the open sockets.
pub fn open(addr: SocketAddr, path: &str, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut open = Vec::with_capacity(count);
    for i in 0..count {
        let mut conn = Http1Conn::connect(addr)
            .with_context(|| format!("idle connection {} of {count}", i + 1))?;
        let (status, _) = conn
            .get(path)
            .with_context(|| format!("request on idle connection {} of {count}", i + 1))?;
        if status != 200 {
            bail!("GET {path} on idle connection {} gave {status}", i + 1);
        }
        open.push(conn.into_stream());
    }
    Ok(open)
}

/// An idle connection of another protocol, held open (dropping it closes it).
pub type Held = Box<dyn std::any::Any + Send>;

/// Opens `count` HTTP/2 connections over TLS (ALPN `h2`, trusting the PEM file `ca`) to
/// `addr`, makes one `GET path` on each and keeps them open.
pub async fn open_h2(
    addr: SocketAddr,
    ca: &std::path::Path,
    path: &str,
    count: usize,
) -> anyhow::Result<Vec<Held>> {
    use http_body_util::BodyExt;
    let roots = estuary_common::tls::read_certs(ca)?;
    let tls = estuary_common::tls::client_config_trusting(&roots, &[b"h2"])?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let mut open: Vec<Held> = Vec::with_capacity(count);
    for i in 0..count {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("HTTP/2 connection {} of {count}", i + 1))?;
        let tls = connector.connect(name.clone(), tcp).await?;
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(format!("https://localhost{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        if status != 200 {
            bail!(
                "HTTP/2 GET {path} on idle connection {} gave {status}",
                i + 1
            );
        }
        open.push(Box::new((send, AbortOnDrop(driver))));
    }
    Ok(open)
}

/// Opens `count` HTTP/3 connections to `addr` (trusting the PEM file `ca`), makes one
/// `GET path` on each and keeps them open.
pub async fn open_h3(
    addr: SocketAddr,
    ca: &std::path::Path,
    path: &str,
    count: usize,
) -> anyhow::Result<Vec<Held>> {
    let mut open: Vec<Held> = Vec::with_capacity(count);
    let mut resets = 0;
    for i in 0..count {
        // A handshake that gets no answer would otherwise wait out the idle timeout: one
        // more try, then the error.
        let connect = || {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                estuary_bench::h3client::H3Client::connect(addr, "localhost", ca),
            )
        };
        let mut client = match connect().await {
            Ok(Ok(c)) => c,
            _ => connect()
                .await
                .map_err(|_| anyhow::anyhow!("no answer within 10 s, twice"))
                .and_then(|r| r)
                .with_context(|| format!("HTTP/3 connection {} of {count}", i + 1))?,
        };
        // A GET the edge resets (it happens now and then: an open issue) is asked again once
        // on the same connection, and counted.
        let (status, _) = match client.get_discard(path).await {
            Ok(r) => r,
            Err(e) => {
                resets += 1;
                eprintln!(
                    "HTTP/3 connection {} of {count}: {e:#}; asking again",
                    i + 1
                );
                client.get_discard(path).await.with_context(|| {
                    format!(
                        "GET {path} on HTTP/3 connection {} of {count}, twice",
                        i + 1
                    )
                })?
            }
        };
        if status != 200 {
            bail!(
                "HTTP/3 GET {path} on idle connection {} gave {status}",
                i + 1
            );
        }
        open.push(Box::new(client));
    }
    if resets > 0 {
        eprintln!(
            "HTTP/3: {resets} of {count} first GETs were reset by the server and asked again"
        );
    }
    Ok(open)
}

/// Stops a connection's driver task when the connection is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
