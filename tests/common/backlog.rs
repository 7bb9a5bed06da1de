//! Backlogs for the benchmarks: a deployment with its tenants placed (the
//! steady state), records queued before a worker runs, and how fast an
//! in-process worker drains them. Every function takes `--amqp-url`'s
//! form: one URL or a cluster's node list.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyseal::broker::publish::{Publisher, synthetic};
use keyseal::broker::{self, Broker, ROUTE_EXCHANGE, shard_queue};
use keyseal::clock::SystemClock;

/// Declares a deployment of `shards` shards at `amqp_url` and places
/// `tenants` on their shards, as the intake would on their first message.
pub async fn place_at(amqp_url: &str, shards: u32, tenants: &[String]) {
    let (connection, _) =
        broker::connect_any(&Broker::from_list(amqp_url).unwrap(), 0, "placement", None).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    broker::declare_topology(&connection, None).await.unwrap();
    broker::declare_shard_queues(&connection, shards, None).await.unwrap();
    for tenant in tenants {
        let queue = shard_queue(keyseal::placement::shard_of(tenant, shards).0);
        let (queue, route, key) = (queue.as_str().into(), ROUTE_EXCHANGE.into(), tenant.as_str().into());
        channel.queue_bind(queue, route, key, Default::default(), Default::default()).await.unwrap();
    }
    broker::close(&connection, "placed").await;
}

/// Publishes `count` records of `size` bytes, spread over `tenants`, with
/// confirms, in pieces of about 20 MiB (the producer's memory stays small).
pub async fn publish_backlog(amqp_url: &str, tenants: &[&str], count: usize, size: usize) {
    let publisher = Publisher::connect(amqp_url).await.unwrap();
    let chunk = ((20 << 20) / size.max(1)).max(1);
    for tenant in tenants {
        let per_tenant = count / tenants.len();
        for start in (0..per_tenant).step_by(chunk) {
            let n = chunk.min(per_tenant - start);
            let records = synthetic(tenant, &format!("r-{start}-"), n, size, 1);
            let confirmed = publisher.publish_all(&records, 2000).await.unwrap();
            assert!(confirmed.iter().all(|c| *c));
        }
    }
}

/// What one drain of a backlog measured.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    /// Records stored (or acked) per second.
    pub rate: f64,
    /// CPU time of this process (user and system, every thread: RocksDB's
    /// flushes and compactions too) per record, in microseconds.
    pub cpu_us_per_record: f64,
}

impl Drained {
    /// The figures of `records` handled since `started`, when this process
    /// had used `cpu_before` of CPU.
    pub fn since(records: u64, started: Instant, cpu_before: Duration) -> Self {
        let cpu = cpu_time().saturating_sub(cpu_before);
        Self {
            rate: records as f64 / started.elapsed().as_secs_f64(),
            cpu_us_per_record: cpu.as_secs_f64() * 1e6 / records as f64,
        }
    }
}

/// The CPU time (user and system, all threads) this process has used.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// How an in-process worker of one shard (with `args`) drains the `count`
/// records of `tenants` queued at `amqp_url`. Start-up (root keys, the
/// store, the broker sessions) is not ingestion: the clocks start once the
/// worker is up and count only what is stored after that.
pub async fn drain(amqp_url: &str, tenants: &[&str], count: usize, args: &[&str]) -> Drained {
    let dir = tempfile::tempdir().unwrap();
    let settings = super::settings_at(amqp_url, dir.path(), args);
    keyseal::crypto::root_key::ManagedRootKeys::load_or_create(&dir.path().join("root-keys")).unwrap();
    let worker = keyseal::worker::Worker::start(settings, Arc::new(SystemClock)).await.unwrap();
    let (started, cpu) = (Instant::now(), cpu_time());
    let store = worker.only().shard.store.clone();
    let stored = || tenants.iter().map(|t| store.tenant(t).map_or(0, |p| p.hot_records)).sum::<u64>();
    let before = stored();
    while stored() < count as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = Drained::since(count as u64 - before, started, cpu);
    worker.stop().await;
    drained
}
