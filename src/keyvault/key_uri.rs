//! Key URIs: `https://{vault}.vault.azure.net/keys/{name}[/{version}]`, the
//! Managed HSM and sovereign-cloud equivalents, or any host the operator
//! trusts with `--trusted-vault-host` (the emulator). Parsing is pure, so the
//! first enable check costs no network call.

use std::fmt;

/// DNS suffixes of Azure Key Vault and Managed HSM in the public and
/// sovereign clouds.
const VAULT_SUFFIXES: [&str; 8] = [
    ".vault.azure.net",
    ".managedhsm.azure.net",
    ".vault.azure.cn",
    ".managedhsm.azure.cn",
    ".vault.usgovcloudapi.net",
    ".managedhsm.usgovcloudapi.net",
    ".vault.microsoftazure.de",
    ".managedhsm.microsoftazure.de",
];

/// A parsed, allowed key URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyUri {
    /// `https://host[:port]`, the client endpoint.
    pub vault_url: String,
    /// Key name.
    pub name: String,
    /// Version named in the URI, if any (recorded; the latest is used).
    pub version: Option<String>,
}

/// Why a key URI is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyUriError {
    /// Not `https://host/keys/name[/version]`.
    #[error("key URI must look like https://{{vault}}.vault.azure.net/keys/{{name}}[/{{version}}]: {0}")]
    Malformed(&'static str),
    /// The host is neither Azure Key Vault nor a trusted host.
    #[error(
        "host {0} is not an Azure Key Vault or Managed HSM host; a self-hosted vault must be allowed with --trusted-vault-host"
    )]
    UntrustedHost(String),
}

impl KeyUri {
    /// Parses `uri`, accepting Azure hosts and the exact `host[:port]`
    /// entries of `trusted_hosts`.
    pub fn parse(uri: &str, trusted_hosts: &[String]) -> Result<Self, KeyUriError> {
        let rest = uri.strip_prefix("https://").ok_or(KeyUriError::Malformed("only https:// URIs are accepted"))?;
        let (authority, path) = rest.split_once('/').ok_or(KeyUriError::Malformed("no /keys/ path"))?;
        if authority.is_empty() || authority.contains('@') {
            return Err(KeyUriError::Malformed("no valid host"));
        }
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let (name, version) = match segments.as_slice() {
            ["keys", name] => (*name, None),
            ["keys", name, version] => (*name, Some(*version)),
            _ => return Err(KeyUriError::Malformed("path must be /keys/{name} or /keys/{name}/{version}")),
        };
        if !is_key_name(name) {
            return Err(KeyUriError::Malformed("key names are 1-127 letters, digits and dashes"));
        }
        if version.is_some_and(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric())) {
            return Err(KeyUriError::Malformed("a key version is letters and digits"));
        }
        let host = authority.to_ascii_lowercase();
        let host_only = host.split(':').next().unwrap_or_default();
        let azure = VAULT_SUFFIXES.iter().any(|suffix| host_only.len() > suffix.len() && host_only.ends_with(suffix));
        if !azure && !trusted_hosts.iter().any(|t| t.eq_ignore_ascii_case(&host)) {
            return Err(KeyUriError::UntrustedHost(host));
        }
        Ok(Self { vault_url: format!("https://{host}"), name: name.to_owned(), version: version.map(str::to_owned) })
    }

    /// The key's id for a given version (`kid`).
    pub fn versioned(&self, version: &str) -> String {
        format!("{}/keys/{}/{}", self.vault_url, self.name, version)
    }
}

impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(version) => f.write_str(&self.versioned(version)),
            None => write!(f, "{}/keys/{}", self.vault_url, self.name),
        }
    }
}

fn is_key_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_and_sovereign_hosts_are_accepted() {
        for uri in [
            "https://contoso.vault.azure.net/keys/tenant-key",
            "https://contoso.vault.azure.net/keys/tenant-key/0123456789abcdef0123456789abcdef",
            "https://hsm1.managedhsm.azure.net/keys/k/",
            "https://c.vault.azure.cn/keys/k",
            "https://c.vault.usgovcloudapi.net/keys/k",
        ] {
            let parsed = KeyUri::parse(uri, &[]).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert!(!parsed.name.is_empty());
        }
        let parsed = KeyUri::parse("https://Contoso.vault.azure.net/keys/k/abc123", &[]).unwrap();
        assert_eq!(parsed.vault_url, "https://contoso.vault.azure.net");
        assert_eq!(parsed.version.as_deref(), Some("abc123"));
        assert_eq!(parsed.to_string(), "https://contoso.vault.azure.net/keys/k/abc123");
    }

    #[test]
    fn other_hosts_need_trust_and_bad_forms_are_refused() {
        let trusted = vec!["127.0.0.1:8443".to_owned()];
        assert!(KeyUri::parse("https://127.0.0.1:8443/keys/k", &trusted).is_ok());
        assert!(matches!(KeyUri::parse("https://127.0.0.1:9999/keys/k", &trusted), Err(KeyUriError::UntrustedHost(_))));
        assert!(matches!(
            KeyUri::parse("https://vault.azure.net.evil.com/keys/k", &[]),
            Err(KeyUriError::UntrustedHost(_))
        ));
        assert!(matches!(KeyUri::parse("https://.vault.azure.net/keys/k", &[]), Err(KeyUriError::UntrustedHost(_))));
        for bad in [
            "http://c.vault.azure.net/keys/k",
            "https://c.vault.azure.net/secrets/k",
            "https://c.vault.azure.net/keys/",
            "https://c.vault.azure.net/keys/k/v/wrapkey",
            "https://c.vault.azure.net/keys/bad_name",
            "https://user@c.vault.azure.net/keys/k",
        ] {
            assert!(matches!(KeyUri::parse(bad, &[]), Err(KeyUriError::Malformed(_))), "{bad}");
        }
    }
}
