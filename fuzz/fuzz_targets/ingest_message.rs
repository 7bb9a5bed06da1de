//! Ingest validation and decoding: whatever a producer sends (body, content
//! type, routing key), `validate` answers a record or a reason and never
//! panics; an accepted record always satisfies the `IngestRecord` contract.
#![no_main]

use keyseal::ingest::validate::{self, MAX_ATTRIBUTE_BYTES, MAX_PAYLOAD_BYTES, validate};
use libfuzzer_sys::fuzz_target;

#[derive(arbitrary::Arbitrary, Debug)]
struct Delivery<'a> {
    content_type: Option<&'a str>,
    /// When set, the routing key is the decoded tenant id (what honest
    /// producers send), so the fuzzer reaches the checks behind it.
    route_by_tenant: bool,
    routing_key: &'a str,
    body: &'a [u8],
}

fuzz_target!(|delivery: Delivery<'_>| {
    let routing_key = if delivery.route_by_tenant {
        match <keyseal::proto::v1::IngestRecord as prost::Message>::decode(delivery.body) {
            Ok(record) => record.tenant_id,
            Err(_) => delivery.routing_key.to_owned(),
        }
    } else {
        delivery.routing_key.to_owned()
    };
    match validate(delivery.body, delivery.content_type, &routing_key) {
        Ok(record) => {
            assert!(validate::is_valid_tenant_id(&record.tenant_id));
            assert_eq!(record.tenant_id, routing_key);
            assert!(validate::is_valid_record_id(&record.record_id));
            assert!(record.payload.len() <= MAX_PAYLOAD_BYTES);
            let attributes: usize = record.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(attributes <= MAX_ATTRIBUTE_BYTES);
        }
        // Every rejection has a stable reason code for the dead letter.
        Err(rejection) => assert!(!rejection.code().is_empty()),
    }
});
