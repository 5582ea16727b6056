//! A minimal blocking HTTP/1.1 client over one keep-alive connection: enough to check that a
//! server is up, warm it, verify what it serves, and hold idle connections open.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

pub struct Http1Conn {
    reader: BufReader<TcpStream>,
}

impl Http1Conn {
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, stream),
        })
    }

    /// GET `path`, reading and discarding the body: the status and the body length.
    pub fn get(&mut self, path: &str) -> anyhow::Result<(u16, u64)> {
        self.get_with_host(path, "localhost")
    }

    /// GET `path` with this `Host` header (caches that key on the host, like Varnish, need the
    /// one the load tool will send).
    pub fn get_with_host(&mut self, path: &str, host: &str) -> anyhow::Result<(u16, u64)> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: estuary-bench\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = parse_status_line(&line)?;
        let mut content_length = None;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the connection closed inside the response head");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = Some(value.trim().parse::<u64>().context("content-length")?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked responses are not expected from a static file server");
                }
            }
        }
        let len = content_length.context("the response has no content-length")?;
        let copied = std::io::copy(&mut (&mut self.reader).take(len), &mut std::io::sink())?;
        if copied != len {
            bail!("the body ended after {copied} of {len} bytes");
        }
        Ok((status, len))
    }

    /// The socket, without the read buffer (to hold many idle connections cheaply).
    pub fn into_stream(self) -> TcpStream {
        self.reader.into_inner()
    }
}

fn parse_status_line(line: &str) -> anyhow::Result<u16> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse()
            .with_context(|| format!("status line {line:?}")),
        _ => bail!("not an HTTP/1.x status line: {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK\r\n").ok(), Some(200));
        assert_eq!(
            parse_status_line("HTTP/1.0 404 Not Found\r\n").ok(),
            Some(404)
        );
        assert!(parse_status_line("SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line("").is_err());
    }
}
