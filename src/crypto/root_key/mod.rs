//! Root keys wrap data keys with RSA-OAEP-256 (RSA-OAEP, SHA-1, is accepted
//! for reading). There is one kind per place a root key lives, each behind
//! the same [`RootKey`] trait, like the master-key backends of TiKV's
//! encryption component:
//!
//! - [`managed`]: the service-managed root, versioned RSA key pairs in
//!   files under the data dir ([`ManagedRootKey`], one version;
//!   [`ManagedRootKeys`], every version found), kept in files that
//!   [`root_files`] guards (0700 directory, 0600 files, no symlinks);
//! - [`vault`]: a tenant's own key in Azure Key Vault at one version
//!   ([`VaultRootKey`]), used through [`crate::keyvault::Vault`], which
//!   speaks bytes and knows nothing of data keys.
//!
//! The keyring decides *which* root a data key belongs under and turns the
//! [`RootKeyRef`] stored with a wrapped key back into a [`RootKey`]; what a
//! root does with the key is the root's own business.

pub mod managed;
pub mod root_files;
pub mod vault;

use futures_util::future::BoxFuture;

pub use managed::{ManagedRootKey, ManagedRootKeys, RootExpectation};
pub use vault::VaultRootKey;

use super::CryptoError;
use super::data_key::DataKey;
use crate::error::ErrorCode;
use crate::keyvault::VaultError;
use crate::proto::v1::RootKeyRef;

/// The JOSE name of the wrapping algorithm recorded with each wrapped key:
/// what every root key wraps with.
pub const WRAP_ALGORITHM: &str = "RSA-OAEP-256";

/// How a stored data key was wrapped, from the JOSE name stored with it, so
/// a root key unwraps keys that other tools wrapped with RSA-OAEP too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapAlgorithm {
    /// RSA-OAEP with SHA-256 and MGF1-SHA-256: what keyseal writes.
    RsaOaep256,
    /// RSA-OAEP with SHA-1 and MGF1-SHA-1: accepted for reading, as Key
    /// Vault and other tools wrap with it by default.
    RsaOaep,
}

impl WrapAlgorithm {
    /// Parses a stored algorithm name; an empty name is what keyseal always
    /// wrote (RSA-OAEP-256).
    pub fn parse(name: &str) -> Result<Self, CryptoError> {
        match name {
            WRAP_ALGORITHM | "" => Ok(Self::RsaOaep256),
            "RSA-OAEP" => Ok(Self::RsaOaep),
            other => Err(CryptoError::Corrupt {
                what: "wrapped data key",
                reason: format!("unsupported wrapping algorithm {other:?} (RSA-OAEP-256 and RSA-OAEP are read)"),
            }),
        }
    }
}

/// A data key wrapped by a root key with [`WRAP_ALGORITHM`], together with
/// what the store keeps beside it to find that root again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// The root that wrapped it ([`RootKey::reference`]).
    pub wrapped_by: RootKeyRef,
    /// That root's fingerprint ([`RootKey::fingerprint`]), checked when the
    /// key is unwrapped; empty for roots a reference alone pins down.
    pub fingerprint: String,
    /// The wrapped bytes (not secret: only the root can unwrap them).
    pub wrapped: Vec<u8>,
}

/// What a root key can fail with: its own cryptography or the vault it
/// lives in. Kept apart so callers still tell a corrupt key from an
/// unusable vault (sealing holds records back on the second, not the
/// first). Messages never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum RootKeyError {
    /// Wrapping, unwrapping or decoding failed, or the root named by a
    /// stored key is not the one loaded.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The vault holding the key refused, failed or could not be reached.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// A key that wraps and unwraps data keys: one version of one root, managed
/// or the customer's. The keyring only ever handles roots through this
/// trait, so a new kind of root is one implementation, not another branch
/// in every place that wraps or unwraps.
///
/// The futures are boxed so that roots can be chosen at run time (`dyn
/// RootKey`) from what the store says; a managed root's future is ready at
/// once, a vault root's waits on the vault.
pub trait RootKey: Send + Sync {
    /// Names this root as it is stored with every data key it wraps, and as
    /// it is compared to tell which keys still need a rewrap.
    fn reference(&self) -> RootKeyRef;

    /// A fingerprint of the key material, stored with every data key it
    /// wraps so that a replaced key is reported as such instead of failing
    /// as garbage; empty when the reference alone names the key exactly
    /// (a vault key id with its version).
    fn fingerprint(&self) -> &str;

    /// Wraps `key` with [`WRAP_ALGORITHM`]. A root in a vault sends
    /// `request_id` as the call's `x-ms-client-request-id`, so the audit
    /// entry of the call matches the vault's own log.
    fn wrap<'a>(
        &'a self,
        key: &'a DataKey,
        request_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Wrapped, RootKeyError>>;

    /// Unwraps a data key this root wrapped with `algorithm`. The unwrapped
    /// bytes exist only inside the returned [`DataKey`] (zeroized on drop)
    /// and in zeroized buffers on the way there. `request_id` as for `wrap`.
    fn unwrap<'a>(
        &'a self,
        wrapped: &'a [u8],
        algorithm: WrapAlgorithm,
        request_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<DataKey, RootKeyError>>;
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
