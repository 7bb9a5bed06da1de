//! The committed head of the log: the next sequence and every tenant's
//! projection, kept in memory and published after each write, so reads of
//! tenant state never touch RocksDB and never wait for a commit.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::RwLockReadGuard;

use rocksdb::{Direction, IteratorMode};

use super::schema::{CF_EVENTS, CF_PROJECTIONS, decode, decode_sequence};
use super::{Store, StoreError};
use crate::proto::store::{TenantProjection, TenantState};

/// How many projections a reader copies per turn of the head's read lock:
/// a reader of 100,000 tenants (the status page, a sweep's plan) never
/// holds the lock long enough to delay a commit noticeably.
pub(super) const READ_CHUNK: usize = 1024;

/// The committed head of the log: the next sequence and the current
/// projections, published only after a batch is written. Only the writer
/// (holding [`Store::writer`]) changes it, and only briefly.
#[derive(Default)]
pub(super) struct Head {
    pub(super) next_sequence: u64,
    pub(super) tenants: BTreeMap<String, TenantProjection>,
    pub(super) census: TenantCensus,
    /// Tenants whose projection changed since [`Store::take_changed_tenants`]
    /// last drained it.
    pub(super) changed: BTreeSet<String>,
}

/// Totals over every tenant of the shard, kept up to date by each commit so
/// gauges never walk all tenants.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TenantCensus {
    /// Tenants per state, indexed by `TenantState as usize`.
    pub by_state: [usize; 4],
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

    /// Adds another store's census (a worker's totals over its shards).
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.by_state.iter_mut().zip(other.by_state) {
            *mine += theirs;
        }
        self.hot_records += other.hot_records;
        self.sealed_records += other.sealed_records;
    }

    /// Tenants in any state.
    pub fn tenants(&self) -> usize {
        self.by_state.iter().sum()
    }

    pub(super) fn add(&mut self, projection: &TenantProjection) {
        self.by_state[projection.state() as usize] += 1;
        self.hot_records += projection.hot_records;
        self.sealed_records += projection.sealed_records;
    }

    pub(super) fn remove(&mut self, projection: &TenantProjection) {
        self.by_state[projection.state() as usize] -= 1;
        self.hot_records -= projection.hot_records;
        self.sealed_records -= projection.sealed_records;
    }
}

impl Store {
    pub(super) fn load_head(&self) -> Result<Head, StoreError> {
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

    pub(super) fn head(&self) -> RwLockReadGuard<'_, Head> {
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

    /// At most `limit` of the tenants whose projection satisfies `wanted`,
    /// the first by tenant id: what a page that must stay bounded shows.
    pub fn first_tenants_where(
        &self,
        limit: usize,
        wanted: impl Fn(&TenantProjection) -> bool,
    ) -> Vec<(String, TenantProjection)> {
        self.head().tenants.iter().filter(|(_, p)| wanted(p)).take(limit).map(|(t, p)| (t.clone(), p.clone())).collect()
    }

    /// How many tenants the store knows, without walking them.
    pub fn tenant_count(&self) -> u64 {
        self.head().tenants.len() as u64
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
}
