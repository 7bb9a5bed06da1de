"""pytest plugin of the devtools_testutils stand-in (load with
`-p devtools_testutils.pytest_plugin`).

Why it exists: the SDK's conftest.py asks for the real package's `test_proxy`
fixture, which starts Microsoft's recording proxy. Live runs without
recordings need no proxy, so the fixture does nothing. The plugin also
refuses to run unless live mode is asked for, since playback is not offered.
"""

import os

import pytest


def pytest_configure(config):
    """Stops the run early unless AZURE_TEST_RUN_LIVE is true."""
    if os.environ.get("AZURE_TEST_RUN_LIVE", "").lower() not in ("true", "yes", "1"):
        raise pytest.UsageError("this devtools_testutils stand-in is live-only: set AZURE_TEST_RUN_LIVE=true")


@pytest.fixture(scope="session")
def test_proxy():
    """No test proxy in live mode without recordings."""
    yield
