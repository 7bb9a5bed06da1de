//! The rewrapper: the one task of a shard that moves a tenant's sealed data
//! keys under its current root. Every rewrap goes through it: an enable
//! asks for its tenant and waits for the answer ([`RewrapRequests::rewrap`]),
//! the prober wakes it after `KeyRolled`, and at start and every [`RESCAN`]
//! it resumes whatever the projections still mark `rewrapPending` (a crash,
//! a vault outage). So a probe round never waits for a rewrap, and two
//! rewraps never race. Each rewrap keeps a bounded number of vault calls
//! in flight (`--vault-concurrency`, see the keyring).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::crypto::keyring::{KeyringError, RewrapSummary};
use crate::shard::Shard;

/// How often pending rewraps are retried without being woken.
pub const RESCAN: Duration = Duration::from_secs(30);

/// One tenant to rewrap now, and where to send what happened.
struct Request {
    tenant: String,
    reply: oneshot::Sender<Result<RewrapSummary, KeyringError>>,
}

/// The handle others hold to ask the rewrapper for work; cloning it is cheap.
#[derive(Clone)]
pub struct RewrapRequests {
    wake: Arc<Notify>,
    now: mpsc::UnboundedSender<Request>,
}

/// The rewrapper's side of [`RewrapRequests`]: what [`run`] consumes.
pub struct RewrapInbox {
    wake: Arc<Notify>,
    now: mpsc::UnboundedReceiver<Request>,
}

/// A connected pair: requests made through the first reach the task that runs the second.
pub fn channel() -> (RewrapRequests, RewrapInbox) {
    let wake = Arc::new(Notify::new());
    let (tx, rx) = mpsc::unbounded_channel();
    (RewrapRequests { wake: wake.clone(), now: tx }, RewrapInbox { wake, now: rx })
}

impl RewrapRequests {
    /// Wakes the rewrapper to look for pending rewraps (or, if it is busy,
    /// makes it look again when done).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Rewraps `tenant` now and returns what that did, or `None` if the
    /// rewrapper has stopped (the rewrap stays pending for the next start).
    pub async fn rewrap(&self, tenant: &str) -> Option<Result<RewrapSummary, KeyringError>> {
        let (reply, answer) = oneshot::channel();
        self.now.send(Request { tenant: tenant.to_owned(), reply }).ok()?;
        answer.await.ok()
    }
}

/// Finishes pending rewraps at start, then serves requests, wake-ups and a
/// rescan every [`RESCAN`] until `shutdown` (a rewrap cut short resumes
/// from its last committed step).
pub async fn run(shard: &Shard, mut inbox: RewrapInbox, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = rewrap_pending(shard) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(request) = inbox.now.recv() => {
                let outcome = tokio::select! {
                    () = shutdown.cancelled() => return,
                    outcome = shard.keyring.rewrap_to_current_root(&request.tenant, shard.now_ms()) => outcome,
                };
                // The asker may have gone (its request timed out): the rewrap is done regardless.
                let _ = request.reply.send(outcome);
            }
            () = inbox.wake.notified() => {}
            () = tokio::time::sleep(RESCAN) => {}
        }
    }
}

/// Rewraps, tenant by tenant, every tenant whose projection has a rewrap pending.
async fn rewrap_pending(shard: &Shard) {
    for (tenant, _) in shard.store.tenants_where(|p| p.rewrap_pending) {
        match shard.keyring.rewrap_to_current_root(&tenant, shard.now_ms()).await {
            Ok(summary) => info!(tenant, rewrapped = summary.rewrapped, "data keys under the current root"),
            Err(e) => warn!(tenant, error = %e, "rewrap still pending; retrying"),
        }
    }
}
