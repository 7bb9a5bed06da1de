//! The admin API's edges: bearer-token auth, the loopback rule, and
//! malformed requests answered with 4xx JSON errors while the worker keeps
//! serving.

mod common;

use std::sync::Arc;

use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::clock::SystemClock;
use keyseal::proto::v1::IngestRecord;
use keyseal::worker::Worker;
use serde_json::Value;

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("every error is a JSON body");
    (status, body["error"]["code"].as_str().expect("error.code").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_v1_needs_the_right_bearer_and_health_stays_open() {
    let vhost = Vhost::new("auth");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(&vhost, dir.path(), &[]);
    settings.admin_token = Some("s3cret-token".into());
    let worker = Worker::start(settings, Arc::new(SystemClock)).await.unwrap();
    let base = base_url(&worker);
    publish_confirmed(&vhost, &synthetic("acme", "r-", 1, 10, 1)).await;
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/tenants/acme");

    assert_eq!(error_of(http.get(&url).send().await.unwrap()).await, (401, "unauthorized".into()));
    let wrong = http.get(&url).bearer_auth("s3cret-tokeN").send().await.unwrap();
    assert_eq!(error_of(wrong).await, (401, "unauthorized".into()));
    let prefix = http.get(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(error_of(prefix).await, (401, "unauthorized".into()));
    wait_until("the record", std::time::Duration::from_secs(30), || async {
        http.get(&url).bearer_auth("s3cret-token").send().await.unwrap().status() == 200
    })
    .await;
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["brokerNode"], "127.0.0.1:5672", "the node holding the leases: {ready}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_status_page_and_metrics_need_it_too() {
    let vhost = Vhost::new("auth-views");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(&vhost, dir.path(), &[]);
    settings.admin_token = Some("view-token".into());
    let worker = Worker::start(settings, Arc::new(SystemClock)).await.unwrap();
    let base = base_url(&worker);
    let http = reqwest::Client::new();
    for path in ["/", "/metrics"] {
        let url = format!("{base}{path}");
        assert_eq!(error_of(http.get(&url).send().await.unwrap()).await, (401, "unauthorized".into()), "{path}");
        let wrong = http.get(&url).bearer_auth("view-tokeN").send().await.unwrap();
        assert_eq!(error_of(wrong).await, (401, "unauthorized".into()), "{path}");
        let right = http.get(&url).bearer_auth("view-token").send().await.unwrap();
        assert_eq!(right.status(), 200, "{path}");
        assert!(!right.text().await.unwrap().is_empty(), "{path} has a body");
    }
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    wait_until("readiness", std::time::Duration::from_secs(30), || async {
        http.get(format!("{base}/readyz")).send().await.unwrap().status() == 200
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_without_a_token_is_refused_at_start() {
    let vhost = Vhost::new("loopback");
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(&vhost, dir.path(), &["--http-addr", "0.0.0.0:0"]);
    assert!(settings.admin_token.is_none());
    let error = Worker::start(settings, Arc::new(SystemClock)).await.err().expect("refused");
    assert!(error.to_string().contains("KEYSEAL_ADMIN_TOKEN"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_json_errors_and_the_worker_keeps_serving() {
    let vhost = Vhost::new("malformed");
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let base = base_url(&worker);
    let http = reqwest::Client::new();
    let put_to = |tenant: &str, body: Vec<u8>| {
        http.put(format!("{base}/v1/tenants/{tenant}/encryption"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let put = |body: Vec<u8>| put_to("acme", body);
    let cases: Vec<(reqwest::Response, u16, &str)> = vec![
        (http.get(format!("{base}/v1/tenants/Bad_Tenant")).send().await.unwrap(), 400, "invalid_tenant_id"),
        (
            http.get(format!("{base}/v1/tenants/acme/records/{}", "r".repeat(129))).send().await.unwrap(),
            400,
            "invalid_record_id",
        ),
        (put(b"{not json".to_vec()).await.unwrap(), 400, "invalid_json"),
        (put(b"{\"keyUri\": 7}".to_vec()).await.unwrap(), 422, "invalid_json"),
        (put(vec![b' '; 200 << 10]).await.unwrap(), 413, "body_too_large"),
        (http.get(format!("{base}/v1/nothing-here")).send().await.unwrap(), 404, "not_found"),
        // Segments that are not UTF-8 once percent-decoded, on every route with a path parameter.
        (http.get(format!("{base}/v1/tenants/%FF/records/x")).send().await.unwrap(), 400, "invalid_path"),
        (http.get(format!("{base}/v1/tenants/acme/records/%C3%28")).send().await.unwrap(), 400, "invalid_path"),
        (http.get(format!("{base}/v1/tenants/%FE")).send().await.unwrap(), 400, "invalid_path"),
        (http.delete(format!("{base}/v1/tenants/%FF/encryption")).send().await.unwrap(), 400, "invalid_path"),
        (put_to("%80", b"{}".to_vec()).await.unwrap(), 400, "invalid_path"),
        (http.post(format!("{base}/v1/tenants/acme")).send().await.unwrap(), 405, "method_not_allowed"),
        // `?shard=` must name a shard of the deployment (this one has one).
        (http.post(format!("{base}/v1/sweeps?shard=1")).send().await.unwrap(), 400, "invalid_query"),
        (http.post(format!("{base}/v1/admin/replay?shard=7")).send().await.unwrap(), 400, "invalid_query"),
        (http.get(format!("{base}/v1/shards?shard=1")).send().await.unwrap(), 400, "invalid_query"),
        (http.get(format!("{base}/v1/shards?shard=x")).send().await.unwrap(), 400, "invalid_query"),
    ];
    for (response, status, code) in cases {
        assert_eq!(error_of(response).await, (status, code.to_owned()));
    }
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    publish_confirmed(&vhost, &synthetic("acme", "r-", 3, 10, 1)).await;
    wait_for_records(&base, "acme", 3, std::time::Duration::from_secs(30)).await;
    worker.stop().await;
}

/// `keyseal get` reaches the record whatever its id, including `.` and
/// `..`, which a URL client would otherwise resolve as dot segments into
/// another path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_records_whose_ids_are_dot_segments() {
    let vhost = Vhost::new("dot-ids");
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let base = base_url(&worker);
    let ids = ["..", ".", "...", "a/b", "../x", "./", "%2E%2E", "?x#y"];
    let records: Vec<IngestRecord> = ids
        .iter()
        .map(|id| IngestRecord {
            tenant_id: "acme".into(),
            record_id: (*id).into(),
            observed_at_unix_ms: 1,
            payload: format!("payload of {id}").into_bytes(),
            attributes: Default::default(),
        })
        .collect();
    // The worker binds its queues once it consumes: publish after that.
    wait_until("readiness", std::time::Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    publish_confirmed(&vhost, &records).await;
    wait_for_records(&base, "acme", ids.len() as u64, std::time::Duration::from_secs(30)).await;

    let get = |id: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyseal"))
            .args(["get", "acme", id, "--server", &base])
            .env_remove("KEYSEAL_ADMIN_TOKEN")
            .output()
            .expect("keyseal get runs")
    };
    for record in &records {
        let got = get(&record.record_id);
        assert!(got.status.success(), "{:?}: {}", record.record_id, String::from_utf8_lossy(&got.stderr));
        assert_eq!(got.stdout, record.payload, "{:?}", record.record_id);
    }
    let missing = get("..x");
    assert!(!missing.status.success(), "no such record");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("record_not_found"), "{stderr}");
    worker.stop().await;
}
