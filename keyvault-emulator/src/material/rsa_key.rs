//! RSA keys: generation, import from a JWK's private members, and the
//! padding schemes behind encrypt/decrypt/wrap/unwrap (PKCS#1 v1.5, OAEP,
//! OAEP-256) and sign/verify (PKCS#1 v1.5 and PSS over a caller's digest).

use rsa::BoxedUint;
use rsa::sha2::{Sha256, Sha384, Sha512};
use sha1::Sha1;
use zeroize::Zeroizing;

use super::MaterialError;
use super::algorithms::{Digest, EncryptionAlgorithm, RsaPadding};

/// RSA modulus sizes Key Vault offers.
pub(crate) const RSA_KEY_SIZES: [usize; 3] = [2048, 3072, 4096];
/// The longest public exponent accepted on import; the rsa crate allows
/// up to 2^33 - 1, five bytes.
const MAX_EXPONENT_LEN: usize = 5;

/// A fresh key of `bits` from the system's random number generator.
pub(crate) fn generate(bits: usize) -> Result<rsa::PrivateKey, MaterialError> {
    Ok(rsa::PrivateKey::new(&mut getrandom::SysRng, bits)?)
}

/// The private members of an RSA JWK. `p` and `q` may be absent; the
/// primes are then recovered from `n`, `e` and `d`.
#[derive(Clone, Copy)]
pub(crate) struct RsaComponents<'a> {
    pub(crate) n: &'a [u8],
    pub(crate) e: &'a [u8],
    pub(crate) d: &'a [u8],
    pub(crate) p: Option<&'a [u8]>,
    pub(crate) q: Option<&'a [u8]>,
}

/// A key from its JWK members; checked for consistency, and refused
/// unless its modulus is one of [`RSA_KEY_SIZES`]. The sizes are checked
/// on the bytes first: a hostile import of megabyte integers must be
/// refused before any arithmetic is done on them.
pub(crate) fn import(parts: &RsaComponents<'_>) -> Result<rsa::PrivateKey, MaterialError> {
    let modulus_len = trimmed(parts.n).len();
    if !RSA_KEY_SIZES.contains(&(modulus_len * 8)) {
        return Err(MaterialError::InvalidKey("RSA keys must be 2048, 3072 or 4096 bits"));
    }
    let private = [Some(parts.d), parts.p, parts.q];
    if private.into_iter().flatten().any(|member| trimmed(member).len() > modulus_len) {
        return Err(MaterialError::InvalidKey("d, p and q must be shorter than the modulus"));
    }
    if trimmed(parts.e).len() > MAX_EXPONENT_LEN {
        return Err(MaterialError::InvalidKey("the public exponent is too large"));
    }
    let primes = match (parts.p, parts.q) {
        (Some(p), Some(q)) => vec![uint(p)?, uint(q)?],
        (None, None) => Vec::new(),
        _ => return Err(MaterialError::InvalidKey("p and q must be given together")),
    };
    rsa::PrivateKey::from_components(uint(parts.n)?, uint(parts.e)?, uint(parts.d)?, primes)
        .map_err(|_| MaterialError::InvalidKey("the RSA members do not form a valid key"))
}

/// `bytes` without its leading zero bytes (JWK integers may carry one).
fn trimmed(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// A big-endian JWK integer, leading zero bytes ignored.
fn uint(bytes: &[u8]) -> Result<BoxedUint, MaterialError> {
    let trimmed = trimmed(bytes);
    let bits = u32::try_from(trimmed.len().max(1) * 8).map_err(|_| MaterialError::InvalidKey("integer too long"))?;
    BoxedUint::from_be_slice(trimmed, bits).map_err(|_| MaterialError::InvalidKey("malformed integer"))
}

/// Encrypts (or wraps) `plaintext` with the public key under `alg`.
pub(crate) fn encrypt(
    key: &rsa::PrivateKey,
    alg: EncryptionAlgorithm,
    plaintext: &[u8],
) -> Result<Vec<u8>, MaterialError> {
    let public = key.as_public_key();
    Ok(match alg {
        EncryptionAlgorithm::Rsa15 => public.pkcs1v15_encrypt(plaintext)?,
        EncryptionAlgorithm::RsaOaep => public.oaep_encrypt::<Sha1>(plaintext)?,
        EncryptionAlgorithm::RsaOaep256 => public.oaep_encrypt::<Sha256>(plaintext)?,
    })
}

/// Decrypts (or unwraps) under `alg`; the plaintext is wiped when dropped.
pub(crate) fn decrypt(
    key: &rsa::PrivateKey,
    alg: EncryptionAlgorithm,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, MaterialError> {
    Ok(Zeroizing::new(match alg {
        EncryptionAlgorithm::Rsa15 => key.pkcs1v15_decrypt(ciphertext)?,
        EncryptionAlgorithm::RsaOaep => key.oaep_decrypt::<Sha1>(ciphertext)?,
        EncryptionAlgorithm::RsaOaep256 => key.oaep_decrypt::<Sha256>(ciphertext)?,
    }))
}

/// Signs a caller's digest `hash` of `digest`, with `padding`.
pub(crate) fn sign(
    key: &rsa::PrivateKey,
    padding: RsaPadding,
    digest: Digest,
    hash: &[u8],
) -> Result<Vec<u8>, MaterialError> {
    Ok(match (padding, digest) {
        (RsaPadding::Pkcs1v15, Digest::Sha256) => key.pkcs1v15_sign_prehash::<Sha256>(hash)?,
        (RsaPadding::Pkcs1v15, Digest::Sha384) => key.pkcs1v15_sign_prehash::<Sha384>(hash)?,
        (RsaPadding::Pkcs1v15, Digest::Sha512) => key.pkcs1v15_sign_prehash::<Sha512>(hash)?,
        (RsaPadding::Pss, Digest::Sha256) => key.pss_sign_prehash::<Sha256>(hash)?,
        (RsaPadding::Pss, Digest::Sha384) => key.pss_sign_prehash::<Sha384>(hash)?,
        (RsaPadding::Pss, Digest::Sha512) => key.pss_sign_prehash::<Sha512>(hash)?,
    })
}

/// Whether `signature` is this key's signature of `hash`.
pub(crate) fn verify(
    key: &rsa::PrivateKey,
    padding: RsaPadding,
    digest: Digest,
    hash: &[u8],
    signature: &[u8],
) -> bool {
    let public = key.as_public_key();
    match (padding, digest) {
        (RsaPadding::Pkcs1v15, Digest::Sha256) => public.pkcs1v15_verify_prehash::<Sha256>(hash, signature),
        (RsaPadding::Pkcs1v15, Digest::Sha384) => public.pkcs1v15_verify_prehash::<Sha384>(hash, signature),
        (RsaPadding::Pkcs1v15, Digest::Sha512) => public.pkcs1v15_verify_prehash::<Sha512>(hash, signature),
        (RsaPadding::Pss, Digest::Sha256) => public.pss_verify_prehash::<Sha256>(hash, signature),
        (RsaPadding::Pss, Digest::Sha384) => public.pss_verify_prehash::<Sha384>(hash, signature),
        (RsaPadding::Pss, Digest::Sha512) => public.pss_verify_prehash::<Sha512>(hash, signature),
    }
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};

    fn bytes(n: &BoxedUint) -> Vec<u8> {
        n.to_be_bytes_trimmed_vartime().into_vec()
    }

    #[test]
    fn import_takes_a_key_with_or_without_its_primes_and_refuses_oversized_members() {
        let key = generate(2048).expect("generate");
        let (n, e, d) = (bytes(key.n().as_ref()), bytes(key.e()), bytes(key.d()));
        let (p, q) = (bytes(&key.primes()[0]), bytes(&key.primes()[1]));
        let with_zero = [&[0u8][..], &n].concat();
        let full = RsaComponents { n: &with_zero, e: &e, d: &d, p: Some(&p), q: Some(&q) };
        assert_eq!(import(&full).expect("import").n(), key.n());
        let recovered = RsaComponents { p: None, q: None, ..full };
        assert_eq!(import(&recovered).expect("primes recovered").n(), key.n());

        // Megabyte integers are refused on their length, before any arithmetic.
        let huge = vec![0xffu8; 1 << 20];
        let oversized = [
            RsaComponents { n: &huge, ..recovered },
            RsaComponents { d: &huge, ..recovered },
            RsaComponents { p: Some(&huge), q: Some(&q), ..recovered },
            RsaComponents { e: &huge, ..recovered },
        ];
        for parts in &oversized {
            assert!(matches!(import(parts), Err(MaterialError::InvalidKey(_))));
        }
        let short = RsaComponents { n: &n[..128], ..recovered };
        assert!(matches!(import(&short), Err(MaterialError::InvalidKey(_))));
        assert!(matches!(
            import(&RsaComponents { p: Some(&p), q: None, ..recovered }),
            Err(MaterialError::InvalidKey(_))
        ));
    }
}
