//! The origin's HTTP routes: the uploads (tus.rs), the asset status and delivery endpoints
//! (app.rs) and, on the main listener when there is no admin listener, the admin endpoints.
//! The one place that knows both, so that app.rs and tus.rs need not know each other.

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, options};

use crate::app::{self, App};
use crate::tus;

/// The router of the main listener; with `admin` the operator endpoints too.
pub fn router(app: Arc<App>, admin: bool) -> Router {
    let mut r = Router::new()
        .route("/uploads", options(tus::options).post(tus::create))
        .route("/uploads/", options(tus::options).post(tus::create))
        .route(
            "/uploads/{id}",
            axum::routing::head(tus::head)
                .patch(tus::patch)
                .delete(tus::delete),
        )
        .route(
            "/v1/assets/{id}",
            get(app::asset_status).delete(app::asset_delete),
        )
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
