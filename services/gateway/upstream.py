"""The client the gateway forwards calls with: a keep-alive pool per provider origin, raw
bytes both ways, HTTP/1.1 over ``http1.Connection``.

Why its own client: on the proxy's hot path the general-purpose clients cost more than
everything else the gateway does. httpx's pool bookkeeping (an expiry check with a socket poll
per request, anyio task lookups) cost about 0.8 ms of CPU per call; aiohttp's about 0.17 ms
(request and response objects, a stream reader, timers per call). A forwarder that only writes
the request and parses the answer with httptools serves about 3x the calls of an aiohttp one on
the same core, at a fifth of its p99 (``bench/gateway.py`` gives the gateway's figures). What
a provider call needs is small: POST, a body, a response read whole or streamed, keep-alive,
TLS, timeouts, an egress proxy. The gateway's key lookups (``auth.py``) use it too: httpx
left each lookup's request, response and pool objects in reference cycles, garbage that only a
rare full collection frees, and the gateway's memory crept up with the lookup rate. httpx
remains the client of tests and benchmarks.

An egress proxy (``HTTP(S)_PROXY``, resolved once by ``proxy_for``): a plain-HTTP provider is
asked through it in absolute form; an HTTPS one through a ``CONNECT`` tunnel, TLS end to end.

A request is not retried: a POST that reached the provider may have been billed. Idle
connections the provider closed are noticed (the close arrives while they wait in the pool)
and are never reused; idle ones older than the keep-alive window are dropped unused.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from services.gateway.http1 import Connection, UpstreamBroken

# What counts as "the provider did not answer in time": the connect timeout and the read
# timeout both raise TimeoutError.
UpstreamTimeout = TimeoutError

__all__ = ["Origin", "UpstreamBroken", "UpstreamClient", "UpstreamResponse", "UpstreamTimeout", "proxy_for"]


@dataclass(frozen=True)
class Origin:
    """Where a provider's base URL points, and how to get there."""

    scheme: str
    host: str
    port: int
    base_path: str  # the base URL's path, without a trailing slash
    proxy: Origin | None = None
    proxy_authorization: str | None = None  # a Proxy-Authorization value from the proxy URL's user:password

    @classmethod
    def parse(cls, url: str, proxy: str | None = None) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"provider base URL must be http(s)://host[:port][/path], got {url!r}")
        via = None
        authorization = None
        if proxy:
            proxy_url = proxy if "://" in proxy else f"http://{proxy}"
            via = cls.parse(proxy_url)
            proxy_parts = urlsplit(proxy_url)
            if proxy_parts.username is not None:
                credentials = f"{unquote(proxy_parts.username)}:{unquote(proxy_parts.password or '')}"
                authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        return cls(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                   parts.path.rstrip("/"), via, authorization)

    @property
    def authority(self) -> str:
        """The Host header's value: the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def absolute_form(self) -> bool:
        """A plain-HTTP provider behind a proxy is asked with the full URL as the target."""
        return self.proxy is not None and self.scheme == "http"


class UpstreamResponse:
    """A provider's answer: status and headers at once, the body read whole or streamed.

    The connection goes back to the pool when the body has been read to its end, and is closed
    by ``close()`` otherwise (a half-read connection cannot carry another request)."""

    __slots__ = ("_client", "_conn", "_done", "_origin", "headers", "status")

    def __init__(self, conn: Connection, client: UpstreamClient, origin: Origin) -> None:
        self.status = conn.status
        self.headers = conn.headers  # lowercase names, values as sent
        self._conn = conn
        self._client = client
        self._origin = origin
        self._done = False

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    @property
    def content_type(self) -> str:
        """The media type alone, lowercase (no parameters), as aiohttp and httpx report it."""
        value = self.header(b"content-type")
        return value.split(";", 1)[0].strip().lower() if value else ""

    async def read(self) -> bytes:
        try:
            body = await self._conn.read_all()
        except BaseException:
            self.close()
            raise
        self._release()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. Ending the iteration early leaves the response to close()."""
        while True:
            chunk = await self._conn.next_chunk()
            if chunk is None:
                self._release()
                return
            yield chunk

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.abort()

    def _release(self) -> None:
        if not self._done:
            self._done = True
            self._client._release(self._origin, self._conn)


class UpstreamClient:
    def __init__(self, connect_timeout_s: float, read_timeout_s: float, keepalive_s: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._keepalive = keepalive_s
        self._ssl = ssl_context
        self._idle: dict[Origin, deque[Connection]] = {}
        self._closed = False

    # post and get hand back request's coroutine itself: no extra coroutine per provider call.
    def post(self, origin: Origin, path: str, headers: Mapping[str, str], body: bytes) -> Coroutine[Any, Any, UpstreamResponse]:
        """POST ``body`` to ``origin.base_path + path`` (``path`` starts with "/" and may carry
        a query string) with the caller's ``headers`` (lowercase names; no Host, no framing)."""
        return self.request("POST", origin, path, headers, body)

    def get(self, origin: Origin, path: str, headers: Mapping[str, str]) -> Coroutine[Any, Any, UpstreamResponse]:
        """GET ``origin.base_path + path``, as ``post`` does without a body."""
        return self.request("GET", origin, path, headers, None)

    async def request(self, method: str, origin: Origin, path: str, headers: Mapping[str, str],
                      body: bytes | None) -> UpstreamResponse:
        head = _request_head(method, origin, origin.base_path + path, headers, None if body is None else len(body))
        if body:
            head += body
        conn = await self._acquire(origin)
        try:
            conn.send(head)
            await conn.response_head()
        except BaseException:
            conn.abort()
            raise
        return UpstreamResponse(conn, self, origin)

    async def close(self) -> None:
        self._closed = True
        for pool in self._idle.values():
            for conn in pool:
                conn.abort()
        self._idle.clear()

    # -- the pool -------------------------------------------------------------------------

    async def _acquire(self, origin: Origin) -> Connection:
        pool = self._idle.get(origin)
        if pool:
            now = asyncio.get_running_loop().time()
            while pool:
                conn = pool.pop()  # the most recently used: the least likely to have been closed
                if not conn.closed and now - conn.idle_since < self._keepalive:
                    return conn
                conn.abort()
        return await self._connect(origin)

    def _release(self, origin: Origin, conn: Connection) -> None:
        if not conn.finish() or self._closed:
            conn.abort()
            return
        now = asyncio.get_running_loop().time()
        conn.idle_since = now
        pool = self._idle.get(origin)
        if pool is None:
            pool = self._idle[origin] = deque()
        pool.append(conn)
        # The least recently used wait at the other end: after a burst they are never taken
        # again, so they are closed here once past the keep-alive window (or closed by the
        # provider), rather than held until the provider drops them.
        while pool and (pool[0].closed or now - pool[0].idle_since >= self._keepalive):
            pool.popleft().abort()

    async def _connect(self, origin: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        hop = origin.proxy or origin
        tunnel = origin.proxy is not None and origin.scheme == "https"
        tls = self._tls() if hop.scheme == "https" else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(lambda: Connection(loop, self._read_timeout), hop.host, hop.port,
                                                       ssl=tls, server_hostname=hop.host if tls else None)
                if tunnel:
                    try:
                        await _open_tunnel(loop, conn, origin, self._tls())
                    except BaseException:  # refused, timed out or a failed handshake: drop the proxy connection
                        conn.abort()
                        raise
        except TimeoutError:
            raise TimeoutError(f"connecting to {hop.authority} took longer than {self._connect_timeout:g} s") from None
        except OSError as exc:
            raise UpstreamBroken(f"cannot connect to {hop.authority}: {exc}") from exc
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl


async def _open_tunnel(loop: asyncio.AbstractEventLoop, conn: Connection, origin: Origin, tls: ssl.SSLContext) -> None:
    """CONNECT through the proxy, then TLS to the provider inside the tunnel."""
    target = f"{origin.host}:{origin.port}"
    lines = [f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n"]
    if origin.proxy_authorization:
        lines.append(f"proxy-authorization: {origin.proxy_authorization}\r\n")
    conn.send(("".join(lines) + "\r\n").encode("latin-1"))
    await conn.response_head()
    if not 200 <= conn.status < 300:
        raise UpstreamBroken(f"the egress proxy refused the tunnel to {target}: HTTP {conn.status}")
    conn.finish()
    conn.reset_parser()
    assert conn.transport is not None
    conn.transport = await loop.start_tls(conn.transport, conn, tls, server_hostname=origin.host)  # type: ignore[assignment]


def _request_head(method: str, origin: Origin, path: str, headers: Mapping[str, str], length: int | None) -> bytes:
    """The request line and headers; ``length`` None for a request without a body (a GET),
    which then carries no framing header at all."""
    target = f"{origin.scheme}://{origin.authority}{path}" if origin.absolute_form else path
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {origin.authority}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:  # never let a value end the header and start another
            raise ValueError(f"header {name!r} has a line break in its value")
        lines.append(f"{name}: {value}\r\n")
    if origin.absolute_form and origin.proxy_authorization:
        lines.append(f"proxy-authorization: {origin.proxy_authorization}\r\n")
    lines.append("\r\n" if length is None else f"content-length: {length}\r\n\r\n")
    return "".join(lines).encode("latin-1")


def proxy_for(url: str) -> str | None:
    """The egress proxy for a provider base URL from HTTP(S)_PROXY / NO_PROXY, as curl and
    httpx read them: an egress proxy in front of the providers is common in production."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)
