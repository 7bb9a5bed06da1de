//! A shard: one store with its keyring and clock, the handle every task of
//! the shard shares. It holds no task's state (each task keeps its own and
//! hands the admin API a read-only view of it) and imports nothing above
//! storage and crypto, so a process can open several shards side by side.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::clock::SharedClock;
use crate::crypto::CryptoError;
use crate::crypto::keyring::{CacheLimits, Keyring, RotationLimits, VAULT_CONCURRENCY};
use crate::crypto::root_key::{ManagedRootKeys, RootExpectation};
use crate::error::ErrorCode;
use crate::keyvault::Vault;
use crate::placement::ShardId;
use crate::storage::{Store, StoreError, read_root_record};

/// Where shard `id`'s store lives in `data_dir`: `shards/<id>/`, or `db/`
/// in a one-shard deployment (the layout from before shards, kept so such a
/// data dir goes on working unchanged).
pub fn store_dir(data_dir: &Path, id: ShardId, shards: u32) -> PathBuf {
    if shards == 1 { data_dir.join("db") } else { data_dir.join("shards").join(id.to_string()) }
}

/// The deployment's managed root keys as this worker's data dir holds
/// them, for what the worker does besides running shards (authenticating
/// forwarded requests). Loads the key files; creates the first version
/// only when there is none and no store under the data dir expects one (a
/// fresh deployment), exactly as opening a shard would.
pub fn deployment_root_keys(data_dir: &Path, shards: u32) -> Result<ManagedRootKeys, OpenError> {
    let dir = data_dir.join("root-keys");
    let mut expected = RootExpectation::default();
    if !ManagedRootKeys::exist_in(&dir) {
        for id in (0..shards).map(ShardId) {
            if let Some(record) = read_root_record(&store_dir(data_dir, id, shards))? {
                for (version, fingerprint) in record.fingerprints {
                    expected.fingerprints.entry(version).or_insert(fingerprint);
                }
                expected.holds_data_keys |= record.holds_data_keys;
            }
        }
    }
    Ok(ManagedRootKeys::open(&dir, &expected)?)
}

/// Why a shard could not be opened. Nothing was changed on disk.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The data dir could not be created.
    #[error("creating data dir {dir}: {source}")]
    DataDir {
        /// The dir.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened (locked by another owner, corrupt, unreadable).
    #[error("opening the store in {dir}: {source}")]
    Store {
        /// The shard's data dir.
        dir: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The managed root key is missing, damaged or not the one the store was written with.
    #[error("loading the managed root key: {0}")]
    ManagedRoot(#[from] CryptoError),
    /// Reading or recording the managed root's fingerprints failed.
    #[error(transparent)]
    Fingerprints(#[from] StoreError),
}

/// The handle a shard's tasks share.
pub struct Shard {
    /// Which shard this is.
    pub id: ShardId,
    /// Its store: records, data keys, the event log and projections.
    pub store: Arc<Store>,
    /// Its data keys and the roots that wrap them.
    pub keyring: Keyring,
    /// The time every decision of the shard is made on.
    pub clock: SharedClock,
}

/// What opening a shard needs besides its id and the worker's vault
/// client: where the data lives and how its keyring keeps keys.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// The worker's data dir (`--data-dir`).
    pub data_dir: PathBuf,
    /// The deployment's shard count.
    pub shards: u32,
    /// How long and how much unwrapped keys are reused from memory.
    pub cache_limits: CacheLimits,
    /// When writer keys rotate.
    pub rotation_limits: RotationLimits,
    /// Most root-key calls one rewrap keeps in flight.
    pub vault_concurrency: usize,
}

impl ShardOptions {
    /// A one-shard deployment in `data_dir` with the default key limits
    /// (what tests and benchmarks open).
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            shards: 1,
            cache_limits: CacheLimits::default(),
            rotation_limits: RotationLimits::default(),
            vault_concurrency: VAULT_CONCURRENCY,
        }
    }
}

/// The worker's one Key Vault client, shared by all its shards so that
/// `--vault-rate` paces the worker's calls to each vault, or why there is
/// none (tenants on the managed key work without it).
pub type WorkerVault = Result<Arc<Vault>, String>;

impl Shard {
    /// Opens the shard's store and managed root key under the data dir and
    /// builds its keyring, on the worker's `vault` client.
    pub fn open(
        id: ShardId,
        options: &ShardOptions,
        vault: WorkerVault,
        clock: SharedClock,
    ) -> Result<Self, OpenError> {
        let dir = options.data_dir.clone();
        let store_dir = store_dir(&dir, id, options.shards);
        let parent = store_dir.parent().unwrap_or(&dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|source| OpenError::DataDir { dir: parent, source })?;
        let store = Arc::new(Store::open(&store_dir).map_err(|source| OpenError::Store { dir: store_dir, source })?);
        let expected = RootExpectation {
            fingerprints: store.managed_root_fingerprints()?,
            holds_data_keys: store.holds_data_keys()?,
        };
        let managed = ManagedRootKeys::open(&dir.join("root-keys"), &expected)?;
        store.record_managed_root_fingerprints(&managed.fingerprints())?;
        let keyring =
            Keyring::new(store.clone(), managed, vault, options.cache_limits, options.rotation_limits, clock.clone())
                .with_vault_concurrency(options.vault_concurrency)
                .for_shard(id);
        Ok(Self { id, store, keyring, clock })
    }

    /// The shard clock's now, in Unix ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

impl ErrorCode for OpenError {
    fn code(&self) -> &'static str {
        match self {
            Self::DataDir { .. } => "data_dir_unusable",
            Self::Store { source, .. } | Self::Fingerprints(source) => source.code(),
            Self::ManagedRoot(e) => e.code(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            // A mount or disk that comes back.
            Self::DataDir { .. } => true,
            Self::Store { source, .. } | Self::Fingerprints(source) => source.is_retryable(),
            Self::ManagedRoot(e) => e.is_retryable(),
        }
    }
}
