"""Text from peers made storable. Pure.

PostgreSQL text refuses NUL, and asyncpg cannot encode the lone surrogates a
`surrogateescape` decoding leaves of bytes that were not UTF-8 (aiosmtplib reads replies
so). A receiver's answer holding either would make its attempt unrecordable: sent again at
every lease, never failed."""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str | None) -> str | None:
    """`text` with NUL and lone surrogates replaced by U+FFFD."""
    if text is None or not _UNSTORABLE.search(text):
        return text
    return _UNSTORABLE.sub("\ufffd", text)
