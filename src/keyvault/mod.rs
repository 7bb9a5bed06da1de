//! Azure Key Vault as a root of data keys (bring your own key): key URIs,
//! credentials, the official `KeyClient` behind one small interface, and
//! the checks a key must pass before a tenant may use it.

pub mod client;
pub mod credential;
pub mod key_uri;
pub mod pace;
pub mod validate;

pub use client::{KeyWrapAlgorithm, Vault, VaultError, VaultKey, VaultOptions};
pub use key_uri::KeyUri;
