//! The vault's keys and the rules Key Vault applies to them: versions and
//! their attributes, which version "latest" is, soft deletion under the
//! vault's recovery level, and whether a version may be used for an
//! operation right now. Every change is written to the [`KeyStore`] before
//! it becomes visible, so a crash never shows a state the disk lacks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use super::error::ServiceError;
use super::material::{KeyMaterial, KeyType};
use super::store::{self, KeyStore};
use super::{EmulatorError, RecoveryLevel};

const SECONDS_PER_DAY: i64 = 86_400;

/// Current time as Key Vault's timestamps: integer Unix seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

/// How deleting a key behaves in this vault.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeletionPolicy {
    level: RecoveryLevel,
    recoverable_days: u32,
}

impl DeletionPolicy {
    /// Checks the retention Key Vault allows: 7 to 90 days with soft delete.
    pub(crate) fn new(level: RecoveryLevel, recoverable_days: u32) -> Result<Self, EmulatorError> {
        if level.soft_delete() && !(7..=90).contains(&recoverable_days) {
            return Err(EmulatorError::InvalidSetting(format!(
                "--recoverable-days must be between 7 and 90 with recovery level {}, not {recoverable_days}",
                level.as_str()
            )));
        }
        Ok(Self { level, recoverable_days })
    }

    pub(crate) fn level(&self) -> RecoveryLevel {
        self.level
    }

    /// `recoverableDays` as Key Vault reports it: 0 without soft delete.
    pub(crate) fn recoverable_days(&self) -> u32 {
        if self.level.soft_delete() { self.recoverable_days } else { 0 }
    }
}

/// The cryptographic operations a request can ask of a key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyOperation {
    Encrypt,
    Decrypt,
    WrapKey,
    UnwrapKey,
}

impl KeyOperation {
    /// Parses the last path segment (`wrapkey`, case-insensitive).
    pub(crate) fn from_path_segment(segment: &str) -> Option<Self> {
        match segment.to_ascii_lowercase().as_str() {
            "encrypt" => Some(Self::Encrypt),
            "decrypt" => Some(Self::Decrypt),
            "wrapkey" => Some(Self::WrapKey),
            "unwrapkey" => Some(Self::UnwrapKey),
            _ => None,
        }
    }

    /// The path segment, also the name the call counter uses.
    pub(crate) fn path_segment(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::WrapKey => "wrapkey",
            Self::UnwrapKey => "unwrapkey",
        }
    }

    /// The `key_ops` value that permits the operation.
    pub(crate) fn key_op(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::WrapKey => "wrapKey",
            Self::UnwrapKey => "unwrapKey",
        }
    }

    /// Whether the operation protects new data. Key Vault refuses those
    /// outside the key's `nbf`..`exp` window but keeps decrypt and unwrap
    /// working, so nobody is locked out of data already protected.
    fn needs_validity_window(self) -> bool {
        matches!(self, Self::Encrypt | Self::WrapKey)
    }

    /// Whether the operation turns data into ciphertext.
    pub(crate) fn encrypts(self) -> bool {
        matches!(self, Self::Encrypt | Self::WrapKey)
    }
}

/// The attributes of one key version as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VersionProps {
    pub(crate) kty: KeyType,
    pub(crate) key_ops: Vec<String>,
    pub(crate) enabled: bool,
    pub(crate) nbf: Option<i64>,
    pub(crate) exp: Option<i64>,
    pub(crate) created: i64,
    pub(crate) updated: i64,
    pub(crate) tags: BTreeMap<String, String>,
}

impl VersionProps {
    /// Refuses an operation the way Key Vault does: disabled first, then a
    /// missing `key_ops` entry, then the validity window.
    pub(crate) fn check_usable(&self, operation: KeyOperation, now: i64) -> Result<(), ServiceError> {
        let name = operation.key_op();
        if !self.enabled {
            return Err(ServiceError::key_disabled(name));
        }
        if !self.key_ops.iter().any(|op| op == name) {
            return Err(ServiceError::operation_not_permitted(name));
        }
        if operation.needs_validity_window() {
            if self.nbf.is_some_and(|nbf| now < nbf) {
                return Err(ServiceError::key_not_yet_valid(name));
            }
            if self.exp.is_some_and(|exp| now >= exp) {
                return Err(ServiceError::key_expired(name));
            }
        }
        Ok(())
    }
}

/// One version of a key: its id (32 lowercase hex characters), attributes
/// and private key.
#[derive(Debug, Clone)]
pub(crate) struct KeyVersion {
    pub(crate) id: String,
    pub(crate) props: VersionProps,
    pub(crate) material: Arc<KeyMaterial>,
}

/// When a soft-deleted key was deleted and when it will be purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Deletion {
    pub(crate) deleted_date: i64,
    pub(crate) scheduled_purge_date: i64,
}

/// A key name with all its versions, oldest first, and its deletion state.
#[derive(Debug, Clone)]
pub(crate) struct KeyRecord {
    /// The name as first created; lookups ignore case like Key Vault's.
    pub(crate) name: String,
    pub(crate) versions: Vec<KeyVersion>,
    pub(crate) deleted: Option<Deletion>,
}

impl KeyRecord {
    fn latest(&self) -> Option<&KeyVersion> {
        self.versions.last()
    }

    /// The named version, or the latest when `version` is `None`.
    fn version(&self, version: Option<&str>) -> Option<&KeyVersion> {
        match version {
            None => self.latest(),
            Some(id) => self.versions.iter().find(|v| v.id.eq_ignore_ascii_case(id)),
        }
    }

    fn view(&self, version: &KeyVersion) -> KeyView {
        KeyView { name: self.name.clone(), version: version.clone(), deletion: self.deleted }
    }
}

/// What a read returns: a version together with its key's name and
/// deletion state, everything a response needs.
#[derive(Debug, Clone)]
pub(crate) struct KeyView {
    pub(crate) name: String,
    pub(crate) version: KeyVersion,
    pub(crate) deletion: Option<Deletion>,
}

/// The attributes of a version being created.
#[derive(Debug, Clone)]
pub(crate) struct NewVersion {
    pub(crate) kty: KeyType,
    pub(crate) key_ops: Vec<String>,
    pub(crate) enabled: bool,
    pub(crate) nbf: Option<i64>,
    pub(crate) exp: Option<i64>,
    pub(crate) tags: BTreeMap<String, String>,
}

/// A PATCH: only the fields that are `Some` change.
#[derive(Debug, Clone, Default)]
pub(crate) struct PropsChange {
    pub(crate) enabled: Option<bool>,
    pub(crate) nbf: Option<i64>,
    pub(crate) exp: Option<i64>,
    pub(crate) key_ops: Option<Vec<String>>,
    pub(crate) tags: Option<BTreeMap<String, String>>,
}

/// All keys of the vault, in memory and on disk.
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

    pub(crate) fn policy(&self) -> &DeletionPolicy {
        &self.policy
    }

    /// Adds a version to `name`, creating the key if it does not exist.
    pub(crate) async fn create(
        &self,
        name: &str,
        new: NewVersion,
        material: KeyMaterial,
        now: i64,
    ) -> Result<KeyView, ServiceError> {
        let id = new_version_id()?;
        self.mutate(name, |record| {
            let record =
                record.get_or_insert_with(|| KeyRecord { name: name.to_owned(), versions: Vec::new(), deleted: None });
            if record.deleted.is_some() {
                return Err(ServiceError::name_held_by_deleted_key(&record.name));
            }
            let version = KeyVersion {
                id,
                props: VersionProps {
                    kty: new.kty,
                    key_ops: new.key_ops,
                    enabled: new.enabled,
                    nbf: new.nbf,
                    exp: new.exp,
                    created: now,
                    updated: now,
                    tags: new.tags,
                },
                material: Arc::new(material),
            };
            record.versions.push(version.clone());
            Ok(record.view(&version))
        })
        .await
    }

    /// Adds a new latest version with fresh material and the latest
    /// version's type, operations and tags (`rotate`).
    pub(crate) async fn rotate(&self, name: &str, material: KeyMaterial, now: i64) -> Result<KeyView, ServiceError> {
        let id = new_version_id()?;
        self.mutate(name, |record| {
            let record = live(record.as_mut(), name)?;
            let latest = record.latest().ok_or_else(|| ServiceError::key_not_found(name))?;
            let version = KeyVersion {
                id,
                props: VersionProps {
                    kty: latest.props.kty,
                    key_ops: latest.props.key_ops.clone(),
                    enabled: true,
                    nbf: None,
                    exp: None,
                    created: now,
                    updated: now,
                    tags: latest.props.tags.clone(),
                },
                material: Arc::new(material),
            };
            record.versions.push(version.clone());
            Ok(record.view(&version))
        })
        .await
    }

    /// A version (latest when `None`) of a key that is not deleted.
    pub(crate) async fn get(&self, name: &str, version: Option<&str>) -> Result<KeyView, ServiceError> {
        let keys = self.keys.read().await;
        let record = live_ref(keys.get(&name.to_ascii_lowercase()), name)?;
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
        let keys = self.keys.read().await;
        keys.values()
            .filter(|record| record.deleted.is_none())
            .filter_map(|record| record.latest().map(|v| record.view(v)))
            .collect()
    }

    /// Every version of a key that is not deleted, oldest first.
    pub(crate) async fn versions(&self, name: &str) -> Result<Vec<KeyView>, ServiceError> {
        let keys = self.keys.read().await;
        let record = live_ref(keys.get(&name.to_ascii_lowercase()), name)?;
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
            props.updated = now;
            Ok(record.view(&record.versions[index]))
        })
        .await
    }

    /// Deletes a key: soft delete when the recovery level keeps deleted
    /// keys, otherwise gone at once. Returns the latest version as it was.
    pub(crate) async fn delete(&self, name: &str, now: i64) -> Result<KeyView, ServiceError> {
        let policy = self.policy;
        self.mutate(name, |slot| {
            let record = live(slot.as_mut(), name)?;
            let latest = record.latest().ok_or_else(|| ServiceError::key_not_found(name))?.clone();
            if !policy.level().soft_delete() {
                let view = record.view(&latest);
                *slot = None;
                return Ok(view);
            }
            record.deleted = Some(Deletion {
                deleted_date: now,
                scheduled_purge_date: now + i64::from(policy.recoverable_days()) * SECONDS_PER_DAY,
            });
            Ok(record.view(&latest))
        })
        .await
    }

    /// The latest version of a soft-deleted key.
    pub(crate) async fn deleted(&self, name: &str) -> Result<KeyView, ServiceError> {
        let keys = self.keys.read().await;
        let record = deleted_ref(keys.get(&name.to_ascii_lowercase()), name)?;
        let latest = record.latest().ok_or_else(|| ServiceError::deleted_key_not_found(name))?;
        Ok(record.view(latest))
    }

    /// The latest version of every soft-deleted key, by name.
    pub(crate) async fn list_deleted(&self) -> Vec<KeyView> {
        let keys = self.keys.read().await;
        keys.values()
            .filter(|record| record.deleted.is_some())
            .filter_map(|record| record.latest().map(|v| record.view(v)))
            .collect()
    }

    /// Brings a soft-deleted key back with all its versions.
    pub(crate) async fn recover(&self, name: &str) -> Result<KeyView, ServiceError> {
        self.mutate(name, |slot| {
            let record = match slot.as_mut() {
                Some(record) if record.deleted.is_some() => record,
                _ => return Err(ServiceError::deleted_key_not_found(name)),
            };
            record.deleted = None;
            let latest = record.latest().ok_or_else(|| ServiceError::key_not_found(name))?;
            Ok(record.view(latest))
        })
        .await
    }

    /// Permanently removes a soft-deleted key, if the recovery level allows.
    pub(crate) async fn purge(&self, name: &str) -> Result<(), ServiceError> {
        let purge_allowed = self.policy.level().purge_allowed();
        self.mutate(name, |slot| {
            deleted_ref(slot.as_ref(), name)?;
            if !purge_allowed {
                return Err(ServiceError::purge_protected());
            }
            *slot = None;
            Ok(())
        })
        .await
    }

    /// Purges the deleted keys whose retention has ended, as Key Vault does
    /// by itself. Returns how many were purged.
    pub(crate) async fn purge_expired(&self, now: i64) -> Result<usize, ServiceError> {
        let due: Vec<String> = {
            let keys = self.keys.read().await;
            keys.values().filter(|record| retention_ended(record, now)).map(|record| record.name.clone()).collect()
        };
        for name in &due {
            self.mutate(name, |slot| {
                if slot.as_ref().is_some_and(|record| retention_ended(record, now)) {
                    *slot = None;
                }
                Ok(())
            })
            .await?;
        }
        Ok(due.len())
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

    async fn persist(&self, lookup: &str, record: Option<&KeyRecord>) -> Result<(), ServiceError> {
        let document = record.map(store::encode).transpose().map_err(|e| internal("encode key", lookup, &e))?;
        let store = self.store.clone();
        let file_name = lookup.to_owned();
        let written = tokio::task::spawn_blocking(move || match document {
            Some(bytes) => store.save(&file_name, &bytes),
            None => store.remove(&file_name),
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(internal("persist key", lookup, &e)),
            Err(e) => Err(internal("persist key", lookup, &e)),
        }
    }
}

/// Logs why the emulator failed and answers 500.
fn internal(what: &str, key: &str, error: &dyn std::fmt::Display) -> ServiceError {
    tracing::error!(key, error = %error, "key vault emulator could not {what}");
    ServiceError::internal()
}

fn retention_ended(record: &KeyRecord, now: i64) -> bool {
    record.deleted.is_some_and(|deletion| deletion.scheduled_purge_date <= now)
}

fn not_found(name: &str, version: Option<&str>) -> ServiceError {
    match version {
        Some(version) => ServiceError::key_not_found(&format!("{name}/{version}")),
        None => ServiceError::key_not_found(name),
    }
}

/// The record of a key that exists and is not deleted.
fn live<'a>(record: Option<&'a mut KeyRecord>, name: &str) -> Result<&'a mut KeyRecord, ServiceError> {
    record.filter(|record| record.deleted.is_none()).ok_or_else(|| ServiceError::key_not_found(name))
}

fn live_ref<'a>(record: Option<&'a KeyRecord>, name: &str) -> Result<&'a KeyRecord, ServiceError> {
    record.filter(|record| record.deleted.is_none()).ok_or_else(|| ServiceError::key_not_found(name))
}

fn deleted_ref<'a>(record: Option<&'a KeyRecord>, name: &str) -> Result<&'a KeyRecord, ServiceError> {
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

    fn props(key_ops: &[&str]) -> VersionProps {
        VersionProps {
            kty: KeyType::Rsa,
            key_ops: key_ops.iter().map(|op| op.to_string()).collect(),
            enabled: true,
            nbf: None,
            exp: None,
            created: 0,
            updated: 0,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn disabled_wins_over_every_other_refusal() {
        let mut p = props(&[]);
        p.enabled = false;
        p.exp = Some(0);
        let refusal = p.check_usable(KeyOperation::WrapKey, 10).unwrap_err();
        assert_eq!(refusal.inner_code, Some("KeyDisabled"));
        assert_eq!(refusal.status, 403);
    }

    #[test]
    fn missing_key_op_is_forbidden() {
        let p = props(&["wrapKey"]);
        assert!(p.check_usable(KeyOperation::WrapKey, 10).is_ok());
        let refusal = p.check_usable(KeyOperation::UnwrapKey, 10).unwrap_err();
        assert_eq!(refusal.inner_code, Some("KeyOperationForbidden"));
        assert!(refusal.message.contains("unwrapKey"));
    }

    #[test]
    fn validity_window_blocks_wrap_but_not_unwrap() {
        let mut p = props(&["wrapKey", "unwrapKey"]);
        p.nbf = Some(100);
        assert_eq!(p.check_usable(KeyOperation::WrapKey, 99).unwrap_err().inner_code, Some("KeyNotYetValid"));
        assert!(p.check_usable(KeyOperation::WrapKey, 100).is_ok());
        assert!(p.check_usable(KeyOperation::UnwrapKey, 99).is_ok());
        p.exp = Some(200);
        assert_eq!(p.check_usable(KeyOperation::WrapKey, 200).unwrap_err().inner_code, Some("KeyExpired"));
        assert!(p.check_usable(KeyOperation::UnwrapKey, 200).is_ok());
    }

    #[test]
    fn retention_outside_key_vault_range_is_refused() {
        assert!(DeletionPolicy::new(RecoveryLevel::Recoverable, 6).is_err());
        assert!(DeletionPolicy::new(RecoveryLevel::Recoverable, 91).is_err());
        let purgeable = DeletionPolicy::new(RecoveryLevel::Purgeable, 0).expect("no soft delete");
        assert_eq!(purgeable.recoverable_days(), 0);
    }

    #[test]
    fn version_ids_look_like_key_vault_ones() {
        let id = new_version_id().expect("random");
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
        assert_ne!(id, new_version_id().expect("random"));
    }
}
