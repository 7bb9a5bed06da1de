//! Per-record crypto cost: sealing and opening a 1 KiB record envelope
//! (AES-256-GCM with the identity as associated data), next to a plain copy
//! of the same bytes as the baseline; and the per-data-key root cost (RSA-OAEP-256
//! wrap and unwrap with the 3072-bit managed root), which keyseal pays once
//! per data key, never per record.
//!
//! `cargo bench --bench envelope`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use keyseal::crypto::data_key::DataKey;
use keyseal::crypto::envelope::RecordIdentity;
use keyseal::crypto::root_key::{ManagedRootKeys, RootKey, WrapAlgorithm};
use keyseal::proto::store::StoredRecord;
use keyseal::proto::v1::Layer;
use prost::Message;

fn envelope(c: &mut Criterion) {
    let key = DataKey::generate();
    let content = vec![0x5au8; 1024];
    let identity = RecordIdentity { tenant: "acme", record_id: "record-000123", layer: Layer::Hot };
    let stored = StoredRecord::decode(identity.seal(b"dek-id", &key, &content, 0).as_bytes()).unwrap();
    let mut group = c.benchmark_group("record_1KiB");
    group.throughput(Throughput::Bytes(content.len() as u64));
    group.bench_function("plain_copy", |b| b.iter(|| std::hint::black_box(content.clone())));
    group.bench_function("seal", |b| b.iter(|| identity.seal(b"dek-id", &key, std::hint::black_box(&content), 0)));
    group.bench_function("open", |b| b.iter(|| identity.open(&key, std::hint::black_box(&stored)).unwrap()));
    group.finish();

    // The managed root does its RSA work inline: its futures are ready at once.
    let dir = tempfile::tempdir().unwrap();
    let root = ManagedRootKeys::load_or_create(dir.path()).unwrap().current();
    let wrap = || root.wrap(&key, None).now_or_never().expect("ready").unwrap();
    let wrapped = wrap().wrapped;
    let mut group = c.benchmark_group("managed_root_3072");
    group.sample_size(20);
    group.bench_function("wrap", |b| b.iter(wrap));
    group.bench_function("unwrap", |b| {
        b.iter(|| root.unwrap(&wrapped, WrapAlgorithm::RsaOaep256, None).now_or_never().expect("ready").unwrap())
    });
    group.finish();
}

criterion_group!(benches, envelope);
criterion_main!(benches);
