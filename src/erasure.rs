//! Erasing a tenant that leaves (`DELETE /v1/tenants/{t}?confirm={t}`),
//! provably. First its data keys are crypto-shredded: every one is deleted
//! in one atomic batch with `TenantErased`, and from that commit on nothing
//! of the tenant in this shard or any later copy of it can be decrypted.
//! A copy made *before* the erasure (a backup, a former owner's disk) still
//! holds the wrapped keys, and the managed root that wraps its hot keys
//! outlives the erasure: every answer says so ([`EARLIER_COPIES`]).
//! Then what the keys protected is removed for good
//! ([`crate::storage::Store::remove_tenant`]: records, index entries,
//! tombstones, the record ids in its events), compacted out of every file
//! and out of the WAL, and `TenantErasureCompleted` is appended; then the
//! MANIFEST is rolled. The projection remembers the tenant as erased: its
//! status is 410 and its records are dead-lettered `tenant_erased`.
//!
//! The projection's `erasure_pending` marks an erasure between the two
//! commits; a shard resumes such erasures when it starts ([`resume`]), so
//! a crash midway only delays the end.

use serde::Serialize;
use thiserror::Error;
use tracing::{info, warn};

use crate::crypto::keyring::KeyringError;
use crate::error::ErrorCode;
use crate::proto::store::TenantState;
use crate::proto::v1::{TenantErased, TenantErasureCompleted, event::Kind};
use crate::shard::Shard;
use crate::storage::StoreError;
use crate::sweeps::Sweeper;
use crate::telemetry::happenings::{Emit, TenantErasureFinished};

/// Why a tenant could not be erased.
#[derive(Debug, Error)]
pub enum ErasureError {
    /// The shard has no records or events of the tenant.
    #[error("no records or events for this tenant")]
    UnknownTenant,
    /// It was erased before.
    #[error("the tenant was erased already")]
    AlreadyErased,
    /// Its data keys could not be shredded (nothing changed).
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// Removing its records failed after the keys were shredded; the
    /// removal resumes when the shard next starts.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The bound of an erasure, in every answer: what still holds the tenant's
/// data once it returns, and when that ends.
pub const EARLIER_COPIES: &str = "copies of the shard made before this erasure (backups, snapshots, a former \
    owner's disk) still hold the tenant's wrapped data keys: with the deployment's managed root key they decrypt its \
    hot records, and its sealed records as long as its own key (if it had one) exists; the erasure is complete once \
    every such copy is destroyed or expired";

/// What an erasure did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErasureSummary {
    /// Data keys destroyed (crypto-shredded).
    pub data_keys_destroyed: u32,
    /// Records removed (hot and sealed).
    pub records_removed: u64,
    /// Events whose record id was blanked.
    pub events_redacted: u32,
    /// What still holds the tenant's data ([`EARLIER_COPIES`]).
    pub earlier_copies: &'static str,
}

/// Erases `tenant` of `shard`: shreds its keys, then removes its data.
pub async fn erase(shard: &Shard, sweeper: &Sweeper, tenant: &str) -> Result<ErasureSummary, ErasureError> {
    let started = std::time::Instant::now();
    let data_keys_destroyed = {
        // No seal sweep or root change is halfway through the tenant.
        let _exclusive = sweeper.exclusive().await;
        let projection = shard.store.tenant(tenant).ok_or(ErasureError::UnknownTenant)?;
        if projection.state() == TenantState::Erased {
            return Err(ErasureError::AlreadyErased);
        }
        let (hot_records, sealed_records) = (projection.hot_records, projection.sealed_records);
        let erased =
            |data_keys_destroyed| Kind::TenantErased(TenantErased { data_keys_destroyed, hot_records, sealed_records });
        shard.keyring.shred(tenant, shard.now_ms(), erased).await?
    };
    info!(tenant, data_keys_destroyed, "tenant's data keys destroyed; removing its data");
    let completed = purge(shard, tenant).await?;
    TenantErasureFinished {
        tenant,
        data_keys: data_keys_destroyed,
        records: completed.records_removed,
        took: started.elapsed(),
    }
    .emit();
    Ok(ErasureSummary {
        data_keys_destroyed,
        records_removed: completed.records_removed,
        events_redacted: completed.events_redacted,
        earlier_copies: EARLIER_COPIES,
    })
}

/// Removes what an erased tenant left and records the end of its erasure.
async fn purge(shard: &Shard, tenant: &str) -> Result<TenantErasureCompleted, StoreError> {
    let removed = {
        let _moving = shard.store.moving().await;
        let (store, owned) = (shard.store.clone(), tenant.to_owned());
        blocking(move || store.remove_tenant(&owned)).await?
    };
    let (store, owned) = (shard.store.clone(), tenant.to_owned());
    blocking(move || store.compact_tenant(&owned, &removed)).await?;
    let completed =
        TenantErasureCompleted { records_removed: removed.records, events_redacted: removed.events_redacted };
    let mut txn = shard.store.transaction();
    txn.event(tenant, Kind::TenantErasureCompleted(completed));
    txn.commit_durable(shard.now_ms()).await?;
    let store = shard.store.clone();
    blocking(move || store.roll_manifest()).await?;
    info!(tenant, records = removed.records, events = removed.events_redacted, "erased tenant's data removed");
    Ok(completed)
}

/// Finishes the erasures a stop or crash interrupted.
pub async fn resume(shard: &Shard) {
    for (tenant, _) in shard.store.tenants_where(|p| p.erasure_pending) {
        if let Err(e) = purge(shard, &tenant).await {
            warn!(tenant, error = %e, "resuming an erasure failed; it is tried again when the shard next starts");
        }
    }
}

/// Runs RocksDB work that may take seconds (scans, compactions) off the
/// async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::SyncTask(e.to_string()))?
}

impl ErrorCode for ErasureError {
    fn code(&self) -> &'static str {
        match self {
            Self::UnknownTenant => "tenant_not_found",
            Self::AlreadyErased => "tenant_erased",
            Self::Keyring(e) => e.code(),
            Self::Store(e) => e.code(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::UnknownTenant | Self::AlreadyErased => false,
            Self::Keyring(e) => e.is_retryable(),
            Self::Store(e) => e.is_retryable(),
        }
    }
}
