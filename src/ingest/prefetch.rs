//! The prefetch window in bytes as well as messages (`--prefetch-bytes`).
//!
//! RabbitMQ does not implement AMQP's `prefetch_size`, and quorum queues
//! refuse a channel-global prefetch, so the only lever is the per-consumer
//! message count, fixed when a consumer subscribes. This window picks that
//! count from the sizes seen: `budget / peak message size`, capped by
//! `--prefetch`. A new session starts as if every message were as large as a
//! record may be, then follows the sizes it sees; the consumer re-subscribes
//! on the same channel (unacked deliveries stay valid) when the count should
//! shrink, at once, or grow at least twofold. Pure, so it is tested without
//! a broker.

use super::validate::MAX_MESSAGE_BYTES;

/// How much the size estimate forgets per message: a burst of large
/// messages shrinks the window at once, and the window widens again over a
/// few thousand small ones.
const DECAY: f64 = 0.999;

/// The adaptive prefetch count of one consuming session.
#[derive(Debug, Clone)]
pub struct PrefetchWindow {
    max_count: u16,
    budget_bytes: u64,
    /// Decaying peak of recent message sizes; `None` before the first.
    peak_bytes: Option<f64>,
    current: u16,
}

impl PrefetchWindow {
    /// A window of at most `max_count` messages and about `budget_bytes`,
    /// starting small enough for messages of the largest valid size.
    pub fn new(max_count: u16, budget_bytes: u64) -> Self {
        let mut window = Self { max_count, budget_bytes, peak_bytes: None, current: 1 };
        window.current = window.count_for(MAX_MESSAGE_BYTES as f64);
        window
    }

    /// The prefetch count to subscribe with now.
    pub fn current(&self) -> u16 {
        self.current
    }

    /// Notes the size of one delivered message.
    pub fn observe(&mut self, bytes: usize) {
        let bytes = bytes as f64;
        self.peak_bytes = Some(self.peak_bytes.map_or(bytes, |peak| bytes.max(peak * DECAY)));
    }

    /// The count to re-subscribe with, if the window should change: at
    /// once when it must shrink, and only for a twofold gain when it may
    /// grow (each re-subscription costs a round trip).
    pub fn resize(&mut self) -> Option<u16> {
        let wanted = self.count_for(self.peak_bytes?);
        let change = wanted < self.current || wanted >= self.current.saturating_mul(2).min(self.max_count);
        (change && wanted != self.current).then(|| {
            self.current = wanted;
            wanted
        })
    }

    fn count_for(&self, message_bytes: f64) -> u16 {
        let fits = (self.budget_bytes as f64 / message_bytes.max(1.0)).floor();
        fits.clamp(1.0, f64::from(self.max_count.max(1))) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn starts_as_if_messages_were_the_largest_allowed() {
        let window = PrefetchWindow::new(1000, 64 * MIB);
        assert_eq!(window.current(), (64 * MIB / MAX_MESSAGE_BYTES as u64) as u16);
        assert!(window.current() < 64, "a max-size message is over 1 MiB");
        assert_eq!(PrefetchWindow::new(1000, 1).current(), 1, "never zero");
    }

    #[test]
    fn small_messages_widen_it_to_the_count_cap() {
        let mut window = PrefetchWindow::new(1000, 64 * MIB);
        window.observe(1024);
        assert_eq!(window.resize(), Some(1000));
        window.observe(1024);
        assert_eq!(window.resize(), None, "no change, no re-subscription");
    }

    #[test]
    fn one_large_message_shrinks_it_at_once_and_it_widens_again_slowly() {
        let mut window = PrefetchWindow::new(1000, 64 * MIB);
        window.observe(1024);
        window.resize();
        window.observe(MIB as usize);
        assert_eq!(window.resize(), Some(64));
        let mut widened_after = None;
        for n in 1..=10_000 {
            window.observe(1024);
            if window.resize().is_some() {
                widened_after = Some(n);
                break;
            }
        }
        let n = widened_after.expect("widens again");
        assert!((500..5_000).contains(&n), "widened after {n} small messages");
        assert_eq!(window.current(), 128, "grows in steps of at least twice");
    }

    #[test]
    fn in_flight_bytes_stay_within_the_budget_for_steady_sizes() {
        for size in [100usize, 10_000, 300_000, MIB as usize] {
            let mut window = PrefetchWindow::new(1000, 64 * MIB);
            window.observe(size);
            window.resize();
            let in_flight = u64::from(window.current()) * size as u64;
            assert!(in_flight <= 64 * MIB, "{size} B x {} = {in_flight}", window.current());
        }
    }
}
