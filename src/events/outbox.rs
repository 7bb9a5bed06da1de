//! The outbox relay. Events are committed to the log with the state they
//! describe; this task publishes them in order to `keyseal.events` with
//! publisher confirms, and advances the durable published watermark only
//! after the broker confirmed everything up to it. A crash therefore re-sends
//! at most the unconfirmed tail (at-least-once; consumers dedupe by sequence).

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::routing_key;
use crate::broker::session::{Session, Sessions};
use crate::broker::{self, Broker, EVENTS_EXCHANGE, PROTOBUF_CONTENT_TYPE};
use crate::placement::ShardId;
use crate::proto::names::kind_name;
use crate::storage::{Store, StoreError};
use crate::telemetry::metrics as m;

/// Events published per confirm round.
const BATCH: usize = 500;
/// How often the relay looks at the log even without a commit signal.
const IDLE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker nacked event {0}")]
    Nacked(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Relays shard `shard`'s log until `shutdown`, on whichever node of the
/// broker answers, reconnecting with backoff. Each event goes out with its
/// shard (consumers dedupe on shard and sequence).
pub async fn run(store: &Store, shard: ShardId, broker: &Broker, shutdown: CancellationToken) {
    Sessions::new(broker, "events").run(&shutdown, Relay { store, shard, shutdown: &shutdown }).await;
}

/// The relay's sessions.
struct Relay<'a> {
    store: &'a Store,
    shard: ShardId,
    shutdown: &'a CancellationToken,
}

impl Session for Relay<'_> {
    type Error = RelayError;

    async fn run(&mut self, connection: &Connection) -> Result<(), RelayError> {
        relay(self.store, self.shard, connection, self.shutdown).await
    }
}

async fn relay(
    store: &Store,
    shard: ShardId,
    connection: &Connection,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    loop {
        let watermark = store.published_watermark()?;
        m::outbox_lag(shard, store.last_sequence().saturating_sub(watermark));
        let mut events = store.events_after(watermark, BATCH)?;
        let Some(last) = events.last().map(|e| e.sequence) else {
            tokio::select! {
                () = shutdown.cancelled() => {
                    broker::close_channel(&channel, "shutdown").await;
                    return Ok(());
                }
                () = store.appended().notified() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        };
        let mut confirms = Vec::with_capacity(events.len());
        for event in &mut events {
            event.shard = shard.0;
            let kind = event.kind.as_ref().map_or("unknown", kind_name);
            let mut headers = FieldTable::default();
            headers.insert("x-keyseal-sequence".into(), AMQPValue::LongLongInt(event.sequence as i64));
            headers.insert("x-keyseal-shard".into(), AMQPValue::LongUInt(shard.0));
            let properties = BasicProperties::default()
                .with_content_type(PROTOBUF_CONTENT_TYPE.into())
                .with_delivery_mode(2)
                .with_message_id(event.sequence.to_string().into())
                .with_type(kind.into())
                .with_timestamp((event.time_unix_ms / 1000).max(0) as u64)
                .with_headers(headers);
            let confirm = channel
                .basic_publish(
                    EVENTS_EXCHANGE.into(),
                    routing_key(event).into(),
                    BasicPublishOptions::default(),
                    &event.encode_to_vec(),
                    properties,
                )
                .await?;
            confirms.push((event.sequence, confirm));
        }
        for (sequence, confirm) in confirms {
            if !confirm.await?.is_ack() {
                return Err(RelayError::Nacked(sequence));
            }
        }
        store.set_published_watermark(last).await?;
        m::events_published(shard, events.len() as u64);
    }
}
