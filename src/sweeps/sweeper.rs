//! The sweeper: the task that runs a shard's sweeps, on their schedules and
//! on demand. It owns what the sweeps share: the lock that runs one seal
//! sweep at a time (and that enabling or disabling a customer key takes, so
//! a root never changes under a sweep), the lock that runs one maintenance
//! sweep at a time beside sealing, and where the running one stands.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::reencrypt::{self, ReencryptSummary};
use super::retention::{self, RetentionSummary};
use super::scrub::{self, ScrubSummary};
use super::seal::{self, SealSummary};
use super::{Pacer, Progress, SweepKind, next_run};
use crate::records::RecordError;
use crate::shard::Shard;
use crate::storage::StoreError;
use crate::telemetry::gauges;
use crate::telemetry::metrics as m;

/// When sweeps run and how fast: `--seal-after`, `--sweep-interval`,
/// `--sweep-rate`, `--default-retention` and `--reencrypt-schedule`.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Residence time after which records are sealed.
    pub seal_after: Duration,
    /// How often the seal sweep runs.
    pub sweep_interval: Duration,
    /// Most records per second the maintenance sweeps handle.
    pub sweep_rate: u32,
    /// The retention of tenants that set none.
    pub default_retention: Option<Duration>,
    /// When re-encryption, retention and the scrub run.
    pub reencrypt_schedule: croner::Cron,
}

/// Runs a shard's sweeps; the admin API holds it to run them on demand.
pub struct Sweeper {
    shard: Arc<Shard>,
    options: SweepOptions,
    /// One seal sweep at a time; also held while a tenant's root changes.
    seal: tokio::sync::Mutex<()>,
    /// One maintenance sweep (re-encryption or scrub) at a time.
    maintenance: tokio::sync::Mutex<()>,
    progress: Progress,
}

impl Sweeper {
    /// A sweeper for `shard`, paced and scheduled by `options`.
    pub fn new(shard: Arc<Shard>, options: SweepOptions) -> Self {
        m::seal_hold_reasons(seal::HoldReason::ALL.map(seal::HoldReason::as_str));
        Self {
            progress: Progress::new(shard.id),
            shard,
            options,
            seal: tokio::sync::Mutex::new(()),
            maintenance: tokio::sync::Mutex::new(()),
        }
    }

    /// Where the running maintenance sweep stands (read-only).
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Runs a seal sweep now (waiting for one in progress to finish first),
    /// then purges expired tombstones. Which tenants seal is [`seal::plan`]'s decision, from the projections
    /// alone; a tenant whose key fails during the sweep is held back in its
    /// batch while the others seal.
    pub async fn seal(&self) -> Result<SealSummary, RecordError> {
        let _one_at_a_time = self.seal.lock().await;
        let shard = &self.shard;
        let hold = seal::plan(&shard.store.tenants());
        let summary =
            seal::seal_due(&shard.store, &shard.keyring, shard.clock.as_ref(), self.options.seal_after, &hold).await?;
        m::sealed(self.shard.id, summary.sealed);
        let purged = {
            let _moving = shard.store.moving().await;
            shard.store.purge_expired_tombstones(shard.now_ms())?
        };
        if purged > 0 {
            info!(purged, "expired tombstones purged");
        }
        gauges::refresh(shard, self.options.seal_after)?;
        Ok(summary)
    }

    /// Runs a re-encryption sweep now (after one in progress), paced to `--sweep-rate`.
    pub async fn reencrypt(&self) -> Result<ReencryptSummary, RecordError> {
        let _one_at_a_time = self.maintenance.lock().await;
        let shard = &self.shard;
        let total = shard.store.tenants().iter().map(|(_, p)| p.sealed_records).sum();
        let tracker = self.progress.begin(SweepKind::Reencrypt, total);
        let mut pacer = Pacer::new(self.options.sweep_rate);
        let summary = reencrypt::run(&shard.store, &shard.keyring, shard.clock.as_ref(), &mut pacer, &tracker).await?;
        if summary.reencrypted > 0 || summary.retired_data_keys > 0 {
            info!(
                reencrypted = summary.reencrypted,
                retired_data_keys = summary.retired_data_keys,
                "re-encryption sweep done"
            );
        }
        Ok(summary)
    }

    /// Runs a retention sweep now (after the maintenance sweep in
    /// progress), paced to `--sweep-rate`.
    pub async fn retention(&self) -> Result<RetentionSummary, RecordError> {
        let _one_at_a_time = self.maintenance.lock().await;
        let shard = &self.shard;
        let mut pacer = Pacer::new(self.options.sweep_rate);
        let default = self.options.default_retention;
        let summary = retention::run(&shard.store, &shard.keyring, shard.clock.as_ref(), default, &mut pacer).await?;
        if summary.expired > 0 {
            info!(expired = summary.expired, retired_data_keys = summary.retired_data_keys, "retention sweep done");
        }
        Ok(summary)
    }

    /// Runs a scrub now (after one in progress), paced to `--sweep-rate`.
    pub async fn scrub(&self) -> Result<ScrubSummary, StoreError> {
        let _one_at_a_time = self.maintenance.lock().await;
        let shard = &self.shard;
        let total = shard.store.tenants().iter().map(|(_, p)| p.hot_records + p.sealed_records).sum();
        let tracker = self.progress.begin(SweepKind::Scrub, total);
        let mut pacer = Pacer::new(self.options.sweep_rate);
        let summary = scrub::run(&shard.store, &shard.keyring, shard.now_ms(), &mut pacer, &tracker).await?;
        if summary.corrupt_count > 0 {
            error!(corrupt = summary.corrupt_count, "scrub found corrupt records (left in place)");
        } else {
            info!(verified = summary.verified, "scrub done: every record verified");
        }
        Ok(summary)
    }

    /// Waits for a seal sweep in progress and holds the next back while the
    /// guard lives: a tenant's root changes under it.
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.seal.lock().await
    }

    /// Seals every `--sweep-interval` until `shutdown`.
    pub async fn seal_on_schedule(&self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.options.sweep_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.seal().await {
                Ok(summary) if summary.sealed > 0 => info!(sealed = summary.sealed, "seal sweep done"),
                Ok(_) => {}
                Err(e) => error!(error = %e, "seal sweep failed; retrying next interval"),
            }
        }
    }

    /// Runs the retention sweep, the re-encryption sweep, then the scrub, at each time
    /// `--reencrypt-schedule` names. It wakes at least every minute to
    /// compare the schedule with the shard clock, so clock jumps are honoured.
    pub async fn maintain_on_schedule(&self, shutdown: CancellationToken) {
        const RECHECK: Duration = Duration::from_secs(60);
        let schedule = &self.options.reencrypt_schedule;
        let mut next = next_run(schedule, self.shard.now_ms());
        loop {
            let Some(due_ms) = next else {
                warn!("--reencrypt-schedule never fires again; scheduled sweeps are off");
                return;
            };
            let wait_ms = u64::try_from(due_ms - self.shard.now_ms()).unwrap_or(0);
            if wait_ms > 0 {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RECHECK.min(Duration::from_millis(wait_ms))) => continue,
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.maintain() => {}
            }
            next = next_run(schedule, self.shard.now_ms());
        }
    }

    async fn maintain(&self) {
        if let Err(e) = self.retention().await {
            error!(error = %e, "retention sweep failed; it resumes at the next scheduled run");
        }
        if let Err(e) = self.reencrypt().await {
            error!(error = %e, "re-encryption sweep failed; it resumes at the next scheduled run");
        }
        if let Err(e) = self.scrub().await {
            error!(error = %e, "scrub failed; it runs again at the next scheduled run");
        }
    }
}
