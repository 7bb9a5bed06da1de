//! The tasks: provide what each needs, then run it. A private broker is a
//! local value of the task, so it is stopped on every way out (an error, a
//! failing step, a panic; a killed run is covered by its watchdog).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::time::SystemTime;

use crate::apt;
use crate::args::Task;
use crate::broker;
use crate::context::{Context, exit_code, on_path, path_with, run, run_ok, say, shown};
use crate::error::Error;
use crate::python::{self, Venv};

/// Runs `task`; the exit code of its last step.
pub fn run_task(context: &Context, task: Task) -> Result<ExitCode, Error> {
    match task {
        Task::Test(extra) => test(context, &extra),
        Task::Demo(extra) => demo(context, &extra),
        Task::Lint => lint(context),
        Task::Help => Ok(ExitCode::SUCCESS),
    }
}

/// Packages, the venv and its Python packages, a broker, then the README's test command.
fn test(context: &Context, extra: &[String]) -> Result<ExitCode, Error> {
    let venv = Venv::at(context.own_dir().join("venv"));
    apt::provide(apt::TEST, &mut || venv.ensure())?;
    venv.install(&context.repo, python::REQUIREMENTS)?;
    let node = broker::provide(&context.own_dir())?;
    let mut args = vec!["test", "--release", "--locked"];
    args.extend(extra.iter().map(String::as_str));
    let mut cargo = context.cargo(&args);
    // The tests run `python3` (the venv's) and `rabbitmqctl` (which then reaches the private node).
    cargo.env("PATH", path_with(&venv.bin())?);
    if let Some(node) = &node {
        cargo.env("RABBITMQ_NODENAME", node.node_name());
    }
    let status = step(&mut cargo, &shown("cargo", &args))?;
    broker::stop(node);
    Ok(ExitCode::from(exit_code(status)))
}

/// Packages and a broker, then the narrated demo.
fn demo(context: &Context, extra: &[String]) -> Result<ExitCode, Error> {
    apt::provide(apt::DEMO, &mut || true)?;
    let node = broker::provide(&context.own_dir())?;
    let mut args = vec!["run", "--release", "--locked", "--bin", "keyseal", "--", "demo"];
    args.extend(extra.iter().map(String::as_str));
    let mut cargo = context.cargo(&args);
    if let Some(node) = &node {
        cargo.env("RABBITMQ_NODENAME", node.node_name());
    }
    let status = step(&mut cargo, &shown("cargo", &args))?;
    broker::stop(node);
    Ok(ExitCode::from(exit_code(status)))
}

/// Formatting, clippy, and the fuzz targets keep compiling (fuzz/README.md
/// runs them), as CI checks them; stops at the first that fails.
fn lint(context: &Context) -> Result<ExitCode, Error> {
    apt::provide(apt::BUILD, &mut || true)?;
    let checks: [&[&str]; 2] =
        [&["fmt", "--check"], &["clippy", "--release", "--locked", "--all-targets", "--", "-D", "warnings"]];
    for args in checks {
        let status = step(&mut context.cargo(args), &shown("cargo", args))?;
        if !status.success() {
            return Ok(ExitCode::from(exit_code(status)));
        }
    }
    if !on_path("cargo-fuzz") {
        say("installing cargo-fuzz");
        run_ok(&mut context.cargo(&["install", "cargo-fuzz", "--locked"]), "cargo install cargo-fuzz --locked")?;
    }
    // Link the RocksDB the release build compiled instead of compiling its C++ again.
    let builds = context.target.join("release/build");
    let rocksdb = newest_file_named(&builds, "librocksdb.a").ok_or(Error::NoRocksdb(builds))?;
    let lib_dir = rocksdb.parent().unwrap_or(Path::new("."));
    let fuzz_target = context.target.join("fuzz");
    let args = ["fuzz", "build", "--fuzz-dir", "fuzz", "--target-dir", &fuzz_target.to_string_lossy()];
    let mut fuzz = context.cargo(&args);
    fuzz.env("ROCKSDB_LIB_DIR", lib_dir).env("ROCKSDB_STATIC", "1").env("RUSTC_BOOTSTRAP", "1");
    let status = step(&mut fuzz, &format!("ROCKSDB_LIB_DIR={} {}", lib_dir.display(), shown("cargo", &args)))?;
    Ok(ExitCode::from(exit_code(status)))
}

/// Says and runs one step of a task.
fn step(command: &mut std::process::Command, shown: &str) -> Result<ExitStatus, Error> {
    say(shown);
    run(command, shown)
}

/// The most recently modified file called `name` anywhere under `dir`.
pub fn newest_file_named(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if entry.file_name() == name {
                let modified = entry.metadata().and_then(|meta| meta.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
                    newest = Some((modified, entry.path()));
                }
            }
        }
    }
    newest.map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_newest_library_is_found_at_any_depth() {
        let dir = std::env::temp_dir().join(format!("xtask-newest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (old, new) = (dir.join("a-1/out/lib"), dir.join("b-2/out/deeper/lib"));
        std::fs::create_dir_all(&old).unwrap();
        std::fs::create_dir_all(&new).unwrap();
        assert_eq!(newest_file_named(&dir, "librocksdb.a"), None);
        std::fs::write(old.join("librocksdb.a"), "old").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(new.join("librocksdb.a"), "new").unwrap();
        std::fs::write(new.join("other.a"), "").unwrap();
        assert_eq!(newest_file_named(&dir, "librocksdb.a"), Some(new.join("librocksdb.a")));
        assert_eq!(newest_file_named(&dir.join("missing"), "librocksdb.a"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
