//! Wiring of one shard's worker: opens the store and keys, then runs the
//! ingest consumer, the seal scheduler, the outbox relay, the prober, the
//! lockdown tick, the rewrapper and the admin API as tasks that all stop on
//! one cancellation token. Nothing here is process-global, so a process can
//! later run several shards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::crypto::keyring::Keyring;
use crate::crypto::root_key::{ManagedRootKeys, RootExpectation};
use crate::encryption;
use crate::events::outbox;
use crate::gauges;
use crate::health::lockdown;
use crate::health::prober::{self, ProbeTimes};
use crate::ingest::consumer;
use crate::keyvault::{Vault, credential};
use crate::metrics as m;
use crate::projection;
use crate::proto::store::TenantState;
use crate::records::RecordError;
use crate::rewrapper::{self, RewrapRequests};
use crate::sealing::{self, SealSummary};
use crate::storage::{Store, StoreError};
use crate::sweeps::reencrypt::{self, ReencryptSummary};
use crate::sweeps::scrub::{self, ScrubSummary};
use crate::sweeps::{self, Pacer, SweepKind};

/// Everything a shard's tasks share.
pub struct Services {
    /// The shard's store.
    pub store: Arc<Store>,
    /// Data keys of the shard.
    pub keyring: Keyring,
    /// Time source.
    pub clock: SharedClock,
    /// Settings the worker was started with.
    pub settings: Settings,
    /// Whether the ingest consumer is connected and consuming.
    pub amqp_ready: AtomicBool,
    /// When each tenant's key was last probed.
    pub probe_times: ProbeTimes,
    /// Wakes the rewrapper.
    pub rewraps: RewrapRequests,
    /// Serialises sweeps (scheduled and on demand).
    sweep: tokio::sync::Mutex<()>,
    /// Serialises the maintenance sweeps (re-encryption and scrub), which
    /// run beside sealing.
    maintenance: tokio::sync::Mutex<()>,
    /// Where the running maintenance sweep stands.
    pub progress: sweeps::Progress,
}

impl Services {
    /// Opens the store and the managed root key under the data dir.
    pub fn open(settings: Settings, clock: SharedClock) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
        let store = Arc::new(
            Store::open(&settings.data_dir.join("db"))
                .with_context(|| format!("opening the store in {}", settings.data_dir.display()))?,
        );
        let expected = RootExpectation {
            fingerprints: store.managed_root_fingerprints()?,
            holds_data_keys: store.holds_data_keys()?,
        };
        let managed = ManagedRootKeys::open(&settings.data_dir.join("root-keys"), &expected)
            .context("loading the managed root key")?;
        store.record_managed_root_fingerprints(&managed.fingerprints())?;
        let vault = credential::credential(settings.vault_credential, settings.vault_token.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|c| Vault::new(c, settings.vault_options()).map_err(|e| e.to_string()))
            .map(Arc::new);
        if let Err(reason) = &vault {
            warn!(%reason, "no Key Vault client: tenants cannot enable their own key until this is fixed");
        }
        let keyring = Keyring::new(
            store.clone(),
            managed,
            vault,
            settings.cache_limits(),
            settings.rotation_limits(),
            clock.clone(),
        );
        Ok(Self {
            store,
            keyring,
            clock,
            settings,
            amqp_ready: AtomicBool::new(false),
            probe_times: ProbeTimes::default(),
            rewraps: RewrapRequests::default(),
            sweep: tokio::sync::Mutex::new(()),
            maintenance: tokio::sync::Mutex::new(()),
            progress: sweeps::Progress::default(),
        })
    }

    /// Runs a seal sweep now (waiting for one in progress to finish first):
    /// wakes the rewrapper for unfinished rewraps, holds back tenants whose
    /// own key is not usable, and seals the rest.
    pub async fn sweep(&self) -> Result<SealSummary, RecordError> {
        let _one_at_a_time = self.sweep.lock().await;
        self.rewraps.wake();
        let mut hold = encryption::unusable_customer_keys(self).await;
        // Sealing of a tenant that is not healthy waits; its backlog is
        // sealed after it is restored.
        hold.extend(
            self.store
                .tenants()
                .into_iter()
                .filter(|(_, p)| p.state() != TenantState::Active)
                .map(|(tenant, _)| tenant),
        );
        let summary =
            sealing::seal_due(&self.store, &self.keyring, self.clock.as_ref(), self.settings.seal_after, &hold).await?;
        m::sealed(summary.sealed);
        self.refresh_gauges()?;
        Ok(summary)
    }

    /// Runs a re-encryption sweep now (after one in progress), paced to `--sweep-rate`.
    pub async fn reencrypt(&self) -> Result<ReencryptSummary, RecordError> {
        let _one_at_a_time = self.maintenance.lock().await;
        let total = self.sealed_records_total();
        let tracker = self.progress.begin(SweepKind::Reencrypt, total);
        let mut pacer = Pacer::new(self.settings.sweep_rate);
        let summary = reencrypt::run(&self.store, &self.keyring, self.clock.as_ref(), &mut pacer, &tracker).await?;
        if summary.reencrypted > 0 || summary.retired_data_keys > 0 {
            info!(
                reencrypted = summary.reencrypted,
                retired_data_keys = summary.retired_data_keys,
                "re-encryption sweep done"
            );
        }
        Ok(summary)
    }

    /// Runs a scrub now (after one in progress), paced to `--sweep-rate`.
    pub async fn scrub(&self) -> Result<ScrubSummary, StoreError> {
        let _one_at_a_time = self.maintenance.lock().await;
        let total = self.store.tenants().iter().map(|(_, p)| p.hot_records + p.sealed_records).sum();
        let tracker = self.progress.begin(SweepKind::Scrub, total);
        let mut pacer = Pacer::new(self.settings.sweep_rate);
        let summary = scrub::run(&self.store, &self.keyring, self.clock.now_ms(), &mut pacer, &tracker).await?;
        if summary.corrupt_count > 0 {
            error!(corrupt = summary.corrupt_count, "scrub found corrupt records (left in place)");
        } else {
            info!(verified = summary.verified, "scrub done: every record verified");
        }
        Ok(summary)
    }

    fn sealed_records_total(&self) -> u64 {
        self.store.tenants().iter().map(|(_, p)| p.sealed_records).sum()
    }

    /// Serialises changes of a tenant's root with sweeps.
    pub(crate) async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.sweep.lock().await
    }

    /// Rebuilds every projection from sequence 1 into scratch memory and
    /// compares it with the live projections at the same sequence.
    pub fn replay(&self) -> Result<ReplayReport, StoreError> {
        self.store.sync()?;
        let (live, sequence) = self.store.projections_at();
        let events = self.store.events_after(0, usize::try_from(sequence).unwrap_or(usize::MAX))?;
        let replayed = projection::replay(&events);
        let differing: Vec<String> = live
            .keys()
            .chain(replayed.keys())
            .filter(|t| live.get(*t) != replayed.get(*t))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Ok(ReplayReport {
            equal: differing.is_empty(),
            sequence,
            events: events.len() as u64,
            tenants: replayed.len(),
            differing,
        })
    }

    /// Updates the gauges derived from stored state (see [`gauges::refresh`]).
    pub fn refresh_gauges(&self) -> Result<(), RecordError> {
        gauges::refresh(&self.store, self.clock.now_ms(), self.settings.seal_after)?;
        Ok(())
    }
}

/// The outcome of [`Services::replay`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Whether replayed and live projections are identical.
    pub equal: bool,
    /// The sequence both reflect.
    pub sequence: u64,
    /// Events replayed.
    pub events: u64,
    /// Tenants rebuilt.
    pub tenants: usize,
    /// Tenants whose projections differ.
    pub differing: Vec<String>,
}

/// A running worker.
pub struct Worker {
    /// Shared services (tests use them to inspect the store).
    pub services: Arc<Services>,
    /// Where the admin API listens.
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Worker {
    /// Opens the shard and starts its tasks.
    pub async fn start(settings: Settings, clock: SharedClock) -> anyhow::Result<Self> {
        // Install the recorder first so every counter counts from the start.
        m::handle();
        m::storage_paused(false);
        let services = Arc::new(Services::open(settings, clock)?);
        let shutdown = CancellationToken::new();
        let listener = api::bind(&services.settings).await?;
        let http_addr = listener.local_addr()?;
        info!(%http_addr, data_dir = %services.settings.data_dir.display(), "keyseal worker starting");

        let mut tasks = JoinSet::new();
        let (s, stop) = (services.clone(), shutdown.clone());
        tasks.spawn(async move { consumer::run(&s, stop).await });
        let (s, stop) = (services.clone(), shutdown.clone());
        tasks.spawn(async move { outbox::run(&s.store, &s.settings.amqp_url, stop).await });
        let (s, stop) = (services.clone(), shutdown.clone());
        tasks.spawn(async move { seal_on_schedule(&s, stop).await });
        let (s, stop) = (services.clone(), shutdown.clone());
        tasks.spawn(async move { maintain_on_schedule(&s, stop).await });
        let (s, stop) = (services.clone(), shutdown.clone());
        tasks.spawn(async move { prober::run(&s, stop).await });
        let (s, stop) = (services.clone(), shutdown.clone());
        tasks.spawn(async move { evict_keys_on_schedule(&s, stop).await });
        let (s, stop) = (services.clone(), shutdown.clone());
        tasks.spawn(async move { lockdown::run(&s, stop).await });
        let (s, stop) = (services.clone(), shutdown.clone());
        tasks.spawn(async move { rewrapper::run(&s, stop).await });
        let (s, stop) = (services.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = api::serve(listener, s, stop).await {
                error!(error = %e, "admin API stopped");
            }
        });
        Ok(Self { services, http_addr, shutdown, tasks })
    }

    /// Runs until Ctrl-C or SIGTERM, then stops cleanly.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        info!("shutting down");
        self.stop().await;
        Ok(())
    }

    /// Stops every task and waits for them (unacked messages return to the queue).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

pub use crate::projection::state_name;

async fn seal_on_schedule(services: &Services, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(services.settings.sweep_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match services.sweep().await {
            Ok(summary) if summary.sealed > 0 => info!(sealed = summary.sealed, "seal sweep done"),
            Ok(_) => {}
            Err(e) => error!(error = %e, "seal sweep failed; retrying next interval"),
        }
    }
}

/// Checks for unwrapped keys past `--dek-cache-ttl` ten times per TTL (at
/// least every 30 s, at most every 100 ms), so none is held longer than
/// 1.1 × the TTL, or the TTL plus 30 s.
async fn evict_keys_on_schedule(services: &Services, shutdown: CancellationToken) {
    let every = (services.settings.dek_cache_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let dropped = services.keyring.evict_expired();
        if dropped > 0 {
            tracing::debug!(dropped, "unwrapped data keys past the cache age dropped");
        }
    }
}

/// Runs the re-encryption sweep, then the scrub, at each time
/// `--reencrypt-schedule` names. It wakes at least every minute to compare
/// the schedule with the worker clock, so clock jumps are honoured.
async fn maintain_on_schedule(services: &Services, shutdown: CancellationToken) {
    const RECHECK: std::time::Duration = std::time::Duration::from_secs(60);
    let schedule = &services.settings.reencrypt_schedule;
    let mut next = sweeps::next_run(schedule, services.clock.now_ms());
    loop {
        let Some(due_ms) = next else {
            warn!("--reencrypt-schedule never fires again; scheduled sweeps are off");
            return;
        };
        let wait_ms = u64::try_from(due_ms - services.clock.now_ms()).unwrap_or(0);
        if wait_ms > 0 {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RECHECK.min(std::time::Duration::from_millis(wait_ms))) => continue,
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = run_maintenance(services) => {}
        }
        next = sweeps::next_run(schedule, services.clock.now_ms());
    }
}

async fn run_maintenance(services: &Services) {
    if let Err(e) = services.reencrypt().await {
        error!(error = %e, "re-encryption sweep failed; it resumes at the next scheduled run");
    }
    if let Err(e) = services.scrub().await {
        error!(error = %e, "scrub failed; it runs again at the next scheduled run");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
