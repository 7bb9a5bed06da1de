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

/// Key of a tenant's listing index: `record_key(tenant, "") | ingested_at
/// (big-endian u64) | record_id`, so a tenant's records list in ingestion
/// order (ties by record id).
pub fn tenant_index_key(tenant: &str, ingested_at_ms: i64, record_id: &str) -> Vec<u8> {
    tenant_time_key(tenant, ingested_at_ms, record_id.as_bytes())
}

/// Key of a per-tenant, time-ordered index (`by_tenant`, `audit`):
/// `record_key(tenant, "") | time (big-endian u64) | tie_break`.
pub fn tenant_time_key(tenant: &str, time_ms: i64, tie_break: &[u8]) -> Vec<u8> {
    let mut key = tenant_prefix(tenant);
    key.extend_from_slice(&(time_ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(tie_break);
    key
}

/// The first key after every key that starts with `prefix` (for range
/// deletes and compactions of one tenant's keys); `None` when no key
/// follows (a prefix of only 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Splits what follows a tenant's prefix in a listing index key into
/// (ingested_at_ms, record_id): also the shape of a listing cursor.
pub fn split_tenant_index_suffix(suffix: &[u8]) -> Option<(i64, &str)> {
    let (time, record_id) = suffix.split_at_checked(8)?;
    Some((u64::from_be_bytes(time.try_into().ok()?) as i64, std::str::from_utf8(record_id).ok()?))
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
    fn tenant_index_keys_order_by_time_within_the_tenant_and_split_back() {
        let early = tenant_index_key("acme", 5, "zz");
        let late = tenant_index_key("acme", 300, "aa");
        assert!(early < late);
        assert!(late.starts_with(&tenant_prefix("acme")));
        let suffix = &late[tenant_prefix("acme").len()..];
        assert_eq!(split_tenant_index_suffix(suffix), Some((300, "aa")));
        assert_eq!(split_tenant_index_suffix(b"short"), None);
    }

    #[test]
    fn a_prefix_end_follows_every_key_of_the_prefix_and_nothing_else() {
        let prefix = tenant_prefix("acme");
        let end = prefix_end(&prefix).unwrap();
        assert!(record_key("acme", "\u{10ffff}zzz").as_slice() < end.as_slice());
        assert!(end.as_slice() <= record_key("acmf", "").as_slice());
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn index_keys_order_by_time() {
        let early = index_key(5, &record_key("b", "1"));
        let late = index_key(300, &record_key("a", "1"));
        assert!(early < late);
        assert_eq!(split_index_key(&late).unwrap().0, 300);
    }
}
