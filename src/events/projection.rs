//! The tenant read model: a pure fold of the event log. The store applies
//! each event as it commits it (in the same write batch as the event and the
//! checkpoint), so the projection is exactly as current as the log, and
//! [`replay`] from sequence 1 rebuilds the same state.
//!
//! The lockdown states follow DESIGN.md:
//! `active --KeyHealth(unavailable)--> degraded(since)`,
//! `degraded --KeyHealth(healthy)--> active`,
//! `degraded --TenantLockedDown--> locked_down`,
//! `locked_down --TenantRestored--> active`. Time-driven transitions are
//! explicit events, so the fold never looks at a clock.

use std::collections::BTreeMap;

use crate::proto::store::{TenantProjection, TenantState};
use crate::proto::v1::key_health::Status;
use crate::proto::v1::root_key_ref::Root;
use crate::proto::v1::{Event, Layer, event::Kind};

/// Folds an event log from the start into every tenant's projection.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> BTreeMap<String, TenantProjection> {
    let mut tenants: BTreeMap<String, TenantProjection> = BTreeMap::new();
    for event in events {
        if let Some(kind) = &event.kind {
            apply(tenants.entry(event.tenant_id.clone()).or_default(), kind, event.time_unix_ms);
        }
    }
    tenants
}

/// Folds one event (appended at `at_ms`) into a tenant's projection.
pub fn apply(projection: &mut TenantProjection, event: &Kind, at_ms: i64) {
    match event {
        Kind::RecordsStored(stored) => projection.hot_records += u64::from(stored.count),
        Kind::RecordDeleted(deleted) => match deleted.layer() {
            Layer::Sealed => projection.sealed_records = projection.sealed_records.saturating_sub(1),
            Layer::Hot | Layer::Unspecified => projection.hot_records = projection.hot_records.saturating_sub(1),
        },
        Kind::RecordsExpired(expired) => {
            projection.hot_records = projection.hot_records.saturating_sub(u64::from(expired.hot));
            projection.sealed_records = projection.sealed_records.saturating_sub(u64::from(expired.sealed));
        }
        Kind::RetentionSet(set) => projection.retention_max_age_ms = set.max_age_ms,
        Kind::RecordsSealed(sealed) => {
            let count = u64::from(sealed.count);
            projection.hot_records = projection.hot_records.saturating_sub(count);
            projection.sealed_records += count;
        }
        Kind::EncryptionEnabled(enabled) => {
            projection.key_uri.clone_from(&enabled.key_uri);
            projection.key_version.clone_from(&enabled.key_version);
            projection.rewrap_pending = true;
            projection.key_expires_at_unix_ms = 0;
        }
        Kind::EncryptionDisabled(_) => {
            projection.key_uri.clear();
            projection.key_version.clear();
            projection.rewrap_pending = false;
            projection.key_expires_at_unix_ms = 0;
            // Tenants on the managed key are never degraded or locked.
            set_state(projection, TenantState::Active, at_ms);
            projection.health_reason.clear();
            projection.degraded_since_unix_ms = 0;
        }
        Kind::KeyHealth(health) => match (health.status(), projection.state()) {
            (Status::Unavailable, TenantState::Active) => {
                // The grace starts when the failing probe began (carried by
                // the event, so replay agrees), never after the event.
                let since = match health.observed_at_unix_ms {
                    0 => at_ms,
                    observed => observed.min(at_ms),
                };
                set_state(projection, TenantState::Degraded, since);
                projection.degraded_since_unix_ms = since;
                projection.health_reason.clone_from(&health.reason);
            }
            (Status::Unavailable, TenantState::Degraded | TenantState::LockedDown) => {
                projection.health_reason.clone_from(&health.reason);
            }
            (Status::Healthy | Status::Unspecified, TenantState::Degraded) => {
                set_state(projection, TenantState::Active, at_ms);
                projection.health_reason.clear();
                projection.degraded_since_unix_ms = 0;
            }
            // A locked-down tenant waits for TenantRestored (appended with
            // this event); an erased one has no key left to be healthy.
            (Status::Healthy | Status::Unspecified, TenantState::Active | TenantState::LockedDown)
            | (_, TenantState::Erased) => {}
        },
        Kind::TenantLockedDown(locked) => {
            set_state(projection, TenantState::LockedDown, at_ms);
            projection.health_reason.clone_from(&locked.reason);
        }
        Kind::TenantRestored(_) => {
            set_state(projection, TenantState::Active, at_ms);
            projection.health_reason.clear();
            projection.degraded_since_unix_ms = 0;
        }
        Kind::RewrapProgress(progress) => {
            // Finished, and on the root the tenant has now: a rewrap to a
            // version since rolled away from leaves the work pending.
            let current = match progress.target.as_ref().and_then(|t| t.root.as_ref()) {
                Some(Root::VaultKeyId(kid)) => kid.rsplit('/').next() == Some(projection.key_version.as_str()),
                Some(Root::ManagedVersion(_)) | None => projection.key_uri.is_empty(),
            };
            if progress.rewrapped == progress.total && current {
                projection.rewrap_pending = false;
            }
        }
        Kind::KeyRolled(rolled) => {
            projection.key_version.clone_from(&rolled.to_version);
            projection.rewrap_pending = true;
            // A warning stands for the version it was about.
            projection.key_expires_at_unix_ms = 0;
        }
        Kind::KeyExpiring(expiring) => {
            projection.expiry_warned_version.clone_from(&expiring.key_version);
            projection.key_expires_at_unix_ms = expiring.expires_at_unix_ms;
        }
        Kind::TenantErased(_) => {
            // Nothing of the tenant is left to count, use or protect; what
            // stays is that it was erased (and its retention, which no
            // longer matters).
            let retention_max_age_ms = projection.retention_max_age_ms;
            *projection = TenantProjection { retention_max_age_ms, erasure_pending: true, ..Default::default() };
            set_state(projection, TenantState::Erased, at_ms);
        }
        Kind::TenantErasureCompleted(_) => projection.erasure_pending = false,
        // Data keys, key uses and integrity findings are not part of the tenant's state.
        Kind::DataKeyCreated(_)
        | Kind::RecordsReencrypted(_)
        | Kind::DataKeyRetired(_)
        | Kind::CorruptionDetected(_)
        | Kind::KeyUsed(_) => {}
    }
}

fn set_state(projection: &mut TenantProjection, state: TenantState, at_ms: i64) {
    if projection.state() != state {
        projection.set_state(state);
        projection.state_since_unix_ms = at_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{RecordDeleted, RecordsSealed, RecordsStored};

    #[test]
    fn stored_then_sealed_moves_counts() {
        let mut p = TenantProjection::default();
        apply(&mut p, &Kind::RecordsStored(RecordsStored { count: 5, bytes: 50 }), 1);
        apply(&mut p, &Kind::RecordsSealed(RecordsSealed { count: 3, oldest_ingested_at_unix_ms: 0 }), 2);
        assert_eq!((p.hot_records, p.sealed_records), (2, 3));
    }

    #[test]
    fn a_deletion_counts_in_the_layer_it_left() {
        let mut p = TenantProjection { hot_records: 2, sealed_records: 3, ..TenantProjection::default() };
        let deleted = |layer: Layer| Kind::RecordDeleted(RecordDeleted { record_id: "r".into(), layer: layer as i32 });
        apply(&mut p, &deleted(Layer::Sealed), 1);
        apply(&mut p, &deleted(Layer::Hot), 2);
        assert_eq!((p.hot_records, p.sealed_records), (1, 2));
    }
}

#[cfg(test)]
mod encryption_tests {
    use super::*;
    use crate::proto::v1::{EncryptionDisabled, EncryptionEnabled, KeyRolled, RewrapProgress, RootKeyRef};

    #[test]
    fn enabling_sets_the_key_until_disabled_and_rewrap_completion_clears_pending() {
        let mut p = TenantProjection::default();
        apply(&mut p, &Kind::EncryptionEnabled(EncryptionEnabled { key_uri: "u".into(), key_version: "v1".into() }), 1);
        assert_eq!((p.key_uri.as_str(), p.key_version.as_str(), p.rewrap_pending), ("u", "v1", true));
        let to =
            |version: &str| Some(RootKeyRef { root: Some(Root::VaultKeyId(format!("https://v/keys/k/{version}"))) });
        apply(&mut p, &Kind::RewrapProgress(RewrapProgress { rewrapped: 1, total: 2, target: to("v1") }), 2);
        assert!(p.rewrap_pending);
        apply(&mut p, &Kind::KeyRolled(KeyRolled { from_version: "v1".into(), to_version: "v2".into() }), 3);
        apply(&mut p, &Kind::RewrapProgress(RewrapProgress { rewrapped: 2, total: 2, target: to("v1") }), 3);
        assert!(p.rewrap_pending, "a rewrap to the rolled-away version is not the end");
        apply(&mut p, &Kind::RewrapProgress(RewrapProgress { rewrapped: 2, total: 2, target: to("v2") }), 4);
        assert!(!p.rewrap_pending);
        assert_eq!(p.key_version, "v2");
        apply(&mut p, &Kind::EncryptionDisabled(EncryptionDisabled { key_uri: "u".into() }), 4);
        assert!(p.key_uri.is_empty() && p.key_version.is_empty());
    }
}

#[cfg(test)]
mod lockdown_tests {
    use super::*;
    use crate::proto::v1::{KeyHealth, TenantLockedDown, TenantRestored};

    fn health(status: Status, reason: &str) -> Kind {
        Kind::KeyHealth(KeyHealth { status: status as i32, reason: reason.into(), ..Default::default() })
    }

    #[test]
    fn the_grace_starts_when_the_failing_probe_began() {
        let mut p = TenantProjection::default();
        let observed = |at| {
            Kind::KeyHealth(KeyHealth {
                status: Status::Unavailable as i32,
                reason: "vault_unreachable".into(),
                key_version: String::new(),
                observed_at_unix_ms: at,
            })
        };
        apply(&mut p, &observed(1_000), 61_000);
        assert_eq!((p.state(), p.state_since_unix_ms, p.degraded_since_unix_ms), (TenantState::Degraded, 1_000, 1_000));
        apply(&mut p, &observed(70_000), 130_000);
        assert_eq!(p.degraded_since_unix_ms, 1_000, "a later failure does not restart the grace");
        let mut q = TenantProjection::default();
        apply(&mut q, &observed(9_000), 5_000);
        assert_eq!(q.degraded_since_unix_ms, 5_000, "never later than the event itself");
    }

    #[test]
    fn given_events_the_states_follow_the_design_diagram() {
        let mut p = TenantProjection::default();
        apply(&mut p, &health(Status::Unavailable, "key_disabled"), 100);
        assert_eq!((p.state(), p.state_since_unix_ms, p.degraded_since_unix_ms), (TenantState::Degraded, 100, 100));
        apply(&mut p, &health(Status::Unavailable, "key_not_found"), 200);
        assert_eq!(
            (p.degraded_since_unix_ms, p.health_reason.as_str()),
            (100, "key_not_found"),
            "the grace does not restart"
        );
        apply(&mut p, &health(Status::Healthy, ""), 300);
        assert_eq!((p.state(), p.degraded_since_unix_ms), (TenantState::Active, 0));

        apply(&mut p, &health(Status::Unavailable, "key_expired"), 400);
        apply(
            &mut p,
            &Kind::TenantLockedDown(TenantLockedDown { reason: "key_expired".into(), degraded_since_unix_ms: 400 }),
            500,
        );
        assert_eq!((p.state(), p.state_since_unix_ms), (TenantState::LockedDown, 500));
        apply(&mut p, &health(Status::Healthy, ""), 600);
        assert_eq!(p.state(), TenantState::LockedDown, "only TenantRestored unlocks");
        apply(&mut p, &Kind::TenantRestored(TenantRestored { locked_since_unix_ms: 500 }), 600);
        assert_eq!((p.state(), p.health_reason.as_str()), (TenantState::Active, ""));
    }
}
