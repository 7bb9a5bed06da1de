//! What a vault call can fail with, classified once from the SDK's
//! errors: the failures callers tell apart, each with its one
//! [`KeyProblem`] and its error code.

use azure_core::error::ErrorKind;

use super::problem::{KeyProblem, Refused};
use crate::error::ErrorCode;

/// What a vault call can fail with, classified for callers (validation,
/// health probes). Messages never carry key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// DNS, TCP, TLS or timeout: the vault could not be asked.
    #[error("vault unreachable: {0}")]
    Unreachable(String),
    /// No token could be had for the vault.
    #[error("no token for the vault: {0}")]
    Credential(String),
    /// 404: the key (or that version) does not exist.
    #[error("key not found in the vault")]
    KeyNotFound,
    /// 401/403: the vault refused, for the reason Key Vault's most
    /// specific error code gives.
    #[error("vault refused the operation ({}): {message}", refused.code())]
    Forbidden {
        /// Why, parsed from Key Vault's error code.
        refused: Refused,
        /// Key Vault's message.
        message: String,
    },
    /// 429 after every retry.
    #[error("vault kept throttling after retries")]
    Throttled,
    /// Any other answer.
    #[error("vault answered {status} ({code}): {message}")]
    Service {
        /// HTTP status.
        status: u16,
        /// Key Vault error code.
        code: String,
        /// Key Vault's message.
        message: String,
    },
    /// The vault's answer lacked something keyseal needs.
    #[error("unexpected vault answer: {0}")]
    Invalid(String),
}

impl VaultError {
    /// Its one problem ([`KeyProblem`]).
    pub fn problem(&self) -> KeyProblem {
        match self {
            Self::Unreachable(_) => KeyProblem::VaultUnreachable,
            Self::Credential(_) => KeyProblem::MissingPermission,
            Self::KeyNotFound => KeyProblem::KeyNotFound,
            Self::Forbidden { refused, .. } => refused.problem(),
            Self::Throttled => KeyProblem::VaultThrottled,
            Self::Service { .. } | Self::Invalid(_) => KeyProblem::VaultError,
        }
    }
}

/// Maps an azure_core error to a [`VaultError`], reading Key Vault's error
/// body for the most specific code (the inner error, when there is one).
pub(super) fn classify(error: azure_core::Error) -> VaultError {
    match error.kind() {
        ErrorKind::HttpResponse { status, error_code, raw_response } => {
            let body: serde_json::Value =
                raw_response.as_ref().and_then(|r| serde_json::from_slice(r.body()).ok()).unwrap_or_default();
            let inner = body["error"]["innererror"]["code"].as_str();
            let code =
                inner.or(body["error"]["code"].as_str()).or(error_code.as_deref()).unwrap_or("unknown").to_owned();
            let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
            match u16::from(*status) {
                404 => VaultError::KeyNotFound,
                401 | 403 => VaultError::Forbidden { refused: Refused::parse(&code), message },
                429 => VaultError::Throttled,
                status => VaultError::Service { status, code, message },
            }
        }
        ErrorKind::Connection | ErrorKind::Io => VaultError::Unreachable(error.to_string()),
        // An answer came, but not one that reads: not an outage.
        ErrorKind::DataConversion => VaultError::Invalid(error.to_string()),
        ErrorKind::Credential => VaultError::Credential(error.to_string()),
        _ => VaultError::Unreachable(error.to_string()),
    }
}

impl ErrorCode for VaultError {
    /// The problem's name, except where the failure is more specific.
    fn code(&self) -> &'static str {
        match self {
            Self::Credential(_) => "vault_credential_failed",
            Self::Invalid(_) => "vault_invalid_answer",
            other => other.problem().as_str(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Credential(_) | Self::Throttled => true,
            Self::Service { status, .. } => *status >= 500,
            Self::KeyNotFound | Self::Forbidden { .. } | Self::Invalid(_) => false,
        }
    }
}
