"""Webhook secrets sealed at rest (pure)."""

from __future__ import annotations

import pytest

from services.notifier.sealing import UnknownKey, key_id, new_key, parse_key, seal, unseal


def test_sealed_secrets_open_only_with_their_key() -> None:
    key, other = parse_key(new_key()), parse_key(new_key())
    # "-" and "!" are in no base64 text: the secret cannot turn up in the sealed one by chance
    secret = "whsec_my-secret!"
    sealed = seal(secret, key)
    assert sealed.startswith(f"v2:{key_id(key)}:") and "my-secret!" not in sealed
    assert seal(secret, key) != sealed  # a fresh nonce each time
    assert unseal(sealed, key) == secret
    with pytest.raises(UnknownKey):
        unseal(sealed, other)
    with pytest.raises(ValueError):
        unseal(sealed, None)
    # rows written before a key was configured still read
    assert unseal(seal("whsec_abc", None), key) == "whsec_abc"


@pytest.mark.parametrize("text", ["not base64!", "c2hvcnQ="])
def test_bad_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_key(text)
