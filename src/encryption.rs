//! Bring your own key for a tenant: enabling (validate the key, record
//! `EncryptionEnabled`, move sealed data keys under it), disabling (move them
//! back under the managed key, then `EncryptionDisabled`, all or nothing),
//! and deciding which tenants' keys are unusable right now so sealing holds
//! their records in `hot`. Rewraps an enable left unfinished are the
//! rewrapper's (`crate::rewrapper`).

use std::collections::BTreeSet;

use tracing::{info, warn};

use crate::crypto::keyring::{KeyringError, RewrapSummary, TenantRoot};
use crate::keyvault::validate::{KeyRefusal, check_key, validate};
use crate::proto::store::TenantState;
use crate::proto::v1::{EncryptionDisabled, EncryptionEnabled, event::Kind};
use crate::storage::StoreError;
use crate::worker::Services;

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
    /// Disable asked of a locked-down tenant: moving its data keys back
    /// under the managed key would hand back the access its customer
    /// withdrew by revoking the key.
    #[error(
        "the tenant is locked down because its key is unavailable; its own key cannot be disabled until the key works again"
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
pub async fn enable(services: &Services, tenant: &str, key_uri: &str) -> Result<RewrapSummary, EncryptionError> {
    let _exclusive = services.exclusive().await;
    let vault = services.keyring.vault().map_err(|e| EncryptionError::VaultNotConfigured(e.to_string()))?;
    let now_ms = services.clock.now_ms();
    let (uri, key) = validate(vault, key_uri, now_ms / 1000).await?;
    let mut txn = services.store.transaction();
    txn.event(
        tenant,
        Kind::EncryptionEnabled(EncryptionEnabled { key_uri: key_uri.to_owned(), key_version: key.version.clone() }),
    );
    txn.commit(now_ms)?;
    info!(tenant, key = %uri, version = %key.version, "customer key enabled");
    match services.keyring.rewrap_to_current_root(tenant, now_ms).await {
        Ok(summary) => Ok(summary),
        Err(e) => {
            warn!(tenant, error = %e, "rewrap under the customer key interrupted; the rewrapper resumes it");
            services.rewraps.wake();
            Ok(RewrapSummary::default())
        }
    }
}

/// Moves every sealed data key of the tenant back under the managed key
/// and records `EncryptionDisabled`, in one batch. If the customer key
/// cannot unwrap them, or the tenant is locked down, fails and changes
/// nothing.
pub async fn disable(services: &Services, tenant: &str) -> Result<RewrapSummary, EncryptionError> {
    let _exclusive = services.exclusive().await;
    let projection = services.store.tenant(tenant).filter(|p| !p.key_uri.is_empty());
    let Some(projection) = projection else {
        return Err(EncryptionError::NotEnabled);
    };
    if projection.state() == TenantState::LockedDown {
        return Err(EncryptionError::LockedDown);
    }
    let now_ms = services.clock.now_ms();
    let closing = Kind::EncryptionDisabled(EncryptionDisabled { key_uri: projection.key_uri.clone() });
    let summary = services.keyring.rewrap_all_or_nothing(tenant, &TenantRoot::Managed, now_ms, closing).await.map_err(
        |e| match e {
            KeyringError::Store(e) => EncryptionError::Store(e),
            other => EncryptionError::CustomerKeyUnusable(other.to_string()),
        },
    )?;
    // Nothing unwrapped through the removed customer key stays in memory
    // (the tenant's keys only: other tenants keep theirs).
    services.keyring.forget_tenant(tenant);
    info!(tenant, rewrapped = summary.rewrapped, "customer key disabled; data stays encrypted under managed keys");
    Ok(summary)
}

/// Tenants whose customer key cannot be used now (unreadable, disabled,
/// not active, expired, wrong type or operations): their records stay in
/// `hot` until it works again. One vault read per such tenant per sweep.
pub(crate) async fn unusable_customer_keys(services: &Services) -> BTreeSet<String> {
    let mut hold = BTreeSet::new();
    for (tenant, projection) in services.store.tenants() {
        if projection.key_uri.is_empty() {
            continue;
        }
        let usable = match services.keyring.tenant_root(&tenant) {
            Ok(TenantRoot::Vault { uri, version }) => match services.keyring.vault() {
                Ok(vault) => vault
                    .get_key(&uri, Some(&version))
                    .await
                    .map_err(KeyRefusal::from)
                    .and_then(|key| check_key(&key, services.clock.now_ms() / 1000)),
                Err(e) => Err(KeyRefusal::VaultUnreachable(e.to_string())),
            },
            Ok(TenantRoot::Managed) => Ok(()),
            Err(e) => Err(KeyRefusal::VaultUnreachable(e.to_string())),
        };
        if let Err(refusal) = usable {
            warn!(tenant, reason = refusal.code(), "customer key unusable; sealing held back");
            hold.insert(tenant);
        }
    }
    hold
}
