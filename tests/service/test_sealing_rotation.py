"""Rotating the operator key that seals webhook secrets at rest: sealed values name their
key, old keys still open, `reseal` moves every stored secret to the current key in one
transaction, and `makelocal notifier rotate-key` does it all with the stack's data
directory. Receivers keep verifying with the webhook secret they were given: only its
sealing changes."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from standardwebhooks import Webhook

from makelocal import stack
from services.common import db
from services.notifier.sealing import (
    Keyring,
    SealingError,
    UnknownKey,
    key_id,
    new_key,
    parse_key,
    stored_key_id,
    unseal,
)
from services.notifier.settings import NotifierSettings
from services.notifier.store import ResealFailed, Store
from tests.conftest import auth
from tests.support.builders import email_subscription, subscribe, webhook
from tests.support.helpers import InProcess, eventually, wait_ready
from tests.support.receivers import Receiver

A, B, C = new_key(), new_key(), new_key()
KA, KB, KC = parse_key(A), parse_key(B), parse_key(C)


def _seal_v1(secret: str, key: bytes) -> str:
    """How values were sealed before they carried a key id (the code as it was)."""
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, secret.encode(), b"makelocal webhook secret")
    return "v1:" + base64.b64encode(nonce + sealed).decode()


# pure


def test_values_sealed_before_key_ids_still_open() -> None:
    old = _seal_v1("whsec_before", KA)
    assert Keyring(KA).unseal(old) == "whsec_before"
    assert unseal(old, KA) == "whsec_before"
    # during a rotation, with the key that sealed it listed as old
    assert Keyring(KB, (KA,)).unseal(old) == "whsec_before"
    assert not Keyring(KA).is_current(old)  # re-sealing gives it its key id
    again = Keyring(KA).reseal(old)
    assert again is not None and stored_key_id(again) == key_id(KA)
    assert Keyring(KA).unseal(again) == "whsec_before"


def test_a_value_opens_by_its_key_id_and_sealing_uses_the_current_key() -> None:
    assert key_id(KA) == hashlib.sha256(KA).hexdigest()[:8]
    under_a = Keyring(KA).seal("whsec_x")
    assert under_a.startswith(f"v2:{key_id(KA)}:") and "whsec_x" not in under_a
    ring = Keyring(KB, (KC, KA))
    assert ring.unseal(under_a) == "whsec_x"
    assert stored_key_id(ring.seal("whsec_y")) == key_id(KB)
    moved = ring.reseal(under_a)
    assert moved is not None and stored_key_id(moved) == key_id(KB)
    assert ring.reseal(moved) is None  # already under the current key
    assert Keyring(KB).unseal(moved) == "whsec_x"  # the old key is no longer needed
    plain = Keyring(None).seal("whsec_z")
    assert plain == "plain:whsec_z" and Keyring(None).reseal(plain) is None
    with pytest.raises(SealingError):  # no key: a sealed value is never stored plainly
        Keyring(None, (KA,)).reseal(under_a)
    sealed_plain = ring.reseal(plain)
    assert sealed_plain is not None and Keyring(KB).unseal(sealed_plain) == "whsec_z"


def test_a_value_no_configured_key_opens_is_a_clear_error_naming_no_secret() -> None:
    under_a = Keyring(KA).seal("whsec_topsecret")
    with pytest.raises(UnknownKey) as caught:
        Keyring(KB, (KC,)).unseal(under_a)
    message = str(caught.value)
    assert key_id(KA) in message and "MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS" in message
    for leaked in ("whsec_topsecret", A, B, C, under_a.split(":")[2]):
        assert leaked not in message
    with pytest.raises(SealingError):  # an old-format value none of the keys opens
        Keyring(KB, (KC,)).unseal(_seal_v1("whsec_topsecret", KA))
    damaged = f"v2:{key_id(KA)}:" + base64.b64encode(os.urandom(40)).decode()
    for stored in (damaged, f"v2:{key_id(KA)}:not base64!", f"v2:{key_id(KA)}:AAAA",
                   "v9:whatever"):
        with pytest.raises(SealingError) as failed:
            Keyring(KA).unseal(stored)
        assert stored not in str(failed.value)


def test_old_keys_are_settings_kept_secret() -> None:
    settings = NotifierSettings(notifier_secret_key=B, notifier_old_secret_keys=f"{A}, {C},")
    assert settings.keyring == Keyring(KB, (KA, KC))
    for key in (A, B, C):
        assert key not in repr(settings) and key not in str(settings.model_dump())
    bad = NotifierSettings(notifier_secret_key=B, notifier_old_secret_keys="not-a-key!")
    with pytest.raises(ValueError) as caught:
        _ = bad.keyring
    assert "old secret key" in str(caught.value) and "not-a-key" not in str(caught.value)


# against PostgreSQL and a real receiver


def _with_keys(base: NotifierSettings, current: str | None,
               old: str | None = None) -> NotifierSettings:
    return NotifierSettings(**(base.model_dump() | {"notifier_secret_key": current,
                                                    "notifier_old_secret_keys": old}))


@pytest_asyncio.fixture(loop_scope="session")
async def notifier_store(notifier_settings: NotifierSettings,
                         store: Any) -> AsyncIterator[Store]:
    s = notifier_settings
    await db.migrate(s.database_url, s.notifier_db_schema, "services.notifier")
    pool = await db.create_pool(s.database_url, s.notifier_db_schema, min_size=1, max_size=2)
    yield Store(pool, s.notifier_keys_schema)
    await pool.close()


async def _seed(settings: NotifierSettings, api_key: str, key: str,
                base: str) -> dict[str, list[str]]:
    """Webhook subscriptions made through the API of a notifier sealing under `key`: one
    plain, one whose secret was rotated (so its previous secret signs too), one whose
    secret is stored as before key ids existed; and an email subscription (no secret).
    Returns each webhook subscription's secrets, the current first."""
    from services.notifier.app import create_app

    running = _with_keys(settings, key)
    made: dict[str, list[str]] = {}
    async with InProcess(create_app(running), running) as notifier, httpx.AsyncClient(
            base_url=notifier.url, timeout=10) as http:
        await wait_ready(notifier.url)
        for name in ("plain", "rotated", "legacy"):
            sub = await subscribe(http, api_key, webhook(f"{base}/ok/{name}"))
            made[sub["id"]] = [sub["secret"]]
            if name == "rotated":
                rotated = await http.post(f"/v1/subscriptions/{sub['id']}/rotate-secret",
                                          headers=auth(api_key))
                made[sub["id"]].insert(0, rotated.json()["secret"])
            if name == "legacy":
                await notifier.app.state.store.pool.execute(
                    "UPDATE subscriptions SET secret = $2 WHERE id = $1", sub["id"],
                    _seal_v1(sub["secret"], parse_key(key)))
        await email_subscription(http, api_key, "maker@example.org")
    return made


async def _stored(store: Store) -> list[tuple[str, str | None, str | None]]:
    rows = await store.pool.fetch("SELECT id, secret, previous_secret FROM subscriptions"
                                  " WHERE channel = 'webhook' ORDER BY id")
    return [(r["id"], r["secret"], r["previous_secret"]) for r in rows]


async def _deliveries_verify(settings: NotifierSettings, api_key: str,
                             receiver: tuple[Receiver, str], made: dict[str, list[str]]) -> None:
    """A notifier with these settings sends a test event to each subscription; each is
    signed so the receiver verifies it with every secret it was given (standardwebhooks)."""
    from services.notifier.app import create_app

    app, _ = receiver
    app.requests.clear()
    async with InProcess(create_app(settings), settings) as notifier, httpx.AsyncClient(
            base_url=notifier.url, timeout=10) as http:
        await wait_ready(notifier.url)
        for sub_id in made:
            response = await http.post(f"/v1/subscriptions/{sub_id}/test",
                                       headers=auth(api_key))
            assert response.status_code == 202, response.text

        async def all_came() -> bool:
            return len(app.requests) >= len(made)

        await eventually(all_came, timeout=20)
    for request in app.requests:
        payload = request.json
        secrets = made[payload["data"]["subscription_id"]]
        for secret in secrets:
            assert Webhook(secret).verify(request.body, request.headers)["type"] == "test"


async def test_reseal_moves_every_secret_to_the_current_key_and_receivers_still_verify(
        notifier_settings: NotifierSettings, notifier_store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    made = await _seal_and_check(notifier_settings, notifier_store, org[1], receiver)
    # the rotation: B current, A old; everything still opens before the re-seal
    ring = _with_keys(notifier_settings, B, A).keyring
    changed, total = await notifier_store.reseal_secrets(ring.reseal)
    assert (changed, total) == (3, 3)
    for _, secret, previous in await _stored(notifier_store):
        for value in (secret, previous):
            assert value is None or stored_key_id(value) == key_id(KB)
    assert await notifier_store.reseal_secrets(ring.reseal) == (0, 3)  # idempotent
    # the old key can go: a notifier knowing only B signs with the very same secrets
    await _deliveries_verify(_with_keys(notifier_settings, B), org[1], receiver, made)


async def _seal_and_check(settings: NotifierSettings, store: Store, api_key: str,
                          receiver: tuple[Receiver, str]) -> dict[str, list[str]]:
    made = await _seed(settings, api_key, A, receiver[1])
    rows = await _stored(store)
    assert len(rows) == 3
    prefixes = sorted(r[1][:3] for r in rows if r[1])
    assert prefixes == ["v1:", "v2:", "v2:"]
    return made


async def test_a_secret_under_an_unknown_key_fails_the_reseal_whole_and_names_no_secret(
        notifier_settings: NotifierSettings, notifier_store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    made = await _seal_and_check(notifier_settings, notifier_store, org[1], receiver)
    before = await _stored(notifier_store)
    # A is forgotten: B current, C old
    ring = _with_keys(notifier_settings, B, C).keyring
    with pytest.raises(ResealFailed) as caught:
        await notifier_store.reseal_secrets(ring.reseal)
    message = str(caught.value)
    assert caught.value.subscription_id in made  # the first in id order: v1 or v2
    assert key_id(KA) in message or "without a key id" in message
    assert await _stored(notifier_store) == before  # one transaction: nothing changed
    logged = " ".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    for secret in [s for secrets in made.values() for s in secrets] + [A, B, C]:
        assert secret not in message and secret not in logged
        assert secret.removeprefix("whsec_") not in message


def _cli(data_dir: Path, settings: NotifierSettings, *args: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MAKELOCAL_")}
    base |= {"MAKELOCAL_DATABASE_URL": settings.database_url,
             "MAKELOCAL_NOTIFIER_DB_SCHEMA": settings.notifier_db_schema,
             "MAKELOCAL_NOTIFIER_KEYS_SCHEMA": settings.notifier_keys_schema}
    return subprocess.run([sys.executable, "-m", "makelocal.cli", "notifier", *args,
                           "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=60, env=base | (env or {}))


async def test_rotate_key_with_a_data_dir_end_to_end(
        notifier_settings: NotifierSettings, notifier_store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stack.write_secret_file(data_dir / stack.NOTIFIER_KEY_FILE, A)  # as `up` left it
    assert stack.notifier_key_env(data_dir) == {"MAKELOCAL_NOTIFIER_SECRET_KEY": A}
    made = await _seal_and_check(notifier_settings, notifier_store, org[1], receiver)

    done = _cli(data_dir, notifier_settings, "rotate-key")
    assert done.returncode == 0, done.stderr
    assert "re-sealed the secrets of 3 of 3" in done.stdout and "Restart" in done.stdout
    new = (data_dir / stack.NOTIFIER_KEY_FILE).read_text().strip()
    new_key_bytes = parse_key(new)
    assert new != A
    assert stack.notifier_old_keys(data_dir) == [A]
    assert not (data_dir / stack.NOTIFIER_NEXT_KEY_FILE).exists()
    for name in (stack.NOTIFIER_KEY_FILE, stack.NOTIFIER_OLD_KEYS_FILE):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600
    for secret in [s for secrets in made.values() for s in secrets] + [A, new]:
        assert secret not in done.stdout + done.stderr
    for _, secret, previous in await _stored(notifier_store):
        for value in (secret, previous):
            assert value is None or stored_key_id(value) == key_id(new_key_bytes)

    # a notifier started before the rotation (still sealing under A) made one more
    late = await _seed(notifier_settings, org[1], A, receiver[1])
    made |= late
    # `up` now hands the notifier the new key, the old one listed as old
    keys = stack.notifier_key_env(data_dir)
    assert keys == {"MAKELOCAL_NOTIFIER_SECRET_KEY": new,
                    "MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS": A}
    restarted = _with_keys(notifier_settings, new, A)
    await _deliveries_verify(restarted, org[1], receiver, made)  # opens both
    again = _cli(data_dir, notifier_settings, "reseal")
    assert again.returncode == 0, again.stderr
    assert "re-sealed the secrets of 3 of 6" in again.stdout
    # every secret is under the new key: it alone opens them all
    await _deliveries_verify(_with_keys(notifier_settings, new), org[1], receiver, made)

    # with the key in the environment, rotate-key refuses and says how
    refused = _cli(data_dir, notifier_settings, "rotate-key",
                   env={"MAKELOCAL_NOTIFIER_SECRET_KEY": new})
    assert refused.returncode == 2 and "MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS" in refused.stderr
    # the environment's procedure: old key listed, new key current, reseal
    env_reseal = _cli(data_dir, notifier_settings, "reseal", env={
        "MAKELOCAL_NOTIFIER_SECRET_KEY": C, "MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS": new})
    assert env_reseal.returncode == 0, env_reseal.stderr
    assert "6 of 6" in env_reseal.stdout and key_id(KC) in env_reseal.stdout
    # and without the old key the reseal stops, names the key id, changes nothing
    before = await _stored(notifier_store)
    unknown = _cli(data_dir, notifier_settings, "reseal",
                   env={"MAKELOCAL_NOTIFIER_SECRET_KEY": B})
    assert unknown.returncode == 1 and key_id(KC) in unknown.stderr
    assert "Traceback" not in unknown.stderr and await _stored(notifier_store) == before


async def test_a_rotation_cut_short_is_finished_by_running_it_again(
        notifier_settings: NotifierSettings, notifier_store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stack.write_secret_file(data_dir / stack.NOTIFIER_KEY_FILE, A)
    made = await _seal_and_check(notifier_settings, notifier_store, org[1], receiver)
    # cut short after re-sealing under the next key, before the key files were replaced
    stack.write_secret_file(data_dir / stack.NOTIFIER_NEXT_KEY_FILE, C)
    ring = Keyring(KC, (KA,))
    assert await notifier_store.reseal_secrets(ring.reseal) == (3, 3)
    # `up` meanwhile would still open them: the next key is listed as old
    assert stack.notifier_key_env(data_dir)["MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS"] == C
    done = _cli(data_dir, notifier_settings, "rotate-key")
    assert done.returncode == 0, done.stderr
    assert (data_dir / stack.NOTIFIER_KEY_FILE).read_text().strip() == C
    assert stack.notifier_old_keys(data_dir) == [A]
    await _deliveries_verify(_with_keys(notifier_settings, C), org[1], receiver, made)
