//! Time as the worker sees it. Everything time-driven (the 48-hour seal,
//! data-key buckets, event timestamps) asks a [`Clock`], so tests can move
//! time by hours in a millisecond with [`ManualClock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in Unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, UTC.
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// Starts at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(now_ms)))
    }

    /// Starts at the current wall-clock time.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_ms())
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The shared handle the worker passes around.
pub type SharedClock = Arc<dyn Clock>;

/// The UTC day number (days since the epoch) of a Unix-millisecond time:
/// the time bucket of a data key.
pub fn utc_day(unix_ms: i64) -> u32 {
    unix_ms.div_euclid(86_400_000).clamp(0, u32::MAX as i64) as u32
}

/// The last millisecond RFC 3339 can show: 9999-12-31T23:59:59.999Z.
pub const LAST_RFC3339_MS: i64 = 253_402_300_799_999;

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision): how the
/// admin API and the status page show times. Total: a time before 1970 is
/// shown as the epoch and one after 9999 as [`LAST_RFC3339_MS`] (a Key
/// Vault key may expire in the year 30000), never a panic.
pub fn rfc3339(unix_ms: i64) -> String {
    let clamped = unix_ms.clamp(0, LAST_RFC3339_MS) as u64;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(clamped)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        let shared = clock.clone();
        clock.advance(Duration::from_secs(48 * 3600));
        assert_eq!(shared.now_ms(), 1_000 + 48 * 3_600_000);
    }

    #[test]
    fn utc_day_buckets_at_midnight() {
        assert_eq!(utc_day(86_399_999), 0);
        assert_eq!(utc_day(86_400_000), 1);
        assert_eq!(utc_day(-5), 0);
    }

    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        assert_eq!(rfc3339(86_400_123), "1970-01-02T00:00:00.123Z");
    }

    #[test]
    fn rfc3339_is_total() {
        assert_eq!(rfc3339(LAST_RFC3339_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(LAST_RFC3339_MS + 1), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MIN), "1970-01-01T00:00:00.000Z");
    }
}
