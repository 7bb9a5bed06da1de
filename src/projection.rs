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
        Kind::DataKeyCreated(_)
        | Kind::KeyHealth(_)
        | Kind::KeyRolled(_)
        | Kind::EncryptionEnabled(_)
        | Kind::EncryptionDisabled(_)
        | Kind::TenantLockedDown(_)
        | Kind::TenantRestored(_)
        | Kind::RewrapProgress(_) => {}
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
