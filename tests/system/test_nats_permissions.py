"""NATS with users (makelocal.nats_auth): a server with the rules `makelocal up` renders;
each service's user can do what its service does (through the services' own code where it
is small enough to call) and is refused where it must not publish, subscribe or consume;
an unknown user or a wrong password is not let in. Then the whole path, registry ->
matcher -> notifier -> a webhook, with each service a process of its own connecting as
its own user."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from contracts.events import (
    REGISTRY_DUPLICATE_WINDOW_S,
    REGISTRY_STREAM,
    REGISTRY_SUBJECTS,
    design_partition_transform,
    partition_filters,
)
from contracts.matches import MATCHES_STREAM
from makelocal import nats_auth
from makelocal.cluster import Service, port_env
from makelocal.embedded import NatsServer, free_port
from services.common import nats as nats_util
from services.matcher.checkpoint import Checkpoint
from services.registry.settings import RegistrySettings
from tests.conftest import TEST_SEALING_KEY, auth
from tests.support.builders import design_doc, facility_doc
from tests.support.helpers import JSON, eventually, wait_ready
from tests.support.receivers import MailServer, Receiver

PASSWORDS = {user: f"{user}-{i}-secret" for i, user in enumerate(nats_auth.USERS)}
REFUSED = "permissions violation"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server admitting only the generated users, with the rules `makelocal up` uses."""
    server = NatsServer(tmp_path_factory.mktemp("nats-auth"), free_port(),
                        auth=nats_auth.server_config(PASSWORDS)).start()
    yield server
    server.stop()


@dataclass
class Login:
    """One user's connection, with the errors the server sent it."""

    nc: Client
    errors: list[str] = field(default_factory=list)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream(timeout=1.0)  # a refused request is never answered

    async def refused(self, action: Awaitable[object], subject: str) -> None:
        """`action` fails and the server says the user may not use `subject`."""
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await action
        await self.violation(subject)

    async def violation(self, subject: str) -> None:
        async def said() -> bool:
            return any(REFUSED in e and f'"{subject.lower()}"' in e for e in self.errors)

        await eventually(said, timeout=5)


@pytest_asyncio.fixture(loop_scope="session")
async def login(secured: NatsServer) -> AsyncIterator:
    opened: list[Client] = []

    async def as_user(user: str) -> Login:
        errors: list[str] = []

        async def record(exc: Exception) -> None:
            errors.append(str(exc).lower())

        # the services' own connect, with the credentials given as a service has them
        nc = await nats_util.connect(secured.url, f"test-{user}", user=user,
                                     password=PASSWORDS[user], error_cb=record)
        opened.append(nc)
        return Login(nc, errors)

    yield as_user
    for nc in opened:
        await nc.close()


@pytest_asyncio.fixture(loop_scope="session")
async def fresh(secured: NatsServer) -> AsyncIterator[None]:
    """No stream or bucket left from an earlier test (the admin may delete them)."""
    nc = await nats.connect(secured.url, user=nats_auth.ADMIN,
                            password=PASSWORDS[nats_auth.ADMIN])
    try:
        js = nc.jetstream()
        for name in await js.streams_info():
            await js.delete_stream(name.config.name or "")
    finally:
        await nc.close()
    yield


def registry_stream() -> StreamConfig:
    return nats_util.compacted_stream(REGISTRY_STREAM, [REGISTRY_SUBJECTS],
                                      REGISTRY_DUPLICATE_WINDOW_S, 1,
                                      design_partition_transform(1))


async def test_each_service_user_can_do_what_its_service_does(login, fresh: None) -> None:
    registry, matcher, notifier = [await login(u) for u in nats_auth.SERVICE_USERS]

    # the registry's relay declares REGISTRY (create, then update) and publishes to it
    for _ in range(2):
        await nats_util.ensure_stream(registry.nc, registry_stream())
    ack = await registry.js.publish("registry.design.d1", b'{"v": 1}')
    assert ack.stream == REGISTRY_STREAM

    # the matcher declares MATCHES, keeps its checkpoint, reads REGISTRY whole (ordered)
    # and by its durable, and publishes match changes
    await nats_util.ensure_stream(matcher.nc, nats_util.matches_stream(1))
    checkpoint = Checkpoint(matcher.js, "matcher-p0")
    await checkpoint.open()
    await checkpoint.reset(0, [])
    await checkpoint.commit(7)
    loaded = await checkpoint.load()
    assert loaded is not None and loaded.position == 7
    whole = await matcher.js.subscribe(REGISTRY_SUBJECTS, stream=REGISTRY_STREAM,
                                       ordered_consumer=True)
    assert (await whole.next_msg(timeout=5)).subject == "registry.design.d1"
    await whole.unsubscribe()
    await matcher.js.stream_info(REGISTRY_STREAM)
    await matcher.js.add_consumer(REGISTRY_STREAM, ConsumerConfig(
        durable_name="matcher-p0", ack_policy=AckPolicy.EXPLICIT,
        filter_subjects=partition_filters(1, 0)))
    pulled = await matcher.js.pull_subscribe_bind(durable="matcher-p0", stream=REGISTRY_STREAM)
    [msg] = await pulled.fetch(1, timeout=5)
    await msg.ack_sync()
    await matcher.js.delete_consumer(REGISTRY_STREAM, "matcher-p0")
    assert (await matcher.js.publish("matches.design.d1", b"{}")).stream == MATCHES_STREAM
    # and reads MATCHES back, whole, to see what a crashed batch already published
    back = await matcher.js.subscribe("matches.>", stream=MATCHES_STREAM,
                                      ordered_consumer=True)
    assert (await back.next_msg(timeout=5)).subject == "matches.design.d1"
    await back.unsubscribe()

    # the notifier declares MATCHES too and consumes it by its durable
    await nats_util.ensure_stream(notifier.nc, nats_util.matches_stream(1))
    await notifier.js.add_consumer(MATCHES_STREAM, ConsumerConfig(
        durable_name="notifier", ack_policy=AckPolicy.EXPLICIT))
    await notifier.js.consumer_info(MATCHES_STREAM, "notifier")
    consuming = await notifier.js.pull_subscribe_bind(durable="notifier", stream=MATCHES_STREAM)
    [match] = await consuming.fetch(1, timeout=5)
    assert match.subject == "matches.design.d1"
    await match.ack_sync()

    for user in (registry, matcher, notifier):
        assert not any(REFUSED in e for e in user.errors), user.errors


async def test_each_service_user_is_refused_what_it_must_not_do(login, fresh: None) -> None:
    admin = await login(nats_auth.ADMIN)
    await nats_util.ensure_stream(admin.nc, registry_stream())
    await nats_util.ensure_stream(admin.nc, nats_util.matches_stream(1))
    registry, matcher, notifier = [await login(u) for u in nats_auth.SERVICE_USERS]

    # publishing: each only its own stream's subjects
    await notifier.refused(notifier.js.publish("registry.design.x", b"{}"), "registry.design.x")
    await notifier.refused(notifier.js.publish("matches.design.x", b"{}"), "matches.design.x")
    await matcher.refused(matcher.js.publish("registry.design.x", b"{}"), "registry.design.x")
    await registry.refused(registry.js.publish("matches.design.x", b"{}"), "matches.design.x")

    # consuming: the registry nothing, the matcher not MATCHES, the notifier not REGISTRY
    # and no consumer on MATCHES but its own
    create = f"$JS.API.CONSUMER.DURABLE.CREATE.{MATCHES_STREAM}.notifier"
    await registry.refused(registry.js.add_consumer(MATCHES_STREAM, ConsumerConfig(
        durable_name="notifier")), create)
    await matcher.refused(matcher.js.add_consumer(MATCHES_STREAM, ConsumerConfig(
        durable_name="notifier")), create)
    await notifier.refused(notifier.js.add_consumer(MATCHES_STREAM, ConsumerConfig(
        durable_name="other")), f"$JS.API.CONSUMER.DURABLE.CREATE.{MATCHES_STREAM}.other")
    # the matcher reads MATCHES whole, but cannot take the notifier's messages or its durable
    await admin.js.add_consumer(MATCHES_STREAM, ConsumerConfig(durable_name="notifier"))
    next_message = f"$JS.API.CONSUMER.MSG.NEXT.{MATCHES_STREAM}.notifier"
    await matcher.refused(matcher.nc.request(next_message, b"1", timeout=2), next_message)
    await matcher.refused(matcher.js.delete_consumer(MATCHES_STREAM, "notifier"),
                          f"$JS.API.CONSUMER.DELETE.{MATCHES_STREAM}.notifier")
    await notifier.refused(notifier.js.add_consumer(REGISTRY_STREAM, ConsumerConfig(
        durable_name="notifier")), f"$JS.API.CONSUMER.DURABLE.CREATE.{REGISTRY_STREAM}.notifier")
    # nor read a stream's subjects directly, nor another user's inbox subjects but replies
    for user, subject in ((notifier, "registry.>"), (registry, "matches.>"),
                          (matcher, "matches.>")):
        await user.nc.subscribe(subject)
        await user.nc.flush()
        await user.violation(subject)

    # the streams: nobody deletes one, nor declares another's, nor touches the matcher's
    # checkpoint but the matcher
    await notifier.refused(notifier.js.delete_stream(MATCHES_STREAM),
                           f"$JS.API.STREAM.DELETE.{MATCHES_STREAM}")
    await matcher.refused(matcher.js.delete_stream(REGISTRY_STREAM),
                          f"$JS.API.STREAM.DELETE.{REGISTRY_STREAM}")
    await registry.refused(registry.js.update_stream(nats_util.matches_stream(1)),
                           f"$JS.API.STREAM.UPDATE.{MATCHES_STREAM}")
    await notifier.refused(notifier.js.key_value("matcher-p0"),
                           "$JS.API.STREAM.INFO.KV_matcher-p0")

    # and the server is the same for the admin: everything still there
    assert {s.config.name for s in await admin.js.streams_info()} >= {REGISTRY_STREAM,
                                                                      MATCHES_STREAM}


async def test_an_unknown_user_or_a_wrong_password_is_not_let_in(secured: NatsServer) -> None:
    for user, password in (("nobody", "x"), ("matcher", PASSWORDS["notifier"]), (None, None)):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(secured.url, user=user, password=password,
                               allow_reconnect=False, max_reconnect_attempts=0)


def test_the_generated_passwords_are_kept_private_and_reused(tmp_path: Path) -> None:
    first = nats_auth.generated(tmp_path)
    assert set(first) == set(nats_auth.USERS) and len(set(first.values())) == len(first)
    assert (tmp_path / nats_auth.CREDENTIALS_FILE).stat().st_mode & 0o077 == 0
    assert nats_auth.generated(tmp_path) == first
    assert nats_auth.service_env("registry-relay", first) == {
        "MAKELOCAL_NATS_USER": "registry", "MAKELOCAL_NATS_PASSWORD": first["registry"]}
    assert nats_auth.service_env("mail-sink", first) == {}
    assert nats_auth.service_env("matcher", {}) == {}  # a NATS without users


def test_makelocal_trace_reads_nats_as_the_admin_of_the_stack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`makelocal trace` (no MAKELOCAL_NATS_USER given) connects as the admin whose
    password `up` keeps in the data directory; a user given in the environment wins."""
    from makelocal.cli import _admin_credentials

    passwords = nats_auth.generated(tmp_path)
    monkeypatch.setenv("MAKELOCAL_NATS_USER", "")
    monkeypatch.setenv("MAKELOCAL_NATS_PASSWORD", "")
    _admin_credentials(tmp_path)
    assert nats_util.credentials() == (nats_auth.ADMIN, passwords[nats_auth.ADMIN])
    monkeypatch.setenv("MAKELOCAL_NATS_USER", "notifier")
    _admin_credentials(tmp_path)
    assert nats_util.credentials()[0] == "notifier"


@pytest.mark.slow
async def test_a_design_reaches_a_webhook_with_every_service_its_own_user(
        tmp_path: Path, secured: NatsServer, fresh: None, settings: RegistrySettings,
        org: tuple[str, str], receiver: tuple[Receiver, str],
        mail_server: MailServer) -> None:
    """The registry, the matcher and the notifier as `makelocal` processes (as `up` starts
    them), each with only its own user's credentials."""
    app, base = receiver
    env = {"MAKELOCAL_NATS_URL": secured.url, "MAKELOCAL_DATABASE_URL": settings.database_url,
           "MAKELOCAL_REGISTRY_DB_SCHEMA": settings.registry_db_schema,
           "MAKELOCAL_REGISTRY_RELAY_SWEEP_S": "0.2",
           "MAKELOCAL_NOTIFIER_DB_SCHEMA": f"n_{settings.registry_db_schema}",
           "MAKELOCAL_NOTIFIER_KEYS_SCHEMA": settings.registry_db_schema,
           "MAKELOCAL_NOTIFIER_ALLOW_CIDRS": "127.0.0.0/8", "MAKELOCAL_NOTIFIER_SWEEP_S": "0.1",
           "MAKELOCAL_NOTIFIER_SECRET_KEY": TEST_SEALING_KEY,
           "MAKELOCAL_SMTP_PORT": str(mail_server.port)}
    services = []
    for command in ("registry", "matcher", "notifier"):
        port = free_port()
        services.append(Service(command, command, port, env | port_env(command, port)
                                | nats_auth.service_env(command, PASSWORDS),
                                tmp_path / f"{command}.log").start())
    try:
        for service in services:
            await asyncio.to_thread(service.wait_listening)
            await wait_ready(service.url, timeout=60)
        registry, _, notifier = services
        key = auth(org[1])
        async with httpx.AsyncClient(timeout=20) as http:
            hook = await http.post(f"{notifier.url}/v1/subscriptions", headers=key,
                                   json={"channel": "webhook", "url": f"{base}/ok"})
            assert hook.status_code == 201, hook.text
            made = await http.post(f"{registry.url}/v1/facilities?id=lab-1", headers=key | JSON,
                                   content=facility_doc("Lab 1", ["FDM"]))
            assert made.status_code == 201, made.text
            posted = await http.post(f"{registry.url}/v1/designs?id=stand", headers=key | JSON,
                                     content=design_doc("Stand", ["3DP"]))
            assert posted.status_code == 201, posted.text

        async def delivered() -> bool:
            return any(b"stand" in r.body and b"lab-1" in r.body for r in app.at("/ok"))

        await eventually(delivered, timeout=30)
    finally:
        for service in services:
            service.stop()
    logged = "".join((tmp_path / f"{s.name}.log").read_text() for s in services)
    assert REFUSED not in logged.lower(), "a service was refused something it needs"
    assert not any(password in logged for password in PASSWORDS.values())
