//! The chaos tests' harness: a seeded random source, the producer that
//! publishes in confirm mode the whole time and its ledger, the worker run
//! as a child process (its vhost, data dir and port), the check of the
//! store after a run, the read-back of every confirmed record, and a
//! size-limited tmpfs for the full-disk test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;
use keyseal::broker::publish::Publisher;
use keyseal::broker::{DEAD_LETTER_QUEUE, ERROR_HEADER, INGEST_QUEUE, shard_queue};
use keyseal::proto::v1::IngestRecord;
use keyseal::storage::{CF_HOT, CF_SEALED, Store, keys};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Bound of every wait on a condition.
pub const WAIT: Duration = Duration::from_secs(60);
/// Records the producer publishes per confirm window, and the pause between
/// windows (a steady ~400 records/s keeps the read-back of every record short).
pub const WINDOW: usize = 40;
const PACE: Duration = Duration::from_millis(100);

/// One chaos test at a time: one of them stops the broker every test shares.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// splitmix64, seeded from `KEYSEAL_CHAOS_SEED` or the time.
pub struct Rng(u64);

impl Rng {
    /// A source seeded from `KEYSEAL_CHAOS_SEED` or the time; with its seed.
    pub fn seeded() -> (Self, u64) {
        let seed = std::env::var("KEYSEAL_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        println!("chaos seed: {seed} (KEYSEAL_CHAOS_SEED={seed} replays it)");
        (Self(seed), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration drawn uniformly from `[low, high)`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_millis() as u64;
        low + Duration::from_millis(self.next() % span.max(1))
    }
}

type RecordKey = (String, String);

/// What the producer published, and which of it the broker confirmed.
#[derive(Default)]
pub struct Ledger {
    published: BTreeMap<RecordKey, Vec<u8>>,
    confirmed: BTreeSet<RecordKey>,
}

/// Record `n` of a producer: tenants take turns, payloads are distinct.
pub fn record(tenants: &[&str], prefix: &str, n: usize, size: usize) -> IngestRecord {
    let tenant = tenants[n % tenants.len()];
    let record_id = format!("{prefix}{n}");
    let stamp = format!("{tenant}/{record_id}/");
    IngestRecord {
        tenant_id: tenant.to_owned(),
        record_id,
        observed_at_unix_ms: 1,
        payload: stamp.bytes().cycle().take(size).collect(),
        attributes: BTreeMap::new(),
    }
}

/// A background producer: windows of records in confirm mode at a steady
/// pace, reconnecting after broker failures (a window whose confirms were
/// lost counts as published, not confirmed), until stopped.
pub struct Producer {
    stop: CancellationToken,
    confirmed: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<Ledger>,
}

impl Producer {
    /// Starts publishing records of `payload_size` bytes for `tenants` at `amqp_url`.
    pub fn start(amqp_url: String, tenants: &[&str], prefix: &str, payload_size: usize) -> Self {
        let stop = CancellationToken::new();
        let confirmed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tenants, prefix): (Vec<String>, String) = (tenants.iter().map(|t| t.to_string()).collect(), prefix.into());
        let (stopped, counter) = (stop.clone(), confirmed.clone());
        let task = tokio::spawn(async move {
            let tenants: Vec<&str> = tenants.iter().map(String::as_str).collect();
            let mut ledger = Ledger::default();
            let mut publisher: Option<Publisher> = None;
            let mut ticks = tokio::time::interval(PACE);
            let mut next = 0;
            while !stopped.is_cancelled() {
                ticks.tick().await;
                let Some(producer) = &publisher else {
                    let connecting = tokio::time::timeout(Duration::from_secs(5), Publisher::connect(&amqp_url));
                    publisher = connecting.await.ok().and_then(Result::ok);
                    continue;
                };
                let window: Vec<IngestRecord> =
                    (next..next + WINDOW).map(|n| record(&tenants, &prefix, n, payload_size)).collect();
                next += WINDOW;
                for r in &window {
                    ledger.published.insert((r.tenant_id.clone(), r.record_id.clone()), r.payload.clone());
                }
                let outcome =
                    tokio::time::timeout(Duration::from_secs(10), producer.publish_all(&window, WINDOW)).await;
                match outcome {
                    Ok(Ok(confirms)) => {
                        for (r, ok) in window.iter().zip(confirms) {
                            if ok && ledger.confirmed.insert((r.tenant_id.clone(), r.record_id.clone())) {
                                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                    }
                    Ok(Err(_)) | Err(_) => publisher = None,
                }
            }
            ledger
        });
        Self { stop, confirmed, task }
    }

    /// How many records the broker has confirmed so far.
    pub fn confirmed(&self) -> usize {
        self.confirmed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `more` records beyond now are confirmed.
    pub async fn wait_for_more(&self, more: usize) {
        let target = self.confirmed() + more;
        wait_until(&format!("{target} records confirmed"), WAIT, || async { self.confirmed() >= target }).await;
    }

    /// Stops publishing; what was published and confirmed.
    pub async fn finish(self) -> Ledger {
        self.stop.cancel();
        self.task.await.expect("producer task")
    }
}

/// One worker's vhost, data dir and port, and its child process when running.
pub struct Shard {
    /// The worker's own vhost.
    pub vhost: Vhost,
    data_dir: PathBuf,
    port: u16,
    flags: Vec<String>,
    child: Option<Child>,
}

impl Shard {
    /// A worker named `name` on `data_dir` with `flags`, not started yet.
    pub fn new(name: &str, data_dir: PathBuf, flags: Vec<String>) -> Self {
        Self { vhost: Vhost::new(name), data_dir, port: free_port(), flags, child: None }
    }

    /// Its admin API's base URL.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the worker and waits until it consumes (`/readyz`).
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "worker already running");
        self.child = Some(spawn_worker(&self.vhost, &self.data_dir, self.port, &self.flags));
        let base = self.base();
        wait_until("the worker to be ready", WAIT, || ready(&base)).await;
    }

    /// Kills the child with SIGKILL and waits for it.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("worker running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// SIGTERM: a clean stop acks what is stored and returns the rest.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("worker running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM");
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the worker did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /v1/tenants/{tenant}`, when it answers 200.
    pub async fn status(&self, tenant: &str) -> Option<Value> {
        reqwest::get(format!("{}/v1/tenants/{tenant}", self.base())).await.ok()?.json().await.ok()
    }

    /// Records of `tenant` stored (hot and sealed).
    pub async fn stored(&self, tenant: &str) -> u64 {
        counts(&self.base(), tenant).await.map_or(0, |(h, s)| h + s)
    }

    /// Messages ready in `queue` (a passive declare).
    /// Messages waiting in the intake and in the shard's queue (placed
    /// tenants' records skip the intake).
    pub async fn backlog(&self) -> u32 {
        self.depth(INGEST_QUEUE).await + self.depth(&shard_queue(0)).await
    }

    async fn depth(&self, queue: &str) -> u32 {
        let connection = keyseal::broker::connect(&self.vhost.amqp_url(), "chaos-check").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        let depth = channel.queue_declare(queue.into(), options, FieldTable::default()).await.unwrap().message_count();
        keyseal::broker::close(&connection, "checked").await;
        depth
    }

    /// The reasons of (up to 20) dead letters, for a failure message.
    pub async fn dead_letter_reasons(&self) -> Vec<String> {
        let connection = keyseal::broker::connect(&self.vhost.amqp_url(), "chaos-check").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let mut reasons = Vec::new();
        for _ in 0..20 {
            let Some(message) = channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions::default()).await.unwrap()
            else {
                break;
            };
            let headers = message.delivery.properties.headers().clone().unwrap_or_default();
            let reason = headers.inner().iter().find(|(name, _)| name.as_str() == ERROR_HEADER).map(|(_, v)| v.clone());
            reasons.push(format!("{reason:?}"));
        }
        keyseal::broker::close(&connection, "checked").await;
        reasons
    }

    /// The sum of metric `name` on `/metrics`, if present.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.base())).await.ok()?.text().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether the worker at `base` answers `/readyz` with 200.
pub async fn ready(base: &str) -> bool {
    reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status().is_success())
}

/// The figures a chaos run prints.
#[derive(Debug, Default)]
pub struct Figures {
    published: usize,
    confirmed: usize,
    stored: usize,
    /// Records sealed.
    pub sealed: usize,
    lost: usize,
    doubled: usize,
    dead_lettered: u32,
    /// SIGKILLs survived.
    pub kills: usize,
}

impl Figures {
    /// Prints the figures of `test`.
    pub fn print(&self, test: &str, seed: Option<u64>, started: Instant) {
        println!(
            "chaos figures ({test}): published {}, confirmed {}, stored {} ({} sealed), lost {}, doubled {}, \
             dead-lettered {}, kills survived {}, seed {}, {:.1} s",
            self.published,
            self.confirmed,
            self.stored,
            self.sealed,
            self.lost,
            self.doubled,
            self.dead_lettered,
            self.kills,
            seed.map_or("-".to_owned(), |s| s.to_string()),
            started.elapsed().as_secs_f64()
        );
    }
}

/// Drains the ingest queues with the worker running, stops it cleanly
/// (again until nothing is left in them: a clean stop returns
/// deliveries it had not stored yet), then checks the store on disk:
/// every confirmed record stored exactly once, nothing dead-lettered, every
/// stored record one the producer published. Leaves the worker stopped.
pub async fn drain_and_check(shard: &mut Shard, ledger: &Ledger) -> Figures {
    loop {
        if shard.child.is_none() {
            shard.start().await;
        }
        wait_until("the ingest queues to drain", WAIT, || async { shard.backlog().await == 0 }).await;
        shard.stop().await;
        if shard.backlog().await == 0 {
            break;
        }
    }
    let dead_lettered = shard.depth(DEAD_LETTER_QUEUE).await;

    let store = Store::open(&shard.data_dir.join("db")).unwrap();
    let db = store.raw();
    let layer = |cf: &str| -> Vec<RecordKey> {
        db.iterator_cf(db.cf_handle(cf).unwrap(), rocksdb::IteratorMode::Start)
            .map(|item| {
                let (key, _) = item.unwrap();
                let (tenant, id) = keys::split_record_key(&key).expect("a well-formed record key");
                (tenant.to_owned(), id.to_owned())
            })
            .collect()
    };
    let (hot, sealed) = (layer(CF_HOT), layer(CF_SEALED));
    let hot_ids: BTreeSet<&RecordKey> = hot.iter().collect();
    let sealed_ids: BTreeSet<&RecordKey> = sealed.iter().collect();
    let both: Vec<_> = hot_ids.intersection(&sealed_ids).take(10).collect();
    let stored: BTreeSet<&RecordKey> = hot_ids.union(&sealed_ids).copied().collect();
    let doubled =
        (hot.len() - hot_ids.len()) + (sealed.len() - sealed_ids.len()) + hot_ids.intersection(&sealed_ids).count();
    let lost: Vec<&RecordKey> = ledger.confirmed.iter().filter(|k| !stored.contains(k)).collect();
    let phantoms: Vec<_> = stored.iter().filter(|k| !ledger.published.contains_key(**k)).take(10).collect();
    let figures = Figures {
        published: ledger.published.len(),
        confirmed: ledger.confirmed.len(),
        stored: stored.len(),
        sealed: sealed_ids.len(),
        lost: lost.len(),
        doubled,
        dead_lettered,
        kills: 0,
    };
    println!("{figures:?}");
    assert!(
        lost.is_empty(),
        "{} confirmed records acked but not stored, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(both.is_empty(), "records in both hot and sealed: {both:?}");
    assert_eq!(doubled, 0, "records stored twice");
    assert!(phantoms.is_empty(), "stored records nobody published: {phantoms:?}");
    assert!(figures.confirmed > 0, "the producer got confirms");
    let tenants: BTreeSet<&str> = stored.iter().map(|(t, _)| t.as_str()).collect();
    for tenant in tenants {
        let count = |ids: &BTreeSet<&RecordKey>| ids.iter().filter(|(t, _)| t == tenant).count() as u64;
        let projection = store.tenant(tenant).expect("a projection for every tenant with records");
        assert_eq!(
            (projection.hot_records, projection.sealed_records),
            (count(&hot_ids), count(&sealed_ids)),
            "{tenant}: the projection's (hot, sealed) against the keys on disk"
        );
    }
    drop(store);
    if dead_lettered > 0 {
        shard.start().await;
        let reasons = shard.dead_letter_reasons().await;
        panic!("{dead_lettered} records dead-lettered, none should be: {reasons:?}");
    }
    figures
}

/// The end of a chaos test without kills: stops the producer, drains and
/// checks the store, reads every confirmed record back, prints the figures.
pub async fn finish_without_kills(producer: Producer, shard: &mut Shard, test: &str, started: Instant) {
    let ledger = producer.finish().await;
    phase(started, "producer stopped");
    let mut figures = drain_and_check(shard, &ledger).await;
    phase(started, "drained and checked");
    shard.start().await;
    assert_reads_back(shard, &ledger).await;
    phase(started, "every confirmed record read back");
    shard.stop().await;
    figures.kills = 0;
    figures.print(test, None, started);
}

/// Prints how far into its test a step is, so a slow step shows in CI logs.
pub fn phase(started: Instant, what: &str) {
    println!("[{:6.1} s] {what}", started.elapsed().as_secs_f64());
}

/// Reads every confirmed record back through the admin API of the running
/// worker, eight at a time on one connection pool.
pub async fn assert_reads_back(shard: &Shard, ledger: &Ledger) {
    let (base, http) = (shard.base(), reqwest::Client::new());
    let failures: Vec<String> = futures_util::stream::iter(&ledger.confirmed)
        .map(|(tenant, id)| {
            let (base, http) = (&base, &http);
            async move {
                let response = http.get(format!("{base}/v1/tenants/{tenant}/records/{id}")).send().await;
                let (status, body) = match response {
                    Ok(r) => (r.status().as_u16(), r.bytes().await.map(|b| b.to_vec()).unwrap_or_default()),
                    Err(e) => (0, e.to_string().into_bytes()),
                };
                (status != 200 || body != ledger.published[&(tenant.clone(), id.clone())])
                    .then(|| format!("{tenant}/{id}: {status}"))
            }
        })
        .buffer_unordered(8)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} records do not read back: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}

/// A size-limited tmpfs, unmounted when dropped.
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `dir`.
    pub fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Self { dir: dir.to_path_buf() }
    }

    /// Changes the size of the mounted tmpfs.
    pub fn resize(&self, size: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "remount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        let out = Command::new("df").args(["-B1", "--output=used"]).arg(&self.dir).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
