//! How keyseal authenticates to Key Vault (`--vault-credential`). The real
//! kinds come from `azure_identity`; `static-token` hands a fixed bearer
//! token to a local emulator and must never face a real vault.

use std::sync::Arc;

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration, OffsetDateTime};
use clap::ValueEnum;

/// The bearer token `static-token` sends when `KEYSEAL_VAULT_TOKEN` is not
/// set: the development token `keyseal keyvault-emulator` accepts by default
/// (`keyvault_emulator::DEV_TOKEN`; a test keeps the two equal).
pub const EMULATOR_DEV_TOKEN: &str = "keyseal-emulator-dev-token";

/// Which credential the worker uses for Key Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VaultCredentialKind {
    /// Kubernetes workload identity (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE).
    WorkloadIdentity,
    /// The managed identity of the VM, App Service or container.
    ManagedIdentity,
    /// A service principal secret (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET).
    ClientSecret,
    /// The signed-in Azure CLI user (development).
    AzureCli,
    /// A fixed token (`Settings::vault_token`, from KEYSEAL_VAULT_TOKEN) or the emulator's development token.
    StaticToken,
}

/// A credential error, without secret values.
#[derive(Debug, thiserror::Error)]
#[error("vault credential {kind:?}: {reason}")]
pub struct CredentialError {
    kind: VaultCredentialKind,
    reason: String,
}

/// Builds the credential for `kind` from the environment; `static_token`
/// is the token `static-token` sends (the emulator's development token when
/// `None`), passed in rather than read here so workers in one process (the
/// tests) can each use their own.
pub fn credential(
    kind: VaultCredentialKind,
    static_token: Option<&str>,
) -> Result<Arc<dyn TokenCredential>, CredentialError> {
    let fail = |reason: String| CredentialError { kind, reason };
    let env = |name: &str| std::env::var(name).map_err(|_| fail(format!("{name} is not set")));
    Ok(match kind {
        VaultCredentialKind::WorkloadIdentity => {
            azure_identity::WorkloadIdentityCredential::new(None).map_err(|e| fail(e.to_string()))?
        }
        VaultCredentialKind::ManagedIdentity => {
            azure_identity::ManagedIdentityCredential::new(None).map_err(|e| fail(e.to_string()))?
        }
        VaultCredentialKind::ClientSecret => azure_identity::ClientSecretCredential::new(
            &env("AZURE_TENANT_ID")?,
            env("AZURE_CLIENT_ID")?,
            Secret::new(env("AZURE_CLIENT_SECRET")?),
            None,
        )
        .map_err(|e| fail(e.to_string()))?,
        VaultCredentialKind::AzureCli => {
            azure_identity::AzureCliCredential::new(None).map_err(|e| fail(e.to_string()))?
        }
        VaultCredentialKind::StaticToken => {
            Arc::new(StaticToken(static_token.filter(|t| !t.is_empty()).unwrap_or(EMULATOR_DEV_TOKEN).to_owned()))
        }
    })
}

/// A fixed bearer token, for the emulator.
struct StaticToken(String);

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(self.0.clone(), OffsetDateTime::now_utc() + Duration::hours(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_static_token_is_the_one_given_else_the_development_token() {
        let token = |given: Option<&'static str>| async move {
            let credential = credential(VaultCredentialKind::StaticToken, given).expect("static token");
            credential
                .get_token(&["https://vault.azure.net/.default"], None)
                .await
                .expect("token")
                .token
                .secret()
                .to_owned()
        };
        assert_eq!(token(Some("identity-token")).await, "identity-token");
        assert_eq!(token(None).await, EMULATOR_DEV_TOKEN);
        assert_eq!(token(Some("")).await, EMULATOR_DEV_TOKEN);
        assert_eq!(EMULATOR_DEV_TOKEN, keyvault_emulator::DEV_TOKEN, "the token the emulator accepts by default");
    }
}
