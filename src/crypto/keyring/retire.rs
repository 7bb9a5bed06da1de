//! Retirement: deleting data keys no record uses any more, which
//! crypto-shreds whatever they ever encrypted; and shredding every key of
//! a tenant that is erased.

use std::collections::HashSet;

use super::{Keyring, KeyringError};
use crate::crypto::data_key::DataKeyId;
use crate::proto::v1::{DataKeyRetired, event::Kind};

impl Keyring {
    /// Deletes data keys no record uses any more (crypto-shredding them),
    /// each with a `DataKeyRetired` event, and returns how many. The caller
    /// guarantees no stored record uses them; a key that is some tenant's
    /// current writer is kept regardless (a batch may hold it right now).
    pub async fn retire(&self, tenant: &str, ids: &[Vec<u8>], now_ms: i64) -> Result<usize, KeyringError> {
        let _one = self.rewrapping.lock().await;
        // No writer is being replaced or created while the check holds.
        let _creating = self.creating.lock().await;
        let writing: HashSet<Vec<u8>> = self
            .writers
            .lock()
            .expect("writers lock")
            .values()
            .filter(|writer| writer.takes_more(now_ms, &self.rotation))
            .map(|writer| writer.id_bytes.clone())
            .collect();
        let retiring: Vec<&Vec<u8>> = ids.iter().filter(|id| !writing.contains(*id)).collect();
        if retiring.is_empty() {
            return Ok(0);
        }
        let mut txn = self.store.transaction();
        for id in &retiring {
            let layer = DataKeyId::from_bytes(id)?.layer;
            txn.delete_data_key(id);
            txn.event(tenant, Kind::DataKeyRetired(DataKeyRetired { data_key_id: (*id).clone(), layer: layer as i32 }));
        }
        txn.commit_durable(now_ms).await?;
        let mut cache = self.cache.lock().expect("cache lock");
        for id in &retiring {
            cache.remove(*id);
        }
        Ok(retiring.len())
    }
}

impl Keyring {
    /// Crypto-shreds every data key of `tenant` in one durable batch with
    /// the event `erased` makes of how many there were, then drops the
    /// unwrapped copies and writers it has in memory: from the commit on,
    /// nothing of the tenant can be decrypted. No rewrap or retirement runs
    /// meanwhile (it could write a key back); a batch that created a key for
    /// the tenant and commits later is refused by the store, which takes no
    /// event for an erased tenant.
    pub async fn shred(
        &self,
        tenant: &str,
        now_ms: i64,
        erased: impl FnOnce(u32) -> Kind,
    ) -> Result<u32, KeyringError> {
        let _one = self.rewrapping.lock().await;
        let _creating = self.creating.lock().await;
        let ids: Vec<Vec<u8>> = self.store.data_keys_of(tenant)?.into_iter().map(|(id, _)| id).collect();
        let destroyed = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let mut txn = self.store.transaction();
        for id in &ids {
            txn.delete_data_key(id);
        }
        txn.event(tenant, erased(destroyed));
        txn.commit_durable(now_ms).await?;
        self.forget_tenant(tenant);
        Ok(destroyed)
    }
}
