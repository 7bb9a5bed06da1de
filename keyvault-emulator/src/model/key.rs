//! A key as the vault holds it: its versions with their attributes and
//! private keys, its deletion state and rotation policy; Key Vault's rules
//! for using a single version (the key operations, `key_ops`, the validity
//! window); and the shapes reads and writes exchange with the vault.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::deletion::Deletion;
use super::rotation::RotationPolicy;
use crate::error::ServiceError;
use crate::material::{KeyMaterial, KeyType};

/// The cryptographic operations a request can ask of a key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyOperation {
    Encrypt,
    Decrypt,
    WrapKey,
    UnwrapKey,
    Sign,
    Verify,
}

impl KeyOperation {
    /// Parses the last path segment (`wrapkey`, case-insensitive).
    pub(crate) fn from_path_segment(segment: &str) -> Option<Self> {
        match segment.to_ascii_lowercase().as_str() {
            "encrypt" => Some(Self::Encrypt),
            "decrypt" => Some(Self::Decrypt),
            "wrapkey" => Some(Self::WrapKey),
            "unwrapkey" => Some(Self::UnwrapKey),
            "sign" => Some(Self::Sign),
            "verify" => Some(Self::Verify),
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
            Self::Sign => "sign",
            Self::Verify => "verify",
        }
    }

    /// The `key_ops` value that permits the operation.
    pub(crate) fn key_op(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::WrapKey => "wrapKey",
            Self::UnwrapKey => "unwrapKey",
            Self::Sign => "sign",
            Self::Verify => "verify",
        }
    }

    /// Whether the operation protects or vouches for new data. Key Vault
    /// refuses those outside the key's `nbf`..`exp` window but keeps
    /// decrypt, unwrap and verify working, so nobody is locked out of data
    /// already protected.
    fn needs_validity_window(self) -> bool {
        matches!(self, Self::Encrypt | Self::WrapKey | Self::Sign)
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
    /// Whether the private key may leave the vault by key release.
    #[serde(default)]
    pub(crate) exportable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) release_policy: Option<ReleasePolicy>,
}

/// A key's release policy: the rules an attestation must meet before
/// Key Vault releases an exportable key. Kept as the caller sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReleasePolicy {
    pub(crate) content_type: String,
    /// The policy document, base64url as on the wire.
    pub(crate) data: String,
    /// An immutable policy can never be replaced.
    pub(crate) immutable: bool,
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

/// A key name with all its versions, oldest first, and its deletion state.
#[derive(Debug, Clone)]
pub(crate) struct KeyRecord {
    /// The name as first created; lookups ignore case like Key Vault's.
    pub(crate) name: String,
    pub(crate) versions: Vec<KeyVersion>,
    pub(crate) deleted: Option<Deletion>,
    /// When and how the key rotates itself; `None` until one is set.
    pub(crate) rotation_policy: Option<RotationPolicy>,
}

impl KeyRecord {
    /// The newest version: the one an unversioned request uses.
    pub(crate) fn latest(&self) -> Option<&KeyVersion> {
        self.versions.last()
    }

    /// The named version, or the latest when `version` is `None`.
    pub(crate) fn version(&self, version: Option<&str>) -> Option<&KeyVersion> {
        match version {
            None => self.latest(),
            Some(id) => self.versions.iter().find(|v| v.id.eq_ignore_ascii_case(id)),
        }
    }

    /// Whether the key's rotation policy calls for a new version at `now`,
    /// judged on the latest version's timestamps; never without a policy.
    pub(crate) fn rotation_due(&self, now: i64) -> bool {
        let (Some(policy), Some(latest)) = (&self.rotation_policy, self.latest()) else {
            return false;
        };
        policy.rotation_due(now, latest.props.created, latest.props.exp)
    }

    /// Whether the key is soft-deleted and its scheduled purge date has
    /// come, so housekeeping purges it.
    pub(crate) fn retention_ended(&self, now: i64) -> bool {
        self.deleted.is_some_and(|deletion| deletion.scheduled_purge_date <= now)
    }

    /// An empty record for a key being created, imported or restored.
    pub(crate) fn new(name: &str) -> Self {
        Self { name: name.to_owned(), versions: Vec::new(), deleted: None, rotation_policy: None }
    }

    /// What a read returns of `version`, with this key's name and deletion
    /// state.
    pub(crate) fn view(&self, version: &KeyVersion) -> KeyView {
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

/// The attributes of a version being created or imported.
#[derive(Debug, Clone)]
pub(crate) struct NewVersion {
    pub(crate) kty: KeyType,
    pub(crate) key_ops: Vec<String>,
    pub(crate) enabled: bool,
    pub(crate) nbf: Option<i64>,
    pub(crate) exp: Option<i64>,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) exportable: bool,
    pub(crate) release_policy: Option<ReleasePolicy>,
}

impl NewVersion {
    /// The stored attributes of the version, created now.
    pub(crate) fn into_props(self, now: i64) -> VersionProps {
        VersionProps {
            kty: self.kty,
            key_ops: self.key_ops,
            enabled: self.enabled,
            nbf: self.nbf,
            exp: self.exp,
            created: now,
            updated: now,
            tags: self.tags,
            exportable: self.exportable,
            release_policy: self.release_policy,
        }
    }
}

/// A PATCH: only the fields that are `Some` change.
#[derive(Debug, Clone, Default)]
pub(crate) struct PropsChange {
    pub(crate) enabled: Option<bool>,
    pub(crate) nbf: Option<i64>,
    pub(crate) exp: Option<i64>,
    pub(crate) key_ops: Option<Vec<String>>,
    pub(crate) tags: Option<BTreeMap<String, String>>,
    pub(crate) release_policy: Option<ReleasePolicy>,
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
            exportable: false,
            release_policy: None,
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
    fn signing_needs_the_validity_window_but_verifying_does_not() {
        let mut p = props(&["sign", "verify"]);
        p.exp = Some(200);
        assert!(p.check_usable(KeyOperation::Sign, 199).is_ok());
        assert_eq!(p.check_usable(KeyOperation::Sign, 200).unwrap_err().inner_code, Some("KeyExpired"));
        assert!(p.check_usable(KeyOperation::Verify, 200).is_ok());
        let refusal = props(&["verify"]).check_usable(KeyOperation::Sign, 10).unwrap_err();
        assert_eq!(refusal.inner_code, Some("KeyOperationForbidden"));
    }
}
