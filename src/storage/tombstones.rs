//! Tombstones of deleted records: looked up on ingest so a redelivery or a
//! re-send does not bring a deleted record back, and purged once expired.

use std::sync::atomic::Ordering;

use rocksdb::{Direction, IteratorMode};

use super::schema::{CF_TOMBSTONES, decode};
use super::{Store, StoreError};
use crate::proto::store::Tombstone;

impl Store {
    /// For each of `record_keys`, whether it has a tombstone that has not
    /// expired at `now_ms`. One batched lookup; most keys miss on the bloom
    /// filters without reading a block.
    pub fn tombstoned<K: AsRef<[u8]>>(&self, record_keys: &[K], now_ms: i64) -> Result<Vec<bool>, StoreError> {
        if !self.tombstones_exist.load(Ordering::Acquire) {
            return Ok(vec![false; record_keys.len()]);
        }
        let cf = self.cf(CF_TOMBSTONES);
        self.db
            .multi_get_cf(record_keys.iter().map(|key| (cf, key.as_ref())))
            .into_iter()
            .map(|value| match value? {
                Some(bytes) => Ok(decode::<Tombstone>(CF_TOMBSTONES, "tombstone", &bytes)?.expires_at_unix_ms > now_ms),
                None => Ok(false),
            })
            .collect()
    }

    /// Deletes every tombstone expired at `now_ms`, a page at a time, and
    /// returns how many. Callers hold [`Store::moving`], so a record deleted
    /// again meanwhile keeps its new tombstone.
    pub fn purge_expired_tombstones(&self, now_ms: i64) -> Result<u64, StoreError> {
        const PAGE: usize = 1000;
        if !self.tombstones_exist.load(Ordering::Acquire) {
            return Ok(0);
        }
        let (mut after, mut purged) = (None, 0);
        loop {
            let ExpiredPage { expired, last } = self.expired_tombstones(after.as_deref(), now_ms, PAGE)?;
            if !expired.is_empty() {
                let mut txn = self.transaction();
                expired.iter().for_each(|key| txn.delete_tombstone(key));
                // Losing this in a crash only means purging it again.
                txn.commit_unsynced(now_ms)?;
                purged += expired.len() as u64;
            }
            let Some(last) = last else { break };
            after = Some(last);
        }
        self.note_tombstones()?;
        Ok(purged)
    }

    /// Records whether any tombstone is stored (at open, and after a purge,
    /// which holds [`Store::moving`] as every delete does).
    pub(super) fn note_tombstones(&self) -> Result<(), StoreError> {
        let any = self.db.iterator_cf(self.cf(CF_TOMBSTONES), IteratorMode::Start).next().transpose()?.is_some();
        self.tombstones_exist.store(any, Ordering::Release);
        Ok(())
    }

    /// Called for every tombstone written, before its commit.
    pub(super) fn tombstone_written(&self) {
        self.tombstones_exist.store(true, Ordering::Release);
    }

    /// Up to `limit` record keys whose tombstone expired at `now_ms`, in key
    /// order strictly after `after`, and the last key looked at (the cursor
    /// of the next page; `None` once the scan is done).
    fn expired_tombstones(&self, after: Option<&[u8]>, now_ms: i64, limit: usize) -> Result<ExpiredPage, StoreError> {
        let mode = after.map_or(IteratorMode::Start, |after| IteratorMode::From(after, Direction::Forward));
        let mut expired = Vec::new();
        let mut last = None;
        let skipped = usize::from(after.is_some());
        for item in self.db.iterator_cf(self.cf(CF_TOMBSTONES), mode).take(limit + skipped) {
            let (key, value) = item?;
            if after.is_some_and(|after| key.as_ref() == after) {
                continue;
            }
            if decode::<Tombstone>(CF_TOMBSTONES, "tombstone", &value)?.expires_at_unix_ms <= now_ms {
                expired.push(key.to_vec());
            }
            last = Some(key.into_vec());
        }
        Ok(ExpiredPage { expired, last })
    }
}

/// A page of the tombstone scan.
struct ExpiredPage {
    /// Record keys whose tombstone has expired.
    expired: Vec<Vec<u8>>,
    /// The last key looked at; `None` once the scan is done.
    last: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys;

    #[test]
    fn a_tombstone_refuses_until_it_expires_and_is_then_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut txn = store.transaction();
        for (id, expires) in [("a", 100), ("b", 200), ("c", 100)] {
            let tombstone = Tombstone { deleted_at_unix_ms: 1, expires_at_unix_ms: expires };
            txn.put_tombstone(&keys::record_key("acme", id), &tombstone);
        }
        txn.commit(1).unwrap();
        let asked: Vec<_> = ["a", "b", "never"].iter().map(|id| keys::record_key("acme", id)).collect();
        assert_eq!(store.tombstoned(&asked, 99).unwrap(), [true, true, false]);
        assert_eq!(store.tombstoned(&asked, 100).unwrap(), [false, true, false], "expired at its time");
        let first = store.expired_tombstones(None, 150, 1).unwrap();
        assert_eq!(
            (&first.expired, &first.last),
            (&vec![keys::record_key("acme", "a")], &Some(keys::record_key("acme", "a")))
        );
        let second = store.expired_tombstones(first.last.as_deref(), 150, 1).unwrap();
        assert!(second.expired.is_empty(), "a page of one after the cursor holds b, which has not expired");
        assert_eq!(second.last, Some(keys::record_key("acme", "b")));
        assert_eq!(store.purge_expired_tombstones(150).unwrap(), 2);
        assert_eq!(store.purge_expired_tombstones(150).unwrap(), 0);
        assert_eq!(store.tombstoned(&asked, 0).unwrap(), [false, true, false], "only b is left");
    }
}
