//! docker-compose.yml: the stack's services, their ports, health checks,
//! restart policies and volumes; the workers of one deployment and the
//! settings and flags they pass to keyseal (checked against `keyseal
//! --help`); and how a worker reaches the Key Vault emulator.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value as Yaml;

use crate::files::{
    ENV_ONLY, compose, env_names, environment, help, help_block, long_flags, mounts, port_of, scalar, service,
    str_list, worker_services,
};

/// The six services the stack is made of: a service added or renamed
/// without its checks fails the first test.
const SERVICES: [&str; 6] = ["rabbitmq", "keyvault-emulator", "worker", "worker-2", "prometheus", "grafana"];

/// Host ports a service publishes (short `[ip:]host:container[/proto]` or
/// long `{published, target}` syntax): what the header of
/// docker-compose.yml promises on the host.
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

/// The value after `flag` in a command list: how the emulator's command
/// sets the address and state dir the workers rely on.
fn flag_value<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command.iter().position(|a| a == flag).and_then(|i| command.get(i + 1)).map(String::as_str)
}

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
