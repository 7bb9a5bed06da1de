//! Bearer-token authentication with Key Vault's challenge. The official SDKs
//! send their first request without a token and learn where to get one from
//! the `WWW-Authenticate` header of the 401; the emulator answers exactly as
//! Key Vault does so that flow runs unchanged, then accepts only the
//! owner's token and those of the identities its access policies name.

use super::access::{AccessPolicies, Caller};
use super::error::ServiceError;
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::response::{IntoResponse, Response};

/// Key Vault's challenge: `resource` gives the token scope
/// (`https://vault.azure.net/.default`), `authorization` the authority and
/// tenant. Clients only parse the tenant (a fixed, made-up GUID) into their
/// token request; nothing checks it against a real one.
const CHALLENGE: &str = "Bearer authorization=\"https://login.microsoftonline.com/8a2b5c1e-4f3d-4e6a-9b7c-0d1e2f3a4b5c\", resource=\"https://vault.azure.net\"";

/// Why a request was not authenticated; its response is the 401 with the
/// challenge, whatever was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    MissingToken,
    WrongToken,
}

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        let message = match self {
            Self::MissingToken => "AKV10000: Request is missing a Bearer or PoP token.",
            Self::WrongToken => "The bearer token is not valid for this vault.",
        };
        ([(WWW_AUTHENTICATE, CHALLENGE)], ServiceError::unauthorized(message)).into_response()
    }
}

/// Checks `Authorization: Bearer <token>` against the owner's token and
/// the identities' tokens.
pub(crate) struct BearerAuth {
    pub(crate) policies: AccessPolicies,
}

impl BearerAuth {
    /// Authentication for the owner's token (`--token`), with no identities yet.
    pub(crate) fn new(owner_token: String) -> Self {
        Self { policies: AccessPolicies::new(owner_token) }
    }

    /// Who sent the request, or the 401 to answer.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<Caller, AuthFailure> {
        let presented = headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(bearer_token);
        let token = presented.ok_or(AuthFailure::MissingToken)?;
        self.policies.caller(token).ok_or(AuthFailure::WrongToken)
    }
}

/// The token of a `Bearer` credential (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, StatusCode};

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        }
        headers
    }

    #[test]
    fn only_the_configured_bearer_token_passes() {
        let auth = BearerAuth::new("secret".to_owned());
        assert_eq!(auth.check(&headers(Some("Bearer secret"))), Ok(Caller::Owner));
        assert_eq!(auth.check(&headers(Some("bearer secret"))), Ok(Caller::Owner));
        assert_eq!(auth.check(&headers(Some("Bearer other"))), Err(AuthFailure::WrongToken));
        for wrong in [None, Some("Bearer"), Some("Bearer other"), Some("Basic secret")] {
            let refusal = auth.check(&headers(wrong)).unwrap_err().into_response();
            assert_eq!(refusal.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(refusal.headers()[WWW_AUTHENTICATE], CHALLENGE);
        }
    }

    #[test]
    fn challenge_names_a_tenant_guid_and_the_vault_resource() {
        let (authority, resource) = CHALLENGE
            .strip_prefix("Bearer authorization=\"https://login.microsoftonline.com/")
            .and_then(|rest| rest.split_once("\", "))
            .expect("authorization first");
        assert_eq!(authority.len(), 36);
        assert_eq!(authority.matches('-').count(), 4);
        assert_eq!(resource, "resource=\"https://vault.azure.net\"");
    }
}
