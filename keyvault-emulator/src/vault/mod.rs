//! The vault's keys and the rules Key Vault applies to them: versions and
//! their attributes, which version "latest" is, soft deletion under the
//! vault's recovery level, and whether a version may be used for an
//! operation right now. Every change is written to the [`KeyStore`] before
//! it becomes visible, so a crash never shows a state the disk lacks.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::RwLock;

use crate::EmulatorError;
use crate::error::ServiceError;
use crate::material::{KeyMaterial, KeySpec};
use crate::model::{
    Deletion, DeletionPolicy, IsoDuration, KeyOperation, KeyRecord, KeyVersion, KeyView, LifetimeAction, NewVersion,
    PropsChange, RotationPolicy, SECONDS_PER_DAY, VersionProps,
};
use crate::store::{self, KeyStore};

/// A rotation a key's policy calls for: the key, the version that is
/// latest now (the rotation is skipped if another one got there first),
/// and what to generate.
pub(crate) struct DueRotation {
    pub(crate) name: String,
    pub(crate) latest: String,
    pub(crate) spec: KeySpec,
}

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

    /// Adds a new latest version with fresh material and the latest
    /// version's type, operations, tags and release settings (`rotate`);
    /// its expiry follows the key's rotation policy.
    pub(crate) async fn rotate(&self, name: &str, material: KeyMaterial, now: i64) -> Result<KeyView, ServiceError> {
        self.rotate_from(name, None, material, now).await
    }

    /// [`Vault::rotate`], but only while `expected_latest` (when given) is
    /// still the latest version, so a policy rotation racing another
    /// rotation does not add two versions.
    async fn rotate_from(
        &self,
        name: &str,
        expected_latest: Option<&str>,
        material: KeyMaterial,
        now: i64,
    ) -> Result<KeyView, ServiceError> {
        let id = new_version_id()?;
        self.mutate(name, |record| {
            let record = live(record.as_mut(), name)?;
            let latest = record.latest().ok_or_else(|| ServiceError::key_not_found(name))?;
            // The material was generated off the lock: the key must still
            // be what it was generated for, and a policy rotation must
            // still be due under the policy as it is now.
            let moved = expected_latest.is_some_and(|expected| expected != latest.id || !record.rotation_due(now));
            if moved || latest.material.spec() != material.spec() {
                return Err(ServiceError::conflict(format!("Key {name} changed while it was being rotated; retry.")));
            }
            let props = VersionProps {
                enabled: true,
                nbf: None,
                exp: record.rotation_policy.as_ref().and_then(|policy| policy.expiry_for(now)),
                created: now,
                updated: now,
                ..latest.props.clone()
            };
            let version = KeyVersion { id, props, material: Arc::new(material) };
            record.versions.push(version.clone());
            Ok(record.view(&version))
        })
        .await
    }

    /// The keys whose rotation policy says a new version is due at `now`.
    pub(crate) async fn rotations_due(&self, now: i64) -> Vec<DueRotation> {
        let keys = self.keys.read().await;
        keys.values()
            .filter(|record| record.deleted.is_none() && record.rotation_due(now))
            .filter_map(|record| {
                let latest = record.latest()?;
                Some(DueRotation { name: record.name.clone(), latest: latest.id.clone(), spec: latest.material.spec() })
            })
            .collect()
    }

    /// Rotates `name` as its policy asked, unless another rotation got
    /// there first (then nothing happens).
    pub(crate) async fn rotate_by_policy(
        &self,
        name: &str,
        latest: &str,
        material: KeyMaterial,
        now: i64,
    ) -> Result<Option<KeyView>, ServiceError> {
        match self.rotate_from(name, Some(latest), material, now).await {
            Ok(view) => Ok(Some(view)),
            Err(e) if e.status == axum::http::StatusCode::CONFLICT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The key's rotation policy, if one was set.
    pub(crate) async fn rotation_policy(&self, name: &str) -> Result<Option<RotationPolicy>, ServiceError> {
        let keys = self.keys.read().await;
        Ok(live_ref(keys.get(&name.to_ascii_lowercase()), name)?.rotation_policy.clone())
    }

    /// Replaces the key's rotation policy (validated by the caller).
    pub(crate) async fn set_rotation_policy(
        &self,
        name: &str,
        lifetime_actions: Vec<LifetimeAction>,
        expiry_time: Option<IsoDuration>,
        now: i64,
    ) -> Result<RotationPolicy, ServiceError> {
        self.mutate(name, |record| {
            let record = live(record.as_mut(), name)?;
            let created = record.rotation_policy.as_ref().map_or(now, |policy| policy.created);
            let policy = RotationPolicy { lifetime_actions, expiry_time, created, updated: now };
            record.rotation_policy = Some(policy.clone());
            Ok(policy)
        })
        .await
    }

    /// The whole record of a live key, private keys included, for a backup.
    pub(crate) async fn backup(&self, name: &str) -> Result<KeyRecord, ServiceError> {
        let keys = self.keys.read().await;
        live_ref(keys.get(&name.to_ascii_lowercase()), name).cloned()
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
    use crate::RecoveryLevel;
    use crate::material::{Curve, KeyType};
    use crate::model::{ActionType, Trigger};

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
