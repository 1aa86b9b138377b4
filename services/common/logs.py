"""One JSON object per log line, with the service name and any event ids passed as extra."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

import orjson

# The extras written, by name: what a library attaches (uvicorn's colour codes, anything a
# dependency adds later) never reaches the JSON stream unreviewed, and none of these is
# ever given a key or secret.
_FIELDS = ("event_id", "entity_id", "subject", "kind", "version", "seq", "first_seq",
           "position", "pending", "transitions", "count", "object", "bytes", "error")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extras = record.__dict__
        line.update({k: extras[k] for k in _FIELDS if k in extras})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        try:
            # a line per change at thousands of changes a second: orjson, at a third of
            # json's cost; json for what orjson refuses (an int past 64 bits)
            return orjson.dumps(line, default=str).decode()
        except TypeError:
            return json.dumps(line, default=str)


def configure(service: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """JSON lines to `stream` (standard error unless given)."""
    # The lines carry none of the caller's file and line, thread or process: not worked out
    # for each record (the logging docs' "Optimization" section; a third of a line's cost).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs would repeat what the metrics count; keep them out of the JSON stream.
    logging.getLogger("uvicorn.access").disabled = True
