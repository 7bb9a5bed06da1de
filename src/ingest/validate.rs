//! Checks a delivery against the `IngestRecord` contract. Pure: no broker,
//! no store. Each rejection has a stable reason code that becomes the
//! dead letter's `x-keyseal-error` header.

use prost::Message;

use crate::clock::LAST_RFC3339_MS;
use crate::proto::v1::IngestRecord;

/// Largest accepted payload.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Longest accepted record id, in bytes.
pub const MAX_RECORD_ID_BYTES: usize = 128;
/// Largest accepted total of attribute names and values.
pub const MAX_ATTRIBUTE_BYTES: usize = 64 << 10;
/// Largest body accepted for decoding: a 1 MiB payload, ids, and 64 KiB of
/// attributes even at protobuf's worst framing ratio (one-byte entries cost
/// up to 8 bytes on the wire). A larger body can hold no valid record (but
/// by repeating map keys), so it is refused before decoding copies it.
pub const MAX_MESSAGE_BYTES: usize = MAX_PAYLOAD_BYTES + 8 * MAX_ATTRIBUTE_BYTES + 4096;
/// The `observed_at_unix_ms` values accepted: 0 (not given) through the
/// last millisecond of the year 9999, every time RFC 3339 can show.
pub const OBSERVED_AT_RANGE: std::ops::RangeInclusive<i64> = 0..=LAST_RFC3339_MS;
/// The content type producers publish with.
pub const CONTENT_TYPE: &str = "application/x-protobuf";

/// Why a message cannot be accepted. Never carries payload bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The body is larger than any valid record could be.
    #[error("message_too_large: body of {0} bytes exceeds any valid record")]
    MessageTooLarge(usize),
    /// The body does not decode as an `IngestRecord`.
    #[error("malformed_protobuf: body is not a keyseal.v1.IngestRecord ({0})")]
    MalformedProtobuf(String),
    /// A content type other than `application/x-protobuf` was declared.
    #[error("unsupported_content_type: expected application/x-protobuf")]
    UnsupportedContentType,
    /// Tenant id outside `[a-z0-9][a-z0-9-]{0,62}`.
    #[error("invalid_tenant_id: must match [a-z0-9][a-z0-9-]{{0,62}}")]
    InvalidTenantId,
    /// Routing key differs from the tenant id (it drives sharding).
    #[error("routing_key_mismatch: routing key must equal tenant_id")]
    RoutingKeyMismatch,
    /// Record id empty or longer than 128 bytes.
    #[error("invalid_record_id: must be 1..=128 bytes, got {0}")]
    InvalidRecordId(usize),
    /// Payload over 1 MiB.
    #[error("payload_too_large: {0} bytes exceeds 1048576")]
    PayloadTooLarge(usize),
    /// `observed_at_unix_ms` outside [`OBSERVED_AT_RANGE`]: a time no
    /// producer saw, and one no API could show.
    #[error("invalid_observed_at: observed_at_unix_ms {0} is outside 0..=253402300799999 (1970 to 9999)")]
    InvalidObservedAt(i64),
    /// Attributes over 64 KiB in total.
    #[error("attributes_too_large: {0} bytes exceeds 65536")]
    AttributesTooLarge(usize),
    /// Same tenant and record id as a stored record, different content.
    #[error("conflicting_duplicate: record id already stored with different content")]
    ConflictingDuplicate,
    /// Same tenant and record id as a stored record whose stored copy cannot
    /// be decrypted now (its data key is unavailable or the tenant is locked
    /// down), so whether it is a duplicate cannot be told.
    #[error("duplicate_unverifiable: record id already stored; its stored copy cannot be decrypted now to compare")]
    DuplicateUnverifiable,
    /// The record id was deleted and its tombstone has not expired.
    #[error("record_deleted: this record id was deleted; it is refused until its tombstone expires (--tombstone-ttl)")]
    RecordDeleted,
    /// The message reached the queue of a shard its tenant does not live
    /// on (someone bound or published it there by hand): storing it would
    /// put the tenant's records where its other records are not.
    #[error("wrong_shard: the tenant lives on shard {home}, not on shard {here}")]
    WrongShard {
        /// The tenant's shard.
        home: u32,
        /// The shard whose queue it reached.
        here: u32,
    },
    /// The intake placed as many new tenants this minute as it may
    /// (`--new-tenants-per-minute`).
    #[error("tenant_rate_limited: too many new tenants this minute (--new-tenants-per-minute); publish it again later")]
    TenantRateLimited,
    /// The intake could not forward the message to its shard after this
    /// many deliveries.
    #[error("unforwardable: the intake could not republish it to its shard after {0} deliveries")]
    Unforwardable(u32),
    /// The tenant was erased (`DELETE /v1/tenants/{t}`): nothing of it is stored again.
    #[error("tenant_erased: the tenant was erased; its records are no longer accepted")]
    TenantErased,
}

impl Rejection {
    /// The stable reason code (the header value starts with it).
    pub fn code(&self) -> &'static str {
        match self {
            Self::MessageTooLarge(_) => "message_too_large",
            Self::MalformedProtobuf(_) => "malformed_protobuf",
            Self::UnsupportedContentType => "unsupported_content_type",
            Self::InvalidTenantId => "invalid_tenant_id",
            Self::RoutingKeyMismatch => "routing_key_mismatch",
            Self::InvalidRecordId(_) => "invalid_record_id",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::InvalidObservedAt(_) => "invalid_observed_at",
            Self::AttributesTooLarge(_) => "attributes_too_large",
            Self::ConflictingDuplicate => "conflicting_duplicate",
            Self::DuplicateUnverifiable => "duplicate_unverifiable",
            Self::RecordDeleted => "record_deleted",
            Self::WrongShard { .. } => "wrong_shard",
            Self::TenantRateLimited => "tenant_rate_limited",
            Self::Unforwardable(_) => "unforwardable",
            Self::TenantErased => "tenant_erased",
        }
    }

    /// Whether the dead letter carries the message body. Not for an erased
    /// tenant: its plaintext must not outlive the erasure in the
    /// dead-letter queue (the headers and reason stay).
    pub fn keeps_payload(&self) -> bool {
        !matches!(self, Self::TenantErased)
    }
}

/// Whether `tenant` matches `[a-z0-9][a-z0-9-]{0,62}`.
pub fn is_valid_tenant_id(tenant: &str) -> bool {
    let bytes = tenant.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= 63
        && bytes.iter().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// Whether `record_id` has an acceptable length.
pub fn is_valid_record_id(record_id: &str) -> bool {
    (1..=MAX_RECORD_ID_BYTES).contains(&record_id.len())
}

/// Decodes and validates one delivery.
pub fn validate(body: &[u8], content_type: Option<&str>, routing_key: &str) -> Result<IngestRecord, Rejection> {
    if content_type.is_some_and(|ct| ct != CONTENT_TYPE) {
        return Err(Rejection::UnsupportedContentType);
    }
    // Decoding copies the payload: never for a body no record fits in.
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::MessageTooLarge(body.len()));
    }
    let record = IngestRecord::decode(body).map_err(|e| Rejection::MalformedProtobuf(e.to_string()))?;
    if !is_valid_tenant_id(&record.tenant_id) {
        return Err(Rejection::InvalidTenantId);
    }
    if routing_key != record.tenant_id {
        return Err(Rejection::RoutingKeyMismatch);
    }
    if !is_valid_record_id(&record.record_id) {
        return Err(Rejection::InvalidRecordId(record.record_id.len()));
    }
    if record.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Rejection::PayloadTooLarge(record.payload.len()));
    }
    if !OBSERVED_AT_RANGE.contains(&record.observed_at_unix_ms) {
        return Err(Rejection::InvalidObservedAt(record.observed_at_unix_ms));
    }
    let attribute_bytes: usize = record.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    if attribute_bytes > MAX_ATTRIBUTE_BYTES {
        return Err(Rejection::AttributesTooLarge(attribute_bytes));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tenant: &str, id: &str, payload: usize) -> Vec<u8> {
        record_at(tenant, id, payload, 1)
    }

    fn record_at(tenant: &str, id: &str, payload: usize, observed_at_unix_ms: i64) -> Vec<u8> {
        IngestRecord {
            tenant_id: tenant.into(),
            record_id: id.into(),
            observed_at_unix_ms,
            payload: vec![7; payload],
            attributes: Default::default(),
        }
        .encode_to_vec()
    }

    #[test]
    fn tenant_ids_follow_the_pattern() {
        for ok in ["a", "acme", "0-x", &"a".repeat(63)] {
            assert!(is_valid_tenant_id(ok), "{ok}");
        }
        for bad in ["", "-a", "Acme", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_valid_tenant_id(bad), "{bad}");
        }
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        let ct = Some(CONTENT_TYPE);
        assert!(validate(&record("acme", "1", 10), ct, "acme").is_ok());
        let cases = [
            (validate(b"\xff\xff\xff", ct, "acme"), "malformed_protobuf"),
            (validate(&record("acme", "1", 1), Some("text/plain"), "acme"), "unsupported_content_type"),
            (validate(&record("Bad", "1", 1), ct, "Bad"), "invalid_tenant_id"),
            (validate(&record("acme", "1", 1), ct, "other"), "routing_key_mismatch"),
            (validate(&record("acme", "", 1), ct, "acme"), "invalid_record_id"),
            (validate(&record("acme", &"r".repeat(129), 1), ct, "acme"), "invalid_record_id"),
            (validate(&record("acme", "1", MAX_PAYLOAD_BYTES + 1), ct, "acme"), "payload_too_large"),
            (validate(&vec![0; MAX_MESSAGE_BYTES + 1], ct, "acme"), "message_too_large"),
            (validate(&record_at("acme", "1", 1, i64::MAX), ct, "acme"), "invalid_observed_at"),
            (validate(&record_at("acme", "1", 1, LAST_RFC3339_MS + 1), ct, "acme"), "invalid_observed_at"),
            (validate(&record_at("acme", "1", 1, -1), ct, "acme"), "invalid_observed_at"),
        ];
        for (result, code) in cases {
            assert_eq!(result.unwrap_err().code(), code);
        }
        assert!(validate(&record("acme", &"r".repeat(128), MAX_PAYLOAD_BYTES), None, "acme").is_ok());
        assert!(validate(&record_at("acme", "1", 1, LAST_RFC3339_MS), ct, "acme").is_ok());
        assert!(validate(&record_at("acme", "1", 1, 0), ct, "acme").is_ok());
    }
}
