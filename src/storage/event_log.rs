//! The event log's read side and durability: events up to the durable
//! sequence, the WAL syncs that advance it, and the signal the outbox waits on.

use std::sync::atomic::Ordering;

use rocksdb::{Direction, IteratorMode};
use tokio::sync::Notify;

use super::schema::{CF_EVENTS, decode};
use super::{Store, StoreError, keys};
use crate::proto::v1::Event;

impl Store {
    /// Signalled after every commit that appended events (the outbox waits on it).
    pub fn appended(&self) -> &Notify {
        &self.appended
    }

    /// Up to `limit` durable events with sequence greater than `after`, in order.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let start = keys::event_key(after + 1);
        let durable = self.durable_sequence.load(Ordering::SeqCst);
        let available = usize::try_from(durable.saturating_sub(after)).unwrap_or(usize::MAX);
        let mut events = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_EVENTS), IteratorMode::From(&start, Direction::Forward))
            .take(limit.min(available))
        {
            let (_, value) = item?;
            events.push(decode(CF_EVENTS, "event", &value)?);
        }
        Ok(events)
    }

    /// Makes every write committed so far durable (one WAL fsync for any
    /// number of [`Transaction::commit_unsynced`] calls: group commit).
    pub fn sync(&self) -> Result<(), StoreError> {
        let covered = self.last_sequence();
        self.db.flush_wal(true)?;
        self.mark_durable(covered);
        Ok(())
    }

    /// [`Store::sync`] for async tasks: the fsync runs on a blocking thread,
    /// so no async worker thread waits on the disk.
    pub async fn sync_async(&self) -> Result<(), StoreError> {
        self.start_sync().await
    }

    /// Starts a WAL fsync on a blocking thread at once, covering every
    /// write committed so far; the returned future ends when it is done.
    /// Unlike [`Store::sync_async`], the fsync runs whether or not the
    /// future is polled, so a caller can prepare its next step meanwhile
    /// (see [`super::step_commits`]).
    pub fn start_sync(&self) -> impl Future<Output = Result<(), StoreError>> + Send + '_ {
        let covered = self.last_sequence();
        let db = self.db.clone();
        let fsync = tokio::task::spawn_blocking(move || db.flush_wal(true));
        async move {
            fsync.await.map_err(|e| StoreError::SyncTask(e.to_string()))??;
            self.mark_durable(covered);
            Ok(())
        }
    }

    pub(super) fn mark_durable(&self, sequence: u64) {
        if self.durable_sequence.fetch_max(sequence, Ordering::SeqCst) < sequence {
            self.appended.notify_one();
        }
    }
}
