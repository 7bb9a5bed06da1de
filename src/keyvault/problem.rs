//! keyseal's one vocabulary for why a customer key cannot be used now.
//! Key Vault's refusals are parsed once ([`Refused::parse`], from the
//! inner error code of a 401 or 403), every [`VaultError`] has exactly one
//! [`KeyProblem`], and the names keyseal shows for a key's trouble (health
//! reasons, seal hold reasons, enable refusals, error codes) are all made
//! from it, so a code cannot read `key_expired` in one place and
//! `missing_permission` in another.
//!
//! [`VaultError`]: super::VaultError

/// Why a customer key cannot be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyProblem {
    /// The key (or its version) does not exist: deleted or wrong name.
    KeyNotFound,
    /// The key is disabled.
    KeyDisabled,
    /// The key's `nbf` is in the future.
    KeyNotYetActive,
    /// The key's `exp` has passed.
    KeyExpired,
    /// keyseal's identity may not do what it must with the key.
    MissingPermission,
    /// The vault could not be asked (DNS, TCP, TLS, a timeout).
    VaultUnreachable,
    /// The vault throttled every try.
    VaultThrottled,
    /// The vault answered with an error of its own (5xx, an unreadable answer).
    VaultError,
}

impl KeyProblem {
    /// The problem's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyNotFound => "key_not_found",
            Self::KeyDisabled => "key_disabled",
            Self::KeyNotYetActive => "key_not_yet_active",
            Self::KeyExpired => "key_expired",
            Self::MissingPermission => "missing_permission",
            Self::VaultUnreachable => "vault_unreachable",
            Self::VaultThrottled => "vault_throttled",
            Self::VaultError => "vault_error",
        }
    }
}

/// A 401 or 403 from Key Vault, by its error code (the inner error's when
/// there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `KeyDisabled`.
    KeyDisabled,
    /// `KeyExpired`.
    KeyExpired,
    /// `KeyNotYetValid`.
    KeyNotYetValid,
    /// Any other code (`ForbiddenByPolicy`, `AccessDenied`,
    /// `KeyOperationForbidden`, `Unauthorized`, ...): keyseal's identity
    /// may not; the code as the vault gave it.
    Denied(String),
}

impl Refused {
    /// Reads Key Vault's error code.
    pub fn parse(code: &str) -> Self {
        match code {
            "KeyDisabled" => Self::KeyDisabled,
            "KeyExpired" => Self::KeyExpired,
            "KeyNotYetValid" => Self::KeyNotYetValid,
            other => Self::Denied(other.to_owned()),
        }
    }

    /// Key Vault's code again, for messages.
    pub fn code(&self) -> &str {
        match self {
            Self::KeyDisabled => "KeyDisabled",
            Self::KeyExpired => "KeyExpired",
            Self::KeyNotYetValid => "KeyNotYetValid",
            Self::Denied(code) => code,
        }
    }

    /// Its one problem.
    pub fn problem(&self) -> KeyProblem {
        match self {
            Self::KeyDisabled => KeyProblem::KeyDisabled,
            Self::KeyExpired => KeyProblem::KeyExpired,
            Self::KeyNotYetValid => KeyProblem::KeyNotYetActive,
            Self::Denied(_) => KeyProblem::MissingPermission,
        }
    }
}
