"""The gateway's ASGI front: the proxy routes are served straight on ASGI, the rest by Litestar.

Every metered call crosses the proxy routes, and they need none of a framework's machinery (no
parameter parsing, dependency injection or serialisation): bytes in, bytes out. Served directly
they cost a fraction of a Litestar handler per call (``bench/gateway.py`` shows the figures).
``/healthz``, ``/metrics`` and ``/v1/usage/record`` stay on Litestar.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from services.gateway.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROXY_ROOT = "/api/proxy/v1/"
_PROVIDER_PREFIXES = (("/api/proxy/v1/openai/", "openai"), ("/api/proxy/v1/anthropic/", "anthropic"))
_ERROR_HEADERS = [(b"content-type", b"application/json"), (b"x-meterline-error", b"1")]


class ProxyHandler(Protocol):
    async def serve(self, scope: Scope, receive: Receive, send: Send, provider: str, route: str) -> None: ...


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by (lowercase, as ASGI servers give them) name. A repeated header
    becomes one comma-separated value (RFC 9110, 5.3), so that a proxy forwards every value (two
    ``anthropic-beta`` lines are two betas), and two ``Authorization`` lines are not a key."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def read_body(receive: Receive, limit: int, declared: str | None) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes as early as possible."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise BodyTooLarge
        return body  # the common case: one message, no copy
    buffer = bytearray(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        buffer += message.get("body", b"")
        if len(buffer) > limit:
            raise BodyTooLarge
        if not message.get("more_body"):
            return bytes(buffer)


async def send_bytes(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, provider: str, status: int, message: str) -> None:
    await send_bytes(send, status, list(_ERROR_HEADERS), error_body(provider, status, message))


class GatewayFront:
    """Routes ``POST /api/proxy/v1/{openai,anthropic}/...`` to the proxy and everything else
    to the Litestar app."""

    def __init__(self, proxy: ProxyHandler, app: ASGIApp) -> None:
        self._proxy = proxy
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(PROXY_ROOT):
                for prefix, provider in _PROVIDER_PREFIXES:
                    if path.startswith(prefix):
                        if scope["method"] != "POST":
                            headers = [*_ERROR_HEADERS, (b"allow", b"POST")]
                            await send_bytes(send, 405, headers, error_body(provider, 405, "use POST"))
                            return
                        await self._proxy.serve(scope, receive, send, provider, path[len(prefix):])
                        return
        await self._app(scope, receive, send)
