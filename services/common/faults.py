"""Named crash points, so tests can SIGKILL a process at one exact step of a protocol
(after commit, after PubAck...). Off unless MAKELOCAL_CRASH_AT names the point."""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("MAKELOCAL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
