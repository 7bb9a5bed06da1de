//! The stored record envelope: bytes read back from RocksDB (possibly
//! damaged or forged) are decoded, their data-key id parsed and opened under
//! a key. Nothing panics; a forged envelope never opens under a key it was
//! not sealed with; a genuine one opens only for its own identity.
#![no_main]

use std::sync::LazyLock;

use keyseal::crypto::data_key::{DataKey, DataKeyId};
use keyseal::crypto::envelope::{RecordIdentity, decode_content};
use keyseal::proto::store::StoredRecord;
use keyseal::proto::v1::Layer;
use libfuzzer_sys::fuzz_target;
use prost::Message;

static KEY: LazyLock<DataKey> = LazyLock::new(DataKey::generate);

#[derive(arbitrary::Arbitrary, Debug)]
struct Input<'a> {
    stored: &'a [u8],
    tenant: &'a str,
    record_id: &'a str,
    sealed: bool,
    content: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let layer = if input.sealed { Layer::Sealed } else { Layer::Hot };
    let identity = RecordIdentity { tenant: input.tenant, record_id: input.record_id, layer };
    if let Ok(stored) = StoredRecord::decode(input.stored) {
        let _ = DataKeyId::from_bytes(&stored.data_key_id);
        // Forged bytes carry no tag made with KEY (it never leaves memory).
        assert!(identity.open(&KEY, &stored).is_err(), "a forged envelope opened");
    }
    // A genuine envelope survives its encoding and opens for its identity
    // only.
    let sealed = identity.seal(b"fuzz-dek", &KEY, input.content, 1);
    let reread = StoredRecord::decode(sealed.as_bytes()).expect("own encoding decodes");
    assert_eq!(&*identity.open(&KEY, &reread).expect("opens"), input.content);
    let other_layer = if input.sealed { Layer::Hot } else { Layer::Sealed };
    assert!(RecordIdentity { layer: other_layer, ..identity }.open(&KEY, &reread).is_err());
    let _ = decode_content(input.content);
});
