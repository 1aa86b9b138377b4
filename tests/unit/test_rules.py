"""The registry's pure rules: write preconditions and API keys."""

from __future__ import annotations

import pytest

from services.common import keys
from services.registry.writes import Current, WriteMode, WriteRefused, decide


def refused(current: Current | None, **kw: object) -> int:
    with pytest.raises(WriteRefused) as info:
        decide(current, **kw)  # type: ignore[arg-type]
    return info.value.status


LIVE = Current(owner="a", version=3, deleted=False, content_hash="h")
GONE = Current(owner="a", version=4, deleted=True, content_hash=None)


def test_create_then_replace_then_delete_bumps_versions() -> None:
    assert decide(None, mode=WriteMode.create, owner="a", expected_version=None,
                  content_hash="h").version == 1
    assert decide(LIVE, mode=WriteMode.replace, owner="a", expected_version=3,
                  content_hash="new").version == 4
    assert decide(LIVE, mode=WriteMode.delete, owner="a", expected_version=None,
                  content_hash=None).version == 4
    # re-creating a deleted id continues its version sequence
    assert decide(GONE, mode=WriteMode.create, owner="a", expected_version=None,
                  content_hash="h").version == 5


def test_preconditions_and_ownership() -> None:
    assert refused(LIVE, mode=WriteMode.replace, owner="a", expected_version=None,
                   content_hash="x") == 428
    assert refused(LIVE, mode=WriteMode.replace, owner="a", expected_version=2,
                   content_hash="x") == 412
    assert refused(LIVE, mode=WriteMode.replace, owner="b", expected_version=3,
                   content_hash="x") == 403
    assert refused(GONE, mode=WriteMode.create, owner="b", expected_version=None,
                   content_hash="x") == 403
    assert refused(LIVE, mode=WriteMode.create, owner="a", expected_version=None,
                   content_hash="x") == 409
    assert refused(None, mode=WriteMode.delete, owner="a", expected_version=None,
                   content_hash=None) == 404


def test_same_content_changes_nothing() -> None:
    decision = decide(LIVE, mode=WriteMode.replace, owner="a", expected_version=3,
                      content_hash="h")
    assert not decision.changed and decision.version == 3


def test_keys_verify_only_their_own_secret() -> None:
    issued = keys.issue()
    key_id, secret = keys.parse(issued.token)  # type: ignore[misc]
    assert key_id == issued.key_id
    assert keys.verify(secret, issued.secret_hash)
    assert not keys.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"), issued.secret_hash)
    assert secret not in issued.secret_hash.hex()
    assert keys.parse("mlk_short") is None
