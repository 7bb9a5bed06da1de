//! 100,000 tenants in one shard. Commit latency of ingest-sized batches
//! (250 records of 1 KiB over 4 tenants, paced at 240 commits/s, about the
//! ingest rate) while the views run every second — the status page's copy
//! of every tenant, the gauge refresh and a `/metrics` render — beside the
//! same commits with no views, in the same run; and the process's peak RSS.
//!
//! `cargo bench --bench tenants` (KEYSEAL_BENCH_TENANTS, KEYSEAL_BENCH_SECONDS).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keyseal::clock::ManualClock;
use keyseal::crypto::envelope::Envelope;
use keyseal::placement::ShardId;
use keyseal::proto::store::StoredRecord;
use keyseal::proto::v1::{Layer, RecordsStored, event::Kind};
use keyseal::shard::Shard;
use keyseal::storage::{Store, keys};

const RECORDS_PER_COMMIT: usize = 250;
const COMMITS_PER_SECOND: u64 = 240;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn tenant(i: usize) -> String {
    format!("tenant-{i:06}")
}

fn stored(count: u32) -> Kind {
    Kind::RecordsStored(RecordsStored { count, bytes: u64::from(count) * 1024 })
}

fn populate(store: &Store, tenants: usize) {
    for chunk in (0..tenants).collect::<Vec<_>>().chunks(1000) {
        let mut txn = store.transaction();
        for &i in chunk {
            txn.event(&tenant(i), stored(1));
        }
        txn.commit_unsynced(1).unwrap();
    }
    store.sync().unwrap();
}

/// Commit latencies (µs) of paced ingest-sized batches for `seconds`.
fn commits(store: &Store, tenants: usize, seconds: u64, round: &mut usize) -> Vec<u64> {
    let record = Envelope::from(&StoredRecord {
        data_key_id: vec![1; 16],
        nonce: vec![2; 12],
        ciphertext: vec![3; 1040],
        ingested_at_unix_ms: 1,
    });
    let mut latencies = Vec::new();
    let started = Instant::now();
    for n in 0..seconds * COMMITS_PER_SECOND {
        let due = started + Duration::from_micros(n * 1_000_000 / COMMITS_PER_SECOND);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        *round += 1;
        let began = Instant::now();
        let mut txn = store.transaction();
        for t in 0..4 {
            let name = tenant((*round * 4 + t) % tenants);
            for r in 0..RECORDS_PER_COMMIT / 4 {
                let key = keys::record_key(&name, &format!("r-{round}-{r}"));
                txn.put_record(Layer::Hot, &key, &record);
                txn.put_index(&keys::index_key(1, &key));
            }
            txn.event(&name, stored((RECORDS_PER_COMMIT / 4) as u32));
        }
        txn.commit_unsynced(2).unwrap();
        latencies.push(began.elapsed().as_micros() as u64);
    }
    latencies
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(label: &str, mut latencies: Vec<u64>) -> u64 {
    latencies.sort_unstable();
    let (p50, p99, p999, max) = (
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 0.999),
        latencies[latencies.len() - 1],
    );
    println!(
        "  {label:<28} {:>6} commits  p50 {p50:>6} µs  p99 {p99:>6} µs  p99.9 {p999:>6} µs  max {max:>6} µs",
        latencies.len()
    );
    p99
}

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

fn main() {
    let tenants = env_usize("KEYSEAL_BENCH_TENANTS", 100_000);
    let seconds = env_usize("KEYSEAL_BENCH_SECONDS", 10) as u64;
    let handle = keyseal::telemetry::metrics::handle();
    let dir = tempfile::tempdir().unwrap();
    let settings: keyseal::config::Settings =
        keyseal::config::parse_flags(["--data-dir", dir.path().to_str().unwrap()]).unwrap();
    let shard = Arc::new(
        Shard::open(ShardId(0), &settings.shard_options(), settings.vault(), Arc::new(ManualClock::starting_now()))
            .unwrap(),
    );
    let store = shard.store.clone();
    let started = Instant::now();
    populate(&store, tenants);
    keyseal::telemetry::gauges::refresh(&shard, Duration::from_secs(172_800)).unwrap();
    let render = handle.render();
    println!(
        "{tenants} tenants stored in {:.1} s; first /metrics {:.1} MiB; commits of {RECORDS_PER_COMMIT} records at {COMMITS_PER_SECOND}/s for {seconds} s",
        started.elapsed().as_secs_f64(),
        render.len() as f64 / (1 << 20) as f64
    );
    let mut round = 0;
    let quiet = report("no views (baseline)", commits(&store, tenants, seconds, &mut round));

    let stop = Arc::new(AtomicBool::new(false));
    let viewer = {
        let (shard, stop, handle) = (shard.clone(), stop.clone(), handle.clone());
        std::thread::spawn(move || {
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let all = shard.store.tenants();
                assert!(all.len() >= tenants);
                keyseal::telemetry::gauges::refresh(&shard, Duration::from_secs(172_800)).unwrap();
                let text = handle.render();
                assert!(text.contains("keyseal_records_at_rest"));
                longest = longest.max(began.elapsed());
                std::thread::sleep(Duration::from_secs(1).saturating_sub(began.elapsed()));
            }
            longest
        })
    };
    let viewed = report("views every second", commits(&store, tenants, seconds, &mut round));
    stop.store(true, Ordering::Relaxed);
    let longest_view = viewer.join().unwrap();
    println!(
        "p99 ratio views/baseline = {:.2}; longest view (all tenants copied, gauges, render) {:.0} ms; peak RSS {:.1} MiB",
        viewed as f64 / quiet.max(1) as f64,
        longest_view.as_secs_f64() * 1000.0,
        vm_hwm_mib()
    );
}
