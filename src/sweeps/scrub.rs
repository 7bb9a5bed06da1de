//! The scrub: every record of every active tenant, hot and sealed, is
//! decrypted and its AES-GCM tag verified. A record that fails is reported
//! (a `CorruptionDetected` event, the `keyseal_corrupt_records_total`
//! metric and a log line naming tenant and record id) and left exactly
//! where it is: a scrub never deletes or rewrites anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prost::Message;
use serde::Serialize;

use super::{Pacer, Tracker};
use crate::crypto::data_key::DataKey;
use crate::crypto::envelope::RecordIdentity;
use crate::crypto::keyring::{Keyring, KeyringError};
use crate::proto::store::{StoredRecord, TenantState};
use crate::proto::v1::{CorruptionDetected, KeyPurpose, Layer, event::Kind};
use crate::storage::pager::{Pager, RecordsOf};
use crate::storage::{RawRecord, Scope, Scoped, Store, StoreError, keys};
use crate::telemetry::happenings::{Emit, RecordFailedVerification};

/// Most corrupt records a summary lists (all are counted, logged and get an event).
pub const LISTED: usize = 100;

/// A record that failed verification.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CorruptRecord {
    /// Tenant id.
    pub tenant: String,
    /// Record id (never its content).
    pub record_id: String,
    /// `hot` or `sealed`.
    pub layer: &'static str,
    /// What was wrong.
    pub reason: Finding,
}

/// What a scrub found.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScrubSummary {
    /// Records that decrypted and verified.
    pub verified: u64,
    /// Records that did not.
    pub corrupt_count: u64,
    /// The first [`LISTED`] of them.
    pub corrupt: Vec<CorruptRecord>,
    /// Tenants not (fully) scrubbed now, and why.
    pub skipped: BTreeMap<String, String>,
}

/// Scrubs every record of every active tenant at `now_ms`.
pub async fn run(
    store: &Store,
    keyring: &Keyring,
    now_ms: i64,
    pacer: &mut Pacer,
    tracker: &Tracker<'_>,
) -> Result<ScrubSummary, StoreError> {
    let mut scrub = Scrub { store, keyring, now_ms, summary: ScrubSummary::default() };
    for (tenant, projection) in store.tenants() {
        if projection.state() != TenantState::Active {
            // Its key is not usable and reads are refused; scrubbed once restored.
            scrub.summary.skipped.insert(tenant, "tenant is not active".into());
            continue;
        }
        for layer in [Layer::Hot, Layer::Sealed] {
            match scrub.layer(&tenant, layer, pacer, tracker).await {
                Ok(()) => {}
                Err(e) => match e.scope() {
                    Scope::Store(e) => return Err(e),
                    Scope::Contained(unavailable) => {
                        let why = format!("data key unavailable: {unavailable}");
                        scrub.summary.skipped.insert(tenant.clone(), why);
                        break;
                    }
                },
            }
        }
    }
    Ok(scrub.summary)
}

struct Scrub<'a> {
    store: &'a Store,
    keyring: &'a Keyring,
    now_ms: i64,
    summary: ScrubSummary,
}

impl Scrub<'_> {
    /// Verifies one tenant's layer, page by page. Fails only when a data
    /// key cannot be had for a reason other than corruption (a vault outage).
    async fn layer(
        &mut self,
        tenant: &str,
        layer: Layer,
        pacer: &mut Pacer,
        tracker: &Tracker<'_>,
    ) -> Result<(), KeyringError> {
        let mut keys_seen: HashMap<Vec<u8>, Result<Arc<DataKey>, Finding>> = HashMap::new();
        let mut pages = Pager::new(self.store, RecordsOf { layer, tenant }, pacer.step_size());
        while let Some(page) = pages.next_page()? {
            let mut findings = Vec::new();
            for RawRecord { key: record_key, value } in &page {
                match verify(self.keyring, tenant, layer, record_key, value, &mut keys_seen).await? {
                    Ok(()) => self.summary.verified += 1,
                    Err(reason) => findings.push((record_key.as_slice(), reason)),
                }
            }
            if !findings.is_empty() {
                self.report(tenant, layer, &findings).await?;
            }
            tracker.advance(page.len());
            pacer.admit(page.len()).await;
        }
        Ok(())
    }

    /// Records the findings of one page: an event each (one atomic write),
    /// a metric and a log line each.
    async fn report(&mut self, tenant: &str, layer: Layer, findings: &[(&[u8], Finding)]) -> Result<(), StoreError> {
        let layer_name = layer_name(layer);
        let mut txn = self.store.transaction();
        for &(record_key, finding) in findings {
            let reason = finding.as_str();
            let record_id = keys::split_record_key(record_key)
                .map_or_else(|| String::from_utf8_lossy(record_key).into_owned(), |(_, id)| id.to_owned());
            RecordFailedVerification { tenant, layer: layer_name, reason }.emit();
            txn.event(
                tenant,
                Kind::CorruptionDetected(CorruptionDetected {
                    record_id: record_id.clone(),
                    layer: layer as i32,
                    reason: reason.to_owned(),
                }),
            );
            self.summary.corrupt_count += 1;
            if self.summary.corrupt.len() < LISTED {
                self.summary.corrupt.push(CorruptRecord {
                    tenant: tenant.to_owned(),
                    record_id,
                    layer: layer_name,
                    reason: finding,
                });
            }
        }
        txn.commit_durable(self.now_ms).await?;
        Ok(())
    }
}

/// What the scrub found wrong with a record (its `CorruptionDetected.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    /// The stored value or its key does not decode.
    Undecodable,
    /// The record names a data key the store does not have.
    DataKeyMissing,
    /// Its data key is stored but does not unwrap into a key.
    DataKeyCorrupt,
    /// Authenticated decryption failed: ciphertext or identity altered.
    TagMismatch,
}

impl Finding {
    /// The finding's stable name, as events and logs carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::DataKeyMissing => "data_key_missing",
            Self::DataKeyCorrupt => "data_key_corrupt",
            Self::TagMismatch => "tag_mismatch",
        }
    }
}

/// `Ok(Err(finding))` for a corrupt record; `Err` when its key is unavailable.
async fn verify(
    keyring: &Keyring,
    tenant: &str,
    layer: Layer,
    record_key: &[u8],
    value: &[u8],
    keys_seen: &mut HashMap<Vec<u8>, Result<Arc<DataKey>, Finding>>,
) -> Result<Result<(), Finding>, KeyringError> {
    let Ok(record) = StoredRecord::decode(value) else {
        return Ok(Err(Finding::Undecodable));
    };
    let Some((_, record_id)) = keys::split_record_key(record_key) else {
        return Ok(Err(Finding::Undecodable));
    };
    if !keys_seen.contains_key(&record.data_key_id) {
        let key = match keyring.key(&record.data_key_id, KeyPurpose::Scrub).await {
            Ok(key) => Ok(key),
            Err(KeyringError::UnknownDataKey) => Err(Finding::DataKeyMissing),
            Err(KeyringError::Crypto(_)) => Err(Finding::DataKeyCorrupt),
            Err(unavailable) => return Err(unavailable),
        };
        keys_seen.insert(record.data_key_id.clone(), key);
    }
    let key = match &keys_seen[&record.data_key_id] {
        Ok(key) => key,
        Err(reason) => return Ok(Err(*reason)),
    };
    let identity = RecordIdentity { tenant, record_id, layer };
    Ok(identity.open(key, &record).map(drop).map_err(|_| Finding::TagMismatch))
}

fn layer_name(layer: Layer) -> &'static str {
    match layer {
        Layer::Sealed => "sealed",
        Layer::Hot | Layer::Unspecified => "hot",
    }
}
