"""The proxy: authenticate, forward, pass the response through untouched, record usage.

Per call, in order:
1. authenticate the platform key (cached lookup) and require a provider key;
2. read the body (bounded), validate what metering needs, take the tracking metadata out;
3. forward upstream with the caller's provider key (or simulate, for sandbox calls);
4. return the provider's response: non-streamed byte for byte, streamed event by event as it
   arrives; the usage is read on the side;
5. after the last byte is handed over, publish one usage event (queue append, non-blocking).

It is served straight on ASGI (see ``asgi.py``). Prompt and response text are only ever in
memory here: nothing of it is logged or published.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from schemas.events import CallStatus, UsageEvent
from services.common.credentials import bearer_key
from services.common.settings import GatewaySettings
from services.gateway import sandbox
from services.gateway.asgi import (
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    read_body,
    request_headers,
    send_bytes,
    send_error,
)
from services.gateway.auth import AuthUnavailable, Caller, GatewayAuth
from services.gateway.ids import event_id as new_event_id
from services.gateway.metadata import MetadataError, Tracking, extract
from services.gateway.publisher import EventPublisher
from services.gateway.sse import SSESplitter, event_data
from services.gateway.upstream import (
    Origin,
    UpstreamBroken,
    UpstreamClient,
    UpstreamResponse,
    UpstreamTimeout,
    proxy_for,
)
from services.gateway.usage import StreamUsage, Usage, usage_from_body

log = structlog.get_logger(__name__)

# Routes whose request must name a model and carry messages (the metered chat routes).
CHAT_ROUTES = {"openai": "chat/completions", "anthropic": "messages"}

# Request headers that never go upstream: hop-by-hop, ours, and credentials we replace.
_DROP_REQUEST = {
    "host", "content-length", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
    "te", "trailer", "upgrade", "authorization", "x-api-key", "x-provider-key", "accept-encoding",
    "cookie", "x-customer-id", "x-feature", "x-sandbox", "x-meterline-tags",
    "expect",  # the body is read whole before the call is forwarded: nothing to wait for upstream
}
# Response headers that describe the upstream connection, not the answer: the ASGI server
# frames the response to the client itself, and dates it (a second Date header would be a
# duplicate).
_DROP_RESPONSE = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"date"}
_SANDBOX_HEADER = (b"x-meterline-sandbox", b"true")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Call:
    """What the gateway knows about one call while it is in flight."""

    provider: str
    route: str
    caller: Caller
    tracking: Tracking
    started_at: datetime
    t0: float
    model_requested: str = ""
    streamed: bool = False
    sandbox: bool = False
    event_id: str = field(default_factory=new_event_id)

    def event(self, usage: Usage, status: CallStatus, http_status: int, ttft_ms: float | None = None) -> UsageEvent:
        t = self.tracking
        return UsageEvent(
            event_id=self.event_id,
            request_id=usage.request_id or self.event_id,
            org_id=self.caller.org_id,
            team_id=self.caller.team_id,
            key_id=self.caller.key_id,
            provider=self.provider,  # type: ignore[arg-type]
            route=self.route,
            model_requested=self.model_requested,
            model=usage.model or self.model_requested,
            started_at=self.started_at,
            latency_ms=round((time.perf_counter() - self.t0) * 1000, 3),
            ttft_ms=ttft_ms,
            status=status,
            http_status=http_status,
            streamed=self.streamed,
            sandbox=self.sandbox,
            input_tokens=usage.input,
            output_tokens=usage.output,
            cache_read_tokens=usage.cache_read,
            cache_write_tokens=usage.cache_write,
            reasoning_tokens=usage.reasoning,
            usage_reported=usage.reported,
            prompt_key=t.prompt_key,
            prompt_version=t.prompt_version,
            feature_tags=tuple(t.feature_tags),
            tags=tuple(t.tags),
            customer_id=t.customer_id,
            feature=t.feature,
            user=t.user,
        )


def _status_of(http_status: int) -> CallStatus:
    return "ok" if http_status < 400 else "upstream_error"


def _request_id(upstream: UpstreamResponse) -> str:
    return upstream.header(b"x-request-id") or upstream.header(b"request-id") or ""


def _response_headers(upstream: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in upstream.headers if name not in _DROP_RESPONSE]


class Proxy:
    def __init__(self, settings: GatewaySettings, auth: GatewayAuth, publisher: EventPublisher) -> None:
        self._settings = settings
        self.auth = auth
        self._publisher = publisher
        bases = {"openai": settings.openai_base_url, "anthropic": settings.anthropic_base_url + "/v1"}
        self._origins = {provider: Origin.parse(base, proxy_for(base)) for provider, base in bases.items()}
        self._client = UpstreamClient(settings.connect_timeout_s, settings.read_timeout_s)

    async def close(self) -> None:
        await self._client.close()

    # -- request side --------------------------------------------------------------------

    @staticmethod
    def _parse(provider: str, route: str, raw: bytes) -> dict[str, Any]:
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise BadRequest(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "request body must be a JSON object")
        if route == CHAT_ROUTES[provider]:
            if not isinstance(body.get("model"), str) or not body["model"]:
                raise BadRequest(400, "'model' is required and must be a string")
            if not isinstance(body.get("messages"), list):
                raise BadRequest(400, "'messages' is required and must be a list")
        elif "model" in body and not isinstance(body["model"], str):
            raise BadRequest(400, "'model' must be a string")
        return body

    @staticmethod
    def _upstream_headers(provider: str, headers: dict[str, str], provider_key: str) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k not in _DROP_REQUEST}
        out["accept-encoding"] = "identity"  # we read usage from the bytes we pass through
        if provider == "openai":
            out["authorization"] = f"Bearer {provider_key}"
        else:
            out["x-api-key"] = provider_key
            out.setdefault("anthropic-version", "2023-06-01")
        return out

    # -- entry point -----------------------------------------------------------------------

    async def serve(self, scope: Scope, receive: Receive, send: Send, provider: str, route: str) -> None:
        t0 = time.perf_counter()
        started_at = datetime.now(UTC)
        route = route.strip("/")
        if provider == "anthropic" and route.startswith("v1/"):
            # The Anthropic SDK appends /v1/messages to its base URL; accept both spellings.
            route = route[3:]
        headers = request_headers(scope)
        try:
            key = bearer_key(headers)
            if key is None:
                raise BadRequest(401, "missing platform key: send Authorization: Bearer <meterline key>")
            try:
                caller = await self.auth.resolve(key)
            except AuthUnavailable as exc:
                raise BadRequest(503, str(exc)) from None
            if caller is None:
                raise BadRequest(401, "unknown or revoked platform key")
            is_sandbox = headers.get("x-sandbox", "").lower() in ("true", "1", "yes")
            provider_key = headers.get("x-provider-key", "").strip()
            if not provider_key and not is_sandbox:
                raise BadRequest(401, "missing provider key: send X-Provider-Key: <your provider API key>")
            limit = self._settings.max_body_bytes
            try:
                raw = await read_body(receive, limit, headers.get("content-length"))
            except BodyTooLarge:
                raise BadRequest(413, f"request body larger than {limit} bytes") from None
            body = self._parse(provider, route, raw)
            fields_before = len(body)
            try:
                tracking = extract(body, headers)
            except MetadataError as exc:
                raise BadRequest(400, str(exc)) from None
        except BadRequest as exc:
            await send_error(send, provider, exc.status, exc.message)
            return
        except ClientGone:
            return  # nothing was forwarded, so nothing was spent

        call = Call(provider, route, caller, tracking, started_at, t0, str(body.get("model") or ""))
        call.streamed = body.get("stream") is True
        call.sandbox = is_sandbox
        hide_usage_chunk = False
        if call.streamed and provider == "openai" and route == "chat/completions":
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                # Ask for usage upstream, and hold back the usage-only chunk the client did not ask for.
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                hide_usage_chunk = True
        if call.sandbox:
            await self._sandbox(send, call, body, include_usage=not hide_usage_chunk)
            return
        # Re-encode only when something was taken out or added: otherwise the provider gets the
        # caller's exact bytes.
        if len(body) != fields_before or hide_usage_chunk:
            raw = msgspec.json.encode(body)
        query = scope.get("query_string", b"").decode("latin-1")
        path = f"/{route}?{query}" if query else f"/{route}"
        await self._forward(call, receive, send, path, self._upstream_headers(provider, headers, provider_key), raw,
                            hide_usage_chunk)

    # -- forwarding ------------------------------------------------------------------------

    async def _forward(self, call: Call, receive: Receive, send: Send, path: str, headers: dict[str, str], raw: bytes,
                       hide_usage: bool) -> None:
        try:
            upstream = await self._client.post(self._origins[call.provider], path, headers, raw)
        except UpstreamTimeout:
            self._publisher.publish(call.event(Usage(), "timeout", 504))
            await send_error(send, call.provider, 504, "the provider did not answer in time")
            return
        except UpstreamBroken as exc:
            log.warning("provider unreachable", provider=call.provider, error=type(exc).__name__)
            self._publisher.publish(call.event(Usage(), "unreachable", 502))
            await send_error(send, call.provider, 502, "the provider could not be reached")
            return

        if upstream.content_type == "text/event-stream":
            await self._stream(call, receive, send, upstream, hide_usage)
            return
        try:
            content = await upstream.read()
        except UpstreamTimeout:
            self._publisher.publish(call.event(Usage(), "timeout", 504))
            await send_error(send, call.provider, 504, "the provider did not finish its answer in time")
            return
        except UpstreamBroken:
            self._publisher.publish(call.event(Usage(), "unreachable", 502))
            await send_error(send, call.provider, 502, "the provider connection broke mid-answer")
            return
        await send_bytes(send, upstream.status, _response_headers(upstream), content)
        # The answer is on its way to the client; usage is read and published after it.
        usage = usage_from_body(call.provider, content)
        usage.request_id = _request_id(upstream)
        self._publisher.publish(call.event(usage, _status_of(upstream.status), upstream.status))

    async def _stream(self, call: Call, receive: Receive, send: Send, upstream: UpstreamResponse,
                      hide_usage: bool) -> None:
        """Relay the stream, and stop it as soon as the client goes away (the server reports a
        disconnect on ``receive``), so the upstream generation is not read to the end for no one."""
        await send({"type": "http.response.start", "status": upstream.status, "headers": _response_headers(upstream)})
        relay = asyncio.ensure_future(self._relay(call, send, upstream, hide_usage))
        gone = asyncio.ensure_future(receive())
        try:
            await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not relay.done():
                relay.cancel()
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay

    async def _relay(self, call: Call, send: Send, upstream: UpstreamResponse, hide_usage: bool) -> None:
        """Pass the stream through as it arrives, reading usage on the side. When usage was
        requested on the caller's behalf, events are forwarded whole so the usage-only one can
        be held back; otherwise raw chunks go out untouched."""
        tracker = StreamUsage(call.provider)
        splitter = SSESplitter()
        ttft_ms: float | None = None
        status: CallStatus = _status_of(upstream.status)
        finished = False
        try:
            async for chunk in upstream.chunks():
                if ttft_ms is None:
                    ttft_ms = round((time.perf_counter() - call.t0) * 1000, 3)
                if hide_usage:
                    out = b"".join(e for e in splitter.feed(chunk) if not self._observe(tracker, e))
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                else:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    for e in splitter.feed(chunk):
                        self._observe(tracker, e)
            rest = splitter.rest()
            finished = True
            await send({"type": "http.response.body", "body": rest if hide_usage else b"", "more_body": False})
        except UpstreamTimeout:
            status = "timeout"
        except UpstreamBroken:
            status = "unreachable"
        except asyncio.CancelledError:
            status = "client_disconnected"
            raise
        finally:
            if not finished:
                upstream.close()  # a half-read connection cannot be reused (a finished one went back to the pool)
                if status in ("timeout", "unreachable"):
                    # End the response cleanly: the client sees the stream stop where it broke.
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            usage = tracker.usage
            usage.request_id = _request_id(upstream)
            self._publisher.publish(call.event(usage, status, upstream.status, ttft_ms))

    @staticmethod
    def _observe(tracker: StreamUsage, event: bytes) -> bool:
        """Feed one SSE event to the usage tracker; True if it is a usage-only event."""
        data = event_data(event)
        if data is None or data == b"[DONE]":
            return False
        try:
            parsed = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return False
        return isinstance(parsed, dict) and tracker.feed(parsed)

    # -- sandbox ---------------------------------------------------------------------------

    async def _sandbox(self, send: Send, call: Call, body: dict[str, Any], include_usage: bool) -> None:
        stream: AsyncIterator[bytes] | None
        await sandbox.prepare(body)
        if call.provider == "openai":
            reply, prompt, completion = sandbox.openai_reply(body)
            stream = sandbox.openai_stream(reply, include_usage) if call.streamed else None
        else:
            reply, prompt, completion = sandbox.anthropic_reply(body)
            stream = sandbox.anthropic_stream(reply) if call.streamed else None
        usage = Usage(input=prompt, output=completion, reported=True, model=reply["model"])
        usage.request_id = reply["id"]
        if stream is None:
            await send_bytes(send, 200, [(b"content-type", b"application/json"), _SANDBOX_HEADER], msgspec.json.encode(reply))
        else:
            headers = [(b"content-type", b"text/event-stream"), _SANDBOX_HEADER]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for chunk in stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._publisher.publish(call.event(usage, "ok", 200))
