//! The layers every admin request passes through, outermost first: a
//! panic becomes a 500 answer ([`contain_panics`]); `/v1/*`, `/` and
//! `/metrics` need the bearer token when one is set ([`require_token`]);
//! a request about a tenant or shard another worker owns goes to that
//! owner ([`to_owner`]).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use subtle::ConstantTimeEq;
use tracing::error;

use super::reply::ApiError;
use super::state::AdminState;
use crate::config::Secret;
use crate::fleet::forward::{ForwardError, Forwarded};
use crate::ingest::validate::is_valid_tenant_id;
use crate::placement::ShardId;
use crate::telemetry::happenings::{Emit, RequestPanicked};

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
pub async fn to_owner(State(app): State<AdminState>, request: Request, next: Next) -> Response {
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

/// Refuses `/v1/*`, `/` and `/metrics` without the admin token (when one
/// is set), compared in constant time.
pub async fn require_token(
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
