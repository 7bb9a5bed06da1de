//! Whether a key may become a tenant's root, checked in the order an
//! operator would fix things: the URI, the vault and the key's existence,
//! its state (enabled, active, not expired), its type and size, its
//! permitted operations, a real wrap/unwrap of a canary, and purge
//! protection. Each refusal has its own stable code and says what to fix.

use super::client::{Vault, VaultKey};
use super::error::VaultError;
use super::key_uri::{KeyUri, KeyUriError};
use super::problem::KeyProblem;
use crate::error::ErrorCode;

/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    /// The URI is not a Key Vault key URI.
    #[error("{0}")]
    InvalidKeyUri(String),
    /// The host is not an allowed vault host.
    #[error("{0}")]
    UntrustedVaultHost(String),
    /// The vault could not be reached (DNS, TLS, firewall, timeout, 5xx).
    #[error("the vault could not be reached: {0}; check the URI, DNS, firewall and TLS trust")]
    VaultUnreachable(String),
    /// No such key (or version).
    #[error("the key does not exist in the vault (deleted or wrong name); create it or recover it")]
    KeyNotFound,
    /// The vault refused keyseal.
    #[error("the vault refused access ({0}); grant keyseal's identity get, wrapKey and unwrapKey on the key")]
    MissingPermission(String),
    /// The key is disabled.
    #[error("the key is disabled; enable it in the vault")]
    KeyDisabled,
    /// The key's activation date is in the future (when, in Unix seconds,
    /// if the key said).
    #[error("the key is not active yet{}; wait or change its activation date", at(*.0))]
    KeyNotYetActive(Option<i64>),
    /// The key has expired (when, in Unix seconds, if the key said).
    #[error("the key has expired{}; extend its expiry or create a new version", at(*.0))]
    KeyExpired(Option<i64>),
    /// Not an RSA key.
    #[error("only RSA keys are supported (this key is {0}); create an RSA or RSA-HSM key")]
    UnsupportedKeyType(String),
    /// RSA key under 2048 bits.
    #[error("the RSA key has {0} bits; at least 2048 are required")]
    KeyTooSmall(usize),
    /// wrapKey or unwrapKey not permitted by the key.
    #[error("the key does not permit {0}; add wrapKey and unwrapKey to its permitted operations")]
    MissingKeyOperations(String),
    /// The canary wrap/unwrap failed or returned other bytes.
    #[error("wrapping and unwrapping a test key through the vault failed: {0}")]
    CanaryFailed(String),
    /// Soft delete with purge protection is off.
    #[error(
        "the key's recovery level is {0}; enable soft delete and purge protection on the vault (a Recoverable level)"
    )]
    PurgeProtectionRequired(String),
}

impl KeyRefusal {
    /// Whether the request itself was malformed (a key URI that is not one,
    /// or names a vault keyseal may not call), rather than well-formed and
    /// naming a key that cannot be used.
    pub fn is_malformed_request(&self) -> bool {
        matches!(self, Self::InvalidKeyUri(_) | Self::UntrustedVaultHost(_))
    }
}

impl From<KeyUriError> for KeyRefusal {
    fn from(e: KeyUriError) -> Self {
        match e {
            KeyUriError::Malformed(_) => Self::InvalidKeyUri(e.to_string()),
            KeyUriError::UntrustedHost(_) => Self::UntrustedVaultHost(e.to_string()),
        }
    }
}

/// ` (since|until) N (Unix seconds)` of a time a refusal names, if known.
fn at(unix_s: Option<i64>) -> String {
    unix_s.map(|t| format!(" (at {t}, Unix seconds)")).unwrap_or_default()
}

impl From<VaultError> for KeyRefusal {
    /// The refusal a vault failure amounts to, by its [`KeyProblem`].
    fn from(e: VaultError) -> Self {
        match e.problem() {
            KeyProblem::KeyNotFound => Self::KeyNotFound,
            KeyProblem::KeyDisabled => Self::KeyDisabled,
            KeyProblem::KeyExpired => Self::KeyExpired(None),
            KeyProblem::KeyNotYetActive => Self::KeyNotYetActive(None),
            KeyProblem::MissingPermission => Self::MissingPermission(match e {
                VaultError::Forbidden { refused, .. } => refused.code().to_owned(),
                other => other.to_string(),
            }),
            KeyProblem::VaultUnreachable | KeyProblem::VaultThrottled | KeyProblem::VaultError => {
                Self::VaultUnreachable(e.to_string())
            }
        }
    }
}

/// The state and shape checks, in order; pure.
pub fn check_key(key: &VaultKey, now_unix_s: i64) -> Result<(), KeyRefusal> {
    if !key.enabled {
        return Err(KeyRefusal::KeyDisabled);
    }
    if let Some(nbf) = key.not_before.filter(|nbf| *nbf > now_unix_s) {
        return Err(KeyRefusal::KeyNotYetActive(Some(nbf)));
    }
    if let Some(exp) = key.expires.filter(|exp| *exp <= now_unix_s) {
        return Err(KeyRefusal::KeyExpired(Some(exp)));
    }
    if !matches!(key.kty.as_str(), "RSA" | "RSA-HSM") {
        return Err(KeyRefusal::UnsupportedKeyType(key.kty.clone()));
    }
    if key.modulus_bits < MIN_RSA_BITS {
        return Err(KeyRefusal::KeyTooSmall(key.modulus_bits));
    }
    let missing: Vec<&str> =
        ["wrapKey", "unwrapKey"].into_iter().filter(|op| !key.key_ops.iter().any(|k| k == op)).collect();
    if !missing.is_empty() {
        return Err(KeyRefusal::MissingKeyOperations(missing.join(" and ")));
    }
    Ok(())
}

/// Whether the recovery level means soft delete with purge protection.
pub fn check_recovery_level(level: Option<&str>) -> Result<(), KeyRefusal> {
    let level = level.unwrap_or("unknown");
    let recoverable = level.starts_with("Recoverable") || level.starts_with("CustomizedRecoverable");
    if recoverable && !level.contains("Purgeable") {
        Ok(())
    } else {
        Err(KeyRefusal::PurgeProtectionRequired(level.to_owned()))
    }
}

/// Runs every check against the vault, with `canary` as the real wrap
/// and unwrap of a throwaway key (the caller's, which audits it); returns
/// the parsed URI and the latest enabled version of the key, which keyseal
/// will use.
pub async fn validate(
    vault: &Vault,
    key_uri: &str,
    now_unix_s: i64,
    canary: impl AsyncFnOnce(&KeyUri, &str) -> Result<(), VaultError>,
) -> Result<(KeyUri, VaultKey), KeyRefusal> {
    let uri = KeyUri::parse(key_uri, vault.trusted_hosts())?;
    // The newest enabled version is used whatever version the URI names.
    let key = vault.newest_enabled_key(&uri).await?;
    check_key(&key, now_unix_s)?;
    canary(&uri, &key.version).await.map_err(|e| KeyRefusal::CanaryFailed(e.to_string()))?;
    check_recovery_level(key.recovery_level.as_deref())?;
    Ok((uri, key))
}

impl ErrorCode for KeyRefusal {
    fn code(&self) -> &'static str {
        match self {
            Self::InvalidKeyUri(_) => "invalid_key_uri",
            Self::UntrustedVaultHost(_) => "untrusted_vault_host",
            Self::VaultUnreachable(_) => "vault_unreachable",
            Self::KeyNotFound => "key_not_found",
            Self::MissingPermission(_) => "missing_permission",
            Self::KeyDisabled => "key_disabled",
            Self::KeyNotYetActive(_) => "key_not_yet_active",
            Self::KeyExpired(_) => "key_expired",
            Self::UnsupportedKeyType(_) => "unsupported_key_type",
            Self::KeyTooSmall(_) => "key_too_small",
            Self::MissingKeyOperations(_) => "missing_key_operations",
            Self::CanaryFailed(_) => "wrap_unwrap_failed",
            Self::PurgeProtectionRequired(_) => "purge_protection_required",
        }
    }

    fn is_retryable(&self) -> bool {
        matches!(self, Self::VaultUnreachable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn rsa_key() -> VaultKey {
        VaultKey {
            kid: "https://v.vault.azure.net/keys/k/1".into(),
            version: "1".into(),
            kty: "RSA".into(),
            key_ops: vec!["wrapKey".into(), "unwrapKey".into()],
            enabled: true,
            not_before: Some(100),
            expires: Some(1000),
            recovery_level: Some("Recoverable".into()),
            modulus_bits: 2048,
        }
    }

    #[test]
    fn checks_refuse_in_order_with_their_codes() {
        assert_eq!(check_key(&rsa_key(), 500), Ok(()));
        let cases: Vec<(VaultKey, i64, &str)> = vec![
            (VaultKey { enabled: false, kty: "EC".into(), ..rsa_key() }, 500, "key_disabled"),
            (rsa_key(), 50, "key_not_yet_active"),
            (rsa_key(), 1000, "key_expired"),
            (VaultKey { kty: "EC".into(), ..rsa_key() }, 500, "unsupported_key_type"),
            (VaultKey { modulus_bits: 1024, ..rsa_key() }, 500, "key_too_small"),
            (VaultKey { key_ops: vec!["wrapKey".into()], ..rsa_key() }, 500, "missing_key_operations"),
        ];
        for (key, now, code) in cases {
            assert_eq!(check_key(&key, now).unwrap_err().code(), code);
        }
        assert!(check_key(&VaultKey { kty: "RSA-HSM".into(), ..rsa_key() }, 500).is_ok());
    }

    #[test]
    fn purge_protection_means_a_recoverable_level_without_purgeable() {
        for ok in ["Recoverable", "Recoverable+ProtectedSubscription", "CustomizedRecoverable"] {
            assert!(check_recovery_level(Some(ok)).is_ok(), "{ok}");
        }
        for bad in ["Purgeable", "Recoverable+Purgeable", "CustomizedRecoverable+Purgeable"] {
            assert_eq!(check_recovery_level(Some(bad)).unwrap_err().code(), "purge_protection_required");
        }
        assert!(check_recovery_level(None).is_err());
    }
}
