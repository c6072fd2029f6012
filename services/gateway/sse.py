"""Server-sent events framing. Pure and incremental: bytes in, complete events out."""

from __future__ import annotations

import re
from collections.abc import Iterator

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class SSESplitter:
    """Splits a byte stream into complete SSE events (each returned with its terminator, so
    forwarding the events forwards the original bytes)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buf += chunk
        while True:
            match = _BOUNDARY.search(self._buf)
            if match is None:
                return
            event, self._buf = self._buf[: match.end()], self._buf[match.end() :]
            yield event

    def rest(self) -> bytes:
        """Whatever came after the last complete event (a stream cut short)."""
        rest, self._buf = self._buf, b""
        return rest


def event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one event, or None when it has none."""
    lines = [line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in event.splitlines()]
    data = [d for d in lines if d is not None]
    return b"\n".join(data) if data else None
