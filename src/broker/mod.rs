//! RabbitMQ plumbing shared by the worker, the producer and the outbox:
//! connecting, the fixed topology from DESIGN.md, and reconnect backoff;
//! [`publish`] is the confirm-mode producer.

pub mod publish;

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

/// The broker every role uses unless told otherwise: RabbitMQ on this
/// machine with its default account, default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Topic exchange producers publish `IngestRecord`s to (routing key = tenant).
pub const INGEST_EXCHANGE: &str = "keyseal.ingest";
/// Quorum queue the worker consumes, bound to [`INGEST_EXCHANGE`] with `#`.
pub const INGEST_QUEUE: &str = "keyseal.ingest";
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

/// Opens a connection named after its role (visible in the management UI).
pub async fn connect(url: &str, role: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(format!("keyseal {role}").into());
    Connection::connect(url, properties).await
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

/// Declares the whole fixed topology. Idempotent, so every role declares it
/// and none depends on another having started first.
pub async fn declare_topology(channel: &Channel) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..Default::default() };
    for exchange in [INGEST_EXCHANGE, DEAD_LETTER_EXCHANGE, EVENTS_EXCHANGE] {
        channel.exchange_declare(exchange.into(), ExchangeKind::Topic, durable_exchange, FieldTable::default()).await?;
    }
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    channel.queue_declare(DEAD_LETTER_QUEUE.into(), QueueDeclareOptions::durable(), quorum.clone()).await?;
    let mut ingest = quorum;
    ingest.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()));
    channel.queue_declare(INGEST_QUEUE.into(), QueueDeclareOptions::durable(), ingest).await?;
    for (queue, exchange) in [(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE), (INGEST_QUEUE, INGEST_EXCHANGE)] {
        channel
            .queue_bind(queue.into(), exchange.into(), "#".into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    Ok(())
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
