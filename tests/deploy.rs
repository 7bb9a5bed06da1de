//! The deployment files checked against the code they deploy: the compose
//! stack (`docker-compose.yml`), the image (`Dockerfile`), Prometheus
//! (`deploy/prometheus.yml`), Grafana's provisioning, the dashboard
//! (`dashboards/keyseal.json`) and the Kubernetes manifests
//! (`deploy/k8s/*.yaml`). Docker and a cluster are not needed: the files are
//! parsed, the manifests validated against the Kubernetes schemas (the PyPI
//! tool kubernetes-validate), and what they claim about keyseal (settings,
//! flags, metric names) is checked against the real `keyseal` binary and a
//! running worker.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::vault::{Vault, args};
use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::clock::{Clock, ManualClock};
use keyseal::proto::v1::IngestRecord;
use keyvault_emulator::RecoveryLevel;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use serde_yaml_ng::Value as Yaml;

// ---------------------------------------------------------------------------
// Reading the files
// ---------------------------------------------------------------------------

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

fn yaml(relative: &str) -> Yaml {
    serde_yaml_ng::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

/// Every document of a multi-document YAML file (`---` separated), empty
/// ones left out.
fn yaml_documents(relative: &str) -> Vec<Yaml> {
    let text = read(relative);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Yaml::deserialize(document).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}")))
        .filter(|document| !document.is_null())
        .collect()
}

/// docker-compose.yml with its merge keys (`<<: *keyseal-worker`) applied,
/// as compose applies them.
fn compose() -> Yaml {
    let mut compose = yaml("docker-compose.yml");
    compose.apply_merge().unwrap_or_else(|e| panic!("docker-compose.yml: a merge key (`<<:`) does not apply: {e}"));
    compose
}

fn dashboard() -> Json {
    serde_json::from_str(&read("dashboards/keyseal.json")).expect("dashboards/keyseal.json is valid JSON")
}

/// The six services the stack is made of.
const SERVICES: [&str; 6] = ["rabbitmq", "keyvault-emulator", "worker", "worker-2", "prometheus", "grafana"];

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    compose["services"].get(name).unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

/// The services that run a worker (`command: ["run", ...]`), by name.
fn worker_services(compose: &Yaml) -> Vec<(String, &Yaml)> {
    compose["services"]
        .as_mapping()
        .expect("docker-compose.yml has services")
        .iter()
        .filter(|(_, svc)| str_list(&svc["command"]).first().map(String::as_str) == Some("run"))
        .map(|(name, svc)| (scalar(name), svc))
        .collect()
}

fn str_list(value: &Yaml) -> Vec<String> {
    value.as_sequence().map(|items| items.iter().map(scalar).collect()).unwrap_or_default()
}

/// A YAML scalar as text (ports and numbers may be written unquoted).
fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A service's `environment`, in either of compose's forms (map or `K=V` list).
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Null => BTreeMap::new(),
        Yaml::Mapping(map) => {
            map.iter().map(|(k, v)| (scalar(k), if v.is_null() { String::new() } else { scalar(v) })).collect()
        }
        Yaml::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("environment must be a map or a list, got {other:?}"),
    }
}

/// Host ports a service publishes (short `[ip:]host:container[/proto]` or
/// long `{published, target}` syntax).
fn published_ports(service: &Yaml) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for entry in service["ports"].as_sequence().into_iter().flatten() {
        let published = match entry {
            Yaml::Mapping(_) => entry.get("published").map(scalar),
            _ => {
                let text = scalar(entry);
                let text = text.split('/').next().unwrap().to_owned();
                let parts: Vec<&str> = text.rsplit(':').collect();
                parts.get(1).map(|host| (*host).to_owned())
            }
        };
        if let Some(port) = published {
            ports.insert(port.parse().unwrap_or_else(|_| panic!("published port {port:?} is not a number")));
        }
    }
    ports
}

/// `(source, target, read_only)` of a service's volume mounts (short syntax).
fn mounts(service: &Yaml) -> Vec<(String, String, bool)> {
    str_list(&service["volumes"])
        .into_iter()
        .map(|spec| {
            let parts: Vec<&str> = spec.split(':').collect();
            assert!(parts.len() >= 2, "volume {spec:?} needs source:target");
            let read_only = parts.get(2).is_some_and(|opts| opts.split(',').any(|o| o == "ro"));
            (parts[0].to_owned(), parts[1].to_owned(), read_only)
        })
        .collect()
}

/// The value after `flag` in a command list.
fn flag_value<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command.iter().position(|a| a == flag).and_then(|i| command.get(i + 1)).map(String::as_str)
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr:?}"))
}

// ---------------------------------------------------------------------------
// Asking the binary
// ---------------------------------------------------------------------------

/// `keyseal <args> --help` with an empty environment, so no `KEYSEAL_*` of
/// the test run leaks into the text.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keyseal"))
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .expect("running keyseal --help");
    assert!(out.status.success(), "keyseal {args:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Environment variables clap names in help: `[env: NAME=value]`, or
/// `[env: NAME]` for settings whose values are hidden (tokens).
fn env_names(help: &str) -> BTreeSet<String> {
    help.match_indices("[env: ")
        .map(|(at, marker)| {
            help[at + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// Settings read from the environment only, never from a flag (config.rs,
/// `#[arg(skip = std::env::var(..))]`), so help never names them: the admin
/// API's bearer token and the token `--vault-credential static-token` sends.
const ENV_ONLY: [&str; 2] = ["KEYSEAL_ADMIN_TOKEN", "KEYSEAL_VAULT_TOKEN"];

/// `KEYSEAL_*` names in a text: `$KEYSEAL_X`, `${KEYSEAL_X:-...}` and bare
/// names alike (not `MY_KEYSEAL_X`, not the bare prefix `KEYSEAL_`).
fn keyseal_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "KEYSEAL_";
    text.match_indices(PREFIX)
        .filter(|(at, _)| !text[..*at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > PREFIX.len())
        .collect()
}

/// Every string in a YAML value, mapping keys included (comments are not
/// part of the value).
fn yaml_strings(value: &Yaml) -> Vec<String> {
    match value {
        Yaml::String(s) => vec![s.clone()],
        Yaml::Sequence(items) => items.iter().flat_map(yaml_strings).collect(),
        Yaml::Mapping(map) => {
            map.iter().flat_map(|(k, v)| yaml_strings(k).into_iter().chain(yaml_strings(v))).collect()
        }
        Yaml::Tagged(tagged) => yaml_strings(&tagged.value),
        _ => Vec::new(),
    }
}

/// Long flags an option list in help defines (`--name <VALUE>` headers).
fn long_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|line| {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            let flag = trimmed.strip_prefix("-h, ").unwrap_or(trimmed);
            (indent <= 6 && flag.starts_with("--")).then(|| flag.split([' ', '=', ',']).next().unwrap().to_owned())
        })
        .collect()
}

/// The help block (header line to the next header) that mentions `[env: name`.
fn help_block<'a>(help: &'a str, name: &str) -> Option<&'a str> {
    let at = help.find(&format!("[env: {name}"))?;
    let start = help[..at].rfind("\n      --").map_or(0, |i| i + 1);
    let end = help[at..].find("\n      --").map_or(help.len(), |i| at + i);
    Some(&help[start..end])
}

// ---------------------------------------------------------------------------
// (1) docker-compose.yml
// ---------------------------------------------------------------------------

#[test]
fn compose_has_the_six_services_with_ports_healthchecks_and_restart_policies() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("docker-compose.yml has services");
    let names: BTreeSet<String> = services.keys().map(scalar).collect();
    let expected: BTreeSet<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(names, expected, "the stack's services");

    let expected_ports: [(&str, &[u16]); 6] = [
        ("rabbitmq", &[5672, 15672]),
        ("keyvault-emulator", &[8443]),
        ("worker", &[8080]),
        ("worker-2", &[8081]),
        ("prometheus", &[9090]),
        ("grafana", &[3000]),
    ];
    for (name, ports) in expected_ports {
        let published = published_ports(service(&compose, name));
        for port in ports {
            assert!(published.contains(port), "{name} publishes {port}; it publishes {published:?}");
        }
    }

    let declared_volumes: BTreeSet<String> =
        compose["volumes"].as_mapping().map(|m| m.keys().map(scalar).collect()).unwrap_or_default();
    for name in SERVICES {
        let svc = service(&compose, name);
        let test = str_list(&svc["healthcheck"]["test"]);
        assert!(
            test.len() >= 2 && matches!(test[0].as_str(), "CMD" | "CMD-SHELL"),
            "{name} has a healthcheck with a command: {test:?}"
        );
        assert_ne!(svc["healthcheck"]["disable"].as_bool(), Some(true), "{name}'s healthcheck is enabled");
        let restart = svc["restart"].as_str().unwrap_or_default();
        assert!(
            matches!(restart, "always" | "unless-stopped") || restart.starts_with("on-failure"),
            "{name} has a restart policy, not {restart:?}"
        );
        // Data lives in named volumes; bind mounts are only for config (read-only).
        for (source, target, read_only) in mounts(svc) {
            if source.starts_with('.') || source.starts_with('/') {
                assert!(read_only, "{name}: bind mount {source} -> {target} is read-only config");
            } else {
                assert!(declared_volumes.contains(&source), "{name}: volume {source} is declared under volumes:");
            }
        }
    }
    for (name, data_dir) in [
        ("rabbitmq", "/var/lib/rabbitmq"),
        ("keyvault-emulator", "/var/lib/keyvault-emulator"),
        ("worker", "/var/lib/keyseal"),
        ("worker-2", "/var/lib/keyseal"),
        ("prometheus", "/prometheus"),
        ("grafana", "/var/lib/grafana"),
    ] {
        assert!(
            mounts(service(&compose, name))
                .iter()
                .any(|(source, target, ro)| target == data_dir && declared_volumes.contains(source) && !ro),
            "{name} keeps {data_dir} in a writable named volume"
        );
    }

    // A worker's health check asks the worker itself.
    for (name, worker) in worker_services(&compose) {
        let worker_check = str_list(&worker["healthcheck"]["test"]).join(" ");
        assert!(worker_check.contains("/healthz") && worker_check.contains("8080"), "{name}: {worker_check}");
    }
    // guest/guest must work from the worker's container.
    let rabbit = environment(service(&compose, "rabbitmq"));
    assert!(
        rabbit.get("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS").is_some_and(|v| v.contains("loopback_users []")),
        "rabbitmq clears loopback_users: {rabbit:?}"
    );
    assert_eq!(service(&compose, "rabbitmq")["image"].as_str(), Some("rabbitmq:3.13-management"));
}

#[test]
fn compose_keyseal_variables_are_settings_the_binary_has() {
    let compose = compose();
    let run_help = help(&["run"]);
    let run_env = env_names(&run_help);
    let emulator_help = help(&["keyvault-emulator"]);
    let emulator_env = env_names(&emulator_help);
    assert!(run_env.contains("KEYSEAL_AMQP_URL") && run_env.len() >= 10, "run --help names its env: {run_env:?}");
    assert!(emulator_env.contains("KEYSEAL_EMULATOR_STATE_DIR"), "{emulator_env:?}");

    let workers = worker_services(&compose);
    assert!(!workers.is_empty(), "docker-compose.yml runs a worker");
    for (service_name, svc) in &workers {
        let worker = environment(svc);
        for required in [
            "KEYSEAL_AMQP_URL",
            "KEYSEAL_DATA_DIR",
            "KEYSEAL_HTTP_ADDR",
            "KEYSEAL_SHARDS",
            "KEYSEAL_ADMIN_TOKEN",
            "KEYSEAL_TRUSTED_VAULT_HOST",
            "KEYSEAL_VAULT_CA_CERT",
            "KEYSEAL_VAULT_CREDENTIAL",
            "KEYSEAL_LOG_FORMAT",
        ] {
            assert!(worker.contains_key(required), "{service_name} sets {required}");
        }
        for (name, value) in &worker {
            assert!(
                name.starts_with("KEYSEAL_"),
                "{service_name}'s environment holds keyseal settings only, not {name}"
            );
            // KEYSEAL_ADMIN_TOKEN is read from the environment only (see
            // ENV_ONLY), so it never shows in help;
            // `admin_token_is_read_from_the_environment` proves it is real.
            if ENV_ONLY.contains(&name.as_str()) {
                continue;
            }
            assert!(
                run_env.contains(name),
                "{service_name}: {name} is not a setting of `keyseal run` (it knows {run_env:?})"
            );
            // A value of an enumerated setting must be one clap accepts.
            let block = help_block(&run_help, name).expect("the setting's help");
            if block.contains("Possible values:") {
                assert!(
                    block.contains(&format!("- {value}:")),
                    "{service_name}: {name}={value} is not one of its values:\n{block}"
                );
            }
        }
        assert_eq!(worker["KEYSEAL_VAULT_CREDENTIAL"], "static-token", "{service_name}");
        assert_eq!(worker["KEYSEAL_LOG_FORMAT"], "json", "{service_name}");
        assert!(
            worker["KEYSEAL_ADMIN_TOKEN"].starts_with("${KEYSEAL_ADMIN_TOKEN"),
            "{service_name}: the token comes from the caller"
        );
    }

    let emulator = environment(service(&compose, "keyvault-emulator"));
    for name in emulator.keys().filter(|n| n.starts_with("KEYSEAL_")) {
        assert!(
            emulator_env.contains(name),
            "{name} is not a setting of `keyseal keyvault-emulator` ({emulator_env:?})"
        );
    }
}

/// The allowance above for KEYSEAL_ADMIN_TOKEN stays honest: the worker
/// refuses a non-loopback admin address and names that variable.
#[test]
fn admin_token_is_read_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyseal"))
        .args(["run", "--http-addr", "0.0.0.0:0", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_clear()
        .output()
        .expect("running keyseal run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a non-loopback admin API without a token must be refused");
    assert!(stderr.contains("KEYSEAL_ADMIN_TOKEN"), "the refusal names KEYSEAL_ADMIN_TOKEN: {stderr}");
}

#[test]
fn compose_commands_use_flags_the_binary_has() {
    let compose = compose();
    let mut checked = 0;
    for name in ["worker", "worker-2", "keyvault-emulator"] {
        let svc = service(&compose, name);
        assert!(svc.get("build").is_some(), "{name} is built from the Dockerfile");
        let command = str_list(&svc["command"]);
        let subcommand = command.first().unwrap_or_else(|| panic!("{name} has a command"));
        let flags = long_flags(&help(&[subcommand]));
        assert!(flags.contains("--help"), "{subcommand} --help lists flags: {flags:?}");
        for arg in command.iter().filter(|a| a.starts_with("--")) {
            let flag = arg.split('=').next().unwrap();
            assert!(flags.contains(flag), "{name}: `keyseal {subcommand}` has no {flag} (it has {flags:?})");
            checked += 1;
        }
    }
    assert_eq!(str_list(&service(&compose, "worker")["command"]), ["run"]);
    assert!(checked >= 2, "the emulator's command sets --addr and --state-dir");
}

/// Two workers of one deployment: the same shard count, broker and token,
/// and one data volume, so either can take over any shard of the other.
#[test]
fn compose_runs_two_workers_of_one_deployment() {
    let compose = compose();
    let workers = worker_services(&compose);
    let names: Vec<&str> = workers.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(workers.len(), 2, "two worker services (command `run`): {names:?}");
    assert!(names.contains(&"worker"), "one is `worker`, the name the docs and tests use: {names:?}");

    for setting in ["KEYSEAL_SHARDS", "KEYSEAL_AMQP_URL", "KEYSEAL_ADMIN_TOKEN"] {
        let values: BTreeSet<String> = workers
            .iter()
            .map(|(name, svc)| {
                environment(svc).get(setting).cloned().unwrap_or_else(|| panic!("{name} sets {setting}"))
            })
            .collect();
        assert_eq!(values.len(), 1, "every worker has the same {setting}: {values:?}");
    }
    let first = environment(workers[0].1);
    let shards = &first["KEYSEAL_SHARDS"];
    let shards: u32 = shards.parse().unwrap_or_else(|_| panic!("KEYSEAL_SHARDS={shards} is a number"));
    assert!(shards >= 2, "the two workers share more than one shard, not {shards}");

    // One named volume at every worker's data dir, writable.
    let declared: BTreeSet<String> =
        compose["volumes"].as_mapping().map(|m| m.keys().map(scalar).collect()).unwrap_or_default();
    let data_volumes: BTreeSet<String> = workers
        .iter()
        .map(|(name, svc)| {
            let data_dir = environment(svc).get("KEYSEAL_DATA_DIR").cloned().expect("KEYSEAL_DATA_DIR");
            let (volume, _, read_only) = mounts(svc)
                .into_iter()
                .find(|(_, target, _)| *target == data_dir)
                .unwrap_or_else(|| panic!("{name} mounts a volume at its data dir {data_dir}"));
            assert!(declared.contains(&volume) && !read_only, "{name}: {volume} is a writable named volume");
            volume
        })
        .collect();
    assert_eq!(data_volumes.len(), 1, "the workers share one data volume: {data_volumes:?}");

    // Each on its own host port (8080 and 8081).
    let mut published = BTreeSet::new();
    for (name, svc) in &workers {
        for port in published_ports(svc) {
            assert!(published.insert(port), "{name} publishes host port {port}, which another worker publishes too");
        }
    }
    assert!(
        published.is_superset(&BTreeSet::from([8080u16, 8081])),
        "the workers publish 8080 and 8081: {published:?}"
    );
}

#[test]
fn worker_reaches_the_emulator_by_a_name_its_certificate_covers() {
    let compose = compose();
    let worker = service(&compose, "worker");
    let env = environment(worker);
    let emulator = service(&compose, "keyvault-emulator");
    let command = str_list(&emulator["command"]);
    assert_eq!(command.first().map(String::as_str), Some("keyvault-emulator"));

    // KEYSEAL_TRUSTED_VAULT_HOST names the emulator service on its --addr port.
    let trusted = &env["KEYSEAL_TRUSTED_VAULT_HOST"];
    let (host, port) = trusted.rsplit_once(':').expect("host:port");
    assert_eq!(host, "keyvault-emulator", "the worker reaches the emulator by its service name");
    let addr = flag_value(&command, "--addr").expect("the emulator's --addr");
    assert!(addr.starts_with("0.0.0.0:") || addr.starts_with("[::]:"), "the emulator listens beyond loopback: {addr}");
    assert_eq!(port.parse::<u16>().unwrap(), port_of(addr), "trusted host port = emulator port");

    // The certificate names localhost, 127.0.0.1 and ::1, plus --tls-name;
    // the worker checks the certificate against `host`.
    let mut cert_names = vec!["localhost", "127.0.0.1", "::1"];
    cert_names.extend(
        command
            .iter()
            .enumerate()
            .filter(|(_, a)| *a == "--tls-name")
            .filter_map(|(i, _)| command.get(i + 1).map(String::as_str)),
    );
    assert!(cert_names.contains(&host), "the emulator's certificate must name {host}: {cert_names:?}");

    // KEYSEAL_VAULT_CA_CERT is the emulator's <state-dir>/cert.pem, seen
    // through the same named volume, mounted read-only into the worker.
    let state_dir = flag_value(&command, "--state-dir").expect("the emulator's --state-dir");
    let (state_volume, _, _) = mounts(emulator)
        .into_iter()
        .find(|(_, target, _)| target == state_dir)
        .unwrap_or_else(|| panic!("the emulator's {state_dir} is a volume"));
    let ca = Path::new(&env["KEYSEAL_VAULT_CA_CERT"]);
    assert_eq!(ca.file_name().and_then(|f| f.to_str()), Some("cert.pem"));
    let (_, _, read_only) = mounts(worker)
        .into_iter()
        .find(|(source, target, _)| *source == state_volume && ca.parent() == Some(Path::new(target)))
        .unwrap_or_else(|| panic!("the worker mounts volume {state_volume} where {} lies", ca.display()));
    assert!(read_only, "the worker mounts the emulator's state read-only");

    // The worker starts after the broker and the vault are healthy, and
    // reaches both by service name.
    for dependency in ["rabbitmq", "keyvault-emulator"] {
        assert_eq!(
            worker["depends_on"][dependency]["condition"].as_str(),
            Some("service_healthy"),
            "the worker waits for a healthy {dependency}"
        );
    }
    assert!(env["KEYSEAL_AMQP_URL"].contains("@rabbitmq:5672/"), "{}", env["KEYSEAL_AMQP_URL"]);
    assert_eq!(port_of(&env["KEYSEAL_HTTP_ADDR"]), 8080);
    assert!(!env["KEYSEAL_HTTP_ADDR"].starts_with("127."), "the worker's admin API is reachable from Prometheus");
}

// ---------------------------------------------------------------------------
// (2) Dockerfile
// ---------------------------------------------------------------------------

struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, instruction: &str) -> impl Iterator<Item = &str> {
        self.instructions.iter().filter(move |(i, _)| i == instruction).map(|(_, a)| a.as_str())
    }

    fn last(&self, instruction: &str) -> Option<&str> {
        self.all(instruction).last()
    }

    /// Packages `apt-get install` adds in this stage.
    fn apt_packages(&self) -> BTreeSet<String> {
        let mut packages = BTreeSet::new();
        for run in self.all("RUN") {
            for command in run.split("&&").flat_map(|c| c.split(';')) {
                let words: Vec<&str> = command.split_whitespace().collect();
                if let Some(at) = words.windows(2).position(|w| w == ["apt-get", "install"]) {
                    packages.extend(words[at + 2..].iter().filter(|w| !w.starts_with('-')).map(|w| (*w).to_owned()));
                }
            }
        }
        packages
    }
}

/// Instructions with line continuations joined and comments dropped.
fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Comment and blank lines are dropped, also inside a continued line.
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(current.trim().is_empty(), "the Dockerfile ends inside a continued line");
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical.into_iter().filter(|l| !l.trim().is_empty()) {
        let (instruction, arguments) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        let arguments = arguments.trim().to_owned();
        if instruction == "FROM" {
            let words: Vec<&str> = arguments.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                image: words.first().expect("FROM names an image").to_string(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instruction, arguments));
        } else {
            assert_eq!(instruction, "ARG", "only ARG may come before the first FROM");
        }
    }
    stages
}

fn exec_form(arguments: &str) -> Vec<String> {
    serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{arguments} is not exec (JSON) form: {e}"))
}

#[test]
fn dockerfile_is_multi_stage_builds_locked_and_runs_unprivileged() {
    let stages = dockerfile_stages(&read("Dockerfile"));
    assert!(stages.len() >= 2, "multi-stage: {} stage(s)", stages.len());

    let builder = stages.iter().find(|s| s.name.as_deref() == Some("builder")).expect("a stage named builder");
    assert_eq!(builder.image, "rust:1-bookworm");
    let build_packages = builder.apt_packages();
    for package in ["clang", "libclang-dev"] {
        assert!(build_packages.contains(package), "the builder installs {package}: {build_packages:?}");
    }
    let build = builder.all("RUN").find(|r| r.contains("cargo build")).expect("the builder runs cargo build");
    let words: Vec<&str> = build.split_whitespace().collect();
    for flag in ["--release", "--locked"] {
        assert!(words.contains(&flag), "cargo build {flag}: {build}");
    }
    assert!(words.windows(2).any(|w| w == ["--bin", "keyseal"]), "builds the keyseal binary: {build}");

    let runtime = stages.last().unwrap();
    assert_eq!(runtime.image, "debian:bookworm-slim", "the runtime stage");
    assert!(
        runtime.all("COPY").any(|c| c.contains("--from=builder") && c.contains("keyseal")),
        "the runtime copies keyseal from the builder"
    );
    let runtime_packages = runtime.apt_packages();
    assert!(runtime_packages.contains("ca-certificates"), "{runtime_packages:?}");

    // Non-root: the last USER is neither root nor uid 0, and is created here.
    let user = runtime.last("USER").expect("the runtime sets USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    for id in [uid, gid] {
        assert!(!matches!(id, "root" | "0"), "runs as non-root, not {user}");
    }
    let creates_user = runtime.all("RUN").any(|r| {
        r.contains("useradd")
            && r.split_whitespace().any(|w| w == "keyseal")
            && (uid == "keyseal" || r.contains(&format!("--uid {uid}")))
    });
    assert!(creates_user, "the runtime creates user keyseal with uid {uid}");
    // USER must come after the steps that need root.
    let user_at = runtime.instructions.iter().rposition(|(i, _)| i == "USER").unwrap();
    let last_run = runtime.instructions.iter().rposition(|(i, _)| i == "RUN").unwrap();
    assert!(last_run < user_at, "USER is set after the last RUN");

    assert_eq!(exec_form(runtime.last("ENTRYPOINT").expect("ENTRYPOINT")), ["keyseal"]);
    assert_eq!(exec_form(runtime.last("CMD").expect("CMD")), ["run"]);
    assert!(
        runtime.all("EXPOSE").flat_map(str::split_whitespace).any(|p| p.split('/').next() == Some("8080")),
        "EXPOSE 8080"
    );
    assert!(runtime.all("VOLUME").any(|v| v.contains("/var/lib/keyseal")), "VOLUME /var/lib/keyseal");

    // A health check must not call a tool the image lacks.
    let check = runtime.last("HEALTHCHECK").expect("a HEALTHCHECK");
    let command = check.split_once("CMD").expect("HEALTHCHECK ... CMD").1.trim();
    let command = if command.starts_with('[') { exec_form(command).join(" ") } else { command.to_owned() };
    assert!(command.contains("/healthz"), "{command}");
    for tool in ["curl", "wget"] {
        if command.split_whitespace().any(|w| w == tool) {
            assert!(runtime_packages.contains(tool), "the health check uses {tool}, which the image must install");
        }
    }
}

#[test]
fn dockerignore_keeps_build_output_and_state_out_of_the_context() {
    let ignore = read(".dockerignore");
    let patterns: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for needed in ["target", ".git", "keyseal-data"] {
        assert!(patterns.contains(needed), ".dockerignore lists {needed}: {patterns:?}");
    }
    // What the build needs must not be ignored.
    for kept in ["src", "proto", "Cargo.toml", "Cargo.lock", "build.rs", "benches", "keyvault-emulator", ".cargo"] {
        assert!(!patterns.contains(kept), ".dockerignore must keep {kept}");
    }
}

// ---------------------------------------------------------------------------
// (3) the dashboard
// ---------------------------------------------------------------------------

/// Every string in the dashboard that Grafana sends to Prometheus: panel
/// target expressions (rows' nested panels included) and variable queries.
fn dashboard_queries(dashboard: &Json) -> Vec<String> {
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
/// literals), with the histogram suffixes removed.
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

fn dashboard_metrics() -> BTreeSet<String> {
    dashboard_queries(&dashboard()).iter().flat_map(|q| metric_names(q)).collect()
}

/// The selectors of metric `name` (histogram suffixes included) in PromQL
/// `expr` that do not filter by `shard=~"$shard"`.
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

/// Names of the metrics in Prometheus text (`# TYPE name type` lines).
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

// ---------------------------------------------------------------------------
// (4) Prometheus
// ---------------------------------------------------------------------------

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
                .any(|c| str_list(&c["targets"]).iter().any(|t| t == "worker:8080"))
        })
        .expect("a job scrapes worker:8080");
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

    // compose: `worker` is the service, Prometheus reads this file.
    let compose = compose();
    assert_eq!(port_of(&environment(service(&compose, "worker"))["KEYSEAL_HTTP_ADDR"]), 8080);
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
        environment(service(&compose, "worker")).get("KEYSEAL_ADMIN_TOKEN"),
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

// ---------------------------------------------------------------------------
// (5) Kubernetes (deploy/k8s/)
// ---------------------------------------------------------------------------

/// The Kubernetes release the manifests are validated against: a recent
/// one, not the newest, so they also suit clusters a few releases behind.
const KUBERNETES_VERSION: &str = "1.35.0";

/// The validator, as .ci/run installs it (it ships the schemas of
/// Kubernetes 1.25 to 1.37).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// The manifests, `deploy/k8s/*.yaml`, repository-relative and sorted.
fn k8s_manifests() -> Vec<String> {
    let dir = repo_path("deploy/k8s");
    let mut paths: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("listing deploy/k8s").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .map(|name| format!("deploy/k8s/{name}"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "deploy/k8s holds manifests");
    paths
}

/// Every object of every manifest.
fn k8s_objects() -> Vec<Yaml> {
    k8s_manifests().iter().flat_map(|path| yaml_documents(path.as_str())).collect()
}

fn k8s_object<'a>(objects: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("deploy/k8s has no {kind} {name}"))
}

/// The one StatefulSet: the workers.
fn k8s_statefulset(objects: &[Yaml]) -> &Yaml {
    let mut found = objects.iter().filter(|o| o["kind"].as_str() == Some("StatefulSet"));
    let statefulset = found.next().expect("deploy/k8s has a StatefulSet");
    assert!(found.next().is_none(), "deploy/k8s has one StatefulSet");
    statefulset
}

/// The `keyseal` container of a pod spec (its only container).
fn k8s_keyseal_container(pod: &Yaml) -> &Yaml {
    let containers = pod["containers"].as_sequence().expect("the pod has containers");
    assert_eq!(containers.len(), 1, "the pod runs keyseal alone");
    &containers[0]
}

/// A container's `env` entries by name.
fn k8s_env(container: &Yaml) -> BTreeMap<String, &Yaml> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|entry| (entry["name"].as_str().expect("an env entry has a name").to_owned(), entry))
        .collect()
}

/// The plain `value` of env entry `name`.
fn k8s_env_value(env: &BTreeMap<String, &Yaml>, name: &str) -> String {
    env.get(name)
        .and_then(|entry| entry["value"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("the container sets {name} to a value"))
}

/// `(volume, mountPath)` of a container's volume mounts.
fn k8s_mounts(container: &Yaml) -> Vec<(String, String)> {
    container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|mount| (scalar(&mount["name"]), scalar(&mount["mountPath"])))
        .collect()
}

/// The script of a container that runs `bash -c SCRIPT`.
fn k8s_script(container: &Yaml) -> String {
    let name = container["name"].as_str().unwrap_or("?");
    assert_eq!(str_list(&container["command"]), ["bash", "-c"], "{name} runs a bash script");
    let mut args = str_list(&container["args"]);
    assert_eq!(args.len(), 1, "{name}: the script is its one argument");
    args.remove(0)
}

fn bash(script: &str, env: &BTreeMap<String, String>) -> std::process::Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("running bash")
}

/// Every manifest passes `kubernetes-validate --strict` (unknown fields are
/// errors, so a misspelt or misplaced field fails too) for
/// [`KUBERNETES_VERSION`], and every object was checked against a schema.
#[test]
fn k8s_manifests_match_the_kubernetes_schemas() {
    let install = format!("pip install {KUBERNETES_VALIDATE}");
    match Command::new("python3").args(["-m", "kubernetes_validate", "--version"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            panic!("kubernetes-validate is not installed ({}): {install}", String::from_utf8_lossy(&out.stderr).trim())
        }
        Err(e) => panic!("cannot run python3 ({e}); the test needs it with kubernetes-validate: {install}"),
    }
    let paths = k8s_manifests();
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&paths)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running kubernetes-validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!(
        "python3 -m kubernetes_validate --strict --kubernetes-version {KUBERNETES_VERSION} {}\n{stdout}{}",
        paths.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the manifests do not validate:\n{report}");
    // A kind or apiVersion without a schema is only a WARN, exit status 0.
    let other: Vec<&str> = stdout.lines().filter(|line| !line.starts_with("INFO ")).collect();
    assert!(other.is_empty(), "kubernetes-validate did not pass everything: {other:?}\n{report}");
    for path in &paths {
        let objects = yaml_documents(path).len();
        let prefix = format!("INFO {path} passed for resource ");
        let passed = stdout.lines().filter(|line| line.starts_with(&prefix)).count();
        assert_eq!(passed, objects, "every object of {path} was validated\n{report}");
    }
}

/// Every `KEYSEAL_*` name the manifests and compose use (values, commands,
/// keys; not comments) is a setting of `keyseal run`, or one read only
/// from the environment, or, in compose, one of the emulator's.
#[test]
fn deployment_files_name_only_settings_keyseal_has() {
    let run_env = env_names(&help(&["run"]));
    let emulator_env = env_names(&help(&["keyvault-emulator"]));
    assert!(run_env.contains("KEYSEAL_SHARDS") && run_env.contains("KEYSEAL_OWN_SHARDS"), "{run_env:?}");
    // The environment-only ones are real: config.rs reads them.
    let config = read("src/config.rs");
    for name in ENV_ONLY {
        assert!(config.contains(&format!("_from_env(\"{name}\")")), "src/config.rs reads {name}");
    }
    let known = |name: &str| run_env.contains(name) || ENV_ONLY.contains(&name);

    let mut used = BTreeSet::new();
    for path in k8s_manifests() {
        for object in yaml_documents(&path) {
            for name in yaml_strings(&object).iter().flat_map(|s| keyseal_names(s.as_str())) {
                assert!(
                    known(name.as_str()),
                    "{path}: {name} is not a setting of `keyseal run` (it knows {run_env:?})"
                );
                used.insert(name);
            }
        }
    }
    for needed in ["KEYSEAL_SHARDS", "KEYSEAL_DATA_DIR", "KEYSEAL_HTTP_ADDR", "KEYSEAL_ADMIN_TOKEN"] {
        assert!(used.contains(needed), "the manifests set {needed}: {used:?}");
    }

    for name in yaml_strings(&compose()).iter().flat_map(|s| keyseal_names(s.as_str())) {
        assert!(
            known(name.as_str()) || emulator_env.contains(&name),
            "docker-compose.yml: {name} is not a setting of `keyseal run` ({run_env:?}) or `keyseal keyvault-emulator` ({emulator_env:?})"
        );
    }
}

#[test]
fn keyseal_names_are_read_from_text() {
    let names = keyseal_names(
        "exec 3<>x; ${KEYSEAL_ADMIN_TOKEN:-change-me} \"$$KEYSEAL_SHARDS\" MY_KEYSEAL_NOT KEYSEAL_* KEYSEAL_V2_X",
    );
    let expected: BTreeSet<String> =
        ["KEYSEAL_ADMIN_TOKEN", "KEYSEAL_SHARDS", "KEYSEAL_V2_X"].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(names, expected);
}

/// The StatefulSet: a headless Service, a ClusterIP Service for the admin
/// API, a PodDisruptionBudget, probes on the worker's port, and the shard
/// scheme: run with pod i's hostname, the container's command pins pod i to
/// shards of its own, every shard to exactly one of `replicas` pods, and a
/// pod beyond them refuses to start, as does one with the template's token.
#[test]
fn k8s_statefulset_pins_every_shard_to_one_pod() {
    let objects = k8s_objects();
    let statefulset = k8s_statefulset(&objects);
    let name = statefulset["metadata"]["name"].as_str().expect("the StatefulSet's name");
    let spec = &statefulset["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    let pod = &spec["template"]["spec"];
    assert_eq!(&spec["selector"]["matchLabels"], labels, "the selector is the pods' labels");
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().is_some_and(|seconds| seconds >= 30),
        "terminationGracePeriodSeconds >= 30, time to hand the shards over"
    );
    assert!(
        spec["volumeClaimTemplates"].as_sequence().is_some_and(|claims| !claims.is_empty()),
        "a PersistentVolumeClaim per pod"
    );

    let headless = k8s_object(&objects, "Service", spec["serviceName"].as_str().expect("spec.serviceName"));
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"), "the governing Service is headless");
    assert_eq!(&headless["spec"]["selector"], labels);
    let admin = objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("Service") && o["spec"]["clusterIP"].as_str() != Some("None"))
        .expect("a ClusterIP Service for the admin API");
    assert!(matches!(admin["spec"]["type"].as_str(), None | Some("ClusterIP")), "{admin:?}");
    assert_eq!(&admin["spec"]["selector"], labels);
    assert!(
        admin["spec"]["ports"].as_sequence().into_iter().flatten().any(|p| p["port"].as_u64() == Some(8080)),
        "the admin API on port 8080: {admin:?}"
    );
    let budget =
        objects.iter().find(|o| o["kind"].as_str() == Some("PodDisruptionBudget")).expect("a PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"].as_u64(), Some(1));
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);

    let container = k8s_keyseal_container(pod);
    let env = k8s_env(container);
    let port = port_of(&k8s_env_value(&env, "KEYSEAL_HTTP_ADDR"));
    let port_name = container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["containerPort"].as_u64() == Some(u64::from(port)))
        .unwrap_or_else(|| panic!("the container declares port {port}"))["name"]
        .as_str();
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        let asked = &get["port"];
        assert!(
            asked.as_u64() == Some(u64::from(port)) || (asked.as_str().is_some() && asked.as_str() == port_name),
            "{probe} asks the worker's port {port}: {asked:?}"
        );
    }
    // The token and the broker's URL come from Secrets the manifests define.
    for (variable, entry) in &env {
        let secret = &entry["valueFrom"]["secretKeyRef"];
        if secret.is_null() {
            continue;
        }
        let object = k8s_object(&objects, "Secret", secret["name"].as_str().expect("secretKeyRef.name"));
        let key = secret["key"].as_str().expect("secretKeyRef.key");
        assert!(
            object["stringData"].get(key).is_some() || object["data"].get(key).is_some(),
            "{variable}: the Secret has key {key}"
        );
    }
    let token = &env.get("KEYSEAL_ADMIN_TOKEN").expect("KEYSEAL_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"];
    let token_secret = k8s_object(&objects, "Secret", token["name"].as_str().expect("the token's Secret"));
    let template_token = token_secret["stringData"][token["key"].as_str().expect("the token's key")]
        .as_str()
        .expect("the template's token")
        .to_owned();

    // `exec keyseal run` with flags it has, --own-shards among them.
    let script = k8s_script(container);
    let run_flags = long_flags(&help(&["run"]));
    let run_line = script
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("exec keyseal run"))
        .expect("the script execs keyseal run");
    for flag in run_line.split_whitespace().filter(|w| w.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        assert!(run_flags.contains(flag), "`keyseal run` has no {flag}");
    }
    assert!(run_line.contains("--own-shards"), "every pod pins its shards: {run_line}");

    // The scheme, run: each pod of `replicas` prints its keyseal command.
    let shards: u32 = k8s_env_value(&env, "KEYSEAL_SHARDS").parse().expect("KEYSEAL_SHARDS is a number");
    let replicas = spec["replicas"].as_u64().expect("spec.replicas");
    let shown = script.replace("exec keyseal run", "echo keyseal run");
    let mut variables: BTreeMap<String, String> = env
        .iter()
        .filter_map(|(variable, entry)| entry["value"].as_str().map(|v| (variable.clone(), v.to_owned())))
        .collect();
    variables.insert("KEYSEAL_ADMIN_TOKEN".into(), "a-real-token".into());
    let mut owner = BTreeMap::new();
    for ordinal in 0..replicas {
        variables.insert("HOSTNAME".into(), format!("{name}-{ordinal}"));
        let out = bash(&shown, &variables);
        assert!(out.status.success(), "pod {ordinal}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let list = stdout
            .trim()
            .strip_prefix("keyseal run --own-shards ")
            .unwrap_or_else(|| panic!("pod {ordinal} runs {stdout}"));
        let pinned = list
            .parse::<keyseal::placement::ShardList>()
            .unwrap_or_else(|e| panic!("pod {ordinal}: --own-shards {list}: {e}"))
            .0;
        assert!(!pinned.is_empty(), "pod {ordinal} owns shards");
        for shard in pinned {
            let before = owner.insert(shard, ordinal);
            assert!(before.is_none(), "shard {shard} is pinned to pod {before:?} and pod {ordinal}");
        }
    }
    assert_eq!(
        owner.keys().copied().collect::<Vec<u32>>(),
        (0..shards).collect::<Vec<u32>>(),
        "the {replicas} pods own each of the {shards} shards: {owner:?}"
    );
    variables.insert("HOSTNAME".into(), format!("{name}-{replicas}"));
    assert!(!bash(&shown, &variables).status.success(), "pod {replicas}, one more than replicas, has no shards");
    variables.insert("HOSTNAME".into(), format!("{name}-0"));
    variables.insert("KEYSEAL_ADMIN_TOKEN".into(), template_token);
    assert!(!bash(&shown, &variables).status.success(), "a pod refuses the token of secrets.yaml's template");
}

/// keyseal refuses its root key from a Secret volume (symlinks into
/// `..data/`); the StatefulSet's init container copies it into
/// `<data-dir>/root-keys/`, where keyseal reads it, and stops the pod when
/// the Secret's key changed.
#[test]
fn k8s_init_container_puts_the_root_key_where_keyseal_reads_it() {
    use keyseal::crypto::root_key::ManagedRootKeys;
    use std::os::unix::fs::PermissionsExt;

    let objects = k8s_objects();
    let pod = &k8s_statefulset(&objects)["spec"]["template"]["spec"];
    let container = k8s_keyseal_container(pod);
    let data_dir = k8s_env_value(&k8s_env(container), "KEYSEAL_DATA_DIR");
    let volume = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["secret"]["secretName"].is_string())
        .expect("a Secret volume with the root key");
    let (volume_name, secret_name) = (scalar(&volume["name"]), scalar(&volume["secret"]["secretName"]));
    assert!(
        k8s_object(&objects, "Secret", &secret_name)["stringData"].get("managed-v1.pem").is_some(),
        "Secret {secret_name} (template) holds managed-v1.pem"
    );
    assert!(
        k8s_mounts(container).iter().all(|(mounted, _)| *mounted != volume_name),
        "keyseal itself cannot use the Secret volume"
    );
    let init = pod["initContainers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| k8s_mounts(c).iter().any(|(mounted, _)| *mounted == volume_name))
        .expect("an init container mounts the root key's Secret");
    let init_mounts = k8s_mounts(init);
    let (_, secret_dir) = init_mounts.iter().find(|(mounted, _)| *mounted == volume_name).unwrap();
    let keyseal_data = k8s_mounts(container).into_iter().find(|(_, path)| *path == data_dir);
    let (data_volume, _) = keyseal_data.unwrap_or_else(|| panic!("keyseal's {data_dir} is a volume"));
    assert!(
        init_mounts.iter().any(|(mounted, path)| *mounted == data_volume && *path == data_dir),
        "the init container mounts the data volume at {data_dir} too: {init_mounts:?}"
    );

    // The init container's script, on a Secret volume laid out as the
    // kubelet does it and a data dir, both in a temp dir.
    let script = k8s_script(init);
    assert!(script.contains(secret_dir.as_str()) && script.contains(&data_dir), "{script}");
    let scratch = tempfile::tempdir().unwrap();
    let generated = scratch.path().join("generated");
    let root = ManagedRootKeys::load_or_create(&generated).expect("a new root key");
    let secret = scratch.path().join("secret");
    let timestamped = "..2026_01_01_00_00_00.000000001";
    std::fs::create_dir_all(secret.join(timestamped)).unwrap();
    std::fs::copy(generated.join("managed-v1.pem"), secret.join(timestamped).join("managed-v1.pem")).unwrap();
    std::os::unix::fs::symlink(timestamped, secret.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/managed-v1.pem", secret.join("managed-v1.pem")).unwrap();
    match ManagedRootKeys::load_or_create(&secret) {
        Ok(_) => panic!("keyseal read a root key through a symlink"),
        Err(e) => assert!(e.to_string().contains("symlink"), "{e}"),
    }

    let data = scratch.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let local = script
        .replace(secret_dir.as_str(), secret.to_str().unwrap())
        .replace(data_dir.as_str(), data.to_str().unwrap());
    let no_env = BTreeMap::new();
    for start in ["first", "second"] {
        let out = bash(&local, &no_env);
        assert!(out.status.success(), "{start} start: {}", String::from_utf8_lossy(&out.stderr));
    }
    let keys = data.join("root-keys");
    let mode = |path: &Path| std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(keys.as_path()), 0o700, "root-keys/ is 0700");
    assert_eq!(mode(keys.join("managed-v1.pem").as_path()), 0o600, "its keys are 0600 regular files");
    let copied = ManagedRootKeys::load_or_create(&keys).unwrap_or_else(|e| panic!("keyseal reads the copy: {e}"));
    assert_eq!(copied.fingerprints(), root.fingerprints(), "the Secret's key, not a new one");

    // A version never changes: a different key in the Secret stops the pod.
    let changed = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    std::fs::write(secret.join(timestamped).join("managed-v1.pem"), changed).unwrap();
    let out = bash(&local, &no_env);
    assert!(!out.status.success(), "a changed key in the Secret must stop the pod");
    assert_eq!(copied.fingerprints(), ManagedRootKeys::load_or_create(&keys).unwrap().fingerprints());
}
