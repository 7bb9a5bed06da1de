//! The sweeps, run by the [`Sweeper`] on their schedules and on demand:
//! [`seal`] moves records past the seal age into `sealed` every
//! `--sweep-interval`; on `--reencrypt-schedule`, [`reencrypt`] moves sealed
//! records off data keys older than `--max-dek-age` and retires those keys,
//! [`retention`] deletes records older than their tenant's retention, and
//! [`scrub`] decrypts and verifies every record. The maintenance sweeps
//! are paced to `--sweep-rate` records per second by a [`Pacer`] and
//! publish where they stand through [`Progress`] (for
//! `GET /v1/sweeps/progress`, the CLI's progress bar and metrics).

pub mod reencrypt;
pub mod retention;
pub mod scrub;
pub mod seal;
mod sweeper;

pub use sweeper::{SweepOptions, Sweeper};

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::placement::ShardId;

/// The maintenance sweeps (the seal sweep runs on its own interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepKind {
    /// Move records off data keys older than `--max-dek-age`.
    Reencrypt,
    /// Decrypt and verify every record.
    Scrub,
}

impl SweepKind {
    /// The name used in the API, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reencrypt => "reencrypt",
            Self::Scrub => "scrub",
        }
    }
}

/// The first time after `now_ms` that `schedule` fires, in Unix ms (UTC),
/// or `None` if it never does.
pub fn next_run(schedule: &croner::Cron, now_ms: i64) -> Option<i64> {
    let now = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now_ms)?;
    schedule.find_next_occurrence(&now, false).ok().map(|next| next.timestamp_millis())
}

/// Keeps a sweep at `rate` records per second without bursts: after `n`
/// records it waits until `n / rate` seconds have passed since it started.
/// Real (tokio) time, not the worker clock: the rate budgets real load.
pub struct Pacer {
    rate: u32,
    per_record: Duration,
    started: Instant,
    admitted: u32,
}

impl Pacer {
    /// A pacer starting now.
    pub fn new(rate_per_second: u32) -> Self {
        Self {
            rate: rate_per_second.max(1),
            per_record: Duration::from_secs(1) / rate_per_second.max(1),
            started: Instant::now(),
            admitted: 0,
        }
    }

    /// Records to handle per step, so that a step takes about 100 ms.
    pub fn step_size(&self) -> usize {
        (self.rate as usize / 10).clamp(1, 1000)
    }

    /// Counts `records` just handled and waits until the rate allows more.
    pub async fn admit(&mut self, records: usize) {
        self.admitted = self.admitted.saturating_add(u32::try_from(records).unwrap_or(u32::MAX));
        tokio::time::sleep_until(self.started + self.per_record * self.admitted).await;
    }
}

/// Where a running maintenance sweep stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressSnapshot {
    /// Which sweep.
    pub sweep: SweepKind,
    /// Records looked at so far.
    pub done: u64,
    /// Records it expects to look at (from the projections' counts).
    pub total: u64,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
}

/// The progress of the maintenance sweep running now (at most one runs).
pub struct Progress {
    /// Whose sweeps, for the metrics' `shard` label.
    shard: ShardId,
    current: Mutex<Option<(ProgressSnapshot, Instant)>>,
}

impl Progress {
    /// No sweep running yet on `shard`.
    pub fn new(shard: ShardId) -> Self {
        Self { shard, current: Mutex::new(None) }
    }

    /// Where the running sweep stands, if one runs.
    pub fn snapshot(&self) -> Option<ProgressSnapshot> {
        self.current.lock().expect("progress lock").map(|(mut snapshot, started)| {
            snapshot.elapsed_ms = started.elapsed().as_millis() as u64;
            snapshot
        })
    }

    /// Marks `sweep` as running over about `total` records until the
    /// returned tracker is dropped.
    pub fn begin(&self, sweep: SweepKind, total: u64) -> Tracker<'_> {
        let snapshot = ProgressSnapshot { sweep, done: 0, total, elapsed_ms: 0 };
        *self.current.lock().expect("progress lock") = Some((snapshot, Instant::now()));
        crate::telemetry::metrics::sweep_progress(self.shard, sweep.name(), 0, 0.0);
        Tracker { progress: self, sweep }
    }
}

/// Advances the running sweep's progress; clears it when dropped.
pub struct Tracker<'a> {
    progress: &'a Progress,
    sweep: SweepKind,
}

impl Tracker<'_> {
    /// `records` more were looked at.
    pub fn advance(&self, records: usize) {
        let mut current = self.progress.current.lock().expect("progress lock");
        if let Some((snapshot, _)) = current.as_mut() {
            snapshot.done += records as u64;
            // Records arriving meanwhile can push done past the estimate.
            snapshot.total = snapshot.total.max(snapshot.done);
            let ratio = snapshot.done as f64 / snapshot.total.max(1) as f64;
            crate::telemetry::metrics::sweep_progress(self.progress.shard, self.sweep.name(), records as u64, ratio);
        }
    }
}

impl Drop for Tracker<'_> {
    fn drop(&mut self) {
        *self.progress.current.lock().expect("progress lock") = None;
        crate::telemetry::metrics::sweep_progress(self.progress.shard, self.sweep.name(), 0, 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_fires_daily_at_three_utc() {
        let schedule = croner::parser::CronParser::builder().build().parse("0 3 * * *").unwrap();
        // 2026-11-29T12:00:00Z
        let noon = 1_795_953_600_000;
        let next = next_run(&schedule, noon).unwrap();
        assert_eq!(next - noon, 15 * 3_600_000, "03:00 the next day");
        assert_eq!(next_run(&schedule, next).unwrap() - next, 24 * 3_600_000);
    }

    #[tokio::test]
    async fn the_pacer_never_runs_ahead_of_the_rate() {
        let mut pacer = Pacer::new(1000);
        let started = Instant::now();
        for _ in 0..3 {
            pacer.admit(100).await;
        }
        // Only the lower bound is certain on a busy machine; the sweeps
        // test measures the rate itself.
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(Pacer::new(100).step_size(), 10);
        assert_eq!(Pacer::new(1_000_000).step_size(), 1000);
        assert_eq!(Pacer::new(3).step_size(), 1);
    }

    #[test]
    fn progress_shows_only_while_a_sweep_runs() {
        let progress = Progress::new(ShardId(0));
        assert!(progress.snapshot().is_none());
        let tracker = progress.begin(SweepKind::Scrub, 10);
        tracker.advance(4);
        tracker.advance(8);
        let snapshot = progress.snapshot().unwrap();
        assert_eq!((snapshot.done, snapshot.total, snapshot.sweep), (12, 12, SweepKind::Scrub));
        drop(tracker);
        assert!(progress.snapshot().is_none());
    }
}
