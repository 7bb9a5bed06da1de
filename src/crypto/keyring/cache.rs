//! Unwrapped data keys in memory: a bounded cache whose entries expire by
//! age and use, eviction on a schedule and per tenant, and the read-only
//! count tests and operators check eviction with.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Keyring, KeyringError};
use crate::crypto::data_key::DataKey;
use crate::proto::v1::KeyPurpose;
use crate::storage::keys;

/// An unwrapped key in the cache.
pub(super) struct Cached {
    key: Arc<DataKey>,
    loaded_ms: i64,
    uses: u64,
}

impl Keyring {
    /// Whether an unwrapped key loaded at `loaded_ms` and used `uses` times
    /// must no longer be held.
    pub(super) fn expired(&self, loaded_ms: i64, uses: u64) -> bool {
        let age_ms = self.clock.now_ms().saturating_sub(loaded_ms);
        age_ms >= self.limits.max_age.as_millis() as i64 || uses >= self.limits.max_uses
    }

    /// Drops every unwrapped key from memory (each is zeroized once no
    /// batch still holds it), so the next use must unwrap with its root and
    /// the next write starts a new generation.
    pub fn forget_cached(&self) {
        self.cache.lock().expect("cache lock").clear();
        self.writers.lock().expect("writers lock").clear();
    }

    /// Drops every unwrapped key of `tenant` (cached and writers', hot and
    /// sealed) and no other tenant's: called right after the tenant is
    /// locked down or disables its own key, so nothing unwrapped while the
    /// customer's key still worked outlives that. Each key is zeroized once
    /// no batch in flight still holds it; the next write starts a new
    /// generation.
    pub fn forget_tenant(&self, tenant: &str) {
        let prefix = keys::tenant_prefix(tenant);
        self.cache.lock().expect("cache lock").retain(|id, _| !id.starts_with(&prefix));
        self.writers.lock().expect("writers lock").retain(|(owner, _), _| owner != tenant);
    }

    /// Drops every unwrapped key held longer than the cache age (or used
    /// more than its limit), writers' included; returns how many. The
    /// worker calls it on a schedule, so a key is not held much past
    /// `--dek-cache-ttl` even if nothing asks for it again.
    pub fn evict_expired(&self) -> usize {
        let mut dropped = 0;
        let mut cache = self.cache.lock().expect("cache lock");
        cache.retain(|_, entry| {
            let keep = !self.expired(entry.loaded_ms, entry.uses);
            dropped += usize::from(!keep);
            keep
        });
        drop(cache);
        for writer in self.writers.lock().expect("writers lock").values_mut() {
            // A key its batch has not committed yet cannot be unwrapped again.
            if writer.key.is_some() && self.expired(writer.loaded_ms, 0) && !self.is_unsettled(&writer.id_bytes) {
                writer.key = None;
                dropped += 1;
            }
        }
        dropped
    }

    /// How many distinct unwrapped data keys of `tenant` are held in memory
    /// (cached or as a writer's key). Read-only, so tests and operators can
    /// check that keys are dropped when they must be.
    pub fn cached_keys_of(&self, tenant: &str) -> usize {
        let prefix = keys::tenant_prefix(tenant);
        let mut held: HashSet<Vec<u8>> =
            self.cache.lock().expect("cache lock").keys().filter(|id| id.starts_with(&prefix)).cloned().collect();
        let writers = self.writers.lock().expect("writers lock");
        held.extend(
            writers
                .iter()
                .filter(|((owner, _), w)| owner == tenant && w.key.is_some())
                .map(|(_, w)| w.id_bytes.clone()),
        );
        held.len()
    }

    pub(super) fn cached(&self, id: &[u8]) -> Option<Arc<DataKey>> {
        let mut cache = self.cache.lock().expect("cache lock");
        let fresh = match cache.get_mut(id) {
            Some(entry) if !self.expired(entry.loaded_ms, entry.uses) => {
                entry.uses += 1;
                Some(entry.key.clone())
            }
            Some(_) => {
                // Expired: dropping the entry zeroizes the key once no batch holds it.
                cache.remove(id);
                None
            }
            None => None,
        };
        drop(cache);
        crate::telemetry::metrics::data_key_lookup(fresh.is_some());
        fresh
    }

    pub(super) fn remember(&self, id: &[u8], key: &Arc<DataKey>) {
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= self.limits.max_entries {
            let oldest = cache.iter().min_by_key(|(_, entry)| entry.loaded_ms).map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(id.to_vec(), Cached { key: key.clone(), loaded_ms: self.clock.now_ms(), uses: 1 });
    }

    pub(super) async fn load(&self, id: &[u8], purpose: KeyPurpose) -> Result<Option<Arc<DataKey>>, KeyringError> {
        let Some(wrapped) = self.store.wrapped_data_key(id)? else {
            return Ok(None);
        };
        let key = Arc::new(self.unwrap(id, &wrapped, purpose).await?);
        self.remember(id, &key);
        Ok(Some(key))
    }
}
