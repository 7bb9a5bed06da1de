//! Key Vault's JSON shapes, with its exact field names: the key bundle,
//! deleted-key bundle, list items and pages, key-operation results and the
//! request bodies (read with [`parse_body`]). Timestamps are integer Unix
//! seconds and bytes unpadded base64url, as the SDKs expect.

use std::collections::BTreeMap;

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::error::ServiceError;
use super::material::PublicJwk;
use super::model::{ActionType, DeletionPolicy, KeyView, ReleasePolicy, RotationPolicy, Trigger};

/// Accepts base64url with or without padding, as Key Vault does.
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses a JSON request body; 400 `BadParameter` when it does not fit.
/// The Key Vault operations and the `/_emulator/` control routes both read
/// their bodies through it, so a malformed body is refused the same way
/// everywhere.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(body).map_err(|e| ServiceError::bad_parameter(format!("The request body is not valid: {e}")))
}

/// Bytes as Key Vault sends them: unpadded base64url.
pub(crate) fn to_base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Bytes a client sent as base64url, padded or not.
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
    exportable: bool,
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

/// `KeyBundle`: what create, import, get, update, rotate, recover and
/// restore return.
#[derive(Serialize)]
pub(crate) struct KeyBundle {
    key: JsonWebKey,
    attributes: Attributes,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    release_policy: Option<ReleasePolicyWire>,
}

/// `KeyReleasePolicy` on the wire.
#[derive(Serialize, Deserialize)]
pub(crate) struct ReleasePolicyWire {
    #[serde(rename = "contentType", default = "default_policy_content_type")]
    content_type: String,
    /// base64url of the policy document.
    data: Option<String>,
    #[serde(default)]
    immutable: bool,
}

/// Why a release policy a client sent cannot be stored; the text names the
/// property, for the 400 that answers it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReleasePolicyError {
    /// The policy document is missing.
    #[error("release_policy.data is required")]
    NoData,
    /// The policy document is not base64url.
    #[error("release_policy.data is not base64url")]
    DataNotBase64url,
}

fn default_policy_content_type() -> String {
    "application/json; charset=utf-8".to_owned()
}

impl ReleasePolicyWire {
    /// The stored policy; the document must be present and base64url.
    pub(crate) fn into_policy(self) -> Result<ReleasePolicy, ReleasePolicyError> {
        let data = self.data.ok_or(ReleasePolicyError::NoData)?;
        from_base64url(&data).map_err(|_| ReleasePolicyError::DataNotBase64url)?;
        Ok(ReleasePolicy { content_type: self.content_type, data, immutable: self.immutable })
    }

    fn from_policy(policy: &ReleasePolicy) -> Self {
        Self { content_type: policy.content_type.clone(), data: Some(policy.data.clone()), immutable: policy.immutable }
    }
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

/// `KeyVerifyResult`.
#[derive(Serialize)]
pub(crate) struct KeyVerifyResult {
    pub(crate) value: bool,
}

/// `BackupKeyResult`, and the body of a restore (`KeyRestoreParameters`).
#[derive(Serialize, Deserialize)]
pub(crate) struct BackupBlob {
    pub(crate) value: String,
}

/// `KeyOperationResult`: the versioned kid used and the output bytes.
#[derive(Serialize)]
pub(crate) struct KeyOperationResult {
    pub(crate) kid: String,
    pub(crate) value: String,
}

/// `attributes` in create, import and update requests; read-only fields
/// are ignored.
#[derive(Deserialize, Default)]
pub(crate) struct AttributesRequest {
    pub(crate) enabled: Option<bool>,
    pub(crate) nbf: Option<i64>,
    pub(crate) exp: Option<i64>,
    pub(crate) exportable: Option<bool>,
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
    pub(crate) release_policy: Option<ReleasePolicyWire>,
}

/// `KeyImportParameters`.
#[derive(Deserialize)]
pub(crate) struct ImportKeyRequest {
    pub(crate) key: ImportedJwk,
    #[serde(rename = "Hsm")]
    pub(crate) hsm: Option<bool>,
    pub(crate) attributes: Option<AttributesRequest>,
    pub(crate) tags: Option<BTreeMap<String, String>>,
    pub(crate) release_policy: Option<ReleasePolicyWire>,
}

/// The JSON Web Key of an import, private members included (base64url).
/// Wiped when dropped.
#[derive(Deserialize)]
pub(crate) struct ImportedJwk {
    pub(crate) kty: Option<String>,
    pub(crate) key_ops: Option<Vec<String>>,
    pub(crate) n: Option<String>,
    pub(crate) e: Option<String>,
    pub(crate) d: Option<String>,
    pub(crate) p: Option<String>,
    pub(crate) q: Option<String>,
    pub(crate) dp: Option<String>,
    pub(crate) dq: Option<String>,
    pub(crate) qi: Option<String>,
    pub(crate) crv: Option<String>,
    pub(crate) x: Option<String>,
    pub(crate) y: Option<String>,
    /// A symmetric key: Managed HSM only.
    pub(crate) k: Option<String>,
    /// An HSM key-transfer blob (BYOK from an on-premises HSM).
    pub(crate) key_hsm: Option<String>,
}

impl Drop for ImportedJwk {
    fn drop(&mut self) {
        for secret in [&mut self.d, &mut self.p, &mut self.q, &mut self.dp, &mut self.dq, &mut self.qi, &mut self.k] {
            secret.zeroize();
        }
        self.key_hsm.zeroize();
    }
}

/// `KeyUpdateParameters`.
#[derive(Deserialize)]
pub(crate) struct UpdateKeyRequest {
    pub(crate) key_ops: Option<Vec<String>>,
    pub(crate) attributes: Option<AttributesRequest>,
    pub(crate) tags: Option<BTreeMap<String, String>>,
    pub(crate) release_policy: Option<ReleasePolicyWire>,
}

/// `KeyOperationsParameters` (wrap, unwrap, encrypt, decrypt) and
/// `KeySignParameters` (sign: `value` is the digest).
#[derive(Deserialize)]
pub(crate) struct KeyOperationRequest {
    pub(crate) alg: String,
    pub(crate) value: String,
}

/// `KeyVerifyParameters`: `value` is the signature.
#[derive(Deserialize)]
pub(crate) struct KeyVerifyRequest {
    pub(crate) alg: String,
    pub(crate) digest: String,
    pub(crate) value: String,
}

/// `KeyRotationPolicy`, as sent and as returned.
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RotationPolicyWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) lifetime_actions: Option<Vec<LifetimeActionWire>>,
    #[serde(default)]
    pub(crate) attributes: Option<RotationAttributesWire>,
}

/// `LifetimeAction`: one trigger and what it does.
#[derive(Serialize, Deserialize)]
pub(crate) struct LifetimeActionWire {
    pub(crate) trigger: TriggerWire,
    pub(crate) action: ActionWire,
}

/// `LifetimeActionTrigger`: exactly one of the two durations, ISO 8601.
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TriggerWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) time_after_create: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) time_before_expiry: Option<String>,
}

/// `LifetimeActionType`: `Rotate` or `Notify`.
#[derive(Serialize, Deserialize)]
pub(crate) struct ActionWire {
    #[serde(rename = "type")]
    pub(crate) kind: String,
}

/// `KeyRotationPolicyAttributes`: the expiry time new versions get, and
/// when the policy was set.
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RotationAttributesWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expiry_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) created: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) updated: Option<i64>,
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
            exportable: props.exportable,
        }
    }

    /// `KeyBundle` of a version: what create, get, update, rotate, import,
    /// recover and restore answer.
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
            release_policy: view.version.props.release_policy.as_ref().map(ReleasePolicyWire::from_policy),
        }
    }

    /// A key's rotation policy; a key without one shows Key Vault's default
    /// (notify 30 days before expiry), as Key Vault does.
    pub(crate) fn rotation_policy(&self, name: &str, policy: Option<&RotationPolicy>) -> RotationPolicyWire {
        let id = Some(format!("{}/keys/{name}/rotationpolicy", self.vault_url));
        let Some(policy) = policy else {
            let notify = LifetimeActionWire {
                trigger: TriggerWire { time_before_expiry: Some("P30D".to_owned()), ..TriggerWire::default() },
                action: ActionWire { kind: ActionType::Notify.as_str().to_owned() },
            };
            return RotationPolicyWire {
                id,
                lifetime_actions: Some(vec![notify]),
                attributes: Some(RotationAttributesWire::default()),
            };
        };
        let actions = policy
            .lifetime_actions
            .iter()
            .map(|action| LifetimeActionWire {
                trigger: match &action.trigger {
                    Trigger::AfterCreate(after) => {
                        TriggerWire { time_after_create: Some(after.as_str().to_owned()), ..TriggerWire::default() }
                    }
                    Trigger::BeforeExpiry(before) => {
                        TriggerWire { time_before_expiry: Some(before.as_str().to_owned()), ..TriggerWire::default() }
                    }
                },
                action: ActionWire { kind: action.action.as_str().to_owned() },
            })
            .collect();
        RotationPolicyWire {
            id,
            lifetime_actions: Some(actions),
            attributes: Some(RotationAttributesWire {
                expiry_time: policy.expiry_time.as_ref().map(|expiry| expiry.as_str().to_owned()),
                created: Some(policy.created),
                updated: Some(policy.updated),
            }),
        }
    }

    fn recovery_id(&self, view: &KeyView) -> Option<String> {
        view.deletion.map(|_| format!("{}/deletedkeys/{}", self.vault_url, view.name))
    }

    /// `DeletedKeyBundle`: what delete and get-deleted answer.
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

    /// An entry of the deleted-key list.
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
