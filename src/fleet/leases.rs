//! Shard leases on the broker. One connection per worker process (with
//! `--amqp-heartbeat`) holds every lease the worker has: lease `i` is the
//! exclusive queue `keyseal.shard-<i>.owner`, which only one connection can
//! declare and which the broker deletes when that connection closes (at
//! once when the process dies, after two missed heartbeats when its host
//! is lost). The same connection consumes `keyseal.workers`, so that queue's
//! consumer count is the number of live workers. When the connection goes,
//! every lease goes with it: [`Leases::lost`] fires and the worker stops
//! every shard it ran.

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
use crate::broker::{self, ShardCountError, WORKERS_QUEUE, lease_queue};
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
    /// The `keyseal.workers` subscription: held, never read.
    _presence: (Channel, Consumer),
}

impl Leases {
    /// Holds leases on `connection` (a lease connection, with heartbeats):
    /// declares the topology and the deployment's `shards` shard queues, and
    /// registers this worker in `keyseal.workers`.
    pub async fn on(connection: Connection, shards: u32) -> Result<Self, LeaseError> {
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
        let channel = connection.create_channel().await?;
        broker::declare_topology(&connection).await?;
        broker::declare_shard_queues(&connection, shards).await?;
        let presence = channel
            .basic_consume(WORKERS_QUEUE.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        Ok(Self { connection, lost, _presence: (channel, presence) })
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
        // A refused declaration closes its channel: one per attempt.
        let channel = self.connection.create_channel().await?;
        let queue = lease_queue(shard.0);
        let options = QueueDeclareOptions { exclusive: true, ..Default::default() };
        match channel.queue_declare(queue.as_str().into(), options, FieldTable::default()).await {
            Ok(_) => {}
            Err(e) if broker::is_soft_error(&e, AMQPSoftError::RESOURCELOCKED) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        // Manual acks, so the prefetch bounds what waits in this worker.
        channel.basic_qos(forward::PREFETCH, BasicQosOptions::default()).await?;
        let consume = BasicConsumeOptions::default();
        let inbox = channel.basic_consume(queue.as_str().into(), "".into(), consume, FieldTable::default()).await?;
        Ok(Some((channel, inbox)))
    }

    /// The shards among `candidates` whose lease nobody holds. An empty,
    /// expired-on-arrival `mandatory` message to each lease queue comes back
    /// unroutable exactly when that queue does not exist; asking this way
    /// costs no refused declaration (which would close a channel) per
    /// shard another worker owns.
    pub async fn free(&self, candidates: &[ShardId]) -> Result<Vec<ShardId>, LeaseError> {
        let channel = self.connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut confirms = Vec::with_capacity(candidates.len());
        for &shard in candidates {
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let probe = BasicProperties::default().with_expiration("0".into());
            let queue = lease_queue(shard.0);
            confirms.push((shard, channel.basic_publish("".into(), queue.as_str().into(), options, b"", probe).await?));
        }
        let mut free = Vec::new();
        for (shard, confirm) in confirms {
            if confirm.await?.take_message().is_some() {
                free.push(shard);
            }
        }
        broker::close_channel(&channel, "leases probed").await;
        Ok(free)
    }

    /// Gives shard `shard`'s lease back (after its store is closed).
    pub async fn release(&self, shard: ShardId) -> Result<(), LeaseError> {
        let channel = self.connection.create_channel().await?;
        channel.queue_delete(lease_queue(shard.0).as_str().into(), QueueDeleteOptions::default()).await?;
        broker::close_channel(&channel, "lease released").await;
        Ok(())
    }

    /// The number of live workers (consumers of `keyseal.workers`), at least 1.
    pub async fn live_workers(&self) -> Result<u32, LeaseError> {
        let channel = self.connection.create_channel().await?;
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel.queue_declare(WORKERS_QUEUE.into(), options, FieldTable::default()).await?;
        broker::close_channel(&channel, "counted").await;
        Ok(queue.consumer_count().max(1))
    }

    /// Closes the connection, which gives back every lease still held.
    pub async fn close(&self) {
        broker::close(&self.connection, "keyseal worker stopping").await;
    }
}
