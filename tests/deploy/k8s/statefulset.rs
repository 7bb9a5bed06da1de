//! The workers' StatefulSet (`deploy/k8s/statefulset.yaml`) run for real:
//! its shard scheme (each pod's command, run with that pod's hostname), its
//! Services, probes and budget, and its init container (run on a Secret
//! volume laid out as the kubelet does it).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value as Yaml;

use super::rabbitmq::default_user_secret;
use super::{k8s_env, k8s_keyseal_container, k8s_object, k8s_objects, k8s_statefulset};
use crate::files::{help, long_flags, port_of, scalar, str_list};

/// The plain `value` of env entry `name`, for settings the checks compute
/// with (shard count, data dir, address).
fn k8s_env_value(env: &BTreeMap<String, &Yaml>, name: &str) -> String {
    env.get(name)
        .and_then(|entry| entry["value"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("the container sets {name} to a value"))
}

/// `(volume, mountPath)` of a container's volume mounts: which container
/// sees the root-key Secret and the data volume where.
fn k8s_mounts(container: &Yaml) -> Vec<(String, String)> {
    container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|mount| (scalar(&mount["name"]), scalar(&mount["mountPath"])))
        .collect()
}

/// The script of a container that runs `bash -c SCRIPT`, which the tests
/// run with bash to see what the pod would do.
fn k8s_script(container: &Yaml) -> String {
    let name = container["name"].as_str().unwrap_or("?");
    assert_eq!(str_list(&container["command"]), ["bash", "-c"], "{name} runs a bash script");
    let mut args = str_list(&container["args"]);
    assert_eq!(args.len(), 1, "{name}: the script is its one argument");
    args.remove(0)
}

/// Runs a manifest's script with only `env` (and `PATH`), so the result
/// depends on what the pod would have, not on the test's environment.
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
    let budget = objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("PodDisruptionBudget") && &o["spec"]["selector"]["matchLabels"] == labels)
        .expect("a PodDisruptionBudget for the workers");
    assert_eq!(budget["spec"]["maxUnavailable"].as_u64(), Some(1));

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
    // The token comes from a Secret the manifests define, the broker's
    // credentials from the one the Cluster Operator creates for the
    // RabbitmqCluster (checked in the rabbitmq module).
    let operator_secret = default_user_secret(&objects);
    for (variable, entry) in &env {
        let secret = &entry["valueFrom"]["secretKeyRef"];
        let name = secret["name"].as_str();
        if secret.is_null() || name == Some(operator_secret.as_str()) {
            continue;
        }
        let object = k8s_object(&objects, "Secret", name.expect("secretKeyRef.name"));
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
