//! Request-rate limiting (`--throttle-rps`), so callers can be tested
//! against Key Vault's 429 responses and their backoff honoured. A token
//! bucket holding one second's worth of requests refills continuously;
//! a request finding it empty gets 429 with `Retry-After`. Refused requests
//! take no token, like Key Vault's, whose throttled calls do not count
//! against the limit.

use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Response};

use super::error::ServiceError;

/// A token bucket admitting `rate` requests per second on average.
pub(crate) struct Throttle {
    rate: f64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl Throttle {
    /// A full bucket, so the first second's burst is admitted.
    pub(crate) fn new(requests_per_second: NonZeroU32, now: Instant) -> Self {
        let rate = f64::from(requests_per_second.get());
        Self { rate, bucket: Mutex::new(Bucket { tokens: rate, refilled_at: now }) }
    }

    /// Takes a token, or says how long until one is available.
    pub(crate) fn admit(&self, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.rate);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

/// The 429 response; `Retry-After` is whole seconds, at least one.
pub(crate) fn too_many_requests(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ([(RETRY_AFTER, seconds.max(1).to_string())], ServiceError::throttled()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_one_second_of_burst_then_refills_at_the_rate() {
        let start = Instant::now();
        let rps = NonZeroU32::new(5).expect("non-zero");
        let throttle = Throttle::new(rps, start);
        for _ in 0..5 {
            assert!(throttle.admit(start).is_ok());
        }
        let wait = throttle.admit(start).expect_err("bucket is empty");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200));
        // A refused request takes nothing: after 200 ms exactly one more fits.
        let later = start + Duration::from_millis(200);
        assert!(throttle.admit(later).is_ok());
        assert!(throttle.admit(later).is_err());
        // The bucket never holds more than one second's worth.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(throttle.admit(much_later).is_ok());
        }
        assert!(throttle.admit(much_later).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let response = too_many_requests(Duration::from_millis(1));
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let response = too_many_requests(Duration::from_millis(2500));
        assert_eq!(response.headers()[RETRY_AFTER], "3");
    }
}
