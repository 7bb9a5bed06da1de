//! `--prefetch-bytes`: the prefetch window follows message sizes, so large
//! messages never fill the whole count window (1000 x 1 MiB would be a GiB
//! in memory). Read from the broker's own view of the consumer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Vhost, publish_confirmed, wait_for_records, wait_until};
use keyseal::broker::publish::synthetic;
use keyseal::clock::SystemClock;

/// The prefetch count RabbitMQ holds for the vhost's consumers of the one
/// shard's queue (the intake queue `keyseal.ingest` has its own consumer).
fn broker_prefetch(vhost: &Vhost) -> Vec<u16> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_consumers", "-p", &vhost.name, "queue_name", "prefetch_count", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == keyseal::broker::shard_queue(0)).then(|| fields.next()?.parse().ok())?
        })
        .collect()
}

#[tokio::test]
async fn the_window_narrows_for_large_messages_and_widens_for_small_ones() {
    let vhost = Vhost::new("prefetch-bytes");
    let dir = tempfile::tempdir().unwrap();
    let worker = common::start_worker(
        &vhost,
        dir.path(),
        Arc::new(SystemClock),
        &["--prefetch", "500", "--prefetch-bytes", "8MiB"],
    )
    .await;
    let base = common::base_url(&worker);
    let window = |expected: fn(u16) -> bool| {
        let vhost = &vhost;
        move || async move { broker_prefetch(vhost).first().copied().is_some_and(expected) }
    };
    // Before anything arrives the window assumes the largest messages.
    wait_until("a cautious first window", Duration::from_secs(10), window(|p| (1..=8).contains(&p))).await;

    publish_confirmed(&vhost, &synthetic("small", "s-", 300, 512, 1)).await;
    wait_for_records(&base, "small", 300, Duration::from_secs(20)).await;
    wait_until("the full count window for small messages", Duration::from_secs(10), window(|p| p == 500)).await;

    publish_confirmed(&vhost, &synthetic("large", "l-", 40, 1 << 20, 1)).await;
    wait_for_records(&base, "large", 40, Duration::from_secs(30)).await;
    // 8 MiB / (1 MiB + framing) = 7 deliveries in flight at most.
    wait_until("a window of 8 MiB of large messages", Duration::from_secs(10), window(|p| p == 7)).await;
    assert_eq!(broker_prefetch(&vhost).len(), 1, "one consumer: re-subscribing cancels the old one");
    worker.stop().await;
}
