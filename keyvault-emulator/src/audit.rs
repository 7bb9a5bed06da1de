//! Key Vault's diagnostic `AuditEvent` log, kept in memory: one entry per
//! authenticated Key Vault request, whatever its outcome (refused by an
//! access policy, answered by a fault, a handler's error, throttled with
//! 429). A client that keeps its own record of key use (keyseal's key-use
//! audit) matches it against this log by the `x-ms-client-request-id` it
//! sent, which Key Vault records as `correlationId`, just as an operator
//! would against a real vault's diagnostic logs.
//!
//! The request-id headers live here too: Key Vault echoes a client's
//! `x-ms-client-request-id` and gives every response its own
//! `x-ms-request-id`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

/// How many entries the log keeps; the oldest go first. At a few hundred
/// bytes an entry this bounds the log to tens of megabytes, however long
/// the emulator runs.
pub(crate) const AUDIT_LOG_CAPACITY: usize = 100_000;

/// The header a client names its request with (Key Vault logs it as
/// `correlationId` and echoes it).
pub(crate) const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
/// The header carrying the id the vault gives each response.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");
/// The longest `x-ms-client-request-id` taken; longer ones are ignored.
const MAX_CLIENT_REQUEST_ID_BYTES: usize = 128;

/// The `operationName` of a request that names no Key Vault operation.
pub(crate) const UNKNOWN_OPERATION: &str = "Unknown";

/// One entry of the emulator's audit log, shaped after Key Vault's
/// diagnostic `AuditEvent` records (the fields Key Vault nests under
/// `properties` or `identity` are flattened). It exists so a test or an
/// operator can check what the vault saw against what its client believes
/// it did, matching entries by `correlation_id`. Serialized in camelCase,
/// as `GET /_emulator/audit` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AuditEvent {
    /// When the request was received, RFC 3339 UTC with milliseconds, on the
    /// vault's clock (which `advance_clock` moves).
    pub time: String,
    /// Key Vault's name for the operation (`KeyWrap`, `KeyUnwrap`, `KeyGet`,
    /// `KeyList`, ...); `Unknown` when the method and path name none.
    pub operation_name: String,
    /// The HTTP status as Key Vault spells it: `OK`, `Forbidden`,
    /// `TooManyRequests`, ...
    pub result_signature: String,
    /// The HTTP status code of the response.
    pub http_status_code: u16,
    /// The key identifier the request named, `https://{host}/keys/{name}`
    /// plus `/{version}` when it named one; empty when it named no key.
    pub id: String,
    /// Who sent the request: the identity's name, or `owner` for the
    /// `--token` holder.
    pub caller_identity: String,
    /// How long the vault took to answer, in milliseconds, without the
    /// configured `--latency` (Key Vault's excludes the network too).
    pub duration_ms: u64,
    /// The request's `x-ms-client-request-id`; empty when it sent none, or
    /// one that is empty, longer than 128 bytes, not visible ASCII or
    /// repeated.
    pub correlation_id: String,
}

/// The newest [`AUDIT_LOG_CAPACITY`] audit entries, oldest first.
pub(crate) struct AuditLog {
    capacity: usize,
    entries: Mutex<VecDeque<AuditEvent>>,
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::with_capacity(AUDIT_LOG_CAPACITY)
    }
}

impl AuditLog {
    /// A log keeping the newest `capacity` entries (at least one).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { capacity, entries: Mutex::new(VecDeque::new()) }
    }

    /// Appends `event`, dropping the oldest entry when the log is full.
    pub(crate) fn record(&self, event: AuditEvent) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        while entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(event);
    }

    /// Every entry kept, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<AuditEvent> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

/// Key Vault's `AuditEvent` operation name for an operation as call counts
/// name it ([`Route::operation`](super::routes::Route::operation)); a name
/// without a Key Vault counterpart is kept as it is.
pub(crate) fn operation_name(operation: &'static str) -> &'static str {
    match operation {
        "create_key" => "KeyCreate",
        "import_key" => "KeyImport",
        "get_key" => "KeyGet",
        "update_key" => "KeyUpdate",
        "delete_key" => "KeyDelete",
        "list_keys" => "KeyList",
        "list_key_versions" => "KeyListVersions",
        "rotate_key" => "KeyRotate",
        "get_rotation_policy" => "KeyRotationPolicyGet",
        "update_rotation_policy" => "KeyRotationPolicySet",
        "backup_key" => "KeyBackup",
        "restore_key" => "KeyRestore",
        "release_key" => "KeyRelease",
        "encrypt" => "KeyEncrypt",
        "decrypt" => "KeyDecrypt",
        "wrapkey" => "KeyWrap",
        "unwrapkey" => "KeyUnwrap",
        "sign" => "KeySign",
        "verify" => "KeyVerify",
        "list_deleted_keys" => "KeyListDeleted",
        "get_deleted_key" => "KeyGetDeleted",
        "recover_deleted_key" => "KeyRecover",
        "purge_deleted_key" => "KeyPurge",
        other => other,
    }
}

/// The status as Key Vault's `resultSignature` spells it: the reason phrase
/// without spaces or punctuation (`TooManyRequests`), or the bare number
/// for a status without one.
pub(crate) fn result_signature(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => reason.chars().filter(char::is_ascii_alphanumeric).collect(),
        None => status.as_str().to_owned(),
    }
}

/// The request's `x-ms-client-request-id`, when it is usable: exactly one
/// such header, 1 to 128 bytes, visible ASCII only. Anything else is
/// treated as absent, so a hostile value is neither logged nor echoed.
pub(crate) fn client_request_id(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(CLIENT_REQUEST_ID).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let bytes = value.as_bytes();
    let usable =
        !bytes.is_empty() && bytes.len() <= MAX_CLIENT_REQUEST_ID_BYTES && bytes.iter().all(u8::is_ascii_graphic);
    usable.then(|| value.to_str().ok()).flatten()
}

/// Adds Key Vault's request-id headers to a response: a fresh
/// `x-ms-request-id`, and the client's `x-ms-client-request-id` echoed.
pub(crate) fn tag_response(response: &mut Response, client_request_id: Option<&str>) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&new_request_id()) {
        headers.insert(REQUEST_ID, value);
    }
    match client_request_id.map(HeaderValue::from_str) {
        Some(Ok(value)) => {
            headers.insert(CLIENT_REQUEST_ID, value);
        }
        _ => {
            headers.remove(CLIENT_REQUEST_ID);
        }
    }
}

/// `time` for an entry: RFC 3339 UTC with milliseconds. A time outside what
/// RFC 3339 can show (before 1970, after 9999, only reachable by moving the
/// clock absurdly far) is shown as the nearest one it can.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let time = time.max(UNIX_EPOCH);
    let mut text = String::new();
    if write!(text, "{}", humantime::format_rfc3339_millis(time)).is_err() {
        return "9999-12-31T23:59:59.999Z".to_owned();
    }
    text
}

/// A fresh id in the shape of Key Vault's `x-ms-request-id` (a random,
/// version-4 UUID in lowercase hex).
fn new_request_id() -> String {
    /// Tells ids apart should the system's random source ever fail.
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.subsec_nanos());
        bytes[..4].copy_from_slice(&nanos.to_be_bytes());
        bytes[8..].copy_from_slice(&FALLBACK.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Route;
    use axum::response::IntoResponse;
    use std::time::Duration;

    fn event(correlation_id: &str) -> AuditEvent {
        AuditEvent {
            time: rfc3339(UNIX_EPOCH),
            operation_name: "KeyGet".to_owned(),
            result_signature: "OK".to_owned(),
            http_status_code: 200,
            id: String::new(),
            caller_identity: "owner".to_owned(),
            duration_ms: 0,
            correlation_id: correlation_id.to_owned(),
        }
    }

    #[test]
    fn the_log_keeps_the_newest_entries() {
        let log = AuditLog::with_capacity(3);
        for n in 0..5 {
            log.record(event(&n.to_string()));
        }
        let kept: Vec<String> = log.snapshot().into_iter().map(|e| e.correlation_id).collect();
        assert_eq!(kept, ["2", "3", "4"]);
        assert_eq!(AuditLog::default().capacity, 100_000);
    }

    #[test]
    fn every_route_has_a_key_vault_operation_name() {
        let routes = [
            ("POST", "/keys/k/create", "KeyCreate"),
            ("PUT", "/keys/k", "KeyImport"),
            ("GET", "/keys/k/v", "KeyGet"),
            ("PATCH", "/keys/k/v", "KeyUpdate"),
            ("DELETE", "/keys/k", "KeyDelete"),
            ("GET", "/keys", "KeyList"),
            ("GET", "/keys/k/versions", "KeyListVersions"),
            ("POST", "/keys/k/rotate", "KeyRotate"),
            ("GET", "/keys/k/rotationpolicy", "KeyRotationPolicyGet"),
            ("PUT", "/keys/k/rotationpolicy", "KeyRotationPolicySet"),
            ("POST", "/keys/k/backup", "KeyBackup"),
            ("POST", "/keys/restore", "KeyRestore"),
            ("POST", "/keys/k/v/release", "KeyRelease"),
            ("POST", "/keys/k//encrypt", "KeyEncrypt"),
            ("POST", "/keys/k//decrypt", "KeyDecrypt"),
            ("POST", "/keys/k//wrapkey", "KeyWrap"),
            ("POST", "/keys/k//unwrapkey", "KeyUnwrap"),
            ("POST", "/keys/k//sign", "KeySign"),
            ("POST", "/keys/k//verify", "KeyVerify"),
            ("GET", "/deletedkeys", "KeyListDeleted"),
            ("GET", "/deletedkeys/k", "KeyGetDeleted"),
            ("POST", "/deletedkeys/k/recover", "KeyRecover"),
            ("DELETE", "/deletedkeys/k", "KeyPurge"),
        ];
        for (method, path, expected) in routes {
            let route = Route::parse(method, path).expect("route");
            assert_eq!(operation_name(route.operation()), expected, "{method} {path}");
        }
        assert_eq!(operation_name("frobnicate"), "frobnicate", "an unknown name is kept");
    }

    #[test]
    fn result_signatures_are_key_vaults_status_names() {
        assert_eq!(result_signature(StatusCode::OK), "OK");
        assert_eq!(result_signature(StatusCode::FORBIDDEN), "Forbidden");
        assert_eq!(result_signature(StatusCode::TOO_MANY_REQUESTS), "TooManyRequests");
        assert_eq!(result_signature(StatusCode::NO_CONTENT), "NoContent");
        assert_eq!(result_signature(StatusCode::from_u16(599).expect("status")), "599");
    }

    #[test]
    fn only_a_plausible_client_request_id_is_taken() {
        let with = |values: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(CLIENT_REQUEST_ID, HeaderValue::from_bytes(value).expect("header value"));
            }
            client_request_id(&headers).map(str::to_owned)
        };
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(with(&[uuid.as_bytes()]).as_deref(), Some(uuid));
        assert_eq!(with(&[&[b'a'; 128]]).map(|id| id.len()), Some(128));
        assert_eq!(with(&[]), None);
        assert_eq!(with(&[b""]), None);
        assert_eq!(with(&[&[b'a'; 129]]), None, "too long");
        assert_eq!(with(&[b"a\tb"]), None, "control character");
        assert_eq!(with(&[b"a b"]), None, "space");
        assert_eq!(with(&["caf\u{e9}".as_bytes()]), None, "not ASCII");
        assert_eq!(with(&[b"a", b"b"]), None, "repeated");
    }

    #[test]
    fn responses_get_a_request_id_and_the_echo() {
        let mut response = StatusCode::OK.into_response();
        tag_response(&mut response, Some("abc"));
        assert_eq!(response.headers()[CLIENT_REQUEST_ID], "abc");
        let id = response.headers()[REQUEST_ID].to_str().expect("ascii").to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert!(id.chars().all(|c| c == '-' || matches!(c, '0'..='9' | 'a'..='f')), "{id}");
        let mut other = StatusCode::OK.into_response();
        tag_response(&mut other, None);
        assert!(other.headers().get(CLIENT_REQUEST_ID).is_none());
        assert_ne!(other.headers()[REQUEST_ID], id.as_str(), "fresh per response");
    }

    #[test]
    fn times_are_rfc3339_utc_even_at_the_edges() {
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_500)), "1970-01-01T00:00:01.500Z");
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), "1970-01-01T00:00:00.000Z");
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999Z");
    }
}
