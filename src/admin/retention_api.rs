//! `PUT|GET /v1/tenants/{tenant}/retention` (fixed by DESIGN.md): how long
//! a tenant's records are kept, by ingestion time. The setting is an event
//! (`RetentionSet`), so it replays and moves with the shard; the retention
//! sweep acts on it.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde_json::json;

use super::reply::{ApiError, json_body};
use super::state::AdminState;
use super::tenant::Tenant;
use crate::proto::store::TenantProjection;
use crate::proto::v1::{RetentionSet, event::Kind};
use crate::sweeps::retention::effective;

/// Body of `PUT /v1/tenants/{tenant}/retention`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionRequest {
    /// A humantime duration (`400d`, `90days`, `12h`); null: back to the default.
    max_age: Option<String>,
}

/// The shortest retention accepted: a shorter one is more likely a typo
/// (`400` read as seconds) than a policy.
const SHORTEST: Duration = Duration::from_secs(3600);

fn parse_max_age(max_age: &str) -> Result<Duration, ApiError> {
    let invalid = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_retention", why);
    let age = humantime::parse_duration(max_age)
        .map_err(|e| invalid(format!("maxAge must be a duration such as 400d or 12h ({e})")))?;
    if age < SHORTEST {
        return Err(invalid(format!("maxAge must be at least {}", humantime::format_duration(SHORTEST))));
    }
    Ok(age)
}

/// A retention as it was most likely written: whole days as `400d`, whole
/// hours as `12h` (humantime would say `1year 1month 4days 7h 26m 24s`),
/// anything else in humantime's words.
fn format(age: Option<Duration>) -> Option<String> {
    age.map(|age| match age.as_secs() {
        secs if secs % 86_400 == 0 => format!("{}d", secs / 86_400),
        secs if secs % 3600 == 0 && age.subsec_nanos() == 0 => format!("{}h", secs / 3600),
        _ => humantime::format_duration(age).to_string(),
    })
}

/// `{"tenant","maxAge","default","effective"}`: the tenant's own retention
/// (null: none set), the worker's default and the one that applies.
fn body(tenant: &str, projection: &TenantProjection, default: Option<Duration>) -> serde_json::Value {
    let own = (projection.retention_max_age_ms > 0).then(|| Duration::from_millis(projection.retention_max_age_ms));
    json!({
        "tenant": tenant,
        "maxAge": format(own),
        "default": format(default),
        "effective": format(effective(projection, default)),
    })
}

/// `GET /v1/tenants/{tenant}/retention`.
pub async fn retention(State(app): State<AdminState>, tenant: Tenant) -> Result<Json<serde_json::Value>, ApiError> {
    let projection = tenant.served()?.known()?;
    Ok(Json(body(&tenant.id, &projection, app.settings.default_retention)))
}

/// `PUT /v1/tenants/{tenant}/retention` with `{"maxAge":"400d"}`, or
/// `{"maxAge":null}` for the worker's default. A tenant may be given a
/// retention before its first record.
pub async fn set_retention(
    State(app): State<AdminState>,
    tenant: Tenant,
    request: Result<Json<RetentionRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request = json_body(request)?;
    let max_age = request.max_age.as_deref().map(parse_max_age).transpose()?;
    let shard = &tenant.served()?.running.shard;
    let max_age_ms = max_age.map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
    let mut txn = shard.store.transaction();
    txn.event(&tenant.id, Kind::RetentionSet(RetentionSet { max_age_ms }));
    txn.commit_durable(shard.now_ms()).await?;
    let projection = shard.store.tenant(&tenant.id).unwrap_or_default();
    Ok(Json(body(&tenant.id, &projection, app.settings.default_retention)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_is_a_duration_of_at_least_an_hour() {
        assert_eq!(parse_max_age("400d").unwrap(), Duration::from_secs(400 * 86_400));
        assert_eq!(parse_max_age("12h").unwrap(), Duration::from_secs(12 * 3600));
        for bad in ["forever", "400", "", "59m", "-1d"] {
            assert_eq!(parse_max_age(bad).unwrap_err().code(), "invalid_retention", "{bad}");
        }
        for (written, shown) in [("400d", "400d"), ("36h", "36h"), ("48h", "2d"), ("90m", "1h 30m")] {
            assert_eq!(format(Some(parse_max_age(written).unwrap())).as_deref(), Some(shown));
        }
    }
}
