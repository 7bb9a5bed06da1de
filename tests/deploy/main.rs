//! The deployment files checked against the code they deploy, without
//! Docker or a cluster: the files are parsed, the Kubernetes manifests
//! validated against the Kubernetes schemas (the PyPI tool
//! kubernetes-validate), and what they claim about keyseal (settings,
//! flags, metric names) is checked against the real `keyseal` binary and a
//! running worker.
//!
//! - [`compose`]: `docker-compose.yml`, the local stack.
//! - [`docker`]: the image, `Dockerfile` and `.dockerignore`.
//! - [`dashboards`]: the Grafana dashboard (`dashboards/keyseal.json`,
//!   `deploy/grafana/`) and Prometheus (`deploy/prometheus.yml`).
//! - [`k8s`]: the Kubernetes manifests, `deploy/k8s/*.yaml` (a directory:
//!   the manifests as a whole, and a module per manifest with its own story).
//! - [`files`]: reading and parsing for all of them (repository paths, YAML,
//!   the compose services, `keyseal --help`).

// The shared harness of the integration tests (a vhost per test, an
// in-process worker, the Key Vault emulator), for the dashboard test that
// runs a worker.
#[path = "../common/mod.rs"]
mod common;

mod compose;
mod dashboards;
mod docker;
mod files;
mod k8s;
