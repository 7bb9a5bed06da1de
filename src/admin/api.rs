//! The admin HTTP API (paths fixed by DESIGN.md): health, readiness,
//! `/metrics`, the status page at `/`, tenant status, record reads (the
//! listing and deletion are [`super::records_api`]'s) and on-demand sweeps. Every error is `{"error":{"code","message"}}`; with
//! `KEYSEAL_ADMIN_TOKEN` set, `/v1/*`, `/` and `/metrics` need
//! `Authorization: Bearer <token>` (compared in constant time); `/healthz`
//! and `/readyz` stay open for probes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::FutureExt;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::admin::{audit_api, records_api, retention_api, shards_api, status_page};
use crate::broker;
use crate::byok::{self, EncryptionError};
use crate::clock::{SharedClock, rfc3339};
use crate::config::{Secret, Settings};
use crate::crypto::CryptoError;
use crate::erasure::{self, ErasureError};
use crate::error::ErrorCode;
use crate::events::projection::state_name;
use crate::events::replay;
use crate::health::policy::KeyHealthView;
use crate::ingest::consumer::Readiness;
use crate::ingest::validate::{is_valid_record_id, is_valid_tenant_id};
use crate::proto::store::{TenantProjection, TenantState};
use crate::records::{self, RecordError};
use crate::shard::{Shard, ShardId};
use crate::shards::forward::{ForwardError, Forwarded, Forwarder};
use crate::shards::owned::OwnedShards;
use crate::shards::running::RunningShard;
use crate::storage::{Store, StoreError};
use crate::telemetry::gauges;
use crate::telemetry::happenings::{Emit, RequestPanicked};

/// What the admin API serves from: the shards the worker owns (each with
/// its sweeper, rewrapper and read-only views of its consumer and prober)
/// and whether the worker's own broker tasks are up.
#[derive(Clone)]
pub struct AdminState {
    /// The shards whose tenants it answers for.
    pub owned: Arc<OwnedShards>,
    /// The worker's settings (token, grace, seal age).
    pub settings: Arc<Settings>,
    /// The worker's clock (for views that span shards).
    pub clock: SharedClock,
    /// Whether the lease connection is up.
    pub leased: Readiness,
    /// Whether the intake forwarder consumes.
    pub intake: Readiness,
    /// Sends requests for shards other workers own to their owners.
    pub forwarder: Arc<Forwarder>,
}

impl AdminState {
    /// The running shard of `tenant`, or 503 `shard_unavailable` when this
    /// worker does not own it (it may be moving: ask again shortly); 410
    /// `tenant_erased` for a tenant that was erased.
    pub(super) fn shard_for(&self, tenant: &str) -> Result<Arc<RunningShard>, ApiError> {
        let running = self.owner_of(tenant)?;
        refuse_erased(&running.shard.store, tenant)?;
        Ok(running)
    }

    /// The running shard of `tenant` whatever the tenant's state (for the
    /// audit, which outlives an erasure, and for the erasure itself), or
    /// 503 as [`Self::shard_for`].
    pub(super) fn owner_of(&self, tenant: &str) -> Result<Arc<RunningShard>, ApiError> {
        self.owned.for_tenant(tenant).map_err(|shard| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shard_unavailable",
                format!("tenant {tenant} lives on shard {shard}, which this worker does not own right now"),
            )
            .retry_after(self.settings.rebalance_interval)
        })
    }

    /// The running shard of `tenant` when the tenant's data may be accessed
    /// now: 503 as [`Self::shard_for`], 423 while it is locked down.
    pub(super) fn accessible_shard(&self, tenant: &str) -> Result<Arc<RunningShard>, ApiError> {
        let running = self.shard_for(tenant)?;
        refuse_locked(&running.shard.store, tenant)?;
        Ok(running)
    }

    /// Shard `id` of a `?shard=` query, when the deployment has it (else 400).
    pub(super) fn existing_shard(&self, id: u32) -> Result<ShardId, ApiError> {
        let count = self.owned.count();
        if id < count {
            return Ok(ShardId(id));
        }
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("shard {id} does not exist: the deployment has {count} (0 to {})", count - 1),
        ))
    }

    /// The owned shards a `?shard=` query names: that one (400 when the
    /// deployment has no such shard, 503 when not owned), or all of them.
    fn shards_named(&self, shard: Option<u32>) -> Result<Vec<Arc<RunningShard>>, ApiError> {
        match shard {
            Some(id) => self.owned.get(self.existing_shard(id)?).map(|running| vec![running]).ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shard_unavailable",
                    format!("this worker does not own shard {id}"),
                )
                .retry_after(self.settings.rebalance_interval)
            }),
            None => Ok(self.owned.all().into_iter().map(|(_, owned)| owned.running).collect()),
        }
    }
}

/// One JSON answer per shard: the single shard's answer with its `shard`
/// added, or `{"shards":[…]}` for several.
fn per_shard(answers: Vec<(ShardId, serde_json::Value)>) -> serde_json::Value {
    let mut answers: Vec<serde_json::Value> = answers
        .into_iter()
        .map(|(id, mut answer)| {
            answer["shard"] = json!(id.0);
            answer
        })
        .collect();
    if answers.len() == 1 { answers.remove(0) } else { json!({"shards": answers}) }
}

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 << 10;

/// An API error: status, stable code, and a message saying what to fix.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    /// The stable code, for tests of the handlers' parsing.
    #[cfg(test)]
    pub(super) fn code(&self) -> &'static str {
        self.code
    }

    /// Adds `Retry-After` (whole seconds, at least 1).
    fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, after.as_secs().max(1).into());
        }
        response
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
        if let StoreError::TenantErased(tenant) = &e {
            return erased(tenant);
        }
        error!(code = e.code(), error = %e, "request failed");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
    }
}

impl From<ErasureError> for ApiError {
    fn from(e: ErasureError) -> Self {
        match e {
            ErasureError::UnknownTenant => Self::new(StatusCode::NOT_FOUND, "tenant_not_found", e.to_string()),
            ErasureError::AlreadyErased => Self::new(StatusCode::GONE, "tenant_erased", e.to_string()),
            ErasureError::Keyring(e) => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string()),
            ErasureError::Store(e) => e.into(),
        }
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
        .route("/sweeps", post(sweep))
        .route("/sweeps/progress", get(sweep_progress))
        .route("/admin/replay", post(replay));
    // The views show tenant ids, states and key health: with a token set
    // they need it like `/v1/*`. Only the probes stay open.
    let guarded = Router::new()
        .route("/", get(status_html))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .route_layer(middleware::from_fn_with_state(app.clone(), to_owner))
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
        // Outermost, so a panic anywhere below is one answer, not a dropped
        // connection or, for a forwarded request, a dead shard inbox.
        .layer(middleware::from_fn(contain_panics))
        .with_state(app)
}

/// Serves `request`; a panic while doing so is answered 500 `internal_error`
/// (JSON, nothing of the panic's text) and counted and logged. The admin
/// router's outermost layer, so a shard's inbox of forwarded requests
/// survives a handler bug too.
pub async fn contain_panics(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let forwarded = request.extensions().get::<Forwarded>().is_some();
    match std::panic::AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            RequestPanicked { path: &path, forwarded }.emit();
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "serving this request failed unexpectedly; it was logged",
            )
            .into_response()
        }
    }
}

/// Sends a request about a tenant (or a `?shard=`) whose shard another
/// worker owns to that owner and relays its answer; serves the rest here.
async fn to_owner(State(app): State<AdminState>, request: Request, next: Next) -> Response {
    if request.extensions().get::<Forwarded>().is_some() {
        return next.run(request).await;
    }
    let Some(shard) = target_shard(request.uri()).map(|target| match target {
        Target::Tenant(tenant) => app.owned.shard_of(&tenant),
        Target::Shard(shard) => ShardId(shard),
    }) else {
        return next.run(request).await;
    };
    if shard.0 >= app.owned.count() || app.owned.get(shard).is_some() {
        return next.run(request).await;
    }
    match app.forwarder.forward(shard, request).await {
        Ok(answer) => answer,
        Err(e @ ForwardError::Timeout { .. }) => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "owner_timeout", e.to_string()).into_response()
        }
        Err(ForwardError::Unforwardable(e)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e).into_response()
        }
        Err(ForwardError::ForgedAnswer(refusal)) => {
            error!(%shard, "an answer for a forwarded request was not signed by this deployment; refused");
            ApiError::new(refusal.status, refusal.code, refusal.message).into_response()
        }
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shard_unavailable", e.to_string())
            .retry_after(app.settings.rebalance_interval)
            .into_response(),
    }
}

/// What a `/v1` request is about, for routing it to a shard.
enum Target {
    Tenant(String),
    Shard(u32),
}

/// `/v1/tenants/{tenant}…` names a tenant (a valid id as sent: one that
/// only decodes to a valid id is served here, where its shard's absence
/// gets a 503); any other `/v1` path may name a shard with `?shard=`.
fn target_shard(uri: &axum::http::Uri) -> Option<Target> {
    let mut segments = uri.path().split('/').skip(1);
    if segments.next() != Some("v1") {
        return None;
    }
    if segments.next() == Some("tenants") {
        let tenant = segments.next()?;
        return is_valid_tenant_id(tenant).then(|| Target::Tenant(tenant.to_owned()));
    }
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(key, _)| key == "shard")
        .and_then(|(_, value)| value.parse().ok())
        .map(Target::Shard)
}

async fn require_token(
    State(app): State<AdminState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // A forwarded request was signed by a worker of the deployment, which
    // checked the token where the request arrived.
    if request.extensions().get::<Forwarded>().is_some() {
        return Ok(next.run(request).await);
    }
    if let Some(expected) = app.settings.admin_token.as_ref().map(Secret::expose) {
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

/// Ready when the worker holds its lease connection, forwards the intake,
/// owns every shard it is pinned to (`--own-shards`) and every shard it
/// owns consumes. A balancing worker with no shard is ready: a standby.
fn is_ready(app: &AdminState) -> bool {
    let owned = app.owned.all();
    let pinned_owned = app
        .settings
        .own_shards
        .as_ref()
        .is_none_or(|pinned| pinned.0.iter().all(|&id| owned.iter().any(|(owned, _)| owned.0 == id)));
    app.leased.is_ready()
        && app.intake.is_ready()
        && pinned_owned
        && owned.iter().all(|(_, owned)| owned.running.ready.is_ready())
}

async fn readyz(State(app): State<AdminState>) -> Result<Json<serde_json::Value>, ApiError> {
    if is_ready(&app) {
        Ok(Json(json!({"status": "ready", "shards": app.owned.ids().iter().map(|id| id.0).collect::<Vec<_>>()})))
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "not consuming from RabbitMQ yet"))
    }
}

async fn metrics(State(app): State<AdminState>) -> Response {
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
async fn status_html(State(app): State<AdminState>) -> Result<Response, ApiError> {
    let shards: Vec<Arc<Shard>> = app.owned.all().into_iter().map(|(_, owned)| owned.running.shard.clone()).collect();
    let deployment = shards_api::shard_lines(&app).await;
    let snapshot = status_page::snapshot(&shards, deployment, app.clock.now_ms(), is_ready(&app), &app.settings)?;
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        status_page::render(&snapshot),
    )
        .into_response())
}

pub(super) fn check_tenant(tenant: &str) -> Result<(), ApiError> {
    if is_valid_tenant_id(tenant) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_tenant_id", "tenant ids match [a-z0-9][a-z0-9-]{0,62}"))
    }
}

pub(super) fn check_record_id(record_id: &str) -> Result<(), ApiError> {
    if is_valid_record_id(record_id) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_record_id", "record ids are 1..=128 bytes"))
    }
}

/// The projection of `tenant`, or 404 `tenant_not_found`.
pub(super) fn known_tenant(store: &Store, tenant: &str) -> Result<TenantProjection, ApiError> {
    store.tenant(tenant).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "tenant_not_found", format!("no records or events for tenant {tenant}"))
    })
}

/// 410 for a tenant that was erased: nothing of it is served again.
fn refuse_erased(store: &Store, tenant: &str) -> Result<(), ApiError> {
    match store.tenant(tenant).filter(|p| p.state() == TenantState::Erased) {
        Some(_) => Err(erased(tenant)),
        None => Ok(()),
    }
}

fn erased(tenant: &str) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "tenant_erased",
        format!("tenant {tenant} was erased: its data keys were destroyed and its records removed"),
    )
}

/// 423 while `tenant` is locked down: every access to its data is refused
/// until its key works again.
fn refuse_locked(store: &Store, tenant: &str) -> Result<(), ApiError> {
    match store.tenant(tenant).filter(|p| p.state() == TenantState::LockedDown) {
        Some(p) => Err(ApiError::new(
            StatusCode::LOCKED,
            "tenant_locked_down",
            format!(
                "the tenant is locked down because its key is unavailable ({}); access returns as soon as the key works again",
                p.health_reason
            ),
        )),
        None => Ok(()),
    }
}

async fn tenant_status(
    State(app): State<AdminState>,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_tenant(&tenant)?;
    let running = app.shard_for(&tenant)?;
    let projection = known_tenant(&running.shard.store, &tenant)?;
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
        .data_key_census(&tenant)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string()))?;
    Ok(Json(json!({
        "tenant": tenant,
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
            "lastProbe": running.last_probes().last(&tenant).map(rfc3339),
            "lockdownAt": health.lockdown_at_ms.map(rfc3339),
            "expiresAt": running.last_probes().key_expires_at(&tenant).or(health.expiring_at_ms).map(rfc3339),
            "expiring": health.expiring_at_ms.is_some(),
        },
    })))
}

/// `?confirm=` of an erasure: the tenant id again.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseQuery {
    confirm: Option<String>,
}

/// `DELETE /v1/tenants/{tenant}?confirm={tenant}`: erases the tenant (see
/// [`erasure`]) and answers once its data is removed. It runs to its end
/// even if the client goes away; a locked-down tenant can be erased (its
/// key is not needed to destroy its data keys).
async fn erase_tenant(
    State(app): State<AdminState>,
    ApiPath(tenant): ApiPath<String>,
    confirm: Result<Query<EraseQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_tenant(&tenant)?;
    if query(confirm)?.confirm.as_deref() != Some(tenant.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "confirmation_required",
            format!("erasing destroys every record of the tenant for good: add ?confirm={tenant}"),
        ));
    }
    let running = app.owner_of(&tenant)?;
    let (erasing, amqp_url) = (tenant.clone(), app.settings.amqp_url.clone());
    let summary = tokio::spawn(async move {
        let summary = erasure::erase(&running.shard, &running.sweeper, &erasing).await?;
        // Its late messages go to the intake again, and from there to the
        // dead-letter queue without their payload.
        if let Err(e) = broker::unbind_tenant(&amqp_url, running.shard.id.0, &erasing).await {
            warn!(error = %e, "removing an erased tenant's route binding; its next late message removes it");
        }
        Ok::<_, ErasureError>(summary)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "erasure_failed", e.to_string()))??;
    let mut answer = serde_json::to_value(summary).expect("a summary serialises");
    answer["tenant"] = json!(tenant);
    answer["state"] = json!("erased");
    Ok(Json(answer))
}

async fn read_record(
    State(app): State<AdminState>,
    ApiPath((tenant, record_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    check_tenant(&tenant)?;
    check_record_id(&record_id)?;
    let running = app.accessible_shard(&tenant)?;
    let shard = &running.shard;
    let (_, content) = records::read(&shard.store, &shard.keyring, &tenant, &record_id)
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
    let request = json_body(body)?;
    let running = app.shard_for(&tenant)?;
    let rewrap = byok::enable(&running.shard, &running.sweeper, &running.rewraps, &tenant, &request.key_uri).await?;
    let Json(status) = tenant_status(State(app), ApiPath(tenant)).await?;
    Ok(Json(json!({"status": status, "rewrap": rewrap})))
}

async fn disable_encryption(
    State(app): State<AdminState>,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_tenant(&tenant)?;
    let running = app.shard_for(&tenant)?;
    let rewrap = byok::disable(&running.shard, &running.sweeper, &tenant).await?;
    let Json(status) = tenant_status(State(app), ApiPath(tenant)).await?;
    Ok(Json(json!({"status": status, "rewrap": rewrap})))
}

/// `?shard=` of the per-shard operations: one owned shard, or all of them.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ShardQuery {
    pub(super) shard: Option<u32>,
}

/// A JSON request body, or the API's error for one that is not JSON (400),
/// of the wrong shape (422) or too large (413).
pub(super) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(body)| body).map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "invalid_json" };
        ApiError::new(status, code, e.body_text())
    })
}

pub(super) fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
}

async fn replay(
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
struct SweepQuery {
    kind: Option<String>,
    shard: Option<u32>,
}

/// Runs a sweep now on the owned shards (or the one `?shard=` names):
/// `seal` (the default), `reencrypt`, `retention` or `scrub`.
async fn sweep(
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
async fn sweep_progress(State(app): State<AdminState>) -> Json<serde_json::Value> {
    let answers = app
        .owned
        .all()
        .into_iter()
        .map(|(id, owned)| (id, json!({"running": owned.running.sweeper.progress().snapshot()})))
        .collect();
    Json(per_shard(answers))
}
