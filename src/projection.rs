//! The tenant read model: a pure fold of the event log. The store applies
//! each event as it commits it (in the same write batch as the event and the
//! checkpoint), so the projection is exactly as current as the log.

use crate::proto::store::TenantProjection;
use crate::proto::v1::event::Kind;

/// Folds one event into a tenant's projection.
pub fn apply(projection: &mut TenantProjection, event: &Kind) {
    match event {
        Kind::RecordsStored(stored) => projection.hot_records += u64::from(stored.count),
        Kind::RecordsSealed(sealed) => {
            let count = u64::from(sealed.count);
            projection.hot_records = projection.hot_records.saturating_sub(count);
            projection.sealed_records += count;
        }
        Kind::EncryptionEnabled(enabled) => {
            projection.key_uri.clone_from(&enabled.key_uri);
            projection.key_version.clone_from(&enabled.key_version);
            projection.rewrap_pending = true;
        }
        Kind::EncryptionDisabled(_) => {
            projection.key_uri.clear();
            projection.key_version.clear();
            projection.rewrap_pending = false;
        }
        Kind::RewrapProgress(progress) => {
            if progress.rewrapped == progress.total {
                projection.rewrap_pending = false;
            }
        }
        Kind::DataKeyCreated(_)
        | Kind::KeyHealth(_)
        | Kind::KeyRolled(_)
        | Kind::TenantLockedDown(_)
        | Kind::TenantRestored(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{RecordsSealed, RecordsStored};

    #[test]
    fn stored_then_sealed_moves_counts() {
        let mut p = TenantProjection::default();
        apply(&mut p, &Kind::RecordsStored(RecordsStored { count: 5, bytes: 50 }));
        apply(
            &mut p,
            &Kind::RecordsSealed(RecordsSealed {
                count: 3,
                oldest_ingested_at_unix_ms: 0,
            }),
        );
        assert_eq!((p.hot_records, p.sealed_records), (2, 3));
    }
}

#[cfg(test)]
mod encryption_tests {
    use super::*;
    use crate::proto::v1::{EncryptionDisabled, EncryptionEnabled, RewrapProgress};

    #[test]
    fn enabling_sets_the_key_until_disabled_and_rewrap_completion_clears_pending() {
        let mut p = TenantProjection::default();
        apply(&mut p, &Kind::EncryptionEnabled(EncryptionEnabled { key_uri: "u".into(), key_version: "v1".into() }));
        assert_eq!((p.key_uri.as_str(), p.key_version.as_str(), p.rewrap_pending), ("u", "v1", true));
        apply(&mut p, &Kind::RewrapProgress(RewrapProgress { rewrapped: 1, total: 2, target: None }));
        assert!(p.rewrap_pending);
        apply(&mut p, &Kind::RewrapProgress(RewrapProgress { rewrapped: 2, total: 2, target: None }));
        assert!(!p.rewrap_pending);
        apply(&mut p, &Kind::EncryptionDisabled(EncryptionDisabled { key_uri: "u".into() }));
        assert!(p.key_uri.is_empty() && p.key_version.is_empty());
    }
}
