//! The seal sweep: records whose residence time exceeds the seal age move
//! from `hot` to `sealed`, re-encrypted under the tenant's sealed data key.
//! Each batch is one atomic write: put sealed, delete hot, delete the index
//! entry and append `RecordsSealed` per tenant, so a crash mid-sweep leaves
//! every record in exactly one layer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::error;

use crate::clock::Clock;
use crate::crypto::batch_keys::BatchKeys;
use crate::crypto::data_key::DataKey;
use crate::crypto::envelope::RecordIdentity;
use crate::crypto::keyring::{Keyring, KeyringError};
use crate::proto::v1::{Layer, RecordsSealed, event::Kind};
use crate::records::RecordError;
use crate::storage::{IndexEntry, Store, keys};

/// Index entries handled per write batch.
pub const SEAL_BATCH: usize = 1000;

/// The sealing decision, kept pure: a record is due once it has resided
/// strictly longer than `seal_after`.
pub fn seal_cutoff_ms(now_ms: i64, seal_after: Duration) -> i64 {
    now_ms - seal_after.as_millis() as i64
}

/// Seal lag: how far past the seal age a record ingested at
/// `ingested_at_ms` is at `now_ms`, zero while it is not yet due. Of the
/// oldest record in `hot` it is `/metrics`' `keyseal_seal_lag_seconds`.
pub fn seal_lag(now_ms: i64, seal_after: Duration, ingested_at_ms: i64) -> Duration {
    let overdue_ms = seal_cutoff_ms(now_ms, seal_after) - ingested_at_ms;
    Duration::from_millis(overdue_ms.max(0) as u64)
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SealSummary {
    /// Records moved to `sealed`.
    pub sealed: u64,
    /// Records sealed per tenant.
    pub tenants: BTreeMap<String, u64>,
    /// Index entries whose record was already gone (cleaned up).
    pub stale_index_entries: u64,
    /// Records left in `hot` because their tenant's key is not usable now.
    pub held_back: BTreeMap<String, u64>,
    /// Records left in `hot` because they failed their integrity check.
    pub unsealable: BTreeMap<String, u64>,
}

/// Seals every record due when it starts, batch by batch, until none is
/// left, except those of the tenants in `hold`, which stay in `hot`
/// untouched. Each batch reads the clock afresh, so a long drain never
/// reserves a data key with a stale idea of its age.
pub async fn seal_due(
    store: &Store,
    keyring: &Keyring,
    clock: &dyn Clock,
    seal_after: Duration,
    hold: &BTreeSet<String>,
) -> Result<SealSummary, RecordError> {
    let cutoff = seal_cutoff_ms(clock.now_ms(), seal_after);
    let mut summary = SealSummary::default();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let mut due = store.ingested_before(cursor.as_deref(), cutoff, SEAL_BATCH)?;
        let Some(last) = due.last() else {
            return Ok(summary);
        };
        cursor = Some(last.0.clone());
        due.retain(|(_, _, record_key)| match keys::split_record_key(record_key) {
            Some((tenant, _)) if hold.contains(tenant) => {
                *summary.held_back.entry(tenant.to_owned()).or_default() += 1;
                false
            }
            _ => true,
        });
        seal_batch(store, keyring, &due, clock.now_ms(), &mut summary).await?;
    }
}

async fn seal_batch(
    store: &Store,
    keyring: &Keyring,
    due: &[IndexEntry],
    now_ms: i64,
    summary: &mut SealSummary,
) -> Result<(), RecordError> {
    if due.is_empty() {
        return Ok(());
    }
    let record_keys: Vec<&[u8]> = due.iter().map(|(_, _, k)| k.as_slice()).collect();
    let found = store.find_records(&record_keys)?;
    let mut txn = store.transaction();
    let mut per_tenant: BTreeMap<String, (u32, i64)> = BTreeMap::new();
    let mut hot_keys: HashMap<Vec<u8>, Arc<DataKey>> = HashMap::new();
    let mut wanted: HashMap<String, u64> = HashMap::new();
    for (_, _, record_key) in due {
        if let Some((tenant, _)) = keys::split_record_key(record_key) {
            *wanted.entry(tenant.to_owned()).or_default() += 1;
        }
    }
    let mut sealed_keys = BatchKeys::new(keyring, Layer::Sealed, now_ms, wanted);
    for ((index_key, ingested_at, record_key), located) in due.iter().zip(found) {
        let (Some(located), Some((tenant, record_id))) = (located, keys::split_record_key(record_key)) else {
            txn.delete_index(index_key);
            summary.stale_index_entries += 1;
            continue;
        };
        if located.layer != Layer::Hot {
            txn.delete_index(index_key);
            summary.stale_index_entries += 1;
            continue;
        }
        // Each data key is looked up once per batch, not once per record.
        let hot_key = match hot_keys.get(&located.record.data_key_id) {
            Some(key) => Ok(key.clone()),
            None => match keyring.key(&located.record.data_key_id).await {
                Ok(key) => {
                    hot_keys.insert(located.record.data_key_id.clone(), key.clone());
                    Ok(key)
                }
                Err(KeyringError::Store(e)) => return Err(e.into()),
                // Hot keys are managed-rooted: no vault is involved, so the
                // failure concerns this record's key only.
                Err(e) => Err(e),
            },
        };
        let identity = RecordIdentity { tenant, record_id, layer: Layer::Hot };
        let Some(content) = hot_key.ok().and_then(|key| identity.open(&key, &located.record).ok()) else {
            // One damaged record must not stop sealing for everyone: it
            // stays in `hot`, untouched, for the scrub to report.
            error!(tenant, record_id, "hot record failed its integrity check or lost its data key; left in hot");
            *summary.unsealable.entry(tenant.to_owned()).or_default() += 1;
            continue;
        };
        txn.delete_index(index_key);
        let lease = sealed_keys.next(tenant).await?;
        let sealed = RecordIdentity { tenant, record_id, layer: Layer::Sealed }.seal(
            &lease.id,
            &lease.key,
            &content,
            located.record.ingested_at_unix_ms,
        );
        txn.put_record(Layer::Sealed, record_key, &sealed);
        txn.delete_record(Layer::Hot, record_key);
        let entry = per_tenant.entry(tenant.to_owned()).or_insert((0, *ingested_at));
        entry.0 += 1;
        entry.1 = entry.1.min(*ingested_at);
    }
    for (tenant, (count, oldest)) in per_tenant {
        txn.event(&tenant, Kind::RecordsSealed(RecordsSealed { count, oldest_ingested_at_unix_ms: oldest }));
        summary.sealed += u64::from(count);
        *summary.tenants.entry(tenant).or_default() += u64::from(count);
    }
    txn.commit(now_ms)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_only_after_strictly_more_than_seal_age() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        let ingested = 1_000_000;
        let cutoff_at = |now| seal_cutoff_ms(now, hours(48));
        // The index scan takes entries strictly below the cutoff.
        assert!(ingested >= cutoff_at(ingested + 48 * 3_600_000));
        assert!(ingested < cutoff_at(ingested + 48 * 3_600_000 + 1));
    }

    #[test]
    fn seal_lag_counts_only_time_past_the_seal_age() {
        let seal_after = Duration::from_secs(3600);
        assert_eq!(seal_lag(5_000_000, seal_after, 5_000_000), Duration::ZERO, "not due yet");
        assert_eq!(seal_lag(3_600_000 + 1_500, seal_after, 0), Duration::from_millis(1_500));
    }
}
