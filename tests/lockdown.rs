//! Key health and lockdown, end to end: the prober against the emulator over
//! TLS, a manual clock for the one-hour story, real RabbitMQ and RocksDB.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::byok::{WAIT, setup, setup_with, wait_for_state};
use common::vault::{Vault, args};
use common::*;
use futures_util::StreamExt;
use keyseal::broker::EVENTS_EXCHANGE;
use keyseal::proto::v1::key_health::Status;
use keyseal::proto::v1::{Event, event::Kind};
use keyvault_emulator::{Fault, FaultAction, RecoveryLevel};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use prost::Message;
use reqwest::Method;
use serde_json::{Value, json};

const FAST_PROBES: [&str; 2] = ["--probe-interval", "100ms"];
const GRACE_PASSED: Duration = Duration::from_secs(51 * 60);

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_key_degrades_locks_down_and_restores_with_nothing_lost() {
    let s = setup("lock-cycle", RecoveryLevel::Recoverable, None, &FAST_PROBES).await;
    s.rsa_key("k").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    let early = s.publish("acme", "early-", 10).await;

    let connection = keyseal::broker::connect(&s.vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.queue_declare("test.health".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    for key in ["tenant.acme.key_health", "tenant.acme.tenant_locked_down", "tenant.acme.tenant_restored"] {
        channel
            .queue_bind(
                "test.health".into(),
                EVENTS_EXCHANGE.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let mut events = channel
        .basic_consume("test.health".into(), "t".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();

    s.vault.patch("k", json!({"attributes": {"enabled": false}})).await;
    let degraded = wait_for_state(&s, "acme", "degraded", Some("key_disabled")).await;
    assert_eq!(degraded["keyHealth"]["status"], "unavailable");
    assert!(degraded["keyHealth"]["lockdownAt"].is_string(), "{degraded}");
    assert!(degraded["keyHealth"]["lastProbe"].is_string());
    assert_eq!(get_record(&s.base, "acme", "early-0").await.0, 200, "degraded still reads");

    s.clock.advance(GRACE_PASSED);
    wait_for_state(&s, "acme", "locked_down", Some("key_disabled")).await;
    let (status, body) = get_record(&s.base, "acme", "early-1").await;
    assert_eq!(status, 423);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "tenant_locked_down");
    assert!(error["error"]["message"].as_str().unwrap().contains("key_disabled"));

    // Ingestion goes on; sealing waits.
    let late = s.publish("acme", "late-", 5).await;
    s.clock.advance(Duration::from_secs(49 * 3600));
    let summary = s.sweep().await;
    assert_eq!(summary["seal"]["heldBack"]["acme"], 15, "{summary}");
    assert_eq!(s.status("acme").await["records"], json!({"hot": 15, "sealed": 0}));

    s.vault.patch("k", json!({"attributes": {"enabled": true}})).await;
    let restored = wait_for_state(&s, "acme", "active", None).await;
    assert_eq!(restored["keyHealth"]["status"], "healthy");
    s.assert_readable(&early).await;
    s.assert_readable(&late).await;
    assert_eq!(s.sweep().await["seal"]["sealed"], 15, "the backlog is sealed after the restore");
    s.assert_replay_equal().await;

    let mut seen = Vec::new();
    let mut sequences = BTreeSet::new();
    while seen.len() < 4 {
        let delivery = tokio::time::timeout(WAIT, events.next()).await.expect("health events").unwrap().unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let event = Event::decode(delivery.data.as_slice()).unwrap();
        assert!(sequences.insert(event.sequence), "sequence {} twice", event.sequence);
        seen.push(match event.kind.unwrap() {
            Kind::KeyHealth(h) if h.status() == Status::Unavailable => "unavailable",
            Kind::KeyHealth(_) => "healthy",
            Kind::TenantLockedDown(_) => "locked_down",
            Kind::TenantRestored(_) => "restored",
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(seen, ["unavailable", "locked_down", "healthy", "restored"]);
    assert!(sequences.iter().is_sorted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reason_comes_from_its_real_cause() {
    let mut s = setup("lock-reasons", RecoveryLevel::Recoverable, None, &FAST_PROBES).await;
    let causes: [(&str, &str); 5] = [
        ("deleted", "key_not_found"),
        ("disabled", "key_disabled"),
        ("expired", "key_expired"),
        ("future", "key_not_yet_active"),
        ("no-unwrap", "missing_permission"),
    ];
    for (tenant, _) in causes {
        s.rsa_key(tenant).await;
        let (status, body) = s.enable(tenant, &s.vault.key_uri(tenant)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = s.vault.call(Method::DELETE, "/keys/deleted", None).await;
    assert_eq!(status, 200);
    s.vault.patch("disabled", json!({"attributes": {"enabled": false}})).await;
    s.vault.patch("expired", json!({"attributes": {"exp": unix_now() - 60}})).await;
    s.vault.patch("future", json!({"attributes": {"nbf": unix_now() + 86_400}})).await;
    s.vault.patch("no-unwrap", json!({"key_ops": ["wrapKey", "encrypt"]})).await;
    for (tenant, reason) in causes {
        wait_for_state(&s, tenant, "degraded", Some(reason)).await;
    }
    s.assert_replay_equal().await;

    // Stop the vault the worker uses: every reason becomes vault_unreachable.
    let other_state = tempfile::tempdir().unwrap();
    let other = Vault::start(args(other_state.path(), RecoveryLevel::Recoverable)).await;
    std::mem::replace(&mut s.vault, other).emulator.shutdown().await;
    for (tenant, _) in causes {
        wait_for_state(&s, tenant, "degraded", Some("vault_unreachable")).await;
    }
    s.assert_replay_equal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_alone_never_locks_a_tenant() {
    let s = setup("lock-throttle", RecoveryLevel::Recoverable, Some(3), &FAST_PROBES).await;
    s.rsa_key("k").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    for _ in 0..6 {
        // Read first, then move the clock: a probe recorded after the move
        // necessarily shows a later time (the manual clock stands still).
        let before = s.status("acme").await["keyHealth"]["lastProbe"].clone();
        s.clock.advance(Duration::from_secs(20 * 60));
        wait_until("another probe", WAIT, || async { s.status("acme").await["keyHealth"]["lastProbe"] != before })
            .await;
        assert_eq!(s.status("acme").await["state"], "active");
    }
    let calls = s.vault.emulator.calls();
    assert!(calls.get("throttled").copied().unwrap_or(0) > 0, "the vault did throttle: {calls:?}");
    s.assert_replay_equal().await;
}

/// Flags of the child worker: the emulator as its vault, fast probes, no lockdown.
fn child_flags(vault: &Vault) -> Vec<String> {
    let mut flags = vault.worker_flags();
    flags.extend(["--probe-interval", "200ms", "--lockdown-after", "1h"].map(String::from));
    flags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_degraded_keeps_the_state_and_the_deadline() {
    let state = tempfile::tempdir().unwrap();
    let vault = Vault::start(args(state.path(), RecoveryLevel::Recoverable)).await;
    vault.create("k", json!({"kty": "RSA", "key_size": 2048})).await;
    let vhost = Vhost::new("lock-kill");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let status = || async { reqwest::get(format!("{base}/v1/tenants/acme")).await.ok()?.json::<Value>().await.ok() };

    let mut child = spawn_worker(&vhost, dir.path(), port, &child_flags(&vault));
    wait_until("the worker", WAIT, || async { reqwest::get(format!("{base}/healthz")).await.is_ok() }).await;
    enable(&base, "acme", &vault.key_uri("k")).await;
    vault.patch("k", json!({"attributes": {"enabled": false}})).await;
    wait_until("degraded", WAIT, || async { status().await.is_some_and(|s| s["state"] == "degraded") }).await;
    let before = status().await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = spawn_worker(&vhost, dir.path(), port, &child_flags(&vault));
    wait_until("the restarted worker to probe", WAIT, || async {
        status().await.is_some_and(|s| s["keyHealth"]["lastProbe"].is_string())
    })
    .await;
    let after = status().await.unwrap();
    assert_eq!(after["state"], "degraded");
    assert_eq!(after["keyHealth"]["since"], before["keyHealth"]["since"], "the grace did not restart");
    assert_eq!(after["keyHealth"]["lockdownAt"], before["keyHealth"]["lockdownAt"]);
    assert_eq!(after["keyHealth"]["reason"], "key_disabled");
    let replay: Value = http.post(format!("{base}/v1/admin/replay")).send().await.unwrap().json().await.unwrap();
    assert_eq!(replay["equal"], true, "{replay}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Accepts connections on `addr` and never answers (what a vault behind a
/// hung TLS terminator or load balancer looks like). It reads and discards
/// what clients send, so a connection a client gives up on is let go.
async fn never_answer_on(addr: &str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("binding the vault's address again");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
            });
        }
    })
}

const HUNG_TENANTS: usize = 200;
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(30);
/// Probes every second (real time) that give up after 2 s unanswered; the
/// grace runs on the manual clock, which stands still while the probes time
/// out, then moves in half-second steps.
const HUNG_FLAGS: [&str; 6] = ["--probe-interval", "1s", "--probe-timeout", "2s", "--lockdown-after", "30s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_of_a_vault_that_never_answers_is_locked_at_its_grace_plus_at_most_one_probe_interval() {
    use keyseal::clock::Clock;
    use keyseal::proto::store::TenantState;

    let mut s = setup("lock-hang", RecoveryLevel::Recoverable, None, &HUNG_FLAGS).await;
    const KEYS: usize = 10;
    for k in 0..KEYS {
        s.rsa_key(&format!("k{k}")).await;
    }
    let tenants: Vec<String> = (0..HUNG_TENANTS).map(|t| format!("t{t:03}")).collect();
    futures_util::stream::iter(tenants.iter().enumerate())
        .for_each_concurrent(8, |(i, tenant)| {
            let uri = s.vault.key_uri(&format!("k{}", i % KEYS));
            let s = &s;
            async move {
                let (status, body) = s.enable(tenant, &uri).await;
                assert_eq!(status, 200, "{tenant}: {body}");
            }
        })
        .await;
    let store = s.worker.only().shard.store.clone();
    let byok = || store.tenants_where(|p| !p.key_uri.is_empty());
    assert_eq!(byok().len(), HUNG_TENANTS);
    assert!(byok().iter().all(|(_, p)| p.state() == TenantState::Active));

    // The vault goes on accepting connections but never answers again.
    let failed_at = s.clock.now_ms();
    let addr = s.vault.host();
    let spare_state = tempfile::tempdir().unwrap();
    let spare = Vault::start(args(spare_state.path(), RecoveryLevel::Recoverable)).await;
    std::mem::replace(&mut s.vault, spare).emulator.shutdown().await;
    let hung = never_answer_on(&addr).await;

    // The clock stands still: unanswered probes must count as failed ones
    // within real seconds, not after minutes of waves of 60 s deadlines.
    wait_until("every tenant degraded by unanswered probes", Duration::from_secs(60), || async {
        byok().iter().all(|(_, p)| p.state() == TenantState::Degraded)
    })
    .await;
    let interval_ms = PROBE_INTERVAL.as_millis() as i64;
    let grace_ms = GRACE.as_millis() as i64;
    for (tenant, p) in byok() {
        assert_eq!(p.health_reason, "vault_unreachable", "{tenant}");
        assert!(p.degraded_since_unix_ms <= failed_at + interval_ms, "{tenant} degraded late: {p:?}");
    }

    // No probe answers from here on: the tick alone locks each tenant as
    // the clock passes its deadline, never before.
    let latest_ms = failed_at + grace_ms + interval_ms;
    while s.clock.now_ms() < latest_ms {
        s.clock.advance(Duration::from_millis(500));
        let now = s.clock.now_ms();
        wait_until("the tick to lock every tenant whose grace has passed", Duration::from_secs(10), || async {
            byok()
                .iter()
                .all(|(_, p)| !(p.state() == TenantState::Degraded && p.degraded_since_unix_ms + grace_ms <= now))
        })
        .await;
        for (tenant, p) in byok() {
            if p.state() == TenantState::LockedDown {
                assert!(p.state_since_unix_ms >= p.degraded_since_unix_ms + grace_ms, "{tenant} locked early: {p:?}");
            }
        }
    }
    for (tenant, p) in byok() {
        assert_eq!(p.state(), TenantState::LockedDown, "{tenant}");
        assert!(p.state_since_unix_ms <= latest_ms, "{tenant} locked at {}, after {latest_ms}", p.state_since_unix_ms);
    }
    // A commit is visible before its fsync ends; the event log serves
    // durable events only, so wait for the last lockdown's fsync.
    let locks = || -> Vec<String> {
        store
            .events_after(0, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|e| matches!(e.kind, Some(Kind::TenantLockedDown(_))))
            .map(|e| e.tenant_id)
            .collect()
    };
    wait_until("the lockdowns to be durable", WAIT, || async { locks().len() >= HUNG_TENANTS }).await;
    let locks = locks();
    assert_eq!(locks.len(), HUNG_TENANTS, "one lockdown per tenant");
    assert_eq!(locks.iter().collect::<BTreeSet<_>>().len(), HUNG_TENANTS);
    let status = s.status("t199").await;
    assert_eq!(
        (status["state"].as_str(), status["keyHealth"]["reason"].as_str()),
        (Some("locked_down"), Some("vault_unreachable"))
    );
    s.assert_replay_equal().await;
    hung.abort();
}

/// Disabling BYOK would move the sealed data keys back under the managed
/// key, handing back the access the customer withdrew: refused while the
/// tenant is locked down, allowed again once its key works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_the_customer_key_of_a_locked_down_tenant_is_refused() {
    let s = setup("lock-disable", RecoveryLevel::Recoverable, None, &FAST_PROBES).await;
    s.rsa_key("k").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    let records = s.publish("acme", "r-", 5).await;
    s.clock.advance(Duration::from_secs(49 * 3600));
    assert_eq!(s.sweep().await["seal"]["sealed"], 5);
    let sealed_roots = s.sealed_roots("acme");

    s.vault.patch("k", json!({"attributes": {"enabled": false}})).await;
    wait_for_state(&s, "acme", "degraded", Some("key_disabled")).await;
    s.clock.advance(GRACE_PASSED);
    wait_for_state(&s, "acme", "locked_down", Some("key_disabled")).await;

    let (status, body) = s.disable("acme").await;
    assert_eq!((status, body["error"]["code"].as_str()), (423, Some("tenant_locked_down")), "{body}");
    let after = s.status("acme").await;
    assert_eq!(after["state"], "locked_down");
    assert_eq!(after["encryption"]["mode"], "customer_key", "{after}");
    assert_eq!(s.sealed_roots("acme"), sealed_roots, "the sealed data keys stay under the customer key");

    s.vault.patch("k", json!({"attributes": {"enabled": true}})).await;
    wait_for_state(&s, "acme", "active", None).await;
    let (status, body) = s.disable("acme").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.status("acme").await["encryption"]["mode"], "managed");
    s.assert_readable(&records).await;
}

/// Key Vault permissions keyseal's identity needs.
const PERMISSIONS: [&str; 4] = ["get", "list", "wrapKey", "unwrapKey"];

/// A failure only the canary sees: keyseal's identity may still read the
/// key (so the key looks enabled, current and well-formed) but no longer
/// wrap or unwrap with it. The canary's refused wrap must carry the tenant
/// through degraded to locked down, and restoring the permission restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_only_the_canary_sees_locks_the_tenant_down() {
    // The canary's cadence runs on the worker's clock, which stands still here.
    let flags = ["--probe-interval", "100ms", "--canary-interval", "100ms"];
    let s = setup_with("lock-canary", RecoveryLevel::Recoverable, None, &flags, |vault, settings| {
        vault.emulator.set_identity("keyseal", "keyseal-token", &PERMISSIONS);
        settings.vault_token = Some("keyseal-token".into());
    })
    .await;
    s.rsa_key("k").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    let records = s.publish("acme", "r-", 3).await;
    wait_until("a first probe", WAIT, || async { s.status("acme").await["keyHealth"]["lastProbe"].is_string() }).await;
    assert_eq!(s.status("acme").await["state"], "active");

    let wraps_before = s.vault.emulator.calls().get("wrapkey").copied().unwrap_or(0);
    s.vault.emulator.set_identity("keyseal", "keyseal-token", &["get", "list"]);
    wait_for_state(&s, "acme", "degraded", Some("missing_permission")).await;
    assert!(
        s.vault.emulator.calls().get("wrapkey").copied().unwrap_or(0) > wraps_before,
        "the canary tried to wrap: {:?}",
        s.vault.emulator.calls()
    );
    s.clock.advance(GRACE_PASSED);
    wait_for_state(&s, "acme", "locked_down", Some("missing_permission")).await;
    assert_eq!(get_record(&s.base, "acme", "r-0").await.0, 423);

    s.vault.emulator.set_identity("keyseal", "keyseal-token", &PERMISSIONS);
    wait_for_state(&s, "acme", "active", None).await;
    s.assert_readable(&records).await;
    s.assert_replay_equal().await;
}

/// A probe that was out while the tenant moved to another key must not
/// decide for the new key. The vault hangs on the old key's read; the
/// tenant enables a new key; the old key is disabled; then the hung read
/// answers "disabled". That answer is about a key the tenant no longer
/// uses: the tenant stays active and no key-health event is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_answered_after_the_key_changed_is_discarded() {
    let s =
        setup("lock-stale", RecoveryLevel::Recoverable, None, &["--probe-interval", "100ms", "--probe-timeout", "60s"])
            .await;
    s.rsa_key("old").await;
    s.rsa_key("new").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("old")).await.0, 200);
    wait_until("a first probe", WAIT, || async { s.status("acme").await["keyHealth"]["lastProbe"].is_string() }).await;

    s.vault.emulator.set_faults(vec![Fault {
        key: Some("old".into()),
        operation: Some("get_key".into()),
        action: FaultAction::Hang,
    }]);
    wait_until("a probe of the old key to hang", WAIT, || async {
        s.vault.emulator.calls().get("faulted").copied().unwrap_or(0) > 0
    })
    .await;
    let (status, body) = s.enable("acme", &s.vault.key_uri("new")).await;
    assert_eq!(status, 200, "{body}");
    s.vault.patch("old", json!({"attributes": {"enabled": false}})).await;
    let before = s.status("acme").await["keyHealth"]["lastProbe"].clone();
    // The manual clock stands still: move it so the stale probe's record shows.
    s.clock.advance(Duration::from_secs(1));
    s.vault.emulator.clear_faults();
    wait_until("the hung probe to finish", WAIT, || async {
        s.status("acme").await["keyHealth"]["lastProbe"] != before
    })
    .await;
    // And one more round, on the new key.
    let after_stale = s.status("acme").await["keyHealth"]["lastProbe"].clone();
    s.clock.advance(Duration::from_secs(1));
    wait_until("a probe of the new key", WAIT, || async {
        s.status("acme").await["keyHealth"]["lastProbe"] != after_stale
    })
    .await;

    let status = s.status("acme").await;
    assert_eq!((status["state"].as_str(), status["keyHealth"]["status"].as_str()), (Some("active"), Some("healthy")));
    assert!(status["encryption"]["keyUri"].as_str().unwrap().contains("/keys/new"), "{status}");
    let unavailable = s
        .worker
        .only()
        .shard
        .store
        .events_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| matches!(&e.kind, Some(Kind::KeyHealth(h)) if h.status() == Status::Unavailable))
        .count();
    assert_eq!(unavailable, 0, "the old key's answer decided nothing");
    s.assert_replay_equal().await;
}

/// The probe times are kept for the tenants the prober probes, no others:
/// a tenant that disables its key shows no last probe (it is not probed),
/// and leaves no entry behind, while the others go on being probed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_disables_its_key_is_no_longer_probed_nor_remembered() {
    let s = setup("lock-forget", RecoveryLevel::Recoverable, None, &FAST_PROBES).await;
    s.rsa_key("k").await;
    for tenant in ["leaves", "stays"] {
        assert_eq!(s.enable(tenant, &s.vault.key_uri("k")).await.0, 200);
    }
    let setup = &s;
    let probed = |tenant: &'static str| async move { setup.status(tenant).await["keyHealth"]["lastProbe"].is_string() };
    wait_until("both tenants probed", WAIT, || async { probed("leaves").await && probed("stays").await }).await;

    let (status, body) = s.disable("leaves").await;
    assert_eq!(status, 200, "{body}");
    wait_until("the disabled tenant forgotten", WAIT, || async {
        s.worker.only().prober.last_probes().last("leaves").is_none()
    })
    .await;
    assert_eq!(s.status("leaves").await["keyHealth"]["lastProbe"], Value::Null);
    assert!(probed("stays").await);
}
