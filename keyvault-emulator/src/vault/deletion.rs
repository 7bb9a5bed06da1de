//! Deletion under the vault's recovery level: soft delete or gone at
//! once, the deleted-key reads, recovery, purging on request and purging by
//! itself once a deleted key's retention has ended.

use super::{Vault, live, soft_deleted};
use crate::error::ServiceError;
use crate::model::KeyView;

impl Vault {
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
            record.deleted = Some(policy.deletion_at(now));
            Ok(record.view(&latest))
        })
        .await
    }

    /// The latest version of a soft-deleted key.
    pub(crate) async fn deleted(&self, name: &str) -> Result<KeyView, ServiceError> {
        let keys = self.keys.read().await;
        let record = soft_deleted(keys.get(&name.to_ascii_lowercase()), name)?;
        let latest = record.latest().ok_or_else(|| ServiceError::deleted_key_not_found(name))?;
        Ok(record.view(latest))
    }

    /// The latest version of every soft-deleted key, by name.
    pub(crate) async fn list_deleted(&self) -> Vec<KeyView> {
        self.latest_versions(true).await
    }

    /// Brings a soft-deleted key back with all its versions.
    pub(crate) async fn recover(&self, name: &str) -> Result<KeyView, ServiceError> {
        self.mutate(name, |slot| {
            let record = soft_deleted(slot.as_mut(), name)?;
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
            soft_deleted(slot.as_ref(), name)?;
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
            keys.values().filter(|record| record.retention_ended(now)).map(|record| record.name.clone()).collect()
        };
        for name in &due {
            self.mutate(name, |slot| {
                if slot.as_ref().is_some_and(|record| record.retention_ended(now)) {
                    *slot = None;
                }
                Ok(())
            })
            .await?;
        }
        Ok(due.len())
    }
}
