//! The shard-wide operations (fixed by DESIGN.md): sweeps on demand and
//! where they stand, and the replay check; each on the owned shards or the
//! one `?shard=` names (forwarded to its owner like a tenant path).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde_json::json;

use super::reply::{ApiError, ShardQuery, per_shard, query};
use super::state::AdminState;
use crate::events::replay;

/// `POST /v1/admin/replay`: rebuilds every projection from the log in
/// scratch memory and says whether it equals the live state, per shard.
pub async fn replay(
    State(app): State<AdminState>,
    shard: Result<Query<ShardQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut answers = Vec::new();
    for running in app.shards_named(query(shard)?.shard)? {
        let report = replay::check(&running.shard.store)?;
        answers.push((running.shard.id, serde_json::to_value(report).expect("a report serialises")));
    }
    Ok(Json(per_shard(answers)))
}

/// `?kind=&shard=` of `POST /v1/sweeps`.
#[derive(Debug, serde::Deserialize)]
pub struct SweepQuery {
    kind: Option<String>,
    shard: Option<u32>,
}

/// Runs a sweep now on the owned shards (or the one `?shard=` names):
/// `seal` (the default), `reencrypt`, `retention` or `scrub`.
pub async fn sweep(
    State(app): State<AdminState>,
    sweep: Result<Query<SweepQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sweep = query(sweep)?;
    let kind = sweep.kind.as_deref().unwrap_or("seal");
    if !["seal", "reencrypt", "retention", "scrub"].contains(&kind) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_sweep",
            "kind must be seal, reencrypt, retention or scrub",
        ));
    }
    let mut answers = Vec::new();
    for running in app.shards_named(sweep.shard)? {
        let sweeper = &running.sweeper;
        let summary = match kind {
            "seal" => json!({"seal": sweeper.seal().await?}),
            "reencrypt" => json!({"reencrypt": sweeper.reencrypt().await?}),
            "retention" => json!({"retention": sweeper.retention().await?}),
            _ => json!({"scrub": sweeper.scrub().await?}),
        };
        answers.push((running.shard.id, summary));
    }
    Ok(Json(per_shard(answers)))
}

/// Where the running re-encryption sweeps or scrubs stand, per owned shard
/// (`null` where none runs).
pub async fn sweep_progress(State(app): State<AdminState>) -> Json<serde_json::Value> {
    let answers = app
        .owned
        .all()
        .into_iter()
        .map(|(id, owned)| (id, json!({"running": owned.running.sweeper.progress().snapshot()})))
        .collect();
    Json(per_shard(answers))
}
