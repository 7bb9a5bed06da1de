//! The ingest consumer of one shard's queue (`keyseal.ingest.shard-<i>`).
//! One session = one connection, one consuming channel (prefetch window)
//! and one confirm-mode channel for dead letters. A batch is acked with
//! `multiple` only after its records are durable in RocksDB
//! and its rejects are confirmed in the dead-letter queue. Any broker error
//! ends the session and a new one starts after a backoff; unacked messages
//! come back as redeliveries, which the store recognises as duplicates.
//! A storage error closes the session, which returns every unacked delivery
//! to the queue, and consuming pauses until the store accepts writes again.
//! Only a failure of the store itself does that: a redelivery whose stored
//! copy cannot be decrypted (its tenant's key unavailable) is dead-lettered
//! `duplicate_unverifiable`. A dead letter the broker returns as
//! unroutable ends the session like a nack: its batch is not acked.
//!
//! Writes use group commit: batch N+1 is gathered and written while batch
//! N's WAL fsync runs on a blocking thread; N is acked once its fsync is done.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::dead_letter::{self, DeadLetterError};
use super::prefetch::PrefetchWindow;
use super::validate::{Rejection, validate};
use crate::broker::session::{Session, Sessions};
use crate::broker::{self, Backoff, Broker, ROUTE_EXCHANGE};
use crate::error::ErrorCode;
use crate::placement::ShardId;
use crate::placement::shard_of;
use crate::readiness::Readiness;
use crate::records::{self, Outcome, RecordError, UnreadableTenants};
use crate::shard::Shard;
use crate::storage::StoreError;
use crate::telemetry::happenings::{Emit, IngestPaused, IngestResumed, MessageDeadLettered};
use crate::telemetry::metrics as m;

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
    #[error("the WAL sync task failed: {0}")]
    SyncTask(String),
}

/// How a shard's consumer consumes: the broker, the deployment's shard
/// count (to refuse a tenant of another shard), `--prefetch`,
/// `--prefetch-bytes`, `--batch-size` and `--batch-linger`.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The broker.
    pub broker: Broker,
    /// The deployment's shard count.
    pub shards: u32,
    /// Most deliveries the broker sends ahead.
    pub prefetch: u16,
    /// About how many bytes the broker sends ahead.
    pub prefetch_bytes: u64,
    /// Most deliveries in one atomic write batch.
    pub batch_size: u32,
    /// How long a batch waits to fill.
    pub batch_linger: Duration,
}

/// What a consuming session works with.
struct Ingest<'a> {
    shard: &'a Shard,
    settings: &'a IngestOptions,
    ready: &'a Readiness,
    /// Outlives sessions and batches, like the redeliveries it speeds up.
    unreadable: UnreadableTenants,
}

/// Consumes `shard`'s queue until `shutdown`, on whichever node of the
/// broker answers, reconnecting after broker failures and pausing after
/// storage failures; `ready` tells whether it is consuming. Closing a
/// session's connection returns every unacked delivery to the queue.
pub async fn run(shard: &Shard, settings: &IngestOptions, ready: &Readiness, shutdown: CancellationToken) {
    let ingest = Ingest { shard, settings, ready, unreadable: UnreadableTenants::default() };
    Sessions::new(&settings.broker, "ingest").run(&shutdown, Consuming { ingest, shutdown: &shutdown }).await;
}

/// The consumer's sessions.
struct Consuming<'a> {
    ingest: Ingest<'a>,
    shutdown: &'a CancellationToken,
}

impl Session for Consuming<'_> {
    type Error = SessionError;

    async fn run(&mut self, connection: &lapin::Connection) -> Result<(), SessionError> {
        let result = consume(&self.ingest, connection, self.shutdown).await;
        self.ingest.ready.set(false);
        result
    }

    /// A storage failure pauses consuming until the store takes writes.
    async fn ended(&mut self, error: SessionError) {
        match error {
            SessionError::Storage(e) => {
                IngestPaused { code: e.code(), error: &e }.emit();
                wait_until_writable(&self.ingest, self.shutdown).await;
                IngestResumed.emit();
            }
            SessionError::Broker(_)
            | SessionError::DeadLetter(_)
            | SessionError::ConsumerClosed
            | SessionError::SyncTask(_) => {}
        }
    }
}

async fn consume(
    ingest: &Ingest<'_>,
    connection: &lapin::Connection,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let settings = ingest.settings;
    let channel = connection.create_channel().await?;
    let dead_letters = connection.create_channel().await?;
    dead_letters.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut window = PrefetchWindow::new(settings.prefetch, settings.prefetch_bytes);
    let mut pending: Option<Pending> = None;
    let mut subscription = 0u64;
    let queue = broker::shard_queue(ingest.shard.id.0);
    loop {
        subscription += 1;
        // Deliveries of an earlier subscription stay unacked on this
        // channel and are acked (with `multiple`) like any other.
        channel.basic_qos(window.current(), BasicQosOptions::default()).await?;
        let tag = format!("keyseal-ingest-{subscription}");
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        ingest.ready.set(true);
        info!(%queue, prefetch = window.current(), "consuming");
        let mut resubscribing = false;
        loop {
            // Wait for the next delivery; meanwhile finish the batch whose
            // fsync is in flight, so an idle queue never leaves a batch unacked.
            let first = loop {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        if let Some(done) = pending.take() {
                            done.finish(&channel, &dead_letters).await?;
                        }
                        broker::close_channel(&dead_letters, "shutdown").await;
                        broker::close_channel(&channel, "shutdown").await;
                        return Ok(());
                    }
                    synced = async { (&mut pending.as_mut().expect("guarded").sync).await }, if pending.is_some() => {
                        let done = pending.take().expect("guarded");
                        done.written.acknowledge(synced, &channel, &dead_letters).await?;
                    }
                    delivery = consumer.next() => break delivery,
                }
            };
            let first = match first {
                Some(delivery) => delivery?,
                // The cancelled subscription delivered all it had.
                None if resubscribing => break,
                None => return Err(SessionError::ConsumerClosed),
            };
            let (batch, ended) =
                fill_batch(first, &mut consumer, settings.batch_size as usize, settings.batch_linger).await?;
            batch.iter().for_each(|delivery| window.observe(delivery.data.len()));
            let written = write(ingest, batch).await?;
            // Group commit: the previous batch's fsync ran while this one was
            // gathered and written; ack it now, then start syncing this one.
            if let Some(done) = pending.take() {
                done.finish(&channel, &dead_letters).await?;
            }
            let store = ingest.shard.store.clone();
            pending = Some(Pending { sync: tokio::task::spawn_blocking(move || store.sync()), written });
            match (ended, resubscribing) {
                // The stream ends once: its end, seen while filling, is final.
                (true, true) => break,
                (true, false) => return Err(SessionError::ConsumerClosed),
                (false, true) => continue,
                (false, false) => {}
            }
            if let Some(prefetch) = window.resize() {
                // Message sizes moved the window: drain this subscription,
                // then subscribe again with the new count.
                info!(prefetch, "message sizes changed; re-subscribing with a new prefetch");
                channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await?;
                resubscribing = true;
            }
        }
    }
}

/// Gathers more deliveries after `first` until the batch is full or the
/// linger time has passed; says whether the consumer's stream ended (a
/// consumer yields its end once, then pends for ever). Never cancelled
/// midway, so no delivery is lost.
async fn fill_batch(
    first: Delivery,
    consumer: &mut Consumer,
    max: usize,
    linger: Duration,
) -> Result<(Vec<Delivery>, bool), SessionError> {
    let mut batch = vec![first];
    let deadline = Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(delivery)) => batch.push(delivery?),
            Ok(None) => return Ok((batch, true)),
            Err(_) => break,
        }
    }
    Ok((batch, false))
}

/// A batch written to the store and waiting for its WAL fsync before ack.
struct Written {
    shard: ShardId,
    batch: Vec<Delivery>,
    last_tag: u64,
    rejected: Vec<(usize, Rejection)>,
    stored: u64,
    duplicates: u64,
    started: std::time::Instant,
}

struct Pending {
    sync: tokio::task::JoinHandle<Result<(), StoreError>>,
    written: Written,
}

impl Pending {
    async fn finish(self, channel: &Channel, dead_letters: &Channel) -> Result<(), SessionError> {
        let synced = self.sync.await;
        self.written.acknowledge(synced, channel, dead_letters).await
    }
}

impl Written {
    /// After the fsync: dead-letter the rejects (confirmed), then ack the
    /// whole batch with one `multiple` ack.
    async fn acknowledge(
        self,
        synced: Result<Result<(), StoreError>, tokio::task::JoinError>,
        channel: &Channel,
        dead_letters: &Channel,
    ) -> Result<(), SessionError> {
        synced.map_err(|e| SessionError::SyncTask(e.to_string()))?.map_err(RecordError::from)?;
        if !self.rejected.is_empty() {
            let rejected: Vec<(&Delivery, Rejection)> =
                self.rejected.iter().map(|(i, r)| (&self.batch[*i], r.clone())).collect();
            dead_letter::publish(dead_letters, &rejected).await?;
        }
        channel.basic_ack(self.last_tag, BasicAckOptions { multiple: true }).await?;
        for (_, rejection) in &self.rejected {
            MessageDeadLettered { reason: rejection.code(), shard: Some(self.shard) }.emit();
        }
        self.unbind_erased(channel).await?;
        m::batch_committed(self.shard, self.stored, self.duplicates, self.started.elapsed());
        Ok(())
    }
}

impl Written {
    /// Removes the route binding of every erased tenant whose late
    /// messages this batch dead-lettered (the intake bound it again), so
    /// the bindings of erased tenants do not pile up.
    async fn unbind_erased(&self, channel: &Channel) -> Result<(), SessionError> {
        let erased: BTreeSet<&str> = self
            .rejected
            .iter()
            .filter(|(_, rejection)| *rejection == Rejection::TenantErased)
            .map(|(i, _)| self.batch[*i].routing_key.as_str())
            .collect();
        let queue = broker::shard_queue(self.shard.0);
        for tenant in erased {
            channel
                .queue_unbind(queue.as_str().into(), ROUTE_EXCHANGE.into(), tenant.into(), FieldTable::default())
                .await?;
        }
        Ok(())
    }
}

/// Validates a batch and writes its new records (unsynced).
async fn write(ingest: &Ingest<'_>, mut batch: Vec<Delivery>) -> Result<Written, RecordError> {
    let started = std::time::Instant::now();
    let last_tag = batch.last().expect("batches are never empty").delivery_tag;
    let mut records = Vec::with_capacity(batch.len());
    let mut positions = Vec::with_capacity(batch.len());
    let mut rejected = Vec::new();
    for (i, delivery) in batch.iter().enumerate() {
        let content_type = delivery.properties.content_type().as_ref().map(|ct| ct.as_str());
        let checked = validate(&delivery.data, content_type, delivery.routing_key.as_str()).and_then(|record| {
            let home = shard_of(&record.tenant_id, ingest.settings.shards);
            if home == ingest.shard.id {
                Ok(record)
            } else {
                Err(Rejection::WrongShard { home: home.0, here: ingest.shard.id.0 })
            }
        });
        match checked {
            Ok(record) => {
                records.push(record);
                positions.push(i);
            }
            Err(rejection) => rejected.push((i, rejection)),
        }
    }
    let outcomes = records::store_batch(
        &ingest.shard.store,
        &ingest.shard.keyring,
        records,
        &ingest.unreadable,
        ingest.shard.now_ms(),
    )
    .await?;
    let (mut stored, mut duplicates) = (0, 0);
    for (i, outcome) in positions.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Stored => stored += 1,
            Outcome::Duplicate => duplicates += 1,
            Outcome::Conflict => rejected.push((i, Rejection::ConflictingDuplicate)),
            Outcome::Unverifiable => rejected.push((i, Rejection::DuplicateUnverifiable)),
            Outcome::Deleted => rejected.push((i, Rejection::RecordDeleted)),
            Outcome::TenantErased => rejected.push((i, Rejection::TenantErased)),
        }
    }
    // Until the ack only the rejects' bodies are needed (to dead-letter
    // them): free the others now, which halves the bytes held per batch.
    let mut keep = vec![false; batch.len()];
    rejected.iter().for_each(|(i, _)| keep[*i] = true);
    for (delivery, keep) in batch.iter_mut().zip(keep) {
        if !keep {
            delivery.data = Vec::new();
        }
    }
    Ok(Written { shard: ingest.shard.id, batch, last_tag, rejected, stored, duplicates, started })
}

async fn wait_until_writable(ingest: &Ingest<'_>, shutdown: &CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        match ingest.shard.store.check_writable() {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "store still not writable"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
