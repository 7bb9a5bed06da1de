//! docker-compose.yml: the stack's services, their ports, health checks,
//! restart policies and volumes; the workers of one deployment and the
//! settings and flags they pass to keyseal (checked against `keyseal
//! --help`); the three RabbitMQ nodes that form one cluster and that every
//! worker is given; and how a worker reaches the Key Vault emulator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use lapin::uri::AMQPScheme;
use serde_yaml_ng::Value as Yaml;

use crate::files::{
    ENV_ONLY, amqp_nodes, compose, env_names, environment, help, help_block, long_flags, mounts, one_login, port_of,
    read, scalar, service, str_list, worker_services,
};

/// The nine services the stack is made of: a service added or renamed
/// without its checks fails the first test.
const SERVICES: [&str; 9] = [
    "rabbitmq-1",
    "rabbitmq-2",
    "rabbitmq-3",
    "keyvault-emulator",
    "keyseal-1",
    "keyseal-2",
    "keyseal-3",
    "prometheus",
    "grafana",
];

/// The RabbitMQ nodes' image, RabbitMQ's official one (Docker Hub's
/// `library/rabbitmq`) with the management UI: what the nodes' settings
/// (environment, config file, data dir) are written for.
const RABBITMQ_IMAGE: &str = "rabbitmq:3.13-management";

/// Where the official image reads its main configuration file, which the
/// nodes mount from the repository.
const RABBITMQ_CONF: &str = "/etc/rabbitmq/rabbitmq.conf";

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
fn compose_has_the_nine_services_with_ports_healthchecks_and_restart_policies() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("docker-compose.yml has services");
    let names: BTreeSet<String> = services.keys().map(scalar).collect();
    let expected: BTreeSet<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(names, expected, "the stack's services");

    let expected_ports: [(&str, &[u16]); 9] = [
        ("rabbitmq-1", &[5672, 15672]),
        ("rabbitmq-2", &[5673, 15673]),
        ("rabbitmq-3", &[5674, 15674]),
        ("keyvault-emulator", &[8443]),
        ("keyseal-1", &[8080]),
        ("keyseal-2", &[8081]),
        ("keyseal-3", &[8082]),
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
        ("rabbitmq-1", "/var/lib/rabbitmq"),
        ("rabbitmq-2", "/var/lib/rabbitmq"),
        ("rabbitmq-3", "/var/lib/rabbitmq"),
        ("keyvault-emulator", "/var/lib/keyvault-emulator"),
        ("keyseal-1", "/var/lib/keyseal"),
        ("keyseal-2", "/var/lib/keyseal"),
        ("keyseal-3", "/var/lib/keyseal"),
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
    let workers = worker_services(&compose);
    let names = workers.iter().map(|(name, _)| name.as_str()).chain(["keyvault-emulator"]);
    for name in names {
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
    assert_eq!(str_list(&service(&compose, "keyseal-1")["command"]), ["run"]);
    assert!(checked >= 2, "the emulator's command sets --addr and --state-dir");
}

/// Three workers of one deployment: the same shard count, broker and token,
/// and one data volume, so any of them can take over any shard of another.
#[test]
fn compose_runs_three_workers_of_one_deployment() {
    let compose = compose();
    let workers = worker_services(&compose);
    let names: Vec<&str> = workers.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(workers.len(), 3, "three worker services (command `run`): {names:?}");
    assert!(names.contains(&"keyseal-1"), "one is `keyseal-1`, the name the docs and tests use: {names:?}");

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
    assert!(shards >= 3, "each of the three workers owns a shard while all run, with {shards} shards");

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

    // Each on its own host port (8080, 8081 and 8082).
    let mut published = BTreeSet::new();
    for (name, svc) in &workers {
        for port in published_ports(svc) {
            assert!(published.insert(port), "{name} publishes host port {port}, which another worker publishes too");
        }
    }
    assert!(
        published.is_superset(&BTreeSet::from([8080u16, 8081, 8082])),
        "the workers publish 8080, 8081 and 8082: {published:?}"
    );
}

#[test]
fn worker_reaches_the_emulator_by_a_name_its_certificate_covers() {
    let compose = compose();
    let worker = service(&compose, "keyseal-1");
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

    // The worker starts after the broker's nodes and the vault are healthy,
    // and reaches each by its service name.
    let brokers: Vec<String> = amqp_nodes(&env["KEYSEAL_AMQP_URL"]).into_iter().map(|n| n.authority.host).collect();
    for dependency in brokers.iter().map(String::as_str).chain(["keyvault-emulator"]) {
        service(&compose, dependency);
        assert_eq!(
            worker["depends_on"][dependency]["condition"].as_str(),
            Some("service_healthy"),
            "the worker waits for a healthy {dependency}"
        );
    }
    assert_eq!(port_of(&env["KEYSEAL_HTTP_ADDR"]), 8080);
    assert!(!env["KEYSEAL_HTTP_ADDR"].starts_with("127."), "the worker's admin API is reachable from Prometheus");
}

/// The RabbitMQ services (RabbitMQ's image), by name: the broker's nodes.
fn rabbitmq_services(compose: &Yaml) -> Vec<(String, &Yaml)> {
    compose["services"]
        .as_mapping()
        .expect("docker-compose.yml has services")
        .iter()
        .filter(|(_, svc)| svc["image"].as_str().is_some_and(|image| image.starts_with("rabbitmq:")))
        .map(|(name, svc)| (scalar(name), svc))
        .collect()
}

/// The `key = value` settings of a rabbitmq.conf (`#` starts a comment),
/// to check what the nodes are configured with.
fn rabbitmq_conf(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap().trim())
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("rabbitmq.conf: {line:?} is no setting"));
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

/// Three RabbitMQ nodes form one cluster by classic config peer discovery:
/// one mounted rabbitmq.conf lists the three node names, which are the
/// services' hostnames, and the nodes share one Erlang cookie. Every worker
/// is given exactly those three nodes, with one vhost and the user the
/// nodes create.
#[test]
fn compose_runs_one_rabbitmq_cluster_of_three_nodes_by_classic_config() {
    let compose = compose();
    let nodes = rabbitmq_services(&compose);
    let names: BTreeSet<String> = nodes.iter().map(|(name, _)| name.clone()).collect();
    let expected: BTreeSet<String> = ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"].map(String::from).into();
    assert_eq!(names, expected, "three RabbitMQ services");

    let (mut node_names, mut cookies, mut logins, mut confs, mut data) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (name, svc) in &nodes {
        assert_eq!(svc["image"].as_str(), Some(RABBITMQ_IMAGE), "{name}: RabbitMQ's official image");
        // The node is rabbit@<hostname>; its peers reach that host by the
        // service's name, and its data in the volume is kept under it.
        let hostname = svc["hostname"].as_str().unwrap_or_else(|| panic!("{name} sets a hostname"));
        assert_eq!(hostname, name, "{name}: the hostname its peers reach it by is its service name");
        let env = environment(svc);
        let node = format!("rabbit@{hostname}");
        assert!(env.get("RABBITMQ_NODENAME").is_none_or(|n| *n == node), "{name} is node {node}");
        node_names.insert(node);
        cookies.insert(env.get("RABBITMQ_ERLANG_COOKIE").cloned().unwrap_or_default());
        logins.insert((env.get("RABBITMQ_DEFAULT_USER").cloned(), env.get("RABBITMQ_DEFAULT_PASS").cloned()));
        for (source, target, read_only) in mounts(svc) {
            if target == RABBITMQ_CONF {
                assert!(read_only, "{name} mounts {source} read-only");
                confs.insert(source);
            } else if target == "/var/lib/rabbitmq" {
                data.insert(source);
            }
        }
    }
    assert_eq!(data.len(), 3, "each node keeps its data in a volume of its own: {data:?}");
    assert_eq!(cookies.len(), 1, "the nodes share one Erlang cookie: {cookies:?}");
    let cookie = cookies.first().unwrap();
    assert!(
        cookie.starts_with("${RABBITMQ_ERLANG_COOKIE:-") && cookie.len() > "${RABBITMQ_ERLANG_COOKIE:-}".len(),
        "the cookie comes from the caller, with a default for a laptop: {cookie:?}"
    );

    assert_eq!(confs.len(), 1, "every node mounts the same {RABBITMQ_CONF}: {confs:?}");
    let source = confs.first().unwrap();
    let conf = rabbitmq_conf(&read(source.trim_start_matches("./")));
    let backend = conf.get("cluster_formation.peer_discovery_backend").map(String::as_str);
    assert!(
        matches!(backend, Some("classic_config" | "rabbit_peer_discovery_classic_config")),
        "{source}: classic config peer discovery, not {backend:?}"
    );
    let listed: BTreeSet<String> = conf
        .iter()
        .filter(|(key, _)| key.starts_with("cluster_formation.classic_config.nodes."))
        .map(|(_, node)| node.clone())
        .collect();
    assert_eq!(listed, node_names, "{source} lists the three nodes, rabbit@<hostname>");
    // keyseal's shard leases are exclusive queues: a partitioned minority
    // must pause (and drop its connections) rather than keep a lease that
    // the majority gives to another worker.
    assert_eq!(conf.get("cluster_partition_handling").map(String::as_str), Some("pause_minority"), "{source}");

    // The user the nodes create may log in from the workers' containers.
    assert_eq!(logins.len(), 1, "the nodes create one user: {logins:?}");
    let (user, password) = logins.pop_first().unwrap();
    let (user, password) = (user.expect("RABBITMQ_DEFAULT_USER"), password.expect("RABBITMQ_DEFAULT_PASS"));
    assert!(
        conf.get(&format!("loopback_users.{user}")).is_some_and(|v| v == "false")
            || conf.get("loopback_users").is_some_and(|v| v == "none"),
        "{source}: {user} may log in from other containers, not only from loopback"
    );

    // Every worker is given each node once, all with that user and one vhost.
    for (worker, svc) in worker_services(&compose) {
        let urls = amqp_nodes(&environment(svc)["KEYSEAL_AMQP_URL"]);
        let hosts: Vec<&str> = urls.iter().map(|url| url.authority.host.as_str()).collect();
        assert_eq!(hosts.len(), 3, "{worker}: KEYSEAL_AMQP_URL names three nodes: {hosts:?}");
        let distinct: BTreeSet<String> = hosts.iter().map(|host| (*host).to_owned()).collect();
        assert_eq!(distinct, names, "{worker}: KEYSEAL_AMQP_URL names each RabbitMQ service once");
        for url in &urls {
            assert_eq!(url.scheme, AMQPScheme::AMQP, "{worker}: {}", url.authority.host);
            assert_eq!(url.authority.port, 5672, "{worker}: {} on the AMQP port", url.authority.host);
        }
        let (login_user, login_password, vhost) = one_login(&worker, &urls);
        assert_eq!((login_user, login_password), (user.clone(), password.clone()), "{worker} logs in as {user}");
        assert_eq!(vhost, "/", "{worker}: the default vhost, the one {user} has permissions on");
    }
}
