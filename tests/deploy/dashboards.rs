//! What the operator sees: the Grafana dashboard (its queries name only
//! metrics a running worker exports, every per-shard panel follows the shard
//! variable, it uses the provisioned datasource) and Prometheus, which
//! scrapes every worker of the compose stack with the admin token.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyseal::broker::publish::synthetic;
use keyseal::clock::{Clock, ManualClock};
use keyseal::proto::v1::IngestRecord;
use keyvault_emulator::RecoveryLevel;
use serde_json::{Value as Json, json};

use crate::common::vault::{Vault, args};
use crate::common::*;
use crate::files::{compose, environment, mounts, port_of, read, service, str_list, worker_services, yaml};

/// The Grafana dashboard, parsed: every dashboard test starts from it.
fn dashboard() -> Json {
    serde_json::from_str(&read("dashboards/keyseal.json")).expect("dashboards/keyseal.json is valid JSON")
}

/// Every string in the dashboard that Grafana sends to Prometheus: panel
/// target expressions (rows' nested panels included) and variable queries,
/// the text whose metric names and selectors are checked.
fn dashboard_queries(dashboard: &Json) -> Vec<String> {
    /// Panels and, recursively, the panels of rows, since a collapsed row
    /// nests its panels.
    fn panels(list: &Json, out: &mut Vec<Json>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel.clone());
            panels(&panel["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    let mut queries: Vec<String> = all
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        for query in [&variable["query"], &variable["query"]["query"], &variable["definition"]] {
            if let Some(q) = query.as_str() {
                queries.push(q.to_owned());
            }
        }
    }
    queries
}

/// `keyseal_*` metric names in a PromQL expression (outside string
/// literals), with the histogram suffixes removed, so they compare with
/// the names a worker exports.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            while let Some((_, inner)) = chars.next() {
                if inner == '\\' {
                    chars.next();
                } else if inner == c {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = at + c.len_utf8();
            while let Some(&(i, next)) = chars.peek() {
                if next.is_ascii_alphanumeric() || next == '_' || next == ':' {
                    end = i + next.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[at..end];
            if word.starts_with("keyseal_") {
                let base =
                    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| word.strip_suffix(suffix)).unwrap_or(word);
                names.insert(base.to_owned());
            }
        }
    }
    names
}

/// Every keyseal metric the dashboard queries: what a running worker must
/// export and what the dashboard must cover.
fn dashboard_metrics() -> BTreeSet<String> {
    dashboard_queries(&dashboard()).iter().flat_map(|q| metric_names(q)).collect()
}

/// The selectors of metric `name` (histogram suffixes included) in PromQL
/// `expr` that do not filter by `shard=~"$shard"`: such a panel would ignore
/// the dashboard's shard variable.
fn selectors_without_shard(expr: &str, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in expr.match_indices(name) {
        let rest = &expr[at + name.len()..];
        let rest = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| rest.strip_prefix(suffix)).unwrap_or(rest);
        let before = expr[..at].chars().next_back();
        let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        if before.is_some_and(is_word) || rest.starts_with(is_word) {
            continue; // part of another metric's name
        }
        let labels = rest.strip_prefix('{').and_then(|r| r.split_once('}')).map(|(labels, _)| labels);
        if !labels.is_some_and(|labels| labels.contains("shard=~\"$shard\"")) {
            found.push(format!("{name} in {expr}"));
        }
    }
    found
}

#[test]
fn a_selector_without_the_shard_filter_is_found() {
    let name = "keyseal_records_sealed_total";
    assert!(
        selectors_without_shard(r#"sum(rate(keyseal_records_sealed_total{shard=~"$shard"}[1m]))"#, name).is_empty()
    );
    assert_eq!(selectors_without_shard(r#"rate(keyseal_records_sealed_total{instance="a"}[1m])"#, name).len(), 1);
    assert_eq!(selectors_without_shard("rate(keyseal_records_sealed_total[1m])", name).len(), 1);
    assert!(selectors_without_shard("keyseal_tenants_erased_total", "keyseal_tenants").is_empty());
    let histogram = r#"rate(keyseal_batch_commit_seconds_bucket{instance="a"}[1m])"#;
    assert_eq!(selectors_without_shard(histogram, "keyseal_batch_commit_seconds").len(), 1);
}

/// Names of the metrics in Prometheus text (`# TYPE name type` lines): what
/// a running worker's `/metrics` exports.
fn exported_metrics(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(keyseal_vault_request_seconds_bucket{op="keyseal_not_a_metric"}[5m]))) / keyseal_records"#,
    );
    let expected: BTreeSet<String> =
        ["keyseal_vault_request_seconds", "keyseal_records"].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(names, expected);
}

#[test]
fn dashboard_covers_the_worker_and_uses_the_provisioned_datasource() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "keyseal");
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    let provisioned = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let datasource = provisioned["datasources"]
        .as_sequence()
        .and_then(|list| list.iter().find(|d| d["type"].as_str() == Some("prometheus")))
        .expect("a provisioned Prometheus datasource");
    let uid = datasource["uid"].as_str().expect("the datasource has a fixed uid");
    assert_eq!(datasource["url"].as_str(), Some("http://prometheus:9090"), "the compose service");

    let panels: Vec<&Json> = dashboard["panels"].as_array().expect("panels").iter().collect();
    let mut ids = BTreeSet::new();
    let mut graphs = 0;
    for panel in &panels {
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "panel ids are unique");
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{} has a position", panel["title"]);
        if panel["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(panel["datasource"]["uid"], uid, "{} uses the provisioned datasource", panel["title"]);
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has queries", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"]["uid"], uid, "{}", panel["title"]);
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!metric_names(expr).is_empty(), "{}: {expr} queries a keyseal metric", panel["title"]);
            if expr.contains("histogram_quantile") {
                assert!(expr.contains("_bucket") && expr.contains("le"), "{expr}");
            }
        }
    }
    assert!(graphs >= 10, "{graphs} graph panels");

    let used = dashboard_metrics();
    for metric in [
        "keyseal_records_ingested_total",
        "keyseal_dead_letters_total",
        "keyseal_batch_commit_seconds",
        "keyseal_records",
        "keyseal_seal_lag_seconds",
        "keyseal_records_sealed_total",
        "keyseal_outbox_lag_events",
        "keyseal_vault_request_seconds",
        "keyseal_vault_requests_total",
        "keyseal_data_key_cache_total",
        "keyseal_tenants",
        "keyseal_key_healthy",
    ] {
        assert!(used.contains(metric), "the dashboard shows {metric}");
    }

    // Grafana loads the dashboard from where compose mounts ./dashboards.
    let provider = yaml("deploy/grafana/provisioning/dashboards/keyseal.yml");
    let path = provider["providers"][0]["options"]["path"].as_str().expect("provider path").to_owned();
    let grafana = mounts(service(&compose(), "grafana"));
    assert!(
        grafana.iter().any(|(source, target, _)| source.trim_end_matches('/') == "./dashboards" && *target == path),
        "compose mounts ./dashboards at {path}: {grafana:?}"
    );
    assert!(
        grafana.iter().any(|(source, target, _)| source.trim_end_matches('/') == "./deploy/grafana/provisioning"
            && target == "/etc/grafana/provisioning"),
        "compose mounts the provisioning dir: {grafana:?}"
    );
    let env = environment(service(&compose(), "grafana"));
    assert_eq!(env.get("GF_AUTH_ANONYMOUS_ENABLED").map(String::as_str), Some("true"));
    assert_eq!(env.get("GF_AUTH_ANONYMOUS_ORG_ROLE").map(String::as_str), Some("Viewer"));
}

/// The dashboard queries only metrics a real worker exports: one runs with
/// a customer key in the emulator, ingests, dead-letters, seals and relays,
/// and its `/metrics` must then name every metric the dashboard uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_only_metrics_a_running_worker_exports() {
    let wanted = dashboard_metrics();
    assert!(wanted.len() >= 10, "the dashboard queries {wanted:?}");

    let state = tempfile::tempdir().unwrap();
    let vault = Vault::start(args(state.path(), RecoveryLevel::Recoverable)).await;
    let vhost = Vhost::new("deploy-metrics");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let flags = vault.worker_flags();
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Probes soon, so the key's expiry gauge is set.
    flags.extend(["--probe-interval", "200ms"]);
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &flags).await;
    let base = base_url(&worker);
    let http = reqwest::Client::new();

    // A customer key that expires, so the vault is called (get_key,
    // wrapkey, unwrapkey) and the expiry is watched.
    let exp = clock.now_ms() / 1000 + 90 * 86_400;
    let key = json!({"kty": "RSA", "key_size": 2048, "key_ops": ["wrapKey", "unwrapKey"], "attributes": {"exp": exp}});
    vault.create("deploy-key", key).await;
    let response = http
        .put(format!("{base}/v1/tenants/acme/encryption"))
        .json(&json!({"keyUri": vault.key_uri("deploy-key")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    // Records to store, and one the worker must dead-letter (empty id).
    let mut records = synthetic("acme", "d-", 20, 256, 1);
    records.push(IngestRecord {
        tenant_id: "acme".into(),
        record_id: String::new(),
        observed_at_unix_ms: 1,
        payload: b"no id".to_vec(),
        attributes: Default::default(),
    });
    publish_confirmed(&vhost, &records).await;
    wait_for_records(&base, "acme", 20, Duration::from_secs(60)).await;

    // Past --seal-after, a sweep seals under the customer key.
    clock.advance(Duration::from_secs(49 * 3600));
    let sweep: Json = http.post(format!("{base}/v1/sweeps")).send().await.unwrap().json().await.unwrap();
    assert_eq!(sweep["seal"]["sealed"], 20, "{sweep}");
    let scrub: Json = http.post(format!("{base}/v1/sweeps?kind=scrub")).send().await.unwrap().json().await.unwrap();
    assert_eq!(scrub["scrub"]["verified"], 20, "{scrub}");
    let deleted = http.delete(format!("{base}/v1/tenants/acme/records/d-0")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);

    let deadline = Instant::now() + Duration::from_secs(30);
    let (exported, missing) = loop {
        let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let exported = exported_metrics(&text);
        let missing: BTreeSet<String> = wanted.difference(&exported).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (exported, missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(exported.len() >= 10, "the worker exports its metrics: {exported:?}");
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the worker does not export: {missing:?} (it exports {exported:?})"
    );
    // Every panel that reads a per-shard series filters it by the shard
    // variable, so choosing a shard narrows the whole dashboard.
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let per_shard: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("shard=\""))
        .flat_map(|l| metric_names(l.split(['{', ' ']).next().unwrap_or_default()))
        .collect();
    assert!(per_shard.len() >= 8, "the worker's per-shard series: {per_shard:?}");
    let unfiltered: Vec<String> = dashboard_queries(&dashboard())
        .iter()
        .filter(|q| !q.starts_with("label_values("))
        .flat_map(|q| per_shard.iter().flat_map(move |name| selectors_without_shard(q, name)))
        .collect();
    assert!(unfiltered.is_empty(), "per-shard selectors without shard=~\"$shard\": {unfiltered:#?}");
    worker.stop().await;
    vault.emulator.shutdown().await;
}

#[test]
fn prometheus_scrapes_the_worker() {
    let prometheus = yaml("deploy/prometheus.yml");
    let jobs = prometheus["scrape_configs"].as_sequence().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|job| {
            job["static_configs"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|c| str_list(&c["targets"]).iter().any(|t| t == "keyseal-1:8080"))
        })
        .expect("a job scrapes keyseal-1:8080");
    assert!(matches!(job["metrics_path"].as_str(), None | Some("/metrics")), "{job:?}");
    assert!(matches!(job["scheme"].as_str(), None | Some("http")), "{job:?}");
    // With KEYSEAL_ADMIN_TOKEN set, /metrics needs it: Prometheus sends it
    // from a file, never inline in the config.
    assert_eq!(job["authorization"]["type"].as_str(), Some("Bearer"), "{job:?}");
    assert!(job["authorization"].get("credentials").is_none() && job.get("bearer_token").is_none(), "{job:?}");
    let credentials_file = job["authorization"]["credentials_file"].as_str().expect("authorization.credentials_file");

    // The dashboard's worker variable selects this job.
    let job_name = job["job_name"].as_str().expect("job_name");
    let selector = format!("job=\"{job_name}\"");
    assert!(dashboard_queries(&dashboard()).iter().any(|q| q.contains(&selector)), "the dashboard selects {selector}");

    // compose: `keyseal-1` is the service, Prometheus reads this file.
    let compose = compose();
    assert_eq!(port_of(&environment(service(&compose, "keyseal-1"))["KEYSEAL_HTTP_ADDR"]), 8080);
    // The same job scrapes every worker of the stack.
    let targets: BTreeSet<String> =
        job["static_configs"].as_sequence().into_iter().flatten().flat_map(|c| str_list(&c["targets"])).collect();
    for (name, svc) in worker_services(&compose) {
        let target = format!("{name}:{}", port_of(&environment(svc)["KEYSEAL_HTTP_ADDR"]));
        assert!(
            targets.contains(&target),
            "job {} scrapes {target}: {targets:?}",
            job["job_name"].as_str().unwrap_or("?")
        );
    }
    let mounted = mounts(service(&compose, "prometheus"));
    assert!(
        mounted.iter().any(
            |(source, target, _)| source == "./deploy/prometheus.yml" && target == "/etc/prometheus/prometheus.yml"
        ),
        "compose mounts deploy/prometheus.yml: {mounted:?}"
    );
    // compose writes that file from the worker's own token (same default)
    // before Prometheus starts, into memory only.
    let prometheus = service(&compose, "prometheus");
    assert_eq!(
        environment(prometheus).get("KEYSEAL_ADMIN_TOKEN"),
        environment(service(&compose, "keyseal-1")).get("KEYSEAL_ADMIN_TOKEN"),
        "Prometheus gets the worker's token"
    );
    let entrypoint = str_list(&prometheus["entrypoint"]).join(" ");
    assert!(
        entrypoint.contains(&format!("\"$$KEYSEAL_ADMIN_TOKEN\" > {credentials_file}"))
            && entrypoint.contains("exec /bin/prometheus")
            && entrypoint.contains("--config.file=/etc/prometheus/prometheus.yml"),
        "the entrypoint writes {credentials_file} and starts Prometheus: {entrypoint}"
    );
    let credentials_dir = Path::new(credentials_file).parent().unwrap().to_str().unwrap();
    assert!(str_list(&prometheus["tmpfs"]).iter().any(|t| t == credentials_dir), "{credentials_dir} is a tmpfs");
}
