//! Shard leases on the broker. One connection per worker process (with
//! `--amqp-heartbeat`) holds every lease the worker has: lease `i` is the
//! exclusive queue `keyseal.shard-<i>.owner`, which only one connection can
//! declare and which the broker deletes when that connection closes (at
//! once when the process dies, after two missed heartbeats when its host
//! is lost). The same connection holds the worker's presence slot, an
//! exclusive queue `keyseal.workers.<j>`: the slots taken are the live
//! workers, counted as the leases are found free, so a worker on a lost node
//! stops counting the moment its leases go. (Counting the consumers of one
//! queue does not survive a node's loss: a quorum queue keeps a lost node's
//! consumers, suspected down, in its count, and a classic queue is gone
//! with its node.) When the connection goes, every lease goes with it:
//! [`Leases::lost`] fires and the worker stops every shard it ran.

use std::sync::Mutex;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;

use super::forward;
use crate::broker::{self, PROBE_TYPE, ShardCountError, lease_queue, presence_queue};
use crate::placement::ShardId;

/// Why the lease connection failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The broker failed or could not be reached.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The deployment on this broker has another shard count.
    #[error(transparent)]
    ShardCount(ShardCountError),
}

impl From<ShardCountError> for LeaseError {
    fn from(e: ShardCountError) -> Self {
        match e {
            ShardCountError::Broker(e) => Self::Broker(e),
            mismatch => Self::ShardCount(mismatch),
        }
    }
}

/// A worker's lease connection and the leases it holds.
pub struct Leases {
    connection: Connection,
    lost: CancellationToken,
    shards: u32,
    /// The presence slot this worker holds, once it got one.
    slot: Mutex<Option<u32>>,
}

impl Leases {
    /// Holds leases on `connection` (a lease connection, with heartbeats,
    /// from [`Sessions`](crate::broker::session::Sessions), which declared
    /// the topology): declares the deployment's `shards` shard queues with
    /// `quorum_size` replicas, and takes a presence slot.
    pub async fn on(connection: Connection, shards: u32, quorum_size: Option<u32>) -> Result<Self, LeaseError> {
        let lost = CancellationToken::new();
        let mut events = connection.events_listener();
        let (status, signal) = (connection.status().clone(), lost.clone());
        tokio::spawn(async move {
            // Channel errors (a refused lease among them) are events too:
            // only the connection's own state says whether it is gone.
            while let Some(event) = events.next().await {
                if matches!(event, lapin::Event::Error(_)) && !status.connected() {
                    break;
                }
            }
            signal.cancel();
        });
        broker::declare_shard_queues(&connection, shards, quorum_size).await?;
        let leases = Self { connection, lost, shards, slot: Mutex::new(None) };
        leases.live_workers().await?;
        Ok(leases)
    }

    /// Fires when the connection, and with it every lease, is gone.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        !self.lost.is_cancelled() && self.connection.status().connected()
    }

    /// Tries to take shard `shard`'s lease: `Ok(None)` when another worker
    /// holds it, else the shard's request inbox: the lease queue, consumed
    /// on a channel of its own (admin requests forwarded by other workers).
    pub async fn try_take(&self, shard: ShardId) -> Result<Option<(Channel, Consumer)>, LeaseError> {
        let queue = lease_queue(shard.0);
        let Some(channel) = self.declare_exclusive(&queue).await? else { return Ok(None) };
        // Manual acks, so the prefetch bounds what waits in this worker.
        channel.basic_qos(forward::PREFETCH, BasicQosOptions::default()).await?;
        let consume = BasicConsumeOptions::default();
        let inbox = channel.basic_consume(queue.as_str().into(), "".into(), consume, FieldTable::default()).await?;
        Ok(Some((channel, inbox)))
    }

    /// The shards among `candidates` whose lease nobody holds.
    pub async fn free(&self, candidates: &[ShardId]) -> Result<Vec<ShardId>, LeaseError> {
        let queues: Vec<String> = candidates.iter().map(|shard| lease_queue(shard.0)).collect();
        let held = self.held(&queues).await?;
        Ok(candidates.iter().zip(held).filter(|(_, held)| !held).map(|(shard, _)| *shard).collect())
    }

    /// Declares `queue` exclusive on a channel of its own (a refused
    /// declaration closes its channel): `None` when another connection
    /// holds it.
    async fn declare_exclusive(&self, queue: &str) -> Result<Option<Channel>, LeaseError> {
        let channel = self.connection.create_channel().await?;
        let options = QueueDeclareOptions { exclusive: true, ..Default::default() };
        match channel.queue_declare(queue.into(), options, FieldTable::default()).await {
            Ok(_) => Ok(Some(channel)),
            Err(e) if broker::is_soft_error(&e, AMQPSoftError::RESOURCELOCKED) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Which of `queues` exist. An empty, expired-on-arrival `mandatory`
    /// message to each comes back unroutable exactly when that queue does
    /// not exist; asking this way costs no refused declaration (which would
    /// close a channel) per queue another worker holds.
    async fn held(&self, queues: &[String]) -> Result<Vec<bool>, LeaseError> {
        let channel = self.connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut confirms = Vec::with_capacity(queues.len());
        for queue in queues {
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let probe = BasicProperties::default().with_expiration("0".into()).with_type(PROBE_TYPE.into());
            confirms.push(channel.basic_publish("".into(), queue.as_str().into(), options, b"", probe).await?);
        }
        let mut held = Vec::with_capacity(queues.len());
        for confirm in confirms {
            held.push(confirm.await?.take_message().is_none());
        }
        broker::close_channel(&channel, "leases probed").await;
        Ok(held)
    }

    /// Gives shard `shard`'s lease back (after its store is closed).
    pub async fn release(&self, shard: ShardId) -> Result<(), LeaseError> {
        let channel = self.connection.create_channel().await?;
        channel.queue_delete(lease_queue(shard.0).as_str().into(), QueueDeleteOptions::default()).await?;
        broker::close_channel(&channel, "lease released").await;
        Ok(())
    }

    /// The number of live workers, at least 1: the presence slots taken,
    /// this worker among them (it takes the first free slot while it has
    /// none). Past `shards` workers the count stops at `shards` plus this
    /// one, which gives every worker the same share, one shard.
    pub async fn live_workers(&self) -> Result<u32, LeaseError> {
        let slots: Vec<String> = (0..self.shards).map(presence_queue).collect();
        let held = self.held(&slots).await?;
        let mut live = held.iter().filter(|held| **held).count() as u32;
        let slot = *self.slot.lock().expect("presence slot lock");
        if slot.is_none() {
            live += 1;
            for (i, _) in held.iter().enumerate().filter(|(_, held)| !**held) {
                if let Some(channel) = self.declare_exclusive(&slots[i]).await? {
                    broker::close_channel(&channel, "present").await;
                    *self.slot.lock().expect("presence slot lock") = Some(i as u32);
                    break;
                }
            }
        }
        Ok(live.max(1))
    }

    /// Closes the connection, which gives back every lease still held.
    pub async fn close(&self) {
        broker::close(&self.connection, "keyseal worker stopping").await;
    }
}
