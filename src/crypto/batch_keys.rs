//! Writer keys for one batch of records. A batch asks the keyring for one
//! reservation per tenant covering all of the tenant's records in it, and
//! for another only when a rotation limit cut the first one short. Data
//! keys the batch had to create are committed by the batch's own
//! transaction ([`BatchKeys::finish`]); a batch that never commits rolls
//! them back when dropped.

use std::collections::HashMap;

use super::keyring::{BatchId, Keyring, KeyringError, NewDataKey, WriteKey};
use crate::proto::v1::{KeyPurpose, Layer};
use crate::storage::Transaction;

/// Hands out the key each record of a batch is encrypted with.
pub struct BatchKeys<'a> {
    keyring: &'a Keyring,
    batch: BatchId,
    layer: Layer,
    purpose: KeyPurpose,
    now_ms: i64,
    /// Per tenant: one map, so the key for a record costs one lookup.
    tenants: HashMap<String, TenantKeys>,
    created: Vec<NewDataKey>,
}

/// One tenant's part of a batch.
struct TenantKeys {
    /// Records not yet handed a key.
    wanted: u64,
    /// The reservation records are handed keys from.
    lease: Option<WriteKey>,
}

impl<'a> BatchKeys<'a> {
    /// Keys for a batch writing `wanted` records per tenant into `layer` at
    /// `now_ms`: storing new records (hot) or sealing (sealed), as the
    /// audit says of the root-key calls it needs.
    pub fn new(keyring: &'a Keyring, layer: Layer, now_ms: i64, wanted: HashMap<String, u64>) -> Self {
        let purpose = if layer == Layer::Sealed { KeyPurpose::Seal } else { KeyPurpose::Store };
        let tenants = wanted.into_iter().map(|(tenant, wanted)| (tenant, TenantKeys { wanted, lease: None })).collect();
        Self { keyring, batch: keyring.batch(), layer, purpose, now_ms, tenants, created: Vec::new() }
    }

    /// The same keys, audited as used for `purpose` (re-encryption writes
    /// sealed records too).
    pub fn for_purpose(mut self, purpose: KeyPurpose) -> Self {
        self.purpose = purpose;
        self
    }

    /// The key for the next record of `tenant`.
    pub async fn next(&mut self, tenant: &str) -> Result<&WriteKey, KeyringError> {
        let still_wanted = match self.tenants.get(tenant) {
            Some(TenantKeys { lease: Some(lease), .. }) if lease.granted > 0 => None,
            Some(keys) => Some(keys.wanted.max(1)),
            None => Some(1),
        };
        if let Some(wanted) = still_wanted {
            let mut lease =
                self.keyring.reserve(tenant, self.layer, self.now_ms, wanted, self.batch, self.purpose).await?;
            self.created.extend(lease.created.take());
            let keys = self.tenants.entry(tenant.to_owned()).or_insert(TenantKeys { wanted: 1, lease: None });
            keys.lease = Some(lease);
        }
        let keys = self.tenants.get_mut(tenant).expect("reserved above");
        keys.wanted = keys.wanted.saturating_sub(1);
        let lease = keys.lease.as_mut().expect("reserved above");
        lease.granted -= 1;
        Ok(lease)
    }

    /// Adds the data keys this batch created to `txn`, the transaction that
    /// writes the batch's records. Tell the returned settlement once `txn`
    /// has committed; dropped untold, it rolls the keys back.
    pub fn finish(mut self, txn: &mut Transaction<'_>) -> Settlement<'a> {
        let created = std::mem::take(&mut self.created);
        for key in &created {
            key.join(txn);
        }
        Settlement { keyring: self.keyring, batch: self.batch, pending: !created.is_empty() }
    }
}

impl Drop for BatchKeys<'_> {
    /// A batch given up before [`BatchKeys::finish`] commits nothing.
    fn drop(&mut self) {
        if !self.created.is_empty() {
            self.keyring.settle(self.batch, false);
        }
    }
}

/// The data keys a batch created, between adding them to its transaction
/// and knowing whether it committed.
#[must_use = "tell it whether the transaction committed, or its keys roll back"]
pub struct Settlement<'a> {
    keyring: &'a Keyring,
    batch: BatchId,
    pending: bool,
}

impl Settlement<'_> {
    /// The transaction committed: the keys are stored and other batches may use them.
    pub fn committed(mut self) {
        if std::mem::take(&mut self.pending) {
            self.keyring.settle(self.batch, true);
        }
    }
}

impl Drop for Settlement<'_> {
    /// The transaction failed: the keys roll back.
    fn drop(&mut self) {
        if self.pending {
            self.keyring.settle(self.batch, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::crypto::keyring::{CacheLimits, RotationLimits};
    use crate::crypto::root_key::ManagedRootKeys;
    use crate::proto::v1::event::Kind;
    use crate::storage::Store;

    /// A keyring whose keys take two records each, and its store.
    fn keyring(dir: &std::path::Path, clock: &ManualClock) -> (Keyring, Arc<Store>) {
        let store = Arc::new(Store::open(&dir.join("db")).unwrap());
        let managed = ManagedRootKeys::load_or_create(&dir.join("root-keys")).unwrap();
        let rotation = RotationLimits { max_records: 2, ..RotationLimits::default() };
        let clock = Arc::new(clock.clone());
        (Keyring::new(store.clone(), managed, Err("no vault".into()), CacheLimits::default(), rotation, clock), store)
    }

    async fn five_records_of(keys: &mut BatchKeys<'_>, tenant: &str) -> Vec<Vec<u8>> {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(keys.next(tenant).await.unwrap().id.clone());
        }
        ids
    }

    #[tokio::test]
    async fn a_committed_batch_stores_every_key_it_created_with_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let (keyring, store) = keyring(dir.path(), &clock);
        let mut keys = BatchKeys::new(&keyring, Layer::Hot, clock.now_ms(), HashMap::from([("a".into(), 5)]));
        let ids = five_records_of(&mut keys, "a").await;
        let mut txn = store.transaction();
        let settlement = keys.finish(&mut txn);
        txn.commit(clock.now_ms()).unwrap();
        settlement.committed();
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 3, "two records per key");
        for id in distinct {
            assert!(store.wrapped_data_key(id).unwrap().is_some());
        }
        let events = store.events_after(0, 100).unwrap();
        let created = events.iter().filter(|e| matches!(e.kind, Some(Kind::DataKeyCreated(_)))).count();
        assert_eq!(created, 3, "one DataKeyCreated per key");
        let wraps = events.iter().filter(|e| matches!(e.kind, Some(Kind::KeyUsed(_)))).count();
        assert_eq!(wraps, 3, "each key's wrap audited, with the batch");
    }

    #[tokio::test]
    async fn a_batch_that_does_not_commit_leaves_no_key_and_blocks_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let (keyring, store) = keyring(dir.path(), &clock);
        let mut failed = BatchKeys::new(&keyring, Layer::Hot, clock.now_ms(), HashMap::new());
        let lost = five_records_of(&mut failed, "a").await;
        let mut txn = store.transaction();
        drop(failed.finish(&mut txn));
        drop(txn);
        let mut abandoned = BatchKeys::new(&keyring, Layer::Hot, clock.now_ms(), HashMap::new());
        five_records_of(&mut abandoned, "b").await;
        drop(abandoned);
        assert_eq!((keyring.cached_keys_of("a"), keyring.cached_keys_of("b")), (0, 0), "rolled back");

        let mut next = BatchKeys::new(&keyring, Layer::Hot, clock.now_ms(), HashMap::new());
        let fresh = tokio::time::timeout(Duration::from_secs(5), five_records_of(&mut next, "a"))
            .await
            .expect("nobody waits for a batch that gave up");
        assert_eq!(fresh[0], lost[0], "its generation is used again");
        assert!(store.wrapped_data_key(&lost[0]).unwrap().is_none());
    }
}
