//! The one HTTP client every outbound call goes through: heartbeats and the state feed, purge
//! fan-out, health polls and origin probes, pre-positioning, the operator CLI. HTTP/1.1 over
//! plain TCP or TLS (rustls with the process's one provider; the system's roots plus an
//! optional CA bundle), a connect timeout, a total timeout for the head and the whole body, a
//! limit on the body's size, and retries with backoff for the callers that want them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// What a client may do.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Longest wait for a TCP connection (and its TLS handshake counts against `timeout`).
    pub connect_timeout: Duration,
    /// Longest wait for a whole exchange: the response head and, with [`HttpClient::send`],
    /// its whole body.
    pub timeout: Duration,
    /// The largest body [`HttpClient::send`] reads; a longer one is an error.
    pub max_body: usize,
    /// A PEM bundle of CA certificates trusted besides the system's (a private CA).
    pub ca_file: Option<PathBuf>,
    /// How long an idle pooled connection is kept.
    pub pool_idle: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(10),
            max_body: 16 << 20,
            ca_file: None,
            pool_idle: Duration::from_secs(90),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error("bad request: {0}")]
    Request(String),
    #[error("{0}")]
    Connect(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the response body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the response: {0}")]
    Body(String),
    #[error("tls: {0}")]
    Tls(String),
}

impl HttpError {
    /// Whether another try (or another server) may do better: connection trouble and
    /// timeouts, not a request that cannot be built or a body that is too large.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HttpError::Connect(_) | HttpError::Timeout(_) | HttpError::Body(_)
        )
    }
}

/// The client; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    options: Arc<ClientOptions>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("options", &self.options)
            .finish()
    }
}

/// The roots a client trusts: the system's (`/etc/ssl/certs` on Debian) and `ca_file`'s.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, HttpError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped (a minimal host may have none).
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect())
            .map_err(|e| HttpError::Tls(format!("CA bundle {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(HttpError::Tls(format!(
                "CA bundle {} holds no certificate",
                path.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| HttpError::Tls(format!("CA bundle {}: {e}", path.display())))?;
        }
    }
    Ok(roots)
}

impl HttpClient {
    /// A client with these options; `Err` when the CA bundle cannot be read.
    pub fn new(options: ClientOptions) -> Result<Self, HttpError> {
        let roots = root_store(options.ca_file.as_deref())?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(options.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(options.pool_idle)
            .build(connector);
        Ok(Self {
            client,
            options: Arc::new(options),
        })
    }

    /// The options it was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Sends `request` and reads the whole response within the total timeout, refusing a
    /// body over the size limit.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, HttpError> {
        let limit = self.options.max_body;
        let exchange = async {
            let response = self.client.request(request).await.map_err(connect_error)?;
            let (head, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge(limit)
                    } else {
                        HttpError::Body(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Response::from_parts(head, body))
        };
        tokio::time::timeout(self.options.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(self.options.timeout))?
    }

    /// Sends `request`; the head arrives within the total timeout and the body is the
    /// caller's to read (and to bound).
    pub async fn send_streaming(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<hyper::body::Incoming>, HttpError> {
        tokio::time::timeout(self.options.timeout, self.client.request(request))
            .await
            .map_err(|_| HttpError::Timeout(self.options.timeout))?
            .map_err(connect_error)
    }

    /// `GET url` with these headers, read whole.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(http::HeaderName, &str)],
    ) -> Result<Response<Bytes>, HttpError> {
        self.send(request(http::Method::GET, url, headers, Bytes::new())?)
            .await
    }
}

/// Builds a request; `Err` names what is wrong with the URL or a header.
pub fn request(
    method: http::Method,
    url: &str,
    headers: &[(http::HeaderName, &str)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>, HttpError> {
    let mut b = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        b = b.header(name, *value);
    }
    b.body(Full::new(body))
        .map_err(|e| HttpError::Request(format!("{url}: {e}")))
}

fn connect_error(e: hyper_util::client::legacy::Error) -> HttpError {
    // The cause chain says what happened (refused, reset, certificate unknown...).
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if text.contains("certificate") || text.contains("InvalidCertificate") {
        HttpError::Tls(text)
    } else {
        HttpError::Connect(text)
    }
}

/// Runs `attempt` up to `attempts` times while it fails with a transient error (as the
/// closure judges: `Err((e, true))`), waiting `backoff`, then twice as long each time, up to
/// `max_backoff`. The last error otherwise.
pub async fn retry<T, E, F, Fut>(
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<T, (E, bool)>>,
{
    let mut wait = backoff;
    let mut n = 1;
    loop {
        match attempt(n).await {
            Ok(v) => return Ok(v),
            Err((e, transient)) => {
                if !transient || n >= attempts.max(1) {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(max_backoff);
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `retry` over attempts that fail (transiently or not) until `succeed_at`; the
    /// result and how many attempts were made.
    async fn tries(
        attempts: u32,
        succeed_at: u32,
        transient: bool,
    ) -> (Result<u32, &'static str>, u32) {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let r = retry(
            attempts,
            Duration::from_millis(1),
            Duration::from_millis(4),
            |n| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    if n < succeed_at {
                        Err(("failed", transient))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        (r, calls.into_inner())
    }

    #[tokio::test]
    async fn retries_transient_failures_with_backoff_and_stops_at_permanent_ones() {
        assert_eq!(tries(5, 3, true).await, (Ok(3), 3));
        assert_eq!(tries(5, 3, false).await, (Err("failed"), 1));
        assert_eq!(tries(2, 9, true).await, (Err("failed"), 2));
    }

    #[test]
    fn a_missing_or_empty_ca_bundle_is_named() {
        let e = root_store(Some(Path::new("/nonexistent/ca.pem"))).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let empty = std::env::temp_dir().join(format!("empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "").expect("write");
        let e = root_store(Some(&empty)).expect_err("empty");
        assert!(e.to_string().contains("no certificate"), "{e}");
        let _ = std::fs::remove_file(empty);
    }
}
