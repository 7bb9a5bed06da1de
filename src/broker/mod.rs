//! RabbitMQ plumbing shared by the worker, the producer and the outbox:
//! connecting, the fixed topology from DESIGN.md, and reconnect backoff;
//! [`publish`] is the confirm-mode producer.

pub mod nodes;
pub mod properties;
pub mod publish;
pub mod session;

pub use nodes::{Broker, BrokerNodes, NodesError, hide_password};

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tracing::warn;

/// The broker every role uses unless told otherwise: RabbitMQ on this
/// machine with its default account, default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Topic exchange producers publish `IngestRecord`s to (routing key = tenant).
pub const INGEST_EXCHANGE: &str = "keyseal.ingest";
/// The intake: quorum queue every worker consumes, where messages of
/// tenants not yet placed on a shard arrive (through [`UNPLACED_EXCHANGE`]).
/// It was bound to [`INGEST_EXCHANGE`] with `#` while keyseal had one queue.
pub const INGEST_QUEUE: &str = "keyseal.ingest";
/// Direct exchange with one binding per placed tenant (binding key = tenant
/// id) to its shard queue; [`INGEST_EXCHANGE`] hands it every message.
pub const ROUTE_EXCHANGE: &str = "keyseal.route";
/// Fanout exchange: the alternate exchange of [`ROUTE_EXCHANGE`], so a
/// tenant with no binding yet lands in the intake [`INGEST_QUEUE`].
pub const UNPLACED_EXCHANGE: &str = "keyseal.unplaced";
/// Quorum queue nobody publishes to or consumes: its `x-max-length`
/// argument holds the deployment's shard count (RabbitMQ refuses a
/// redeclaration with another value, so a worker started with a different
/// `--shards` cannot join). Live workers are counted by their presence
/// queues ([`presence_queue`]), not by its consumers: a quorum queue keeps
/// the consumers of a lost node, suspected down, in its count.
pub const WORKERS_QUEUE: &str = "keyseal.workers";
/// Dead-letter exchange of the ingest queue.
pub const DEAD_LETTER_EXCHANGE: &str = "keyseal.ingest.dlx";
/// Where rejected messages rest, with their reason in [`ERROR_HEADER`].
pub const DEAD_LETTER_QUEUE: &str = "keyseal.ingest.dead";
/// Topic exchange of domain events (`tenant.<tenant>.<event_kind>`).
pub const EVENTS_EXCHANGE: &str = "keyseal.events";
/// Header naming why a message was dead-lettered (a stable reason code).
pub const ERROR_HEADER: &str = "x-keyseal-error";
/// Header with the human-readable detail of [`ERROR_HEADER`].
pub const ERROR_DETAIL_HEADER: &str = "x-keyseal-error-detail";
/// Content type of every protobuf body keyseal sends or expects.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

/// The ingest queue of shard `shard`.
pub fn shard_queue(shard: u32) -> String {
    format!("keyseal.ingest.shard-{shard}")
}

/// Presence slot `slot`: an exclusive queue a live worker holds on its
/// lease connection, so it goes with that connection or its node. The
/// slots taken are the live workers (slots `0..shards`: a worker past the
/// shard count would get one shard either way).
pub fn presence_queue(slot: u32) -> String {
    format!("keyseal.workers.{slot}")
}

/// The AMQP `type` of a lease probe: an empty, expired-on-arrival message
/// a worker sends to learn whether a queue exists. One that reaches an
/// owner's inbox is acked there and nothing more: it asks nothing.
pub const PROBE_TYPE: &str = "keyseal.probe";

/// The lease queue of shard `shard`: whoever holds it (declared exclusive)
/// owns the shard.
pub fn lease_queue(shard: u32) -> String {
    format!("keyseal.shard-{shard}.owner")
}

/// Opens a connection named after its role (visible in the management UI)
/// to one node: a tool's or a test's connection.
pub async fn connect(url: &str, role: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(format!("keyseal {role}").into());
    Connection::connect(url, properties).await
}

/// Opens a connection named after its role to the first of `broker`'s nodes
/// that answers, trying each once in turn from node `from`, with
/// `heartbeat` seconds when given; returns it with the index of the node
/// it reached, or the last node's refusal.
pub async fn connect_any(
    broker: &Broker,
    from: usize,
    role: &str,
    heartbeat: Option<u16>,
) -> lapin::Result<(Connection, usize)> {
    let nodes = &broker.nodes;
    let mut last = None;
    for index in (from..from + nodes.len()).map(|i| i % nodes.len()) {
        let mut uri = nodes.uri(index).clone();
        if heartbeat.is_some() {
            uri.query.heartbeat = heartbeat;
        }
        let properties = ConnectionProperties::default().with_connection_name(format!("keyseal {role}").into());
        match Connection::connect_uri(uri, properties).await {
            Ok(connection) => return Ok((connection, index)),
            Err(e) => {
                tracing::debug!(node = %nodes.shown(index), role, error = %e, "broker node does not answer; trying the next");
                last = Some(e);
            }
        }
    }
    Err(last.expect("a list has at least one node"))
}

/// Closes a connection, waiting at most two seconds for the broker's answer.
pub async fn close(connection: &Connection, reason: &str) {
    let closing = connection.close(200, reason.into());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), closing).await;
}

/// Closes a channel, waiting at most two seconds for the broker's answer.
/// Channels are closed before their connection on a clean stop: a channel
/// still closing (or dropped) when its connection closes makes lapin log a
/// connection error although nothing went wrong.
pub async fn close_channel(channel: &Channel, reason: &str) {
    let closing = channel.close(200, reason.into());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), closing).await;
}

/// Declares the fixed topology every role relies on: the exchanges, the
/// dead-letter queue and the intake, and the route from `keyseal.ingest`
/// through `keyseal.route` (unplaced tenants fall through to the intake).
/// Idempotent, so every role declares it and none depends on another having
/// started first. Removes the one-queue layout's `#` binding of the intake
/// (its backlog then drains through placement). Uses channels of its own,
/// so a queue declared earlier with other arguments cannot close the
/// caller's. The dead-letter queue and the intake get `quorum_size`
/// replicas ([`Broker::quorum_size`]).
pub async fn declare_topology(connection: &Connection, quorum_size: Option<u32>) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    for exchange in [INGEST_EXCHANGE, DEAD_LETTER_EXCHANGE, EVENTS_EXCHANGE] {
        channel.exchange_declare(exchange.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    }
    channel.exchange_declare(UNPLACED_EXCHANGE.into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    let mut route = FieldTable::default();
    route.insert("alternate-exchange".into(), AMQPValue::LongString(UNPLACED_EXCHANGE.into()));
    channel.exchange_declare(ROUTE_EXCHANGE.into(), ExchangeKind::Direct, durable, route).await?;
    declare_queue(connection, DEAD_LETTER_QUEUE, quorum(quorum_size)).await?;
    let mut intake = dead_lettering(quorum(quorum_size));
    intake.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(INTAKE_DELIVERY_LIMIT));
    declare_queue(connection, INGEST_QUEUE, intake).await?;
    let no_args = FieldTable::default;
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await?;
    channel
        .queue_bind(INGEST_QUEUE.into(), UNPLACED_EXCHANGE.into(), "".into(), QueueBindOptions::default(), no_args())
        .await?;
    channel
        .exchange_bind(
            ROUTE_EXCHANGE.into(),
            INGEST_EXCHANGE.into(),
            "#".into(),
            ExchangeBindOptions::default(),
            no_args(),
        )
        .await?;
    channel.queue_unbind(INGEST_QUEUE.into(), INGEST_EXCHANGE.into(), "#".into(), no_args()).await?;
    close_channel(&channel, "declared").await;
    Ok(())
}

/// Deliveries after which the broker dead-letters an intake message by
/// itself (`x-delivery-limit`), should the intake's own limit
/// (`fleet::intake::MAX_FORWARD_ATTEMPTS`) never get to see it.
pub const INTAKE_DELIVERY_LIMIT: i64 = 20;

/// Declares durable queue `name` with `args`. A queue that exists with
/// other arguments (declared by an earlier keyseal, or under other
/// settings) is used as it is, with a warning: RabbitMQ cannot change a
/// queue's arguments (a policy can), and refusing to start over it would
/// stop a deployment at an upgrade. Returns the broker's refusal then.
async fn declare_queue(connection: &Connection, name: &str, args: FieldTable) -> lapin::Result<Option<String>> {
    match try_declare(connection, name, args).await? {
        Ok(()) => Ok(None),
        Err(refusal) => {
            // Said once per queue and process: every session re-declares.
            static WARNED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
            let first = WARNED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(name.to_owned());
            if first {
                warn!(queue = name, broker = %refusal, "the queue exists with other arguments; using it as it is");
            }
            let channel = connection.create_channel().await?;
            let passive = QueueDeclareOptions { passive: true, ..Default::default() };
            channel.queue_declare(name.into(), passive, FieldTable::default()).await?;
            close_channel(&channel, "declared").await;
            Ok(Some(refusal))
        }
    }
}

/// Declares durable queue `name` with `args` on a channel of its own (a
/// refused declaration closes its channel): `Ok(Err(refusal))` when the
/// queue exists with other arguments.
async fn try_declare(connection: &Connection, name: &str, args: FieldTable) -> lapin::Result<Result<(), String>> {
    let channel = connection.create_channel().await?;
    match channel.queue_declare(name.into(), QueueDeclareOptions::durable(), args).await {
        Ok(_) => {
            close_channel(&channel, "declared").await;
            Ok(Ok(()))
        }
        Err(e) if is_soft_error(&e, AMQPSoftError::PRECONDITIONFAILED) => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

/// Removes `tenant`'s binding to shard `shard`'s queue (an erasure's
/// last step): its late messages then go through the intake, which binds
/// it again only if any arrive (their dead letters carry no payload).
pub async fn unbind_tenant(broker: &Broker, shard: u32, tenant: &str) -> lapin::Result<()> {
    let (connection, _) = connect_any(broker, broker.first, "erasure", None).await?;
    let result = async {
        let channel = connection.create_channel().await?;
        let queue = shard_queue(shard);
        channel
            .queue_unbind(queue.as_str().into(), ROUTE_EXCHANGE.into(), tenant.into(), FieldTable::default())
            .await?;
        close_channel(&channel, "unbound").await;
        Ok(())
    }
    .await;
    close(&connection, "unbound").await;
    result
}

/// Declares the shard queues of a deployment of `shards` shards and the
/// workers queue that records the count. [`ShardCountError::Mismatch`]
/// when the deployment on this broker has another count. Every queue is a
/// quorum queue, so it outlives the loss of any one node of a cluster; the
/// shard queues get `quorum_size` replicas ([`Broker::quorum_size`]), the
/// workers queue the broker's default (its one argument is the count).
pub async fn declare_shard_queues(
    connection: &Connection,
    shards: u32,
    quorum_size: Option<u32>,
) -> Result<(), ShardCountError> {
    let mut count = FieldTable::default();
    count.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(shards)));
    let mut workers = quorum(None);
    workers.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(shards)));
    match try_declare(connection, WORKERS_QUEUE, workers).await? {
        Ok(()) => {}
        Err(refusal) if refusal.contains("x-max-length") => {
            return Err(ShardCountError::Mismatch { shards, broker: refusal });
        }
        // A classic workers queue, from before the cluster support: its
        // count is checked with the arguments it was declared with.
        Err(_) => match try_declare(connection, WORKERS_QUEUE, count).await? {
            Ok(()) => warn!(
                queue = WORKERS_QUEUE,
                "a classic queue, unavailable while its node is down: delete it once every worker is upgraded"
            ),
            Err(refusal) => return Err(ShardCountError::Mismatch { shards, broker: refusal }),
        },
    }
    let mut queue = dead_lettering(quorum(quorum_size));
    queue.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    for shard in 0..shards {
        declare_queue(connection, &shard_queue(shard), queue.clone()).await?;
    }
    Ok(())
}

/// Why the shard queues could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum ShardCountError {
    /// The broker already holds a deployment with another shard count.
    #[error(
        "this worker runs with --shards {shards}, but the deployment on this broker was created with another shard count, \
         kept as the x-max-length of queue {WORKERS_QUEUE} (the broker said: {broker}); the shard count is fixed for a \
         deployment's life: start every worker with the deployment's count"
    )]
    Mismatch {
        /// This worker's count.
        shards: u32,
        /// The broker's refusal, which names both counts.
        broker: String,
    },
    /// The broker failed otherwise.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

/// Whether `error` is the broker's soft (channel) error `kind`.
pub fn is_soft_error(error: &lapin::Error, kind: AMQPSoftError) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(kind))
}

/// The arguments of a quorum queue with `size` replicas (the broker's
/// default when `None`; it places at most one per node).
fn quorum(size: Option<u32>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    if let Some(size) = size {
        args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongLongInt(i64::from(size)));
    }
    args
}

fn dead_lettering(mut args: FieldTable) -> FieldTable {
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()));
    args
}

/// Exponential reconnect backoff: 100 ms doubling to a 10 s ceiling.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CEILING: Duration = Duration::from_secs(10);

    /// The delay to wait now; doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::CEILING);
        delay
    }

    /// Call after a success so the next failure retries quickly.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_ceiling_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(&delays[..4], &[100, 200, 400, 800]);
        assert_eq!(*delays.last().unwrap(), 10_000);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
