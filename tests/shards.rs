//! Shards: several `keyseal run` processes share one deployment through
//! RabbitMQ. Placement by the documented hash, leases (exclusive queues),
//! balancing toward ceil(N / W) shards each, takeover after SIGKILL, and a
//! pinned shard opened by exactly one of two racing workers.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::fleet::*;
use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::clock::SystemClock;
use keyseal::placement::shard_of;
use keyseal::worker::Worker;

const SHARDS: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_eight_shards_and_each_tenant_lives_on_its_hashed_shard() {
    let vhost = Vhost::new("shards-place");
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::new(&vhost, dir.path(), SHARDS, &[]);
    (0..3).for_each(|_| fleet.spawn(&[]));
    fleet.wait_balanced(2, 3, Duration::from_secs(60)).await;

    let records = tenants(120, 25, "r-");
    publish_confirmed(&vhost, &records).await;
    let expected = expected_counts(&records);
    wait_for_all(&fleet, &expected, Duration::from_secs(120)).await;

    // Every worker answers for every tenant: the owner itself, the others
    // by forwarding to the owner's lease queue.
    for record in records.iter().step_by(97) {
        for worker in 0..3 {
            let (status, body) = get_record(&fleet.base(worker), &record.tenant_id, &record.record_id).await;
            assert_eq!((status, body), (200, record.payload.clone()), "{} through worker {worker}", record.record_id);
            let status: serde_json::Value =
                reqwest::get(format!("{}/v1/tenants/{}", fleet.base(worker), record.tenant_id))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            assert_eq!(status["shard"], shard_of(&record.tenant_id, SHARDS).0, "{status}");
            assert_eq!(status["records"]["hot"], 25, "{status}");
        }
    }
    // GET /v1/shards, through any worker, names every shard's owner.
    let shards: serde_json::Value =
        reqwest::get(format!("{}/v1/shards", fleet.base(1))).await.unwrap().json().await.unwrap();
    let entries = shards["shards"].as_array().unwrap();
    assert_eq!(entries.len(), SHARDS as usize, "{shards}");
    assert_eq!(shards["workers"], 3, "{shards}");
    assert!(entries.iter().all(|e| e["owner"].is_string() && e["since"].is_string()), "{shards}");
    let tenants: u64 = entries.iter().map(|e| e["tenants"].as_u64().unwrap()).sum();
    assert_eq!(tenants, 120, "{shards}");
    let owners: BTreeSet<&str> = entries.iter().map(|e| e["owner"].as_str().unwrap()).collect();
    assert_eq!(owners.len(), 3, "three owners: {shards}");

    // The status page, too, shows every shard with its owner.
    let page = reqwest::get(fleet.base(2)).await.unwrap().text().await.unwrap();
    assert_eq!(page.matches("<tr data-shard=").count(), SHARDS as usize, "{page}");
    assert!(!page.contains("no owner"), "{page}");
    let here = fleet.ownership().await.unwrap()[2].len();
    assert_eq!(page.matches("(this worker)").count(), here, "{page}");

    (0..3).for_each(|_| fleet.terminate(0));
    assert_each_tenant_once_on_its_shard(dir.path(), SHARDS, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_shards_are_taken_over_and_a_new_worker_takes_its_share() {
    let vhost = Vhost::new("shards-takeover");
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::new(&vhost, dir.path(), SHARDS, &["--batch-size", "20", "--prefetch", "40"]);
    (0..3).for_each(|_| fleet.spawn(&[]));
    fleet.wait_balanced(2, 3, Duration::from_secs(60)).await;

    let records = tenants(40, 150, "k-");
    let publishing = {
        let (vhost_url, records) = (vhost.amqp_url(), records.clone());
        tokio::spawn(async move {
            let publisher = keyseal::broker::publish::Publisher::connect(&vhost_url).await.unwrap();
            publisher.publish_until_confirmed(&records, 200, 5).await.unwrap()
        })
    };
    wait_until("the first worker to be mid-stream", Duration::from_secs(60), || async {
        let Some(all) = fleet.ownership().await else { return false };
        let Some(&shard) = all[0].iter().next() else { return false };
        let tenant = (0..40).map(|t| format!("tenant-{t}")).find(|t| shard_of(t, SHARDS).0 == shard).unwrap();
        counts(&fleet.base(0), &tenant).await.is_some_and(|(hot, _)| hot > 0)
    })
    .await;
    fleet.kill(0);
    let killed_at = std::time::Instant::now();
    fleet.wait_balanced(4, 4, Duration::from_secs(20)).await;
    let takeover = killed_at.elapsed();
    assert_eq!(publishing.await.unwrap(), 0, "every record confirmed");
    let expected = expected_counts(&records);
    wait_for_all(&fleet, &expected, Duration::from_secs(120)).await;

    fleet.spawn(&[]);
    fleet.wait_balanced(2, 3, Duration::from_secs(30)).await;
    wait_for_all(&fleet, &expected, Duration::from_secs(60)).await;
    for record in records.iter().step_by(113) {
        for worker in 0..3 {
            let (status, body) = get_record(&fleet.base(worker), &record.tenant_id, &record.record_id).await;
            assert_eq!((status, body), (200, record.payload.clone()), "{} through worker {worker}", record.record_id);
        }
    }
    eprintln!("takeover after SIGKILL: {takeover:?}");
    (0..3).for_each(|_| fleet.terminate(0));
    assert_each_tenant_once_on_its_shard(dir.path(), SHARDS, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_pinned_to_one_free_shard_open_it_exactly_once() {
    let vhost = Vhost::new("shards-race");
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::new(&vhost, dir.path(), SHARDS, &["--own-shards", "3"]);
    fleet.spawn(&[]);
    fleet.spawn(&[]);
    let views = || async { [owned(&fleet.base(0)).await, owned(&fleet.base(1)).await] };
    let shards_owned = |worker: usize| {
        let url = format!("{}/metrics", fleet.base(worker));
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            text.lines().find_map(|l| l.strip_prefix("keyseal_shards_owned ")?.parse::<u32>().ok())
        }
    };
    // A worker's API answers once its first round (its try for shard 3) is done.
    wait_until("both to have tried, one to own shard 3", Duration::from_secs(30), || async {
        let owning = views().await.iter().filter(|view| view.as_ref().is_some_and(|s| s.contains(&3))).count();
        owning == 1 && shards_owned(0).await.is_some() && shards_owned(1).await.is_some()
    })
    .await;
    let seen = views().await;
    let winner = seen.iter().position(Option::is_some).unwrap();
    assert_eq!(seen[winner], Some(BTreeSet::from([3])), "pinned workers take nothing else: {seen:?}");
    // The other is not ready (its pinned shard is someone else's) and owns nothing.
    assert_eq!(seen[1 - winner], None, "exactly one opened it: {seen:?}");
    assert_eq!(shards_owned(1 - winner).await, Some(0), "the loser owns no shard");
    // A tenant of a shard nobody owns: 503 with a time to ask again.
    let orphan = (0..).map(|i| format!("t-{i}")).find(|t| shard_of(t, SHARDS).0 != 3).unwrap();
    let refused = reqwest::get(format!("{}/v1/tenants/{orphan}", fleet.base(0))).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "shard_unavailable", "{body}");
    fleet.kill(winner);
    wait_until("the other to take shard 3 over", Duration::from_secs(30), || async {
        owned(&fleet.base(0)).await.is_some_and(|s| s.contains(&3))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_another_shard_count_is_refused_clearly() {
    let vhost = Vhost::new("shards-count");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = start_worker(&vhost, a.path(), Arc::new(SystemClock), &["--shards", "8"]).await;
    assert_eq!(first.owned.len(), 8, "a lone worker owns every shard on return");
    let refused = Worker::start(settings(&vhost, b.path(), &["--shards", "4"]), Arc::new(SystemClock)).await;
    let error = format!("{:#}", refused.err().expect("a worker with 4 shards joins a deployment of 8"));
    assert!(error.contains("--shards 4") && error.contains("keyseal.workers"), "{error}");
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_queue_backlog_drains_through_placement_without_duplicates() {
    let vhost = Vhost::new("shards-legacy");
    let dir = tempfile::tempdir().unwrap();
    // The one-queue topology of before: the intake bound to the exchange with `#`.
    {
        let connection = keyseal::broker::connect(&vhost.amqp_url(), "legacy").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare("keyseal.ingest".into(), lapin::ExchangeKind::Topic, durable, Default::default())
            .await
            .unwrap();
        let mut args = lapin::types::FieldTable::default();
        args.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
        args.insert("x-dead-letter-exchange".into(), lapin::types::AMQPValue::LongString("keyseal.ingest.dlx".into()));
        channel
            .queue_declare("keyseal.ingest".into(), lapin::options::QueueDeclareOptions::durable(), args)
            .await
            .unwrap();
        channel
            .queue_bind(
                "keyseal.ingest".into(),
                "keyseal.ingest".into(),
                "#".into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        let backlog = synthetic("old", "b-", 300, 100, 1);
        let confirm = lapin::options::ConfirmSelectOptions::default();
        channel.confirm_select(confirm).await.unwrap();
        for record in &backlog {
            use prost::Message;
            let properties = lapin::BasicProperties::default().with_content_type("application/x-protobuf".into());
            channel
                .basic_publish(
                    "keyseal.ingest".into(),
                    "old".into(),
                    Default::default(),
                    &record.encode_to_vec(),
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
        keyseal::broker::close(&connection, "done").await;
    }
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let base = base_url(&worker);
    wait_for_records(&base, "old", 300, Duration::from_secs(60)).await;
    // Published now, each record reaches the shard once: the old binding is gone.
    publish_confirmed(&vhost, &synthetic("old", "n-", 200, 100, 1)).await;
    wait_for_records(&base, "old", 500, Duration::from_secs(60)).await;
    assert_eq!(duplicates(&base).await, 0.0, "no record arrived twice");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_shards_over_redelivering_at_most_a_batch_each() {
    const BATCH: usize = 20;
    let vhost = Vhost::new("shards-handover");
    let dir = tempfile::tempdir().unwrap();
    let batch = BATCH.to_string();
    let mut fleet = Fleet::new(&vhost, dir.path(), SHARDS, &["--batch-size", &batch, "--prefetch", "40"]);
    (0..2).for_each(|_| fleet.spawn(&[]));
    let before = fleet.wait_balanced(4, 4, Duration::from_secs(60)).await;
    let records = tenants(32, 150, "h-");
    let publishing = {
        let (url, records) = (vhost.amqp_url(), records.clone());
        tokio::spawn(async move {
            let publisher = keyseal::broker::publish::Publisher::connect(&url).await.unwrap();
            publisher.publish_until_confirmed(&records, 200, 5).await.unwrap()
        })
    };
    wait_until("both workers to be mid-stream", Duration::from_secs(60), || async {
        let mut busy = 0;
        for worker in 0..2 {
            let stored =
                scrape_sum(&fleet.base(worker), "keyseal_records_ingested_total", &[("result", "stored")]).await;
            busy += usize::from(stored.is_some_and(|n| n > 0.0));
        }
        busy == 2
    })
    .await;
    fleet.terminate(0);
    let moved = before[0].len();
    fleet.wait_balanced(8, 8, Duration::from_secs(30)).await;
    assert_eq!(publishing.await.unwrap(), 0, "every record confirmed");
    wait_for_all(&fleet, &expected_counts(&records), Duration::from_secs(120)).await;
    let redelivered = duplicates(&fleet.base(0)).await;
    assert!(
        redelivered <= (moved * BATCH) as f64,
        "{redelivered} records came back twice after a graceful handover of {moved} shards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byok_lockdown_restore_disable_and_replay_work_through_a_worker_that_does_not_own_the_tenant() {
    use common::vault::{Vault, args};
    use keyvault_emulator::RecoveryLevel;
    use serde_json::{Value, json};
    const WAIT: Duration = Duration::from_secs(60);
    let state = tempfile::tempdir().unwrap();
    let vault = Vault::start(args(state.path(), RecoveryLevel::Recoverable)).await;
    vault.create("k", json!({"kty": "RSA", "key_size": 2048})).await;
    let vhost = Vhost::new("shards-byok");
    let dir = tempfile::tempdir().unwrap();
    let mut flags = vault.worker_flags();
    flags.extend(
        ["--probe-interval", "200ms", "--lockdown-after", "2s", "--seal-after", "1s", "--sweep-interval", "500ms"]
            .map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut fleet = Fleet::new(&vhost, dir.path(), 2, &flags);
    // Worker 0, whose API every call below uses, owns shard 0; worker 1 owns
    // shard 1, the tenant's.
    fleet.spawn(&["--own-shards", "0"]);
    fleet.spawn(&["--own-shards", "1"]);
    assert_eq!(fleet.wait_balanced(1, 1, WAIT).await, [BTreeSet::from([0]), BTreeSet::from([1])]);
    let tenant = (0..).map(|i| format!("far-{i}")).find(|t| shard_of(t, 2).0 == 1).unwrap();
    let base = fleet.base(0);
    let http = reqwest::Client::new();
    let status =
        || async { reqwest::get(format!("{base}/v1/tenants/{tenant}")).await.ok()?.json::<Value>().await.ok() };
    let wait_for = |what: &'static str, check: fn(&Value) -> bool| {
        let status = &status;
        async move { wait_until(what, WAIT, || async { status().await.is_some_and(|s| check(&s)) }).await }
    };

    let enabled = http
        .put(format!("{base}/v1/tenants/{tenant}/encryption"))
        .json(&json!({"keyUri": vault.key_uri("k")}))
        .send()
        .await
        .unwrap();
    assert_eq!(enabled.status(), 200);
    let enabled: Value = enabled.json().await.unwrap();
    assert_eq!(enabled["status"]["encryption"]["mode"], "customer_key", "{enabled}");
    let records = synthetic(&tenant, "r-", 10, 300, 1);
    publish_confirmed(&vhost, &records).await;
    wait_for("every record sealed under the customer key", |s| s["records"]["sealed"] == 10).await;

    vault.patch("k", json!({"attributes": {"enabled": false}})).await;
    wait_for("the tenant to be locked down", |s| s["state"] == "locked_down").await;
    let (code, body) = get_record(&base, &tenant, "r-0").await;
    assert_eq!(code, 423, "{}", String::from_utf8_lossy(&body));
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "tenant_locked_down");

    vault.patch("k", json!({"attributes": {"enabled": true}})).await;
    wait_for("the tenant to be restored", |s| s["state"] == "active").await;
    let assert_readable = || async {
        for record in &records {
            let (code, body) = get_record(&base, &tenant, &record.record_id).await;
            assert_eq!((code, body.as_slice()), (200, record.payload.as_slice()), "{}", record.record_id);
        }
    };
    assert_readable().await;

    // Disabling BYOK rewraps the sealed data keys under the managed root.
    let disabled = http.delete(format!("{base}/v1/tenants/{tenant}/encryption")).send().await.unwrap();
    assert_eq!(disabled.status(), 200);
    let disabled: Value = disabled.json().await.unwrap();
    assert_eq!(disabled["status"]["encryption"]["mode"], "managed", "{disabled}");
    wait_for("no sealed data key left on the customer key", |s| s["dataKeys"]["onOlderRoot"] == 0).await;
    assert_readable().await;

    // Sweeps and replay of shard 1, asked of worker 0, run on worker 1.
    let swept: Value = http.post(format!("{base}/v1/sweeps?shard=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(swept["shard"], 1, "{swept}");
    let replayed: Value =
        http.post(format!("{base}/v1/admin/replay?shard=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!((replayed["shard"].clone(), replayed["equal"].clone()), (json!(1), json!(true)), "{replayed}");
    assert!(replayed["events"].as_u64().unwrap() > 0, "{replayed}");
}
