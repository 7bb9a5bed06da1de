//! The retention sweep: for every tenant with a retention (its own, set by
//! `PUT /v1/tenants/{t}/retention`, else `--default-retention`), records
//! ingested longer ago than that are deleted, oldest first, a paced page at
//! a time, each page starting where the last one ended: each page one
//! atomic write with a `RecordsExpired` event. The
//! data keys of the expired records that no record uses any more are then
//! retired (deleted: crypto-shredded). Nothing is decrypted.
//!
//! A locked-down tenant is skipped: lockdown loses nothing, and its expiry
//! resumes once it is restored. Expired records get no tombstone: a
//! redelivery of a record older than its retention would be stored again
//! and expire at the next sweep.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use super::Pacer;
use super::reencrypt::RETIRE_GRACE;
use crate::clock::Clock;
use crate::crypto::data_key::DataKeyId;
use crate::crypto::keyring::Keyring;
use crate::proto::store::{StoredRecord, TenantProjection, TenantState};
use crate::proto::v1::{Layer, RecordsExpired, event::Kind};
use crate::records::RecordError;
use crate::storage::pager::{Pager, RecordsOf};
use crate::storage::{ListingRange, Store, keys};
use crate::telemetry::metrics as m;

/// What a retention sweep did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSummary {
    /// Records deleted because they were older than their tenant's retention.
    pub expired: u64,
    /// Records deleted, per tenant.
    pub tenants: BTreeMap<String, u64>,
    /// Data keys deleted because the expiry left them without records.
    pub retired_data_keys: u64,
    /// Tenants with a retention that were not swept now, and why.
    pub skipped: BTreeMap<String, String>,
}

/// The retention that applies to a tenant: its own, else the default.
pub fn effective(projection: &TenantProjection, default: Option<Duration>) -> Option<Duration> {
    match projection.retention_max_age_ms {
        0 => default,
        own => Some(Duration::from_millis(own)),
    }
}

/// Runs one retention sweep over every tenant of `store`.
pub async fn run(
    store: &Store,
    keyring: &Keyring,
    clock: &dyn Clock,
    default: Option<Duration>,
    pacer: &mut Pacer,
) -> Result<RetentionSummary, RecordError> {
    let mut summary = RetentionSummary::default();
    for (tenant, projection) in store.tenants() {
        let Some(max_age) = effective(&projection, default) else { continue };
        match projection.state() {
            TenantState::LockedDown => {
                summary.skipped.insert(tenant, "tenant is locked down".into());
                continue;
            }
            // Its erasure removes everything; nothing is left to expire.
            TenantState::Erased => continue,
            TenantState::Active | TenantState::Degraded => {}
        }
        let cutoff = clock.now_ms().saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let emptied = expire(store, &tenant, cutoff, clock, pacer, &mut summary).await?;
        if !emptied.is_empty() {
            let retired = retire_unused(store, keyring, &tenant, emptied, clock.now_ms()).await?;
            m::data_keys_retired(retired);
            summary.retired_data_keys += retired as u64;
        }
    }
    if summary.expired > 0 {
        m::records_deleted("retention", summary.expired);
    }
    Ok(summary)
}

/// Deletes `tenant`'s records ingested before `cutoff_ms`, page by page;
/// returns the data keys those records used.
async fn expire(
    store: &Store,
    tenant: &str,
    cutoff_ms: i64,
    clock: &dyn Clock,
    pacer: &mut Pacer,
    summary: &mut RetentionSummary,
) -> Result<HashSet<Vec<u8>>, RecordError> {
    let mut due = ListingRange { to_ms: Some(cutoff_ms), ..ListingRange::default() };
    let mut used = HashSet::new();
    loop {
        // From listing the page to committing its deletion.
        let moving = store.moving().await;
        let page = store.list_records(tenant, &due, pacer.step_size())?;
        let Some(last) = page.last() else {
            return Ok(used);
        };
        // The next page starts after this one: never again over the
        // deletion markers of the pages before, so each page costs the
        // same however many came first.
        due.after = Some((last.ingested_at_ms, last.record_id.clone()));
        let record_keys: Vec<Vec<u8>> = page.iter().map(|listed| keys::record_key(tenant, &listed.record_id)).collect();
        let mut txn = store.transaction();
        let (mut hot, mut sealed) = (0u32, 0u32);
        for ((listed, record_key), found) in page.iter().zip(&record_keys).zip(store.find_records(&record_keys)?) {
            txn.delete_tenant_index(&keys::tenant_index_key(tenant, listed.ingested_at_ms, &listed.record_id));
            let Some(found) = found else { continue };
            used.insert(found.record.data_key_id);
            txn.delete_record(found.layer, record_key);
            if found.layer == Layer::Hot {
                txn.delete_index(&keys::index_key(listed.ingested_at_ms, record_key));
                hot += 1;
            } else {
                sealed += 1;
            }
        }
        let expired = RecordsExpired { hot, sealed, ingested_before_unix_ms: cutoff_ms };
        txn.event(tenant, Kind::RecordsExpired(expired));
        txn.commit_durable(clock.now_ms()).await?;
        drop(moving);
        let count = u64::from(hot + sealed);
        summary.expired += count;
        *summary.tenants.entry(tenant.to_owned()).or_default() += count;
        pacer.admit(page.len()).await;
    }
}

/// Retires those of `candidates` (data keys of expired records) that no
/// record of `tenant` uses any more and that no batch can still be writing
/// with: a key encrypts new records only during its UTC day, so one whose
/// day ended more than [`RETIRE_GRACE`] ago only ever loses records.
async fn retire_unused(
    store: &Store,
    keyring: &Keyring,
    tenant: &str,
    mut candidates: HashSet<Vec<u8>>,
    now_ms: i64,
) -> Result<usize, RecordError> {
    const DAY_MS: i64 = 86_400_000;
    candidates.retain(|id| {
        DataKeyId::from_bytes(id)
            .is_ok_and(|id| (i64::from(id.bucket) + 1) * DAY_MS + RETIRE_GRACE.as_millis() as i64 <= now_ms)
    });
    for layer in [Layer::Hot, Layer::Sealed] {
        let mut pages = Pager::new(store, RecordsOf { layer, tenant }, 1000);
        while let Some(page) = pages.next_page()? {
            if candidates.is_empty() {
                return Ok(0);
            }
            for raw in &page {
                match <StoredRecord as prost::Message>::decode(raw.value.as_slice()) {
                    Ok(record) => {
                        candidates.remove(&record.data_key_id);
                    }
                    // It might use any key: keep them all.
                    Err(_) => return Ok(0),
                }
            }
        }
    }
    let unused: Vec<Vec<u8>> = candidates.into_iter().collect();
    Ok(keyring.retire(tenant, &unused, now_ms).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_own_retention_overrides_the_default() {
        let day = Duration::from_secs(86_400);
        let own = TenantProjection { retention_max_age_ms: 2 * 86_400_000, ..TenantProjection::default() };
        assert_eq!(effective(&own, Some(day)), Some(2 * day));
        assert_eq!(effective(&TenantProjection::default(), Some(day)), Some(day));
        assert_eq!(effective(&TenantProjection::default(), None), None, "by default records are kept");
    }
}
