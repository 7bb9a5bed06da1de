//! Encryption at rest: AES-256-GCM data keys ([`data_key`]), the root keys
//! that wrap them ([`root_key`]: one [`root_key::RootKey`] implementation
//! per kind, managed or Key Vault), the cache-backed [`keyring`] that hands
//! out usable data keys (per batch through [`batch_keys`]), the record
//! [`envelope`] that binds a ciphertext to where it belongs, the
//! [`nonces`] it is encrypted under and the [`secret_bytes`] plaintext is
//! kept in.

pub mod batch_keys;
pub mod data_key;
pub mod envelope;
pub mod keyring;
pub mod nonces;
pub mod root_key;
pub mod secret_bytes;

use crate::error::ErrorCode;
use thiserror::Error;

/// What can go wrong turning ciphertext back into plaintext, or keys into
/// usable keys. Messages never carry key material or payload bytes.
#[derive(Debug, Error)]
pub enum CryptoError {
    /// An AEAD tag did not verify: the ciphertext, its nonce or its
    /// associated data (tenant, record, data key, layer) was altered.
    #[error("integrity check failed for {what}")]
    Integrity {
        /// What failed, e.g. "record" or "data key".
        what: &'static str,
    },
    /// A root key could not wrap or unwrap a data key.
    #[error("root key {root}: {reason}")]
    RootKey {
        /// Which root (kind and version), never key bytes.
        root: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing a managed root key file failed.
    #[error("managed root key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The managed root key the store was written under is not in its
    /// directory; keyseal never creates a new one in its place.
    #[error(
        "managed root key missing: {dir} has no {wanted}, but the store holds data keys wrapped by it. \
         keyseal will not create a new root key (every hot record would become unreadable). \
         Restore {dir} from your backup or deployment secret (every managed-v*.pem, mode 0600, \
         in a directory of mode 0700), then start again"
    )]
    RootKeyMissing {
        /// The root key directory.
        dir: String,
        /// Which file (and fingerprint) is missing.
        wanted: String,
    },
    /// A root key file is not the key the store was written under.
    #[error(
        "managed root key {path} has fingerprint {found}, but the store expects {expected}: \
         it is another deployment's key. Restore the right root-keys directory from backup"
    )]
    RootKeyMismatch {
        /// The key file.
        path: String,
        /// Its fingerprint.
        found: String,
        /// The fingerprint the store recorded.
        expected: String,
    },
    /// A wrapped data key names a managed root no loaded key file is.
    #[error(
        "data key wrapped by managed root v{version} with fingerprint {fingerprint}, which no key in \
         root-keys has; restore that key file from backup"
    )]
    UnknownRootFingerprint {
        /// The version the wrapped key names.
        version: u32,
        /// The fingerprint recorded with it.
        fingerprint: String,
    },
    /// A stored value could not be decoded.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What kind of value.
        what: &'static str,
        /// Why it could not be decoded.
        reason: String,
    },
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
