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
