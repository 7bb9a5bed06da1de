//! One owned shard at work: its [`Shard`] handle and every task that runs
//! on it (the ingest consumer of its queue, the outbox relay, the sweeper's
//! schedules, the prober, the key-cache eviction, the lockdown tick, the
//! rewrapper, the audit flush and the resumption of interrupted erasures),
//! all stopped by one token. Each task owns its state; the
//! admin API gets read-only views of it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::broker::Broker;
use crate::byok::rewrapper::{self, RewrapRequests};
use crate::config::Settings;
use crate::erasure;
use crate::events::outbox;
use crate::health::lockdown;
use crate::health::prober::{ProbeTimes, Prober};
use crate::ingest::consumer;
use crate::readiness::Readiness;
use crate::shard::Shard;
use crate::sweeps::Sweeper;
use crate::telemetry::gauges;

/// A shard this worker owns, with its tasks running.
pub struct RunningShard {
    /// The shard (tests use it to inspect the store and keyring).
    pub shard: Arc<Shard>,
    /// Its prober (tests run probe rounds and read probe times through it).
    pub prober: Arc<Prober>,
    /// Its sweeper: the admin API runs sweeps and root changes through it.
    pub sweeper: Arc<Sweeper>,
    /// Asks its rewrapper to move a tenant's data keys.
    pub rewraps: RewrapRequests,
    /// Whether its consumer is consuming.
    pub ready: Readiness,
    stop: CancellationToken,
    tasks: std::sync::Mutex<JoinSet<()>>,
}

impl RunningShard {
    /// Starts every task of `shard`, as `settings` say, on `broker`.
    pub fn start(shard: Shard, settings: &Arc<Settings>, broker: &Broker) -> Self {
        let shard = Arc::new(shard);
        crate::telemetry::metrics::shard_started(shard.id);
        let stop = CancellationToken::new();
        let (rewraps, inbox) = rewrapper::channel();
        let prober = Arc::new(Prober::new(shard.clone(), settings.probe_options(), rewraps.clone()));
        let sweeper = Arc::new(Sweeper::new(shard.clone(), settings.sweep_options()));
        let ready = Readiness::default();
        let mut tasks = JoinSet::new();
        let token = || stop.clone();
        let (sh, options, r, st) = (shard.clone(), settings.ingest_options(broker), ready.clone(), token());
        tasks.spawn(async move { consumer::run(&sh, &options, &r, st).await });
        let (sh, b, st) = (shard.clone(), broker.clone(), token());
        tasks.spawn(async move { outbox::run(&sh.store, sh.id, &b, st).await });
        let (sw, st) = (sweeper.clone(), token());
        tasks.spawn(async move { sw.seal_on_schedule(st).await });
        let (sw, st) = (sweeper.clone(), token());
        tasks.spawn(async move { sw.maintain_on_schedule(st).await });
        let (p, st) = (prober.clone(), token());
        tasks.spawn(async move { p.run(st).await });
        let (sh, ttl, st) = (shard.clone(), settings.dek_cache_ttl, token());
        tasks.spawn(async move { evict_keys_on_schedule(&sh, ttl, st).await });
        let (sh, grace, st) = (shard.clone(), settings.lockdown_after, token());
        tasks.spawn(async move { lockdown::run(&sh, grace, st).await });
        let (sh, st) = (shard.clone(), token());
        tasks.spawn(async move { rewrapper::run(&sh, inbox, st).await });
        let (sh, st) = (shard.clone(), token());
        tasks.spawn(async move { audit::flush::run(&sh, st).await });
        let sh = shard.clone();
        tasks.spawn(async move { erasure::resume(&sh).await });
        Self { shard, prober, sweeper, rewraps, ready, stop, tasks: std::sync::Mutex::new(tasks) }
    }

    /// Runs one more task of the shard, stopped with the others.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.lock().expect("shard tasks lock").spawn(task(self.stop.clone()));
    }

    /// When each of its tenants' keys was last probed.
    pub fn last_probes(&self) -> Arc<ProbeTimes> {
        self.prober.last_probes()
    }

    /// Stops its tasks and waits for them: the consumer acks the batch it
    /// committed, unacked deliveries return to the queue. Then waits (up
    /// to `drain`) until nothing else holds the store, so that it is closed
    /// when this returns, unless a request still uses it; a new owner waits
    /// for RocksDB's lock in that case.
    pub async fn stop(self: Arc<Self>, drain: Duration) {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("shard tasks lock"));
        while tasks.join_next().await.is_some() {}
        gauges::forget(self.shard.id);
        let store = Arc::downgrade(&self.shard.store);
        drop(self);
        let deadline = tokio::time::Instant::now() + drain;
        while store.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
