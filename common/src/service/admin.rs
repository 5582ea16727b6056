//! `/metrics`, `/healthz` and `/readyz`, answered the same way by every service: `/metrics`
//! encodes the service's registry (after the service refreshes its gauges), `/healthz` says
//! the process is alive, and `/readyz` is 503 `draining` while the service is not serving,
//! else whatever the service's own check says. Services on axum merge [`router`]; the edge,
//! which serves hyper directly, calls [`answer`].

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

/// An admin endpoint's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Answer {
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Self {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut r = (self.status, self.body).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

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
    fn health(&self, headers: &HeaderMap) -> Answer {
        let _ = headers;
        Answer::text(StatusCode::OK, "ok\n")
    }
}

/// The answer for `path` when it is one of the three admin paths.
pub async fn answer<S: AdminEndpoints>(s: &S, path: &str, headers: &HeaderMap) -> Option<Answer> {
    Some(match path {
        "/metrics" => {
            s.refresh_metrics().await;
            Answer {
                status: StatusCode::OK,
                content_type: crate::metrics::CONTENT_TYPE,
                body: crate::metrics::encode(s.registry()).into(),
            }
        }
        "/healthz" => s.health(headers),
        "/readyz" if !s.serving() => Answer::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => match s.check_ready().await {
            Ok(body) => Answer::text(StatusCode::OK, body),
            Err(body) => Answer::text(StatusCode::SERVICE_UNAVAILABLE, body),
        },
        _ => return None,
    })
}

/// The three routes, for a service's router (merged into its main router, or served alone
/// on an admin listener).
pub fn router<S: AdminEndpoints>() -> Router<Arc<S>> {
    Router::new()
        .route("/metrics", get(route::<S>))
        .route("/healthz", get(route::<S>))
        .route("/readyz", get(route::<S>))
}

async fn route<S: AdminEndpoints>(
    State(s): State<Arc<S>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    match answer(&*s, uri.path(), &headers).await {
        Some(a) => a.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
