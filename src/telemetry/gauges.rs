//! Gauges derived from a shard's store: the shard's totals from its census,
//! and the per-tenant series of the tenants that changed since the last
//! refresh only, so a refresh costs O(changes) whatever the number of
//! tenants. Per-tenant series of tenants that stay idle expire after
//! [`m::GAUGE_IDLE_TIMEOUT`], so a flood of short-lived tenants does not
//! keep a series each for ever.

use std::time::Duration;

use crate::placement::ShardId;
use crate::proto::names::{TENANT_STATES, state_name};
use crate::shard::Shard;
use crate::storage::StoreError;
use crate::sweeps::seal as sealing;
use crate::telemetry::metrics as m;

/// Re-derives the gauges of `shard` at `now_ms`.
pub fn refresh(shard: &Shard, seal_after: Duration) -> Result<(), StoreError> {
    let (store, now_ms) = (&shard.store, shard.now_ms());
    for (tenant, projection) in store.take_changed_tenants() {
        m::tenant_records(&tenant, projection.hot_records, projection.sealed_records);
        if !projection.key_uri.is_empty() {
            m::key_health(&tenant, projection.health_reason.is_empty());
        }
    }
    let census = store.census();
    for state in TENANT_STATES {
        m::tenants_in_state(shard.id, state_name(state), census.in_state(state));
    }
    m::records_at_rest(shard.id, census.hot_records, census.sealed_records);
    let lag =
        store.oldest_hot_ingested_at()?.map_or(Duration::ZERO, |oldest| sealing::seal_lag(now_ms, seal_after, oldest));
    m::seal_lag(shard.id, lag.as_secs_f64());
    m::refresh_process_gauges();
    Ok(())
}

/// Zeroes the shard-wide gauges of a shard this worker no longer owns, so
/// sums over workers count each shard once (its new owner reports it).
pub fn forget(shard: ShardId) {
    for state in TENANT_STATES {
        m::tenants_in_state(shard, state_name(state), 0);
    }
    m::records_at_rest(shard, 0, 0);
    m::seal_lag(shard, 0.0);
    m::outbox_lag(shard, 0);
}
