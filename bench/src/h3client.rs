//! A small HTTP/3 client on quinn and h3: used by the test suite to talk to a real edge over
//! QUIC, and by the bench as an HTTP/3 load generator.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

/// One HTTP/3 response, body read whole.
#[derive(Debug)]
pub struct H3Response {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// An HTTP/3 connection to one server.
pub struct H3Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    /// Keeps the connection driver alive.
    _driver: tokio::task::JoinHandle<()>,
    endpoint: quinn::Endpoint,
    authority: String,
}

impl H3Client {
    /// Connects to `addr` over QUIC, trusting the certificates in the PEM file `ca`, with the
    /// TLS server name `server_name`.
    pub async fn connect(addr: SocketAddr, server_name: &str, ca: &Path) -> anyhow::Result<Self> {
        let roots = estuary_common::tls::read_certs(ca)?;
        let tls = estuary_common::tls::client_config_trusting(&roots, &[b"h3"])?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .stream_receive_window(quinn::VarInt::from_u32(4 * 1024 * 1024))
            .receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024))
            // The server's idle timeout decides (quinn's client default, 30 s, would end the
            // bench's idle connections before the server's memory is read).
            .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
                600_000,
            ))));
        config.transport_config(Arc::new(transport));
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(config);
        let connection = endpoint.connect(addr, server_name)?.await?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection)).await?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Self {
            send,
            _driver: driver,
            endpoint,
            authority: format!("{server_name}:{}", addr.port()),
        })
    }

    /// Sends a GET (or another bodiless method) for `path_and_query` with extra headers and
    /// reads the whole response.
    pub async fn request(
        &mut self,
        method: http::Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<H3Response> {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("https://{}{}", self.authority, path_and_query));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let mut stream = self.send.send_request(builder.body(())?).await?;
        stream.finish().await?;
        let response = stream.recv_response().await?;
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            body.extend_from_slice(chunk.chunk());
            chunk.advance(chunk.remaining());
        }
        Ok(H3Response {
            status: response.status(),
            headers: response.headers().clone(),
            body: body.freeze(),
        })
    }

    /// GET `path_and_query`.
    pub async fn get(&mut self, path_and_query: &str) -> anyhow::Result<H3Response> {
        self.request(http::Method::GET, path_and_query, &[]).await
    }

    /// GET `path_and_query`, counting body bytes without keeping them (for load).
    pub async fn get_discard(&mut self, path_and_query: &str) -> anyhow::Result<(u16, u64)> {
        get_discard_with(&mut self.send, &self.authority, path_and_query).await
    }

    /// The `host:port` requests are sent to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// A handle to open more requests concurrently on the same connection.
    pub fn sender(&self) -> h3::client::SendRequest<h3_quinn::OpenStreams, Bytes> {
        self.send.clone()
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }
}

/// GET `path_and_query` on any request handle of a connection (see [`H3Client::sender`]),
/// counting body bytes without keeping them: (status, body bytes).
pub async fn get_discard_with(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    authority: &str,
    path_and_query: &str,
) -> anyhow::Result<(u16, u64)> {
    let request = http::Request::get(format!("https://{authority}{path_and_query}")).body(())?;
    let mut stream = send.send_request(request).await?;
    stream.finish().await?;
    let response = stream.recv_response().await?;
    let mut n = 0u64;
    while let Some(mut chunk) = stream.recv_data().await? {
        n += chunk.remaining() as u64;
        chunk.advance(chunk.remaining());
    }
    Ok((response.status().as_u16(), n))
}
