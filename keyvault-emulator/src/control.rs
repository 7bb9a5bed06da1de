//! The emulator's own routes under `/_emulator/`, so a test, the demo or a
//! compose file can inject faults and add restricted identities over HTTPS
//! while the vault runs. They are not Key Vault routes: only the owner's
//! token (`--token`) may call them, they need no `api-version`, and they
//! are neither throttled, faulted, counted nor audited.
//!
//! - `PUT /_emulator/faults` `{"faults":[{"key","operation","status"}|{"key","operation","hang":true}]}`
//!   replaces the faults; `GET` returns them; `DELETE` clears them.
//! - `PUT /_emulator/identities/{name}` `{"token","permissions":[...]}` adds
//!   or replaces an identity; `DELETE` removes it; `GET /_emulator/identities`
//!   lists names and permissions (never tokens).
//! - `POST /_emulator/clock` `{"advanceSeconds": n}` moves the vault's
//!   clock forward (rotation policies, retention); `GET` returns
//!   `{"now", "offsetSeconds"}`.
//! - `GET /_emulator/audit` returns the audit log, oldest entry first, as
//!   `{"value":[AuditEvent...]}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::app::App;
use super::audit::AuditEvent;
use super::error::ServiceError;
use super::faults::{FaultList, FaultSpec};
use super::wire::parse_body as parse;

/// Where the control routes live.
pub(crate) const PREFIX: &str = "/_emulator/";

/// The body of `PUT /_emulator/identities/{name}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityBody {
    token: String,
    permissions: Vec<String>,
}

/// The body of `POST /_emulator/clock`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AdvanceBody {
    advance_seconds: u32,
}

/// The body of `GET /_emulator/audit`: Key Vault's list shape.
#[derive(Serialize)]
struct AuditList {
    value: Vec<AuditEvent>,
}

/// Serves one control request; `path` starts with [`PREFIX`].
pub(crate) fn handle(app: &App, method: &str, path: &str, body: &[u8]) -> Result<Response, ServiceError> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    let response = match (method, segments.as_slice()) {
        ("GET", ["faults"]) => fault_list(app).into_response(),
        ("PUT", ["faults"]) => {
            let list: FaultList = parse(body)?;
            let faults = list.faults.into_iter().map(FaultSpec::into_fault).collect::<Result<Vec<_>, _>>()?;
            tracing::info!(faults = faults.len(), "key vault emulator faults replaced");
            app.faults.set(faults);
            fault_list(app).into_response()
        }
        ("DELETE", ["faults"]) => {
            app.faults.set(Vec::new());
            StatusCode::NO_CONTENT.into_response()
        }
        ("GET", ["identities"]) => {
            let identities: Vec<_> = app
                .auth
                .policies
                .list()
                .into_iter()
                .map(|(name, permissions)| json!({"name": name, "permissions": permissions}))
                .collect();
            Json(json!({ "identities": identities })).into_response()
        }
        ("PUT", ["identities", name]) => {
            let identity: IdentityBody = parse(body)?;
            let permissions: Vec<&str> = identity.permissions.iter().map(String::as_str).collect();
            app.auth
                .policies
                .set(name, &identity.token, &permissions)
                .map_err(|e| ServiceError::bad_parameter(e.to_string()))?;
            tracing::info!(identity = name, ?permissions, "key vault emulator identity set");
            Json(json!({"name": name, "permissions": app.auth.policies.list().get(*name)})).into_response()
        }
        ("DELETE", ["identities", name]) => {
            if !app.auth.policies.remove(name) {
                return Err(ServiceError::not_found(format!("No identity named {name}.")));
            }
            StatusCode::NO_CONTENT.into_response()
        }
        ("GET", ["clock"]) => clock(app).into_response(),
        ("POST", ["clock"]) => {
            let advance: AdvanceBody = parse(body)?;
            app.clock.advance(advance.advance_seconds);
            tracing::info!(seconds = advance.advance_seconds, "key vault emulator clock moved forward");
            clock(app).into_response()
        }
        ("GET", ["audit"]) => Json(AuditList { value: app.audit.snapshot() }).into_response(),
        _ => return Err(ServiceError::unknown_operation(method, path)),
    };
    Ok(response)
}

fn clock(app: &App) -> Json<serde_json::Value> {
    Json(json!({"now": app.clock.now(), "offsetSeconds": app.clock.offset()}))
}

fn fault_list(app: &App) -> Json<FaultList> {
    Json(FaultList { faults: app.faults.list().iter().map(FaultSpec::from).collect() })
}
