//! Writing and reading records: the one place where producer content turns
//! into encrypted envelopes in `hot`, and envelopes (hot or sealed) turn
//! back into content.

use std::collections::{BTreeMap, HashMap};

use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::crypto::CryptoError;
use crate::crypto::batch_keys::BatchKeys;
use crate::crypto::envelope::{RecordIdentity, decode_content, encode_content};
use crate::crypto::keyring::{Keyring, KeyringError};
use crate::proto::store::RecordContent;
use crate::proto::v1::{IngestRecord, Layer, RecordsStored, event::Kind};
use crate::storage::{Located, Store, StoreError, keys};

/// Failures storing or reading records. None of them carries plaintext.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The store failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A data key could not be had.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// A stored envelope failed to decrypt or decode.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// What became of one record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Newly stored in `hot`.
    Stored,
    /// Already stored with identical content (a redelivery): nothing written.
    Duplicate,
    /// Already stored with different content: must be dead-lettered.
    Conflict,
}

/// Stores a batch of validated records atomically: every new record, its
/// index entry and one `RecordsStored` event per tenant go into a single
/// write batch. The batch is visible at once but durable only after the
/// next [`Store::sync`], which the caller must await before acknowledging
/// (this lets the consumer overlap one batch's fsync with the next batch's
/// work). Returns one outcome per input, in order.
pub async fn store_batch(
    store: &Store,
    keyring: &Keyring,
    mut records: Vec<IngestRecord>,
    now_ms: i64,
) -> Result<Vec<Outcome>, RecordError> {
    let payload_lengths: Vec<u64> = records.iter().map(|r| r.payload.len() as u64).collect();
    // The content moves out of each record into its (zeroizing) encoding.
    let contents: Vec<_> = records
        .iter_mut()
        .map(|r| {
            encode_content(&RecordContent {
                payload: std::mem::take(&mut r.payload),
                attributes: std::mem::take(&mut r.attributes),
                observed_at_unix_ms: r.observed_at_unix_ms,
            })
        })
        .collect();
    let record_keys: Vec<Vec<u8>> = records.iter().map(|r| keys::record_key(&r.tenant_id, &r.record_id)).collect();
    let existing = store.find_records(&record_keys)?;

    let mut outcomes = Vec::with_capacity(records.len());
    let mut first_in_batch: HashMap<&[u8], usize> = HashMap::new();
    for (i, record) in records.iter().enumerate() {
        let earlier_content = match (&existing[i], first_in_batch.get(record_keys[i].as_slice())) {
            (Some(located), _) => Some(stored_content(keyring, record, located).await?),
            (None, Some(&j)) => Some(Some(contents[j].clone())),
            (None, None) => None,
        };
        outcomes.push(match earlier_content {
            None => {
                first_in_batch.insert(&record_keys[i], i);
                Outcome::Stored
            }
            Some(Some(earlier)) if bool::from(earlier.as_slice().ct_eq(contents[i].as_slice())) => Outcome::Duplicate,
            Some(_) => Outcome::Conflict,
        });
    }

    let mut per_tenant: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        if *outcome == Outcome::Stored {
            per_tenant.entry(&records[i].tenant_id).or_default().push(i);
        }
    }
    if per_tenant.is_empty() {
        return Ok(outcomes);
    }
    let mut txn = store.transaction();
    let wanted = per_tenant.iter().map(|(t, i)| ((*t).to_owned(), i.len() as u64)).collect();
    let mut keys = BatchKeys::new(keyring, Layer::Hot, now_ms, wanted);
    for (tenant, indexes) in &per_tenant {
        let mut bytes = 0u64;
        for &i in indexes {
            let identity = RecordIdentity { tenant, record_id: &records[i].record_id, layer: Layer::Hot };
            let lease = keys.next(tenant).await?;
            let envelope = identity.seal(&lease.id, &lease.key, &contents[i], now_ms);
            txn.put_record(Layer::Hot, &record_keys[i], &envelope);
            txn.put_index(&keys::index_key(now_ms, &record_keys[i]));
            bytes += payload_lengths[i];
        }
        txn.event(tenant, Kind::RecordsStored(RecordsStored { count: indexes.len() as u32, bytes }));
    }
    txn.commit_unsynced(now_ms)?;
    Ok(outcomes)
}

/// The encoded content of a stored record, or `None` if it fails its
/// integrity check (a corrupt record is never "the same" as a new one).
async fn stored_content(
    keyring: &Keyring,
    record: &IngestRecord,
    located: &Located,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, RecordError> {
    let key = keyring.key(&located.record.data_key_id).await?;
    let identity = RecordIdentity { tenant: &record.tenant_id, record_id: &record.record_id, layer: located.layer };
    match identity.open(&key, &located.record) {
        Ok(content) => Ok(Some(content)),
        Err(CryptoError::Integrity { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads and decrypts one record from `hot` or `sealed`; `None` if unknown.
pub async fn read(
    store: &Store,
    keyring: &Keyring,
    tenant: &str,
    record_id: &str,
) -> Result<Option<(Layer, RecordContent)>, RecordError> {
    let Some(located) = store.find_record(&keys::record_key(tenant, record_id))? else {
        return Ok(None);
    };
    let key = keyring.key(&located.record.data_key_id).await?;
    let identity = RecordIdentity { tenant, record_id, layer: located.layer };
    let content = identity.open(&key, &located.record)?;
    Ok(Some((located.layer, decode_content(&content)?)))
}
