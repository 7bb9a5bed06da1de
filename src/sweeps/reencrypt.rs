//! The re-encryption sweep: sealed records whose data key is older than
//! `--max-dek-age` are decrypted and encrypted again under the tenant's
//! current writer key, a paced batch at a time, each batch one atomic write
//! with a `RecordsReencrypted` event. Progress lives in the data itself: a
//! record on a fresh key is never touched again, so an interrupted sweep
//! simply resumes on the next run. Once a full pass leaves an old key with
//! no record, the key is retired (deleted: crypto-shredded).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use serde::Serialize;

use super::{Pacer, Tracker};
use crate::clock::Clock;
use crate::crypto::batch_keys::BatchKeys;
use crate::crypto::data_key::{DataKey, DataKeyId};
use crate::crypto::envelope::RecordIdentity;
use crate::crypto::keyring::{Keyring, KeyringError};
use crate::proto::store::{StoredRecord, TenantState};
use crate::proto::v1::{KeyPurpose, Layer, RecordsReencrypted, event::Kind};
use crate::records::RecordError;
use crate::storage::pager::{Pager, RecordsOf};
use crate::storage::{RawRecord, Scope, Scoped, StepCommits, Store, keys};

/// How long past `--max-dek-age` a key waits before it may be retired:
/// longer than any batch that reserved it just before it aged out takes
/// to commit.
pub const RETIRE_GRACE: Duration = Duration::from_secs(3600);

/// What a re-encryption sweep did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReencryptSummary {
    /// Sealed records looked at (of tenants with old data keys).
    pub scanned: u64,
    /// Records moved to a fresh data key.
    pub reencrypted: u64,
    /// Ciphertext bytes re-encrypted.
    pub bytes: u64,
    /// Records moved, per tenant.
    pub tenants: BTreeMap<String, u64>,
    /// Old data keys deleted because no record uses them any more.
    pub retired_data_keys: u64,
    /// Records on an old key that did not decrypt: left as they are (and
    /// their key kept) for the scrub to report.
    pub unreadable: u64,
    /// Tenants with old keys that were not swept now, and why.
    pub skipped: BTreeMap<String, String>,
}

/// Runs one re-encryption sweep over every tenant that has data keys older
/// than `keyring.rotation().max_age` when it starts. Each batch reads the
/// clock afresh (a paced sweep can run for hours).
pub async fn run(
    store: &Store,
    keyring: &Keyring,
    clock: &dyn Clock,
    pacer: &mut Pacer,
    tracker: &Tracker<'_>,
) -> Result<ReencryptSummary, RecordError> {
    let cutoff = clock.now_ms() - keyring.rotation().max_age.as_millis() as i64;
    let mut summary = ReencryptSummary::default();
    for (tenant, projection) in store.tenants() {
        let old: HashMap<Vec<u8>, i64> = store
            .data_keys_of(&tenant)?
            .into_iter()
            .filter(|(_, wrapped)| wrapped.created_at_unix_ms < cutoff)
            .map(|(id, wrapped)| (id, wrapped.created_at_unix_ms))
            .collect();
        if old.is_empty() {
            continue;
        }
        if projection.state() != TenantState::Active {
            // Its key is not usable; its records are swept once it is restored.
            summary.skipped.insert(tenant, "tenant is not active".into());
            continue;
        }
        let mut sweep = TenantSweep {
            store,
            keyring,
            tenant: &tenant,
            old: &old,
            clock,
            in_use: HashSet::new(),
            summary: &mut summary,
        };
        match sweep.run(pacer, tracker).await {
            Ok(()) => {}
            Err(e) => match e.scope() {
                Scope::Store(e) => return Err(e.into()),
                Scope::Contained(e) => {
                    summary.skipped.insert(tenant, e.to_string());
                }
            },
        }
    }
    Ok(summary)
}

struct TenantSweep<'a> {
    store: &'a Store,
    keyring: &'a Keyring,
    tenant: &'a str,
    /// The tenant's data keys older than the age limit, with creation time.
    old: &'a HashMap<Vec<u8>, i64>,
    clock: &'a dyn Clock,
    /// Old keys some record still uses.
    in_use: HashSet<Vec<u8>>,
    summary: &'a mut ReencryptSummary,
}

impl<'a> TenantSweep<'a> {
    async fn run(&mut self, pacer: &mut Pacer, tracker: &Tracker<'_>) -> Result<(), RecordError> {
        let mut pages =
            Pager::new(self.store, RecordsOf { layer: Layer::Sealed, tenant: self.tenant }, pacer.step_size());
        let mut steps = StepCommits::new(self.store);
        loop {
            // From reading the page to committing its re-encryption.
            let moving = self.store.moving().await;
            let Some(page) = pages.next_page()? else { break };
            let mut due = Vec::new();
            for RawRecord { key, value } in &page {
                match StoredRecord::decode(value.as_slice()) {
                    Ok(record) if self.old.contains_key(&record.data_key_id) => due.push((key.as_slice(), record)),
                    Ok(_) => {}
                    Err(_) => {
                        // Whatever key it used must stay: keep every old sealed key.
                        self.summary.unreadable += 1;
                        self.keep_old_keys_of(Layer::Sealed);
                    }
                }
            }
            self.summary.scanned += page.len() as u64;
            let moved = self.reencrypt(&mut steps, &due).await?;
            drop(moving);
            tracker.advance(page.len());
            pacer.admit(moved).await;
        }
        // Keys are retired only once the records moved off them are durable.
        steps.durable().await?;
        self.note_hot_keys_in_use()?;
        self.retire().await
    }

    /// Re-encrypts `due` under the tenant's writer key in one atomic write,
    /// committed while the previous step's fsync may still run.
    async fn reencrypt(
        &mut self,
        steps: &mut StepCommits<'a>,
        due: &[(&[u8], StoredRecord)],
    ) -> Result<usize, RecordError> {
        if due.is_empty() {
            return Ok(0);
        }
        let now_ms = self.clock.now_ms();
        let wanted = HashMap::from([(self.tenant.to_owned(), due.len() as u64)]);
        let mut fresh = BatchKeys::new(self.keyring, Layer::Sealed, now_ms, wanted).for_purpose(KeyPurpose::Reencrypt);
        let mut old_keys: HashMap<&[u8], Arc<DataKey>> = HashMap::new();
        let mut txn = self.store.transaction();
        let (mut count, mut bytes) = (0u32, 0u64);
        for (record_key, record) in due {
            let Some((_, record_id)) = keys::split_record_key(record_key) else {
                self.unreadable(&record.data_key_id);
                continue;
            };
            let identity = RecordIdentity { tenant: self.tenant, record_id, layer: Layer::Sealed };
            let old = match old_keys.get(record.data_key_id.as_slice()) {
                Some(key) => key.clone(),
                None => match self.keyring.key(&record.data_key_id, KeyPurpose::Reencrypt).await {
                    Ok(key) => {
                        old_keys.insert(&record.data_key_id, key.clone());
                        key
                    }
                    // Missing or damaged: the record stays for the scrub to report.
                    Err(KeyringError::UnknownDataKey | KeyringError::Crypto(_)) => {
                        self.unreadable(&record.data_key_id);
                        continue;
                    }
                    Err(unavailable) => return Err(unavailable.into()),
                },
            };
            let Ok(content) = identity.open(&old, record) else {
                self.unreadable(&record.data_key_id);
                continue;
            };
            let lease = fresh.next(self.tenant).await?;
            let moved = identity.seal(&lease.id, &lease.key, &content, record.ingested_at_unix_ms);
            txn.put_record(Layer::Sealed, record_key, &moved);
            count += 1;
            bytes += record.ciphertext.len() as u64;
        }
        let new_keys = fresh.finish(&mut txn);
        if count > 0 {
            txn.event(
                self.tenant,
                Kind::RecordsReencrypted(RecordsReencrypted { count, layer: Layer::Sealed as i32, bytes }),
            );
            steps.commit(txn, now_ms).await?;
            new_keys.committed();
        }
        self.summary.reencrypted += u64::from(count);
        self.summary.bytes += bytes;
        *self.summary.tenants.entry(self.tenant.to_owned()).or_default() += u64::from(count);
        Ok(count as usize)
    }

    fn unreadable(&mut self, data_key_id: &[u8]) {
        self.summary.unreadable += 1;
        self.in_use.insert(data_key_id.to_vec());
    }

    /// Old hot keys still used by records waiting to be sealed (which
    /// sealing re-encrypts anyway) must not be retired.
    fn note_hot_keys_in_use(&mut self) -> Result<(), RecordError> {
        let mut pages = Pager::new(self.store, RecordsOf { layer: Layer::Hot, tenant: self.tenant }, 1000);
        while let Some(page) = pages.next_page()? {
            for RawRecord { value, .. } in &page {
                match StoredRecord::decode(value.as_slice()) {
                    Ok(record) if self.old.contains_key(&record.data_key_id) => {
                        self.in_use.insert(record.data_key_id);
                    }
                    Ok(_) => {}
                    // Whatever key it used must stay: keep every old hot key.
                    Err(_) => self.keep_old_keys_of(Layer::Hot),
                }
            }
        }
        Ok(())
    }

    /// Keeps every old key of `layer` (a record that names its key
    /// unreadably might use any of them).
    fn keep_old_keys_of(&mut self, layer: Layer) {
        let of_layer = self.old.keys().filter(|id| DataKeyId::from_bytes(id).is_ok_and(|id| id.layer == layer));
        self.in_use.extend(of_layer.cloned());
    }

    /// Deletes the old keys no record uses, once past the grace period.
    async fn retire(&mut self) -> Result<(), RecordError> {
        let now_ms = self.clock.now_ms();
        let retire_before =
            now_ms - self.keyring.rotation().max_age.as_millis() as i64 - RETIRE_GRACE.as_millis() as i64;
        let unused: Vec<Vec<u8>> = self
            .old
            .iter()
            .filter(|(id, created)| **created < retire_before && !self.in_use.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        let retired = self.keyring.retire(self.tenant, &unused, now_ms).await?;
        crate::telemetry::metrics::data_keys_retired(retired);
        self.summary.retired_data_keys += retired as u64;
        Ok(())
    }
}
