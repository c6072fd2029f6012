"""uvicorn's HTTP/1.1 protocol with a response's writes coalesced into one socket write.

uvicorn writes a response's status line and headers in one ``transport.write`` and its body in
another. On a libuv loop each write is a ``send()`` at once (the socket's buffer is empty), so
every response costs two system calls and goes out as two TCP segments (TCP_NODELAY): the
client wakes up twice for it. Writes made during one step of the event loop are gathered here
and written together right after that step, so a whole small response is one ``send()``. On
this 2-core machine (``wrk -c32``) a minimal ASGI app served 12.7k requests/s with uvicorn's
two writes and 17.3k with one; ``bench/gateway.py`` gives the gateway's figures.

What is written is unchanged and in the same order, only later by the rest of the current
step: a streamed response's chunks still leave as they are produced.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes wait for the end of the current event loop step, then leave
    as one. Everything else is the wrapped transport's."""

    __slots__ = ("_transport", "_loop", "_pending", "_scheduled")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, lines: Any) -> None:  # through write: never ahead of what is pending
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return  # the connection is gone (or aborted): as a write to it would be, dropped
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        """What was written goes out before the connection is closed."""
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        """What was written goes out before the end of the stream."""
        self.flush()
        self._transport.write_eof()

    def is_closing(self) -> bool:  # asked after every response: not through __getattr__
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
