//! Key material: generating RSA and P-256 keys, their public JWK parts, the
//! PKCS#8 form kept on disk, and the RSA-OAEP operations behind wrapkey,
//! unwrapkey, encrypt and decrypt. All of it is real cryptography, so a
//! caller that wraps locally with the public key interoperates with the
//! emulator exactly as with Key Vault.

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use sha1::Sha1;
use zeroize::Zeroizing;

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

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::RsaHsm => "RSA-HSM",
            Self::Ec => "EC",
            Self::EcHsm => "EC-HSM",
        }
    }

    pub(crate) fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa | Self::RsaHsm)
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
    EcP256,
}

/// RSA modulus sizes Key Vault offers.
pub(crate) const RSA_KEY_SIZES: [usize; 3] = [2048, 3072, 4096];

/// The key-encryption algorithms the emulator implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// OAEP with SHA-1 and MGF1-SHA-1 (RFC 8017 defaults).
    RsaOaep,
    /// OAEP with SHA-256 and MGF1-SHA-256.
    RsaOaep256,
}

impl Algorithm {
    pub(crate) fn parse(alg: &str) -> Option<Self> {
        match alg {
            "RSA-OAEP" => Some(Self::RsaOaep),
            "RSA-OAEP-256" => Some(Self::RsaOaep256),
            _ => None,
        }
    }
}

/// Why a key operation or key encoding failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MaterialError {
    #[error("RSA: {0}")]
    Rsa(#[from] rsa::Error),
    #[error("PKCS#8: {0}")]
    Pkcs8(#[from] rsa::pkcs8::Error),
    #[error("EC key: {0}")]
    Ec(#[from] rcgen::Error),
    #[error("{0}")]
    Unsupported(&'static str),
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
    /// A P-256 key; only its public point is ever used (EC keys exist so
    /// callers can meet an unsupported key type), the PKCS#8 document is
    /// kept so the key survives restarts unchanged.
    EcP256 {
        pkcs8: Zeroizing<Vec<u8>>,
        public: PublicJwk,
    },
}

impl std::fmt::Debug for KeyMaterial {
    /// Names the kind of key only: private material never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Rsa(_) => "KeyMaterial::Rsa(..)",
            Self::EcP256 { .. } => "KeyMaterial::EcP256(..)",
        })
    }
}

impl KeyMaterial {
    /// Generates a new key. RSA generation takes long (seconds for 4096
    /// bits): call it off the async runtime.
    pub(crate) fn generate(spec: KeySpec) -> Result<Self, MaterialError> {
        match spec {
            KeySpec::Rsa { bits } => {
                let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits)?;
                Ok(Self::Rsa(key))
            }
            KeySpec::EcP256 => {
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                Self::ec_from_pkcs8(Zeroizing::new(pair.serialize_der()))
            }
        }
    }

    /// Restores a key from its PKCS#8 DER document.
    pub(crate) fn from_pkcs8(kty: KeyType, der: Zeroizing<Vec<u8>>) -> Result<Self, MaterialError> {
        if kty.is_rsa() { Ok(Self::Rsa(rsa::PrivateKey::from_pkcs8_der(&der)?)) } else { Self::ec_from_pkcs8(der) }
    }

    fn ec_from_pkcs8(pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, MaterialError> {
        let pair = rcgen::KeyPair::try_from(pkcs8.as_slice())?;
        if !pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(MaterialError::Unsupported("only P-256 EC keys are supported"));
        }
        // An uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = pair.public_key_raw();
        if point.len() != 65 || point[0] != 4 {
            return Err(MaterialError::Unsupported("unexpected P-256 public key encoding"));
        }
        let public = PublicJwk::Ec { crv: "P-256", x: point[1..33].to_vec(), y: point[33..].to_vec() };
        Ok(Self::EcP256 { pkcs8, public })
    }

    /// The PKCS#8 DER document stored on disk.
    pub(crate) fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, MaterialError> {
        match self {
            Self::Rsa(key) => Ok(Zeroizing::new(key.to_pkcs8_der()?.as_bytes().to_vec())),
            Self::EcP256 { pkcs8, .. } => Ok(pkcs8.clone()),
        }
    }

    /// The public JWK members (`n`/`e` or `crv`/`x`/`y`), big-endian
    /// without leading zeros.
    pub(crate) fn public_jwk(&self) -> PublicJwk {
        match self {
            Self::Rsa(key) => PublicJwk::Rsa {
                n: key.n().as_ref().to_be_bytes_trimmed_vartime().into_vec(),
                e: key.e().to_be_bytes_trimmed_vartime().into_vec(),
            },
            Self::EcP256 { public, .. } => public.clone(),
        }
    }

    /// The spec that generates a key of the same type and size.
    pub(crate) fn spec(&self) -> KeySpec {
        match self {
            Self::Rsa(key) => KeySpec::Rsa { bits: key.size() * 8 },
            Self::EcP256 { .. } => KeySpec::EcP256,
        }
    }

    /// RSA-OAEP encryption with the public key (wrapkey and encrypt).
    pub(crate) fn encrypt(&self, alg: Algorithm, plaintext: &[u8]) -> Result<Vec<u8>, MaterialError> {
        let public = self.rsa()?.as_public_key();
        Ok(match alg {
            Algorithm::RsaOaep => public.oaep_encrypt::<Sha1>(plaintext)?,
            Algorithm::RsaOaep256 => public.oaep_encrypt::<Sha256>(plaintext)?,
        })
    }

    /// RSA-OAEP decryption with the private key (unwrapkey and decrypt).
    pub(crate) fn decrypt(&self, alg: Algorithm, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, MaterialError> {
        let key = self.rsa()?;
        Ok(Zeroizing::new(match alg {
            Algorithm::RsaOaep => key.oaep_decrypt::<Sha1>(ciphertext)?,
            Algorithm::RsaOaep256 => key.oaep_decrypt::<Sha256>(ciphertext)?,
        }))
    }

    fn rsa(&self) -> Result<&rsa::PrivateKey, MaterialError> {
        match self {
            Self::Rsa(key) => Ok(key),
            Self::EcP256 { .. } => Err(MaterialError::Unsupported("RSA-OAEP needs an RSA key, not an EC key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_round_trips_through_pkcs8_and_both_oaep_variants() {
        let key = KeyMaterial::generate(KeySpec::Rsa { bits: 2048 }).expect("generate");
        assert_eq!(key.spec(), KeySpec::Rsa { bits: 2048 });
        let restored = KeyMaterial::from_pkcs8(KeyType::Rsa, key.to_pkcs8().expect("encode")).expect("decode");
        assert_eq!(restored.public_jwk(), key.public_jwk());
        let PublicJwk::Rsa { n, e } = key.public_jwk() else {
            panic!("RSA key must have an RSA JWK");
        };
        assert_eq!(n.len(), 256);
        assert_eq!(e, vec![1, 0, 1]);
        for alg in [Algorithm::RsaOaep, Algorithm::RsaOaep256] {
            let wrapped = key.encrypt(alg, &[7u8; 32]).expect("encrypt");
            let unwrapped = restored.decrypt(alg, &wrapped).expect("decrypt");
            assert_eq!(unwrapped.as_slice(), &[7u8; 32]);
        }
        let sha1_wrapped = key.encrypt(Algorithm::RsaOaep, b"x").expect("encrypt");
        assert!(key.decrypt(Algorithm::RsaOaep256, &sha1_wrapped).is_err());
    }

    #[test]
    fn ec_keys_have_a_p256_point_and_refuse_oaep() {
        let key = KeyMaterial::generate(KeySpec::EcP256).expect("generate");
        let PublicJwk::Ec { crv, x, y } = key.public_jwk() else {
            panic!("EC key must have an EC JWK");
        };
        assert_eq!((crv, x.len(), y.len()), ("P-256", 32, 32));
        let restored = KeyMaterial::from_pkcs8(KeyType::Ec, key.to_pkcs8().expect("encode")).expect("decode");
        assert_eq!(restored.public_jwk(), key.public_jwk());
        assert!(key.encrypt(Algorithm::RsaOaep256, b"x").is_err());
    }
}
