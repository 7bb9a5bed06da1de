#!/usr/bin/env python3
"""Smoke test of the keyseal Key Vault emulator with Microsoft's official
Python SDK (azure-keyvault-keys + azure-core).

Usage: kv_smoke.py VAULT_URL CERT_PEM TOKEN

Creates an RSA key, wraps a random 32-byte key with RSA-OAEP-256 and unwraps
it again, going through the SDK's bearer-challenge flow and TLS verification
against the emulator's certificate. Exits 0 only if the round trip matches.

Needs: pip install azure-keyvault-keys azure-identity
"""

import os
import sys
import time
import uuid

from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm


class StaticTokenCredential:
    """A credential that hands out one fixed token, whatever the scope."""

    def __init__(self, token):
        self._token = token
        self.scopes_seen = []

    def _expires_on(self):
        return int(time.time()) + 3600

    def get_token(self, *scopes, **kwargs):
        self.scopes_seen.extend(scopes)
        return AccessToken(self._token, self._expires_on())

    def get_token_info(self, *scopes, options=None):
        self.scopes_seen.extend(scopes)
        return AccessTokenInfo(self._token, self._expires_on())


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    vault_url, cert_pem, token = argv[1], argv[2], argv[3]
    credential = StaticTokenCredential(token)
    client_options = {"verify_challenge_resource": False, "connection_verify": cert_pem}

    keys = KeyClient(vault_url, credential, **client_options)
    name = "smoke-" + uuid.uuid4().hex[:12]
    key = keys.create_rsa_key(name, size=2048)
    print(f"created {key.id} ({key.key_type})")

    fetched = keys.get_key(name)
    if fetched.id != key.id:
        print(f"get_key returned {fetched.id}, expected {key.id}", file=sys.stderr)
        return 1

    crypto = CryptographyClient(key, credential, **client_options)
    data_key = os.urandom(32)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, data_key)
    unwrapped = crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    if unwrapped.key != data_key:
        print("unwrapped key differs from the original", file=sys.stderr)
        return 1
    if unwrapped.key_id != key.id:
        print(f"unwrap used {unwrapped.key_id}, expected {key.id}", file=sys.stderr)
        return 1

    expected_scope = "https://vault.azure.net/.default"
    if expected_scope not in credential.scopes_seen:
        print(f"token scopes {credential.scopes_seen}, expected {expected_scope}", file=sys.stderr)
        return 1
    print("RSA-OAEP-256 wrap/unwrap round trip OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
