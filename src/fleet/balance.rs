//! The balancer: the one task that takes and gives back a worker's shards.
//! Every `--rebalance-interval` it counts the live workers W and moves this
//! worker toward its share, ceil(N / W): it takes free shards (those whose
//! lease queue does not exist, then declared exclusive: only one worker's
//! declaration succeeds) or hands the excess over gracefully (out of the
//! admin API, tasks stopped after their last batch is acked, store closed,
//! then the lease deleted). With `--own-shards` it only ever takes those.
//! When the lease connection goes, every shard stops at once (someone else
//! may own it a moment later), and the balancer connects again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Consumer};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::forward::{self, InboxContext};
use super::leases::{LeaseError, Leases};
use super::owned::OwnedShards;
use super::running::RunningShard;
use crate::broker::session::Sessions;
use crate::broker::{Backoff, Broker};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::placement::ShardId;
use crate::readiness::Readiness;
use crate::shard::{OpenError, Shard, WorkerVault};
use crate::telemetry::happenings::{Emit, ShardStopped};

/// Longest a handover waits for requests still using a shard's store, and a
/// new owner for the old owner's RocksDB lock.
pub const DRAIN: Duration = Duration::from_secs(30);

/// This worker's share of `shards` among `workers` live workers.
pub fn share(shards: u32, workers: u32) -> usize {
    shards.div_ceil(workers.max(1)) as usize
}

/// The shards to try to take, in the order to try them: the pinned ones,
/// or every shard from `offset` on (workers start at different offsets so
/// that they rarely race for the same shard), less those already owned.
pub fn candidates(shards: u32, owned: &[ShardId], pinned: Option<&BTreeSet<u32>>, offset: u32) -> Vec<ShardId> {
    let order: Vec<u32> = match pinned {
        Some(pinned) => pinned.iter().copied().collect(),
        None => (0..shards).map(|i| (i + offset) % shards).collect(),
    };
    order.into_iter().map(ShardId).filter(|id| !owned.contains(id)).collect()
}

/// The balancer of one worker.
pub struct Balancer {
    settings: Arc<Settings>,
    /// The broker the shards' tasks use.
    broker: Broker,
    /// Where the lease connection connects next.
    sessions: tokio::sync::Mutex<Sessions>,
    /// The worker's one vault client, which every shard it opens shares.
    vault: WorkerVault,
    clock: SharedClock,
    owned: Arc<OwnedShards>,
    leased: Readiness,
    inbox: InboxContext,
    offset: u32,
}

impl Balancer {
    /// A balancer filling `owned`, telling in `leased` whether its lease
    /// connection is up; an owned shard's forwarded requests are served
    /// with `inbox`.
    pub fn new(
        settings: Arc<Settings>,
        broker: &Broker,
        vault: WorkerVault,
        clock: SharedClock,
        owned: Arc<OwnedShards>,
        leased: Readiness,
        inbox: InboxContext,
    ) -> Self {
        let offset = std::process::id() % settings.shards;
        let sessions = Sessions::new(broker, "leases").with_heartbeat(settings.amqp_heartbeat);
        let sessions = tokio::sync::Mutex::new(sessions);
        Self { settings, broker: broker.clone(), sessions, vault, clock, owned, leased, inbox, offset }
    }

    /// Connects the lease connection, to the next node of the broker that
    /// answers.
    pub async fn connect(&self) -> Result<Leases, LeaseError> {
        let mut sessions = self.sessions.lock().await;
        let connection = sessions.connect().await?;
        let leases = Leases::on(connection, self.settings.shards, self.broker.quorum_size).await?;
        self.owned.set_broker_node(sessions.node());
        self.leased.set(true);
        Ok(leases)
    }

    /// Runs rounds until `shutdown`, starting with `leases` when connected
    /// already; on shutdown hands every shard over and gives the leases back.
    pub async fn run(&self, mut leases: Option<Leases>, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let current = match leases.take() {
                Some(current) => current,
                None => match self.connect().await {
                    Ok(current) => current,
                    Err(e) => {
                        warn!(error = %e, "no lease connection; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff.next_delay()) => continue,
                        }
                    }
                },
            };
            backoff.reset();
            let lost = current.lost();
            let mut ticks = tokio::time::interval(self.settings.rebalance_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return self.give_up(current).await,
                    () = lost.cancelled() => break,
                    _ = ticks.tick() => {
                        if !current.is_connected() {
                            break;
                        }
                        match self.round(&current).await {
                            Ok(refused) => log_refused(&refused),
                            Err(e) => warn!(error = %e, "rebalance round failed"),
                        }
                    }
                }
            }
            self.leased.set(false);
            self.owned.set_broker_node(None);
            warn!(shards = ?self.owned.ids(), "lease connection lost: stopping every shard");
            futures_util::future::join_all(self.owned.ids().into_iter().map(|id| self.stop(id, "lease_lost"))).await;
        }
    }

    /// One round: take free shards up to this worker's share, or hand the
    /// excess over. Returns the shards whose lease it took but whose store
    /// it could not open, each with why (their leases are given back, so
    /// another worker may try).
    pub async fn round(&self, leases: &Leases) -> Result<Vec<(ShardId, OpenError)>, LeaseError> {
        let shards = self.settings.shards;
        let pinned = self.settings.own_shards.as_ref().map(|list| &list.0);
        let workers = leases.live_workers().await?;
        self.owned.set_workers(workers);
        let target = match pinned {
            Some(pinned) => pinned.len(),
            None => share(shards, workers),
        };
        let owned = self.owned.ids();
        if owned.len() > target && pinned.is_none() {
            for id in owned.iter().rev().take(owned.len() - target) {
                self.hand_over(leases, *id, "rebalance").await?;
            }
            return Ok(Vec::new());
        }
        let (mut missing, mut refused) = (target.saturating_sub(owned.len()), Vec::new());
        if missing == 0 {
            return Ok(refused);
        }
        for id in leases.free(&candidates(shards, &owned, pinned, self.offset)).await? {
            if missing == 0 || !leases.is_connected() {
                break;
            }
            if let Some(inbox) = leases.try_take(id).await? {
                match self.open(id, inbox).await {
                    Ok(()) => missing -= 1,
                    Err(e) => {
                        leases.release(id).await?;
                        refused.push((id, e));
                    }
                }
            }
        }
        Ok(refused)
    }

    /// Hands every shard over and closes the lease connection (shutdown,
    /// or a start that cannot go on).
    pub async fn give_up(&self, leases: Leases) {
        self.hand_over_all(&leases).await;
        leases.close().await;
        self.leased.set(false);
        self.owned.set_broker_node(None);
    }

    /// Opens shard `id` (its lease held) and starts its tasks, among them
    /// the one answering `inbox`, its forwarded requests. Retries while the
    /// store is locked: its previous owner may still be closing it.
    async fn open(&self, id: ShardId, inbox: (Channel, Consumer)) -> Result<(), OpenError> {
        let deadline = tokio::time::Instant::now() + DRAIN;
        let mut backoff = Backoff::default();
        let shard = loop {
            let (options, vault, clock) = (self.settings.shard_options(), self.vault.clone(), self.clock.clone());
            let opened = tokio::task::spawn_blocking(move || Shard::open(id, &options, vault, clock))
                .await
                .expect("opening a shard does not panic");
            match opened {
                Err(OpenError::Store { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => break other?,
            }
        };
        let running = Arc::new(RunningShard::start(shard, &self.settings, &self.broker));
        let context = self.inbox.clone();
        running.spawn(|stop| forward::serve_inbox(id, inbox.0, inbox.1, context, stop));
        self.owned.insert(running, self.clock.now_ms());
        info!(shard = %id, "shard taken");
        Ok(())
    }

    /// Stops shard `id` (cause: `rebalance`, `shutdown`, `lease_lost`).
    async fn stop(&self, id: ShardId, cause: &'static str) {
        if let Some(running) = self.owned.remove(id) {
            running.stop(DRAIN).await;
            ShardStopped { shard: id, cause }.emit();
        }
    }

    /// Stops shard `id`, then gives its lease back.
    async fn hand_over(&self, leases: &Leases, id: ShardId, cause: &'static str) -> Result<(), LeaseError> {
        self.stop(id, cause).await;
        leases.release(id).await
    }

    /// Hands every shard over at once (each waits only for itself).
    async fn hand_over_all(&self, leases: &Leases) {
        let handovers = self.owned.ids().into_iter().map(|id| async move {
            if let Err(e) = self.hand_over(leases, id, "shutdown").await {
                warn!(shard = %id, error = %e, "handing a shard over at shutdown");
            }
        });
        futures_util::future::join_all(handovers).await;
    }
}

/// Logs the shards a round could not open.
fn log_refused(refused: &[(ShardId, OpenError)]) {
    for (id, e) in refused {
        error!(shard = %id, error = %e, "took the lease but could not open the shard; gave it back");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_the_ceiling() {
        assert_eq!([1, 2, 3, 4, 8, 9].map(|w| share(8, w)), [8, 4, 3, 2, 1, 1]);
        assert_eq!(share(1, 3), 1);
        assert_eq!(share(8, 0), 8, "a worker counts itself at least");
    }

    #[test]
    fn candidates_skip_owned_and_start_at_the_offset() {
        let ids = |v: &[u32]| v.iter().copied().map(ShardId).collect::<Vec<_>>();
        assert_eq!(candidates(5, &ids(&[3]), None, 2), ids(&[2, 4, 0, 1]));
        let pinned = BTreeSet::from([0, 3, 4]);
        assert_eq!(candidates(8, &ids(&[3]), Some(&pinned), 5), ids(&[0, 4]));
    }
}
