//! One vocabulary for why a key cannot be used: every answer Key Vault can
//! give keyseal has exactly one problem, and every name keyseal shows for
//! it (the error code, the health reason, the seal hold reason, the enable
//! refusal) is made from that problem. A row per answer; the names must
//! agree across the row.

use keyseal::crypto::keyring::KeyringError;
use keyseal::error::ErrorCode;
use keyseal::health::policy::HealthReason;
use keyseal::keyvault::validate::KeyRefusal;
use keyseal::keyvault::{KeyProblem, Refused, VaultError};
use keyseal::sweeps::seal::HoldReason;

fn forbidden(code: &str) -> VaultError {
    VaultError::Forbidden { refused: Refused::parse(code), message: String::new() }
}

#[test]
fn every_vault_answer_has_one_problem_and_every_name_follows_it() {
    let service = |status| VaultError::Service { status, code: "InternalError".into(), message: String::new() };
    // (answer, problem, health reason) — the code, hold reason and refusal
    // follow the problem (outages are one health reason, vault_unreachable,
    // and one refusal, vault_unreachable).
    let rows = [
        (forbidden("KeyDisabled"), KeyProblem::KeyDisabled, "key_disabled"),
        (forbidden("KeyExpired"), KeyProblem::KeyExpired, "key_expired"),
        (forbidden("KeyNotYetValid"), KeyProblem::KeyNotYetActive, "key_not_yet_active"),
        (forbidden("ForbiddenByPolicy"), KeyProblem::MissingPermission, "missing_permission"),
        (forbidden("AccessDenied"), KeyProblem::MissingPermission, "missing_permission"),
        (forbidden("KeyOperationForbidden"), KeyProblem::MissingPermission, "missing_permission"),
        (forbidden("Unauthorized"), KeyProblem::MissingPermission, "missing_permission"),
        (VaultError::KeyNotFound, KeyProblem::KeyNotFound, "key_not_found"),
        (VaultError::Throttled, KeyProblem::VaultThrottled, "vault_unreachable"),
        (service(503), KeyProblem::VaultError, "vault_unreachable"),
        (VaultError::Unreachable("tls".into()), KeyProblem::VaultUnreachable, "vault_unreachable"),
    ];
    for (answer, problem, health) in rows {
        let shown = answer.to_string();
        assert_eq!(answer.problem(), problem, "{shown}");
        assert_eq!(answer.code(), problem.as_str(), "the error code of {shown}");
        assert_eq!(HealthReason::from(problem).as_str(), health, "the health reason of {shown}");
        let refusal = KeyRefusal::from(answer.clone());
        assert_eq!(HealthReason::from(&refusal).as_str(), health, "a probe's reason for {shown}");
        let outage =
            matches!(problem, KeyProblem::VaultThrottled | KeyProblem::VaultError | KeyProblem::VaultUnreachable);
        let refused = if outage { "vault_unreachable" } else { problem.as_str() };
        assert_eq!(refusal.code(), refused, "the enable refusal of {shown}");
        let hold = HoldReason::of(&KeyringError::Vault(answer)).expect("a vault failure holds a tenant back");
        assert_eq!(hold.as_str(), problem.as_str(), "the hold reason of {shown}");
    }
}
