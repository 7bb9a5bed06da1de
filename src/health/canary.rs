//! A canary: a throwaway data key wrapped and unwrapped through a tenant's
//! vault key, the one test that the key really works for keyseal (reading
//! its attributes does not show a revoked permission or an HSM that
//! refuses). The prober runs it (purpose `canary`), and so do the checks
//! before a key is enabled (purpose `validate`); both calls are audited.

use crate::audit::key_use::KeyUse;
use crate::crypto::data_key::DataKey;
use crate::keyvault::client::KeyWrapAlgorithm;
use crate::keyvault::{KeyUri, Vault, VaultError};
use crate::proto::v1::key_used::Operation;
use crate::proto::v1::{RootKeyRef, root_key_ref::Root};

/// Wraps a fresh data key with `version` of `uri` and unwraps it again;
/// what comes back must be that key.
pub async fn round_trip(vault: &Vault, uri: &KeyUri, version: &str, usage: KeyUse<'_>) -> Result<(), VaultError> {
    let data_key = DataKey::generate();
    let root = RootKeyRef { root: Some(Root::VaultKeyId(uri.versioned(version))) };
    let (_, wrapped) = usage
        .run(&root, Operation::Wrap, async |request| {
            vault.wrap(uri, version, data_key.expose_for_wrapping(), request.as_deref()).await
        })
        .await?;
    let back = usage
        .run(&root, Operation::Unwrap, async |request| {
            vault.unwrap(uri, version, KeyWrapAlgorithm::RsaOaep256, &wrapped, request.as_deref()).await
        })
        .await?;
    let same = subtle::ConstantTimeEq::ct_eq(back.as_slice(), data_key.expose_for_wrapping());
    if bool::from(same) { Ok(()) } else { Err(VaultError::Invalid("the unwrapped canary differs".into())) }
}
