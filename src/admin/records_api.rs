//! The data owner's record paths (fixed by DESIGN.md, "Data lifecycle and
//! audit"): `GET /v1/tenants/{t}/records` lists metadata page by page from
//! the listing index, never decrypting; `DELETE …/records/{id}` deletes one.

use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, extract::Query};
use serde_json::json;

use super::paging::{PageQuery, cursor, record_id_of, split_page};
use super::reply::{ApiError, ApiPath, query};
use super::state::AdminState;
use super::tenant::Tenant;
use super::tenants_api::RecordPath;
use crate::clock::rfc3339;
use crate::proto::v1::Layer;
use crate::records;
use crate::telemetry::metrics as m;

/// `GET /v1/tenants/{tenant}/records`: `{"records":[…],"next"}`, metadata
/// only, in ingestion order; `next` is null on the last page.
pub async fn list_records(
    tenant: Tenant,
    listing: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (range, limit) = query(listing)?.parse(record_id_of)?;
    tenant.accessible()?.known()?;
    let listed = tenant.store().list_records(&tenant.id, &range, limit + 1)?;
    let (page, next) = split_page(listed, limit, |last| cursor(last.ingested_at_ms, last.record_id.as_bytes()));
    let records: Vec<_> = page
        .iter()
        .map(|listed| {
            json!({
                "recordId": listed.record_id,
                "observedAt": listed.entry.observed_at_unix_ms.map(rfc3339),
                "ingestedAt": rfc3339(listed.ingested_at_ms),
                "layer": if listed.layer == Layer::Hot { "hot" } else { "sealed" },
                "size": listed.entry.size,
            })
        })
        .collect();
    Ok(Json(json!({"records": records, "next": next})))
}

/// `DELETE /v1/tenants/{tenant}/records/{record_id}`: 204 once the deletion
/// and its tombstone are durable.
pub async fn delete_record(
    State(app): State<AdminState>,
    tenant: Tenant,
    ApiPath(path): ApiPath<RecordPath>,
) -> Result<Response, ApiError> {
    let record_id = path.checked()?;
    let shard = &tenant.accessible()?.running.shard;
    match records::delete(&shard.store, &tenant.id, &record_id, shard.now_ms(), app.settings.tombstone_ttl).await? {
        Some(_) => {
            m::records_deleted("request", 1);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "record_not_found", "no such record for this tenant")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_cursor_carries_a_valid_record_id() {
        assert_eq!(record_id_of(b"r/1"), Some("r/1".to_owned()));
        assert_eq!(record_id_of(b""), None, "no empty id");
        assert_eq!(record_id_of(b"\xff"), None, "UTF-8 only");
    }
}
