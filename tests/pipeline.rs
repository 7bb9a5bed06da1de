//! End-to-end pipeline tests against the real RabbitMQ and a real RocksDB:
//! publish → store → read, encryption at rest, sealing, dead letters,
//! tampering, and the event relay.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use keyseal::broker::publish::{Publisher, record_properties, synthetic};
use keyseal::broker::{DEAD_LETTER_QUEUE, ERROR_HEADER, EVENTS_EXCHANGE};
use keyseal::clock::{ManualClock, SystemClock};
use keyseal::placement::shard_of;
use keyseal::proto::v1::{Event, IngestRecord, event::Kind};
use keyseal::storage::{CF_HOT, Store, keys};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use prost::Message;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_records_read_back_identically_for_many_tenants() {
    let vhost = Vhost::new("roundtrip");
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let base = base_url(&worker);

    let tenants: Vec<String> = (0..8).map(|i| format!("tenant-{i}")).collect();
    let records: Vec<IngestRecord> = tenants.iter().flat_map(|t| synthetic(t, "r-", 50, 700, 1)).collect();
    publish_confirmed(&vhost, &records).await;

    for tenant in &tenants {
        wait_for_records(&base, tenant, 50, WAIT).await;
    }
    for record in &records {
        let (status, body) = get_record(&base, &record.tenant_id, &record.record_id).await;
        assert_eq!(status, 200, "{}/{}", record.tenant_id, record.record_id);
        assert_eq!(body, record.payload, "{}/{}", record.tenant_id, record.record_id);
    }
    let (status, body) = get_record(&base, "tenant-0", "no-such-record").await;
    assert_eq!(status, 404);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "record_not_found");
    worker.stop().await;
}

/// Every byte sequence of `needle` found in files under `dir`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle) {
            hits.push(path);
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_reaches_the_disk() {
    let vhost = Vhost::new("plaintext");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &[]).await;
    let base = base_url(&worker);

    let marker = b"KEYSEAL-CANARY-8c1f0e7a-must-never-be-on-disk";
    let records: Vec<IngestRecord> = (0..20)
        .map(|i| IngestRecord {
            tenant_id: "canary".into(),
            record_id: format!("c-{i}"),
            observed_at_unix_ms: 1,
            payload: marker.repeat(20),
            attributes: BTreeMap::from([("note".into(), String::from_utf8(marker.to_vec()).unwrap())]),
        })
        .collect();
    publish_confirmed(&vhost, &records).await;
    wait_for_records(&base, "canary", 20, WAIT).await;
    // Seal half of the story too: both layers must be ciphertext.
    clock.advance(Duration::from_secs(49 * 3600));
    reqwest::Client::new().post(format!("{base}/v1/sweeps")).send().await.unwrap();
    assert_eq!(counts(&base, "canary").await, Some((0, 20)));
    worker.only().shard.store.flush().unwrap();
    worker.stop().await;

    assert_eq!(files_containing(dir.path(), marker), Vec::<std::path::PathBuf>::new());
    // The search itself works: a file with the marker is found.
    std::fs::write(dir.path().join("control"), [b"x".as_slice(), marker].concat()).unwrap();
    assert_eq!(files_containing(dir.path(), marker).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_seal_after_48_hours_of_residence() {
    let vhost = Vhost::new("sealing");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &[]).await;
    let base = base_url(&worker);
    let http = reqwest::Client::new();
    let sweep = || async {
        let summary: serde_json::Value =
            http.post(format!("{base}/v1/sweeps")).send().await.unwrap().json().await.unwrap();
        summary["seal"]["sealed"].as_u64().unwrap()
    };

    let old = synthetic("acme", "old-", 30, 512, 1);
    publish_confirmed(&vhost, &old).await;
    wait_for_records(&base, "acme", 30, WAIT).await;
    clock.advance(Duration::from_secs(24 * 3600));
    let young = synthetic("acme", "young-", 12, 512, 1);
    publish_confirmed(&vhost, &young).await;
    wait_for_records(&base, "acme", 42, WAIT).await;

    clock.advance(Duration::from_secs(24 * 3600));
    assert_eq!(sweep().await, 0, "exactly 48 h of residence is not more than 48 h");
    clock.advance(Duration::from_millis(1));
    assert_eq!(sweep().await, 30);
    assert_eq!(counts(&base, "acme").await, Some((12, 30)));
    assert_eq!(sweep().await, 0, "a second sweep has nothing to do");

    for record in old.iter().chain(&young) {
        let (status, body) = get_record(&base, "acme", &record.record_id).await;
        assert_eq!((status, body.as_slice()), (200, record.payload.as_slice()));
    }
    clock.advance(Duration::from_secs(24 * 3600));
    assert_eq!(sweep().await, 12);
    assert_eq!(counts(&base, "acme").await, Some((0, 42)));
    worker.stop().await;
}

fn ingest(tenant: &str, id: &str, payload: &[u8]) -> IngestRecord {
    IngestRecord {
        tenant_id: tenant.into(),
        record_id: id.into(),
        observed_at_unix_ms: 5,
        payload: payload.to_vec(),
        attributes: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_its_reason_and_good_input_is_stored() {
    let vhost = Vhost::new("deadletter");
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let base = base_url(&worker);
    let publisher = Publisher::connect(&vhost.amqp_url()).await.unwrap();

    let good1 = ingest("acme", "good-1", b"first");
    let good2 = ingest("acme", "good-2", b"second");
    // The tenant's first record takes the placement hop through the intake;
    // once placed, later records go straight to its shard and can overtake
    // it. Order across that hop is not promised, so "first" is stored
    // before its conflicting re-send is published.
    publish_confirmed(&vhost, std::slice::from_ref(&good1)).await;
    wait_for_records(&base, "acme", 1, WAIT).await;
    let messages: Vec<(String, Vec<u8>, Option<&str>)> = vec![
        ("acme".into(), b"\xff\xfe not protobuf".to_vec(), Some("malformed_protobuf")),
        ("Bad_Tenant".into(), ingest("Bad_Tenant", "x", b"p").encode_to_vec(), Some("invalid_tenant_id")),
        ("acme".into(), ingest("acme", "", b"p").encode_to_vec(), Some("invalid_record_id")),
        ("acme".into(), ingest("acme", &"r".repeat(129), b"p").encode_to_vec(), Some("invalid_record_id")),
        ("acme".into(), ingest("acme", "big", &vec![0u8; (1 << 20) + 1]).encode_to_vec(), Some("payload_too_large")),
        ("acme".into(), good2.encode_to_vec(), None),
        ("acme".into(), ingest("acme", "good-1", b"changed").encode_to_vec(), Some("conflicting_duplicate")),
        ("acme".into(), good2.encode_to_vec(), None), // an exact redelivery: acked, not stored twice
    ];
    for (routing_key, body, _) in &messages {
        let confirm = publisher.publish_raw(routing_key, body, record_properties()).await.unwrap();
        assert!(confirm.await.unwrap().is_ack());
    }

    let expected: Vec<&str> = messages.iter().filter_map(|(_, _, reason)| *reason).collect();
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut reasons = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while reasons.len() < expected.len() {
        assert!(std::time::Instant::now() < deadline, "dead letters so far: {reasons:?}");
        match channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            Some(message) => {
                let headers = message.delivery.properties.headers().clone().unwrap_or_default();
                match headers.inner().get(ERROR_HEADER) {
                    Some(AMQPValue::LongString(reason)) => reasons.push(reason.to_string()),
                    other => panic!("dead letter without {ERROR_HEADER}: {other:?}"),
                }
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut got = reasons.clone();
    got.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want);

    wait_for_records(&base, "acme", 2, WAIT).await;
    assert_eq!(get_record(&base, "acme", "good-1").await, (200, b"first".to_vec()));
    assert_eq!(get_record(&base, "acme", "good-2").await, (200, b"second".to_vec()));
    assert_eq!(get_record(&base, "acme", "big").await.0, 404);
    // The worker carried on: it still takes new records.
    publish_confirmed(&vhost, &[ingest("acme", "after", b"later")]).await;
    wait_for_records(&base, "acme", 3, WAIT).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_ciphertexts_fail_integrity_instead_of_returning_wrong_plaintext() {
    let vhost = Vhost::new("tamper");
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let base = base_url(&worker);
    publish_confirmed(&vhost, &[ingest("acme", "a", b"alpha"), ingest("acme", "b", b"bravo")]).await;
    wait_for_records(&base, "acme", 2, WAIT).await;
    worker.stop().await;

    {
        let store = Store::open(&dir.path().join("db")).unwrap();
        let db = store.raw();
        let hot = db.cf_handle(CF_HOT).unwrap();
        let (ka, kb) = (keys::record_key("acme", "a"), keys::record_key("acme", "b"));
        let va = db.get_cf(hot, &ka).unwrap().unwrap();
        let vb = db.get_cf(hot, &kb).unwrap().unwrap();
        db.put_cf(hot, &ka, &vb).unwrap();
        db.put_cf(hot, &kb, &va).unwrap();
    }

    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let base = base_url(&worker);
    for id in ["a", "b"] {
        let (status, body) = get_record(&base, "acme", id).await;
        assert_eq!(status, 500, "record {id}");
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"]["code"], "integrity_error");
        assert!(!String::from_utf8_lossy(&body).contains("alpha") && !String::from_utf8_lossy(&body).contains("bravo"));
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Two shards in one worker: each event names its tenant's shard (in the
/// body and the `x-keyseal-shard` header), and each shard's sequences
/// arrive once each, with none missing.
async fn events_of_a_publish_and_seal_run_arrive_once_per_shard_and_sequence() {
    let vhost = Vhost::new("events");
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    keyseal::broker::declare_topology(&connection, None).await.unwrap();
    channel.queue_declare("test.events".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    channel
        .queue_bind(
            "test.events".into(),
            EVENTS_EXCHANGE.into(),
            "tenant.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut events = channel
        .basic_consume("test.events".into(), "t".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &["--shards", "2"]).await;
    let base = base_url(&worker);
    // One tenant on each shard.
    let [red, blue] = [0, 1].map(|shard| (0..).map(|i| format!("t-{i}")).find(|t| shard_of(t, 2).0 == shard).unwrap());
    let records: Vec<_> = [&red, &blue].iter().flat_map(|t| synthetic(t, "e-", 25, 100, 1)).collect();
    publish_confirmed(&vhost, &records).await;
    wait_for_records(&base, &red, 25, WAIT).await;
    wait_for_records(&base, &blue, 25, WAIT).await;
    clock.advance(Duration::from_secs(49 * 3600));
    reqwest::Client::new().post(format!("{base}/v1/sweeps")).send().await.unwrap();

    let mut sequences = [BTreeSet::new(), BTreeSet::new()];
    let (mut stored, mut sealed) = (BTreeMap::<String, u32>::new(), BTreeMap::<String, u32>::new());
    let deadline = tokio::time::Instant::now() + WAIT;
    while sealed.values().sum::<u32>() < 50 {
        let delivery =
            tokio::time::timeout_at(deadline, events.next()).await.expect("events keep arriving").unwrap().unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let event = Event::decode(delivery.data.as_slice()).unwrap();
        assert_eq!(event.shard, shard_of(&event.tenant_id, 2).0, "{} names its shard", event.tenant_id);
        let header = delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-keyseal-shard").cloned());
        assert_eq!(header, Some(AMQPValue::LongUInt(event.shard)));
        let (shard, sequence) = (event.shard, event.sequence);
        assert!(sequences[shard as usize].insert(sequence), "shard {shard} sequence {sequence} seen twice");
        let kind = event.kind.clone().unwrap();
        assert_eq!(
            delivery.routing_key.as_str(),
            format!("tenant.{}.{}", event.tenant_id, keyseal::proto::names::kind_name(&kind))
        );
        match kind {
            Kind::RecordsStored(s) => *stored.entry(event.tenant_id).or_default() += s.count,
            Kind::RecordsSealed(s) => *sealed.entry(event.tenant_id).or_default() += s.count,
            _ => {}
        }
    }
    assert_eq!(stored, BTreeMap::from([(blue.clone(), 25), (red.clone(), 25)]));
    assert_eq!(sealed, BTreeMap::from([(blue, 25), (red, 25)]));
    for (shard, seen) in sequences.iter().enumerate() {
        let last = *seen.last().expect("every shard relayed events");
        assert_eq!(
            seen.iter().copied().collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "shard {shard}: none missing"
        );
    }
    worker.stop().await;
}
