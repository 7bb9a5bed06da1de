//! `keyseal keyvault-emulator`: a local HTTPS server that speaks the Azure
//! Key Vault keys REST API, so demos, docker-compose and tests can exercise
//! the real Key Vault client code path without an Azure subscription.
//!
//! It is faithful where keyseal's behaviour depends on it: Key Vault's paths
//! (including the SDK's empty-version `/keys/{name}//wrapkey` form), JSON
//! field names, error bodies and status codes, the 401 bearer challenge the
//! official SDKs need before they send a token, soft delete governed by the
//! vault's recovery level, the tier (`--sku`) deciding on HSM keys, real
//! RSA (`RSA1_5`, `RSA-OAEP`, `RSA-OAEP-256`, `RS*`, `PS*`) and ECDSA
//! (P-256, P-256K, P-384, P-521) cryptography, import, backup and restore,
//! and rotation policies the vault acts on by itself, on a clock tests can
//! move forward. State (keys, versions, attributes, policies, deleted keys,
//! the TLS certificate, the backup secret) lives in one directory and
//! survives restarts.
//!
//! The parts, in layers from the bottom up; a module imports only from the
//! ones listed before it:
//!
//! 1. leaves: `settings` (the flags, the tier, the recovery level),
//!    `error` (Key Vault's error responses, and [`EmulatorError`]),
//!    `material` (the cryptography), `clock` (the vault's time, which the
//!    owner moves), `calls` (per-operation counts) and `audit` (Key Vault's
//!    `AuditEvent` log, one [`AuditEvent`] per authenticated request, and
//!    the request-id headers every answer carries);
//! 2. `model`: keys, versions, deletion and rotation policies with Key
//!    Vault's rules on them, pure data judged on plain timestamps;
//! 3. `store`: the crash-safe persistence of the model, whose atomic writes
//!    `backup` (sealed backup blobs) and `tls` (the self-signed certificate,
//!    `<state-dir>/cert.pem`, and the TLS listener) share;
//! 4. `vault`: the keys and the operations on them, written through the
//!    store; beside it the parts of a request's way that do not reach the
//!    vault: `routes` (which operation a method and path name), `wire` (Key
//!    Vault's JSON shapes), `access` and `auth` (tokens and access
//!    policies), `throttle` and `faults`;
//! 5. `app`: the state every request and background task shares;
//! 6. `handlers` (one function per Key Vault operation) and `control` (the
//!    owner's `/_emulator/` routes that set faults, identities and the
//!    clock and read the audit log over HTTPS);
//! 7. `pipeline`: what every request meets, in order (latency,
//!    authentication, throttling, `api-version`, routing, access policy,
//!    faults, the handler, the audit log);
//! 8. `server`: the listener and housekeeping; this file starts them.
//!
//! [`admin`] is the other side of the wire: the key owner's client (create,
//! rotate, disable) that the demo and the tests use.

#![warn(missing_docs)]

mod access;
pub mod admin;
mod app;
mod audit;
mod auth;
mod backup;
mod calls;
mod clock;
mod control;
mod error;
mod faults;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod handlers;
mod material;
mod model;
mod pipeline;
mod routes;
mod server;
mod settings;
mod store;
mod throttle;
mod tls;
mod vault;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use access::KEY_PERMISSIONS;
pub use audit::AuditEvent;
pub use error::EmulatorError;
pub use faults::{Fault, FaultAction};
pub use settings::{DEV_TOKEN, EmulatorArgs, RecoveryLevel, Sku};

/// How long [`Emulator::shutdown`] lets in-flight requests finish before it
/// abandons them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running emulator. It exists so an embedding process (a test, `keyseal
/// demo`) can learn where the vault listens and which certificate to trust,
/// read its call counts and audit log, and stop it. Dropping it stops the
/// server too.
pub struct Emulator {
    addr: SocketAddr,
    cert_pem_path: PathBuf,
    app: Arc<app::App>,
    stop: DropGuard,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("cert_pem_path", &self.cert_pem_path)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// The bound address (with the real port when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The vault URL clients use, e.g. `https://127.0.0.1:8443`: the value a
    /// key URI starts with.
    pub fn vault_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The PEM certificate clients must trust (`<state-dir>/cert.pem`).
    pub fn cert_pem_path(&self) -> &std::path::Path {
        &self.cert_pem_path
    }

    /// The `keyseal run` flags that make a worker use this emulator as its
    /// vault: trust its host and certificate, and send the static token.
    pub fn worker_flags(&self) -> Vec<String> {
        vec![
            "--trusted-vault-host".into(),
            self.addr.to_string(),
            "--vault-ca-cert".into(),
            self.cert_pem_path.display().to_string(),
            "--vault-credential".into(),
            "static-token".into(),
        ]
    }

    /// Requests served per operation since start ("wrapkey", "unwrapkey",
    /// "get_key", ...), counting those that passed authentication and
    /// throttling whatever their outcome (refused by an access policy or
    /// answered by a fault included), so tests can prove how often a caller
    /// really talks to the vault. Requests refused with 429 by
    /// `--throttle-rps` are counted under "throttled" only; requests a fault
    /// answered or held also under "faulted". `/_emulator/` requests are
    /// not counted.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.app.calls.snapshot()
    }

    /// The audit log, oldest entry first: one [`AuditEvent`] per Key Vault
    /// request that passed authentication (refused by an access policy,
    /// answered by a fault or an error, or throttled with 429 included),
    /// the newest 100,000 kept, so a test can match its client's own record
    /// of key use with what the vault saw, by `correlation_id` (the
    /// request's `x-ms-client-request-id`). `/_emulator/` requests are not
    /// logged. Also `GET /_emulator/audit`.
    pub fn audit_log(&self) -> Vec<AuditEvent> {
        self.app.audit.snapshot()
    }

    /// Replaces the injected faults (see [`Fault`]); an empty list removes
    /// them all. Requests hanging on a removed `Hang` fault go on. Also
    /// `PUT /_emulator/faults` over HTTPS.
    pub fn set_faults(&self, faults: Vec<Fault>) {
        self.app.faults.set(faults);
    }

    /// Moves the vault's clock forward by `by` (whole seconds), so rotation
    /// policies and soft-delete retention act as if that time had passed;
    /// the effect shows within a second. Also `POST /_emulator/clock`
    /// `{"advanceSeconds": n}`.
    pub fn advance_clock(&self, by: Duration) {
        let seconds = u32::try_from(by.as_secs()).expect("advance the clock by less than 136 years at a time");
        self.app.clock.advance(seconds);
    }

    /// Removes every injected fault (`DELETE /_emulator/faults`).
    pub fn clear_faults(&self) {
        self.app.faults.set(Vec::new());
    }

    /// The injected faults now in force.
    pub fn faults(&self) -> Vec<Fault> {
        self.app.faults.list()
    }

    /// Adds identity `name` with bearer `token` and the Key Vault key
    /// permissions `permissions` (names from [`KEY_PERMISSIONS`],
    /// case-insensitive), or replaces them; the `--token` holder stays the
    /// owner with every permission. Also `PUT /_emulator/identities/{name}`.
    ///
    /// # Panics
    ///
    /// On a name that is not 1 to 127 letters, digits, `-` or `_`, an empty
    /// token or one already in use, or an unknown permission: a mistake in
    /// the calling test, reported where it was made.
    pub fn set_identity(&self, name: &str, token: &str, permissions: &[&str]) {
        if let Err(e) = self.app.auth.policies.set(name, token, permissions) {
            panic!("Emulator::set_identity({name:?}): {e}");
        }
    }

    /// Removes identity `name` (its token then gets the 401 challenge);
    /// whether it existed. Also `DELETE /_emulator/identities/{name}`.
    pub fn remove_identity(&self, name: &str) -> bool {
        self.app.auth.policies.remove(name)
    }

    /// Stops accepting connections, lets in-flight requests finish (for a
    /// few seconds at most) and waits for the server to end, so the state
    /// directory can be reopened at once.
    pub async fn shutdown(self) {
        let Emulator { stop, mut server, .. } = self;
        drop(stop);
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "key vault emulator task failed"),
            Err(_) => {
                tracing::warn!("key vault emulator did not drain in time; aborting open requests");
                server.abort();
                // Only the abort's own cancellation error can come back here.
                let _ = server.await;
            }
        }
    }
}

/// Starts the emulator in the background: prepares the state directory and
/// certificate, loads the keys, binds `args.addr` and serves until
/// [`Emulator::shutdown`] (or drop). Embedders and tests call this.
pub async fn start(args: EmulatorArgs) -> Result<Emulator, EmulatorError> {
    if args.token.trim().is_empty() {
        return Err(EmulatorError::InvalidSetting("--token must not be empty".to_owned()));
    }
    let (vault, backups) = app::open_state(&args).await?;
    let tls_config = tls::server_config(&args.state_dir, &args.tls_names)?;
    let listener = tls::TlsListener::bind(args.addr, tls_config).await?;
    let addr = listener.local_addr();
    let cancel = CancellationToken::new();
    let app = Arc::new(app::App::new(vault, backups, &args, addr, cancel.clone()));
    let server = tokio::spawn(server::serve(listener, app.clone(), cancel.clone()));
    tracing::info!(
        vault_url = %format!("https://{addr}"),
        state_dir = %args.state_dir.display(),
        recovery_level = args.recovery_level.as_str(),
        sku = ?args.sku,
        "key vault emulator listening"
    );
    Ok(Emulator { addr, cert_pem_path: tls::cert_pem_path(&args.state_dir), app, stop: cancel.drop_guard(), server })
}

/// Runs the emulator in the foreground until Ctrl-C or SIGTERM: the body of
/// `keyseal keyvault-emulator`.
pub async fn run(args: EmulatorArgs) -> Result<(), EmulatorError> {
    let emulator = start(args).await?;
    println!("key vault emulator: {} (trust {})", emulator.vault_url(), emulator.cert_pem_path().display());
    let signal = shutdown_signal().await;
    emulator.shutdown().await;
    signal
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what `docker stop` sends).
async fn shutdown_signal() -> Result<(), EmulatorError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(EmulatorError::Signal)?;
        tokio::select! {
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c.map_err(EmulatorError::Signal),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(EmulatorError::Signal)
    }
}
