//! The rewrapper: one task per worker that moves a tenant's sealed data
//! keys under its current root whenever its projection says
//! `rewrapPending` (after `KeyRolled`, after an enable whose own rewrap did
//! not finish, after a restart). The prober and sweeps wake it; it also
//! looks every [`RESCAN`] for rewraps a vault outage left pending. So a
//! probe round never waits for a rewrap.

use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::worker::Services;

/// How often pending rewraps are retried without being woken.
pub const RESCAN: Duration = Duration::from_secs(30);

/// Asks the rewrapper to look for pending rewraps now.
#[derive(Debug, Default)]
pub struct RewrapRequests(Notify);

impl RewrapRequests {
    /// Wakes the rewrapper (or, if it is busy, makes it look again when done).
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Finishes pending rewraps, at start and whenever woken or every
/// [`RESCAN`], until `shutdown` (a rewrap cut short resumes from its last
/// committed step).
pub async fn run(services: &Services, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = rewrap_pending(services) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = services.rewraps.0.notified() => {}
            () = tokio::time::sleep(RESCAN) => {}
        }
    }
}

/// Rewraps, tenant by tenant, every tenant whose projection has a rewrap pending.
async fn rewrap_pending(services: &Services) {
    for (tenant, _) in services.store.tenants_where(|p| p.rewrap_pending) {
        match services.keyring.rewrap_to_current_root(&tenant, services.clock.now_ms()).await {
            Ok(summary) => info!(tenant, rewrapped = summary.rewrapped, "data keys under the current root"),
            Err(e) => warn!(tenant, error = %e, "rewrap still pending; retrying"),
        }
    }
}
