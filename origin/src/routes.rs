//! The origin's HTTP routes: the uploads (tus.rs), the asset status and delivery endpoints
//! (app.rs) and, on the main listener when there is no admin listener, the admin endpoints.
//! The one place that knows both, so that app.rs and tus.rs need not know each other.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, options};

use crate::app::{self, App};
use crate::tus;

/// The router of the main listener; with `admin` the operator endpoints too.
pub fn router(app: Arc<App>, admin: bool) -> Router {
    // Uploads and their status answer browsers of any page (a chat page uploading with the
    // credential its relay handed out): they take a bearer token, never a cookie, so any
    // origin may call them.
    let uploads = Router::new()
        .route("/uploads", options(tus::options).post(tus::create))
        .route("/uploads/", options(tus::options).post(tus::create))
        .route(
            "/uploads/{id}",
            axum::routing::head(tus::head)
                .patch(tus::patch)
                .delete(tus::delete)
                .options(preflight),
        )
        .route(
            "/v1/assets/{id}",
            get(app::asset_status)
                .delete(app::asset_delete)
                .options(preflight),
        )
        .layer(axum::middleware::map_response(upload_cors));
    let mut r = Router::new()
        .merge(uploads)
        .route(
            "/v1/assets/{id}/retry",
            axum::routing::post(app::asset_retry),
        )
        .route(
            "/v/{*rest}",
            get(app::serve_asset).options(app::cors_preflight),
        );
    if admin {
        r = r.merge(app::admin_router());
    }
    r.with_state(app)
}

/// A CORS preflight of an upload or a status request (the headers come from
/// [`upload_cors`]).
async fn preflight() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}

/// The CORS headers of every upload and status response.
async fn upload_cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, POST, HEAD, PATCH, DELETE, OPTIONS",
        ),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Metadata, Upload-Offset, Upload-Checksum",
        ),
        (
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            "Location, Tus-Resumable, Tus-Version, Tus-Max-Size, Tus-Extension, Upload-Offset, Upload-Length, X-Estuary-Asset",
        ),
        (header::ACCESS_CONTROL_MAX_AGE, "86400"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}
