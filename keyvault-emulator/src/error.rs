//! The emulator's two kinds of error. [`ServiceError`] is Key Vault's
//! error response: clients branch on the status and on `error.code` (the
//! Azure SDKs surface both), so every refusal the emulator makes uses the
//! status, code, inner code and message wording the real service uses,
//! where they are known. [`EmulatorError`] is why the emulator itself
//! cannot start or keep its state, for the operator.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Where Key Vault's not-found messages send the reader.
const NOT_FOUND_HELP: &str =
    "For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182";

/// One error response: `{"error":{"code","message","innererror":{"code"}}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) inner_code: Option<&'static str>,
    pub(crate) message: String,
}

impl ServiceError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, inner_code: None, message: message.into() }
    }

    fn with_inner(mut self, inner_code: &'static str) -> Self {
        self.inner_code = Some(inner_code);
        self
    }

    /// 404 for a missing key, a missing version or a deleted key (the
    /// message wording is Key Vault's).
    pub(crate) fn key_not_found(name_or_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "KeyNotFound",
            format!(
                "A key with (name/id) {name_or_id} was not found in this key vault. If you \
                 recently deleted this key you may be able to recover it using the correct \
                 recovery command. {NOT_FOUND_HELP}"
            ),
        )
    }

    /// 404 for `/deletedkeys/{name}` when the key is not in the deleted state.
    pub(crate) fn deleted_key_not_found(name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "KeyNotFound", format!("Deleted Key not found: {name}. {NOT_FOUND_HELP}"))
    }

    /// 404 for something other than a key that does not exist.
    pub(crate) fn not_found(message: String) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// 400 for a malformed request.
    pub(crate) fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    /// 404 for a method and path that name no operation.
    pub(crate) fn unknown_operation(method: &str, path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", format!("No Key Vault operation matches {method} {path}."))
    }

    /// 409 for a change that collides with the key's current state (a
    /// restore onto a used name).
    pub(crate) fn conflict(message: String) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    /// 409 when a create names a key that is deleted but still recoverable.
    pub(crate) fn name_held_by_deleted_key(name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Key {name} is currently in a deleted but recoverable state, and its name \
                 cannot be reused; in this state, the key can only be recovered or purged."
            ),
        )
    }

    /// 403 for any cryptographic operation on a disabled key version.
    pub(crate) fn key_disabled(operation: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("Operation {operation} is not allowed on a disabled key."),
        )
        .with_inner("KeyDisabled")
    }

    /// 403 when the operation is missing from the key's `key_ops`.
    pub(crate) fn operation_not_permitted(operation: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", format!("Operation {operation} is not permitted on this key."))
            .with_inner("KeyOperationForbidden")
    }

    /// 403 for encrypt or wrap before the key's `nbf`.
    pub(crate) fn key_not_yet_valid(operation: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("Operation {operation} is not allowed on a key that is not yet valid."),
        )
        .with_inner("KeyNotYetValid")
    }

    /// 403 for encrypt or wrap at or after the key's `exp`.
    pub(crate) fn key_expired(operation: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("Operation {operation} is not allowed on an expired key."),
        )
        .with_inner("KeyExpired")
    }

    /// 403 for a purge while the recovery level protects deleted keys.
    pub(crate) fn purge_protected() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Operation \"purge\" is not allowed because purge protection is enabled for this \
             vault. Key Vault service will automatically purge it after the retention period \
             has passed.",
        )
    }

    /// 401 without (or with a wrong) bearer token.
    pub(crate) fn unauthorized(message: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    /// 429 beyond the configured request rate.
    pub(crate) fn throttled() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttled",
            "Request was not processed because too many requests were received. Reason: \
             VaultRequestTypeLimitReached",
        )
    }

    /// 403 when the caller's access policy lacks the operation's permission.
    pub(crate) fn forbidden_by_policy(message: String) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message).with_inner("ForbiddenByPolicy")
    }

    /// The answer of an injected fault with `status`: Key Vault's body for
    /// 403 (by policy), 429, 500 and 503, a generic error body otherwise.
    pub(crate) fn injected(status: StatusCode) -> Self {
        match status {
            StatusCode::FORBIDDEN => Self::forbidden_by_policy(
                "The user, group or application does not have the permission this operation needs on this key \
                 vault (an injected fault)."
                    .to_owned(),
            ),
            StatusCode::TOO_MANY_REQUESTS => Self::throttled(),
            StatusCode::INTERNAL_SERVER_ERROR => Self::new(
                status,
                "InternalServerError",
                "The service encountered an internal error (an injected fault). Please try again later.",
            ),
            StatusCode::SERVICE_UNAVAILABLE => Self::new(
                status,
                "ServiceUnavailable",
                "The service is unavailable (an injected fault). Please try again later.",
            ),
            _ => Self::new(status, "InjectedFault", format!("The request failed with {status} (an injected fault).")),
        }
    }

    /// 500 when the emulator itself failed (its state could not be written);
    /// the cause is logged, never sent.
    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "The emulator could not complete the request; see its log.",
        )
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(inner) = self.inner_code {
            error["innererror"] = json!({ "code": inner });
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

/// Why the emulator could not start or keep its state. Each variant names
/// what the operator has to fix; none is retried internally.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// A flag value Key Vault itself would not allow.
    #[error("invalid emulator setting: {0}")]
    InvalidSetting(String),
    /// Reading or writing the state directory failed.
    #[error("state directory I/O on {path}: {source}")]
    StateIo {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A state file exists but cannot be understood; the emulator refuses to
    /// start rather than silently drop keys.
    #[error("corrupt emulator state in {path}: {reason}")]
    CorruptState {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating the self-signed TLS certificate failed.
    #[error("cannot generate the TLS certificate: {0}")]
    Certificate(String),
    /// The TLS configuration was rejected.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Waiting for Ctrl-C or SIGTERM failed.
    #[error("cannot wait for a shutdown signal: {0}")]
    Signal(std::io::Error),
}
