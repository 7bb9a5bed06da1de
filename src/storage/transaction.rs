//! The one write path: a [`Transaction`] gathers changes and events and
//! commits them as one atomic `WriteBatch` with the projections they update
//! and the projection checkpoint, under the commit lock; the WAL sync that
//! makes it durable happens after the lock is released.

use std::collections::HashMap;
use std::sync::MutexGuard;

use prost::Message;
use rocksdb::WriteBatch;

use super::schema::{
    CF_BY_TENANT, CF_BY_TIME, CF_DEKS, CF_EVENTS, CF_PROJECTIONS, CF_TOMBSTONES, CHECKPOINT_KEY, layer_cf,
};
use super::{Receipt, Store, StoreError, keys};
use crate::crypto::envelope::Envelope;
use crate::events::projection;
use crate::proto::store::{RecordEntry, TenantProjection, TenantState, Tombstone, WrappedDataKey};
use crate::proto::v1::{Event, Layer, event::Kind};

impl Store {
    /// Starts a set of changes to commit atomically.
    pub fn transaction(&self) -> Transaction<'_> {
        Transaction { store: self, batch: WriteBatch::default(), events: Vec::new() }
    }
}

/// A set of changes and events that commit together or not at all.
pub struct Transaction<'a> {
    store: &'a Store,
    batch: WriteBatch,
    events: Vec<(String, Kind)>,
}

impl Transaction<'_> {
    /// Puts a record into `hot` or `sealed`.
    pub fn put_record(&mut self, layer: Layer, record_key: &[u8], record: &Envelope) {
        self.batch.put_cf(self.store.cf(layer_cf(layer)), record_key, record.as_bytes());
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

    /// Adds a record to its tenant's listing index.
    pub fn put_tenant_index(&mut self, tenant_index_key: &[u8], entry: &RecordEntry) {
        self.batch.put_cf(self.store.cf(CF_BY_TENANT), tenant_index_key, entry.encode_to_vec());
    }

    /// Removes a record from its tenant's listing index.
    pub fn delete_tenant_index(&mut self, tenant_index_key: &[u8]) {
        self.batch.delete_cf(self.store.cf(CF_BY_TENANT), tenant_index_key);
    }

    /// Marks a record id deleted, so ingest refuses it until `tombstone` expires.
    pub fn put_tombstone(&mut self, record_key: &[u8], tombstone: &Tombstone) {
        self.store.tombstone_written();
        self.batch.put_cf(self.store.cf(CF_TOMBSTONES), record_key, tombstone.encode_to_vec());
    }

    /// Forgets an expired tombstone.
    pub fn delete_tombstone(&mut self, record_key: &[u8]) {
        self.batch.delete_cf(self.store.cf(CF_TOMBSTONES), record_key);
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
    /// all in one batch, publishes the new head and returns once the WAL is
    /// synced (the fsync happens after the commit lock is released, so
    /// other commits do not wait for it). For synchronous callers; async
    /// tasks use [`Transaction::commit_durable`].
    pub fn commit(self, now_ms: i64) -> Result<Receipt, StoreError> {
        let store = self.store;
        let receipt = self.write(now_ms)?;
        store.sync()?;
        Ok(receipt)
    }

    /// [`Transaction::commit`] for async tasks: the WAL fsync runs on a
    /// blocking thread.
    pub async fn commit_durable(self, now_ms: i64) -> Result<Receipt, StoreError> {
        let store = self.store;
        let receipt = self.write(now_ms)?;
        store.sync_async().await?;
        Ok(receipt)
    }

    /// Like [`Transaction::commit`] but without waiting for the WAL fsync:
    /// the changes are visible at once and durable after the next
    /// [`Store::sync`]. Whoever acknowledges the input must sync first.
    pub fn commit_unsynced(self, now_ms: i64) -> Result<Receipt, StoreError> {
        self.write(now_ms)
    }

    /// Appends, for each of `tenants`, the events `decide` returns for its
    /// projection as it stands at the commit, and commits (durably, like
    /// [`Transaction::commit_durable`]) if there are any; returns them. The
    /// decision and the append happen under the lock every commit takes, so
    /// two deciders never both append the same transition and none decides
    /// on a projection that changed meanwhile.
    pub async fn commit_decided(
        mut self,
        tenants: &[String],
        now_ms: i64,
        mut decide: impl FnMut(&TenantProjection) -> Vec<Kind>,
    ) -> Result<Vec<(String, Kind)>, StoreError> {
        let store = self.store;
        let decided = {
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
            self.write_locked(&writer, now_ms)?;
            decided
        };
        store.sync_async().await?;
        Ok(decided)
    }

    fn write(self, now_ms: i64) -> Result<Receipt, StoreError> {
        let writer = self.store.writer.lock().expect("writer lock");
        self.write_locked(&writer, now_ms)
    }

    /// Writes the transaction; `_writer` proves the caller serialises
    /// commits. Only the writer changes the head, so what it reads stays
    /// current until it publishes; readers keep reading the old head
    /// meanwhile. The write is not synced: callers sync after releasing the lock.
    fn write_locked(mut self, _writer: &MutexGuard<'_, ()>, now_ms: i64) -> Result<Receipt, StoreError> {
        let store = self.store;
        // Key-use audit entries ride on whatever commits next; should this
        // write fail, they wait for the one after.
        let audit = store.take_pending_audit();
        self.events.extend(audit.iter().map(|(tenant, used)| (tenant.clone(), Kind::KeyUsed(used.clone()))));
        let sequence = store.head().next_sequence;
        let (last_sequence, touched) = match self.append_events(sequence, now_ms) {
            Ok(appended) => appended,
            Err(e) => {
                store.requeue_audit(audit);
                return Err(e);
            }
        };
        if let Err(e) = store.db.write(self.batch) {
            store.requeue_audit(audit);
            return Err(e.into());
        }
        let mut head = store.head.write().expect("head lock");
        head.next_sequence = last_sequence + 1;
        for (tenant, projection) in touched {
            head.census.add(&projection);
            if let Some(old) = head.tenants.insert(tenant.clone(), projection) {
                head.census.remove(&old);
            }
            head.changed.insert(tenant);
        }
        Ok(Receipt { last_sequence })
    }

    /// Puts the events into the batch from `sequence` on, with the
    /// projections they change and the checkpoint; returns the last
    /// sequence (`sequence − 1` when there are none) and the projections.
    /// Refuses every event of an erased tenant but the end of its erasure
    /// and its key-use audit: a batch that raced the erasure must not
    /// store anything of it again.
    fn append_events(
        &mut self,
        mut sequence: u64,
        now_ms: i64,
    ) -> Result<(u64, HashMap<String, TenantProjection>), StoreError> {
        let store = self.store;
        let mut touched: HashMap<String, TenantProjection> = HashMap::new();
        let appended_any = !self.events.is_empty();
        for (tenant, kind) in self.events.drain(..) {
            let projection = touched.entry(tenant.clone()).or_insert_with(|| store.tenant(&tenant).unwrap_or_default());
            if projection.state() == TenantState::Erased
                && !matches!(kind, Kind::KeyUsed(_) | Kind::TenantErasureCompleted(_))
            {
                return Err(StoreError::TenantErased(tenant));
            }
            projection::apply(projection, &kind, now_ms);
            if let Kind::KeyUsed(used) = &kind {
                store.index_audit(&mut self.batch, &tenant, now_ms, sequence, used);
            }
            // The log is the shard's own: `shard` is set when the relay publishes.
            let event =
                Event { sequence, time_unix_ms: now_ms, tenant_id: tenant, kind: Some(kind), ..Event::default() };
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
        Ok((last_sequence, touched))
    }
}
