//! Encryption at rest: AES-256-GCM data keys ([`data_key`]), the root keys
//! that wrap them ([`root_key`]), the cache-backed [`keyring`] that hands
//! out usable data keys (per batch through [`batch_keys`]), and the record
//! [`envelope`] that binds a ciphertext to where it belongs.

pub mod batch_keys;
pub mod data_key;
pub mod envelope;
pub mod keyring;
pub mod root_key;

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
    /// A stored value could not be decoded.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What kind of value.
        what: &'static str,
        /// Why it could not be decoded.
        reason: String,
    },
}
