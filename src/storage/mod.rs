//! The embedded store: one RocksDB per shard data dir, with a column family
//! per kind of value. Every state change goes through a [`Transaction`]
//! committed as one atomic, WAL-synced `WriteBatch` that also carries its
//! events, the projections they update and the projection checkpoint.

pub mod keys;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use prost::Message;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions,
};
use thiserror::Error;
use tokio::sync::Notify;

use crate::projection;
use crate::proto::store::{StoredRecord, TenantProjection, TenantState, WrappedDataKey};
use crate::proto::v1::{Event, Layer, event::Kind};

/// Records younger than the seal age, encrypted under managed-rooted keys.
pub const CF_HOT: &str = "hot";
/// Records past the seal age, under keys rooted at the tenant's root.
pub const CF_SEALED: &str = "sealed";
/// Ingestion-time index of `hot`, read by the seal sweep.
pub const CF_BY_TIME: &str = "by_time";
/// Wrapped data keys.
pub const CF_DEKS: &str = "deks";
/// The append-only event log.
pub const CF_EVENTS: &str = "events";
/// Projection state, its checkpoint, the outbox watermark and the
/// fingerprints of the managed root versions the store was written under.
pub const CF_PROJECTIONS: &str = "projections";

const COLUMN_FAMILIES: [&str; 6] = [CF_HOT, CF_SEALED, CF_BY_TIME, CF_DEKS, CF_EVENTS, CF_PROJECTIONS];
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const OUTBOX_KEY: &[u8] = b"outbox/published";

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
}

/// What a successful commit appended to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Sequence of the last event appended, or the previous head if none.
    pub last_sequence: u64,
}

/// How many projections a reader copies per turn of the head's read lock:
/// a reader of 100,000 tenants (the status page, a sweep's plan) never
/// holds the lock long enough to delay a commit noticeably.
const READ_CHUNK: usize = 1024;

/// The committed head of the log: the next sequence and the current
/// projections, published only after a batch is written. Only the writer
/// (holding [`Store::writer`]) changes it, and only briefly.
#[derive(Default)]
struct Head {
    next_sequence: u64,
    tenants: BTreeMap<String, TenantProjection>,
    census: TenantCensus,
    /// Tenants whose projection changed since [`Store::take_changed_tenants`]
    /// last drained it.
    changed: BTreeSet<String>,
}

/// Totals over every tenant of the shard, kept up to date by each commit so
/// gauges never walk all tenants.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TenantCensus {
    /// Tenants per state, indexed by `TenantState as usize`.
    pub by_state: [usize; 3],
    /// Records in `hot`, all tenants.
    pub hot_records: u64,
    /// Records in `sealed`, all tenants.
    pub sealed_records: u64,
}

impl TenantCensus {
    /// Tenants in `state`.
    pub fn in_state(&self, state: TenantState) -> usize {
        self.by_state[state as usize]
    }

    fn add(&mut self, projection: &TenantProjection) {
        self.by_state[projection.state() as usize] += 1;
        self.hot_records += projection.hot_records;
        self.sealed_records += projection.sealed_records;
    }

    fn remove(&mut self, projection: &TenantProjection) {
        self.by_state[projection.state() as usize] -= 1;
        self.hot_records -= projection.hot_records;
        self.sealed_records -= projection.sealed_records;
    }
}

/// A record as stored, with the layer it was found in.
#[derive(Debug, Clone)]
pub struct Located {
    /// `hot` or `sealed`.
    pub layer: Layer,
    /// The encrypted record.
    pub record: StoredRecord,
}

/// The shard's RocksDB and the single write path into it.
pub struct Store {
    db: DB,
    /// Serialises commits: held from assigning sequences until the head is
    /// published, including a synced write's fsync. Readers never take it.
    writer: Mutex<()>,
    head: RwLock<Head>,
    /// Highest sequence known to be on disk (WAL synced). The outbox never
    /// publishes past it, so a crash can never un-happen a published event.
    durable_sequence: AtomicU64,
    appended: Notify,
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
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&db_opts, dir, descriptors)?;
        let store = Self {
            db,
            writer: Mutex::new(()),
            head: RwLock::new(Head { next_sequence: 1, ..Head::default() }),
            durable_sequence: AtomicU64::new(0),
            appended: Notify::new(),
        };
        let head = store.load_head()?;
        store.durable_sequence.store(head.next_sequence - 1, Ordering::SeqCst);
        *store.head.write().expect("head lock") = head;
        Ok(store)
    }

    fn load_head(&self) -> Result<Head, StoreError> {
        let last = self
            .db
            .iterator_cf(self.cf(CF_EVENTS), IteratorMode::End)
            .next()
            .transpose()?
            .map(|(k, _)| decode_sequence(&k))
            .transpose()?
            .unwrap_or(0);
        let mut tenants = BTreeMap::new();
        let prefix = b"tenant/";
        for item in self.db.iterator_cf(self.cf(CF_PROJECTIONS), IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) = item?;
            let Some(tenant) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let tenant = String::from_utf8_lossy(tenant).into_owned();
            tenants.insert(tenant, decode(CF_PROJECTIONS, "tenant projection", &value)?);
        }
        let mut census = TenantCensus::default();
        tenants.values().for_each(|p| census.add(p));
        let changed = tenants.keys().cloned().collect();
        Ok(Head { next_sequence: last + 1, tenants, census, changed })
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family opened at start")
    }

    /// Starts a set of changes to commit atomically.
    pub fn transaction(&self) -> Transaction<'_> {
        Transaction { store: self, batch: WriteBatch::default(), events: Vec::new() }
    }

    /// Signalled after every commit that appended events (the outbox waits on it).
    pub fn appended(&self) -> &Notify {
        &self.appended
    }

    fn head(&self) -> RwLockReadGuard<'_, Head> {
        self.head.read().expect("head lock")
    }

    /// A tenant's projection, if the tenant has ever had an event.
    pub fn tenant(&self, tenant: &str) -> Option<TenantProjection> {
        self.head().tenants.get(tenant).cloned()
    }

    /// Every known tenant and its projection, sorted by tenant. Copied a
    /// chunk at a time, so commits go on meanwhile: each projection is as
    /// committed, though not all from the same commit.
    pub fn tenants(&self) -> Vec<(String, TenantProjection)> {
        let mut all: Vec<(String, TenantProjection)> = Vec::new();
        loop {
            let head = self.head();
            let from = all.last().map_or(Bound::Unbounded, |(last, _)| Bound::Excluded(last.as_str()));
            let before = all.len();
            all.extend(
                head.tenants
                    .range::<str, _>((from, Bound::Unbounded))
                    .take(READ_CHUNK)
                    .map(|(t, p)| (t.clone(), p.clone())),
            );
            if all.len() - before < READ_CHUNK {
                return all;
            }
        }
    }

    /// The tenants whose projection satisfies `wanted`, sorted by tenant;
    /// only those are copied.
    pub fn tenants_where(&self, wanted: impl Fn(&TenantProjection) -> bool) -> Vec<(String, TenantProjection)> {
        self.head().tenants.iter().filter(|(_, p)| wanted(p)).map(|(t, p)| (t.clone(), p.clone())).collect()
    }

    /// Totals over every tenant (states, record counts), without walking them.
    pub fn census(&self) -> TenantCensus {
        self.head().census
    }

    /// The tenants whose projection changed since the last call (every
    /// tenant on the first), with their projections now: what a gauge
    /// refresh needs, in O(changes) rather than O(tenants).
    pub fn take_changed_tenants(&self) -> Vec<(String, TenantProjection)> {
        let changed = std::mem::take(&mut self.head.write().expect("head lock").changed);
        let head = self.head();
        changed.into_iter().filter_map(|t| head.tenants.get(&t).cloned().map(|p| (t, p))).collect()
    }

    /// Every tenant's projection and the sequence they reflect, read
    /// together (holds the read lock for the whole copy; for replay checks).
    pub fn projections_at(&self) -> (BTreeMap<String, TenantProjection>, u64) {
        let head = self.head();
        (head.tenants.clone(), head.next_sequence - 1)
    }

    /// Sequence of the newest event in the log (0 when empty).
    pub fn last_sequence(&self) -> u64 {
        self.head().next_sequence - 1
    }

    /// Looks a record up in `hot`, then `sealed`.
    pub fn find_record(&self, record_key: &[u8]) -> Result<Option<Located>, StoreError> {
        Ok(self.find_records(&[record_key])?.pop().flatten())
    }

    /// Looks many records up in one consistent snapshot, so a record being
    /// sealed concurrently is seen in exactly one layer.
    pub fn find_records<K: AsRef<[u8]>>(&self, record_keys: &[K]) -> Result<Vec<Option<Located>>, StoreError> {
        let snapshot = self.db.snapshot();
        let lookups = [(Layer::Hot, CF_HOT), (Layer::Sealed, CF_SEALED)];
        let mut found: Vec<Option<Located>> = vec![None; record_keys.len()];
        for (layer, cf_name) in lookups {
            let cf = self.cf(cf_name);
            let missing: Vec<usize> = (0..record_keys.len()).filter(|&i| found[i].is_none()).collect();
            if missing.is_empty() {
                break;
            }
            let values = snapshot.multi_get_cf(missing.iter().map(|&i| (cf, record_keys[i].as_ref())));
            for (i, value) in missing.into_iter().zip(values) {
                if let Some(bytes) = value? {
                    found[i] = Some(Located { layer, record: decode(cf_name, "record", &bytes)? });
                }
            }
        }
        Ok(found)
    }

    /// Up to `limit` index entries with ingestion time before `cutoff_ms`,
    /// oldest first, strictly after index key `after` when given, as
    /// (index key, ingested_at_ms, record key).
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
            let record = record.to_vec();
            due.push((key.into_vec(), at, record));
        }
        Ok(due)
    }

    /// Up to `limit` of `tenant`'s records in `layer`, in key order, strictly
    /// after record key `after` when given, as raw (record key, value) pairs
    /// so a scan can report a value that does not decode instead of stopping.
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
            page.push((key.into_vec(), value.into_vec()));
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

    /// A wrapped data key by id.
    pub fn wrapped_data_key(&self, id: &[u8]) -> Result<Option<WrappedDataKey>, StoreError> {
        self.db.get_cf(self.cf(CF_DEKS), id)?.map(|v| decode(CF_DEKS, "wrapped data key", &v)).transpose()
    }

    /// The greatest data key id starting with `prefix` (the latest
    /// generation of a bucket), if any.
    pub fn last_data_key_with_prefix(&self, prefix: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        let mut upper = prefix.clone();
        upper.extend_from_slice(&[0xff; 8]);
        match self
            .db
            .iterator_cf(self.cf(CF_DEKS), IteratorMode::From(&upper, Direction::Reverse))
            .next()
            .transpose()?
        {
            Some((id, _)) if id.starts_with(&prefix) => Ok(Some(id.into_vec())),
            _ => Ok(None),
        }
    }

    /// Every data key of `tenant` (all layers), as (id bytes, wrapped key).
    pub fn data_keys_of(&self, tenant: &str) -> Result<Vec<(Vec<u8>, WrappedDataKey)>, StoreError> {
        let prefix = keys::tenant_prefix(tenant);
        let mut found = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_DEKS), IteratorMode::From(&prefix, Direction::Forward)) {
            let (id, value) = item?;
            if !id.starts_with(&prefix) {
                break;
            }
            found.push((id.into_vec(), decode(CF_DEKS, "wrapped data key", &value)?));
        }
        Ok(found)
    }

    /// Up to `limit` durable events with sequence greater than `after`, in order.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let start = keys::event_key(after + 1);
        let durable = self.durable_sequence.load(Ordering::SeqCst);
        let available = usize::try_from(durable.saturating_sub(after)).unwrap_or(usize::MAX);
        let mut events = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_EVENTS), IteratorMode::From(&start, Direction::Forward))
            .take(limit.min(available))
        {
            let (_, value) = item?;
            events.push(decode(CF_EVENTS, "event", &value)?);
        }
        Ok(events)
    }

    /// Makes every write committed so far durable (one WAL fsync for any
    /// number of [`Transaction::commit_unsynced`] calls: group commit).
    pub fn sync(&self) -> Result<(), StoreError> {
        let covered = self.last_sequence();
        self.db.flush_wal(true)?;
        self.mark_durable(covered);
        Ok(())
    }

    fn mark_durable(&self, sequence: u64) {
        if self.durable_sequence.fetch_max(sequence, Ordering::SeqCst) < sequence {
            self.appended.notify_one();
        }
    }

    /// The highest sequence the outbox relay has had confirmed by the broker.
    pub fn published_watermark(&self) -> Result<u64, StoreError> {
        match self.db.get_cf(self.cf(CF_PROJECTIONS), OUTBOX_KEY)? {
            Some(v) => decode_sequence(&v),
            None => Ok(0),
        }
    }

    /// Records that every event up to `sequence` was confirmed by the broker.
    pub fn set_published_watermark(&self, sequence: u64) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.put_cf_opt(self.cf(CF_PROJECTIONS), OUTBOX_KEY, sequence.to_be_bytes(), &opts)?;
        Ok(())
    }

    /// The fingerprint recorded for each managed root version (hex), so a
    /// worker never starts on a store with a root it lacks.
    pub fn managed_root_fingerprints(&self) -> Result<BTreeMap<u32, String>, StoreError> {
        let mut found = BTreeMap::new();
        let prefix = keys::MANAGED_ROOT_PREFIX;
        for item in self.db.iterator_cf(self.cf(CF_PROJECTIONS), IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) = item?;
            let Some(version) = key.strip_prefix(prefix) else {
                break;
            };
            let corrupt = |reason: &str| StoreError::Corrupt {
                cf: CF_PROJECTIONS,
                what: "managed root fingerprint",
                reason: reason.to_owned(),
            };
            let version = u32::from_be_bytes(version.try_into().map_err(|_| corrupt("version is not 4 bytes"))?);
            let fingerprint = String::from_utf8(value.into_vec()).map_err(|_| corrupt("not UTF-8"))?;
            found.insert(version, fingerprint);
        }
        Ok(found)
    }

    /// Records the fingerprints of the managed root versions in use (synced).
    pub fn record_managed_root_fingerprints(&self, fingerprints: &BTreeMap<u32, String>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (version, fingerprint) in fingerprints {
            batch.put_cf(self.cf(CF_PROJECTIONS), keys::managed_root_key(*version), fingerprint.as_bytes());
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Whether the store holds any data key.
    pub fn holds_data_keys(&self) -> Result<bool, StoreError> {
        Ok(self.db.iterator_cf(self.cf(CF_DEKS), IteratorMode::Start).next().transpose()?.is_some())
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

/// An ingestion-time index entry: (index key, ingested_at_ms, record key).
pub type IndexEntry = (Vec<u8>, i64, Vec<u8>);

/// A stored record as raw bytes: (record key, encoded `StoredRecord`).
pub type RawRecord = (Vec<u8>, Vec<u8>);

/// A set of changes and events that commit together or not at all.
pub struct Transaction<'a> {
    store: &'a Store,
    batch: WriteBatch,
    events: Vec<(String, Kind)>,
}

impl Transaction<'_> {
    /// Puts a record into `hot` or `sealed`.
    pub fn put_record(&mut self, layer: Layer, record_key: &[u8], record: &StoredRecord) {
        self.batch.put_cf(self.store.cf(layer_cf(layer)), record_key, record.encode_to_vec());
    }

    /// Removes a record from `hot` or `sealed`.
    pub fn delete_record(&mut self, layer: Layer, record_key: &[u8]) {
        self.batch.delete_cf(self.store.cf(layer_cf(layer)), record_key);
    }

    /// Adds an ingestion-time index entry.
    pub fn put_index(&mut self, index_key: &[u8]) {
        self.batch.put_cf(self.store.cf(CF_BY_TIME), index_key, []);
    }

    /// Removes an ingestion-time index entry.
    pub fn delete_index(&mut self, index_key: &[u8]) {
        self.batch.delete_cf(self.store.cf(CF_BY_TIME), index_key);
    }

    /// Stores a wrapped data key.
    pub fn put_data_key(&mut self, id: &[u8], key: &WrappedDataKey) {
        self.batch.put_cf(self.store.cf(CF_DEKS), id, key.encode_to_vec());
    }

    /// Deletes a wrapped data key (retirement: the key is gone for good).
    pub fn delete_data_key(&mut self, id: &[u8]) {
        self.batch.delete_cf(self.store.cf(CF_DEKS), id);
    }

    /// Appends a domain event for `tenant`.
    pub fn event(&mut self, tenant: &str, kind: Kind) {
        self.events.push((tenant.to_owned(), kind));
    }

    /// Whether nothing has been added.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.events.is_empty()
    }

    /// Assigns sequences, folds the events into the projections, writes it
    /// all in one synced batch and only then publishes the new head.
    pub fn commit(self, now_ms: i64) -> Result<Receipt, StoreError> {
        let store = self.store;
        let receipt = self.write(now_ms, true)?;
        store.mark_durable(receipt.last_sequence);
        Ok(receipt)
    }

    /// Like [`Transaction::commit`] but without waiting for the WAL fsync:
    /// the changes are visible at once and durable after the next
    /// [`Store::sync`]. Whoever acknowledges the input must sync first.
    pub fn commit_unsynced(self, now_ms: i64) -> Result<Receipt, StoreError> {
        self.write(now_ms, false)
    }

    /// Appends, for each of `tenants`, the events `decide` returns for its
    /// projection as it stands at the commit, and commits (synced) if there
    /// are any; returns them. The decision and the append happen under the
    /// lock every commit takes, so two deciders never both append the same
    /// transition and none decides on a projection that changed meanwhile.
    pub fn commit_decided(
        mut self,
        tenants: &[String],
        now_ms: i64,
        mut decide: impl FnMut(&TenantProjection) -> Vec<Kind>,
    ) -> Result<Vec<(String, Kind)>, StoreError> {
        let store = self.store;
        let writer = store.writer.lock().expect("writer lock");
        let mut decided = Vec::new();
        for tenant in tenants {
            let current = store.tenant(tenant).unwrap_or_default();
            decided.extend(decide(&current).into_iter().map(|kind| (tenant.clone(), kind)));
        }
        if decided.is_empty() {
            return Ok(decided);
        }
        self.events.extend(decided.iter().cloned());
        let receipt = self.write_locked(&writer, now_ms, true)?;
        drop(writer);
        store.mark_durable(receipt.last_sequence);
        Ok(decided)
    }

    fn write(self, now_ms: i64, sync: bool) -> Result<Receipt, StoreError> {
        let writer = self.store.writer.lock().expect("writer lock");
        self.write_locked(&writer, now_ms, sync)
    }

    /// Writes the transaction; `_writer` proves the caller serialises
    /// commits. Only the writer changes the head, so what it reads stays
    /// current until it publishes; readers keep reading the old head
    /// meanwhile, even through the fsync.
    fn write_locked(mut self, _writer: &MutexGuard<'_, ()>, now_ms: i64, sync: bool) -> Result<Receipt, StoreError> {
        let store = self.store;
        let mut sequence = store.head().next_sequence;
        let mut touched: HashMap<String, TenantProjection> = HashMap::new();
        let appended_any = !self.events.is_empty();
        for (tenant, kind) in self.events.drain(..) {
            let projection = touched.entry(tenant.clone()).or_insert_with(|| store.tenant(&tenant).unwrap_or_default());
            projection::apply(projection, &kind, now_ms);
            let event = Event { sequence, time_unix_ms: now_ms, tenant_id: tenant, kind: Some(kind) };
            self.batch.put_cf(store.cf(CF_EVENTS), keys::event_key(sequence), event.encode_to_vec());
            sequence += 1;
        }
        let last_sequence = sequence - 1;
        for (tenant, projection) in &touched {
            self.batch.put_cf(store.cf(CF_PROJECTIONS), keys::projection_key(tenant), projection.encode_to_vec());
        }
        if appended_any {
            self.batch.put_cf(store.cf(CF_PROJECTIONS), CHECKPOINT_KEY, last_sequence.to_be_bytes());
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        store.db.write_opt(self.batch, &opts)?;
        let mut head = store.head.write().expect("head lock");
        head.next_sequence = sequence;
        for (tenant, projection) in touched {
            head.census.add(&projection);
            if let Some(old) = head.tenants.insert(tenant.clone(), projection) {
                head.census.remove(&old);
            }
            head.changed.insert(tenant);
        }
        Ok(Receipt { last_sequence })
    }
}

fn layer_cf(layer: Layer) -> &'static str {
    match layer {
        Layer::Sealed => CF_SEALED,
        Layer::Hot | Layer::Unspecified => CF_HOT,
    }
}

fn decode<M: Message + Default>(cf: &'static str, what: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt { cf, what, reason: e.to_string() })
}

fn decode_sequence(bytes: &[u8]) -> Result<u64, StoreError> {
    let raw: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        cf: CF_EVENTS,
        what: "sequence",
        reason: format!("expected 8 bytes, got {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::RecordsStored;

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

    #[test]
    fn a_decision_made_at_commit_is_appended_once_by_concurrent_deciders() {
        use crate::proto::store::TenantState;
        use crate::proto::v1::TenantLockedDown;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tenants = vec!["acme".to_owned()];
        // Lock the tenant unless it already is: two threads race to decide.
        let lock = |p: &TenantProjection| {
            if p.state() == TenantState::LockedDown {
                Vec::new()
            } else {
                vec![Kind::TenantLockedDown(TenantLockedDown { reason: "r".into(), degraded_since_unix_ms: 1 })]
            }
        };
        let appended: usize = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| store.transaction().commit_decided(&tenants, 5, lock).unwrap().len()))
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).sum()
        });
        assert_eq!(appended, 1);
        assert_eq!(store.events_after(0, 10).unwrap().len(), 1);
        assert_eq!(store.tenant("acme").unwrap().state(), TenantState::LockedDown);
        assert!(store.transaction().commit_decided(&tenants, 6, lock).unwrap().is_empty());
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
