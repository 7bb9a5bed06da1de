//! The managed root key's files, guarded: `root-keys/` is created 0700 and
//! is never a symlink; key files are 0600, are never opened through a
//! symlink, and are created exclusively, so an existing key is never
//! replaced and a planted link never redirects a read or a write.
//!
//! An existing directory that group or others may *write* is refused
//! (anyone who can write there can plant or swap a key). One they may only
//! read or list is tightened to 0700 with a warning: deployments created
//! before this guard have such a directory (0755 from the umask), its key
//! files are 0600 already, and refusing would stop them for a leak of file
//! names only.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use zeroize::Zeroizing;

use crate::crypto::CryptoError;

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> CryptoError + '_ {
    move |source| CryptoError::KeyFile { path: path.display().to_string(), source }
}

fn refusal(path: &Path, why: String) -> CryptoError {
    CryptoError::KeyFile { path: path.display().to_string(), source: std::io::Error::other(why) }
}

/// Creates `dir` with mode 0700 if it is missing, or checks an existing one:
/// a real directory (not a symlink), not writable by group or others.
pub fn secure_dir(dir: &Path) -> Result<(), CryptoError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent).map_err(file_error(parent))?;
            }
            return match fs::DirBuilder::new().mode(0o700).create(dir) {
                // Another worker starting on the same data dir made it
                // first: its directory is checked like any existing one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => secure_dir(dir),
                created => created.map_err(file_error(dir)),
            };
        }
        Err(e) => return Err(file_error(dir)(e)),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(refusal(dir, "is a symlink; keyseal keeps root keys only in a real directory".into()));
        }
        Ok(meta) if !meta.is_dir() => return Err(refusal(dir, "is not a directory".into())),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o022 != 0 {
                return Err(refusal(
                    dir,
                    format!("mode {mode:o} lets others replace root keys; check its files, then chmod 700 it"),
                ));
            }
            if mode & 0o077 != 0 {
                tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "root key directory tightened to 0700");
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(file_error(dir))?;
            }
        }
    }
    Ok(())
}

/// Reads a key file without following a symlink; refuses anything but a
/// regular file of mode 0600 (checked on the opened file, not the path).
pub fn read_key_file(path: &Path) -> Result<Zeroizing<String>, CryptoError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(|e| match e
        .raw_os_error()
    {
        Some(libc::ELOOP) => refusal(path, "is a symlink; keyseal reads root keys only from real files".into()),
        _ => file_error(path)(e),
    })?;
    let meta = file.metadata().map_err(file_error(path))?;
    if !meta.is_file() {
        return Err(refusal(path, "is not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refusal(path, format!("mode {mode:o} lets others read the key; chmod 600 it")));
    }
    let mut pem = Zeroizing::new(String::new());
    file.read_to_string(&mut pem).map_err(file_error(path))?;
    Ok(pem)
}

/// Writes a new key file crash-safely and exclusively: a fresh temp file
/// (0600, `O_EXCL`, `O_NOFOLLOW`), fsync, hard-linked to `path` (which
/// fails if `path` exists, so a key is never replaced), then the temp name
/// removed and the directory fsynced.
pub fn write_new_key_file(path: &Path, contents: &[u8]) -> Result<(), CryptoError> {
    use std::os::unix::fs::OpenOptionsExt;
    // One temp name per process, so workers starting together on one data
    // dir never write the same temp file; the first link wins and the
    // others read its key. A crash between create and link leaves a temp
    // file behind (never read as a key); removing a name never follows a
    // symlink.
    let tmp = path.with_extension(format!("pem.{}.tmp", std::process::id()));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(file_error(&tmp)(e)),
        _ => {}
    }
    {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(file_error(&tmp))?;
        file.write_all(contents).map_err(file_error(&tmp))?;
        file.sync_all().map_err(file_error(&tmp))?;
    }
    let linked = fs::hard_link(&tmp, path).map_err(file_error(path));
    fs::remove_file(&tmp).map_err(file_error(&tmp))?;
    linked?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(file_error(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn workers_starting_together_all_get_the_directory() {
        for _ in 0..50 {
            let base = tempfile::tempdir().unwrap();
            let dir = base.path().join("root-keys");
            let results: Vec<_> = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..4).map(|_| scope.spawn(|| secure_dir(&dir))).collect();
                racers.into_iter().map(|racer| racer.join().unwrap()).collect()
            });
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            assert_eq!(mode(&dir), 0o700);
        }
    }

    #[test]
    fn a_new_directory_is_private_and_a_shared_one_is_refused_or_tightened() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("root-keys");
        secure_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        secure_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "read access of others is taken away");

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let error = secure_dir(&dir).unwrap_err().to_string();
        assert!(error.contains("lets others replace root keys"), "{error}");

        let link = base.path().join("linked-keys");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(secure_dir(&link).unwrap_err().to_string().contains("is a symlink"));
    }

    #[test]
    fn key_files_are_written_once_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("managed-v1.pem");
        write_new_key_file(&path, b"first").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read_key_file(&path).unwrap().as_str(), "first");
        assert!(write_new_key_file(&path, b"second").is_err(), "an existing key is never replaced");
        assert_eq!(read_key_file(&path).unwrap().as_str(), "first");
        assert!(!path.with_extension("pem.tmp").exists());

        // A symlink planted where a key is read, or where the temp file goes.
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, b"planted").unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("managed-v2.pem");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(read_key_file(&link).unwrap_err().to_string().contains("is a symlink"));
        let target = dir.path().join("managed-v3.pem");
        std::os::unix::fs::symlink(&elsewhere, target.with_extension("pem.tmp")).unwrap();
        write_new_key_file(&target, b"third").unwrap();
        assert_eq!(fs::read(&elsewhere).unwrap(), b"planted", "the link's target is untouched");
        assert_eq!(read_key_file(&target).unwrap().as_str(), "third");

        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_key_file(&target).unwrap_err().to_string().contains("chmod 600"));
    }
}
