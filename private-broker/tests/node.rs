//! A real private node, where RabbitMQ is installed: it starts beside
//! whatever else runs (the system's node on 5672 is not touched), answers
//! AMQP on its own port, is reachable by `rabbitmqctl`, and is gone after
//! `stop` and after drop. Where RabbitMQ is not installed the tests say so
//! and pass.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use private_broker::{Error, PrivateNode, answers, installed};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

fn skip() -> bool {
    if !installed() {
        eprintln!("rabbitmq-server is not installed: no node to start");
    }
    !installed()
}

fn up(port: u16) -> bool {
    answers("127.0.0.1", port, Duration::from_secs(2))
}

#[test]
fn a_node_starts_on_its_own_port_and_stops() {
    if skip() {
        return;
    }
    let port = free_port();
    let name = format!("private-broker-test-{}@localhost", std::process::id());
    let node = PrivateNode::start(&dir("stop"), &name, port).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((node.node_name(), node.amqp_port()), (name.as_str(), port));
    assert!(up(port), "answers AMQP on 127.0.0.1:{port}");
    // The machine's own `rabbitmqctl`, as the tests call it, reaches the node by name.
    let ctl = Command::new("rabbitmqctl").args(["-n", &name, "-q", "list_vhosts"]).output().expect("rabbitmqctl");
    assert!(ctl.status.success(), "rabbitmqctl -n {name}: {}", String::from_utf8_lossy(&ctl.stderr));
    node.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(!up(port), "nothing answers after stop");
    TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
    std::fs::remove_dir_all(dir("stop")).unwrap();
}

#[test]
fn a_dropped_node_is_stopped_and_a_taken_port_is_refused() {
    if skip() {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let name = format!("private-broker-drop-{}@localhost", std::process::id());
    match PrivateNode::start(&dir("taken"), &name, taken_port) {
        Err(Error::PortInUse(port)) => assert_eq!(port, taken_port),
        other => panic!("expected PortInUse, got {other:?}"),
    }
    let port = free_port();
    let node = PrivateNode::start(&dir("drop"), &name, port).unwrap_or_else(|e| panic!("{e}"));
    assert!(up(port));
    drop(node);
    assert!(!up(port), "nothing answers after drop");
    for used in ["taken", "drop"] {
        std::fs::remove_dir_all(dir(used)).unwrap();
    }
}

#[test]
fn a_node_left_behind_in_the_same_dir_is_stopped_before_a_new_one_starts() {
    if skip() {
        return;
    }
    let name = format!("private-broker-again-{}@localhost", std::process::id());
    let (first_port, second_port) = (free_port(), free_port());
    let first = PrivateNode::start(&dir("again"), &name, first_port).unwrap_or_else(|e| panic!("{e}"));
    // As if its run had been killed: never stopped, its watchdog still waiting.
    std::mem::forget(first);
    assert!(up(first_port));
    // Same name and dir: it could not boot beside the leftover.
    let second = PrivateNode::start(&dir("again"), &name, second_port).unwrap_or_else(|e| panic!("{e}"));
    assert!(!up(first_port), "the leftover is gone");
    assert!(up(second_port));
    second.stop().unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_dir_all(dir("again")).unwrap();
}
