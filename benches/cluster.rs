//! keyseal on a three-node RabbitMQ cluster (`tests/cluster/cluster.sh`,
//! beside the default node), two figures in one run:
//!
//! - ingestion: a placed backlog of 1 KiB records drained by one worker,
//!   through the cluster's three nodes (quorum queues with a replica on
//!   each) against the default single node, runs alternating; medians and
//!   their ratio;
//! - resumption: the node holding the worker's leases is stopped
//!   (`rabbitmqctl stop_app`), and the clock runs until a record published
//!   after the loss (through a surviving node, with confirms) is stored:
//!   reconnecting, re-taking the lease and consuming again. Median of 5.
//!
//! `cargo bench --bench cluster` (KEYSEAL_BENCH_RECORDS, KEYSEAL_BENCH_RUNS
//! to change the size).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Vhost;
use common::backlog::{drain, place_at, publish_backlog};
use common::cluster::{Cluster, ClusterVhost};
use keyseal::broker::publish::{Publisher, synthetic};
use keyseal::clock::SystemClock;

const TENANTS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];
const WAIT: Duration = Duration::from_secs(120);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Records per second one worker drains from a placed backlog of `count`
/// records at `amqp_url`.
async fn ingestion(amqp_url: &str, count: usize) -> f64 {
    place_at(amqp_url, 1, &TENANTS.map(String::from)).await;
    publish_backlog(amqp_url, &TENANTS, count, 1024).await;
    drain(amqp_url, &TENANTS, count, &["--prefetch", "1000"]).await.rate
}

async fn ingestion_figures() {
    let count = env_usize("KEYSEAL_BENCH_RECORDS", 50_000);
    let runs = env_usize("KEYSEAL_BENCH_RUNS", 3);
    println!("ingestion: {count} records of 1 KiB, one worker, {runs} runs");
    let (mut one, mut three) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let vhost = Vhost::new("bench-one-node");
        one.push(ingestion(&vhost.amqp_url(), count).await);
        drop(vhost);
        let vhost = ClusterVhost::new(&format!("bench-three-{run}"));
        three.push(ingestion(&vhost.urls(), count).await);
        let members = vhost.members();
        let queue = keyseal::broker::shard_queue(0);
        assert_eq!(members.get(&queue), Some(&3), "{queue} replicated on every node: {members:?}");
        println!("  run {run}: one node {:>8.0} records/s   three nodes {:>8.0} records/s", one[run], three[run]);
    }
    let (o, t) = (median(one), median(three));
    println!("median: one node {o:.0} records/s, three-node cluster {t:.0} records/s; ratio three/one = {:.2}", t / o);
}

/// Publishes one record through node `through` until confirmed; its id.
async fn publish_marker(vhost: &ClusterVhost, through: u8, n: usize) -> String {
    let record = synthetic(TENANTS[0], &format!("marker-{n}-"), 1, 64, 1).remove(0);
    loop {
        let published = async {
            let publisher = Publisher::connect(&vhost.url(through)).await.ok()?;
            publisher.publish_until_confirmed(std::slice::from_ref(&record), 10, 3).await.ok()
        };
        if published.await == Some(0) {
            return record.record_id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until record `id` of the first tenant reads back.
async fn wait_stored(base: &str, id: &str) {
    let since = Instant::now();
    while common::get_record(base, TENANTS[0], id).await.0 != 200 {
        assert!(since.elapsed() < WAIT, "record {id} never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node (1 to 3) of the worker's leases, once it owns its shard.
async fn lease_node(cluster: &Cluster, base: &str) -> u8 {
    let since = Instant::now();
    loop {
        let ready = async {
            let body: serde_json::Value = reqwest::get(format!("{base}/readyz")).await.ok()?.json().await.ok()?;
            let owned = body["shards"].as_array()?.len();
            let port: u16 = body["brokerNode"].as_str()?.rsplit_once(':')?.1.parse().ok()?;
            (owned == 1).then(|| cluster.node_of_port(port))
        };
        if let Some(node) = ready.await {
            return node;
        }
        assert!(since.elapsed() < WAIT, "the worker never owned its shard");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn resumption_figures(cluster: &Cluster) {
    let vhost = ClusterVhost::new("bench-resume");
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings_at(&vhost.urls(), dir.path(), &["--amqp-heartbeat", "5s"]);
    let worker = keyseal::worker::Worker::start(settings, Arc::new(SystemClock)).await.unwrap();
    let base = common::base_url(&worker);
    let mut took = Vec::new();
    for n in 0..5 {
        let node = lease_node(cluster, &base).await;
        // Placed and flowing before the loss.
        let warm = publish_marker(&vhost, node, 2 * n).await;
        wait_stored(&base, &warm).await;
        let lost_at = Instant::now();
        cluster.stop_app(node);
        let marker = publish_marker(&vhost, node % 3 + 1, 2 * n + 1).await;
        wait_stored(&base, &marker).await;
        took.push(lost_at.elapsed().as_secs_f64());
        println!("  loss {n}: node ks{node} stopped; a record published after it stored {:.2} s later", took[n]);
        cluster.start_app(node);
    }
    worker.stop().await;
    println!("node loss to ingestion resumed: median {:.2} s of 5", median(took));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cluster = Cluster::get();
    ingestion_figures().await;
    resumption_figures(cluster).await;
}
