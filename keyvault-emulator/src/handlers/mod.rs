//! One function per Key Vault operation: validate the request body the way
//! Key Vault does, ask the [`Vault`](super::vault::Vault), render the
//! response. Slow cryptography (key generation, RSA private-key operations)
//! runs on the blocking pool so it never stalls other requests.
//!
//! `keys` turns create, import and update bodies into the vault's terms;
//! `crypto` runs the key operations; `lifecycle` holds rotation policies,
//! backup and restore.

mod crypto;
mod keys;
mod lifecycle;

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::app::App;
use super::error::ServiceError;
use super::material::{KeyMaterial, KeySpec};
use super::model::KeyView;
use super::routes::Route;
use super::wire::{Page, Renderer, parse_body};

/// Key Vault's page size, and the largest `maxresults` it accepts.
const MAX_PAGE_SIZE: usize = 25;

/// What a handler needs to know about the request besides its route.
pub(crate) struct RequestContext {
    /// `https://{Host}` as the client addressed the vault.
    pub(crate) vault_url: String,
    /// The request path, for `nextLink`.
    pub(crate) path: String,
    /// The query parameters (`api-version`, `maxresults`, `$skiptoken`).
    pub(crate) query: BTreeMap<String, String>,
}

/// Runs the handler of `route`: the one place that maps a Key Vault
/// operation to its function and response shape.
pub(crate) async fn handle(
    app: &App,
    ctx: &RequestContext,
    route: Route,
    body: &[u8],
) -> Result<Response, ServiceError> {
    let vault = &app.vault;
    let render = Renderer { vault_url: &ctx.vault_url, policy: vault.policy() };
    let now = app.clock.now();
    let response = match route {
        Route::CreateKey { name } => {
            let (new, spec) = keys::new_version(parse_body(body)?, app.sku)?;
            let material = generate(spec).await?;
            Json(render.bundle(&vault.create(&name, new, material, now).await?)).into_response()
        }
        Route::ImportKey { name } => {
            let (new, material) = keys::imported_version(parse_body(body)?, app.sku).await?;
            Json(render.bundle(&vault.create(&name, new, material, now).await?)).into_response()
        }
        Route::GetKey { name, version } => {
            Json(render.bundle(&vault.get(&name, version.as_deref()).await?)).into_response()
        }
        Route::UpdateKey { name, version } => {
            let change = keys::props_change(parse_body(body)?)?;
            let view = vault.update(&name, version.as_deref(), change, now).await?;
            Json(render.bundle(&view)).into_response()
        }
        Route::RotateKey { name } => {
            let spec = vault.get(&name, None).await?.version.material.spec();
            let material = generate(spec).await?;
            Json(render.bundle(&vault.rotate(&name, material, now).await?)).into_response()
        }
        Route::GetRotationPolicy { name } => {
            let policy = vault.rotation_policy(&name).await?;
            Json(render.rotation_policy(&name, policy.as_ref())).into_response()
        }
        Route::UpdateRotationPolicy { name } => {
            let (actions, expiry) = lifecycle::rotation_policy(parse_body(body)?)?;
            let policy = vault.set_rotation_policy(&name, actions, expiry, now).await?;
            Json(render.rotation_policy(&name, Some(&policy))).into_response()
        }
        Route::BackupKey { name } => Json(lifecycle::backup(app, &name).await?).into_response(),
        Route::RestoreKey => Json(render.bundle(&lifecycle::restore(app, parse_body(body)?).await?)).into_response(),
        Route::ReleaseKey { name } => {
            vault.get(&name, None).await?;
            // Key Vault answers a release whose attestation it cannot verify
            // with 400; here no attestation can ever be verified.
            return Err(ServiceError::bad_parameter(
                "The target's attestation cannot be verified: the emulator has no attestation service, \
                 so it never releases a key.",
            ));
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
            let request = crypto::parse(operation, body)?;
            let view = vault.usable(&name, version.as_deref(), operation, now).await?;
            crypto::run(&render, &view, request).await?
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

/// Generates key material off the async runtime (rotation uses it too).
pub(crate) async fn generate(spec: KeySpec) -> Result<KeyMaterial, ServiceError> {
    blocking("generate a key", move || KeyMaterial::generate(spec)).await?.map_err(|e| internal("generate a key", &e))
}

/// Runs slow cryptography on the blocking pool.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| internal(what, &e))
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
