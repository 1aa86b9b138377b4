"""Shared test plumbing: the registry in-process or as a child process, stream reads."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import uvicorn
from nats.js.errors import NotFoundError

from contracts.events import REGISTRY_STREAM
from makelocal.embedded import free_port, stop_process, wait_for_port
from services.registry.app import create_app
from services.registry.settings import RegistrySettings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():  # CI lays shared/ beside the clone
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


async def eventually(check: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll an async check until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


async def stream_messages(nats_url: str, stream: str = REGISTRY_STREAM) -> list[dict[str, Any]]:
    """Every message the stream holds, oldest first, with its Nats-Msg-Id."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return []
        out: list[dict[str, Any]] = []
        if info.state.messages == 0:
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except NotFoundError:
                continue
            body = json.loads(msg.data)
            body["_msg_id"] = (msg.headers or {}).get("Nats-Msg-Id")
            body["_seq"] = seq
            out.append(body)
        return out
    finally:
        await nc.close()


class InProcessRegistry:
    """The registry app served by uvicorn on a free port, inside the test's event loop."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.port = free_port()
        self.settings = settings.model_copy(update={"registry_port": self.port})
        self.app = create_app(self.settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_config=None, access_log=False,
                                                    lifespan="on"))
        self.task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> InProcessRegistry:
        self.task = asyncio.create_task(self.server.serve())
        await eventually(self._started, timeout=20)
        return self

    async def _started(self) -> bool:
        if self.task is not None and self.task.done():
            self.task.result()
        return self.server.started

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)


class RegistryProcess:
    """The registry (or its relay alone) as a real child process, to be killed for real."""

    def __init__(self, env: dict[str, str], log: Path, command: str = "registry") -> None:
        self.command = command
        self.port = free_port()
        self.env = os.environ | env | {"MAKELOCAL_REGISTRY_PORT": str(self.port)}
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, **extra_env: str) -> RegistryProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "makelocal.cli", self.command], env=self.env | extra_env,
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        if self.command == "registry":
            wait_for_port(self.port, 30, self.proc)
        return self

    def wait_dead(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
