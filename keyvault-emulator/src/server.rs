//! The request pipeline and the server's tasks. Every Key Vault request
//! meets, in order: the configured latency, bearer authentication (401 +
//! challenge before the body is looked at, as the SDKs' first tokenless
//! request needs), throttling, the mandatory `api-version`, routing, the
//! caller's access policy, injected faults, then its handler. Every request
//! that passes authentication is written to the `audit` log once answered,
//! and every answer carries Key Vault's `x-ms-request-id` (and the client's
//! `x-ms-client-request-id`, echoed). Requests under `/_emulator/` are the
//! owner's control routes and skip all but authentication. Alongside,
//! housekeeping purges deleted keys whose retention ended and rotates keys
//! whose rotation policy says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header::HOST};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::access::Caller;
use super::app::App;
use super::audit::{self, AuditEvent};
use super::calls::{FAULTED, THROTTLED};
use super::control;
use super::error::ServiceError;
use super::handlers::generate;
use super::handlers::{self, RequestContext};
use super::routes::Route;
use super::throttle;
use super::tls::TlsListener;

/// Request bodies are small JSON documents; anything bigger is refused.
const MAX_BODY_BYTES: usize = 1 << 20;
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

/// Every request goes to [`handle_request`]: Key Vault's paths carry empty
/// segments that a path router would not match.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new().fallback(handle_request).with_state(app)
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

async fn handle_request(State(app): State<Arc<App>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = if path.starts_with(control::PREFIX) {
        control_request(&app, request).await
    } else {
        vault_request(&app, request).await
    };
    tracing::debug!(%method, path, status = response.status().as_u16(), "key vault emulator request");
    response
}

/// A `/_emulator/` request: the owner's token only.
async fn control_request(app: &App, request: Request) -> Response {
    match app.auth.check(request.headers()) {
        Err(refusal) => return refusal.into_response(),
        Ok(Caller::Identity { name, .. }) => {
            let message = format!("The identity '{name}' may not change the emulator; only the owner's token may.");
            return ServiceError::forbidden_by_policy(message).into_response();
        }
        Ok(Caller::Owner) => {}
    }
    let (parts, body) = request.into_parts();
    let outcome = match read_body(body).await {
        Ok(body) => control::handle(app, parts.method.as_str(), parts.uri.path(), &body),
        Err(e) => Err(e),
    };
    outcome.unwrap_or_else(IntoResponse::into_response)
}

/// A Key Vault request: answered, audited once authenticated, and tagged
/// with the request-id headers whatever the answer.
async fn vault_request(app: &App, request: Request) -> Response {
    if !app.latency.is_zero() {
        tokio::time::sleep(app.latency).await;
    }
    let client_request_id = audit::client_request_id(request.headers()).map(str::to_owned);
    let mut response = match app.auth.check(request.headers()) {
        Ok(caller) => audited(app, &caller, request, client_request_id.as_deref()).await,
        Err(refusal) => refusal.into_response(),
    };
    audit::tag_response(&mut response, client_request_id.as_deref());
    response
}

/// An authenticated request, throttled or processed, then written to the
/// audit log with its outcome. A request whose client goes away before
/// the answer (one hanging on a fault, say) is not logged.
async fn audited(app: &App, caller: &Caller, request: Request, client_request_id: Option<&str>) -> Response {
    let started = Instant::now();
    let time = audit::rfc3339(app.clock.system_time());
    let (parts, body) = request.into_parts();
    let route = Route::parse(parts.method.as_str(), parts.uri.path());
    let operation_name =
        route.as_ref().map_or(audit::UNKNOWN_OPERATION, |route| audit::operation_name(route.operation()));
    let id = route.as_ref().ok().and_then(|route| key_identifier(route, &parts, &app.listen_authority));
    let id = id.unwrap_or_default();
    let throttled = app.throttle.as_ref().and_then(|throttle| throttle.admit(Instant::now()).err());
    let response = match throttled {
        Some(wait) => {
            app.calls.record(THROTTLED);
            throttle::too_many_requests(wait)
        }
        None => process(app, caller, parts, body, route).await.unwrap_or_else(IntoResponse::into_response),
    };
    let caller_identity = match caller {
        Caller::Owner => "owner".to_owned(),
        Caller::Identity { name, .. } => name.clone(),
    };
    app.audit.record(AuditEvent {
        time,
        operation_name: operation_name.to_owned(),
        result_signature: audit::result_signature(response.status()),
        http_status_code: response.status().as_u16(),
        id,
        caller_identity,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        correlation_id: client_request_id.unwrap_or_default().to_owned(),
    });
    response
}

/// `https://{host}/keys/{name}[/{version}]` for a route that names a key;
/// the listen address stands in for a Host header that is not valid.
fn key_identifier(route: &Route, parts: &Parts, listen_authority: &str) -> Option<String> {
    let name = route.key_name()?;
    let vault = vault_url(&parts.headers, &parts.uri, listen_authority)
        .unwrap_or_else(|_| format!("https://{listen_authority}"));
    Some(match route.key_version() {
        Some(version) => format!("{vault}/keys/{name}/{version}"),
        None => format!("{vault}/keys/{name}"),
    })
}

/// Everything after authentication and throttling; `route` is what the
/// method and path parsed to, refused only after the `api-version` check.
async fn process(
    app: &App,
    caller: &Caller,
    parts: Parts,
    body: Body,
    route: Result<Route, ServiceError>,
) -> Result<Response, ServiceError> {
    let query = query_parameters(&parts.uri)?;
    let route = route?;
    app.calls.record(route.operation());
    let vault_url = vault_url(&parts.headers, &parts.uri, &app.listen_authority)?;
    caller.authorize(&route, vault_url.trim_start_matches("https://"))?;
    let faulted = || app.calls.record(FAULTED);
    if let Some(answer) = app.faults.apply(route.key_name(), route.operation(), faulted).await {
        return Ok(answer);
    }
    let body = read_body(body).await?;
    let ctx = RequestContext { vault_url, path: parts.uri.path().to_owned(), query };
    handlers::handle(app, &ctx, route, &body).await
}

async fn read_body(body: Body) -> Result<axum::body::Bytes, ServiceError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ServiceError::bad_parameter("The request body is unreadable or larger than 1 MiB."))
}

/// The query string, which must carry a plausible `api-version`.
fn query_parameters(uri: &Uri) -> Result<BTreeMap<String, String>, ServiceError> {
    let Query(query) = Query::<BTreeMap<String, String>>::try_from_uri(uri)
        .map_err(|_| ServiceError::bad_parameter("The query string is malformed."))?;
    match query.get("api-version") {
        None => Err(ServiceError::bad_parameter("The api-version query parameter is required.")),
        Some(version)
            if version.is_empty() || !version.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            Err(ServiceError::bad_parameter(format!("The specified api-version {version:?} is not valid.")))
        }
        Some(_) => Ok(query),
    }
}

/// `https://{Host}`: identifiers in responses use the authority the client
/// addressed, as Key Vault's do.
fn vault_url(headers: &HeaderMap, uri: &Uri, fallback: &str) -> Result<String, ServiceError> {
    let host = match headers.get(HOST) {
        Some(value) => value.to_str().map_err(|_| ServiceError::bad_parameter("The Host header is not valid."))?,
        None => uri.authority().map_or(fallback, |authority| authority.as_str()),
    };
    let plausible = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !plausible {
        return Err(ServiceError::bad_parameter("The Host header is not valid."));
    }
    Ok(format!("https://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{CLIENT_REQUEST_ID, REQUEST_ID};
    use crate::{Fault, FaultAction};
    use axum::http::HeaderValue;
    use axum::http::header::AUTHORIZATION;
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

    #[test]
    fn api_version_is_required() {
        let missing: Uri = "/keys/k1?maxresults=2".parse().expect("uri");
        assert_eq!(query_parameters(&missing).unwrap_err().status, 400);
        let odd: Uri = "/keys/k1?api-version=%26x".parse().expect("uri");
        assert_eq!(query_parameters(&odd).unwrap_err().status, 400);
        let fine: Uri = "/keys/k1?api-version=2025-07-01".parse().expect("uri");
        assert_eq!(query_parameters(&fine).expect("valid")["api-version"], "2025-07-01");
    }

    #[test]
    fn vault_url_follows_the_host_header() {
        let uri: Uri = "/keys".parse().expect("uri");
        let mut headers = HeaderMap::new();
        assert_eq!(vault_url(&headers, &uri, "127.0.0.1:9").expect("fallback"), "https://127.0.0.1:9");
        headers.insert(HOST, HeaderValue::from_static("localhost:8443"));
        assert_eq!(vault_url(&headers, &uri, "127.0.0.1:9").expect("host"), "https://localhost:8443");
        headers.insert(HOST, HeaderValue::from_static("evil/path"));
        assert!(vault_url(&headers, &uri, "127.0.0.1:9").is_err());
    }
}
