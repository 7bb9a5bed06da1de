//! The broker on Kubernetes: the RabbitmqCluster of
//! `deploy/k8s/rabbitmq.yaml`, a custom resource of RabbitMQ's Cluster
//! Operator, and how the workers reach it. kubernetes-validate has no
//! schema for a custom resource, so these tests check what keyseal relies
//! on: the kind the operator serves, three nodes, and the names the
//! operator derives from the resource's name (pods, headless Service,
//! default-user Secret), which the workers' `KEYSEAL_AMQP_URL` and Secret
//! references must use.

use std::collections::{BTreeMap, BTreeSet};

use lapin::uri::AMQPScheme;
use serde_yaml_ng::Value as Yaml;

use super::{RABBITMQ_CLUSTER, k8s_env, k8s_keyseal_container, k8s_objects, k8s_statefulset};
use crate::files::{amqp_nodes, one_login, scalar};

/// The fields of a RabbitmqCluster's `spec` in the Cluster Operator's CRD
/// (`config/crd/bases/rabbitmq.com_rabbitmqclusters.yaml`, v1beta1): the
/// check kubernetes-validate cannot make, so a misspelt field fails here
/// instead of being dropped or refused by the API server.
const SPEC_FIELDS: [&str; 16] = [
    "affinity",
    "autoEnableAllFeatureFlags",
    "delayStartSeconds",
    "image",
    "imagePullSecrets",
    "override",
    "persistence",
    "rabbitmq",
    "replicas",
    "resources",
    "secretBackend",
    "service",
    "skipPostDeploySteps",
    "terminationGracePeriodSeconds",
    "tls",
    "tolerations",
];

/// The namespace a worker pod is given (`metadata.namespace`) when the
/// tests expand its environment: any will do, the URL must name it.
const NAMESPACE: &str = "keyseal-test-ns";

/// The one RabbitmqCluster of the manifests, the broker the workers use.
fn k8s_rabbitmq_cluster(objects: &[Yaml]) -> &Yaml {
    let (api_version, kind) = RABBITMQ_CLUSTER;
    let mut found = objects.iter().filter(|o| o["kind"].as_str() == Some(kind));
    let cluster = found.next().unwrap_or_else(|| panic!("deploy/k8s has a {kind}"));
    assert!(found.next().is_none(), "deploy/k8s has one {kind}");
    assert_eq!(
        cluster["apiVersion"].as_str(),
        Some(api_version),
        "the {kind}'s apiVersion, the one the operator serves"
    );
    cluster
}

/// The Secret the Cluster Operator creates with the cluster's default user
/// (keys `username` and `password`): where the workers' credentials come
/// from. The StatefulSet's test accepts references to it, since no manifest
/// defines it.
pub(super) fn default_user_secret(objects: &[Yaml]) -> String {
    format!("{}-default-user", scalar(&k8s_rabbitmq_cluster(objects)["metadata"]["name"]))
}

/// An env value as Kubernetes hands it to the container: `$(NAME)` becomes
/// the value of variable NAME when NAME is listed before it (`earlier`),
/// `$$` becomes `$`, and anything else stays as written (an unknown
/// `$(NAME)` too). This is how `KEYSEAL_AMQP_URL` is built from the
/// Secret's credentials and the pod's namespace.
fn k8s_expand(value: &str, earlier: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|r| r.split_once(')')) {
            match earlier.get(name) {
                Some(known) => out.push_str(known),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out + rest
}

#[test]
fn env_values_are_expanded_as_kubernetes_does() {
    let earlier = BTreeMap::from([("A".to_owned(), "x".to_owned()), ("B".to_owned(), "y".to_owned())]);
    assert_eq!(k8s_expand("$(A)-$(B)/$(C)", &earlier), "x-y/$(C)");
    assert_eq!(k8s_expand("$$(A) $ $x $(A", &earlier), "$(A) $ $x $(A");
}

/// The RabbitmqCluster: the kind RabbitMQ's Cluster Operator serves, three
/// nodes (keyseal's quorum queues stay available while two run), only
/// fields the operator's CRD has, a volume per node, a budget that keeps two
/// nodes up during drains; and the workers log in with its default user,
/// from the Secret the operator names after it.
#[test]
fn k8s_rabbitmq_cluster_is_three_nodes_of_the_cluster_operator() {
    let objects = k8s_objects();
    let cluster = k8s_rabbitmq_cluster(&objects);
    let name = cluster["metadata"]["name"].as_str().expect("the RabbitmqCluster's name");
    let spec = &cluster["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(3), "three RabbitMQ nodes");
    let fields: BTreeSet<String> = spec.as_mapping().expect("spec").keys().map(scalar).collect();
    let unknown: Vec<&String> = fields.iter().filter(|f| !SPEC_FIELDS.contains(&f.as_str())).collect();
    assert!(unknown.is_empty(), "spec fields the operator's CRD does not have: {unknown:?}");
    let storage = spec["persistence"]["storage"].as_str().unwrap_or_default();
    assert!(!storage.is_empty() && !storage.starts_with('0'), "each node keeps its messages on a volume: {storage:?}");

    let selects_nodes = |o: &&Yaml| {
        o["kind"].as_str() == Some("PodDisruptionBudget")
            && o["spec"]["selector"]["matchLabels"].as_mapping().is_some_and(|labels| {
                labels.len() == 1 && labels.get("app.kubernetes.io/name").and_then(Yaml::as_str) == Some(name)
            })
    };
    let budget = objects.iter().find(selects_nodes).expect("a PodDisruptionBudget for the RabbitMQ nodes");
    assert_eq!(budget["spec"]["maxUnavailable"].as_u64(), Some(1), "one RabbitMQ node down at a time");

    // The workers' credentials: both keys of the operator's Secret.
    let secret = default_user_secret(&objects);
    assert_eq!(secret, format!("{name}-default-user"));
    let container = k8s_keyseal_container(&k8s_statefulset(&objects)["spec"]["template"]["spec"]);
    let keys: BTreeSet<&str> = k8s_env(container)
        .values()
        .map(|entry| &entry["valueFrom"]["secretKeyRef"])
        .filter(|reference| reference["name"].as_str() == Some(secret.as_str()))
        .filter_map(|reference| reference["key"].as_str())
        .collect();
    assert_eq!(keys, BTreeSet::from(["password", "username"]), "the workers read both keys of Secret {secret}");
}

/// The workers' `KEYSEAL_AMQP_URL`, expanded as Kubernetes does it, names
/// each pod of the RabbitmqCluster once by its DNS name in the pod's own
/// namespace (`<name>-server-<i>.<name>-nodes.<namespace>.svc`), on the AMQP
/// port, with the default user's username and password from the operator's
/// Secret and one vhost.
#[test]
fn k8s_workers_reach_each_rabbitmq_node_with_its_default_user() {
    let objects = k8s_objects();
    let cluster = k8s_rabbitmq_cluster(&objects);
    let name = scalar(&cluster["metadata"]["name"]);
    let replicas = cluster["spec"]["replicas"].as_u64().expect("spec.replicas");
    let secret = default_user_secret(&objects);
    let container = k8s_keyseal_container(&k8s_statefulset(&objects)["spec"]["template"]["spec"]);

    // The environment in its order, each variable with the value the pod
    // gets: a Secret's key shows as `<secret>.<key>`, the namespace is
    // NAMESPACE, a value is expanded from the variables before it.
    let mut env = BTreeMap::new();
    for entry in container["env"].as_sequence().expect("the container's env") {
        let value = if let Some(value) = entry["value"].as_str() {
            k8s_expand(value, &env)
        } else if let Some(reference) = entry["valueFrom"]["secretKeyRef"].as_mapping() {
            format!("{}.{}", scalar(&reference["name"]), scalar(&reference["key"]))
        } else if entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("metadata.namespace") {
            NAMESPACE.to_owned()
        } else {
            continue;
        };
        env.insert(scalar(&entry["name"]), value);
    }
    let list = env.get("KEYSEAL_AMQP_URL").expect("the workers set KEYSEAL_AMQP_URL");
    assert!(!list.contains("$("), "each $(NAME) in KEYSEAL_AMQP_URL names a variable listed before it: {list}");

    let urls = amqp_nodes(list);
    let hosts: Vec<&str> = urls.iter().map(|url| url.authority.host.as_str()).collect();
    let expected: BTreeSet<String> =
        (0..replicas).map(|i| format!("{name}-server-{i}.{name}-nodes.{NAMESPACE}.svc")).collect();
    assert_eq!(hosts.len(), expected.len(), "one URL per RabbitMQ node: {hosts:?}");
    assert_eq!(hosts.iter().map(|h| (*h).to_owned()).collect::<BTreeSet<_>>(), expected, "each node by its pod's name");
    for url in &urls {
        assert_eq!(url.scheme, AMQPScheme::AMQP, "{}", url.authority.host);
        assert_eq!(url.authority.port, 5672, "{} on the AMQP port", url.authority.host);
    }
    let (user, password, vhost) = one_login("KEYSEAL_AMQP_URL", &urls);
    assert_eq!(user, format!("{secret}.username"), "the username of Secret {secret}");
    assert_eq!(password, format!("{secret}.password"), "the password of Secret {secret}");
    assert_eq!(vhost, "/", "the default vhost, the one the default user has permissions on");
}
