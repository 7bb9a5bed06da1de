//! Reading records: lookups by key in one snapshot, and the cursor scans
//! (the ingestion-time index, a tenant's records) that sweeps walk page by
//! page with a [`super::pager::Pager`].

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::schema::{CF_BY_TIME, CF_HOT, CF_SEALED, decode, layer_cf};
use super::{Located, Store, StoreError, keys};
use crate::proto::v1::Layer;

/// An entry of the ingestion-time index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The index key itself (time, then record key).
    pub index_key: Vec<u8>,
    /// When the record was ingested, Unix ms.
    pub ingested_at_ms: i64,
    /// The key of the record in `hot`.
    pub record_key: Vec<u8>,
}

/// A stored record as raw bytes, so a scan can report a value that does not
/// decode instead of stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// The record key.
    pub key: Vec<u8>,
    /// The encoded `StoredRecord`.
    pub value: Vec<u8>,
}

impl Store {
    /// Looks a record up in `hot`, then `sealed`.
    pub fn find_record(&self, record_key: &[u8]) -> Result<Option<Located>, StoreError> {
        Ok(self.find_records(&[record_key])?.pop().flatten())
    }

    /// Looks many records up in one consistent snapshot, so a record being
    /// sealed concurrently is seen in exactly one layer.
    pub fn find_records<K: AsRef<[u8]>>(&self, record_keys: &[K]) -> Result<Vec<Option<Located>>, StoreError> {
        let snapshot = self.db.snapshot();
        let mut in_snapshot = ReadOptions::default();
        in_snapshot.set_snapshot(&snapshot);
        let lookups = [(Layer::Hot, CF_HOT), (Layer::Sealed, CF_SEALED)];
        let mut found: Vec<Option<Located>> = vec![None; record_keys.len()];
        for (layer, cf_name) in lookups {
            let missing: Vec<usize> = (0..record_keys.len()).filter(|&i| found[i].is_none()).collect();
            if missing.is_empty() {
                break;
            }
            // Batched, and decoded straight from the pinned value: no copy.
            let keys = missing.iter().map(|&i| record_keys[i].as_ref());
            let values = self.db.batched_multi_get_cf_opt(self.cf(cf_name), keys, false, &in_snapshot);
            for (i, value) in missing.into_iter().zip(values) {
                if let Some(bytes) = value? {
                    found[i] = Some(Located { layer, record: decode(cf_name, "record", &bytes)? });
                }
            }
        }
        Ok(found)
    }

    /// Up to `limit` index entries with ingestion time before `cutoff_ms`,
    /// oldest first, strictly after index key `after` when given.
    pub fn ingested_before(
        &self,
        after: Option<&[u8]>,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, StoreError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound((cutoff_ms.max(0) as u64).to_be_bytes().to_vec());
        let mode = match after {
            Some(key) => IteratorMode::From(key, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut due = Vec::new();
        for item in self
            .db
            .iterator_cf_opt(self.cf(CF_BY_TIME), opts, mode)
            .filter(|item| !matches!((item, after), (Ok((key, _)), Some(after)) if key.as_ref() == after))
            .take(limit)
        {
            let (key, _) = item?;
            let (at, record) = keys::split_index_key(&key).ok_or_else(|| StoreError::Corrupt {
                cf: CF_BY_TIME,
                what: "index key",
                reason: "shorter than 8 bytes".into(),
            })?;
            let record_key = record.to_vec();
            due.push(IndexEntry { index_key: key.into_vec(), ingested_at_ms: at, record_key });
        }
        Ok(due)
    }

    /// Up to `limit` of `tenant`'s records in `layer`, in key order, strictly
    /// after record key `after` when given, raw.
    pub fn records_of(
        &self,
        layer: Layer,
        tenant: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        let prefix = keys::tenant_prefix(tenant);
        let start = after.unwrap_or(&prefix);
        let mut page = Vec::with_capacity(limit.min(4096));
        for item in self.db.iterator_cf(self.cf(layer_cf(layer)), IteratorMode::From(start, Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            if after.is_some_and(|after| key.as_ref() == after) {
                continue;
            }
            page.push(RawRecord { key: key.into_vec(), value: value.into_vec() });
            if page.len() == limit {
                break;
            }
        }
        Ok(page)
    }

    /// Ingestion time of the oldest record still in `hot`.
    pub fn oldest_hot_ingested_at(&self) -> Result<Option<i64>, StoreError> {
        let first = self.db.iterator_cf(self.cf(CF_BY_TIME), IteratorMode::Start).next();
        Ok(first.transpose()?.and_then(|(k, _)| keys::split_index_key(&k).map(|(at, _)| at)))
    }
}
