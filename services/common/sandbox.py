"""Hostile documents read in child processes, off the event loop, bounded in CPU time,
wall time and memory.

A small pool of children (`python -m services.common.sandbox <module:function>`), each
running one call at a time: the parent writes the arguments as a length-prefixed pickle
on the child's stdin, the child writes the outcome on its stdout. Each child limits itself
with setrlimit: its address space to what it held at start plus `memory_mb`, the CPU time
of each call to `cpu_s` (SIGXCPU ends it); the parent kills a child that overruns the wall
time. A child that died, overran or ran out of memory is replaced, never reused: one
hostile document costs one child, and the other calls in flight go on in theirs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import os
import pickle
import resource
import signal
import struct
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, BinaryIO

from contracts.errors import InvalidInput

log = logging.getLogger(__name__)
_HEADER = struct.Struct(">I")


class Exceeded(Exception):
    """The call went over a bound: `what` is "time" or "memory"."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what


class Busy(Exception):
    """No child became free within the wall time."""


class ReaderLost(Exception):
    """The child was killed from outside (the OOM killer, an operator): not the
    document's fault."""


# Deaths that are not the document's doing; a crash (a C stack overflowed: SIGSEGV) is.
_KILLED_FROM_OUTSIDE = frozenset({-signal.SIGKILL, -signal.SIGTERM, -signal.SIGHUP})


class ReaderPool:
    """Up to `size` children running `target` ("module:function"), started when needed."""

    def __init__(self, target: str, *, size: int, cpu_s: int, wall_s: float,
                 memory_mb: int) -> None:
        self.target, self.cpu_s, self.wall_s, self.memory_mb = target, cpu_s, wall_s, memory_mb
        self._free: list[asyncio.subprocess.Process] = []
        self._slots = asyncio.Semaphore(size)
        # a tenant holds at most half the children: one tenant's slow documents leave
        # the others a reader (its own wait for its share does not take a child)
        self.per_tenant = max(1, size // 2)
        self._tenants: dict[str, asyncio.Semaphore] = {}
        self._callers: Counter[str] = Counter()  # waiting or reading, per tenant
        self._closed = False

    async def call(self, *args: Any, tenant: str = "") -> Any:
        """target(*args) in a child: its result, or the InvalidInput it raised; Exceeded
        past a bound; Busy when no child (of the tenant's share) becomes free within the
        wall time. A child killed from outside is replaced and the document read once
        more; ReaderLost if that one dies too."""
        share = self._tenants.setdefault(tenant, asyncio.Semaphore(self.per_tenant))
        self._callers[tenant] += 1
        try:
            try:
                async with asyncio.timeout(self.wall_s):
                    await share.acquire()
            except TimeoutError:
                raise Busy("this tenant's document readers are busy") from None
            try:
                return await self._call(*args)
            except ReaderLost:
                return await self._call(*args)
            finally:
                share.release()
        finally:
            self._callers[tenant] -= 1
            if not self._callers[tenant]:  # no one of it waiting or reading
                del self._callers[tenant], self._tenants[tenant]

    async def _call(self, *args: Any) -> Any:
        try:
            async with asyncio.timeout(self.wall_s):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy("every document reader is busy") from None
        child: asyncio.subprocess.Process | None = None
        reusable = False
        try:
            child = self._idle() or await self._start()
            outcome, value = await self._run(child, pickle.dumps(args))
            reusable = outcome in ("ok", "invalid")
            if outcome == "ok":
                return value
            if outcome == "invalid":
                raise InvalidInput.from_dict(value)
            if outcome == "memory":
                raise Exceeded("memory", f"reading it needs over {self.memory_mb} MiB")
            raise RuntimeError(f"document reader failed: {value}")
        finally:
            if child is not None:
                if reusable and not self._closed:
                    self._free.append(child)
                else:
                    await _end(child)
            self._slots.release()

    def _idle(self) -> asyncio.subprocess.Process | None:
        """A free child still alive (one may have been killed from outside meanwhile)."""
        while self._free:
            child = self._free.pop()
            if child.returncode is None:
                return child
        return None

    async def _start(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, self.target, str(self.cpu_s), str(self.memory_mb),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)

    async def _run(self, child: asyncio.subprocess.Process,
                   payload: bytes) -> tuple[str, Any]:
        assert child.stdin is not None and child.stdout is not None
        try:
            async with asyncio.timeout(self.wall_s):
                child.stdin.write(_HEADER.pack(len(payload)) + payload)
                await child.stdin.drain()
                size = _HEADER.unpack(await child.stdout.readexactly(_HEADER.size))[0]
                # our own child's answer: unpickling it trusts only this code
                answer: tuple[str, Any] = pickle.loads(await child.stdout.readexactly(size))
                return answer
        except TimeoutError:
            raise Exceeded("time", f"reading it took over {self.wall_s:g} s") from None
        except (asyncio.IncompleteReadError, ConnectionError):
            status = await child.wait()
            if status in _KILLED_FROM_OUTSIDE:
                raise ReaderLost(f"the reader was killed ({status})") from None
            if status == -signal.SIGXCPU:
                raise Exceeded("time", f"reading it took over {self.cpu_s} s of CPU") from None
            # e.g. a C stack overflowed: the document is what made it die
            raise Exceeded("time", f"the reader died reading it ({status})") from None

    async def close(self) -> None:
        self._closed = True
        children, self._free = self._free, []
        await asyncio.gather(*(_end(c) for c in children))


async def _end(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
    await child.wait()


# the child


def _limit_memory(extra_mb: int) -> None:
    """Address space: what the child holds now (interpreter and imports) plus `extra_mb`."""
    held = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = held + extra_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _limit_cpu(seconds: int) -> None:
    """`seconds` more of CPU time; the hard limit stays, so the next call can move it on."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + seconds
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)  # a lower limit set from outside stands
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _answer(out: BinaryIO, outcome: str, value: Any) -> None:
    try:
        payload = pickle.dumps((outcome, value))
    except MemoryError:
        payload = pickle.dumps(("memory", None))
    out.write(_HEADER.pack(len(payload)) + payload)
    out.flush()


def serve(function: Callable[..., Any], cpu_s: int, memory_mb: int) -> None:
    """Answer calls on stdin until it closes."""
    # The protocol owns the real stdout; anything else printing goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    source = sys.stdin.buffer
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a limit's SIGXCPU leaves no core
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when children end
    _limit_memory(memory_mb)
    while (header := _read_exactly(source, _HEADER.size)) is not None:
        payload = _read_exactly(source, _HEADER.unpack(header)[0])
        if payload is None:
            return
        _limit_cpu(cpu_s)
        try:
            _answer(out, "ok", function(*pickle.loads(payload)))
        except InvalidInput as exc:
            _answer(out, "invalid", exc.as_dict())
        except MemoryError:
            _answer(out, "memory", None)
            return  # its heap may be in pieces: a fresh child takes the next call
        except Exception as exc:
            _answer(out, "error", f"{type(exc).__name__}: {exc}"[:500])
            return


def main(argv: list[str]) -> None:
    target, cpu_s, memory_mb = argv
    module, _, name = target.partition(":")
    serve(getattr(importlib.import_module(module), name), int(cpu_s), int(memory_mb))


if __name__ == "__main__":
    main(sys.argv[1:])
