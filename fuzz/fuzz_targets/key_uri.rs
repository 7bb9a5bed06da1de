//! The key URI parser: whatever a tenant submits, `KeyUri::parse` answers
//! without panicking, and what it accepts can only reach an Azure vault host
//! or the exact trusted host: the URL the Azure client will build from
//! `vault_url` has that host and port, and no user info, query or fragment.
#![no_main]

use keyseal::keyvault::KeyUri;
use libfuzzer_sys::fuzz_target;

const TRUSTED: &str = "127.0.0.1:8443";
const AZURE_SUFFIXES: [&str; 8] = [
    ".vault.azure.net",
    ".managedhsm.azure.net",
    ".vault.azure.cn",
    ".managedhsm.azure.cn",
    ".vault.usgovcloudapi.net",
    ".managedhsm.usgovcloudapi.net",
    ".vault.microsoftazure.de",
    ".managedhsm.microsoftazure.de",
];

fuzz_target!(|uri: &str| {
    let trusted = [TRUSTED.to_owned()];
    let Ok(parsed) = KeyUri::parse(uri, &trusted) else {
        return;
    };
    // Parse the endpoint exactly as the Azure client does.
    let endpoint = url::Url::parse(&parsed.vault_url).expect("vault_url is a URL");
    assert_eq!(endpoint.scheme(), "https");
    assert!(endpoint.username().is_empty() && endpoint.password().is_none());
    assert!(endpoint.query().is_none() && endpoint.fragment().is_none());
    let host = endpoint.host_str().expect("a host");
    let authority = format!("{host}:{}", endpoint.port_or_known_default().expect("https has a port"));
    let azure = endpoint.port().is_none() && AZURE_SUFFIXES.iter().any(|s| host.len() > s.len() && host.ends_with(s));
    assert!(azure || authority == TRUSTED, "{uri:?} reaches {authority}");
    // What is accepted prints and parses back to itself.
    assert_eq!(KeyUri::parse(&parsed.to_string(), &trusted).as_ref(), Ok(&parsed));
});
