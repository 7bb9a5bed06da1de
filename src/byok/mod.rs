//! Bring your own key for a tenant: enabling (validate the key, record
//! `EncryptionEnabled`, have the [`rewrapper`] move sealed data keys under
//! it) and disabling (move them back under the managed key, then
//! `EncryptionDisabled`, all or nothing). Both wait for a sweep in progress
//! and hold the next back until they are done.

pub mod rewrapper;

use tracing::{info, warn};

use self::rewrapper::RewrapRequests;
use crate::audit::key_use::KeyUse;
use crate::crypto::keyring::{RewrapSummary, TenantRoot};
use crate::error::ErrorCode;
use crate::health::canary;
use crate::keyvault::KeyUri;
use crate::keyvault::validate::{KeyRefusal, validate};
use crate::proto::store::TenantState;
use crate::proto::v1::{EncryptionDisabled, EncryptionEnabled, KeyPurpose, event::Kind};
use crate::shard::Shard;
use crate::storage::{Scope, Scoped, StoreError};
use crate::sweeps::Sweeper;

/// Why enabling or disabling did not happen. Nothing changed in any case.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// The key failed a check.
    #[error(transparent)]
    Refused(#[from] KeyRefusal),
    /// No vault client could be built (credential missing).
    #[error("this worker has no Key Vault client: {0}")]
    VaultNotConfigured(String),
    /// Disable asked of a tenant on the managed key.
    #[error("the tenant does not use its own key")]
    NotEnabled,
    /// Enable or disable asked of a locked-down tenant: moving its data
    /// keys under another key, or back under the managed key, would hand
    /// back the access its customer withdrew by revoking the key. A
    /// lockdown is lifted only by the health of the key that caused it.
    #[error(
        "the tenant is locked down because its key is unavailable; its encryption cannot be changed (another key \
         enabled, or its own key disabled) until that key works again"
    )]
    LockedDown,
    /// The customer key cannot unwrap the sealed data keys.
    #[error("the customer key cannot be used to move data keys back to the managed key: {0}")]
    CustomerKeyUnusable(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates `key_uri`, records it as the tenant's root (the latest key
/// version) and rewraps the tenant's sealed data keys under it. If the
/// rewrap is interrupted it stays pending and the rewrapper resumes it.
/// Refused while the tenant is locked down.
pub async fn enable(
    shard: &Shard,
    sweeper: &Sweeper,
    rewraps: &RewrapRequests,
    tenant: &str,
    key_uri: &str,
) -> Result<RewrapSummary, EncryptionError> {
    let _exclusive = sweeper.exclusive().await;
    refuse_locked(shard, tenant)?;
    let vault = shard.keyring.vault().map_err(|e| EncryptionError::VaultNotConfigured(e.to_string()))?;
    let now_ms = shard.now_ms();
    let usage = KeyUse { store: &shard.store, tenant, data_key_id: b"", purpose: KeyPurpose::Validate };
    let canary = async |uri: &KeyUri, version: &str| canary::round_trip(vault, uri, version, usage).await;
    let (uri, key) = validate(vault, key_uri, now_ms / 1000, canary).await?;
    let enabled =
        Kind::EncryptionEnabled(EncryptionEnabled { key_uri: key_uri.to_owned(), key_version: key.version.clone() });
    // Decided under the commit lock: a lockdown committed while the key
    // was being validated still refuses it.
    let decided = shard
        .store
        .transaction()
        .commit_decided(&[tenant.to_owned()], now_ms, |current| {
            if current.state() == TenantState::LockedDown { Vec::new() } else { vec![enabled.clone()] }
        })
        .await?;
    if decided.is_empty() {
        return Err(EncryptionError::LockedDown);
    }
    info!(tenant, key = %uri, version = %key.version, "customer key enabled");
    match rewraps.rewrap(tenant).await {
        Some(Ok(summary)) => Ok(summary),
        Some(Err(e)) => {
            warn!(tenant, error = %e, "rewrap under the customer key interrupted; the rewrapper resumes it");
            Ok(RewrapSummary::default())
        }
        None => Ok(RewrapSummary::default()),
    }
}

/// [`EncryptionError::LockedDown`] while `tenant` is locked down.
fn refuse_locked(shard: &Shard, tenant: &str) -> Result<(), EncryptionError> {
    match shard.store.tenant(tenant) {
        Some(projection) if projection.state() == TenantState::LockedDown => Err(EncryptionError::LockedDown),
        _ => Ok(()),
    }
}

/// Moves every sealed data key of the tenant back under the managed key
/// and records `EncryptionDisabled`, in one batch. If the customer key
/// cannot unwrap them, or the tenant is locked down, fails and changes
/// nothing.
pub async fn disable(shard: &Shard, sweeper: &Sweeper, tenant: &str) -> Result<RewrapSummary, EncryptionError> {
    let _exclusive = sweeper.exclusive().await;
    let projection = shard.store.tenant(tenant).filter(|p| !p.key_uri.is_empty());
    let Some(projection) = projection else {
        return Err(EncryptionError::NotEnabled);
    };
    refuse_locked(shard, tenant)?;
    let now_ms = shard.now_ms();
    let closing = Kind::EncryptionDisabled(EncryptionDisabled { key_uri: projection.key_uri.clone() });
    let summary = shard.keyring.rewrap_all_or_nothing(tenant, &TenantRoot::Managed, now_ms, closing).await.map_err(
        |e| match e.scope() {
            Scope::Store(e) => EncryptionError::Store(e),
            Scope::Contained(e) => EncryptionError::CustomerKeyUnusable(e.to_string()),
        },
    )?;
    // Nothing unwrapped through the removed customer key stays in memory
    // (the tenant's keys only: other tenants keep theirs).
    shard.keyring.forget_tenant(tenant);
    info!(tenant, rewrapped = summary.rewrapped, "customer key disabled; data stays encrypted under managed keys");
    Ok(summary)
}

impl ErrorCode for EncryptionError {
    fn code(&self) -> &'static str {
        match self {
            Self::Refused(refusal) => refusal.code(),
            Self::VaultNotConfigured(_) => "vault_not_configured",
            Self::NotEnabled => "customer_key_not_enabled",
            Self::LockedDown => "tenant_locked_down",
            Self::CustomerKeyUnusable(_) => "customer_key_unusable",
            Self::Store(e) => e.code(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::Refused(refusal) => ErrorCode::is_retryable(refusal),
            Self::Store(e) => e.is_retryable(),
            Self::CustomerKeyUnusable(_) => true,
            Self::VaultNotConfigured(_) | Self::NotEnabled | Self::LockedDown => false,
        }
    }
}
