//! Crash-safe persistence of the emulator's state directory: one JSON
//! document per key name under `keys/` (all versions, private keys as
//! PKCS#8, deletion state), each replaced atomically (temp file, fsync,
//! rename, fsync of the directory) and readable by the owner only.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::error::EmulatorError;
use super::material::{KeyMaterial, MaterialError};
use super::model::{Deletion, KeyRecord, KeyVersion, RotationPolicy, VersionProps};

/// Bumped when the document layout changes, so an old emulator refuses a
/// newer state directory instead of misreading it (or dropping what it does
/// not know on its next write). 2 added rotation policies, `exportable` and
/// release policies; a format 1 document reads as having none.
const FORMAT: u32 = 2;
const OLDEST_READABLE_FORMAT: u32 = 1;
const KEYS_DIR: &str = "keys";
const DOCUMENT_SUFFIX: &str = ".json";
/// Temporary files start with this, so loading can tell them apart.
const TEMP_PREFIX: &str = ".";

/// Private files (keys) are readable by the owner only.
pub(crate) const PRIVATE_MODE: u32 = 0o600;
const PRIVATE_DIR_MODE: u32 = 0o700;

#[derive(Serialize, Deserialize)]
struct StoredKey {
    format: u32,
    name: String,
    deleted: Option<Deletion>,
    versions: Vec<StoredVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotation_policy: Option<RotationPolicy>,
}

#[derive(Serialize, Deserialize)]
struct StoredVersion {
    version: String,
    #[serde(flatten)]
    props: VersionProps,
    /// Standard base64 of the PKCS#8 DER private key.
    pkcs8: String,
}

impl Drop for StoredVersion {
    fn drop(&mut self) {
        self.pkcs8.zeroize();
    }
}

/// Serialises a key record, private keys included, for [`KeyStore::save`]
/// and for backups.
pub(crate) fn encode(record: &KeyRecord) -> io::Result<Zeroizing<Vec<u8>>> {
    let versions = record
        .versions
        .iter()
        .map(|version| {
            let der = version.material.to_pkcs8().map_err(io::Error::other)?;
            Ok(StoredVersion {
                version: version.id.clone(),
                props: version.props.clone(),
                pkcs8: STANDARD.encode(der.as_slice()),
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let document = StoredKey {
        format: FORMAT,
        name: record.name.clone(),
        deleted: record.deleted,
        versions,
        rotation_policy: record.rotation_policy.clone(),
    };
    serde_json::to_vec_pretty(&document).map(Zeroizing::new).map_err(io::Error::other)
}

/// Why a key document cannot be read: a corrupt state file on start, or a
/// backup blob that does not hold a key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DocumentError {
    /// Not the JSON of a key document.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// Written by an emulator whose layout this one does not know.
    #[error("unsupported format {0} (this emulator reads {OLDEST_READABLE_FORMAT} to {FORMAT})")]
    Format(u32),
    /// A key must have at least one version.
    #[error("a key without versions")]
    NoVersions,
    /// A version's private key is not base64.
    #[error("version {version}: private key: {source}")]
    Base64 {
        /// The version whose key it is.
        version: String,
        /// What is wrong with the text.
        source: base64::DecodeError,
    },
    /// A version's private key is not a PKCS#8 key of its type.
    #[error("version {version}: private key: {source}")]
    PrivateKey {
        /// The version whose key it is.
        version: String,
        /// What is wrong with the key.
        source: MaterialError,
    },
}

/// Reads a document [`encode`] wrote.
pub(crate) fn decode(bytes: &[u8]) -> Result<KeyRecord, DocumentError> {
    let document: StoredKey = serde_json::from_slice(bytes)?;
    if !(OLDEST_READABLE_FORMAT..=FORMAT).contains(&document.format) {
        return Err(DocumentError::Format(document.format));
    }
    if document.versions.is_empty() {
        return Err(DocumentError::NoVersions);
    }
    let versions = document
        .versions
        .iter()
        .map(|stored| {
            let version = || stored.version.clone();
            let der = STANDARD
                .decode(stored.pkcs8.as_bytes())
                .map(Zeroizing::new)
                .map_err(|source| DocumentError::Base64 { version: version(), source })?;
            let material = KeyMaterial::from_pkcs8(stored.props.kty, der)
                .map_err(|source| DocumentError::PrivateKey { version: version(), source })?;
            Ok(KeyVersion { id: version(), props: stored.props.clone(), material: Arc::new(material) })
        })
        .collect::<Result<Vec<_>, DocumentError>>()?;
    Ok(KeyRecord {
        name: document.name.clone(),
        versions,
        deleted: document.deleted,
        rotation_policy: document.rotation_policy.clone(),
    })
}

/// Creates the state directory (owner-only when new).
pub(crate) fn create_state_dir(dir: &Path) -> Result<(), EmulatorError> {
    create_private_dir(dir).map_err(|source| EmulatorError::StateIo { path: dir.to_path_buf(), source })
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR_MODE);
    builder.create(dir)
}

/// The `keys/` directory of a state directory.
pub(crate) struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// The `keys/` directory of `state_dir`, created (owner-only) when new.
    pub(crate) fn open(state_dir: &Path) -> Result<Self, EmulatorError> {
        let dir = state_dir.join(KEYS_DIR);
        create_private_dir(&dir).map_err(|source| EmulatorError::StateIo { path: dir.clone(), source })?;
        Ok(Self { dir })
    }

    /// Where the documents live, for error messages that name it.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every key document, removing temporary files a crash left
    /// behind. A document that cannot be read is an error: dropping keys
    /// silently would look like a deleted key to every caller.
    pub(crate) fn load(&self) -> Result<Vec<KeyRecord>, EmulatorError> {
        let io_error = |path: &Path, source| EmulatorError::StateIo { path: path.to_path_buf(), source };
        let mut by_file = BTreeMap::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))? {
            let path = entry.map_err(|e| io_error(&self.dir, e))?.path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if file_name.starts_with(TEMP_PREFIX) {
                fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
                continue;
            }
            let Some(stem) = file_name.strip_suffix(DOCUMENT_SUFFIX) else {
                continue;
            };
            let bytes = Zeroizing::new(fs::read(&path).map_err(|e| io_error(&path, e))?);
            let record = decode(&bytes)
                .map_err(|e| EmulatorError::CorruptState { path: path.clone(), reason: e.to_string() })?;
            if record.name.to_ascii_lowercase() != stem {
                return Err(EmulatorError::CorruptState { path, reason: format!("holds key {:?}", record.name) });
            }
            by_file.insert(stem.to_owned(), record);
        }
        Ok(by_file.into_values().collect())
    }

    /// Atomically replaces the document of `file_stem` (a lowercase key name).
    pub(crate) fn save(&self, file_stem: &str, document: &[u8]) -> io::Result<()> {
        write_atomically(&self.path(file_stem), document, PRIVATE_MODE)
    }

    /// Removes the document of `file_stem` durably; absent is fine.
    pub(crate) fn remove(&self, file_stem: &str) -> io::Result<()> {
        match fs::remove_file(self.path(file_stem)) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn path(&self, file_stem: &str) -> PathBuf {
        self.dir.join(format!("{file_stem}{DOCUMENT_SUFFIX}"))
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the
/// new content: temp file in the same directory (created with `mode`),
/// fsync, rename over `path`, fsync of the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let temp = dir.join(format!("{TEMP_PREFIX}{file_name}.tmp"));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::{Curve, KeySpec, KeyType};
    use crate::model::{ActionType, IsoDuration, LifetimeAction, Trigger};

    fn record(name: &str) -> KeyRecord {
        let material = KeyMaterial::generate(KeySpec::Ec(Curve::P384)).expect("generate");
        KeyRecord {
            name: name.to_owned(),
            versions: vec![KeyVersion {
                id: "0123456789abcdef0123456789abcdef".to_owned(),
                props: VersionProps {
                    kty: KeyType::Ec,
                    key_ops: vec!["sign".to_owned()],
                    enabled: false,
                    nbf: Some(5),
                    exp: None,
                    created: 1,
                    updated: 2,
                    tags: BTreeMap::from([("a".to_owned(), "b".to_owned())]),
                    exportable: false,
                    release_policy: None,
                },
                material: Arc::new(material),
            }],
            deleted: Some(Deletion { deleted_date: 3, scheduled_purge_date: 4 }),
            rotation_policy: Some(RotationPolicy {
                lifetime_actions: vec![LifetimeAction {
                    trigger: Trigger::AfterCreate(IsoDuration::try_from("P2M".to_owned()).expect("duration")),
                    action: ActionType::Rotate,
                }],
                expiry_time: None,
                created: 6,
                updated: 7,
            }),
        }
    }

    #[test]
    fn documents_round_trip_and_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::open(dir.path()).expect("open");
        let original = record("Tenant-Key");
        store.save("tenant-key", &encode(&original).expect("encode")).expect("save");
        fs::write(store.dir().join(".tenant-key.json.tmp"), b"torn").expect("leftover");

        let loaded = store.load().expect("load");
        assert_eq!(loaded.len(), 1);
        let restored = &loaded[0];
        assert_eq!(restored.name, "Tenant-Key");
        assert_eq!(restored.deleted, original.deleted);
        assert_eq!(restored.rotation_policy, original.rotation_policy);
        assert_eq!(restored.versions[0].props, original.versions[0].props);
        assert_eq!(restored.versions[0].material.public_jwk(), original.versions[0].material.public_jwk());
        assert!(!store.dir().join(".tenant-key.json.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(store.dir().join("tenant-key.json")).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, PRIVATE_MODE);
        }

        store.remove("tenant-key").expect("remove");
        assert!(store.load().expect("load").is_empty());
    }

    #[test]
    fn format_1_documents_still_load_and_newer_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::open(dir.path()).expect("open");
        let mut document: serde_json::Value =
            serde_json::from_slice(&encode(&record("k")).expect("encode")).expect("json");
        // What format 1 wrote: none of the fields format 2 added.
        document["format"] = 1.into();
        document.as_object_mut().expect("object").remove("rotation_policy");
        for version in document["versions"].as_array_mut().expect("versions") {
            version.as_object_mut().expect("object").remove("exportable");
        }
        store.save("k", &serde_json::to_vec(&document).expect("bytes")).expect("save");
        let loaded = store.load().expect("a format 1 document loads");
        assert_eq!(loaded[0].rotation_policy, None);
        assert!(!loaded[0].versions[0].props.exportable);

        document["format"] = (FORMAT + 1).into();
        store.save("k", &serde_json::to_vec(&document).expect("bytes")).expect("save");
        assert!(matches!(store.load(), Err(EmulatorError::CorruptState { .. })));
    }

    #[test]
    fn a_corrupt_document_stops_loading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::open(dir.path()).expect("open");
        fs::write(store.dir().join("k.json"), b"{not json").expect("write");
        assert!(matches!(store.load(), Err(EmulatorError::CorruptState { .. })));
    }
}
