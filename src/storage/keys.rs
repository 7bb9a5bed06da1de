//! Byte layouts of RocksDB keys. Records are keyed by tenant then record id,
//! so one tenant's records are contiguous; the ingestion-time index is keyed
//! by time first, so the seal sweep reads only what is due.

/// Key of a record in `hot` or `sealed`: `len(tenant) | tenant | record_id`.
pub fn record_key(tenant: &str, record_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + tenant.len() + record_id.len());
    key.push(tenant.len() as u8);
    key.extend_from_slice(tenant.as_bytes());
    key.extend_from_slice(record_id.as_bytes());
    key
}

/// Splits a record key into (tenant, record id); `None` if malformed.
pub fn split_record_key(key: &[u8]) -> Option<(&str, &str)> {
    let (&len, rest) = key.split_first()?;
    let len = len as usize;
    if rest.len() < len {
        return None;
    }
    let tenant = std::str::from_utf8(&rest[..len]).ok()?;
    let record_id = std::str::from_utf8(&rest[len..]).ok()?;
    Some((tenant, record_id))
}

/// The first key of a tenant's records, for prefix scans.
pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
    record_key(tenant, "")
}

/// Key of the ingestion-time index: `ingested_at (big-endian u64) | record key`.
pub fn index_key(ingested_at_ms: i64, record_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + record_key.len());
    key.extend_from_slice(&(ingested_at_ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(record_key);
    key
}

/// Splits an index key into (ingested_at_ms, record key).
pub fn split_index_key(key: &[u8]) -> Option<(i64, &[u8])> {
    let (time, record) = key.split_at_checked(8)?;
    Some((u64::from_be_bytes(time.try_into().ok()?) as i64, record))
}

/// Key of an event: its sequence, big-endian so the log iterates in order.
pub fn event_key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

/// Key of a tenant's projection in `projections`.
pub fn projection_key(tenant: &str) -> Vec<u8> {
    [b"tenant/".as_slice(), tenant.as_bytes()].concat()
}

/// Prefix of the managed root fingerprints in `projections`.
pub const MANAGED_ROOT_PREFIX: &[u8] = b"managed-root/v";

/// Key of the fingerprint recorded for managed root `version`:
/// `managed-root/v | version (big-endian u32)`.
pub fn managed_root_key(version: u32) -> Vec<u8> {
    [MANAGED_ROOT_PREFIX, &version.to_be_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_split_back() {
        let key = record_key("acme", "r-1/x");
        assert_eq!(split_record_key(&key), Some(("acme", "r-1/x")));
        assert!(key.starts_with(&tenant_prefix("acme")));
        assert!(!record_key("acme2", "x").starts_with(&tenant_prefix("acme")));
    }

    #[test]
    fn index_keys_order_by_time() {
        let early = index_key(5, &record_key("b", "1"));
        let late = index_key(300, &record_key("a", "1"));
        assert!(early < late);
        assert_eq!(split_index_key(&late).unwrap().0, 300);
    }
}
