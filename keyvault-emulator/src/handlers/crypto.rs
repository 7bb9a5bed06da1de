//! The key operations: encrypt, decrypt, wrapkey and unwrapkey with RSA,
//! sign and verify with RSA or ECDSA. The body is checked before the key is
//! looked up, so a malformed request is a 400 whatever the key's state;
//! error messages never carry cryptographic detail, which would make the
//! emulator a padding oracle.

use axum::Json;
use axum::response::{IntoResponse, Response};
use zeroize::Zeroizing;

use super::blocking;
use crate::error::ServiceError;
use crate::material::{EncryptionAlgorithm, MaterialError, SignatureAlgorithm};
use crate::model::{KeyOperation, KeyView};
use crate::wire::{
    self, KeyOperationRequest, KeyOperationResult, KeyVerifyRequest, KeyVerifyResult, Renderer, parse_body,
};

/// A parsed key-operation body.
pub(super) enum CryptoRequest {
    Encrypt(EncryptionAlgorithm, Zeroizing<Vec<u8>>),
    Decrypt(EncryptionAlgorithm, Vec<u8>),
    Sign(SignatureAlgorithm, Vec<u8>),
    Verify { alg: SignatureAlgorithm, digest: Vec<u8>, signature: Vec<u8> },
}

/// Checks the body of `operation` before the key is looked up.
pub(super) fn parse(operation: KeyOperation, body: &[u8]) -> Result<CryptoRequest, ServiceError> {
    Ok(match operation {
        KeyOperation::Encrypt | KeyOperation::WrapKey => {
            let request: KeyOperationRequest = parse_body(body)?;
            let input = base64url_property(&request.value, "value")?;
            CryptoRequest::Encrypt(encryption_algorithm(&request.alg)?, Zeroizing::new(input))
        }
        KeyOperation::Decrypt | KeyOperation::UnwrapKey => {
            let request: KeyOperationRequest = parse_body(body)?;
            CryptoRequest::Decrypt(encryption_algorithm(&request.alg)?, base64url_property(&request.value, "value")?)
        }
        KeyOperation::Sign => {
            let request: KeyOperationRequest = parse_body(body)?;
            let alg = signature_algorithm(&request.alg)?;
            CryptoRequest::Sign(alg, digest_of(alg, base64url_property(&request.value, "value")?)?)
        }
        KeyOperation::Verify => {
            let request: KeyVerifyRequest = parse_body(body)?;
            let alg = signature_algorithm(&request.alg)?;
            CryptoRequest::Verify {
                alg,
                digest: digest_of(alg, base64url_property(&request.digest, "digest")?)?,
                signature: base64url_property(&request.value, "value")?,
            }
        }
    })
}

/// Runs the operation with the version's key on the blocking pool.
pub(super) async fn run(
    render: &Renderer<'_>,
    view: &KeyView,
    request: CryptoRequest,
) -> Result<Response, ServiceError> {
    let material = view.version.material.clone();
    let kid = render.versioned_kid(view);
    let result = |value: &[u8]| Json(KeyOperationResult { kid: kid.clone(), value: wire::to_base64url(value) });
    Ok(match request {
        CryptoRequest::Encrypt(alg, plaintext) => {
            let ciphertext = blocking("encrypt", move || material.encrypt(alg, &plaintext))
                .await?
                .map_err(|e| refusal(e, "The value is too long for this key and algorithm."))?;
            result(&ciphertext).into_response()
        }
        CryptoRequest::Decrypt(alg, ciphertext) => {
            let plaintext = blocking("decrypt", move || material.decrypt(alg, &ciphertext))
                .await?
                .map_err(|e| refusal(e, "The value could not be decrypted with this key version."))?;
            result(&plaintext).into_response()
        }
        CryptoRequest::Sign(alg, digest) => {
            let signature = blocking("sign", move || material.sign(alg, &digest))
                .await?
                .map_err(|e| refusal(e, "The digest could not be signed with this key version."))?;
            result(&signature).into_response()
        }
        CryptoRequest::Verify { alg, digest, signature } => {
            let valid = blocking("verify", move || material.verify(alg, &digest, &signature))
                .await?
                .map_err(|e| refusal(e, "The signature could not be checked with this key version."))?;
            Json(KeyVerifyResult { value: valid }).into_response()
        }
    })
}

/// 400 for a failed operation: the key's own limits are named, the
/// cryptographic reason never is.
fn refusal(error: MaterialError, opaque: &'static str) -> ServiceError {
    match error {
        MaterialError::Unsupported(why) => ServiceError::bad_parameter(why),
        _ => ServiceError::bad_parameter(opaque),
    }
}

fn encryption_algorithm(alg: &str) -> Result<EncryptionAlgorithm, ServiceError> {
    EncryptionAlgorithm::parse(alg).ok_or_else(|| {
        ServiceError::bad_parameter(format!(
            "Algorithm {alg} is not supported for this operation; use RSA1_5, RSA-OAEP or RSA-OAEP-256."
        ))
    })
}

fn signature_algorithm(alg: &str) -> Result<SignatureAlgorithm, ServiceError> {
    SignatureAlgorithm::parse(alg).ok_or_else(|| {
        ServiceError::bad_parameter(format!(
            "Algorithm {alg} is not supported for signing; use RS256/384/512, PS256/384/512, ES256, ES256K, \
             ES384 or ES512."
        ))
    })
}

/// A digest of the length the algorithm signs, as Key Vault insists.
fn digest_of(alg: SignatureAlgorithm, digest: Vec<u8>) -> Result<Vec<u8>, ServiceError> {
    let expected = alg.digest().len();
    if digest.len() != expected {
        return Err(ServiceError::bad_parameter(format!(
            "The digest is {} bytes; the algorithm signs a {expected}-byte digest.",
            digest.len()
        )));
    }
    Ok(digest)
}

fn base64url_property(text: &str, name: &str) -> Result<Vec<u8>, ServiceError> {
    wire::from_base64url(text).map_err(|_| ServiceError::bad_parameter(format!("Property {name} has invalid value")))
}
