//! Reading and parsing what the other modules check: repository paths,
//! YAML (compose and the manifests), the compose file's services, and what
//! `keyseal --help` says about settings and flags. Helpers used by one
//! module only live next to its tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use lapin::uri::AMQPUri;
use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

/// A path in the repository, wherever the tests run from: every file the
/// tests read is named relative to the repository root.
pub(crate) fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A repository file's text; a missing file fails the test with its name
/// rather than an anonymous I/O error.
pub(crate) fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

/// A single-document YAML file, parsed: a syntax error fails the test with
/// the file's name.
pub(crate) fn yaml(relative: &str) -> Yaml {
    serde_yaml_ng::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

/// Every document of a multi-document YAML file (`---` separated), empty
/// ones left out: the Kubernetes manifests hold several objects per file.
pub(crate) fn yaml_documents(relative: &str) -> Vec<Yaml> {
    let text = read(relative);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Yaml::deserialize(document).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}")))
        .filter(|document| !document.is_null())
        .collect()
}

/// docker-compose.yml with its merge keys (`<<: *keyseal-worker`) applied,
/// as compose applies them, so a worker service shows the settings it
/// inherits. The compose, dashboard and k8s tests all read it.
pub(crate) fn compose() -> Yaml {
    let mut compose = yaml("docker-compose.yml");
    compose.apply_merge().unwrap_or_else(|e| panic!("docker-compose.yml: a merge key (`<<:`) does not apply: {e}"));
    compose
}

/// One compose service by name; a renamed or missing service fails the test
/// with its name instead of a `Null` further down.
pub(crate) fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    compose["services"].get(name).unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

/// The services that run a worker (`command: ["run", ...]`), by name: the
/// checks that hold for every worker find them without a list of names.
pub(crate) fn worker_services(compose: &Yaml) -> Vec<(String, &Yaml)> {
    compose["services"]
        .as_mapping()
        .expect("docker-compose.yml has services")
        .iter()
        .filter(|(_, svc)| str_list(&svc["command"]).first().map(String::as_str) == Some("run"))
        .map(|(name, svc)| (scalar(name), svc))
        .collect()
}

/// A YAML list of scalars as strings (empty when absent): commands,
/// health checks, volumes and targets are such lists.
pub(crate) fn str_list(value: &Yaml) -> Vec<String> {
    value.as_sequence().map(|items| items.iter().map(scalar).collect()).unwrap_or_default()
}

/// A YAML scalar as text, since ports and numbers may be written unquoted
/// and the checks compare text.
pub(crate) fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A service's `environment`, in either of compose's forms (map or `K=V`
/// list), so the checks do not depend on which form the file uses.
pub(crate) fn environment(service: &Yaml) -> BTreeMap<String, String> {
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

/// `(source, target, read_only)` of a service's volume mounts (short
/// syntax): where each service keeps its data and which config it mounts.
pub(crate) fn mounts(service: &Yaml) -> Vec<(String, String, bool)> {
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

/// The node URLs of a `KEYSEAL_AMQP_URL`, a comma-separated list with one
/// URL per node of one RabbitMQ cluster, each parsed by lapin (the AMQP
/// client keyseal connects with), so a URL it would refuse fails here.
pub(crate) fn amqp_nodes(list: &str) -> Vec<AMQPUri> {
    list.split(',')
        .map(|url| url.parse().unwrap_or_else(|e| panic!("{url:?} in KEYSEAL_AMQP_URL {list:?} is no AMQP URL: {e}")))
        .collect()
}

/// The `(username, password, vhost)` every node URL of a `KEYSEAL_AMQP_URL`
/// shares: the nodes are one cluster, so `--amqp-url` requires one user and
/// one vhost for all of them. `whose` names the list in a failure.
pub(crate) fn one_login(whose: &str, nodes: &[AMQPUri]) -> (String, String, String) {
    let mut logins: BTreeSet<(String, String, String)> = nodes
        .iter()
        .map(|node| {
            let user = &node.authority.userinfo;
            (user.username.clone(), user.password.clone(), node.vhost.clone())
        })
        .collect();
    assert_eq!(logins.len(), 1, "{whose}: one user, password and vhost for every node: {logins:?}");
    logins.pop_first().unwrap()
}

/// The port of a `host:port` address, to compare a listener (`--addr`,
/// `KEYSEAL_HTTP_ADDR`) with what points at it.
pub(crate) fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr:?}"))
}

// ---------------------------------------------------------------------------
// Asking the binary
// ---------------------------------------------------------------------------

/// `keyseal <args> --help` with an empty environment, so no `KEYSEAL_*` of
/// the test run leaks into the text: the binary's own word on which
/// settings and flags exist.
pub(crate) fn help(args: &[&str]) -> String {
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
/// `[env: NAME]` for settings whose values are hidden (tokens). The
/// deployment files may set only these.
pub(crate) fn env_names(help: &str) -> BTreeSet<String> {
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
pub(crate) const ENV_ONLY: [&str; 2] = ["KEYSEAL_ADMIN_TOKEN", "KEYSEAL_VAULT_TOKEN"];

/// `KEYSEAL_*` names in a text: `$KEYSEAL_X`, `${KEYSEAL_X:-...}` and bare
/// names alike (not `MY_KEYSEAL_X`, not the bare prefix `KEYSEAL_`), so a
/// name used inside a script or a default is checked too.
pub(crate) fn keyseal_names(text: &str) -> BTreeSet<String> {
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

#[test]
fn keyseal_names_are_read_from_text() {
    let names = keyseal_names(
        "exec 3<>x; ${KEYSEAL_ADMIN_TOKEN:-change-me} \"$$KEYSEAL_SHARDS\" MY_KEYSEAL_NOT KEYSEAL_* KEYSEAL_V2_X",
    );
    let expected: BTreeSet<String> =
        ["KEYSEAL_ADMIN_TOKEN", "KEYSEAL_SHARDS", "KEYSEAL_V2_X"].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(names, expected);
}

/// Every string in a YAML value, mapping keys included (comments are not
/// part of the value): where [`keyseal_names`] looks for settings.
pub(crate) fn yaml_strings(value: &Yaml) -> Vec<String> {
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

/// Long flags an option list in help defines (`--name <VALUE>` headers),
/// to check that the commands in the files use flags that exist.
pub(crate) fn long_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|line| {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            let flag = trimmed.strip_prefix("-h, ").unwrap_or(trimmed);
            (indent <= 6 && flag.starts_with("--")).then(|| flag.split([' ', '=', ',']).next().unwrap().to_owned())
        })
        .collect()
}

/// The help block (header line to the next header) of setting `name`:
/// its `Possible values:` are what an enumerated setting accepts.
pub(crate) fn help_block<'a>(help: &'a str, name: &str) -> Option<&'a str> {
    let at = help.find(&format!("[env: {name}"))?;
    let start = help[..at].rfind("\n      --").map_or(0, |i| i + 1);
    let end = help[at..].find("\n      --").map_or(help.len(), |i| at + i);
    Some(&help[start..end])
}
