//! Placement of new tenants. A message whose tenant has no binding on
//! `keyseal.route` falls through `keyseal.unplaced` into the intake queue
//! `keyseal.ingest`, which every worker consumes: the forwarder binds the
//! tenant to its shard's queue (idempotent), republishes the message
//! unchanged through `keyseal.route` with confirms, and only then acks it,
//! so a crash at any point re-forwards (the shard deduplicates by record
//! id) and loses nothing. Only a tenant's first messages take this hop; a
//! message whose routing key can be no tenant id is dead-lettered with the
//! reason the shard's consumer would give.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::placement::shard_of;
use crate::broker::{self, Backoff, INGEST_QUEUE, ROUTE_EXCHANGE, shard_queue};
use crate::ingest::consumer::Readiness;
use crate::ingest::dead_letter::{self, DeadLetterError};
use crate::ingest::validate::{Rejection, is_valid_tenant_id, validate};
use crate::telemetry::happenings::{Emit, MessageDeadLettered};
use crate::telemetry::metrics as m;

/// Deliveries the broker sends ahead, and the most forwarded per confirm round.
const PREFETCH: u16 = 500;
/// How long a round waits to fill once its first delivery arrived.
const LINGER: Duration = Duration::from_millis(5);

/// Why a forwarding session ended.
#[derive(Debug, thiserror::Error)]
enum IntakeError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error("the broker nacked a forwarded message")]
    Nacked,
    #[error("the intake consumer stream ended")]
    ConsumerClosed,
}

/// Forwards the intake of a deployment of `shards` shards until
/// `shutdown`, reconnecting with backoff; `ready` tells whether it consumes.
pub async fn run(amqp_url: &str, shards: u32, ready: &Readiness, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let result = session(amqp_url, shards, ready, &shutdown, &mut backoff).await;
        ready.set(false);
        match result {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "intake session ended; reconnecting"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn session(
    amqp_url: &str,
    shards: u32,
    ready: &Readiness,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), IntakeError> {
    let connection = broker::connect(amqp_url, "intake").await?;
    let result = async {
        let channel = connection.create_channel().await?;
        broker::declare_topology(&channel).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(
                INGEST_QUEUE.into(),
                "keyseal-intake".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        ready.set(true);
        backoff.reset();
        info!(queue = INGEST_QUEUE, "forwarding the intake to the shards");
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                delivery = consumer.next() => delivery.ok_or(IntakeError::ConsumerClosed)??,
            };
            let batch = fill(first, &mut consumer).await?;
            forward(&channel, &batch, shards).await?;
        }
    }
    .await;
    ready.set(false);
    broker::close(&connection, "keyseal intake session ended").await;
    result
}

/// `first` and whatever else arrives within [`LINGER`], up to [`PREFETCH`].
async fn fill(first: Delivery, consumer: &mut Consumer) -> Result<Vec<Delivery>, IntakeError> {
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + LINGER;
    while batch.len() < usize::from(PREFETCH) {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(delivery)) => batch.push(delivery?),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}

/// Binds each tenant of `batch`, republishes every placeable message
/// through the route and dead-letters the rest, waits for every confirm,
/// then acks the batch.
async fn forward(channel: &Channel, batch: &[Delivery], shards: u32) -> Result<(), IntakeError> {
    // Bound once per batch, never remembered longer: a message here for a
    // tenant bound before means the binding is gone (or this message
    // overtook it), and binding again is what heals it.
    let mut bound = HashSet::new();
    let mut confirms = Vec::with_capacity(batch.len());
    let mut rejected = Vec::new();
    for delivery in batch {
        let tenant = delivery.routing_key.as_str();
        if !is_valid_tenant_id(tenant) {
            rejected.push((delivery, unplaceable(delivery)));
            continue;
        }
        if bound.insert(tenant) {
            let queue = shard_queue(shard_of(tenant, shards).0);
            channel
                .queue_bind(
                    queue.as_str().into(),
                    ROUTE_EXCHANGE.into(),
                    tenant.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let confirm = channel
            .basic_publish(
                ROUTE_EXCHANGE.into(),
                delivery.routing_key.clone(),
                BasicPublishOptions::default(),
                &delivery.data,
                delivery.properties.clone(),
            )
            .await?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            return Err(IntakeError::Nacked);
        }
    }
    dead_letter::publish(channel, &rejected).await?;
    let last = batch.last().expect("batches are never empty").delivery_tag;
    channel.basic_ack(last, BasicAckOptions { multiple: true }).await?;
    m::intake_forwarded((batch.len() - rejected.len()) as u64);
    for (_, rejection) in &rejected {
        MessageDeadLettered { reason: rejection.code(), shard: None }.emit();
    }
    Ok(())
}

/// Why a message whose routing key is no tenant id is refused: what the
/// shard's consumer would say (a bad body first, else the tenant or
/// routing-key mismatch; the routing key must equal a valid tenant id, so
/// validation cannot pass).
fn unplaceable(delivery: &Delivery) -> Rejection {
    let content_type = delivery.properties.content_type().as_ref().map(|ct| ct.as_str());
    validate(&delivery.data, content_type, delivery.routing_key.as_str()).err().unwrap_or(Rejection::RoutingKeyMismatch)
}
