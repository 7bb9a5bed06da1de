//! The prober: every `--probe-interval`, read the newest enabled version of
//! each BYOK tenant's key (and, at least every `--canary-interval`, wrap and
//! unwrap a canary through the vault), classify the outcome, and append what
//! the policy decides. Tenants are probed concurrently with a bound, each
//! probe under its own deadline (`--probe-timeout`), and a probe the vault
//! does not answer gives up its slot after [`PROBE_PATIENCE`], so neither a
//! slow vault nor many unanswering ones hold up the others. A probe only
//! records what it found: the lockdown deadline is the tick's
//! (`super::lockdown`), rewraps after a roll are the rewrapper's
//! (`crate::byok::rewrapper`). [`worst_case_lockdown`] is the bound all this
//! gives.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::canary;
use super::lockdown::LOCKDOWN_TICK;
use super::policy::{self, HealthReason, Observation, Probe};
use crate::audit::key_use::KeyUse;
use crate::byok::rewrapper::RewrapRequests;
use crate::keyvault::validate::{KeyRefusal, check_key};
use crate::keyvault::{KeyUri, VaultError};
use crate::proto::names::kind_name;
use crate::proto::v1::KeyPurpose;
use crate::proto::v1::event::Kind;
use crate::shard::Shard;
use crate::storage::StoreError;
use crate::telemetry::metrics as m;

/// Probes holding a slot at once: the load one round puts on vaults.
pub const PROBE_CONCURRENCY: usize = 32;
/// How long a probe holds its slot. One still unanswered then (an
/// unanswering or throttling vault) goes on waiting, up to
/// `--probe-timeout`, without a slot, so at most
/// `PROBE_CONCURRENCY × (probe timeout / PROBE_PATIENCE + 1)` probes are out
/// at once and no tenant waits long for its turn.
pub const PROBE_PATIENCE: Duration = Duration::from_secs(1);

/// When each tenant was last probed (Unix ms) and when the key version it
/// found expires; not event-sourced, as a probe that changes nothing
/// appends nothing.
#[derive(Debug, Default)]
pub struct ProbeTimes(Mutex<HashMap<String, LastProbe>>);

/// What the last probe of a tenant left to show.
#[derive(Debug, Clone, Copy)]
struct LastProbe {
    at_ms: i64,
    /// The `exp` of the newest enabled version, when it was read.
    key_expires_at_ms: Option<i64>,
}

impl ProbeTimes {
    /// Last probe of `tenant`, if any.
    pub fn last(&self, tenant: &str) -> Option<i64> {
        self.0.lock().expect("probe times lock").get(tenant).map(|last| last.at_ms)
    }

    /// When the key version the last probe of `tenant` found expires, if it does.
    pub fn key_expires_at(&self, tenant: &str) -> Option<i64> {
        self.0.lock().expect("probe times lock").get(tenant).and_then(|last| last.key_expires_at_ms)
    }

    fn record(&self, tenant: &str, at_ms: i64, key_expires_at_ms: Option<i64>) {
        self.0.lock().expect("probe times lock").insert(tenant.to_owned(), LastProbe { at_ms, key_expires_at_ms });
    }

    /// Forgets every tenant but `probed`, the tenants a round probes: one
    /// that disabled its key is no longer probed, and keeps no entry.
    fn keep_only(&self, probed: &[String]) {
        let probed: HashSet<&str> = probed.iter().map(String::as_str).collect();
        self.0.lock().expect("probe times lock").retain(|tenant, _| probed.contains(tenant.as_str()));
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

/// What the prober works by: `--probe-interval`, `--canary-interval`,
/// `--probe-timeout`, `--lockdown-after` and `--key-expiry-warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOptions {
    /// How often each customer key is probed.
    pub probe_interval: Duration,
    /// Longest time between two canaries of a key.
    pub canary_interval: Duration,
    /// How long a probe may go unanswered before it counts as failed.
    pub probe_timeout: Duration,
    /// Grace after the first failed probe before the lockdown.
    pub lockdown_after: Duration,
    /// How long before a key version expires `KeyExpiring` is appended.
    pub key_expiry_warning: Duration,
}

/// The longest time from the first failure of a tenant's key to its
/// lockdown, for a shard with `tenants` BYOK tenants whose vaults may all
/// stop answering at once:
///
/// ```text
/// L = max(K − I, 0) + max(I, W + D) + W + max(G, D) + T,   W = (⌈N / C⌉ − 1) · P
/// ```
///
/// with I = `--probe-interval`, K = `--canary-interval`, D =
/// `--probe-timeout`, G = `--lockdown-after`, T = [`LOCKDOWN_TICK`], C =
/// [`PROBE_CONCURRENCY`], P = [`PROBE_PATIENCE`], N = `tenants`. The last
/// probe that found the key working began before the failure; the next
/// round begins at most one round spacing later (I, or the round's length
/// R ≤ W + D when it overran: a probe waits at most W for a slot and then
/// answers or times out within D), and a failure only the canary sees waits
/// up to max(K − I, 0) more for a canary round; in its round, the probe
/// that finds the failure begins at most W in. The grace starts when that
/// probe began; its `KeyHealth` lands at most D later (locking at once if
/// the grace is already over), and the lockdown tick appends
/// `TenantLockedDown` at most T after the grace has passed. With the
/// defaults (I = K = D = 60 s, G = 50 min, T = 1 s): 51 min 1 s for up to
/// 32 tenants, 51 min 13 s for 200, 52 min 3 s for 1,000; under an hour
/// for up to 8,640 tenants whose vaults all hang, and for any number whose
/// vaults answer or refuse at once (W then shrinks to the time their
/// answers take).
pub fn worst_case_lockdown(options: &ProbeOptions, tenants: usize) -> Duration {
    let (i, k, d, g) = (options.probe_interval, options.canary_interval, options.probe_timeout, options.lockdown_after);
    let waves = u32::try_from(tenants.div_ceil(PROBE_CONCURRENCY).max(1)).unwrap_or(u32::MAX);
    let w = PROBE_PATIENCE.saturating_mul(waves - 1);
    k.saturating_sub(i) + i.max(w + d) + w + g.max(d) + LOCKDOWN_TICK
}

/// Whether a round beginning at `now_ms` must include the canary: when the
/// round after it, one probe interval later, would be later than
/// `--canary-interval` after the last canary (or there was none yet).
pub fn canary_due(last_canary_ms: Option<i64>, now_ms: i64, options: &ProbeOptions) -> bool {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    last_canary_ms
        .is_none_or(|last| (now_ms - last).saturating_add(ms(options.probe_interval)) >= ms(options.canary_interval))
}

/// A probe under way: the tenant and, unless it had disabled its key by
/// then, what the probe found.
type Probing<'a> = BoxFuture<'a, (String, Option<Observation>)>;

/// A probe after its time in a slot: finished, or still waiting for the vault.
enum Slot<'a> {
    Done((String, Option<Observation>)),
    Waiting(Probing<'a>),
}

async fn hold_slot(mut probing: Probing<'_>) -> Slot<'_> {
    tokio::select! {
        done = &mut probing => Slot::Done(done),
        () = tokio::time::sleep(PROBE_PATIENCE) => Slot::Waiting(probing),
    }
}

/// The prober of one shard: it owns when each tenant was last probed and
/// hands that out read-only ([`Prober::last_probes`]).
pub struct Prober {
    shard: Arc<Shard>,
    options: ProbeOptions,
    times: Arc<ProbeTimes>,
    rewraps: RewrapRequests,
}

impl Prober {
    /// A prober of `shard`'s BYOK tenants that wakes `rewraps` after a roll.
    pub fn new(shard: Arc<Shard>, options: ProbeOptions, rewraps: RewrapRequests) -> Self {
        Self { shard, options, times: Arc::default(), rewraps }
    }

    /// When each tenant was last probed, for the admin API (only the prober records).
    pub fn last_probes(&self) -> Arc<ProbeTimes> {
        self.times.clone()
    }

    /// Probes every interval until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        let byok = self.shard.store.tenants_where(|p| !p.key_uri.is_empty()).len();
        let bound = worst_case_lockdown(&self.options, byok);
        if bound >= Duration::from_secs(3600) {
            warn!(tenants = byok, bound = %humantime::format_duration(bound), "worst-case lockdown is an hour or more");
        } else {
            info!(tenants = byok, bound = %humantime::format_duration(bound), "worst-case lockdown");
        }
        let mut ticks = tokio::time::interval(self.options.probe_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_canary_ms = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now_ms = self.shard.clock.now_ms();
            let canary = canary_due(last_canary_ms, now_ms, &self.options);
            if canary {
                last_canary_ms = Some(now_ms);
            }
            if let Err(e) = self.probe_round(canary).await {
                warn!(error = %e, "probe round could not record its results");
            }
        }
    }

    /// Probes every BYOK tenant once (with the canary if `canary`) and appends
    /// the events the policy decides, tenant by tenant as each probe completes.
    pub async fn probe_round(&self, canary: bool) -> Result<RoundSummary, StoreError> {
        let tenants: Vec<String> =
            self.shard.store.tenants_where(|p| !p.key_uri.is_empty()).into_iter().map(|(tenant, _)| tenant).collect();
        self.times.keep_only(&tenants);
        let mut slots = futures_util::stream::iter(tenants)
            .map(|tenant| hold_slot(self.observe(tenant, canary)))
            .buffer_unordered(PROBE_CONCURRENCY);
        let mut waiting = FuturesUnordered::new();
        let mut summary = RoundSummary::default();
        loop {
            let (tenant, observation) = tokio::select! {
                Some(slot) = slots.next() => match slot {
                    Slot::Done(done) => done,
                    Slot::Waiting(probing) => {
                        waiting.push(probing);
                        continue;
                    }
                },
                Some(done) = waiting.next() => done,
                else => break,
            };
            if let Some(observation) = observation {
                summary.probed += 1;
                summary.events += self.record(&tenant, &observation).await?;
            }
        }
        Ok(summary)
    }

    /// Probes the key the tenant has when the probe begins; no answer within
    /// `--probe-timeout` is a failed probe (`vault_unreachable`).
    fn observe(&self, tenant: String, canary: bool) -> Probing<'_> {
        Box::pin(async move {
            let Some(current) = self.shard.store.tenant(&tenant).filter(|p| !p.key_uri.is_empty()) else {
                return (tenant, None);
            };
            let began_at_ms = self.shard.clock.now_ms();
            let probe = tokio::time::timeout(
                self.options.probe_timeout,
                self.probe(&tenant, &current.key_uri, &current.key_version, canary),
            )
            .await
            .unwrap_or(Probe::Unavailable(HealthReason::VaultUnreachable));
            let observation =
                Observation { key_uri: current.key_uri, key_version: current.key_version, began_at_ms, probe };
            (tenant, Some(observation))
        })
    }

    /// Appends what the policy decides for one finished probe, deciding on the
    /// projection as it stands at the commit; after a roll, wakes the
    /// rewrapper. Returns how many events were appended.
    async fn record(&self, tenant: &str, observation: &Observation) -> Result<usize, StoreError> {
        let now_ms = self.shard.clock.now_ms();
        let expires_at = match observation.probe {
            Probe::Healthy { expires_at_ms, .. } => expires_at_ms,
            Probe::Unavailable(_) | Probe::Inconclusive => None,
        };
        self.times.record(tenant, now_ms, expires_at);
        if let Some(expires_at) = expires_at {
            m::key_expires_in(tenant, (expires_at - now_ms) as f64 / 1000.0);
        }
        let (lockdown_after, warning) = (self.options.lockdown_after, self.options.key_expiry_warning);
        let appended = self
            .shard
            .store
            .transaction()
            .commit_decided(&[tenant.to_owned()], now_ms, |current| {
                let mut events = policy::decide(current, observation, now_ms, lockdown_after);
                events.extend(policy::expiry_warning(current, observation, now_ms, warning));
                events
            })
            .await?;
        for (_, event) in &appended {
            info!(tenant, event = kind_name(event), probe = ?observation.probe, "key state changed");
        }
        if appended.iter().any(|(_, event)| matches!(event, Kind::TenantLockedDown(_))) {
            // Nothing unwrapped while the customer's key still worked stays in memory.
            self.shard.keyring.forget_tenant(tenant);
        }
        if appended.iter().any(|(_, event)| matches!(event, Kind::KeyRolled(_))) {
            self.rewraps.wake();
        }
        Ok(appended.len())
    }

    async fn probe(&self, tenant: &str, key_uri: &str, version: &str, canary: bool) -> Probe {
        let Ok(vault) = self.shard.keyring.vault() else {
            return Probe::Unavailable(HealthReason::VaultUnreachable);
        };
        let uri = match KeyUri::parse(key_uri, vault.trusted_hosts()) {
            Ok(uri) => uri,
            Err(e) => return Probe::Unavailable(HealthReason::from(&KeyRefusal::from(e))),
        };
        // The newest enabled version is the one to use (and to roll to).
        let key = match vault.newest_enabled_key(&uri).await {
            Ok(key) => key,
            Err(VaultError::Throttled) => return Probe::Inconclusive,
            Err(e) => return Probe::Unavailable(HealthReason::from(&KeyRefusal::from(e))),
        };
        if let Err(refusal) = check_key(&key, self.shard.clock.now_ms() / 1000) {
            return Probe::Unavailable(HealthReason::from(&refusal));
        }
        if canary {
            let usage = KeyUse { store: &self.shard.store, tenant, data_key_id: b"", purpose: KeyPurpose::Canary };
            match canary::round_trip(vault, &uri, version, usage).await {
                Ok(()) => {}
                Err(VaultError::Throttled) => return Probe::Inconclusive,
                Err(e) => return Probe::Unavailable(HealthReason::from(&KeyRefusal::from(e))),
            }
        }
        Probe::Healthy { version: key.version, expires_at_ms: key.expires.map(|exp| exp.saturating_mul(1000)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// The defaults of `keyseal run` (config.rs checks them against the
    /// flags' own), with a canary every `canary` at most.
    fn options(canary: Duration) -> ProbeOptions {
        ProbeOptions {
            probe_interval: MINUTE,
            canary_interval: canary,
            probe_timeout: MINUTE,
            lockdown_after: 50 * MINUTE,
            key_expiry_warning: 30 * 24 * 60 * MINUTE,
        }
    }

    #[test]
    fn with_the_defaults_lockdown_comes_within_the_hour() {
        let defaults = options(MINUTE);
        let minutes = |tenants| worst_case_lockdown(&defaults, tenants).as_secs_f64() / 60.0;
        assert_eq!(worst_case_lockdown(&defaults, 32), Duration::from_secs(51 * 60 + 1));
        assert_eq!(worst_case_lockdown(&defaults, 200), Duration::from_secs(51 * 60 + 13));
        assert_eq!(worst_case_lockdown(&defaults, 1_000), Duration::from_secs(52 * 60 + 3));
        assert!(minutes(8_640) < 60.0 && minutes(8_700) >= 60.0, "{} {}", minutes(8_640), minutes(8_700));
        let rare_canary = options(10 * MINUTE);
        assert_eq!(worst_case_lockdown(&rare_canary, 32), Duration::from_secs(60 * 60 + 1), "the old cadence");
    }

    #[test]
    fn the_canary_runs_so_that_none_is_later_than_its_interval() {
        let every_round = options(MINUTE);
        assert!(canary_due(None, 0, &every_round));
        assert!(canary_due(Some(0), 0, &every_round), "the default: every round, even on a clock standing still");
        let five = options(5 * MINUTE);
        let min = 60_000;
        assert!(!canary_due(Some(0), 3 * min, &five));
        assert!(canary_due(Some(0), 4 * min, &five), "the round after would be 6 minutes after the last");
    }
}
