//! Cursor scans page by page: each page starts strictly after the last key
//! of the page before, so a scan never holds an iterator (or a snapshot)
//! across the awaits between pages, and records written meanwhile behind
//! the cursor are simply not revisited. Sealing, re-encryption and the
//! scrub walk the store this way.

use super::lookups::{IndexEntry, RawRecord};
use super::{Store, StoreError};
use crate::proto::v1::Layer;

/// A kind of cursor scan: how to read one page, and the key a page ends at.
pub trait Scan {
    /// What a page holds.
    type Entry;
    /// Up to `limit` entries strictly after `after` (from the start when `None`).
    fn page(&self, store: &Store, after: Option<&[u8]>, limit: usize) -> Result<Vec<Self::Entry>, StoreError>;
    /// The key the next page starts after.
    fn cursor(entry: &Self::Entry) -> &[u8];
}

/// The ingestion-time index up to (not including) `cutoff_ms`, oldest first.
pub struct IngestedBefore {
    /// Entries strictly before this time are due.
    pub cutoff_ms: i64,
}

impl Scan for IngestedBefore {
    type Entry = IndexEntry;

    fn page(&self, store: &Store, after: Option<&[u8]>, limit: usize) -> Result<Vec<IndexEntry>, StoreError> {
        store.ingested_before(after, self.cutoff_ms, limit)
    }

    fn cursor(entry: &IndexEntry) -> &[u8] {
        &entry.index_key
    }
}

/// One tenant's records in one layer, in key order.
pub struct RecordsOf<'a> {
    /// `hot` or `sealed`.
    pub layer: Layer,
    /// Whose records.
    pub tenant: &'a str,
}

impl Scan for RecordsOf<'_> {
    type Entry = RawRecord;

    fn page(&self, store: &Store, after: Option<&[u8]>, limit: usize) -> Result<Vec<RawRecord>, StoreError> {
        store.records_of(self.layer, self.tenant, after, limit)
    }

    fn cursor(entry: &RawRecord) -> &[u8] {
        &entry.key
    }
}

/// Walks a [`Scan`] `page_size` entries at a time.
pub struct Pager<'a, S> {
    store: &'a Store,
    scan: S,
    page_size: usize,
    after: Option<Vec<u8>>,
}

impl<'a, S: Scan> Pager<'a, S> {
    /// A pager over `scan` of `store`, from its start.
    pub fn new(store: &'a Store, scan: S, page_size: usize) -> Self {
        Self { store, scan, page_size: page_size.max(1), after: None }
    }

    /// The next page, or `None` once the scan has no more entries.
    pub fn next_page(&mut self) -> Result<Option<Vec<S::Entry>>, StoreError> {
        let page = self.scan.page(self.store, self.after.as_deref(), self.page_size)?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        self.after = Some(S::cursor(last).to_vec());
        Ok(Some(page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::Envelope;
    use crate::proto::store::StoredRecord;
    use crate::storage::keys;

    #[test]
    fn pages_cover_a_tenants_records_once_in_order_and_no_one_elses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut txn = store.transaction();
        for (tenant, n) in [("a", 7), ("ab", 3), ("b", 2)] {
            for i in 0..n {
                txn.put_record(
                    Layer::Hot,
                    &keys::record_key(tenant, &format!("r{i}")),
                    &Envelope::from(&StoredRecord::default()),
                );
            }
        }
        txn.commit(1).unwrap();
        let mut pager = Pager::new(&store, RecordsOf { layer: Layer::Hot, tenant: "a" }, 3);
        let mut sizes = Vec::new();
        let mut ids = Vec::new();
        while let Some(page) = pager.next_page().unwrap() {
            sizes.push(page.len());
            ids.extend(page.iter().map(|r| keys::split_record_key(&r.key).unwrap().1.to_owned()));
        }
        assert_eq!(sizes, [3, 3, 1]);
        assert_eq!(ids, (0..7).map(|i| format!("r{i}")).collect::<Vec<_>>());
        assert!(pager.next_page().unwrap().is_none(), "an ended scan stays ended");
    }

    #[test]
    fn the_due_index_is_paged_oldest_first_up_to_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut txn = store.transaction();
        for at in [30, 10, 20, 40] {
            txn.put_index(&keys::index_key(at, &keys::record_key("t", &format!("at{at}"))));
        }
        txn.commit(1).unwrap();
        let mut pager = Pager::new(&store, IngestedBefore { cutoff_ms: 40 }, 2);
        let mut times = Vec::new();
        while let Some(page) = pager.next_page().unwrap() {
            times.extend(page.iter().map(|e| e.ingested_at_ms));
        }
        assert_eq!(times, [10, 20, 30], "the entry at the cutoff is not due");
    }
}
