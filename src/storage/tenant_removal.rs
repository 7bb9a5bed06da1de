//! Removing an erased tenant from the store for good, after its data keys
//! were shredded: its records, index entries, tombstones and the record ids
//! its events carried are deleted ([`Store::remove_tenant`]), then the
//! deletions are made physical ([`Store::compact_tenant`]: the memtables
//! flushed, so the WAL files that held the tenant are retired, and every
//! file holding its ranges rewritten to the bottom level, where deleted
//! values and the deletion markers themselves are dropped), and finally the
//! MANIFEST, which names the first and last key of every file it ever
//! listed, is rolled ([`Store::roll_manifest`]). Each step is idempotent,
//! so an erasure interrupted by a crash is simply done again.

use std::ffi::{CStr, CString, c_char};

use librocksdb_sys as ffi;
use prost::Message;
use rocksdb::{AsRawPtr, BottommostLevelCompaction, CompactOptions, Direction, IteratorMode, WriteBatch};

use super::schema::{
    CF_BY_TENANT, CF_BY_TIME, CF_DEKS, CF_EVENTS, CF_HOT, CF_PROJECTIONS, CF_SEALED, CF_TOMBSTONES, decode,
};
use super::{BLOB_FAMILIES, Store, StoreError, keys};
use crate::proto::store::StoredRecord;
use crate::proto::v1::{Event, event::Kind};

/// RocksDB's defaults of the two options [`Store::roll_manifest`] lowers
/// for a moment (the store never changes them otherwise).
const DEFAULT_MAX_MANIFEST_FILE_SIZE: u64 = 1 << 30;
const DEFAULT_MAX_MANIFEST_SPACE_AMP_PCT: u32 = 500;

/// Deletes written per batch while walking a tenant's entries.
const CHUNK: usize = 10_000;

/// The column families keyed by tenant first, emptied of a tenant by one
/// range deletion each.
const TENANT_KEYED: [&str; 5] = [CF_HOT, CF_SEALED, CF_BY_TENANT, CF_TOMBSTONES, CF_DEKS];

/// What [`Store::remove_tenant`] removed, and where the events it
/// rewrote lie (for the compaction that follows).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Records deleted (hot and sealed).
    pub records: u64,
    /// Events whose record id was blanked.
    pub events_redacted: u32,
    /// First and last sequence of those events.
    pub redacted_span: Option<(u64, u64)>,
}

impl Store {
    /// Deletes everything of `tenant` but its projection, its events and
    /// its key-use audit, and blanks the record ids in its events
    /// (`RecordDeleted`, `CorruptionDetected`). The caller holds the move
    /// lock ([`Store::moving`]), so no seal or delete acts on what it reads.
    pub fn remove_tenant(&self, tenant: &str) -> Result<Removed, StoreError> {
        let prefix = keys::tenant_prefix(tenant);
        let end = keys::prefix_end(&prefix).expect("a tenant prefix starts with its length, which is below 0xff");
        let mut removed = Removed::default();
        // The seal index is keyed by time: its entries are found through
        // the hot records they index.
        let mut batch = WriteBatch::default();
        for item in self.db.iterator_cf(self.cf(CF_HOT), IteratorMode::From(&prefix, Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let record: StoredRecord = decode(CF_HOT, "record", &value)?;
            batch.delete_cf(self.cf(CF_BY_TIME), keys::index_key(record.ingested_at_unix_ms, &key));
            removed.records += 1;
            self.write_full(&mut batch)?;
        }
        removed.records += self.count_keys(CF_SEALED, &prefix)?;
        for cf in TENANT_KEYED {
            batch.delete_range_cf(self.cf(cf), &prefix, &end);
        }
        self.db.write(std::mem::take(&mut batch))?;
        for item in self.db.iterator_cf(self.cf(CF_EVENTS), IteratorMode::Start) {
            let (key, value) = item?;
            let mut event: Event = decode(CF_EVENTS, "event", &value)?;
            if event.tenant_id != tenant || !blank_record_id(&mut event) {
                continue;
            }
            batch.put_cf(self.cf(CF_EVENTS), &key, event.encode_to_vec());
            removed.events_redacted += 1;
            let span = removed.redacted_span.get_or_insert((event.sequence, event.sequence));
            span.1 = event.sequence;
            self.write_full(&mut batch)?;
        }
        self.db.write(batch)?;
        self.sync()?;
        Ok(removed)
    }

    /// Makes [`Store::remove_tenant`]'s deletions physical: flushes every
    /// memtable (the WAL files written before are then deleted), and
    /// compacts the tenant's ranges, the seal index and the redacted
    /// events down to the bottom level, rewriting every file that held them.
    /// The tenant's records in blob files share them with other tenants'
    /// records, so those families are compacted whole with blob garbage
    /// collection forced: every live blob is moved to a new file and every
    /// old blob file deleted. That costs a rewrite of the families' blob
    /// data, paid per erasure, not per record.
    pub fn compact_tenant(&self, tenant: &str, removed: &Removed) -> Result<(), StoreError> {
        self.flush()?;
        let prefix = keys::tenant_prefix(tenant);
        let end = keys::prefix_end(&prefix).expect("a tenant prefix starts with its length, which is below 0xff");
        let mut options = CompactOptions::default();
        options.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        for cf in TENANT_KEYED {
            if BLOB_FAMILIES.contains(&cf) {
                self.collect_blobs(cf)?;
            } else {
                self.db.compact_range_cf_opt(self.cf(cf), Some(&prefix), Some(&end), &options);
            }
        }
        self.db.compact_range_cf_opt(self.cf(CF_BY_TIME), None::<&[u8]>, None::<&[u8]>, &options);
        if let Some((first, last)) = removed.redacted_span {
            let (first, last) = (keys::event_key(first), keys::event_key(last));
            self.db.compact_range_cf_opt(self.cf(CF_EVENTS), Some(&first[..]), Some(&last[..]), &options);
        }
        Ok(())
    }

    /// Compacts column family `cf` whole with blob garbage collection
    /// forced on every blob file (age cutoff 1.0), then turns it off again;
    /// one erasure at a time (concurrent ones wait), and automatic
    /// compactions (ingestion's) go on beside it.
    fn collect_blobs(&self, cf: &str) -> Result<(), StoreError> {
        let _one_at_a_time = self.blob_collection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut options = CompactOptions::default();
        options.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        options.set_exclusive_manual_compaction(false);
        let collect = [("enable_blob_garbage_collection", "true"), ("blob_garbage_collection_age_cutoff", "1.0")];
        self.db.set_options_cf(self.cf(cf), &collect)?;
        self.db.compact_range_cf_opt(self.cf(cf), None::<&[u8]>, None::<&[u8]>, &options);
        self.db.set_options_cf(self.cf(cf), &[("enable_blob_garbage_collection", "false")])?;
        Ok(())
    }

    /// Starts a new MANIFEST holding only the files that exist now, and
    /// deletes the old one with every file boundary it recorded; flushing
    /// also retires the WAL written until now.
    pub fn roll_manifest(&self) -> Result<(), StoreError> {
        // A limit the MANIFEST already exceeds makes the next change of the
        // file set (this flush) write a fresh one.
        self.set_db_options(&[("max_manifest_file_size", "1"), ("max_manifest_space_amp_pct", "0")])?;
        let mut marker = WriteBatch::default();
        marker.put_cf(self.cf(CF_PROJECTIONS), b"manifest-rolled", []);
        let flushed = self.db.write(marker).map_err(StoreError::from).and_then(|()| self.flush());
        let restored = self.set_db_options(&[
            ("max_manifest_file_size", &DEFAULT_MAX_MANIFEST_FILE_SIZE.to_string()),
            ("max_manifest_space_amp_pct", &DEFAULT_MAX_MANIFEST_SPACE_AMP_PCT.to_string()),
        ]);
        flushed.and(restored)
    }

    /// RocksDB's `SetDBOptions`, which the rocksdb crate does not offer
    /// (its `set_options` sets column-family options).
    fn set_db_options(&self, options: &[(&str, &str)]) -> Result<(), StoreError> {
        let invalid = |e: std::ffi::NulError| StoreError::Options(e.to_string());
        let names =
            options.iter().map(|(name, _)| CString::new(*name)).collect::<Result<Vec<_>, _>>().map_err(invalid)?;
        let values =
            options.iter().map(|(_, value)| CString::new(*value)).collect::<Result<Vec<_>, _>>().map_err(invalid)?;
        let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let value_ptrs: Vec<*const c_char> = values.iter().map(|v| v.as_ptr()).collect();
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: the database pointer is valid while `self.db` lives, which
        // outlives the call; the name and value arrays (and the strings they
        // point to) outlive it too, and RocksDB copies what it keeps. An
        // error message is allocated by RocksDB and freed with its own free.
        unsafe {
            let count = i32::try_from(options.len()).expect("a handful of options");
            ffi::rocksdb_set_db_options(
                self.db.as_raw_ptr(),
                count,
                name_ptrs.as_ptr(),
                value_ptrs.as_ptr(),
                &mut error,
            );
            if error.is_null() {
                return Ok(());
            }
            let message = CStr::from_ptr(error).to_string_lossy().into_owned();
            ffi::rocksdb_free(error.cast());
            Err(StoreError::Options(message))
        }
    }

    /// Writes `batch` once it holds a chunk's worth.
    fn write_full(&self, batch: &mut WriteBatch) -> Result<(), StoreError> {
        if batch.len() >= CHUNK {
            self.db.write(std::mem::take(batch))?;
        }
        Ok(())
    }

    /// How many keys of `cf` start with `prefix`.
    fn count_keys(&self, cf: &'static str, prefix: &[u8]) -> Result<u64, StoreError> {
        let mut count = 0;
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::From(prefix, Direction::Forward)) {
            if !item?.0.starts_with(prefix) {
                break;
            }
            count += 1;
        }
        Ok(count)
    }
}

/// Blanks the record id an event carries; whether it carried one.
fn blank_record_id(event: &mut Event) -> bool {
    let record_id = match &mut event.kind {
        Some(Kind::RecordDeleted(deleted)) => &mut deleted.record_id,
        Some(Kind::CorruptionDetected(found)) => &mut found.record_id,
        _ => return false,
    };
    !std::mem::take(record_id).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::Envelope;
    use crate::proto::v1::{Layer, RecordDeleted};

    fn files_mention(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        found
    }

    #[test]
    fn a_removed_tenant_leaves_no_record_id_in_any_file_and_others_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (tenant, id, layer) in [
            ("gone", "secret-id-1", Layer::Hot),
            ("gone", "secret-id-2", Layer::Sealed),
            ("kept", "kept-id-1", Layer::Hot),
        ] {
            let key = keys::record_key(tenant, id);
            let mut txn = store.transaction();
            // A ciphertext of 1 KiB goes to a blob file: the search below
            // covers blob files too.
            let ciphertext = id.repeat(1024 / id.len()).into_bytes();
            let record = StoredRecord { ciphertext, ingested_at_unix_ms: 7, ..StoredRecord::default() };
            txn.put_record(layer, &key, &Envelope::from(&record));
            if layer == Layer::Hot {
                txn.put_index(&keys::index_key(7, &key));
            }
            txn.put_tenant_index(&keys::tenant_index_key(tenant, 7, id), &Default::default());
            txn.commit(7).unwrap();
            // Spread over files, as a long-lived store is.
            store.flush().unwrap();
        }
        // Two tenants' records in one flush share a blob file.
        let mut txn = store.transaction();
        for (tenant, id) in [("gone", "secret-id-4"), ("kept", "kept-id-2")] {
            let record = StoredRecord { ciphertext: id.repeat(100).into_bytes(), ..StoredRecord::default() };
            txn.put_record(Layer::Sealed, &keys::record_key(tenant, id), &Envelope::from(&record));
        }
        txn.commit(7).unwrap();
        store.flush().unwrap();
        let mut txn = store.transaction();
        let deleted = RecordDeleted { record_id: "secret-id-3".into(), layer: Layer::Hot as i32 };
        txn.event("gone", Kind::RecordDeleted(deleted));
        txn.commit(8).unwrap();
        store.flush().unwrap();
        assert!(!files_mention(dir.path(), b"secret-id").is_empty(), "the test data reached the files");
        let blobs =
            |needle: &[u8]| files_mention(dir.path(), needle).into_iter().filter(|f| f.ends_with(".blob")).count();
        assert!(blobs(b"secret-id") > 0, "the records' values reached blob files");

        let removed = store.remove_tenant("gone").unwrap();
        assert_eq!((removed.records, removed.events_redacted), (3, 1));
        store.compact_tenant("gone", &removed).unwrap();
        store.roll_manifest().unwrap();
        assert_eq!(files_mention(dir.path(), b"secret-id"), Vec::<String>::new());
        assert!(!files_mention(dir.path(), b"kept-id-1").is_empty(), "another tenant's records stay");
        assert!(blobs(b"kept-id-2") > 0, "in a blob file");
        assert!(store.find_record(&keys::record_key("kept", "kept-id-1")).unwrap().is_some());
        assert!(store.find_record(&keys::record_key("gone", "secret-id-1")).unwrap().is_none());

        let again = store.remove_tenant("gone").unwrap();
        assert_eq!((again.records, again.events_redacted), (0, 0), "done again, it finds nothing");
    }
}
