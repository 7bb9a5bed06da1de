//! The keyring hands out usable data keys: from a bounded in-memory cache,
//! else by unwrapping the stored wrapped key with its root, else by creating
//! and wrapping a new one (committed with a `DataKeyCreated` event before it
//! is used). Root-key calls therefore happen per data key, never per record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::CryptoError;
use super::data_key::{DataKey, DataKeyId};
use super::root_key::{ManagedRootKeys, WRAP_ALGORITHM};
use crate::clock::utc_day;
use crate::proto::store::WrappedDataKey;
use crate::proto::v1::{DataKeyCreated, Layer, RootKeyRef, event::Kind, root_key_ref::Root};
use crate::storage::{Store, StoreError};

/// Failures getting a usable data key.
#[derive(Debug, Error)]
pub enum KeyringError {
    /// Wrapping, unwrapping or decoding failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Reading or committing the wrapped key failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record names a data key the store does not have.
    #[error("data key not found")]
    UnknownDataKey,
}

/// How long and how much an unwrapped key may be reused from memory (like
/// the data-key caching thresholds of envelope-encryption SDKs).
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Evict after this long in memory.
    pub max_age: Duration,
    /// Evict after this many lookups.
    pub max_uses: u64,
    /// At most this many unwrapped keys in memory.
    pub max_entries: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(300),
            max_uses: 1 << 20,
            max_entries: 4096,
        }
    }
}

struct Cached {
    key: Arc<DataKey>,
    loaded: Instant,
    uses: u64,
}

/// Counters of the keyring's work, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeyringStats {
    /// Lookups served from memory.
    pub hits: u64,
    /// Lookups that had to unwrap or create.
    pub misses: u64,
    /// Root-key wrap and unwrap operations.
    pub root_operations: u64,
}

/// Data keys for one shard's store.
pub struct Keyring {
    store: Arc<Store>,
    managed: ManagedRootKeys,
    limits: CacheLimits,
    cache: Mutex<HashMap<Vec<u8>, Cached>>,
    stats: Mutex<KeyringStats>,
    /// Serialises creation so two tasks never create the same key twice.
    creating: tokio::sync::Mutex<()>,
}

impl Keyring {
    /// A keyring over `store`, wrapping with the managed root.
    pub fn new(store: Arc<Store>, managed: ManagedRootKeys, limits: CacheLimits) -> Self {
        Self {
            store,
            managed,
            limits,
            cache: Mutex::new(HashMap::new()),
            stats: Mutex::new(KeyringStats::default()),
            creating: tokio::sync::Mutex::new(()),
        }
    }

    /// What the keyring has done so far.
    pub fn stats(&self) -> KeyringStats {
        *self.stats.lock().expect("stats lock")
    }

    /// The data key new records of `tenant` in `layer` are encrypted with at
    /// `now_ms`, created if the time bucket has none yet. Returns its id bytes.
    pub async fn key_for_write(
        &self,
        tenant: &str,
        layer: Layer,
        now_ms: i64,
    ) -> Result<(Vec<u8>, Arc<DataKey>), KeyringError> {
        let id = DataKeyId {
            tenant: tenant.to_owned(),
            layer,
            bucket: utc_day(now_ms),
            generation: 0,
        }
        .to_bytes();
        if let Some(key) = self.cached(&id) {
            return Ok((id, key));
        }
        let _creating = self.creating.lock().await;
        match self.load(&id)? {
            Some(key) => Ok((id, key)),
            None => {
                let key = self.create(tenant, layer, &id, now_ms)?;
                Ok((id, key))
            }
        }
    }

    /// The data key with id `id`, from memory or unwrapped from the store.
    pub async fn key(&self, id: &[u8]) -> Result<Arc<DataKey>, KeyringError> {
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        self.load(id)?.ok_or(KeyringError::UnknownDataKey)
    }

    fn cached(&self, id: &[u8]) -> Option<Arc<DataKey>> {
        let mut cache = self.cache.lock().expect("cache lock");
        let fresh = match cache.get_mut(id) {
            Some(entry)
                if entry.loaded.elapsed() < self.limits.max_age && entry.uses < self.limits.max_uses =>
            {
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
        let mut stats = self.stats.lock().expect("stats lock");
        match fresh {
            Some(_) => stats.hits += 1,
            None => stats.misses += 1,
        }
        crate::metrics::data_key_lookup(fresh.is_some());
        fresh
    }

    fn remember(&self, id: &[u8], key: &Arc<DataKey>) {
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= self.limits.max_entries {
            let oldest = cache
                .iter()
                .min_by_key(|(_, entry)| entry.loaded)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            id.to_vec(),
            Cached {
                key: key.clone(),
                loaded: Instant::now(),
                uses: 1,
            },
        );
    }

    fn count_root_operation(&self) {
        self.stats.lock().expect("stats lock").root_operations += 1;
        crate::metrics::root_key_operation();
    }

    fn load(&self, id: &[u8]) -> Result<Option<Arc<DataKey>>, KeyringError> {
        let Some(wrapped) = self.store.wrapped_data_key(id)? else {
            return Ok(None);
        };
        let key = Arc::new(self.unwrap(&wrapped)?);
        self.remember(id, &key);
        Ok(Some(key))
    }

    fn unwrap(&self, wrapped: &WrappedDataKey) -> Result<DataKey, KeyringError> {
        self.count_root_operation();
        match wrapped.wrapped_by.as_ref().and_then(|r| r.root.as_ref()) {
            Some(Root::ManagedVersion(version)) => Ok(self.managed.unwrap(*version, &wrapped.wrapped)?),
            Some(Root::VaultKeyId(_)) | None => Err(CryptoError::RootKey {
                root: "unknown".into(),
                reason: "wrapped by a root this worker does not have".into(),
            }
            .into()),
        }
    }

    fn create(&self, tenant: &str, layer: Layer, id: &[u8], now_ms: i64) -> Result<Arc<DataKey>, KeyringError> {
        let key = DataKey::generate();
        self.count_root_operation();
        let (version, wrapped) = self.managed.wrap(&key)?;
        let root = RootKeyRef {
            root: Some(Root::ManagedVersion(version)),
        };
        let mut txn = self.store.transaction();
        txn.put_data_key(
            id,
            &WrappedDataKey {
                wrapped_by: Some(root.clone()),
                algorithm: WRAP_ALGORITHM.into(),
                wrapped,
                created_at_unix_ms: now_ms,
            },
        );
        txn.event(
            tenant,
            Kind::DataKeyCreated(DataKeyCreated {
                data_key_id: id.to_vec(),
                layer: layer as i32,
                wrapped_by: Some(root),
            }),
        );
        txn.commit(now_ms)?;
        let key = Arc::new(key);
        self.remember(id, &key);
        Ok(key)
    }
}
