//! Fault injection: make one key's operation (or every key's, or every
//! operation) fail the way a real vault fails — refused by policy (403),
//! throttled (429), broken (5xx) — or hang without an answer, so callers'
//! containment of vault trouble is tested against real HTTP answers.
//!
//! Faults apply after authentication and routing, before the handler; a
//! faulted request still counts under its operation in `Emulator::calls`,
//! and also under `faulted`. The first fault in the list that matches a
//! request decides its fate.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::ServiceError;
use super::throttle;

/// One injected failure: which requests it hits and what they get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The key name it applies to (case-insensitive, as Key Vault's names
    /// are); `None` for every key, and for operations that name none.
    pub key: Option<String>,
    /// The operation it applies to, as the call counts name it
    /// (`wrapkey`, `unwrapkey`, `get_key`, ...); `None` for every operation.
    pub operation: Option<String>,
    /// What a matching request gets.
    pub action: FaultAction,
}

/// What a faulted request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// An error answer with this status and Key Vault's body for it: 403
    /// `Forbidden`/`ForbiddenByPolicy`, 429 `Throttled` with `Retry-After: 1`,
    /// 500 `InternalServerError`, any other a generic error body.
    Status(u16),
    /// No answer at all, until the fault is removed or the emulator stops
    /// (then 503), as a vault that accepts connections and never answers.
    Hang,
}

impl Fault {
    fn matches(&self, key: Option<&str>, operation: &str) -> bool {
        let key_matches = match (&self.key, key) {
            (None, _) => true,
            (Some(wanted), Some(key)) => wanted.eq_ignore_ascii_case(key),
            (Some(_), None) => false,
        };
        key_matches && self.operation.as_deref().is_none_or(|wanted| wanted.eq_ignore_ascii_case(operation))
    }
}

/// The answer to a request a status fault hits.
fn answer(status: u16) -> Response {
    match status {
        429 => throttle::too_many_requests(std::time::Duration::from_secs(1)),
        _ => ServiceError::injected(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .into_response(),
    }
}

/// The current faults, replaceable at any time; requests hanging on a fault
/// re-check when the list changes.
pub(crate) struct Faults {
    list: watch::Sender<Vec<Fault>>,
    shutdown: CancellationToken,
}

impl Faults {
    /// No faults; hanging requests end when `shutdown` fires.
    pub(crate) fn new(shutdown: CancellationToken) -> Self {
        Self { list: watch::Sender::new(Vec::new()), shutdown }
    }

    /// Replaces the list.
    pub(crate) fn set(&self, faults: Vec<Fault>) {
        self.list.send_replace(faults);
    }

    /// The current list.
    pub(crate) fn list(&self) -> Vec<Fault> {
        self.list.borrow().clone()
    }

    /// Waits while a `Hang` fault holds the request; then `Some(answer)`
    /// when a status fault hits it (or the emulator stops), `None` when it
    /// goes on to its handler. `hit` is called once if any fault matched.
    pub(crate) async fn apply(&self, key: Option<&str>, operation: &str, hit: impl FnOnce()) -> Option<Response> {
        let mut faults = self.list.subscribe();
        let mut hit = Some(hit);
        loop {
            let action = faults.borrow_and_update().iter().find(|f| f.matches(key, operation)).map(|f| f.action);
            if action.is_some() {
                if let Some(hit) = hit.take() {
                    hit();
                }
            }
            match action {
                None => return None,
                Some(FaultAction::Status(status)) => return Some(answer(status)),
                Some(FaultAction::Hang) => {
                    tokio::select! {
                        // The sender lives as long as the server.
                        _ = faults.changed() => {}
                        () = self.shutdown.cancelled() => {
                            return Some(ServiceError::injected(StatusCode::SERVICE_UNAVAILABLE).into_response());
                        }
                    }
                }
            }
        }
    }
}

/// The JSON form of a fault in `/_emulator/faults`:
/// `{"key":"k","operation":"wrapkey","status":403}` or `{"operation":"get_key","hang":true}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    hang: bool,
}

/// The body of `PUT` and `GET /_emulator/faults`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultList {
    pub(crate) faults: Vec<FaultSpec>,
}

impl FaultSpec {
    /// Checks one entry: exactly one of an error status (400 to 599) and
    /// `hang`.
    pub(crate) fn into_fault(self) -> Result<Fault, ServiceError> {
        let action = match (self.status, self.hang) {
            (Some(status), false) if (400..=599).contains(&status) => FaultAction::Status(status),
            (Some(status), false) => {
                return Err(ServiceError::bad_parameter(format!(
                    "A fault's status must be an error status (400 to 599), not {status}."
                )));
            }
            (None, true) => FaultAction::Hang,
            _ => {
                return Err(ServiceError::bad_parameter("A fault needs exactly one of \"status\" and \"hang\": true."));
            }
        };
        Ok(Fault { key: self.key, operation: self.operation, action })
    }
}

impl From<&Fault> for FaultSpec {
    fn from(fault: &Fault) -> Self {
        let (status, hang) = match fault.action {
            FaultAction::Status(status) => (Some(status), false),
            FaultAction::Hang => (None, true),
        };
        Self { key: fault.key.clone(), operation: fault.operation.clone(), status, hang }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fault(key: Option<&str>, operation: Option<&str>, action: FaultAction) -> Fault {
        Fault { key: key.map(str::to_owned), operation: operation.map(str::to_owned), action }
    }

    #[test]
    fn a_fault_matches_its_key_and_operation_only() {
        let wrap_k = fault(Some("k"), Some("wrapkey"), FaultAction::Status(403));
        assert!(wrap_k.matches(Some("K"), "wrapkey"));
        assert!(!wrap_k.matches(Some("other"), "wrapkey"));
        assert!(!wrap_k.matches(Some("k"), "unwrapkey"));
        assert!(!wrap_k.matches(None, "list_keys"));
        let every_get = fault(None, Some("get_key"), FaultAction::Hang);
        assert!(every_get.matches(Some("a"), "get_key") && every_get.matches(Some("b"), "get_key"));
        assert!(fault(Some("k"), None, FaultAction::Hang).matches(Some("k"), "rotate_key"));
    }

    #[tokio::test]
    async fn the_first_matching_fault_answers() {
        let faults = Faults::new(CancellationToken::new());
        faults.set(vec![
            fault(Some("k"), Some("wrapkey"), FaultAction::Status(429)),
            fault(None, None, FaultAction::Status(500)),
        ]);
        let throttled = faults.apply(Some("k"), "wrapkey", || {}).await.expect("faulted");
        assert_eq!(throttled.status(), 429);
        assert_eq!(throttled.headers()["retry-after"], "1");
        assert_eq!(faults.apply(Some("j"), "wrapkey", || {}).await.expect("faulted").status(), 500);
        faults.set(Vec::new());
        let mut hits = 0;
        assert!(faults.apply(Some("k"), "wrapkey", || hits += 1).await.is_none());
        assert_eq!(hits, 0);
    }

    #[tokio::test]
    async fn a_hang_lasts_until_the_fault_goes_or_the_server_stops() {
        let shutdown = CancellationToken::new();
        let faults = std::sync::Arc::new(Faults::new(shutdown.clone()));
        faults.set(vec![fault(None, Some("get_key"), FaultAction::Hang)]);
        let waiting = tokio::spawn({
            let faults = faults.clone();
            async move { faults.apply(Some("k"), "get_key", || {}).await.map(|r| r.status()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "hangs while the fault is set");
        // Another fault for the same request replaces the hang.
        faults.set(vec![fault(None, Some("get_key"), FaultAction::Status(403))]);
        assert_eq!(waiting.await.expect("joined"), Some(StatusCode::FORBIDDEN));

        faults.set(vec![fault(None, None, FaultAction::Hang)]);
        let waiting = tokio::spawn({
            let faults = faults.clone();
            async move { faults.apply(None, "list_keys", || {}).await.map(|r| r.status()) }
        });
        shutdown.cancel();
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("shutdown ends the hang");
        assert_eq!(answer.expect("joined"), Some(StatusCode::SERVICE_UNAVAILABLE));
    }

    #[test]
    fn fault_specs_need_one_error_action() {
        let parse = |json: &str| serde_json::from_str::<FaultSpec>(json).map_err(|_| ()).map(FaultSpec::into_fault);
        assert_eq!(
            parse(r#"{"key":"k","operation":"wrapkey","status":403}"#).unwrap().unwrap(),
            fault(Some("k"), Some("wrapkey"), FaultAction::Status(403))
        );
        assert_eq!(parse(r#"{"hang":true}"#).unwrap().unwrap(), fault(None, None, FaultAction::Hang));
        assert!(parse(r#"{"status":200}"#).unwrap().is_err());
        assert!(parse(r#"{"status":500,"hang":true}"#).unwrap().is_err());
        assert!(parse(r#"{"key":"k"}"#).unwrap().is_err());
        assert!(parse(r#"{"key":"k","status":500,"extra":1}"#).is_err());
        let shown = serde_json::to_value(FaultSpec::from(&fault(None, Some("get_key"), FaultAction::Hang))).unwrap();
        assert_eq!(shown, serde_json::json!({"operation": "get_key", "hang": true}));
    }
}
