"""Static bearer-token credentials, sync and async.

Why they exist: the SDK's Key Vault clients ask their credential for a token
for whatever scope the vault's challenge names; the emulator accepts one fixed
token (`--token`), so these hand that token out for any scope. Both the older
`get_token` and the newer `get_token_info` protocols of azure-core are
provided, as azure-identity's credentials do.
"""

import time

from azure.core.credentials import AccessToken, AccessTokenInfo

_LIFETIME_SECONDS = 3600


class StaticTokenCredential:
    """Synchronous credential returning the same token for every scope."""

    def __init__(self, token):
        self._token = token

    def get_token(self, *scopes, **kwargs):
        """The token as an AccessToken, valid for an hour from now."""
        return AccessToken(self._token, int(time.time()) + _LIFETIME_SECONDS)

    def get_token_info(self, *scopes, options=None):
        """The token as an AccessTokenInfo, valid for an hour from now."""
        return AccessTokenInfo(self._token, int(time.time()) + _LIFETIME_SECONDS)

    def close(self):
        """Nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class AsyncStaticTokenCredential:
    """Asynchronous credential returning the same token for every scope."""

    def __init__(self, token):
        self._sync = StaticTokenCredential(token)

    async def get_token(self, *scopes, **kwargs):
        """The token as an AccessToken (see StaticTokenCredential)."""
        return self._sync.get_token(*scopes, **kwargs)

    async def get_token_info(self, *scopes, options=None):
        """The token as an AccessTokenInfo (see StaticTokenCredential)."""
        return self._sync.get_token_info(*scopes, options=options)

    async def close(self):
        """Nothing to release."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.close()
