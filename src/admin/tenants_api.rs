//! A tenant's own paths (fixed by DESIGN.md): its status, reading one of
//! its records, enabling and disabling its own key, and erasing it.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::warn;

use super::reply::{ApiError, ApiPath, check_record_id, json_body, query};
use super::state::AdminState;
use super::tenant::Tenant;
use crate::broker;
use crate::byok;
use crate::clock::rfc3339;
use crate::erasure::{self, ErasureError};
use crate::health::policy::KeyHealthView;
use crate::proto::names::state_name;
use crate::records;

/// `GET /v1/tenants/{tenant}`: its state, encryption, record counts, data
/// keys and key health.
pub async fn tenant_status(State(app): State<AdminState>, tenant: Tenant) -> Result<Json<serde_json::Value>, ApiError> {
    status_of(&app, &tenant).map(Json)
}

/// The status of a tenant that was not erased (410 if it was).
fn status_of(app: &AdminState, tenant: &Tenant) -> Result<serde_json::Value, ApiError> {
    let projection = tenant.served()?.known()?;
    let running = &tenant.running;
    let encryption = if projection.key_uri.is_empty() {
        json!({"mode": "managed", "keyUri": null, "keyVersion": null})
    } else {
        json!({
            "mode": "customer_key",
            "keyUri": projection.key_uri,
            "keyVersion": projection.key_version,
            "rewrapPending": projection.rewrap_pending,
        })
    };
    let health = KeyHealthView::of(&projection, app.settings.lockdown_after);
    let data_keys = running
        .shard
        .keyring
        .data_key_census(&tenant.id)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string()))?;
    let probes = running.last_probes();
    Ok(json!({
        "tenant": tenant.id,
        "shard": running.shard.id.0,
        "state": state_name(projection.state()),
        "stateSince": (projection.state_since_unix_ms > 0).then(|| rfc3339(projection.state_since_unix_ms)),
        "encryption": encryption,
        "records": {"hot": projection.hot_records, "sealed": projection.sealed_records},
        "dataKeys": data_keys,
        "keyHealth": {
            "status": health.status(),
            "since": health.since_ms.map(rfc3339),
            "reason": health.reason,
            "lastProbe": probes.last(&tenant.id).map(rfc3339),
            "lockdownAt": health.lockdown_at_ms.map(rfc3339),
            "expiresAt": probes.key_expires_at(&tenant.id).or(health.expiring_at_ms).map(rfc3339),
            "expiring": health.expiring_at_ms.is_some(),
        },
    }))
}

/// `?confirm=` of an erasure: the tenant id again.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseQuery {
    confirm: Option<String>,
}

/// `DELETE /v1/tenants/{tenant}?confirm={tenant}`: erases the tenant (see
/// [`erasure`]) and answers once its data is removed. It runs to its end
/// even if the client goes away; a locked-down tenant can be erased (its
/// key is not needed to destroy its data keys).
pub async fn erase_tenant(
    State(app): State<AdminState>,
    tenant: Tenant,
    confirm: Result<Query<EraseQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if query(confirm)?.confirm.as_deref() != Some(tenant.id.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "confirmation_required",
            format!("erasing destroys every record of the tenant for good: add ?confirm={}", tenant.id),
        ));
    }
    let Tenant { id, running } = tenant;
    let (erasing, broker) = (id.clone(), app.broker.clone());
    let summary = tokio::spawn(async move {
        let summary = erasure::erase(&running.shard, &running.sweeper, &erasing).await?;
        // Its late messages go to the intake again, and from there to the
        // dead-letter queue without their payload.
        if let Err(e) = broker::unbind_tenant(&broker, running.shard.id.0, &erasing).await {
            warn!(error = %e, "removing an erased tenant's route binding; its next late message removes it");
        }
        Ok::<_, ErasureError>(summary)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "erasure_failed", e.to_string()))??;
    let mut answer = serde_json::to_value(summary).expect("a summary serialises");
    answer["tenant"] = json!(id);
    answer["state"] = json!("erased");
    Ok(Json(answer))
}

/// The record id of a `…/records/{record_id}` path.
#[derive(Debug, serde::Deserialize)]
pub struct RecordPath {
    record_id: String,
}

impl RecordPath {
    /// The record id, or 400 `invalid_record_id`.
    pub fn checked(self) -> Result<String, ApiError> {
        check_record_id(&self.record_id)?;
        Ok(self.record_id)
    }
}

/// `GET /v1/tenants/{tenant}/records/{record_id}`: the payload bytes.
pub async fn read_record(tenant: Tenant, ApiPath(path): ApiPath<RecordPath>) -> Result<Response, ApiError> {
    let record_id = path.checked()?;
    let shard = &tenant.accessible()?.running.shard;
    let (_, content) = records::read(&shard.store, &shard.keyring, &tenant.id, &record_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "record_not_found", "no such record for this tenant"))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], content.payload).into_response())
}

/// Body of `PUT /v1/tenants/{tenant}/encryption`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnableRequest {
    key_uri: String,
}

/// `PUT /v1/tenants/{tenant}/encryption`: validates the key and makes it
/// the root of the tenant's sealed data; answers its status and the rewrap.
pub async fn enable_encryption(
    State(app): State<AdminState>,
    tenant: Tenant,
    body: Result<Json<EnableRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request = json_body(body)?;
    let running = &tenant.served()?.running;
    let rewrap = byok::enable(&running.shard, &running.sweeper, &running.rewraps, &tenant.id, &request.key_uri).await?;
    Ok(Json(json!({"status": status_of(&app, &tenant)?, "rewrap": rewrap})))
}

/// `DELETE /v1/tenants/{tenant}/encryption`: the tenant's sealed data keys
/// go back under the managed key; answers its status and the rewrap.
pub async fn disable_encryption(
    State(app): State<AdminState>,
    tenant: Tenant,
) -> Result<Json<serde_json::Value>, ApiError> {
    let running = &tenant.served()?.running;
    let rewrap = byok::disable(&running.shard, &running.sweeper, &tenant.id).await?;
    Ok(Json(json!({"status": status_of(&app, &tenant)?, "rewrap": rewrap})))
}
