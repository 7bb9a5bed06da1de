//! keyseal on a real three-node RabbitMQ cluster (one per test binary,
//! beside the default node): workers are given every node, follow their
//! node's loss to another, and no confirmed record is lost or stored
//! twice. Real processes, real nodes stopped and killed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ClusterVhost};
use common::fleet::terminate;
use common::*;
use futures_util::StreamExt;
use keyseal::broker::publish::{Publisher, synthetic};
use keyseal::broker::{Broker, EVENTS_EXCHANGE, connect_any};
use keyseal::proto::v1::IngestRecord;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;

const SHARDS: u32 = 4;
const TENANTS: usize = 8;
/// How long every shard may stay unowned after a node is lost.
const REOWN_WITHIN: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(120);

/// A `keyseal run` child on the cluster's nodes.
struct ClusterWorker {
    port: u16,
    child: Child,
}

impl ClusterWorker {
    fn spawn(vhost: &ClusterVhost, data_dir: &Path, extra: &[&str]) -> Self {
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_keyseal"))
            .args(["run", "--amqp-url", &vhost.urls(), "--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--shards", &SHARDS.to_string(), "--rebalance-interval", "1s", "--amqp-heartbeat", "5s"])
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .env("KEYSEAL_LOG", "warn,lapin::returned_messages=error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawning keyseal run");
        Self { port, child }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its `/readyz` when ready: the shards it owns and the node it is on.
    async fn ready(&self) -> Option<(BTreeSet<u32>, u16)> {
        let response = reqwest::get(format!("{}/readyz", self.base())).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: serde_json::Value = response.json().await.ok()?;
        let shards = body["shards"].as_array()?.iter().filter_map(|s| s.as_u64()).map(|s| s as u32).collect();
        let node = body["brokerNode"].as_str()?.rsplit_once(':')?.1.parse().ok()?;
        Some((shards, node))
    }
}

/// A worker outlives no test, passed or failed.
impl Drop for ClusterWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until both workers are ready and own every shard exactly once;
/// returns how long that took and each worker's node port.
async fn wait_owned(workers: &[ClusterWorker], since: Instant) -> (Duration, Vec<u16>) {
    loop {
        let mut owned = Vec::new();
        let mut nodes = Vec::new();
        for worker in workers {
            if let Some((shards, node)) = worker.ready().await {
                owned.extend(shards);
                nodes.push(node);
            }
        }
        owned.sort_unstable();
        if nodes.len() == workers.len() && owned == (0..SHARDS).collect::<Vec<_>>() {
            return (since.elapsed(), nodes);
        }
        assert!(since.elapsed() < WAIT, "shards not owned again: {owned:?} by {} ready workers", nodes.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes rounds of records with confirms through any node until
/// `stop`, each round again until every record of it is confirmed.
/// Returns every record confirmed.
async fn produce(urls: String, stop: CancellationToken) -> Vec<IngestRecord> {
    let mut confirmed = Vec::new();
    let mut round = 0;
    while !stop.is_cancelled() {
        let records: Vec<IngestRecord> =
            (0..TENANTS).flat_map(|t| synthetic(&format!("tenant-{t}"), &format!("r{round}-"), 10, 200, 1)).collect();
        loop {
            let published = async {
                let publisher = Publisher::connect(&urls).await.ok()?;
                publisher.publish_until_confirmed(&records, 100, 3).await.ok()
            };
            match published.await {
                Some(0) => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        confirmed.extend(records);
        round += 1;
    }
    confirmed
}

/// Declares the quorum queue `test.events`, bound to every event; returns
/// the channel it used.
async fn declare_events_queue(connection: &lapin::Connection) -> lapin::Result<lapin::Channel> {
    let channel = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    channel.queue_declare("test.events".into(), QueueDeclareOptions::durable(), args).await?;
    let (q, e) = ("test.events".into(), EVENTS_EXCHANGE.into());
    channel.queue_bind(q, e, "#".into(), QueueBindOptions::default(), FieldTable::default()).await?;
    Ok(channel)
}

/// Collects every event relayed to `keyseal.events` as (shard, sequence),
/// from a quorum queue on the cluster, following node losses, until the
/// task is aborted.
async fn collect_events(broker: Broker, seen: Arc<Mutex<BTreeSet<(u32, u64)>>>) {
    let mut node = 0;
    loop {
        let Ok((connection, at)) = connect_any(&broker, node, "test-events", None).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        node = at + 1;
        let consumed = async {
            let channel = declare_events_queue(&connection).await?;
            // Acked once recorded: a delivery in flight when a node goes is
            // delivered again, never lost on the way.
            let options = BasicConsumeOptions::default();
            let mut events =
                channel.basic_consume("test.events".into(), "".into(), options, FieldTable::default()).await?;
            while let Some(Ok(delivery)) = events.next().await {
                let headers = delivery.properties.headers().clone().unwrap_or_default();
                let field = |name: &str| match headers.inner().get(name) {
                    Some(AMQPValue::LongUInt(n)) => Some(u64::from(*n)),
                    Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).ok(),
                    _ => None,
                };
                if let (Some(shard), Some(sequence)) = (field("x-keyseal-shard"), field("x-keyseal-sequence")) {
                    seen.lock().unwrap().insert((shard as u32, sequence));
                }
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Ok::<_, lapin::Error>(())
        };
        let _ = consumed.await;
    }
}

/// The queues keyseal declares for a deployment of [`SHARDS`] shards, which
/// `--quorum-size` replicates.
fn replicated_queues() -> Vec<String> {
    let mut queues: Vec<String> = (0..SHARDS).map(keyseal::broker::shard_queue).collect();
    queues.extend([keyseal::broker::INGEST_QUEUE.into(), keyseal::broker::DEAD_LETTER_QUEUE.into()]);
    queues
}

/// Held by a test while the cluster must keep all its nodes: the chaos
/// test stops them, and a queue declared meanwhile gets fewer members.
static ALL_NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_size_sets_the_replicas_of_every_queue_keyseal_declares() {
    let _all_nodes = ALL_NODES.lock().await;
    let vhost = ClusterVhost::new("quorum-size");
    let dir = tempfile::tempdir().unwrap();
    let worker = ClusterWorker::spawn(&vhost, dir.path(), &["--quorum-size", "2"]);
    wait_owned(std::slice::from_ref(&worker), Instant::now()).await;
    let members = vhost.members();
    for queue in replicated_queues() {
        assert_eq!(members.get(&queue), Some(&2), "{queue} of {members:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_follow_node_losses_and_every_confirmed_record_is_stored_once() {
    let _all_nodes = ALL_NODES.lock().await;
    let cluster = Cluster::get();
    let vhost = ClusterVhost::new("chaos");
    let dir = tempfile::tempdir().unwrap();
    // The events queue is bound before the workers start, so it holds
    // every event from the first.
    let (connection, _) = connect_any(&Broker::from_list(&vhost.urls()).unwrap(), 0, "test", None).await.unwrap();
    keyseal::broker::declare_topology(&connection, None).await.unwrap();
    declare_events_queue(&connection).await.unwrap();
    keyseal::broker::close(&connection, "declared").await;
    let mut workers =
        vec![ClusterWorker::spawn(&vhost, dir.path(), &[]), ClusterWorker::spawn(&vhost, dir.path(), &[])];
    wait_owned(&workers, Instant::now()).await;
    // Unset, --quorum-size leaves it to the broker: every node of three.
    let members = vhost.members();
    for queue in replicated_queues() {
        assert_eq!(members.get(&queue), Some(&3), "{queue} of {members:?}");
    }

    let stop = CancellationToken::new();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let broker = Broker::from_list(&vhost.urls()).unwrap();
    let events = tokio::spawn(collect_events(broker, seen.clone()));
    let producer = tokio::spawn(produce(vhost.urls(), stop.clone()));

    // Each worker's node is stopped in turn, then one is killed outright.
    let mut reowned = Vec::new();
    for (worker, hard) in [(0, false), (1, false), (0, true)] {
        let (_, nodes) = wait_owned(&workers, Instant::now()).await;
        let node = cluster.node_of_port(nodes[worker]);
        let lost_at = Instant::now();
        if hard {
            cluster.kill(node)
        } else {
            cluster.stop_app(node)
        }
        let (took, _) = wait_owned(&workers, lost_at).await;
        reowned.push((node, hard, took));
        if hard { cluster.restart(node) } else { cluster.start_app(node) }
    }
    stop.cancel();
    let confirmed = producer.await.unwrap();

    // Every confirmed record is stored once, at its shard's owner, and
    // reads back through both workers.
    let mut per_tenant: BTreeMap<String, u64> = BTreeMap::new();
    for record in &confirmed {
        *per_tenant.entry(record.tenant_id.clone()).or_default() += 1;
    }
    wait_owned(&workers, Instant::now()).await;
    for (tenant, total) in &per_tenant {
        wait_for_records(&workers[0].base(), tenant, *total, WAIT).await;
    }
    let mut stored = 0;
    for tenant in per_tenant.keys() {
        let (hot, sealed) = counts(&workers[1].base(), tenant).await.expect("a status");
        stored += hot + sealed;
    }
    for record in confirmed.iter().step_by(7) {
        for worker in &workers {
            let (status, body) = get_record(&worker.base(), &record.tenant_id, &record.record_id).await;
            assert_eq!((status, &body), (200, &record.payload), "{} through {}", record.record_id, worker.base());
        }
    }

    // Every event appended to each shard's log was relayed.
    let mut last = BTreeMap::new();
    for shard in 0..SHARDS {
        let report: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v1/admin/replay?shard={shard}", workers[0].base()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        last.insert(shard, report["sequence"].as_u64().expect("a sequence"));
    }
    let since = Instant::now();
    loop {
        let missing: BTreeMap<u32, Vec<u64>> = {
            let seen = seen.lock().unwrap();
            last.iter()
                .map(|(shard, last)| (*shard, (1..=*last).filter(|q| !seen.contains(&(*shard, *q))).collect()))
                .filter(|(_, missing): &(u32, Vec<u64>)| !missing.is_empty())
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        if since.elapsed() > WAIT {
            let mut lag = String::new();
            for worker in &workers {
                let metrics = reqwest::get(format!("{}/metrics", worker.base())).await.unwrap().text().await.unwrap();
                lag.extend(metrics.lines().filter(|l| l.starts_with("keyseal_outbox_lag")).map(|l| format!("{l}; ")));
            }
            let queue = cluster.ctl(
                1,
                &["list_queues", "-p", &vhost.name, "name", "messages_ready", "messages_unacknowledged", "consumers"],
            );
            panic!("events never relayed, by shard (of {last:?}): {missing:?}; outbox lag: {lag}; queues: {queue}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    events.abort();

    let distinct: BTreeSet<(&str, &str)> =
        confirmed.iter().map(|r| (r.tenant_id.as_str(), r.record_id.as_str())).collect();
    println!(
        "cluster chaos: {} records confirmed, {stored} stored, lost {}, doubled {}; {} events relayed over {SHARDS} shards",
        distinct.len(),
        distinct.len() as u64 - stored.min(distinct.len() as u64),
        stored.saturating_sub(distinct.len() as u64),
        last.values().sum::<u64>(),
    );
    for (node, hard, took) in &reowned {
        let how = if *hard { "killed (kill -9)" } else { "stopped (stop_app)" };
        println!("  node ks{node} {how}: every shard owned again in {:.1} s", took.as_secs_f64());
    }
    assert_eq!(stored, distinct.len() as u64, "every confirmed record stored exactly once");
    for (_, _, took) in &reowned {
        assert!(*took <= REOWN_WITHIN, "shards owned again only after {took:?}");
    }
    for worker in &mut workers {
        terminate(&mut worker.child);
    }
}
