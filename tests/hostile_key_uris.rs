//! Key URIs decide where keyseal sends its vault token and data keys. Each
//! of these tries to reach a listener of the test (or another host) through
//! a difference between what a naive check reads and what the URL parser of
//! the Azure client connects to. Every one must be refused with 400 before
//! any connection is made, on enable and when a stored key id is unwrapped.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use keyseal::clock::SystemClock;
use keyseal::crypto::data_key::DataKeyId;
use keyseal::crypto::keyring::KeyringError;
use keyseal::proto::store::WrappedDataKey;
use keyseal::proto::v1::root_key_ref::Root;
use keyseal::proto::v1::{Layer, RootKeyRef};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Plain TCP listeners that count every connection they accept: one on an
/// ephemeral port and one on 127.0.0.1:443, where the forms without a port
/// lead (a check that reads the host up to `:` passes them by suffix).
struct Bait {
    port: u16,
    accepted: Arc<AtomicUsize>,
    connected: Arc<Notify>,
}

impl Bait {
    async fn bind() -> Self {
        let ephemeral = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let https = tokio::net::TcpListener::bind("127.0.0.1:443")
            .await
            .expect("binding 127.0.0.1:443 (run as root or with CAP_NET_BIND_SERVICE)");
        let port = ephemeral.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let connected = Arc::new(Notify::new());
        for listener in [ephemeral, https] {
            let (count, notify) = (accepted.clone(), connected.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    notify.notify_one();
                    drop(stream);
                }
            });
        }
        Self { port, accepted, connected }
    }

    /// Asserts that no connection arrived, waiting a short bounded time for
    /// one that may still be under way.
    async fn assert_untouched(&self) {
        let stray = tokio::time::timeout(Duration::from_millis(500), self.connected.notified()).await;
        assert!(stray.is_err(), "a connection reached a listener");
        assert_eq!(self.accepted.load(Ordering::SeqCst), 0, "connections to the listeners");
    }
}

fn hostile_uris(port: u16, trusted_port: u16) -> Vec<String> {
    [
        "https://127.0.0.1?.vault.azure.net/keys/k",
        "https://127.0.0.1#.vault.azure.net/keys/k",
        "https://127.0.0.1\\.vault.azure.net/keys/k",
        "https://127.0.0.1%2f.vault.azure.net/keys/k",
        "https://127.0.0.1%3f.vault.azure.net/keys/k",
        "https://127.0.0.1\t.vault.azure.net/keys/k",
        "https://127.0.0.1;.vault.azure.net/keys/k",
        "https://127.0.0.1/.vault.azure.net/keys/k",
        "https://localhost#.vault.azure.net/keys/k",
        "https://127.0.0.1:{port}?.vault.azure.net/keys/k",
        "https://127.0.0.1:{port}?x=.vault.azure.net/keys/k",
        "https://127.0.0.1:{port}#.vault.azure.net/keys/k",
        "https://127.0.0.1:{port}#@contoso.vault.azure.net/keys/k",
        "https://127.0.0.1:{port}\\.vault.azure.net/keys/k",
        "https://127.0.0.1:{port}%2f.vault.azure.net/keys/k",
        "https://127.0.0.1:{port}%2F.vault.azure.net/keys/k",
        "https://127.0.0.1:{port}%3f.vault.azure.net/keys/k",
        "https://127.0.0.1\t:{port}.vault.azure.net/keys/k",
        "https://127.0.0.1:{port}\t.vault.azure.net/keys/k",
        "https://127.0.0.1:{port};.vault.azure.net/keys/k",
        "https://127.0.0.1:{port}@contoso.vault.azure.net/keys/k",
        "https://contoso.vault.azure.net@127.0.0.1:{port}/keys/k",
        "https://contoso.vault.azure.net./keys/k",
        "https://vault.azure.net.evil.example/keys/k",
        "https://a.b.vault.azure.net/keys/k",
        "https://[::1]:{port}/keys/k",
        "https://[::ffff:127.0.0.1]:{port}/keys/k",
        "https://[::ffff:7f00:1]:{port}/keys/k",
        "http://127.0.0.1:{port}/keys/k",
        "http://contoso.vault.azure.net/keys/k",
        "https://contoso.vault.azure.net:{port}/keys/k",
        "https://127.0.0.1:{port}/keys/k",
        "https://127.1:{port}/keys/k",
        "https://0x7f000001:{port}/keys/k",
        "https://2130706433:{port}/keys/k",
        "https://localhost:{port}/keys/k",
        " https://127.0.0.1:{trusted}/keys/k",
        "https://127.0.0.1:{trusted}/keys/k\n",
        "https://127.0.0.1:{trusted}/keys/k?api-version=7.4",
        "https://127.0.0.1:{trusted}/keys/x/../k",
        "https://127.0.0.1:{trusted}/keys/k/%2e%2e",
        "https://127.1:{trusted}/keys/k",
    ]
    .iter()
    .map(|template| template.replace("{port}", &port.to_string()).replace("{trusted}", &trusted_port.to_string()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_key_uris_are_refused_without_a_single_connection() {
    let bait = Bait::bind().await;
    let trusted_port = std::iter::repeat_with(free_port).find(|p| *p != bait.port).unwrap();
    let trusted = format!("127.0.0.1:{trusted_port}");
    let vhost = Vhost::new("hostile-uris");
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--vault-credential", "static-token", "--trusted-vault-host", &trusted, "--vault-timeout", "2s"];
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &flags).await;
    let base = base_url(&worker);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();

    let uris = hostile_uris(bait.port, trusted_port);
    assert!(uris.len() >= 15);
    let mut wrong = Vec::new();
    for uri in &uris {
        let answer = http.put(format!("{base}/v1/tenants/acme/encryption")).json(&json!({"keyUri": uri})).send().await;
        let outcome = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                (status, body["error"]["code"].as_str().unwrap_or("<no JSON error>").to_owned())
            }
            Err(e) => (0, format!("no answer: {e}")),
        };
        if !(outcome.0 == 400 && matches!(outcome.1.as_str(), "invalid_key_uri" | "untrusted_vault_host")) {
            wrong.push(format!("{uri:?} -> {outcome:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused with 400 invalid_key_uri/untrusted_vault_host ({} connections to the listeners):\n{}",
        bait.accepted.load(Ordering::SeqCst),
        wrong.join("\n")
    );
    bait.assert_untouched().await;

    // A stored key id is parsed with the same check before any unwrap: a
    // hostile one is an error, never a request.
    let running = worker.only();
    let shard = &running.shard;
    let stored_kids = [
        "https://127.0.0.1?.vault.azure.net/keys/k/v1".to_owned(),
        "https://127.0.0.1#.vault.azure.net/keys/k/v1".to_owned(),
        format!("https://127.0.0.1:{}?.vault.azure.net/keys/k/v1", bait.port),
        format!("https://127.0.0.1:{}\\.vault.azure.net/keys/k/v1", bait.port),
        format!("https://127.0.0.1:{}/keys/k/v1", bait.port),
    ];
    for (generation, kid) in stored_kids.into_iter().enumerate() {
        let id = DataKeyId { tenant: "acme".into(), layer: Layer::Sealed, bucket: 1, generation: generation as u32 }
            .to_bytes();
        let mut txn = shard.store.transaction();
        let wrapped = WrappedDataKey {
            wrapped_by: Some(RootKeyRef { root: Some(Root::VaultKeyId(kid.clone())) }),
            algorithm: "RSA-OAEP-256".into(),
            wrapped: vec![7; 256],
            created_at_unix_ms: 1,
            ..Default::default()
        };
        txn.put_data_key(&id, &wrapped);
        txn.commit(shard.now_ms()).unwrap();
        let unwrapped =
            tokio::time::timeout(Duration::from_secs(5), shard.keyring.key(&id, keyseal::proto::v1::KeyPurpose::Read))
                .await;
        assert!(matches!(unwrapped, Ok(Err(KeyringError::KeyUri(_)))), "{kid:?} -> {unwrapped:?}");
    }
    bait.assert_untouched().await;
    worker.stop().await;
}
