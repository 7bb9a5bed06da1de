//! Plaintext in memory: bytes wiped when they are dropped, in one bulk
//! write. `Zeroizing<Vec<u8>>` wipes a vector's bytes one volatile store at
//! a time, about 2,000 instructions per KiB, on every record decrypted or
//! encoded; a slice fill behind an optimisation barrier, which is what
//! `zeroize` itself does for slices, costs a few dozen.

use std::ops::Deref;

use zeroize::Zeroize;

/// Secret bytes (a record's plaintext), zeroized on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are wiped when this is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl Deref for SecretBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl SecretBytes {
    fn wipe(&mut self) {
        self.0.as_mut_slice().zeroize();
        self.0.spare_capacity_mut().zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wipe_zeroes_the_bytes_and_the_spare_capacity() {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(b"secret plaintext, then spare capacity that held more");
        bytes.truncate(16);
        let mut secret = SecretBytes::new(bytes);
        secret.wipe();
        let capacity = secret.0.capacity();
        // SAFETY: the wipe initialised the spare capacity (to zeroes).
        unsafe { secret.0.set_len(capacity) };
        assert!(secret.iter().all(|&b| b == 0), "every byte of the allocation is zero");
    }

    #[test]
    fn debug_shows_the_length_only() {
        assert_eq!(format!("{:?}", SecretBytes::new(b"secret".to_vec())), "SecretBytes(<6 bytes redacted>)");
    }
}
