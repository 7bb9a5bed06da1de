//! Rewraps: moving a tenant's sealed data keys under another root without
//! touching a record (a key's id never changes, only the root its stored
//! form is wrapped by). Each key costs an unwrap and a wrap; up to the
//! keyring's vault concurrency of them are in flight at once, so a rewrap
//! runs near the vault's own limit instead of one round trip at a time.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tokio::sync::MutexGuard;

use super::{Keyring, KeyringError, RewrapSummary, TenantRoot, same_root};
use crate::crypto::data_key::DataKeyId;
use crate::proto::store::WrappedDataKey;
use crate::proto::v1::{KeyPurpose, Layer, RewrapProgress, RootKeyRef, event::Kind};

/// Sealed data keys rewrapped per committed step of a rewrap: each step is
/// one write batch with a `RewrapProgress` event, so a crash loses at most
/// one step's vault calls.
pub const REWRAP_STEP: usize = 16;

/// A sealed data key as stored.
struct StoredKey {
    id: Vec<u8>,
    wrapped: WrappedDataKey,
}

/// A tenant's sealed data keys not under `target`, of `total`.
struct Scan {
    target: TenantRoot,
    pending: Vec<StoredKey>,
    total: u32,
}

/// A data key wrapped anew, ready to be stored.
type Moved = (Vec<u8>, WrappedDataKey);

impl Keyring {
    /// Moves the tenant's sealed data keys under its current root (after a
    /// roll, an enable, or to finish a rewrap a crash interrupted), in steps
    /// of [`REWRAP_STEP`] keys, each committed with a `RewrapProgress`
    /// event. Idempotent and resumable: keys already under the root are
    /// skipped. If the root changes meanwhile (another roll), it goes on to
    /// the newest. Reads keep working throughout.
    pub async fn rewrap_to_current_root(&self, tenant: &str, now_ms: i64) -> Result<RewrapSummary, KeyringError> {
        let _one = self.rewrapping.lock().await;
        'newest: loop {
            // Keys created after this scan are created under the current root already.
            let (creating, Scan { target, pending, total }) = self.settled_scan(tenant, None).await?;
            drop(creating);
            let target_ref = self.root_ref(&target)?;
            let mut rewrapped = total - pending.len() as u32;
            crate::telemetry::metrics::rewrap_pending(tenant, pending.len());
            if pending.is_empty() {
                self.commit_rewrap(tenant, Vec::new(), progress(rewrapped, total, &target_ref), None, now_ms).await?;
            }
            let mut moving = self.rewrapping_all(&pending, &target);
            let mut step = Vec::with_capacity(REWRAP_STEP);
            let mut left = pending.len();
            while let Some(moved) = moving.next().await {
                step.push(moved?);
                left -= 1;
                if step.len() < REWRAP_STEP && left > 0 {
                    continue;
                }
                rewrapped += step.len() as u32;
                let done = std::mem::take(&mut step);
                self.commit_rewrap(tenant, done, progress(rewrapped, total, &target_ref), None, now_ms).await?;
                crate::telemetry::metrics::rewrap_pending(tenant, (total - rewrapped) as usize);
                if left > 0 && self.tenant_root(tenant)? != target {
                    continue 'newest;
                }
            }
            return Ok(RewrapSummary { rewrapped: pending.len() as u32, total });
        }
    }

    /// Moves every sealed data key of `tenant` under `target` and commits
    /// them with `closing` in one batch: all or nothing. For changes of the
    /// tenant's root (disabling its key), where a half-moved state must never
    /// be visible.
    pub async fn rewrap_all_or_nothing(
        &self,
        tenant: &str,
        target: &TenantRoot,
        now_ms: i64,
        closing: Kind,
    ) -> Result<RewrapSummary, KeyringError> {
        let _one = self.rewrapping.lock().await;
        let target_ref = self.root_ref(target)?;
        // The vault calls happen without blocking key creation (ingestion
        // of every tenant needs it)...
        let (pending, _) = self.not_under(tenant, target)?;
        let mut moved = self.rewrap_each(&pending, target).await?;
        // ...and only the few keys created meanwhile are moved while no
        // other can be, so none is missed when the root changes.
        let (_creating, Scan { pending: still_pending, total, .. }) = self.settled_scan(tenant, Some(target)).await?;
        let done: HashSet<Vec<u8>> = moved.iter().map(|(id, _)| id.clone()).collect();
        let created_meanwhile: Vec<StoredKey> = still_pending.into_iter().filter(|k| !done.contains(&k.id)).collect();
        moved.extend(self.rewrap_each(&created_meanwhile, target).await?);
        let rewrapped = moved.len() as u32;
        self.commit_rewrap(tenant, moved, progress(total, total, &target_ref), Some(closing), now_ms).await?;
        Ok(RewrapSummary { rewrapped, total })
    }

    /// Scans the tenant's sealed keys not under `target` (its current root
    /// if `None`) once no batch holds an uncommitted sealed key of the
    /// tenant under another root (the scan would miss it); key creation
    /// stays held off until the returned guard is dropped.
    async fn settled_scan(
        &self,
        tenant: &str,
        target: Option<&TenantRoot>,
    ) -> Result<(MutexGuard<'_, ()>, Scan), KeyringError> {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let creating = self.creating.lock().await;
            let target = match target {
                Some(target) => target.clone(),
                None => self.tenant_root(tenant)?,
            };
            let target_ref = self.root_ref(&target)?;
            let waits = {
                let unsettled = self.unsettled.lock().expect("unsettled lock");
                unsettled.iter().any(|u| u.of_other_root(tenant, Layer::Sealed, &target_ref))
            };
            if !waits {
                let (pending, total) = self.not_under(tenant, &target)?;
                return Ok((creating, Scan { target, pending, total }));
            }
            drop(creating);
            settled.await;
        }
    }

    /// Every key of `keys` rewrapped under `target`, or the first failure.
    async fn rewrap_each(&self, keys: &[StoredKey], target: &TenantRoot) -> Result<Vec<Moved>, KeyringError> {
        let mut moving = self.rewrapping_all(keys, target);
        let mut moved = Vec::with_capacity(keys.len());
        while let Some(key) = moving.next().await {
            moved.push(key?);
        }
        Ok(moved)
    }

    /// The keys of `keys` rewrapped under `target` as they finish, with up
    /// to the vault concurrency of them in flight (one throttled call holds
    /// up its own slot only).
    fn rewrapping_all<'a>(
        &'a self,
        keys: &'a [StoredKey],
        target: &'a TenantRoot,
    ) -> impl Stream<Item = Result<Moved, KeyringError>> + 'a {
        futures_util::stream::iter(keys)
            .map(move |key| async move { Ok((key.id.clone(), self.rewrapped(&key.id, &key.wrapped, target).await?)) })
            .buffer_unordered(self.vault_concurrency)
    }

    /// The tenant's sealed data keys not under `target`, and how many sealed keys it has.
    fn not_under(&self, tenant: &str, target: &TenantRoot) -> Result<(Vec<StoredKey>, u32), KeyringError> {
        let target_ref = self.root_ref(target)?;
        let mut pending = Vec::new();
        let mut total = 0;
        for (id, wrapped) in self.store.data_keys_of(tenant)? {
            if DataKeyId::from_bytes(&id)?.layer != Layer::Sealed {
                continue;
            }
            total += 1;
            if !wrapped.wrapped_by.as_ref().is_some_and(|r| same_root(r, &target_ref)) {
                pending.push(StoredKey { id, wrapped });
            }
        }
        Ok((pending, total))
    }

    /// `wrapped`, unwrapped by its root and wrapped anew by `target`.
    async fn rewrapped(
        &self,
        id: &[u8],
        wrapped: &WrappedDataKey,
        target: &TenantRoot,
    ) -> Result<WrappedDataKey, KeyringError> {
        let key = match self.cached(id) {
            Some(key) => key,
            None => Arc::new(self.unwrap(id, wrapped, KeyPurpose::Rewrap).await?),
        };
        let rewrapped = self.wrap(target, &key, id, wrapped.created_at_unix_ms, KeyPurpose::Rewrap).await?;
        crate::telemetry::metrics::data_key_rewrapped(self.shard);
        Ok(rewrapped)
    }

    /// Commits one step: the rewrapped keys, where the rewrap stands, and
    /// `closing` if this step ends a change of root.
    async fn commit_rewrap(
        &self,
        tenant: &str,
        moved: Vec<Moved>,
        progress: RewrapProgress,
        closing: Option<Kind>,
        now_ms: i64,
    ) -> Result<(), KeyringError> {
        let mut txn = self.store.transaction();
        for (id, wrapped) in &moved {
            txn.put_data_key(id, wrapped);
        }
        txn.event(tenant, Kind::RewrapProgress(progress));
        if let Some(closing) = closing {
            txn.event(tenant, closing);
        }
        txn.commit_durable(now_ms).await?;
        Ok(())
    }
}

fn progress(rewrapped: u32, total: u32, target: &RootKeyRef) -> RewrapProgress {
    RewrapProgress { rewrapped, total, target: Some(target.clone()) }
}
