//! `GET /v1/shards` and the status page's shard table: each shard's owner,
//! since when, and its tenant count, asked of each owner over AMQP (this
//! worker answers for its own shards), plus the live workers.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::reply::{ApiError, ShardQuery, query};
use super::state::AdminState;
use crate::clock::rfc3339;
use crate::placement::ShardId;

/// Largest answer read from an owner (one shard's line is ~100 bytes).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// One shard's line: who owns it, since when, and how many tenants it
/// holds; all `None` while nobody owns it (or its owner does not answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardLine {
    /// The shard id.
    pub shard: u32,
    /// The owning worker's name (`hostname:pid`).
    pub owner: Option<String>,
    /// When the owner took the shard (RFC 3339).
    pub since: Option<String>,
    /// Tenants the shard holds.
    pub tenants: Option<u64>,
}

impl ShardLine {
    fn unowned(id: ShardId) -> Self {
        Self { shard: id.0, owner: None, since: None, tenants: None }
    }
}

/// `GET /v1/shards`: every shard's line and the live workers; `?shard=`
/// answers for one shard (what owners are asked).
pub async fn list_shards(
    State(app): State<AdminState>,
    shard: Result<Query<ShardQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let lines = match query(shard)?.shard {
        Some(id) => vec![shard_line(&app, app.existing_shard(id)?).await],
        None => shard_lines(&app).await,
    };
    Ok(Json(json!({"shards": lines, "workers": app.owned.workers()})))
}

/// Every shard's line, the owners asked concurrently.
pub async fn shard_lines(app: &AdminState) -> Vec<ShardLine> {
    futures_util::future::join_all((0..app.owned.count()).map(|id| shard_line(app, ShardId(id)))).await
}

/// One shard's line: from here when owned, else from its owner.
async fn shard_line(app: &AdminState, id: ShardId) -> ShardLine {
    if let Some((_, owned)) = app.owned.all().into_iter().find(|(owned, _)| *owned == id) {
        return ShardLine {
            shard: id.0,
            owner: Some(app.owned.worker().to_owned()),
            since: Some(rfc3339(owned.since_ms)),
            tenants: Some(owned.running.shard.store.tenant_count()),
        };
    }
    asked_of_owner(app, id).await.unwrap_or_else(|| ShardLine::unowned(id))
}

/// Shard `id`'s line as its owner reports it, if it answers in time.
async fn asked_of_owner(app: &AdminState, id: ShardId) -> Option<ShardLine> {
    let request = Request::get(format!("/v1/shards?shard={}", id.0)).body(axum::body::Body::empty()).ok()?;
    let answer = app.forwarder.forward(id, request).await.ok()?;
    if !answer.status().is_success() {
        return None;
    }
    let body = axum::body::to_bytes(answer.into_body(), MAX_ANSWER_BYTES).await.ok()?;
    #[derive(Deserialize)]
    struct Answer {
        shards: Vec<ShardLine>,
    }
    let line = serde_json::from_slice::<Answer>(&body).ok()?.shards.into_iter().next()?;
    // An owner answers for the shard it was asked about, or not at all.
    (line.shard == id.0).then_some(line)
}
