"""Real NATS (JetStream) and real PostgreSQL, started once per test session from their
wheels on free ports; each test gets its own database schema and a fresh REGISTRY stream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import nats
import pytest
import pytest_asyncio
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.events import REGISTRY_STREAM
from contracts.matches import MATCHES_STREAM
from makelocal.embedded import NatsServer, PostgresServer, free_port
from services.common import db, tracing
from services.matcher.settings import MatcherSettings
from services.notifier.settings import NotifierSettings
from services.registry.settings import RegistrySettings
from services.registry.store import Store
from tests.support.helpers import InProcess, InProcessRegistry, ServiceProcess, eventually
from tests.support.receivers import MailServer, Receiver


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres"), free_port()).start()
    yield server
    server.stop()


async def clean_streams_now(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        for stream in (REGISTRY_STREAM, MATCHES_STREAM):
            try:
                await nc.jetstream().delete_stream(stream)
            except NotFoundError:
                pass
    finally:
        await nc.close()


@pytest_asyncio.fixture(loop_scope="session")
async def clean_streams(nats_server: NatsServer) -> AsyncIterator[None]:
    """Tests run one at a time; each starts with no REGISTRY or MATCHES stream."""
    await clean_streams_now(nats_server.url)
    yield


@pytest.fixture
def settings(nats_server: NatsServer, postgres: PostgresServer,
             clean_streams: None) -> RegistrySettings:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    return RegistrySettings(nats_url=nats_server.url, database_url=postgres.url,
                            registry_db_schema=schema, registry_relay_sweep_s=0.2,
                            registry_db_pool_size=5)


@pytest.fixture
def matcher_settings(settings: RegistrySettings) -> MatcherSettings:
    return MatcherSettings(nats_url=settings.nats_url,
                           matcher_bucket=f"m{uuid.uuid4().hex[:10]}")


@pytest.fixture
def matcher_env(matcher_settings: MatcherSettings) -> dict[str, str]:
    return {"MAKELOCAL_NATS_URL": matcher_settings.nats_url,
            "MAKELOCAL_MATCHER_BUCKET": matcher_settings.matcher_bucket}


@pytest.fixture
def registry_env(settings: RegistrySettings) -> dict[str, str]:
    return {"MAKELOCAL_NATS_URL": settings.nats_url,
            "MAKELOCAL_DATABASE_URL": settings.database_url,
            "MAKELOCAL_REGISTRY_DB_SCHEMA": settings.registry_db_schema,
            "MAKELOCAL_REGISTRY_RELAY_SWEEP_S": "0.2"}


@pytest_asyncio.fixture(loop_scope="session")
async def store(settings: RegistrySettings) -> AsyncIterator[Store]:
    await db.migrate(settings.database_url, settings.registry_db_schema, "services.registry")
    pool = await db.create_pool(settings.database_url, settings.registry_db_schema,
                                min_size=1, max_size=3)
    yield Store(pool)
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def registry(settings: RegistrySettings, store: Store) -> AsyncIterator[InProcess]:
    async with InProcessRegistry(settings) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def org(store: Store) -> tuple[str, str]:
    return await store.create_organization("Test Lab")


@pytest_asyncio.fixture(loop_scope="session")
async def client(registry: InProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=registry.url, timeout=30) as http:
        yield http


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def data_dir() -> Path:
    from tests.support.helpers import DATA

    return DATA


TEST_SEALING_KEY = "dGVzdCBrZXkgb2YgdGhpcnR5LXR3byBieXRlcyEhISE="  # 32 bytes


@pytest.fixture
def mail_server() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture
def notifier_settings(settings: RegistrySettings, mail_server: MailServer) -> NotifierSettings:
    """A compressed retry schedule, a short timeout, loopback receivers allowed."""
    return NotifierSettings(
        nats_url=settings.nats_url, database_url=settings.database_url,
        notifier_db_schema=f"n_{uuid.uuid4().hex[:12]}",
        notifier_keys_schema=settings.registry_db_schema,
        notifier_durable=f"notifier-{uuid.uuid4().hex[:8]}",
        notifier_retry_schedule="0.3,0.6,0.9", notifier_timeout_s=1.0,
        notifier_allow_cidrs="127.0.0.0/8,::1/128", notifier_sweep_s=0.1,
        notifier_email_linger_s=0.2, notifier_email_max_wait_s=1.0,
        smtp_port=mail_server.port, smtp_timeout_s=2.0, notifier_lease_margin_s=1.0,
        notifier_secret_key=TEST_SEALING_KEY)


@pytest.fixture
def notifier_env(notifier_settings: NotifierSettings) -> dict[str, str]:
    s = notifier_settings
    return {f"MAKELOCAL_{name.upper()}": str(getattr(s, name)) for name in (
        "nats_url", "database_url", "notifier_db_schema", "notifier_keys_schema",
        "notifier_durable", "notifier_retry_schedule", "notifier_timeout_s",
        "notifier_allow_cidrs", "notifier_sweep_s", "smtp_port", "smtp_timeout_s",
        "notifier_lease_margin_s")} | {"MAKELOCAL_NOTIFIER_SECRET_KEY": TEST_SEALING_KEY}


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """(the receiver, its base URL): a real HTTP server on loopback."""
    app = Receiver()
    async with InProcess(app, None) as running:
        yield app, running.url


@pytest_asyncio.fixture(loop_scope="session")
async def notifier(notifier_settings: NotifierSettings, store: Store,
                   org: tuple[str, str]) -> AsyncIterator[InProcess]:
    from services.notifier.app import create_app

    async with InProcess(create_app(notifier_settings), notifier_settings) as running:
        yield running


StartRegistry = Callable[[dict[str, str]], Awaitable[ServiceProcess]]


@pytest_asyncio.fixture(loop_scope="session")
async def start_registry(registry_env: dict[str, str],
                         tmp_path: Path) -> AsyncIterator[StartRegistry]:
    """Start a registry API (no relay) in a process of its own, with extra environment,
    once it answers /healthz: the test's loop stays free to send load and measure."""
    started: list[ServiceProcess] = []

    async def start(extra: dict[str, str]) -> ServiceProcess:
        service = ServiceProcess(registry_env | {"MAKELOCAL_REGISTRY_RELAY": "false"} | extra,
                                 tmp_path / "registry.log").start(wait=False)
        started.append(service)
        await service.listening()
        async with httpx.AsyncClient(base_url=service.url, timeout=5) as http:
            async def up() -> bool:
                return (await http.get("/healthz")).status_code == 200
            await eventually(up, timeout=30)
        return service

    yield start
    for service in started:
        service.kill()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Every span the services in this process end, kept in memory; tracing off after."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use(provider)
    yield spans
    tracing.use(None)
    provider.shutdown()
