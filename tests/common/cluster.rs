//! A three-node RabbitMQ cluster on this machine, beside the default node
//! the other tests use: nodes `ks1..3@localhost` on AMQP ports
//! [`BASE_PORT`]..+2, started by `tests/cluster/cluster.sh` (as the
//! `rabbitmq` user, so the nodes share its Erlang cookie) once per test
//! binary and torn down when the binary exits. Tests stop, start, kill and
//! restart its nodes; each works in a vhost of its own ([`ClusterVhost`]).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// AMQP port of node 1; nodes 2 and 3 listen on the next two, their
/// Erlang distribution ports are 10 above.
pub const BASE_PORT: u16 = 26_672;

/// The running cluster of this test binary.
pub struct Cluster {
    dir: PathBuf,
}

/// Serialises node operations: the script keeps its state in one file.
static OPERATIONS: Mutex<()> = Mutex::new(());
/// Where the cluster of this process lives, for the teardown at exit.
static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn teardown_at_exit() {
    if let Some(dir) = DIR.get() {
        let _ = Command::new(script()).arg("teardown").arg(dir).env("KS_QUIET", "1").output();
        let _ = std::fs::remove_file(dir.with_extension("state"));
    }
}

impl Cluster {
    /// The cluster, started on first use (about 15 s) and torn down when
    /// the test binary exits.
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("keyseal-cluster-{}", std::process::id()));
            let cluster = Cluster { dir: dir.clone() };
            // Leftovers of a run that was killed before its teardown.
            cluster.script(&["kill-all"]);
            cluster.script(&["start", dir.to_str().unwrap(), &BASE_PORT.to_string()]);
            DIR.set(dir).expect("one cluster per process");
            // SAFETY: registers a plain `extern "C"` function to run at exit.
            assert_eq!(unsafe { libc::atexit(teardown_at_exit) }, 0);
            cluster
        })
    }

    /// The AMQP port of node `n` (1 to 3).
    pub fn port(&self, n: u8) -> u16 {
        BASE_PORT + u16::from(n) - 1
    }

    /// The node (1 to 3) that listens on `port`.
    pub fn node_of_port(&self, port: u16) -> u8 {
        u8::try_from(port - BASE_PORT + 1).expect("a cluster port")
    }

    /// The AMQP URL of node `n` for `vhost`.
    pub fn url(&self, n: u8, vhost: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port(n))
    }

    /// The comma-separated list of all three nodes for `vhost`.
    pub fn urls(&self, vhost: &str) -> String {
        (1..=3).map(|n| self.url(n, vhost)).collect::<Vec<_>>().join(",")
    }

    /// `rabbitmqctl -n ks<n>@localhost <args>`; its output.
    pub fn ctl(&self, n: u8, args: &[&str]) -> String {
        let node = format!("ks{n}@localhost");
        let out = Command::new("rabbitmqctl").arg("-n").arg(&node).args(args).output().expect("rabbitmqctl");
        assert!(out.status.success(), "rabbitmqctl -n {node} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops node `n`'s RabbitMQ application: its clients get 320
    /// CONNECTION_FORCED, new connections are refused.
    pub fn stop_app(&self, n: u8) {
        self.script(&["stop-app", &n.to_string()]);
    }

    /// Starts node `n`'s application again.
    pub fn start_app(&self, n: u8) {
        self.script(&["start-app", &n.to_string()]);
    }

    /// Kills node `n`'s Erlang VM with SIGKILL: its clients see a TCP reset.
    pub fn kill(&self, n: u8) {
        self.script(&["kill", &n.to_string()]);
    }

    /// Starts node `n` again on its data dir; returns once it is back in
    /// the cluster.
    pub fn restart(&self, n: u8) {
        self.script(&["restart", &n.to_string()]);
    }

    fn script(&self, args: &[&str]) {
        let _one_at_a_time = OPERATIONS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let out = Command::new(script())
            .args(args)
            .env("KS_CLUSTER_DIR", &self.dir)
            .env("KS_STATE", self.dir.with_extension("state"))
            .env("KS_QUIET", "1")
            .output()
            .expect("running tests/cluster/cluster.sh");
        assert!(out.status.success(), "cluster.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/cluster.sh")
}

/// A throwaway vhost on the cluster, deleted on drop.
pub struct ClusterVhost {
    /// Its name.
    pub name: String,
}

impl ClusterVhost {
    /// A new vhost for test `test`, guest allowed everything.
    pub fn new(test: &str) -> Self {
        let cluster = Cluster::get();
        let name = format!("keyseal-cluster-{test}-{}", std::process::id());
        cluster.ctl(1, &["add_vhost", &name]);
        cluster.ctl(1, &["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self { name }
    }

    /// Every node of the cluster for this vhost (`--amqp-url`).
    pub fn urls(&self) -> String {
        Cluster::get().urls(&self.name)
    }

    /// Node `n` for this vhost.
    pub fn url(&self, n: u8) -> String {
        Cluster::get().url(n, &self.name)
    }

    /// The number of nodes holding each replicated queue of this vhost.
    pub fn members(&self) -> std::collections::BTreeMap<String, usize> {
        let args = ["list_queues", "-p", &self.name, "name", "members", "--formatter", "json"];
        let queues: Vec<serde_json::Value> = serde_json::from_str(&Cluster::get().ctl(1, &args)).expect("JSON");
        queues.iter().filter_map(|q| Some((q["name"].as_str()?.to_owned(), q["members"].as_array()?.len()))).collect()
    }
}

impl Drop for ClusterVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["-n", "ks1@localhost", "delete_vhost", &self.name]).output();
    }
}
