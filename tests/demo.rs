//! `keyseal demo` as a user runs it: the built binary, against real
//! RabbitMQ (a vhost of its own), must tell the whole story and exit 0
//! within two minutes; without a broker it must say how to start one.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::Vhost;
use keyseal::broker::publish::{Publisher, synthetic};

/// The demo promises to end within two minutes; past this it is killed.
const KILL_AFTER: Duration = Duration::from_secs(150);

/// `keyseal demo` with `args`, as a user runs it.
async fn demo(args: &[&str]) -> (Output, Duration) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyseal"));
    command.arg("demo").args(args);
    run_demo(command).await
}

/// Runs `command` (a demo) with the environment a newcomer has, collects
/// its output and how long it took; kills it past [`KILL_AFTER`].
async fn run_demo(mut command: tokio::process::Command) -> (Output, Duration) {
    let started = Instant::now();
    let child = command
        .env_remove("KEYSEAL_AMQP_URL")
        .env_remove("KEYSEAL_LOG")
        .env_remove("KEYSEAL_ADMIN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning keyseal demo");
    let output = tokio::time::timeout(KILL_AFTER, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("keyseal demo still running after {KILL_AFTER:?}; killed"))
        .expect("keyseal demo output");
    (output, started.elapsed())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_tells_the_whole_story_and_exits_0_within_two_minutes() {
    let vhost = Vhost::new("demo");
    let (output, took) = demo(&["--amqp-url", &vhost.amqp_url(), "--http-addr", "127.0.0.1:0"]).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    println!("{stdout}");
    assert!(output.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    assert!(took < Duration::from_secs(120), "took {took:?}");

    // The steps, in the order the story tells them.
    let steps = [
        "status page  http://127.0.0.1:",
        "metrics      http://127.0.0.1:",
        "1. published 50 records",
        "2. the customer created RSA-2048 key https://127.0.0.1:",
        "BYOK enabled for acme-",
        "3. sealed after 3s",
        "4. the customer rotated the key",
        "KeyRolled: acme-",
        "5. the key broke",
        "degraded: key_disabled; locked down at ",
        "20 more records for acme-",
        "locked down (TenantLockedDown)",
        ": 423 tenant_locked_down: ",
        "a sweep holds back 20 due records",
        "6. the customer re-enabled version",
        "restored (TenantRestored)",
        "backlog sealed: acme-",
        "7. BYOK disabled for acme-",
        "8. scrub",
        "final status:",
        "worker and emulator stopped, temporary data removed",
    ];
    let mut from = 0;
    for step in steps {
        let at = stdout[from..].find(step).unwrap_or_else(|| panic!("{step:?} missing or out of order in:\n{stdout}"));
        from += at + step.len();
    }
    assert!(stdout.contains("0 on an older version"), "{stdout}");
    assert!(stdout.contains("120 records decrypted and verified, 0 corrupt"), "{stdout}");

    // The final table: both tenants active on managed keys, everything sealed.
    let table: Vec<&str> = stdout.lines().skip_while(|l| !l.contains("final status:")).skip(1).take(3).collect();
    assert!(table[0].contains("tenant") && table[0].contains("key health"), "{stdout}");
    let row = |prefix: &str| {
        let line = table.iter().find(|l| l.trim_start().starts_with(prefix)).unwrap_or_else(|| panic!("{stdout}"));
        line.split_whitespace().collect::<Vec<_>>()
    };
    assert_eq!(row("acme-")[1..], ["active", "managed", "-", "0", "70", "healthy"], "{stdout}");
    assert_eq!(row("globex-")[1..], ["active", "managed", "-", "0", "50", "healthy"], "{stdout}");
    assert!(!stdout.contains("guest:guest@"), "passwords are masked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rabbitmq_the_demo_says_how_to_start_it_and_fails() {
    let (output, took) =
        demo(&["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f", "--http-addr", "127.0.0.1:0"]).await;
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("RabbitMQ is not reachable at amqp://guest:***@127.0.0.1:1/%2f"), "{said}");
    assert!(said.contains("rabbitmq-server -detached"), "{said}");
    assert!(said.contains("docker compose up -d rabbitmq"), "{said}");
    assert!(!said.contains("guest:guest@"), "the password is masked: {said}");
    assert!(took < Duration::from_secs(30), "fails fast: {took:?}");
}

/// `keyseal demo` with no `--amqp-url`, in a network namespace of its own
/// where nothing answers at 127.0.0.1:5672 (a newcomer's machine with
/// RabbitMQ installed but not started).
async fn demo_without_a_local_broker() -> (Output, Duration) {
    let script = r#"/usr/sbin/ip link set lo up && exec "$0" demo --http-addr 127.0.0.1:0"#;
    let mut command = tokio::process::Command::new("unshare");
    command.args(["-n", "sh", "-c", script, env!("CARGO_BIN_EXE_keyseal")]);
    run_demo(command).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_broker_at_the_default_url_the_demo_starts_a_private_node_and_stops_it() {
    if !private_broker::installed() {
        panic!("rabbitmq-server is not installed: `cargo xtask test` installs it");
    }
    let (output, _) = demo_without_a_local_broker().await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("no RabbitMQ answers at 127.0.0.1:5672: starting a private node"), "{stdout}");
    let node = stdout
        .lines()
        .find_map(|line| line.split("private RabbitMQ node ").nth(1)?.split_whitespace().next())
        .expect("the demo names its node")
        .to_owned();
    assert!(node.starts_with("keyseal-demo-") && node.ends_with("@localhost"), "{node}");
    assert!(stdout.contains(&format!("private RabbitMQ node {node} stopped")), "{stdout}");
    assert!(stdout.contains("7. BYOK disabled for acme-"), "the whole story ran on the private node: {stdout}");
    let left = std::process::Command::new("pgrep").args(["-f", &format!("beam.*{node}")]).output().unwrap();
    assert!(left.stdout.is_empty(), "the node's VM is gone: {}", text(&left.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_refuses_a_vhost_where_records_wait_for_another_worker() {
    let vhost = Vhost::new("demo-busy");
    let publisher = Publisher::connect(&vhost.amqp_url()).await.expect("publisher connects");
    let confirmed = publisher.publish_all(&synthetic("someone", "r-", 3, 16, 0), 10).await.expect("publish");
    assert!(confirmed.iter().all(|c| *c));

    let (output, _) = demo(&["--amqp-url", &vhost.amqp_url(), "--http-addr", "127.0.0.1:0"]).await;
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("has 3 waiting messages and 0 consumers"), "{said}");
    assert!(said.contains("rabbitmqctl add_vhost keyseal-demo"), "{said}");
}

#[test]
fn keyseal_help_lists_each_subcommand_on_one_line() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyseal")).arg("--help").output().unwrap();
    let help = text(&output.stdout);
    let commands: Vec<&str> =
        help.lines().skip_while(|line| *line != "Commands:").skip(1).take_while(|line| !line.is_empty()).collect();
    let names: Vec<&str> = commands.iter().filter_map(|line| line.split_whitespace().next()).collect();
    for name in ["run", "publish", "tenant", "records", "sweep", "shards", "demo", "keyvault-emulator"] {
        assert!(names.contains(&name), "{name} missing from:\n{help}");
    }
    for line in &commands {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(line.starts_with("  ") && words.len() >= 2, "one line per subcommand, name then summary: {line:?}");
        assert!(line.chars().count() <= 100, "a summary fits a terminal line: {line:?}");
    }
}
