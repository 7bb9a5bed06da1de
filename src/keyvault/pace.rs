//! Client-side pacing of the calls to one vault, so keyseal stays under
//! Key Vault's service limit instead of collecting 429s: each call takes
//! the next slot of a schedule spaced `1 / rate` apart (a generic cell
//! rate algorithm), and a vault left idle may be called up to one second's
//! worth of slots at once. Many calls can be in flight (a rewrap keeps
//! `--vault-concurrency` of them); pacing only decides when each starts.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The call schedule of one vault.
#[derive(Debug)]
pub struct Pace {
    interval: Duration,
    /// How far ahead of now the next slot may be and still start at once.
    burst: Duration,
    next: Mutex<Instant>,
}

impl Pace {
    /// At most `calls_per_second` calls a second on average (at least one).
    pub fn new(calls_per_second: u32) -> Self {
        let interval = Duration::from_secs(1) / calls_per_second.max(1);
        Self { interval, burst: Duration::from_secs(1).saturating_sub(interval), next: Mutex::new(Instant::now()) }
    }

    /// Waits for this call's slot.
    pub async fn turn(&self) {
        tokio::time::sleep_until(self.take_slot(Instant::now())).await;
    }

    /// Books the next slot for a call asked for at `now`; returns when it may start.
    fn take_slot(&self, now: Instant) -> Instant {
        let mut next = self.next.lock().expect("pace lock");
        // The slot in an even schedule; a call may start up to `burst`
        // ahead of it, never before it is asked for.
        let slot = (*next).max(now);
        *next = slot + self.interval;
        slot.checked_sub(self.burst).map_or(now, |early| early.max(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_vault_takes_a_second_of_calls_at_once_then_the_rate() {
        let pace = Pace::new(100);
        let now = Instant::now() + Duration::from_secs(5);
        let starts: Vec<Duration> = (0..150).map(|_| pace.take_slot(now).saturating_duration_since(now)).collect();
        assert!(starts[..100].iter().all(|s| s.is_zero()), "one second's worth at once after a pause");
        assert_eq!(starts[100], Duration::from_millis(10), "then one every 10 ms");
        assert_eq!(starts[149], Duration::from_millis(500));
        let later = now + Duration::from_secs(10);
        assert!(pace.take_slot(later) <= later, "an idle second refills the burst");
    }
}
