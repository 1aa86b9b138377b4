"""A local SMTP server (aiosmtpd) that keeps every message as an .eml file: the mail
server `makelocal up` gives the notifier, so alerts can be read without a mail account.
aiosmtpd comes with the `local` extra, not the production install: the CLI says so before
importing this module."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class FileStore:
    """aiosmtpd handler: each accepted message becomes <time>-<id>.eml in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
        partial = self.folder / (name + ".part")
        partial.write_bytes(envelope.original_content or envelope.content)
        partial.rename(self.folder / name)  # readers never see half a message
        return "250 OK stored"


def serve(folder: Path, host: str, port: int) -> None:
    controller = Controller(FileStore(folder), hostname=host, port=port)
    controller.start()
    print(f"SMTP sink on {host}:{port}; messages in {folder}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()
