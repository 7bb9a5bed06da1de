//! The Debian packages a task needs: each checked the way the build or the
//! tests use it, installed when we are root, otherwise the exact command
//! that installs them.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::context::{is_root, on_path, run_ok, say};
use crate::error::Error;

/// A Debian package some task needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Package {
    /// The rocksdb crate compiles RocksDB's C++ with it.
    Clang,
    /// bindgen loads it to generate RocksDB's bindings.
    LibclangDev,
    /// The broker, and `rabbitmqctl` the tests call.
    RabbitmqServer,
    /// `tests/status_page.rs` loads the status page in headless Chromium.
    Chromium,
    /// The tests' Python packages go into a virtual environment.
    Python3Venv,
}

/// What the build needs.
pub const BUILD: &[Package] = &[Package::Clang, Package::LibclangDev];
/// What the demo needs: the build and a broker.
pub const DEMO: &[Package] = &[Package::Clang, Package::LibclangDev, Package::RabbitmqServer];
/// What the tests need.
pub const TEST: &[Package] =
    &[Package::Clang, Package::LibclangDev, Package::RabbitmqServer, Package::Chromium, Package::Python3Venv];

impl Package {
    /// Its Debian name.
    pub fn name(self) -> &'static str {
        match self {
            Package::Clang => "clang",
            Package::LibclangDev => "libclang-dev",
            Package::RabbitmqServer => "rabbitmq-server",
            Package::Chromium => "chromium",
            Package::Python3Venv => "python3-venv",
        }
    }

    /// Whether it is usable here. `venv_works` answers for python3-venv
    /// (creating the venv is the only sure check).
    fn present(self, venv_works: &mut dyn FnMut() -> bool) -> bool {
        match self {
            Package::Clang => on_path("clang"),
            Package::LibclangDev => has_libclang(Path::new("/usr/lib")),
            Package::RabbitmqServer => private_broker::installed(),
            Package::Chromium => on_path("chromium"),
            Package::Python3Venv => venv_works(),
        }
    }
}

/// Whether `<lib>/llvm-*/lib/libclang.so*` exists.
pub fn has_libclang(lib: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(lib) else { return false };
    entries.flatten().filter(|entry| entry.file_name().to_string_lossy().starts_with("llvm-")).any(|llvm| {
        std::fs::read_dir(llvm.path().join("lib")).is_ok_and(|files| {
            files.flatten().any(|file| file.file_name().to_string_lossy().starts_with("libclang.so"))
        })
    })
}

/// The command a user runs to install `missing`.
pub fn install_command(missing: &[&str]) -> String {
    format!("sudo apt-get update && sudo apt-get install -y {}", missing.join(" "))
}

/// Makes sure every one of `needed` is present: installs what is missing
/// when root (`apt-get update` first), else fails with the command to run.
pub fn provide(needed: &[Package], venv_works: &mut dyn FnMut() -> bool) -> Result<(), Error> {
    let missing: Vec<&'static str> =
        needed.iter().filter(|package| !package.present(venv_works)).map(|package| package.name()).collect();
    if missing.is_empty() {
        let names: Vec<&str> = needed.iter().map(|package| package.name()).collect();
        say(format!("Debian packages present: {}", names.join(" ")));
        return Ok(());
    }
    if !is_root() {
        return Err(Error::MissingPackages { command: install_command(&missing), packages: missing });
    }
    if !on_path("apt-get") {
        return Err(Error::NotInstalled {
            packages: missing,
            why: "there is no apt-get here; install them by hand".into(),
        });
    }
    say(format!("installing Debian packages: {}", missing.join(" ")));
    let apt = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null());
        command
    };
    run_ok(&mut apt(&["update", "-qq"]), "apt-get update -qq")?;
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(&missing);
    run_ok(&mut apt(&install), &format!("apt-get install -y -qq {}", missing.join(" ")))?;
    let still: Vec<&'static str> =
        needed.iter().filter(|package| !package.present(venv_works)).map(|package| package.name()).collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(Error::NotInstalled { packages: still, why: "still missing after apt-get install".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_command_is_one_line_to_paste() {
        assert_eq!(
            install_command(&["clang", "rabbitmq-server"]),
            "sudo apt-get update && sudo apt-get install -y clang rabbitmq-server"
        );
    }

    #[test]
    fn the_tests_need_more_than_the_demo_and_the_demo_more_than_the_build() {
        assert!(BUILD.iter().all(|package| DEMO.contains(package)));
        assert!(DEMO.iter().all(|package| TEST.contains(package)));
        assert!(!DEMO.contains(&Package::Python3Venv) && !DEMO.contains(&Package::Chromium));
        let names: Vec<&str> = TEST.iter().map(|package| package.name()).collect();
        assert_eq!(names, ["clang", "libclang-dev", "rabbitmq-server", "chromium", "python3-venv"]);
    }

    #[test]
    fn libclang_is_found_under_any_llvm_version() {
        let lib = std::env::temp_dir().join(format!("xtask-libclang-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&lib);
        std::fs::create_dir_all(lib.join("llvm-14/lib")).unwrap();
        std::fs::create_dir_all(lib.join("other/lib")).unwrap();
        std::fs::write(lib.join("other/lib/libclang.so"), "").unwrap();
        assert!(!has_libclang(&lib), "only under llvm-*");
        std::fs::write(lib.join("llvm-14/lib/libclang.so.1"), "").unwrap();
        assert!(has_libclang(&lib));
        assert!(!has_libclang(&lib.join("missing")));
        std::fs::remove_dir_all(lib).unwrap();
    }

    #[test]
    fn python3_venv_is_present_when_the_venv_works() {
        assert!(Package::Python3Venv.present(&mut || true));
        assert!(!Package::Python3Venv.present(&mut || false));
    }
}
