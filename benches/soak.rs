//! Soak: 1,000,000 records of 1 KiB ingested and sealed in one run, in ten
//! slices of 10 %. Each slice is ingested through the write path the
//! consumer runs (`store_batch` in batches of 250, one WAL fsync per batch)
//! and then, 48 hours later by the bench's clock, sealed by the seal sweep.
//! Printed per slice: ingest and seal throughput, RocksDB's own figures
//! (cumulative compaction and write stalls, L0 files and pending
//! compaction bytes of `hot` and `sealed`), and the write amplification:
//! the bytes RocksDB wrote for each of `hot` and `sealed` (every table and
//! blob file its flushes and compactions made, from its info LOG) and
//! the bytes the process wrote to disk (`/proc/self/io`, WAL included),
//! each divided by the record bytes the slice ingested. The last slice must
//! run at ≥ 0.9 of the first and write at most 1.5 times its bytes: the
//! cost per record must not grow with the data.
//!
//! The broker is left out on purpose: its throughput is the ingest bench's
//! subject, and its own queue behaviour would hide keyseal's.
//!
//! `cargo bench --bench soak` (KEYSEAL_BENCH_RECORDS to change the size).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyseal::broker::publish::synthetic;
use keyseal::clock::{Clock, ManualClock};
use keyseal::crypto::keyring::{CacheLimits, Keyring, RotationLimits};
use keyseal::crypto::root_key::ManagedRootKeys;
use keyseal::records::{UnreadableTenants, store_batch};
use keyseal::storage::{CF_HOT, CF_SEALED, Store};
use keyseal::sweeps::seal::seal_due;

const SEAL_AFTER: Duration = Duration::from_secs(48 * 3600);
const BATCH: usize = 250;
const TENANTS: usize = 8;

/// Bytes written so far: by RocksDB's flushes and compactions of `hot`
/// and of `sealed`, and by this process to disk.
#[derive(Clone, Copy, Default)]
struct Written {
    hot: f64,
    sealed: f64,
    disk: f64,
}

impl Written {
    /// Read off the store's info LOG (every table and blob file RocksDB
    /// created, with its column family and size: flushes and compactions)
    /// and `/proc/self/io`.
    fn now(store_dir: &Path) -> Self {
        let mut written = Self::default();
        let log = std::fs::read_to_string(store_dir.join("LOG")).unwrap_or_default();
        for event in log.lines().filter_map(|l| l.split_once("EVENT_LOG_v1 ")).map(|(_, json)| json) {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(event) else { continue };
            let bytes = match event["event"].as_str() {
                Some("table_file_creation") => event["file_size"].as_f64(),
                Some("blob_file_creation") => event["total_blob_bytes"].as_f64(),
                _ => None,
            };
            match (event["cf_name"].as_str(), bytes) {
                (Some(CF_HOT), Some(bytes)) => written.hot += bytes,
                (Some(CF_SEALED), Some(bytes)) => written.sealed += bytes,
                _ => {}
            }
        }
        let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let disk = io.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok());
        Self { disk: disk.unwrap_or(0.0), ..written }
    }

    fn minus(self, earlier: Self) -> Self {
        Self { hot: self.hot - earlier.hot, sealed: self.sealed - earlier.sealed, disk: self.disk - earlier.disk }
    }

    /// Per byte of records ingested: `hot`, `sealed`, disk.
    fn per(self, record_bytes: f64) -> String {
        format!(
            "write amplification hot {:.2}, sealed {:.2}, disk (WAL included) {:.2}",
            self.hot / record_bytes,
            self.sealed / record_bytes,
            self.disk / record_bytes
        )
    }
}

/// RocksDB's figures after a slice.
struct DbFigures {
    /// `Cumulative compaction: … GB write, … MB/s write, … GB read, …` (DB-wide, all CFs).
    compaction: String,
    /// `Cumulative stall: …` of the DB stats.
    stall: String,
    /// (L0 files, estimated pending compaction bytes) of `hot` and `sealed`.
    levels: [(u64, u64); 2],
}

fn db_figures(store: &Store) -> DbFigures {
    let db = store.raw();
    let line_of = |text: &str, prefix: &str| {
        text.lines().find(|l| l.starts_with(prefix)).map_or_else(|| "n/a".to_owned(), |l| l.trim().to_owned())
    };
    let dbstats = db.property_value("rocksdb.dbstats").unwrap().unwrap_or_default();
    let mut compaction_gb = (0.0, 0.0);
    for cf in [CF_HOT, CF_SEALED] {
        let stats = db.property_value_cf(db.cf_handle(cf).unwrap(), "rocksdb.cfstats").unwrap().unwrap_or_default();
        // "Cumulative compaction: 0.10 GB write, 5.73 MB/s write, 0.00 GB read, ..."
        let line = line_of(&stats, "Cumulative compaction:");
        let numbers: Vec<f64> = line.split([' ', ',']).filter_map(|w| w.parse().ok()).collect();
        if numbers.len() >= 3 {
            compaction_gb.0 += numbers[0];
            compaction_gb.1 += numbers[2];
        }
    }
    let level = |cf: &str| {
        let handle = db.cf_handle(cf).unwrap();
        let int = |name: &str| db.property_int_value_cf(handle, name).unwrap().unwrap_or(0);
        (int("rocksdb.num-files-at-level0"), int("rocksdb.estimate-pending-compaction-bytes"))
    };
    DbFigures {
        compaction: format!(
            "hot+sealed flush and compaction wrote {:.2} GB, compaction read {:.2} GB",
            compaction_gb.0, compaction_gb.1
        ),
        stall: line_of(&dbstats, "Cumulative stall:"),
        levels: [level(CF_HOT), level(CF_SEALED)],
    }
}

fn main() {
    let count: usize = std::env::var("KEYSEAL_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let slice = count / 10;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Arc::new(Store::open(&store_dir).unwrap());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let keyring = Keyring::new(
        store.clone(),
        ManagedRootKeys::load_or_create(&dir.path().join("root-keys")).unwrap(),
        Err("managed keys only".to_owned()),
        CacheLimits::default(),
        RotationLimits::default(),
        clock.clone(),
    );
    println!("soak: {count} records of 1 KiB over {TENANTS} tenants, ingested then sealed in 10 slices of {slice}");
    let (mut ingest_rates, mut seal_rates) = (Vec::new(), Vec::new());
    let record_bytes = (slice * 1024) as f64;
    let (start, mut written) = (Written::now(&store_dir), Vec::new());
    for s in 0..10 {
        let before = Written::now(&store_dir);
        let batches: Vec<_> = (0..slice.div_ceil(BATCH))
            .map(|b| {
                let n = BATCH.min(slice - b * BATCH);
                synthetic(&format!("tenant-{}", b % TENANTS), &format!("s{s}-b{b}-"), n, 1024, clock.now_ms())
            })
            .collect();
        let started = Instant::now();
        runtime.block_on(async {
            for batch in batches {
                store_batch(&store, &keyring, batch, &UnreadableTenants::default(), clock.now_ms()).await.unwrap();
                store.sync_async().await.unwrap();
            }
        });
        ingest_rates.push(slice as f64 / started.elapsed().as_secs_f64());

        clock.advance(SEAL_AFTER + Duration::from_secs(1));
        let started = Instant::now();
        let summary =
            runtime.block_on(seal_due(&store, &keyring, clock.as_ref(), SEAL_AFTER, &Default::default())).unwrap();
        seal_rates.push(slice as f64 / started.elapsed().as_secs_f64());
        assert_eq!(summary.sealed as usize, slice, "every record of the slice sealed");

        let db = db_figures(&store);
        println!(
            "  slice {:>2} ({:>3}%): ingest {:>7.0} records/s   seal {:>7.0} records/s   L0 files hot/sealed {}/{}   \
             pending compaction {:.1}/{:.1} MiB",
            s + 1,
            (s + 1) * 10,
            ingest_rates[s],
            seal_rates[s],
            db.levels[0].0,
            db.levels[1].0,
            db.levels[0].1 as f64 / 1048576.0,
            db.levels[1].1 as f64 / 1048576.0,
        );
        println!("             {}; {}", db.compaction, db.stall);
        written.push(Written::now(&store_dir).minus(before));
        let w = written[s];
        println!(
            "             wrote hot {:.0} MiB, sealed {:.0} MiB, disk {:.0} MiB: {}",
            w.hot / 1048576.0,
            w.sealed / 1048576.0,
            w.disk / 1048576.0,
            w.per(record_bytes)
        );
    }
    println!("in total: {}", Written::now(&store_dir).minus(start).per(record_bytes * 10.0));
    let bytes = |w: &Written| w.hot + w.sealed;
    let median3 = |slices: &[Written], of: &dyn Fn(&Written) -> f64| {
        let mut three: Vec<f64> = slices.iter().map(of).collect();
        three.sort_by(f64::total_cmp);
        three[1]
    };
    let growth = |of: &dyn Fn(&Written) -> f64| median3(&written[7..], of) / median3(&written[..3], of);
    println!(
        "bytes written per slice, median of the last 3 / of the first 3: RocksDB hot and sealed {:.2}, disk {:.2} \
         (target <= 1.5)",
        growth(&bytes),
        growth(&|w| w.disk)
    );
    let ratio = |rates: &[f64]| rates[9] / rates[0];
    println!(
        "last slice / first slice: ingest {:.2}, seal {:.2} (target >= 0.9 each)",
        ratio(&ingest_rates),
        ratio(&seal_rates)
    );
    // One slice lasts about a second, so a compaction that happens to run
    // in it moves it by ±15 %; the median of three slices says more.
    let median3 = |rates: &[f64]| {
        let mut three = rates.to_vec();
        three.sort_by(f64::total_cmp);
        three[1]
    };
    let trend = |rates: &[f64]| median3(&rates[7..]) / median3(&rates[..3]);
    println!(
        "median of the last 3 slices / of the first 3: ingest {:.2}, seal {:.2}",
        trend(&ingest_rates),
        trend(&seal_rates)
    );
    let sealed: u64 = store.tenants().iter().map(|(_, p)| p.sealed_records).sum();
    println!("sealed records in the store at the end: {sealed} (of {count})");
}
