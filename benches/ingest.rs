//! End-to-end ingestion through RabbitMQ. Two figures, same run:
//!
//! - throughput: a pre-filled `keyseal.ingest` queue drained by the keyseal
//!   worker (validate, encrypt, synced RocksDB batch, ack) against a bare
//!   lapin consumer that only acks, with the same prefetch;
//! - peak RSS (VmHWM) of a `keyseal run` child process while 1,000,000
//!   records flow through it (`-- rss`).
//!
//! `cargo bench --bench ingest` and `cargo bench --bench ingest -- rss`
//! (KEYSEAL_BENCH_RECORDS, KEYSEAL_BENCH_RUNS to change the size).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Vhost;
use futures_util::StreamExt;
use keyseal::amqp::INGEST_QUEUE;
use keyseal::clock::SystemClock;
use keyseal::publish::{Publisher, synthetic};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

const PREFETCH: u16 = 1000;
const TENANTS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn prefill(vhost: &Vhost, count: usize) {
    let publisher = Publisher::connect(&vhost.amqp_url()).await.unwrap();
    for tenant in TENANTS {
        for chunk in synthetic(tenant, "r-", count / TENANTS.len(), 1024, 1).chunks(20_000) {
            let confirmed = publisher.publish_all(chunk, 2000).await.unwrap();
            assert!(confirmed.iter().all(|c| *c));
        }
    }
}

/// Drains the queue with a consumer that does nothing but ack (multiple,
/// every 100 deliveries, as keyseal acks per batch).
async fn bare_consumer(vhost: &Vhost, count: usize) -> f64 {
    let connection = keyseal::amqp::connect(&vhost.amqp_url(), "bench").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.unwrap();
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(INGEST_QUEUE.into(), "bare".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    for n in 1..=count {
        let delivery = consumer.next().await.unwrap().unwrap();
        if n % 100 == 0 || n == count {
            delivery.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    connection.close(200, "done".into()).await.unwrap();
    rate
}

async fn keyseal_worker(vhost: &Vhost, count: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let prefetch = PREFETCH.to_string();
    let extra = std::env::var("KEYSEAL_BENCH_WORKER_ARGS").unwrap_or_default();
    let mut args = vec!["--prefetch", &prefetch];
    args.extend(extra.split_whitespace());
    let settings = common::settings(vhost, dir.path(), &args);
    // Root key generation is start-up work, not ingestion: do it first.
    keyseal::crypto::root_key::ManagedRootKeys::load_or_create(&dir.path().join("root-keys")).unwrap();
    let started = Instant::now();
    let worker = keyseal::worker::Worker::start(settings, Arc::new(SystemClock)).await.unwrap();
    let store = worker.services.store.clone();
    let stored = || TENANTS.iter().map(|t| store.tenant(t).map_or(0, |p| p.hot_records)).sum::<u64>();
    while stored() < count as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    worker.stop().await;
    rate
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

async fn throughput() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 200_000);
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 3);
    println!("ingest: {count} records of 1 KiB, prefetch {PREFETCH}, {runs} runs");
    let (mut bare, mut keyseal) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let vhost = Vhost::new("bench-bare");
        prefill(&vhost, count).await;
        bare.push(bare_consumer(&vhost, count).await);
        drop(vhost);
        let vhost = Vhost::new("bench-keyseal");
        prefill(&vhost, count).await;
        keyseal.push(keyseal_worker(&vhost, count).await);
        println!("  run {run}: keyseal {:>8.0} records/s   bare consumer {:>8.0} records/s", keyseal[run], bare[run]);
    }
    let (k, b) = (median(keyseal), median(bare));
    println!("median: keyseal {k:.0} records/s, bare lapin consumer {b:.0} records/s");
    println!("ratio keyseal/bare = {:.2} (targets: >= 0.7 and >= 20000 records/s)", k / b);
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn peak_rss() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 1_000_000);
    let vhost = Vhost::new("bench-rss");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyseal"))
        .args(["run", "--amqp-url", &vhost.amqp_url(), "--http-addr", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("KEYSEAL_LOG", "warn")
        .spawn()
        .unwrap();
    let started = Instant::now();
    prefill(&vhost, count).await;
    let base = format!("http://127.0.0.1:{port}");
    loop {
        let mut total = 0;
        for tenant in TENANTS {
            total += common::counts(&base, tenant).await.map_or(0, |(h, _)| h);
        }
        if total >= count as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hwm = vm_hwm_kib(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    println!(
        "peak RSS of keyseal run while ingesting {count} records of 1 KiB: {:.1} MiB (target <= 256 MiB), {:.0} s end to end",
        hwm as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if std::env::args().any(|a| a == "rss") {
        runtime.block_on(peak_rss());
    } else {
        runtime.block_on(throughput());
    }
}
