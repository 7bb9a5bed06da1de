//! Appends key-use audit entries that no other commit has taken. Entries
//! ride on the shard's next commit (an ingest batch, a seal step); on a
//! quiet shard, where a read unwrapped a key and nothing else writes, this
//! commits them within [`AUDIT_FLUSH_INTERVAL`]. A crash therefore loses at
//! most the entries of the last interval, and a read never waits for a disk.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::shard::Shard;

/// Longest an audit entry waits for a commit before this task makes one.
pub const AUDIT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Commits waiting entries every [`AUDIT_FLUSH_INTERVAL`], and once more
/// when the shard stops, so a handover loses none.
pub async fn run(shard: &Shard, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(AUDIT_FLUSH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = ticks.tick() => false,
        };
        if shard.store.audit_pending()
            && let Err(e) = shard.store.transaction().commit_durable(shard.now_ms()).await
        {
            // The entries wait for the next commit that succeeds.
            warn!(shard = %shard.id, error = %e, "audit entries could not be committed");
        }
        if stopping {
            return;
        }
    }
}
