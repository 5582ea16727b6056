//! `/metrics`, `/healthz` and `/readyz`, served the same way by every service: `/metrics`
//! encodes the service's registry (after the service refreshes its gauges), `/healthz` says
//! the process is alive, and `/readyz` is 503 `draining` while the service is not serving,
//! else whatever the service's own check says.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// What a service supplies for its admin endpoints.
pub trait AdminEndpoints: Send + Sync + 'static {
    /// The registry `/metrics` encodes.
    fn registry(&self) -> &prometheus::Registry;

    /// The readiness flag: false before the service serves and once it drains (`/readyz`
    /// then answers 503 `draining`).
    fn serving(&self) -> bool;

    /// The service's own readiness check, asked while it is serving: `Ok(body)` answers 200,
    /// `Err(body)` 503.
    fn check_ready(&self) -> impl Future<Output = Result<String, String>> + Send {
        async { Ok("ready\n".to_owned()) }
    }

    /// Brings gauges up to date before `/metrics` is encoded.
    fn refresh_metrics(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The `/healthz` answer: alive. `headers` are the request's, for a service that shows
    /// more to an authenticated operator than to anyone who can reach the port.
    fn health(&self, headers: &HeaderMap) -> Response {
        let _ = headers;
        "ok\n".into_response()
    }
}

/// The three routes, for a service's router (merged into its main router, or served alone
/// on an admin listener).
pub fn router<S: AdminEndpoints>() -> Router<Arc<S>> {
    Router::new()
        .route("/metrics", get(metrics::<S>))
        .route(
            "/healthz",
            get(|State(s): State<Arc<S>>, headers: HeaderMap| async move { s.health(&headers) }),
        )
        .route("/readyz", get(readyz::<S>))
}

async fn metrics<S: AdminEndpoints>(State(s): State<Arc<S>>) -> Response {
    s.refresh_metrics().await;
    let mut r = crate::metrics::encode(s.registry()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

async fn readyz<S: AdminEndpoints>(State(s): State<Arc<S>>) -> Response {
    if !s.serving() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match s.check_ready().await {
        Ok(body) => body.into_response(),
        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body).into_response(),
    }
}
