//! The Key Vault root-key provider: the official `KeyClient` (one per vault
//! host), with bounded timeouts and azure_core's exponential retry for 429
//! and 5xx (1, 2, 4, 8, 16 s, honouring `Retry-After`). Every call is
//! counted and timed in `keyseal_vault_requests_total` and
//! `keyseal_vault_request_seconds`.
//!
//! The client moves bytes: what it wraps and unwraps means nothing to it.
//! Data keys belong to the crypto module, which uses this one, never the
//! other way round.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use azure_core::credentials::TokenCredential;
use azure_core::http::request::options::ClientRequestId;
use azure_core::http::{ClientMethodOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, Key, KeyClientGetKeyOptions, KeyClientUnwrapKeyOptions, KeyClientWrapKeyOptions,
    KeyOperationParameters,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use futures_util::TryStreamExt;
use zeroize::Zeroizing;

use super::KeyUri;
use super::error::{VaultError, classify};
use super::pace::Pace;
use crate::error::ErrorCode;
use crate::telemetry::metrics as m;

/// The RSA-OAEP variants the vault is asked to unwrap with, in the vault's
/// terms: keyseal wraps with RSA-OAEP-256 and reads keys other tools
/// wrapped with RSA-OAEP (SHA-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWrapAlgorithm {
    /// RSA-OAEP with SHA-256 (`RSA-OAEP-256`).
    RsaOaep256,
    /// RSA-OAEP with SHA-1 (`RSA-OAEP`).
    RsaOaep,
}

/// A key as the vault describes it (public parts and attributes only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultKey {
    /// Full key id with version.
    pub kid: String,
    /// The version in `kid`.
    pub version: String,
    /// `RSA`, `RSA-HSM`, `EC`, …
    pub kty: String,
    /// Permitted operations.
    pub key_ops: Vec<String>,
    /// Whether the key is enabled.
    pub enabled: bool,
    /// Not valid before (Unix seconds).
    pub not_before: Option<i64>,
    /// Expiry (Unix seconds).
    pub expires: Option<i64>,
    /// The vault's deletion recovery level (`Recoverable`, …).
    pub recovery_level: Option<String>,
    /// RSA modulus size in bits (0 for other key types).
    pub modulus_bits: usize,
}

/// Settings for reaching vaults.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    /// `host:port` entries allowed besides Azure's vault hosts.
    pub trusted_hosts: Vec<String>,
    /// Extra CA certificate (PEM) to trust, e.g. the emulator's.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Per-request timeout.
    pub timeout: std::time::Duration,
    /// Longest a call keeps retrying throttled and transient answers.
    pub retry_budget: std::time::Duration,
    /// Most calls a second keyseal makes to one vault.
    pub calls_per_second: u32,
}

/// Errors building the vault client.
#[derive(Debug, thiserror::Error)]
pub enum VaultSetupError {
    /// The CA certificate could not be read or parsed.
    #[error("vault CA certificate {path}: {reason}")]
    CaCert {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("building the vault HTTP client: {0}")]
    Http(String),
}

/// Clients for every vault the worker's tenants use.
pub struct Vault {
    credential: Arc<dyn TokenCredential>,
    http: Arc<reqwest::Client>,
    options: VaultOptions,
    /// One client and one call schedule per vault URL.
    clients: Mutex<HashMap<String, Endpoint>>,
}

/// What keyseal keeps per vault it calls.
#[derive(Clone)]
struct Endpoint {
    client: Arc<KeyClient>,
    pace: Arc<Pace>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault client with `credential`; trusts the extra CA, if any, in
    /// addition to the platform's roots.
    pub fn new(credential: Arc<dyn TokenCredential>, options: VaultOptions) -> Result<Self, VaultSetupError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(options.timeout);
        if let Some(path) = &options.ca_cert {
            builder = builder.tls_certs_merge([read_ca(path)?]);
        }
        let http = builder.build().map_err(|e| VaultSetupError::Http(e.to_string()))?;
        Ok(Self { credential, http: Arc::new(http), options, clients: Mutex::new(HashMap::new()) })
    }

    /// The hosts besides Azure's that key URIs may name.
    pub fn trusted_hosts(&self) -> &[String] {
        &self.options.trusted_hosts
    }

    /// The client of `uri`'s vault, once this call's turn in the vault's
    /// schedule has come.
    async fn client(&self, uri: &KeyUri) -> Result<Arc<KeyClient>, VaultError> {
        let endpoint = self.endpoint(uri)?;
        endpoint.pace.turn().await;
        Ok(endpoint.client)
    }

    fn endpoint(&self, uri: &KeyUri) -> Result<Endpoint, VaultError> {
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(endpoint) = clients.get(&uri.vault_url) {
            return Ok(endpoint.clone());
        }
        // Azure hosts must match the challenge's resource; a trusted
        // self-hosted vault (127.0.0.1, localhost) never can. Decided by
        // the parse that checked the host, never by re-reading a string.
        let mut options =
            KeyClientOptions { verify_challenge_resource: Some(!uri.self_hosted), ..KeyClientOptions::default() };
        options.client_options.transport = Some(Transport::new(self.http.clone()));
        options.client_options.retry = RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::seconds(1),
            max_retries: 5,
            max_delay: azure_core::time::Duration::seconds(16),
            max_total_elapsed: azure_core::time::Duration::try_from(self.options.retry_budget)
                .unwrap_or(azure_core::time::Duration::MAX),
        });
        let client = Arc::new(
            KeyClient::new(&uri.vault_url, self.credential.clone(), Some(options))
                .map_err(|e| VaultError::Invalid(e.to_string()))?,
        );
        let endpoint = Endpoint { client, pace: Arc::new(Pace::new(self.options.calls_per_second)) };
        clients.insert(uri.vault_url.clone(), endpoint.clone());
        Ok(endpoint)
    }

    /// Reads a key: `version` or, with `None`, the latest version.
    pub async fn get_key(&self, uri: &KeyUri, version: Option<&str>) -> Result<VaultKey, VaultError> {
        let client = self.client(uri).await?;
        let options = KeyClientGetKeyOptions { key_version: version.map(str::to_owned), ..Default::default() };
        let body = timed("get_key", async { Ok(client.get_key(&uri.name, Some(options)).await?.into_body()) }).await?;
        let key = key_from_answer(&body)?;
        let attributes = key.attributes.unwrap_or_default();
        let jwk = key.key.ok_or_else(|| VaultError::Invalid("no key in the answer".into()))?;
        let kid = jwk.kid.clone().ok_or_else(|| VaultError::Invalid("no kid".into()))?;
        let version = kid.rsplit('/').next().unwrap_or_default().to_owned();
        let modulus_bits = jwk.n.as_ref().map_or(0, |n| {
            let significant = n.iter().skip_while(|b| **b == 0).count();
            significant * 8 - n.iter().find(|b| **b != 0).map_or(0, |b| b.leading_zeros() as usize)
        });
        Ok(VaultKey {
            kid,
            version,
            kty: jwk.kty.map(|k| k.to_string()).unwrap_or_default(),
            key_ops: jwk.key_ops.unwrap_or_default(),
            enabled: attributes.enabled.unwrap_or(false),
            not_before: attributes.not_before.map(|t| t.unix_timestamp()),
            expires: attributes.expires.map(|t| t.unix_timestamp()),
            recovery_level: attributes.recovery_level.map(|l| l.to_string()),
            modulus_bits,
        })
    }

    /// The newest enabled version of a key (by creation time): the version
    /// keyseal uses, whatever version a key URI names. `None` when no
    /// version is enabled.
    pub async fn latest_enabled_version(&self, uri: &KeyUri) -> Result<Option<String>, VaultError> {
        let client = self.client(uri).await?;
        timed("list_key_versions", async {
            let mut pager = client.list_key_properties_versions(&uri.name, None)?;
            let mut newest: Option<(i64, String)> = None;
            while let Some(properties) = pager.try_next().await? {
                let attributes = properties.attributes.unwrap_or_default();
                if attributes.enabled != Some(true) {
                    continue;
                }
                let created = attributes.created.map_or(0, |t| t.unix_timestamp());
                let Some(version) = properties.kid.as_deref().and_then(|kid| kid.rsplit('/').next()) else {
                    continue;
                };
                // Timestamps have one-second resolution: on a tie the
                // later-listed version wins.
                if newest.as_ref().is_none_or(|(at, _)| created >= *at) {
                    newest = Some((created, version.to_owned()));
                }
            }
            Ok(newest.map(|(_, version)| version))
        })
        .await
    }

    /// The key at the version keyseal should use: the latest version when it
    /// is enabled (one call), else the newest enabled one. When no version
    /// is enabled, the latest, so callers see why it is unusable.
    pub async fn newest_enabled_key(&self, uri: &KeyUri) -> Result<VaultKey, VaultError> {
        let latest = self.get_key(uri, None).await?;
        if latest.enabled {
            return Ok(latest);
        }
        match self.latest_enabled_version(uri).await? {
            Some(version) if version != latest.version => self.get_key(uri, Some(&version)).await,
            _ => Ok(latest),
        }
    }

    /// Wraps `plain` (a data key) with RSA-OAEP-256 under `version`;
    /// returns the wrapping key's id and the wrapped bytes. `request_id`,
    /// when given, is sent as `x-ms-client-request-id` (else the SDK makes
    /// one up): the audit records it to match the vault's own log.
    pub async fn wrap(
        &self,
        uri: &KeyUri,
        version: &str,
        plain: &[u8],
        request_id: Option<&str>,
    ) -> Result<(String, Vec<u8>), VaultError> {
        let client = self.client(uri).await?;
        let parameters = KeyOperationParameters {
            algorithm: Some(EncryptionAlgorithm::RsaOaep256),
            value: Some(plain.to_vec()),
            ..Default::default()
        };
        let result = timed("wrapkey", async {
            let options = KeyClientWrapKeyOptions {
                key_version: Some(version.to_owned()),
                method_options: method_options(request_id),
            };
            client.wrap_key(&uri.name, parameters.try_into()?, Some(options)).await?.into_model()
        })
        .await?;
        let kid = result.kid.ok_or_else(|| VaultError::Invalid("no kid".into()))?;
        let wrapped = result.result.ok_or_else(|| VaultError::Invalid("no wrapped key".into()))?;
        Ok((kid, wrapped))
    }

    /// Unwraps bytes wrapped by `version` with `algorithm` (as stored with
    /// them: keys wrapped with RSA-OAEP, SHA-1, stay readable). The result
    /// is zeroized when dropped. `request_id` as for [`Vault::wrap`].
    pub async fn unwrap(
        &self,
        uri: &KeyUri,
        version: &str,
        algorithm: KeyWrapAlgorithm,
        wrapped: &[u8],
        request_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let client = self.client(uri).await?;
        let algorithm = match algorithm {
            KeyWrapAlgorithm::RsaOaep256 => EncryptionAlgorithm::RsaOaep256,
            KeyWrapAlgorithm::RsaOaep => EncryptionAlgorithm::RsaOaep,
        };
        let parameters =
            KeyOperationParameters { algorithm: Some(algorithm), value: Some(wrapped.to_vec()), ..Default::default() };
        let result = timed("unwrapkey", async {
            let options = KeyClientUnwrapKeyOptions { method_options: method_options(request_id) };
            client.unwrap_key(&uri.name, version, parameters.try_into()?, Some(options)).await?.into_model()
        })
        .await?;
        Ok(Zeroizing::new(result.result.ok_or_else(|| VaultError::Invalid("no unwrapped key".into()))?))
    }
}

/// Call options sending `request_id` as `x-ms-client-request-id` (kept
/// across the SDK's retries of the call).
fn method_options(request_id: Option<&str>) -> ClientMethodOptions<'static> {
    let mut options = ClientMethodOptions::default();
    if let Some(id) = request_id {
        options.context.insert(ClientRequestId::new(id.to_owned()));
    }
    options
}

fn read_ca(path: &Path) -> Result<reqwest::Certificate, VaultSetupError> {
    let fail = |reason: String| VaultSetupError::CaCert { path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    reqwest::Certificate::from_pem(&pem).map_err(|e| fail(e.to_string()))
}

/// Runs one vault call, recording its outcome and latency.
/// The last second Key Vault's `NumericDate` attributes can hold in the
/// SDK's time type (9999-12-31T23:59:59Z).
const LAST_NUMERIC_DATE: i64 = 253_402_300_799;

/// A key from the vault's answer. An `exp`, `nbf`, `created` or `updated`
/// past the year 9999 (Key Vault takes any number) would fail the whole
/// answer in the SDK's model, and a key that cannot be read looks like an
/// outage: such a time is read as 9999-12-31T23:59:59Z, what keyseal would
/// show for it anyway.
fn key_from_answer(body: &azure_core::http::response::ResponseBody) -> Result<Key, VaultError> {
    let invalid = |e: &dyn std::fmt::Display| VaultError::Invalid(format!("the key in the answer: {e}"));
    let mut answer: serde_json::Value = serde_json::from_slice(body.as_ref()).map_err(|e| invalid(&e))?;
    if let Some(attributes) = answer.get_mut("attributes").and_then(serde_json::Value::as_object_mut) {
        for time in ["exp", "nbf", "created", "updated"] {
            if let Some(at) = attributes.get(time).and_then(serde_json::Value::as_i64) {
                attributes.insert(time.to_owned(), at.clamp(0, LAST_NUMERIC_DATE).into());
            }
        }
    }
    serde_json::from_value(answer).map_err(|e| invalid(&e))
}

async fn timed<T>(
    operation: &'static str,
    call: impl std::future::Future<Output = azure_core::Result<T>>,
) -> Result<T, VaultError> {
    let started = Instant::now();
    let result = call.await.map_err(classify);
    let outcome = match &result {
        Ok(_) => "ok",
        Err(VaultError::Throttled) => "throttled",
        Err(VaultError::Unreachable(_)) => "unreachable",
        Err(_) => "error",
    };
    m::vault_request(operation, outcome, started.elapsed());
    result
}

impl ErrorCode for VaultSetupError {
    fn code(&self) -> &'static str {
        match self {
            Self::CaCert { .. } => "vault_ca_cert_invalid",
            Self::Http(_) => "vault_client_failed",
        }
    }

    fn is_retryable(&self) -> bool {
        false
    }
}
