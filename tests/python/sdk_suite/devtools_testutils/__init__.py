"""A small live-mode-only stand-in for the Azure SDK repo's `devtools_testutils`.

Why it exists: the azure-keyvault-keys test files import their helpers from
`devtools_testutils`, which lives in the azure-sdk-for-python repository
(not on PyPI) and drives Microsoft's recording test proxy. We run those test
files unchanged against the keyseal Key Vault emulator in live mode, so this
package implements only what they import, the way the real package behaves
in live mode with recording skipped: decorators and sanitizers do nothing,
credentials hand out a token, clients talk straight to the vault.

Environment it reads (run.py sets it):
  AZURE_TEST_RUN_LIVE   must be "true": there is no playback mode here.
  KEYSEAL_VAULT_TOKEN   the bearer token every credential hands out.
"""

import functools
import inspect
import os
import zlib

import pytest

from .credentials import AsyncStaticTokenCredential, StaticTokenCredential

__all__ = [
    "AzureMgmtPreparer",
    "AzureRecordedTestCase",
    "add_general_string_sanitizer",
    "add_oauth_response_sanitizer",
    "is_live",
    "recorded_by_proxy",
    "remove_batch_sanitizers",
    "set_bodiless_matcher",
    "set_custom_default_matcher",
]


def is_live():
    """Always True: this stand-in only runs tests live (see pytest_plugin)."""
    return True


def _trim_kwargs(fn, kwargs):
    """The kwargs `fn` accepts, as the real decorators pass on: all of them if
    it takes **kwargs, else only those it names."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {p.name for p in params}
    return {k: v for k, v in kwargs.items() if k in names}


def recorded_by_proxy(test_func):
    """Pass-through: in live mode without recording the real decorator just
    calls the test (no test proxy, no transport patching)."""

    @functools.wraps(test_func)
    def record_wrap(*args, **kwargs):
        return test_func(*args, **_trim_kwargs(test_func, kwargs))

    return record_wrap


def _no_op(*_args, **_kwargs):
    """Sanitizers and matchers configure the test proxy's recordings; live
    runs without recordings have nothing to configure."""


add_general_string_sanitizer = _no_op
add_oauth_response_sanitizer = _no_op
remove_batch_sanitizers = _no_op
set_custom_default_matcher = _no_op
set_bodiless_matcher = _no_op


def _resource_name(prefix):
    """The real devtools' name scheme: the prefix plus a checksum of the
    current test id, so each test gets its own resource names. The checksum
    also covers KEYSEAL_RUN_ID (run.py sets a new one per run): Azure's
    pipeline gets a fresh vault per run, while a second run against the same
    emulator would otherwise meet the first run's (deleted) keys."""
    test_id = os.environ["PYTEST_CURRENT_TEST"] + os.environ.get("KEYSEAL_RUN_ID", "")
    return prefix + hex(zlib.adler32(test_id.encode("utf-8")) & 0xFFFFFFFF)[2:]


class AzureRecordedTestCase:
    """Base class of the SDK's test classes and client preparers: gives them
    live mode, credentials, client construction and resource names."""

    @property
    def is_live(self):
        """Live mode, always (see is_live())."""
        return is_live()

    def is_playback(self):
        """Never playback: there are no recordings."""
        return False

    def get_credential(self, client_class, is_async=False, **kwargs):
        """A credential handing out the emulator's token for any scope. The
        real one builds an azure-identity credential from the pipeline's
        service principal; the emulator only checks the bearer token."""
        token = os.environ.get("KEYSEAL_VAULT_TOKEN")
        if not token:
            raise RuntimeError("KEYSEAL_VAULT_TOKEN is not set: run the suite through run.py")
        return AsyncStaticTokenCredential(token) if is_async else StaticTokenCredential(token)

    def create_client_from_credential(self, client_class, credential, **kwargs):
        """Builds an SDK client as the real helper does (logging on unless the
        test says otherwise), plus what talking to the emulator needs.

        verify_challenge_resource=False: the SDK checks that the vault's host
        ends with ".vault.azure.net" (the challenge's resource) before sending
        a token. The emulator answers Key Vault's real challenge but listens on
        127.0.0.1:PORT, which can never pass that check, so it is turned off
        here, as for any vault not under an Azure domain. TLS trust of the
        emulator's certificate comes from the environment (SSL_CERT_FILE,
        REQUESTS_CA_BUNDLE), as a test machine trusting a CA would have it.
        """
        kwargs.setdefault("logging_enable", True)
        kwargs.setdefault("verify_challenge_resource", False)
        return client_class(credential=credential, **kwargs)

    def create_random_name(self, name):
        """Resource name for `name` unique to the running test."""
        return _resource_name(name)

    def get_resource_name(self, name):
        """Alias of create_random_name, as in the real class."""
        return self.create_random_name(name)

    def fail(self, msg=None):
        """Fails the test. The real class lacks this unittest method although
        the SDK's polling helpers call it; without it a genuine "expected
        exception was not raised" would surface as an AttributeError."""
        pytest.fail(msg)


class AzureMgmtPreparer(AzureRecordedTestCase):
    """Minimal resource preparer: wraps a test, calls create_resource() before
    it and remove_resource() after, passing the created resources to the test
    as keyword arguments. The SDK's `_shared/preparer.py` derives from it."""

    def __init__(self, name_prefix, random_name_length, random_name_enabled=True, **kwargs):
        self.name_prefix = name_prefix
        self.random_name_length = random_name_length
        self.random_name_enabled = random_name_enabled
        self.client_kwargs = kwargs.pop("client_kwargs", {})
        self.resource_moniker = name_prefix

    def create_resource(self, name, **kwargs):
        """Nothing to create by default."""
        return {}

    def remove_resource(self, name, **kwargs):
        """Nothing to remove by default."""

    def __call__(self, fn):
        """Decorates a test with the create/remove steps."""

        @functools.wraps(fn)
        def _preparer(test_class_instance, **kwargs):
            name = test_class_instance.get_resource_name(self.name_prefix)
            kwargs.update(self.create_resource(name, **kwargs) or {})
            try:
                return fn(test_class_instance, **_trim_kwargs(fn, kwargs))
            finally:
                self.remove_resource(name, **kwargs)

        return _preparer
