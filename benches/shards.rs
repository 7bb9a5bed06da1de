//! Shards (DESIGN.md "Shards"), measured against baselines in the same run:
//!
//! - `cargo bench --bench shards`: ingestion of pre-filled shard queues
//!   (tenants placed) by one in-process worker with 4 shards against the
//!   same worker with 1 shard;
//! - `-- processes`: two `keyseal run` processes (2 shards each, pinned)
//!   against one process with all 4;
//! - `-- takeover`: two processes share 8 shards (heartbeat 5 s); one is
//!   killed with SIGKILL while records flow: the time until the other owns
//!   every shard, and the records stored twice (redelivered), per takeover;
//! - `-- placement`: publish-to-stored latency of a tenant's first message
//!   (through the intake: bind, republish) against its second.
//!
//! KEYSEAL_BENCH_RECORDS and KEYSEAL_BENCH_RUNS change the sizes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backlog::place_at;
use common::{Vhost, free_port, spawn_worker};
use keyseal::broker::publish::{Publisher, synthetic};
use keyseal::clock::SystemClock;
use keyseal::proto::v1::IngestRecord;
use keyseal::worker::Worker;

const PREFETCH: &str = "1000";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn tenants() -> Vec<String> {
    (0..16).map(|i| format!("t-{i}")).collect()
}

/// `count` records of 1 KiB spread over [`tenants`].
fn records(count: usize) -> Vec<IngestRecord> {
    let tenants = tenants();
    let per = count / tenants.len();
    tenants.iter().flat_map(|t| synthetic(t, "r-", per, 1024, 1)).collect()
}

/// Places the tenants on `shards` shards and fills their queues.
async fn prefill(vhost: &Vhost, shards: u32, records: &[IngestRecord]) {
    place_at(&vhost.amqp_url(), shards, &tenants()).await;
    let publisher = Publisher::connect(&vhost.amqp_url()).await.unwrap();
    for chunk in records.chunks(20_000) {
        assert!(publisher.publish_all(chunk, 2000).await.unwrap().iter().all(|c| *c));
    }
}

/// Records of `tenants` stored across the worker's shards.
fn stored(worker: &Worker) -> u64 {
    let tenants = tenants();
    worker
        .owned
        .all()
        .iter()
        .map(|(_, owned)| {
            let store = &owned.running.shard.store;
            tenants.iter().map(|t| store.tenant(t).map_or(0, |p| p.hot_records)).sum::<u64>()
        })
        .sum()
}

/// Records/s of one in-process worker with `shards` shards draining `records`.
async fn in_process(shards: u32, records: &[IngestRecord]) -> f64 {
    let vhost = Vhost::new("bench-shards");
    prefill(&vhost, shards, records).await;
    let dir = tempfile::tempdir().unwrap();
    keyseal::crypto::root_key::ManagedRootKeys::load_or_create(&dir.path().join("root-keys")).unwrap();
    let shards = shards.to_string();
    let settings = common::settings(&vhost, dir.path(), &["--prefetch", PREFETCH, "--shards", &shards]);
    let started = Instant::now();
    let worker = Worker::start(settings, Arc::new(SystemClock)).await.unwrap();
    while stored(&worker) < records.len() as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = records.len() as f64 / started.elapsed().as_secs_f64();
    worker.stop().await;
    rate
}

async fn shard_count() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 200_000);
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 3);
    let records = records(count);
    println!(
        "ingest: {} records of 1 KiB over 16 tenants, one process, prefetch {PREFETCH} per shard, {runs} runs",
        records.len()
    );
    let (mut one, mut four) = (Vec::new(), Vec::new());
    for run in 0..runs {
        one.push(in_process(1, &records).await);
        four.push(in_process(4, &records).await);
        println!("  run {run}: 4 shards {:>8.0} records/s   1 shard {:>8.0} records/s", four[run], one[run]);
    }
    let (f, o) = (median(four), median(one));
    println!(
        "median: 4 shards {f:.0} records/s, 1 shard {o:.0} records/s; ratio 4/1 = {:.2} (target >= 0.9)\n  reproduce: cargo bench --bench shards",
        f / o
    );
}

/// Total hot records of the tenants, asked through the worker at `base`.
async fn stored_through(base: &str) -> u64 {
    let mut total = 0;
    for tenant in tenants() {
        total += common::counts(base, &tenant).await.map_or(0, |(hot, _)| hot);
    }
    total
}

fn stop(children: Vec<Child>) {
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Records/s of `pins.len()` `keyseal run` processes, each pinned to its
/// shards of 4, draining `records`.
async fn processes_rate(pins: &[&str], records: &[IngestRecord]) -> f64 {
    let vhost = Vhost::new("bench-procs");
    prefill(&vhost, 4, records).await;
    let dirs: Vec<_> = pins.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        keyseal::crypto::root_key::ManagedRootKeys::load_or_create(&dir.path().join("root-keys")).unwrap();
    }
    let ports: Vec<u16> = pins.iter().map(|_| free_port()).collect();
    let started = Instant::now();
    let children: Vec<Child> = pins
        .iter()
        .zip(&dirs)
        .zip(&ports)
        .map(|((pin, dir), &port)| {
            spawn_worker(&vhost, dir.path(), port, &["--shards", "4", "--own-shards", pin, "--prefetch", PREFETCH])
        })
        .collect();
    let base = format!("http://127.0.0.1:{}", ports[0]);
    while stored_through(&base).await < records.len() as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = records.len() as f64 / started.elapsed().as_secs_f64();
    stop(children);
    rate
}

async fn processes() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 200_000);
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 3);
    let records = records(count);
    println!(
        "ingest: {} records of 1 KiB, 4 shards, {runs} runs: two processes (2 shards each) vs one (4)",
        records.len()
    );
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for run in 0..runs {
        one.push(processes_rate(&["0-3"], &records).await);
        two.push(processes_rate(&["0-1", "2-3"], &records).await);
        println!("  run {run}: two processes {:>8.0} records/s   one process {:>8.0} records/s", two[run], one[run]);
    }
    let (t, o) = (median(two), median(one));
    println!(
        "median: two processes {t:.0} records/s, one process {o:.0} records/s; ratio 2/1 = {:.2}\n  reproduce: cargo bench --bench shards -- processes",
        t / o
    );
}

/// How many shards the worker at `base` owns, when it answers ready.
async fn owned(base: &str) -> Option<usize> {
    common::fleet::owned(base).await.map(|shards| shards.len())
}

/// (seconds until the survivor owns all 8 shards, records it stored twice).
async fn one_takeover(dir: &Path) -> (f64, f64) {
    let vhost = Vhost::new("bench-takeover");
    let ports = [free_port(), free_port()];
    let flags = ["--shards", "8", "--amqp-heartbeat", "5s", "--batch-size", "50", "--prefetch", "100"];
    let mut victim = spawn_worker(&vhost, dir, ports[0], &flags);
    let survivor = spawn_worker(&vhost, dir, ports[1], &flags);
    let bases = ports.map(|p| format!("http://127.0.0.1:{p}"));
    loop {
        if owned(&bases[0]).await == Some(4) && owned(&bases[1]).await == Some(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = records(32_000);
    let total = records.len() as u64;
    let url = vhost.amqp_url();
    let publishing = tokio::spawn(async move {
        let publisher = Publisher::connect(&url).await.unwrap();
        publisher.publish_until_confirmed(&records, 500, 5).await.unwrap()
    });
    while stored_through(&bases[1]).await < total / 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    let killed = Instant::now();
    while owned(&bases[1]).await != Some(8) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = killed.elapsed().as_secs_f64();
    assert_eq!(publishing.await.unwrap(), 0);
    while stored_through(&bases[1]).await < total {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let twice = common::fleet::duplicates(&bases[1]).await;
    stop(vec![survivor]);
    (takeover, twice)
}

async fn takeover() {
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 5);
    println!(
        "takeover: two processes, 8 shards, heartbeat 5 s, rebalance interval 10 s (defaults), SIGKILL one; {runs} runs"
    );
    let (mut times, mut twice) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let (secs, dup) = one_takeover(dir.path()).await;
        println!(
            "  run {run}: all shards owned again after {secs:.2} s; {dup:.0} records redelivered and dropped as duplicates"
        );
        times.push(secs);
        twice.push(dup);
    }
    println!(
        "median: takeover {:.2} s, {:.0} records redelivered per takeover (4 shards moved)\n  reproduce: cargo bench --bench shards -- takeover",
        median(times),
        median(twice)
    );
}

/// Publish-to-stored latency (ms) of one record of `tenant`.
async fn latency(worker: &Worker, publisher: &Publisher, tenant: &str, id: &str) -> f64 {
    let record = synthetic(tenant, id, 1, 256, 1);
    let before = stored_of(worker, tenant);
    let started = Instant::now();
    assert!(publisher.publish_all(&record, 1).await.unwrap()[0]);
    while stored_of(worker, tenant) == before {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    started.elapsed().as_secs_f64() * 1000.0
}

fn stored_of(worker: &Worker, tenant: &str) -> u64 {
    worker.owned.all().iter().map(|(_, o)| o.running.shard.store.tenant(tenant).map_or(0, |p| p.hot_records)).sum()
}

async fn placement() {
    let tenants = env_usize("KEYSEAL_BENCH_RECORDS", 50);
    let vhost = Vhost::new("bench-placement");
    let dir = tempfile::tempdir().unwrap();
    let worker =
        Worker::start(common::settings(&vhost, dir.path(), &["--shards", "4"]), Arc::new(SystemClock)).await.unwrap();
    let publisher = Publisher::connect(&vhost.amqp_url()).await.unwrap();
    let (mut first, mut later) = (Vec::new(), Vec::new());
    for i in 0..tenants {
        let tenant = format!("new-{i}");
        first.push(latency(&worker, &publisher, &tenant, "first-").await);
        later.push(latency(&worker, &publisher, &tenant, "second-").await);
    }
    let (f, l) = (median(first), median(later));
    println!(
        "placement: publish-to-stored latency over {tenants} new tenants: first message {f:.2} ms (intake: bind, republish), later {l:.2} ms; the hop costs {:.2} ms ({:.2}x)\n  reproduce: cargo bench --bench shards -- placement",
        f - l,
        f / l
    );
    worker.stop().await;
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mode = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    runtime.block_on(async {
        match mode.as_str() {
            "processes" => processes().await,
            "takeover" => takeover().await,
            "placement" => placement().await,
            _ => shard_count().await,
        }
    });
}
