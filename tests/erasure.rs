//! Erasing a tenant, provably, against the real RabbitMQ: afterwards no
//! file of the data dir holds a byte of its ciphertexts (a 32-byte slice
//! of each), its wrapped data keys or its record ids,
//! its status is 410, its reads are 410, a new record for it is
//! dead-lettered `tenant_erased`, another tenant is untouched, and its
//! key-use audit stays readable. An erasure cut short after its keys were
//! shredded is finished by the next start.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::clock::ManualClock;
use keyseal::placement::ShardId;
use keyseal::proto::v1::{IngestRecord, TenantErased, event::Kind};
use keyseal::shard::Shard;
use keyseal::storage::keys::record_key;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const HOURS_49: Duration = Duration::from_secs(49 * 3600);

/// Files under `dir` (every depth) that contain one of `needles`, byte
/// for byte.
fn files_holding(dir: &Path, needles: &[Vec<u8>]) -> Vec<String> {
    let finder = aho_corasick::AhoCorasick::new(needles).unwrap();
    files_under(dir)
        .into_iter()
        .filter_map(|(path, bytes)| {
            finder.find(&bytes).map(|hit| format!("{} holds needle {}", path.display(), hit.pattern().as_usize()))
        })
        .collect()
}

/// How many erasures the shard's log records as finished.
fn completed_erasures(store: &keyseal::storage::Store) -> usize {
    let events = store.events_after(0, 1_000_000).unwrap();
    events.iter().filter(|e| matches!(e.kind, Some(Kind::TenantErasureCompleted(_)))).count()
}

/// What must not survive an erasure of `tenant`, as the store holds it:
/// a 32-byte slice of each record's ciphertext, each wrapped data key, and
/// each record id. (Ciphertexts and wrapped keys are random bytes, stored
/// as they are; a record id can also hide in a compressed or
/// prefix-shared block, so the ciphertexts are what a byte search proves.)
fn traces(shard: &Shard, tenant: &str, records: &[IngestRecord]) -> Vec<Vec<u8>> {
    let mut needles: Vec<Vec<u8>> = records.iter().map(|r| r.record_id.clone().into_bytes()).collect();
    for record in records {
        let stored = shard.store.find_record(&record_key(tenant, &record.record_id)).unwrap().expect("stored");
        let ciphertext = &stored.record.ciphertext;
        needles.push(ciphertext[ciphertext.len() / 2 - 16..ciphertext.len() / 2 + 16].to_vec());
    }
    needles.extend(shard.store.data_keys_of(tenant).unwrap().into_iter().map(|(_, wrapped)| wrapped.wrapped));
    needles
}

async fn erase(base: &str, tenant: &str, confirm: Option<&str>) -> (u16, Value) {
    let query = confirm.map(|c| format!("?confirm={c}")).unwrap_or_default();
    let response =
        reqwest::Client::new().delete(format!("{base}/v1/tenants/{tenant}{query}")).send().await.expect("admin API");
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("admin API reachable");
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Record ids long and unusual enough that no file holds them by chance.
fn records(tenant: &str, marker: &str, count: usize) -> Vec<IngestRecord> {
    synthetic(tenant, &format!("{marker}-{tenant}-"), count, 200, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_tenant_leaves_nothing_in_any_file_and_is_gone_for_good() {
    let vhost = Vhost::new("erasure");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &[]).await;
    let base = base_url(&worker);
    let sealed = records("gone", "zq7sealed", 300);
    let kept = records("kept", "zq7kept", 50);
    publish_confirmed(&vhost, &[sealed.clone(), kept.clone()].concat()).await;
    wait_for_records(&base, "gone", 300, WAIT).await;
    wait_for_records(&base, "kept", 50, WAIT).await;
    clock.advance(HOURS_49);
    let swept: Value =
        reqwest::Client::new().post(format!("{base}/v1/sweeps")).send().await.unwrap().json().await.unwrap();
    assert_eq!(swept["seal"]["sealed"], 350, "{swept}");
    let hot = records("gone", "zq7hot", 100);
    publish_confirmed(&vhost, &hot).await;
    wait_for_records(&base, "gone", 400, WAIT).await;
    // A deleted record leaves its id in a tombstone and in an event.
    let deleted = &hot[0].record_id;
    let response =
        reqwest::Client::new().delete(format!("{base}/v1/tenants/gone/records/{deleted}")).send().await.unwrap();
    assert_eq!(response.status(), 204);

    let shard = worker.only().shard.clone();
    let data_keys = shard.store.data_keys_of("gone").unwrap().len();
    assert!(data_keys >= 2, "hot and sealed data keys");
    let remaining: Vec<IngestRecord> = sealed.iter().chain(&hot[1..]).cloned().collect();
    let ids = traces(&shard, "gone", &remaining);
    shard.store.flush().unwrap();
    assert!(!files_holding(dir.path(), &ids).is_empty(), "the data reached the files, so the search can find it");

    for (tenant, confirm, status, code) in [
        ("gone", None, 400, "confirmation_required"),
        ("gone", Some("kept"), 400, "confirmation_required"),
        ("nobody", Some("nobody"), 404, "tenant_not_found"),
        ("Bad_Tenant", Some("Bad_Tenant"), 400, "invalid_tenant_id"),
    ] {
        let (got, body) = erase(&base, tenant, confirm).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{tenant} {confirm:?}: {body}");
    }
    assert_eq!(counts(&base, "gone").await, Some((99, 300)), "a refused erasure changes nothing");

    let (status, summary) = erase(&base, "gone", Some("gone")).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["state"], "erased");
    assert_eq!(summary["recordsRemoved"], 399, "{summary}");
    assert_eq!(summary["dataKeysDestroyed"].as_u64(), Some(data_keys as u64), "{summary}");
    assert_eq!(summary["eventsRedacted"], 1, "the RecordDeleted event's id: {summary}");

    assert_eq!(files_holding(dir.path(), &ids), Vec::<String>::new(), "no file holds a trace of the tenant");
    let kept_traces = traces(&shard, "kept", &kept);
    assert!(!files_holding(dir.path(), &kept_traces).is_empty(), "another tenant's records stay on disk");
    assert!(shard.store.data_keys_of("gone").unwrap().is_empty());

    for path in ["", "/records", &format!("/records/{}", sealed[0].record_id), "/retention"] {
        let (status, body) = get_json(&format!("{base}/v1/tenants/gone{path}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (410, Some("tenant_erased")), "{path}: {body}");
    }
    let (status, _) = erase(&base, "gone", Some("gone")).await;
    assert_eq!(status, 410, "erased once");
    let (status, audit) = get_json(&format!("{base}/v1/tenants/gone/audit")).await;
    assert_eq!(status, 200, "the audit outlives the data: {audit}");
    assert!(!audit["entries"].as_array().unwrap().is_empty());
    for record in &kept[..5] {
        assert_eq!(get_record(&base, "kept", &record.record_id).await, (200, record.payload.clone()));
    }

    // Gone for good: a new record for it is dead-lettered with the reason.
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    publish_confirmed(&vhost, &records("gone", "zq7late", 1)).await;
    let dead = next_dead_letter(&channel, WAIT).await.expect("a dead letter");
    assert!(reason(&dead).starts_with("tenant_erased"), "{}", reason(&dead));
    assert_eq!(get_json(&format!("{base}/v1/tenants/gone")).await.0, 410);

    let replay: Value =
        reqwest::Client::new().post(format!("{base}/v1/admin/replay")).send().await.unwrap().json().await.unwrap();
    assert_eq!(replay["equal"], true, "{replay}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_cut_short_after_the_shredding_is_finished_by_the_next_start() {
    let vhost = Vhost::new("erasure-resume");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let gone = records("gone", "zq8", 500);
    let mut child = spawn_worker(&vhost, dir.path(), port, &[] as &[&str]);
    publish_confirmed(&vhost, &gone).await;
    wait_for_records(&base, "gone", 500, WAIT).await;
    common::fleet::terminate(&mut child);

    // What a kill -9 right after the shredding batch leaves: the keys gone
    // and `TenantErased` committed, the records still there.
    let needles = {
        let settings = settings(&vhost, dir.path(), &[]);
        let clock: keyseal::clock::SharedClock = Arc::new(keyseal::clock::SystemClock);
        let shard = Shard::open(ShardId(0), &settings.shard_options(), settings.vault(), clock.clone())
            .expect("the shard opens");
        let needles = traces(&shard, "gone", &gone);
        let erased =
            |n| Kind::TenantErased(TenantErased { data_keys_destroyed: n, hot_records: 500, sealed_records: 0 });
        shard.keyring.shred("gone", clock.now_ms(), erased).await.unwrap();
        assert!(shard.store.tenant("gone").unwrap().erasure_pending);
        needles
    };
    assert!(!files_holding(dir.path(), &needles).is_empty(), "the records are still on disk");

    let mut child = spawn_worker(&vhost, dir.path(), port, &[] as &[&str]);
    wait_until("the restarted worker to finish the erasure", WAIT, || async {
        files_holding(dir.path(), &needles).is_empty()
    })
    .await;
    let (status, body) = get_json(&format!("{base}/v1/tenants/gone")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("tenant_erased")), "{body}");
    common::fleet::terminate(&mut child);
    let store = keyseal::storage::Store::open(&dir.path().join("db")).unwrap();
    let projection = store.tenant("gone").unwrap();
    assert!(!projection.erasure_pending, "the erasure was recorded as finished");
    assert_eq!(completed_erasures(&store), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_an_erasure_finishes_it_when_it_starts_again() {
    let vhost = Vhost::new("erasure-kill");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let gone = records("gone", "zq9", 5_000);
    let mut child = spawn_worker(&vhost, dir.path(), port, &[] as &[&str]);
    publish_confirmed(&vhost, &gone).await;
    wait_for_records(&base, "gone", 5_000, WAIT).await;

    // Ask for the erasure and kill -9 the worker as soon as the shredding
    // shows (410), while it removes and compacts.
    let erasing = tokio::spawn({
        let base = base.clone();
        async move { reqwest::Client::new().delete(format!("{base}/v1/tenants/gone?confirm=gone")).send().await }
    });
    wait_until("the keys to be shredded", WAIT, || async {
        get_json(&format!("{base}/v1/tenants/gone")).await.0 == 410
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = erasing.await;

    let mut child = spawn_worker(&vhost, dir.path(), port, &[] as &[&str]);
    wait_until("the restarted worker to answer", WAIT, || async {
        // Refused connections until it listens.
        let answer = reqwest::get(format!("{base}/v1/tenants/gone")).await;
        answer.is_ok_and(|response| response.status() == 410)
    })
    .await;
    common::fleet::terminate(&mut child);
    let store = keyseal::storage::Store::open(&dir.path().join("db")).unwrap();
    assert!(!store.tenant("gone").unwrap().erasure_pending, "finished, by the first worker or the second");
    assert!(store.data_keys_of("gone").unwrap().is_empty());
    let left: Vec<_> =
        gone.iter().filter(|r| store.find_record(&record_key("gone", &r.record_id)).unwrap().is_some()).collect();
    assert!(left.is_empty(), "{} records left", left.len());
    assert_eq!(completed_erasures(&store), 1, "finished once");
}
