//! The Python packages the tests use, in a virtual environment under the
//! target dir (never the system interpreter), installed again only when
//! the requirements change.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::context::{run_ok, say};
use crate::error::Error;

/// The requirements, relative to the repository.
pub const REQUIREMENTS: &str = "tests/python/requirements.txt";
/// In the venv: the digest of the requirements last installed.
const STAMP: &str = "xtask-requirements.stamp";

/// A virtual environment at a path.
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    /// The venv at `dir` (which may not exist yet).
    pub fn at(dir: PathBuf) -> Venv {
        Venv { dir }
    }

    /// Its `bin` dir, which goes first on the tests' `PATH` (they run `python3`).
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    fn works(&self) -> bool {
        self.bin().join("python3").exists() && self.bin().join("pip").exists()
    }

    /// Whether the venv works, creating it if needed: on Debian this fails
    /// without python3-venv (no ensurepip), so it is that package's check.
    pub fn ensure(&self) -> bool {
        if self.works() {
            return true;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let created = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if created && self.works() {
            say(format!("created a Python virtual environment in {}", self.dir.display()));
            return true;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        false
    }

    /// Installs `requirements` (a file of the repository `repo`) unless the
    /// same requirements were installed last time.
    pub fn install(&self, repo: &Path, requirements: &str) -> Result<(), Error> {
        let file = repo.join(requirements);
        let digest = requirements_digest(&file)?;
        let stamp = self.dir.join(STAMP);
        if up_to_date(std::fs::read_to_string(&stamp).ok().as_deref(), digest) {
            say(format!("Python packages of {requirements} are installed in {}", self.dir.display()));
            return Ok(());
        }
        say(format!("installing the Python packages of {requirements} into {}", self.dir.display()));
        let python = self.bin().join("python3");
        let mut pip = Command::new(&python);
        pip.args(["-m", "pip", "install", "--quiet", "-r"]).arg(&file);
        run_ok(&mut pip, &format!("{} -m pip install --quiet -r {requirements}", python.display()))?;
        std::fs::write(&stamp, stamp_text(digest)).map_err(Error::io(format!("writing {}", stamp.display())))
    }
}

/// A digest of `file` and every requirements file it includes (`-r`), by
/// their contents: the same requirements in another checkout match.
pub fn requirements_digest(file: &Path) -> Result<u64, Error> {
    let mut hash = Fnv::new();
    let mut pending = vec![file.to_path_buf()];
    let mut seen = Vec::new();
    while let Some(file) = pending.pop() {
        let real = std::fs::canonicalize(&file).map_err(Error::io(format!("reading {}", file.display())))?;
        if seen.contains(&real) {
            continue;
        }
        let text = std::fs::read_to_string(&real).map_err(Error::io(format!("reading {}", file.display())))?;
        hash.add(text.as_bytes());
        hash.add(&[0]);
        let dir = real.parent().unwrap_or(Path::new("/"));
        pending.extend(included(&text).into_iter().map(|name| dir.join(name)));
        seen.push(real);
    }
    Ok(hash.0)
}

/// The files a requirements text includes with `-r FILE` or `--requirement FILE`.
pub fn included(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(" #").next().unwrap_or("").trim();
            let rest = line.strip_prefix("--requirement").or_else(|| line.strip_prefix("-r"))?;
            let name = rest.trim_start_matches('=').trim();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The stamp file's text for `digest`.
pub fn stamp_text(digest: u64) -> String {
    format!("{digest:016x}\n")
}

/// Whether a stamp (the file's text, if any) records `digest`.
pub fn up_to_date(stamp: Option<&str>, digest: u64) -> bool {
    stamp.is_some_and(|text| text.trim() == stamp_text(digest).trim())
}

/// FNV-1a, 64 bits: stable across Rust versions, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fnv(bytes: &[u8]) -> u64 {
        let mut hash = Fnv::new();
        hash.add(bytes);
        hash.0
    }

    #[test]
    fn fnv_1a_matches_its_reference_values() {
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn included_files_are_found_in_either_spelling() {
        let text = "azure-identity\n-r sdk_suite/requirements.txt\n--requirement=other.txt  # why\n-rthird.txt\n# -r no.txt\n-r\nrequests>=2\n";
        assert_eq!(included(text), ["sdk_suite/requirements.txt", "other.txt", "third.txt"]);
    }

    #[test]
    fn the_stamp_matches_only_the_same_digest() {
        assert!(up_to_date(Some(&stamp_text(42)), 42));
        assert!(up_to_date(Some("000000000000002a"), 42));
        assert!(!up_to_date(Some(&stamp_text(43)), 42));
        assert!(!up_to_date(Some(""), 42));
        assert!(!up_to_date(None, 42));
    }

    #[test]
    fn the_digest_changes_with_an_included_file_and_survives_a_cycle() {
        let dir = std::env::temp_dir().join(format!("xtask-requirements-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("requirements.txt"), "a==1\n-r sub/more.txt\n").unwrap();
        std::fs::write(dir.join("sub/more.txt"), "b==1\n-r ../requirements.txt\n").unwrap();
        let first = requirements_digest(&dir.join("requirements.txt")).unwrap();
        assert_eq!(requirements_digest(&dir.join("requirements.txt")).unwrap(), first, "stable");
        std::fs::write(dir.join("sub/more.txt"), "b==2\n-r ../requirements.txt\n").unwrap();
        assert_ne!(requirements_digest(&dir.join("requirements.txt")).unwrap(), first, "an included pin changed");
        std::fs::remove_file(dir.join("sub/more.txt")).unwrap();
        assert!(requirements_digest(&dir.join("requirements.txt")).is_err(), "a missing include is an error");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_repositorys_requirements_include_what_the_tests_import() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = std::fs::read_to_string(repo.join(REQUIREMENTS)).unwrap();
        for needed in ["azure-keyvault-keys", "azure-identity", "kubernetes-validate==1.37.0"] {
            assert!(text.lines().any(|line| line.trim() == needed), "{needed} in {REQUIREMENTS}");
        }
        assert_eq!(included(&text), ["sdk_suite/requirements.txt"]);
        requirements_digest(&repo.join(REQUIREMENTS)).unwrap();
    }
}
