//! The state a running emulator shares between its requests and its
//! background tasks: the vault, the call counts, the audit log, the
//! identities, the faults, the clock and the backup secret. It sits below
//! the handlers, the control routes and the server, which all reach it, so
//! none of them has to import another to get at the state.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::audit::AuditLog;
use super::auth::BearerAuth;
use super::backup::BackupSealer;
use super::calls::CallCounter;
use super::clock::Clock;
use super::error::EmulatorError;
use super::faults::Faults;
use super::model::DeletionPolicy;
use super::settings::{EmulatorArgs, Sku};
use super::store::{self, KeyStore};
use super::throttle::Throttle;
use super::vault::Vault;

/// Everything a request can touch, shared by the server's connections and
/// its housekeeping behind one `Arc`.
pub(crate) struct App {
    /// The keys and their rules.
    pub(crate) vault: Vault,
    /// Requests per operation, for [`Emulator::calls`](crate::Emulator::calls).
    pub(crate) calls: CallCounter,
    /// Key Vault's `AuditEvent` log of authenticated requests.
    pub(crate) audit: AuditLog,
    /// The owner's token and the identities with their access policies.
    pub(crate) auth: BearerAuth,
    /// The injected faults.
    pub(crate) faults: Faults,
    /// The vault's time, which the owner can move forward.
    pub(crate) clock: Clock,
    /// Seals and opens backup blobs.
    pub(crate) backups: BackupSealer,
    /// Whether the vault holds HSM keys.
    pub(crate) sku: Sku,
    /// `--throttle-rps`, when set.
    pub(crate) throttle: Option<Throttle>,
    /// `--latency`, added to every Key Vault request.
    pub(crate) latency: Duration,
    /// `host:port` for the rare request without a Host header.
    pub(crate) listen_authority: String,
}

impl App {
    /// `shutdown` is the server's: it also ends requests hanging on a fault.
    pub(crate) fn new(
        vault: Vault,
        backups: BackupSealer,
        args: &EmulatorArgs,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            vault,
            calls: CallCounter::default(),
            audit: AuditLog::default(),
            auth: BearerAuth::new(args.token.clone()),
            faults: Faults::new(shutdown),
            clock: Clock::default(),
            backups,
            sku: args.sku,
            throttle: args.throttle_rps.map(|rps| Throttle::new(rps, Instant::now())),
            latency: args.latency,
            listen_authority: addr.to_string(),
        }
    }

    /// An emulator on `state_dir` with the owner's `token`, serving requests
    /// handed to its router directly (no TLS, no sockets): the pipeline tests
    /// and the fuzzer drive it so.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) async fn in_process(
        state_dir: &std::path::Path,
        token: &str,
        throttle_rps: Option<std::num::NonZeroU32>,
    ) -> Result<Self, EmulatorError> {
        let args = EmulatorArgs {
            addr: SocketAddr::from(([127, 0, 0, 1], 8443)),
            state_dir: state_dir.to_path_buf(),
            recovery_level: crate::settings::RecoveryLevel::Recoverable,
            sku: Sku::Premium,
            recoverable_days: 90,
            throttle_rps,
            latency: Duration::ZERO,
            tls_names: Vec::new(),
            token: token.to_owned(),
        };
        let (vault, backups) = open_state(&args).await?;
        // Hung faults end with this token; nothing here ever cancels it.
        Ok(Self::new(vault, backups, &args, args.addr, CancellationToken::new()))
    }
}

/// Checks the deletion settings and opens what the state directory holds
/// (creating it when new): the keys and the backup secret. Done before the
/// server listens, so a bad setting or a corrupt state stops the start.
pub(crate) async fn open_state(args: &EmulatorArgs) -> Result<(Vault, BackupSealer), EmulatorError> {
    let policy = DeletionPolicy::new(args.recovery_level, args.recoverable_days)?;
    store::create_state_dir(&args.state_dir)?;
    let vault = Vault::open(KeyStore::open(&args.state_dir)?, policy).await?;
    let backups = BackupSealer::open(&args.state_dir)?;
    Ok((vault, backups))
}
