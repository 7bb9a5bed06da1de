//! Trust boundaries around what producers and tenants send: a lockdown is
//! lifted only by the key that caused it; producers' properties, users and
//! floods of new tenants cannot stall or grow the deployment; a message on
//! the wrong shard is refused; an erased tenant's late records leave no
//! plaintext behind; least-privilege broker users are enough and no more.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::byok::{WAIT, setup};
use common::pair::{Pair, tenant_on};
use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::broker::{INGEST_EXCHANGE, PROTOBUF_CONTENT_TYPE, shard_queue};
use keyseal::clock::{ManualClock, SystemClock};
use keyseal::proto::v1::IngestRecord;
use keyvault_emulator::{Fault, FaultAction, RecoveryLevel};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use prost::Message;
use serde_json::{Value, json};

const GRACE_PASSED: Duration = Duration::from_secs(51 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockdown_is_not_lifted_by_pointing_the_tenant_at_another_key() {
    let pair = Pair::start("trust-lockdown", &["--probe-interval", "100ms"]).await;
    let tenant = tenant_on(1, "locked");
    let [owner, other] = pair.both(&tenant);
    pair.vault.create_rsa("revoked").await;
    pair.vault.create_rsa("another").await;
    assert_eq!(pair.enable(&owner, &tenant, &pair.vault.key_uri("revoked")).await.0, 200);
    let records = synthetic(&tenant, "r-", 5, 64, 1);
    publish_confirmed(&pair.vhost, &records).await;
    wait_for_records(&owner, &tenant, 5, WAIT).await;

    pair.vault.patch("revoked", json!({"attributes": {"enabled": false}})).await;
    pair.wait_for_status(&tenant, "degraded", |s| s["state"] == "degraded").await;
    pair.clock.advance(GRACE_PASSED);
    pair.wait_for_status(&tenant, "locked down", |s| s["state"] == "locked_down").await;

    for base in [&owner, &other] {
        let (code, error) = pair.enable(base, &tenant, &pair.vault.key_uri("another")).await;
        assert_eq!(code, 423, "{error}");
        assert_eq!(error["error"]["code"], "tenant_locked_down");
    }
    // Probes of the healthy other key (were it enabled) would restore the
    // tenant: after the next probe, it is still locked down.
    pair.clock.advance(Duration::from_secs(60));
    let after = keyseal::clock::rfc3339(keyseal::clock::Clock::now_ms(&pair.clock));
    let status = pair
        .wait_for_status(&tenant, "probed again", |s| s["keyHealth"]["lastProbe"].as_str() >= Some(after.as_str()))
        .await;
    assert_eq!(status["state"], "locked_down", "{status}");
    assert_eq!(status["encryption"]["keyUri"], pair.vault.key_uri("revoked"));
    let read = reqwest::get(format!("{other}/v1/tenants/{tenant}/records/{}", records[0].record_id)).await.unwrap();
    assert_eq!(read.status(), 423);

    // Only the key that caused it lifts it.
    pair.vault.patch("revoked", json!({"attributes": {"enabled": true}})).await;
    pair.wait_for_status(&tenant, "restored", |s| s["state"] == "active").await;
    assert_eq!(get_record(&other, &tenant, &records[0].record_id).await, (200, records[0].payload.clone()));
    pair.stop().await;
}

/// A broker user of the vhost with exactly the permissions the docs give
/// it, and its AMQP URL.
struct BrokerUser {
    name: String,
    url: String,
}

impl BrokerUser {
    fn new(vhost: &Vhost, role: &str, configure: &str, write: &str, read: &str) -> Self {
        let name = format!("{}-{role}", vhost.name);
        rabbitmqctl(&["add_user", &name, "pw"]);
        rabbitmqctl(&["set_permissions", "-p", &vhost.name, &name, configure, write, read]);
        Self { url: format!("amqp://{name}:pw@127.0.0.1:5672/{}", vhost.name), name }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl").args(["delete_user", &self.name]).output();
    }
}

/// The permissions docs/security.md gives producers and workers.
const PRODUCER: [&str; 3] = ["^$", "^keyseal\\.ingest$", "^$"];
const WORKER: [&str; 3] =
    ["^(keyseal\\..*|amq\\.gen-.*)$", "^(keyseal\\..*|amq\\.gen-.*|amq\\.default)$", "^(keyseal\\..*|amq\\.gen-.*)$"];

async fn publish_as(url: &str, record: &IngestRecord, properties: BasicProperties) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let confirm = channel
        .basic_publish(
            INGEST_EXCHANGE.into(),
            record.tenant_id.as_str().into(),
            BasicPublishOptions::default(),
            &record.encode_to_vec(),
            properties.with_content_type(PROTOBUF_CONTENT_TYPE.into()).with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    keyseal::broker::close(&connection, "published").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_users_suffice_and_a_producers_user_id_does_not_stall_placement() {
    let vhost = Vhost::new("trust-users");
    let worker_user = BrokerUser::new(&vhost, "worker", WORKER[0], WORKER[1], WORKER[2]);
    let producer = BrokerUser::new(&vhost, "producer", PRODUCER[0], PRODUCER[1], PRODUCER[2]);
    let dir = tempfile::tempdir().unwrap();
    let url = worker_user.url.clone();
    let worker = start_worker_at(&url, dir.path(), &["--shards", "2"]).await;
    let base = base_url(&worker);

    // The producer publishes as itself, naming itself in `user_id` (which
    // the broker checks against the connection that publishes it).
    let stamped = synthetic("stamped", "r-", 1, 32, 1).remove(0);
    publish_as(&producer.url, &stamped, BasicProperties::default().with_user_id(producer.name.as_str().into())).await;
    let after: Vec<IngestRecord> = ["second", "third"].iter().flat_map(|t| synthetic(t, "r-", 2, 32, 1)).collect();
    for record in &after {
        publish_as(&producer.url, record, BasicProperties::default()).await;
    }
    for (tenant, count) in [("second", 2), ("third", 2), ("stamped", 1)] {
        wait_for_records(&base, tenant, count, Duration::from_secs(20)).await;
    }

    // What the producer may not do.
    let connection = Connection::connect(&producer.url, ConnectionProperties::default()).await.unwrap();
    let refused = |e: lapin::Error| e.to_string().contains("ACCESS_REFUSED") || e.to_string().contains("403");
    let channel = connection.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let lease = channel.queue_declare("keyseal.shard-0.owner".into(), exclusive, FieldTable::default()).await;
    assert!(lease.is_err_and(refused), "a producer cannot take a shard");
    let channel = connection.create_channel().await.unwrap();
    let workers = channel.basic_consume(
        "keyseal.workers".into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    assert!(workers.await.is_err_and(refused), "a producer cannot pose as a worker");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let to_lease = channel
        .basic_publish(
            "".into(),
            "keyseal.shard-0.owner".into(),
            BasicPublishOptions::default(),
            b"",
            Default::default(),
        )
        .await;
    let delivered = match to_lease {
        Ok(confirm) => confirm.await.map(|c| c.is_ack()).unwrap_or(false),
        Err(_) => false,
    };
    assert!(!delivered, "a producer cannot reach a lease queue");
    keyseal::broker::close(&connection, "done").await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_tenants_late_records_leave_no_payload_behind() {
    let vhost = Vhost::new("trust-erased");
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let base = base_url(&worker);
    publish_confirmed(&vhost, &synthetic("gone", "r-", 3, 32, 1)).await;
    wait_for_records(&base, "gone", 3, WAIT).await;
    let erased = reqwest::Client::new().delete(format!("{base}/v1/tenants/gone?confirm=gone")).send().await.unwrap();
    assert_eq!(erased.status(), 200);
    let summary: Value = erased.json().await.unwrap();
    assert!(summary["earlierCopies"].as_str().unwrap().contains("copies of the shard made before"), "{summary}");
    wait_until("the route binding to go", WAIT, || async { !bound(&vhost, "gone") }).await;

    let secret = b"LATE-PLAINTEXT-THAT-MUST-NOT-SURVIVE".to_vec();
    let mut late = synthetic("gone", "late-", 2, 8, 1);
    late.iter_mut().for_each(|r| r.payload = secret.clone());
    publish_confirmed(&vhost, &late).await;
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    for _ in 0..2 {
        let dead = next_dead_letter(&channel, WAIT).await.expect("a dead letter");
        assert_eq!(reason(&dead), "tenant_erased");
        assert!(dead.delivery.data.is_empty(), "an erased tenant's dead letter carries no payload");
        assert_eq!(dead.delivery.routing_key.as_str(), "gone", "its routing key and headers stay");
    }
    wait_until("the binding the intake made again to go", WAIT, || async { !bound(&vhost, "gone") }).await;
    worker.stop().await;
}

/// Whether `tenant` has a binding on `keyseal.route`.
fn bound(vhost: &Vhost, tenant: &str) -> bool {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_bindings", "-q", "-p", &vhost.name, "source_name", "routing_key"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|line| {
        let mut fields = line.split('\t');
        fields.next() == Some("keyseal.route") && fields.next() == Some(tenant)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_on_another_shards_queue_is_dead_lettered_wrong_shard() {
    let vhost = Vhost::new("trust-shard");
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &["--shards", "2"]).await;
    let base = base_url(&worker);
    let tenant = tenant_on(0, "homed");
    let record = synthetic(&tenant, "r-", 1, 16, 1).remove(0);
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let properties = BasicProperties::default().with_content_type(PROTOBUF_CONTENT_TYPE.into()).with_delivery_mode(2);
    // Straight into shard 1's queue, with the tenant as routing key.
    let wrong_queue = shard_queue(1);
    channel
        .basic_publish(
            "".into(),
            wrong_queue.as_str().into(),
            BasicPublishOptions::default(),
            &record.encode_to_vec(),
            properties,
        )
        .await
        .unwrap();
    let dead = next_dead_letter(&channel, WAIT).await.expect("a dead letter");
    // The routing key was the queue's name, not the tenant: refused for that first.
    assert_eq!(reason(&dead), "routing_key_mismatch");
    // With the tenant as routing key (a binding someone made by hand).
    channel
        .queue_bind(
            wrong_queue.as_str().into(),
            "keyseal.route".into(),
            tenant.as_str().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish_confirmed(&vhost, &[record]).await;
    let dead = next_dead_letter(&channel, WAIT).await.expect("a dead letter");
    assert_eq!(reason(&dead), "wrong_shard");
    assert_eq!(counts(&base, &tenant).await, None, "nothing stored on the wrong shard");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_tenants_is_placed_at_the_configured_rate() {
    let vhost = Vhost::new("trust-flood");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &["--new-tenants-per-minute", "3"]).await;
    let base = base_url(&worker);
    let tenants: Vec<String> = (0..5).map(|i| format!("new-{i}")).collect();
    let records: Vec<IngestRecord> = tenants.iter().flat_map(|t| synthetic(t, "r-", 1, 16, 1)).collect();
    publish_confirmed(&vhost, &records).await;
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut limited = Vec::new();
    for _ in 0..2 {
        let dead = next_dead_letter(&channel, WAIT).await.expect("a dead letter");
        assert_eq!(reason(&dead), "tenant_rate_limited");
        limited.push(dead.delivery.routing_key.to_string());
    }
    let mut stored = 0;
    for tenant in &tenants {
        if !limited.contains(tenant) {
            wait_for_records(&base, tenant, 1, WAIT).await;
            stored += 1;
        }
    }
    assert_eq!(stored, 3);
    // A minute later there is room again.
    clock.advance(Duration::from_secs(60));
    let again: Vec<IngestRecord> = records.iter().filter(|r| limited.contains(&r.tenant_id)).cloned().collect();
    publish_confirmed(&vhost, &again).await;
    for tenant in &limited {
        wait_for_records(&base, tenant, 1, WAIT).await;
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_of_a_tenant_whose_vault_hangs_wait_for_it_once() {
    let s =
        setup("trust-dedupe", RecoveryLevel::Recoverable, None, &["--batch-size", "2", "--vault-retry-budget", "0s"])
            .await;
    s.rsa_key("k").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    let records = s.publish("acme", "r-", 12).await;
    s.clock.advance(Duration::from_secs(49 * 3600));
    assert_eq!(s.sweep().await["seal"]["sealed"], 12);
    s.worker.only().shard.keyring.forget_cached();
    s.vault.emulator.set_faults(vec![Fault {
        key: Some("k".into()),
        operation: Some("unwrapkey".into()),
        action: FaultAction::Hang,
    }]);
    // Every record again: six batches of two, each needing the vault to
    // compare with its stored copy.
    let started = std::time::Instant::now();
    publish_confirmed(&s.vhost, &records).await;
    let connection = keyseal::broker::connect(&s.vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    for _ in 0..records.len() {
        let dead = next_dead_letter(&channel, WAIT).await.expect("a dead letter");
        assert_eq!(reason(&dead), "duplicate_unverifiable");
    }
    // One wait for the vault (3 s), not one per batch (18 s).
    assert!(started.elapsed() < Duration::from_secs(12), "took {:?}", started.elapsed());
    s.vault.emulator.clear_faults();
    s.worker.stop().await;
}
