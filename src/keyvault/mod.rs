//! Azure Key Vault as a root of data keys (bring your own key): key URIs,
//! credentials, the official `KeyClient` behind one small interface, its
//! failures ([`error`]) and the one vocabulary for a key's trouble
//! ([`problem`]), and the checks a key must pass before a tenant may use it.

pub mod client;
pub mod credential;
pub mod error;
pub mod key_uri;
pub mod pace;
pub mod problem;
pub mod validate;

pub use client::{KeyWrapAlgorithm, Vault, VaultKey, VaultOptions};
pub use error::VaultError;
pub use key_uri::KeyUri;
pub use problem::{KeyProblem, Refused};
