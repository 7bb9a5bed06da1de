//! The broker a task needs: the one that answers at the configured URL,
//! or a private node started on its port for the length of the run.

use std::path::Path;
use std::time::Duration;

use private_broker::{PrivateNode, answers, installed};

use crate::context::say;
use crate::error::Error;

/// The private node's name: not the system's `rabbit@localhost`.
pub const NODE_NAME: &str = "keyseal-xtask@localhost";
/// Where keyseal's tests and demo look when `KEYSEAL_AMQP_URL` is unset.
const DEFAULT: (&str, u16) = ("127.0.0.1", 5672);

/// The host and port of the broker: the first entry of `KEYSEAL_AMQP_URL`
/// (a comma-separated list of a cluster's nodes), or 127.0.0.1:5672.
pub fn configured(url: Option<&str>) -> Result<(String, u16), Error> {
    let Some(url) = url.map(str::trim).filter(|url| !url.is_empty()) else {
        return Ok((DEFAULT.0.to_owned(), DEFAULT.1));
    };
    let first = url.split(',').next().unwrap_or(url).trim();
    let (rest, default_port) = if let Some(rest) = first.strip_prefix("amqp://") {
        (rest, 5672)
    } else if let Some(rest) = first.strip_prefix("amqps://") {
        (rest, 5671)
    } else {
        return Err(Error::BadUrl(format!("`{first}` does not start with amqp:// or amqps://")));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host_port)| host_port);
    let bad = || Error::BadUrl(format!("no host and port in `{first}`"));
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None | Some("") => default_port,
        Some(port) => port.parse().map_err(|_| Error::BadUrl(format!("port `{port}` in `{first}` is not a number")))?,
    };
    Ok((host.to_owned(), port))
}

/// Whether `host` is this machine, where a private node can stand in.
pub fn is_local(host: &str) -> bool {
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// The broker the run uses: `None` when one answers at the configured
/// address, else a private node on its port (stopped when dropped), its
/// data under `own_dir`.
pub fn provide(own_dir: &Path) -> Result<Option<PrivateNode>, Error> {
    let (host, port) = configured(std::env::var("KEYSEAL_AMQP_URL").ok().as_deref())?;
    if answers(&host, port, Duration::from_secs(3)) {
        say(format!("RabbitMQ answers at {host}:{port}"));
        return Ok(None);
    }
    if !is_local(&host) {
        return Err(Error::RemoteBrokerDown { host, port });
    }
    if !installed() {
        return Err(Error::Broker(private_broker::Error::NotInstalled));
    }
    let dir = own_dir.join("rabbitmq");
    say(format!("no RabbitMQ answers at {host}:{port}; starting a private node (about 10 s)"));
    let node = PrivateNode::start(&dir, NODE_NAME, port)?;
    say(format!(
        "started a private RabbitMQ node {} on 127.0.0.1:{} (data in {}); it stops when this run ends",
        node.node_name(),
        node.amqp_port(),
        dir.display()
    ));
    Ok(Some(node))
}

/// Stops a private node the run started, and says so.
pub fn stop(node: Option<PrivateNode>) {
    if let Some(node) = node {
        let name = node.node_name().to_owned();
        match node.stop() {
            Ok(()) => say(format!("stopped the private RabbitMQ node {name}")),
            Err(e) => say(format!("stopping the private RabbitMQ node {name}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(url: &str) -> (String, u16) {
        configured(Some(url)).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn the_default_is_where_the_tests_look() {
        assert_eq!(configured(None).unwrap(), ("127.0.0.1".to_owned(), 5672));
        assert_eq!(configured(Some(" ")).unwrap(), ("127.0.0.1".to_owned(), 5672));
    }

    #[test]
    fn the_first_node_of_the_url_is_the_one_checked() {
        assert_eq!(at("amqp://guest:guest@127.0.0.1:5672/%2f"), ("127.0.0.1".into(), 5672));
        assert_eq!(at("amqp://u:p@h1:5673/v,amqp://u:p@h2:5674/v"), ("h1".into(), 5673));
        assert_eq!(at("amqp://localhost"), ("localhost".into(), 5672));
        assert_eq!(at("amqps://broker.example"), ("broker.example".into(), 5671));
        assert_eq!(at("amqp://u:p%40ss@host:1234?heartbeat=10"), ("host".into(), 1234));
        assert_eq!(at("amqp://[::1]:5680/v"), ("::1".into(), 5680));
        assert_eq!(at("amqp://[::1]/v"), ("::1".into(), 5672));
    }

    #[test]
    fn what_is_not_an_amqp_url_says_why() {
        for bad in ["http://h:1", "h:5672", "amqp://:5672", "amqp://h:port/v", "amqp://[::1/v"] {
            assert!(matches!(configured(Some(bad)), Err(Error::BadUrl(_))), "{bad}");
        }
    }

    #[test]
    fn only_this_machine_gets_a_private_node() {
        for local in ["127.0.0.1", "127.0.1.1", "localhost", "::1"] {
            assert!(is_local(local), "{local}");
        }
        for remote in ["10.0.0.1", "broker.example", "rabbitmq-1"] {
            assert!(!is_local(remote), "{remote}");
        }
    }
}
