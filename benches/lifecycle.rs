//! The data owner's side at scale, on one shard without a broker:
//!
//! - `erasure`: erasing a tenant with 1,000,000 records (half sealed, half
//!   hot) beside another tenant: how long it takes, and how many of its
//!   bytes any file of the data dir still holds afterwards (searched for
//!   every wrapped data key it had and a 32-byte slice of the ciphertext
//!   of 10,000 of its records; the target is none). The baseline is the
//!   same search before the erasure.
//! - `audit`: how many key-use audit entries (and bytes) 1,000,000 records
//!   cost when ingested, sealed and read once, over 100 tenants.
//! - `retention`: the first retention run over 1,000,000 expired records of
//!   one tenant: the time each 10 % of them took (the target: the slowest
//!   within 1.5 × the fastest, i.e. a cost per page that does not grow with
//!   the pages deleted before it), and how long a `DELETE` of one of its
//!   records waits while the run goes on (the target: under a second).
//!
//! `cargo bench --bench lifecycle` (or `-- erasure` / `-- audit` / `-- retention`;
//! KEYSEAL_BENCH_RECORDS changes the size).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aho_corasick::AhoCorasick;
use keyseal::broker::publish::synthetic;
use keyseal::clock::{Clock, ManualClock};
use keyseal::config::{Settings, parse_flags};
use keyseal::placement::ShardId;
use keyseal::proto::v1::event::Kind;
use keyseal::records::{UnreadableTenants, read, store_batch};
use keyseal::shard::Shard;
use keyseal::sweeps::Sweeper;

#[path = "../tests/common/mod.rs"]
mod common;

const BATCH: usize = 250;
const SAMPLED_IDS: usize = 10_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A shard in a fresh data dir on a manual clock, and its sweeper, with
/// `extra` settings.
fn open(dir: &Path, clock: &ManualClock, extra: &[&str]) -> (Arc<Shard>, Sweeper) {
    let data_dir = dir.display().to_string();
    let mut flags = vec!["--data-dir", data_dir.as_str()];
    flags.extend_from_slice(extra);
    let settings: Settings = parse_flags(flags).expect("valid settings");
    let shard = Arc::new(
        Shard::open(ShardId(0), &settings.shard_options(), settings.vault(), Arc::new(clock.clone()))
            .expect("shard opens"),
    );
    let sweeper = Sweeper::new(shard.clone(), settings.sweep_options());
    (shard, sweeper)
}

/// Stores `count` records of each tenant in synced batches of 250.
async fn ingest(shard: &Shard, tenants: &[String], prefix: &str, count: usize) {
    for tenant in tenants {
        for batch in synthetic(tenant, prefix, count, 256, 1).chunks(BATCH) {
            store_batch(&shard.store, &shard.keyring, batch.to_vec(), &UnreadableTenants::default(), shard.now_ms())
                .await
                .unwrap();
            shard.store.sync().unwrap();
        }
    }
}

/// How many needles occur in the files under `dir`, and their bytes.
fn occurrences(dir: &Path, needles: &[Vec<u8>]) -> (usize, usize) {
    let finder = AhoCorasick::new(needles).unwrap();
    let hits: Vec<usize> = common::files_under(dir)
        .iter()
        .flat_map(|(_, content)| finder.find_overlapping_iter(content).map(|hit| hit.len()).collect::<Vec<_>>())
        .collect();
    (hits.len(), hits.iter().sum())
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_dir() {
                pending.push(entry.path());
            } else {
                total += entry.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

async fn erasure(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (shard, sweeper) = open(dir.path(), &clock, &[]);
    let began = Instant::now();
    ingest(&shard, &["gone".to_owned()], "old-", count / 2).await;
    ingest(&shard, &["kept".to_owned()], "kept-", count / 10).await;
    clock.advance(Duration::from_secs(49 * 3600));
    let sealed = sweeper.seal().await.unwrap().sealed;
    ingest(&shard, &["gone".to_owned()], "new-", count - count / 2).await;
    shard.store.flush().unwrap();
    println!(
        "erasure: {count} records of one tenant ({sealed} sealed with another's) and {} of another stored in {:.1}s, {:.0} MiB on disk",
        count / 10,
        began.elapsed().as_secs_f64(),
        dir_bytes(dir.path()) as f64 / (1 << 20) as f64
    );
    let mut needles: Vec<Vec<u8>> =
        shard.store.data_keys_of("gone").unwrap().into_iter().map(|(_, wrapped)| wrapped.wrapped).collect();
    let keys = needles.len();
    let step = (count / SAMPLED_IDS).max(1);
    for i in (0..count / 2).step_by(step) {
        for id in [format!("old-{i}"), format!("new-{i}")] {
            let stored = shard.store.find_record(&keyseal::storage::keys::record_key("gone", &id)).unwrap().unwrap();
            let ciphertext = &stored.record.ciphertext;
            needles.push(ciphertext[ciphertext.len() / 2 - 16..ciphertext.len() / 2 + 16].to_vec());
        }
    }
    let (before, before_bytes) = occurrences(dir.path(), &needles);

    let began = Instant::now();
    let summary = keyseal::erasure::erase(&shard, &sweeper, "gone").await.unwrap();
    let took = began.elapsed();
    let (after, after_bytes) = occurrences(dir.path(), &needles);
    println!(
        "erasure: {} data keys, {} records (cargo bench --bench lifecycle -- erasure)",
        keys, summary.records_removed
    );
    println!(
        "  erase                {:>10.2?}  ({:.0} records/s)",
        took,
        summary.records_removed as f64 / took.as_secs_f64()
    );
    println!(
        "  before: {before} hits of {} searched wrapped keys and ciphertext slices, {before_bytes} bytes",
        needles.len()
    );
    println!("  after:  {after} hits, {after_bytes} bytes of the erased tenant left (target 0)");
    println!("  directory after: {:.0} MiB", dir_bytes(dir.path()) as f64 / (1 << 20) as f64);
}

async fn audit(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (shard, sweeper) = open(dir.path(), &clock, &[]);
    let tenants: Vec<String> = (0..100).map(|i| format!("t{i:03}")).collect();
    let per_tenant = count / tenants.len();
    let entries = || {
        let events = shard.store.events_after(0, usize::MAX).unwrap();
        let used: Vec<_> = events.iter().filter(|e| matches!(e.kind, Some(Kind::KeyUsed(_)))).collect();
        (used.len(), used.iter().map(|e| prost::Message::encoded_len(*e)).sum::<usize>())
    };
    let began = Instant::now();
    ingest(&shard, &tenants, "r-", per_tenant).await;
    shard.store.transaction().commit(clock.now_ms()).unwrap();
    let ingested = entries();
    clock.advance(Duration::from_secs(49 * 3600));
    sweeper.seal().await.unwrap();
    shard.store.transaction().commit(clock.now_ms()).unwrap();
    let sealed = entries();
    for tenant in &tenants {
        for i in 0..per_tenant {
            read(&shard.store, &shard.keyring, tenant, &format!("r-{i}")).await.unwrap().expect("stored");
        }
    }
    shard.store.transaction().commit(clock.now_ms()).unwrap();
    let read_once = entries();
    println!(
        "audit: {} records over {} tenants ingested, sealed and read once in {:.1}s (cargo bench --bench lifecycle -- audit)",
        per_tenant * tenants.len(),
        tenants.len(),
        began.elapsed().as_secs_f64()
    );
    println!("  after ingest  {:>6} entries {:>9} bytes", ingested.0, ingested.1);
    println!("  after seal    {:>6} entries {:>9} bytes", sealed.0, sealed.1);
    println!("  after reads   {:>6} entries {:>9} bytes", read_once.0, read_once.1);
    println!(
        "  per 1,000,000 records: {:.0} entries, {:.1} KiB",
        read_once.0 as f64 * 1e6 / count as f64,
        read_once.1 as f64 * 1e6 / count as f64 / 1024.0
    );
}

async fn retention(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    // Unpaced, so the run's own cost is what is measured.
    let (shard, sweeper) = open(dir.path(), &clock, &["--default-retention", "1d", "--sweep-rate", "100000000"]);
    let tenant = "expiring".to_owned();
    ingest(&shard, std::slice::from_ref(&tenant), "r-", count).await;
    clock.advance(Duration::from_secs(2 * 86_400));
    let left = || shard.store.tenant(&tenant).map_or(0, |p| p.hot_records + p.sealed_records);
    let began = Instant::now();
    let mut slices = Vec::new();
    let mut delete_took = None;
    let watch = async {
        let mut last = Instant::now();
        for tenth in 1..=10u64 {
            while left() > count as u64 * (10 - tenth) / 10 {
                if tenth == 6 && delete_took.is_none() {
                    let asked = Instant::now();
                    let victim = format!("r-{}", count - 1);
                    let deleted =
                        keyseal::records::delete(&shard.store, &tenant, &victim, clock.now_ms(), DAY).await.unwrap();
                    assert!(deleted.is_some(), "the last record is not expired yet");
                    delete_took = Some(asked.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            slices.push(last.elapsed());
            last = Instant::now();
        }
    };
    let (summary, ()) = tokio::join!(sweeper.retention(), watch);
    let summary = summary.unwrap();
    let took = began.elapsed();
    let (fastest, slowest) = (slices.iter().min().unwrap(), slices.iter().max().unwrap());
    println!(
        "retention: first run over {count} expired records of one tenant (cargo bench --bench lifecycle -- retention)"
    );
    println!(
        "  run                  {took:>10.2?}  ({:.0} records/s, {} expired)",
        summary.expired as f64 / took.as_secs_f64(),
        summary.expired
    );
    let shown: Vec<String> = slices.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect();
    println!("  per 10 % slice (s)   {}", shown.join(" "));
    println!(
        "  ratio retention slowest/fastest slice = {:.2} (target <= 1.5)",
        slowest.as_secs_f64() / fastest.as_secs_f64().max(1e-9)
    );
    println!("  DELETE of a record during the run answered in {:.3?} (target < 1s)", delete_took.unwrap_or_default());
}

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 1_000_000);
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if wants("erasure") {
        erasure(count).await;
    }
    if wants("audit") {
        audit(count).await;
    }
    if wants("retention") {
        retention(count).await;
    }
}
