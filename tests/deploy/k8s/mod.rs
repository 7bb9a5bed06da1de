//! The Kubernetes manifests (`deploy/k8s/*.yaml`): every built-in object
//! valid against the Kubernetes schemas and only settings keyseal has
//! (here), the workers' StatefulSet run for real ([`statefulset`]), and the
//! RabbitMQ cluster they use, a custom resource of RabbitMQ's Cluster
//! Operator ([`rabbitmq`]).

mod rabbitmq;
mod statefulset;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_yaml_ng::Value as Yaml;

use crate::files::{ENV_ONLY, compose, env_names, help, keyseal_names, read, repo_path, yaml_documents, yaml_strings};

/// The Kubernetes release the manifests are validated against: a recent
/// one, not the newest, so they also suit clusters a few releases behind.
const KUBERNETES_VERSION: &str = "1.35.0";

/// The validator, as tests/python/requirements.txt pins it (it ships the schemas of
/// Kubernetes 1.25 to 1.37).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// RabbitMQ's Cluster Operator's RabbitmqCluster, `(apiVersion, kind)`: the
/// broker of the manifests, a custom resource.
const RABBITMQ_CLUSTER: (&str, &str) = ("rabbitmq.com/v1beta1", "RabbitmqCluster");

/// The custom resources the manifests may hold, `(apiVersion, kind)`:
/// kubernetes-validate has no schema for them, so the schema check lets
/// them through and a test of their own checks each ([`rabbitmq`]).
const CUSTOM_RESOURCES: [(&str, &str); 1] = [RABBITMQ_CLUSTER];

/// The manifests, `deploy/k8s/*.yaml`, repository-relative and sorted: a
/// manifest added later is validated and checked without a list to update.
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

/// Every object of every manifest, since objects refer to each other
/// across files (the StatefulSet to its Services and Secrets).
pub(super) fn k8s_objects() -> Vec<Yaml> {
    k8s_manifests().iter().flat_map(|path| yaml_documents(path.as_str())).collect()
}

/// The object of `kind` named `name`: a reference (a Secret, the governing
/// Service) must name an object the manifests define.
pub(super) fn k8s_object<'a>(objects: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("deploy/k8s has no {kind} {name}"))
}

/// The one StatefulSet, the workers: the checks of pods, shards and root
/// keys start from it.
pub(super) fn k8s_statefulset(objects: &[Yaml]) -> &Yaml {
    let mut found = objects.iter().filter(|o| o["kind"].as_str() == Some("StatefulSet"));
    let statefulset = found.next().expect("deploy/k8s has a StatefulSet");
    assert!(found.next().is_none(), "deploy/k8s has one StatefulSet");
    statefulset
}

/// The `keyseal` container of a pod spec (its only container), whose
/// env, probes and script are checked.
pub(super) fn k8s_keyseal_container(pod: &Yaml) -> &Yaml {
    let containers = pod["containers"].as_sequence().expect("the pod has containers");
    assert_eq!(containers.len(), 1, "the pod runs keyseal alone");
    &containers[0]
}

/// A container's `env` entries by name, to look settings up and follow
/// their Secret references.
pub(super) fn k8s_env(container: &Yaml) -> BTreeMap<String, &Yaml> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|entry| (entry["name"].as_str().expect("an env entry has a name").to_owned(), entry))
        .collect()
}

/// Every manifest passes `kubernetes-validate --strict` (unknown fields are
/// errors, so a misspelt or misplaced field fails too) for
/// [`KUBERNETES_VERSION`], and every built-in object was checked against a
/// schema. Only the [`CUSTOM_RESOURCES`] have none (the validator says so
/// in a WARN), and their own tests check them.
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
    // A kind or apiVersion without a schema is only a WARN, exit status 0:
    // each must be the WARN for one custom resource, and nothing else is.
    let mut other: Vec<&str> = stdout.lines().filter(|line| !line.starts_with("INFO ")).collect();
    for path in &paths {
        let objects = yaml_documents(path);
        let custom: Vec<(&str, &str)> = objects
            .iter()
            .filter_map(|o| Some((o["apiVersion"].as_str()?, o["kind"].as_str()?)))
            .filter(|resource| CUSTOM_RESOURCES.contains(resource))
            .collect();
        for (api_version, kind) in &custom {
            let warning = format!("WARN {path} Couldn't find schema for kind {kind} with api version {api_version} ");
            let at = other.iter().position(|line| line.starts_with(&warning));
            other.remove(at.unwrap_or_else(|| panic!("{path}: no WARN for custom resource {kind}\n{report}")));
        }
        let prefix = format!("INFO {path} passed for resource ");
        let passed = stdout.lines().filter(|line| line.starts_with(&prefix)).count();
        assert_eq!(passed, objects.len() - custom.len(), "every built-in object of {path} was validated\n{report}");
    }
    assert!(other.is_empty(), "kubernetes-validate did not pass everything: {other:?}\n{report}");
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
