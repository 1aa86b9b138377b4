"""Webhook signing secrets at rest: sealed with AES-256-GCM under the operator's key, so a
copy of the database (a backup, a replica) does not let anyone sign as us. Pure.

A sealed value is `v2:<key id>:<base64(nonce || ciphertext)>`, the key id being the first 8
hex digits of the SHA-256 of the key that sealed it, so the key can be rotated: sealing
always uses the current key, opening picks the key the value names among the current one and
the old ones still configured. Values sealed before key ids existed, `v1:<base64(...)>`, open
with whichever configured key their tag accepts (the current one first). Without a key
configured (a local stack) values are stored as `plain:<secret>` and still read back, so a
key can be added later: rows written before keep working and new ones are sealed.

No error here ever holds a secret or a key: at most a key's id."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_AAD = b"makelocal webhook secret"
_NONCE = 12


class SealingError(ValueError):
    """A stored secret that cannot be opened (no key for it, a damaged value); its message
    names at most the key id, never the value or a key."""


class UnknownKey(SealingError):
    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(
            f"this secret was sealed under key id {key_id}, which is neither"
            " MAKELOCAL_NOTIFIER_SECRET_KEY nor one of MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS")


def parse_key(text: str) -> bytes:
    """The operator's key: base64 of 32 random bytes (`makelocal up` makes one)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ValueError("the secret key must be base64") from None
    if len(key) != 32:
        raise ValueError("the secret key must be 32 bytes (base64 of 32 random bytes)")
    return key


def parse_keys(text: str) -> tuple[bytes, ...]:
    """Comma-separated keys (MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS); blanks are skipped."""
    try:
        return tuple(parse_key(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"an old secret key: {exc}") from None


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def key_id(key: bytes) -> str:
    """A short public name for a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def stored_key_id(stored: str) -> str | None:
    """The id of the key a stored value names (v2), else None (plain, v1, unknown)."""
    if stored.startswith("v2:"):
        return stored[3:].partition(":")[0]
    return None


@dataclass(frozen=True)
class Keyring:
    """The current key (seals; None: store plainly) and old keys that may still open."""

    current: bytes | None
    old: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if len(self._by_id) != len(self.keys()):
            raise ValueError("two different keys share a key id; make a new key")

    def keys(self) -> list[bytes]:
        """Every key that may open, the current one first, each once."""
        return list(dict.fromkeys(([self.current] if self.current else []) + list(self.old)))

    @cached_property
    def _by_id(self) -> dict[str, bytes]:
        return {key_id(k): k for k in self.keys()}

    def by_id(self, kid: str) -> bytes | None:
        return self._by_id.get(kid)

    def seal(self, secret: str) -> str:
        if self.current is None:
            return "plain:" + secret
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(self.current).encrypt(nonce, secret.encode(), _AAD)
        return f"v2:{key_id(self.current)}:" + base64.b64encode(nonce + sealed).decode()

    def unseal(self, stored: str) -> str:
        if stored.startswith("plain:"):
            return stored[6:]
        if stored.startswith("v2:"):
            kid, _, body = stored[3:].partition(":")
            key = self.by_id(kid)
            if key is None:
                raise UnknownKey(kid)
            return _open(body, [key], f"a sealed secret that key id {kid} does not open")
        if stored.startswith("v1:"):
            if not self.keys():
                raise SealingError("a sealed secret and no key configured to open it")
            return _open(stored[3:], self.keys(),
                         "a sealed secret without a key id (v1) that no configured key opens")
        raise SealingError("a stored secret of an unknown format")

    def is_current(self, stored: str) -> bool:
        """Whether the value is stored as this keyring seals now (nothing to re-seal)."""
        if self.current is None:
            return stored.startswith("plain:")
        return stored_key_id(stored) == key_id(self.current)

    def reseal(self, stored: str) -> str | None:
        """The value sealed under the current key, or None when it is already."""
        if self.is_current(stored):
            return None
        if self.current is None:
            raise SealingError("no current key to re-seal under")  # never unseal to plain
        return self.seal(self.unseal(stored))


def _open(body: str, keys: Iterable[bytes], failure: str) -> str:
    try:
        raw = base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        raise SealingError("a sealed secret that is not valid base64") from None
    if len(raw) <= _NONCE:
        raise SealingError("a sealed secret too short to hold anything")
    for key in keys:
        try:
            return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], _AAD).decode()
        except InvalidTag:
            continue
    raise SealingError(f"{failure} (damaged, or sealed under another key)")


def seal(secret: str, key: bytes | None) -> str:
    return Keyring(key).seal(secret)


def unseal(stored: str, key: bytes | None) -> str:
    return Keyring(key).unseal(stored)
