//! Shared test harness: a RabbitMQ vhost per test (so the fixed topology
//! names never collide), an in-process worker on a temp data dir, and
//! condition polling with timeouts instead of sleeps.

#![allow(dead_code)]

pub mod backlog;
pub mod byok;
pub mod cluster;
pub mod fleet;
pub mod pair;
pub mod vault;

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyseal::broker::publish::Publisher;
use keyseal::broker::{DEAD_LETTER_QUEUE, ERROR_HEADER};
use keyseal::clock::SharedClock;
use keyseal::config::Settings;
use keyseal::proto::v1::IngestRecord;
use keyseal::worker::Worker;
use lapin::Channel;
use lapin::message::BasicGetMessage;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;

/// A throwaway vhost, deleted on drop.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn new(test: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!("keyseal-test-{test}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self { name }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["delete_vhost", &self.name]).output();
    }
}

/// Runs `rabbitmqctl` on the default node; its output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl").args(args).output().expect("running rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the broker's application; starts it again when dropped, even if
/// the test fails in between, so no later test finds the broker down.
pub struct BrokerStopped;

impl BrokerStopped {
    pub fn begin() -> Self {
        rabbitmqctl(&["stop_app"]);
        Self
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

/// Settings for a test worker: the vhost, the data dir, an ephemeral port,
/// plus `extra` flags.
pub fn settings(vhost: &Vhost, data_dir: &Path, extra: &[&str]) -> Settings {
    settings_at(&vhost.amqp_url(), data_dir, extra)
}

/// [`settings`] for a worker that connects with `amqp_url`.
pub fn settings_at(amqp_url: &str, data_dir: &Path, extra: &[&str]) -> Settings {
    let dir = data_dir.to_str().unwrap().to_owned();
    let mut args =
        vec!["--amqp-url", amqp_url, "--data-dir", &dir, "--http-addr", "127.0.0.1:0", "--sweep-interval", "1h"];
    args.extend_from_slice(extra);
    keyseal::config::parse_flags(args).expect("valid test settings")
}

pub async fn start_worker(vhost: &Vhost, data_dir: &Path, clock: SharedClock, extra: &[&str]) -> Worker {
    Worker::start(settings(vhost, data_dir, extra), clock).await.expect("worker starts")
}

/// A worker (on the system clock) that connects with `amqp_url`.
pub async fn start_worker_at(amqp_url: &str, data_dir: &Path, extra: &[&str]) -> Worker {
    let clock = std::sync::Arc::new(keyseal::clock::SystemClock);
    Worker::start(settings_at(amqp_url, data_dir, extra), clock).await.expect("worker starts")
}

pub fn base_url(worker: &Worker) -> String {
    format!("http://{}", worker.http_addr)
}

/// A free loopback port, for a worker run as a child process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `keyseal run` as a child process (so tests can kill -9 it) on `vhost`,
/// `data_dir` and `127.0.0.1:port`, with `extra` flags.
pub fn spawn_worker<S: AsRef<std::ffi::OsStr>>(
    vhost: &Vhost,
    data_dir: &Path,
    port: u16,
    extra: &[S],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_keyseal"))
        .args(["run", "--amqp-url", &vhost.amqp_url(), "--http-addr", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("KEYSEAL_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawning keyseal run")
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (hot, sealed) counts of a tenant as the admin API reports them.
pub async fn counts(base: &str, tenant: &str) -> Option<(u64, u64)> {
    let response = reqwest::get(format!("{base}/v1/tenants/{tenant}")).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let status: serde_json::Value = response.json().await.ok()?;
    Some((status["records"]["hot"].as_u64()?, status["records"]["sealed"].as_u64()?))
}

/// Waits until the tenant's hot + sealed count reaches `total`.
pub async fn wait_for_records(base: &str, tenant: &str, total: u64, timeout: Duration) {
    wait_until(&format!("{total} records for {tenant}"), timeout, || async {
        counts(base, tenant).await.is_some_and(|(h, s)| h + s == total)
    })
    .await;
}

/// GET a record; returns (status, body).
/// `PUT /v1/tenants/{tenant}/encryption`: enables the tenant's own key;
/// panics unless the worker answers 200.
pub async fn enable(base: &str, tenant: &str, key_uri: &str) {
    let response = reqwest::Client::new()
        .put(format!("{base}/v1/tenants/{tenant}/encryption"))
        .json(&serde_json::json!({"keyUri": key_uri}))
        .send()
        .await
        .expect("the admin API answers");
    let status = response.status();
    assert_eq!(status, 200, "enabling {tenant}'s key: {}", response.text().await.unwrap_or_default());
}

pub async fn get_record(base: &str, tenant: &str, record_id: &str) -> (u16, Vec<u8>) {
    let response =
        reqwest::get(format!("{base}/v1/tenants/{tenant}/records/{record_id}")).await.expect("admin API reachable");
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

/// Publishes (republishing what the broker nacks, as a producer must) and
/// asserts every record was confirmed.
pub async fn publish_confirmed(vhost: &Vhost, records: &[IngestRecord]) {
    let publisher = Publisher::connect(&vhost.amqp_url()).await.expect("publisher connects");
    let unconfirmed = publisher.publish_until_confirmed(records, 500, 3).await.expect("publish");
    assert_eq!(unconfirmed, 0, "every record confirmed");
}

/// The next message in the dead-letter queue, taken off it, within `timeout`.
pub async fn next_dead_letter(channel: &Channel, timeout: Duration) -> Option<BasicGetMessage> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: true }).await.unwrap();
        if got.is_some() || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A header of a message got from a queue.
pub fn header<'a>(message: &'a BasicGetMessage, name: &str) -> Option<&'a AMQPValue> {
    message.delivery.properties.headers().as_ref()?.inner().get(name)
}

/// The reason a dead letter carries.
pub fn reason(message: &BasicGetMessage) -> String {
    match header(message, ERROR_HEADER) {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        other => panic!("dead letter without {ERROR_HEADER}: {other:?}"),
    }
}

/// Every file under `dir`, at any depth, with its bytes (a file deleted
/// meanwhile, as RocksDB retires files, is left out): what a test or
/// benchmark searches for traces of erased data.
pub fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable dir") {
            let path = entry.expect("a dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path, bytes));
            }
        }
    }
    files
}

/// The sum of every sample of the Prometheus metric `name` in `text` whose
/// labels include all of `labels`, or `None` when no sample matches. Summing
/// across the other labels (a worker reports per shard) keeps tests from
/// depending on which labels a series carries or their order.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut matched = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        let has = |&(key, want): &(&str, &str)| {
            let quoted = format!("\"{want}\"");
            series_labels.split(',').any(|pair| pair.split_once('=') == Some((key, quoted.as_str())))
        };
        if series_name == name && labels.iter().all(has) {
            *matched.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    matched
}

/// [`metric_sum`] of the worker at `base`'s `/metrics`.
pub async fn scrape_sum(base: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
    metric_sum(&text, name, labels)
}
