//! The seam between the filler and the network: [`Upstream`] sends one request to a source
//! and hands back the response head and a body to read. [`HyperUpstream`] is the real one
//! (hyper's pooled client); tests script a fake one (`fill_harness.rs`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

/// A response body from upstream; its error means the body was cut.
pub type UpstreamBody = BoxBody<Bytes, BodyCut>;

/// The body of an upstream response ended with an error (reset, malformed framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the upstream body was cut")]
pub struct BodyCut;

/// The request could not be sent, or no response head came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the upstream could not be reached")]
pub struct Unreachable;

/// An upstream response: its head, and its body still to read.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
}

/// The future [`Upstream::send`] returns.
pub type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<UpstreamResponse, Unreachable>> + Send + 'a>>;

/// Sends fill requests upstream (one boxed future per request: the miss path only).
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// Sends `request`; resolves when the response head has arrived.
    fn send(&self, request: http::Request<()>) -> SendFuture<'_>;
}

/// The real upstream: the one outbound client (`estuary_common::http`), HTTP/1.1 over plain
/// TCP or TLS.
#[derive(Debug)]
pub struct HyperUpstream {
    client: estuary_common::http::HttpClient,
}

impl HyperUpstream {
    /// A client whose connections time out after `connect_timeout`, trusting `ca_file`
    /// besides the system's roots (`Err` when it cannot be read). The fill's own read
    /// timeout bounds the wait for a head.
    pub fn new(
        connect_timeout: Duration,
        ca_file: Option<std::path::PathBuf>,
    ) -> Result<Self, estuary_common::http::HttpError> {
        let client = estuary_common::http::HttpClient::new(estuary_common::http::ClientOptions {
            connect_timeout,
            timeout: Duration::from_secs(24 * 3600),
            ca_file,
            pool_idle: Duration::from_secs(30),
            ..Default::default()
        })?;
        Ok(Self { client })
    }
}

impl Upstream for HyperUpstream {
    fn send(&self, request: http::Request<()>) -> SendFuture<'_> {
        let request = request.map(|()| http_body_util::Full::<Bytes>::default());
        Box::pin(async move {
            let response = self
                .client
                .send_streaming(request)
                .await
                .map_err(|_| Unreachable)?;
            let (parts, body) = response.into_parts();
            Ok(UpstreamResponse {
                status: parts.status,
                headers: parts.headers,
                body: BoxBody::new(body.map_err(|_| BodyCut)),
            })
        })
    }
}
