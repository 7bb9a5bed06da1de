//! Bearer-token authentication with Key Vault's challenge. The official SDKs
//! send their first request without a token and learn where to get one from
//! the `WWW-Authenticate` header of the 401; the emulator answers exactly as
//! Key Vault does so that flow runs unchanged, then accepts only its own
//! static token.

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ServiceError;

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

/// Checks `Authorization: Bearer <token>` against the configured token.
pub(crate) struct BearerAuth {
    token: String,
}

impl BearerAuth {
    pub(crate) fn new(token: String) -> Self {
        Self { token }
    }

    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        let presented = headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(bearer_token);
        match presented {
            None => Err(AuthFailure::MissingToken),
            Some(token) if bool::from(token.as_bytes().ct_eq(self.token.as_bytes())) => Ok(()),
            Some(_) => Err(AuthFailure::WrongToken),
        }
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
        assert!(auth.check(&headers(Some("Bearer secret"))).is_ok());
        assert!(auth.check(&headers(Some("bearer secret"))).is_ok());
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
