//! The `keyseal` command line: the worker, a producer, and thin clients of
//! the admin API. Subcommand names are part of keyseal's contract.

mod demo;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use keyseal::broker::publish::{self, Publisher};
use keyseal::clock::{Clock, SystemClock};
use keyseal::config::{self, LogFormat, Settings};
use keyseal::worker::Worker;
use keyvault_emulator::{self as emulator, EmulatorArgs};

use crate::demo::DemoArgs;
use keyseal::client::AdminClient;

#[derive(Debug, Parser)]
#[command(
    name = "keyseal",
    version,
    about = "Customer-managed-key encryption at rest for tenant records",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker: consume, store encrypted, seal, relay events, serve the API.
    Run(Box<Settings>),
    /// Publish IngestRecords to keyseal.ingest with publisher confirms.
    Publish(PublishArgs),
    /// Tenant administration.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Print one record's payload bytes to stdout.
    Get {
        /// Tenant id.
        tenant: String,
        /// Record id.
        record_id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A tenant's records: list their metadata, delete one.
    Records {
        #[command(subcommand)]
        command: RecordsCommand,
    },
    /// Run a sweep now (seal by default) and print its summary.
    Sweep {
        /// Re-encrypt sealed records whose data key is older than --max-dek-age.
        #[arg(long, conflicts_with_all = ["scrub", "retention"])]
        reencrypt: bool,
        /// Delete records older than their tenant's retention and retire the data keys they leave unused.
        #[arg(long, conflicts_with = "scrub")]
        retention: bool,
        /// Decrypt and verify every record; exits 1 if any is corrupt.
        #[arg(long)]
        scrub: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show each shard's owner, since when, its tenant count, and the live workers.
    Shards {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Administration of the worker's event-sourced state.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Serve a local Key Vault–compatible HTTPS API (keys only) for tests and demos.
    KeyvaultEmulator(EmulatorArgs),
    /// Tell the whole story, narrated, in about 12 seconds on local defaults.
    ///
    /// Two tenants, BYOK, sealing, a key roll, a broken key (degraded, locked down), the key mended,
    /// BYOK disabled. With no broker at the default URL it starts a private RabbitMQ node.
    Demo(DemoArgs),
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Show a tenant's state, encryption, record counts and key health.
    Status {
        /// Tenant id.
        tenant: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Validate a Key Vault key and make it the root of the tenant's sealed data.
    Enable {
        /// Tenant id.
        tenant: String,
        /// https://{vault}.vault.azure.net/keys/{name}[/{version}]
        #[arg(long)]
        key_uri: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove the customer-key layer; data stays encrypted under managed keys.
    Disable {
        /// Tenant id.
        tenant: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Erase the tenant for good: its data keys destroyed, then its records removed from every file.
    Erase {
        /// Tenant id.
        tenant: String,
        /// The tenant id again, to confirm.
        #[arg(long)]
        confirm: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print every use of a root key for the tenant's data keys as JSON lines, oldest first.
    Audit {
        /// Tenant id.
        tenant: String,
        #[command(flatten)]
        filters: PageArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show how long the tenant's records are kept, or set it.
    Retention {
        /// Tenant id.
        tenant: String,
        /// Keep records this long by ingestion time (humantime: 400d, 12h).
        #[arg(long, conflicts_with = "default")]
        max_age: Option<String>,
        /// Drop the tenant's own retention: the worker's --default-retention applies.
        #[arg(long)]
        default: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
enum RecordsCommand {
    /// Print a tenant's record metadata (never payloads) as JSON lines, in ingestion order, page after page.
    List {
        /// Tenant id.
        tenant: String,
        /// `--from`/`--to` are ingestion times.
        #[command(flatten)]
        filters: PageArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete one record; a re-send of its id is dead-lettered until the worker's --tombstone-ttl passes.
    Delete {
        /// Tenant id.
        tenant: String,
        /// Record id.
        record_id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Rebuild every projection from sequence 0 in scratch memory and report whether it equals the live state.
    Replay {
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Admin API of the worker.
    #[arg(long, env = "KEYSEAL_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
}

impl ServerArgs {
    fn client(&self) -> AdminClient {
        let token = std::env::var("KEYSEAL_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
        AdminClient::new(&self.server, token)
    }
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// RabbitMQ to publish to.
    #[arg(long, env = "KEYSEAL_AMQP_URL", default_value = keyseal::broker::DEFAULT_AMQP_URL)]
    amqp_url: String,
    /// Tenant of the synthetic records.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    tenant: Option<String>,
    /// How many synthetic records.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Payload bytes per synthetic record.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Record id prefix of the synthetic records (ids are prefix + index).
    #[arg(long, default_value = "rec-")]
    prefix: String,
    /// JSON Lines file of records ({"tenantId","recordId","payload"|"payloadBase64","attributes","observedAtUnixMs"}).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Messages in flight before waiting for confirms.
    #[arg(long, default_value_t = 1000)]
    window: usize,
}

/// What the long-running commands log unless `KEYSEAL_LOG` says otherwise.
const WORKER_LOG: &str = "info,lapin=warn,lapin::returned_messages=error";

fn main() -> std::process::ExitCode {
    let args = match config::with_config_file(std::env::args_os().collect(), "run") {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `KEYSEAL_LOG`, else by `default_filter`.
fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYSEAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(settings) => {
            init_logging(settings.log_format, WORKER_LOG);
            let worker = Worker::start(*settings, Arc::new(SystemClock)).await?;
            worker.run_until_signal().await
        }
        Command::Publish(args) => publish_command(args).await,
        Command::Tenant { command } => match command {
            TenantCommand::Status { tenant, server } => print_json(&server.client().tenant_status(&tenant).await?),
            TenantCommand::Enable { tenant, key_uri, server } => {
                print_json(&server.client().enable(&tenant, &key_uri).await?)
            }
            TenantCommand::Disable { tenant, server } => print_json(&server.client().disable(&tenant).await?),
            TenantCommand::Erase { tenant, confirm, server } => {
                print_json(&server.client().erase(&tenant, &confirm).await?)
            }
            TenantCommand::Audit { tenant, filters, server } => {
                print_pages(&server.client(), &tenant, Listing::Audit, filters).await
            }
            TenantCommand::Retention { tenant, max_age, default, server } => {
                let client = server.client();
                let answer = match (max_age, default) {
                    (Some(age), _) => client.set_retention(&tenant, Some(&age)).await?,
                    (None, true) => client.set_retention(&tenant, None).await?,
                    (None, false) => client.retention(&tenant).await?,
                };
                print_json(&answer)
            }
        },
        Command::Get { tenant, record_id, server } => {
            let payload = server.client().record(&tenant, &record_id).await?;
            std::io::stdout().write_all(&payload).context("writing the payload to stdout")
        }
        Command::Records { command } => match command {
            RecordsCommand::List { tenant, filters, server } => {
                print_pages(&server.client(), &tenant, Listing::Records, filters).await
            }
            RecordsCommand::Delete { tenant, record_id, server } => {
                server.client().delete_record(&tenant, &record_id).await?;
                eprintln!("deleted {tenant}/{record_id}");
                Ok(())
            }
        },
        Command::Shards { server } => print_json(&server.client().shards().await?),
        Command::Sweep { reencrypt, retention, scrub, server } => {
            let kind = match (reencrypt, retention, scrub) {
                (true, _, _) => "reencrypt",
                (_, true, _) => "retention",
                (_, _, true) => "scrub",
                _ => "seal",
            };
            sweep_command(&server.client(), kind).await
        }
        Command::Admin { command: AdminCommand::Replay { server } } => {
            let report = server.client().replay().await?;
            print_json(&report)?;
            anyhow::ensure!(report["equal"] == true, "replayed projections differ from the live state");
            Ok(())
        }
        Command::KeyvaultEmulator(args) => {
            init_logging(LogFormat::Text, WORKER_LOG);
            Ok(emulator::run(args).await?)
        }
        Command::Demo(args) => {
            // The narration is the output. The worker's warnings are part of
            // the story (a broken key holds back sealing), so only errors are
            // logged unless KEYSEAL_LOG asks for more.
            init_logging(LogFormat::Text, "error");
            Ok(demo::run(args).await?)
        }
    }
}

/// `--from/--to/--after/--limit` of the paged listings.
#[derive(Debug, Args)]
struct PageArgs {
    /// Earliest time included (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// First time excluded (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    /// Start after this cursor (a page's `next`).
    #[arg(long)]
    after: Option<String>,
    /// Print at most this many.
    #[arg(long)]
    limit: Option<usize>,
}

/// The paged listings of a tenant: the path under `/v1/tenants/{t}/` and
/// the field of a page that holds its entries.
#[derive(Debug, Clone, Copy)]
enum Listing {
    Records,
    Audit,
}

impl Listing {
    fn path_and_field(self) -> (&'static str, &'static str) {
        match self {
            Self::Records => ("records", "records"),
            Self::Audit => ("audit", "entries"),
        }
    }
}

/// Prints a tenant's listing as JSON lines, following `next` until it or
/// `--limit` ends.
async fn print_pages(client: &AdminClient, tenant: &str, listing: Listing, filters: PageArgs) -> anyhow::Result<()> {
    const PAGE: usize = keyseal::admin::paging::MAX_PAGE;
    let (path, field) = listing.path_and_field();
    let mut after = filters.after;
    let mut left = filters.limit.unwrap_or(usize::MAX);
    let mut out = std::io::stdout().lock();
    while left > 0 {
        let page_size = left.min(PAGE).to_string();
        let mut query = vec![("limit", page_size.as_str())];
        for (name, value) in [("from", &filters.from), ("to", &filters.to), ("after", &after)] {
            if let Some(value) = value {
                query.push((name, value.as_str()));
            }
        }
        let page = client.page(tenant, path, &query).await?;
        let entries = page[field].as_array().cloned().unwrap_or_default();
        for entry in &entries {
            writeln!(out, "{entry}").context("writing to stdout")?;
        }
        left = left.saturating_sub(entries.len());
        match page["next"].as_str() {
            Some(next) if !entries.is_empty() => after = Some(next.to_owned()),
            _ => break,
        }
    }
    Ok(())
}

/// Runs a sweep through the admin API; for the long ones, shows a progress
/// bar (on stderr, when it is a terminal) fed by `GET /v1/sweeps/progress`.
async fn sweep_command(client: &AdminClient, kind: &'static str) -> anyhow::Result<()> {
    if kind == "seal" {
        return print_json(&client.sweep(kind).await?);
    }
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(kind);
    let sweep = client.sweep(kind);
    tokio::pin!(sweep);
    let summary = loop {
        tokio::select! {
            result = &mut sweep => break result?,
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {
                if let Ok(Some(progress)) = client.sweep_progress().await {
                    bar.set_length(progress.total);
                    bar.set_position(progress.done);
                }
            }
        }
    };
    bar.finish_and_clear();
    print_json(&summary)?;
    // One shard answers with its report; several with one each under "shards".
    let reports: Vec<&serde_json::Value> = match summary["shards"].as_array() {
        Some(shards) => shards.iter().map(|shard| &shard[kind]).collect(),
        None => vec![&summary[kind]],
    };
    let total = |field: &str| reports.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum::<u64>();
    match kind {
        "scrub" => {
            let corrupt = total("corruptCount");
            eprintln!("scrub: {} records verified, {corrupt} corrupt", total("verified"));
            anyhow::ensure!(corrupt == 0, "{corrupt} records failed verification (left in place; see the list above)");
        }
        "retention" => eprintln!(
            "retention: {} records expired, {} data keys left without records retired",
            total("expired"),
            total("retiredDataKeys")
        ),
        _ => eprintln!(
            "reencrypt: {} records moved to fresh data keys ({} bytes), {} old data keys retired",
            total("reencrypted"),
            total("bytes"),
            total("retiredDataKeys")
        ),
    }
    Ok(())
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn publish_command(args: PublishArgs) -> anyhow::Result<()> {
    let now = SystemClock.now_ms();
    let records = match (&args.file, &args.tenant) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            publish::parse_records_file(&text, now)?
        }
        (None, Some(tenant)) => publish::synthetic(tenant, &args.prefix, args.count, args.size, now),
        (None, None) => unreachable!("clap requires --tenant or --file"),
    };
    let publisher = Publisher::connect(&args.amqp_url).await?;
    let started = std::time::Instant::now();
    // Records the broker nacks are published again (twice at most).
    let unconfirmed = publisher.publish_until_confirmed(&records, args.window, 3).await?;
    let ok = records.len() - unconfirmed;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {} records, {ok} confirmed, in {secs:.2}s ({:.0} records/s)",
        records.len(),
        ok as f64 / secs.max(1e-9)
    );
    anyhow::ensure!(ok == records.len(), "{} records were not confirmed by the broker", records.len() - ok);
    Ok(())
}
