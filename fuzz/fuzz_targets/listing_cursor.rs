//! The listing's cursor decode (`?after=` of `GET /v1/tenants/{t}/records`):
//! whatever a client sends, it answers without panicking, and a cursor it
//! accepts names a time from 1970 on and a valid record id, and is exactly
//! what the server would have written for that entry.
#![no_main]

use keyseal::admin::paging::{cursor, decode_cursor, record_id_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|after: &str| {
    let Ok((at, record_id)) = decode_cursor(after, record_id_of) else {
        return;
    };
    assert!(at >= 0, "{after:?} decodes to a time before 1970");
    assert!(!record_id.is_empty() && record_id.len() <= 128);
    assert_eq!(cursor(at, record_id.as_bytes()), after, "a cursor is accepted only in the form the server writes");
});
