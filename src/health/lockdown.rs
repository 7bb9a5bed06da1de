//! The lockdown deadline: every [`LOCKDOWN_TICK`] of real time, read the
//! worker clock and lock down every degraded tenant whose grace has passed,
//! whether or not a probe of its key has answered. The decision
//! (`policy::lockdown_due`) is made again under the store's commit lock, so
//! a tenant is locked once, and not at all if its key came back meanwhile.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::policy;
use crate::proto::v1::event::Kind;
use crate::storage::StoreError;
use crate::worker::Services;

/// How often the deadline is checked against the worker clock: the most a
/// lockdown lands after its grace has passed.
pub const LOCKDOWN_TICK: Duration = Duration::from_secs(1);

/// Checks the deadlines every tick until `shutdown`.
pub async fn run(services: &Services, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(LOCKDOWN_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = lock_due(services) {
            warn!(error = %e, "lockdowns due could not be recorded; retrying next tick");
        }
    }
}

/// Appends `TenantLockedDown` for every degraded tenant whose grace has
/// passed by the worker clock now, in one commit; returns how many.
pub fn lock_due(services: &Services) -> Result<usize, StoreError> {
    let now_ms = services.clock.now_ms();
    let grace = services.settings.lockdown_after;
    let due: Vec<String> = services
        .store
        .tenants_where(|p| policy::lockdown_due(p, now_ms, grace).is_some())
        .into_iter()
        .map(|(tenant, _)| tenant)
        .collect();
    if due.is_empty() {
        return Ok(0);
    }
    let locked = services
        .store
        .transaction()
        .commit_decided(&due, now_ms, |current| policy::lockdown_due(current, now_ms, grace).into_iter().collect())?;
    for (tenant, event) in &locked {
        if let Kind::TenantLockedDown(locked) = event {
            warn!(tenant, reason = %locked.reason, "grace passed: tenant locked down");
            // Nothing unwrapped while the customer's key still worked stays in memory.
            services.keyring.forget_tenant(tenant);
        }
    }
    Ok(locked.len())
}
