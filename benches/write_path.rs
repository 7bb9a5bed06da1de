//! The ingest write path without the broker: `records::store_batch` (dedupe
//! lookups, encryption, the record, its indexes and events in one batch)
//! over 100,000 × 1 KiB records in batches of 250 followed by a WAL sync,
//! against a raw RocksDB write of the same bytes (the record value and its
//! time-index entry, no crypto, no lookups) synced the same way, in the
//! same run. Prints medians of each and their ratio.
//!
//! `cargo bench --bench write_path` (KEYSEAL_BENCH_RECORDS, KEYSEAL_BENCH_RUNS to change the size).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyseal::broker::publish::synthetic;
use keyseal::clock::{Clock, SystemClock};
use keyseal::crypto::keyring::{CacheLimits, Keyring, RotationLimits};
use keyseal::crypto::root_key::ManagedRootKeys;
use keyseal::records::{UnreadableTenants, store_batch};
use keyseal::storage::{CF_BY_TIME, CF_HOT, Store, keys};
use rocksdb::WriteBatch;

const BATCH: usize = 250;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn keyseal_run(count: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let roots = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let keyring = Keyring::new(
        store.clone(),
        ManagedRootKeys::load_or_create(roots.path()).unwrap(),
        Err("managed keys only".to_owned()),
        CacheLimits::default(),
        RotationLimits::default(),
        Arc::new(SystemClock),
    );
    let records = synthetic("acme", "r-", count, 1024, 1);
    let began = Instant::now();
    for batch in records.chunks(BATCH) {
        store_batch(&store, &keyring, batch.to_vec(), &UnreadableTenants::default(), SystemClock.now_ms())
            .await
            .unwrap();
        store.sync().unwrap();
    }
    began.elapsed()
}

fn raw_run(count: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.raw();
    let (hot, by_time) = (db.cf_handle(CF_HOT).unwrap(), db.cf_handle(CF_BY_TIME).unwrap());
    let records = synthetic("acme", "r-", count, 1024, 1);
    let began = Instant::now();
    for batch in records.chunks(BATCH) {
        let mut write = WriteBatch::default();
        let now = SystemClock.now_ms();
        for record in batch {
            let key = keys::record_key(&record.tenant_id, &record.record_id);
            // About the size of the encrypted value: payload, nonce, tag, ids.
            let mut value = record.payload.clone();
            value.extend_from_slice(&[0u8; 60]);
            write.put_cf(hot, &key, value);
            write.put_cf(by_time, keys::index_key(now, &key), []);
        }
        db.write(write).unwrap();
        store.sync().unwrap();
    }
    began.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 100_000);
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 5);
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for run in 0..runs {
        ours.push(keyseal_run(count).await);
        raw.push(raw_run(count));
        let rate = |d: &Duration| count as f64 / d.as_secs_f64();
        println!(
            "  run {run}: store_batch {:>8.0} records/s   raw write {:>8.0} records/s",
            rate(&ours[run]),
            rate(&raw[run])
        );
    }
    let (ours, raw) = (median(ours), median(raw));
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    println!("write path: {count} records of 1 KiB in batches of {BATCH}, each synced, median of {runs}");
    println!("  store_batch {:.0} records/s, raw write {:.0} records/s", rate(ours), rate(raw));
    println!(
        "  ratio store_batch/raw = {:.2} (cargo bench --bench write_path)",
        raw.as_secs_f64() / ours.as_secs_f64()
    );
}
