//! Microsoft's own tests of the Python `azure-keyvault-keys` SDK, run live
//! against a fresh emulator: `tests/python/sdk_suite/run.py` downloads the
//! SDK's source package at a pinned version and hash, runs its key-client
//! and crypto-client test files (sync and async) through our stand-in for
//! the SDK repo's recording harness, and fails on any failure that
//! `known_failures.txt` does not list, and on any listed test that passes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::vault::*;
use keyvault_emulator::{DEV_TOKEN, RecoveryLevel};

/// A cold run downloads the package and creates a few hundred RSA keys.
const SUITE_TIMEOUT: Duration = Duration::from_secs(20 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdks_own_test_suite_passes_against_the_emulator() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Purge must be allowed: the SDK's tests purge what they delete.
    let vault = Vault::start(args(dir.path(), RecoveryLevel::RecoverablePurgeable)).await;
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_suite");
    let mut python = tokio::process::Command::new("python3");
    python
        .arg(suite.join("run.py"))
        .args(["--vault-url", &vault.emulator.vault_url()])
        .arg("--ca-cert")
        .arg(vault.emulator.cert_pem_path())
        .args(["--token", DEV_TOKEN, "--sku", "premium"])
        .arg("--known-failures")
        .arg(suite.join("known_failures.txt"));
    let (succeeded, report) = run_python(&mut python, SUITE_TIMEOUT).await;
    assert!(succeeded, "the SDK's tests failed against the emulator (see tests/python/sdk_suite/README.md): {report}");
    let calls = vault.emulator.calls();
    for operation in
        ["create_key", "import_key", "sign", "verify", "backup_key", "restore_key", "update_rotation_policy"]
    {
        assert!(
            calls.get(operation).is_some_and(|n| *n > 0),
            "the suite never called {operation}: {calls:?}\n{report}"
        );
    }
    vault.emulator.shutdown().await;
}
