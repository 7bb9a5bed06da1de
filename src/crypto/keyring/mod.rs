//! The keyring hands out usable data keys: from a bounded in-memory cache,
//! else by unwrapping the stored wrapped key with its root, else by creating
//! and wrapping a new one (committed, with a `DataKeyCreated` event, by the
//! transaction of the batch whose records it encrypts first; see
//! `writers`). Root-key calls therefore happen per data key, never per
//! record.
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
//! its current root in committed steps without touching a record, with up
//! to [`Keyring::with_vault_concurrency`] root-key calls in flight.
//!
//! One concern per file: `cache` (unwrapped keys in memory and their
//! eviction), `writers` (writer keys, rotation and creation), `rewrap`
//! (moving keys to a new root) and `retire` (deleting unused keys); this
//! file holds the types and the dispatch to root keys.

mod cache;
mod retire;
mod rewrap;
mod writers;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use self::cache::Cached;
pub use self::rewrap::REWRAP_STEP;
pub use self::writers::{BatchId, NewDataKey};
use self::writers::{Unsettled, Writer};
use super::CryptoError;
use super::data_key::{DataKey, DataKeyId};
use super::root_key::{ManagedRootKeys, RootKey, RootKeyError, VaultRootKey, WRAP_ALGORITHM, WrapAlgorithm};
use crate::audit::key_use::KeyUse;
use crate::clock::SharedClock;
use crate::error::ErrorCode;
use crate::keyvault::key_uri::KeyUriError;
use crate::keyvault::{KeyUri, Vault, VaultError};
use crate::placement::ShardId;
use crate::proto::store::WrappedDataKey;
use crate::proto::v1::key_used::Operation;
use crate::proto::v1::{KeyPurpose, Layer, RootKeyRef, root_key_ref::Root};
use crate::storage::{Scope, Scoped, Store, StoreError};

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
    /// The key, if this reservation created it: the batch's transaction
    /// must commit it ([`NewDataKey::join`]) before the records it encrypts
    /// mean anything, then [`Keyring::settle`] the batch.
    pub created: Option<NewDataKey>,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(300), max_uses: 1 << 20, max_entries: 4096 }
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
    /// Keys created by batches that have not committed yet.
    unsettled: Mutex<Vec<Unsettled>>,
    /// Woken whenever a batch's keys are settled.
    settled: tokio::sync::Notify,
    batches: AtomicU64,
    /// Serialises creation so two tasks never create the same key twice,
    /// and so a root change never misses a key created meanwhile.
    creating: tokio::sync::Mutex<()>,
    /// One rewrap or retirement at a time, so a key is never written by two.
    rewrapping: tokio::sync::Mutex<()>,
    /// Most root-key calls one rewrap keeps in flight.
    vault_concurrency: usize,
    /// The shard whose keys these are (the metrics' `shard` label).
    shard: ShardId,
}

/// Root-key calls a rewrap keeps in flight unless told otherwise: enough to
/// cover a remote vault's latency (16 at 35 ms a call is 450 calls a
/// second); the vault client's pacing (`--vault-rate`) keeps them under
/// the vault's limit.
pub const VAULT_CONCURRENCY: usize = 16;

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
            unsettled: Mutex::new(Vec::new()),
            settled: tokio::sync::Notify::new(),
            batches: AtomicU64::new(0),
            creating: tokio::sync::Mutex::new(()),
            rewrapping: tokio::sync::Mutex::new(()),
            vault_concurrency: VAULT_CONCURRENCY,
            shard: ShardId::default(),
        }
    }

    /// The same keyring, labelled as shard `shard`'s in metrics.
    pub fn for_shard(self, shard: ShardId) -> Self {
        Self { shard, ..self }
    }

    /// The same keyring keeping at most `calls` root-key calls of a rewrap
    /// in flight (`--vault-concurrency`; 1 rewraps one key at a time).
    pub fn with_vault_concurrency(self, calls: usize) -> Self {
        Self { vault_concurrency: calls.max(1), ..self }
    }

    /// The rotation limits writer keys follow.
    pub fn rotation(&self) -> RotationLimits {
        self.rotation
    }

    /// The data key with id `id`, from memory or unwrapped from the store
    /// (a root-key call, audited as done for `purpose`).
    pub async fn key(&self, id: &[u8], purpose: KeyPurpose) -> Result<Arc<DataKey>, KeyringError> {
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        self.load(id, purpose).await?.ok_or(KeyringError::UnknownDataKey)
    }

    /// The data key with id `id` if it is unwrapped in memory now: never a
    /// root-key call.
    pub fn cached_key(&self, id: &[u8]) -> Option<Arc<DataKey>> {
        self.cached(id)
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

    /// `key` (data key `id`) wrapped by `root`, as it is stored; the call
    /// is audited as done for `purpose`.
    async fn wrap(
        &self,
        root: &TenantRoot,
        key: &DataKey,
        id: &[u8],
        created_at_unix_ms: i64,
        purpose: KeyPurpose,
    ) -> Result<WrappedDataKey, KeyringError> {
        let root_key = self.root_key(root)?;
        let tenant = DataKeyId::from_bytes(id)?.tenant;
        let usage = KeyUse { store: &self.store, tenant: &tenant, data_key_id: id, purpose };
        let wrapped = usage
            .run(&root_key.reference(), Operation::Wrap, |request| async move {
                root_key.wrap(key, request.as_deref()).await
            })
            .await?;
        Ok(WrappedDataKey {
            wrapped_by: Some(wrapped.wrapped_by),
            algorithm: WRAP_ALGORITHM.into(),
            wrapped: wrapped.wrapped,
            created_at_unix_ms,
            root_fingerprint: wrapped.fingerprint,
        })
    }

    /// Data key `id` unwrapped from its stored form; audited as done for `purpose`.
    async fn unwrap(&self, id: &[u8], wrapped: &WrappedDataKey, purpose: KeyPurpose) -> Result<DataKey, KeyringError> {
        let algorithm = WrapAlgorithm::parse(&wrapped.algorithm)?;
        let root_key = self.stored_root(wrapped)?;
        let tenant = DataKeyId::from_bytes(id)?.tenant;
        let usage = KeyUse { store: &self.store, tenant: &tenant, data_key_id: id, purpose };
        Ok(usage
            .run(&root_key.reference(), Operation::Unwrap, |request| async move {
                root_key.unwrap(&wrapped.wrapped, algorithm, request.as_deref()).await
            })
            .await?)
    }
}

fn same_root(a: &RootKeyRef, b: &RootKeyRef) -> bool {
    match (&a.root, &b.root) {
        (Some(Root::VaultKeyId(x)), Some(Root::VaultKeyId(y))) => x.eq_ignore_ascii_case(y),
        (x, y) => x == y,
    }
}

impl ErrorCode for KeyringError {
    fn code(&self) -> &'static str {
        match self {
            Self::Crypto(e) => e.code(),
            Self::Store(e) => e.code(),
            Self::UnknownDataKey => "data_key_not_found",
            Self::Vault(e) => e.code(),
            Self::KeyUri(e) => e.code(),
            Self::VaultNotConfigured(_) => "vault_not_configured",
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::Crypto(e) => e.is_retryable(),
            Self::Store(e) => e.is_retryable(),
            Self::Vault(e) => e.is_retryable(),
            Self::UnknownDataKey | Self::KeyUri(_) | Self::VaultNotConfigured(_) => false,
        }
    }
}

impl Scoped for KeyringError {
    fn scope(self) -> Scope<Self> {
        match self {
            Self::Store(e) => Scope::Store(e),
            other => Scope::Contained(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    /// Reserves as a batch does, committing the key it created, if any.
    pub(super) async fn reserve_committed(
        keyring: &Keyring,
        tenant: &str,
        layer: Layer,
        now_ms: i64,
        wanted: u64,
    ) -> WriteKey {
        let batch = keyring.batch();
        let mut lease = keyring.reserve(tenant, layer, now_ms, wanted, batch, KeyPurpose::Store).await.unwrap();
        if let Some(created) = lease.created.take() {
            let mut txn = keyring.store.transaction();
            created.join(&mut txn);
            txn.commit(now_ms).unwrap();
            keyring.settle(batch, true);
        }
        lease
    }

    pub(super) fn keyring(dir: &std::path::Path, clock: &ManualClock, max_age: Duration) -> Keyring {
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
        let lease = reserve_committed(&keyring, "a", Layer::Hot, clock.now_ms(), 10).await;
        let (id, held) = (lease.id.clone(), Arc::downgrade(&lease.key));
        drop(lease);
        assert_eq!(keyring.cached_keys_of("a"), 1);

        clock.advance(Duration::from_secs(59));
        assert_eq!(keyring.evict_expired(), 0, "younger than the cache age");
        clock.advance(Duration::from_secs(1));
        assert_eq!(keyring.evict_expired(), 2, "the cached copy and the writer's");
        assert_eq!(keyring.cached_keys_of("a"), 0);
        assert!(held.upgrade().is_none(), "no copy of the key is left in memory");

        let again = reserve_committed(&keyring, "a", Layer::Hot, clock.now_ms(), 10).await;
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
            held.push(Arc::downgrade(&reserve_committed(&keyring, tenant, layer, now, 1).await.key));
        }
        assert_eq!((keyring.cached_keys_of("a"), keyring.cached_keys_of("ab")), (2, 1));

        keyring.forget_tenant("a");
        assert_eq!((keyring.cached_keys_of("a"), keyring.cached_keys_of("ab")), (0, 1));
        assert!(held[0].upgrade().is_none() && held[1].upgrade().is_none(), "a's keys are gone from memory");
        assert!(held[2].upgrade().is_some(), "a tenant whose id starts alike keeps its key");
    }
}
