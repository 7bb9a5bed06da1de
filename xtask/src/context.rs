//! Where the repository and the target dir are, which cargo runs, and how
//! a step is run and reported.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::error::Error;

/// What every task needs to know about its surroundings.
pub struct Context {
    /// The repository root (the workspace).
    pub repo: PathBuf,
    /// The cargo target dir: `$CARGO_TARGET_DIR`, or `<repo>/target`.
    pub target: PathBuf,
    /// The cargo that runs us (`$CARGO`), or `cargo`.
    cargo: OsString,
}

impl Context {
    /// From this crate's place in the repository and the environment.
    pub fn from_env() -> Context {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is in the repository").to_path_buf();
        let cwd = std::env::current_dir().unwrap_or_else(|_| repo.clone());
        let target = target_dir(&repo, std::env::var_os("CARGO_TARGET_DIR"), &cwd);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Context { repo, target, cargo }
    }

    /// Where xtask keeps what it provides (the venv, the private broker's data).
    pub fn own_dir(&self) -> PathBuf {
        self.target.join("xtask")
    }

    /// `cargo <args>` in the repository, without the variables `cargo run`
    /// set for xtask itself (they would describe xtask to the tests).
    pub fn cargo(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.cargo);
        command.args(args).current_dir(&self.repo);
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(set_by_cargo_run) {
                command.env_remove(name);
            }
        }
        command
    }
}

/// `$CARGO_TARGET_DIR` (relative to where cargo was run), or `<repo>/target`.
pub fn target_dir(repo: &Path, from_env: Option<OsString>, cwd: &Path) -> PathBuf {
    match from_env {
        Some(dir) if !dir.is_empty() => cwd.join(dir),
        _ => repo.join("target"),
    }
}

/// Whether `cargo run` sets `name` for the program it runs (and cargo
/// sets it afresh for whatever it builds or tests).
pub fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
        )
}

/// Prints `xtask: <line>`: every step says what it does in one line.
pub fn say(line: impl AsRef<str>) {
    println!("xtask: {}", line.as_ref());
}

/// Runs `command`, shown as `shown`, to its end; its status.
pub fn run(command: &mut Command, shown: &str) -> Result<ExitStatus, Error> {
    command.status().map_err(|source| Error::Spawn { command: shown.to_owned(), source })
}

/// Runs a provisioning `command` that must succeed.
pub fn run_ok(command: &mut Command, shown: &str) -> Result<(), Error> {
    let status = run(command, shown)?;
    if status.success() { Ok(()) } else { Err(Error::Failed { command: shown.to_owned(), status: status.to_string() }) }
}

/// The exit code that reports `status`: its own, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + (signal & 0x7f)).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Whether `program` is an executable file in one of `PATH`'s dirs.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
}

fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    file.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `first` followed by the current `PATH`.
pub fn path_with(first: &Path) -> Result<OsString, Error> {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(first.to_path_buf()).chain(std::env::split_paths(&current));
    std::env::join_paths(dirs).map_err(|e| Error::Io {
        what: format!("putting {} on PATH", first.display()),
        source: std::io::Error::other(e),
    })
}

/// Whether we run as root, by `id -u`.
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `shown` for messages: the command line of `program` and `args`.
pub fn shown(program: &str, args: &[impl AsRef<OsStr>]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_dir_comes_from_the_environment_relative_to_where_cargo_ran() {
        let (repo, cwd) = (Path::new("/repo"), Path::new("/work"));
        assert_eq!(target_dir(repo, None, cwd), Path::new("/repo/target"));
        assert_eq!(target_dir(repo, Some("".into()), cwd), Path::new("/repo/target"));
        assert_eq!(target_dir(repo, Some("/cache/t".into()), cwd), Path::new("/cache/t"));
        assert_eq!(target_dir(repo, Some("t".into()), cwd), Path::new("/work/t"));
    }

    #[test]
    fn what_cargo_run_sets_for_xtask_is_dropped_and_cargo_settings_are_kept() {
        for dropped in
            ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "CARGO_PKG_VERSION", "CARGO_BIN_NAME", "CARGO_CRATE_NAME"]
        {
            assert!(set_by_cargo_run(dropped), "{dropped}");
        }
        for kept in ["CARGO", "CARGO_TARGET_DIR", "CARGO_HOME", "CARGO_BUILD_JOBS", "CARGO_TERM_COLOR", "PATH"] {
            assert!(!set_by_cargo_run(kept), "{kept}");
        }
    }

    #[test]
    fn exit_codes_pass_on_the_status_or_the_signal() {
        let status = |script: &str| Command::new("sh").args(["-c", script]).status().unwrap();
        assert_eq!(exit_code(status("exit 0")), 0);
        assert_eq!(exit_code(status("exit 101")), 101);
        assert_eq!(exit_code(status("kill -s TERM $$")), 128 + 15);
    }

    #[test]
    fn the_first_dir_goes_before_the_path() {
        let path = path_with(Path::new("/venv/bin")).unwrap();
        assert!(path.to_string_lossy().starts_with("/venv/bin:"), "{path:?}");
        assert!(on_path("sh") && !on_path("no-such-program-xtask"));
    }

    #[test]
    fn shown_commands_read_like_a_shell_line() {
        assert_eq!(shown("apt-get", &["install", "-y", "clang"]), "apt-get install -y clang");
    }
}
