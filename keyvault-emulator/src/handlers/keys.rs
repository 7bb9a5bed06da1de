//! Create, import and update bodies in the vault's terms, checked the way
//! Key Vault checks them: key types and sizes, `key_ops`, the vault tier
//! for HSM keys, and the rules tying `exportable` to a release policy.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::blocking;
use crate::error::ServiceError;
use crate::material::{Curve, KeyMaterial, KeySpec, KeyType, MaterialError, RSA_KEY_SIZES, RsaComponents};
use crate::model::{NewVersion, PropsChange, ReleasePolicy};
use crate::settings::Sku;
use crate::wire::{self, AttributesRequest, CreateKeyRequest, ImportKeyRequest, ImportedJwk, UpdateKeyRequest};

const DEFAULT_RSA_BITS: usize = 2048;
/// The only RSA public exponent the emulator generates.
const RSA_PUBLIC_EXPONENT: u64 = 65537;
const KNOWN_KEY_OPS: [&str; 8] = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export"];

/// Validates `CreateKeyParameters` into the new version and what to generate.
pub(super) fn new_version(request: CreateKeyRequest, sku: Sku) -> Result<(NewVersion, KeySpec), ServiceError> {
    let kty_text = request.kty.ok_or_else(|| ServiceError::bad_parameter("Property kty is required."))?;
    let kty = key_type(&kty_text, sku)?;
    let spec = if kty.is_rsa() {
        let bits = request.key_size.map_or(DEFAULT_RSA_BITS, |size| size as usize);
        if !RSA_KEY_SIZES.contains(&bits) {
            return Err(ServiceError::bad_parameter(format!(
                "Property key_size has invalid value {bits}; RSA keys are 2048, 3072 or 4096 bits."
            )));
        }
        if request.public_exponent.is_some_and(|e| e != RSA_PUBLIC_EXPONENT) {
            return Err(ServiceError::bad_parameter(
                "Property public_exponent has invalid value; the emulator generates 65537 only.",
            ));
        }
        KeySpec::Rsa { bits }
    } else {
        KeySpec::Ec(curve(request.crv.as_deref().unwrap_or("P-256"))?)
    };
    let new = version(kty, request.key_ops, request.attributes, request.tags, request.release_policy)?;
    Ok((new, spec))
}

/// Validates `KeyImportParameters` into the new version and its key.
pub(super) async fn imported_version(
    request: ImportKeyRequest,
    sku: Sku,
) -> Result<(NewVersion, KeyMaterial), ServiceError> {
    let ImportKeyRequest { key: jwk, hsm, attributes, tags, release_policy } = request;
    let kty_text = jwk.kty.clone().ok_or_else(|| ServiceError::bad_parameter("Property key.kty is required."))?;
    let mut kty = match kty_text.as_str() {
        "oct" | "oct-HSM" => {
            return Err(ServiceError::bad_parameter(format!(
                "Key type {kty_text} can only be imported into a Managed HSM."
            )));
        }
        _ => key_type(&kty_text, sku)?,
    };
    if hsm == Some(true) {
        kty = key_type(if kty.is_rsa() { "RSA-HSM" } else { "EC-HSM" }, sku)?;
    }
    if jwk.key_hsm.is_some() {
        return Err(ServiceError::bad_parameter(
            "Importing an HSM key-transfer blob (key_hsm) is not supported by the emulator; import the key's JWK.",
        ));
    }
    let new = version(kty, jwk.key_ops.clone(), attributes, tags, release_policy)?;
    let material = blocking("import a key", move || import_material(&jwk, kty)).await??;
    Ok((new, material))
}

/// The private key of an imported JWK.
fn import_material(jwk: &ImportedJwk, kty: KeyType) -> Result<KeyMaterial, ServiceError> {
    let refused = |e: MaterialError| ServiceError::bad_parameter(format!("The key is not valid: {e}"));
    if kty.is_rsa() {
        let (n, e, d) = (member(&jwk.n, "n")?, member(&jwk.e, "e")?, member(&jwk.d, "d")?);
        let p = jwk.p.as_ref().map(|_| member(&jwk.p, "p")).transpose()?;
        let q = jwk.q.as_ref().map(|_| member(&jwk.q, "q")).transpose()?;
        let parts = RsaComponents {
            n: &n,
            e: &e,
            d: &d,
            p: p.as_deref().map(Vec::as_slice),
            q: q.as_deref().map(Vec::as_slice),
        };
        KeyMaterial::import_rsa(&parts).map_err(refused)
    } else {
        let crv = jwk.crv.as_deref().ok_or_else(|| ServiceError::bad_parameter("Property key.crv is required."))?;
        let d = member(&jwk.d, "d")?;
        let x = jwk.x.as_ref().map(|_| member(&jwk.x, "x")).transpose()?;
        let y = jwk.y.as_ref().map(|_| member(&jwk.y, "y")).transpose()?;
        KeyMaterial::import_ec(curve(crv)?, &d, x.as_deref().map(Vec::as_slice), y.as_deref().map(Vec::as_slice))
            .map_err(refused)
    }
}

/// A required base64url JWK member, decoded.
fn member(value: &Option<String>, name: &str) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
    let text =
        value.as_deref().ok_or_else(|| ServiceError::bad_parameter(format!("Property key.{name} is required.")))?;
    wire::from_base64url(text)
        .map(Zeroizing::new)
        .map_err(|_| ServiceError::bad_parameter(format!("Property key.{name} has invalid value.")))
}

/// A `kty` this vault's tier holds.
fn key_type(kty: &str, sku: Sku) -> Result<KeyType, ServiceError> {
    let kty = KeyType::parse(kty)
        .ok_or_else(|| ServiceError::bad_parameter(format!("Key type {kty} is not supported by this vault.")))?;
    if kty.is_hsm() && sku == Sku::Standard {
        return Err(ServiceError::bad_parameter(format!(
            "Key type {} requires a premium vault; this vault is standard.",
            kty.as_str()
        )));
    }
    Ok(kty)
}

fn curve(crv: &str) -> Result<Curve, ServiceError> {
    Curve::parse(crv).ok_or_else(|| {
        ServiceError::bad_parameter(format!("Property crv has invalid value {crv}; use P-256, P-256K, P-384 or P-521."))
    })
}

/// The attributes of a created or imported version.
fn version(
    kty: KeyType,
    key_ops: Option<Vec<String>>,
    attributes: Option<AttributesRequest>,
    tags: Option<BTreeMap<String, String>>,
    release_policy: Option<wire::ReleasePolicyWire>,
) -> Result<NewVersion, ServiceError> {
    let attributes = attributes.unwrap_or_default();
    let exportable = attributes.exportable.unwrap_or(false);
    let release_policy = release_policy.map(release_policy_of).transpose()?;
    check_release_settings(kty, exportable, release_policy.as_ref())?;
    Ok(NewVersion {
        kty,
        key_ops: match key_ops {
            Some(ops) => valid_key_ops(ops)?,
            None => kty.default_key_ops(),
        },
        enabled: attributes.enabled.unwrap_or(true),
        nbf: attributes.nbf,
        exp: attributes.exp,
        tags: tags.unwrap_or_default(),
        exportable,
        release_policy,
    })
}

/// Key Vault's secure-key-release rules: only HSM keys can be exportable,
/// an exportable key needs a release policy, and a key that is not
/// exportable must not carry one.
fn check_release_settings(kty: KeyType, exportable: bool, policy: Option<&ReleasePolicy>) -> Result<(), ServiceError> {
    match (exportable, policy.is_some()) {
        (true, _) if !kty.is_hsm() => {
            Err(ServiceError::bad_parameter("Only HSM-protected keys (RSA-HSM, EC-HSM) can be exportable."))
        }
        (true, false) => Err(ServiceError::bad_parameter("An exportable key requires a release policy.")),
        (false, true) => Err(ServiceError::bad_parameter("Non-exportable keys must not have a release policy.")),
        _ => Ok(()),
    }
}

fn release_policy_of(wire: wire::ReleasePolicyWire) -> Result<ReleasePolicy, ServiceError> {
    wire.into_policy().map_err(|why| ServiceError::bad_parameter(format!("Property {why}.")))
}

/// Validates `KeyUpdateParameters`.
pub(super) fn props_change(request: UpdateKeyRequest) -> Result<PropsChange, ServiceError> {
    let attributes = request.attributes.unwrap_or_default();
    Ok(PropsChange {
        enabled: attributes.enabled,
        nbf: attributes.nbf,
        exp: attributes.exp,
        key_ops: request.key_ops.map(valid_key_ops).transpose()?,
        tags: request.tags,
        release_policy: request.release_policy.map(release_policy_of).transpose()?,
    })
}

fn valid_key_ops(ops: Vec<String>) -> Result<Vec<String>, ServiceError> {
    match ops.iter().find(|op| !KNOWN_KEY_OPS.contains(&op.as_str())) {
        Some(unknown) => Err(ServiceError::bad_parameter(format!("Property key_ops has invalid value {unknown}"))),
        None => Ok(ops),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReleasePolicy {
        ReleasePolicy { content_type: "application/json".to_owned(), data: "e30".to_owned(), immutable: false }
    }

    #[test]
    fn release_settings_follow_key_vault() {
        assert!(check_release_settings(KeyType::RsaHsm, true, Some(&policy())).is_ok());
        assert!(check_release_settings(KeyType::Rsa, false, None).is_ok());
        assert!(check_release_settings(KeyType::Rsa, true, Some(&policy())).is_err());
        assert!(check_release_settings(KeyType::RsaHsm, true, None).is_err());
        assert!(check_release_settings(KeyType::RsaHsm, false, Some(&policy())).is_err());
    }

    #[test]
    fn a_standard_vault_refuses_hsm_keys() {
        assert_eq!(key_type("RSA-HSM", Sku::Standard).unwrap_err().status, 400);
        assert_eq!(key_type("RSA-HSM", Sku::Premium).expect("premium"), KeyType::RsaHsm);
        assert_eq!(key_type("EC", Sku::Standard).expect("software key"), KeyType::Ec);
        assert_eq!(key_type("oct", Sku::Premium).unwrap_err().status, 400);
    }
}
