//! Data-key rotation and the maintenance sweeps against a real worker:
//! writer keys rotate by record count, the re-encryption sweep moves
//! records off old data keys at the configured rate and retires the keys,
//! and the scrub finds a flipped bit without deleting anything (and never
//! names the record in a log).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::byok::{Setup, WAIT, setup};
use common::*;
use keyseal::proto::store::StoredRecord;
use keyseal::proto::v1::event::Kind;
use keyseal::storage::{CF_HOT, CF_SEALED, keys};
use keyvault_emulator::RecoveryLevel;
use prost::Message;
use serde_json::Value;

const SEAL: Duration = Duration::from_secs(48 * 3600 + 1);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Records per data key id in a column family.
fn records_per_key(s: &Setup, cf: &str) -> BTreeMap<Vec<u8>, usize> {
    let running = s.worker.only();
    let db = running.shard.store.raw();
    let mut per_key = BTreeMap::new();
    for item in db.iterator_cf(db.cf_handle(cf).unwrap(), rocksdb::IteratorMode::Start) {
        let (_, value) = item.unwrap();
        *per_key.entry(StoredRecord::decode(value.as_ref()).unwrap().data_key_id).or_default() += 1;
    }
    per_key
}

/// Everything logged in this test binary from the first call on (tests run
/// side by side, so it holds their lines too).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Sink(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Asserts the captured logs report a failed record (`said`) without
/// naming any record id, `record_id` least of all.
fn assert_logged_without_record_id(logs: &Mutex<Vec<u8>>, said: &str, record_id: &str) {
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains(said), "the capture works: {said:?} was logged");
    for line in text.lines() {
        assert!(!line.contains("record_id") && !line.contains(&format!("\"{record_id}\"")), "{line}");
    }
}

async fn post_sweep(s: &Setup, kind: &str) -> Value {
    let response = s.http.post(format!("{}/v1/sweeps?kind={kind}", s.base)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_key_encrypts_at_most_max_records_per_dek() {
    let s = setup("rotate-count", RecoveryLevel::Recoverable, None, &["--max-records-per-dek", "100"]).await;
    let records = s.publish("acme", "r-", 1000).await;
    let hot = records_per_key(&s, CF_HOT);
    assert!(hot.len() >= 10, "{} hot data keys for 1000 records", hot.len());
    assert!(hot.values().all(|&n| n <= 100), "{hot:?}");

    s.clock.advance(SEAL);
    assert_eq!(s.sweep().await["seal"]["sealed"], 1000);
    let sealed = records_per_key(&s, CF_SEALED);
    assert_eq!(sealed.len(), 10, "sealing fills each new key to the limit");
    assert!(sealed.values().all(|&n| n == 100), "{sealed:?}");
    let census = &s.status("acme").await["dataKeys"];
    assert_eq!(census["total"].as_u64().unwrap() as usize, hot.len() + sealed.len(), "{census}");
    s.assert_readable(&records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencryption_moves_records_off_old_keys_at_the_configured_rate() {
    const RATE: u64 = 500;
    let s =
        setup("reencrypt", RecoveryLevel::Recoverable, None, &["--sweep-rate", "500", "--max-dek-age", "30days"]).await;
    s.rsa_key("k").await;
    assert_eq!(s.enable("byok", &s.vault.key_uri("k")).await.0, 200);
    let mut records = s.publish("byok", "b-", 750).await;
    records.extend(s.publish("acme", "a-", 750).await);
    s.clock.advance(SEAL);
    assert_eq!(s.sweep().await["seal"]["sealed"], 1500);
    let old_keys: BTreeSet<Vec<u8>> = records_per_key(&s, CF_SEALED).into_keys().collect();
    let keys_before = s.worker.only().shard.store.data_keys_of("acme").unwrap().len()
        + s.worker.only().shard.store.data_keys_of("byok").unwrap().len();

    // Nothing is old enough yet: the sweep reads no record.
    assert_eq!(post_sweep(&s, "reencrypt").await["reencrypt"]["scanned"], 0);

    s.clock.advance(31 * DAY);
    let started = Instant::now();
    let summary = post_sweep(&s, "reencrypt").await;
    let took = started.elapsed().as_secs_f64();
    let expected = 1500.0 / RATE as f64;
    assert!(
        (took - expected).abs() <= 0.2 * expected,
        "1500 records at {RATE}/s took {took:.2}s, expected {expected:.2}s ± 20%"
    );
    let summary = &summary["reencrypt"];
    assert_eq!(summary["reencrypted"], 1500, "{summary}");
    assert_eq!(summary["tenants"]["acme"], 750);
    assert_eq!(summary["tenants"]["byok"], 750);
    assert_eq!(summary["unreadable"], 0);

    let new_keys: BTreeSet<Vec<u8>> = records_per_key(&s, CF_SEALED).into_keys().collect();
    assert!(new_keys.is_disjoint(&old_keys), "every record is on a fresh data key");
    // The old hot and sealed keys are gone (each tenant keeps its one fresh sealed key).
    let keys_after = s.worker.only().shard.store.data_keys_of("acme").unwrap().len()
        + s.worker.only().shard.store.data_keys_of("byok").unwrap().len();
    assert_eq!(summary["retiredDataKeys"].as_u64().unwrap() as usize, keys_before, "{summary}");
    assert_eq!(keys_after, new_keys.len());
    s.worker.only().shard.keyring.forget_cached();
    s.assert_readable(&records).await;

    // Resumable and idempotent: a second run finds nothing left to move.
    let again = post_sweep(&s, "reencrypt").await;
    assert_eq!(again["reencrypt"]["reencrypted"], 0, "{again}");
    s.assert_replay_equal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_reports_exactly_the_record_with_a_flipped_bit_and_deletes_nothing() {
    let logs = captured_logs();
    let s = setup("scrub", RecoveryLevel::Recoverable, None, &[]).await;
    let records = s.publish("acme", "r-", 200).await;
    s.clock.advance(SEAL);
    assert_eq!(s.sweep().await["seal"]["sealed"], 200);
    assert_eq!(post_sweep(&s, "scrub").await["scrub"]["corruptCount"], 0);

    let victim = &records[137];
    let running = s.worker.only();
    let db = running.shard.store.raw();
    let sealed = db.cf_handle(CF_SEALED).unwrap();
    let key = keys::record_key("acme", &victim.record_id);
    let mut stored = StoredRecord::decode(db.get_cf(sealed, &key).unwrap().unwrap().as_slice()).unwrap();
    stored.ciphertext[7] ^= 0x10;
    db.put_cf(sealed, &key, stored.encode_to_vec()).unwrap();

    let summary = post_sweep(&s, "scrub").await;
    let summary = &summary["scrub"];
    assert_eq!(summary["corruptCount"], 1, "{summary}");
    assert_eq!(summary["verified"], 199);
    assert_eq!(summary["corrupt"][0]["tenant"], "acme");
    assert_eq!(summary["corrupt"][0]["recordId"], victim.record_id.as_str());
    assert_eq!(summary["corrupt"][0]["layer"], "sealed");
    assert_eq!(summary["corrupt"][0]["reason"], "tag_mismatch");
    assert_logged_without_record_id(&logs, "failed verification", &victim.record_id);

    // Nothing deleted or rewritten: the damaged bytes are still there.
    assert_eq!(db.get_cf(sealed, &key).unwrap().unwrap(), stored.encode_to_vec());
    assert_eq!(s.status("acme").await["records"]["sealed"], 200);
    let (status, _) = get_record(&s.base, "acme", &victim.record_id).await;
    assert_eq!(status, 500, "the corrupt record is refused, not returned");
    s.assert_readable(&records[..137]).await;

    // `keyseal sweep --scrub` prints the same finding and exits 1.
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyseal"))
        .args(["sweep", "--scrub", "--server", &s.base])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert_eq!(cli.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&cli.stderr));
    assert!(stdout.contains(&victim.record_id), "{stdout}");
    assert!(String::from_utf8_lossy(&cli.stderr).contains("1 records failed verification"));

    // Reported as an event and a metric (once per scrub).
    let events = s.worker.only().shard.store.events_after(0, usize::MAX).unwrap();
    let reported: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::CorruptionDetected(c)) => Some(c.record_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reported, vec![victim.record_id.clone(); 2], "one event per scrub that found it");
    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("keyseal_corrupt_records_total{layer=\"sealed\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
    wait_until("the progress to clear", WAIT, || async {
        let progress: Value =
            reqwest::get(format!("{}/v1/sweeps/progress", s.base)).await.unwrap().json().await.unwrap();
        progress["running"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_hot_record_stays_in_hot_and_does_not_stop_sealing() {
    let logs = captured_logs();
    let s = setup("seal-damaged", RecoveryLevel::Recoverable, None, &[]).await;
    let records = s.publish("acme", "r-", 50).await;
    let running = s.worker.only();
    let db = running.shard.store.raw();
    let hot = db.cf_handle(CF_HOT).unwrap();
    let key = keys::record_key("acme", &records[3].record_id);
    let mut stored = StoredRecord::decode(db.get_cf(hot, &key).unwrap().unwrap().as_slice()).unwrap();
    stored.nonce[0] ^= 1;
    db.put_cf(hot, &key, stored.encode_to_vec()).unwrap();

    s.clock.advance(SEAL);
    let summary = s.sweep().await;
    assert_eq!(summary["seal"]["sealed"], 49, "{summary}");
    assert_eq!(summary["seal"]["unsealable"]["acme"], 1, "{summary}");
    assert_eq!(db.get_cf(hot, &key).unwrap().unwrap(), stored.encode_to_vec(), "left as it was");
    assert_logged_without_record_id(&logs, "left in hot", &records[3].record_id);
    let scrub = post_sweep(&s, "scrub").await;
    assert_eq!(scrub["scrub"]["corrupt"][0]["recordId"], records[3].record_id.as_str(), "{scrub}");
    assert_eq!(scrub["scrub"]["corrupt"][0]["layer"], "hot");
}
