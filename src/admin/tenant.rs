//! The [`Tenant`] extractor of the `/v1/tenants/{tenant}…` paths: the id
//! checked and the shard that holds the tenant found, once, for every
//! tenant handler.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::reply::{ApiError, ApiPath, check_tenant, erased};
use super::state::AdminState;
use crate::fleet::running::RunningShard;
use crate::proto::store::{TenantProjection, TenantState};
use crate::storage::Store;

/// The tenant a `/v1/tenants/{tenant}…` path names, its id checked, with
/// the shard this worker runs it on (503 `shard_unavailable`, with
/// `Retry-After`, when another worker owns it). Whether the tenant may be
/// served now is the handler's to ask ([`Tenant::served`],
/// [`Tenant::accessible`]): the audit and the erasure serve every state.
pub struct Tenant {
    /// The tenant id.
    pub id: String,
    /// Its shard.
    pub running: Arc<RunningShard>,
}

impl FromRequestParts<AdminState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AdminState) -> Result<Self, Self::Rejection> {
        #[derive(serde::Deserialize)]
        struct TenantPath {
            tenant: String,
        }
        let ApiPath(TenantPath { tenant }) = ApiPath::from_request_parts(parts, app).await?;
        check_tenant(&tenant)?;
        let running = app.owner_of(&tenant)?;
        Ok(Self { id: tenant, running })
    }
}

impl Tenant {
    /// Its shard's store.
    pub fn store(&self) -> &Store {
        &self.running.shard.store
    }

    /// 410 `tenant_erased` once the tenant was erased: nothing of it is
    /// served again.
    pub fn served(&self) -> Result<&Self, ApiError> {
        match self.store().tenant(&self.id).filter(|p| p.state() == TenantState::Erased) {
            Some(_) => Err(erased(&self.id)),
            None => Ok(self),
        }
    }

    /// As [`Self::served`], and 423 `tenant_locked_down` while its key is
    /// unavailable: every access to its data is refused until the key
    /// works again.
    pub fn accessible(&self) -> Result<&Self, ApiError> {
        self.served()?;
        match self.store().tenant(&self.id).filter(|p| p.state() == TenantState::LockedDown) {
            Some(p) => Err(ApiError::new(
                StatusCode::LOCKED,
                "tenant_locked_down",
                format!(
                    "the tenant is locked down because its key is unavailable ({}); access returns as soon as the key works again",
                    p.health_reason
                ),
            )),
            None => Ok(self),
        }
    }

    /// Its projection, or 404 `tenant_not_found`.
    pub fn known(&self) -> Result<TenantProjection, ApiError> {
        self.store().tenant(&self.id).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "tenant_not_found",
                format!("no records or events for tenant {}", self.id),
            )
        })
    }
}
