//! Per-operation request counts, so tests can prove how often a caller
//! really talks to the vault (for instance, no unwrap per record read).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// The pseudo-operation counting requests refused with 429.
pub(crate) const THROTTLED: &str = "throttled";
/// The pseudo-operation counting requests an injected fault answered (or
/// held); they count under their own operation too.
pub(crate) const FAULTED: &str = "faulted";

/// Counts requests by operation name ("wrapkey", "get_key", ...).
#[derive(Default)]
pub(crate) struct CallCounter {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl CallCounter {
    /// Counts one request of `operation`.
    pub(crate) fn record(&self, operation: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(operation).or_default() += 1;
    }

    /// The counts so far, for [`Emulator::calls`](crate::Emulator::calls).
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.iter().map(|(op, n)| ((*op).to_owned(), *n)).collect()
    }
}
