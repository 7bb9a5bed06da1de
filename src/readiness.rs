//! Whether a task that talks to the broker is connected and doing its
//! work: set only by the task whose work it tells, read by `/readyz`, the
//! status page and the fleet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a task (a shard's consumer, the intake, the lease connection)
/// is connected and working: only that task sets it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Whether the task is working right now.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Set by the task whose work it tells.
    pub(crate) fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
}
