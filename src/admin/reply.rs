//! What every admin handler answers with and reads requests through: the
//! API's error ([`ApiError`], always `{"error":{"code","message"}}`), the
//! extractors that refuse bad input with it ([`ApiPath`], [`json_body`],
//! [`query`]) and the checks of tenant and record ids.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

use crate::byok::EncryptionError;
use crate::crypto::CryptoError;
use crate::erasure::ErasureError;
use crate::error::ErrorCode;
use crate::ingest::validate::{is_valid_record_id, is_valid_tenant_id};
use crate::placement::ShardId;
use crate::records::RecordError;
use crate::storage::StoreError;

/// An API error: status, stable code, and a message saying what to fix.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    /// The stable code, for tests of the handlers' parsing.
    #[cfg(test)]
    pub(super) fn code(&self) -> &'static str {
        self.code
    }

    /// Adds `Retry-After` (whole seconds, at least 1).
    pub(crate) fn retry_after(mut self, after: Duration) -> Self {
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

/// Path parameters, extracted like axum's `Path` but refused with the
/// API's JSON error (`invalid_path`) instead of axum's plain text, e.g.
/// for a segment that is not UTF-8 once percent-decoded.
pub struct ApiPath<T>(pub T);

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

/// A record id of a path, or 400 `invalid_record_id`.
pub fn check_record_id(record_id: &str) -> Result<(), ApiError> {
    if is_valid_record_id(record_id) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_record_id", "record ids are 1..=128 bytes"))
    }
}

/// A tenant id of a path, or 400 `invalid_tenant_id`.
pub fn check_tenant(tenant: &str) -> Result<(), ApiError> {
    if is_valid_tenant_id(tenant) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_tenant_id", "tenant ids match [a-z0-9][a-z0-9-]{0,62}"))
    }
}

/// `?shard=` of the per-shard operations: one owned shard, or all of them.
#[derive(Debug, serde::Deserialize)]
pub struct ShardQuery {
    /// The shard, or every owned one when absent.
    pub shard: Option<u32>,
}

/// A JSON request body, or the API's error for one that is not JSON (400),
/// of the wrong shape (422) or too large (413).
pub fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(body)| body).map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "invalid_json" };
        ApiError::new(status, code, e.body_text())
    })
}

/// A query string of the shape `T`, or 400 `invalid_query`.
pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
}

/// One JSON answer per shard: the single shard's answer with its `shard`
/// added, or `{"shards":[…]}` for several.
pub fn per_shard(answers: Vec<(ShardId, serde_json::Value)>) -> serde_json::Value {
    let mut answers: Vec<serde_json::Value> = answers
        .into_iter()
        .map(|(id, mut answer)| {
            answer["shard"] = json!(id.0);
            answer
        })
        .collect();
    if answers.len() == 1 { answers.remove(0) } else { json!({"shards": answers}) }
}

/// The 410 of an erased tenant.
pub fn erased(tenant: &str) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "tenant_erased",
        format!("tenant {tenant} was erased: its data keys were destroyed and its records removed"),
    )
}
