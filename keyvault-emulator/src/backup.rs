//! Key backups: `POST /keys/{name}/backup` hands out the key's whole
//! record (every version, private keys, rotation policy) sealed with
//! AES-256-GCM under a secret only this emulator's state directory holds
//! (`<state-dir>/backup.key`), so the blob is as opaque as Key Vault's and
//! only this emulator instance can restore it.

use std::fs;
use std::io;
use std::path::Path;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::Zeroizing;

use super::error::EmulatorError;
use super::store::{PRIVATE_MODE, write_atomically};

const KEY_FILE: &str = "backup.key";
/// Identifies the blob format, so a future layout can be told apart.
const MAGIC: &[u8; 8] = b"KSEMUBK1";
const NONCE_LEN: usize = 12;
/// Binds the ciphertext to its purpose.
const AAD: &[u8] = b"keyseal keyvault-emulator key backup";

/// Seals and opens backup blobs with the state directory's backup secret.
pub(crate) struct BackupSealer {
    cipher: Aes256Gcm,
}

impl BackupSealer {
    /// Loads `<state-dir>/backup.key`, creating it (owner-only) on first use.
    pub(crate) fn open(state_dir: &Path) -> Result<Self, EmulatorError> {
        let path = state_dir.join(KEY_FILE);
        let state_error = |source| EmulatorError::StateIo { path: path.clone(), source };
        let raw = match fs::read(&path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Key::<Aes256Gcm>::generate();
                write_atomically(&path, key.as_slice(), PRIVATE_MODE).map_err(state_error)?;
                Zeroizing::new(key.to_vec())
            }
            Err(e) => return Err(state_error(e)),
        };
        let key = Key::<Aes256Gcm>::try_from(raw.as_slice()).map_err(|_| EmulatorError::CorruptState {
            path: path.clone(),
            reason: format!("the backup secret must be 32 bytes, not {}", raw.len()),
        })?;
        Ok(Self { cipher: Aes256Gcm::new(&key) })
    }

    /// The blob for a serialised key record.
    pub(crate) fn seal(&self, record: &[u8]) -> Vec<u8> {
        let nonce = Nonce::generate();
        let ciphertext = self
            .cipher
            .encrypt(&nonce, Payload { msg: record, aad: AAD })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        [MAGIC.as_slice(), nonce.as_slice(), &ciphertext].concat()
    }

    /// The serialised record inside a blob this instance sealed; `None`
    /// for anything else (another instance's blob, a truncated or altered
    /// one).
    pub(crate) fn open_blob(&self, blob: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let rest = blob.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.cipher.decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad: AAD }).ok().map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sealing_state_directory_opens_a_blob() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = BackupSealer::open(dir.path()).expect("open");
        let blob = sealer.seal(b"record");
        assert!(!blob.windows(6).any(|w| w == b"record"), "the record must not show through");
        let reopened = BackupSealer::open(dir.path()).expect("reopen");
        assert_eq!(reopened.open_blob(&blob).expect("same state").as_slice(), b"record");

        let other = tempfile::tempdir().expect("tempdir");
        assert!(BackupSealer::open(other.path()).expect("open").open_blob(&blob).is_none());
        let mut altered = blob.clone();
        *altered.last_mut().expect("non-empty") ^= 1;
        assert!(reopened.open_blob(&altered).is_none());
        assert!(reopened.open_blob(&blob[..MAGIC.len() + 4]).is_none());
    }
}
