//! Key material: generating and importing RSA and EC keys, their public JWK
//! parts, the PKCS#8 form kept on disk, and the operations behind the key
//! operation routes: RSA encryption (`RSA1_5`, `RSA-OAEP`, `RSA-OAEP-256`)
//! for encrypt/decrypt/wrapkey/unwrapkey, and RSA (`RS*`, `PS*`) and ECDSA
//! (`ES*`) signatures for sign/verify. All of it is real cryptography, so a
//! caller that encrypts or verifies locally with the public key
//! interoperates with the emulator exactly as with Key Vault.

mod algorithms;
mod ec;
mod rsa_key;

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

pub(crate) use self::algorithms::{EncryptionAlgorithm, SignatureAlgorithm};
pub(crate) use self::ec::Curve;
use self::ec::EcKey;
pub(crate) use self::rsa_key::{RSA_KEY_SIZES, RsaComponents};

/// Key Vault's `kty` values the emulator can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum KeyType {
    #[serde(rename = "RSA")]
    Rsa,
    #[serde(rename = "RSA-HSM")]
    RsaHsm,
    #[serde(rename = "EC")]
    Ec,
    #[serde(rename = "EC-HSM")]
    EcHsm,
}

impl KeyType {
    /// Parses a `kty` string. `oct` and `oct-HSM` exist only in Managed HSM,
    /// so a vault refuses them like any unknown type.
    pub(crate) fn parse(kty: &str) -> Option<Self> {
        match kty {
            "RSA" => Some(Self::Rsa),
            "RSA-HSM" => Some(Self::RsaHsm),
            "EC" => Some(Self::Ec),
            "EC-HSM" => Some(Self::EcHsm),
            _ => None,
        }
    }

    /// The `kty` string Key Vault answers with.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::RsaHsm => "RSA-HSM",
            Self::Ec => "EC",
            Self::EcHsm => "EC-HSM",
        }
    }

    /// Whether the key is RSA (software or HSM), which decides the
    /// algorithms and operations it allows.
    pub(crate) fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa | Self::RsaHsm)
    }

    /// Whether the key lives in an HSM: only a premium vault holds those.
    pub(crate) fn is_hsm(self) -> bool {
        matches!(self, Self::RsaHsm | Self::EcHsm)
    }

    /// The `key_ops` Key Vault gives a new key of this type when the caller
    /// names none.
    pub(crate) fn default_key_ops(self) -> Vec<String> {
        let ops: &[&str] = if self.is_rsa() {
            &["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
        } else {
            &["sign", "verify"]
        };
        ops.iter().map(|op| op.to_string()).collect()
    }
}

/// What to generate: the size and shape a rotation must reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySpec {
    Rsa { bits: usize },
    Ec(Curve),
}

/// Why a key operation, an import or a key encoding failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MaterialError {
    #[error("RSA: {0}")]
    Rsa(#[from] rsa::Error),
    #[error("PKCS#8: {0}")]
    Pkcs8(#[from] rsa::pkcs8::Error),
    /// The key cannot do what was asked (an EC key asked to encrypt, an
    /// algorithm for another curve).
    #[error("{0}")]
    Unsupported(&'static str),
    /// Imported or stored key members that do not form a key.
    #[error("{0}")]
    InvalidKey(&'static str),
    /// The input does not fit the key (a digest ECDSA cannot sign).
    #[error("the input does not fit the key and algorithm")]
    InvalidInput,
}

/// The public half of a key as JWK members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicJwk {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { crv: &'static str, x: Vec<u8>, y: Vec<u8> },
}

/// A private key of one key version.
pub(crate) enum KeyMaterial {
    Rsa(rsa::PrivateKey),
    Ec(EcKey),
}

impl std::fmt::Debug for KeyMaterial {
    /// Names the kind of key only: private material never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rsa(_) => f.write_str("KeyMaterial::Rsa(..)"),
            Self::Ec(key) => write!(f, "KeyMaterial::Ec({}, ..)", key.curve().as_str()),
        }
    }
}

impl KeyMaterial {
    /// Generates a new key. RSA generation takes long (seconds for 4096
    /// bits): call it off the async runtime.
    pub(crate) fn generate(spec: KeySpec) -> Result<Self, MaterialError> {
        match spec {
            KeySpec::Rsa { bits } => Ok(Self::Rsa(rsa_key::generate(bits)?)),
            KeySpec::Ec(curve) => Ok(Self::Ec(EcKey::generate(curve)?)),
        }
    }

    /// An imported RSA key (`PUT /keys/{name}` with `n`, `e`, `d`, …).
    pub(crate) fn import_rsa(parts: &RsaComponents<'_>) -> Result<Self, MaterialError> {
        rsa_key::import(parts).map(Self::Rsa)
    }

    /// An imported EC key: the scalar `d`, checked against `x` and `y`.
    pub(crate) fn import_ec(curve: Curve, d: &[u8], x: Option<&[u8]>, y: Option<&[u8]>) -> Result<Self, MaterialError> {
        EcKey::import(curve, d, x, y).map(Self::Ec)
    }

    /// Restores a key from its PKCS#8 DER document.
    pub(crate) fn from_pkcs8(kty: KeyType, der: Zeroizing<Vec<u8>>) -> Result<Self, MaterialError> {
        if kty.is_rsa() {
            Ok(Self::Rsa(rsa::PrivateKey::from_pkcs8_der(&der)?))
        } else {
            EcKey::from_pkcs8(&der).map(Self::Ec)
        }
    }

    /// The PKCS#8 DER document stored on disk.
    pub(crate) fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, MaterialError> {
        match self {
            Self::Rsa(key) => Ok(Zeroizing::new(key.to_pkcs8_der()?.as_bytes().to_vec())),
            Self::Ec(key) => key.to_pkcs8(),
        }
    }

    /// The public JWK members (`n`/`e` big-endian without leading zeros,
    /// or `crv`/`x`/`y`).
    pub(crate) fn public_jwk(&self) -> PublicJwk {
        match self {
            Self::Rsa(key) => PublicJwk::Rsa {
                n: key.n().as_ref().to_be_bytes_trimmed_vartime().into_vec(),
                e: key.e().to_be_bytes_trimmed_vartime().into_vec(),
            },
            Self::Ec(key) => key.public_jwk(),
        }
    }

    /// The spec that generates a key of the same type and size.
    pub(crate) fn spec(&self) -> KeySpec {
        match self {
            Self::Rsa(key) => KeySpec::Rsa { bits: key.size() * 8 },
            Self::Ec(key) => KeySpec::Ec(key.curve()),
        }
    }

    /// Encryption with the public key (wrapkey and encrypt).
    pub(crate) fn encrypt(&self, alg: EncryptionAlgorithm, plaintext: &[u8]) -> Result<Vec<u8>, MaterialError> {
        rsa_key::encrypt(self.rsa()?, alg, plaintext)
    }

    /// Decryption with the private key (unwrapkey and decrypt).
    pub(crate) fn decrypt(
        &self,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, MaterialError> {
        rsa_key::decrypt(self.rsa()?, alg, ciphertext)
    }

    /// Signs `digest`; the caller has checked its length against `alg`.
    pub(crate) fn sign(&self, alg: SignatureAlgorithm, digest: &[u8]) -> Result<Vec<u8>, MaterialError> {
        match (self, alg) {
            (Self::Rsa(key), SignatureAlgorithm::Rsa(padding, hash)) => rsa_key::sign(key, padding, hash, digest),
            (Self::Ec(key), SignatureAlgorithm::Es(curve)) if key.curve() == curve => key.sign(digest),
            _ => Err(incompatible()),
        }
    }

    /// Whether `signature` is this key's over `digest`.
    pub(crate) fn verify(
        &self,
        alg: SignatureAlgorithm,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, MaterialError> {
        match (self, alg) {
            (Self::Rsa(key), SignatureAlgorithm::Rsa(padding, hash)) => {
                Ok(rsa_key::verify(key, padding, hash, digest, signature))
            }
            (Self::Ec(key), SignatureAlgorithm::Es(curve)) if key.curve() == curve => Ok(key.verify(digest, signature)),
            _ => Err(incompatible()),
        }
    }

    fn rsa(&self) -> Result<&rsa::PrivateKey, MaterialError> {
        match self {
            Self::Rsa(key) => Ok(key),
            Self::Ec(_) => Err(MaterialError::Unsupported("encryption needs an RSA key, not an EC key")),
        }
    }
}

fn incompatible() -> MaterialError {
    MaterialError::Unsupported("the key and the signature algorithm are incompatible")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_round_trips_through_pkcs8_and_every_padding() {
        let key = KeyMaterial::generate(KeySpec::Rsa { bits: 2048 }).expect("generate");
        assert_eq!(key.spec(), KeySpec::Rsa { bits: 2048 });
        let restored = KeyMaterial::from_pkcs8(KeyType::Rsa, key.to_pkcs8().expect("encode")).expect("decode");
        assert_eq!(restored.public_jwk(), key.public_jwk());
        let PublicJwk::Rsa { n, e } = key.public_jwk() else {
            panic!("RSA key must have an RSA JWK");
        };
        assert_eq!(n.len(), 256);
        assert_eq!(e, vec![1, 0, 1]);
        for alg in ["RSA1_5", "RSA-OAEP", "RSA-OAEP-256"].map(|a| EncryptionAlgorithm::parse(a).expect("known")) {
            let wrapped = key.encrypt(alg, &[7u8; 32]).expect("encrypt");
            let unwrapped = restored.decrypt(alg, &wrapped).expect("decrypt");
            assert_eq!(unwrapped.as_slice(), &[7u8; 32]);
        }
        let sha1_wrapped = key.encrypt(EncryptionAlgorithm::RsaOaep, b"x").expect("encrypt");
        assert!(key.decrypt(EncryptionAlgorithm::RsaOaep256, &sha1_wrapped).is_err());
    }

    #[test]
    fn rsa_signatures_verify_only_with_their_own_algorithm_and_digest() {
        let key = KeyMaterial::generate(KeySpec::Rsa { bits: 2048 }).expect("generate");
        for name in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            let alg = SignatureAlgorithm::parse(name).expect("known");
            let digest = vec![3u8; alg.digest().len()];
            let signature = key.sign(alg, &digest).expect("sign");
            assert!(key.verify(alg, &digest, &signature).expect("verify"), "{name}");
            assert!(!key.verify(alg, &vec![4u8; digest.len()], &signature).expect("verify"), "{name}");
        }
        let ps256 = SignatureAlgorithm::parse("PS256").expect("known");
        let rs256 = SignatureAlgorithm::parse("RS256").expect("known");
        let signature = key.sign(ps256, &[1u8; 32]).expect("sign");
        assert!(!key.verify(rs256, &[1u8; 32], &signature).expect("verify"));
        assert!(key.sign(SignatureAlgorithm::parse("ES256").expect("known"), &[1u8; 32]).is_err());
    }

    #[test]
    fn ec_keys_sign_with_their_curve_only_and_refuse_encryption() {
        let key = KeyMaterial::generate(KeySpec::Ec(Curve::P256)).expect("generate");
        let PublicJwk::Ec { crv, x, y } = key.public_jwk() else {
            panic!("EC key must have an EC JWK");
        };
        assert_eq!((crv, x.len(), y.len()), ("P-256", 32, 32));
        let restored = KeyMaterial::from_pkcs8(KeyType::Ec, key.to_pkcs8().expect("encode")).expect("decode");
        assert_eq!(restored.public_jwk(), key.public_jwk());
        let es256 = SignatureAlgorithm::parse("ES256").expect("known");
        let signature = key.sign(es256, &[5u8; 32]).expect("sign");
        assert_eq!(signature.len(), 64);
        assert!(restored.verify(es256, &[5u8; 32], &signature).expect("verify"));
        assert!(key.sign(SignatureAlgorithm::parse("ES384").expect("known"), &[5u8; 48]).is_err());
        assert!(key.encrypt(EncryptionAlgorithm::RsaOaep256, b"x").is_err());
    }
}
