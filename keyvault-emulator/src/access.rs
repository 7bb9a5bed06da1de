//! Key Vault access policies: besides the vault owner (the `--token`
//! identity, which may do everything), named identities with their own
//! bearer token and a set of key permissions. A request for an operation
//! its identity lacks the permission for gets Key Vault's 403
//! `ForbiddenByPolicy`, so callers can be tested against a key that stays
//! readable while wrapping is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{PoisonError, RwLock};

use subtle::ConstantTimeEq;

use super::error::ServiceError;
use super::routes::Route;

/// Key Vault's access-policy key permissions, as they are spelled there.
pub const KEY_PERMISSIONS: [&str; 20] = [
    "get",
    "list",
    "create",
    "update",
    "delete",
    "wrapKey",
    "unwrapKey",
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "rotate",
    "import",
    "recover",
    "purge",
    "backup",
    "restore",
    "release",
    "getrotationpolicy",
    "setrotationpolicy",
];

/// The canonical spelling of a key permission (matched case-insensitively).
pub(crate) fn permission(name: &str) -> Option<&'static str> {
    KEY_PERMISSIONS.iter().copied().find(|p| p.eq_ignore_ascii_case(name))
}

/// The permission Key Vault requires for a route's operation.
pub(crate) fn required_permission(route: &Route) -> &'static str {
    match route {
        Route::CreateKey { .. } => "create",
        Route::ImportKey { .. } => "import",
        Route::GetRotationPolicy { .. } => "getrotationpolicy",
        Route::UpdateRotationPolicy { .. } => "setrotationpolicy",
        Route::BackupKey { .. } => "backup",
        Route::RestoreKey => "restore",
        Route::ReleaseKey { .. } => "release",
        Route::GetKey { .. } | Route::GetDeletedKey { .. } => "get",
        Route::UpdateKey { .. } => "update",
        Route::DeleteKey { .. } => "delete",
        Route::ListKeys | Route::ListKeyVersions { .. } | Route::ListDeletedKeys => "list",
        Route::RotateKey { .. } => "rotate",
        Route::Crypto { operation, .. } => operation.key_op(),
        Route::RecoverDeletedKey { .. } => "recover",
        Route::PurgeDeletedKey { .. } => "purge",
    }
}

/// Who sent an authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The `--token` holder: every permission, and the `/_emulator/` routes.
    Owner,
    /// A named identity and its key permissions.
    Identity {
        /// The identity's name, as Key Vault's refusals show it.
        name: String,
        /// Canonical permission names.
        permissions: BTreeSet<&'static str>,
    },
}

impl Caller {
    /// Refuses the route unless the caller holds its permission; `vault`
    /// is the authority the request addressed, shown in the refusal.
    pub(crate) fn authorize(&self, route: &Route, vault: &str) -> Result<(), ServiceError> {
        let Self::Identity { name, permissions } = self else {
            return Ok(());
        };
        let needed = required_permission(route);
        if permissions.contains(needed) {
            return Ok(());
        }
        Err(ServiceError::forbidden_by_policy(format!(
            "The user, group or application 'name={name}' does not have keys {needed} permission on key vault \
             '{vault}'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"
        )))
    }
}

struct Identity {
    token: String,
    permissions: BTreeSet<&'static str>,
}

/// Why an identity cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdentityError {
    /// The name is not 1 to 127 letters, digits, `-` or `_`.
    #[error("the identity name {0:?} must be 1 to 127 letters, digits, '-' or '_'")]
    Name(String),
    /// The token is empty, has whitespace, or is the owner's or another identity's.
    #[error("the identity's token must be non-empty, without whitespace, and differ from every other token")]
    Token,
    /// A permission Key Vault does not have.
    #[error("{0:?} is not a Key Vault key permission")]
    Permission(String),
}

/// The owner's token and the named identities.
pub(crate) struct AccessPolicies {
    owner: String,
    identities: RwLock<BTreeMap<String, Identity>>,
}

impl AccessPolicies {
    /// Policies where only the owner, holding `owner`, is known; identities
    /// are added while the emulator runs.
    pub(crate) fn new(owner: String) -> Self {
        Self { owner, identities: RwLock::new(BTreeMap::new()) }
    }

    /// Who `token` is, comparing it with every token in constant time.
    pub(crate) fn caller(&self, token: &str) -> Option<Caller> {
        let token = token.as_bytes();
        let mut caller = None;
        if bool::from(token.ct_eq(self.owner.as_bytes())) {
            caller = Some(Caller::Owner);
        }
        let identities = self.identities.read().unwrap_or_else(PoisonError::into_inner);
        // Every token is compared, whichever matches, so timing tells nothing.
        for (name, identity) in identities.iter() {
            if bool::from(token.ct_eq(identity.token.as_bytes())) && caller.is_none() {
                caller = Some(Caller::Identity { name: name.clone(), permissions: identity.permissions.clone() });
            }
        }
        caller
    }

    /// Adds identity `name`, or replaces its token and permissions.
    pub(crate) fn set(&self, name: &str, token: &str, permissions: &[&str]) -> Result<(), IdentityError> {
        let name_ok = (1..=127).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(IdentityError::Name(name.to_owned()));
        }
        let permissions = permissions
            .iter()
            .map(|p| permission(p).ok_or_else(|| IdentityError::Permission((*p).to_owned())))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let mut identities = self.identities.write().unwrap_or_else(PoisonError::into_inner);
        let taken = token == self.owner || identities.iter().any(|(other, i)| other != name && i.token == token);
        if token.is_empty() || token.chars().any(char::is_whitespace) || taken {
            return Err(IdentityError::Token);
        }
        identities.insert(name.to_owned(), Identity { token: token.to_owned(), permissions });
        Ok(())
    }

    /// Removes identity `name`; whether it existed.
    pub(crate) fn remove(&self, name: &str) -> bool {
        self.identities.write().unwrap_or_else(PoisonError::into_inner).remove(name).is_some()
    }

    /// Every identity's name and permissions (never its token).
    pub(crate) fn list(&self) -> BTreeMap<String, Vec<&'static str>> {
        let identities = self.identities.read().unwrap_or_else(PoisonError::into_inner);
        identities.iter().map(|(name, i)| (name.clone(), i.permissions.iter().copied().collect())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_identity() {
        let policies = AccessPolicies::new("owner".to_owned());
        policies.set("reader", "r-token", &["get", "List"]).expect("valid identity");
        assert_eq!(policies.caller("owner"), Some(Caller::Owner));
        assert_eq!(
            policies.caller("r-token"),
            Some(Caller::Identity { name: "reader".to_owned(), permissions: BTreeSet::from(["get", "list"]) })
        );
        assert_eq!(policies.caller("nobody"), None);
        assert!(policies.remove("reader"));
        assert_eq!(policies.caller("r-token"), None);
        assert!(!policies.remove("reader"));
    }

    #[test]
    fn bad_identities_are_refused() {
        let policies = AccessPolicies::new("owner".to_owned());
        assert_eq!(policies.set("a", "owner", &[]), Err(IdentityError::Token));
        assert_eq!(policies.set("a", "", &[]), Err(IdentityError::Token));
        assert_eq!(policies.set("a", "two words", &[]), Err(IdentityError::Token));
        assert_eq!(policies.set("a b", "t", &[]), Err(IdentityError::Name("a b".to_owned())));
        assert_eq!(policies.set("a", "t", &["fly"]), Err(IdentityError::Permission("fly".to_owned())));
        policies.set("a", "t", &["get"]).expect("valid");
        assert_eq!(policies.set("b", "t", &["get"]), Err(IdentityError::Token), "tokens are unique");
        policies.set("a", "t", &["get", "wrapKey"]).expect("replacing keeps its own token");
        assert_eq!(policies.list()["a"], vec!["get", "wrapKey"]);
    }

    #[test]
    fn every_route_needs_its_key_permission() {
        let wrap = Route::parse("POST", "/keys/k//wrapkey").expect("route");
        let get = Route::parse("GET", "/keys/k").expect("route");
        assert_eq!(required_permission(&wrap), "wrapKey");
        assert_eq!(required_permission(&Route::parse("GET", "/keys").expect("route")), "list");
        assert_eq!(required_permission(&Route::parse("DELETE", "/deletedkeys/k").expect("route")), "purge");
        let reader = Caller::Identity { name: "reader".to_owned(), permissions: BTreeSet::from(["get"]) };
        assert!(reader.authorize(&get, "127.0.0.1:1").is_ok());
        let refusal = reader.authorize(&wrap, "127.0.0.1:1").expect_err("no wrapKey");
        assert_eq!(
            (refusal.status.as_u16(), refusal.code, refusal.inner_code),
            (403, "Forbidden", Some("ForbiddenByPolicy"))
        );
        assert!(refusal.message.starts_with("The user, group or application 'name=reader' does not have keys wrapKey permission on key vault '127.0.0.1:1'"), "{}", refusal.message);
        assert!(Caller::Owner.authorize(&wrap, "v").is_ok());
        for permission in KEY_PERMISSIONS {
            assert_eq!(super::permission(&permission.to_uppercase()), Some(permission));
        }
    }
}
