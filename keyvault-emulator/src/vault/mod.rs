//! The vault's keys and the operations Key Vault offers on them: creating,
//! reading, updating, backing up and restoring versions here, rotating
//! (by hand and by policy) in `rotation`, deleting, recovering and purging
//! in `deletion`. The rules themselves are the model's; the vault applies
//! them to its keys under one lock, and writes every change to the
//! [`KeyStore`] before it becomes visible, so a crash never shows a state
//! the disk lacks.

mod deletion;
mod rotation;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::RwLock;

use crate::error::{EmulatorError, ServiceError};
use crate::material::KeyMaterial;
use crate::model::{DeletionPolicy, KeyOperation, KeyRecord, KeyVersion, KeyView, NewVersion, PropsChange};
use crate::store::{self, KeyStore};

/// Every key of the emulator: held in memory for reads, written through
/// the store on every change. One per emulator, shared by all requests and
/// by housekeeping.
pub(crate) struct Vault {
    policy: DeletionPolicy,
    store: Arc<KeyStore>,
    /// Keyed by the lowercase name.
    keys: RwLock<BTreeMap<String, KeyRecord>>,
}

impl Vault {
    /// Loads every key the store holds.
    pub(crate) async fn open(store: KeyStore, policy: DeletionPolicy) -> Result<Self, EmulatorError> {
        let store = Arc::new(store);
        let loader = store.clone();
        let records = tokio::task::spawn_blocking(move || loader.load()).await.map_err(|e| {
            EmulatorError::StateIo { path: store.dir().to_path_buf(), source: std::io::Error::other(e) }
        })??;
        let keys = records.into_iter().map(|record| (record.name.to_ascii_lowercase(), record)).collect();
        Ok(Self { policy, store, keys: RwLock::new(keys) })
    }

    /// The vault's deletion policy, which every response reports in a
    /// key's `recoveryLevel` and `recoverableDays`.
    pub(crate) fn policy(&self) -> &DeletionPolicy {
        &self.policy
    }

    /// Adds a version to `name`, creating the key if it does not exist
    /// (create and import).
    pub(crate) async fn create(
        &self,
        name: &str,
        new: NewVersion,
        material: KeyMaterial,
        now: i64,
    ) -> Result<KeyView, ServiceError> {
        let id = new_version_id()?;
        self.mutate(name, |record| {
            let record = record.get_or_insert_with(|| KeyRecord::new(name));
            if record.deleted.is_some() {
                return Err(ServiceError::name_held_by_deleted_key(&record.name));
            }
            let version = KeyVersion { id, props: new.into_props(now), material: Arc::new(material) };
            record.versions.push(version.clone());
            Ok(record.view(&version))
        })
        .await
    }

    /// The whole record of a live key, private keys included, for a backup.
    pub(crate) async fn backup(&self, name: &str) -> Result<KeyRecord, ServiceError> {
        let keys = self.keys.read().await;
        live(keys.get(&name.to_ascii_lowercase()), name).cloned()
    }

    /// Brings back a backed-up key under its name, which must be free
    /// (neither live nor soft-deleted), as Key Vault requires.
    pub(crate) async fn restore(&self, mut record: KeyRecord) -> Result<KeyView, ServiceError> {
        record.deleted = None;
        let name = record.name.clone();
        self.mutate(&name, |slot| {
            if slot.is_some() {
                return Err(ServiceError::conflict(format!(
                    "Key {name} cannot be restored: a key or a deleted key with this name exists."
                )));
            }
            let record = slot.insert(record);
            let latest = record.latest().ok_or_else(|| ServiceError::key_not_found(&name))?;
            Ok(record.view(latest))
        })
        .await
    }

    /// A version (latest when `None`) of a key that is not deleted.
    pub(crate) async fn get(&self, name: &str, version: Option<&str>) -> Result<KeyView, ServiceError> {
        let keys = self.keys.read().await;
        let record = live(keys.get(&name.to_ascii_lowercase()), name)?;
        let found = record.version(version).ok_or_else(|| not_found(name, version))?;
        Ok(record.view(found))
    }

    /// A version that may perform `operation` now.
    pub(crate) async fn usable(
        &self,
        name: &str,
        version: Option<&str>,
        operation: KeyOperation,
        now: i64,
    ) -> Result<KeyView, ServiceError> {
        let view = self.get(name, version).await?;
        view.version.props.check_usable(operation, now)?;
        Ok(view)
    }

    /// The latest version of every key that is not deleted, by name.
    pub(crate) async fn list_latest(&self) -> Vec<KeyView> {
        self.latest_versions(false).await
    }

    /// The latest version of every key that is soft-deleted (`deleted`) or
    /// not, by name: what the two key lists show.
    async fn latest_versions(&self, deleted: bool) -> Vec<KeyView> {
        let keys = self.keys.read().await;
        keys.values()
            .filter(|record| record.deleted.is_some() == deleted)
            .filter_map(|record| record.latest().map(|v| record.view(v)))
            .collect()
    }

    /// Every version of a key that is not deleted, oldest first.
    pub(crate) async fn versions(&self, name: &str) -> Result<Vec<KeyView>, ServiceError> {
        let keys = self.keys.read().await;
        let record = live(keys.get(&name.to_ascii_lowercase()), name)?;
        Ok(record.versions.iter().map(|v| record.view(v)).collect())
    }

    /// Changes the attributes of a version (latest when `None`).
    pub(crate) async fn update(
        &self,
        name: &str,
        version: Option<&str>,
        change: PropsChange,
        now: i64,
    ) -> Result<KeyView, ServiceError> {
        self.mutate(name, |record| {
            let record = live(record.as_mut(), name)?;
            let index = match version {
                None => record.versions.len().checked_sub(1),
                Some(id) => record.versions.iter().position(|v| v.id.eq_ignore_ascii_case(id)),
            }
            .ok_or_else(|| not_found(name, version))?;
            let props = &mut record.versions[index].props;
            if let Some(enabled) = change.enabled {
                props.enabled = enabled;
            }
            if let Some(nbf) = change.nbf {
                props.nbf = Some(nbf);
            }
            if let Some(exp) = change.exp {
                props.exp = Some(exp);
            }
            if let Some(key_ops) = change.key_ops {
                props.key_ops = key_ops;
            }
            if let Some(tags) = change.tags {
                props.tags = tags;
            }
            if let Some(policy) = change.release_policy {
                if !props.exportable {
                    return Err(ServiceError::bad_parameter("Non-exportable keys must not have a release policy."));
                }
                if props.release_policy.as_ref().is_some_and(|old| old.immutable) {
                    return Err(ServiceError::bad_parameter(
                        "The key's release policy is immutable and cannot be changed.",
                    ));
                }
                props.release_policy = Some(policy);
            }
            props.updated = now;
            Ok(record.view(&record.versions[index]))
        })
        .await
    }

    /// Applies `change` to a copy of the key's record (`None` when absent),
    /// persists the result and only then makes it visible. Writers are
    /// serialised by the lock, so the disk sees changes in order.
    async fn mutate<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut Option<KeyRecord>) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let lookup = name.to_ascii_lowercase();
        let mut keys = self.keys.write().await;
        let mut slot = keys.get(&lookup).cloned();
        let outcome = change(&mut slot)?;
        self.persist(&lookup, slot.as_ref()).await?;
        match slot {
            Some(record) => keys.insert(lookup, record),
            None => keys.remove(&lookup),
        };
        Ok(outcome)
    }

    /// Writes the record of `lookup` (its lowercase name) to the store, or
    /// removes it when `None`, off the async runtime.
    async fn persist(&self, lookup: &str, record: Option<&KeyRecord>) -> Result<(), ServiceError> {
        let document = record.map(store::encode).transpose().map_err(|e| internal("encode key", lookup, &e))?;
        let store = self.store.clone();
        let file_name = lookup.to_owned();
        let written = tokio::task::spawn_blocking(move || match document {
            Some(bytes) => store.save(&file_name, &bytes),
            None => store.remove(&file_name),
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        written.map_err(|e| internal("persist key", lookup, &e))
    }
}

/// Logs why the emulator failed and answers 500.
fn internal(what: &str, key: &str, error: &dyn std::fmt::Display) -> ServiceError {
    tracing::error!(key, error = %error, "key vault emulator could not {what}");
    ServiceError::internal()
}

/// 404 for a key or one of its versions, naming what was asked for.
fn not_found(name: &str, version: Option<&str>) -> ServiceError {
    match version {
        Some(version) => ServiceError::key_not_found(&format!("{name}/{version}")),
        None => ServiceError::key_not_found(name),
    }
}

/// The record (`&` or `&mut`) of a key that exists and is not deleted;
/// 404 otherwise.
fn live<R: Deref<Target = KeyRecord>>(record: Option<R>, name: &str) -> Result<R, ServiceError> {
    record.filter(|record| record.deleted.is_none()).ok_or_else(|| ServiceError::key_not_found(name))
}

/// The record (`&` or `&mut`) of a soft-deleted key; 404 otherwise.
fn soft_deleted<R: Deref<Target = KeyRecord>>(record: Option<R>, name: &str) -> Result<R, ServiceError> {
    record.filter(|record| record.deleted.is_some()).ok_or_else(|| ServiceError::deleted_key_not_found(name))
}

/// A fresh version id: 16 random bytes as 32 lowercase hex characters, the
/// shape of Key Vault's.
fn new_version_id() -> Result<String, ServiceError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| internal("draw a version id", "-", &e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::{Curve, KeySpec, KeyType};
    use crate::model::{ActionType, IsoDuration, LifetimeAction, SECONDS_PER_DAY, Trigger};
    use crate::settings::RecoveryLevel;

    async fn vault(dir: &std::path::Path) -> Vault {
        let policy = DeletionPolicy::new(RecoveryLevel::Purgeable, 0).expect("policy");
        Vault::open(KeyStore::open(dir).expect("store"), policy).await.expect("vault")
    }

    fn ec(curve: Curve) -> KeyMaterial {
        KeyMaterial::generate(KeySpec::Ec(curve)).expect("generate")
    }

    fn new_ec() -> NewVersion {
        NewVersion {
            kty: KeyType::Ec,
            key_ops: vec!["sign".to_owned()],
            enabled: true,
            nbf: None,
            exp: None,
            tags: BTreeMap::new(),
            exportable: false,
            release_policy: None,
        }
    }

    #[tokio::test]
    async fn a_rotation_whose_material_no_longer_fits_the_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vault = vault(dir.path()).await;
        vault.create("k", new_ec(), ec(Curve::P256), 0).await.expect("create");
        // Generated for a P-256 key, but the key is P-384 by the time it lands.
        vault.create("k", new_ec(), ec(Curve::P384), 1).await.expect("new version");
        assert_eq!(vault.rotate("k", ec(Curve::P256), 2).await.unwrap_err().status, 409);
        assert_eq!(vault.versions("k").await.expect("versions").len(), 2, "nothing stored");
        assert!(vault.rotate("k", ec(Curve::P384), 3).await.is_ok());
    }

    #[tokio::test]
    async fn a_policy_rotation_is_skipped_once_its_policy_no_longer_asks_for_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vault = vault(dir.path()).await;
        let first = vault.create("k", new_ec(), ec(Curve::P256), 0).await.expect("create").version.id;
        let after = IsoDuration::try_from("P30D".to_owned()).expect("duration");
        let rotate = vec![LifetimeAction { trigger: Trigger::AfterCreate(after), action: ActionType::Rotate }];
        vault.set_rotation_policy("k", rotate, None, 0).await.expect("policy");
        let due_at = 31 * SECONDS_PER_DAY;
        assert_eq!(vault.rotations_due(due_at).await.len(), 1);
        let rotated = vault.rotate_by_policy("k", &first, ec(Curve::P256), due_at).await.expect("rotate");
        let second = rotated.expect("due, so rotated").version.id;
        // A second attempt for the same due rotation does nothing.
        assert!(vault.rotate_by_policy("k", &first, ec(Curve::P256), due_at).await.expect("skip").is_none());
        // The policy is dropped while a rotation's key is being generated.
        vault.set_rotation_policy("k", Vec::new(), None, due_at).await.expect("policy");
        let later = due_at + 31 * SECONDS_PER_DAY;
        assert!(vault.rotate_by_policy("k", &second, ec(Curve::P256), later).await.expect("skip").is_none());
        assert_eq!(vault.versions("k").await.expect("versions").len(), 2);
    }

    #[test]
    fn version_ids_look_like_key_vault_ones() {
        let id = new_version_id().expect("random");
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
        assert_ne!(id, new_version_id().expect("random"));
    }
}
