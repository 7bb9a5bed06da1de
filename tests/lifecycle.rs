//! The data owner's side, end to end against the real RabbitMQ: listing a
//! tenant's records (metadata only, in ingestion order, page by page) and
//! deleting one (gone from reads, counts and listings, announced by an
//! event, and not brought back by a re-send until its tombstone expires).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::byok::{Setup, setup, wait_for_state};
use common::vault::version_of;
use common::*;
use futures_util::StreamExt;
use keyseal::broker::EVENTS_EXCHANGE;
use keyseal::broker::publish::synthetic;
use keyseal::clock::{Clock, ManualClock, rfc3339};
use keyseal::proto::v1::{Event, IngestRecord, Layer, event::Kind};
use keyseal::storage::keys::record_key;
use keyvault_emulator::RecoveryLevel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use prost::Message;
use reqwest::Method;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const HOURS_49: Duration = Duration::from_secs(49 * 3600);

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("admin API reachable");
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn delete(base: &str, tenant: &str, record_id: &str) -> u16 {
    let url = format!("{base}/v1/tenants/{tenant}/records/{record_id}");
    reqwest::Client::new().delete(url).send().await.expect("admin API reachable").status().as_u16()
}

async fn seal(base: &str) -> Value {
    let response = reqwest::Client::new().post(format!("{base}/v1/sweeps")).send().await.unwrap();
    response.json().await.unwrap()
}

/// Every page of `tenant`'s listing with `filters`, `limit` per page, and how many pages.
async fn list_all(base: &str, tenant: &str, filters: &str, limit: usize) -> (Vec<Value>, usize) {
    let (mut records, mut pages, mut after) = (Vec::new(), 0, String::new());
    loop {
        let url = format!("{base}/v1/tenants/{tenant}/records?limit={limit}{filters}{after}");
        let (status, page) = get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        let entries = page["records"].as_array().expect("a records array");
        assert!(entries.len() <= limit, "{page}");
        records.extend(entries.iter().cloned());
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return (records, pages),
        }
    }
}

fn ids(listed: &[Value]) -> Vec<&str> {
    listed.iter().map(|entry| entry["recordId"].as_str().unwrap()).collect()
}

fn encoded(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

async fn keyseal_cli(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_keyseal")).args(args).output().await.expect("keyseal runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_pages_through_sealed_then_hot_records_in_ingestion_order_without_payloads() {
    let vhost = Vhost::new("listing");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &[]).await;
    let base = base_url(&worker);
    let old = synthetic("acme", "old-", 12, 200, 1_000);
    publish_confirmed(&vhost, &[old.clone(), synthetic("globex", "g-", 5, 50, 1)].concat()).await;
    wait_for_records(&base, "acme", 12, WAIT).await;
    wait_for_records(&base, "globex", 5, WAIT).await;
    clock.advance(HOURS_49);
    assert_eq!(seal(&base).await["seal"]["sealed"], 17);
    let new = synthetic("acme", "new-", 8, 300, 2_000);
    publish_confirmed(&vhost, &new).await;
    wait_for_records(&base, "acme", 20, WAIT).await;

    let (listed, pages) = list_all(&base, "acme", "", 5).await;
    assert_eq!(pages, 4, "20 records in pages of 5, the last without a next");
    let published: Vec<&IngestRecord> = old.iter().chain(&new).collect();
    let mut all: Vec<&str> = published.iter().map(|r| r.record_id.as_str()).collect();
    let mut seen = ids(&listed);
    assert!(seen[..12].iter().all(|id| id.starts_with("old-")), "ingested first, listed first: {seen:?}");
    let order: Vec<(&str, &str)> =
        listed.iter().map(|e| (e["ingestedAt"].as_str().unwrap(), e["recordId"].as_str().unwrap())).collect();
    assert!(order.is_sorted(), "by ingestion time, then record id: {order:?}");
    all.sort_unstable();
    seen.sort_unstable();
    assert_eq!(seen, all, "each record once, no other tenant's");
    for entry in &listed {
        let record = published.iter().find(|r| r.record_id == entry["recordId"]).unwrap();
        let layer = if record.record_id.starts_with("old-") { "sealed" } else { "hot" };
        let expected = json!({
            "recordId": record.record_id,
            "observedAt": rfc3339(record.observed_at_unix_ms),
            "ingestedAt": entry["ingestedAt"],
            "layer": layer,
            "size": record.payload.len(),
        });
        assert_eq!(entry, &expected, "metadata only");
    }

    let first_new = encoded(listed[12]["ingestedAt"].as_str().unwrap());
    let (since, _) = list_all(&base, "acme", &format!("&from={first_new}"), 1000).await;
    assert_eq!(ids(&since), ids(&listed[12..]), "from is included");
    let (before, _) = list_all(&base, "acme", &format!("&to={first_new}"), 1000).await;
    assert_eq!(ids(&before), ids(&listed[..12]), "to is excluded");

    for (query, code) in [
        ("limit=1001", "invalid_limit"),
        ("limit=0", "invalid_limit"),
        ("limit=many", "invalid_query"),
        ("after=%21%21", "invalid_cursor"),
        ("after=AAAA", "invalid_cursor"),
        ("from=yesterday", "invalid_time"),
        ("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", "invalid_range"),
        ("form=2026-12-01T00:00:00Z", "invalid_query"),
    ] {
        let (status, body) = get_json(&format!("{base}/v1/tenants/acme/records?{query}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
    let (status, body) = get_json(&format!("{base}/v1/tenants/nobody/records")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("tenant_not_found")));

    let output = keyseal_cli(&["records", "list", "acme", "--server", &base, "--limit", "15"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines, listed[..15], "JSON lines, as the API lists them");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_record_is_gone_and_a_resend_is_dead_lettered_until_its_tombstone_expires() {
    let vhost = Vhost::new("delete");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &["--tombstone-ttl", "1h"]).await;
    let base = base_url(&worker);
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.queue_declare("test.deleted".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let (queue, key) = ("test.deleted".into(), "tenant.acme.record_deleted".into());
    channel
        .queue_bind(queue, EVENTS_EXCHANGE.into(), key, QueueBindOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let mut events = channel
        .basic_consume("test.deleted".into(), "t".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();

    publish_confirmed(&vhost, &synthetic("acme", "s-", 2, 100, 1)).await;
    wait_for_records(&base, "acme", 2, WAIT).await;
    clock.advance(HOURS_49);
    assert_eq!(seal(&base).await["seal"]["sealed"], 2);
    let hot = synthetic("acme", "h-", 2, 100, 1);
    publish_confirmed(&vhost, &hot).await;
    wait_for_records(&base, "acme", 4, WAIT).await;

    assert_eq!(delete(&base, "acme", "s-0").await, 204);
    assert_eq!(delete(&base, "acme", "h-0").await, 204);
    assert_eq!(delete(&base, "acme", "h-0").await, 404, "already gone");
    assert_eq!(delete(&base, "acme", "never").await, 404);
    for (id, status) in [("s-0", 404), ("h-0", 404), ("s-1", 200), ("h-1", 200)] {
        assert_eq!(get_record(&base, "acme", id).await.0, status, "{id}");
    }
    assert_eq!(counts(&base, "acme").await, Some((1, 1)), "one gone from each layer");
    assert_eq!(ids(&list_all(&base, "acme", "", 10).await.0), ["s-1", "h-1"]);
    let mut deleted = BTreeSet::new();
    while deleted.len() < 2 {
        let delivery =
            tokio::time::timeout(WAIT, events.next()).await.expect("RecordDeleted relayed").unwrap().unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let Some(Kind::RecordDeleted(event)) = Event::decode(delivery.data.as_slice()).unwrap().kind else {
            panic!("only record_deleted is bound");
        };
        deleted.insert((event.record_id.clone(), event.layer()));
    }
    assert_eq!(deleted, BTreeSet::from([("h-0".to_owned(), Layer::Hot), ("s-0".to_owned(), Layer::Sealed)]));

    // A re-send (a redelivery looks the same) does not bring it back.
    publish_confirmed(&vhost, &hot[..1]).await;
    let dead = next_dead_letter(&channel, WAIT).await.expect("the re-send is dead-lettered");
    assert_eq!(reason(&dead), "record_deleted");
    assert_eq!(IngestRecord::decode(dead.delivery.data.as_slice()).unwrap(), hot[0], "kept whole");
    assert_eq!(get_record(&base, "acme", "h-0").await.0, 404);

    // Once the tombstone has expired the id may be used again, and the next
    // sweep purges the other expired tombstone.
    clock.advance(Duration::from_secs(3601));
    publish_confirmed(&vhost, &hot[..1]).await;
    wait_for_records(&base, "acme", 3, WAIT).await;
    assert_eq!(get_record(&base, "acme", "h-0").await, (200, hot[0].payload.clone()));
    let store = &worker.only().shard.store;
    let s0 = [record_key("acme", "s-0")];
    assert_eq!(store.tombstoned(&s0, 0).unwrap(), [true], "expired but not purged yet");
    seal(&base).await;
    assert_eq!(store.tombstoned(&s0, 0).unwrap(), [false], "purged by the sweep");

    let output = keyseal_cli(&["records", "delete", "acme", "s-1", "--server", &base]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(get_record(&base, "acme", "s-1").await.0, 404);
    let output = keyseal_cli(&["records", "delete", "acme", "s-1", "--server", &base]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("record_not_found"));
    let response = reqwest::Client::new().post(format!("{base}/v1/admin/replay")).send().await.unwrap();
    let replay: Value = response.json().await.unwrap();
    assert_eq!(replay["equal"], true, "the projection folds deletions as the log replays them: {replay}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_down_tenant_is_neither_listed_nor_deleted_from_until_restored() {
    let s = setup("lifecycle-lock", RecoveryLevel::Recoverable, None, &["--probe-interval", "100ms"]).await;
    s.rsa_key("k").await;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    s.publish("acme", "r-", 3).await;
    s.vault.patch("k", json!({"attributes": {"enabled": false}})).await;
    wait_for_state(&s, "acme", "degraded", Some("key_disabled")).await;
    s.clock.advance(Duration::from_secs(51 * 60));
    wait_for_state(&s, "acme", "locked_down", Some("key_disabled")).await;

    let (status, body) = get_json(&format!("{}/v1/tenants/acme/records", s.base)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (423, Some("tenant_locked_down")), "{body}");
    assert_eq!(delete(&s.base, "acme", "r-0").await, 423);
    assert_eq!(counts(&s.base, "acme").await, Some((3, 0)), "nothing deleted");

    s.vault.patch("k", json!({"attributes": {"enabled": true}})).await;
    wait_for_state(&s, "acme", "active", None).await;
    assert_eq!(list_all(&s.base, "acme", "", 10).await.0.len(), 3);
    assert_eq!(delete(&s.base, "acme", "r-0").await, 204);
}

/// A new version of the emulator key `name` that expires `days` from the
/// worker's now; returns the version.
async fn version_expiring_in(s: &Setup, name: &str, days: i64) -> String {
    let exp = s.clock.now_ms() / 1000 + days * 86_400;
    let body = json!({"kty": "RSA", "key_size": 2048, "attributes": {"exp": exp}});
    version_of(&s.vault.ok(Method::POST, &format!("/keys/{name}/create"), Some(body)).await)
}

/// The `KeyExpiring` events in the tenant's shard's log, as (version, expires at ms).
fn expiring_events(s: &Setup) -> Vec<(String, i64)> {
    let events = s.worker.only().shard.store.events_after(0, 100_000).unwrap();
    events
        .into_iter()
        .filter_map(|event| match event.kind {
            Some(Kind::KeyExpiring(expiring)) => Some((expiring.key_version, expiring.expires_at_unix_ms)),
            _ => None,
        })
        .collect()
}

/// Waits until two more probes of `tenant` have finished (the manual clock
/// moves a second before each, so each probe time is new).
async fn two_more_probes(s: &Setup, tenant: &str) {
    for _ in 0..2 {
        s.clock.advance(Duration::from_secs(1));
        let after = rfc3339(s.clock.now_ms());
        wait_until("another probe", WAIT, || async {
            s.status(tenant).await["keyHealth"]["lastProbe"].as_str().is_some_and(|last| *last >= *after)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_version_near_its_expiry_is_warned_of_once_in_events_status_metrics_and_page() {
    let s = setup("expiry", RecoveryLevel::Recoverable, None, &["--probe-interval", "100ms"]).await;
    let soon = version_expiring_in(&s, "k", 20).await;
    let soon_ms = (s.clock.now_ms() / 1000 + 20 * 86_400) * 1000;
    assert_eq!(s.enable("acme", &s.vault.key_uri("k")).await.0, 200);
    wait_until("the expiry warning", WAIT, || async { s.status("acme").await["keyHealth"]["expiring"] == true }).await;
    let status = s.status("acme").await;
    assert_eq!(status["keyHealth"]["expiresAt"], rfc3339(soon_ms), "{status}");
    assert_eq!(status["keyHealth"]["status"], "healthy", "expiring is not unavailable");
    two_more_probes(&s, "acme").await;
    assert_eq!(expiring_events(&s), [(soon.clone(), soon_ms)], "once per version");

    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("keyseal_key_expires_in_seconds{")).expect("the gauge");
    assert!(line.contains("tenant=\"acme\""), "{line}");
    let seconds: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((19.0 * 86_400.0..=20.0 * 86_400.0).contains(&seconds), "{line}");
    let page = reqwest::get(format!("{}/", s.base)).await.unwrap().text().await.unwrap();
    assert!(page.contains("key expires"), "the status page warns");

    // Rolling to a version far from its expiry clears the warning; one
    // near it is warned of in turn.
    let later = version_expiring_in(&s, "k", 200).await;
    wait_until("the roll", WAIT, || async { s.status("acme").await["encryption"]["keyVersion"] == later.as_str() })
        .await;
    wait_until("the warning to clear", WAIT, || async { s.status("acme").await["keyHealth"]["expiring"] == false })
        .await;
    two_more_probes(&s, "acme").await;
    assert_eq!(expiring_events(&s).len(), 1, "a version far from expiry is not warned of");
    let last = version_expiring_in(&s, "k", 3).await;
    wait_until("the next warning", WAIT, || async { expiring_events(&s).len() == 2 }).await;
    assert_eq!(expiring_events(&s)[1].0, last);
    let page = reqwest::get(format!("{}/", s.base)).await.unwrap().text().await.unwrap();
    assert!(page.contains("key expires"), "{page}");
}

/// `PUT /v1/tenants/{tenant}/retention` with `body`: (status, answer).
async fn put_retention(base: &str, tenant: &str, body: reqwest::Body, json: bool) -> (u16, Value) {
    let mut request = reqwest::Client::new().put(format!("{base}/v1/tenants/{tenant}/retention")).body(body);
    if json {
        request = request.header("content-type", "application/json");
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_past_their_tenants_retention_expire_and_the_data_keys_they_leave_unused_are_retired() {
    let vhost = Vhost::new("retention");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &["--default-retention", "30d"]).await;
    let base = base_url(&worker);
    let (status, body) = put_retention(&base, "acme", json!({"maxAge": "3d"}).to_string().into(), true).await;
    assert_eq!(status, 200, "{body}");
    let expected = json!({"tenant": "acme", "maxAge": "3d", "default": "30d", "effective": "3d"});
    assert_eq!(body, expected);
    for (bad, json, status, code) in [
        (json!({"maxAge": "forever"}).to_string(), true, 400, "invalid_retention"),
        (json!({"maxAge": "30m"}).to_string(), true, 400, "invalid_retention"),
        (json!({"age": "3d"}).to_string(), true, 422, "invalid_json"),
        ("{".to_owned(), true, 400, "invalid_json"),
    ] {
        let (got, answer) = put_retention(&base, "acme", bad.clone().into(), json).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{bad}: {answer}");
    }
    assert_eq!(get_json(&format!("{base}/v1/tenants/nobody/retention")).await.0, 404);

    publish_confirmed(&vhost, &[synthetic("acme", "old-", 10, 100, 1), synthetic("globex", "g-", 5, 100, 1)].concat())
        .await;
    wait_for_records(&base, "acme", 10, WAIT).await;
    wait_for_records(&base, "globex", 5, WAIT).await;
    clock.advance(HOURS_49);
    assert_eq!(seal(&base).await["seal"]["sealed"], 15);
    clock.advance(Duration::from_secs(2 * 86_400));
    let new = synthetic("acme", "new-", 4, 100, 1);
    publish_confirmed(&vhost, &new).await;
    wait_for_records(&base, "acme", 14, WAIT).await;
    let data_keys = |status: Value| status["dataKeys"]["total"].as_u64().unwrap();
    let keys_before = data_keys(get_json(&format!("{base}/v1/tenants/acme")).await.1);

    let sweep = |kind: &'static str| {
        let base = base.clone();
        async move {
            let url = format!("{base}/v1/sweeps?kind={kind}");
            reqwest::Client::new().post(url).send().await.unwrap().json::<Value>().await.unwrap()
        }
    };
    let summary = sweep("retention").await;
    assert_eq!(summary["retention"]["expired"], 10, "{summary}");
    assert_eq!(summary["retention"]["tenants"], json!({"acme": 10}), "globex keeps 30 days");
    assert_eq!(summary["retention"]["retiredDataKeys"], 1, "the sealed key of the expired records: {summary}");
    assert_eq!(counts(&base, "acme").await, Some((4, 0)));
    assert_eq!(counts(&base, "globex").await, Some((0, 5)));
    assert_eq!(data_keys(get_json(&format!("{base}/v1/tenants/acme")).await.1), keys_before - 1);
    assert_eq!(ids(&list_all(&base, "acme", "", 100).await.0), ["new-0", "new-1", "new-2", "new-3"]);
    assert_eq!(get_record(&base, "acme", "old-0").await.0, 404);
    for record in &new {
        assert_eq!(get_record(&base, "acme", &record.record_id).await, (200, record.payload.clone()));
    }
    let events = worker.only().shard.store.events_after(0, 100_000).unwrap();
    let expired: Vec<(u32, u32)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::RecordsExpired(expired)) => Some((expired.hot, expired.sealed)),
            _ => None,
        })
        .collect();
    assert_eq!(expired, [(0, 10)], "one page, all sealed");
    assert_eq!(sweep("retention").await["retention"]["expired"], 0, "nothing more is due");

    let (status, body) = put_retention(&base, "acme", json!({"maxAge": null}).to_string().into(), true).await;
    assert_eq!((status, &body["effective"]), (200, &json!("30d")), "{body}");
    let output = keyseal_cli(&["tenant", "retention", "acme", "--server", &base, "--max-age", "400d"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["effective"], "400d");
    let replay: Value =
        reqwest::Client::new().post(format!("{base}/v1/admin/replay")).send().await.unwrap().json().await.unwrap();
    assert_eq!(replay["equal"], true, "{replay}");
    worker.stop().await;
}
