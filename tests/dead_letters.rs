//! Dead letters, end to end against the real RabbitMQ: a message the worker
//! cannot accept is never lost (a dead letter the broker returns leaves the
//! original unacked), never expires in the dead-letter queue, and never
//! holds up other tenants' records, not even a redelivery whose stored
//! copy cannot be decrypted because its tenant's vault is down.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::byok::{Setup, setup};
use common::*;
use keyseal::broker::publish::{Publisher, record_properties, synthetic};
use keyseal::broker::{DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE};
use keyseal::clock::SystemClock;
use keyseal::proto::v1::IngestRecord;
use keyseal::worker::Worker;
use keyvault_emulator::RecoveryLevel;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use prost::Message;

const WAIT: Duration = Duration::from_secs(30);
const HOURS_49: Duration = Duration::from_secs(49 * 3600);

async fn test_channel(vhost: &Vhost) -> (lapin::Connection, Channel) {
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

async fn consuming_worker(vhost: &Vhost, dir: &std::path::Path) -> Worker {
    let worker = start_worker(vhost, dir, Arc::new(SystemClock), &[]).await;
    let ready = worker.only().ready.clone();
    wait_until("the worker to consume", WAIT, || {
        let ready = ready.clone();
        async move { ready.is_ready() }
    })
    .await;
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_that_cannot_be_verified_is_dead_lettered_and_other_tenants_go_on() {
    let s = setup("dl-unverifiable", RecoveryLevel::Recoverable, None, &[]).await;
    s.rsa_key("a-key").await;
    assert_eq!(s.enable("tenant-a", &s.vault.key_uri("a-key")).await.0, 200);
    let sealed = s.publish("tenant-a", "s-", 5).await;
    s.clock.advance(HOURS_49);
    assert_eq!(s.sweep().await["seal"]["sealed"], 5);

    // The vault goes away; a new worker on the same data dir starts with
    // nothing unwrapped in memory.
    let Setup { vault, vhost, _dir: dir, worker, clock, .. } = s;
    let flags = vault.worker_flags();
    worker.stop().await;
    vault.emulator.shutdown().await;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &flags).await;
    let base = base_url(&worker);

    publish_confirmed(&vhost, &sealed[..1]).await;
    let started = Instant::now();
    publish_confirmed(&vhost, &synthetic("tenant-b", "b-", 100, 300, 1)).await;
    wait_for_records(&base, "tenant-b", 100, Duration::from_secs(15)).await;
    println!("100 records of another tenant stored {:?} after the unverifiable redelivery", started.elapsed());

    let (_connection, channel) = test_channel(&vhost).await;
    let dead = next_dead_letter(&channel, WAIT).await.expect("the redelivery is dead-lettered");
    assert_eq!(reason(&dead), "duplicate_unverifiable");
    assert_eq!(IngestRecord::decode(dead.delivery.data.as_slice()).unwrap().record_id, sealed[0].record_id);
    assert!(next_dead_letter(&channel, Duration::from_millis(300)).await.is_none(), "nothing else was rejected");
    assert_eq!(counts(&base, "tenant-a").await, Some((0, 5)), "the stored copy is untouched");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_broker_returns_leaves_the_original_unacked() {
    let vhost = Vhost::new("dl-returned");
    let dir = tempfile::tempdir().unwrap();
    let worker = consuming_worker(&vhost, dir.path()).await;
    let (_connection, channel) = test_channel(&vhost).await;
    // Dead letters are unroutable until the worker's next session declares
    // the topology (and so binds the queue) again.
    channel
        .queue_unbind(DEAD_LETTER_QUEUE.into(), DEAD_LETTER_EXCHANGE.into(), "#".into(), FieldTable::default())
        .await
        .unwrap();
    let publisher = Publisher::connect(&vhost.amqp_url()).await.unwrap();
    let confirm = publisher.publish_raw("acme", b"\xff\xfe not protobuf", record_properties()).await.unwrap();
    assert!(confirm.await.unwrap().is_ack());

    // Had the returned attempt counted as done, the original would be acked and gone.
    let dead = next_dead_letter(&channel, WAIT).await.expect("the message was not lost");
    assert_eq!(reason(&dead), "malformed_protobuf");
    assert!(next_dead_letter(&channel, Duration::from_millis(300)).await.is_none(), "dead-lettered once");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_does_not_expire_with_its_original() {
    let vhost = Vhost::new("dl-expiration");
    let dir = tempfile::tempdir().unwrap();
    let worker = consuming_worker(&vhost, dir.path()).await;
    let (_connection, channel) = test_channel(&vhost).await;
    let publisher = Publisher::connect(&vhost.amqp_url()).await.unwrap();
    let properties = record_properties().with_expiration("1000".into());
    let published = Instant::now();
    let confirm = publisher.publish_raw("acme", b"\xff\xfe not protobuf", properties).await.unwrap();
    assert!(confirm.await.unwrap().is_ack());

    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    wait_until("the dead letter to arrive", WAIT, || async {
        let queue = channel.queue_declare(DEAD_LETTER_QUEUE.into(), passive, FieldTable::default()).await.unwrap();
        queue.message_count() == 1
    })
    .await;
    // Past the original's expiration, the dead letter is still there.
    let expired = Duration::from_millis(2000);
    wait_until("the original expiration to pass", WAIT, || async { published.elapsed() > expired }).await;
    let dead = next_dead_letter(&channel, Duration::ZERO).await.expect("the dead letter outlived the expiration");
    assert_eq!(reason(&dead), "malformed_protobuf");
    assert_eq!(dead.delivery.properties.expiration(), &None);
    worker.stop().await;
}
