//! What every library error says about itself besides its message: a
//! stable snake_case code (for logs, API bodies and metric labels; it never
//! carries data) and whether trying the same thing again later can succeed.
//! The one table of codes is this file, so two errors can never name the
//! same trouble differently. Callers decide what follows from a code (the
//! admin API alone turns codes into HTTP statuses).
//!
//! [`Contained`] answers the question many loops ask of a failure: is it
//! the store (which stops the whole task: nothing can be written) or
//! something one record or tenant is contained to?

use crate::broker::publish::PublishError;
use crate::byok::EncryptionError;
use crate::crypto::CryptoError;
use crate::crypto::keyring::KeyringError;
use crate::crypto::root_key::RootKeyError;
use crate::erasure::ErasureError;
use crate::ingest::dead_letter::DeadLetterError;
use crate::keyvault::VaultError;
use crate::keyvault::client::VaultSetupError;
use crate::keyvault::key_uri::KeyUriError;
use crate::keyvault::validate::KeyRefusal;
use crate::records::RecordError;
use crate::shard::OpenError;
use crate::storage::StoreError;

/// A stable code and a retry hint, like TiKV's `ErrorCodeExt`.
pub trait ErrorCode {
    /// The stable snake_case name of this kind of failure.
    fn code(&self) -> &'static str;
    /// Whether the same operation may succeed later without anyone
    /// changing anything (a vault or disk that comes back, a throttle that
    /// lifts); `false` means someone must act first (enable a key, restore
    /// a file, fix a request).
    fn is_retryable(&self) -> bool;
}

/// Splits a failure into a store failure, passed up with `?`, and one the
/// caller contains to a record or tenant.
pub trait Contained: Sized {
    /// `Err` with the store failure, or `Ok` with the failure to contain.
    fn contained(self) -> Result<Self, StoreError>;
}

impl ErrorCode for StoreError {
    fn code(&self) -> &'static str {
        match self {
            Self::Rocks(_) | Self::SyncTask(_) | Self::Options(_) => "storage_unavailable",
            Self::Corrupt { .. } => "storage_corrupt",
            Self::TenantErased(_) => "tenant_erased",
        }
    }

    fn is_retryable(&self) -> bool {
        !matches!(self, Self::Corrupt { .. } | Self::TenantErased(_))
    }
}

impl ErrorCode for ErasureError {
    fn code(&self) -> &'static str {
        match self {
            Self::UnknownTenant => "tenant_not_found",
            Self::AlreadyErased => "tenant_erased",
            Self::Keyring(e) => e.code(),
            Self::Store(e) => e.code(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::UnknownTenant | Self::AlreadyErased => false,
            Self::Keyring(e) => e.is_retryable(),
            Self::Store(e) => e.is_retryable(),
        }
    }
}

impl ErrorCode for CryptoError {
    fn code(&self) -> &'static str {
        match self {
            Self::Integrity { .. } => "integrity_error",
            Self::RootKey { .. } => "root_key_failed",
            Self::KeyFile { .. } => "root_key_file_unreadable",
            Self::RootKeyMissing { .. } => "root_key_missing",
            Self::RootKeyMismatch { .. } => "root_key_mismatch",
            Self::UnknownRootFingerprint { .. } => "unknown_root_fingerprint",
            Self::Corrupt { .. } => "corrupt_value",
        }
    }

    fn is_retryable(&self) -> bool {
        // A key file may be readable again (a mount coming back); nothing
        // else in cryptography changes by waiting.
        matches!(self, Self::KeyFile { .. })
    }
}

impl ErrorCode for VaultError {
    fn code(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "vault_unreachable",
            Self::Credential(_) => "vault_credential_failed",
            Self::KeyNotFound => "key_not_found",
            Self::Forbidden { code, .. } => match code.as_str() {
                "KeyDisabled" => "key_disabled",
                "KeyExpired" => "key_expired",
                "KeyNotYetValid" => "key_not_yet_active",
                _ => "missing_permission",
            },
            Self::Throttled => "vault_throttled",
            Self::Service { .. } => "vault_error",
            Self::Invalid(_) => "vault_invalid_answer",
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Credential(_) | Self::Throttled => true,
            Self::Service { status, .. } => *status >= 500,
            Self::KeyNotFound | Self::Forbidden { .. } | Self::Invalid(_) => false,
        }
    }
}

impl ErrorCode for VaultSetupError {
    fn code(&self) -> &'static str {
        match self {
            Self::CaCert { .. } => "vault_ca_cert_invalid",
            Self::Http(_) => "vault_client_failed",
        }
    }

    fn is_retryable(&self) -> bool {
        false
    }
}

impl ErrorCode for KeyUriError {
    fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "invalid_key_uri",
            Self::UntrustedHost(_) => "untrusted_vault_host",
        }
    }

    fn is_retryable(&self) -> bool {
        false
    }
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

impl ErrorCode for RootKeyError {
    fn code(&self) -> &'static str {
        match self {
            Self::Crypto(e) => e.code(),
            Self::Vault(e) => e.code(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::Crypto(e) => e.is_retryable(),
            Self::Vault(e) => e.is_retryable(),
        }
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

impl Contained for KeyringError {
    fn contained(self) -> Result<Self, StoreError> {
        match self {
            Self::Store(e) => Err(e),
            other => Ok(other),
        }
    }
}

impl ErrorCode for RecordError {
    fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Keyring(e) => e.code(),
            Self::Crypto(e) => e.code(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Keyring(e) => e.is_retryable(),
            Self::Crypto(e) => e.is_retryable(),
        }
    }
}

impl Contained for RecordError {
    fn contained(self) -> Result<Self, StoreError> {
        match self {
            Self::Store(e) | Self::Keyring(KeyringError::Store(e)) => Err(e),
            other => Ok(other),
        }
    }
}

impl ErrorCode for EncryptionError {
    fn code(&self) -> &'static str {
        match self {
            Self::Refused(refusal) => refusal.code(),
            Self::VaultNotConfigured(_) => "vault_not_configured",
            Self::NotEnabled => "customer_key_not_enabled",
            Self::LockedDown => "tenant_locked_down",
            Self::CustomerKeyUnusable(_) => "customer_key_unusable",
            Self::Store(e) => e.code(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::Refused(refusal) => ErrorCode::is_retryable(refusal),
            Self::Store(e) => e.is_retryable(),
            Self::CustomerKeyUnusable(_) => true,
            Self::VaultNotConfigured(_) | Self::NotEnabled | Self::LockedDown => false,
        }
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

impl ErrorCode for PublishError {
    fn code(&self) -> &'static str {
        match self {
            Self::Broker(_) => "broker_unavailable",
            Self::File { .. } => "invalid_records_file",
        }
    }

    fn is_retryable(&self) -> bool {
        matches!(self, Self::Broker(_))
    }
}

impl ErrorCode for DeadLetterError {
    fn code(&self) -> &'static str {
        match self {
            Self::Broker(_) => "broker_unavailable",
            Self::Nacked => "dead_letter_nacked",
            Self::Returned { .. } => "dead_letter_unroutable",
        }
    }

    fn is_retryable(&self) -> bool {
        // An unroutable dead letter needs the queue bound first.
        !matches!(self, Self::Returned { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vault_refusal_has_the_code_a_health_reason_would_give_it() {
        let forbidden = |code: &str| VaultError::Forbidden { code: code.into(), message: String::new() };
        assert_eq!(forbidden("KeyDisabled").code(), "key_disabled");
        assert_eq!(forbidden("KeyExpired").code(), "key_expired");
        assert_eq!(forbidden("ForbiddenByPolicy").code(), "missing_permission");
        assert!(!forbidden("KeyDisabled").is_retryable(), "someone must enable the key");
        assert!(VaultError::Throttled.is_retryable());
        let service = |status| VaultError::Service { status, code: "x".into(), message: String::new() };
        assert!(service(503).is_retryable() && !service(400).is_retryable());
    }

    #[test]
    fn codes_pass_through_wrappers_and_only_the_store_escapes_containment() {
        let disk = || StoreError::SyncTask("gone".into());
        let wrapped = RecordError::Keyring(KeyringError::Store(disk()));
        assert_eq!((wrapped.code(), wrapped.is_retryable()), ("storage_unavailable", true));
        assert!(wrapped.contained().is_err(), "a store failure under the keyring is still the store's");
        let vault = RecordError::Keyring(KeyringError::Vault(VaultError::KeyNotFound));
        assert_eq!(vault.code(), "key_not_found");
        assert!(matches!(vault.contained(), Ok(RecordError::Keyring(KeyringError::Vault(_)))));
        let corrupt = StoreError::Corrupt { cf: "hot", what: "record", reason: String::new() };
        assert!(!corrupt.is_retryable());
    }
}
