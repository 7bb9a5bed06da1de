//! The emulator's clock: real time plus an offset the owner can move
//! forward (`POST /_emulator/clock`, [`Emulator::advance_clock`](crate::Emulator::advance_clock)),
//! so a test sees a rotation policy create a version, or a deleted key's
//! retention end, without waiting months. Every timestamp the vault writes
//! and every rule it checks (`nbf`, `exp`, purge dates, policies) reads it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The vault's time, read by every rule that depends on it, so the owner
/// can move it forward for all of them at once.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    /// Seconds added to the system time; never negative, so the vault's
    /// time never runs backwards while it runs. Not persisted: a restart
    /// returns to real time.
    offset: AtomicI64,
}

impl Clock {
    /// Now, as Key Vault's timestamps: integer Unix seconds.
    pub(crate) fn now(&self) -> i64 {
        system_now().saturating_add(self.offset.load(Ordering::Relaxed))
    }

    /// Moves the clock `seconds` forward; returns the new time.
    pub(crate) fn advance(&self, seconds: u32) -> i64 {
        self.offset.fetch_add(i64::from(seconds), Ordering::Relaxed);
        self.now()
    }

    /// Now to the sub-second, for the audit log's `time`: the system time
    /// plus the offset.
    pub(crate) fn system_time(&self) -> SystemTime {
        let offset = Duration::from_secs(u64::try_from(self.offset()).unwrap_or(0));
        let now = SystemTime::now();
        now.checked_add(offset).unwrap_or(now)
    }

    /// How far ahead of the system time the clock runs.
    pub(crate) fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }
}

fn system_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_now_forward_by_the_amount() {
        let clock = Clock::default();
        let before = clock.now();
        let after = clock.advance(90 * 86_400);
        assert!(after - before >= 90 * 86_400 && after - before <= 90 * 86_400 + 2);
        assert_eq!(clock.offset(), 90 * 86_400);
        let ahead = clock.system_time().duration_since(SystemTime::now()).expect("ahead of the system time");
        assert!(ahead.as_secs() >= 90 * 86_400 - 1 && ahead.as_secs() <= 90 * 86_400);
    }
}
