//! The admin HTTP API (paths fixed by DESIGN.md) and the operator's views.
//! Every error is `{"error":{"code","message"}}`; with `KEYSEAL_ADMIN_TOKEN`
//! set, `/v1/*`, `/` and `/metrics` need `Authorization: Bearer <token>`
//! (compared in constant time); `/healthz` and `/readyz` stay open for
//! probes.
//!
//! Layers, each importing only those listed before it: [`reply`] (errors,
//! extractors, checks), [`state`] (what the API serves from), the
//! [`tenant`] extractor, [`paging`];
//! the handlers by path ([`tenants_api`], [`records_api`],
//! [`retention_api`], [`audit_api`], [`shards_api`], [`sweeps_api`]), the
//! [`status_page`] and the other [`views`]; the [`middleware`] every
//! request passes; and the router here, which wires them.

pub mod audit_api;
pub mod middleware;
pub mod paging;
pub mod records_api;
pub mod reply;
pub mod retention_api;
pub mod shards_api;
pub mod state;
pub mod status_page;
pub mod sweeps_api;
pub mod tenant;
pub mod tenants_api;
pub mod views;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::middleware::{contain_panics, require_token, to_owner};
use self::reply::ApiError;
use self::state::AdminState;
use self::tenants_api::{disable_encryption, enable_encryption, erase_tenant, read_record, tenant_status};
use self::views::{metrics, readyz, status_html};
use crate::config::Settings;

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 << 10;

/// Binds the admin listener, refusing a non-loopback address unless an
/// admin token is configured.
pub async fn bind(settings: &Settings) -> anyhow::Result<TcpListener> {
    if !settings.http_addr.ip().is_loopback() && settings.admin_token.is_none() {
        anyhow::bail!(
            "refusing to serve the admin API on non-loopback {} without KEYSEAL_ADMIN_TOKEN; set a token or bind 127.0.0.1",
            settings.http_addr
        );
    }
    TcpListener::bind(settings.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the admin API to {}: {e}", settings.http_addr))
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// The routes, for serving and for in-process tests.
pub fn router(app: AdminState) -> Router {
    let v1 = Router::new()
        .route("/tenants/{tenant}", get(tenant_status).delete(erase_tenant))
        .route("/tenants/{tenant}/records", get(records_api::list_records))
        .route("/tenants/{tenant}/records/{record_id}", get(read_record).delete(records_api::delete_record))
        .route("/tenants/{tenant}/encryption", put(enable_encryption).delete(disable_encryption))
        .route("/tenants/{tenant}/retention", put(retention_api::set_retention).get(retention_api::retention))
        .route("/tenants/{tenant}/audit", get(audit_api::audit))
        .route("/shards", get(shards_api::list_shards))
        .route("/sweeps", post(sweeps_api::sweep))
        .route("/sweeps/progress", get(sweeps_api::sweep_progress))
        .route("/admin/replay", post(sweeps_api::replay));
    // The views show tenant ids, states and key health: with a token set
    // they need it like `/v1/*`. Only the probes stay open.
    let guarded = Router::new()
        .route("/", get(status_html))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), to_owner))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this path does not take that method")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost, so a panic anywhere below is one answer, not a dropped
        // connection or, for a forwarded request, a dead shard inbox.
        .layer(axum::middleware::from_fn(contain_panics))
        .with_state(app)
}
