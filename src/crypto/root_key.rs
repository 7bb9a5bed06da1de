//! Root keys wrap data keys with RSA-OAEP-256 (RSA-OAEP, SHA-1, is accepted
//! for reading). This module holds the service-managed root: versioned RSA
//! key pairs kept as PKCS#8 PEM files (mode 0600) under
//! `<data-dir>/root-keys/` (mode 0700, see [`super::root_files`]).
//! Wrapping always uses the newest version; unwrapping uses whichever
//! version the wrapped key names, and checks the fingerprint recorded with
//! it, so a replaced key file gives a clear error instead of garbage.
//!
//! A root is created only for a store that has never used one: if the
//! store holds data keys or recorded root fingerprints, a missing or
//! different key file stops the worker with what to restore.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::sha2::{Digest, Sha256};
use rsa::{Generate, PrivateKey, PublicKey};
use sha1::Sha1;

use super::CryptoError;
use super::data_key::DataKey;
use super::root_files;

/// The JOSE name of the wrapping algorithm recorded with each wrapped key.
pub const WRAP_ALGORITHM: &str = "RSA-OAEP-256";

/// How a stored data key was wrapped, from the JOSE name stored with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapAlgorithm {
    /// RSA-OAEP with SHA-256 and MGF1-SHA-256: what keyseal writes.
    RsaOaep256,
    /// RSA-OAEP with SHA-1 and MGF1-SHA-1: accepted for reading, as Key
    /// Vault and other tools wrap with it by default.
    RsaOaep,
}

impl WrapAlgorithm {
    /// Parses a stored algorithm name; an empty name is what keyseal always
    /// wrote (RSA-OAEP-256).
    pub fn parse(name: &str) -> Result<Self, CryptoError> {
        match name {
            WRAP_ALGORITHM | "" => Ok(Self::RsaOaep256),
            "RSA-OAEP" => Ok(Self::RsaOaep),
            other => Err(CryptoError::Corrupt {
                what: "wrapped data key",
                reason: format!("unsupported wrapping algorithm {other:?} (RSA-OAEP-256 and RSA-OAEP are read)"),
            }),
        }
    }
}

/// One version of the managed root key.
struct ManagedVersion {
    private: PrivateKey,
    public: PublicKey,
    fingerprint: String,
}

/// What a store says about the managed root it was written under; checked
/// when the root keys are loaded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RootExpectation {
    /// The fingerprint recorded for each managed root version.
    pub fingerprints: BTreeMap<u32, String>,
    /// Whether the store holds any data key (a store written before
    /// fingerprints were recorded has keys but no fingerprints).
    pub holds_data_keys: bool,
}

/// A data key wrapped by the current managed root version.
#[derive(Debug)]
pub struct ManagedWrap {
    /// The version that wrapped it.
    pub version: u32,
    /// That version's fingerprint, stored with the wrapped key.
    pub fingerprint: String,
    /// The wrapped bytes.
    pub wrapped: Vec<u8>,
}

/// Every version of the service-managed root key found under the data dir.
pub struct ManagedRootKeys {
    versions: BTreeMap<u32, ManagedVersion>,
}

impl ManagedRootKeys {
    /// Loads the root keys of a store that has none yet (benchmarks, tests
    /// and fresh stores): like [`ManagedRootKeys::open`] expecting nothing.
    pub fn load_or_create(dir: &Path) -> Result<Self, CryptoError> {
        Self::open(dir, &RootExpectation::default())
    }

    /// Loads every `managed-v{N}.pem` in `dir` and checks them against what
    /// the store expects: each recorded version present with its recorded
    /// fingerprint, and some key at all when the store holds data keys.
    /// Generates version 1 only when the store expects nothing and `dir`
    /// holds no key.
    pub fn open(dir: &Path, expected: &RootExpectation) -> Result<Self, CryptoError> {
        root_files::secure_dir(dir)?;
        let mut versions = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(|source| key_file_error(dir, source))? {
            let path = entry.map_err(|source| key_file_error(dir, source))?.path();
            if let Some(version) = version_of(&path) {
                versions.insert(version, read_version(&path)?);
            }
        }
        for (version, fingerprint) in &expected.fingerprints {
            match versions.get(version) {
                None => {
                    return Err(CryptoError::RootKeyMissing {
                        dir: dir.display().to_string(),
                        wanted: format!("{} (fingerprint {fingerprint})", file_name(*version)),
                    });
                }
                Some(found) if found.fingerprint != *fingerprint => {
                    return Err(CryptoError::RootKeyMismatch {
                        path: dir.join(file_name(*version)).display().to_string(),
                        found: found.fingerprint.clone(),
                        expected: fingerprint.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        if versions.is_empty() && expected.holds_data_keys {
            return Err(CryptoError::RootKeyMissing {
                dir: dir.display().to_string(),
                wanted: "managed-v*.pem (the store predates recorded fingerprints)".into(),
            });
        }
        if versions.is_empty() {
            versions.insert(1, create_version(&dir.join(file_name(1)))?);
        }
        Ok(Self { versions })
    }

    /// The version new data keys are wrapped with.
    pub fn current_version(&self) -> u32 {
        *self.versions.keys().next_back().expect("at least one version")
    }

    /// The fingerprint of every loaded version, for recording in the store.
    pub fn fingerprints(&self) -> BTreeMap<u32, String> {
        self.versions.iter().map(|(v, k)| (*v, k.fingerprint.clone())).collect()
    }

    /// Wraps a data key under the current version with RSA-OAEP-256.
    pub fn wrap(&self, key: &DataKey) -> Result<ManagedWrap, CryptoError> {
        let version = self.current_version();
        let root = &self.versions[&version];
        let wrapped =
            root.public.oaep_encrypt::<Sha256>(key.expose_for_wrapping()).map_err(|e| root_error(version, e))?;
        Ok(ManagedWrap { version, fingerprint: root.fingerprint.clone(), wrapped })
    }

    /// Unwraps a data key wrapped by `version` with `algorithm`. A non-empty
    /// `fingerprint` (recorded when it was wrapped) must be that version's.
    pub fn unwrap(
        &self,
        version: u32,
        fingerprint: &str,
        algorithm: WrapAlgorithm,
        wrapped: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let key = self.versions.get(&version).filter(|k| fingerprint.is_empty() || k.fingerprint == fingerprint);
        let Some(key) = key else {
            return Err(CryptoError::UnknownRootFingerprint {
                version,
                fingerprint: if fingerprint.is_empty() { "(not recorded)".into() } else { fingerprint.into() },
            });
        };
        let raw = match algorithm {
            WrapAlgorithm::RsaOaep256 => key.private.oaep_decrypt::<Sha256>(wrapped),
            WrapAlgorithm::RsaOaep => key.private.oaep_decrypt::<Sha1>(wrapped),
        };
        let raw = zeroize::Zeroizing::new(raw.map_err(|_| CryptoError::Integrity { what: "data key" })?);
        DataKey::from_slice(&raw)
    }
}

/// The fingerprint of an RSA public key: SHA-256 of its DER
/// SubjectPublicKeyInfo, first 16 bytes, lowercase hex.
pub fn fingerprint(public: &PublicKey) -> Result<String, CryptoError> {
    let der = public
        .to_public_key_der()
        .map_err(|e| CryptoError::Corrupt { what: "managed root key", reason: e.to_string() })?;
    Ok(Sha256::digest(der.as_bytes())[..16].iter().map(|b| format!("{b:02x}")).collect())
}

fn key_file_error(path: &Path, source: std::io::Error) -> CryptoError {
    CryptoError::KeyFile { path: path.display().to_string(), source }
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
    let pem = root_files::read_key_file(path)?;
    let private = PrivateKey::from_pkcs8_pem(&pem)
        .map_err(|e| CryptoError::Corrupt { what: "managed root key", reason: e.to_string() })?;
    versioned(private)
}

fn versioned(private: PrivateKey) -> Result<ManagedVersion, CryptoError> {
    let public = private.to_public_key();
    let fingerprint = fingerprint(&public)?;
    Ok(ManagedVersion { private, public, fingerprint })
}

/// Generates a key pair and writes it as a new file (never over one).
fn create_version(path: &Path) -> Result<ManagedVersion, CryptoError> {
    // `Generate` makes a PrivateKey::DEFAULT_BITS (3072-bit) key from the OS RNG.
    let private = PrivateKey::generate();
    let pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| CryptoError::Corrupt { what: "managed root key", reason: e.to_string() })?;
    root_files::write_new_key_file(path, pem.as_bytes())?;
    versioned(private)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn creates_once_then_reloads_and_unwraps() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let dek = DataKey::generate();
        let wrap = keys.wrap(&dek).unwrap();
        assert_eq!(wrap.version, 1);
        assert_eq!(wrap.fingerprint.len(), 32);

        let reloaded = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(reloaded.fingerprints(), keys.fingerprints());
        let back = reloaded.unwrap(1, &wrap.fingerprint, WrapAlgorithm::RsaOaep256, &wrap.wrapped).unwrap();
        assert_eq!(back.expose_for_wrapping(), dek.expose_for_wrapping());
        let old_style = reloaded.unwrap(1, "", WrapAlgorithm::RsaOaep256, &wrap.wrapped).unwrap();
        assert_eq!(old_style.expose_for_wrapping(), dek.expose_for_wrapping(), "keys without a fingerprint still read");
        assert!(reloaded.unwrap(2, "", WrapAlgorithm::RsaOaep256, &wrap.wrapped).is_err());

        let mode = fs::metadata(dir.path().join("managed-v1.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_key_wrapped_with_rsa_oaep_sha1_unwraps() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let dek = DataKey::generate();
        let wrapped = keys.versions[&1].public.oaep_encrypt::<Sha1>(dek.expose_for_wrapping()).unwrap();
        let algorithm = WrapAlgorithm::parse("RSA-OAEP").unwrap();
        let back = keys.unwrap(1, "", algorithm, &wrapped).unwrap();
        assert_eq!(back.expose_for_wrapping(), dek.expose_for_wrapping());
        assert!(keys.unwrap(1, "", WrapAlgorithm::RsaOaep256, &wrapped).is_err(), "the algorithm matters");
        assert!(WrapAlgorithm::parse("RSA1_5").is_err());
    }

    #[test]
    fn a_wrapped_key_of_another_root_names_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let other = ManagedRootKeys::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let wrap = other.wrap(&DataKey::generate()).unwrap();
        let error = keys.unwrap(1, &wrap.fingerprint, WrapAlgorithm::RsaOaep256, &wrap.wrapped).unwrap_err();
        assert!(matches!(error, CryptoError::UnknownRootFingerprint { .. }), "{error}");
        assert!(error.to_string().contains(&wrap.fingerprint), "{error}");
    }

    #[test]
    fn a_store_that_used_a_root_never_gets_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("root-keys");
        let fingerprints = ManagedRootKeys::load_or_create(&roots).unwrap().fingerprints();
        let expected = RootExpectation { fingerprints: fingerprints.clone(), holds_data_keys: true };
        assert_eq!(ManagedRootKeys::open(&roots, &expected).unwrap().fingerprints(), fingerprints);

        let backup = dir.path().join("backup.pem");
        fs::rename(roots.join("managed-v1.pem"), &backup).unwrap();
        let error = ManagedRootKeys::open(&roots, &expected).err().unwrap().to_string();
        assert!(error.contains("managed-v1.pem") && error.contains(&fingerprints[&1]), "{error}");
        assert!(error.contains("Restore"), "{error}");
        assert!(!roots.join("managed-v1.pem").exists(), "no new root was created");
        fs::remove_dir(&roots).unwrap();
        assert!(ManagedRootKeys::open(&roots, &expected).is_err(), "a missing directory is refused too");

        // A store written before fingerprints: data keys, nothing recorded.
        let legacy = RootExpectation { fingerprints: BTreeMap::new(), holds_data_keys: true };
        let error = ManagedRootKeys::open(&roots, &legacy).err().unwrap().to_string();
        assert!(error.contains("predates recorded fingerprints"), "{error}");

        // Another deployment's key in its place.
        ManagedRootKeys::load_or_create(&roots).unwrap();
        let error = ManagedRootKeys::open(&roots, &expected).err().unwrap().to_string();
        assert!(error.contains("expects") && error.contains(&fingerprints[&1]), "{error}");

        fs::remove_file(roots.join("managed-v1.pem")).unwrap();
        fs::rename(&backup, roots.join("managed-v1.pem")).unwrap();
        assert_eq!(ManagedRootKeys::open(&roots, &expected).unwrap().fingerprints(), fingerprints, "restored");
    }
}
