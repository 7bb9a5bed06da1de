//! End-to-end ingestion through RabbitMQ. The figures, each beside its
//! baseline in the same run:
//!
//! - throughput and CPU per record: a pre-filled shard queue (its tenants
//!   placed, the steady state) drained by the keyseal worker (validate,
//!   encrypt, synced RocksDB batch, ack) against a lapin consumer that does
//!   the same durable job without keyseal's (bytes and an index entry in
//!   synced RocksDB batches, ack after the fsync) and one that only acks
//!   (the machine's ceiling), same prefetch and batch size;
//! - peak RSS (VmHWM) of a `keyseal run` child process while 1,000,000
//!   records flow through it (`-- rss`);
//! - peak RSS while a child drains 1,200 queued records of 1 MiB (`-- big`),
//!   with the default `--prefetch-bytes` beside a count-only prefetch (the
//!   byte budget set out of reach), in the same run; and the user's case of
//!   issue 25: one tenant's 1,200 records of 1 MiB − 200 bytes, published
//!   before any worker ran (so not placed: they wait in the intake).
//!
//! `cargo bench --bench ingest`, `cargo bench --bench ingest -- rss` and
//! `cargo bench --bench ingest -- big` (KEYSEAL_BENCH_RECORDS,
//! KEYSEAL_BENCH_RUNS to change the size).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Vhost;
use common::backlog::{Drained, cpu_time, publish_backlog};
use futures_util::StreamExt;
use keyseal::clock::{Clock, SystemClock};
use keyseal::storage::{CF_BY_TIME, CF_HOT, Store, keys};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use rocksdb::WriteBatch;

const PREFETCH: u16 = 1000;
/// keyseal's default `--batch-size`: deliveries per synced write batch.
const BATCH: usize = 250;
const TENANTS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];

/// Places the tenants (one shard, as the worker runs here) before the
/// queue is filled, so every record goes straight to the shard's queue.
async fn place(vhost: &Vhost) {
    common::backlog::place_at(&vhost.amqp_url(), 1, &TENANTS.map(String::from)).await;
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn prefill(vhost: &Vhost, count: usize) {
    prefill_sized(vhost, count, 1024).await;
}

async fn prefill_sized(vhost: &Vhost, count: usize, size: usize) {
    place(vhost).await;
    publish_backlog(&vhost.amqp_url(), &TENANTS, count, size).await;
}

/// A consumer of shard 0's queue with keyseal's prefetch.
async fn subscribe(vhost: &Vhost, name: &str) -> (lapin::Connection, lapin::Consumer) {
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "bench").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.unwrap();
    let queue = keyseal::broker::shard_queue(0);
    let options = BasicConsumeOptions::default();
    let consumer = channel.basic_consume(queue.as_str().into(), name.into(), options, FieldTable::default());
    (connection, consumer.await.unwrap())
}

/// Drains the queue with a consumer that does nothing but ack (multiple,
/// every [`BATCH`] deliveries, as keyseal acks per batch): the machine's
/// ceiling, bounded by the broker on two cores.
async fn bare_consumer(vhost: &Vhost, count: usize) -> Drained {
    let (connection, mut consumer) = subscribe(vhost, "bare").await;
    let (started, cpu) = (Instant::now(), cpu_time());
    for n in 1..=count {
        let delivery = consumer.next().await.unwrap().unwrap();
        if n % BATCH == 0 || n == count {
            delivery.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    let drained = Drained::since(count as u64, started, cpu);
    connection.close(200, "done".into()).await.unwrap();
    drained
}

/// Drains the queue with a consumer that does the same durable job as
/// keyseal and nothing else: each message's bytes and one time-index entry
/// into RocksDB (keyseal's store, its options and column families), in
/// batches of [`BATCH`] made durable with one WAL fsync, acked (multiple)
/// after it. No decoding, crypto, dedupe or events.
async fn durable_consumer(vhost: &Vhost, count: usize) -> Drained {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.raw();
    let (hot, by_time) = (db.cf_handle(CF_HOT).unwrap(), db.cf_handle(CF_BY_TIME).unwrap());
    let (connection, mut consumer) = subscribe(vhost, "durable").await;
    let (started, cpu) = (Instant::now(), cpu_time());
    let mut batch = WriteBatch::default();
    for n in 1..=count {
        let delivery = consumer.next().await.unwrap().unwrap();
        let key = delivery.delivery_tag.to_be_bytes();
        batch.put_cf(hot, key, &delivery.data);
        batch.put_cf(by_time, keys::index_key(SystemClock.now_ms(), &key), []);
        if n % BATCH == 0 || n == count {
            db.write(std::mem::take(&mut batch)).unwrap();
            store.sync_async().await.unwrap();
            delivery.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    let drained = Drained::since(count as u64, started, cpu);
    connection.close(200, "done".into()).await.unwrap();
    drained
}

async fn keyseal_worker(vhost: &Vhost, count: usize) -> Drained {
    let prefetch = PREFETCH.to_string();
    let extra = std::env::var("KEYSEAL_BENCH_WORKER_ARGS").unwrap_or_default();
    let mut args = vec!["--prefetch", &prefetch];
    args.extend(extra.split_whitespace());
    common::backlog::drain(&vhost.amqp_url(), &TENANTS, count, &args).await
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Each consumer drains its own copy of the backlog, in turn, per run.
async fn throughput() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 200_000);
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 3);
    println!("ingest: {count} records of 1 KiB, prefetch {PREFETCH}, batches of {BATCH}, {runs} runs");
    let (mut bare, mut durable, mut keyseal) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let vhost = Vhost::new("bench-bare");
        prefill(&vhost, count).await;
        bare.push(bare_consumer(&vhost, count).await);
        drop(vhost);
        let vhost = Vhost::new("bench-durable");
        prefill(&vhost, count).await;
        durable.push(durable_consumer(&vhost, count).await);
        drop(vhost);
        let vhost = Vhost::new("bench-keyseal");
        prefill(&vhost, count).await;
        keyseal.push(keyseal_worker(&vhost, count).await);
        for (name, drained) in [("keyseal", keyseal[run]), ("durable", durable[run]), ("ack-only", bare[run])] {
            println!(
                "  run {run}: {name:<8} {:>8.0} records/s {:>6.1} µs CPU/record",
                drained.rate, drained.cpu_us_per_record
            );
        }
    }
    let rate = |xs: &[Drained]| median(xs.iter().map(|d| d.rate).collect());
    let cpu = |xs: &[Drained]| median(xs.iter().map(|d| d.cpu_us_per_record).collect());
    let (k, d, b) = (rate(&keyseal), rate(&durable), rate(&bare));
    let (kc, dc, bc) = (cpu(&keyseal), cpu(&durable), cpu(&bare));
    println!("median records/s: keyseal {k:.0}, durable consumer {d:.0}, ack-only consumer {b:.0}");
    println!("median µs CPU/record (this process): keyseal {kc:.1}, durable consumer {dc:.1}, ack-only {bc:.1}");
    println!("CPU per record keyseal/durable = {:.2} (target <= 1.5)", kc / dc);
    println!("records/s keyseal/durable = {:.2}; keyseal/ack-only = {:.2} (the machine's ceiling)", k / d, k / b);
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// How a backlog waits for the worker: its tenants placed on their shard
/// (the steady state), or one tenant never seen (in the intake).
#[derive(Clone, Copy)]
enum Backlog {
    Placed,
    OneNewTenant,
}

/// Peak RSS (MiB) of a `keyseal run` child draining `count` queued records
/// of `size` bytes, and the seconds it took.
async fn child_peak_rss(name: &str, backlog: Backlog, count: usize, size: usize, worker_args: &[&str]) -> (f64, f64) {
    let vhost = Vhost::new(name);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tenants: &[&str] = match backlog {
        Backlog::Placed => {
            prefill_sized(&vhost, count, size).await;
            &TENANTS
        }
        Backlog::OneNewTenant => {
            publish_backlog(&vhost.amqp_url(), &TENANTS[..1], count, size).await;
            &TENANTS[..1]
        }
    };
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyseal"))
        .args(["run", "--amqp-url", &vhost.amqp_url(), "--http-addr", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .args(worker_args)
        .env("KEYSEAL_LOG", "warn")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    loop {
        let mut total = 0;
        for tenant in tenants {
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
    (hwm as f64 / 1024.0, started.elapsed().as_secs_f64())
}

async fn peak_rss() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 1_000_000);
    let (mib, secs) = child_peak_rss("bench-rss", Backlog::Placed, count, 1024, &[]).await;
    println!(
        "peak RSS of keyseal run while ingesting {count} records of 1 KiB: {mib:.1} MiB (target <= 256 MiB), {secs:.0} s"
    );
}

async fn peak_rss_big() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 1_200);
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 3);
    println!("peak RSS draining {count} queued records of about 1 MiB, prefetch {PREFETCH}, {runs} runs");
    let prefetch = PREFETCH.to_string();
    let (mut bounded, mut one_new, mut unbounded) = (Vec::new(), Vec::new(), Vec::new());
    // The user's records: 1 MiB less 200 bytes, so the message (with ids
    // and framing) stays under the record limit.
    let users = (1 << 20) - 200;
    for run in 0..runs {
        let defaults = ["--prefetch", prefetch.as_str()];
        let (mib, secs) = child_peak_rss("bench-big", Backlog::Placed, count, 1 << 20, &defaults).await;
        bounded.push(mib);
        let (new_mib, new_secs) = child_peak_rss("bench-big-new", Backlog::OneNewTenant, count, users, &[]).await;
        one_new.push(new_mib);
        let count_only = ["--prefetch", &prefetch, "--prefetch-bytes", "1TiB"];
        let (base_mib, base_secs) =
            child_peak_rss("bench-big-base", Backlog::Placed, count, 1 << 20, &count_only).await;
        unbounded.push(base_mib);
        println!(
            "  run {run}: 4 placed tenants {mib:>7.1} MiB in {secs:.1} s   one new tenant (defaults) {new_mib:>7.1} MiB in {new_secs:.1} s   count-only {base_mib:>7.1} MiB in {base_secs:.1} s"
        );
    }
    let (b, n, u) = (median(bounded), median(one_new), median(unbounded));
    println!(
        "median peak RSS: {b:.1} MiB placed, {n:.1} MiB one new tenant (targets <= 512 MiB), {u:.1} MiB count-only ({:.2}x)",
        b / u
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if std::env::args().any(|a| a == "rss") {
        runtime.block_on(peak_rss());
    } else if std::env::args().any(|a| a == "big") {
        runtime.block_on(peak_rss_big());
    } else {
        runtime.block_on(throughput());
    }
}
