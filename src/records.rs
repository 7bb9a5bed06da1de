//! Writing and reading records: the one place where producer content turns
//! into encrypted envelopes in `hot`, and envelopes (hot or sealed) turn
//! back into content.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use subtle::ConstantTimeEq;
use thiserror::Error;
use tracing::warn;

use crate::crypto::CryptoError;
use crate::crypto::batch_keys::BatchKeys;
use crate::crypto::envelope::{RecordIdentity, decode_content, encode_content};
use crate::crypto::keyring::{Keyring, KeyringError};
use crate::crypto::secret_bytes::SecretBytes;
use crate::error::ErrorCode;
use crate::proto::store::{RecordContent, RecordEntry, TenantState, Tombstone};
use crate::proto::v1::{IngestRecord, KeyPurpose, Layer, RecordDeleted, RecordsStored, event::Kind};
use crate::storage::{Located, Scope, Scoped, Store, StoreError, keys};

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
    /// Already stored, but the stored copy cannot be decrypted now (its data
    /// key cannot be had: the tenant's vault is down, the key is missing,
    /// or the tenant is locked down), so whether the content is the same
    /// cannot be told. Must be dead-lettered: one tenant's unreadable key
    /// never stalls ingestion for everyone.
    Unverifiable,
    /// Deleted, and its tombstone has not expired: must be dead-lettered,
    /// so a redelivery or a re-send does not bring it back.
    Deleted,
    /// Its tenant was erased: must be dead-lettered, nothing of it is kept.
    TenantErased,
}

/// Longest the dedupe check waits for a stored copy's data key. A healthy
/// vault answers in milliseconds; past this the redelivery is dead-lettered
/// (nothing is lost: the record is stored, the message rests in the
/// dead-letter queue) instead of holding up the whole batch.
pub const DEDUPE_KEY_DEADLINE: Duration = Duration::from_secs(3);

/// How long the dedupe check remembers that a tenant's stored copies could
/// not be decrypted, so the next batches do not wait on its vault again.
pub const UNREADABLE_MEMORY: Duration = Duration::from_secs(30);

/// Tenants whose sealed stored copies the dedupe check lately could not
/// decrypt, each until when (ms): kept across batches by the consumer, so a
/// redelivered backlog of a tenant whose vault hangs costs one
/// [`DEDUPE_KEY_DEADLINE`], not one per record or per batch.
#[derive(Debug, Default)]
pub struct UnreadableTenants(std::sync::Mutex<HashMap<String, i64>>);

impl UnreadableTenants {
    fn contains(&self, tenant: &str, now_ms: i64) -> bool {
        self.0.lock().expect("unreadable tenants lock").get(tenant).is_some_and(|until| *until > now_ms)
    }

    fn insert(&self, tenant: &str, now_ms: i64) {
        let until = now_ms.saturating_add(UNREADABLE_MEMORY.as_millis() as i64);
        let mut tenants = self.0.lock().expect("unreadable tenants lock");
        tenants.retain(|_, until| *until > now_ms);
        tenants.insert(tenant.to_owned(), until);
    }
}

/// Stores a batch of validated records atomically: every new record, its
/// index entry and one `RecordsStored` event per tenant go into a single
/// write batch. The batch is visible at once but durable only after the
/// next [`Store::sync`], which the caller must await before acknowledging
/// (this lets the consumer overlap one batch's fsync with the next batch's
/// work). Returns one outcome per input, in order. `unreadable` carries
/// what the dedupe check learnt about unreadable tenants from batch to batch.
pub async fn store_batch(
    store: &Store,
    keyring: &Keyring,
    mut records: Vec<IngestRecord>,
    unreadable: &UnreadableTenants,
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
    let tombstoned = store.tombstoned(&record_keys, now_ms)?;

    let mut outcomes = Vec::with_capacity(records.len());
    let mut first_in_batch: HashMap<&[u8], usize> = HashMap::new();
    let dedupe = Dedupe { store, keyring, unreadable, now_ms };
    // Looked up once per tenant of the batch, not per record.
    let mut erased: HashMap<&str, bool> = HashMap::new();
    for (i, record) in records.iter().enumerate() {
        let tenant = record.tenant_id.as_str();
        if *erased
            .entry(tenant)
            .or_insert_with(|| store.tenant(tenant).is_some_and(|p| p.state() == TenantState::Erased))
        {
            outcomes.push(Outcome::TenantErased);
            continue;
        }
        if existing[i].is_none() && tombstoned[i] {
            outcomes.push(Outcome::Deleted);
            continue;
        }
        let earlier = match (&existing[i], first_in_batch.get(record_keys[i].as_slice())) {
            (Some(located), _) => Some(dedupe.stored_copy(record, located).await?),
            (None, Some(&j)) => Some(Earlier::Content(contents[j].clone())),
            (None, None) => None,
        };
        outcomes.push(match earlier {
            None => {
                first_in_batch.insert(&record_keys[i], i);
                Outcome::Stored
            }
            Some(Earlier::Content(earlier)) if bool::from(earlier.ct_eq(&contents[i])) => Outcome::Duplicate,
            Some(Earlier::Unreadable) => Outcome::Unverifiable,
            Some(Earlier::Content(_) | Earlier::Corrupt) => Outcome::Conflict,
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
            let entry = RecordEntry {
                observed_at_unix_ms: Some(records[i].observed_at_unix_ms),
                size: Some(payload_lengths[i]),
            };
            txn.put_tenant_index(&keys::tenant_index_key(tenant, now_ms, &records[i].record_id), &entry);
            bytes += payload_lengths[i];
        }
        txn.event(tenant, Kind::RecordsStored(RecordsStored { count: indexes.len() as u32, bytes }));
    }
    let new_keys = keys.finish(&mut txn);
    txn.commit_unsynced(now_ms)?;
    new_keys.committed();
    Ok(outcomes)
}

/// What the dedupe check learns from the stored copy of a record.
enum Earlier {
    /// Its encoded content.
    Content(SecretBytes),
    /// It fails its integrity check: a corrupt record is never "the same"
    /// as a new one.
    Corrupt,
    /// It cannot be decrypted now.
    Unreadable,
}

/// What the dedupe check of one batch reads stored copies with.
struct Dedupe<'a> {
    store: &'a Store,
    keyring: &'a Keyring,
    unreadable: &'a UnreadableTenants,
    now_ms: i64,
}

impl Dedupe<'_> {
    /// Reads the stored copy of `record`. Only a failure of the store
    /// itself is an error (it pauses consumption); a data key that cannot
    /// be had, in time or at all, makes the copy [`Earlier::Unreadable`],
    /// as does a locked-down tenant (every read of its data is refused). A
    /// sealed copy of a tenant whose key is failing (degraded, or unreadable
    /// lately) is unreadable at once unless its data key is in memory: the
    /// vault is not asked again while the batch waits.
    async fn stored_copy(&self, record: &IngestRecord, located: &Located) -> Result<Earlier, StoreError> {
        let tenant = record.tenant_id.as_str();
        let key_id = &located.record.data_key_id;
        let state = self.store.tenant(tenant).map(|p| p.state());
        if state == Some(TenantState::LockedDown) {
            return Ok(Earlier::Unreadable);
        }
        let failing = state == Some(TenantState::Degraded) || self.unreadable.contains(tenant, self.now_ms);
        let key = match self.keyring.cached_key(key_id) {
            Some(key) => Ok(key),
            None if located.layer == Layer::Sealed && failing => return Ok(Earlier::Unreadable),
            None => {
                match tokio::time::timeout(DEDUPE_KEY_DEADLINE, self.keyring.key(key_id, KeyPurpose::Store)).await {
                    Ok(Ok(key)) => Ok(key),
                    Ok(Err(e)) => match e.scope() {
                        Scope::Store(e) => return Err(e),
                        Scope::Contained(e) => Err(e.to_string()),
                    },
                    Err(_) => Err(format!("no data key within {DEDUPE_KEY_DEADLINE:?}")),
                }
            }
        };
        match key {
            Ok(key) => {
                let identity = RecordIdentity { tenant, record_id: &record.record_id, layer: located.layer };
                Ok(match identity.open(&key, &located.record) {
                    Ok(content) => Earlier::Content(content),
                    Err(CryptoError::Integrity { .. }) => Earlier::Corrupt,
                    Err(_) => Earlier::Unreadable,
                })
            }
            Err(why) => {
                warn!(tenant, error = %why, "stored copy of a redelivered record cannot be decrypted");
                self.unreadable.insert(tenant, self.now_ms);
                Ok(Earlier::Unreadable)
            }
        }
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
    let key = keyring.key(&located.record.data_key_id, KeyPurpose::Read).await?;
    let identity = RecordIdentity { tenant, record_id, layer: located.layer };
    let content = identity.open(&key, &located.record)?;
    Ok(Some((located.layer, decode_content(&content)?)))
}

/// Deletes one record: its value, its index entries and, in the same
/// durable batch, a `RecordDeleted` event and a tombstone that refuses a
/// re-send of its id until `tombstone_ttl` has passed. Returns the layer it
/// was in, or `None` when there is no such record. The data key it used
/// stays while other records use it; the bytes leave the files on disk at
/// the next compactions (tenant erasure is what proves they are gone).
pub async fn delete(
    store: &Store,
    tenant: &str,
    record_id: &str,
    now_ms: i64,
    tombstone_ttl: Duration,
) -> Result<Option<Layer>, StoreError> {
    let _moving = store.moving().await;
    let record_key = keys::record_key(tenant, record_id);
    let Some(located) = store.find_record(&record_key)? else {
        return Ok(None);
    };
    let ingested_at = located.record.ingested_at_unix_ms;
    let mut txn = store.transaction();
    txn.delete_record(located.layer, &record_key);
    if located.layer == Layer::Hot {
        txn.delete_index(&keys::index_key(ingested_at, &record_key));
    }
    txn.delete_tenant_index(&keys::tenant_index_key(tenant, ingested_at, record_id));
    let ttl_ms = i64::try_from(tombstone_ttl.as_millis()).unwrap_or(i64::MAX);
    let tombstone = Tombstone { deleted_at_unix_ms: now_ms, expires_at_unix_ms: now_ms.saturating_add(ttl_ms) };
    txn.put_tombstone(&record_key, &tombstone);
    let deleted = RecordDeleted { record_id: record_id.to_owned(), layer: located.layer as i32 };
    txn.event(tenant, Kind::RecordDeleted(deleted));
    txn.commit_durable(now_ms).await?;
    Ok(Some(located.layer))
}

impl ErrorCode for RecordError {
    fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Keyring(e) => e.code(),
            Self::Crypto(e) => e.code(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Keyring(e) => e.is_retryable(),
            Self::Crypto(e) => e.is_retryable(),
        }
    }
}

impl Scoped for RecordError {
    fn scope(self) -> Scope<Self> {
        match self {
            Self::Store(e) | Self::Keyring(KeyringError::Store(e)) => Scope::Store(e),
            other => Scope::Contained(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::keyvault::VaultError;

    #[test]
    fn codes_pass_through_wrappers_and_only_the_store_escapes_containment() {
        let disk = || StoreError::SyncTask("gone".into());
        let wrapped = RecordError::Keyring(KeyringError::Store(disk()));
        assert_eq!((wrapped.code(), wrapped.is_retryable()), ("storage_unavailable", true));
        assert!(matches!(wrapped.scope(), Scope::Store(_)), "a store failure under the keyring is still the store's");
        let vault = RecordError::Keyring(KeyringError::Vault(VaultError::KeyNotFound));
        assert_eq!(vault.code(), "key_not_found");
        assert!(matches!(vault.scope(), Scope::Contained(RecordError::Keyring(KeyringError::Vault(_)))));
        let corrupt = StoreError::Corrupt { cf: "hot", what: "record", reason: String::new() };
        assert!(!corrupt.is_retryable());
    }
}
