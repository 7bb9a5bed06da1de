//! Property: the projections the store keeps incrementally (event by event,
//! across transactions of any size and across reopenings) always equal the
//! projections replayed from sequence 1.

use proptest::prelude::*;

use keyseal::events::projection;
use keyseal::proto::v1::key_health::Status;
use keyseal::proto::v1::{
    EncryptionDisabled, EncryptionEnabled, KeyHealth, RecordsSealed, RecordsStored, RewrapProgress, TenantLockedDown,
    TenantRestored, event::Kind,
};
use keyseal::storage::Store;

const REASONS: [&str; 3] = ["key_disabled", "key_not_found", "vault_unreachable"];

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (1u32..50).prop_map(|count| Kind::RecordsStored(RecordsStored { count, bytes: 10 })),
        (1u32..50).prop_map(|count| Kind::RecordsSealed(RecordsSealed { count, oldest_ingested_at_unix_ms: 0 })),
        (0usize..3, 0i64..2).prop_map(|(r, observed)| Kind::KeyHealth(KeyHealth {
            status: Status::Unavailable as i32,
            reason: REASONS[r].into(),
            key_version: String::new(),
            observed_at_unix_ms: observed * 1_700_000_000_000,
        })),
        Just(Kind::KeyHealth(KeyHealth {
            status: Status::Healthy as i32,
            reason: String::new(),
            key_version: "v".into(),
            observed_at_unix_ms: 0,
        })),
        (0usize..3).prop_map(|r| Kind::TenantLockedDown(TenantLockedDown {
            reason: REASONS[r].into(),
            degraded_since_unix_ms: 1
        })),
        Just(Kind::TenantRestored(TenantRestored { locked_since_unix_ms: 1 })),
        Just(Kind::EncryptionEnabled(EncryptionEnabled {
            key_uri: "https://v.vault.azure.net/keys/k".into(),
            key_version: "1".into()
        })),
        Just(Kind::EncryptionDisabled(EncryptionDisabled { key_uri: "https://v.vault.azure.net/keys/k".into() })),
        (0u32..3).prop_map(|done| Kind::RewrapProgress(RewrapProgress { rewrapped: done, total: 2, target: None })),
    ]
}

/// (tenant index, event, time step, ends a transaction, reopen after it)
fn steps() -> impl Strategy<Value = Vec<(usize, Kind, i64, bool, bool)>> {
    prop::collection::vec((0usize..3, kind(), 0i64..5_000_000, any::<bool>(), prop::bool::weighted(0.1)), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn incremental_projections_equal_replayed_ones(steps in steps()) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut now = 1_700_000_000_000i64;
        let mut txn_events: Vec<(String, Kind)> = Vec::new();
        for (tenant, kind, step, ends, reopen) in steps {
            now += step;
            txn_events.push((format!("tenant-{tenant}"), kind));
            if ends {
                let mut txn = store.transaction();
                for (tenant, kind) in txn_events.drain(..) {
                    txn.event(&tenant, kind);
                }
                txn.commit(now).unwrap();
                if reopen {
                    drop(store);
                    store = Store::open(dir.path()).unwrap();
                }
            }
        }
        let mut txn = store.transaction();
        for (tenant, kind) in txn_events.drain(..) {
            txn.event(&tenant, kind);
        }
        txn.commit(now).unwrap();

        let (live, sequence) = store.projections_at();
        let events = store.events_after(0, usize::MAX).unwrap();
        prop_assert_eq!(events.len() as u64, sequence);
        let replayed = projection::replay(&events);
        prop_assert_eq!(live, replayed);
    }
}
