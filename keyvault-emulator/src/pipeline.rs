//! The request pipeline. Every Key Vault request meets, in order: the
//! configured latency, bearer authentication (401 + challenge before the
//! body is looked at, as the SDKs' first tokenless request needs),
//! throttling, the mandatory `api-version`, routing, the caller's access
//! policy, injected faults, then its handler. Every request that passes
//! authentication is written to the `audit` log once answered, and every
//! answer carries Key Vault's `x-ms-request-id` (and the client's
//! `x-ms-client-request-id`, echoed). Requests under `/_emulator/` are the
//! owner's control routes and skip all but authentication.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header::HOST};
use axum::response::{IntoResponse, Response};

use super::access::Caller;
use super::app::App;
use super::audit::{self, AuditEvent};
use super::calls::{FAULTED, THROTTLED};
use super::control;
use super::error::ServiceError;
use super::handlers::{self, RequestContext};
use super::routes::Route;
use super::throttle;

/// Request bodies are small JSON documents; anything bigger is refused.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Answers one request, whatever its method and path: the server's router
/// sends every request here.
pub(crate) async fn handle_request(State(app): State<Arc<App>>, request: Request) -> Response {
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
    use axum::http::HeaderValue;

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
