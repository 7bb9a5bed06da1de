//! Rotation: a new version by hand (`rotate`), the rotation policy a key
//! carries, and the versions that policy calls for, which housekeeping asks
//! for on the emulator's clock.

use std::sync::Arc;

use super::{Vault, live, new_version_id};
use crate::error::ServiceError;
use crate::material::{KeyMaterial, KeySpec};
use crate::model::{IsoDuration, KeyVersion, KeyView, LifetimeAction, RotationPolicy, VersionProps};

/// A rotation a key's policy calls for: the key, the version that is
/// latest now (the rotation is skipped if another one got there first),
/// and what to generate.
pub(crate) struct DueRotation {
    /// The key, as first created.
    pub(crate) name: String,
    /// The version that was latest when the rotation was found due.
    pub(crate) latest: String,
    /// What the new version's material must be.
    pub(crate) spec: KeySpec,
}

impl Vault {
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
        Ok(live(keys.get(&name.to_ascii_lowercase()), name)?.rotation_policy.clone())
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
}
