//! The broker restarts while the worker consumes: the worker reconnects by
//! itself and nothing is lost. This binary holds only this test because it
//! stops the shared broker's application for a moment.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::clock::SystemClock;

async fn ready(base: &str) -> bool {
    reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_recovers_from_a_broker_restart_without_losing_records() {
    const TOTAL: u64 = 10_000;
    let vhost = Vhost::new("restart");
    let dir = tempfile::tempdir().unwrap();
    // Small batches so the restart lands mid-consumption.
    let worker =
        start_worker(&vhost, dir.path(), Arc::new(SystemClock), &["--batch-size", "5", "--prefetch", "10"]).await;
    let base = base_url(&worker);
    let before = synthetic("bounce", "b-", TOTAL as usize, 256, 1);
    publish_confirmed(&vhost, &before).await;
    wait_until("consumption to start", Duration::from_secs(30), || async {
        counts(&base, "bounce").await.is_some_and(|(hot, _)| hot > 0)
    })
    .await;

    let outage = BrokerStopped::begin();
    let stored_during_outage = counts(&base, "bounce").await.unwrap().0;
    wait_until("readiness to drop", Duration::from_secs(30), || async { !ready(&base).await }).await;
    drop(outage);
    assert!(stored_during_outage < TOTAL, "the restart happened mid-consumption");

    wait_until("the worker to reconnect", Duration::from_secs(60), || ready(&base)).await;
    let after = synthetic("bounce", "a-", 1000, 256, 1);
    publish_confirmed(&vhost, &after).await;
    wait_for_records(&base, "bounce", TOTAL + 1000, Duration::from_secs(120)).await;
    for record in before.iter().step_by(101).chain(after.iter().step_by(101)) {
        let (status, body) = get_record(&base, "bounce", &record.record_id).await;
        assert_eq!((status, body.as_slice()), (200, record.payload.as_slice()));
    }
    worker.stop().await;
}
