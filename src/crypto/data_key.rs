//! Data keys (DEKs): the AES-256-GCM keys that encrypt records. One per
//! tenant, layer and time bucket; they exist unwrapped only in memory and
//! are zeroized when the last reference goes.

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{Aead, AeadInOut, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::Zeroizing;

use super::CryptoError;
use super::secret_bytes::SecretBytes;
use crate::proto::v1::Layer;

/// Bytes of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;

/// Bytes of an AES-GCM tag, appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// Identifies a data key: whose it is, which layer it encrypts, which time
/// bucket (UTC day) and which generation within the bucket. Its byte form is
/// the key in column family `deks` and part of every record's associated data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataKeyId {
    /// Tenant id.
    pub tenant: String,
    /// `hot` or `sealed`.
    pub layer: Layer,
    /// UTC day number the key covers.
    pub bucket: u32,
    /// Bumped when a bucket needs a fresh key (rotation).
    pub generation: u32,
}

impl DataKeyId {
    /// The stable byte encoding: `len(tenant) | tenant | layer | bucket | generation`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.tenant.len() + 9);
        out.push(self.tenant.len() as u8);
        out.extend_from_slice(self.tenant.as_bytes());
        out.push(self.layer as i32 as u8);
        out.extend_from_slice(&self.bucket.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out
    }

    /// The bytes every generation of this tenant, layer and bucket starts
    /// with (the id without its generation), for finding the latest one.
    pub fn bucket_prefix(&self) -> Vec<u8> {
        let mut bytes = self.to_bytes();
        bytes.truncate(bytes.len() - 4);
        bytes
    }

    /// Parses [`DataKeyId::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let corrupt = |reason: &str| CryptoError::Corrupt { what: "data key id", reason: reason.to_owned() };
        let (&len, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        let len = len as usize;
        if rest.len() != len + 9 {
            return Err(corrupt("wrong length"));
        }
        let tenant = std::str::from_utf8(&rest[..len]).map_err(|_| corrupt("tenant is not UTF-8"))?.to_owned();
        let layer = Layer::try_from(rest[len] as i32).map_err(|_| corrupt("unknown layer"))?;
        let bucket = u32::from_be_bytes(rest[len + 1..len + 5].try_into().expect("4 bytes"));
        let generation = u32::from_be_bytes(rest[len + 5..len + 9].try_into().expect("4 bytes"));
        Ok(Self { tenant, layer, bucket, generation })
    }
}

/// How an operator reads a data key id (the audit shows it):
/// `<layer>/<UTC day>/<generation>`, e.g. `sealed/2026-12-06/0`; the
/// tenant is the audit's own.
impl std::fmt::Display for DataKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layer = if self.layer == Layer::Sealed { "sealed" } else { "hot" };
        let day = chrono::DateTime::from_timestamp(i64::from(self.bucket) * 86_400, 0).unwrap_or_default();
        write!(f, "{layer}/{}/{}", day.format("%Y-%m-%d"), self.generation)
    }
}

/// An unwrapped AES-256-GCM data key. The raw bytes (kept for wrapping and
/// rewrapping) and the expanded cipher are both zeroized on drop.
pub struct DataKey {
    raw: Zeroizing<[u8; 32]>,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let key = Key::<Aes256Gcm>::generate();
        let mut raw = Zeroizing::new([0u8; 32]);
        raw.copy_from_slice(&key);
        Self::from_raw(raw)
    }

    /// Rebuilds a key from its unwrapped bytes; fails unless exactly 32.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let raw: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::Corrupt {
            what: "data key",
            reason: format!("expected 32 bytes, got {}", bytes.len()),
        })?;
        Ok(Self::from_raw(Zeroizing::new(raw)))
    }

    fn from_raw(raw: Zeroizing<[u8; 32]>) -> Self {
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*raw));
        Self { raw, cipher }
    }

    /// The key bytes, for wrapping by a root key only.
    pub fn expose_for_wrapping(&self) -> &[u8] {
        self.raw.as_slice()
    }

    /// Encrypts `plaintext` under `nonce` and appends ciphertext‖tag to
    /// `out`, without an intermediate buffer. Only the envelope calls it,
    /// with a nonce fresh from [`nonces::fresh`](super::nonces::fresh):
    /// a nonce used twice under one key breaks AES-GCM.
    pub(super) fn encrypt_into(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + plaintext.len(), 0);
        let buffer = InOutBuf::new(plaintext, &mut out[start..]).expect("equal lengths");
        let tag = self
            .cipher
            .encrypt_inout_detached(&Nonce::from(*nonce), aad, buffer)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        out.extend_from_slice(&tag);
    }

    /// Decrypts and verifies; any change to nonce, ciphertext or `aad` fails.
    pub fn decrypt(&self, nonce: &[u8], aad: &[u8], ciphertext: &[u8]) -> Result<SecretBytes, CryptoError> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Integrity { what: "record" })?;
        self.cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad })
            .map(SecretBytes::new)
            .map_err(|_| CryptoError::Integrity { what: "record" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips() {
        let id = DataKeyId { tenant: "acme-1".into(), layer: Layer::Sealed, bucket: 20_000, generation: 3 };
        assert_eq!(DataKeyId::from_bytes(&id.to_bytes()).unwrap(), id);
        assert!(DataKeyId::from_bytes(&id.to_bytes()[..5]).is_err());
        let next = DataKeyId { generation: 4, ..id.clone() };
        assert!(next.to_bytes().starts_with(&id.bucket_prefix()));
        assert!(next.to_bytes() > id.to_bytes(), "generations sort in order");
    }

    #[test]
    fn decrypt_rejects_other_associated_data() {
        let key = DataKey::generate();
        let nonce = super::super::nonces::fresh();
        let mut ct = b"prefix".to_vec();
        key.encrypt_into(&nonce, b"aad-1", b"secret", &mut ct);
        assert_eq!(ct.len(), 6 + 6 + TAG_LEN, "appended ciphertext and tag after what was there");
        let ct = &ct[6..];
        assert_eq!(&*key.decrypt(&nonce, b"aad-1", ct).unwrap(), b"secret");
        assert!(key.decrypt(&nonce, b"aad-2", ct).is_err());
        assert!(DataKey::generate().decrypt(&nonce, b"aad-1", ct).is_err());
    }
}
