//! The official Rust Key Vault client (`azure_security_keyvault_keys`)
//! against the emulator, for the operations keyseal itself does not use
//! but teams testing their own code against the emulator do: import,
//! sign/verify, rotation policies the vault acts on, backup/restore, and
//! the premium-only settings (HSM keys, exportable keys with a release
//! policy).

mod common;

use std::time::{Duration, Instant};

use azure_security_keyvault_keys::KeyClient;
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, CurveName, ImportKeyParameters, JsonWebKey, Key, KeyAttributes, KeyClientSignOptions,
    KeyOperationParameters, KeyReleasePolicy, KeyRotationPolicy, KeyRotationPolicyAction, KeyRotationPolicyAttributes,
    KeyType, LifetimeAction, LifetimeActionTrigger, LifetimeActionType, RestoreKeyParameters, SignParameters,
    SignatureAlgorithm, UpdateKeyPropertiesParameters, VerifyParameters,
};
use common::vault::*;
use keyvault_emulator::{RecoveryLevel, Sku};
use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};

const DAY: Duration = Duration::from_secs(86_400);

/// The HTTP status of a failed SDK call.
fn status_of<T>(outcome: azure_core::Result<T>) -> u16 {
    match outcome {
        Ok(_) => panic!("the vault accepted what it must refuse"),
        Err(e) => u16::from(e.http_status().unwrap_or_else(|| panic!("not an HTTP error: {e}"))),
    }
}

fn version_of_key(key: &Key) -> String {
    let kid = key.key.as_ref().and_then(|jwk| jwk.kid.as_deref()).expect("kid");
    kid.rsplit('/').next().expect("version").to_owned()
}

async fn create(client: &KeyClient, name: &str, parameters: CreateKeyParameters) -> Key {
    client
        .create_key(name, parameters.try_into().expect("body"), None)
        .await
        .expect("create")
        .into_model()
        .expect("key")
}

async fn sign(client: &KeyClient, name: &str, version: &str, algorithm: SignatureAlgorithm, digest: &[u8]) -> Vec<u8> {
    let parameters = SignParameters { algorithm: Some(algorithm), value: Some(digest.to_vec()) };
    let options = KeyClientSignOptions { key_version: Some(version.to_owned()), ..Default::default() };
    let result = client.sign(name, parameters.try_into().expect("body"), Some(options)).await.expect("sign");
    result.into_model().expect("result").result.expect("signature")
}

async fn verify(
    client: &KeyClient,
    name: &str,
    algorithm: SignatureAlgorithm,
    digest: &[u8],
    signature: &[u8],
) -> bool {
    let parameters = VerifyParameters {
        algorithm: Some(algorithm),
        digest: Some(digest.to_vec()),
        signature: Some(signature.to_vec()),
    };
    let result = client.verify(name, "", parameters.try_into().expect("body"), None).await.expect("verify");
    result.into_model().expect("result").value.expect("verdict")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_rsa_key_decrypts_what_its_public_half_encrypted_locally() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let client = vault.sdk_client();
    let local = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("local key");
    let bytes = |n: &rsa::BoxedUint| n.to_be_bytes_trimmed_vartime().into_vec();
    let jwk = JsonWebKey {
        kty: Some(KeyType::Rsa),
        n: Some(bytes(local.n().as_ref())),
        e: Some(bytes(local.e())),
        d: Some(bytes(local.d())),
        p: Some(bytes(&local.primes()[0])),
        q: Some(bytes(&local.primes()[1])),
        key_ops: Some(vec!["unwrapKey".to_owned(), "sign".to_owned()]),
        ..Default::default()
    };
    let parameters = ImportKeyParameters { key: Some(jwk), ..Default::default() };
    let imported =
        client.import_key("imported", parameters.try_into().expect("body"), None).await.expect("import").into_model();
    let imported = imported.expect("key");
    let public = imported.key.as_ref().expect("jwk");
    assert_eq!(public.n.as_deref(), Some(bytes(local.n().as_ref()).as_slice()), "the vault holds our key");
    assert!(public.d.is_none() && public.p.is_none(), "private members never leave the vault");
    assert_eq!(public.key_ops, Some(vec!["unwrapKey".to_owned(), "sign".to_owned()]));

    let data_key = [0x42u8; 32];
    let wrapped = local.as_public_key().oaep_encrypt::<Sha256>(&data_key).expect("local wrap");
    let parameters = KeyOperationParameters {
        algorithm: Some(azure_security_keyvault_keys::models::EncryptionAlgorithm::RsaOaep256),
        value: Some(wrapped),
        ..Default::default()
    };
    let unwrapped = client
        .unwrap_key("imported", &version_of_key(&imported), parameters.try_into().expect("body"), None)
        .await
        .expect("unwrap")
        .into_model()
        .expect("result");
    assert_eq!(unwrapped.result.as_deref(), Some(data_key.as_slice()));

    // A signature the vault makes verifies with the local public key.
    let digest = Sha256::digest(b"imported and signed");
    let signature = sign(&client, "imported", &version_of_key(&imported), SignatureAlgorithm::Ps256, &digest).await;
    local.as_public_key().pss_verify_prehash::<Sha256>(&digest, &signature).expect("PSS signature verifies locally");

    // Members that do not form a key are refused, and nothing is stored.
    let mut broken = JsonWebKey { kty: Some(KeyType::Rsa), ..Default::default() };
    broken.n = Some(bytes(local.n().as_ref()));
    broken.e = Some(bytes(local.e()));
    broken.d = Some(vec![1, 2, 3]);
    let parameters = ImportKeyParameters { key: Some(broken), ..Default::default() };
    assert_eq!(status_of(client.import_key("broken", parameters.try_into().expect("body"), None).await), 400);
    assert_eq!(status_of(client.get_key("broken", None).await), 404);
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signature_algorithm_signs_and_verifies_and_rejects_a_changed_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let client = vault.sdk_client();
    let message = b"what was signed";
    let rsa =
        create(&client, "signer-rsa", CreateKeyParameters { kty: Some(KeyType::Rsa), ..Default::default() }).await;
    let rsa_version = version_of_key(&rsa);
    let mut cases: Vec<(String, String, SignatureAlgorithm, Vec<u8>)> = Vec::new();
    for (algorithm, digest) in [
        (SignatureAlgorithm::Rs256, Sha256::digest(message).to_vec()),
        (SignatureAlgorithm::Rs384, Sha384::digest(message).to_vec()),
        (SignatureAlgorithm::Rs512, Sha512::digest(message).to_vec()),
        (SignatureAlgorithm::Ps256, Sha256::digest(message).to_vec()),
        (SignatureAlgorithm::Ps384, Sha384::digest(message).to_vec()),
        (SignatureAlgorithm::Ps512, Sha512::digest(message).to_vec()),
    ] {
        cases.push(("signer-rsa".to_owned(), rsa_version.clone(), algorithm, digest));
    }
    for (curve, algorithm, digest) in [
        (CurveName::P256, SignatureAlgorithm::Es256, Sha256::digest(message).to_vec()),
        (CurveName::P256K, SignatureAlgorithm::Es256K, Sha256::digest(message).to_vec()),
        (CurveName::P384, SignatureAlgorithm::Es384, Sha384::digest(message).to_vec()),
        (CurveName::P521, SignatureAlgorithm::Es512, Sha512::digest(message).to_vec()),
    ] {
        let name = format!("signer-{}", curve.to_string().to_lowercase());
        let parameters =
            CreateKeyParameters { kty: Some(KeyType::Ec), curve: Some(curve.clone()), ..Default::default() };
        let key = create(&client, &name, parameters).await;
        assert_eq!(key.key.as_ref().and_then(|jwk| jwk.crv.clone()), Some(curve));
        cases.push((name, version_of_key(&key), algorithm, digest));
    }
    for (name, version, algorithm, digest) in cases {
        let signature = sign(&client, &name, &version, algorithm.clone(), &digest).await;
        assert!(verify(&client, &name, algorithm.clone(), &digest, &signature).await, "{algorithm:?}");
        let mut changed = digest.clone();
        changed[0] ^= 1;
        assert!(!verify(&client, &name, algorithm.clone(), &changed, &signature).await, "{algorithm:?}");
    }

    // A digest of the wrong length, and an algorithm for another curve.
    let parameters = SignParameters { algorithm: Some(SignatureAlgorithm::Rs256), value: Some(vec![0; 20]) };
    assert_eq!(status_of(client.sign("signer-rsa", parameters.try_into().expect("body"), None).await), 400);
    let parameters = SignParameters { algorithm: Some(SignatureAlgorithm::Es384), value: Some(vec![0; 48]) };
    assert_eq!(status_of(client.sign("signer-p-256", parameters.try_into().expect("body"), None).await), 400);
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_policy_creates_the_new_version_when_the_emulators_clock_reaches_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let client = vault.sdk_client();
    let first =
        create(&client, "rotating", CreateKeyParameters { kty: Some(KeyType::Rsa), ..Default::default() }).await;

    // Key Vault shows a default policy until one is set.
    let default = client.get_key_rotation_policy("rotating", None).await.expect("get").into_model().expect("policy");
    let action = &default.lifetime_actions.as_ref().expect("actions")[0];
    assert_eq!(action.action.as_ref().and_then(|a| a.type_prop), Some(KeyRotationPolicyAction::Notify));
    // ... which can be PUT back as it came (get, change, update).
    client.update_key_rotation_policy("rotating", default.try_into().expect("body"), None).await.expect("round trip");

    let policy = KeyRotationPolicy {
        lifetime_actions: Some(vec![LifetimeAction {
            trigger: Some(LifetimeActionTrigger { time_after_create: Some("P30D".to_owned()), ..Default::default() }),
            action: Some(LifetimeActionType { type_prop: Some(KeyRotationPolicyAction::Rotate) }),
        }]),
        attributes: Some(KeyRotationPolicyAttributes { expiry_time: Some("P90D".to_owned()), ..Default::default() }),
        ..Default::default()
    };
    let set = client
        .update_key_rotation_policy("rotating", policy.try_into().expect("body"), None)
        .await
        .expect("update")
        .into_model()
        .expect("policy");
    assert!(set.id.as_deref().is_some_and(|id| id.ends_with("/keys/rotating/rotationpolicy")), "{:?}", set.id);
    let fetched = client.get_key_rotation_policy("rotating", None).await.expect("get").into_model().expect("policy");
    let trigger = fetched.lifetime_actions.as_ref().expect("actions")[0].trigger.clone().expect("trigger");
    assert_eq!(trigger.time_after_create.as_deref(), Some("P30D"));
    assert_eq!(fetched.attributes.and_then(|a| a.expiry_time).as_deref(), Some("P90D"));

    // Nothing happens before the time comes ...
    vault.emulator.advance_clock(29 * DAY);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let latest = client.get_key("rotating", None).await.expect("get").into_model().expect("key");
    assert_eq!(version_of_key(&latest), version_of_key(&first), "rotated 29 days after creation");

    // ... and the vault rotates by itself once it has.
    vault.emulator.advance_clock(2 * DAY);
    let deadline = Instant::now() + Duration::from_secs(10);
    let rotated = loop {
        let latest = client.get_key("rotating", None).await.expect("get").into_model().expect("key");
        if version_of_key(&latest) != version_of_key(&first) {
            break latest;
        }
        assert!(Instant::now() < deadline, "the policy never rotated the key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attributes = rotated.attributes.clone().expect("attributes");
    let lifetime = attributes.expires.expect("exp from expiryTime") - attributes.created.expect("created");
    assert_eq!(lifetime.whole_days(), 90, "the new version lives as long as the policy says");
    assert_ne!(rotated.key.as_ref().and_then(|k| k.n.clone()), first.key.as_ref().and_then(|k| k.n.clone()));
    assert_eq!(vault.emulator.calls().get("rotate_key"), None, "no one called rotate");

    // Exactly one new version: the next rotation is 30 days after it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let latest = client.get_key("rotating", None).await.expect("get").into_model().expect("key");
    assert_eq!(version_of_key(&latest), version_of_key(&rotated));

    // Key Vault's rules: at least 7 days, and a trigger before expiry needs one.
    let too_soon = KeyRotationPolicy {
        lifetime_actions: Some(vec![LifetimeAction {
            trigger: Some(LifetimeActionTrigger { time_after_create: Some("P6D".to_owned()), ..Default::default() }),
            action: Some(LifetimeActionType { type_prop: Some(KeyRotationPolicyAction::Rotate) }),
        }]),
        ..Default::default()
    };
    assert_eq!(
        status_of(client.update_key_rotation_policy("rotating", too_soon.try_into().expect("body"), None).await),
        400
    );
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_every_version_only_into_a_free_name_on_the_same_emulator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::RecoverablePurgeable)).await;
    let client = vault.sdk_client();
    let v1 = vault.create_rsa("kept").await;
    let data_key = [0x33u8; 32];
    let (_, wrapped_by_v1) = vault.wrap("kept", "", "RSA-OAEP-256", &data_key).await;
    vault.ok(reqwest::Method::POST, "/keys/kept/rotate", None).await;

    let backup = client.backup_key("kept", None).await.expect("backup").into_model().expect("blob");
    let blob = backup.value.expect("blob");
    assert!(!blob.windows(4).any(|w| w == b"kept"), "the blob is opaque");

    // The name is taken: 409, as Key Vault answers.
    let restore = |blob: Vec<u8>| RestoreKeyParameters { key_backup: Some(blob) };
    let taken = client.restore_key(restore(blob.clone()).try_into().expect("body"), None).await;
    assert_eq!(status_of(taken), 409);

    client.delete_key("kept", None).await.expect("delete");
    client.purge_deleted_key("kept", None).await.expect("purge");
    let restored = client.restore_key(restore(blob.clone()).try_into().expect("body"), None).await.expect("restore");
    let restored = restored.into_model().expect("key");
    assert_eq!(restored.key.as_ref().and_then(|k| k.kty.clone()), Some(KeyType::Rsa));
    let versions = vault.ok(reqwest::Method::GET, "/keys/kept/versions", None).await;
    assert_eq!(versions["value"].as_array().expect("versions").len(), 2, "every version comes back");
    let (status, unwrapped) = vault.unwrap("kept", &version_of(&v1), "RSA-OAEP-256", &wrapped_by_v1).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{unwrapped}");
    assert_eq!(decode(&unwrapped["value"]), data_key, "the old version's private key came back");

    // A changed blob, and another emulator's state, cannot restore it.
    let mut altered = blob.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 1;
    client.delete_key("kept", None).await.expect("delete");
    client.purge_deleted_key("kept", None).await.expect("purge");
    assert_eq!(status_of(client.restore_key(restore(altered).try_into().expect("body"), None).await), 400);
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Vault::start(args(other_dir.path(), RecoveryLevel::RecoverablePurgeable)).await;
    let elsewhere = other.sdk_client().restore_key(restore(blob).try_into().expect("body"), None).await;
    assert_eq!(status_of(elsewhere), 400);
    other.emulator.shutdown().await;
    vault.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn premium_only_settings_are_kept_on_premium_and_refused_on_standard() {
    let release_policy = |equals: bool, immutable: bool| {
        KeyReleasePolicy {
        content_type: Some("application/json; charset=utf-8".to_owned()),
        encoded_policy: Some(
            format!(r#"{{"anyOf":[{{"anyOf":[{{"claim":"sdk-test","equals":{equals}}}],"authority":"https://attest.example/"}}],"version":"1.0.0"}}"#)
                .into_bytes(),
        ),
        immutable: Some(immutable),
    }
    };
    let exportable_hsm = |policy: Option<KeyReleasePolicy>| CreateKeyParameters {
        kty: Some(KeyType::RsaHsm),
        key_attributes: Some(KeyAttributes { exportable: Some(true), ..Default::default() }),
        release_policy: policy,
        ..Default::default()
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::start(args(dir.path(), RecoveryLevel::Recoverable)).await;
    let client = vault.sdk_client();
    let key = create(&client, "releasable", exportable_hsm(Some(release_policy(true, false)))).await;
    assert_eq!(key.key.as_ref().and_then(|k| k.kty.clone()), Some(KeyType::RsaHsm));
    assert_eq!(key.attributes.as_ref().and_then(|a| a.exportable), Some(true));
    let kept = key.release_policy.as_ref().and_then(|p| p.encoded_policy.clone()).expect("the policy is kept");
    assert!(String::from_utf8(kept).expect("utf-8").contains(r#""equals":true"#));

    // A mutable policy can be replaced, an immutable one cannot.
    let update = |policy| UpdateKeyPropertiesParameters { release_policy: Some(policy), ..Default::default() };
    let updated = client
        .update_key_properties("releasable", update(release_policy(false, true)).try_into().expect("body"), None)
        .await
        .expect("update")
        .into_model()
        .expect("key");
    assert_eq!(updated.release_policy.and_then(|p| p.immutable), Some(true));
    let again = client
        .update_key_properties("releasable", update(release_policy(true, true)).try_into().expect("body"), None)
        .await;
    assert_eq!(status_of(again), 400);

    // Key Vault's pairing rules, on create and on update.
    let plain =
        create(&client, "plain", CreateKeyParameters { kty: Some(KeyType::RsaHsm), ..Default::default() }).await;
    assert_eq!(plain.attributes.as_ref().and_then(|a| a.exportable), Some(false));
    let policy_on_plain = update(release_policy(true, false)).try_into().expect("body");
    assert_eq!(status_of(client.update_key_properties("plain", policy_on_plain, None).await), 400);
    let no_policy = client.create_key("no-policy", exportable_hsm(None).try_into().expect("body"), None).await;
    assert_eq!(status_of(no_policy), 400);
    let software = CreateKeyParameters { kty: Some(KeyType::Rsa), ..exportable_hsm(Some(release_policy(true, false))) };
    assert_eq!(status_of(client.create_key("software", software.try_into().expect("body"), None).await), 400);

    // Release needs an attestation service the emulator does not have:
    // refused as Key Vault refuses an attestation it cannot verify, never faked.
    let (status, body) =
        vault.call(reqwest::Method::POST, "/keys/releasable//release", Some(serde_json::json!({"target": "x"}))).await;
    assert_eq!((status.as_u16(), error_code(&body).0), (400, "BadParameter"));
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("attestation")), "{body}");
    vault.emulator.shutdown().await;

    let standard_dir = tempfile::tempdir().expect("tempdir");
    let standard = Vault::start(keyvault_emulator::EmulatorArgs {
        sku: Sku::Standard,
        ..args(standard_dir.path(), RecoveryLevel::Recoverable)
    })
    .await;
    let client = standard.sdk_client();
    let hsm = CreateKeyParameters { kty: Some(KeyType::RsaHsm), ..Default::default() };
    assert_eq!(status_of(client.create_key("hsm", hsm.try_into().expect("body"), None).await), 400);
    let software =
        create(&client, "software", CreateKeyParameters { kty: Some(KeyType::Rsa), ..Default::default() }).await;
    assert_eq!(software.key.and_then(|k| k.kty), Some(KeyType::Rsa));
    standard.emulator.shutdown().await;
}
