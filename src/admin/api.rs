//! The admin HTTP API (paths fixed by DESIGN.md): health, readiness,
//! `/metrics`, the status page at `/`, tenant status, record reads and
//! on-demand sweeps. Every error is `{"error":{"code","message"}}`; with
//! `KEYSEAL_ADMIN_TOKEN` set, `/v1/*`, `/` and `/metrics` need
//! `Authorization: Bearer <token>` (compared in constant time); `/healthz`
//! and `/readyz` stay open for probes.

use std::sync::Arc;

use axum::extract::Query;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::admin::status_page;
use crate::byok::rewrapper::RewrapRequests;
use crate::byok::{self, EncryptionError};
use crate::clock::rfc3339;
use crate::config::Settings;
use crate::crypto::CryptoError;
use crate::error::ErrorCode;
use crate::events::projection::state_name;
use crate::events::replay;
use crate::health::policy::KeyHealthView;
use crate::health::prober::ProbeTimes;
use crate::ingest::consumer::Readiness;
use crate::ingest::validate::{is_valid_record_id, is_valid_tenant_id};
use crate::proto::store::TenantState;
use crate::records::{self, RecordError};
use crate::shard::Shard;
use crate::storage::StoreError;
use crate::sweeps::Sweeper;
use crate::telemetry::gauges;

/// What the admin API serves from: the shard, the sweeper and rewrapper it
/// may ask for work, and read-only views of the consumer's and prober's state.
#[derive(Clone)]
pub struct AdminState {
    /// The shard whose tenants it answers for.
    pub shard: Arc<Shard>,
    /// The worker's settings (token, grace, seal age).
    pub settings: Arc<Settings>,
    /// Runs sweeps on demand and serialises root changes with them.
    pub sweeper: Arc<Sweeper>,
    /// Asks the rewrapper to move a tenant's data keys.
    pub rewraps: RewrapRequests,
    /// Whether the ingest consumer is consuming.
    pub ready: Readiness,
    /// When each tenant's key was last probed.
    pub last_probes: Arc<ProbeTimes>,
}

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 << 10;

/// An API error: status, stable code, and a message saying what to fix.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        error!(code = e.code(), error = %e, "request failed");
        match e {
            RecordError::Crypto(CryptoError::Integrity { .. }) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.code(),
                "the stored record failed its integrity check; it was not returned",
            ),
            // The data key could not be had: the store, the managed root or
            // the tenant's vault; the code says which.
            other => Self::new(StatusCode::SERVICE_UNAVAILABLE, other.code(), other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        error!(code = e.code(), error = %e, "request failed");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
    }
}

/// Path parameters, extracted like axum's `Path` but refused with the
/// API's JSON error (`invalid_path`) instead of axum's plain text, e.g.
/// for a segment that is not UTF-8 once percent-decoded.
pub(crate) struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::new(rejection.status(), "invalid_path", rejection.body_text())),
        }
    }
}

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

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, app: AdminState, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(app)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// The routes, for serving and for in-process tests.
pub fn router(app: AdminState) -> Router {
    let v1 = Router::new()
        .route("/tenants/{tenant}", get(tenant_status))
        .route("/tenants/{tenant}/records/{record_id}", get(read_record))
        .route("/tenants/{tenant}/encryption", put(enable_encryption).delete(disable_encryption))
        .route("/sweeps", post(sweep))
        .route("/sweeps/progress", get(sweep_progress))
        .route("/admin/replay", post(replay));
    // The views show tenant ids, states and key health: with a token set
    // they need it like `/v1/*`. Only the probes stay open.
    let guarded = Router::new()
        .route("/", get(status_html))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this path does not take that method")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

async fn require_token(
    State(app): State<AdminState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &app.settings.admin_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <KEYSEAL_ADMIN_TOKEN>",
            ));
        }
    }
    Ok(next.run(request).await)
}

async fn readyz(State(app): State<AdminState>) -> Result<Json<serde_json::Value>, ApiError> {
    if app.ready.is_ready() {
        Ok(Json(json!({"status": "ready"})))
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "not consuming from RabbitMQ yet"))
    }
}

async fn metrics(State(app): State<AdminState>) -> Response {
    if let Err(e) = gauges::refresh(&app.shard.store, app.shard.now_ms(), app.settings.seal_after) {
        error!(error = %e, "refreshing gauges");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::metrics::handle().render())
        .into_response()
}

/// `GET /`: the status page. Like `/metrics`, it needs the bearer token
/// when one is set: it shows what `/metrics` exposes (tenant ids, states,
/// key health, record counts, seal lag) plus the health reason, key version
/// and state times of each tenant; never a payload, a key or a key URI.
async fn status_html(State(app): State<AdminState>) -> Result<Response, ApiError> {
    let snapshot = status_page::snapshot(&app.shard, &app.ready, &app.settings)?;
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        status_page::render(&snapshot),
    )
        .into_response())
}

fn check_tenant(tenant: &str) -> Result<(), ApiError> {
    if is_valid_tenant_id(tenant) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_tenant_id", "tenant ids match [a-z0-9][a-z0-9-]{0,62}"))
    }
}

async fn tenant_status(
    State(app): State<AdminState>,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_tenant(&tenant)?;
    let projection = app.shard.store.tenant(&tenant).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "tenant_not_found", format!("no records or events for tenant {tenant}"))
    })?;
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
    let data_keys = app
        .shard
        .keyring
        .data_key_census(&tenant)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string()))?;
    Ok(Json(json!({
        "tenant": tenant,
        "state": state_name(projection.state()),
        "stateSince": (projection.state_since_unix_ms > 0).then(|| rfc3339(projection.state_since_unix_ms)),
        "encryption": encryption,
        "records": {"hot": projection.hot_records, "sealed": projection.sealed_records},
        "dataKeys": data_keys,
        "keyHealth": {
            "status": health.status(),
            "since": health.since_ms.map(rfc3339),
            "reason": health.reason,
            "lastProbe": app.last_probes.last(&tenant).map(rfc3339),
            "lockdownAt": health.lockdown_at_ms.map(rfc3339),
        },
    })))
}

async fn read_record(
    State(app): State<AdminState>,
    ApiPath((tenant, record_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    check_tenant(&tenant)?;
    if !is_valid_record_id(&record_id) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_record_id", "record ids are 1..=128 bytes"));
    }
    if let Some(p) = app.shard.store.tenant(&tenant).filter(|p| p.state() == TenantState::LockedDown) {
        return Err(ApiError::new(
            StatusCode::LOCKED,
            "tenant_locked_down",
            format!(
                "the tenant is locked down because its key is unavailable ({}); access returns as soon as the key works again",
                p.health_reason
            ),
        ));
    }
    let (_, content) = records::read(&app.shard.store, &app.shard.keyring, &tenant, &record_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "record_not_found", "no such record for this tenant"))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], content.payload).into_response())
}

/// Body of `PUT /v1/tenants/{tenant}/encryption`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnableRequest {
    key_uri: String,
}

impl From<EncryptionError> for ApiError {
    fn from(e: EncryptionError) -> Self {
        let status = match &e {
            // 400 for a malformed request, 422 for a well-formed one naming an unusable key.
            EncryptionError::Refused(refusal) if refusal.is_malformed_request() => StatusCode::BAD_REQUEST,
            EncryptionError::Refused(_) | EncryptionError::CustomerKeyUnusable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            EncryptionError::VaultNotConfigured(_) | EncryptionError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            EncryptionError::NotEnabled => StatusCode::CONFLICT,
            EncryptionError::LockedDown => StatusCode::LOCKED,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

async fn enable_encryption(
    State(app): State<AdminState>,
    ApiPath(tenant): ApiPath<String>,
    body: Result<Json<EnableRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_tenant(&tenant)?;
    let Json(request) = body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "invalid_json" };
        ApiError::new(status, code, e.body_text())
    })?;
    let rewrap = byok::enable(&app.shard, &app.sweeper, &app.rewraps, &tenant, &request.key_uri).await?;
    let Json(status) = tenant_status(State(app), ApiPath(tenant)).await?;
    Ok(Json(json!({"status": status, "rewrap": rewrap})))
}

async fn disable_encryption(
    State(app): State<AdminState>,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_tenant(&tenant)?;
    let rewrap = byok::disable(&app.shard, &app.sweeper, &tenant).await?;
    let Json(status) = tenant_status(State(app), ApiPath(tenant)).await?;
    Ok(Json(json!({"status": status, "rewrap": rewrap})))
}

async fn replay(State(app): State<AdminState>) -> Result<Json<serde_json::Value>, ApiError> {
    let report = replay::check(&app.shard.store)?;
    Ok(Json(serde_json::to_value(report).expect("a report serialises")))
}

/// `?kind=` of `POST /v1/sweeps`.
#[derive(Debug, serde::Deserialize)]
struct SweepQuery {
    kind: Option<String>,
}

/// Runs a sweep now: `seal` (the default), `reencrypt` or `scrub`.
async fn sweep(
    State(app): State<AdminState>,
    query: Result<Query<SweepQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let summary = match query.kind.as_deref().unwrap_or("seal") {
        "seal" => json!({"seal": app.sweeper.seal().await?}),
        "reencrypt" => json!({"reencrypt": app.sweeper.reencrypt().await?}),
        "scrub" => json!({"scrub": app.sweeper.scrub().await?}),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_sweep",
                "kind must be seal, reencrypt or scrub",
            ));
        }
    };
    Ok(Json(summary))
}

/// Where the running re-encryption sweep or scrub stands (`null` when none runs).
async fn sweep_progress(State(app): State<AdminState>) -> Json<serde_json::Value> {
    Json(json!({"running": app.sweeper.progress().snapshot()}))
}
