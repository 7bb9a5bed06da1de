//! Elliptic-curve keys on the four curves Key Vault offers (P-256, P-256K,
//! P-384, P-521): generation, import from a JWK's `d`, the PKCS#8 form kept
//! on disk, and ECDSA over a caller's digest with the fixed-size `r || s`
//! signatures JWS and Key Vault use.

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::elliptic_curve::Generate;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use zeroize::Zeroizing;

use super::algorithms::Digest;
use super::{MaterialError, PublicJwk};

/// Key Vault's `crv` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    /// secp256k1.
    P256K,
    P384,
    P521,
}

impl Curve {
    /// Every curve, for parsing and for reading PKCS#8 of any of them.
    pub(crate) const ALL: [Self; 4] = [Self::P256, Self::P256K, Self::P384, Self::P521];

    /// Parses a JWK `crv` name.
    pub(crate) fn parse(crv: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|curve| curve.as_str() == crv)
    }

    /// The JWK `crv` name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P256K => "P-256K",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    /// The digest the curve's one signature algorithm signs.
    pub(crate) fn digest(self) -> Digest {
        match self {
            Self::P256 | Self::P256K => Digest::Sha256,
            Self::P384 => Digest::Sha384,
            Self::P521 => Digest::Sha512,
        }
    }
}

/// A private key on one of the curves.
pub(crate) enum EcKey {
    P256(p256::ecdsa::SigningKey),
    P256K(k256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    P521(p521::ecdsa::SigningKey),
}

/// Runs `$body` with `$key` bound to the curve-specific signing key and
/// `$module` to its crate: the four curves share every operation but not a
/// type, and the generic bounds that would unite them are longer than this.
macro_rules! on_curve {
    ($ec:expr, |$key:ident| $body:expr) => {
        match $ec {
            EcKey::P256($key) => $body,
            EcKey::P256K($key) => $body,
            EcKey::P384($key) => $body,
            EcKey::P521($key) => $body,
        }
    };
    ($ec:expr, |$key:ident, $module:ident| $body:expr) => {
        match $ec {
            EcKey::P256($key) => {
                use p256 as $module;
                $body
            }
            EcKey::P256K($key) => {
                use k256 as $module;
                $body
            }
            EcKey::P384($key) => {
                use p384 as $module;
                $body
            }
            EcKey::P521($key) => {
                use p521 as $module;
                $body
            }
        }
    };
}

/// Runs `$body` with `$module` bound to the crate of `$curve`.
macro_rules! for_curve {
    ($curve:expr, |$module:ident| $body:expr) => {
        match $curve {
            Curve::P256 => {
                use p256 as $module;
                $body
            }
            Curve::P256K => {
                use k256 as $module;
                $body
            }
            Curve::P384 => {
                use p384 as $module;
                $body
            }
            Curve::P521 => {
                use p521 as $module;
                $body
            }
        }
    };
}

impl EcKey {
    /// A fresh key on `curve` from the system's random number generator.
    pub(crate) fn generate(curve: Curve) -> Result<Self, MaterialError> {
        let failed = |_| MaterialError::Unsupported("the system random number generator failed");
        Ok(for_curve!(curve, |c| Self::from(
            c::ecdsa::SigningKey::try_generate_from_rng(&mut getrandom::SysRng).map_err(failed)?
        )))
    }

    /// A key from a JWK's private scalar `d`; `x` and `y`, when given,
    /// must be its public point.
    pub(crate) fn import(curve: Curve, d: &[u8], x: Option<&[u8]>, y: Option<&[u8]>) -> Result<Self, MaterialError> {
        let invalid = |_| MaterialError::InvalidKey("d is not a private key on the named curve");
        let key: Self = for_curve!(curve, |c| Self::from(c::ecdsa::SigningKey::from_slice(d).map_err(invalid)?));
        let PublicJwk::Ec { x: own_x, y: own_y, .. } = key.public_jwk() else {
            unreachable!("an EC key has an EC JWK");
        };
        if x.is_some_and(|x| x != own_x) || y.is_some_and(|y| y != own_y) {
            return Err(MaterialError::InvalidKey("x and y are not the public point of d"));
        }
        Ok(key)
    }

    /// Restores a key from PKCS#8, whichever curve its OID names.
    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<Self, MaterialError> {
        Curve::ALL
            .into_iter()
            .find_map(|curve| for_curve!(curve, |c| c::ecdsa::SigningKey::from_pkcs8_der(der).ok().map(Self::from)))
            .ok_or(MaterialError::InvalidKey("not a PKCS#8 key on a supported curve"))
    }

    /// The key as PKCS#8 DER, for the store and backups; wiped when dropped.
    pub(crate) fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, MaterialError> {
        let document = on_curve!(self, |key| key.to_pkcs8_der())?;
        Ok(Zeroizing::new(document.as_bytes().to_vec()))
    }

    /// The key's curve.
    pub(crate) fn curve(&self) -> Curve {
        match self {
            Self::P256(_) => Curve::P256,
            Self::P256K(_) => Curve::P256K,
            Self::P384(_) => Curve::P384,
            Self::P521(_) => Curve::P521,
        }
    }

    /// `crv`, `x` and `y`: the affine coordinates, each as long as the
    /// curve's field.
    pub(crate) fn public_jwk(&self) -> PublicJwk {
        let point = on_curve!(self, |key| key.verifying_key().to_sec1_point(false).as_bytes().to_vec());
        // An uncompressed SEC1 point: 0x04 || x || y.
        let (x, y) = point[1..].split_at((point.len() - 1) / 2);
        PublicJwk::Ec { crv: self.curve().as_str(), x: x.to_vec(), y: y.to_vec() }
    }

    /// ECDSA over `digest`, as `r || s`.
    pub(crate) fn sign(&self, digest: &[u8]) -> Result<Vec<u8>, MaterialError> {
        let invalid = |_| MaterialError::InvalidInput;
        on_curve!(self, |key, c| {
            let signature: c::ecdsa::Signature = key.sign_prehash(digest).map_err(invalid)?;
            Ok(signature.to_bytes().to_vec())
        })
    }

    /// Whether `signature` (`r || s`) is this key's over `digest`.
    pub(crate) fn verify(&self, digest: &[u8], signature: &[u8]) -> bool {
        on_curve!(self, |key, c| c::ecdsa::Signature::from_slice(signature)
            .is_ok_and(|signature| key.verifying_key().verify_prehash(digest, &signature).is_ok()))
    }
}

impl From<p256::ecdsa::SigningKey> for EcKey {
    fn from(key: p256::ecdsa::SigningKey) -> Self {
        Self::P256(key)
    }
}

impl From<k256::ecdsa::SigningKey> for EcKey {
    fn from(key: k256::ecdsa::SigningKey) -> Self {
        Self::P256K(key)
    }
}

impl From<p384::ecdsa::SigningKey> for EcKey {
    fn from(key: p384::ecdsa::SigningKey) -> Self {
        Self::P384(key)
    }
}

impl From<p521::ecdsa::SigningKey> for EcKey {
    fn from(key: p521::ecdsa::SigningKey) -> Self {
        Self::P521(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_curve_signs_verifies_and_survives_pkcs8() {
        for curve in Curve::ALL {
            let key = EcKey::generate(curve).expect("generate");
            assert_eq!(key.curve(), curve);
            let digest = vec![9u8; curve.digest().len()];
            let signature = key.sign(&digest).expect("sign");
            let restored = EcKey::from_pkcs8(&key.to_pkcs8().expect("encode")).expect("decode");
            assert_eq!(restored.curve(), curve);
            assert!(restored.verify(&digest, &signature), "{curve:?}");
            let mut other = digest.clone();
            other[0] ^= 1;
            assert!(!restored.verify(&other, &signature), "{curve:?}");
        }
    }

    #[test]
    fn import_checks_the_public_point() {
        let key = EcKey::generate(Curve::P384).expect("generate");
        let d = on_curve!(&key, |k| k.to_bytes().to_vec());
        let PublicJwk::Ec { x, y, .. } = key.public_jwk() else { unreachable!() };
        assert_eq!(x.len(), 48);
        let imported = EcKey::import(Curve::P384, &d, Some(&x), Some(&y)).expect("import");
        assert_eq!(imported.public_jwk(), key.public_jwk());
        assert!(EcKey::import(Curve::P384, &d, Some(&y), Some(&x)).is_err());
        assert!(EcKey::import(Curve::P256, &d, None, None).is_err());
    }
}
