//! The keyring hands out usable data keys: from a bounded in-memory cache,
//! else by unwrapping the stored wrapped key with its root, else by creating
//! and wrapping a new one (committed with a `DataKeyCreated` event before it
//! is used). Root-key calls therefore happen per data key, never per record.
//!
//! New records are encrypted under a tenant's current *writer* key per
//! layer, reserved in blocks ([`Keyring::reserve`]). A writer is retired
//! from writing, and a new generation created, when the UTC day changes,
//! when it has encrypted `--max-records-per-dek` records or when it is older
//! than `--max-dek-age`. A process never continues a writer of an earlier
//! process: after a restart the next write starts a new generation, so the
//! record count of every writer is exact without a counter written per batch.
//!
//! Hot data keys are always rooted at the managed key; sealed data keys at
//! the tenant's customer key while BYOK is enabled. The keyring decides
//! which root ([`TenantRoot`]) and finds the root a stored key names; the
//! wrapping itself is the [`RootKey`]'s.
//!
//! Unwrapped keys, cached ones and writers' alike, are held no longer than
//! `--dek-cache-ttl` (measured on the worker's [`crate::clock::Clock`]): the worker calls
//! [`Keyring::evict_expired`] on a schedule, and [`Keyring::forget_tenant`]
//! when a tenant is locked down or leaves BYOK. A writer whose key was
//! dropped keeps its place (id, record count) and unwraps the key again
//! when it next writes, so eviction never costs a new data key.
//! [`Keyring::rewrap_to_current_root`] moves a tenant's sealed data keys to
//! its current root in committed steps without touching a record.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use super::CryptoError;
use super::data_key::{DataKey, DataKeyId};
use super::root_key::{ManagedRootKeys, RootKey, RootKeyError, VaultRootKey, WRAP_ALGORITHM, WrapAlgorithm};
use crate::clock::{SharedClock, utc_day};
use crate::keyvault::key_uri::KeyUriError;
use crate::keyvault::{KeyUri, Vault, VaultError};
use crate::proto::store::WrappedDataKey;
use crate::proto::v1::{
    DataKeyCreated, DataKeyRetired, Layer, RewrapProgress, RootKeyRef, event::Kind, root_key_ref::Root,
};
use crate::storage::{Store, StoreError, keys};

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

impl From<RootKeyError> for KeyringError {
    fn from(error: RootKeyError) -> Self {
        match error {
            RootKeyError::Crypto(e) => Self::Crypto(e),
            RootKeyError::Vault(e) => Self::Vault(e),
        }
    }
}

/// A data key as stored: (id bytes, wrapped key).
type StoredKey = (Vec<u8>, WrappedDataKey);

/// Which root a tenant's data keys are (to be) wrapped by: a choice that
/// can be compared and passed around, not the key itself (the keyring
/// turns it into a [`RootKey`] when it wraps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRoot {
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

/// When a writer key stops taking new records and a new generation starts
/// (besides the UTC day changing).
#[derive(Debug, Clone, Copy)]
pub struct RotationLimits {
    /// Oldest a data key may be and still encrypt new records. The
    /// re-encryption sweep moves records off keys older than this.
    pub max_age: Duration,
    /// Most records one data key encrypts.
    pub max_records: u64,
}

impl Default for RotationLimits {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(90 * 24 * 3600), max_records: 1_000_000 }
    }
}

/// A data key reserved for encrypting up to `granted` new records.
pub struct WriteKey {
    /// The data key id (its byte form), bound into each record's AAD.
    pub id: Vec<u8>,
    /// The unwrapped key.
    pub key: Arc<DataKey>,
    /// Records it may still encrypt under this reservation.
    pub granted: u64,
}

/// Sealed data keys rewrapped per committed step of a rewrap: each step is
/// one write batch with a `RewrapProgress` event, so a crash loses at most
/// one step's vault calls.
pub const REWRAP_STEP: usize = 16;

impl Default for CacheLimits {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(300), max_uses: 1 << 20, max_entries: 4096 }
    }
}

struct Cached {
    key: Arc<DataKey>,
    loaded_ms: i64,
    uses: u64,
}

/// The key new records of one tenant and layer are encrypted with.
struct Writer {
    id: DataKeyId,
    id_bytes: Vec<u8>,
    /// The unwrapped key; `None` once dropped at the cache age (or for the
    /// tenant), until the writer next writes.
    key: Option<Arc<DataKey>>,
    loaded_ms: i64,
    created_at_ms: i64,
    used: u64,
}

impl Writer {
    /// Whether it may encrypt more records at `now_ms`.
    fn takes_more(&self, now_ms: i64, rotation: &RotationLimits) -> bool {
        self.id.bucket == utc_day(now_ms)
            && self.used < rotation.max_records
            && now_ms.saturating_sub(self.created_at_ms) < rotation.max_age.as_millis() as i64
    }

    fn grant(&mut self, key: Arc<DataKey>, wanted: u64, rotation: &RotationLimits) -> WriteKey {
        let granted = wanted.min(rotation.max_records - self.used);
        self.used += granted;
        WriteKey { id: self.id_bytes.clone(), key, granted }
    }
}

/// Data keys for one shard's store.
pub struct Keyring {
    store: Arc<Store>,
    managed: ManagedRootKeys,
    vault: Result<Arc<Vault>, String>,
    limits: CacheLimits,
    rotation: RotationLimits,
    /// Measures how long unwrapped keys have been held.
    clock: SharedClock,
    cache: Mutex<HashMap<Vec<u8>, Cached>>,
    writers: Mutex<HashMap<(String, Layer), Writer>>,
    /// Serialises creation so two tasks never create the same key twice,
    /// and so a root change never misses a key created meanwhile.
    creating: tokio::sync::Mutex<()>,
    /// One rewrap or retirement at a time, so a key is never written by two.
    rewrapping: tokio::sync::Mutex<()>,
}

impl Keyring {
    /// A keyring over `store`, wrapping with the managed root and, for
    /// tenants with their own key, through `vault` (or the reason there is
    /// no vault client); `clock` measures the age of unwrapped keys.
    pub fn new(
        store: Arc<Store>,
        managed: ManagedRootKeys,
        vault: Result<Arc<Vault>, String>,
        limits: CacheLimits,
        rotation: RotationLimits,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            managed,
            vault,
            limits,
            rotation,
            clock,
            cache: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            rewrapping: tokio::sync::Mutex::new(()),
        }
    }

    /// The rotation limits writer keys follow.
    pub fn rotation(&self) -> RotationLimits {
        self.rotation
    }

    /// Reserves the current writer key of `tenant` in `layer` for up to
    /// `wanted` records at `now_ms` (at least one is granted), starting a new
    /// generation when the writer is full, too old or of another day.
    pub async fn reserve(
        &self,
        tenant: &str,
        layer: Layer,
        now_ms: i64,
        wanted: u64,
    ) -> Result<WriteKey, KeyringError> {
        let wanted = wanted.max(1);
        let slot = (tenant.to_owned(), layer);
        if let Some(lease) = self.lease(&slot, now_ms, wanted) {
            return Ok(lease);
        }
        let _creating = self.creating.lock().await;
        if let Some(lease) = self.lease(&slot, now_ms, wanted) {
            return Ok(lease);
        }
        let previous = self.writers.lock().expect("writers lock").remove(&slot);
        let mut writer = match previous {
            // Still good for writing: only its unwrapped copy outlived the cache age.
            Some(old) if old.takes_more(now_ms, &self.rotation) => {
                let key = self.key(&old.id_bytes).await?;
                Writer { key: Some(key), loaded_ms: self.clock.now_ms(), ..old }
            }
            previous => self.new_writer(tenant, layer, now_ms, previous.map(|w| w.id)).await?,
        };
        let key = writer.key.clone().ok_or(KeyringError::UnknownDataKey)?;
        let lease = writer.grant(key, wanted, &self.rotation);
        self.writers.lock().expect("writers lock").insert(slot, writer);
        Ok(lease)
    }

    fn lease(&self, slot: &(String, Layer), now_ms: i64, wanted: u64) -> Option<WriteKey> {
        let mut writers = self.writers.lock().expect("writers lock");
        let writer = writers.get_mut(slot)?;
        let fresh = writer.takes_more(now_ms, &self.rotation) && !self.expired(writer.loaded_ms, 0);
        let key = writer.key.clone().filter(|_| fresh)?;
        Some(writer.grant(key, wanted, &self.rotation))
    }

    /// Whether an unwrapped key loaded at `loaded_ms` and used `uses` times
    /// must no longer be held.
    fn expired(&self, loaded_ms: i64, uses: u64) -> bool {
        let age_ms = self.clock.now_ms().saturating_sub(loaded_ms);
        age_ms >= self.limits.max_age.as_millis() as i64 || uses >= self.limits.max_uses
    }

    /// Creates the next generation of the tenant's key for the day of `now_ms`.
    async fn new_writer(
        &self,
        tenant: &str,
        layer: Layer,
        now_ms: i64,
        previous: Option<DataKeyId>,
    ) -> Result<Writer, KeyringError> {
        let mut id = DataKeyId { tenant: tenant.to_owned(), layer, bucket: utc_day(now_ms), generation: 0 };
        id.generation = match previous.filter(|p| p.bucket == id.bucket) {
            Some(previous) => previous.generation + 1,
            // Keys of an earlier process: never continued (their record count is unknown).
            None => match self.store.last_data_key_with_prefix(id.bucket_prefix())? {
                Some(last) => DataKeyId::from_bytes(&last)?.generation + 1,
                None => 0,
            },
        };
        let root = match layer {
            Layer::Sealed => self.tenant_root(tenant)?,
            Layer::Hot | Layer::Unspecified => TenantRoot::Managed,
        };
        let id_bytes = id.to_bytes();
        let key = self.create(tenant, layer, &id_bytes, &root, now_ms).await?;
        Ok(Writer { id, id_bytes, key: Some(key), loaded_ms: self.clock.now_ms(), created_at_ms: now_ms, used: 0 })
    }

    /// The data key with id `id`, from memory or unwrapped from the store.
    pub async fn key(&self, id: &[u8]) -> Result<Arc<DataKey>, KeyringError> {
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        self.load(id).await?.ok_or(KeyringError::UnknownDataKey)
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
            if writer.key.is_some() && self.expired(writer.loaded_ms, 0) {
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

    /// The vault client, or why there is none.
    pub fn vault(&self) -> Result<&Arc<Vault>, KeyringError> {
        self.vault.as_ref().map_err(|reason| KeyringError::VaultNotConfigured(reason.clone()))
    }

    /// The root of `tenant`'s sealed data keys: its customer key while BYOK
    /// is enabled, else the managed key.
    pub fn tenant_root(&self, tenant: &str) -> Result<TenantRoot, KeyringError> {
        match self.store.tenant(tenant) {
            Some(p) if !p.key_uri.is_empty() => Ok(TenantRoot::Vault {
                uri: KeyUri::parse(&p.key_uri, self.vault()?.trusted_hosts())?,
                version: p.key_version,
            }),
            _ => Ok(TenantRoot::Managed),
        }
    }

    /// Moves the tenant's sealed data keys under its current root (after a
    /// roll, an enable, or to finish a rewrap a crash interrupted), in steps
    /// of [`REWRAP_STEP`] keys, each committed with a `RewrapProgress`
    /// event. Idempotent and resumable: keys already under the root are
    /// skipped. If the root changes meanwhile (another roll), it goes on to
    /// the newest. Reads keep working throughout: a key's id never changes,
    /// only the root its stored form is wrapped by.
    pub async fn rewrap_to_current_root(&self, tenant: &str, now_ms: i64) -> Result<RewrapSummary, KeyringError> {
        let _one = self.rewrapping.lock().await;
        'newest: loop {
            let (target, pending, total) = {
                // Any key being created now is committed before this scan
                // (creation holds the lock); later ones are created under
                // the current root already.
                let _creating = self.creating.lock().await;
                let target = self.tenant_root(tenant)?;
                let (pending, total) = self.not_under(tenant, &target)?;
                (target, pending, total)
            };
            let target_ref = self.root_ref(&target)?;
            let mut rewrapped = total - pending.len() as u32;
            crate::metrics::rewrap_pending(tenant, pending.len());
            if pending.is_empty() {
                self.commit_rewrap(tenant, Vec::new(), progress(rewrapped, total, &target_ref), None, now_ms)?;
            }
            for step in pending.chunks(REWRAP_STEP) {
                if self.tenant_root(tenant)? != target {
                    continue 'newest;
                }
                let mut moved = Vec::with_capacity(step.len());
                for (id, wrapped) in step {
                    moved.push((id.clone(), self.rewrapped(id, wrapped, &target).await?));
                }
                rewrapped += step.len() as u32;
                self.commit_rewrap(tenant, moved, progress(rewrapped, total, &target_ref), None, now_ms)?;
                crate::metrics::rewrap_pending(tenant, (total - rewrapped) as usize);
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
        let mut moved = Vec::with_capacity(pending.len());
        for (id, wrapped) in &pending {
            moved.push((id.clone(), self.rewrapped(id, wrapped, target).await?));
        }
        // ...and only the few keys created meanwhile are moved while no
        // other can be, so none is missed when the root changes.
        let _creating = self.creating.lock().await;
        let (still_pending, total) = self.not_under(tenant, target)?;
        let done: HashSet<Vec<u8>> = moved.iter().map(|(id, _)| id.clone()).collect();
        for (id, wrapped) in still_pending.iter().filter(|(id, _)| !done.contains(id)) {
            moved.push((id.clone(), self.rewrapped(id, wrapped, target).await?));
        }
        let rewrapped = moved.len() as u32;
        self.commit_rewrap(tenant, moved, progress(total, total, &target_ref), Some(closing), now_ms)?;
        Ok(RewrapSummary { rewrapped, total })
    }

    /// Deletes data keys no record uses any more (crypto-shredding them),
    /// each with a `DataKeyRetired` event, and returns how many. The caller
    /// guarantees no stored record uses them; a key that is some tenant's
    /// current writer is kept regardless (a batch may hold it right now).
    pub async fn retire(&self, tenant: &str, ids: &[Vec<u8>], now_ms: i64) -> Result<usize, KeyringError> {
        let _one = self.rewrapping.lock().await;
        // No writer is being replaced or created while the check holds.
        let _creating = self.creating.lock().await;
        let writing: HashSet<Vec<u8>> = self
            .writers
            .lock()
            .expect("writers lock")
            .values()
            .filter(|writer| writer.takes_more(now_ms, &self.rotation))
            .map(|writer| writer.id_bytes.clone())
            .collect();
        let retiring: Vec<&Vec<u8>> = ids.iter().filter(|id| !writing.contains(*id)).collect();
        if retiring.is_empty() {
            return Ok(0);
        }
        let mut txn = self.store.transaction();
        for id in &retiring {
            let layer = DataKeyId::from_bytes(id)?.layer;
            txn.delete_data_key(id);
            txn.event(tenant, Kind::DataKeyRetired(DataKeyRetired { data_key_id: (*id).clone(), layer: layer as i32 }));
        }
        txn.commit(now_ms)?;
        let mut cache = self.cache.lock().expect("cache lock");
        for id in &retiring {
            cache.remove(*id);
        }
        Ok(retiring.len())
    }

    /// Counts the tenant's data keys and those not under its current root.
    pub fn data_key_census(&self, tenant: &str) -> Result<DataKeyCensus, KeyringError> {
        let target = self.root_ref(&self.tenant_root(tenant)?)?;
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
                pending.push((id, wrapped));
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
            None => Arc::new(self.unwrap(wrapped).await?),
        };
        let rewrapped = self.wrap(target, &key, wrapped.created_at_unix_ms).await?;
        crate::metrics::data_key_rewrapped();
        Ok(rewrapped)
    }

    /// Commits one step: the rewrapped keys, where the rewrap stands, and
    /// `closing` if this step ends a change of root.
    fn commit_rewrap(
        &self,
        tenant: &str,
        moved: Vec<(Vec<u8>, WrappedDataKey)>,
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
        txn.commit(now_ms)?;
        Ok(())
    }

    /// The root key `root` names: the current managed version, or the
    /// tenant's vault key at its version.
    fn root_key(&self, root: &TenantRoot) -> Result<Box<dyn RootKey>, KeyringError> {
        Ok(match root {
            TenantRoot::Managed => Box::new(self.managed.current()),
            TenantRoot::Vault { uri, version } => {
                Box::new(VaultRootKey::new(uri.clone(), version.clone(), self.vault()?.clone()))
            }
        })
    }

    /// The one place a stored data key's [`RootKeyRef`] becomes the root
    /// key that unwraps it: the managed version it names (with the
    /// fingerprint recorded beside it), or the vault key id it names.
    fn stored_root(&self, wrapped: &WrappedDataKey) -> Result<Box<dyn RootKey>, KeyringError> {
        match wrapped.wrapped_by.as_ref().and_then(|r| r.root.as_ref()) {
            Some(Root::ManagedVersion(version)) => {
                Ok(Box::new(self.managed.version(*version, &wrapped.root_fingerprint)?))
            }
            Some(Root::VaultKeyId(kid)) => Ok(Box::new(VaultRootKey::from_key_id(kid, self.vault()?.clone())?)),
            None => Err(CryptoError::Corrupt { what: "wrapped data key", reason: "names no root".into() }.into()),
        }
    }

    fn root_ref(&self, root: &TenantRoot) -> Result<RootKeyRef, KeyringError> {
        Ok(self.root_key(root)?.reference())
    }

    /// `key` wrapped by `root`, as it is stored.
    async fn wrap(
        &self,
        root: &TenantRoot,
        key: &DataKey,
        created_at_unix_ms: i64,
    ) -> Result<WrappedDataKey, KeyringError> {
        crate::metrics::root_key_operation();
        let wrapped = self.root_key(root)?.wrap(key).await?;
        Ok(WrappedDataKey {
            wrapped_by: Some(wrapped.wrapped_by),
            algorithm: WRAP_ALGORITHM.into(),
            wrapped: wrapped.wrapped,
            created_at_unix_ms,
            root_fingerprint: wrapped.fingerprint,
        })
    }

    fn cached(&self, id: &[u8]) -> Option<Arc<DataKey>> {
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
        crate::metrics::data_key_lookup(fresh.is_some());
        fresh
    }

    fn remember(&self, id: &[u8], key: &Arc<DataKey>) {
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= self.limits.max_entries {
            let oldest = cache.iter().min_by_key(|(_, entry)| entry.loaded_ms).map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(id.to_vec(), Cached { key: key.clone(), loaded_ms: self.clock.now_ms(), uses: 1 });
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
        let algorithm = WrapAlgorithm::parse(&wrapped.algorithm)?;
        Ok(self.stored_root(wrapped)?.unwrap(&wrapped.wrapped, algorithm).await?)
    }

    async fn create(
        &self,
        tenant: &str,
        layer: Layer,
        id: &[u8],
        root: &TenantRoot,
        now_ms: i64,
    ) -> Result<Arc<DataKey>, KeyringError> {
        let key = DataKey::generate();
        let wrapped = self.wrap(root, &key, now_ms).await?;
        let mut txn = self.store.transaction();
        txn.put_data_key(id, &wrapped);
        txn.event(
            tenant,
            Kind::DataKeyCreated(DataKeyCreated {
                data_key_id: id.to_vec(),
                layer: layer as i32,
                wrapped_by: wrapped.wrapped_by,
            }),
        );
        txn.commit(now_ms)?;
        let key = Arc::new(key);
        self.remember(id, &key);
        Ok(key)
    }
}

fn progress(rewrapped: u32, total: u32, target: &RootKeyRef) -> RewrapProgress {
    RewrapProgress { rewrapped, total, target: Some(target.clone()) }
}

fn same_root(a: &RootKeyRef, b: &RootKeyRef) -> bool {
    match (&a.root, &b.root) {
        (Some(Root::VaultKeyId(x)), Some(Root::VaultKeyId(y))) => x.eq_ignore_ascii_case(y),
        (x, y) => x == y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn keyring(dir: &std::path::Path, clock: &ManualClock, max_age: Duration) -> Keyring {
        let store = Arc::new(Store::open(&dir.join("db")).unwrap());
        let managed = ManagedRootKeys::load_or_create(&dir.join("root-keys")).unwrap();
        let limits = CacheLimits { max_age, ..CacheLimits::default() };
        Keyring::new(store, managed, Err("no vault".into()), limits, RotationLimits::default(), Arc::new(clock.clone()))
    }

    #[tokio::test]
    async fn writer_keys_are_dropped_at_the_cache_age_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let keyring = keyring(dir.path(), &clock, Duration::from_secs(60));
        let lease = keyring.reserve("a", Layer::Hot, clock.now_ms(), 10).await.unwrap();
        let (id, held) = (lease.id.clone(), Arc::downgrade(&lease.key));
        drop(lease);
        assert_eq!(keyring.cached_keys_of("a"), 1);

        clock.advance(Duration::from_secs(59));
        assert_eq!(keyring.evict_expired(), 0, "younger than the cache age");
        clock.advance(Duration::from_secs(1));
        assert_eq!(keyring.evict_expired(), 2, "the cached copy and the writer's");
        assert_eq!(keyring.cached_keys_of("a"), 0);
        assert!(held.upgrade().is_none(), "no copy of the key is left in memory");

        let again = keyring.reserve("a", Layer::Hot, clock.now_ms(), 10).await.unwrap();
        assert_eq!(again.id, id, "the same writer goes on, its key unwrapped again");
    }

    #[tokio::test]
    async fn forgetting_a_tenant_drops_its_keys_and_no_one_elses() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let keyring = keyring(dir.path(), &clock, Duration::from_secs(300));
        let now = clock.now_ms();
        let mut held = Vec::new();
        for (tenant, layer) in [("a", Layer::Hot), ("a", Layer::Sealed), ("ab", Layer::Hot)] {
            held.push(Arc::downgrade(&keyring.reserve(tenant, layer, now, 1).await.unwrap().key));
        }
        assert_eq!((keyring.cached_keys_of("a"), keyring.cached_keys_of("ab")), (2, 1));

        keyring.forget_tenant("a");
        assert_eq!((keyring.cached_keys_of("a"), keyring.cached_keys_of("ab")), (0, 1));
        assert!(held[0].upgrade().is_none() && held[1].upgrade().is_none(), "a's keys are gone from memory");
        assert!(held[2].upgrade().is_some(), "a tenant whose id starts alike keeps its key");
    }

    #[test]
    fn a_writer_retires_when_full_when_too_old_or_on_a_new_day() {
        let rotation = RotationLimits { max_age: Duration::from_secs(3600), max_records: 10 };
        let day_ms = 86_400_000;
        let created = 5 * day_ms + 1000;
        let key = Arc::new(DataKey::generate());
        let mut writer = Writer {
            id: DataKeyId { tenant: "t".into(), layer: Layer::Hot, bucket: utc_day(created), generation: 0 },
            id_bytes: Vec::new(),
            key: Some(key.clone()),
            loaded_ms: created,
            created_at_ms: created,
            used: 0,
        };
        assert!(writer.takes_more(created + 1000, &rotation));
        assert!(!writer.takes_more(created + 3_600_000, &rotation), "too old");
        assert!(!writer.takes_more(created + day_ms, &rotation), "another day");
        assert_eq!(writer.grant(key.clone(), 4, &rotation).granted, 4);
        assert_eq!(writer.grant(key, 25, &rotation).granted, 6, "never past the limit");
        assert!(!writer.takes_more(created + 1000, &rotation), "full");
    }
}
