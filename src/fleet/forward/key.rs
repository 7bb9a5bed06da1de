//! The key that authenticates forwarded admin requests and their answers.
//! Every worker of a deployment derives the same one, with HKDF-SHA256,
//! from secrets they already share: the managed root key (through
//! [`ManagedRootKeys::derive_secret`]) and, where set, the admin token. The
//! token itself is never a MAC key and never crosses the broker, and a
//! deployment without a token still authenticates every forwarded request:
//! being allowed to publish to the broker does not make anyone an
//! administrator.

use std::sync::Arc;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use rsa::sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::CryptoError;
use crate::crypto::root_key::ManagedRootKeys;

/// What the managed root's secret is derived for (HKDF info).
const ROOT_PURPOSE: &str = "keyseal forwarded admin requests";
/// HKDF info of the MAC key itself.
const MAC_INFO: &[u8] = b"keyseal/forward/hmac-sha256/v1";

type HmacSha256 = Hmac<Sha256>;

/// The MAC key of forwarded requests and answers. Cheap to clone; the
/// bytes are zeroized when the last clone goes and never printed.
#[derive(Clone)]
pub struct ForwardKey(Arc<Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for ForwardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardKey(redacted)")
    }
}

impl ForwardKey {
    /// The deployment's key: from its managed root and its admin token.
    pub fn derive(root: &ManagedRootKeys, admin_token: Option<&str>) -> Result<Self, CryptoError> {
        let root_secret = root.derive_secret(ROOT_PURPOSE)?;
        Ok(Self::from_secrets(root_secret.as_slice(), admin_token))
    }

    /// The key from raw secrets (what [`Self::derive`] does after asking
    /// the root; tests and fuzzing build keys this way).
    pub fn from_secrets(root_secret: &[u8], admin_token: Option<&str>) -> Self {
        let mut ikm = Zeroizing::new(Vec::with_capacity(root_secret.len() + 64));
        ikm.extend_from_slice(&(root_secret.len() as u64).to_be_bytes());
        ikm.extend_from_slice(root_secret);
        if let Some(token) = admin_token {
            ikm.extend_from_slice(token.as_bytes());
        }
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, &ikm).expand(MAC_INFO, key.as_mut_slice()).expect("32 bytes is a valid HKDF output");
        Self(Arc::new(key))
    }

    /// HMAC-SHA256 over `parts`, each length-prefixed so no two different
    /// sequences of parts read the same.
    pub(super) fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.mac(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `parts`, compared in constant time.
    pub(super) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.mac(parts).verify_slice(tag).is_ok()
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.0.as_slice()).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_both_secrets_and_parts_cannot_be_regrouped() {
        let key = ForwardKey::from_secrets(b"root", None);
        let tag = key.sign(&[b"ab", b"c"]);
        assert!(key.verify(&[b"ab", b"c"], &tag));
        assert!(!key.verify(&[b"a", b"bc"], &tag), "length prefixes keep parts apart");
        for other in [ForwardKey::from_secrets(b"root", Some("token")), ForwardKey::from_secrets(b"roo", None)] {
            assert!(!other.verify(&[b"ab", b"c"], &tag));
        }
        assert_eq!(format!("{key:?}"), "ForwardKey(redacted)");
    }
}
