//! Writer keys: the data key new records of a tenant and layer are
//! encrypted with, reserved in blocks, retired from writing by day, age and
//! record count, and created when a new generation starts.
//!
//! A new data key is not committed on its own: it is *unsettled* until the
//! transaction of the batch that created it commits, with the key and its
//! `DataKeyCreated` event in the same write batch as the first records it
//! encrypts (so a new tenant costs no extra fsync, and a crash keeps both or
//! neither). Until then only that batch writes with it; another batch
//! wanting the same writer waits for the settlement. A batch that fails
//! rolls its keys back: they vanish from memory, and their generation is
//! used again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Keyring, KeyringError, RotationLimits, TenantRoot, WriteKey};
use crate::clock::utc_day;
use crate::crypto::data_key::{DataKey, DataKeyId};
use crate::proto::store::WrappedDataKey;
use crate::proto::v1::{DataKeyCreated, KeyPurpose, Layer, RootKeyRef, event::Kind};
use crate::storage::Transaction;

/// Tells apart the batches reserving writer keys, so a batch may keep
/// writing with a key it created and has not committed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId(u64);

/// A data key a batch created: committed by the batch's own transaction
/// ([`NewDataKey::join`]), settled with [`Keyring::settle`] afterwards.
pub struct NewDataKey {
    tenant: String,
    layer: Layer,
    id: Vec<u8>,
    wrapped: WrappedDataKey,
}

impl NewDataKey {
    /// Adds the wrapped key and its `DataKeyCreated` event to `txn`.
    pub fn join(&self, txn: &mut Transaction<'_>) {
        txn.put_data_key(&self.id, &self.wrapped);
        txn.event(
            &self.tenant,
            Kind::DataKeyCreated(DataKeyCreated {
                data_key_id: self.id.clone(),
                layer: self.layer as i32,
                wrapped_by: self.wrapped.wrapped_by.clone(),
            }),
        );
    }
}

/// A created key whose batch has not committed yet.
pub(super) struct Unsettled {
    batch: BatchId,
    tenant: String,
    layer: Layer,
    pub(super) id: Vec<u8>,
    root: Option<RootKeyRef>,
}

impl Unsettled {
    /// Whether it is a key of `tenant` in `layer` wrapped by another root than `root`.
    pub(super) fn of_other_root(&self, tenant: &str, layer: Layer, root: &RootKeyRef) -> bool {
        self.tenant == tenant && self.layer == layer && !self.root.as_ref().is_some_and(|r| super::same_root(r, root))
    }
}

/// The key new records of one tenant and layer are encrypted with.
pub(super) struct Writer {
    pub(super) id: DataKeyId,
    pub(super) id_bytes: Vec<u8>,
    /// The unwrapped key; `None` once dropped at the cache age (or for the
    /// tenant), until the writer next writes.
    pub(super) key: Option<Arc<DataKey>>,
    pub(super) loaded_ms: i64,
    created_at_ms: i64,
    used: u64,
}

impl Writer {
    /// Whether it may encrypt more records at `now_ms`.
    pub(super) fn takes_more(&self, now_ms: i64, rotation: &RotationLimits) -> bool {
        self.id.bucket == utc_day(now_ms)
            && self.used < rotation.max_records
            && now_ms.saturating_sub(self.created_at_ms) < rotation.max_age.as_millis() as i64
    }

    fn grant(&mut self, key: Arc<DataKey>, wanted: u64, rotation: &RotationLimits) -> WriteKey {
        let granted = wanted.min(rotation.max_records - self.used);
        self.used += granted;
        WriteKey { id: self.id_bytes.clone(), key, granted, created: None }
    }
}

/// What the writer of a slot can do for a batch right now.
enum Lease {
    Granted(WriteKey),
    /// Another batch's unsettled key: wait for it to commit or roll back.
    Unsettled,
    /// None fit: a writer must be (re)loaded or created.
    Missing,
}

impl Keyring {
    /// An id for a new batch of writes.
    pub fn batch(&self) -> BatchId {
        BatchId(self.batches.fetch_add(1, Ordering::Relaxed))
    }

    /// Reserves the current writer key of `tenant` in `layer` for up to
    /// `wanted` records of `batch` at `now_ms` (at least one is granted;
    /// root-key calls it needs are audited as done for `purpose`),
    /// starting a new generation when the writer is full, too old or of
    /// another day. A key created here comes in [`WriteKey::created`], for
    /// the batch's transaction to commit; another batch's key not yet
    /// committed is waited for.
    pub async fn reserve(
        &self,
        tenant: &str,
        layer: Layer,
        now_ms: i64,
        wanted: u64,
        batch: BatchId,
        purpose: KeyPurpose,
    ) -> Result<WriteKey, KeyringError> {
        let wanted = wanted.max(1);
        let slot = (tenant.to_owned(), layer);
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.lease(&slot, now_ms, wanted, batch) {
                Lease::Granted(lease) => return Ok(lease),
                Lease::Unsettled => {
                    settled.await;
                    continue;
                }
                Lease::Missing => {}
            }
            let creating = self.creating.lock().await;
            match self.lease(&slot, now_ms, wanted, batch) {
                Lease::Granted(lease) => return Ok(lease),
                Lease::Unsettled => {
                    drop(creating);
                    settled.await;
                    continue;
                }
                Lease::Missing => {}
            }
            let previous = self.writers.lock().expect("writers lock").remove(&slot);
            let (mut writer, created) = match previous {
                // Still good for writing: only its unwrapped copy outlived the cache age.
                Some(old) if old.takes_more(now_ms, &self.rotation) => {
                    let key = self.key(&old.id_bytes, purpose).await?;
                    (Writer { key: Some(key), loaded_ms: self.clock.now_ms(), ..old }, None)
                }
                _ => {
                    let (writer, created) = self.new_writer(tenant, layer, now_ms, batch, purpose).await?;
                    (writer, Some(created))
                }
            };
            let key = writer.key.clone().ok_or(KeyringError::UnknownDataKey)?;
            let mut lease = writer.grant(key, wanted, &self.rotation);
            lease.created = created;
            self.writers.lock().expect("writers lock").insert(slot, writer);
            return Ok(lease);
        }
    }

    fn lease(&self, slot: &(String, Layer), now_ms: i64, wanted: u64, batch: BatchId) -> Lease {
        let mut writers = self.writers.lock().expect("writers lock");
        let Some(writer) = writers.get_mut(slot) else {
            return Lease::Missing;
        };
        let creator = self.creator_of(&writer.id_bytes);
        if creator.is_some_and(|creator| creator != batch) {
            return Lease::Unsettled;
        }
        // A key not yet committed is never dropped: its creator holds it.
        let fresh =
            writer.takes_more(now_ms, &self.rotation) && (creator.is_some() || !self.expired(writer.loaded_ms, 0));
        match writer.key.clone().filter(|_| fresh) {
            Some(key) => Lease::Granted(writer.grant(key, wanted, &self.rotation)),
            None => Lease::Missing,
        }
    }

    /// Creates the next generation of the tenant's key for the day of
    /// `now_ms`, unsettled until `batch` commits it.
    async fn new_writer(
        &self,
        tenant: &str,
        layer: Layer,
        now_ms: i64,
        batch: BatchId,
        purpose: KeyPurpose,
    ) -> Result<(Writer, NewDataKey), KeyringError> {
        let mut id = DataKeyId { tenant: tenant.to_owned(), layer, bucket: utc_day(now_ms), generation: 0 };
        id.generation = self.next_generation(&id)?;
        let root = match layer {
            Layer::Sealed => self.tenant_root(tenant)?,
            Layer::Hot | Layer::Unspecified => TenantRoot::Managed,
        };
        let id_bytes = id.to_bytes();
        let key = Arc::new(DataKey::generate());
        let wrapped = self.wrap(&root, &key, &id_bytes, now_ms, purpose).await?;
        self.remember(&id_bytes, &key);
        self.unsettled.lock().expect("unsettled lock").push(Unsettled {
            batch,
            tenant: tenant.to_owned(),
            layer,
            id: id_bytes.clone(),
            root: wrapped.wrapped_by.clone(),
        });
        let created = NewDataKey { tenant: tenant.to_owned(), layer, id: id_bytes.clone(), wrapped };
        let writer =
            Writer { id, id_bytes, key: Some(key), loaded_ms: self.clock.now_ms(), created_at_ms: now_ms, used: 0 };
        Ok((writer, created))
    }

    /// The generation after every stored or unsettled key of `id`'s day.
    /// A process never continues a writer of an earlier one (its record
    /// count is unknown): it starts after the last stored generation.
    fn next_generation(&self, id: &DataKeyId) -> Result<u32, KeyringError> {
        let prefix = id.bucket_prefix();
        let stored = match self.store.last_data_key_with_prefix(prefix.clone())? {
            Some(last) => Some(DataKeyId::from_bytes(&last)?.generation),
            None => None,
        };
        let unsettled = self
            .unsettled
            .lock()
            .expect("unsettled lock")
            .iter()
            .filter(|u| u.id.starts_with(&prefix))
            .filter_map(|u| DataKeyId::from_bytes(&u.id).ok())
            .map(|u| u.generation)
            .max();
        Ok(stored.max(unsettled).map_or(0, |last| last + 1))
    }

    /// Settles the keys `batch` created: kept if its transaction committed,
    /// else rolled back (dropped from memory; their generations are used
    /// again). Wakes the batches waiting for them.
    pub fn settle(&self, batch: BatchId, committed: bool) {
        let rolled_back: HashSet<Vec<u8>> = {
            let mut unsettled = self.unsettled.lock().expect("unsettled lock");
            let (mine, others): (Vec<_>, Vec<_>) =
                std::mem::take(&mut *unsettled).into_iter().partition(|u| u.batch == batch);
            *unsettled = others;
            mine.into_iter().filter(|_| !committed).map(|u| u.id).collect()
        };
        if !rolled_back.is_empty() {
            self.writers.lock().expect("writers lock").retain(|_, w| !rolled_back.contains(&w.id_bytes));
            self.cache.lock().expect("cache lock").retain(|id, _| !rolled_back.contains(id));
        }
        self.settled.notify_waiters();
    }

    /// Whether `id` is a key created by a batch that has not committed yet.
    pub(super) fn is_unsettled(&self, id: &[u8]) -> bool {
        self.creator_of(id).is_some()
    }

    /// The batch that created `id`, while it has not committed.
    fn creator_of(&self, id: &[u8]) -> Option<BatchId> {
        self.unsettled.lock().expect("unsettled lock").iter().find(|u| u.id == id).map(|u| u.batch)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;
    use crate::clock::{Clock, ManualClock};

    #[test]
    fn a_writer_retires_when_full_when_too_old_or_on_a_new_day() {
        let rotation = RotationLimits { max_age: Duration::from_secs(3600), max_records: 10 };
        let day_ms = 86_400_000;
        let created = 5 * day_ms + 1000;
        let key = Arc::new(DataKey::generate());
        let mut writer = Writer {
            id: DataKeyId { tenant: "t".into(), layer: Layer::Hot, bucket: utc_day(created), generation: 0 },
            id_bytes: Vec::new(),
            key: Some(key.clone()),
            loaded_ms: created,
            created_at_ms: created,
            used: 0,
        };
        assert!(writer.takes_more(created + 1000, &rotation));
        assert!(!writer.takes_more(created + 3_600_000, &rotation), "too old");
        assert!(!writer.takes_more(created + day_ms, &rotation), "another day");
        assert_eq!(writer.grant(key.clone(), 4, &rotation).granted, 4);
        assert_eq!(writer.grant(key, 25, &rotation).granted, 6, "never past the limit");
        assert!(!writer.takes_more(created + 1000, &rotation), "full");
    }

    /// Commits what `lease` created, as a batch's transaction does.
    fn commit(keyring: &Keyring, lease: &mut WriteKey, now_ms: i64) {
        let mut txn = keyring.store.transaction();
        lease.created.take().expect("a new key").join(&mut txn);
        txn.commit(now_ms).unwrap();
    }

    #[tokio::test]
    async fn a_new_key_is_stored_only_by_its_batch_and_a_rolled_back_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let keyring = super::super::tests::keyring(dir.path(), &clock, Duration::from_secs(300));
        let now = clock.now_ms();

        let failed = keyring.batch();
        let lease = keyring.reserve("a", Layer::Hot, now, 5, failed, KeyPurpose::Store).await.unwrap();
        assert!(lease.created.is_some());
        assert!(keyring.store.wrapped_data_key(&lease.id).unwrap().is_none(), "not stored before its batch commits");
        let rolled_back = lease.id.clone();
        drop(lease);
        keyring.settle(failed, false);
        assert_eq!(keyring.cached_keys_of("a"), 0, "a rolled-back key leaves memory");

        let batch = keyring.batch();
        let mut lease = keyring.reserve("a", Layer::Hot, now, 5, batch, KeyPurpose::Store).await.unwrap();
        assert_eq!(lease.id, rolled_back, "the generation is used again");
        commit(&keyring, &mut lease, now);
        keyring.settle(batch, true);
        assert!(keyring.store.wrapped_data_key(&lease.id).unwrap().is_some());
        let stored = keyring.store.events_after(0, 10).unwrap();
        let created = stored.iter().filter(|e| matches!(e.kind, Some(Kind::DataKeyCreated(_)))).count();
        assert_eq!(created, 1, "one DataKeyCreated, with the batch that used the key");

        let later = super::super::tests::reserve_committed(&keyring, "a", Layer::Hot, now, 5).await;
        assert_eq!((later.id, later.created.is_none()), (lease.id, true), "a settled writer goes on");
    }

    #[tokio::test]
    async fn another_batch_waits_for_an_unsettled_key_and_its_creator_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let keyring = super::super::tests::keyring(dir.path(), &clock, Duration::from_secs(300));
        let keyring = Keyring { rotation: RotationLimits { max_records: 3, ..RotationLimits::default() }, ..keyring };
        let now = clock.now_ms();

        let creator = keyring.batch();
        let mut first = keyring.reserve("a", Layer::Hot, now, 5, creator, KeyPurpose::Store).await.unwrap();
        assert_eq!(first.granted, 3);
        // Full after three: the creator goes on to the next generation without waiting.
        let mut second = keyring.reserve("a", Layer::Hot, now, 2, creator, KeyPurpose::Store).await.unwrap();
        assert_ne!(second.id, first.id);
        assert!(second.created.is_some());

        let other = keyring.batch();
        let mut waiting = Box::pin(keyring.reserve("a", Layer::Hot, now, 1, other, KeyPurpose::Store));
        assert!((&mut waiting).now_or_never().is_none(), "the other batch waits for the creator");
        commit(&keyring, &mut first, now);
        commit(&keyring, &mut second, now);
        keyring.settle(creator, true);
        let lease = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").unwrap();
        assert_eq!(lease.id, second.id, "the settled writer is shared");
        assert!(lease.created.is_none());
    }
}
