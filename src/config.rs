//! Worker settings. Each comes from a flag, else its `KEYSEAL_*`
//! environment variable, else the TOML file named by `--config`, else its
//! default ([`crate::config_file`] applies the file and parses flags).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub use crate::config_file::{ConfigError, parse_flags, with_config_file};

use crate::broker::{Broker, BrokerNodes};
use crate::crypto::keyring::{CacheLimits, RotationLimits};
use crate::health::prober::ProbeOptions;
use crate::ingest::consumer::IngestOptions;
use crate::keyvault::credential::{self, VaultCredentialKind};
use crate::keyvault::{Vault, VaultOptions};
use crate::placement::ShardList;
use crate::shard::{ShardOptions, WorkerVault};
use crate::sweeps::SweepOptions;

/// Settings of `keyseal run` (and the worker inside `keyseal demo`).
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// TOML file with settings named like the flags (`seal-after = "48h"`).
    #[arg(long, env = "KEYSEAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// RabbitMQ to consume from and publish events to: one AMQP URL, or the
    /// nodes of one cluster as a comma-separated list (same vhost and
    /// credentials). A worker connects to one node, starting at an offset
    /// of its own, and on a loss goes on to the next.
    #[arg(long, env = "KEYSEAL_AMQP_URL", default_value = crate::broker::DEFAULT_AMQP_URL, value_parser = NodesParser)]
    pub amqp_url: BrokerNodes,
    /// Data dir: the managed root keys and the shards' stores
    /// (`shards/<i>/`; a one-shard deployment keeps its store in `db/`).
    #[arg(long, env = "KEYSEAL_DATA_DIR", default_value = "./keyseal-data")]
    pub data_dir: PathBuf,
    /// Shards of the deployment: the same on every worker and fixed for the
    /// deployment's life (the broker refuses a worker with another count).
    #[arg(long, env = "KEYSEAL_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
    /// Owns exactly these shards (`0,3-5`) instead of balancing with the
    /// other workers, e.g. a StatefulSet pod with its own volume.
    #[arg(long, env = "KEYSEAL_OWN_SHARDS", value_parser = clap::value_parser!(ShardList))]
    pub own_shards: Option<ShardList>,
    /// AMQP heartbeat of the lease connection: a worker whose host is lost
    /// loses its shards after two missed heartbeats.
    #[arg(long, env = "KEYSEAL_AMQP_HEARTBEAT", default_value = "10s", value_parser = parse_heartbeat)]
    pub amqp_heartbeat: Duration,
    /// Replicas of each quorum queue keyseal declares (shard queues, the
    /// intake, dead letters): 3 or 5 on a cluster of at least that many
    /// nodes; unset leaves it to the broker (`quorum_cluster_size`, 3).
    /// Applies when a queue is first declared.
    #[arg(long, env = "KEYSEAL_QUORUM_SIZE", value_parser = clap::value_parser!(u32).range(1..=7))]
    pub quorum_size: Option<u32>,
    /// How often a worker compares its shards with its share, ceil(shards /
    /// live workers), and takes free ones or hands some over.
    #[arg(long, env = "KEYSEAL_REBALANCE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rebalance_interval: Duration,
    /// How long an admin request for a shard another worker owns waits for
    /// that owner's answer.
    #[arg(long, env = "KEYSEAL_FORWARD_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub forward_timeout: Duration,
    /// Most new tenants one worker places per minute (binds to their shard
    /// on first sight); the messages of tenants past it are dead-lettered
    /// `tenant_rate_limited`, so a flood of new routing keys cannot grow
    /// the bindings and projections without bound.
    #[arg(long, env = "KEYSEAL_NEW_TENANTS_PER_MINUTE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub new_tenants_per_minute: u32,
    /// Admin API and /metrics address. Non-loopback needs KEYSEAL_ADMIN_TOKEN.
    #[arg(long, env = "KEYSEAL_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Residence time after which records are sealed.
    #[arg(long, env = "KEYSEAL_SEAL_AFTER", default_value = "48h", value_parser = humantime::parse_duration)]
    pub seal_after: Duration,
    /// How long before a tenant's key version expires (its `exp`) the prober
    /// appends `KeyExpiring` (once per version) and the status shows a warning.
    #[arg(long, env = "KEYSEAL_KEY_EXPIRY_WARNING", default_value = "30d", value_parser = humantime::parse_duration)]
    pub key_expiry_warning: Duration,
    /// How long records are kept (by ingestion time) for tenants that set
    /// no retention of their own; unset keeps them.
    #[arg(long, env = "KEYSEAL_DEFAULT_RETENTION", value_parser = humantime::parse_duration)]
    pub default_retention: Option<Duration>,
    /// How long a deleted record's id is refused on ingest (dead-lettered
    /// `record_deleted`), so a redelivery or a re-send does not bring it back.
    #[arg(long, env = "KEYSEAL_TOMBSTONE_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub tombstone_ttl: Duration,
    /// How often the seal sweep runs.
    #[arg(long, env = "KEYSEAL_SWEEP_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,
    /// How often each customer key is probed.
    #[arg(long, env = "KEYSEAL_PROBE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub probe_interval: Duration,
    /// Grace after the first failed probe began before the tenant is locked
    /// down (with the probe and canary intervals this keeps lockdown under
    /// one hour; see `health::prober::worst_case_lockdown`).
    #[arg(long, env = "KEYSEAL_LOCKDOWN_AFTER", default_value = "50m", value_parser = humantime::parse_duration)]
    pub lockdown_after: Duration,
    /// Longest time between two canaries of a key (a wrap and an unwrap
    /// through the vault, the only check that notices wrap/unwrap
    /// permissions withdrawn while the key stays readable). At most the
    /// probe interval: every probe is a canary.
    #[arg(long, env = "KEYSEAL_CANARY_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub canary_interval: Duration,
    /// How long a probe may go unanswered before it counts as a failed probe
    /// (`vault_unreachable`). Long enough for the client's retries of
    /// throttled calls, which are not a failure.
    #[arg(long, env = "KEYSEAL_PROBE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub probe_timeout: Duration,
    /// Unacked deliveries the broker may send ahead (AMQP prefetch).
    #[arg(long, env = "KEYSEAL_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,
    /// Payload bytes the broker may send ahead, about: the prefetch count
    /// is lowered while messages are large (`64MiB`, `1GiB`, or bytes).
    #[arg(long, env = "KEYSEAL_PREFETCH_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub prefetch_bytes: u64,
    /// Most deliveries stored in one atomic write batch. A quarter of the
    /// prefetch keeps the broker sending while two batches are in flight.
    #[arg(long, env = "KEYSEAL_BATCH_SIZE", default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// How long a batch waits to fill once its first delivery arrived.
    #[arg(long, env = "KEYSEAL_BATCH_LINGER", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,
    /// Oldest a data key may be and still encrypt new records; the
    /// re-encryption sweep moves records off older keys.
    #[arg(long, env = "KEYSEAL_MAX_DEK_AGE", default_value = "90days", value_parser = humantime::parse_duration)]
    pub max_dek_age: Duration,
    /// Most records one data key encrypts before a new one is started
    /// (1 to 2^32: the bound for AES-GCM with random nonces).
    #[arg(long, env = "KEYSEAL_MAX_RECORDS_PER_DEK", default_value_t = 1_000_000, value_parser = parse_max_records_per_dek)]
    pub max_records_per_dek: u64,
    /// When the re-encryption sweep and then the scrub run: a cron
    /// expression in UTC (5 fields, or 6 with seconds first).
    #[arg(long, env = "KEYSEAL_REENCRYPT_SCHEDULE", default_value = "0 3 * * *", value_parser = parse_schedule)]
    pub reencrypt_schedule: croner::Cron,
    /// Most records per second the re-encryption sweep and the scrub handle.
    #[arg(long, env = "KEYSEAL_SWEEP_RATE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub sweep_rate: u32,
    /// Longest an unwrapped data key stays in memory.
    #[arg(long, env = "KEYSEAL_DEK_CACHE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub dek_cache_ttl: Duration,
    /// A self-hosted vault `host:port` key URIs may name besides Azure's
    /// vault hosts (repeatable), e.g. the emulator.
    #[arg(long = "trusted-vault-host", env = "KEYSEAL_TRUSTED_VAULT_HOST", value_delimiter = ',')]
    pub trusted_vault_hosts: Vec<String>,
    /// Extra CA certificate (PEM) trusted for vault TLS, e.g. `<emulator state dir>/cert.pem`.
    #[arg(long, env = "KEYSEAL_VAULT_CA_CERT")]
    pub vault_ca_cert: Option<PathBuf>,
    /// How keyseal authenticates to Key Vault.
    #[arg(long, env = "KEYSEAL_VAULT_CREDENTIAL", value_enum, default_value_t = VaultCredentialKind::WorkloadIdentity)]
    pub vault_credential: VaultCredentialKind,
    /// Timeout of one vault request (retries come on top).
    #[arg(long, env = "KEYSEAL_VAULT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub vault_timeout: Duration,
    /// Longest one vault call keeps retrying throttled (429) and transient
    /// (408, 5xx) answers, backing off 2, 4, 8, 16 s and honouring
    /// Retry-After; `0s` never retries.
    #[arg(long, env = "KEYSEAL_VAULT_RETRY_BUDGET", default_value = "45s", value_parser = humantime::parse_duration)]
    pub vault_retry_budget: Duration,
    /// Root-key calls (unwrap, wrap) a rewrap keeps in flight; 1 rewraps
    /// one key at a time. With `--vault-rate` pacing them, enough to cover
    /// the vault's latency (16 at 35 ms a call is 450 calls a second).
    #[arg(long, env = "KEYSEAL_VAULT_CONCURRENCY", default_value_t = crate::crypto::keyring::VAULT_CONCURRENCY)]
    pub vault_concurrency: usize,
    /// Most calls a second keyseal makes to one vault: 380 is 95% of Key
    /// Vault's limit for RSA-2048 software keys (4,000 per 10 s per vault),
    /// so a rewrap runs at the limit without collecting 429s. Lower it for
    /// HSM keys (RSA-HSM 2048: 2,000 per 10 s) or a vault shared with
    /// other applications.
    #[arg(long, env = "KEYSEAL_VAULT_RATE", default_value_t = 380, value_parser = clap::value_parser!(u32).range(1..))]
    pub vault_rate: u32,
    /// Log output format.
    #[arg(long, env = "KEYSEAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Bearer token for /v1/* (only from the environment, never a flag).
    #[arg(skip = secret_from_env("KEYSEAL_ADMIN_TOKEN"))]
    pub admin_token: Option<Secret>,
    /// Bearer token `--vault-credential static-token` sends to the emulator
    /// (only from the environment, never a flag; the emulator's development
    /// token when unset). A field rather than an environment read at use,
    /// so workers sharing a process can each have their own.
    #[arg(skip = secret_from_env("KEYSEAL_VAULT_TOKEN"))]
    pub vault_token: Option<Secret>,
}

/// A secret setting (a token): its `Debug` never shows it, so printing the
/// settings, or an error that holds them, does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that sends or compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Self(secret.to_owned())
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

fn secret_from_env(name: &str) -> Option<Secret> {
    std::env::var(name).ok().filter(|t| !t.is_empty()).map(Secret)
}

/// Parses `--amqp-url` without echoing it: clap's own message quotes the
/// raw value, and an AMQP URL carries a password.
#[derive(Debug, Clone, Copy)]
struct NodesParser;

impl clap::builder::TypedValueParser for NodesParser {
    type Value = BrokerNodes;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<BrokerNodes, clap::Error> {
        let refused = |why: String| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{why}\n"));
        let list = value.to_str().ok_or_else(|| refused("--amqp-url: the list is not UTF-8".into()))?;
        BrokerNodes::parse(list).map_err(|e| refused(e.to_string()))
    }
}

impl Settings {
    /// Where shards live and how their keyrings keep keys.
    pub fn shard_options(&self) -> ShardOptions {
        ShardOptions {
            data_dir: self.data_dir.clone(),
            shards: self.shards,
            cache_limits: self.cache_limits(),
            rotation_limits: self.rotation_limits(),
            vault_concurrency: self.vault_concurrency,
        }
    }

    /// The worker's one Key Vault client, or why there is none (logged:
    /// tenants cannot enable their own key until it is fixed).
    pub fn vault(&self) -> WorkerVault {
        let vault = credential::credential(self.vault_credential, self.vault_token.as_ref().map(Secret::expose))
            .map_err(|e| e.to_string())
            .and_then(|c| Vault::new(c, self.vault_options()).map_err(|e| e.to_string()))
            .map(Arc::new);
        if let Err(reason) = &vault {
            tracing::warn!(%reason, "no Key Vault client: tenants cannot enable their own key until this is fixed");
        }
        vault
    }

    /// How a shard's consumer consumes, on `broker`.
    pub fn ingest_options(&self, broker: &Broker) -> IngestOptions {
        IngestOptions {
            broker: broker.clone(),
            shards: self.shards,
            prefetch: self.prefetch,
            prefetch_bytes: self.prefetch_bytes,
            batch_size: self.batch_size,
            batch_linger: self.batch_linger,
        }
    }

    /// What the prober works by.
    pub fn probe_options(&self) -> ProbeOptions {
        ProbeOptions {
            probe_interval: self.probe_interval,
            canary_interval: self.canary_interval,
            probe_timeout: self.probe_timeout,
            lockdown_after: self.lockdown_after,
            key_expiry_warning: self.key_expiry_warning,
        }
    }

    /// When sweeps run and how fast.
    pub fn sweep_options(&self) -> SweepOptions {
        SweepOptions {
            seal_after: self.seal_after,
            sweep_interval: self.sweep_interval,
            sweep_rate: self.sweep_rate,
            default_retention: self.default_retention,
            reencrypt_schedule: self.reencrypt_schedule.clone(),
        }
    }
    /// Data-key cache limits derived from the settings.
    pub fn cache_limits(&self) -> CacheLimits {
        CacheLimits { max_age: self.dek_cache_ttl, ..CacheLimits::default() }
    }
}

impl Settings {
    /// Data-key rotation limits derived from the settings.
    pub fn rotation_limits(&self) -> RotationLimits {
        RotationLimits { max_age: self.max_dek_age, max_records: self.max_records_per_dek }
    }

    /// Options of the Key Vault client.
    pub fn vault_options(&self) -> VaultOptions {
        VaultOptions {
            trusted_hosts: self.trusted_vault_hosts.clone(),
            ca_cert: self.vault_ca_cert.clone(),
            timeout: self.vault_timeout,
            retry_budget: self.vault_retry_budget,
            calls_per_second: self.vault_rate,
        }
    }
}

/// Parses `--amqp-heartbeat`: whole seconds from 1 s to 10 min (AMQP
/// negotiates heartbeats in seconds; under 5 s risks false alarms).
fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    let heartbeat = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if heartbeat.subsec_nanos() != 0 || !(1..=600).contains(&heartbeat.as_secs()) {
        return Err("must be whole seconds from 1s to 10m".to_owned());
    }
    Ok(heartbeat)
}

/// Parses a byte size such as `64MiB`, `512 KiB` or `1048576`, at least 1 MiB
/// so one record always fits.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = text.parse().map_err(|e| format!("not a byte size: {e}"))?;
    if size.as_u64() < 1 << 20 {
        return Err("must be at least 1MiB, the size of one record".to_owned());
    }
    Ok(size.as_u64())
}

/// Most records one data key may encrypt: AES-GCM with random 96-bit
/// nonces stays within its collision bound (NIST SP 800-38D, 8.3) only up
/// to 2^32 encryptions under one key.
pub const MAX_RECORDS_PER_DEK: u64 = 1 << 32;

/// Parses `--max-records-per-dek`: 1 to [`MAX_RECORDS_PER_DEK`].
fn parse_max_records_per_dek(text: &str) -> Result<u64, String> {
    let value: u64 = text.parse().map_err(|_| format!("not a whole number: {text}"))?;
    if (1..=MAX_RECORDS_PER_DEK).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "must be between 1 and 2^32 ({MAX_RECORDS_PER_DEK}): AES-GCM with random nonces must not encrypt more records under one data key"
        ))
    }
}

/// Parses a cron expression (5 fields, or 6 with seconds first).
fn parse_schedule(text: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|e| format!("not a cron expression: {e}"))
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn settings_never_print_their_tokens() {
        let mut settings = parse_flags::<Settings, _, _>(Vec::<String>::new()).unwrap();
        settings.admin_token = Some("admin-s3cret".into());
        settings.vault_token = Some("vault-s3cret".into());
        let shown = format!("{settings:?} {settings:#?}");
        assert!(!shown.contains("admin-s3cret") && !shown.contains("vault-s3cret"), "{shown}");
        assert!(shown.contains("Secret(redacted)"), "the fields are there, only their values are hidden");
    }

    #[test]
    fn a_malformed_node_list_is_one_line_without_its_password() {
        let refused = parse_flags::<Settings, _, _>(["--amqp-url", "amqp://u:s3cret@h1/v,,amqp://u:s3cret@h2/v"]);
        let error = refused.expect_err("an empty entry is refused").to_string();
        assert!(error.contains("entry 2 of the list is empty"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        assert_eq!(error.trim_end().lines().count(), 1, "{error}");
        let nodes = parse_flags::<Settings, _, _>(["--amqp-url", "amqp://u:p@h1/v,amqp://u:p@h2/v"]).unwrap().amqp_url;
        assert_eq!(nodes.len(), 2);
    }

    #[test]
    fn max_records_per_dek_stays_within_the_random_nonce_bound() {
        let parse = |value: &str| parse_flags::<Settings, _, _>([format!("--max-records-per-dek={value}")]);
        assert_eq!(parse("4294967296").unwrap().max_records_per_dek, 1 << 32);
        assert_eq!(parse("1").unwrap().max_records_per_dek, 1);
        for refused in ["4294967297", "18446744073709551615", "0", "-1", "lots"] {
            let error = parse(refused).err().unwrap_or_else(|| panic!("{refused} accepted")).to_string();
            assert!(error.contains("--max-records-per-dek"), "{error}");
        }
        let error = parse("4294967297").err().unwrap().to_string();
        assert!(error.contains("2^32") && error.contains("AES-GCM"), "{error}");
    }

    #[test]
    fn flags_alone_parse_with_defaults_and_overrides() {
        let settings: Settings = parse_flags(["--seal-after", "3s", "--http-addr", "127.0.0.1:0"]).unwrap();
        assert_eq!(settings.seal_after, Duration::from_secs(3));
        assert_eq!(settings.http_addr.port(), 0);
        assert_eq!(settings.prefetch, 1000, "defaults apply");
        assert!(parse_flags::<Settings, _, _>(["--seal-after", "soon"]).is_err());
    }

    #[test]
    fn prefetch_bytes_take_units_and_fit_one_record() {
        let parse = |v: &str| parse_flags::<Settings, _, _>(["--prefetch-bytes", v]).map(|s| s.prefetch_bytes);
        assert_eq!(parse_flags::<Settings, _, _>(Vec::<String>::new()).unwrap().prefetch_bytes, 64 << 20);
        assert_eq!(parse("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse("1048576").unwrap(), 1 << 20);
        assert!(parse("512KiB").is_err(), "smaller than one record");
        assert!(parse("lots").is_err());
    }

    #[test]
    fn shard_settings_parse_and_refuse_clearly() {
        let settings: Settings =
            parse_flags(["--shards", "8", "--own-shards", "0,3-5", "--amqp-heartbeat", "5s"]).unwrap();
        assert_eq!((settings.shards, settings.amqp_heartbeat), (8, Duration::from_secs(5)));
        assert_eq!(settings.own_shards, Some(ShardList(BTreeSet::from([0, 3, 4, 5]))));
        let defaults: Settings = parse_flags(Vec::<String>::new()).unwrap();
        assert_eq!(
            (defaults.shards, defaults.own_shards, defaults.rebalance_interval),
            (1, None, Duration::from_secs(10))
        );
        for refused in [
            ["--shards", "0"],
            ["--own-shards", "2-1"],
            ["--amqp-heartbeat", "1500ms"],
            ["--quorum-size", "0"],
            ["--quorum-size", "8"],
        ] {
            assert!(parse_flags::<Settings, _, _>(refused).is_err(), "{refused:?} accepted");
        }
    }
}
