//! The embedded store: one RocksDB per shard data dir, with a column family
//! per kind of value ([`schema`]). Every state change goes through a
//! [`Transaction`] committed as one atomic `WriteBatch` that also carries
//! its events, the projections they update and the projection checkpoint.
//!
//! One concern per file: `schema` (column families, fixed keys, decoding),
//! [`keys`] (key layouts), `head` (the in-memory head of the log and the
//! projections), `transaction` (the write path), `event_log` (reading the
//! log, WAL syncs), `outbox_watermark`, `records` and `data_keys` (reads),
//! `listing` (a tenant's records in ingestion order), `audit` (the key-use
//! audit), `erasure` (removing an erased tenant for good), `tombstones`
//! (deleted record ids), [`pager`] (cursor scans page by page) and
//! `step_commits` (a sweep's steps, one behind their fsync).

mod audit;
mod data_keys;
mod event_log;
mod head;
pub mod keys;
mod listing;
mod lookups;
mod outbox_watermark;
pub mod pager;
mod schema;
mod step_commits;
mod tenant_removal;
mod tombstones;
mod transaction;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};
use thiserror::Error;
use tokio::sync::Notify;

pub use self::audit::{AuditEntry, AuditRange};
pub use self::data_keys::{RootRecord, read_root_record};
use self::head::Head;
pub use self::head::TenantCensus;
pub use self::listing::{Listed, ListingRange, TimeRange};
pub use self::lookups::{IndexEntry, RawRecord};
pub use self::schema::{
    CF_AUDIT, CF_BY_TENANT, CF_BY_TIME, CF_DEKS, CF_EVENTS, CF_HOT, CF_PROJECTIONS, CF_SEALED, CF_TOMBSTONES,
};
use self::schema::{CHECKPOINT_KEY, COLUMN_FAMILIES, decode_sequence};
pub use self::step_commits::StepCommits;
pub use self::tenant_removal::Removed;
pub use self::transaction::Transaction;
use crate::error::ErrorCode;
use crate::proto::store::StoredRecord;
use crate::proto::v1::{KeyUsed, Layer};

/// Storage failures. A caller that gets one must not acknowledge the input
/// that led to it.
#[derive(Debug, Error)]
pub enum StoreError {
    /// RocksDB refused a read or write.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value failed to decode.
    #[error("corrupt {what} in column family {cf}: {reason}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// Kind of value.
        what: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// The blocking thread that syncs the WAL did not finish (the runtime is shutting down).
    #[error("the WAL sync task failed: {0}")]
    SyncTask(String),
    /// A change for a tenant that was erased meanwhile: nothing of it is
    /// written (the whole batch is refused; retried, its records are
    /// dead-lettered `tenant_erased`).
    #[error("tenant {0} was erased")]
    TenantErased(String),
    /// RocksDB refused an option change.
    #[error("rocksdb options: {0}")]
    Options(String),
}

/// What a successful commit appended to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Sequence of the last event appended, or the previous head if none.
    pub last_sequence: u64,
}

/// A record as stored, with the layer it was found in.
#[derive(Debug, Clone)]
pub struct Located {
    /// `hot` or `sealed`.
    pub layer: Layer,
    /// The encrypted record.
    pub record: StoredRecord,
}

/// The column families whose records of [`MIN_BLOB_SIZE`] bytes and more
/// live in blob files (RocksDB's integrated BlobDB), written once at flush:
/// leveled compaction then moves only keys and blob references. Over the
/// 1,000,000-record soak this cut the bytes RocksDB wrote for `sealed` from
/// 4.74 to 1.34 times the record bytes, and for `hot` from 2.09 to 1.15.
/// Background blob garbage collection stays off: it relocates live blobs
/// of the oldest files at every compaction (2.99 with it). A blob file is
/// deleted once every record in it is deleted, which sealing (for `hot`)
/// and retention (for `sealed`) do in time order; an erasure collects
/// every blob file of both ([`Store::compact_tenant`]).
pub const BLOB_FAMILIES: [&str; 2] = [CF_HOT, CF_SEALED];
/// Smallest value kept in a blob file: a 1 KiB record's envelope is
/// larger, a short one stays inline beside its key.
pub const MIN_BLOB_SIZE: u64 = 512;

/// The shard's RocksDB and the single write path into it.
pub struct Store {
    /// Shared with the blocking threads that fsync its WAL.
    db: Arc<DB>,
    /// Serialises commits: held from assigning sequences until the head is
    /// published. Neither readers nor an fsync ever take it: a synced commit
    /// writes under it and waits for the WAL sync after releasing it.
    writer: Mutex<()>,
    head: RwLock<Head>,
    /// Highest sequence known to be on disk (WAL synced). The outbox never
    /// publishes past it, so a crash can never un-happen a published event.
    durable_sequence: AtomicU64,
    appended: Notify,
    /// Held by whoever reads records and then moves, rewrites or deletes
    /// them on the strength of what it read (seal and re-encryption
    /// batches, deletes, the tombstone purge), so that none of them acts on
    /// a record another has just changed: a sealed copy never brings back
    /// a record deleted meanwhile. Ingest does not take it: it only writes
    /// records that do not exist.
    moves: tokio::sync::Mutex<()>,
    /// Whether `tombstones` may hold anything: false until a record is
    /// deleted, so a deployment that never deletes pays no tombstone lookup
    /// on ingest.
    tombstones_exist: AtomicBool,
    /// Key-use audit entries waiting for the next commit (see `audit`).
    pending_audit: Mutex<Vec<(String, KeyUsed)>>,
    /// Held while an erasure collects blob files: the collection is a
    /// setting of the whole column family, which one erasure finishing
    /// must not turn off under another one still compacting.
    blob_collection: Mutex<()>,
}

impl Store {
    /// Opens (creating if needed) the store under `dir` and loads the head
    /// of the log and the projections.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let cache = Cache::new_lru_cache(32 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // One budget for all memtables keeps memory flat whatever the load.
        db_opts.set_db_write_buffer_size(64 << 20);
        db_opts.set_max_background_jobs(2);
        let descriptors = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            cf.set_write_buffer_size(16 << 20);
            // Most lookups (dedupe on ingest) miss: a memtable bloom answers
            // them without walking the skiplist.
            cf.set_memtable_whole_key_filtering(true);
            cf.set_memtable_prefix_bloom_ratio(0.02);
            // Ciphertext does not compress: don't spend CPU trying.
            let compression = if matches!(*name, CF_HOT | CF_SEALED) {
                rocksdb::DBCompressionType::None
            } else {
                rocksdb::DBCompressionType::Lz4
            };
            cf.set_compression_type(compression);
            if BLOB_FAMILIES.contains(name) {
                cf.set_enable_blob_files(true);
                cf.set_min_blob_size(MIN_BLOB_SIZE);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&db_opts, dir, descriptors)?;
        let store = Self {
            db: Arc::new(db),
            writer: Mutex::new(()),
            head: RwLock::new(Head { next_sequence: 1, ..Head::default() }),
            durable_sequence: AtomicU64::new(0),
            appended: Notify::new(),
            moves: tokio::sync::Mutex::new(()),
            tombstones_exist: AtomicBool::new(false),
            pending_audit: Mutex::new(Vec::new()),
            blob_collection: Mutex::new(()),
        };
        let head = store.load_head()?;
        store.durable_sequence.store(head.next_sequence - 1, Ordering::SeqCst);
        *store.head.write().expect("head lock") = head;
        store.build_tenant_index()?;
        store.note_tombstones()?;
        Ok(store)
    }

    /// Waits for the record move in progress (see `moves`) and holds the
    /// next back while the guard lives.
    pub async fn moving(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.moves.lock().await
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family opened at start")
    }

    /// The sequence the persisted projections reflect.
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        match self.db.get_cf(self.cf(CF_PROJECTIONS), CHECKPOINT_KEY)? {
            Some(v) => decode_sequence(&v),
            None => Ok(0),
        }
    }

    /// Flushes memtables to SST files (used before inspecting files on disk).
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }

    /// Writes a probe batch to check that the store accepts writes again
    /// after a failure.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_PROJECTIONS), b"writable-probe", b"1");
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// The raw database, for benchmarks and tests that inspect or tamper
    /// with stored bytes.
    pub fn raw(&self) -> &DB {
        &self.db
    }
}

impl ErrorCode for StoreError {
    fn code(&self) -> &'static str {
        match self {
            Self::Rocks(_) | Self::SyncTask(_) | Self::Options(_) => "storage_unavailable",
            Self::Corrupt { .. } => "storage_corrupt",
            Self::TenantErased(_) => "tenant_erased",
        }
    }

    fn is_retryable(&self) -> bool {
        !matches!(self, Self::Corrupt { .. } | Self::TenantErased(_))
    }
}

/// Whom a failure stops: the task, when the store itself failed (nothing
/// can be written), or only the record or tenant it concerns.
#[derive(Debug)]
pub enum Scope<E> {
    /// The store failed: the task stops and passes the failure up.
    Store(StoreError),
    /// The failure concerns one record or tenant: the task goes on.
    Contained(E),
}

/// A failure that may be the store's own, somewhere inside it.
pub trait Scoped: Sized {
    /// Whom it stops.
    fn scope(self) -> Scope<Self>;
}

#[cfg(test)]
mod tests {
    use super::head::READ_CHUNK;
    use super::*;
    use crate::proto::store::{TenantProjection, TenantState};
    use crate::proto::v1::RecordsStored;
    use crate::proto::v1::event::Kind;

    fn stored(count: u32) -> Kind {
        Kind::RecordsStored(RecordsStored { count, bytes: 0 })
    }

    #[test]
    fn tenants_are_read_in_chunks_whole_and_in_order_with_a_census_and_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let count = READ_CHUNK * 2 + 7;
        let mut txn = store.transaction();
        for i in (0..count).rev() {
            txn.event(&format!("t{i:05}"), stored(1));
        }
        txn.commit_unsynced(1).unwrap();
        let all = store.tenants();
        assert_eq!(all.len(), count, "no tenant lost or repeated at chunk edges");
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "sorted by tenant");
        let census = store.census();
        assert_eq!((census.in_state(TenantState::Active), census.hot_records), (count, count as u64));
        assert_eq!(store.take_changed_tenants().len(), count);
        assert!(store.take_changed_tenants().is_empty(), "drained");

        let mut txn = store.transaction();
        txn.event("t00003", stored(4));
        txn.commit_unsynced(2).unwrap();
        let changed = store.take_changed_tenants();
        assert_eq!(changed.len(), 1);
        assert_eq!((changed[0].0.as_str(), changed[0].1.hot_records), ("t00003", 5));
        let before = store.census();
        assert_eq!(before.hot_records, count as u64 + 4, "the census follows updates");

        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.census(), before, "rebuilt from the projections at open");
        assert_eq!(reopened.take_changed_tenants().len(), count, "after a restart every tenant is new to the gauges");
    }

    #[test]
    fn readers_do_not_wait_for_a_commit_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut txn = store.transaction();
        txn.event("acme", stored(1));
        txn.commit(1).unwrap();
        // A commit holds the writer lock from sequencing through its fsync.
        let _commit_in_progress = store.writer.lock().unwrap();
        let (done, read) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let reads = (store.tenant("acme").map(|p| p.hot_records), store.tenants().len(), store.last_sequence());
                done.send(reads).unwrap();
            });
            let reads = read.recv_timeout(std::time::Duration::from_secs(5)).expect("readers are not blocked");
            assert_eq!(reads, (Some(1), 1, 1));
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decision_made_at_commit_is_appended_once_by_concurrent_deciders() {
        use crate::proto::store::TenantState;
        use crate::proto::v1::TenantLockedDown;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let tenants = vec!["acme".to_owned()];
        // Lock the tenant unless it already is: two threads race to decide.
        let lock = |p: &TenantProjection| {
            if p.state() == TenantState::LockedDown {
                Vec::new()
            } else {
                vec![Kind::TenantLockedDown(TenantLockedDown { reason: "r".into(), degraded_since_unix_ms: 1 })]
            }
        };
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let (store, tenants) = (store.clone(), tenants.clone());
                tokio::spawn(async move { store.transaction().commit_decided(&tenants, 5, lock).await.unwrap().len() })
            })
            .collect();
        let mut appended = 0;
        for racer in racers {
            appended += racer.await.unwrap();
        }
        assert_eq!(appended, 1);
        assert_eq!(store.events_after(0, 10).unwrap().len(), 1);
        assert_eq!(store.tenant("acme").unwrap().state(), TenantState::LockedDown);
        assert!(store.transaction().commit_decided(&tenants, 6, lock).await.unwrap().is_empty());
        assert_eq!(store.last_sequence(), 1, "nothing decided, nothing written");
    }

    #[test]
    fn commit_appends_events_and_folds_projection_durably() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut txn = store.transaction();
            txn.event("acme", Kind::RecordsStored(RecordsStored { count: 2, bytes: 10 }));
            txn.event("beta", Kind::RecordsStored(RecordsStored { count: 1, bytes: 5 }));
            assert_eq!(txn.commit(7).unwrap().last_sequence, 2);
            assert_eq!(store.tenant("acme").unwrap().hot_records, 2);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_sequence(), 2);
        let mut txn = store.transaction();
        txn.event("acme", Kind::RecordsStored(RecordsStored { count: 1, bytes: 1 }));
        txn.commit_unsynced(8).unwrap();
        assert_eq!(store.events_after(0, 10).unwrap().len(), 2, "unsynced events are not relayed");
        store.sync().unwrap();
        assert_eq!(store.events_after(0, 10).unwrap().len(), 3);
        assert_eq!(store.checkpoint().unwrap(), 3);
        assert_eq!(store.tenant("beta").unwrap().hot_records, 1);
        assert_eq!(store.tenant("acme").unwrap().hot_records, 3);
        let events = store.events_after(1, 1).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].sequence, events[0].tenant_id.as_str()), (2, "beta"));
    }
}
