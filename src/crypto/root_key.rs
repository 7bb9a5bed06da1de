//! Root keys wrap data keys with RSA-OAEP-256. This module holds the
//! service-managed root: versioned RSA key pairs kept as PKCS#8 PEM files
//! (mode 0600) under `<data-dir>/root-keys/`, created on first start.
//! Wrapping always uses the newest version; unwrapping uses whichever
//! version the wrapped key names.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::{Generate, PrivateKey, PublicKey};

use super::CryptoError;
use super::data_key::DataKey;

/// The JOSE name of the wrapping algorithm recorded with each wrapped key.
pub const WRAP_ALGORITHM: &str = "RSA-OAEP-256";

/// One version of the managed root key.
struct ManagedVersion {
    private: PrivateKey,
    public: PublicKey,
}

/// Every version of the service-managed root key found under the data dir.
pub struct ManagedRootKeys {
    versions: BTreeMap<u32, ManagedVersion>,
}

impl ManagedRootKeys {
    /// Loads every `managed-v{N}.pem` in `dir`, generating version 1 when
    /// there is none. Refuses key files readable by group or others.
    pub fn load_or_create(dir: &Path) -> Result<Self, CryptoError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CryptoError::KeyFile { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut versions = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let Some(version) = version_of(&path) else {
                continue;
            };
            versions.insert(version, read_version(&path)?);
        }
        if versions.is_empty() {
            let path = dir.join(file_name(1));
            versions.insert(1, create_version(&path)?);
        }
        Ok(Self { versions })
    }

    /// The version new data keys are wrapped with.
    pub fn current_version(&self) -> u32 {
        *self.versions.keys().next_back().expect("at least one version")
    }

    /// Wraps a data key under the current version; returns (version, wrapped).
    pub fn wrap(&self, key: &DataKey) -> Result<(u32, Vec<u8>), CryptoError> {
        let version = self.current_version();
        let wrapped = self.versions[&version]
            .public
            .oaep_encrypt::<Sha256>(key.expose_for_wrapping())
            .map_err(|e| root_error(version, e))?;
        Ok((version, wrapped))
    }

    /// Unwraps a data key wrapped by `version`.
    pub fn unwrap(&self, version: u32, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let key = self.versions.get(&version).ok_or_else(|| CryptoError::RootKey {
            root: format!("managed v{version}"),
            reason: "no such managed key version".into(),
        })?;
        let raw = zeroize::Zeroizing::new(
            key.private.oaep_decrypt::<Sha256>(wrapped).map_err(|_| CryptoError::Integrity { what: "data key" })?,
        );
        DataKey::from_slice(&raw)
    }
}

fn root_error(version: u32, e: rsa::Error) -> CryptoError {
    CryptoError::RootKey { root: format!("managed v{version}"), reason: e.to_string() }
}

fn file_name(version: u32) -> String {
    format!("managed-v{version}.pem")
}

fn version_of(path: &Path) -> Option<u32> {
    path.file_name()?.to_str()?.strip_prefix("managed-v")?.strip_suffix(".pem")?.parse().ok()
}

fn read_version(path: &Path) -> Result<ManagedVersion, CryptoError> {
    let file_err = |source| CryptoError::KeyFile { path: path.display().to_string(), source };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(file_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(file_err(std::io::Error::other(format!(
                "mode {:o} lets others read the key; chmod 600 it",
                mode & 0o777
            ))));
        }
    }
    let pem = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(file_err)?);
    let private = PrivateKey::from_pkcs8_pem(&pem)
        .map_err(|e| CryptoError::Corrupt { what: "managed root key", reason: e.to_string() })?;
    let public = private.to_public_key();
    Ok(ManagedVersion { private, public })
}

/// Generates a key pair and writes it crash-safely: temp file (0600),
/// fsync, rename, fsync the directory.
fn create_version(path: &Path) -> Result<ManagedVersion, CryptoError> {
    let file_err = |p: &PathBuf| {
        let p = p.display().to_string();
        move |source| CryptoError::KeyFile { path: p, source }
    };
    // `Generate` makes a PrivateKey::DEFAULT_BITS (3072-bit) key from the OS RNG.
    let private = PrivateKey::generate();
    let pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| CryptoError::Corrupt { what: "managed root key", reason: e.to_string() })?;
    let tmp = path.with_extension("pem.tmp");
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(file_err(&tmp))?;
        file.write_all(pem.as_bytes()).map_err(file_err(&tmp))?;
        file.sync_all().map_err(file_err(&tmp))?;
    }
    let target = path.to_path_buf();
    fs::rename(&tmp, path).map_err(file_err(&target))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(file_err(&dir.to_path_buf()))?;
    }
    let public = private.to_public_key();
    Ok(ManagedVersion { private, public })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reloads_and_unwraps() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let dek = DataKey::generate();
        let (version, wrapped) = keys.wrap(&dek).unwrap();
        assert_eq!(version, 1);

        let reloaded = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let back = reloaded.unwrap(version, &wrapped).unwrap();
        assert_eq!(back.expose_for_wrapping(), dek.expose_for_wrapping());
        assert!(reloaded.unwrap(2, &wrapped).is_err());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("managed-v1.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
