//! A worker wired to a Key Vault emulator (TLS, static token), with a
//! manual clock, and the admin calls BYOK tests need.

use std::sync::Arc;
use std::time::Duration;

use super::vault::{Vault, args};
use super::*;
use keyseal::broker::publish::synthetic;
use keyseal::clock::ManualClock;
use keyseal::proto::v1::root_key_ref::Root;
use keyseal::worker::Worker;
use keyvault_emulator::RecoveryLevel;
use serde_json::{Value, json};

/// How long BYOK tests wait for records.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Setup {
    pub vault: Vault,
    pub vhost: Vhost,
    pub _dir: tempfile::TempDir,
    pub worker: Worker,
    pub base: String,
    pub clock: ManualClock,
    pub http: reqwest::Client,
    pub _state: tempfile::TempDir,
}

/// Starts an emulator and a worker that trusts it; `extra` adds worker flags.
pub async fn setup(name: &str, recovery_level: RecoveryLevel, throttle_rps: Option<u32>, extra: &[&str]) -> Setup {
    setup_with(name, recovery_level, throttle_rps, extra, |_, _| {}).await
}

/// As [`setup`], with `prepare` given the emulator and the worker's settings
/// before the worker starts (to add identities, set the vault token, ...).
pub async fn setup_with(
    name: &str,
    recovery_level: RecoveryLevel,
    throttle_rps: Option<u32>,
    extra: &[&str],
    prepare: impl FnOnce(&Vault, &mut keyseal::config::Settings),
) -> Setup {
    let state = tempfile::tempdir().unwrap();
    let mut emulator_args = args(state.path(), recovery_level);
    emulator_args.throttle_rps = throttle_rps.map(|n| std::num::NonZeroU32::new(n).unwrap());
    let vault = Vault::start(emulator_args).await;
    let vhost = Vhost::new(name);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let flags = vault.worker_flags();
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend_from_slice(extra);
    let mut settings = settings(&vhost, dir.path(), &flags);
    prepare(&vault, &mut settings);
    let worker = Worker::start(settings, Arc::new(clock.clone())).await.expect("worker starts");
    let base = base_url(&worker);
    Setup { vault, vhost, _dir: dir, worker, base, clock, http: reqwest::Client::new(), _state: state }
}

impl Setup {
    pub async fn enable(&self, tenant: &str, key_uri: &str) -> (u16, Value) {
        let response = self
            .http
            .put(format!("{}/v1/tenants/{tenant}/encryption", self.base))
            .json(&json!({"keyUri": key_uri}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn disable(&self, tenant: &str) -> (u16, Value) {
        let response = self.http.delete(format!("{}/v1/tenants/{tenant}/encryption", self.base)).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn sweep(&self) -> Value {
        self.http.post(format!("{}/v1/sweeps", self.base)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn status(&self, tenant: &str) -> Value {
        reqwest::get(format!("{}/v1/tenants/{tenant}", self.base)).await.unwrap().json().await.unwrap()
    }

    pub async fn publish(&self, tenant: &str, prefix: &str, count: usize) -> Vec<keyseal::proto::v1::IngestRecord> {
        let before = counts(&self.base, tenant).await.map_or(0, |(h, s)| h + s);
        let records = synthetic(tenant, prefix, count, 300, 1);
        publish_confirmed(&self.vhost, &records).await;
        wait_for_records(&self.base, tenant, before + count as u64, WAIT).await;
        records
    }

    pub async fn assert_readable(&self, records: &[keyseal::proto::v1::IngestRecord]) {
        for record in records {
            let (status, body) = get_record(&self.base, &record.tenant_id, &record.record_id).await;
            assert_eq!(status, 200, "{}/{}", record.tenant_id, record.record_id);
            assert_eq!(body, record.payload);
        }
    }

    /// Roots of the tenant's sealed data keys, as stored.
    pub fn sealed_roots(&self, tenant: &str) -> Vec<Root> {
        self.worker
            .only()
            .shard
            .store
            .data_keys_of(tenant)
            .unwrap()
            .into_iter()
            .filter(|(id, _)| {
                keyseal::crypto::data_key::DataKeyId::from_bytes(id).unwrap().layer == keyseal::proto::v1::Layer::Sealed
            })
            .map(|(_, wrapped)| wrapped.wrapped_by.unwrap().root.unwrap())
            .collect()
    }

    /// Asserts `keyseal admin replay`'s check: projections rebuilt from the
    /// log equal the live ones.
    pub async fn assert_replay_equal(&self) {
        let report: Value =
            self.http.post(format!("{}/v1/admin/replay", self.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(report["equal"], true, "{report}");
        assert!(report["events"].as_u64().unwrap() > 0);
    }

    pub async fn rsa_key(&self, name: &str) -> String {
        self.vault.admin.create_rsa(name).await.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Waits until `tenant` is in `state` with key-health `reason`; returns its status.
pub async fn wait_for_state(s: &Setup, tenant: &str, state: &str, reason: Option<&str>) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = s.status(tenant).await;
        if status["state"] == state && status["keyHealth"]["reason"].as_str() == reason {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{tenant} never became {state} ({reason:?}): {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
