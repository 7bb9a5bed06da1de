//! `/metrics` after a short run: every metric family the worker documents
//! is there, with values that match what happened. Its own test binary,
//! because the Prometheus recorder is process-wide.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyseal::broker::publish::{Publisher, record_properties, synthetic};
use keyseal::clock::ManualClock;
use keyseal::proto::v1::IngestRecord;

/// Samples of the exposition text: "name{labels}" -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_what_happened() {
    let vhost = Vhost::new("metrics");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &[]).await;
    let base = base_url(&worker);

    let records: Vec<IngestRecord> =
        synthetic("alpha", "m-", 120, 256, 1).into_iter().chain(synthetic("beta", "m-", 80, 256, 1)).collect();
    publish_confirmed(&vhost, &records).await;
    let publisher = Publisher::connect(&vhost.amqp_url()).await.unwrap();
    let bad = publisher.publish_raw("alpha", b"\xff not protobuf", record_properties()).await.unwrap();
    assert!(bad.await.unwrap().is_ack());
    wait_for_records(&base, "alpha", 120, Duration::from_secs(30)).await;
    wait_for_records(&base, "beta", 80, Duration::from_secs(30)).await;
    clock.advance(Duration::from_secs(49 * 3600));
    reqwest::Client::new().post(format!("{base}/v1/sweeps")).send().await.unwrap();
    let scrub = reqwest::Client::new().post(format!("{base}/v1/sweeps?kind=scrub")).send().await.unwrap();
    assert_eq!(scrub.status(), 200);

    let metric = |text: &str, name: &str| samples(text).get(name).copied();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
        let dead = metric(&text, "keyseal_dead_letters_total{reason=\"malformed_protobuf\",shard=\"0\"}");
        let lag = metric(&text, "keyseal_outbox_lag_events{shard=\"0\"}");
        if dead == Some(1.0) && lag == Some(0.0) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "metrics never settled:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert_eq!(
        metric(&text, "keyseal_records_ingested_total{result=\"stored\",shard=\"0\"}"),
        Some(200.0),
        "stored == published"
    );
    assert_eq!(metric(&text, "keyseal_records_ingested_total{result=\"dead_lettered\",shard=\"0\"}"), Some(1.0));
    assert_eq!(metric(&text, "keyseal_records_sealed_total{shard=\"0\"}"), Some(200.0));
    assert_eq!(metric(&text, "keyseal_records{tenant=\"alpha\",layer=\"sealed\"}"), Some(120.0));
    assert_eq!(metric(&text, "keyseal_records{tenant=\"beta\",layer=\"hot\"}"), Some(0.0));
    assert_eq!(metric(&text, "keyseal_seal_lag_seconds{shard=\"0\"}"), Some(0.0));
    assert_eq!(metric(&text, "keyseal_tenants{state=\"active\",shard=\"0\"}"), Some(2.0));
    assert_eq!(metric(&text, "keyseal_records_at_rest{layer=\"sealed\",shard=\"0\"}"), Some(200.0));
    assert_eq!(metric(&text, "keyseal_shards_owned"), Some(1.0));
    assert_eq!(metric(&text, "keyseal_ingest_paused"), Some(0.0));
    assert!(metric(&text, "keyseal_events_published_total{shard=\"0\"}").unwrap() >= 4.0);
    assert!(metric(&text, "keyseal_batch_commit_seconds_count{shard=\"0\"}").unwrap() >= 1.0);
    assert!(metric(&text, "keyseal_data_key_cache_total{result=\"hit\"}").unwrap() > 0.0);
    let wraps = |purpose: &str| {
        let name = format!(
            "keyseal_root_key_operations_total{{root_kind=\"managed\",operation=\"wrap\",purpose=\"{purpose}\",outcome=\"ok\"}}"
        );
        metric(&text, &name).unwrap_or(0.0)
    };
    assert!(wraps("store") >= 2.0 && wraps("seal") >= 2.0, "hot and sealed keys of 2 tenants:\n{text}");
    assert_eq!(
        metric(&text, "keyseal_sweep_records_total{sweep=\"scrub\",shard=\"0\"}"),
        Some(200.0),
        "the scrub read every record"
    );
    assert_eq!(metric(&text, "keyseal_sweep_progress_ratio{sweep=\"scrub\",shard=\"0\"}"), Some(1.0), "and finished");
    for family in [
        "keyseal_records_ingested_total",
        "keyseal_batch_commit_seconds",
        "keyseal_records_sealed_total",
        "keyseal_seal_lag_seconds",
        "keyseal_outbox_lag_events",
        "keyseal_sweep_records_total",
    ] {
        assert!(text.contains(&format!("# HELP {family} ")), "{family} has a description");
    }
    worker.stop().await;
}
