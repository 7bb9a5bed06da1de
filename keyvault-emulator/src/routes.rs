//! Which Key Vault operation a method and path name. Parsed by hand rather
//! than with a router because Key Vault's paths carry empty segments that
//! mean "latest version" (`/keys/{name}/`, `/keys/{name}//wrapkey`, as the
//! Rust SDK sends them), and literal segments match case-insensitively.

use super::error::ServiceError;
use super::model::KeyOperation;

/// One Key Vault keys operation with its path parameters. `version: None`
/// means the latest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    CreateKey { name: String },
    ImportKey { name: String },
    GetKey { name: String, version: Option<String> },
    UpdateKey { name: String, version: Option<String> },
    DeleteKey { name: String },
    ListKeys,
    ListKeyVersions { name: String },
    RotateKey { name: String },
    GetRotationPolicy { name: String },
    UpdateRotationPolicy { name: String },
    BackupKey { name: String },
    RestoreKey,
    ReleaseKey { name: String },
    Crypto { name: String, version: Option<String>, operation: KeyOperation },
    ListDeletedKeys,
    GetDeletedKey { name: String },
    RecoverDeletedKey { name: String },
    PurgeDeletedKey { name: String },
}

impl Route {
    /// Parses a request line. Unknown combinations are 404; a key name
    /// outside Key Vault's alphabet is 400.
    pub(crate) fn parse(method: &str, path: &str) -> Result<Self, ServiceError> {
        let unknown = || ServiceError::unknown_operation(method, path);
        let segments: Vec<&str> = path.strip_prefix('/').ok_or_else(unknown)?.split('/').collect();
        let lowered: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
        let lowered: Vec<&str> = lowered.iter().map(String::as_str).collect();
        // Names keep the caller's case (Key Vault echoes it); literals and
        // versions do not matter.
        let name = || valid_name(segments[1]);
        let version = |index: usize| Some(lowered[index].to_owned()).filter(|v| !v.is_empty());
        let route = match (method, lowered.as_slice()) {
            ("GET", ["keys"] | ["keys", ""]) => Self::ListKeys,
            ("GET", ["deletedkeys"] | ["deletedkeys", ""]) => Self::ListDeletedKeys,
            ("POST", ["keys", _, "create"]) => Self::CreateKey { name: name()? },
            ("PUT", ["keys", _] | ["keys", _, ""]) => Self::ImportKey { name: name()? },
            ("POST", ["keys", _, "rotate"]) => Self::RotateKey { name: name()? },
            ("GET", ["keys", _, "rotationpolicy"]) => Self::GetRotationPolicy { name: name()? },
            ("PUT", ["keys", _, "rotationpolicy"]) => Self::UpdateRotationPolicy { name: name()? },
            ("POST", ["keys", _, "backup"]) => Self::BackupKey { name: name()? },
            ("POST", ["keys", "restore"]) => Self::RestoreKey,
            ("POST", ["keys", _, "release"] | ["keys", _, _, "release"]) => Self::ReleaseKey { name: name()? },
            ("GET", ["keys", _, "versions"] | ["keys", _, "versions", ""]) => Self::ListKeyVersions { name: name()? },
            ("GET", ["keys", _] | ["keys", _, ""]) => Self::GetKey { name: name()?, version: None },
            ("GET", ["keys", _, _] | ["keys", _, _, ""]) => Self::GetKey { name: name()?, version: version(2) },
            ("PATCH", ["keys", _] | ["keys", _, ""]) => Self::UpdateKey { name: name()?, version: None },
            ("PATCH", ["keys", _, _] | ["keys", _, _, ""]) => Self::UpdateKey { name: name()?, version: version(2) },
            ("DELETE", ["keys", _] | ["keys", _, ""]) => Self::DeleteKey { name: name()? },
            // `/keys/{name}/wrapkey`: the .NET SDK's form for an unversioned key id.
            ("POST", ["keys", _, op]) => Self::Crypto {
                name: name()?,
                version: None,
                operation: KeyOperation::from_path_segment(op).ok_or_else(unknown)?,
            },
            ("POST", ["keys", _, _, op]) => Self::Crypto {
                name: name()?,
                version: version(2),
                operation: KeyOperation::from_path_segment(op).ok_or_else(unknown)?,
            },
            ("GET", ["deletedkeys", _]) => Self::GetDeletedKey { name: name()? },
            ("DELETE", ["deletedkeys", _]) => Self::PurgeDeletedKey { name: name()? },
            ("POST", ["deletedkeys", _, "recover"]) => Self::RecoverDeletedKey { name: name()? },
            _ => return Err(unknown()),
        };
        Ok(route)
    }

    /// The key the operation names, if any.
    pub(crate) fn key_name(&self) -> Option<&str> {
        match self {
            Self::CreateKey { name }
            | Self::ImportKey { name }
            | Self::GetRotationPolicy { name }
            | Self::UpdateRotationPolicy { name }
            | Self::BackupKey { name }
            | Self::ReleaseKey { name }
            | Self::GetKey { name, .. }
            | Self::UpdateKey { name, .. }
            | Self::DeleteKey { name }
            | Self::ListKeyVersions { name }
            | Self::RotateKey { name }
            | Self::Crypto { name, .. }
            | Self::GetDeletedKey { name }
            | Self::RecoverDeletedKey { name }
            | Self::PurgeDeletedKey { name } => Some(name),
            Self::ListKeys | Self::ListDeletedKeys | Self::RestoreKey => None,
        }
    }

    /// The key version the operation names, if any (`None` for the latest
    /// or for an operation on the whole key).
    pub(crate) fn key_version(&self) -> Option<&str> {
        match self {
            Self::GetKey { version, .. } | Self::UpdateKey { version, .. } | Self::Crypto { version, .. } => {
                version.as_deref()
            }
            _ => None,
        }
    }

    /// The operation's name in call counts.
    pub(crate) fn operation(&self) -> &'static str {
        match self {
            Self::CreateKey { .. } => "create_key",
            Self::ImportKey { .. } => "import_key",
            Self::GetRotationPolicy { .. } => "get_rotation_policy",
            Self::UpdateRotationPolicy { .. } => "update_rotation_policy",
            Self::BackupKey { .. } => "backup_key",
            Self::RestoreKey => "restore_key",
            Self::ReleaseKey { .. } => "release_key",
            Self::GetKey { .. } => "get_key",
            Self::UpdateKey { .. } => "update_key",
            Self::DeleteKey { .. } => "delete_key",
            Self::ListKeys => "list_keys",
            Self::ListKeyVersions { .. } => "list_key_versions",
            Self::RotateKey { .. } => "rotate_key",
            Self::Crypto { operation, .. } => operation.path_segment(),
            Self::ListDeletedKeys => "list_deleted_keys",
            Self::GetDeletedKey { .. } => "get_deleted_key",
            Self::RecoverDeletedKey { .. } => "recover_deleted_key",
            Self::PurgeDeletedKey { .. } => "purge_deleted_key",
        }
    }
}

/// Key Vault object names: 1 to 127 ASCII letters, digits and dashes. The
/// check also keeps names safe as file names in the state directory.
fn valid_name(name: &str) -> Result<String, ServiceError> {
    let valid = (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(ServiceError::bad_parameter(format!("The request URI contains an invalid name: {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "0123456789abcdef0123456789abcdef";

    fn parse(method: &str, path: &str) -> Route {
        Route::parse(method, path).unwrap_or_else(|e| panic!("{method} {path}: {e:?}"))
    }

    fn name(n: &str) -> String {
        n.to_owned()
    }

    #[test]
    fn empty_version_segments_mean_latest() {
        let latest = Route::GetKey { name: name("K1"), version: None };
        assert_eq!(parse("GET", "/keys/K1"), latest);
        assert_eq!(parse("GET", "/keys/K1/"), latest);
        let wrap_latest = Route::Crypto { name: name("k1"), version: None, operation: KeyOperation::WrapKey };
        assert_eq!(parse("POST", "/keys/k1//wrapkey"), wrap_latest);
        assert_eq!(parse("POST", "/keys/k1/wrapKey"), wrap_latest);
        assert_eq!(parse("PATCH", "/keys/k1/"), Route::UpdateKey { name: name("k1"), version: None });
    }

    #[test]
    fn versions_and_literals_match_case_insensitively() {
        assert_eq!(
            parse("GET", &format!("/keys/k1/{}", V.to_uppercase())),
            Route::GetKey { name: name("k1"), version: Some(V.to_owned()) }
        );
        assert_eq!(
            parse("POST", &format!("/keys/k1/{V}/UnwrapKey")),
            Route::Crypto { name: name("k1"), version: Some(V.to_owned()), operation: KeyOperation::UnwrapKey }
        );
        assert_eq!(parse("GET", "/keys/k1/Versions"), Route::ListKeyVersions { name: name("k1") });
        assert_eq!(parse("POST", "/keys/k1/create"), Route::CreateKey { name: name("k1") });
        assert_eq!(parse("POST", "/keys/k1/rotate"), Route::RotateKey { name: name("k1") });
    }

    #[test]
    fn import_backup_restore_policy_and_signature_routes() {
        assert_eq!(parse("PUT", "/keys/k1"), Route::ImportKey { name: name("k1") });
        assert_eq!(parse("POST", "/keys/k1/backup"), Route::BackupKey { name: name("k1") });
        assert_eq!(parse("POST", "/keys/restore"), Route::RestoreKey);
        assert_eq!(parse("POST", "/keys/restore/create"), Route::CreateKey { name: name("restore") });
        assert_eq!(parse("GET", "/keys/k1/rotationpolicy"), Route::GetRotationPolicy { name: name("k1") });
        assert_eq!(parse("PUT", "/keys/k1/RotationPolicy"), Route::UpdateRotationPolicy { name: name("k1") });
        assert_eq!(parse("POST", &format!("/keys/k1/{V}/release")), Route::ReleaseKey { name: name("k1") });
        assert_eq!(
            parse("POST", &format!("/keys/k1/{V}/sign")),
            Route::Crypto { name: name("k1"), version: Some(V.to_owned()), operation: KeyOperation::Sign }
        );
        assert_eq!(
            parse("POST", "/keys/k1//verify"),
            Route::Crypto { name: name("k1"), version: None, operation: KeyOperation::Verify }
        );
    }

    #[test]
    fn deleted_key_routes() {
        assert_eq!(parse("GET", "/deletedkeys"), Route::ListDeletedKeys);
        assert_eq!(parse("GET", "/deletedkeys/k1"), Route::GetDeletedKey { name: name("k1") });
        assert_eq!(parse("DELETE", "/deletedkeys/k1"), Route::PurgeDeletedKey { name: name("k1") });
        assert_eq!(parse("POST", "/deletedkeys/k1/recover"), Route::RecoverDeletedKey { name: name("k1") });
        assert_eq!(parse("DELETE", "/keys/k1"), Route::DeleteKey { name: name("k1") });
    }

    #[test]
    fn unknown_paths_and_bad_names_are_refused() {
        assert_eq!(Route::parse("GET", "/secrets/s1").unwrap_err().status, 404);
        assert_eq!(Route::parse("POST", "/keys/k1/v/frobnicate").unwrap_err().status, 404);
        assert_eq!(Route::parse("PUT", "/keys/k1/v1").unwrap_err().status, 404);
        assert_eq!(Route::parse("GET", "/keys/a.b").unwrap_err().status, 400);
        assert_eq!(Route::parse("GET", "/keys/..%2F").unwrap_err().status, 400);
    }
}
