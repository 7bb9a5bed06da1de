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
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyseal::broker::publish::{self, PublishError, Publisher};
use keyseal::broker::{INGEST_QUEUE, hide_password};
use keyseal::clock::{Clock, SystemClock};
use keyseal::config::{self, Settings};
use keyseal::proto::v1::IngestRecord;
use keyseal::worker::Worker;
use keyvault_emulator::admin::{KeyAdmin, KeyAdminError};
use keyvault_emulator::{self as emulator, EmulatorArgs, EmulatorError};
use reqwest::StatusCode;

mod broker;
mod story;

use self::broker::DemoBroker;
use self::story::{Narrator, Story};
use keyseal::client::{AdminClient, ClientError};

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
/// Records in flight per confirm round.
const PUBLISH_WINDOW: usize = 500;

/// Settings of `keyseal demo`: only where things are; the story itself is
/// fixed so that every run tells the same one.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// RabbitMQ to use. The demo's worker consumes `keyseal.ingest` on this
    /// vhost, so the demo refuses a vhost where another keyseal is working.
    /// Unset: the local one (amqp://guest:guest@127.0.0.1:5672/%2f), or a
    /// private node the demo starts and stops when none answers there.
    #[arg(long, env = "KEYSEAL_AMQP_URL")]
    pub amqp_url: Option<String>,
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
         (or `docker compose up -d rabbitmq-1 rabbitmq-2 rabbitmq-3`), or point --amqp-url / KEYSEAL_AMQP_URL at one"
    )]
    BrokerUnreachable {
        /// The URL, password masked.
        url: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// No broker at the default URL, and none can be started here.
    #[error(
        "no RabbitMQ answers at {url} and rabbitmq-server is not installed: install it \
         (`sudo apt-get install rabbitmq-server`), or point --amqp-url / KEYSEAL_AMQP_URL at a broker"
    )]
    NoBroker {
        /// The default URL, password masked.
        url: String,
    },
    /// The private RabbitMQ node did not start (or stop).
    #[error("the demo's private RabbitMQ node: {0}")]
    PrivateNode(#[from] private_broker::Error),
    /// A task of the demo (starting or stopping the private node) panicked.
    #[error("a task of the demo failed")]
    Task(#[from] tokio::task::JoinError),
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
    let broker = DemoBroker::find(args.amqp_url.as_deref(), &narrator).await?;
    narrator.say(format!(
        "keyseal demo: two tenants, one with its own key; sealing after {SEAL_AFTER}, key probes every \
         {PROBE_INTERVAL}, lockdown {LOCKDOWN_AFTER} after a key breaks"
    ));
    narrator.say(format!("RabbitMQ at {} is reachable", hide_password(broker.url())));

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

    let (settings, moved_from) = worker_settings(&args, broker.url(), &vault, &scratch.path().join("data"))?;
    let admin_token = settings.admin_token.as_ref().map(|t| t.expose().to_owned());
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
        amqp_url: broker.url(),
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
    let closed = broker.close(&narrator).await;
    told?;
    stopped?;
    closed?;
    narrator.say("worker and emulator stopped, temporary data removed");
    Ok(())
}

/// The worker's settings: the demo's durations, the scratch data dir, the
/// emulator as vault, and `args.http_addr`, or a free port when it is taken
/// (returned second so the demo can say so).
fn worker_settings(
    args: &DemoArgs,
    amqp_url: &str,
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
        amqp_url.as_ref(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_with_the_run_suffix_are_valid() {
        let suffix = run_suffix();
        assert_eq!(suffix.len(), 4, "{suffix}");
        assert!(keyseal::ingest::validate::is_valid_tenant_id(&format!("globex-{suffix}")), "{suffix}");
    }
}
