//! Crash safety: the worker runs as a child process and is killed with
//! SIGKILL mid-stream. After a restart every record the broker confirmed to
//! the producer is stored exactly once.

mod common;

use std::time::Duration;

use common::*;
use keyseal::broker::publish::{Publisher, synthetic};
use keyseal::storage::{CF_HOT, Store};

/// Small batches keep the worker busy long enough to be killed mid-stream.
const SMALL_BATCHES: [&str; 4] = ["--batch-size", "50", "--prefetch", "100"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_duplicates_nothing() {
    const TOTAL: usize = 20_000;
    let vhost = Vhost::new("crash");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let records = synthetic("crash", "k-", TOTAL, 256, 1);
    let publisher = Publisher::connect(&vhost.amqp_url()).await.unwrap();

    let mut child = spawn_worker(&vhost, dir.path(), port, &SMALL_BATCHES);
    let first_half = publisher.publish_all(&records[..TOTAL / 2], 1000).await.unwrap();
    wait_until("the worker to be mid-stream", Duration::from_secs(60), || async {
        counts(&base, "crash").await.is_some_and(|(hot, _)| hot > 500)
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = {
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.tenant("crash").unwrap().hot_records
    };
    assert!((at_kill as usize) < TOTAL, "killed before the stream ended ({at_kill} stored)");

    let second_half = publisher.publish_all(&records[TOTAL / 2..], 1000).await.unwrap();
    let confirmed: Vec<usize> =
        first_half.iter().chain(&second_half).enumerate().filter_map(|(i, ok)| ok.then_some(i)).collect();
    assert_eq!(confirmed.len(), TOTAL, "the broker confirmed every record");

    let mut child = spawn_worker(&vhost, dir.path(), port, &SMALL_BATCHES);
    wait_for_records(&base, "crash", TOTAL as u64, Duration::from_secs(120)).await;
    for &i in confirmed.iter().step_by(97) {
        let (status, body) = get_record(&base, "crash", &records[i].record_id).await;
        assert_eq!((status, body.as_slice()), (200, records[i].payload.as_slice()));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Exactly once: the projection (a fold of RecordsStored events) and the
    // keys actually in `hot` agree with the number of distinct records.
    let store = Store::open(&dir.path().join("db")).unwrap();
    let db = store.raw();
    let stored_keys = db.iterator_cf(db.cf_handle(CF_HOT).unwrap(), rocksdb::IteratorMode::Start).count();
    assert_eq!(stored_keys, TOTAL);
    assert_eq!(store.tenant("crash").unwrap().hot_records, TOTAL as u64);
}
