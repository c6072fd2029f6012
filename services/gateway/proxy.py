"""The proxy: authenticate, forward, pass the response through untouched, record usage.

Per call, in order:
1. authenticate the platform key (cached lookup) and require a provider key;
2. read the body (bounded), validate what metering needs, take the tracking metadata out;
3. forward upstream with the caller's provider key (or simulate, for sandbox calls);
4. return the provider's response: non-streamed byte for byte, streamed event by event as it
   arrives; the usage is read on the side;
5. after the last byte is handed over, publish one usage event (queue append, non-blocking).

Prompt and response text are only ever in memory here: nothing of it is logged or published.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import msgspec
import structlog
from litestar import Request, Response
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from schemas.events import CallStatus, UsageEvent
from services.common.credentials import bearer_key
from services.common.settings import GatewaySettings
from services.gateway import sandbox
from services.gateway.auth import AuthUnavailable, Caller, GatewayAuth
from services.gateway.errors import error_response
from services.gateway.metadata import MetadataError, Tracking, extract
from services.gateway.publisher import EventPublisher
from services.gateway.sse import SSESplitter, event_data
from services.gateway.usage import StreamUsage, Usage, usage_from_body

log = structlog.get_logger(__name__)

# Routes whose request must name a model and carry messages (the metered chat routes).
CHAT_ROUTES = {"openai": "chat/completions", "anthropic": "messages"}

# Request headers that never go upstream: hop-by-hop, ours, and credentials we replace.
_DROP_REQUEST = {
    "host", "content-length", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
    "te", "trailer", "upgrade", "authorization", "x-api-key", "x-provider-key", "accept-encoding",
    "cookie", "x-customer-id", "x-feature", "x-sandbox", "x-meterline-tags",
}
# Response headers the ASGI server sets itself.
_DROP_RESPONSE = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "content-type"}


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
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

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
            feature_tags=t.feature_tags,
            tags=t.tags,
            customer_id=t.customer_id,
            feature=t.feature,
            user=t.user,
        )


def _status_of(http_status: int) -> CallStatus:
    return "ok" if http_status < 400 else "upstream_error"


def _request_id(headers: httpx.Headers) -> str:
    return headers.get("x-request-id") or headers.get("request-id") or ""


class Proxy:
    def __init__(self, settings: GatewaySettings, auth: GatewayAuth, publisher: EventPublisher) -> None:
        self._settings = settings
        self.auth = auth
        self._publisher = publisher
        self._bases = {"openai": settings.openai_base_url, "anthropic": settings.anthropic_base_url + "/v1"}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self._client.aclose()

    # -- request side --------------------------------------------------------------------

    async def _read_body(self, request: Request) -> bytes:
        limit = self._settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"request body larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BadRequest(413, f"request body larger than {limit} bytes")
        return bytes(body)

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

    def _upstream_headers(self, provider: str, headers: Mapping[str, str], provider_key: str) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k.lower() not in _DROP_REQUEST}
        out["accept-encoding"] = "identity"  # we read usage from the bytes we pass through
        if provider == "openai":
            out["authorization"] = f"Bearer {provider_key}"
        else:
            out["x-api-key"] = provider_key
            out.setdefault("anthropic-version", "2023-06-01")
        return out

    # -- entry point -----------------------------------------------------------------------

    async def handle(self, request: Request, provider: str, route: str) -> Response:
        t0 = time.perf_counter()
        started_at = datetime.now(timezone.utc)
        route = route.strip("/")
        if provider == "anthropic" and route.startswith("v1/"):
            # The Anthropic SDK appends /v1/messages to its base URL; accept both spellings.
            route = route[3:]
        try:
            key = bearer_key(request.headers)
            if key is None:
                raise BadRequest(401, "missing platform key: send Authorization: Bearer <meterline key>")
            try:
                caller = await self.auth.resolve(key)
            except AuthUnavailable as exc:
                return error_response(provider, 503, str(exc))
            if caller is None:
                raise BadRequest(401, "unknown or revoked platform key")
            is_sandbox = request.headers.get("x-sandbox", "").lower() in ("true", "1", "yes")
            provider_key = request.headers.get("x-provider-key", "").strip()
            if not provider_key and not is_sandbox:
                raise BadRequest(401, "missing provider key: send X-Provider-Key: <your provider API key>")
            raw = await self._read_body(request)
            body = self._parse(provider, route, raw)
            fields_before = len(body)
            try:
                tracking = extract(body, request.headers)
            except MetadataError as exc:
                raise BadRequest(400, str(exc)) from None
        except BadRequest as exc:
            return error_response(provider, exc.status, exc.message)

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
            return self._sandbox(call, body, include_usage=not hide_usage_chunk)
        # Re-encode only when something was taken out or added: otherwise the provider gets the
        # caller's exact bytes.
        if len(body) != fields_before or hide_usage_chunk:
            raw = msgspec.json.encode(body)
        return await self._forward(call, request, raw, provider_key, hide_usage_chunk)

    # -- forwarding ------------------------------------------------------------------------

    async def _forward(self, call: Call, request: Request, raw: bytes, provider_key: str, hide_usage: bool) -> Response:
        url = f"{self._bases[call.provider]}/{call.route}"
        upstream_request = self._client.build_request(
            "POST", url, content=raw, headers=self._upstream_headers(call.provider, request.headers, provider_key),
            params=request.query_params.dict() if request.query_params else None,
        )
        try:
            upstream = await self._client.send(upstream_request, stream=True)
        except httpx.TimeoutException:
            self._publisher.publish(call.event(Usage(), "timeout", 504))
            return error_response(call.provider, 504, "the provider did not answer in time")
        except httpx.TransportError as exc:
            log.warning("provider unreachable", provider=call.provider, error=type(exc).__name__)
            self._publisher.publish(call.event(Usage(), "unreachable", 502))
            return error_response(call.provider, 502, "the provider could not be reached")

        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE}
        media_type = upstream.headers.get("content-type", "application/json")
        if media_type.startswith("text/event-stream"):
            return Stream(
                self._relay(call, upstream, hide_usage),
                status_code=upstream.status_code,
                headers=headers,
                media_type=media_type,
            )
        try:
            content = await upstream.aread()
        except httpx.TimeoutException:
            self._publisher.publish(call.event(Usage(), "timeout", 504))
            return error_response(call.provider, 504, "the provider did not finish its answer in time")
        except httpx.TransportError:
            self._publisher.publish(call.event(Usage(), "unreachable", 502))
            return error_response(call.provider, 502, "the provider connection broke mid-answer")
        finally:
            await upstream.aclose()
        return Response(
            content=content,
            status_code=upstream.status_code,
            headers=headers,
            media_type=media_type,
            background=BackgroundTask(self._record_body, call, content, upstream.status_code, _request_id(upstream.headers)),
        )

    async def _record_body(self, call: Call, content: bytes, http_status: int, request_id: str) -> None:
        """Runs after the response has been sent: parse usage and publish."""
        usage = usage_from_body(call.provider, content)
        usage.request_id = request_id
        self._publisher.publish(call.event(usage, _status_of(http_status), http_status))

    async def _relay(self, call: Call, upstream: httpx.Response, hide_usage: bool) -> AsyncIterator[bytes]:
        """Pass the stream through as it arrives, reading usage on the side. When usage was
        requested on the caller's behalf, events are forwarded whole so the usage-only one can
        be held back; otherwise raw chunks go out untouched."""
        tracker = StreamUsage(call.provider)
        splitter = SSESplitter()
        ttft_ms: float | None = None
        status: CallStatus = _status_of(upstream.status_code)
        try:
            async for chunk in upstream.aiter_raw():
                if ttft_ms is None:
                    ttft_ms = round((time.perf_counter() - call.t0) * 1000, 3)
                if hide_usage:
                    out = b"".join(e for e in splitter.feed(chunk) if not self._observe(tracker, e))
                    if out:
                        yield out
                else:
                    yield chunk
                    for e in splitter.feed(chunk):
                        self._observe(tracker, e)
            rest = splitter.rest()
            if rest and hide_usage:
                yield rest
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.TransportError:
            status = "unreachable"
        except (GeneratorExit, asyncio.CancelledError):
            status = "client_disconnected"
            raise
        finally:
            await upstream.aclose()
            usage = tracker.usage
            usage.request_id = _request_id(upstream.headers)
            self._publisher.publish(call.event(usage, status, upstream.status_code, ttft_ms))

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

    def _sandbox(self, call: Call, body: dict[str, Any], include_usage: bool) -> Response:
        if call.provider == "openai":
            reply, prompt, completion = sandbox.openai_reply(body)
            usage = Usage(input=prompt, output=completion, reported=True, model=reply["model"])
            stream = sandbox.openai_stream(reply, include_usage) if call.streamed else None
        else:
            reply, prompt, completion = sandbox.anthropic_reply(body)
            usage = Usage(input=prompt, output=completion, reported=True, model=reply["model"])
            stream = sandbox.anthropic_stream(reply) if call.streamed else None
        usage.request_id = reply["id"]
        task = BackgroundTask(self._publish_sandbox, call, usage)
        headers = {"x-meterline-sandbox": "true"}
        if stream is not None:
            return Stream(stream, media_type="text/event-stream", headers=headers, background=task)
        return Response(content=msgspec.json.encode(reply), media_type="application/json", headers=headers, background=task)

    async def _publish_sandbox(self, call: Call, usage: Usage) -> None:
        self._publisher.publish(call.event(usage, "ok", 200))
