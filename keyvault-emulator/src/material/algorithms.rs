//! Key Vault's algorithm names (`alg`) for the operations the emulator
//! implements, and what each needs of its input.

/// `JsonWebKeyEncryptionAlgorithm` values for RSA keys: encrypt, decrypt,
/// wrapkey and unwrapkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EncryptionAlgorithm {
    /// PKCS#1 v1.5 padding. Key Vault still offers it for compatibility.
    Rsa15,
    /// OAEP with SHA-1 and MGF1-SHA-1 (RFC 8017 defaults).
    RsaOaep,
    /// OAEP with SHA-256 and MGF1-SHA-256.
    RsaOaep256,
}

impl EncryptionAlgorithm {
    /// Parses `alg`; the symmetric (`A256GCM`, …) algorithms exist only in
    /// Managed HSM, so a vault does not know them.
    pub(crate) fn parse(alg: &str) -> Option<Self> {
        match alg {
            "RSA1_5" => Some(Self::Rsa15),
            "RSA-OAEP" => Some(Self::RsaOaep),
            "RSA-OAEP-256" => Some(Self::RsaOaep256),
            _ => None,
        }
    }
}

/// The digest a signature algorithm signs, by length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Digest {
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    /// The digest's length in bytes; a sign or verify request carrying a
    /// digest of another length is refused.
    pub(crate) fn len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

/// How an RSA signature pads the digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RsaPadding {
    /// RSASSA-PKCS1-v1_5 (`RS256`, …).
    Pkcs1v15,
    /// RSASSA-PSS with a salt as long as the digest (`PS256`, …).
    Pss,
}

/// `JsonWebKeySignatureAlgorithm` values: sign and verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignatureAlgorithm {
    /// `RS*` (PKCS#1 v1.5) and `PS*` (PSS) over a SHA-2 digest.
    Rsa(RsaPadding, Digest),
    /// ECDSA on the curve the algorithm names (`ES256` P-256, `ES256K`
    /// secp256k1, `ES384` P-384, `ES512` P-521).
    Es(super::Curve),
}

impl SignatureAlgorithm {
    /// Parses an `alg` name; `None` for one Key Vault does not sign with.
    pub(crate) fn parse(alg: &str) -> Option<Self> {
        use super::Curve;
        Some(match alg {
            "RS256" => Self::Rsa(RsaPadding::Pkcs1v15, Digest::Sha256),
            "RS384" => Self::Rsa(RsaPadding::Pkcs1v15, Digest::Sha384),
            "RS512" => Self::Rsa(RsaPadding::Pkcs1v15, Digest::Sha512),
            "PS256" => Self::Rsa(RsaPadding::Pss, Digest::Sha256),
            "PS384" => Self::Rsa(RsaPadding::Pss, Digest::Sha384),
            "PS512" => Self::Rsa(RsaPadding::Pss, Digest::Sha512),
            "ES256" => Self::Es(Curve::P256),
            "ES256K" => Self::Es(Curve::P256K),
            "ES384" => Self::Es(Curve::P384),
            "ES512" => Self::Es(Curve::P521),
            _ => return None,
        })
    }

    /// The digest the request's `value` (sign) or `digest` (verify) must be.
    pub(crate) fn digest(self) -> Digest {
        match self {
            Self::Rsa(_, digest) => digest,
            Self::Es(curve) => curve.digest(),
        }
    }
}
