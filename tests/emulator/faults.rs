//! The emulator's fault injection and access policies: each fault hits its
//! key and operation only, a hang holds a request until cleared, an
//! identity without a permission is refused, and only the owner may set
//! faults and identities through the control routes.

use super::*;

fn fault(key: Option<&str>, operation: Option<&str>, action: FaultAction) -> Fault {
    Fault { key: key.map(str::to_owned), operation: operation.map(str::to_owned), action }
}

fn faulted(vault: &Vault) -> u64 {
    vault.emulator.calls().get("faulted").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_hits_its_key_and_operation_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let k1 = version_of(&vault.create_rsa("k1").await);
    let k2 = version_of(&vault.create_rsa("k2").await);
    let (status, wrapped) = vault.wrap("k1", &k1, "RSA-OAEP-256", &[7u8; 32]).await;
    assert_eq!(status, StatusCode::OK, "{wrapped}");

    let cases = [
        (403, StatusCode::FORBIDDEN, "Forbidden", Some("ForbiddenByPolicy")),
        (429, StatusCode::TOO_MANY_REQUESTS, "Throttled", None),
        (500, StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", None),
        (503, StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", None),
        (418, StatusCode::IM_A_TEAPOT, "InjectedFault", None),
    ];
    for (injected, status, code, inner) in cases {
        vault.emulator.set_faults(vec![fault(Some("k1"), Some("wrapkey"), FaultAction::Status(injected))]);
        let before = faulted(&vault);
        let response = vault
            .admin
            .http()
            .post(vault.url("/keys/k1//wrapkey"))
            .bearer_auth(DEV_TOKEN)
            .json(&json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode([1u8; 32])}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), status, "{injected}");
        if injected == 429 {
            assert_eq!(response.headers()["retry-after"], "1");
        }
        let body: Value = response.json().await.expect("Key Vault error body");
        assert_eq!(error_code(&body), (code, inner), "{injected}: {body}");
        assert_eq!(faulted(&vault), before + 1);
        // Other keys, other operations of the same key: untouched.
        assert_eq!(vault.wrap("k2", &k2, "RSA-OAEP-256", &[1u8; 32]).await.0, StatusCode::OK, "{injected}");
        assert_eq!(vault.unwrap("k1", &k1, "RSA-OAEP-256", &wrapped).await.0, StatusCode::OK, "{injected}");
        assert_eq!(vault.call(Method::GET, "/keys/k1", None).await.0, StatusCode::OK, "{injected}");
        assert_eq!(faulted(&vault), before + 1, "{injected}: only the faulted request counts as faulted");
    }
    // A fault for every key of one operation, and for one key's every operation.
    vault.emulator.set_faults(vec![fault(None, Some("get_key"), FaultAction::Status(500))]);
    assert_eq!(vault.call(Method::GET, "/keys/k2", None).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(vault.call(Method::GET, "/keys", None).await.0, StatusCode::OK);
    vault.emulator.set_faults(vec![fault(Some("k2"), None, FaultAction::Status(403))]);
    assert_eq!(vault.call(Method::GET, "/keys/k2", None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(vault.wrap("k2", &k2, "RSA-OAEP", &[1u8; 32]).await.0, StatusCode::FORBIDDEN);
    assert_eq!(vault.call(Method::GET, "/keys/k1", None).await.0, StatusCode::OK);
    assert_eq!(vault.emulator.faults(), vec![fault(Some("k2"), None, FaultAction::Status(403))]);

    vault.emulator.clear_faults();
    assert!(vault.emulator.faults().is_empty());
    assert_eq!(vault.wrap("k1", &k1, "RSA-OAEP-256", &[1u8; 32]).await.0, StatusCode::OK);
    let calls = vault.emulator.calls();
    assert_eq!(calls["wrapkey"], 1 + 5 + 5 + 1 + 1, "faulted requests count under their operation: {calls:?}");
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_holds_the_request_until_cleared_and_never_blocks_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    vault.create_rsa("k1").await;
    vault.create_rsa("k2").await;
    vault.emulator.set_faults(vec![fault(Some("k1"), Some("get_key"), FaultAction::Hang)]);

    let hung = tokio::spawn({
        let admin = vault.admin.clone();
        async move { admin.call(Method::GET, "/keys/k1", None).await.map(|(status, _)| status) }
    });
    // The other key answers at once while k1's read hangs.
    assert_eq!(vault.call(Method::GET, "/keys/k2", None).await.0, StatusCode::OK);
    common::wait_until("the hung request to reach the fault", Duration::from_secs(10), || async {
        faulted(&vault) == 1
    })
    .await;
    assert!(!hung.is_finished(), "a hang gives no answer");
    vault.emulator.clear_faults();
    let answer = tokio::time::timeout(Duration::from_secs(10), hung).await.expect("answers once cleared");
    assert_eq!(answer.expect("joined").expect("request"), StatusCode::OK);

    // A request still hanging when the emulator stops does not hold it up.
    vault.emulator.set_faults(vec![fault(None, None, FaultAction::Hang)]);
    let hung = tokio::spawn({
        let admin = vault.admin.clone();
        async move { admin.call(Method::GET, "/keys/k2", None).await.map(|(status, _)| status) }
    });
    common::wait_until("the second request to hang", Duration::from_secs(10), || async { faulted(&vault) == 2 }).await;
    let started = Instant::now();
    vault.emulator.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    let answer = tokio::time::timeout(Duration::from_secs(10), hung).await.expect("the hang ended").expect("joined");
    assert!(answer.is_err() || answer.as_ref().is_ok_and(|s| *s == StatusCode::SERVICE_UNAVAILABLE), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_with_get_but_not_wrap_key_is_refused_by_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let version = version_of(&vault.create_rsa("k1").await);
    let (_, wrapped) = vault.wrap("k1", &version, "RSA-OAEP-256", &[9u8; 32]).await;
    vault.emulator.set_identity("reader", "reader-token", &["get", "list"]);
    let reader = KeyAdmin::new(&vault.emulator.vault_url(), vault.emulator.cert_pem_path(), "reader-token")
        .expect("reader client");

    let (status, key) = reader.call(Method::GET, "/keys/k1", None).await.expect("get");
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_eq!(reader.call(Method::GET, "/keys", None).await.expect("list").0, StatusCode::OK);
    let body = json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode([1u8; 32])});
    let unwrap_path = format!("/keys/k1/{version}/unwrapkey");
    for (path, permission, body) in
        [("/keys/k1//wrapkey", "wrapKey", body), (unwrap_path.as_str(), "unwrapKey", wrapped)]
    {
        let (status, refusal) = reader.call(Method::POST, path, Some(body)).await.expect("request");
        assert_eq!(status, StatusCode::FORBIDDEN, "{refusal}");
        assert_eq!(error_code(&refusal), ("Forbidden", Some("ForbiddenByPolicy")));
        let message = refusal["error"]["message"].as_str().expect("message");
        let expected = format!(
            "The user, group or application 'name=reader' does not have keys {permission} permission on key vault '{}'",
            vault.host()
        );
        assert!(message.starts_with(&expected), "{message}");
    }
    assert_eq!(reader.call(Method::POST, "/keys/k2/create", Some(json!({"kty": "RSA"}))).await.unwrap().0, 403);
    // The owner keeps every permission; refused requests are still operations.
    assert_eq!(vault.wrap("k1", &version, "RSA-OAEP-256", &[1u8; 32]).await.0, StatusCode::OK);
    assert_eq!(vault.emulator.calls()["wrapkey"], 3);

    // Granting wrapKey lets it wrap; removing the identity makes its token unknown.
    vault.emulator.set_identity("reader", "reader-token", &["get", "wrapKey"]);
    let wrap = json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode([1u8; 32])});
    assert_eq!(reader.call(Method::POST, "/keys/k1//wrapkey", Some(wrap.clone())).await.unwrap().0, 200);
    assert!(vault.emulator.remove_identity("reader"));
    let response = reader.http().get(reader.url("/keys/k1")).bearer_auth("reader-token").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"].to_str().unwrap(), CHALLENGE);
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_routes_set_faults_and_identities_for_the_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let version = version_of(&vault.create_rsa("k").await);
    let control = |path: &str| format!("{}/_emulator/{path}", vault.emulator.vault_url());
    let faults = json!({"faults": [
        {"key": "k", "operation": "wrapkey", "status": 403},
        {"operation": "get_key", "hang": true},
    ]});

    // No token or an unknown one: Key Vault's challenge; an identity's: 403.
    vault.emulator.set_identity("ops", "ops-token", &KEY_PERMISSIONS);
    for token in [None, Some("wrong")] {
        let mut request = vault.admin.http().put(control("faults")).json(&faults);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(response.headers()["www-authenticate"].to_str().unwrap(), CHALLENGE);
    }
    for (method, path) in [(Method::PUT, "faults"), (Method::GET, "faults"), (Method::DELETE, "identities/ops")] {
        let response = vault
            .admin
            .http()
            .request(method.clone(), control(path))
            .bearer_auth("ops-token")
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(error_code(&response.json().await.unwrap()), ("Forbidden", Some("ForbiddenByPolicy")));
    }
    assert!(vault.emulator.faults().is_empty(), "nothing changed");

    // The owner replaces, reads and clears the faults.
    let (status, body) = vault.send(Method::PUT, &control("faults"), Some(faults.clone())).await;
    assert_eq!((status, &body), (StatusCode::OK, &faults));
    assert_eq!(
        vault.emulator.faults(),
        vec![
            fault(Some("k"), Some("wrapkey"), FaultAction::Status(403)),
            fault(None, Some("get_key"), FaultAction::Hang),
        ]
    );
    assert_eq!(vault.send(Method::GET, &control("faults"), None).await, (StatusCode::OK, faults));
    assert_eq!(vault.wrap("k", &version, "RSA-OAEP-256", &[1u8; 32]).await.0, StatusCode::FORBIDDEN);
    assert_eq!(vault.send(Method::DELETE, &control("faults"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(vault.send(Method::GET, &control("faults"), None).await.1, json!({"faults": []}));
    assert_eq!(vault.wrap("k", &version, "RSA-OAEP-256", &[1u8; 32]).await.0, StatusCode::OK);
    for bad in [
        json!({"faults": [{"status": 200}]}),
        json!({"faults": [{"status": 500, "hang": true}]}),
        json!({"faults": [{"key": "k"}]}),
        json!({"faults": [{"status": 500, "typo": 1}]}),
        json!({"fault": []}),
    ] {
        let (status, body) = vault.send(Method::PUT, &control("faults"), Some(bad.clone())).await;
        assert_eq!((status, error_code(&body).0), (StatusCode::BAD_REQUEST, "BadParameter"), "{bad}");
    }

    // Identities over HTTPS.
    let reader = json!({"token": "reader-token", "permissions": ["get", "list"]});
    let (status, body) = vault.send(Method::PUT, &control("identities/reader"), Some(reader)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"name": "reader", "permissions": ["get", "list"]}));
    let wrap = json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode([1u8; 32])});
    let as_reader = |method: Method, path: &str, body: Option<Value>| {
        let mut request = vault.admin.http().request(method, vault.url(path)).bearer_auth("reader-token");
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(as_reader(Method::GET, "/keys/k", None).await, StatusCode::OK);
    assert_eq!(as_reader(Method::POST, "/keys/k//wrapkey", Some(wrap.clone())).await, StatusCode::FORBIDDEN);
    let (_, listed) = vault.send(Method::GET, &control("identities"), None).await;
    assert!(!listed.to_string().contains("reader-token"), "tokens are never shown: {listed}");
    for bad in [json!({"token": "t2", "permissions": ["fly"]}), json!({"token": DEV_TOKEN, "permissions": []})] {
        let (status, _) = vault.send(Method::PUT, &control("identities/other"), Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(vault.send(Method::DELETE, &control("identities/reader"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(vault.send(Method::DELETE, &control("identities/reader"), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(as_reader(Method::GET, "/keys/k", None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(vault.send(Method::GET, &control("nothing"), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(vault.emulator.calls().get("faulted"), Some(&1), "one wrap met the fault");
    vault.emulator.shutdown().await;
}
