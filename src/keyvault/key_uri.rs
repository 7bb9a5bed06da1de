//! Key URIs: `https://{vault}.vault.azure.net/keys/{name}[/{version}]`, the
//! Managed HSM and sovereign-cloud equivalents, or any host the operator
//! trusts with `--trusted-vault-host` (the emulator). Parsing is pure, so the
//! first enable check costs no network call.
//!
//! A key URI decides where keyseal sends its vault token and data keys, so
//! it is parsed with the same WHATWG parser (`url`) the Azure client uses,
//! and then refused unless it is already in that parser's canonical form:
//! nothing the parser would strip (tab, CR, LF, surrounding spaces),
//! reinterpret (`\`, percent-escapes, IPv4 shorthand such as `127.1`, a
//! default `:443`, dot segments) or split off (user info, query, fragment).
//! What is checked is therefore exactly what the client connects to, and
//! [`KeyUri::vault_url`] is rebuilt from the parsed host and port, never
//! copied from the input.
//!
//! Azure hosts are one DNS label (the vault or HSM name: letters, digits
//! and dashes, at most 24) followed by a known suffix, lower-cased, with no
//! trailing dot and no port: `a.b.vault.azure.net` is not a vault Azure can
//! issue, so it is refused rather than trusted by suffix. Any other host,
//! including every IP literal, must be listed exactly (`host:port`, the
//! port as connected to) in `--trusted-vault-host`.

use std::fmt;

use crate::error::ErrorCode;
use url::{Host, Url};

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

/// Longest vault or Managed HSM name Azure allows.
const MAX_VAULT_NAME: usize = 24;

/// A parsed, allowed key URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyUri {
    /// `https://host[:port]`, the client endpoint, rebuilt from the parsed
    /// host and port.
    pub vault_url: String,
    /// Key name.
    pub name: String,
    /// Version named in the URI, if any (recorded; the latest is used).
    pub version: Option<String>,
    /// Whether the host is a `--trusted-vault-host` entry rather than an
    /// Azure host: such a vault's token challenge cannot name an Azure
    /// resource, so the client must not insist that it does.
    pub self_hosted: bool,
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
    /// Parses `uri`, accepting Azure hosts and the exact `host:port`
    /// entries of `trusted_hosts`.
    pub fn parse(uri: &str, trusted_hosts: &[String]) -> Result<Self, KeyUriError> {
        if uri.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '\\' | '%' | ';')) {
            return Err(KeyUriError::Malformed(
                "whitespace, control characters, backslashes, percent-escapes and ';' are not allowed",
            ));
        }
        let url = Url::parse(uri).map_err(|_| KeyUriError::Malformed("not a URL"))?;
        if url.scheme() != "https" {
            return Err(KeyUriError::Malformed("only https:// URIs are accepted"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(KeyUriError::Malformed("no user name or password may precede the host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(KeyUriError::Malformed("no query (?) or fragment (#) is allowed"));
        }
        let (name, version) = key_path(url.path())?;
        let vault_url = match url.port() {
            Some(port) => format!("https://{}:{port}", url.host_str().unwrap_or_default()),
            None => format!("https://{}", url.host_str().unwrap_or_default()),
        };
        let self_hosted = vault_host(&url, trusted_hosts)?;
        // Anything the parser stripped, decoded or rewrote (IPv4 shorthand,
        // a default port, dot segments, IDNA) makes the input differ from
        // what the client would connect to: refuse rather than normalise.
        if !uri.eq_ignore_ascii_case(&format!("{vault_url}{}", url.path())) {
            return Err(KeyUriError::Malformed(
                "write it in canonical form: no :443, no IP shorthand, no dot segments, an ASCII host",
            ));
        }
        Ok(Self { vault_url, name: name.to_owned(), version: version.map(str::to_owned), self_hosted })
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

/// `/keys/{name}` or `/keys/{name}/{version}`, with at most one trailing `/`.
fn key_path(path: &str) -> Result<(&str, Option<&str>), KeyUriError> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
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
    Ok((name, version))
}

/// Whether the host may be called: `Ok(true)` for an exact trusted
/// `host:port`, `Ok(false)` for an Azure vault host.
fn vault_host(url: &Url, trusted_hosts: &[String]) -> Result<bool, KeyUriError> {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let port = url.port_or_known_default().unwrap_or(443);
    let authority = format!("{host}:{port}");
    if trusted_hosts.iter().any(|t| t.eq_ignore_ascii_case(&authority)) {
        return Ok(true);
    }
    if !matches!(url.host(), Some(Host::Domain(_))) || !is_azure_host(&host) {
        return Err(KeyUriError::UntrustedHost(match url.port() {
            Some(_) => authority,
            None => host,
        }));
    }
    if url.port().is_some() {
        return Err(KeyUriError::Malformed("an Azure vault host takes no port"));
    }
    Ok(false)
}

/// `{vault name}{suffix}`: one non-empty label of letters, digits and
/// dashes before a known suffix, no trailing dot.
fn is_azure_host(host: &str) -> bool {
    VAULT_SUFFIXES.iter().any(|suffix| {
        host.strip_suffix(suffix).is_some_and(|label| {
            (1..=MAX_VAULT_NAME).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
    })
}

fn is_key_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl ErrorCode for KeyUriError {
    fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "invalid_key_uri",
            Self::UntrustedHost(_) => "untrusted_vault_host",
        }
    }

    fn is_retryable(&self) -> bool {
        false
    }
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

    /// Every way a URI could make the client connect somewhere other than
    /// the host that was checked, and the forms that are merely not
    /// canonical: each is refused, none normalised.
    #[test]
    fn hostile_and_non_canonical_uris_are_refused() {
        let trusted = vec!["127.0.0.1:8443".to_owned(), "kv.internal:443".to_owned()];
        let malformed = [
            "https://127.0.0.1:8080?.vault.azure.net/keys/k",
            "https://127.0.0.1:8080#.vault.azure.net/keys/k",
            "https://127.0.0.1:8080\\.vault.azure.net/keys/k",
            "https://127.0.0.1:8080%2f.vault.azure.net/keys/k",
            "https://127.0.0.1:8080%3f.vault.azure.net/keys/k",
            "https://c.vault.azure.net/keys/k%2fx",
            "https://127.0.0.1\t:8080.vault.azure.net/keys/k",
            "https://c.vault.az\rure.net/keys/k",
            "https://c.vault.azure.net/keys/k\n",
            " https://c.vault.azure.net/keys/k",
            "https://c.vault.azure.net/keys/k ",
            "https://c.vault.azure.net/keys;x=1/k",
            "https://127.0.0.1:8080@c.vault.azure.net/keys/k",
            "https://u:p@c.vault.azure.net/keys/k",
            "https://c.vault.azure.net/keys/k?api-version=1",
            "https://c.vault.azure.net/keys/k?",
            "https://c.vault.azure.net/keys/k#",
            "https://c.vault.azure.net/keys/x/../k",
            "https://c.vault.azure.net/keys/./k",
            "https://c.vault.azure.net/keys//k",
            "https://c.vault.azure.net/keys/k//",
            "https://c.vault.azure.net//keys/k",
            "https://c.vault.azure.net:8080/keys/k",
            "https://c.vault.azure.net:443/keys/k",
            "https:c.vault.azure.net/keys/k",
            "https:///c.vault.azure.net/keys/k",
            "https://c.vault.azure.net",
            "http://127.0.0.1:8443/keys/k",
            "ftp://c.vault.azure.net/keys/k",
            "https://127.1:8443/keys/k",
            "https://0x7f000001:8443/keys/k",
            "https://127.0.0.1.:8443/keys/k",
            "https://127.0.0.1:08443/keys/k",
            "https://kv.internal:443/keys/k",
            "https://c\u{ff0e}vault.azure.net/keys/k",
            "not a url",
        ];
        for bad in malformed {
            assert!(matches!(KeyUri::parse(bad, &trusted), Err(KeyUriError::Malformed(_))), "{bad:?}");
        }
        let untrusted = [
            "https://contoso.vault.azure.net./keys/k",
            "https://vault.azure.net.evil.example/keys/k",
            "https://vault.azure.net/keys/k",
            "https://a.b.vault.azure.net/keys/k",
            "https://c_d.vault.azure.net/keys/k",
            "https://-c.vault.azure.net/keys/k",
            "https://abcdefghijklmnopqrstuvwxy.vault.azure.net/keys/k",
            "https://[::1]:8443/keys/k",
            "https://[::ffff:127.0.0.1]:8443/keys/k",
            "https://10.0.0.5/keys/k",
            "https://localhost:8443/keys/k",
            "https://127.0.0.1:8444/keys/k",
            "https://127.0.0.1/keys/k",
            "https://kv.internal:8443/keys/k",
        ];
        for bad in untrusted {
            assert!(matches!(KeyUri::parse(bad, &trusted), Err(KeyUriError::UntrustedHost(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_vault_url_is_rebuilt_from_the_parsed_host_and_port() {
        let trusted = vec!["127.0.0.1:8443".to_owned(), "KV.internal:443".to_owned(), "[::1]:8443".to_owned()];
        let cases = [
            ("https://127.0.0.1:8443/keys/k/abc", "https://127.0.0.1:8443", true),
            ("https://kv.internal/keys/k", "https://kv.internal", true),
            ("https://[::1]:8443/keys/k", "https://[::1]:8443", true),
            ("HTTPS://C.Vault.Azure.Net/keys/k/", "https://c.vault.azure.net", false),
            ("https://my-vault-01.managedhsm.azure.net/keys/k", "https://my-vault-01.managedhsm.azure.net", false),
        ];
        for (uri, vault_url, self_hosted) in cases {
            let parsed = KeyUri::parse(uri, &trusted).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!((parsed.vault_url.as_str(), parsed.self_hosted), (vault_url, self_hosted), "{uri}");
            let kid = parsed.versioned("abc");
            assert_eq!(KeyUri::parse(&kid, &trusted).unwrap().version.as_deref(), Some("abc"), "{kid} parses again");
        }
    }
}
