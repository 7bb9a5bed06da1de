//! One function per Key Vault operation: validate the request body the way
//! Key Vault does, ask the [`Vault`](super::vault::Vault), render the
//! response. Slow cryptography (key generation, RSA private-key operations)
//! runs on the blocking pool so it never stalls other requests.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::error::ServiceError;
use super::material::{Algorithm, KeyMaterial, KeySpec, KeyType, MaterialError, RSA_KEY_SIZES};
use super::routes::Route;
use super::server::App;
use super::vault::{KeyOperation, KeyView, NewVersion, PropsChange, unix_now};
use super::wire::{self, CreateKeyRequest, KeyOperationRequest, KeyOperationResult, Page, Renderer, UpdateKeyRequest};

/// Key Vault's page size, and the largest `maxresults` it accepts.
const MAX_PAGE_SIZE: usize = 25;
const DEFAULT_RSA_BITS: usize = 2048;
/// The only RSA public exponent the emulator generates.
const RSA_PUBLIC_EXPONENT: u64 = 65537;
const KNOWN_KEY_OPS: [&str; 8] = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export"];

/// What a handler needs to know about the request besides its route.
pub(crate) struct RequestContext {
    /// `https://{Host}` as the client addressed the vault.
    pub(crate) vault_url: String,
    /// The request path, for `nextLink`.
    pub(crate) path: String,
    pub(crate) query: BTreeMap<String, String>,
}

pub(crate) async fn handle(
    app: &App,
    ctx: &RequestContext,
    route: Route,
    body: &[u8],
) -> Result<Response, ServiceError> {
    let vault = &app.vault;
    let render = Renderer { vault_url: &ctx.vault_url, policy: vault.policy() };
    let now = unix_now();
    let response = match route {
        Route::CreateKey { name } => {
            let (new, spec) = new_version(parse_body(body)?)?;
            let material = generate(spec).await?;
            Json(render.bundle(&vault.create(&name, new, material, now).await?)).into_response()
        }
        Route::GetKey { name, version } => {
            Json(render.bundle(&vault.get(&name, version.as_deref()).await?)).into_response()
        }
        Route::UpdateKey { name, version } => {
            let change = props_change(parse_body(body)?)?;
            let view = vault.update(&name, version.as_deref(), change, now).await?;
            Json(render.bundle(&view)).into_response()
        }
        Route::RotateKey { name } => {
            let spec = vault.get(&name, None).await?.version.material.spec();
            let material = generate(spec).await?;
            Json(render.bundle(&vault.rotate(&name, material, now).await?)).into_response()
        }
        Route::DeleteKey { name } => Json(render.deleted_bundle(&vault.delete(&name, now).await?)).into_response(),
        Route::ListKeys => {
            let page = paginate(ctx, vault.list_latest().await)?;
            Json(page.map(|view| render.item(&view, false))).into_response()
        }
        Route::ListKeyVersions { name } => {
            let page = paginate(ctx, vault.versions(&name).await?)?;
            Json(page.map(|view| render.item(&view, true))).into_response()
        }
        Route::Crypto { name, version, operation } => {
            let request: KeyOperationRequest = parse_body(body)?;
            let alg = Algorithm::parse(&request.alg).ok_or_else(|| {
                ServiceError::bad_parameter(format!(
                    "Algorithm {} is not supported; use RSA-OAEP or RSA-OAEP-256.",
                    request.alg
                ))
            })?;
            let input = wire::from_base64url(&request.value)
                .map(Zeroizing::new)
                .map_err(|_| ServiceError::bad_parameter("Property value has invalid value"))?;
            let view = vault.usable(&name, version.as_deref(), operation, now).await?;
            let output = run_key_operation(&view, operation, alg, input).await?;
            Json(KeyOperationResult { kid: render.versioned_kid(&view), value: wire::to_base64url(&output) })
                .into_response()
        }
        Route::ListDeletedKeys => {
            let page = paginate(ctx, vault.list_deleted().await)?;
            Json(page.map(|view| render.deleted_item(&view))).into_response()
        }
        Route::GetDeletedKey { name } => Json(render.deleted_bundle(&vault.deleted(&name).await?)).into_response(),
        Route::RecoverDeletedKey { name } => Json(render.bundle(&vault.recover(&name).await?)).into_response(),
        Route::PurgeDeletedKey { name } => {
            vault.purge(&name).await?;
            StatusCode::NO_CONTENT.into_response()
        }
    };
    Ok(response)
}

/// Parses a JSON request body; 400 `BadParameter` when it does not fit.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(body).map_err(|e| ServiceError::bad_parameter(format!("The request body is not valid: {e}")))
}

/// Validates `CreateKeyParameters` into the new version and what to generate.
fn new_version(request: CreateKeyRequest) -> Result<(NewVersion, KeySpec), ServiceError> {
    let kty_text = request.kty.ok_or_else(|| ServiceError::bad_parameter("Property kty is required."))?;
    let kty = KeyType::parse(&kty_text)
        .ok_or_else(|| ServiceError::bad_parameter(format!("Key type {kty_text} is not supported by this vault.")))?;
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
        let crv = request.crv.as_deref().unwrap_or("P-256");
        if crv != "P-256" {
            return Err(ServiceError::bad_parameter(format!(
                "Property crv has invalid value {crv}; the emulator supports P-256 only."
            )));
        }
        KeySpec::EcP256
    };
    let attributes = request.attributes.unwrap_or_default();
    let new = NewVersion {
        kty,
        key_ops: match request.key_ops {
            Some(ops) => valid_key_ops(ops)?,
            None => kty.default_key_ops(),
        },
        enabled: attributes.enabled.unwrap_or(true),
        nbf: attributes.nbf,
        exp: attributes.exp,
        tags: request.tags.unwrap_or_default(),
    };
    Ok((new, spec))
}

fn props_change(request: UpdateKeyRequest) -> Result<PropsChange, ServiceError> {
    let attributes = request.attributes.unwrap_or_default();
    Ok(PropsChange {
        enabled: attributes.enabled,
        nbf: attributes.nbf,
        exp: attributes.exp,
        key_ops: request.key_ops.map(valid_key_ops).transpose()?,
        tags: request.tags,
    })
}

fn valid_key_ops(ops: Vec<String>) -> Result<Vec<String>, ServiceError> {
    match ops.iter().find(|op| !KNOWN_KEY_OPS.contains(&op.as_str())) {
        Some(unknown) => Err(ServiceError::bad_parameter(format!("Property key_ops has invalid value {unknown}"))),
        None => Ok(ops),
    }
}

async fn generate(spec: KeySpec) -> Result<KeyMaterial, ServiceError> {
    tokio::task::spawn_blocking(move || KeyMaterial::generate(spec))
        .await
        .map_err(|e| internal("generate a key", &e))?
        .map_err(|e| internal("generate a key", &e))
}

/// Wraps/encrypts or unwraps/decrypts `input` with the version's key.
async fn run_key_operation(
    view: &KeyView,
    operation: KeyOperation,
    alg: Algorithm,
    input: Zeroizing<Vec<u8>>,
) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
    let material = view.version.material.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        if operation.encrypts() {
            material.encrypt(alg, &input).map(Zeroizing::new)
        } else {
            material.decrypt(alg, &input)
        }
    })
    .await
    .map_err(|e| internal("run a key operation", &e))?;
    outcome.map_err(|e| match e {
        MaterialError::Unsupported(why) => ServiceError::bad_parameter(why),
        // Never echo the cryptographic detail: it would be an oracle.
        _ if operation.encrypts() => ServiceError::bad_parameter("The value is too long for this key and algorithm."),
        _ => ServiceError::bad_parameter("The value could not be decrypted with this key version."),
    })
}

fn internal(what: &str, error: &dyn std::fmt::Display) -> ServiceError {
    tracing::error!(error = %error, "key vault emulator could not {what}");
    ServiceError::internal()
}

/// Cuts one page out of `items` following `maxresults` and `$skiptoken`;
/// `nextLink` repeats the path and api-version with the next offset.
fn paginate(ctx: &RequestContext, items: Vec<KeyView>) -> Result<Page<KeyView>, ServiceError> {
    let page_size = match ctx.query.get("maxresults") {
        None => MAX_PAGE_SIZE,
        Some(text) => text.parse::<usize>().ok().filter(|n| (1..=MAX_PAGE_SIZE).contains(n)).ok_or_else(|| {
            ServiceError::bad_parameter(format!(
                "Property maxresults has invalid value {text}; it must be between 1 and {MAX_PAGE_SIZE}."
            ))
        })?,
    };
    let skip = match ctx.query.get("$skiptoken") {
        None => 0,
        Some(text) => {
            text.parse::<usize>().map_err(|_| ServiceError::bad_parameter("Property $skiptoken has invalid value"))?
        }
    };
    let total = items.len();
    let value: Vec<KeyView> = items.into_iter().skip(skip).take(page_size).collect();
    let next = skip.saturating_add(page_size);
    let next_link = (next < total).then(|| {
        let api_version = ctx.query.get("api-version").map_or("", String::as_str);
        format!("{}{}?api-version={api_version}&$skiptoken={next}&maxresults={page_size}", ctx.vault_url, ctx.path)
    });
    Ok(Page { value, next_link })
}
