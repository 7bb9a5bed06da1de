//! The Key Vault emulator over real HTTPS: authentication challenge, key
//! lifecycle, wrap/unwrap cryptography, attribute rules, soft delete and
//! purge, throttling, persistence across restarts, the official Python
//! SDK against it, injected faults and per-identity access policies.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;
#[path = "emulator/faults.rs"]
mod faults;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::vault::*;
use keyvault_emulator::admin::KeyAdmin;
use keyvault_emulator::{DEV_TOKEN, Fault, FaultAction, KEY_PERMISSIONS, RecoveryLevel};
use reqwest::{Method, StatusCode};
use rsa::sha2::Sha256;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_token_get_key_vaults_bearer_challenge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let url = vault.url("/keys/k1/");

    for token in [None, Some("not-the-token")] {
        let mut request = vault.admin.http().get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"].to_str().expect("ascii"), CHALLENGE);
        let body: Value = response.json().await.expect("JSON error body");
        assert_eq!(error_code(&body).0, "Unauthorized");
    }

    // The challenge comes before any look at the body, as SDKs need.
    let response =
        vault.admin.http().post(vault.url("/keys/k1/create")).body("not json").send().await.expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // With the token, a missing api-version is a bad request.
    let no_version = format!("{}/keys", vault.emulator.vault_url());
    let (status, body) = vault.send(Method::GET, &no_version, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body).0, "BadParameter");
    assert!(vault.emulator.calls().is_empty(), "refused requests are not operations");
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrap_and_unwrap_round_trip_with_rsa_oaep_256_rsa_oaep_and_rsa1_5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let created = vault.create_rsa("tenant-a").await;

    assert_eq!(created["key"]["kty"], "RSA");
    assert_eq!(created["key"]["key_ops"], json!(["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]));
    assert_eq!(created["key"]["e"], "AQAB");
    assert_eq!(decode(&created["key"]["n"]).len(), 256);
    let attributes = &created["attributes"];
    assert_eq!(attributes["enabled"], true);
    assert_eq!(attributes["recoveryLevel"], "Recoverable");
    assert_eq!(attributes["recoverableDays"], 90);
    assert!(attributes["created"].is_i64() && attributes["updated"].is_i64());
    assert!(attributes.get("exp").is_none() && attributes.get("nbf").is_none());

    // Latest by the SDK's trailing-slash form is the created version.
    let latest = vault.ok(Method::GET, "/keys/tenant-a/", None).await;
    assert_eq!(latest["key"]["kid"], created["key"]["kid"]);
    let version = version_of(&created);

    let data_key = [0x5au8; 32];
    for alg in ["RSA-OAEP-256", "RSA-OAEP", "RSA1_5"] {
        // Empty version segment (latest), as the Rust SDK sends it.
        let (status, wrapped) = vault.wrap("tenant-a", "", alg, &data_key).await;
        assert_eq!(status, StatusCode::OK, "{alg}: {wrapped}");
        assert_eq!(wrapped["kid"], created["key"]["kid"]);
        assert_eq!(decode(&wrapped["value"]).len(), 256);
        let (status, unwrapped) = vault.unwrap("tenant-a", &version, alg, &wrapped).await;
        assert_eq!(status, StatusCode::OK, "{alg}: {unwrapped}");
        assert_eq!(decode(&unwrapped["value"]), data_key, "{alg}");
    }
    // The two algorithms are really different.
    let (_, sha256_wrapped) = vault.wrap("tenant-a", &version, "RSA-OAEP-256", &data_key).await;
    let (status, body) = vault.unwrap("tenant-a", &version, "RSA-OAEP", &sha256_wrapped).await;
    assert_eq!((status, error_code(&body).0), (StatusCode::BAD_REQUEST, "BadParameter"));

    let calls = vault.emulator.calls();
    assert_eq!(calls.get("create_key"), Some(&1));
    assert_eq!(calls.get("get_key"), Some(&1));
    assert_eq!(calls.get("wrapkey"), Some(&4));
    assert_eq!(calls.get("unwrapkey"), Some(&4));
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_wrapped_locally_with_the_public_jwk_unwraps_in_the_vault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    vault.create_rsa("local-wrap").await;
    let key = vault.ok(Method::GET, "/keys/local-wrap", None).await;

    let n = decode(&key["key"]["n"]);
    let e = decode(&key["key"]["e"]);
    let public =
        rsa::PublicKey::new(rsa::BoxedUint::from_be_slice_vartime(&n), rsa::BoxedUint::from_be_slice_vartime(&e))
            .expect("JWK n/e form an RSA public key");
    let data_key = [0x17u8; 32];
    let wrapped = public.oaep_encrypt::<Sha256>(&data_key).expect("local wrap");

    let body = json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode(&wrapped)});
    let unwrapped = vault.ok(Method::POST, "/keys/local-wrap//unwrapkey", Some(body)).await;
    assert_eq!(decode(&unwrapped["value"]), data_key);
    assert_eq!(vault.emulator.calls().get("wrapkey"), None);
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_makes_a_new_latest_version_and_old_versions_still_unwrap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let first = vault.create_rsa("rolling").await;
    let v1 = version_of(&first);
    let data_key = [9u8; 32];
    let (_, wrapped_by_v1) = vault.wrap("rolling", "", "RSA-OAEP-256", &data_key).await;

    let rotated = vault.ok(Method::POST, "/keys/rolling/rotate", None).await;
    let v2 = assert_kid(&rotated["key"]["kid"], &vault.emulator.vault_url(), "rolling");
    assert_ne!(v1, v2);
    assert_ne!(rotated["key"]["n"], first["key"]["n"], "rotation makes new key material");
    assert_eq!(rotated["key"]["key_ops"], first["key"]["key_ops"]);
    let latest = vault.ok(Method::GET, "/keys/rolling/", None).await;
    assert_eq!(version_of(&latest), v2);

    let (status, unwrapped) = vault.unwrap("rolling", &v1, "RSA-OAEP-256", &wrapped_by_v1).await;
    assert_eq!(status, StatusCode::OK, "{unwrapped}");
    assert_eq!(decode(&unwrapped["value"]), data_key);
    let (_, wrapped_latest) = vault.wrap("rolling", "", "RSA-OAEP-256", &data_key).await;
    assert_eq!(wrapped_latest["kid"], rotated["key"]["kid"]);

    // Both versions listed, one per page with maxresults=1.
    let page = vault.ok(Method::GET, "/keys/rolling/versions?maxresults=1", None).await;
    assert_eq!(page["value"].as_array().expect("value").len(), 1);
    let next = page["nextLink"].as_str().expect("a second page").to_owned();
    let (status, second) = vault.send(Method::GET, &next, None).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert!(second["nextLink"].is_null());
    let versions: Vec<String> = [&page, &second]
        .iter()
        .map(|p| p["value"][0]["kid"].as_str().expect("kid").rsplit('/').next().expect("v").to_owned())
        .collect();
    assert_eq!(versions, [v1, v2]);
    assert_eq!(second["value"][0]["attributes"]["enabled"], true);

    let keys = vault.ok(Method::GET, "/keys", None).await;
    assert_eq!(keys["value"][0]["kid"], format!("{}/keys/rolling", vault.emulator.vault_url()));
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_rules_refuse_crypto_with_key_vaults_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    vault.create_rsa("rules").await;
    let data_key = [1u8; 32];
    let (_, wrapped) = vault.wrap("rules", "", "RSA-OAEP-256", &data_key).await;

    // Disabled: readable, but no operation at all.
    let disabled = vault.patch("rules", json!({"attributes": {"enabled": false}})).await;
    assert_eq!(disabled["attributes"]["enabled"], false);
    let (status, body) = vault.wrap("rules", "", "RSA-OAEP-256", &data_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), ("Forbidden", Some("KeyDisabled")));
    let (status, _) = vault.unwrap("rules", "", "RSA-OAEP-256", &wrapped).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let read = vault.ok(Method::GET, "/keys/rules/", None).await;
    assert_eq!(read["attributes"]["enabled"], false);
    vault.patch("rules", json!({"attributes": {"enabled": true}})).await;

    // key_ops without unwrapKey: unwrap refused, wrap still fine.
    let narrowed = vault.patch("rules", json!({"key_ops": ["wrapKey"]})).await;
    assert_eq!(narrowed["key"]["key_ops"], json!(["wrapKey"]));
    let (status, body) = vault.unwrap("rules", "", "RSA-OAEP-256", &wrapped).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), ("Forbidden", Some("KeyOperationForbidden")));
    let (status, _) = vault.wrap("rules", "", "RSA-OAEP-256", &data_key).await;
    assert_eq!(status, StatusCode::OK);
    vault.patch("rules", json!({"key_ops": ["wrapKey", "unwrapKey"]})).await;

    // Expired: no new wraps, but existing data stays readable.
    let expired = vault.patch("rules", json!({"attributes": {"exp": now() - 60}})).await;
    assert!(expired["attributes"]["exp"].is_i64());
    let (status, body) = vault.wrap("rules", "", "RSA-OAEP-256", &data_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), ("Forbidden", Some("KeyExpired")));
    let (status, unwrapped) = vault.unwrap("rules", "", "RSA-OAEP-256", &wrapped).await;
    assert_eq!(status, StatusCode::OK, "{unwrapped}");

    // Not yet valid.
    vault
        .ok(Method::POST, "/keys/future/create", Some(json!({"kty": "RSA", "attributes": {"nbf": now() + 3600}})))
        .await;
    let (status, body) = vault.wrap("future", "", "RSA-OAEP-256", &data_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), ("Forbidden", Some("KeyNotYetValid")));

    // Unknown keys and versions.
    for path in ["/keys/missing/", "/keys/rules/00000000000000000000000000000000"] {
        let (status, body) = vault.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(&body).0, "KeyNotFound");
        assert!(body["error"]["message"].as_str().expect("message").contains("was not found"));
    }
    let (status, body) = vault.wrap("missing", "", "RSA-OAEP-256", &data_key).await;
    assert_eq!((status, error_code(&body).0), (StatusCode::NOT_FOUND, "KeyNotFound"));

    // Malformed requests are 400 BadParameter; AES is Managed HSM only.
    let (status, body) = vault.wrap("rules", "", "A256GCM", &data_key).await;
    assert_eq!((status, error_code(&body).0), (StatusCode::BAD_REQUEST, "BadParameter"));
    let (status, _) = vault.call(Method::POST, "/keys/odd/create", Some(json!({"kty": "RSA", "key_size": 1024}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec_keys_can_be_created_to_test_unsupported_key_types() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let key = vault.ok(Method::POST, "/keys/ec/create", Some(json!({"kty": "EC", "crv": "P-256"}))).await;
    assert_eq!(key["key"]["kty"], "EC");
    assert_eq!(key["key"]["crv"], "P-256");
    assert_eq!(decode(&key["key"]["x"]).len(), 32);
    assert_eq!(decode(&key["key"]["y"]).len(), 32);
    assert_eq!(key["key"]["key_ops"], json!(["sign", "verify"]));
    let (status, body) = vault.wrap("ec", "", "RSA-OAEP-256", &[0u8; 32]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_recover_and_purge_protection_under_recoverable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let created = vault.create_rsa("doomed").await;
    let vault_url = vault.emulator.vault_url();

    let deleted = vault.ok(Method::DELETE, "/keys/doomed", None).await;
    assert_eq!(deleted["recoveryId"], format!("{vault_url}/deletedkeys/doomed"));
    let deleted_date = deleted["deletedDate"].as_i64().expect("deletedDate");
    assert_eq!(deleted["scheduledPurgeDate"].as_i64().expect("scheduledPurgeDate"), deleted_date + 90 * 86_400);
    assert_eq!(deleted["key"]["kid"], created["key"]["kid"]);

    let (status, body) = vault.call(Method::GET, "/keys/doomed/", None).await;
    assert_eq!((status, error_code(&body).0), (StatusCode::NOT_FOUND, "KeyNotFound"));
    let (status, _) = vault.wrap("doomed", "", "RSA-OAEP-256", &[0u8; 32]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let listed = vault.ok(Method::GET, "/keys", None).await;
    assert_eq!(listed["value"], json!([]));

    let fetched = vault.ok(Method::GET, "/deletedkeys/doomed", None).await;
    assert_eq!(fetched["recoveryId"], deleted["recoveryId"]);
    let deleted_list = vault.ok(Method::GET, "/deletedkeys", None).await;
    assert_eq!(deleted_list["value"][0]["recoveryId"], deleted["recoveryId"]);
    let (status, body) = vault.call(Method::POST, "/keys/doomed/create", Some(json!({"kty": "RSA"}))).await;
    assert_eq!((status, error_code(&body).0), (StatusCode::CONFLICT, "Conflict"));

    let recovered = vault.ok(Method::POST, "/deletedkeys/doomed/recover", None).await;
    assert_eq!(recovered["key"]["kid"], created["key"]["kid"]);
    vault.ok(Method::GET, "/keys/doomed/", None).await;

    vault.ok(Method::DELETE, "/keys/doomed", None).await;
    let (status, body) = vault.call(Method::DELETE, "/deletedkeys/doomed", None).await;
    assert_eq!((status, error_code(&body).0), (StatusCode::FORBIDDEN, "Forbidden"));
    vault.ok(Method::GET, "/deletedkeys/doomed", None).await;
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_is_allowed_under_recoverable_purgeable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::RecoverablePurgeable)).await;
    let created = vault.create_rsa("gone").await;
    assert_eq!(created["attributes"]["recoveryLevel"], "Recoverable+Purgeable");

    vault.ok(Method::DELETE, "/keys/gone", None).await;
    let (status, body) = vault.call(Method::DELETE, "/deletedkeys/gone", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = vault.call(Method::GET, "/deletedkeys/gone", None).await;
    assert_eq!((status, error_code(&body).0), (StatusCode::NOT_FOUND, "KeyNotFound"));
    // The name is free again, with brand-new material.
    let again = vault.create_rsa("gone").await;
    assert_ne!(again["key"]["n"], created["key"]["n"]);
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut throttled_args = args(dir.path(), RecoveryLevel::Recoverable);
    throttled_args.throttle_rps = std::num::NonZeroU32::new(5);
    let vault = Vault::start(throttled_args).await;

    let url = vault.url("/keys");
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut throttled_body = None;
    for _ in 0..30 {
        let response = vault.admin.http().get(&url).bearer_auth(DEV_TOKEN).send().await.expect("request");
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS && throttled_body.is_none() {
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("Retry-After in whole seconds");
            assert!(retry_after >= 1);
            throttled_body = Some(response.json::<Value>().await.expect("JSON error body"));
        }
    }
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    let admitted = 30 - refused;
    // One second of burst plus the refill over the time the loop took: a
    // slow machine admits more, but never more than the rate allows.
    let allowed = 5 + (5.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert_eq!(statuses[0], StatusCode::OK);
    assert!(refused >= 1, "30 quick requests at 5/s: {statuses:?}");
    assert!((5..=allowed).contains(&admitted), "admitted {admitted}, at most {allowed} allowed: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(error_code(&throttled_body.expect("a 429 body")).0, "Throttled");
    assert_eq!(
        vault.emulator.calls().get("list_keys").copied(),
        Some(admitted as u64),
        "throttled requests are not counted as operations"
    );
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_added_to_every_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut slow_args = args(dir.path(), RecoveryLevel::Recoverable);
    slow_args.latency = Duration::from_millis(300);
    let vault = Vault::start(slow_args).await;
    let started = Instant::now();
    let (status, _) = vault.call(Method::GET, "/keys", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_state_dir_keeps_keys_and_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let kept = vault.create_rsa("kept").await;
    vault.patch("kept", json!({"tags": {"tenant": "acme"}})).await;
    let rotated = vault.ok(Method::POST, "/keys/kept/rotate", None).await;
    let data_key = [3u8; 32];
    let (_, wrapped) = vault.wrap("kept", &version_of(&kept), "RSA-OAEP-256", &data_key).await;
    vault.create_rsa("binned").await;
    vault.ok(Method::DELETE, "/keys/binned", None).await;
    let cert_before = std::fs::read(vault.emulator.cert_pem_path()).expect("cert");
    vault.emulator.shutdown().await;

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut private_files = vec![dir.path().join("cert-key.pem")];
        for entry in std::fs::read_dir(dir.path().join("keys")).expect("keys dir") {
            private_files.push(entry.expect("entry").path());
        }
        assert_eq!(private_files.len(), 3);
        for path in private_files {
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }

    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let cert_after = std::fs::read(vault.emulator.cert_pem_path()).expect("cert");
    assert_eq!(cert_before, cert_after, "the certificate is reused");

    let latest = vault.ok(Method::GET, "/keys/kept/", None).await;
    assert_eq!(version_of(&latest), version_of(&rotated));
    assert_eq!(latest["key"]["n"], rotated["key"]["n"]);
    let first = vault.ok(Method::GET, &format!("/keys/kept/{}", version_of(&kept)), None).await;
    assert_eq!(first["key"]["n"], kept["key"]["n"]);
    assert_eq!(first["tags"], json!({"tenant": "acme"}));
    let (status, unwrapped) = vault.unwrap("kept", &version_of(&kept), "RSA-OAEP-256", &wrapped).await;
    assert_eq!(status, StatusCode::OK, "{unwrapped}");
    assert_eq!(decode(&unwrapped["value"]), data_key);
    let versions = vault.ok(Method::GET, "/keys/kept/versions", None).await;
    assert_eq!(versions["value"].as_array().expect("value").len(), 2);

    let (status, _) = vault.call(Method::GET, "/keys/binned/", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    vault.ok(Method::GET, "/deletedkeys/binned", None).await;
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_wraps_and_unwraps_through_the_emulator() {
    let probe =
        tokio::process::Command::new("python3").args(["-c", "import azure.keyvault.keys, azure.core"]).output().await;
    match probe {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "the Python Key Vault SDK is missing; run `pip install azure-keyvault-keys azure-identity`: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!(
            "python3 is not runnable ({e}); install Python 3 and run `pip install azure-keyvault-keys azure-identity`"
        ),
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kv_smoke.py");
    let mut python = tokio::process::Command::new("python3");
    python.arg(&script).arg(vault.emulator.vault_url()).arg(vault.emulator.cert_pem_path()).arg(DEV_TOKEN);
    let (succeeded, report) = run_python(&mut python, Duration::from_secs(120)).await;
    assert!(succeeded, "kv_smoke.py failed: {report}");
    let calls = vault.emulator.calls();
    assert_eq!(calls.get("create_key"), Some(&1), "{calls:?}\n{report}");
    assert!(calls.get("unwrapkey").is_some_and(|n| *n >= 1), "{calls:?}");
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_tls_name_renews_the_certificate_once() {
    let state = tempfile::tempdir().expect("state dir");
    let cert = |v: &Vault| std::fs::read(v.emulator.cert_pem_path()).expect("cert.pem");
    let first = Vault::start(args(state.path(), RecoveryLevel::Recoverable)).await;
    let original = cert(&first);
    first.emulator.shutdown().await;

    let mut named = args(state.path(), RecoveryLevel::Recoverable);
    named.tls_names = vec!["keyvault-emulator".to_owned()];
    let second = Vault::start(named.clone()).await;
    let renewed = cert(&second);
    assert_ne!(renewed, original, "a missing name makes a new certificate");
    second.create_rsa("still-served").await;
    second.emulator.shutdown().await;

    let third = Vault::start(named).await;
    assert_eq!(cert(&third), renewed, "the same names reuse it");
}
