//! The admin API's client: behind `keyseal tenant`, `keyseal get`,
//! `keyseal records` and `keyseal sweep` (which find the server with
//! `--server`/`KEYSEAL_SERVER` and send `KEYSEAL_ADMIN_TOKEN` when set),
//! and what the tests call a worker with.
//!
//! Requests go out over hyper's HTTP/1.1 connection (TLS by rustls with the
//! platform's roots for `https://`) with the request target exactly as
//! built here: a WHATWG URL client (reqwest) would resolve a record id `.`
//! or `..` (even written `%2E%2E`) as a dot segment and ask for another
//! resource.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Errors talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached, or its answer not read.
    #[error(
        "no keyseal at {url} ({reason}): start one with `cargo xtask demo` or `keyseal run`, or point --server \
         (KEYSEAL_SERVER) at one"
    )]
    Unreachable {
        /// URL tried.
        url: String,
        /// Cause.
        reason: String,
    },
    /// The server answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Stable error code.
        code: String,
        /// What to fix.
        message: String,
    },
}

/// A client of one worker's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
}

impl AdminClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self { base: base.trim_end_matches('/').to_owned(), token }
    }

    async fn send(&self, method: Method, path: &str) -> Result<Bytes, ClientError> {
        self.send_json(method, path, None).await
    }

    async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes, ClientError> {
        let url = format!("{}{}", self.base, path);
        let unreachable = |reason: String| ClientError::Unreachable { url: url.clone(), reason };
        let uri: Uri = url.parse().map_err(|e| unreachable(format!("not a URL: {e}")))?;
        let mut request = Request::builder().method(method).uri(path);
        if let Some(authority) = uri.authority() {
            request = request.header(header::HOST, authority.as_str());
        }
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| unreachable("KEYSEAL_ADMIN_TOKEN is not a valid header value".into()))?;
            request = request.header(header::AUTHORIZATION, value);
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&body).expect("JSON serialises"))
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body)).map_err(|e| unreachable(e.to_string()))?;
        let (status, body) = exchange(&uri, request).await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(body);
        }
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let field = |name: &str| parsed["error"][name].as_str().unwrap_or_default().to_owned();
        Err(ClientError::Api { status, code: field("code"), message: field("message") })
    }

    /// `GET /v1/tenants/{tenant}` as JSON.
    pub async fn tenant_status(&self, tenant: &str) -> Result<serde_json::Value, ClientError> {
        let body = self.send(Method::GET, &format!("/v1/tenants/{}", encode(tenant))).await?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// The payload bytes of one record.
    pub async fn record(&self, tenant: &str, record_id: &str) -> Result<bytes::Bytes, ClientError> {
        self.send(Method::GET, &format!("/v1/tenants/{}/records/{}", encode(tenant), encode(record_id))).await
    }

    /// One page of `GET /v1/tenants/{tenant}/{listing}` (`records` or
    /// `audit`); `query` holds any of `from`, `to`, `after` and `limit`.
    pub async fn page(
        &self,
        tenant: &str,
        listing: &str,
        query: &[(&str, &str)],
    ) -> Result<serde_json::Value, ClientError> {
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
        let body = self.send(Method::GET, &format!("/v1/tenants/{}/{listing}?{query}", encode(tenant))).await?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// `DELETE /v1/tenants/{tenant}?confirm={confirm}`: erase the tenant.
    pub async fn erase(&self, tenant: &str, confirm: &str) -> Result<serde_json::Value, ClientError> {
        let confirm = url::form_urlencoded::Serializer::new(String::new()).append_pair("confirm", confirm).finish();
        let body = self.send(Method::DELETE, &format!("/v1/tenants/{}?{confirm}", encode(tenant))).await?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// `DELETE /v1/tenants/{tenant}/records/{record_id}`.
    pub async fn delete_record(&self, tenant: &str, record_id: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &format!("/v1/tenants/{}/records/{}", encode(tenant), encode(record_id))).await?;
        Ok(())
    }

    /// `PUT /v1/tenants/{tenant}/encryption`: enable the tenant's own key.
    pub async fn enable(&self, tenant: &str, key_uri: &str) -> Result<serde_json::Value, ClientError> {
        let path = format!("/v1/tenants/{}/encryption", encode(tenant));
        let body = self.send_json(Method::PUT, &path, Some(serde_json::json!({"keyUri": key_uri}))).await?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// `DELETE /v1/tenants/{tenant}/encryption`: back to managed keys.
    pub async fn disable(&self, tenant: &str) -> Result<serde_json::Value, ClientError> {
        let body = self.send(Method::DELETE, &format!("/v1/tenants/{}/encryption", encode(tenant))).await?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// `GET /v1/tenants/{tenant}/retention`.
    pub async fn retention(&self, tenant: &str) -> Result<serde_json::Value, ClientError> {
        let body = self.send(Method::GET, &format!("/v1/tenants/{}/retention", encode(tenant))).await?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// `PUT /v1/tenants/{tenant}/retention`: `max_age` (humantime), or `None` for the default.
    pub async fn set_retention(&self, tenant: &str, max_age: Option<&str>) -> Result<serde_json::Value, ClientError> {
        let path = format!("/v1/tenants/{}/retention", encode(tenant));
        let body = self.send_json(Method::PUT, &path, Some(serde_json::json!({"maxAge": max_age}))).await?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// `GET /v1/shards`: each shard's owner, since when and its tenant count.
    pub async fn shards(&self) -> Result<serde_json::Value, ClientError> {
        let body = self.send(Method::GET, "/v1/shards").await?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// `POST /v1/admin/replay`: rebuild projections from the log and compare.
    pub async fn replay(&self) -> Result<serde_json::Value, ClientError> {
        let body = self.send(Method::POST, "/v1/admin/replay").await?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// `POST /v1/sweeps?kind=`: runs a sweep (`seal`, `reencrypt` or
    /// `scrub`) now and returns its summary.
    pub async fn sweep(&self, kind: &str) -> Result<serde_json::Value, ClientError> {
        let body = self.send(Method::POST, &format!("/v1/sweeps?kind={}", encode(kind))).await?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// `GET /v1/sweeps/progress`: the running maintenance sweep, if any.
    pub async fn sweep_progress(&self) -> Result<Option<crate::sweeps::ProgressSnapshot>, ClientError> {
        let body = self.send(Method::GET, "/v1/sweeps/progress").await?;
        let progress: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        // Several shards answer one entry each: show the first running one.
        let running = match progress["shards"].as_array() {
            Some(shards) => shards.iter().map(|s| s["running"].clone()).find(|r| !r.is_null()).unwrap_or_default(),
            None => progress["running"].clone(),
        };
        Ok(serde_json::from_value(running).ok())
    }
}

/// Sends `request` on a new connection to `uri`'s host (one request per
/// CLI command, so no pool) and reads the whole answer.
async fn exchange(uri: &Uri, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
    let host = uri.host().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']');
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("the server URL must be http:// or https://".into()),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
    if !tls {
        return over(TokioIo::new(tcp), request).await;
    }
    let config = <rustls::ClientConfig as rustls_platform_verifier::ConfigVerifierExt>::with_platform_verifier()
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let stream =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    over(TokioIo::new(stream), request).await
}

async fn over<T>(io: T, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// Percent-encodes a path segment: everything but unreserved characters
/// (record ids may contain `/`, `?`, spaces), and every `.` of a segment
/// that is only dots, so `.` and `..` stay record ids and never become
/// dot segments.
fn encode(segment: &str) -> String {
    let dots_only = segment.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~') || (byte == b'.' && !dots_only) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(super::encode("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
        assert_eq!(super::encode("."), "%2E");
        assert_eq!(super::encode(".."), "%2E%2E");
        assert_eq!(super::encode("..."), "%2E%2E%2E");
        assert_eq!(super::encode("a..b.txt"), "a..b.txt");
    }
}
