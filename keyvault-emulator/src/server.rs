//! The server: the TLS listener serving every request through the
//! [`pipeline`] until shutdown, and alongside it the housekeeping Key Vault
//! does by itself, purging deleted keys whose retention ended and rotating
//! keys whose rotation policy says so.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;

use super::app::App;
use super::handlers::generate;
use super::pipeline;
use super::tls::TlsListener;

/// How often the vault looks for deleted keys past their retention and
/// rotations its policies say are due. Both checks are scans of memory, and
/// a test that moves the clock sees their effect within this.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Serves until `cancel` fires, then drains open requests.
pub(crate) async fn serve(listener: TlsListener, app: Arc<App>, cancel: CancellationToken) {
    let router = router(app.clone());
    let server = axum::serve(listener, router).with_graceful_shutdown(cancel.clone().cancelled_owned());
    let (served, ()) = tokio::join!(async { server.await }, housekeeping(app, cancel));
    if let Err(e) = served {
        tracing::error!(error = %e, "key vault emulator server stopped");
    }
}

/// Every request goes to [`pipeline::handle_request`]: Key Vault's paths
/// carry empty segments that a path router would not match.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new().fallback(pipeline::handle_request).with_state(app)
}

/// What Key Vault does by itself, on the emulator's clock: purges deleted
/// keys whose scheduled purge date has passed, and creates the versions
/// rotation policies call for.
async fn housekeeping(app: Arc<App>, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {
                match app.vault.purge_expired(app.clock.now()).await {
                    Ok(0) => {}
                    Ok(purged) => tracing::info!(purged, "purged deleted keys past their retention"),
                    // Already logged where it failed; the next tick retries.
                    Err(_) => {}
                }
                rotate_due_keys(&app).await;
            }
        }
    }
}

/// Creates a new version of every key whose policy's `Rotate` action is due.
async fn rotate_due_keys(app: &App) {
    for due in app.vault.rotations_due(app.clock.now()).await {
        // A failure is logged where it happened; the next tick retries.
        let Ok(material) = generate(due.spec).await else { continue };
        if let Ok(Some(view)) = app.vault.rotate_by_policy(&due.name, &due.latest, material, app.clock.now()).await {
            tracing::info!(key = %due.name, version = %view.version.id, "rotated a key as its rotation policy asked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, CLIENT_REQUEST_ID, REQUEST_ID};
    use crate::faults::{Fault, FaultAction};
    use axum::body::Body;
    use axum::http::header::{AUTHORIZATION, HOST};
    use axum::http::{HeaderMap, HeaderValue};
    use serde_json::{Value, json};
    use std::num::NonZeroU32;
    use std::path::Path;
    use tower::ServiceExt;

    const OWNER: &str = "owner-token";

    /// A vault in `dir` behind the real router, without TLS or sockets.
    async fn app(dir: &Path, throttle_rps: Option<u32>) -> Arc<App> {
        let app = App::in_process(dir, OWNER, throttle_rps.and_then(NonZeroU32::new)).await.expect("app");
        Arc::new(app)
    }

    /// Sends one request as `token` with `x-ms-client-request-id` values
    /// `client_ids`; the response's headers and JSON body.
    async fn send(
        app: &Arc<App>,
        (method, path): (&str, &str),
        token: Option<&str>,
        client_ids: &[&[u8]],
        body: Value,
    ) -> (HeaderMap, Value) {
        let mut request = axum::http::Request::builder().method(method).uri(path).header(HOST, "localhost:8443");
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        for id in client_ids {
            request = request.header(CLIENT_REQUEST_ID, HeaderValue::from_bytes(id).expect("header value"));
        }
        let request = request.body(Body::from(body.to_string())).expect("request");
        let response = router(app.clone()).oneshot(request).await.expect("infallible");
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// `(operationName, httpStatusCode, resultSignature, callerIdentity, correlationId)` of every entry.
    fn summary(app: &App) -> Vec<(String, u16, String, String, String)> {
        let entries = app.audit.snapshot();
        entries
            .into_iter()
            .map(|e| (e.operation_name, e.http_status_code, e.result_signature, e.caller_identity, e.correlation_id))
            .collect()
    }

    fn entry(op: &str, status: u16, signature: &str, caller: &str, id: &str) -> (String, u16, String, String, String) {
        (op.to_owned(), status, signature.to_owned(), caller.to_owned(), id.to_owned())
    }

    #[tokio::test]
    async fn every_authenticated_request_is_audited_under_its_client_request_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = app(dir.path(), None).await;
        app.auth.policies.set("reader", "reader-token", &["get"]).expect("identity");
        let ec = json!({"kty": "EC", "crv": "P-256"});
        let create = ("POST", "/keys/k1/create?api-version=7.5");
        let (headers, created) = send(&app, create, Some(OWNER), &[b"req-1"], ec).await;
        assert_eq!(headers[CLIENT_REQUEST_ID], "req-1", "echoed");
        assert_eq!(headers[REQUEST_ID].len(), 36);
        let kid = created["key"]["kid"].as_str().expect("kid").to_owned();
        let version = kid.rsplit('/').next().expect("version").to_owned();

        let get = format!("/keys/k1/{version}?api-version=7.5");
        send(&app, ("GET", &get), Some("reader-token"), &[b"req-2"], Value::Null).await;
        let sign = ("POST", "/keys/k1//sign?api-version=7.5");
        send(&app, sign, Some("reader-token"), &[b"req-3"], json!({})).await;
        let (headers, _) = send(&app, ("GET", "/keys"), Some(OWNER), &[], Value::Null).await;
        assert!(headers.get(CLIENT_REQUEST_ID).is_none() && headers.contains_key(REQUEST_ID));
        send(&app, ("GET", "/secrets/s?api-version=7.5"), Some(OWNER), &[b"req-5"], Value::Null).await;
        // Not authenticated: answered with the headers, but not logged.
        let (headers, _) = send(&app, ("GET", "/keys?api-version=7.5"), None, &[b"req-6"], Value::Null).await;
        assert_eq!(headers[CLIENT_REQUEST_ID], "req-6");
        assert!(headers.contains_key(REQUEST_ID));

        assert_eq!(
            summary(&app),
            [
                entry("KeyCreate", 200, "OK", "owner", "req-1"),
                entry("KeyGet", 200, "OK", "reader", "req-2"),
                entry("KeySign", 403, "Forbidden", "reader", "req-3"),
                entry("KeyList", 400, "BadRequest", "owner", ""),
                entry("Unknown", 404, "NotFound", "owner", "req-5"),
            ]
        );
        let entries = app.audit.snapshot();
        assert_eq!(entries[0].id, "https://localhost:8443/keys/k1");
        assert_eq!(entries[1].id, kid, "the versioned key identifier");
        assert_eq!(entries[3].id, "", "a list names no key");
        assert!(entries[0].time.ends_with('Z') && entries[0].time.len() == 24, "{}", entries[0].time);

        // The control route shows the same log and is not logged itself.
        let (headers, shown) = send(&app, ("GET", "/_emulator/audit"), Some(OWNER), &[], Value::Null).await;
        assert!(!headers.contains_key(REQUEST_ID), "not a Key Vault request");
        assert_eq!(shown["value"][2]["operationName"], "KeySign");
        assert_eq!(shown["value"][2]["correlationId"], "req-3");
        assert_eq!(shown["value"][2]["httpStatusCode"], 403);
        assert_eq!(shown["value"][1]["id"], kid);
        assert_eq!(serde_json::from_value::<Vec<AuditEvent>>(shown["value"].clone()).expect("entries"), entries);
        let (_, refused) = send(&app, ("GET", "/_emulator/audit"), Some("reader-token"), &[], Value::Null).await;
        assert_eq!(refused["error"]["innererror"]["code"], "ForbiddenByPolicy", "owner only");
        assert_eq!(app.audit.snapshot().len(), 5);
    }

    #[tokio::test]
    async fn hostile_client_request_ids_are_neither_logged_nor_echoed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = app(dir.path(), None).await;
        let long = [b'x'; 129];
        let hostile: [&[&[u8]]; 4] = [&[&long], &[b"a\tb"], &[b"caf\xc3\xa9"], &[b"one", b"two"]];
        for ids in hostile {
            let (headers, _) = send(&app, ("GET", "/keys?api-version=7.5"), Some(OWNER), ids, Value::Null).await;
            assert!(headers.get(CLIENT_REQUEST_ID).is_none(), "{ids:?} echoed");
            assert!(headers.contains_key(REQUEST_ID));
        }
        let logged: Vec<String> = app.audit.snapshot().into_iter().map(|e| e.correlation_id).collect();
        assert_eq!(logged, ["", "", "", ""]);
    }

    #[tokio::test]
    async fn faulted_and_throttled_requests_are_audited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = app(dir.path(), Some(1)).await;
        let unavailable = FaultAction::Status(503);
        app.faults.set(vec![Fault { key: None, operation: Some("get_key".to_owned()), action: unavailable }]);
        let get = ("GET", "/keys/k1?api-version=7.5");
        send(&app, get, Some(OWNER), &[b"first"], Value::Null).await;
        let (headers, _) = send(&app, get, Some(OWNER), &[b"second"], Value::Null).await;
        assert_eq!(headers[CLIENT_REQUEST_ID], "second");
        assert_eq!(
            summary(&app),
            [
                entry("KeyGet", 503, "ServiceUnavailable", "owner", "first"),
                entry("KeyGet", 429, "TooManyRequests", "owner", "second"),
            ]
        );
        assert!(app.audit.snapshot().iter().all(|e| e.id == "https://localhost:8443/keys/k1"));
    }
}
