//! A stampede on one cold object: many clients, each on its own connection opened beforehand,
//! send the same GET at the same moment; each records when its request was written, when the
//! first body byte arrived and when the last did.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::Instant;

/// What one client saw.
#[derive(Debug, Clone)]
pub struct ClientTiming {
    /// When its request was written.
    pub sent_at: Instant,
    /// From the request write to the first body byte.
    pub ttfb: Duration,
    /// From the request write to the last body byte.
    pub total: Duration,
    pub status: u16,
    pub body_bytes: u64,
}

/// Opens `clients` connections to `addr`, then releases all their requests for `path` at once
/// and waits (at most `timeout` per client) for every response.
pub async fn stampede(
    addr: SocketAddr,
    path: &str,
    clients: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Result<ClientTiming, String>>> {
    let mut streams = Vec::with_capacity(clients);
    for i in 0..clients {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connection {} of {clients} to {addr}", i + 1))?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    let request = Arc::new(format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: estuary-bench-collapse\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n\r\n",
        addr.port()
    ));
    let barrier = Arc::new(Barrier::new(clients));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, stream) in streams.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        let request = Arc::clone(&request);
        tasks.spawn(async move {
            barrier.wait().await;
            let result = tokio::time::timeout(timeout, one_client(stream, &request))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no complete response within {timeout:?}")))
                .map_err(|e| format!("{e:#}"));
            (i, result)
        });
    }
    let mut results: Vec<Result<ClientTiming, String>> =
        vec![Err("the client task did not finish".to_owned()); clients];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, r)) = joined
            && let Some(slot) = results.get_mut(i)
        {
            *slot = r;
        }
    }
    Ok(results)
}

async fn one_client(mut stream: TcpStream, request: &str) -> anyhow::Result<ClientTiming> {
    let sent_at = Instant::now();
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let mut first_body_at = None;
    let mut body = BodyCounter::Unknown;
    let mut status = 0;
    loop {
        let n = stream.read(&mut buf).await?;
        let now = Instant::now();
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        if status == 0 {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if head.len() > 64 * 1024 {
                    bail!("the response head is larger than 64 KiB");
                }
                continue;
            };
            let text = String::from_utf8_lossy(&head[..end]).into_owned();
            let (s, counter) = parse_head(&text)?;
            status = s;
            body = counter;
            // What followed the head in this read is body.
            let consumed = n - (head.len() - (end + 4));
            data = &buf[consumed..n];
        }
        if !data.is_empty() && first_body_at.is_none() {
            first_body_at = Some(now);
        }
        body.feed(data)?;
        if body.done() {
            let ttfb = first_body_at.unwrap_or(now) - sent_at;
            return Ok(ClientTiming {
                sent_at,
                ttfb,
                total: now - sent_at,
                status,
                body_bytes: body.bytes(),
            });
        }
    }
    if status == 0 {
        bail!("the connection closed before a response head");
    }
    if let BodyCounter::UntilClose(n) = body {
        let now = Instant::now();
        return Ok(ClientTiming {
            sent_at,
            ttfb: first_body_at.unwrap_or(now) - sent_at,
            total: now - sent_at,
            status,
            body_bytes: n,
        });
    }
    bail!(
        "the connection closed after {} body bytes, before the body ended",
        body.bytes()
    )
}

/// The status and how the body is delimited.
fn parse_head(head: &str) -> anyhow::Result<(u16, BodyCounter)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .with_context(|| format!("status line {status_line:?}"))?,
        _ => bail!("not an HTTP/1.x status line: {status_line:?}"),
    };
    let mut counter = BodyCounter::UntilClose(0);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len = value
                .parse::<u64>()
                .with_context(|| format!("content-length {value:?}"))?;
            counter = BodyCounter::Length { len, seen: 0 };
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.eq_ignore_ascii_case("chunked")
        {
            counter = BodyCounter::Chunked(Chunked::default());
        }
    }
    Ok((status, counter))
}

/// Counts body bytes and tells when the body has ended.
#[derive(Debug)]
enum BodyCounter {
    Unknown,
    Length { len: u64, seen: u64 },
    Chunked(Chunked),
    UntilClose(u64),
}

impl BodyCounter {
    fn feed(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match self {
            BodyCounter::Unknown => {}
            BodyCounter::Length { seen, .. } => *seen += data.len() as u64,
            BodyCounter::Chunked(c) => c.feed(data)?,
            BodyCounter::UntilClose(n) => *n += data.len() as u64,
        }
        Ok(())
    }

    fn done(&self) -> bool {
        match self {
            BodyCounter::Length { len, seen } => seen >= len,
            BodyCounter::Chunked(c) => c.state == ChunkState::Done,
            BodyCounter::Unknown | BodyCounter::UntilClose(_) => false,
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            BodyCounter::Unknown => 0,
            BodyCounter::Length { seen, .. } => *seen,
            BodyCounter::Chunked(c) => c.body_bytes,
            BodyCounter::UntilClose(n) => *n,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hexadecimal size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last (empty) chunk, until an empty line.
    Trailer,
    Done,
}

/// A streaming decoder of chunked framing that only counts the data bytes.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
    body_bytes: u64,
}

impl Chunked {
    fn feed(&mut self, mut data: &[u8]) -> anyhow::Result<()> {
        while !data.is_empty() {
            match self.state {
                ChunkState::Size | ChunkState::Trailer | ChunkState::DataEnd => {
                    let byte = data[0];
                    data = &data[1..];
                    if byte != b'\n' {
                        if self.line.len() > 4096 {
                            bail!("a chunk-size or trailer line is too long");
                        }
                        self.line.push(byte);
                        continue;
                    }
                    let line = String::from_utf8_lossy(&self.line).trim().to_owned();
                    self.line.clear();
                    self.state = match self.state {
                        ChunkState::Size => {
                            let hex = line.split(';').next().unwrap_or("").trim();
                            let size = u64::from_str_radix(hex, 16)
                                .with_context(|| format!("chunk size {hex:?}"))?;
                            if size == 0 {
                                ChunkState::Trailer
                            } else {
                                ChunkState::Data(size)
                            }
                        }
                        ChunkState::DataEnd => ChunkState::Size,
                        _ if line.is_empty() => ChunkState::Done,
                        other => other,
                    };
                }
                ChunkState::Data(left) => {
                    let n = left.min(data.len() as u64);
                    self.body_bytes += n;
                    data = &data[n as usize..];
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::Done => return Ok(()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_say_how_the_body_ends() {
        let (s, c) = parse_head("HTTP/1.1 200 OK\r\nContent-Length: 10").expect("parse");
        assert_eq!(s, 200);
        assert!(matches!(c, BodyCounter::Length { len: 10, seen: 0 }));
        let (_, c) = parse_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").expect("parse");
        assert!(matches!(c, BodyCounter::Chunked(_)));
        let (s, c) = parse_head("HTTP/1.0 404 Not Found").expect("parse");
        assert_eq!(s, 404);
        assert!(matches!(c, BodyCounter::UntilClose(0)));
        assert!(parse_head("SSH-2.0").is_err());
        assert!(parse_head("HTTP/1.1 200 OK\r\nContent-Length: x").is_err());
    }

    #[test]
    fn chunked_bodies_are_counted_across_reads() {
        let wire = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..wire.len() {
            let mut c = BodyCounter::Chunked(Chunked::default());
            c.feed(&wire[..split]).expect("feed");
            c.feed(&wire[split..]).expect("feed");
            assert!(c.done(), "split at {split}");
            assert_eq!(c.bytes(), 21);
        }
        let mut c = Chunked::default();
        assert!(c.feed(b"zz\r\n").is_err());
    }
}
