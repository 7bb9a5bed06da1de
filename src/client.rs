//! The admin API client behind `keyseal tenant`, `keyseal get` and
//! `keyseal sweep`: it finds the server with `--server`/`KEYSEAL_SERVER`
//! and sends `KEYSEAL_ADMIN_TOKEN` when set.

use reqwest::{Method, StatusCode};

/// Errors talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach keyseal at {url}: {source}")]
    Unreachable {
        /// URL tried.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
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
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self { base: base.trim_end_matches('/').to_owned(), token, http: reqwest::Client::new() }
    }

    async fn send(&self, method: Method, path: &str) -> Result<bytes::Bytes, ClientError> {
        self.send_json(method, path, None).await
    }

    async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<bytes::Bytes, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let unreachable = |source| ClientError::Unreachable { url: url.clone(), source };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
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
        Ok(serde_json::from_value(progress["running"].clone()).ok())
    }
}

/// Percent-encodes a path segment (record ids may contain `/`, `?`, spaces).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
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
    }
}
