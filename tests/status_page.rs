//! The status page in a real browser: headless Chromium loads `GET /` of a
//! running worker (emulated Key Vault, real RabbitMQ and RocksDB) and the
//! DOM it builds shows a locked-down tenant as locked down, next to a
//! healthy one.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::byok::{WAIT, setup};
use common::wait_until;
use keyvault_emulator::RecoveryLevel;
use serde_json::json;

/// Seal age, lockdown grace and probe interval short enough for a test;
/// the manual clock covers the first two in one step.
const FLAGS: [&str; 6] = ["--probe-interval", "100ms", "--lockdown-after", "10m", "--seal-after", "5m"];
/// Past the lockdown grace, and so 6 minutes past the seal age of records
/// stored before the step.
const STEP: Duration = Duration::from_secs(11 * 60);
/// How long Chromium may take to load and dump the page.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// The DOM headless Chromium builds for `url`, after the page has loaded.
async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut profile_flag = std::ffi::OsString::from("--user-data-dir=");
    profile_flag.push(profile.path());
    let child = tokio::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .args(["--disable-background-networking", "--no-first-run"])
        .arg(profile_flag)
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `chromium` ({e}): this test needs Debian's `chromium` package on PATH; \
                 `cargo xtask test` installs it (apt-get install chromium)"
            )
        });
    let output = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not dump {url} within {BROWSER_TIMEOUT:?}"))
        .expect("waiting for chromium");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed ({}): {stderr}", output.status);
    let dom = String::from_utf8(output.stdout).expect("the DOM is UTF-8");
    assert!(dom.contains("</html>"), "chromium dumped no page: {dom}\n{stderr}");
    dom
}

/// The serialised `<tr>` of `tenant`'s row.
fn row<'a>(dom: &'a str, tenant: &str) -> &'a str {
    let start =
        dom.find(&format!("<tr data-tenant=\"{tenant}\"")).unwrap_or_else(|| panic!("no row for {tenant} in:\n{dom}"));
    let end = start + dom[start..].find("</tr>").expect("the row ends");
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_a_locked_down_tenant_as_locked_down() {
    let s = setup("status-page", RecoveryLevel::Recoverable, None, &FLAGS).await;
    s.rsa_key("acme-key").await;
    s.rsa_key("beta-key").await;
    for (tenant, key) in [("acme", "acme-key"), ("beta", "beta-key")] {
        let (status, body) = s.enable(tenant, &s.vault.key_uri(key)).await;
        assert_eq!(status, 200, "{body}");
        s.publish(tenant, "r-", 3).await;
    }

    s.vault.patch("acme-key", json!({"attributes": {"enabled": false}})).await;
    wait_until("acme degraded", WAIT, || async { s.status("acme").await["state"] == "degraded" }).await;
    s.clock.advance(STEP);
    wait_until("acme locked down", WAIT, || async { s.status("acme").await["state"] == "locked_down" }).await;
    let sweep = s.sweep().await;
    assert_eq!(
        (sweep["seal"]["tenants"]["beta"].as_u64(), sweep["seal"]["heldBack"]["acme"].as_u64()),
        (Some(3), Some(3)),
        "{sweep}"
    );

    let response = reqwest::get(format!("{}/", s.base)).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(response.headers()["cache-control"], "no-store");

    let dom = dump_dom(&format!("{}/", s.base)).await;
    let acme = row(&dom, "acme");
    assert!(acme.starts_with("<tr data-tenant=\"acme\" data-state=\"locked_down\">"), "{acme}");
    assert!(acme.contains("<span class=\"badge state-locked_down\">locked down</span>"), "{acme}");
    assert!(acme.contains("<code>key_disabled</code>"), "the reason: {acme}");
    assert!(
        acme.contains("<td class=\"num\"><span class=\"late\">6m</span></td>"),
        "its held-back records' lag: {acme}"
    );
    let beta = row(&dom, "beta");
    assert!(beta.starts_with("<tr data-tenant=\"beta\" data-state=\"active\">"), "{beta}");
    assert!(beta.contains("<span class=\"badge state-active\">active</span>"), "{beta}");
    assert!(beta.contains("<span class=\"health-healthy\">healthy</span>"), "{beta}");
    assert!(
        beta.contains("<td class=\"num\">0</td>\n<td class=\"num\">3</td>\n<td class=\"num\">0s</td>"),
        "sealed, no lag: {beta}"
    );
    assert!(dom.contains("<dt>Seal lag</dt><dd><span class=\"late\">6m</span>"), "the worker's lag:\n{dom}");
    assert!(dom.contains("<meta http-equiv=\"refresh\" content=\"5\">"), "the page refreshes itself");
    s.worker.stop().await;
}
