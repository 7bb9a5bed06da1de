//! The request pipeline and the server's tasks. Every Key Vault request
//! meets, in order: the configured latency, bearer authentication (401 +
//! challenge before the body is looked at, as the SDKs' first tokenless
//! request needs), throttling, the mandatory `api-version`, routing, the
//! caller's access policy, injected faults, then its handler. Requests under
//! `/_emulator/` are the owner's control routes and skip all but
//! authentication. Alongside, housekeeping purges deleted keys whose
//! retention ended and rotates keys whose rotation policy says so.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Uri, header::HOST};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::access::Caller;
use super::auth::BearerAuth;
use super::backup::BackupSealer;
use super::calls::{CallCounter, FAULTED, THROTTLED};
use super::clock::Clock;
use super::control;
use super::error::ServiceError;
use super::faults::Faults;
use super::handlers::generate;
use super::handlers::{self, RequestContext};
use super::routes::Route;
use super::throttle::{self, Throttle};
use super::tls::TlsListener;
use super::vault::Vault;
use super::{EmulatorArgs, Sku};

/// Request bodies are small JSON documents; anything bigger is refused.
const MAX_BODY_BYTES: usize = 1 << 20;
/// How often the vault looks for deleted keys past their retention and
/// rotations its policies say are due. Both checks are scans of memory, and
/// a test that moves the clock sees their effect within this.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Everything a request can touch.
pub(crate) struct App {
    pub(crate) vault: Vault,
    pub(crate) calls: CallCounter,
    pub(crate) auth: BearerAuth,
    pub(crate) faults: Faults,
    pub(crate) clock: Clock,
    pub(crate) backups: BackupSealer,
    pub(crate) sku: Sku,
    throttle: Option<Throttle>,
    latency: Duration,
    /// `host:port` for the rare request without a Host header.
    listen_authority: String,
}

impl App {
    /// `shutdown` is the server's: it also ends requests hanging on a fault.
    pub(crate) fn new(
        vault: Vault,
        backups: BackupSealer,
        args: &EmulatorArgs,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            vault,
            calls: CallCounter::default(),
            auth: BearerAuth::new(args.token.clone()),
            faults: Faults::new(shutdown),
            clock: Clock::default(),
            backups,
            sku: args.sku,
            throttle: args.throttle_rps.map(|rps| Throttle::new(rps, Instant::now())),
            latency: args.latency,
            listen_authority: addr.to_string(),
        }
    }
}

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

/// A Key Vault request.
async fn vault_request(app: &App, request: Request) -> Response {
    if !app.latency.is_zero() {
        tokio::time::sleep(app.latency).await;
    }
    let caller = match app.auth.check(request.headers()) {
        Ok(caller) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    if let Some(throttle) = &app.throttle {
        if let Err(wait) = throttle.admit(Instant::now()) {
            app.calls.record(THROTTLED);
            return throttle::too_many_requests(wait);
        }
    }
    process(app, &caller, request).await.unwrap_or_else(IntoResponse::into_response)
}

/// Everything after authentication and throttling.
async fn process(app: &App, caller: &Caller, request: Request) -> Result<Response, ServiceError> {
    let (parts, body) = request.into_parts();
    let query = query_parameters(&parts.uri)?;
    let route = Route::parse(parts.method.as_str(), parts.uri.path())?;
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

async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, ServiceError> {
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
