//! A Key Vault emulator for tests and benchmarks, with an HTTPS admin
//! client that trusts only its certificate.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyvault_emulator::admin::KeyAdmin;
use keyvault_emulator::{self as emulator, DEV_TOKEN, Emulator, EmulatorArgs, RecoveryLevel, Sku};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const CHALLENGE: &str = "Bearer authorization=\"https://login.microsoftonline.com/8a2b5c1e-4f3d-4e6a-9b7c-0d1e2f3a4b5c\", resource=\"https://vault.azure.net\"";

pub fn args(state_dir: &Path, recovery_level: RecoveryLevel) -> EmulatorArgs {
    EmulatorArgs {
        addr: "127.0.0.1:0".parse().expect("addr"),
        state_dir: state_dir.to_path_buf(),
        recovery_level,
        sku: Sku::Premium,
        recoverable_days: 90,
        throttle_rps: None,
        latency: Duration::ZERO,
        tls_names: Vec::new(),
        token: DEV_TOKEN.to_owned(),
    }
}

/// A running emulator and the library's key-management client of it,
/// which trusts only its certificate.
pub struct Vault {
    pub emulator: Emulator,
    pub admin: KeyAdmin,
}

impl Vault {
    pub async fn start(args: EmulatorArgs) -> Self {
        let token = args.token.clone();
        let emulator = emulator::start(args).await.expect("emulator starts");
        let admin = KeyAdmin::new(&emulator.vault_url(), emulator.cert_pem_path(), &token).expect("vault client");
        Self { emulator, admin }
    }

    pub fn url(&self, path: &str) -> String {
        self.admin.url(path)
    }

    pub async fn send(&self, method: Method, url: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.admin.send(method, url, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.admin.call(method, path, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Calls an operation that must succeed and returns its body.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.admin.ok(method, path, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn create_rsa(&self, name: &str) -> Value {
        let key =
            self.ok(Method::POST, &format!("/keys/{name}/create"), Some(json!({"kty": "RSA", "key_size": 2048}))).await;
        assert_kid(&key["key"]["kid"], &self.emulator.vault_url(), name);
        key
    }

    pub async fn wrap(&self, name: &str, version: &str, alg: &str, plain: &[u8]) -> (StatusCode, Value) {
        let body = json!({"alg": alg, "value": URL_SAFE_NO_PAD.encode(plain)});
        self.call(Method::POST, &format!("/keys/{name}/{version}/wrapkey"), Some(body)).await
    }

    pub async fn unwrap(&self, name: &str, version: &str, alg: &str, wrapped: &Value) -> (StatusCode, Value) {
        let body = json!({"alg": alg, "value": wrapped["value"]});
        self.call(Method::POST, &format!("/keys/{name}/{version}/unwrapkey"), Some(body)).await
    }

    pub async fn patch(&self, name: &str, body: Value) -> Value {
        self.admin.update(name, None, body).await.unwrap_or_else(|e| panic!("{e}"))
    }
}

pub fn decode(value: &Value) -> Vec<u8> {
    let text = value.as_str().unwrap_or_else(|| panic!("expected a string, got {value}"));
    assert!(!text.contains('='), "base64url must be unpadded: {text}");
    URL_SAFE_NO_PAD.decode(text).expect("base64url")
}

/// `https://{authority}/keys/{name}/{32 lowercase hex}`; returns the version.
pub fn assert_kid(kid: &Value, vault_url: &str, name: &str) -> String {
    let kid = kid.as_str().expect("kid is a string");
    let prefix = format!("{vault_url}/keys/{name}/");
    let version = kid.strip_prefix(&prefix).unwrap_or_else(|| panic!("kid {kid} must start with {prefix}"));
    assert_eq!(version.len(), 32, "version of {kid}");
    assert!(version.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')), "{kid}");
    version.to_owned()
}

pub fn version_of(bundle: &Value) -> String {
    keyvault_emulator::admin::version_of(bundle).unwrap_or_else(|e| panic!("{e}"))
}

pub fn error_code(body: &Value) -> (&str, Option<&str>) {
    (
        body["error"]["code"].as_str().unwrap_or_else(|| panic!("error body: {body}")),
        body["error"]["innererror"]["code"].as_str(),
    )
}

pub fn now() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs())
        .expect("i64")
}

impl Vault {
    /// `host:port` of the emulator, for `--trusted-vault-host`.
    pub fn host(&self) -> String {
        self.emulator.vault_url().trim_start_matches("https://").to_owned()
    }

    /// keyseal's own vault client, trusting this emulator (for benchmarks
    /// that build a keyring without a worker).
    pub fn client(&self) -> std::sync::Arc<keyseal::keyvault::Vault> {
        use keyseal::keyvault::credential::{VaultCredentialKind, credential};
        let options = keyseal::keyvault::VaultOptions {
            trusted_hosts: vec![self.host()],
            ca_cert: Some(self.emulator.cert_pem_path().to_path_buf()),
            timeout: Duration::from_secs(10),
            retry_budget: Duration::from_secs(45),
            calls_per_second: 380,
        };
        let credential = credential(VaultCredentialKind::StaticToken, None).expect("static token");
        std::sync::Arc::new(keyseal::keyvault::Vault::new(credential, options).expect("vault client"))
    }

    /// The official Rust `KeyClient` of this vault, trusting only its
    /// certificate, with the owner's token: the client customers use.
    pub fn sdk_client(&self) -> azure_security_keyvault_keys::KeyClient {
        use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
        use keyseal::keyvault::credential::{VaultCredentialKind, credential};
        let pem = std::fs::read(self.emulator.cert_pem_path()).expect("emulator certificate");
        let certificate = reqwest::Certificate::from_pem(&pem).expect("PEM certificate");
        let http = reqwest::Client::builder().tls_certs_merge([certificate]).build().expect("HTTPS client");
        // The emulator's challenge names vault.azure.net, which 127.0.0.1
        // can never match, as for any self-hosted vault.
        let mut options = KeyClientOptions { verify_challenge_resource: Some(false), ..KeyClientOptions::default() };
        options.client_options.transport = Some(azure_core::http::Transport::new(std::sync::Arc::new(http)));
        let credential = credential(VaultCredentialKind::StaticToken, None).expect("static token");
        KeyClient::new(&self.emulator.vault_url(), credential, Some(options)).expect("key client")
    }

    /// Worker flags that let it use this emulator as a vault.
    pub fn worker_flags(&self) -> Vec<String> {
        self.emulator.worker_flags()
    }

    /// The key URI (no version) of key `name`.
    pub fn key_uri(&self, name: &str) -> String {
        self.admin.key_uri(name)
    }

    /// Creates a key from a Key Vault create body; returns its version.
    pub async fn create(&self, name: &str, body: Value) -> String {
        self.admin.create(name, body).await.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Runs a Python script of the test suite to its end (killed after
/// `timeout`); returns whether it succeeded and its output, for messages.
pub async fn run_python(command: &mut tokio::process::Command, timeout: Duration) -> (bool, String) {
    let output = tokio::time::timeout(timeout, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("the Python script did not finish within {timeout:?}"))
        .expect("python3 runs");
    let report = format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}
