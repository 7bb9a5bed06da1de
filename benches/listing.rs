//! Listing a page of 1,000 records of a tenant that has 1,000,000, from
//! random places in its history: keyseal's `Store::list_records` (index
//! scan, entry decoding and the batched lookup of which records are still
//! hot, all in one snapshot) against a raw RocksDB scan of the same 1,000
//! index entries, in the same run. Half the records are hot. Prints the
//! median and p99 latency of each and their ratio.
//!
//! `cargo bench --bench listing` (KEYSEAL_BENCH_RECORDS, KEYSEAL_BENCH_PAGES to change the size).

use std::time::{Duration, Instant};

use keyseal::proto::store::RecordEntry;
use keyseal::storage::{CF_BY_TENANT, ListingRange, Store, keys};
use rocksdb::{Direction, IteratorMode};

const TENANT: &str = "acme";
const PAGE: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn record_id(i: usize) -> String {
    format!("r-{i:08}")
}

/// A store whose tenant has `count` records listed (ingested at ms `i`),
/// the older half sealed, the newer half hot. Record values are left out:
/// a listing never reads them.
fn populate(store: &Store, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(10_000) {
        let mut txn = store.transaction();
        for &i in chunk {
            let at = i as i64;
            let entry = RecordEntry { observed_at_unix_ms: Some(at), size: Some(1024) };
            txn.put_tenant_index(&keys::tenant_index_key(TENANT, at, &record_id(i)), &entry);
            if i >= count / 2 {
                txn.put_index(&keys::index_key(at, &keys::record_key(TENANT, &record_id(i))));
            }
        }
        txn.commit_unsynced(0).unwrap();
    }
    store.sync().unwrap();
    store.flush().unwrap();
    store.raw().compact_range_cf(store.raw().cf_handle(CF_BY_TENANT).unwrap(), None::<&[u8]>, None::<&[u8]>);
}

/// The same 1,000 index entries, read raw.
fn raw_scan(store: &Store, start: &[u8]) -> usize {
    let cf = store.raw().cf_handle(CF_BY_TENANT).unwrap();
    let prefix = keys::tenant_prefix(TENANT);
    let mut bytes = 0;
    for item in store.raw().iterator_cf(cf, IteratorMode::From(start, Direction::Forward)).skip(1).take(PAGE) {
        let (key, value) = item.unwrap();
        assert!(key.starts_with(&prefix));
        bytes += key.len() + value.len();
    }
    bytes
}

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    times.sort_unstable();
    times[((times.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 1_000_000);
    let pages = env_usize("KEYSEAL_BENCH_PAGES", 300);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let started = Instant::now();
    populate(&store, count);
    println!("listing: {count} records of one tenant indexed in {:.1}s", started.elapsed().as_secs_f64());

    // Random places, the same for both, each read by both in turn.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let (mut listed, mut raw) = (Vec::with_capacity(pages), Vec::with_capacity(pages));
    for _ in 0..pages {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = (state as usize) % (count - PAGE);
        let range = ListingRange { after: Some((at as i64, record_id(at))), ..ListingRange::default() };
        let began = Instant::now();
        let page = store.list_records(TENANT, &range, PAGE).unwrap();
        listed.push(began.elapsed());
        assert_eq!(page.len(), PAGE);
        let start = keys::tenant_index_key(TENANT, at as i64, &record_id(at));
        let began = Instant::now();
        assert!(raw_scan(&store, &start) > 0);
        raw.push(began.elapsed());
    }
    let (listed_p50, raw_p50) = (percentile(&mut listed, 0.5), percentile(&mut raw, 0.5));
    let (listed_p99, raw_p99) = (percentile(&mut listed, 0.99), percentile(&mut raw, 0.99));
    println!("listing: {pages} pages of {PAGE} at random places (cargo bench --bench listing)");
    println!("  list_records   median {listed_p50:>10.2?}   p99 {listed_p99:>10.2?}");
    println!("  raw index scan median {raw_p50:>10.2?}   p99 {raw_p99:>10.2?}");
    println!("  ratio (list / raw) median {:.2}x", listed_p50.as_secs_f64() / raw_p50.as_secs_f64());
}
