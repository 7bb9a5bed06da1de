//! The keyring hands out usable data keys: from a bounded in-memory cache,
//! else by unwrapping the stored wrapped key with its root, else by creating
//! and wrapping a new one (committed with a `DataKeyCreated` event before it
//! is used). Root-key calls therefore happen per data key, never per record.
//!
//! Hot data keys are always rooted at the managed key; sealed data keys at
//! the tenant's customer key while BYOK is enabled. [`Keyring::rewrap_sealed`]
//! moves a tenant's sealed data keys to another root without touching a
//! record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::CryptoError;
use super::data_key::{DataKey, DataKeyId};
use super::root_key::{ManagedRootKeys, WRAP_ALGORITHM};
use crate::clock::utc_day;
use crate::proto::store::WrappedDataKey;
use crate::keyvault::key_uri::KeyUriError;
use crate::keyvault::{KeyUri, Vault, VaultError};
use crate::proto::v1::{DataKeyCreated, Layer, RewrapProgress, RootKeyRef, event::Kind, root_key_ref::Root};
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
    /// The tenant's Key Vault key could not be used.
    #[error("customer key: {0}")]
    Vault(#[from] VaultError),
    /// A stored key id names a vault this worker may not call.
    #[error("customer key id: {0}")]
    KeyUri(#[from] KeyUriError),
    /// A tenant uses a customer key but no vault client could be built.
    #[error("no Key Vault client: {0}")]
    VaultNotConfigured(String),
}

/// The root a data key is (to be) wrapped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKey {
    /// The service-managed key, current version.
    Managed,
    /// A tenant's Key Vault key at a version.
    Vault {
        /// The key.
        uri: KeyUri,
        /// The version.
        version: String,
    },
}

/// How many data keys a tenant has, and how many sealed ones are not yet
/// under its current root (a rewrap in progress, or pending).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataKeyCensus {
    /// Every data key of the tenant (hot and sealed).
    pub total: u32,
    /// Sealed data keys wrapped by an older or other root.
    pub on_older_root: u32,
}

/// What a rewrap did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RewrapSummary {
    /// Sealed data keys wrapped anew.
    pub rewrapped: u32,
    /// Sealed data keys of the tenant.
    pub total: u32,
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

/// Data keys for one shard's store.
pub struct Keyring {
    store: Arc<Store>,
    managed: ManagedRootKeys,
    vault: Result<Arc<Vault>, String>,
    limits: CacheLimits,
    cache: Mutex<HashMap<Vec<u8>, Cached>>,
    /// Serialises creation so two tasks never create the same key twice.
    creating: tokio::sync::Mutex<()>,
}

impl Keyring {
    /// A keyring over `store`, wrapping with the managed root and, for
    /// tenants with their own key, through `vault` (or the reason there is
    /// no vault client).
    pub fn new(
        store: Arc<Store>,
        managed: ManagedRootKeys,
        vault: Result<Arc<Vault>, String>,
        limits: CacheLimits,
    ) -> Self {
        Self {
            store,
            managed,
            vault,
            limits,
            cache: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
        }
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
        match self.load(&id).await? {
            Some(key) => Ok((id, key)),
            None => {
                let root = match layer {
                    Layer::Sealed => self.tenant_root(tenant)?,
                    Layer::Hot | Layer::Unspecified => RootKey::Managed,
                };
                let key = self.create(tenant, layer, &id, &root, now_ms).await?;
                Ok((id, key))
            }
        }
    }

    /// The data key with id `id`, from memory or unwrapped from the store.
    pub async fn key(&self, id: &[u8]) -> Result<Arc<DataKey>, KeyringError> {
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        self.load(id).await?.ok_or(KeyringError::UnknownDataKey)
    }

    /// Drops every unwrapped key from memory (each is zeroized once no
    /// batch still holds it), so the next use must unwrap with its root.
    pub fn forget_cached(&self) {
        self.cache.lock().expect("cache lock").clear();
    }

    /// The vault client, or why there is none.
    pub fn vault(&self) -> Result<&Arc<Vault>, KeyringError> {
        self.vault.as_ref().map_err(|reason| KeyringError::VaultNotConfigured(reason.clone()))
    }

    /// The root of `tenant`'s sealed data keys: its customer key while BYOK
    /// is enabled, else the managed key.
    pub fn tenant_root(&self, tenant: &str) -> Result<RootKey, KeyringError> {
        match self.store.tenant(tenant) {
            Some(p) if !p.key_uri.is_empty() => Ok(RootKey::Vault {
                uri: KeyUri::parse(&p.key_uri, self.vault()?.trusted_hosts())?,
                version: p.key_version,
            }),
            _ => Ok(RootKey::Managed),
        }
    }

    /// Moves the tenant's sealed data keys under its current root (see
    /// [`Keyring::rewrap_sealed`]): after a roll, or to finish a pending rewrap.
    pub async fn rewrap_to_current_root(&self, tenant: &str, now_ms: i64) -> Result<RewrapSummary, KeyringError> {
        let target = self.tenant_root(tenant)?;
        self.rewrap_sealed(tenant, &target, now_ms, None).await
    }

    /// Counts the tenant's data keys and those not under its current root.
    pub fn data_key_census(&self, tenant: &str) -> Result<DataKeyCensus, KeyringError> {
        let target = self.root_ref(&self.tenant_root(tenant)?);
        let mut census = DataKeyCensus::default();
        for (id, wrapped) in self.store.data_keys_of(tenant)? {
            census.total += 1;
            let sealed = DataKeyId::from_bytes(&id)?.layer == Layer::Sealed;
            if sealed && !wrapped.wrapped_by.as_ref().is_some_and(|r| same_root(r, &target)) {
                census.on_older_root += 1;
            }
        }
        Ok(census)
    }

    /// Wraps every sealed data key of `tenant` that is not yet under
    /// `target`, then commits them all with one `RewrapProgress` event and
    /// `closing` (if any) in one batch: all or nothing, idempotent, O(data
    /// keys) and never touching a record.
    pub async fn rewrap_sealed(
        &self,
        tenant: &str,
        target: &RootKey,
        now_ms: i64,
        closing: Option<Kind>,
    ) -> Result<RewrapSummary, KeyringError> {
        let _creating = self.creating.lock().await;
        let target_ref = self.root_ref(target);
        let mut txn = self.store.transaction();
        let mut summary = RewrapSummary::default();
        for (id, wrapped) in self.store.data_keys_of(tenant)? {
            if DataKeyId::from_bytes(&id)?.layer != Layer::Sealed {
                continue;
            }
            summary.total += 1;
            if wrapped.wrapped_by.as_ref().is_some_and(|r| same_root(r, &target_ref)) {
                continue;
            }
            let key = match self.cached(&id) {
                Some(key) => key,
                None => Arc::new(self.unwrap(&wrapped).await?),
            };
            let (wrapped_by, bytes) = self.wrap(target, &key).await?;
            txn.put_data_key(
                &id,
                &WrappedDataKey {
                    wrapped_by: Some(wrapped_by),
                    algorithm: WRAP_ALGORITHM.into(),
                    wrapped: bytes,
                    created_at_unix_ms: wrapped.created_at_unix_ms,
                },
            );
            summary.rewrapped += 1;
        }
        txn.event(
            tenant,
            Kind::RewrapProgress(RewrapProgress {
                rewrapped: summary.total,
                total: summary.total,
                target: Some(target_ref),
            }),
        );
        if let Some(closing) = closing {
            txn.event(tenant, closing);
        }
        txn.commit(now_ms)?;
        Ok(summary)
    }

    fn root_ref(&self, root: &RootKey) -> RootKeyRef {
        RootKeyRef {
            root: Some(match root {
                RootKey::Managed => Root::ManagedVersion(self.managed.current_version()),
                RootKey::Vault { uri, version } => Root::VaultKeyId(uri.versioned(version)),
            }),
        }
    }

    async fn wrap(&self, root: &RootKey, key: &DataKey) -> Result<(RootKeyRef, Vec<u8>), KeyringError> {
        crate::metrics::root_key_operation();
        match root {
            RootKey::Managed => {
                let (version, wrapped) = self.managed.wrap(key)?;
                Ok((RootKeyRef { root: Some(Root::ManagedVersion(version)) }, wrapped))
            }
            RootKey::Vault { uri, version } => {
                let (_, wrapped) = self.vault()?.wrap(uri, version, key).await?;
                Ok((self.root_ref(root), wrapped))
            }
        }
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

    async fn load(&self, id: &[u8]) -> Result<Option<Arc<DataKey>>, KeyringError> {
        let Some(wrapped) = self.store.wrapped_data_key(id)? else {
            return Ok(None);
        };
        let key = Arc::new(self.unwrap(&wrapped).await?);
        self.remember(id, &key);
        Ok(Some(key))
    }

    async fn unwrap(&self, wrapped: &WrappedDataKey) -> Result<DataKey, KeyringError> {
        crate::metrics::root_key_operation();
        match wrapped.wrapped_by.as_ref().and_then(|r| r.root.as_ref()) {
            Some(Root::ManagedVersion(version)) => Ok(self.managed.unwrap(*version, &wrapped.wrapped)?),
            Some(Root::VaultKeyId(kid)) => {
                let vault = self.vault()?;
                let uri = KeyUri::parse(kid, vault.trusted_hosts())?;
                let version = uri.version.clone().ok_or(KeyUriError::Malformed("stored key id has no version"))?;
                Ok(vault.unwrap(&uri, &version, &wrapped.wrapped).await?)
            }
            None => Err(CryptoError::Corrupt {
                what: "wrapped data key",
                reason: "names no root".into(),
            }
            .into()),
        }
    }

    async fn create(
        &self,
        tenant: &str,
        layer: Layer,
        id: &[u8],
        root: &RootKey,
        now_ms: i64,
    ) -> Result<Arc<DataKey>, KeyringError> {
        let key = DataKey::generate();
        let (root, wrapped) = self.wrap(root, &key).await?;
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

fn same_root(a: &RootKeyRef, b: &RootKeyRef) -> bool {
    match (&a.root, &b.root) {
        (Some(Root::VaultKeyId(x)), Some(Root::VaultKeyId(y))) => x.eq_ignore_ascii_case(y),
        (x, y) => x == y,
    }
}
