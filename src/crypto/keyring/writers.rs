//! Writer keys: the data key new records of a tenant and layer are
//! encrypted with, reserved in blocks, retired from writing by day, age and
//! record count, and created (wrapped and committed with `DataKeyCreated`)
//! when a new generation starts.

use std::sync::Arc;

use super::{Keyring, KeyringError, RotationLimits, TenantRoot, WriteKey};
use crate::clock::utc_day;
use crate::crypto::data_key::{DataKey, DataKeyId};
use crate::proto::v1::{DataKeyCreated, Layer, event::Kind};

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
        WriteKey { id: self.id_bytes.clone(), key, granted }
    }
}

impl Keyring {
    /// Reserves the current writer key of `tenant` in `layer` for up to
    /// `wanted` records at `now_ms` (at least one is granted), starting a new
    /// generation when the writer is full, too old or of another day.
    pub async fn reserve(
        &self,
        tenant: &str,
        layer: Layer,
        now_ms: i64,
        wanted: u64,
    ) -> Result<WriteKey, KeyringError> {
        let wanted = wanted.max(1);
        let slot = (tenant.to_owned(), layer);
        if let Some(lease) = self.lease(&slot, now_ms, wanted) {
            return Ok(lease);
        }
        let _creating = self.creating.lock().await;
        if let Some(lease) = self.lease(&slot, now_ms, wanted) {
            return Ok(lease);
        }
        let previous = self.writers.lock().expect("writers lock").remove(&slot);
        let mut writer = match previous {
            // Still good for writing: only its unwrapped copy outlived the cache age.
            Some(old) if old.takes_more(now_ms, &self.rotation) => {
                let key = self.key(&old.id_bytes).await?;
                Writer { key: Some(key), loaded_ms: self.clock.now_ms(), ..old }
            }
            previous => self.new_writer(tenant, layer, now_ms, previous.map(|w| w.id)).await?,
        };
        let key = writer.key.clone().ok_or(KeyringError::UnknownDataKey)?;
        let lease = writer.grant(key, wanted, &self.rotation);
        self.writers.lock().expect("writers lock").insert(slot, writer);
        Ok(lease)
    }

    fn lease(&self, slot: &(String, Layer), now_ms: i64, wanted: u64) -> Option<WriteKey> {
        let mut writers = self.writers.lock().expect("writers lock");
        let writer = writers.get_mut(slot)?;
        let fresh = writer.takes_more(now_ms, &self.rotation) && !self.expired(writer.loaded_ms, 0);
        let key = writer.key.clone().filter(|_| fresh)?;
        Some(writer.grant(key, wanted, &self.rotation))
    }

    /// Creates the next generation of the tenant's key for the day of `now_ms`.
    async fn new_writer(
        &self,
        tenant: &str,
        layer: Layer,
        now_ms: i64,
        previous: Option<DataKeyId>,
    ) -> Result<Writer, KeyringError> {
        let mut id = DataKeyId { tenant: tenant.to_owned(), layer, bucket: utc_day(now_ms), generation: 0 };
        id.generation = match previous.filter(|p| p.bucket == id.bucket) {
            Some(previous) => previous.generation + 1,
            // Keys of an earlier process: never continued (their record count is unknown).
            None => match self.store.last_data_key_with_prefix(id.bucket_prefix())? {
                Some(last) => DataKeyId::from_bytes(&last)?.generation + 1,
                None => 0,
            },
        };
        let root = match layer {
            Layer::Sealed => self.tenant_root(tenant)?,
            Layer::Hot | Layer::Unspecified => TenantRoot::Managed,
        };
        let id_bytes = id.to_bytes();
        let key = self.create(tenant, layer, &id_bytes, &root, now_ms).await?;
        Ok(Writer { id, id_bytes, key: Some(key), loaded_ms: self.clock.now_ms(), created_at_ms: now_ms, used: 0 })
    }

    async fn create(
        &self,
        tenant: &str,
        layer: Layer,
        id: &[u8],
        root: &TenantRoot,
        now_ms: i64,
    ) -> Result<Arc<DataKey>, KeyringError> {
        let key = DataKey::generate();
        let wrapped = self.wrap(root, &key, now_ms).await?;
        let mut txn = self.store.transaction();
        txn.put_data_key(id, &wrapped);
        txn.event(
            tenant,
            Kind::DataKeyCreated(DataKeyCreated {
                data_key_id: id.to_vec(),
                layer: layer as i32,
                wrapped_by: wrapped.wrapped_by,
            }),
        );
        txn.commit_durable(now_ms).await?;
        let key = Arc::new(key);
        self.remember(id, &key);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
}
