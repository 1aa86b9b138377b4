"""Webhook signing secrets at rest: sealed with AES-256-GCM under the operator's key, so a
copy of the database (a backup, a replica) does not let anyone sign as us. Pure.

A sealed value is `v1:<base64(nonce || ciphertext)>`; without a key configured (a local
stack) values are stored as `plain:<secret>` and still read back, so a key can be added
later: rows written before keep working and new ones are sealed."""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_AAD = b"makelocal webhook secret"


def parse_key(text: str) -> bytes:
    """The operator's key: base64 of 32 random bytes (`makelocal up` makes one)."""
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError("the secret key must be base64") from None
    if len(key) != 32:
        raise ValueError("the secret key must be 32 bytes (base64 of 32 random bytes)")
    return key


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def seal(secret: str, key: bytes | None) -> str:
    if key is None:
        return "plain:" + secret
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, secret.encode(), _AAD)
    return "v1:" + base64.b64encode(nonce + sealed).decode()


def unseal(stored: str, key: bytes | None) -> str:
    if stored.startswith("plain:"):
        return stored[6:]
    if not stored.startswith("v1:") or key is None:
        raise ValueError("a sealed secret and no key (or an unknown format) to open it")
    raw = base64.b64decode(stored[3:])
    return AESGCM(key).decrypt(raw[:12], raw[12:], _AAD).decode()
