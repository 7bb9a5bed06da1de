//! A tenant's own key in Azure Key Vault as a root key (bring your own
//! key): the key URI and version keyseal wraps under, and the vault client
//! that does the RSA work where the key lives. The client moves plain
//! bytes; this is where they become (and stop being) a [`DataKey`].

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{RootKey, RootKeyError, WrapAlgorithm, Wrapped};
use crate::crypto::data_key::DataKey;
use crate::keyvault::key_uri::KeyUriError;
use crate::keyvault::{KeyUri, KeyWrapAlgorithm, Vault, VaultError};
use crate::proto::v1::RootKeyRef;
use crate::proto::v1::root_key_ref::Root;

/// One version of a customer's Key Vault key as a [`RootKey`]: what wraps
/// a tenant's sealed data keys while it has its own key enabled.
#[derive(Debug, Clone)]
pub struct VaultRootKey {
    uri: KeyUri,
    version: String,
    vault: Arc<Vault>,
}

impl VaultRootKey {
    /// The key `uri` names, at `version` (whatever version `uri` itself
    /// names: keyseal decides which version to use, not the URI).
    pub fn new(uri: KeyUri, version: impl Into<String>, vault: Arc<Vault>) -> Self {
        Self { uri, version: version.into(), vault }
    }

    /// The key a stored data key names by its versioned key id. The id is
    /// checked like any key URI (a stored id may not send keyseal to a
    /// host it does not trust) and must carry a version.
    pub fn from_key_id(kid: &str, vault: Arc<Vault>) -> Result<Self, KeyUriError> {
        let uri = KeyUri::parse(kid, vault.trusted_hosts())?;
        let version = uri.version.clone().ok_or(KeyUriError::Malformed("stored key id has no version"))?;
        Ok(Self::new(uri, version, vault))
    }
}

impl RootKey for VaultRootKey {
    fn reference(&self) -> RootKeyRef {
        RootKeyRef { root: Some(Root::VaultKeyId(self.uri.versioned(&self.version))) }
    }

    /// Empty: the versioned key id names the key material exactly, and the
    /// vault refuses a version it does not have.
    fn fingerprint(&self) -> &str {
        ""
    }

    fn wrap<'a>(
        &'a self,
        key: &'a DataKey,
        request_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Wrapped, RootKeyError>> {
        Box::pin(async move {
            let (_, wrapped) = self.vault.wrap(&self.uri, &self.version, key.expose_for_wrapping(), request_id).await?;
            Ok(Wrapped { wrapped_by: self.reference(), fingerprint: String::new(), wrapped })
        })
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a [u8],
        algorithm: WrapAlgorithm,
        request_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<DataKey, RootKeyError>> {
        let algorithm = match algorithm {
            WrapAlgorithm::RsaOaep256 => KeyWrapAlgorithm::RsaOaep256,
            WrapAlgorithm::RsaOaep => KeyWrapAlgorithm::RsaOaep,
        };
        Box::pin(async move {
            // Zeroized when dropped, right after the copy into the key.
            let raw = self.vault.unwrap(&self.uri, &self.version, algorithm, wrapped, request_id).await?;
            // Not 32 bytes: the vault's answer is wrong, not the stored key.
            Ok(DataKey::from_slice(&raw).map_err(|e| VaultError::Invalid(e.to_string()))?)
        })
    }
}
