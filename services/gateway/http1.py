"""One keep-alive HTTP/1.1 connection to a provider: write a request, read its response.

The protocol is asyncio's callback kind (no stream reader, no task per connection) and the
response is parsed by httptools, the C parser uvicorn uses on the client side of the gateway.
Everything a response delivers is handed to whoever awaits it through one future at a time, so
a call costs a few Python calls beyond the parser's.

Flow control: a streamed body is queued until the relay takes it; above ``_HIGH_WATER`` queued
bytes the socket stops being read, so a slow client slows the provider instead of filling the
gateway's memory. A body read whole (``read_all``) is not paused: it is the provider's finished
answer, and it is wanted whole.

The read timeout is per wait, like a socket read timeout: a call fails with ``TimeoutError``
when the provider sends nothing for ``read_timeout_s`` while the gateway waits for it. One
timer per connection is re-armed lazily, not per chunk.
"""

from __future__ import annotations

import asyncio
from collections import deque

import httptools

# Queued streamed bytes at which the socket stops being read, and resumes below the low mark.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class UpstreamBroken(Exception):
    """The provider could not be reached, broke the connection, or answered what is not HTTP."""


class Connection(asyncio.Protocol):
    """One connection; at most one request in flight on it (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout_s
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._begin()

    def _begin(self) -> None:
        """Forget the last exchange: a new request is about to be written."""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.headers_done = False
        self.complete = False
        self._framed_by_close = False
        self._interim = False
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._paused = False
        self._pause_allowed = True
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wait_since = 0.0
        self._last_data = 0.0
        self._active = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._active:
            # Bytes nobody asked for on an idle connection: the connection is no longer usable.
            self.abort()
            return
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"the provider's response is not valid HTTP/1.1: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if not self._active or self.complete:
            return
        if self.headers_done and self._framed_by_close:
            self.complete = True  # a body without length or chunking ends where the connection does
            self.keep_alive = False
            self._wake()
        else:
            self._fail(UpstreamBroken("the provider closed the connection before its answer was complete"))

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._interim = True
            self.headers = []
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        names = {name for name, _ in self.headers}
        self._framed_by_close = (b"content-length" not in names and b"transfer-encoding" not in names
                                 and status not in (204, 304))
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._queued += len(body)
        if self._queued > _HIGH_WATER and self._pause_allowed and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake()

    # -- the exchange ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write one whole request (head and body)."""
        self._begin()
        self._active = True
        self._last_data = self._loop.time()
        assert self.transport is not None
        self.transport.write(data)

    async def response_head(self) -> None:
        """Wait for the status line and headers."""
        while not self.headers_done:
            await self._wait()

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it arrived, or None at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._queued -= len(chunk)
                if self._paused and self._queued < _LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return None
            await self._wait()

    async def read_all(self) -> bytes:
        """The whole body."""
        self._pause_allowed = False
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        while not self.complete:
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._queued = 0
        return body

    def finish(self) -> bool:
        """End the exchange; True if the connection can carry another request."""
        self._active = False
        self._cancel_timer()
        return self.complete and self.keep_alive and not self.closed and not self._chunks

    def reset_parser(self) -> None:
        """A new parser for what follows a tunnel's CONNECT answer (the provider's own answers)."""
        self._parser = httptools.HttpResponseParser(self)

    def abort(self) -> None:
        """Close the connection at once, ending any exchange on it."""
        self._active = False
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    # -- waiting --------------------------------------------------------------------------

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed and not self.complete:
            raise UpstreamBroken("the connection to the provider is closed")
        self._waiter = self._loop.create_future()
        self._wait_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._wait_since + self._read_timeout, self._on_timer)
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _on_timer(self) -> None:
        """Fire only for a wait on the provider: the deadline runs from the later of the last
        bytes received and the start of the current wait."""
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        deadline = max(self._last_data, self._wait_since) + self._read_timeout
        now = self._loop.time()
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._fail(TimeoutError(f"the provider sent nothing for {self._read_timeout:g} s"))
        self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
