//! A RabbitMQ node of one's own, started on demand and stopped again.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::layout::{self, Layout, Scripts};
use crate::process::{self, Watchdog};
use crate::{Error, answers};

/// How long a node may take to boot: about 5 to 15 s, more on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `rabbitmqctl stop` may take, and then the VM to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a leftover or a stubborn VM gets after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(15);

/// A RabbitMQ node with its own node name, AMQP port (on 127.0.0.1),
/// Erlang distribution port and data directory, beside any other node on
/// the machine (the system's `rabbit@localhost` is never touched). It runs
/// until [`PrivateNode::stop`] or drop, and is stopped too if the process
/// that started it dies first.
///
/// Run as root on Debian, the node runs as root but shares the `rabbitmq`
/// user's Erlang cookie, so a plain `rabbitmqctl -n NODE ...` (or with
/// `RABBITMQ_NODENAME=NODE`) reaches it the way it reaches the system node.
#[derive(Debug)]
pub struct PrivateNode {
    node_name: String,
    amqp_port: u16,
    layout: Layout,
    ctl: PathBuf,
    ctl_env: Vec<(&'static str, OsString)>,
    /// The server script: it proxies SIGTERM to the Erlang VM as a clean stop.
    server: Child,
    watchdog: Option<Watchdog>,
    stopped: bool,
}

impl PrivateNode {
    /// Starts node `node_name` (e.g. `keyseal-private@localhost`) with
    /// AMQP on `127.0.0.1:amqp_port` and every file under `dir` (created if
    /// needed; its database and logs are wiped first, a leftover node of the
    /// same `dir` is stopped), and returns once it accepts AMQP connections
    /// and `rabbitmqctl` reaches it. The default user `guest`/`guest` may
    /// connect from localhost, on vhost `/`.
    pub fn start(dir: &Path, node_name: &str, amqp_port: u16) -> Result<PrivateNode, Error> {
        let scripts = Scripts::find().ok_or(Error::NotInstalled)?;
        let layout = Layout::new(dir)?;
        std::fs::create_dir_all(layout.dir()).map_err(Error::io(format!("creating {}", layout.dir().display())))?;
        stop_leftover(&layout);
        if std::net::TcpListener::bind(("127.0.0.1", amqp_port)).is_err() {
            return Err(Error::PortInUse(amqp_port));
        }
        layout.prepare()?;
        let dist_port = layout::free_port()?;
        let (home, cookie_owner) = layout::cookie_home(
            layout::current_uid(),
            layout::rabbitmq_account(),
            std::env::var_os("HOME").map(PathBuf::from),
            layout.dir(),
        );
        if let Some(owner) = &cookie_owner {
            layout::ensure_cookie(&home, owner)?;
        }
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let console_log = layout.console_log();
        let console = File::create(&console_log).map_err(Error::io(format!("creating {}", console_log.display())))?;
        let console_err = console.try_clone().map_err(Error::io("duplicating a file handle"))?;
        let server = Command::new(&scripts.server)
            .env_clear()
            .envs(layout::node_env(&layout, node_name, amqp_port, dist_port, &home, &path))
            .current_dir(layout.dir())
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            // Out of the terminal's process group: Ctrl-C reaches us, and the
            // watchdog then stops the node cleanly.
            .process_group(0)
            .spawn()
            .map_err(Error::io(format!("running {}", scripts.server.display())))?;
        let watchdog = Watchdog::start(server.id()).ok();
        let mut node = PrivateNode {
            node_name: node_name.to_owned(),
            amqp_port,
            ctl: scripts.ctl,
            ctl_env: layout::ctl_env(&home, &path),
            layout,
            server,
            watchdog,
            stopped: false,
        };
        node.await_ready(START_TIMEOUT)?;
        Ok(node)
    }

    /// The node's name, for `rabbitmqctl -n` or `RABBITMQ_NODENAME`.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The AMQP port it listens on, on 127.0.0.1.
    pub fn amqp_port(&self) -> u16 {
        self.amqp_port
    }

    /// Stops the node and waits until its VM is gone. An error says that
    /// the clean stop failed; the VM was then killed, so it is gone anyway.
    pub fn stop(mut self) -> Result<(), Error> {
        self.shutdown()
    }

    /// Until the node answers AMQP and `rabbitmqctl await_startup` succeeds.
    fn await_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let log = self.layout.console_log();
        loop {
            if let Some(status) = self.server.try_wait().map_err(Error::io("waiting for rabbitmq-server"))? {
                return Err(Error::Exited { node: self.node_name.clone(), status: status.to_string(), log });
            }
            if answers("127.0.0.1", self.amqp_port, Duration::from_secs(2)) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout { node: self.node_name.clone(), secs: timeout.as_secs(), log });
            }
            sleep(Duration::from_millis(200));
        }
        // The tests' own rabbitmqctl calls go the same way.
        self.ctl(&["await_startup"], deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(30)))
    }

    /// `rabbitmqctl -n NODE args`, bounded by `timeout`.
    fn ctl(&self, args: &[&str], timeout: Duration) -> Result<(), Error> {
        let command = format!("rabbitmqctl -n {} {}", self.node_name, args.join(" "));
        let log = self.layout.ctl_log();
        let mut ctl = Command::new(&self.ctl);
        ctl.env_clear().envs(self.ctl_env.iter().cloned()).current_dir("/").arg("-n").arg(&self.node_name).args(args);
        match process::run_bounded(&mut ctl, timeout, &log) {
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(Some(status)) => {
                let said = process::last_line(&log).unwrap_or_default();
                Err(Error::Control { command, detail: format!("{status}: {said} (all of it in {})", log.display()) })
            }
            Ok(None) => Err(Error::Control { command, detail: format!("no answer within {} s", timeout.as_secs()) }),
            Err(e) => Err(Error::Control { command, detail: format!("cannot run {}: {e}", self.ctl.display()) }),
        }
    }

    /// Stops the node once: `rabbitmqctl stop`, then SIGTERM to the server
    /// script, then SIGKILL to the VM, each bounded.
    fn shutdown(&mut self) -> Result<(), Error> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.dismiss();
        }
        if matches!(self.server.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        let vm = read_pid(&self.layout.pid_file());
        let stopped = self.ctl(&["stop"], STOP_TIMEOUT);
        if let Ok(Some(_)) = process::wait_exit(&mut self.server, STOP_TIMEOUT) {
            return stopped;
        }
        process::signal(self.server.id(), "TERM");
        if let Ok(Some(_)) = process::wait_exit(&mut self.server, TERM_GRACE) {
            return stopped;
        }
        if let Some(vm) = vm {
            process::signal(vm, "KILL");
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
        stopped.and(Err(Error::Control {
            command: format!("rabbitmqctl -n {} stop", self.node_name),
            detail: "the node did not stop; its VM was killed".into(),
        }))
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Stops a node of this `dir` that a killed run left behind: its pid file
/// names a VM whose environment points at this dir's database.
fn stop_leftover(layout: &Layout) {
    let Some(pid) = read_pid(&layout.pid_file()) else { return };
    let mut mark = OsString::from("RABBITMQ_MNESIA_BASE=");
    mark.push(layout.mnesia());
    if process::has_env(pid, &mark.to_string_lossy()) {
        process::signal(pid, "TERM");
        if !process::wait_gone(pid, TERM_GRACE) {
            process::signal(pid, "KILL");
            process::wait_gone(pid, TERM_GRACE);
        }
    }
}
