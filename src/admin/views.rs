//! What an operator and an orchestrator look at besides the API: the
//! readiness probe, `/metrics` and the status page.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

use super::reply::ApiError;
use super::state::AdminState;
use super::{shards_api, status_page};
use crate::shard::Shard;
use crate::telemetry::gauges;

/// `GET /readyz`: 200 once the worker consumes (see [`AdminState::is_ready`]),
/// with the shards it owns and the broker node holding their leases; else 503.
pub async fn readyz(State(app): State<AdminState>) -> Result<Json<serde_json::Value>, ApiError> {
    if app.is_ready() {
        let shards: Vec<u32> = app.owned.ids().iter().map(|id| id.0).collect();
        Ok(Json(json!({"status": "ready", "shards": shards, "brokerNode": app.owned.broker_node()})))
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "not consuming from RabbitMQ yet"))
    }
}

/// `GET /metrics`: the Prometheus text, the shards' gauges refreshed first.
pub async fn metrics(State(app): State<AdminState>) -> Response {
    for (_, owned) in app.owned.all() {
        if let Err(e) = gauges::refresh(&owned.running.shard, app.settings.seal_after) {
            error!(shard = %owned.running.shard.id, error = %e, "refreshing gauges");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::metrics::handle().render())
        .into_response()
}

/// `GET /`: the status page. Like `/metrics`, it needs the bearer token
/// when one is set: it shows what `/metrics` exposes (tenant ids, states,
/// key health, record counts, seal lag) plus the health reason, key version
/// and state times of each tenant; never a payload, a key or a key URI.
pub async fn status_html(State(app): State<AdminState>) -> Result<Response, ApiError> {
    let shards: Vec<Arc<Shard>> = app.owned.all().into_iter().map(|(_, owned)| owned.running.shard.clone()).collect();
    let deployment = shards_api::shard_lines(&app).await;
    let snapshot = status_page::snapshot(&shards, deployment, app.clock.now_ms(), app.is_ready(), &app.settings)?;
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        status_page::render(&snapshot),
    )
        .into_response())
}
