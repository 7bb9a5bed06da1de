"""pytest plugin run.py loads next to the SDK tests (`-p sdk_suite_plugin`).

Why it exists, two jobs that are ours rather than the SDK's:

1. Without an attestation service (KEYSEAL_NO_ATTESTATION_SERVICE=1) the
   tests that fetch a token from `{AZURE_KEYVAULT_ATTESTATION_URL}/generate-
   test-token` and release a key cannot run, so they are skipped with the
   reason ATTESTATION_REASON. The tests that only write the URL into a
   release policy still run, against a placeholder URL.
2. When a test fails with an HttpResponseError, the request the vault
   answered wrongly ("METHOD /path -> status") is recorded as the junit
   property `http_error`, so run.py can print it next to the failure.
"""

import os
from urllib.parse import urlparse

import pytest

ATTESTATION_REASON = "needs an attestation service"

# Tests (in test_key_client.py and test_keys_async.py) that call
# get_attestation_token(); the others only use the URL in a policy.
TESTS_FETCHING_ATTESTATION_TOKENS = {"test_key_release", "test_imported_key_release"}


def pytest_collection_modifyitems(config, items):
    """Marks the token-fetching tests skipped when there is no attestation
    service. Managed HSM variants are left alone when no HSM is configured,
    so they skip for that reason as the SDK's preparer decides."""
    if os.environ.get("KEYSEAL_NO_ATTESTATION_SERVICE") != "1":
        return
    have_hsm = bool(os.environ.get("AZURE_MANAGEDHSM_URL"))
    for item in items:
        if item.originalname not in TESTS_FETCHING_ATTESTATION_TOKENS:
            continue
        params = getattr(item, "callspec", None)
        is_hsm = params.params.get("is_hsm", False) if params else False
        if is_hsm and not have_hsm:
            continue
        item.add_marker(pytest.mark.skip(reason=ATTESTATION_REASON))


def _http_error(exc):
    """The first azure-core HttpResponseError with a response in the chain
    of `exc` (the exception itself, its cause or context), if any."""
    from azure.core.exceptions import HttpResponseError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, HttpResponseError) and getattr(exc, "response", None) is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Records the failing HTTP exchange of a failed test as `http_error`."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.excinfo is None:
        return
    error = _http_error(call.excinfo.value)
    if error is None:
        return
    request = error.response.request
    path = urlparse(request.url).path
    item.user_properties.append(("http_error", f"{request.method} {path} -> {error.response.status_code}"))
