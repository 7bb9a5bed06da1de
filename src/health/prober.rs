//! The prober: every `--probe-interval`, read the newest enabled version of
//! each BYOK tenant's key (and, every [`CANARY_EVERY`] rounds, wrap and unwrap a
//! canary through the vault), classify the outcome, and append what the
//! policy decides. Tenants are probed concurrently with a bound, each probe
//! under its own deadline, so one slow vault never delays the others.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::policy::{self, Probe};
use crate::crypto::data_key::DataKey;
use crate::crypto::keyring::RootKey;
use crate::events::kind_name;
use crate::keyvault::VaultError;
use crate::keyvault::validate::{KeyRefusal, check_key};
use crate::proto::v1::event::Kind;
use crate::storage::StoreError;
use crate::worker::Services;

/// Probes in flight at once.
pub const PROBE_CONCURRENCY: usize = 32;
/// Every how many rounds a probe also wraps and unwraps a canary.
pub const CANARY_EVERY: u64 = 10;
/// The shortest time a probe may take before it counts as unreachable.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(60);

/// When each tenant was last probed (Unix ms); not event-sourced, as a probe
/// that changes nothing appends nothing.
#[derive(Debug, Default)]
pub struct ProbeTimes(Mutex<HashMap<String, i64>>);

impl ProbeTimes {
    /// Last probe of `tenant`, if any.
    pub fn last(&self, tenant: &str) -> Option<i64> {
        self.0.lock().expect("probe times lock").get(tenant).copied()
    }

    fn record(&self, tenant: &str, at_ms: i64) {
        self.0.lock().expect("probe times lock").insert(tenant.to_owned(), at_ms);
    }
}

/// What a probe round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundSummary {
    /// Tenants probed.
    pub probed: usize,
    /// Events appended.
    pub events: usize,
}

/// Probes every interval until `shutdown`.
pub async fn run(services: &Services, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(services.settings.probe_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u64;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = probe_round(services, round).await {
            warn!(error = %e, "probe round could not record its results");
        }
        round += 1;
    }
}

/// Probes every BYOK tenant once and appends the events the policy
/// decides, tenant by tenant as each probe completes.
pub async fn probe_round(services: &Services, round: u64) -> Result<RoundSummary, StoreError> {
    let tenants: Vec<String> =
        services.store.tenants().into_iter().filter(|(_, p)| !p.key_uri.is_empty()).map(|(tenant, _)| tenant).collect();
    // Long enough for the client's own retries of throttled calls; a probe
    // still out then is treated as an unreachable vault.
    let deadline = services.settings.probe_interval.max(PROBE_DEADLINE);
    let canary = round % CANARY_EVERY == 0;
    let mut probes = futures_util::stream::iter(tenants)
        .map(|tenant| async move {
            let probe = tokio::time::timeout(deadline, probe(services, &tenant, canary))
                .await
                .unwrap_or(Probe::Unavailable("vault_unreachable"));
            (tenant, probe)
        })
        .buffer_unordered(PROBE_CONCURRENCY);
    let mut summary = RoundSummary::default();
    while let Some((tenant, probe)) = probes.next().await {
        summary.probed += 1;
        summary.events += record(services, &tenant, &probe).await?;
    }
    Ok(summary)
}

/// Appends what the policy decides for one probe, and after a roll moves
/// the tenant's sealed data keys to the new version; returns how many
/// events were appended.
async fn record(services: &Services, tenant: &str, probe: &Probe) -> Result<usize, StoreError> {
    let now_ms = services.clock.now_ms();
    services.probe_times.record(tenant, now_ms);
    // Re-read: enable/disable may have run while the probe was out.
    let Some(current) = services.store.tenant(tenant).filter(|p| !p.key_uri.is_empty()) else {
        return Ok(0);
    };
    let events = policy::decide(&current, probe, now_ms, services.settings.lockdown_after);
    if events.is_empty() {
        return Ok(0);
    }
    let count = events.len();
    let rolled = events.iter().any(|e| matches!(e, Kind::KeyRolled(_)));
    let locked = events.iter().any(|e| matches!(e, Kind::TenantLockedDown(_)));
    let mut txn = services.store.transaction();
    for event in events {
        info!(tenant, event = kind_name(&event), ?probe, "key state changed");
        txn.event(tenant, event);
    }
    txn.commit(now_ms)?;
    if locked {
        // Nothing unwrapped while the customer's key still worked stays in memory.
        services.keyring.forget_tenant(tenant);
    }
    if rolled {
        // O(data keys), records untouched; if it fails, the rewrap stays
        // pending in the projection and the next sweep finishes it.
        match services.keyring.rewrap_to_current_root(tenant, now_ms).await {
            Ok(summary) => info!(tenant, rewrapped = summary.rewrapped, "data keys rolled to the new key version"),
            Err(e) => warn!(tenant, error = %e, "rewrap after a key roll is pending"),
        }
    }
    Ok(count)
}

async fn probe(services: &Services, tenant: &str, canary: bool) -> Probe {
    let (uri, version) = match services.keyring.tenant_root(tenant) {
        Ok(RootKey::Vault { uri, version }) => (uri, version),
        Ok(RootKey::Managed) => return Probe::Healthy { version: String::new() },
        Err(_) => return Probe::Unavailable("vault_unreachable"),
    };
    let vault = match services.keyring.vault() {
        Ok(vault) => vault,
        Err(_) => return Probe::Unavailable("missing_permission"),
    };
    // The newest enabled version is the one to use (and to roll to).
    let key = match vault.newest_enabled_key(&uri).await {
        Ok(key) => key,
        Err(VaultError::Throttled) => return Probe::Inconclusive,
        Err(e) => return Probe::Unavailable(policy::reason(&KeyRefusal::from(e))),
    };
    if let Err(refusal) = check_key(&key, services.clock.now_ms() / 1000) {
        return Probe::Unavailable(policy::reason(&refusal));
    }
    if canary {
        let data_key = DataKey::generate();
        let round_trip = match vault.wrap(&uri, &version, &data_key).await {
            Ok((_, wrapped)) => vault.unwrap(&uri, &version, &wrapped).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match round_trip {
            Ok(()) => {}
            Err(VaultError::Throttled) => return Probe::Inconclusive,
            Err(e) => return Probe::Unavailable(policy::reason(&KeyRefusal::from(e))),
        }
    }
    Probe::Healthy { version: key.version }
}
