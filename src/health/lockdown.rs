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
use crate::shard::Shard;
use crate::storage::StoreError;

/// How often the deadline is checked against the worker clock: the most a
/// lockdown lands after its grace has passed.
pub const LOCKDOWN_TICK: Duration = Duration::from_secs(1);

/// Checks the deadlines (a grace of `lockdown_after`) every tick until `shutdown`.
pub async fn run(shard: &Shard, lockdown_after: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(LOCKDOWN_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = lock_due(shard, lockdown_after).await {
            warn!(error = %e, "lockdowns due could not be recorded; retrying next tick");
        }
    }
}

/// Appends `TenantLockedDown` for every degraded tenant whose grace has
/// passed (`grace` since its first failed probe began) by the shard clock
/// now, in one commit; returns how many.
pub async fn lock_due(shard: &Shard, grace: Duration) -> Result<usize, StoreError> {
    let now_ms = shard.now_ms();
    let due: Vec<String> = shard
        .store
        .tenants_where(|p| policy::lockdown_due(p, now_ms, grace).is_some())
        .into_iter()
        .map(|(tenant, _)| tenant)
        .collect();
    if due.is_empty() {
        return Ok(0);
    }
    let locked = shard
        .store
        .transaction()
        .commit_decided(&due, now_ms, |current| policy::lockdown_due(current, now_ms, grace).into_iter().collect())
        .await?;
    for (tenant, event) in &locked {
        if let Kind::TenantLockedDown(locked) = event {
            warn!(tenant, reason = %locked.reason, "grace passed: tenant locked down");
            // Nothing unwrapped while the customer's key still worked stays in memory.
            shard.keyring.forget_tenant(tenant);
        }
    }
    Ok(locked.len())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::placement::ShardId;
    use crate::proto::store::TenantState;
    use crate::proto::v1::KeyHealth;
    use crate::proto::v1::key_health::Status;
    use crate::shard::{Shard, ShardOptions};

    #[tokio::test]
    async fn a_degraded_tenant_is_locked_once_when_its_grace_has_passed_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let options = ShardOptions::in_dir(dir.path());
        let shard = Shard::open(ShardId(0), &options, Err("no vault".into()), Arc::new(clock.clone())).unwrap();
        let grace = Duration::from_secs(3000);
        let mut txn = shard.store.transaction();
        let failed = KeyHealth {
            status: Status::Unavailable as i32,
            reason: "key_disabled".into(),
            key_version: String::new(),
            observed_at_unix_ms: clock.now_ms(),
        };
        txn.event("acme", Kind::KeyHealth(failed));
        txn.event("other", Kind::KeyHealth(KeyHealth { status: Status::Healthy as i32, ..Default::default() }));
        txn.commit(clock.now_ms()).unwrap();
        assert_eq!(shard.store.tenant("acme").unwrap().state(), TenantState::Degraded);

        clock.advance(grace - Duration::from_millis(1));
        assert_eq!(lock_due(&shard, grace).await.unwrap(), 0, "the grace has not passed yet");
        clock.advance(Duration::from_millis(1));
        assert_eq!(lock_due(&shard, grace).await.unwrap(), 1);
        assert_eq!(shard.store.tenant("acme").unwrap().state(), TenantState::LockedDown);
        assert_eq!(shard.store.tenant("other").unwrap().state(), TenantState::Active, "only the degraded one");
        assert_eq!(lock_due(&shard, grace).await.unwrap(), 0, "locked once");
    }
}
