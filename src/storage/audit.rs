//! The key-use audit in the store: entries recorded by [`Store::audit`]
//! wait in memory and are appended, as `KeyUsed` events, by the shard's
//! next commit (the audit flush commits them when nothing else does, see
//! [`crate::audit::flush`]), so recording never waits for a disk.
//! Each is also indexed in `audit` by tenant and time for
//! `GET /v1/tenants/{t}/audit`.

use crate::telemetry::happenings::{AuditEntriesDropped, Emit};
use prost::Message;

use super::listing::{Scanned, TimeRange};
use super::schema::{CF_AUDIT, decode};
use super::{Store, StoreError, keys};
use crate::proto::v1::KeyUsed;

/// Most entries waiting for a commit. Past it (only when commits keep
/// failing) the oldest are dropped, counted and logged, so a broken disk
/// cannot also exhaust memory.
pub(super) const MAX_PENDING: usize = 100_000;

/// Which of a tenant's audit entries a page covers: recorded in
/// `[from_ms, to_ms)`, after the cursor (time, sequence).
pub type AuditRange = TimeRange<u64>;

/// One entry of a tenant's audit.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// The `KeyUsed` event's sequence in the shard's log.
    pub sequence: u64,
    /// When it was appended (Unix ms).
    pub time_ms: i64,
    /// What was done.
    pub used: KeyUsed,
}

impl Store {
    /// Records a root-key call of `tenant`, to be appended with the next commit.
    pub fn audit(&self, tenant: &str, used: KeyUsed) {
        let mut pending = self.pending_audit.lock().expect("audit lock");
        if pending.len() >= MAX_PENDING {
            pending.drain(..1);
            AuditEntriesDropped { entries: 1 }.emit();
        }
        pending.push((tenant.to_owned(), used));
    }

    /// Whether entries wait for a commit.
    pub fn audit_pending(&self) -> bool {
        !self.pending_audit.lock().expect("audit lock").is_empty()
    }

    /// Takes the entries waiting for a commit (the writer appends them).
    pub(super) fn take_pending_audit(&self) -> Vec<(String, KeyUsed)> {
        std::mem::take(&mut *self.pending_audit.lock().expect("audit lock"))
    }

    /// Puts back entries taken for a commit that failed, before any
    /// recorded since, so they are appended in the order they happened.
    pub(super) fn requeue_audit(&self, mut entries: Vec<(String, KeyUsed)>) {
        let mut pending = self.pending_audit.lock().expect("audit lock");
        entries.append(&mut pending);
        let excess = entries.len().saturating_sub(MAX_PENDING);
        if excess > 0 {
            entries.drain(..excess);
            AuditEntriesDropped { entries: excess as u64 }.emit();
        }
        *pending = entries;
    }

    /// Up to `limit` of `tenant`'s audit entries in `range`, oldest first.
    pub fn audit_entries(&self, tenant: &str, range: &AuditRange, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let snapshot = self.db.snapshot();
        let range = range.in_key_bytes(|sequence| sequence.to_be_bytes().to_vec());
        let page = self.scan_tenant_page(&snapshot, CF_AUDIT, tenant, &range, limit)?;
        page.into_iter()
            .map(|Scanned { time_ms, tie_break, value }| {
                let sequence = <[u8; 8]>::try_from(tie_break.as_slice()).map(u64::from_be_bytes).map_err(|_| {
                    StoreError::Corrupt { cf: CF_AUDIT, what: "audit key", reason: "no sequence".into() }
                })?;
                Ok(AuditEntry { sequence, time_ms, used: decode(CF_AUDIT, "audit entry", &value)? })
            })
            .collect()
    }

    /// Writes the index entry of a `KeyUsed` event appended at `sequence`.
    pub(super) fn index_audit(
        &self,
        batch: &mut rocksdb::WriteBatch,
        tenant: &str,
        time_ms: i64,
        sequence: u64,
        used: &KeyUsed,
    ) {
        let key = keys::tenant_time_key(tenant, time_ms, &sequence.to_be_bytes());
        batch.put_cf(self.cf(CF_AUDIT), key, used.encode_to_vec());
    }
}
