//! Seal sweep throughput: keyseal's sweep (decrypt under the hot data key,
//! re-encrypt under the sealed one, atomic move with events) against a plain
//! column-family-to-column-family move of the same records without crypto,
//! in the same run, on freshly populated stores. Prints medians and the ratio.
//!
//! `cargo bench --bench seal` (KEYSEAL_BENCH_RECORDS, KEYSEAL_BENCH_RUNS to change the size).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyseal::clock::{Clock, ManualClock};
use keyseal::crypto::keyring::{CacheLimits, Keyring};
use keyseal::crypto::root_key::ManagedRootKeys;
use keyseal::publish::synthetic;
use keyseal::records::store_batch;
use keyseal::sealing::seal_due;
use keyseal::storage::{CF_BY_TIME, CF_HOT, CF_SEALED, Store};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

const SEAL_AFTER: Duration = Duration::from_secs(48 * 3600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A store holding `count` 1 KiB records in `hot`, all due for sealing.
async fn populate(dir: &Path, roots: &Path, count: usize, clock: &ManualClock) -> (Arc<Store>, Keyring) {
    let store = Arc::new(Store::open(dir).unwrap());
    let keyring = Keyring::new(
        store.clone(),
        ManagedRootKeys::load_or_create(roots).unwrap(),
        Err("managed keys only".into()),
        CacheLimits::default(),
    );
    let tenants = ["alpha", "bravo", "charlie", "delta"];
    for (t, tenant) in tenants.iter().enumerate() {
        let records = synthetic(tenant, "r-", count / tenants.len(), 1024, t as i64);
        for chunk in records.chunks(500) {
            store_batch(&store, &keyring, chunk.to_vec(), clock.now_ms()).await.unwrap();
        }
    }
    clock.advance(SEAL_AFTER + Duration::from_secs(1));
    (store, keyring)
}

/// The baseline: the same move (index scan, read hot, write sealed, delete
/// hot and index, one synced batch per 1,000) without decryption,
/// re-encryption or events.
fn plain_move(store: &Store) -> u64 {
    let db = store.raw();
    let (hot, sealed, index) = (
        db.cf_handle(CF_HOT).unwrap(),
        db.cf_handle(CF_SEALED).unwrap(),
        db.cf_handle(CF_BY_TIME).unwrap(),
    );
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let mut moved = 0;
    loop {
        let entries: Vec<Box<[u8]>> = db
            .iterator_cf(index, IteratorMode::Start)
            .take(1000)
            .map(|item| item.unwrap().0)
            .collect();
        if entries.is_empty() {
            return moved;
        }
        let values = db.multi_get_cf(entries.iter().map(|k| (hot, &k[8..])));
        let mut batch = WriteBatch::default();
        for (key, value) in entries.iter().zip(values) {
            if let Some(value) = value.unwrap() {
                batch.put_cf(sealed, &key[8..], value);
                batch.delete_cf(hot, &key[8..]);
                moved += 1;
            }
            batch.delete_cf(index, key);
        }
        db.write_opt(batch, &sync).unwrap();
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 100_000);
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let roots = tempfile::tempdir().unwrap();
    let (mut keyseal_rates, mut plain_rates) = (Vec::new(), Vec::new());
    println!("seal sweep: {count} records of 1 KiB over 4 tenants, {runs} runs");
    for run in 0..runs {
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(1_700_000_000_000);
            let (store, keyring) = populate(dir.path(), roots.path(), count, &clock).await;
            let started = Instant::now();
            let summary = seal_due(&store, &keyring, clock.now_ms(), SEAL_AFTER, &Default::default()).await.unwrap();
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(summary.sealed as usize, count);
            keyseal_rates.push(count as f64 / secs);

            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(1_700_000_000_000);
            let (store, _) = populate(dir.path(), roots.path(), count, &clock).await;
            let started = Instant::now();
            assert_eq!(plain_move(&store) as usize, count);
            plain_rates.push(count as f64 / started.elapsed().as_secs_f64());
        });
        println!(
            "  run {run}: keyseal {:>9.0} records/s   plain move {:>9.0} records/s",
            keyseal_rates[run], plain_rates[run]
        );
    }
    let (k, p) = (median(keyseal_rates), median(plain_rates));
    println!("median: keyseal seal sweep {k:.0} records/s ({:.1} MB/s), plain move {p:.0} records/s", k * 1024.0 / 1e6);
    println!("ratio keyseal/plain = {:.2} (target >= 0.6)", k / p);
}
