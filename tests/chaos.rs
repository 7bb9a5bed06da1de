//! Chaos: a child-process worker (`keyseal run`) under a producer that
//! publishes in confirm mode the whole time, while
//! 1. it is killed with SIGKILL at random moments, cycle after cycle, as it
//!    ingests, seals (`--seal-after 2s`) and rewraps a BYOK tenant's data
//!    keys after key rolls on the Key Vault emulator;
//! 2. RabbitMQ's application is stopped and started mid-ingest;
//! 3. its data dir sits on a small tmpfs that fills up, so the store fails
//!    writes, and is then given room again.
//!
//! Afterwards every record the broker confirmed is stored exactly once (no
//! id in `hot` and `sealed` both, the projection agrees with the keys on
//! disk) and reads back, nothing sits in the dead-letter queue, and with the
//! ingest queue drained and the worker stopped, every confirmed record is
//! stored: the worker never acked a record it had not stored.
//!
//! The tests run one at a time (a lock): one of them stops the shared
//! broker. Set `KEYSEAL_CHAOS_SEED` to replay a run's random kill moments.

mod common;

#[path = "chaos/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use common::vault::{Vault, args, version_of};
use common::*;
use harness::*;
use keyvault_emulator::RecoveryLevel;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_while_ingesting_sealing_and_rewrapping() {
    const CYCLES: usize = 6;
    let _serial = serial().await;
    let started = Instant::now();
    let (mut rng, seed) = Rng::seeded();
    let state = tempfile::tempdir().unwrap();
    let mut emulator_args = args(state.path(), RecoveryLevel::Recoverable);
    // Slow vault calls stretch a rewrap over seconds, so kills land in it.
    emulator_args.latency = Duration::from_millis(25);
    let vault = Vault::start(emulator_args).await;
    let mut version = vault.create("k", json!({"kty": "RSA", "key_size": 2048})).await;
    let dir = tempfile::tempdir().unwrap();
    let mut flags = vault.worker_flags();
    flags.extend(
        [
            "--seal-after",
            "2s",
            "--sweep-interval",
            "1s",
            "--probe-interval",
            "300ms",
            "--max-records-per-dek",
            "25",
            "--batch-size",
            "50",
            "--prefetch",
            "100",
        ]
        .map(String::from),
    );
    let mut shard = Shard::new("chaos-kill", dir.path().to_path_buf(), flags);
    shard.start().await;
    enable(&shard.base(), "byok", &vault.key_uri("k")).await;
    let producer = Producer::start(shard.vhost.amqp_url(), &["byok", "plain"], "c-", 200);

    let mut kills_mid_rewrap = 0;
    for cycle in 0..CYCLES {
        if cycle > 0 {
            shard.start().await;
        }
        // Every other cycle rolls the key: the probe finds the new version
        // and the rewrap of every sealed data key starts.
        if cycle % 2 == 1 {
            version = version_of(&vault.ok(Method::POST, "/keys/k/rotate", None).await);
        }
        let delay = rng.between(Duration::from_millis(300), Duration::from_millis(3500));
        let alive = Instant::now();
        // Sealing needs records older than --seal-after: let the producer
        // get ahead while the delay runs.
        tokio::time::sleep(delay).await;
        let status = shard.status("byok").await.unwrap_or_default();
        let rewrapping = status["encryption"]["rewrapPending"] == true;
        kills_mid_rewrap += usize::from(rewrapping);
        shard.kill_9();
        phase(started, &format!("cycle {cycle} killed"));
        println!(
            "cycle {cycle}: SIGKILL after {:?} (byok records {}, rewrap pending {rewrapping}, {} confirmed)",
            alive.elapsed(),
            status["records"],
            producer.confirmed()
        );
    }
    shard.start().await;
    producer.wait_for_more(WINDOW).await;
    let ledger = producer.finish().await;
    phase(started, "producer stopped");
    let mut figures = drain_and_check(&mut shard, &ledger).await;
    phase(started, "drained and checked");
    figures.kills = CYCLES;
    assert!(figures.sealed > 0, "sealing ran between kills");

    // Once the last roll's rewrap is done, every record reads back.
    shard.start().await;
    wait_until("the rewrap onto the newest version", WAIT, || async {
        shard.status("byok").await.is_some_and(|s| {
            s["encryption"]["keyVersion"] == version.as_str()
                && s["encryption"]["rewrapPending"] == false
                && s["dataKeys"]["onOlderRoot"] == 0
        })
    })
    .await;
    phase(started, "rewrap done");
    assert_reads_back(&shard, &ledger).await;
    phase(started, "every confirmed record read back");
    let sealed = counts(&shard.base(), "byok").await.unwrap().1;
    shard.stop().await;
    println!("kills mid-rewrap: {kills_mid_rewrap}, byok sealed: {sealed}, newest version {version}");
    figures.print("kill -9", Some(seed), started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_app_restart_mid_ingest_loses_nothing() {
    let _serial = serial().await;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--batch-size", "20", "--prefetch", "40"].map(String::from).to_vec();
    let mut shard = Shard::new("chaos-broker", dir.path().to_path_buf(), flags);
    shard.start().await;
    phase(started, "worker ready");
    let producer = Producer::start(shard.vhost.amqp_url(), &["bounce"], "b-", 256);
    wait_until("ingest under way", WAIT, || async { shard.stored("bounce").await >= 200 }).await;

    let outage = BrokerStopped::begin();
    phase(started, "broker app stopped");
    let base = shard.base();
    wait_until("readiness to drop", WAIT, || async { !ready(&base).await }).await;
    drop(outage);
    phase(started, "broker app started");
    wait_until("the worker to reconnect", WAIT, || ready(&base)).await;
    phase(started, "worker consuming again");
    producer.wait_for_more(400).await;
    finish_without_kills(producer, &mut shard, "broker restart", started).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_ingest_and_it_resumes_by_itself_when_space_returns() {
    let _serial = serial().await;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("data"), "256m");
    let mut shard = Shard::new("chaos-disk", disk.dir.clone(), Vec::new());
    shard.start().await;
    phase(started, "worker ready");
    // Room for about 8 MiB more than the empty store takes.
    let room = disk.used() + (8 << 20);
    disk.resize(&format!("{}k", room / 1024 + 1));
    let producer = Producer::start(shard.vhost.amqp_url(), &["disk"], "d-", 16 << 10);

    wait_until("ingest to pause on the full disk", WAIT, || async {
        shard.metric("keyseal_ingest_paused").await == Some(1.0)
    })
    .await;
    let stored_when_full = shard.stored("disk").await;
    // The producer keeps going: the broker holds what the worker cannot store.
    producer.wait_for_more(2 * WINDOW).await;
    assert_eq!(shard.stored("disk").await, stored_when_full, "nothing stored while the disk is full");
    phase(started, "ingest paused on the full disk");
    println!("disk full after {stored_when_full} records of 16 KiB; {} confirmed", producer.confirmed());

    disk.resize("512m");
    let freed = Instant::now();
    wait_until("ingest to resume by itself", WAIT, || async {
        shard.metric("keyseal_ingest_paused").await == Some(0.0) && shard.stored("disk").await > stored_when_full
    })
    .await;
    println!("resumed {:.1} s after space returned", freed.elapsed().as_secs_f64());
    producer.wait_for_more(2 * WINDOW).await;
    finish_without_kills(producer, &mut shard, "disk full", started).await;
}
