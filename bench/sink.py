"""A webhook receiver for benchmarks: keep-alive HTTP/1.1 on loopback that costs little
CPU, so that the two cores measure the stack, not the receiver."""

from __future__ import annotations

import asyncio
import time


class Sink:
    """Answers every request 204 without a Content-Length, as Starlette and most
    receivers do; `received` sees each body and its time."""

    async def start(self) -> int:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return server.sockets[0].getsockname()[1]

    def received(self, body: bytes, now: float) -> None:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.received(body, time.perf_counter())
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()  # the client went, or the benchmark ends
