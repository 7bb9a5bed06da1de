//! The ingest consumer. One session = one connection, one consuming channel
//! (prefetch window) and one confirm-mode channel for dead letters. A batch
//! is acked with `multiple` only after its records are durable in RocksDB
//! and its rejects are confirmed in the dead-letter queue. Any broker error
//! ends the session and a new one starts after a backoff; unacked messages
//! come back as redeliveries, which the store recognises as duplicates.
//! A storage error nacks the batch back to the queue and pauses consuming
//! until the store accepts writes again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::dead_letter::{self, DeadLetterError};
use super::validate::{Rejection, validate};
use crate::amqp::{self, Backoff, INGEST_QUEUE};
use crate::metrics as m;
use crate::records::{self, Outcome, RecordError};
use crate::worker::Services;

/// Why a consuming session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error("consumer stream ended (channel or connection closed)")]
    ConsumerClosed,
    #[error("storing a batch failed: {0}")]
    Storage(#[from] RecordError),
}

/// Consumes until `shutdown`, reconnecting after broker failures and
/// pausing after storage failures.
pub async fn run(services: &Services, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let result = session(services, &shutdown, &mut backoff).await;
        services.amqp_ready.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => return,
            Err(SessionError::Storage(e)) => {
                warn!(error = %e, "store rejected a batch; batch requeued, consuming paused");
                m::storage_paused(true);
                wait_until_writable(services, &shutdown).await;
                m::storage_paused(false);
            }
            Err(e) => warn!(error = %e, "ingest session ended; reconnecting"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn session(
    services: &Services,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let settings = &services.settings;
    let connection = amqp::connect(&settings.amqp_url, "ingest").await?;
    let channel = connection.create_channel().await?;
    amqp::declare_topology(&channel).await?;
    let dead_letters = connection.create_channel().await?;
    dead_letters.confirm_select(ConfirmSelectOptions::default()).await?;
    channel.basic_qos(settings.prefetch, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            INGEST_QUEUE.into(),
            "keyseal-ingest".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    services.amqp_ready.store(true, Ordering::SeqCst);
    backoff.reset();
    info!(queue = INGEST_QUEUE, prefetch = settings.prefetch, "consuming");
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => {
                // Unacked deliveries return to the queue when the connection closes.
                let _ = connection.close(200, "shutdown".into()).await;
                return Ok(());
            }
            batch = next_batch(&mut consumer, settings.batch_size as usize, settings.batch_linger) => batch?,
        };
        process(services, &channel, &dead_letters, &batch).await?;
    }
}

/// Waits for one delivery, then gathers more until the batch is full or the
/// linger time has passed.
async fn next_batch(consumer: &mut Consumer, max: usize, linger: Duration) -> Result<Vec<Delivery>, SessionError> {
    let first = consumer.next().await.ok_or(SessionError::ConsumerClosed)??;
    let mut batch = vec![first];
    let deadline = Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(delivery)) => batch.push(delivery?),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}

async fn process(
    services: &Services,
    channel: &Channel,
    dead_letters: &Channel,
    batch: &[Delivery],
) -> Result<(), SessionError> {
    let started = std::time::Instant::now();
    let last_tag = batch.last().expect("batches are never empty").delivery_tag;
    let mut valid = Vec::with_capacity(batch.len());
    let mut rejected: Vec<(&Delivery, Rejection)> = Vec::new();
    for delivery in batch {
        let content_type = delivery.properties.content_type().as_ref().map(|ct| ct.as_str());
        match validate(&delivery.data, content_type, delivery.routing_key.as_str()) {
            Ok(record) => valid.push((delivery, record)),
            Err(rejection) => rejected.push((delivery, rejection)),
        }
    }
    let (deliveries, records): (Vec<&Delivery>, Vec<_>) = valid.into_iter().unzip();
    let outcomes = match records::store_batch(&services.store, &services.keyring, &records, services.clock.now_ms()).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let requeue = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            if let Err(nack) = channel.basic_nack(last_tag, requeue).await {
                warn!(error = %nack, "nack after storage failure failed; the broker requeues on close");
            }
            return Err(e.into());
        }
    };
    let (mut stored, mut duplicates) = (0u64, 0u64);
    for (delivery, outcome) in deliveries.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Stored => stored += 1,
            Outcome::Duplicate => duplicates += 1,
            Outcome::Conflict => rejected.push((delivery, Rejection::ConflictingDuplicate)),
        }
    }
    if !rejected.is_empty() {
        dead_letter::publish(dead_letters, &rejected).await?;
        for (_, rejection) in &rejected {
            warn!(reason = rejection.code(), "message dead-lettered");
        }
    }
    channel
        .basic_ack(last_tag, BasicAckOptions { multiple: true })
        .await?;
    m::batch_committed(stored, duplicates, rejected.iter().map(|(_, r)| r.code()), started.elapsed());
    Ok(())
}

async fn wait_until_writable(services: &Services, shutdown: &CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        match services.store.check_writable() {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "store still not writable"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
