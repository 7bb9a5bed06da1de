//! Key Vault's JSON shapes, with its exact field names: the key bundle,
//! deleted-key bundle, list items and pages, key-operation results and the
//! request bodies. Timestamps are integer Unix seconds and bytes unpadded
//! base64url, as the SDKs expect.

use std::collections::BTreeMap;

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use super::material::PublicJwk;
use super::vault::{DeletionPolicy, KeyView};

/// Accepts base64url with or without padding, as Key Vault does.
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(crate) fn to_base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn from_base64url(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_ANY_PADDING.decode(text)
}

/// `attributes` of a key bundle or list item.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Attributes {
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    created: i64,
    updated: i64,
    recovery_level: &'static str,
    recoverable_days: u32,
}

/// The `key` member: a JSON Web Key with public parts only.
#[derive(Serialize)]
pub(crate) struct JsonWebKey {
    kid: String,
    kty: &'static str,
    key_ops: Vec<String>,
    #[serde(flatten)]
    public: PublicMembers,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PublicMembers {
    Rsa { n: String, e: String },
    Ec { crv: &'static str, x: String, y: String },
}

/// `KeyBundle`: what create, get, update, rotate and recover return.
#[derive(Serialize)]
pub(crate) struct KeyBundle {
    key: JsonWebKey,
    attributes: Attributes,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
}

/// `DeletedKeyBundle`: a key bundle plus its recovery data (absent when
/// the vault has no soft delete).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeletedKeyBundle {
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_date: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_purge_date: Option<i64>,
    #[serde(flatten)]
    bundle: KeyBundle,
}

/// `KeyItem` (`KeyProperties` in the SDKs): one entry of a key list.
#[derive(Serialize)]
pub(crate) struct KeyItem {
    kid: String,
    attributes: Attributes,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
}

/// `DeletedKeyItem`: one entry of the deleted-key list.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeletedKeyItem {
    recovery_id: Option<String>,
    deleted_date: Option<i64>,
    scheduled_purge_date: Option<i64>,
    #[serde(flatten)]
    item: KeyItem,
}

/// A page of a list: `nextLink` is an absolute URL, or null on the last page.
#[derive(Serialize)]
pub(crate) struct Page<T> {
    pub(crate) value: Vec<T>,
    #[serde(rename = "nextLink")]
    pub(crate) next_link: Option<String>,
}

impl<T> Page<T> {
    /// The same page with each entry rendered.
    pub(crate) fn map<U>(self, render: impl FnMut(T) -> U) -> Page<U> {
        Page { value: self.value.into_iter().map(render).collect(), next_link: self.next_link }
    }
}

/// `KeyOperationResult`: the versioned kid used and the output bytes.
#[derive(Serialize)]
pub(crate) struct KeyOperationResult {
    pub(crate) kid: String,
    pub(crate) value: String,
}

/// `attributes` in create and update requests; read-only fields are ignored.
#[derive(Deserialize, Default)]
pub(crate) struct AttributesRequest {
    pub(crate) enabled: Option<bool>,
    pub(crate) nbf: Option<i64>,
    pub(crate) exp: Option<i64>,
}

/// `CreateKeyParameters`.
#[derive(Deserialize)]
pub(crate) struct CreateKeyRequest {
    pub(crate) kty: Option<String>,
    pub(crate) key_size: Option<u32>,
    pub(crate) public_exponent: Option<u64>,
    pub(crate) crv: Option<String>,
    pub(crate) key_ops: Option<Vec<String>>,
    pub(crate) attributes: Option<AttributesRequest>,
    pub(crate) tags: Option<BTreeMap<String, String>>,
}

/// `KeyUpdateParameters`.
#[derive(Deserialize)]
pub(crate) struct UpdateKeyRequest {
    pub(crate) key_ops: Option<Vec<String>>,
    pub(crate) attributes: Option<AttributesRequest>,
    pub(crate) tags: Option<BTreeMap<String, String>>,
}

/// `KeyOperationsParameters` (wrap, unwrap, encrypt, decrypt).
#[derive(Deserialize)]
pub(crate) struct KeyOperationRequest {
    pub(crate) alg: String,
    pub(crate) value: String,
}

/// Builds response shapes for one request: identifiers use the vault URL
/// the client called (`https://{Host}`), attributes the vault's policy.
pub(crate) struct Renderer<'a> {
    pub(crate) vault_url: &'a str,
    pub(crate) policy: &'a DeletionPolicy,
}

impl Renderer<'_> {
    /// `https://{host}/keys/{name}/{version}`.
    pub(crate) fn versioned_kid(&self, view: &KeyView) -> String {
        format!("{}/{}", self.unversioned_kid(view), view.version.id)
    }

    fn unversioned_kid(&self, view: &KeyView) -> String {
        format!("{}/keys/{}", self.vault_url, view.name)
    }

    fn attributes(&self, view: &KeyView) -> Attributes {
        let props = &view.version.props;
        Attributes {
            enabled: props.enabled,
            nbf: props.nbf,
            exp: props.exp,
            created: props.created,
            updated: props.updated,
            recovery_level: self.policy.level().as_str(),
            recoverable_days: self.policy.recoverable_days(),
        }
    }

    pub(crate) fn bundle(&self, view: &KeyView) -> KeyBundle {
        let public = match view.version.material.public_jwk() {
            PublicJwk::Rsa { n, e } => PublicMembers::Rsa { n: to_base64url(&n), e: to_base64url(&e) },
            PublicJwk::Ec { crv, x, y } => PublicMembers::Ec { crv, x: to_base64url(&x), y: to_base64url(&y) },
        };
        KeyBundle {
            key: JsonWebKey {
                kid: self.versioned_kid(view),
                kty: view.version.props.kty.as_str(),
                key_ops: view.version.props.key_ops.clone(),
                public,
            },
            attributes: self.attributes(view),
            tags: view.version.props.tags.clone(),
        }
    }

    fn recovery_id(&self, view: &KeyView) -> Option<String> {
        view.deletion.map(|_| format!("{}/deletedkeys/{}", self.vault_url, view.name))
    }

    pub(crate) fn deleted_bundle(&self, view: &KeyView) -> DeletedKeyBundle {
        DeletedKeyBundle {
            recovery_id: self.recovery_id(view),
            deleted_date: view.deletion.map(|d| d.deleted_date),
            scheduled_purge_date: view.deletion.map(|d| d.scheduled_purge_date),
            bundle: self.bundle(view),
        }
    }

    /// A list entry; key lists name the key, version lists the version.
    pub(crate) fn item(&self, view: &KeyView, versioned: bool) -> KeyItem {
        KeyItem {
            kid: if versioned { self.versioned_kid(view) } else { self.unversioned_kid(view) },
            attributes: self.attributes(view),
            tags: view.version.props.tags.clone(),
        }
    }

    pub(crate) fn deleted_item(&self, view: &KeyView) -> DeletedKeyItem {
        DeletedKeyItem {
            recovery_id: self.recovery_id(view),
            deleted_date: view.deletion.map(|d| d.deleted_date),
            scheduled_purge_date: view.deletion.map(|d| d.scheduled_purge_date),
            item: self.item(view, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_unpadded_out_and_tolerant_in() {
        assert_eq!(to_base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(from_base64url("-_8").expect("unpadded"), vec![0xfb, 0xff]);
        assert_eq!(from_base64url("-_8=").expect("padded"), vec![0xfb, 0xff]);
        assert!(from_base64url("+/8=").is_err());
    }
}
