//! Gauges derived from a shard's store: the shard's totals from its census,
//! and the per-tenant series of the tenants that changed since the last
//! refresh only, so a refresh costs O(changes) whatever the number of
//! tenants. Per-tenant series of tenants that stay idle expire after
//! [`m::GAUGE_IDLE_TIMEOUT`], so a flood of short-lived tenants does not
//! keep a series each for ever.

use std::time::Duration;

use crate::events::projection::state_name;
use crate::proto::store::TenantState;
use crate::storage::{Store, StoreError};
use crate::sweeps::seal as sealing;
use crate::telemetry::metrics as m;

/// Re-derives the gauges of `store` at `now_ms`.
pub fn refresh(store: &Store, now_ms: i64, seal_after: Duration) -> Result<(), StoreError> {
    for (tenant, projection) in store.take_changed_tenants() {
        m::tenant_records(&tenant, projection.hot_records, projection.sealed_records);
        if !projection.key_uri.is_empty() {
            m::key_health(&tenant, projection.health_reason.is_empty());
        }
    }
    let census = store.census();
    for state in [TenantState::Active, TenantState::Degraded, TenantState::LockedDown] {
        m::tenants_in_state(state_name(state), census.in_state(state));
    }
    m::records_at_rest(census.hot_records, census.sealed_records);
    let lag =
        store.oldest_hot_ingested_at()?.map_or(Duration::ZERO, |oldest| sealing::seal_lag(now_ms, seal_after, oldest));
    m::seal_lag(lag.as_secs_f64());
    m::refresh_process_gauges();
    Ok(())
}
