//! A shard: one store with its keyring and clock, the handle every task of
//! the shard shares. It holds no task's state (each task keeps its own and
//! hands the admin API a read-only view of it) and imports nothing above
//! storage and crypto, so a process can open several shards side by side.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tracing::warn;

use crate::clock::SharedClock;
use crate::config::{Secret, Settings};
use crate::crypto::CryptoError;
use crate::crypto::keyring::Keyring;
use crate::crypto::root_key::{ManagedRootKeys, RootExpectation};
use crate::keyvault::{Vault, credential};
use crate::storage::{Store, StoreError, read_root_record};

/// Which shard of the deployment: an index from 0 to the shard count − 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

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

impl Shard {
    /// Opens the shard's store and managed root key under `settings.data_dir`
    /// and builds its keyring. A missing Key Vault credential is not fatal:
    /// tenants on the managed key work, and enabling a customer key says why not.
    pub fn open(id: ShardId, settings: &Settings, clock: SharedClock) -> Result<Self, OpenError> {
        let dir = settings.data_dir.clone();
        let store_dir = store_dir(&dir, id, settings.shards);
        let parent = store_dir.parent().unwrap_or(&dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|source| OpenError::DataDir { dir: parent, source })?;
        let store = Arc::new(Store::open(&store_dir).map_err(|source| OpenError::Store { dir: store_dir, source })?);
        let expected = RootExpectation {
            fingerprints: store.managed_root_fingerprints()?,
            holds_data_keys: store.holds_data_keys()?,
        };
        let managed = ManagedRootKeys::open(&dir.join("root-keys"), &expected)?;
        store.record_managed_root_fingerprints(&managed.fingerprints())?;
        let vault =
            credential::credential(settings.vault_credential, settings.vault_token.as_ref().map(Secret::expose))
                .map_err(|e| e.to_string())
                .and_then(|c| Vault::new(c, settings.vault_options()).map_err(|e| e.to_string()))
                .map(Arc::new);
        if let Err(reason) = &vault {
            warn!(%reason, "no Key Vault client: tenants cannot enable their own key until this is fixed");
        }
        let keyring = Keyring::new(
            store.clone(),
            managed,
            vault,
            settings.cache_limits(),
            settings.rotation_limits(),
            clock.clone(),
        )
        .with_vault_concurrency(settings.vault_concurrency)
        .for_shard(id);
        Ok(Self { id, store, keyring, clock })
    }

    /// The shard clock's now, in Unix ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}
