//! The seal sweep: records whose residence time exceeds the seal age move
//! from `hot` to `sealed`, re-encrypted under the tenant's sealed data key.
//! Each batch is one atomic write: put sealed, delete hot, delete the index
//! entry and append `RecordsSealed` per tenant, so a crash mid-sweep leaves
//! every record in exactly one layer. A batch's fsync runs while the next
//! one is read and re-encrypted; the sweep returns once all are durable.
//!
//! Which tenants seal is decided first, from the projections alone
//! ([`plan`]): a tenant that is not active is held back without a vault
//! call, because the prober already knows its key is failing.
//!
//! One tenant's trouble never stops sealing for the others: when a tenant's
//! sealed data key cannot be had (its vault throttles, fails or refuses the
//! wrap), that tenant is held back for the rest of the sweep — its records
//! stay in `hot`, untouched — with a reason in the summary and the metrics,
//! and everyone else seals. Only a store failure ends the sweep.

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
use crate::keyvault::KeyProblem;
use crate::proto::store::{TenantProjection, TenantState};
use crate::proto::v1::{KeyPurpose, Layer, RecordsSealed, event::Kind};
use crate::records::RecordError;
use crate::storage::pager::{IngestedBefore, Pager};
use crate::storage::{IndexEntry, Scope, Scoped, StepCommits, Store, keys};
use crate::telemetry::happenings::{Emit, TenantHeldBack};

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

/// The tenants a sweep holds back, decided from their projections alone:
/// every tenant that is not active (its key failing, or locked down). Their
/// records stay in `hot` and seal once the tenant is restored.
pub fn plan(tenants: &[(String, TenantProjection)]) -> BTreeSet<String> {
    tenants.iter().filter(|(_, p)| p.state() != TenantState::Active).map(|(tenant, _)| tenant.clone()).collect()
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
    /// Tenants held back during the sweep because their sealed data key
    /// could not be had, each with the reason; their records are counted in
    /// `held_back`.
    pub held_back_reasons: BTreeMap<String, HoldReason>,
}

/// Why a tenant was held back mid-sweep: its sealed data key could not be
/// had. The names are stable: the summary and `keyseal_seal_held_back_total`
/// carry them. They name the cause, never key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// The vault answered 429 through every retry.
    VaultThrottled,
    /// The vault could not be reached.
    VaultUnreachable,
    /// The vault answered with an error of its own.
    VaultError,
    /// keyseal may not wrap with the key.
    MissingPermission,
    /// The key does not exist.
    KeyNotFound,
    /// The key is disabled.
    KeyDisabled,
    /// The key's `exp` has passed.
    KeyExpired,
    /// The key's `nbf` is in the future.
    KeyNotYetActive,
    /// The stored key URI names no vault keyseal may call.
    InvalidKeyUri,
    /// The worker has no Key Vault client.
    VaultNotConfigured,
    /// The data key itself could not be read or unwrapped.
    DataKeyUnavailable,
}

impl HoldReason {
    /// Every reason, for pre-registering the metric's series.
    pub const ALL: [Self; 11] = [
        Self::VaultThrottled,
        Self::VaultUnreachable,
        Self::VaultError,
        Self::MissingPermission,
        Self::KeyNotFound,
        Self::KeyDisabled,
        Self::KeyExpired,
        Self::KeyNotYetActive,
        Self::InvalidKeyUri,
        Self::VaultNotConfigured,
        Self::DataKeyUnavailable,
    ];

    /// The reason's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VaultThrottled => "vault_throttled",
            Self::VaultUnreachable => "vault_unreachable",
            Self::VaultError => "vault_error",
            Self::MissingPermission => "missing_permission",
            Self::KeyNotFound => "key_not_found",
            Self::KeyDisabled => "key_disabled",
            Self::KeyExpired => "key_expired",
            Self::KeyNotYetActive => "key_not_yet_active",
            Self::InvalidKeyUri => "invalid_key_uri",
            Self::VaultNotConfigured => "vault_not_configured",
            Self::DataKeyUnavailable => "data_key_unavailable",
        }
    }

    /// Why `error` keeps a tenant's sealed data key out of reach, or `None`
    /// for a store failure, which ends the sweep (nothing can be sealed).
    pub fn of(error: &KeyringError) -> Option<Self> {
        let reason = match error {
            KeyringError::Store(_) => return None,
            KeyringError::Vault(vault) => match vault.problem() {
                KeyProblem::VaultThrottled => Self::VaultThrottled,
                KeyProblem::VaultUnreachable => Self::VaultUnreachable,
                KeyProblem::VaultError => Self::VaultError,
                KeyProblem::KeyNotFound => Self::KeyNotFound,
                KeyProblem::KeyDisabled => Self::KeyDisabled,
                KeyProblem::KeyExpired => Self::KeyExpired,
                KeyProblem::KeyNotYetActive => Self::KeyNotYetActive,
                KeyProblem::MissingPermission => Self::MissingPermission,
            },
            KeyringError::KeyUri(_) => Self::InvalidKeyUri,
            KeyringError::VaultNotConfigured(_) => Self::VaultNotConfigured,
            KeyringError::Crypto(_) | KeyringError::UnknownDataKey => Self::DataKeyUnavailable,
        };
        Some(reason)
    }
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
    let mut pages = Pager::new(store, IngestedBefore { cutoff_ms: cutoff }, SEAL_BATCH);
    let mut steps = StepCommits::new(store);
    while let Some(mut due) = pages.next_page()? {
        let held = &summary.held_back_reasons;
        due.retain(|entry| match keys::split_record_key(&entry.record_key) {
            Some((tenant, _)) if hold.contains(tenant) || held.contains_key(tenant) => {
                *summary.held_back.entry(tenant.to_owned()).or_default() += 1;
                false
            }
            _ => true,
        });
        let _moving = store.moving().await;
        seal_batch(store, keyring, &mut steps, &due, clock.now_ms(), &mut summary).await?;
    }
    steps.durable().await?;
    Ok(summary)
}

/// Seals one page of due entries in one atomic write, committed while the
/// previous page's fsync may still run ([`StepCommits`]).
async fn seal_batch<'s>(
    store: &'s Store,
    keyring: &Keyring,
    steps: &mut StepCommits<'s>,
    due: &[IndexEntry],
    now_ms: i64,
    summary: &mut SealSummary,
) -> Result<(), RecordError> {
    if due.is_empty() {
        return Ok(());
    }
    let record_keys: Vec<&[u8]> = due.iter().map(|entry| entry.record_key.as_slice()).collect();
    let found = store.find_records(&record_keys)?;
    let mut txn = store.transaction();
    let mut per_tenant: BTreeMap<&str, (u32, i64)> = BTreeMap::new();
    let mut hot_keys: HashMap<Vec<u8>, Arc<DataKey>> = HashMap::new();
    // Counted by borrowed name: one allocation per tenant, not per record.
    let mut wanted: HashMap<&str, u64> = HashMap::new();
    for entry in due {
        if let Some((tenant, _)) = keys::split_record_key(&entry.record_key) {
            *wanted.entry(tenant).or_default() += 1;
        }
    }
    let wanted = wanted.into_iter().map(|(tenant, count)| (tenant.to_owned(), count)).collect();
    let mut sealed_keys = BatchKeys::new(keyring, Layer::Sealed, now_ms, wanted);
    for (IndexEntry { index_key, ingested_at_ms: ingested_at, record_key }, located) in due.iter().zip(found) {
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
        // Held back earlier in this batch: left alone, with its index entry.
        if summary.held_back_reasons.contains_key(tenant) {
            *summary.held_back.entry(tenant.to_owned()).or_default() += 1;
            continue;
        }
        // Each data key is looked up once per batch, not once per record.
        let hot_key = match hot_keys.get(&located.record.data_key_id) {
            Some(key) => Ok(key.clone()),
            None => match keyring.key(&located.record.data_key_id, KeyPurpose::Seal).await {
                Ok(key) => {
                    hot_keys.insert(located.record.data_key_id.clone(), key.clone());
                    Ok(key)
                }
                // Hot keys are managed-rooted: no vault is involved, so the
                // failure concerns this record's key only.
                Err(e) => match e.scope() {
                    Scope::Store(e) => return Err(e.into()),
                    Scope::Contained(e) => Err(e),
                },
            },
        };
        let identity = RecordIdentity { tenant, record_id, layer: Layer::Hot };
        let Some(content) = hot_key.ok().and_then(|key| identity.open(&key, &located.record).ok()) else {
            // One damaged record must not stop sealing for everyone: it
            // stays in `hot`, untouched, for the scrub to report.
            error!(tenant, "a hot record failed its integrity check or lost its data key; left in hot for the scrub");
            *summary.unsealable.entry(tenant.to_owned()).or_default() += 1;
            continue;
        };
        let lease = match sealed_keys.next(tenant).await {
            Ok(lease) => lease,
            Err(e) => {
                let Some(reason) = HoldReason::of(&e) else {
                    return Err(e.into());
                };
                // The tenant's records already in the batch are whole (sealed
                // under a stored key); this one and the rest stay in hot with
                // their index entries until a later sweep.
                TenantHeldBack { tenant, reason: reason.as_str(), error: &e }.emit();
                summary.held_back_reasons.insert(tenant.to_owned(), reason);
                *summary.held_back.entry(tenant.to_owned()).or_default() += 1;
                continue;
            }
        };
        txn.delete_index(index_key);
        let sealed = RecordIdentity { tenant, record_id, layer: Layer::Sealed }.seal(
            &lease.id,
            &lease.key,
            &content,
            located.record.ingested_at_unix_ms,
        );
        txn.put_record(Layer::Sealed, record_key, &sealed);
        txn.delete_record(Layer::Hot, record_key);
        let entry = per_tenant.entry(tenant).or_insert((0, *ingested_at));
        entry.0 += 1;
        entry.1 = entry.1.min(*ingested_at);
    }
    for (tenant, (count, oldest)) in per_tenant {
        txn.event(tenant, Kind::RecordsSealed(RecordsSealed { count, oldest_ingested_at_unix_ms: oldest }));
        summary.sealed += u64::from(count);
        *summary.tenants.entry(tenant.to_owned()).or_default() += u64::from(count);
    }
    let new_keys = sealed_keys.finish(&mut txn);
    steps.commit(txn, now_ms).await?;
    new_keys.committed();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyvault::VaultError;

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
    fn every_failure_but_the_stores_holds_one_tenant_back_with_a_known_reason() {
        let store = KeyringError::Store(crate::storage::StoreError::Corrupt {
            cf: "deks",
            what: "data key",
            reason: "x".into(),
        });
        assert_eq!(HoldReason::of(&store), None);
        let forbidden = |code: &str| VaultError::Forbidden {
            refused: crate::keyvault::Refused::parse(code),
            message: String::new(),
        };
        let cases = [
            (KeyringError::Vault(VaultError::Throttled), "vault_throttled"),
            (KeyringError::Vault(VaultError::Unreachable("tls".into())), "vault_unreachable"),
            (
                KeyringError::Vault(VaultError::Service { status: 500, code: "x".into(), message: String::new() }),
                "vault_error",
            ),
            (KeyringError::Vault(forbidden("ForbiddenByPolicy")), "missing_permission"),
            (KeyringError::Vault(forbidden("KeyDisabled")), "key_disabled"),
            (KeyringError::Vault(VaultError::KeyNotFound), "key_not_found"),
            (KeyringError::VaultNotConfigured("none".into()), "vault_not_configured"),
            (KeyringError::UnknownDataKey, "data_key_unavailable"),
        ];
        for (error, name) in cases {
            let reason = HoldReason::of(&error).unwrap_or_else(|| panic!("{error} holds a tenant back"));
            assert_eq!(reason.as_str(), name, "{error}");
            assert!(HoldReason::ALL.contains(&reason));
            assert_eq!(serde_json::to_value(reason).unwrap(), name, "the summary says what the metric says");
        }
    }

    #[test]
    fn only_active_tenants_are_planned_to_seal() {
        let with_state = |tenant: &str, state: TenantState| {
            let mut projection = TenantProjection::default();
            projection.set_state(state);
            (tenant.to_owned(), projection)
        };
        let tenants = [
            with_state("active", TenantState::Active),
            with_state("degraded", TenantState::Degraded),
            with_state("locked", TenantState::LockedDown),
        ];
        let held: Vec<String> = plan(&tenants).into_iter().collect();
        assert_eq!(held, ["degraded", "locked"]);
    }

    #[test]
    fn seal_lag_counts_only_time_past_the_seal_age() {
        let seal_after = Duration::from_secs(3600);
        assert_eq!(seal_lag(5_000_000, seal_after, 5_000_000), Duration::ZERO, "not due yet");
        assert_eq!(seal_lag(3_600_000 + 1_500, seal_after, 0), Duration::from_millis(1_500));
    }
}
