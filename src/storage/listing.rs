//! A tenant's records in ingestion order, metadata only: the `by_tenant`
//! index, its pages, and building it for a store written before it existed.

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::schema::{CF_BY_TENANT, CF_BY_TIME, CF_HOT, CF_PROJECTIONS, CF_SEALED, TENANT_INDEX_BUILT_KEY, decode};
use super::{Store, StoreError, keys};
use crate::proto::store::{RecordEntry, StoredRecord};
use crate::proto::v1::Layer;

/// Which entries of a per-tenant, time-ordered index a page covers:
/// timed in `[from_ms, to_ms)`, strictly after the cursor `after` (the
/// last entry of the previous page: its time and tie-break, a record id
/// for listings and a sequence for the audit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeRange<C> {
    /// Earliest time included (Unix ms).
    pub from_ms: Option<i64>,
    /// First time excluded (Unix ms).
    pub to_ms: Option<i64>,
    /// The last entry of the previous page.
    pub after: Option<(i64, C)>,
}

impl<C> TimeRange<C> {
    /// The same range with the cursor's tie-break as the bytes it has in keys.
    pub(super) fn in_key_bytes(&self, tie_break: impl Fn(&C) -> Vec<u8>) -> TimeRange<Vec<u8>> {
        TimeRange {
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            after: self.after.as_ref().map(|(at, c)| (*at, tie_break(c))),
        }
    }
}

/// One entry of a per-tenant, time-ordered index, as scanned.
pub(super) struct Scanned {
    /// Its time (Unix ms).
    pub(super) time_ms: i64,
    /// What orders entries of the same time (a record id, a sequence).
    pub(super) tie_break: Vec<u8>,
    /// Its value.
    pub(super) value: Box<[u8]>,
}

/// Which of a tenant's records a listing covers, by ingestion time.
pub type ListingRange = TimeRange<String>;

/// One record of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// When it was ingested, Unix ms (with the id, the page cursor).
    pub ingested_at_ms: i64,
    /// Its record id.
    pub record_id: String,
    /// Where it rests now.
    pub layer: Layer,
    /// What the producer said of it (unset for records older than the index).
    pub entry: RecordEntry,
}

impl Store {
    /// Up to `limit` of `tenant`'s records in `range`, in ingestion order,
    /// from one snapshot: an index scan plus one batched lookup of which
    /// are still hot. Nothing is decrypted.
    pub fn list_records(&self, tenant: &str, range: &ListingRange, limit: usize) -> Result<Vec<Listed>, StoreError> {
        let snapshot = self.db.snapshot();
        let range = range.in_key_bytes(|id| id.as_bytes().to_vec());
        let scanned = self.scan_tenant_page(&snapshot, CF_BY_TENANT, tenant, &range, limit)?;
        let mut page = Vec::with_capacity(scanned.len());
        for Scanned { time_ms: ingested_at_ms, tie_break: record_id, value } in scanned {
            let record_id = String::from_utf8(record_id).map_err(|_| StoreError::Corrupt {
                cf: CF_BY_TENANT,
                what: "listing index key",
                reason: "record id is not UTF-8".into(),
            })?;
            let entry = decode(CF_BY_TENANT, "record entry", &value)?;
            page.push(Listed { ingested_at_ms, record_id, layer: Layer::Sealed, entry });
        }
        // A record is hot exactly while its seal-index entry exists.
        let index_keys: Vec<Vec<u8>> = page
            .iter()
            .map(|listed| keys::index_key(listed.ingested_at_ms, &keys::record_key(tenant, &listed.record_id)))
            .collect();
        let by_time = self.cf(CF_BY_TIME);
        for (listed, hot) in page.iter_mut().zip(snapshot.multi_get_cf(index_keys.iter().map(|k| (by_time, k)))) {
            if hot?.is_some() {
                listed.layer = Layer::Hot;
            }
        }
        Ok(page)
    }

    /// Up to `limit` entries of `tenant` in `range` of the per-tenant,
    /// time-ordered index `cf`, from `snapshot`: (time, tie-break, value)
    /// each, in key order.
    pub(super) fn scan_tenant_page(
        &self,
        snapshot: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
        cf: &'static str,
        tenant: &str,
        range: &TimeRange<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Scanned>, StoreError> {
        let prefix = keys::tenant_prefix(tenant);
        let from = keys::tenant_time_key(tenant, range.from_ms.unwrap_or(0), b"");
        let after = range.after.as_ref().map(|(at, tie_break)| keys::tenant_time_key(tenant, *at, tie_break));
        let start = after.clone().filter(|after| *after > from).unwrap_or(from);
        let end = range.to_ms.map(|to| keys::tenant_time_key(tenant, to, b""));
        let mut page = Vec::with_capacity(limit.min(1024));
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in snapshot.iterator_cf_opt(self.cf(cf), ReadOptions::default(), mode) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) || end.as_ref().is_some_and(|end| key.as_ref() >= end.as_slice()) {
                break;
            }
            if after.as_ref().is_some_and(|after| key.as_ref() == after.as_slice()) {
                continue;
            }
            let (time, tie_break) = key[prefix.len()..].split_at_checked(8).ok_or_else(|| StoreError::Corrupt {
                cf,
                what: "per-tenant index key",
                reason: "shorter than its tenant prefix and time".into(),
            })?;
            let time_ms = u64::from_be_bytes(time.try_into().expect("8 bytes")) as i64;
            page.push(Scanned { time_ms, tie_break: tie_break.to_vec(), value });
            if page.len() == limit {
                break;
            }
        }
        Ok(page)
    }

    /// Indexes every stored record in `by_tenant` unless that was done: a
    /// store from before the index gets it at its first open (with no
    /// observed time or size, which only the encrypted content holds).
    /// Idempotent, so a crash midway only means doing it again.
    pub(super) fn build_tenant_index(&self) -> Result<(), StoreError> {
        if self.db.get_cf(self.cf(CF_PROJECTIONS), TENANT_INDEX_BUILT_KEY)?.is_some() {
            return Ok(());
        }
        const CHUNK: usize = 10_000;
        let index = self.cf(CF_BY_TENANT);
        for cf_name in [CF_HOT, CF_SEALED] {
            let mut batch = WriteBatch::default();
            for item in self.db.iterator_cf(self.cf(cf_name), IteratorMode::Start) {
                let (key, value) = item?;
                let record: StoredRecord = decode(cf_name, "record", &value)?;
                let Some((tenant, record_id)) = keys::split_record_key(&key) else { continue };
                batch.put_cf(index, keys::tenant_index_key(tenant, record.ingested_at_unix_ms, record_id), []);
                if batch.len() >= CHUNK {
                    self.db.write(std::mem::take(&mut batch))?;
                }
            }
            self.db.write(batch)?;
        }
        let mut done = WriteBatch::default();
        done.put_cf(self.cf(CF_PROJECTIONS), TENANT_INDEX_BUILT_KEY, []);
        self.db.write(done)?;
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::Envelope;
    use crate::proto::store::StoredRecord;

    fn store_at(store: &Store, tenant: &str, id: &str, at: i64, layer: Layer) {
        let key = keys::record_key(tenant, id);
        let mut txn = store.transaction();
        txn.put_record(
            layer,
            &key,
            &Envelope::from(&StoredRecord { ingested_at_unix_ms: at, ..StoredRecord::default() }),
        );
        if layer == Layer::Hot {
            txn.put_index(&keys::index_key(at, &key));
        }
        let entry = RecordEntry { observed_at_unix_ms: Some(at - 1), size: Some(id.len() as u64) };
        txn.put_tenant_index(&keys::tenant_index_key(tenant, at, id), &entry);
        txn.commit(at).unwrap();
    }

    fn ids(listed: &[Listed]) -> Vec<&str> {
        listed.iter().map(|l| l.record_id.as_str()).collect()
    }

    #[test]
    fn a_listing_pages_in_ingestion_order_within_its_range_with_each_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (id, at, layer) in
            [("c", 10, Layer::Sealed), ("a", 20, Layer::Hot), ("b", 20, Layer::Hot), ("z", 30, Layer::Hot)]
        {
            store_at(&store, "acme", id, at, layer);
        }
        store_at(&store, "acme2", "other", 15, Layer::Hot);
        let all = store.list_records("acme", &ListingRange::default(), 10).unwrap();
        assert_eq!(ids(&all), ["c", "a", "b", "z"], "by time, then id; no other tenant");
        assert_eq!(
            all.iter().map(|l| l.layer).collect::<Vec<_>>(),
            [Layer::Sealed, Layer::Hot, Layer::Hot, Layer::Hot]
        );
        assert_eq!(all[0].entry, RecordEntry { observed_at_unix_ms: Some(9), size: Some(1) });

        let first = store.list_records("acme", &ListingRange::default(), 2).unwrap();
        let after = Some((first[1].ingested_at_ms, first[1].record_id.clone()));
        let second = store.list_records("acme", &ListingRange { after, ..ListingRange::default() }, 2).unwrap();
        assert_eq!((ids(&first), ids(&second)), (vec!["c", "a"], vec!["b", "z"]));

        let range = ListingRange { from_ms: Some(20), to_ms: Some(30), after: None };
        assert_eq!(ids(&store.list_records("acme", &range, 10).unwrap()), ["a", "b"], "from included, to excluded");
        let behind = ListingRange { from_ms: Some(20), to_ms: None, after: Some((10, "c".into())) };
        assert_eq!(ids(&store.list_records("acme", &behind, 10).unwrap()), ["a", "b", "z"], "a cursor before from");
    }

    #[test]
    fn a_store_from_before_the_index_is_indexed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let key = keys::record_key("acme", "old");
            let mut txn = store.transaction();
            txn.put_record(
                Layer::Sealed,
                &key,
                &Envelope::from(&StoredRecord { ingested_at_unix_ms: 7, ..StoredRecord::default() }),
            );
            txn.commit(7).unwrap();
            // As if written by a keyseal without the index.
            store.raw().delete_cf(store.cf(CF_PROJECTIONS), TENANT_INDEX_BUILT_KEY).unwrap();
            assert!(store.list_records("acme", &ListingRange::default(), 10).unwrap().is_empty());
        }
        let store = Store::open(dir.path()).unwrap();
        let listed = store.list_records("acme", &ListingRange::default(), 10).unwrap();
        assert_eq!(ids(&listed), ["old"]);
        assert_eq!((listed[0].ingested_at_ms, listed[0].layer), (7, Layer::Sealed));
        assert_eq!(listed[0].entry, RecordEntry::default(), "observed time and size are not known");
    }
}
