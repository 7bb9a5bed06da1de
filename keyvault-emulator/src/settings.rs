//! The emulator's settings: the flags (with environment variables) of
//! `keyseal keyvault-emulator`, and the vault-wide choices among them that
//! Key Vault itself has, its pricing tier and deletion recovery level. A
//! leaf below everything that reads them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

/// The bearer token the emulator accepts when none is configured, so local
/// demos and compose files work without agreeing on a secret first. It grants
/// access to throwaway development keys only.
pub const DEV_TOKEN: &str = "keyseal-emulator-dev-token";

/// Settings of `keyseal keyvault-emulator`. They exist as flags (with
/// environment variables) so a compose file or a test can shape the vault's
/// behaviour: where it listens, where it keeps state, how deletion works and
/// how slow or stingy it is.
#[derive(clap::Args, Debug, Clone)]
pub struct EmulatorArgs {
    /// Address to listen on for HTTPS; port 0 picks a free port.
    #[arg(long, env = "KEYSEAL_EMULATOR_ADDR", default_value = "127.0.0.1:8443")]
    pub addr: SocketAddr,

    /// Directory holding keys, deleted keys and the TLS certificate
    /// (`cert.pem`); reused across restarts.
    #[arg(long, env = "KEYSEAL_EMULATOR_STATE_DIR", default_value = "./keyvault-emulator-state")]
    pub state_dir: PathBuf,

    /// The vault's deletion recovery level, reported in every key's
    /// `recoveryLevel`: levels with "Recoverable" soft-delete keys, levels
    /// with "Purgeable" allow purging them.
    #[arg(long, value_enum, default_value_t = RecoveryLevel::Recoverable)]
    pub recovery_level: RecoveryLevel,

    /// The vault's pricing tier: `premium` holds HSM-protected keys
    /// (`RSA-HSM`, `EC-HSM`) and exportable keys with a release policy;
    /// `standard` refuses them as Key Vault's standard tier does.
    #[arg(long, env = "KEYSEAL_EMULATOR_SKU", value_enum, default_value_t = Sku::Premium)]
    pub sku: Sku,

    /// Soft-delete retention in days (7 to 90), after which a deleted key is
    /// purged automatically.
    #[arg(long, default_value_t = 90)]
    pub recoverable_days: u32,

    /// Answer 429 (with `Retry-After`) beyond this many requests per second.
    #[arg(long)]
    pub throttle_rps: Option<NonZeroU32>,

    /// Delay added to every request, e.g. `50ms`, to imitate a remote vault.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,

    /// Extra DNS name or IP address the TLS certificate must cover, e.g. the
    /// compose service name `keyvault-emulator` (repeatable).
    #[arg(long = "tls-name", env = "KEYSEAL_EMULATOR_TLS_NAMES", value_delimiter = ',')]
    pub tls_names: Vec<String>,

    /// The vault owner's bearer token: every key permission, and the
    /// `/_emulator/` routes that add faults and restricted identities.
    #[arg(long, env = "KEYSEAL_VAULT_TOKEN", default_value = DEV_TOKEN, hide_env_values = true)]
    pub token: String,
}

/// Key Vault's pricing tiers, which decide whether the vault holds
/// HSM-protected keys. Tests of a caller that must refuse or accept HSM
/// keys pick one.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sku {
    /// Software-protected keys only.
    Standard,
    /// Software- and HSM-protected keys.
    Premium,
}

/// Key Vault's `DeletionRecoveryLevel`: the vault-wide policy that decides
/// whether a deleted key can be recovered and whether it can be purged
/// early. Tests pick one to check both the soft-delete and the
/// purge-protection paths of their callers.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryLevel {
    /// No soft delete: a deleted key is gone at once.
    #[value(name = "Purgeable")]
    Purgeable,
    /// Soft delete; a deleted key may be purged before its retention ends.
    #[value(name = "Recoverable+Purgeable")]
    RecoverablePurgeable,
    /// Soft delete with purge protection.
    #[value(name = "Recoverable")]
    Recoverable,
    /// Soft delete with purge protection, the subscription protected too.
    #[value(name = "Recoverable+ProtectedSubscription")]
    RecoverableProtectedSubscription,
    /// Soft delete with a custom retention; purging allowed.
    #[value(name = "CustomizedRecoverable+Purgeable")]
    CustomizedRecoverablePurgeable,
    /// Soft delete with a custom retention and purge protection.
    #[value(name = "CustomizedRecoverable")]
    CustomizedRecoverable,
    /// Soft delete with a custom retention, purge and subscription protection.
    #[value(name = "CustomizedRecoverable+ProtectedSubscription")]
    CustomizedRecoverableProtectedSubscription,
}

impl RecoveryLevel {
    /// The exact string Key Vault reports in `attributes.recoveryLevel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purgeable => "Purgeable",
            Self::RecoverablePurgeable => "Recoverable+Purgeable",
            Self::Recoverable => "Recoverable",
            Self::RecoverableProtectedSubscription => "Recoverable+ProtectedSubscription",
            Self::CustomizedRecoverablePurgeable => "CustomizedRecoverable+Purgeable",
            Self::CustomizedRecoverable => "CustomizedRecoverable",
            Self::CustomizedRecoverableProtectedSubscription => "CustomizedRecoverable+ProtectedSubscription",
        }
    }

    /// Whether deleting a key keeps it recoverable (soft delete).
    pub fn soft_delete(self) -> bool {
        self.as_str().contains("Recoverable")
    }

    /// Whether a soft-deleted key may be purged before its retention ends.
    pub fn purge_allowed(self) -> bool {
        self.as_str().contains("Purgeable")
    }
}
