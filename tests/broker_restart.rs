//! The broker restarts while workers consume: each worker loses its leases,
//! stops its shards, reconnects by itself, the shards are taken again (each
//! by exactly one worker) and nothing is lost. This binary holds only these
//! tests because they stop the shared broker's application for a moment,
//! one outage at a time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fleet::*;
use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::clock::SystemClock;
use keyseal::placement::shard_of;

/// Both tests stop the one broker: they take turns.
static OUTAGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn ready(base: &str) -> bool {
    reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_recovers_from_a_broker_restart_without_losing_records() {
    const TOTAL: u64 = 10_000;
    let _turn = OUTAGES.lock().await;
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

    let stored_before_outage = counts(&base, "bounce").await.unwrap().0;
    assert!(stored_before_outage < TOTAL, "the restart happens mid-consumption");
    let outage = BrokerStopped::begin();
    wait_until("readiness to drop", Duration::from_secs(30), || async { !ready(&base).await }).await;
    // The lease went with the broker: the shard stops until it is taken again.
    wait_until("the shard to be given up", Duration::from_secs(30), || async { worker.owned.is_empty() }).await;
    drop(outage);

    wait_until("the worker to take its shard again", Duration::from_secs(60), || async {
        worker.owned.ids() == [keyseal::placement::ShardId(0)]
    })
    .await;
    wait_until("the worker to be ready", Duration::from_secs(30), || ready(&base)).await;
    let after = synthetic("bounce", "a-", 1000, 256, 1);
    publish_confirmed(&vhost, &after).await;
    wait_for_records(&base, "bounce", TOTAL + 1000, Duration::from_secs(120)).await;
    for record in before.iter().step_by(101).chain(after.iter().step_by(101)) {
        let (status, body) = get_record(&base, "bounce", &record.record_id).await;
        assert_eq!((status, body.as_slice()), (200, record.payload.as_slice()));
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_every_shard_has_one_owner_and_nothing_is_lost() {
    const SHARDS: u32 = 4;
    let _turn = OUTAGES.lock().await;
    let vhost = Vhost::new("restart-fleet");
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::new(&vhost, dir.path(), SHARDS, &["--batch-size", "5", "--prefetch", "10"]);
    (0..2).for_each(|_| fleet.spawn(&[]));
    fleet.wait_balanced(2, 2, Duration::from_secs(60)).await;
    let before = tenants(16, 500, "b-");
    publish_confirmed(&vhost, &before).await;
    let stored = || async {
        let all = fleet.ownership().await?;
        let mut total = 0;
        for t in 0..16 {
            let tenant = format!("tenant-{t}");
            let owner = all.iter().position(|s| s.contains(&shard_of(&tenant, SHARDS).0))?;
            total += counts(&fleet.base(owner), &tenant).await.map_or(0, |(hot, sealed)| hot + sealed);
        }
        Some(total)
    };
    wait_until("consumption to start", Duration::from_secs(60), || async { stored().await.is_some_and(|n| n > 0) })
        .await;
    assert!(stored().await.is_some_and(|n| n < before.len() as u64), "the restart happens mid-consumption");

    let outage = BrokerStopped::begin();
    wait_until("every worker to give its shards up", Duration::from_secs(30), || async {
        owned(&fleet.base(0)).await.is_none() && owned(&fleet.base(1)).await.is_none()
    })
    .await;
    drop(outage);

    fleet.wait_balanced(2, 2, Duration::from_secs(90)).await;
    let after = tenants(16, 50, "a-");
    publish_confirmed(&vhost, &after).await;
    let all: Vec<_> = before.iter().chain(&after).cloned().collect();
    let expected = expected_counts(&all);
    wait_for_all(&fleet, &expected, Duration::from_secs(120)).await;
    for record in all.iter().step_by(97) {
        let (status, body) = get_record(&fleet.base(1), &record.tenant_id, &record.record_id).await;
        assert_eq!((status, body), (200, record.payload.clone()), "{}", record.record_id);
    }
    (0..2).for_each(|_| fleet.terminate(0));
    for (shard, stored) in stored_per_shard(dir.path(), SHARDS).into_iter().enumerate() {
        let home: std::collections::BTreeMap<String, u64> = expected
            .iter()
            .filter(|(t, _)| shard_of(t, SHARDS).0 as usize == shard)
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        assert_eq!(stored, home, "shard {shard} holds exactly its tenants' records, once");
    }
}
