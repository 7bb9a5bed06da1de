//! A record's envelope: its content encrypted under a data key with the
//! record's identity as associated data, so a ciphertext moved to another
//! record, tenant, data key or layer fails to decrypt instead of returning
//! someone else's plaintext.

use prost::Message;
use zeroize::Zeroizing;

use super::CryptoError;
use super::data_key::DataKey;
use crate::proto::store::{RecordContent, StoredRecord};
use crate::proto::v1::Layer;

const AAD_VERSION: &[u8] = b"keyseal/record/v1";

/// The associated data binding (tenant, record id, data key id, layer).
/// Every field is length-prefixed so no two identities share an encoding.
pub fn associated_data(tenant: &str, record_id: &str, data_key_id: &[u8], layer: Layer) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_VERSION.len() + 8 + tenant.len() + record_id.len() + data_key_id.len());
    aad.extend_from_slice(AAD_VERSION);
    aad.push(layer as i32 as u8);
    for part in [tenant.as_bytes(), record_id.as_bytes(), data_key_id] {
        aad.extend_from_slice(&(part.len() as u16).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

/// Which record an envelope belongs to.
#[derive(Debug, Clone, Copy)]
pub struct RecordIdentity<'a> {
    /// Tenant id.
    pub tenant: &'a str,
    /// Record id.
    pub record_id: &'a str,
    /// Layer the envelope is stored in.
    pub layer: Layer,
}

impl RecordIdentity<'_> {
    /// Encrypts `content` (already protobuf-encoded) into a stored record.
    pub fn seal(&self, data_key_id: &[u8], key: &DataKey, content: &[u8], ingested_at_ms: i64) -> StoredRecord {
        let aad = associated_data(self.tenant, self.record_id, data_key_id, self.layer);
        let (nonce, ciphertext) = key.encrypt(&aad, content);
        StoredRecord {
            data_key_id: data_key_id.to_vec(),
            nonce: nonce.to_vec(),
            ciphertext,
            ingested_at_unix_ms: ingested_at_ms,
        }
    }

    /// Decrypts a stored record into its encoded content.
    pub fn open(&self, key: &DataKey, stored: &StoredRecord) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let aad = associated_data(self.tenant, self.record_id, &stored.data_key_id, self.layer);
        key.decrypt(&stored.nonce, &aad, &stored.ciphertext)
    }
}

/// Encodes content deterministically (attributes are a sorted map), into a
/// buffer that is zeroized when dropped.
pub fn encode_content(content: &RecordContent) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(content.encode_to_vec())
}

/// Decodes content produced by [`encode_content`].
pub fn decode_content(bytes: &[u8]) -> Result<RecordContent, CryptoError> {
    RecordContent::decode(bytes).map_err(|e| CryptoError::Corrupt { what: "record content", reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_bound_to_its_identity() {
        let key = DataKey::generate();
        let a = RecordIdentity { tenant: "acme", record_id: "1", layer: Layer::Hot };
        let stored = a.seal(b"dek", &key, b"content", 5);
        assert_eq!(a.open(&key, &stored).unwrap().as_slice(), b"content");
        for other in [
            RecordIdentity { record_id: "2", ..a },
            RecordIdentity { tenant: "acm", ..a },
            RecordIdentity { layer: Layer::Sealed, ..a },
        ] {
            assert!(other.open(&key, &stored).is_err());
        }
        let mut moved = stored.clone();
        moved.data_key_id = b"dek2".to_vec();
        assert!(a.open(&key, &moved).is_err());
    }

    #[test]
    fn length_prefixes_keep_identities_apart() {
        assert_ne!(associated_data("ab", "c", b"", Layer::Hot), associated_data("a", "bc", b"", Layer::Hot));
    }
}
