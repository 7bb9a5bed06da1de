//! Commits of a sweep's steps, each one atomic batch, with the WAL fsync of
//! step N running while step N+1 is read and re-encrypted. At most one step
//! is ever written and not yet durable: step N+1 is written only once step
//! N's fsync has finished, and the sweep ends only once its last step is
//! durable.
//!
//! Crash safety is that of a synced commit per step. The WAL replays a
//! prefix of the batches written, each whole or not at all, so a crash
//! loses at most the last step, which leaves every one of its records in
//! the layer (or under the key) it had before; the next sweep does it
//! again. What the step changed is visible at once, as after any
//! [`Transaction::commit_unsynced`], and its events reach the outbox only
//! once durable.

use std::pin::Pin;

use super::{Receipt, Store, StoreError, Transaction};

type Fsync<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// The commits of one sweep, one step behind their fsync.
pub struct StepCommits<'a> {
    store: &'a Store,
    in_flight: Option<Fsync<'a>>,
}

impl<'a> StepCommits<'a> {
    /// Commits for a sweep over `store`.
    pub fn new(store: &'a Store) -> Self {
        Self { store, in_flight: None }
    }

    /// Waits for the previous step to be durable, writes `txn` and starts
    /// its fsync; returns once it is written (visible, not yet durable).
    pub async fn commit(&mut self, txn: Transaction<'a>, now_ms: i64) -> Result<Receipt, StoreError> {
        self.durable().await?;
        let receipt = txn.commit_unsynced(now_ms)?;
        self.in_flight = Some(Box::pin(self.store.start_sync()));
        Ok(receipt)
    }

    /// Waits until every step committed so far is durable.
    pub async fn durable(&mut self) -> Result<(), StoreError> {
        match self.in_flight.take() {
            Some(fsync) => fsync.await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{RecordsStored, event::Kind};

    fn step<'s>(store: &'s Store, tenant: &str) -> Transaction<'s> {
        let mut txn = store.transaction();
        txn.event(tenant, Kind::RecordsStored(RecordsStored { count: 1, bytes: 1 }));
        txn
    }

    #[tokio::test]
    async fn a_step_is_visible_when_written_and_relayed_only_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut steps = StepCommits::new(&store);
        steps.commit(step(&store, "a"), 1).await.unwrap();
        assert_eq!(store.tenant("a").unwrap().hot_records, 1, "visible at once");
        steps.commit(step(&store, "a"), 2).await.unwrap();
        assert!(
            !store.events_after(0, 10).unwrap().is_empty(),
            "writing step 2 waited for step 1's fsync, so step 1's event is durable"
        );
        steps.durable().await.unwrap();
        assert_eq!(store.events_after(0, 10).unwrap().len(), 2, "both steps durable at the end");
    }
}
