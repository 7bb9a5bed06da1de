//! `keyseal demo`: the whole story of keyseal in one process, on local
//! defaults, with durations short enough to watch.
//!
//! It starts the Key Vault emulator and a worker in-process (temporary
//! directories, the real clock; records sealed after 3 s, keys probed every
//! second, lockdown 4 s after a key breaks) and plays the customer and the
//! operator: records for two tenants, the customer's own key for one,
//! sealing, a key roll, a broken key (degraded, then locked down: reads
//! refused while ingestion goes on), the key mended (restored, backlog
//! sealed), and the customer key removed again. Each step is waited for by
//! polling the admin API under a timeout, never by sleeping and hoping, and
//! narrated with the time since the start; a status table of both tenants
//! ends the story. Payloads and key material are never printed.

use std::ffi::OsString;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use reqwest::StatusCode;
use serde_json::Value;

use crate::amqp::{self, DEFAULT_AMQP_URL, INGEST_QUEUE};
use crate::client::{AdminClient, ClientError};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Settings};
use crate::emulator::admin::{KeyAdmin, KeyAdminError};
use crate::emulator::{self, EmulatorArgs, EmulatorError};
use crate::proto::v1::IngestRecord;
use crate::publish::{self, PublishError, Publisher};
use crate::worker::Worker;

/// Residence time before sealing (the real default is 48 h).
const SEAL_AFTER: &str = "3s";
/// How often the seal sweep runs (default 5 min).
const SWEEP_INTERVAL: &str = "1s";
/// How often each customer key is probed (default 60 s).
const PROBE_INTERVAL: &str = "1s";
/// Grace between a key breaking and the lockdown (default 50 min).
const LOCKDOWN_AFTER: &str = "4s";
/// Records published per tenant at the start.
const RECORDS: usize = 50;
/// Records published to the BYOK tenant while its key is broken.
const LATE_RECORDS: usize = 20;
/// Payload bytes per record.
const PAYLOAD_BYTES: usize = 512;
/// Longest wait for any one step; the whole story takes about 12 s.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a condition being waited for is checked.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How long the broker may take to accept a connection.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Records in flight per confirm round.
const PUBLISH_WINDOW: usize = 500;

/// Settings of `keyseal demo`: only where things are; the story itself is
/// fixed so that every run tells the same one.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// RabbitMQ to use. The demo's worker consumes `keyseal.ingest` on this
    /// vhost, so the demo refuses a vhost where another keyseal is working.
    #[arg(long, env = "KEYSEAL_AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Status page, admin API and /metrics of the demo's worker; when the
    /// port is taken, a free one is used instead (the URL is printed).
    #[arg(long, env = "KEYSEAL_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// After the story, keep the worker and its status page up until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

/// Why the demo stopped before the end of its story.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// No broker answers at the URL (shown without its password).
    #[error(
        "RabbitMQ is not reachable at {url} ({reason}): start one with `rabbitmq-server -detached` \
         (or `docker compose up -d rabbitmq`), or point --amqp-url / KEYSEAL_AMQP_URL at one"
    )]
    BrokerUnreachable {
        /// The URL, password masked.
        url: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// Another keyseal uses the vhost: the demo's throwaway worker would
    /// take (and later discard) its messages.
    #[error(
        "`{INGEST_QUEUE}` at {url} has {messages} waiting messages and {consumers} consumers: another keyseal \
         uses this vhost, and the demo's throwaway worker would take its records. Give the demo a vhost of its \
         own: `rabbitmqctl add_vhost keyseal-demo && rabbitmqctl set_permissions -p keyseal-demo guest '.*' '.*' '.*'`, \
         then `keyseal demo --amqp-url amqp://guest:guest@127.0.0.1:5672/keyseal-demo`"
    )]
    BrokerInUse {
        /// The URL, password masked.
        url: String,
        /// Messages waiting in the ingest queue.
        messages: u32,
        /// Consumers of the ingest queue.
        consumers: u32,
    },
    /// The temporary directory for the store and the vault could not be made.
    #[error("creating the demo's temporary directory")]
    TempDir(#[source] std::io::Error),
    /// The demo built settings the worker or the emulator refuse.
    #[error("the demo's settings")]
    Settings(#[from] clap::Error),
    /// The Key Vault emulator did not start.
    #[error("starting the Key Vault emulator")]
    Emulator(#[from] EmulatorError),
    /// The worker did not start or stopped with an error.
    #[error("the worker")]
    Worker(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A key operation in the vault failed.
    #[error("managing the key in the vault")]
    Vault(#[from] KeyAdminError),
    /// A call of the worker's admin API failed.
    #[error("calling the admin API")]
    Admin(#[from] ClientError),
    /// Publishing records failed.
    #[error("publishing records")]
    Publish(#[from] PublishError),
    /// The broker did not confirm every record.
    #[error("{unconfirmed} of {total} records were not confirmed by RabbitMQ")]
    Unconfirmed {
        /// Records not confirmed.
        unconfirmed: usize,
        /// Records published.
        total: usize,
    },
    /// A step did not happen in time.
    #[error("timed out after {waited:?} waiting for {what}; last seen: {last}")]
    Timeout {
        /// The condition waited for.
        what: String,
        /// How long.
        waited: Duration,
        /// What the last check saw.
        last: String,
    },
    /// Ctrl-C before the end of the story.
    #[error("interrupted by Ctrl-C; the worker and the emulator were stopped and the temporary data removed")]
    Interrupted,
    /// keyseal answered differently from its contract.
    #[error("{step}: expected {expected}, got {got}")]
    Unexpected {
        /// The step.
        step: String,
        /// What the contract says.
        expected: String,
        /// What happened.
        got: String,
    },
}

/// Runs the demo: checks the broker, starts the emulator and a worker on
/// temporary directories, tells the story, prints the final status table,
/// then stops both (after Ctrl-C with `--keep-running`) and removes the
/// temporary data.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let narrator = Narrator::start();
    let shown_url = redact_password(&args.amqp_url);
    check_broker(&args.amqp_url, &shown_url).await?;
    narrator.say(format!(
        "keyseal demo: two tenants, one with its own key; sealing after {SEAL_AFTER}, key probes every \
         {PROBE_INTERVAL}, lockdown {LOCKDOWN_AFTER} after a key breaks"
    ));
    narrator.say(format!("RabbitMQ at {shown_url} is reachable"));

    let scratch = tempfile::Builder::new().prefix("keyseal-demo-").tempdir().map_err(DemoError::TempDir)?;
    let emulator_args: EmulatorArgs = config::parse_flags(flags(&[
        "--addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--state-dir".as_ref(),
        scratch.path().join("vault").as_os_str(),
    ]))?;
    let token = emulator_args.token.clone();
    let vault = emulator::start(emulator_args).await?;
    let keys = KeyAdmin::new(&vault.vault_url(), vault.cert_pem_path(), &token)?;
    narrator.say(format!("Key Vault emulator (in-process, TLS) at {}", vault.vault_url()));

    let (settings, moved_from) = worker_settings(&args, &vault, &scratch.path().join("data"))?;
    let admin_token = settings.admin_token.clone();
    let worker = Worker::start(settings, Arc::new(SystemClock)).await.map_err(|e| DemoError::Worker(e.into()))?;
    let base = format!("http://{}", worker.http_addr);
    if let Some(taken) = moved_from {
        narrator.say(format!("{taken} is taken; the worker listens on {} instead", worker.http_addr));
    }
    narrator.say(format!("worker started, data in {}", scratch.path().join("data").display()));
    narrator.say(format!("status page  {base}/"));
    narrator.say(format!("metrics      {base}/metrics"));

    let run = run_suffix();
    let story = Story {
        narrator: &narrator,
        admin: AdminClient::new(&base, admin_token),
        keys: &keys,
        amqp_url: &args.amqp_url,
        byok: format!("acme-{run}"),
        managed: format!("globex-{run}"),
    };
    // Ctrl-C during the story still stops everything and removes the data.
    let told = tokio::select! {
        told = story.tell() => told,
        _ = tokio::signal::ctrl_c() => Err(DemoError::Interrupted),
    };
    let stopped = match (&told, args.keep_running) {
        (Ok(()), true) => {
            narrator.say(format!("the worker keeps running: status page {base}/ (Ctrl-C to stop)"));
            worker.run_until_signal().await.map_err(|e| DemoError::Worker(e.into()))
        }
        _ => {
            worker.stop().await;
            Ok(())
        }
    };
    vault.shutdown().await;
    drop(scratch);
    told?;
    stopped?;
    narrator.say("worker and emulator stopped, temporary data removed");
    Ok(())
}

/// Fails with the way to start RabbitMQ when none answers, and refuses a
/// vhost where another keyseal consumes or has records waiting.
async fn check_broker(url: &str, shown_url: &str) -> Result<(), DemoError> {
    let unreachable = |reason: String| DemoError::BrokerUnreachable { url: shown_url.to_owned(), reason };
    let connection = match tokio::time::timeout(BROKER_TIMEOUT, amqp::connect(url, "demo")).await {
        Err(_) => return Err(unreachable(format!("no answer within {BROKER_TIMEOUT:?}"))),
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Ok(Ok(connection)) => connection,
    };
    let load = ingest_queue_load(&connection).await;
    amqp::close(&connection, "demo broker check done").await;
    match load {
        Some((messages, consumers)) if messages > 0 || consumers > 0 => {
            Err(DemoError::BrokerInUse { url: shown_url.to_owned(), messages, consumers })
        }
        _ => Ok(()),
    }
}

/// (waiting messages, consumers) of the ingest queue, declaring the
/// topology first (idempotent, as every role does) so that the passive
/// declare finds the queue; `None` when the broker refuses either.
async fn ingest_queue_load(connection: &lapin::Connection) -> Option<(u32, u32)> {
    let channel = connection.create_channel().await.ok()?;
    amqp::declare_topology(&channel).await.ok()?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let queue = channel.queue_declare(INGEST_QUEUE.into(), passive, FieldTable::default()).await.ok()?;
    amqp::close_channel(&channel, "demo broker check done").await;
    Some((queue.message_count(), queue.consumer_count()))
}

/// The worker's settings: the demo's durations, the scratch data dir, the
/// emulator as vault, and `args.http_addr`, or a free port when it is taken
/// (returned second so the demo can say so).
fn worker_settings(
    args: &DemoArgs,
    vault: &emulator::Emulator,
    data_dir: &Path,
) -> Result<(Settings, Option<SocketAddr>), DemoError> {
    let (http_addr, moved_from) = match std::net::TcpListener::bind(args.http_addr) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            (SocketAddr::new(args.http_addr.ip(), 0), Some(args.http_addr))
        }
        // Free (the probe listener closes here), or a problem the worker reports.
        _ => (args.http_addr, None),
    };
    let http_addr = http_addr.to_string();
    let mut flags = flags(&[
        "--amqp-url".as_ref(),
        args.amqp_url.as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--http-addr".as_ref(),
        http_addr.as_ref(),
        "--seal-after".as_ref(),
        SEAL_AFTER.as_ref(),
        "--sweep-interval".as_ref(),
        SWEEP_INTERVAL.as_ref(),
        "--probe-interval".as_ref(),
        PROBE_INTERVAL.as_ref(),
        "--lockdown-after".as_ref(),
        LOCKDOWN_AFTER.as_ref(),
    ]);
    flags.extend(vault.worker_flags().into_iter().map(OsString::from));
    Ok((config::parse_flags(flags)?, moved_from))
}

fn flags(items: &[&std::ffi::OsStr]) -> Vec<OsString> {
    items.iter().map(|item| item.to_os_string()).collect()
}

/// Four hex digits unique to this run: tenant names carry them, so records
/// an earlier run left on a shared broker never mix into this run's counts.
fn run_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:04x}", (nanos ^ std::process::id().rotate_left(16)) & 0xffff)
}

/// What one look at a condition being waited for found.
enum Check<T> {
    /// The condition holds.
    Done(T),
    /// Not yet; what was seen, for the timeout message.
    NotYet(String),
}

/// The steps of the demo and what they share.
struct Story<'a> {
    narrator: &'a Narrator,
    admin: AdminClient,
    keys: &'a KeyAdmin,
    amqp_url: &'a str,
    /// The tenant that brings its own key.
    byok: String,
    /// The tenant that stays on managed keys.
    managed: String,
}

impl Story<'_> {
    async fn tell(&self) -> Result<(), DemoError> {
        let (byok, managed) = (&self.byok, &self.managed);
        let say = |line: String| self.narrator.say(line);

        // 1. Records come in and are stored encrypted under managed keys.
        let early = self.publish(byok, "rec-", RECORDS).await?;
        let others = self.publish(managed, "rec-", RECORDS).await?;
        say(format!(
            "1. published {RECORDS} records for {byok} and {RECORDS} for {managed}, each confirmed by RabbitMQ"
        ));
        for tenant in [byok, managed] {
            self.wait_records(tenant, RECORDS, "stored").await?;
        }
        say(format!("   stored encrypted in `hot` under managed data keys: {byok} {RECORDS}, {managed} {RECORDS}"));

        // 2. One tenant brings its own key.
        let key = format!("{byok}-key");
        let first = self.keys.create_rsa(&key).await?;
        let key_uri = self.keys.key_uri(&key);
        say(format!("2. the customer created RSA-2048 key {key_uri} (version {})", short(&first)));
        let enabled = self.admin.enable(byok, &key_uri).await?;
        say(format!(
            "   BYOK enabled for {byok} after validation (enabled, RSA, wrap/unwrap, purge protection): mode {}, \
             key version {}",
            text(&enabled["status"]["encryption"]["mode"]),
            short(text(&enabled["status"]["encryption"]["keyVersion"])),
        ));

        // 3. Sealing after the seal age.
        for tenant in [byok, managed] {
            self.wait_status(tenant, "its records to be sealed", |s| counts(s) == (0, RECORDS as u64)).await?;
        }
        say(format!(
            "3. sealed after {SEAL_AFTER}: {byok} {RECORDS} records under its own key, {managed} {RECORDS} under \
             the managed key"
        ));
        self.read_back(&early[7]).await?;

        // 4. A key roll: the vault gets a new version, keyseal follows.
        let second = self.keys.rotate(&key).await?;
        say(format!("4. the customer rotated the key: new version {}", short(&second)));
        let rolled = self
            .wait_status(byok, "the data keys to roll to the new version", |s| {
                s["encryption"]["keyVersion"] == second.as_str()
                    && s["encryption"]["rewrapPending"] == false
                    && s["dataKeys"]["onOlderRoot"] == 0
            })
            .await?;
        say(format!(
            "   KeyRolled: {byok} now on {}; {} data keys, {} on an older version (data keys rewrapped, no record \
             rewritten)",
            short(&second),
            rolled["dataKeys"]["total"],
            rolled["dataKeys"]["onOlderRoot"],
        ));

        // 5. The key breaks: degraded, then locked down.
        self.disable_every_version(&key, &second).await?;
        say(format!("5. the key broke: every version of {key} disabled in the vault"));
        let degraded = self.wait_status(byok, "the tenant to be degraded", |s| s["state"] == "degraded").await?;
        say(format!(
            "   degraded: {}; locked down at {} unless the key comes back; sealing waits",
            text(&degraded["keyHealth"]["reason"]),
            text(&degraded["keyHealth"]["lockdownAt"]),
        ));
        let late = self.publish(byok, "late-", LATE_RECORDS).await?;
        self.wait_records(byok, RECORDS + LATE_RECORDS, "stored while the key is broken").await?;
        say(format!("   {LATE_RECORDS} more records for {byok} stored meanwhile: ingestion goes on"));
        let locked = self.wait_status(byok, "the lockdown", |s| s["state"] == "locked_down").await?;
        say(format!(
            "   locked down (TenantLockedDown) {LOCKDOWN_AFTER} after the first failed probe: {}",
            text(&locked["keyHealth"]["reason"]),
        ));
        self.expect_refused(&early[7]).await?;
        self.read_back(&others[7]).await?;
        say(format!("   {managed} is unaffected by the lockdown of {byok}"));
        let held = self.wait_held_back(byok, LATE_RECORDS).await?;
        say(format!("   a sweep holds back {held} due records of {byok} in `hot`: nothing is lost"));

        // 6. The key is mended: restored, backlog sealed.
        self.keys.set_enabled(&key, Some(&second), true).await?;
        say(format!("6. the customer re-enabled version {} of {key}", short(&second)));
        self.wait_status(byok, "the restore", |s| s["state"] == "active").await?;
        say(format!("   restored (TenantRestored): {byok} active, key healthy, reads served again"));
        self.read_back(&late[3]).await?;
        let total = (RECORDS + LATE_RECORDS) as u64;
        self.wait_status(byok, "the backlog to be sealed", |s| counts(s) == (0, total)).await?;
        say(format!("   backlog sealed: {byok} hot 0, sealed {total}"));

        // 7. The customer key is removed; the data stays encrypted.
        let disabled = self.admin.disable(byok).await?;
        say(format!(
            "7. BYOK disabled for {byok}: mode {}, {} sealed data key(s) rewrapped under the managed key",
            text(&disabled["status"]["encryption"]["mode"]),
            disabled["rewrap"]["rewrapped"],
        ));
        self.read_back(&late[3]).await?;

        // 8. The nightly maintenance, run now: every record decrypts and verifies.
        let scrub = self.admin.sweep("scrub").await?;
        say(format!(
            "8. scrub (normally nightly, --reencrypt-schedule): {} records decrypted and verified, {} corrupt",
            scrub["scrub"]["verified"], scrub["scrub"]["corruptCount"],
        ));

        let mut statuses = Vec::new();
        for tenant in [byok, managed] {
            statuses.push(self.admin.tenant_status(tenant).await?);
        }
        say("final status:".to_owned());
        print!("{}", status_table(&statuses));
        Ok(())
    }

    /// Publishes `count` synthetic records with confirms; returns them.
    async fn publish(&self, tenant: &str, prefix: &str, count: usize) -> Result<Vec<IngestRecord>, DemoError> {
        let records = publish::synthetic(tenant, prefix, count, PAYLOAD_BYTES, SystemClock.now_ms());
        let publisher = Publisher::connect(self.amqp_url).await?;
        let unconfirmed = publisher.publish_until_confirmed(&records, PUBLISH_WINDOW, 3).await?;
        if unconfirmed > 0 {
            return Err(DemoError::Unconfirmed { unconfirmed, total: records.len() });
        }
        Ok(records)
    }

    /// Polls `check` until it is done, or fails after [`STEP_TIMEOUT`].
    async fn wait_for<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut() -> Result<Check<T>, DemoError>,
    ) -> Result<T, DemoError> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let last = match check().await? {
                Check::Done(value) => return Ok(value),
                Check::NotYet(seen) => seen,
            };
            if Instant::now() >= deadline {
                return Err(DemoError::Timeout { what: what.to_owned(), waited: STEP_TIMEOUT, last });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits until the tenant's status satisfies `done`; returns that status.
    async fn wait_status(&self, tenant: &str, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value, DemoError> {
        self.wait_for(&format!("{what} ({tenant})"), async || match self.admin.tenant_status(tenant).await {
            Ok(status) if done(&status) => Ok(Check::Done(status)),
            Ok(status) => Ok(Check::NotYet(status.to_string())),
            Err(ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => {
                Ok(Check::NotYet("no record stored yet".to_owned()))
            }
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// Waits until the tenant holds `total` records, hot and sealed together.
    async fn wait_records(&self, tenant: &str, total: usize, what: &str) -> Result<(), DemoError> {
        self.wait_status(tenant, &format!("{total} records {what}"), |s| {
            let (hot, sealed) = counts(s);
            hot + sealed == total as u64
        })
        .await
        .map(drop)
    }

    /// Runs sweeps until one holds back `due` records of `tenant` (they are
    /// due once they are older than the seal age); returns how many it held.
    async fn wait_held_back(&self, tenant: &str, due: usize) -> Result<u64, DemoError> {
        let what = format!("a sweep to hold back {due} records of {tenant}");
        self.wait_for(&what, async || {
            let summary = self.admin.sweep("seal").await?;
            let held = &summary["seal"]["heldBack"][tenant];
            Ok(match held.as_u64() {
                Some(n) if n == due as u64 => Check::Done(n),
                _ => Check::NotYet(summary.to_string()),
            })
        })
        .await
    }

    /// Breaks the key the way an owner would: disables every version,
    /// the current one last, so keyseal never sees an older version as the
    /// newest usable one in between (it would roll back to it).
    async fn disable_every_version(&self, key: &str, current: &str) -> Result<(), DemoError> {
        let versions = self.keys.versions(key).await?;
        for version in versions.iter().filter(|v| v.enabled && v.version != current) {
            self.keys.set_enabled(key, Some(&version.version), false).await?;
        }
        self.keys.set_enabled(key, Some(current), false).await?;
        Ok(())
    }

    /// Reads a record through the admin API and checks it is the one published.
    async fn read_back(&self, record: &IngestRecord) -> Result<(), DemoError> {
        let (tenant, id) = (&record.tenant_id, &record.record_id);
        let payload = self.admin.record(tenant, id).await?;
        if payload != record.payload {
            return Err(DemoError::Unexpected {
                step: format!("reading {tenant}/{id}"),
                expected: "the published payload".to_owned(),
                got: format!("{} different bytes", payload.len()),
            });
        }
        self.narrator
            .say(format!("   read {tenant}/{id}: 200, {} bytes, identical to what was published", payload.len()));
        Ok(())
    }

    /// Reads a record of a locked-down tenant and checks it is refused with 423.
    async fn expect_refused(&self, record: &IngestRecord) -> Result<(), DemoError> {
        let (tenant, id) = (&record.tenant_id, &record.record_id);
        let unexpected = |got: String| DemoError::Unexpected {
            step: format!("reading {tenant}/{id} while locked down"),
            expected: "423 tenant_locked_down".to_owned(),
            got,
        };
        match self.admin.record(tenant, id).await {
            Err(ClientError::Api { status, code, message }) if status == StatusCode::LOCKED => {
                self.narrator.say(format!("   read {tenant}/{id}: {} {code}: {message}", status.as_u16()));
                Ok(())
            }
            Err(ClientError::Api { status, code, .. }) => Err(unexpected(format!("{status} {code}"))),
            Err(e) => Err(e.into()),
            Ok(payload) => Err(unexpected(format!("200 with {} bytes", payload.len()))),
        }
    }
}

/// (hot, sealed) of a tenant status.
fn counts(status: &Value) -> (u64, u64) {
    let count = |layer: &str| status["records"][layer].as_u64().unwrap_or(0);
    (count("hot"), count("sealed"))
}

/// A JSON string's text, or `-` for anything else (null).
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

/// The first 8 characters of a key version: enough to tell versions apart.
fn short(version: &str) -> &str {
    version.get(..8).unwrap_or(version)
}

/// The final table: one row per tenant status (`GET /v1/tenants/{tenant}`).
fn status_table(statuses: &[Value]) -> String {
    let rows: Vec<[String; 7]> = statuses
        .iter()
        .map(|s| {
            let (hot, sealed) = counts(s);
            let health = match s["keyHealth"]["reason"].as_str() {
                Some(reason) => format!("{} ({reason})", text(&s["keyHealth"]["status"])),
                None => text(&s["keyHealth"]["status"]).to_owned(),
            };
            [
                text(&s["tenant"]).to_owned(),
                text(&s["state"]).to_owned(),
                text(&s["encryption"]["mode"]).to_owned(),
                short(text(&s["encryption"]["keyVersion"])).to_owned(),
                hot.to_string(),
                sealed.to_string(),
                health,
            ]
        })
        .collect();
    let header = ["tenant", "state", "mode", "key version", "hot", "sealed", "key health"].map(str::to_owned);
    let widths: Vec<usize> = (0..header.len())
        .map(|column| std::iter::once(&header).chain(&rows).map(|row| row[column].chars().count()).max().unwrap_or(0))
        .collect();
    let mut table = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::from("  ");
        for (column, cell) in row.iter().enumerate() {
            // Counts align right, text left; the last column is not padded.
            let cell = match column {
                4 | 5 => format!("{cell:>width$}", width = widths[column]),
                6 => cell.clone(),
                _ => format!("{cell:<width$}", width = widths[column]),
            };
            line.push_str(&cell);
            line.push_str("  ");
        }
        table.push_str(line.trim_end());
        table.push('\n');
    }
    table
}

/// `url` with its password replaced by `***`, for printing.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The last `@` ends the user info, even if the password holds an `@`.
    let Some((user_info, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match user_info.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Prints narration lines with the time since the demo started.
struct Narrator {
    started: Instant,
}

impl Narrator {
    fn start() -> Self {
        Self { started: Instant::now() }
    }

    fn say(&self, line: impl Display) {
        println!("[{:>4.1}s] {line}", self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn passwords_are_masked_and_nothing_else_changes() {
        assert_eq!(redact_password("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_password("amqp://u:p@ss@h/v"), "amqp://u:***@h/v");
        assert_eq!(redact_password("amqp://127.0.0.1:5672/%2f"), "amqp://127.0.0.1:5672/%2f");
        assert_eq!(redact_password("amqp://user@h/v"), "amqp://user@h/v");
        assert_eq!(redact_password("not a url"), "not a url");
    }

    #[test]
    fn the_status_table_has_a_row_per_tenant_with_aligned_columns() {
        let acme = json!({
            "tenant": "acme-00ff", "state": "locked_down",
            "encryption": {"mode": "customer_key", "keyVersion": "0123456789abcdef"},
            "records": {"hot": 20, "sealed": 50},
            "keyHealth": {"status": "unavailable", "reason": "key_disabled"},
        });
        let globex = json!({
            "tenant": "globex-00ff", "state": "active",
            "encryption": {"mode": "managed", "keyVersion": null},
            "records": {"hot": 0, "sealed": 50},
            "keyHealth": {"status": "healthy", "reason": null},
        });
        let table = status_table(&[acme, globex]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].contains("tenant") && lines[0].contains("key health"), "{table}");
        assert!(lines[1].contains("locked_down") && lines[1].contains("01234567 "), "{table}");
        assert!(lines[1].ends_with("unavailable (key_disabled)"), "{table}");
        assert!(lines[2].contains("managed") && lines[2].ends_with("healthy"), "{table}");
        let column = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(column(lines[0], "state"), column(lines[1], "locked_down"));
        assert_eq!(column(lines[0], "state"), column(lines[2], "active"));
    }

    #[test]
    fn tenant_names_with_the_run_suffix_are_valid() {
        let suffix = run_suffix();
        assert_eq!(suffix.len(), 4, "{suffix}");
        assert!(crate::ingest::validate::is_valid_tenant_id(&format!("globex-{suffix}")), "{suffix}");
    }
}
