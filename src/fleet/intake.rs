//! Placement of new tenants. A message whose tenant has no binding on
//! `keyseal.route` falls through `keyseal.unplaced` into the intake queue
//! `keyseal.ingest`, which every worker consumes: the forwarder binds the
//! tenant to its shard's queue (idempotent), republishes the message
//! (its body and the properties keyseal carries, [`properties::carried`])
//! through `keyseal.route` with confirms, and only then acks it,
//! so a crash at any point re-forwards (the shard deduplicates by record
//! id) and loses nothing. Only a tenant's first messages take this hop; a
//! message whose routing key can be no tenant id is dead-lettered with the
//! reason the shard's consumer would give, and one delivered
//! [`MAX_FORWARD_ATTEMPTS`] times is dead-lettered `unforwardable` rather
//! than tried for ever (the intake queue's `x-delivery-limit` backs this).

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::broker::session::{Session, Sessions};
use crate::broker::{Broker, INGEST_QUEUE, ROUTE_EXCHANGE, properties, shard_queue};
use crate::clock::SharedClock;
use crate::ingest::dead_letter::{self, DeadLetterError};
use crate::ingest::prefetch::PrefetchWindow;
use crate::ingest::validate::{Rejection, is_valid_tenant_id, validate};
use crate::placement::shard_of;
use crate::readiness::Readiness;
use crate::telemetry::happenings::{Emit, MessageDeadLettered};
use crate::telemetry::metrics as m;

/// Most deliveries the broker sends ahead, and the most forwarded per
/// confirm round, when messages are small.
const MAX_PREFETCH: u16 = 500;
/// How long a round waits to fill once its first delivery arrived.
const LINGER: Duration = Duration::from_millis(5);
/// Deliveries of one message after which the intake stops trying to
/// forward it and dead-letters it `unforwardable`: whatever made its
/// forwarding fail (a session ended each time) must not stall the intake.
pub const MAX_FORWARD_ATTEMPTS: u32 = 5;

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

/// How many new tenants one worker's intake places per minute: a token
/// bucket refilled continuously on the worker's clock, so a flood of new
/// routing keys cannot grow the bindings (and the projections behind
/// them) without bound. A tenant refused is dead-lettered
/// `tenant_rate_limited`; its next message may find room.
pub struct PlacementBudget {
    per_minute: u32,
    tokens: f64,
    last_ms: i64,
    clock: SharedClock,
}

impl PlacementBudget {
    /// A full bucket of `per_minute` placements.
    pub fn new(per_minute: u32, clock: SharedClock) -> Self {
        let last_ms = clock.now_ms();
        Self { per_minute, tokens: f64::from(per_minute), last_ms, clock }
    }

    /// Takes one placement if there is room.
    fn take(&mut self) -> bool {
        let now = self.clock.now_ms();
        let elapsed = now.saturating_sub(self.last_ms).max(0) as f64;
        self.last_ms = now;
        let per_minute = f64::from(self.per_minute);
        self.tokens = (self.tokens + elapsed * per_minute / 60_000.0).min(per_minute);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the intake of one worker works with.
pub struct Intake {
    /// The deployment's shard count.
    pub shards: u32,
    /// Deliveries the broker sends ahead ([`prefetch_for`]).
    pub prefetch: u16,
    /// How many new tenants it may still place.
    pub placements: PlacementBudget,
}

/// The intake's prefetch for `--prefetch-bytes` of `budget_bytes`: as many
/// of the largest valid messages as fit, at most [`MAX_PREFETCH`]. A
/// backlog of large records of tenants not yet placed (a producer that
/// published before any worker ran) then holds about the budget in this
/// worker's memory, not [`MAX_PREFETCH`] records.
pub fn prefetch_for(budget_bytes: u64) -> u16 {
    PrefetchWindow::new(MAX_PREFETCH, budget_bytes).current()
}

/// Forwards the intake until `shutdown`, on whichever node of the broker
/// answers, reconnecting with backoff; `ready` tells whether it consumes.
pub async fn run(broker: &Broker, intake: Intake, ready: &Readiness, shutdown: CancellationToken) {
    Sessions::new(broker, "intake").run(&shutdown, Forwarding { intake, ready, shutdown: &shutdown }).await;
}

/// The intake's sessions.
struct Forwarding<'a> {
    intake: Intake,
    ready: &'a Readiness,
    shutdown: &'a CancellationToken,
}

impl Session for Forwarding<'_> {
    type Error = IntakeError;

    async fn run(&mut self, connection: &Connection) -> Result<(), IntakeError> {
        let result = session(connection, &mut self.intake, self.ready, self.shutdown).await;
        self.ready.set(false);
        result
    }
}

async fn session(
    connection: &Connection,
    intake: &mut Intake,
    ready: &Readiness,
    shutdown: &CancellationToken,
) -> Result<(), IntakeError> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    channel.basic_qos(intake.prefetch, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            INGEST_QUEUE.into(),
            "keyseal-intake".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    ready.set(true);
    info!(queue = INGEST_QUEUE, "forwarding the intake to the shards");
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            delivery = consumer.next() => delivery.ok_or(IntakeError::ConsumerClosed)??,
        };
        let batch = fill(first, &mut consumer, intake.prefetch).await?;
        forward(&channel, &batch, intake.shards, &mut intake.placements).await?;
    }
}

/// `first` and whatever else arrives within [`LINGER`], up to `max`.
async fn fill(first: Delivery, consumer: &mut Consumer, max: u16) -> Result<Vec<Delivery>, IntakeError> {
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + LINGER;
    while batch.len() < usize::from(max) {
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
async fn forward(
    channel: &Channel,
    batch: &[Delivery],
    shards: u32,
    budget: &mut PlacementBudget,
) -> Result<(), IntakeError> {
    // Bound once per batch, never remembered longer: a message here for a
    // tenant bound before means the binding is gone (or this message
    // overtook it), and binding again is what heals it.
    let (mut bound, mut refused) = (HashSet::new(), HashSet::new());
    let mut confirms = Vec::with_capacity(batch.len());
    let mut rejected = Vec::new();
    for delivery in batch {
        let tenant = delivery.routing_key.as_str();
        if !is_valid_tenant_id(tenant) {
            rejected.push((delivery, unplaceable(delivery)));
            continue;
        }
        if refused.contains(tenant) || (!bound.contains(tenant) && !budget.take()) {
            refused.insert(tenant);
            rejected.push((delivery, Rejection::TenantRateLimited));
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
        if let Some(attempts) = delivery_count(delivery).filter(|&n| n >= MAX_FORWARD_ATTEMPTS) {
            rejected.push((delivery, Rejection::Unforwardable(attempts)));
            continue;
        }
        let confirm = channel
            .basic_publish(
                ROUTE_EXCHANGE.into(),
                delivery.routing_key.clone(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties::carried(&delivery.properties),
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

/// How often the broker delivered `delivery` before (quorum queues count
/// redeliveries in `x-delivery-count`).
fn delivery_count(delivery: &Delivery) -> Option<u32> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

/// Why a message whose routing key is no tenant id is refused: what the
/// shard's consumer would say (a bad body first, else the tenant or
/// routing-key mismatch; the routing key must equal a valid tenant id, so
/// validation cannot pass).
fn unplaceable(delivery: &Delivery) -> Rejection {
    let content_type = delivery.properties.content_type().as_ref().map(|ct| ct.as_str());
    validate(&delivery.data, content_type, delivery.routing_key.as_str()).err().unwrap_or(Rejection::RoutingKeyMismatch)
}
