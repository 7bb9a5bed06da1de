//! The key owner's side of a vault: create, rotate, list and update keys
//! over the Key Vault REST API, trusting only the emulator's certificate.
//!
//! keyseal itself never manages a customer's key (it only reads, wraps and
//! unwraps through the official client). `keyseal demo` and the tests play
//! the customer who does, so this client lives in the library, next to the
//! emulator it talks to, instead of being copied into each of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The Key Vault REST API version this client sends (the emulator accepts
/// any plausible one; this is the one the official SDKs send today).
pub const API_VERSION: &str = "2025-07-01";

/// How long one management request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a key-management call failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyAdminError {
    /// The vault's certificate could not be read.
    #[error("reading the vault certificate {path}: {source}")]
    Certificate {
        /// The PEM file the client was told to trust.
        path: PathBuf,
        /// Why reading it failed.
        #[source]
        source: std::io::Error,
    },
    /// The HTTPS client could not be built (e.g. the PEM is not a certificate).
    #[error("building the vault HTTPS client: {0}")]
    Client(#[source] reqwest::Error),
    /// The request did not get an answer.
    #[error("{method} {url}: {source}")]
    Request {
        /// The method of the request that went unanswered.
        method: Method,
        /// Its absolute URL.
        url: String,
        /// Why no answer came (connection, TLS, timeout).
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not the JSON Key Vault sends.
    #[error("{method} {url}: the answer ({status}) is not JSON: {reason}")]
    Body {
        /// The method of the request.
        method: Method,
        /// Its absolute URL.
        url: String,
        /// The status the vault answered with.
        status: StatusCode,
        /// Why the body is not JSON.
        reason: String,
    },
    /// The vault refused the operation.
    #[error("{method} {path}: {status}: {body}")]
    Refused {
        /// The method of the refused operation.
        method: Method,
        /// Its path, without the vault URL and api-version.
        path: String,
        /// The status the vault answered with.
        status: StatusCode,
        /// Key Vault's error body, naming the code and the reason.
        body: Value,
    },
    /// A key bundle without the versioned `kid` every bundle carries.
    #[error("a key bundle without a versioned kid: {0}")]
    NoKeyId(Value),
}

/// One version of a key as a version list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    /// The version id (the last segment of its `kid`).
    pub version: String,
    /// Whether the version may be used.
    pub enabled: bool,
}

/// A key-management client of one vault, authenticated with a bearer token.
#[derive(Clone)]
pub struct KeyAdmin {
    vault_url: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for KeyAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAdmin").field("vault_url", &self.vault_url).field("token", &"<redacted>").finish()
    }
}

impl KeyAdmin {
    /// A client of the vault at `vault_url` (e.g. `https://127.0.0.1:8443`)
    /// trusting only the certificate in `cert_pem` and sending `token`.
    pub fn new(vault_url: &str, cert_pem: &Path, token: &str) -> Result<Self, KeyAdminError> {
        let pem = std::fs::read(cert_pem)
            .map_err(|source| KeyAdminError::Certificate { path: cert_pem.to_path_buf(), source })?;
        let certificate = reqwest::Certificate::from_pem(&pem).map_err(KeyAdminError::Client)?;
        let http = reqwest::Client::builder()
            .tls_certs_only([certificate])
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(KeyAdminError::Client)?;
        Ok(Self { vault_url: vault_url.trim_end_matches('/').to_owned(), token: token.to_owned(), http })
    }

    /// The HTTPS client itself, for requests that must go without the
    /// token (tests of the authentication challenge).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The absolute URL of `path` (which may carry a query) with the API version.
    pub fn url(&self, path: &str) -> String {
        let separator = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{separator}api-version={API_VERSION}", self.vault_url)
    }

    /// The key URI (no version) of key `name`: what a tenant enables.
    pub fn key_uri(&self, name: &str) -> String {
        format!("{}/keys/{name}", self.vault_url)
    }

    /// Sends a request to an absolute `url` (e.g. a `nextLink`) and returns
    /// the status and JSON body (`null` when empty), whatever the status.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), KeyAdminError> {
        let mut request = self.http.request(method.clone(), url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let failed = |source| KeyAdminError::Request { method: method.clone(), url: url.to_owned(), source };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let text = response.text().await.map_err(failed)?;
        if text.is_empty() {
            return Ok((status, Value::Null));
        }
        let json = serde_json::from_str(&text).map_err(|e| KeyAdminError::Body {
            method,
            url: url.to_owned(),
            status,
            reason: e.to_string(),
        })?;
        Ok((status, json))
    }

    /// Calls the operation at `path` and returns the status and body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), KeyAdminError> {
        self.send(method, &self.url(path), body).await
    }

    /// Calls an operation that must succeed (200) and returns its body.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, KeyAdminError> {
        let (status, json) = self.call(method.clone(), path, body).await?;
        if status != StatusCode::OK {
            return Err(KeyAdminError::Refused { method, path: path.to_owned(), status, body: json });
        }
        Ok(json)
    }

    /// Creates key `name` (or a new version of it) from a Key Vault create
    /// body; returns the new version.
    pub async fn create(&self, name: &str, body: Value) -> Result<String, KeyAdminError> {
        let bundle = self.ok(Method::POST, &format!("/keys/{name}/create"), Some(body)).await?;
        version_of(&bundle)
    }

    /// Creates an RSA-2048 key (or a new version) permitted to wrap and
    /// unwrap, the shape keyseal accepts; returns the new version.
    pub async fn create_rsa(&self, name: &str) -> Result<String, KeyAdminError> {
        let body = json!({"kty": "RSA", "key_size": 2048, "key_ops": ["wrapKey", "unwrapKey"]});
        self.create(name, body).await
    }

    /// Rotates key `name` (Key Vault's rotate operation); returns the new version.
    pub async fn rotate(&self, name: &str) -> Result<String, KeyAdminError> {
        let bundle = self.ok(Method::POST, &format!("/keys/{name}/rotate"), None).await?;
        version_of(&bundle)
    }

    /// Every version of key `name`, following the list's pages.
    pub async fn versions(&self, name: &str) -> Result<Vec<KeyVersion>, KeyAdminError> {
        let path = format!("/keys/{name}/versions");
        let mut url = self.url(&path);
        let mut versions = Vec::new();
        loop {
            let (status, page) = self.send(Method::GET, &url, None).await?;
            if status != StatusCode::OK {
                return Err(KeyAdminError::Refused { method: Method::GET, path, status, body: page });
            }
            for item in page["value"].as_array().into_iter().flatten() {
                versions.push(KeyVersion {
                    version: last_segment(&item["kid"]).ok_or_else(|| KeyAdminError::NoKeyId(item.clone()))?,
                    enabled: item["attributes"]["enabled"].as_bool().unwrap_or(false),
                });
            }
            match page["nextLink"].as_str() {
                Some(next) => url = next.to_owned(),
                None => return Ok(versions),
            }
        }
    }

    /// Updates key `name` (its latest version when `version` is `None`)
    /// with a Key Vault update body (`attributes`, `key_ops`, `tags`).
    pub async fn update(&self, name: &str, version: Option<&str>, body: Value) -> Result<Value, KeyAdminError> {
        let path = format!("/keys/{name}/{}", version.unwrap_or_default());
        self.ok(Method::PATCH, &path, Some(body)).await
    }

    /// Enables or disables one version of key `name` (the latest when `None`).
    pub async fn set_enabled(&self, name: &str, version: Option<&str>, enabled: bool) -> Result<(), KeyAdminError> {
        self.update(name, version, json!({"attributes": {"enabled": enabled}})).await?;
        Ok(())
    }
}

/// The version of a key bundle: the last segment of its `key.kid`.
pub fn version_of(bundle: &Value) -> Result<String, KeyAdminError> {
    last_segment(&bundle["key"]["kid"]).ok_or_else(|| KeyAdminError::NoKeyId(bundle.clone()))
}

fn last_segment(kid: &Value) -> Option<String> {
    let kid = kid.as_str()?;
    let (_, version) = kid.rsplit_once('/')?;
    (!version.is_empty()).then(|| version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_last_segment_of_the_kid() {
        let bundle = json!({"key": {"kid": "https://v/keys/k/0123abcd"}});
        assert_eq!(version_of(&bundle).unwrap(), "0123abcd");
        assert!(version_of(&json!({"key": {"kid": "https://v/keys/k/"}})).is_err());
        assert!(version_of(&json!({})).is_err());
    }
}
