"""API keys: made, parsed and checked, for every service that takes writes. Pure.
A key is `mlk_<key id>_<secret>`; the key id finds the row, only a hash of the secret is
stored, and comparison takes constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_KEY = re.compile(r"^mlk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    secret_hash: bytes
    token: str  # shown once, never stored


def issue() -> IssuedKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return IssuedKey(key_id, hash_secret(secret), f"mlk_{key_id}_{secret}")


def parse(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _KEY.match(token.strip())
    return (match.group(1), match.group(2)) if match else None


def hash_secret(secret: str) -> bytes:
    # Secrets are 256 random bits: a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(secret.encode()).digest()


def verify(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def from_headers(authorization: str | None, x_api_key: str | None) -> tuple[str, str] | None:
    """(key id, secret) from `Authorization: Bearer <key>` or `X-API-Key`, else None."""
    token = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip() or None
    token = token or x_api_key or None
    return parse(token) if token else None
