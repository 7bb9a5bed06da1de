//! The deployment files checked against the code they deploy: the compose
//! stack (`docker-compose.yml`), the image (`Dockerfile`), Prometheus
//! (`deploy/prometheus.yml`), Grafana's provisioning and the dashboard
//! (`dashboards/keyseal.json`). Docker itself is not needed: the files are
//! parsed, and what they claim about keyseal (settings, flags, metric names)
//! is checked against the real `keyseal` binary and a running worker.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::vault::{Vault, args};
use common::*;
use keyseal::broker::publish::synthetic;
use keyseal::clock::ManualClock;
use keyseal::proto::v1::IngestRecord;
use keyvault_emulator::RecoveryLevel;
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

fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

fn dashboard() -> Json {
    serde_json::from_str(&read("dashboards/keyseal.json")).expect("dashboards/keyseal.json is valid JSON")
}

/// The five services the stack is made of.
const SERVICES: [&str; 5] = ["rabbitmq", "keyvault-emulator", "worker", "prometheus", "grafana"];

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    compose["services"].get(name).unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
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
fn compose_has_the_five_services_with_ports_healthchecks_and_restart_policies() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("docker-compose.yml has services");
    let names: BTreeSet<String> = services.keys().map(scalar).collect();
    let expected: BTreeSet<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(names, expected, "the stack's services");

    let expected_ports: [(&str, &[u16]); 5] = [
        ("rabbitmq", &[5672, 15672]),
        ("keyvault-emulator", &[8443]),
        ("worker", &[8080]),
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

    // The worker's health check asks the worker itself.
    let worker_check = str_list(&service(&compose, "worker")["healthcheck"]["test"]).join(" ");
    assert!(worker_check.contains("/healthz") && worker_check.contains("8080"), "{worker_check}");
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

    let worker = environment(service(&compose, "worker"));
    for required in [
        "KEYSEAL_AMQP_URL",
        "KEYSEAL_DATA_DIR",
        "KEYSEAL_HTTP_ADDR",
        "KEYSEAL_ADMIN_TOKEN",
        "KEYSEAL_TRUSTED_VAULT_HOST",
        "KEYSEAL_VAULT_CA_CERT",
        "KEYSEAL_VAULT_CREDENTIAL",
        "KEYSEAL_LOG_FORMAT",
    ] {
        assert!(worker.contains_key(required), "the worker sets {required}");
    }
    for (name, value) in &worker {
        assert!(name.starts_with("KEYSEAL_"), "the worker's environment holds keyseal settings only, not {name}");
        // KEYSEAL_ADMIN_TOKEN is read from the environment only (config.rs,
        // `#[arg(skip = std::env::var(..))]`), so it never shows in help;
        // `admin_token_is_read_from_the_environment` proves it is real.
        if name == "KEYSEAL_ADMIN_TOKEN" {
            continue;
        }
        assert!(run_env.contains(name), "{name} is not a setting of `keyseal run` (it knows {run_env:?})");
        // A value of an enumerated setting must be one clap accepts.
        let block = help_block(&run_help, name).expect("the setting's help");
        if block.contains("Possible values:") {
            assert!(block.contains(&format!("- {value}:")), "{name}={value} is not one of its values:\n{block}");
        }
    }
    assert_eq!(worker["KEYSEAL_VAULT_CREDENTIAL"], "static-token");
    assert_eq!(worker["KEYSEAL_LOG_FORMAT"], "json");
    assert!(worker["KEYSEAL_ADMIN_TOKEN"].starts_with("${KEYSEAL_ADMIN_TOKEN"), "the token comes from the caller");

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
    for name in ["worker", "keyvault-emulator"] {
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
    for kept in ["src", "proto", "Cargo.toml", "Cargo.lock", "build.rs", "benches", "keyvault-emulator"] {
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
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&vhost, dir.path(), Arc::new(clock.clone()), &flags).await;
    let base = base_url(&worker);
    let http = reqwest::Client::new();

    // A customer key, so the vault is called (get_key, wrapkey, unwrapkey).
    vault.create("deploy-key", json!({"kty": "RSA", "key_size": 2048, "key_ops": ["wrapKey", "unwrapKey"]})).await;
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
