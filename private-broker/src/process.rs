//! Child processes with a bound on their time, signals by pid, and the
//! watchdog that stops a node when the process that started it dies.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

/// Runs `command` with its output appended to `log`; `None` when it did not
/// finish within `timeout` (it is then killed).
pub(crate) fn run_bounded(command: &mut Command, timeout: Duration, log: &Path) -> std::io::Result<Option<ExitStatus>> {
    let out = File::options().create(true).append(true).open(log)?;
    let mut child = command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()?;
    let exited = wait_exit(&mut child, timeout)?;
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(exited)
}

/// Waits up to `timeout` for `child` to exit.
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        sleep(POLL);
    }
}

/// Sends `signal` (e.g. "TERM") to `pid` with kill(1).
pub(crate) fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").args(["-s", signal, &pid.to_string()]).stderr(Stdio::null()).status();
}

/// Whether a process `pid` exists (a zombie counts until it is reaped).
pub(crate) fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Waits up to `timeout` for `pid`, not a child of ours, to be gone.
pub(crate) fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL);
    }
    true
}

/// Whether process `pid` has `entry` (`NAME=value`) in its environment:
/// tells a leftover node of ours from a process that reused its pid.
pub(crate) fn has_env(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|environ| environ.split(|&b| b == 0).any(|item| item == entry.as_bytes()))
}

/// The last non-empty line of the file at `path`, for an error message.
pub(crate) fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().map(str::trim).rfind(|line| !line.is_empty()).map(str::to_owned)
}

/// A small shell process that sends SIGTERM to a pid (the server script,
/// which then stops the node cleanly) as soon as the pipe from us closes
/// without the word "done": when we exit without stopping the node,
/// whether by a panic, Ctrl-C or SIGKILL. In its own process group, so a
/// Ctrl-C at the terminal does not take it down with us.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    pipe: Option<ChildStdin>,
}

const WATCHDOG: &str = r#"read -r word; [ "$word" = done ] || kill -s TERM "$1" 2>/dev/null"#;

impl Watchdog {
    /// Starts watching over `pid`.
    pub fn start(pid: u32) -> std::io::Result<Watchdog> {
        let mut child = Command::new("/bin/sh")
            .args(["-c", WATCHDOG, "private-broker-watchdog", &pid.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Watchdog { child, pipe })
    }

    /// Stands down: the pid is being stopped by other means.
    pub fn dismiss(mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"done\n");
        }
        let _ = wait_exit(&mut self.child, Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().unwrap()
    }

    #[test]
    fn a_command_that_overruns_is_killed_and_one_that_finishes_reports_its_status() {
        let log = std::env::temp_dir().join(format!("private-broker-bounded-{}.log", std::process::id()));
        let started = Instant::now();
        assert_eq!(run_bounded(Command::new("sleep").arg("30"), Duration::from_millis(200), &log).unwrap(), None);
        assert!(started.elapsed() < Duration::from_secs(10));
        let status = run_bounded(
            Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
            Duration::from_secs(10),
            &log,
        );
        assert_eq!(status.unwrap().unwrap().code(), Some(3));
        assert_eq!(last_line(&log).as_deref(), Some("two"));
        std::fs::remove_file(log).unwrap();
    }

    #[test]
    fn a_dropped_pipe_makes_the_watchdog_terminate_the_pid() {
        let mut watched = sleeper();
        let watchdog = Watchdog::start(watched.id()).unwrap();
        drop(watchdog); // as when our process dies: the pipe closes without "done"
        let status = wait_exit(&mut watched, Duration::from_secs(10)).unwrap().expect("terminated");
        assert!(!status.success());
    }

    #[test]
    fn a_dismissed_watchdog_leaves_the_pid_alone() {
        let mut watched = sleeper();
        Watchdog::start(watched.id()).unwrap().dismiss();
        assert_eq!(wait_exit(&mut watched, Duration::from_millis(300)).unwrap(), None, "still running");
        watched.kill().unwrap();
        watched.wait().unwrap();
    }

    #[test]
    fn signals_and_liveness_by_pid() {
        let mut child = Command::new("sleep").arg("30").env("PRIVATE_BROKER_MARK", "yes").spawn().unwrap();
        let pid = child.id();
        assert!(alive(pid));
        // Right after spawn, /proc may still show an empty environment for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !has_env(pid, "PRIVATE_BROKER_MARK=yes") && Instant::now() < deadline {
            sleep(POLL);
        }
        assert!(has_env(pid, "PRIVATE_BROKER_MARK=yes"));
        assert!(!has_env(pid, "PRIVATE_BROKER_MARK=no"));
        signal(pid, "TERM");
        child.wait().unwrap();
        assert!(!alive(pid) && wait_gone(pid, Duration::from_millis(10)));
    }
}
