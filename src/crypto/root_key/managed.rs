//! The service-managed root: versioned RSA key pairs kept as PKCS#8 PEM
//! files (mode 0600) under `<data-dir>/root-keys/` (mode 0700, see
//! [`super::root_files`]). New data keys are wrapped by the newest
//! version ([`ManagedRootKeys::current`]); a stored data key is unwrapped by
//! whichever version it names, after checking the fingerprint recorded with
//! it ([`ManagedRootKeys::version`]), so a replaced key file gives a clear
//! error instead of garbage.
//!
//! A root is created only for a store that has never used one: if the
//! store holds data keys or recorded root fingerprints, a missing or
//! different key file stops the worker with what to restore.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use futures_util::future::{self, BoxFuture};
use hkdf::Hkdf;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::sha2::{Digest, Sha256};
use rsa::{Generate, PrivateKey, PublicKey};
use sha1::Sha1;
use zeroize::Zeroizing;

use super::root_files;
use super::{RootKey, RootKeyError, WrapAlgorithm, Wrapped};
use crate::crypto::CryptoError;
use crate::crypto::data_key::DataKey;
use crate::proto::v1::RootKeyRef;
use crate::proto::v1::root_key_ref::Root;

/// The key material of one version of the managed root key.
struct ManagedVersion {
    private: PrivateKey,
    public: PublicKey,
    fingerprint: String,
}

/// What a store says about the managed root it was written under; checked
/// when the root keys are loaded, so a store never meets a root it was not
/// written under without saying so.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RootExpectation {
    /// The fingerprint recorded for each managed root version.
    pub fingerprints: BTreeMap<u32, String>,
    /// Whether the store holds any data key (a store written before
    /// fingerprints were recorded has keys but no fingerprints).
    pub holds_data_keys: bool,
}

/// One version of the managed root key as a [`RootKey`]: what wraps hot
/// data keys (and sealed ones of tenants without their own key). Cheap to
/// clone; the key material is shared, never copied.
#[derive(Clone)]
pub struct ManagedRootKey {
    version: u32,
    key: Arc<ManagedVersion>,
}

impl std::fmt::Debug for ManagedRootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedRootKey")
            .field("version", &self.version)
            .field("fingerprint", &self.key.fingerprint)
            .finish_non_exhaustive()
    }
}

impl ManagedRootKey {
    /// The version of the managed root this is, as recorded in its file
    /// name and with every data key it wraps.
    pub fn version(&self) -> u32 {
        self.version
    }

    fn wrap_now(&self, key: &DataKey) -> Result<Wrapped, CryptoError> {
        let wrapped = self
            .key
            .public
            .oaep_encrypt::<Sha256>(key.expose_for_wrapping())
            .map_err(|e| root_error(self.version, e))?;
        Ok(Wrapped { wrapped_by: self.reference(), fingerprint: self.key.fingerprint.clone(), wrapped })
    }

    fn unwrap_now(&self, wrapped: &[u8], algorithm: WrapAlgorithm) -> Result<DataKey, CryptoError> {
        let raw = match algorithm {
            WrapAlgorithm::RsaOaep256 => self.key.private.oaep_decrypt::<Sha256>(wrapped),
            WrapAlgorithm::RsaOaep => self.key.private.oaep_decrypt::<Sha1>(wrapped),
        };
        let raw = Zeroizing::new(raw.map_err(|_| CryptoError::Integrity { what: "data key" })?);
        DataKey::from_slice(&raw)
    }
}

impl RootKey for ManagedRootKey {
    fn reference(&self) -> RootKeyRef {
        RootKeyRef { root: Some(Root::ManagedVersion(self.version)) }
    }

    fn fingerprint(&self) -> &str {
        &self.key.fingerprint
    }

    // RSA runs inline, as it always has: there is nothing to wait for.
    /// No request id: nothing leaves the process.
    fn wrap<'a>(&'a self, key: &'a DataKey, _: Option<&'a str>) -> BoxFuture<'a, Result<Wrapped, RootKeyError>> {
        Box::pin(future::ready(self.wrap_now(key).map_err(RootKeyError::from)))
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a [u8],
        algorithm: WrapAlgorithm,
        _: Option<&'a str>,
    ) -> BoxFuture<'a, Result<DataKey, RootKeyError>> {
        Box::pin(future::ready(self.unwrap_now(wrapped, algorithm).map_err(RootKeyError::from)))
    }
}

/// Every version of the service-managed root key found under the data dir.
pub struct ManagedRootKeys {
    versions: BTreeMap<u32, Arc<ManagedVersion>>,
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
                versions.insert(version, Arc::new(read_version(&path)?));
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
            let path = dir.join(file_name(1));
            let created = match create_version(&path) {
                // Another worker sharing the data dir created it first.
                Err(_) if path.exists() => read_version(&path)?,
                created => created?,
            };
            versions.insert(1, Arc::new(created));
        }
        Ok(Self { versions })
    }

    /// Whether `dir` holds any version's key file.
    pub fn exist_in(dir: &Path) -> bool {
        fs::read_dir(dir).is_ok_and(|entries| entries.flatten().any(|entry| version_of(&entry.path()).is_some()))
    }

    /// A 32-byte secret for `purpose`, derived with HKDF-SHA256 from the
    /// oldest version's private key: a secret every worker of the
    /// deployment shares without another file to hand out (the MAC key of
    /// forwarded admin requests starts here). Versions are only ever
    /// added, so it does not change when the root is rotated.
    pub fn derive_secret(&self, purpose: &str) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let (_, oldest) = self.versions.first_key_value().expect("at least one version");
        let der = oldest
            .private
            .to_pkcs8_der()
            .map_err(|e| CryptoError::Corrupt { what: "managed root key", reason: e.to_string() })?;
        let mut secret = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(b"keyseal managed root"), der.as_bytes())
            .expand(purpose.as_bytes(), secret.as_mut_slice())
            .expect("32 bytes is a valid HKDF output");
        Ok(secret)
    }

    /// The fingerprint of every loaded version, for recording in the store.
    pub fn fingerprints(&self) -> BTreeMap<u32, String> {
        self.versions.iter().map(|(v, k)| (*v, k.fingerprint.clone())).collect()
    }

    /// The version new data keys are wrapped with, as a [`RootKey`].
    pub fn current(&self) -> ManagedRootKey {
        let (version, key) = self.versions.last_key_value().expect("at least one version");
        ManagedRootKey { version: *version, key: key.clone() }
    }

    /// The version a stored data key names, as a [`RootKey`] to unwrap it
    /// with. A non-empty `fingerprint` (recorded when it was wrapped) must
    /// be that version's: a key of another deployment is refused, naming
    /// the fingerprint to look for in backups.
    pub fn version(&self, version: u32, fingerprint: &str) -> Result<ManagedRootKey, CryptoError> {
        match self.versions.get(&version) {
            Some(key) if fingerprint.is_empty() || key.fingerprint == fingerprint => {
                Ok(ManagedRootKey { version, key: key.clone() })
            }
            _ => Err(CryptoError::UnknownRootFingerprint {
                version,
                fingerprint: if fingerprint.is_empty() { "(not recorded)".into() } else { fingerprint.into() },
            }),
        }
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

    #[tokio::test]
    async fn creates_once_then_reloads_and_unwraps() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let dek = DataKey::generate();
        let wrap = keys.current().wrap(&dek, None).await.unwrap();
        assert_eq!(wrap.wrapped_by, RootKeyRef { root: Some(Root::ManagedVersion(1)) });
        assert_eq!(wrap.fingerprint.len(), 32);

        let reloaded = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(reloaded.fingerprints(), keys.fingerprints());
        let root = reloaded.version(1, &wrap.fingerprint).unwrap();
        let back = root.unwrap(&wrap.wrapped, WrapAlgorithm::RsaOaep256, None).await.unwrap();
        assert_eq!(back.expose_for_wrapping(), dek.expose_for_wrapping());
        let old_style = reloaded.version(1, "").unwrap().unwrap(&wrap.wrapped, WrapAlgorithm::RsaOaep256, None).await;
        assert_eq!(
            old_style.unwrap().expose_for_wrapping(),
            dek.expose_for_wrapping(),
            "keys without a fingerprint still read"
        );
        assert!(reloaded.version(2, "").is_err());

        let mode = fs::metadata(dir.path().join("managed-v1.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_key_wrapped_with_rsa_oaep_sha1_unwraps() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let dek = DataKey::generate();
        let wrapped = keys.versions[&1].public.oaep_encrypt::<Sha1>(dek.expose_for_wrapping()).unwrap();
        let algorithm = WrapAlgorithm::parse("RSA-OAEP").unwrap();
        let root = keys.version(1, "").unwrap();
        let back = root.unwrap(&wrapped, algorithm, None).await.unwrap();
        assert_eq!(back.expose_for_wrapping(), dek.expose_for_wrapping());
        assert!(root.unwrap(&wrapped, WrapAlgorithm::RsaOaep256, None).await.is_err(), "the algorithm matters");
        assert!(WrapAlgorithm::parse("RSA1_5").is_err());
    }

    #[tokio::test]
    async fn a_wrapped_key_of_another_root_names_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let other = ManagedRootKeys::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let wrap = other.current().wrap(&DataKey::generate(), None).await.unwrap();
        let error = keys.version(1, &wrap.fingerprint).unwrap_err();
        assert!(matches!(error, CryptoError::UnknownRootFingerprint { .. }), "{error}");
        assert!(error.to_string().contains(&wrap.fingerprint), "{error}");
    }

    #[tokio::test]
    async fn through_the_trait_a_managed_root_round_trips_and_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let root: Box<dyn RootKey> = Box::new(keys.current());
        let dek = DataKey::generate();
        let wrapped = root.wrap(&dek, None).await.unwrap();
        assert_eq!(wrapped.wrapped_by, root.reference());
        assert_eq!(wrapped.fingerprint, root.fingerprint());
        assert_eq!(root.fingerprint(), keys.fingerprints()[&1]);
        assert_ne!(wrapped.wrapped.as_slice(), dek.expose_for_wrapping(), "wrapped, not copied");

        let back = root.unwrap(&wrapped.wrapped, WrapAlgorithm::RsaOaep256, None).await.unwrap();
        assert_eq!(back.expose_for_wrapping(), dek.expose_for_wrapping());
        let again = root.wrap(&dek, None).await.unwrap();
        assert_ne!(again.wrapped, wrapped.wrapped, "OAEP is randomised");

        let mut tampered = wrapped.wrapped.clone();
        tampered[0] ^= 1;
        let error = root.unwrap(&tampered, WrapAlgorithm::RsaOaep256, None).await.unwrap_err();
        assert!(matches!(error, RootKeyError::Crypto(CryptoError::Integrity { .. })), "{error}");
    }

    #[tokio::test]
    async fn through_the_trait_a_wrong_fingerprint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let wrapped = keys.current().wrap(&DataKey::generate(), None).await.unwrap();
        let Some(Root::ManagedVersion(version)) = wrapped.wrapped_by.root else { panic!("a managed root") };
        assert_eq!(keys.version(version, &wrapped.fingerprint).unwrap().fingerprint(), wrapped.fingerprint);

        let wrong = "0".repeat(32);
        let error = keys.version(version, &wrong).unwrap_err();
        assert!(matches!(error, CryptoError::UnknownRootFingerprint { version: 1, .. }), "{error}");
        assert!(error.to_string().contains(&wrong), "{error}");
        assert!(keys.version(version + 1, &wrapped.fingerprint).is_err(), "a version that is not loaded");

        let debug = format!("{:?}", keys.current());
        assert!(debug.contains(&wrapped.fingerprint) && !debug.contains("PRIVATE"), "{debug}");
    }

    #[tokio::test]
    async fn new_keys_go_to_the_newest_version_and_older_ones_still_unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let first = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        let dek = DataKey::generate();
        let by_first = first.current().wrap(&dek, None).await.unwrap();
        create_version(&dir.path().join(file_name(2))).unwrap();

        let keys = ManagedRootKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(keys.current().version(), 2);
        let by_second = keys.current().wrap(&dek, None).await.unwrap();
        assert_eq!(by_second.wrapped_by, RootKeyRef { root: Some(Root::ManagedVersion(2)) });
        assert_ne!(by_second.fingerprint, by_first.fingerprint);
        for wrapped in [&by_first, &by_second] {
            let Some(Root::ManagedVersion(version)) = wrapped.wrapped_by.root else { panic!("a managed root") };
            let root = keys.version(version, &wrapped.fingerprint).unwrap();
            let back = root.unwrap(&wrapped.wrapped, WrapAlgorithm::RsaOaep256, None).await.unwrap();
            assert_eq!(back.expose_for_wrapping(), dek.expose_for_wrapping(), "v{version}");
        }
        assert!(keys.version(2, &by_first.fingerprint).is_err(), "v1's fingerprint is not v2's");
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
