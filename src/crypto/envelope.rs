//! A record's envelope: its content encrypted under a data key with the
//! record's identity as associated data, so a ciphertext moved to another
//! record, tenant, data key or layer fails to decrypt instead of returning
//! someone else's plaintext.

use prost::Message;
use prost::encoding::{self, WireType};

use super::CryptoError;
use super::data_key::{DataKey, NONCE_LEN, TAG_LEN};
use super::nonces;
use super::secret_bytes::SecretBytes;
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
    /// Encrypts `content` (already protobuf-encoded) into the stored form
    /// of the record. The encoding is written directly, the ciphertext
    /// straight into it, with no intermediate [`StoredRecord`].
    pub fn seal(&self, data_key_id: &[u8], key: &DataKey, content: &[u8], ingested_at_ms: i64) -> Envelope {
        let aad = associated_data(self.tenant, self.record_id, data_key_id, self.layer);
        let nonce = nonces::fresh();
        let ciphertext_len = content.len() + TAG_LEN;
        // Three length-delimited fields, an int64, their keys and lengths.
        let mut out = Vec::with_capacity(data_key_id.len() + NONCE_LEN + ciphertext_len + 32);
        put_bytes_field(&mut out, 1, data_key_id);
        put_bytes_field(&mut out, 2, &nonce);
        encoding::encode_key(3, WireType::LengthDelimited, &mut out);
        encoding::encode_varint(ciphertext_len as u64, &mut out);
        key.encrypt_into(&nonce, &aad, content, &mut out);
        if ingested_at_ms != 0 {
            encoding::int64::encode(4, &ingested_at_ms, &mut out);
        }
        Envelope(out)
    }

    /// Decrypts a stored record into its encoded content.
    pub fn open(&self, key: &DataKey, stored: &StoredRecord) -> Result<SecretBytes, CryptoError> {
        let aad = associated_data(self.tenant, self.record_id, &stored.data_key_id, self.layer);
        key.decrypt(&stored.nonce, &aad, &stored.ciphertext)
    }
}

/// Field `tag` of `bytes` as prost writes it (and, like prost, nothing when
/// empty), so a sealed envelope is byte for byte the encoding of its
/// [`StoredRecord`].
fn put_bytes_field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, out);
        encoding::encode_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }
}

/// A record as stored in `hot` or `sealed`: an encoded [`StoredRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope(Vec<u8>);

impl Envelope {
    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Encodes a record built field by field (tests, tools).
impl From<&StoredRecord> for Envelope {
    fn from(record: &StoredRecord) -> Self {
        Self(record.encode_to_vec())
    }
}

/// Encodes content deterministically (attributes are a sorted map), into a
/// buffer that is zeroized when dropped.
pub fn encode_content(content: &RecordContent) -> SecretBytes {
    SecretBytes::new(content.encode_to_vec())
}

/// Decodes content produced by [`encode_content`].
pub fn decode_content(bytes: &[u8]) -> Result<RecordContent, CryptoError> {
    RecordContent::decode(bytes).map_err(|e| CryptoError::Corrupt { what: "record content", reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(envelope: &Envelope) -> StoredRecord {
        StoredRecord::decode(envelope.as_bytes()).unwrap()
    }

    #[test]
    fn envelope_is_bound_to_its_identity() {
        let key = DataKey::generate();
        let a = RecordIdentity { tenant: "acme", record_id: "1", layer: Layer::Hot };
        let stored = decoded(&a.seal(b"dek", &key, b"content", 5));
        assert_eq!(&*a.open(&key, &stored).unwrap(), b"content");
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
    fn a_sealed_envelope_is_the_canonical_encoding_of_its_stored_record() {
        let key = DataKey::generate();
        let a = RecordIdentity { tenant: "acme", record_id: "1", layer: Layer::Sealed };
        for (content, ingested_at) in [(&b""[..], 0), (&[7u8; 300][..], -1), (&b"x"[..], i64::MAX)] {
            let envelope = a.seal(b"dek", &key, content, ingested_at);
            let stored = decoded(&envelope);
            assert_eq!(Envelope::from(&stored), envelope, "prost writes the same bytes");
            assert_eq!((stored.data_key_id.as_slice(), stored.nonce.len()), (&b"dek"[..], NONCE_LEN));
            assert_eq!((stored.ciphertext.len(), stored.ingested_at_unix_ms), (content.len() + TAG_LEN, ingested_at));
            assert_eq!(&*a.open(&key, &stored).unwrap(), content);
        }
        let first = decoded(&a.seal(b"dek", &key, b"same", 1));
        assert_ne!(first.nonce, decoded(&a.seal(b"dek", &key, b"same", 1)).nonce, "a fresh nonce each time");
    }

    #[test]
    fn length_prefixes_keep_identities_apart() {
        assert_ne!(associated_data("ab", "c", b"", Layer::Hot), associated_data("a", "bc", b"", Layer::Hot));
    }
}
