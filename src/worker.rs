//! Wiring of one shard's worker: opens the [`Shard`], then runs the ingest
//! consumer, the sweeper's schedules, the outbox relay, the prober, the
//! key-cache eviction, the lockdown tick, the rewrapper and the admin API
//! as tasks that all stop on one cancellation token. Each task owns its
//! state; the admin API gets read-only views of it. Nothing here is
//! process-global, so a process can run several shards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::admin::api::{self, AdminState};
use crate::byok::rewrapper::{self, RewrapRequests};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::events::outbox;
use crate::health::lockdown;
use crate::health::prober::Prober;
use crate::ingest::consumer::{self, Readiness};
use crate::shard::{Shard, ShardId};
use crate::sweeps::Sweeper;
use crate::telemetry::metrics as m;

/// A running worker.
pub struct Worker {
    /// The shard it runs (tests use it to inspect the store and keyring).
    pub shard: Arc<Shard>,
    /// Its prober (tests run probe rounds and read probe times through it).
    pub prober: Arc<Prober>,
    /// Its sweeper.
    pub sweeper: Arc<Sweeper>,
    /// Whether its consumer is consuming.
    pub ready: Readiness,
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
        m::set_ingest_paused(false);
        let settings = Arc::new(settings);
        let shard = Arc::new(Shard::open(ShardId(0), &settings, clock)?);
        let listener = api::bind(&settings).await?;
        let http_addr = listener.local_addr()?;
        info!(%http_addr, data_dir = %settings.data_dir.display(), "keyseal worker starting");

        let shutdown = CancellationToken::new();
        let (rewraps, inbox) = rewrapper::channel();
        let prober = Arc::new(Prober::new(shard.clone(), settings.clone(), rewraps.clone()));
        let sweeper = Arc::new(Sweeper::new(shard.clone(), settings.clone()));
        let ready = Readiness::default();
        let mut tasks = JoinSet::new();
        let stop = shutdown.clone();
        let (sh, se, r) = (shard.clone(), settings.clone(), ready.clone());
        tasks.spawn(async move { consumer::run(&sh, &se, &r, stop).await });
        let (sh, se, stop) = (shard.clone(), settings.clone(), shutdown.clone());
        tasks.spawn(async move { outbox::run(&sh.store, &se.amqp_url, stop).await });
        let (sw, stop) = (sweeper.clone(), shutdown.clone());
        tasks.spawn(async move { sw.seal_on_schedule(stop).await });
        let (sw, stop) = (sweeper.clone(), shutdown.clone());
        tasks.spawn(async move { sw.maintain_on_schedule(stop).await });
        let (p, stop) = (prober.clone(), shutdown.clone());
        tasks.spawn(async move { p.run(stop).await });
        let (sh, ttl, stop) = (shard.clone(), settings.dek_cache_ttl, shutdown.clone());
        tasks.spawn(async move { evict_keys_on_schedule(&sh, ttl, stop).await });
        let (sh, grace, stop) = (shard.clone(), settings.lockdown_after, shutdown.clone());
        tasks.spawn(async move { lockdown::run(&sh, grace, stop).await });
        let (sh, stop) = (shard.clone(), shutdown.clone());
        tasks.spawn(async move { rewrapper::run(&sh, inbox, stop).await });
        let admin = admin_state(&shard, &settings, &sweeper, rewraps, &ready, &prober);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = api::serve(listener, admin, stop).await {
                error!(error = %e, "admin API stopped");
            }
        });
        Ok(Self { shard, prober, sweeper, ready, http_addr, shutdown, tasks })
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

/// The admin API's view of the worker's tasks.
fn admin_state(
    shard: &Arc<Shard>,
    settings: &Arc<Settings>,
    sweeper: &Arc<Sweeper>,
    rewraps: RewrapRequests,
    ready: &Readiness,
    prober: &Prober,
) -> AdminState {
    AdminState {
        shard: shard.clone(),
        settings: settings.clone(),
        sweeper: sweeper.clone(),
        rewraps,
        ready: ready.clone(),
        last_probes: prober.last_probes(),
    }
}

/// Checks for unwrapped keys past `--dek-cache-ttl` ten times per TTL (at
/// least every 30 s, at most every 100 ms), so none is held longer than
/// 1.1 × the TTL, or the TTL plus 30 s.
async fn evict_keys_on_schedule(shard: &Shard, ttl: Duration, shutdown: CancellationToken) {
    let every = (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let dropped = shard.keyring.evict_expired();
        if dropped > 0 {
            tracing::debug!(dropped, "unwrapped data keys past the cache age dropped");
        }
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
