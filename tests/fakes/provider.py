"""A fake of the paid upstream LLM APIs (OpenAI and Anthropic) for tests.

Meterline meters spend by reading the ``usage`` that providers report, both in
plain JSON responses and inside SSE streams. Mocking at the HTTP-client level
would hide exactly the bugs we care about (chunk boundaries, stream framing,
header forwarding), so this fake speaks real HTTP and real SSE on loopback and
the gateway under test talks to it exactly as it would talk to the real APIs.

Tests steer each request through headers, because the request passes through
the gateway unchanged and headers are the one thing the SDKs let a test add
per call (``extra_headers=...``):

* ``x-fake-usage``: JSON object overriding the reported token counts.
* ``x-fake-status``: a 4xx/5xx status to fail with, in the provider's error shape.
* ``x-fake-delay-ms``: milliseconds to wait before answering.
* ``x-fake-chunk-gap-ms``: milliseconds between the frames of a stream (a slow generation).

Usage::

    with FakeProvider(expected_key="sk-test") as fake:
        client = openai.OpenAI(base_url=fake.openai_base_url, api_key="sk-test")
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-usage": '{"prompt_tokens": 100}'},
        )
        assert fake.requests[-1].path == "/v1/chat/completions"
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import secrets
import socket
import string
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal

import httpx
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.response import Stream
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

__all__ = [
    "DELAY_HEADER",
    "MODEL_SNAPSHOTS",
    "RESPONSE_TEXT",
    "STATUS_HEADER",
    "STREAM_PIECES",
    "USAGE_HEADER",
    "FakeProvider",
    "ReceivedRequest",
]

USAGE_HEADER: Final = "x-fake-usage"
STATUS_HEADER: Final = "x-fake-status"
DELAY_HEADER: Final = "x-fake-delay-ms"

# Marks the readiness probe so it never shows up in ``FakeProvider.requests``.
_PROBE_HEADER: Final = "x-fake-internal-probe"

RESPONSE_TEXT: Final = "The fake provider says hello."
STREAM_PIECES: Final[tuple[str, ...]] = ("The", " fake", " provider", " says", " hello", ".")

# OpenAI answers an alias with the snapshot it resolved to; the gateway must
# price by what the provider reports, so the fake reproduces that. These are
# the real snapshot names of the aliases.
MODEL_SNAPSHOTS: Final[Mapping[str, str]] = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
}

_SYSTEM_FINGERPRINT: Final = "fp_f4ke5e11a0"
_EMBEDDING_DIMENSIONS: Final = 8
# Gap between stream writes so each piece leaves as its own network chunk.
_STREAM_WRITE_GAP_S: Final = 0.005
_STARTUP_TIMEOUT_S: Final = 10.0
_SHUTDOWN_TIMEOUT_S: Final = 10.0

_OPENAI_CHAT_USAGE: Final[Mapping[str, int]] = {
    "prompt_tokens": 12,
    "completion_tokens": 7,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
}
_OPENAI_EMBEDDING_USAGE: Final[Mapping[str, int]] = {"prompt_tokens": 8}
_OPENAI_RESPONSES_USAGE: Final[Mapping[str, int]] = {
    "input_tokens": 12,
    "output_tokens": 7,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
}
_ANTHROPIC_USAGE: Final[Mapping[str, int]] = {
    "input_tokens": 12,
    "output_tokens": 7,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}

Dialect = Literal["openai", "anthropic"]

# (type, code, message) per status, as the real OpenAI API sends them.
_OPENAI_ERRORS: Final[Mapping[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "Invalid request (simulated by FakeProvider)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("request_forbidden", "unsupported_country_region_territory", "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (simulated by FakeProvider)."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
# Error type per status, as the real Anthropic API sends them.
_ANTHROPIC_ERRORS: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as the fake saw it on the wire.

    Tests assert on these to prove what the gateway forwarded (auth swapped,
    body untouched, headers stripped), which the SDK response alone cannot show.
    """

    method: str
    path: str
    headers: dict[str, str]
    """Header names lowercased; repeated headers joined with ``", "``."""
    body: bytes
    json: Any | None
    """The body decoded as JSON, or None when it is empty or not JSON."""


class _FakeUpstreamError(Exception):
    """Raised inside handlers to answer with an error in the provider's shape.

    Lets handlers bail out from any depth (auth, header parsing) while one
    exception handler decides the OpenAI or Anthropic error body.
    """

    def __init__(self, status: int, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message or f"HTTP {status}")
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True)
class _Settings:
    """Per-fake configuration, reachable from handlers through app state."""

    expected_key: str | None


# --------------------------------------------------------------------------- #
# Request recording
# --------------------------------------------------------------------------- #


class _RequestLog:
    """Thread-safe store of received requests.

    Appended to from the server thread, read and cleared from the test thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[ReceivedRequest] = []

    def append(self, item: ReceivedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _decode_headers(raw: list[tuple[bytes, bytes]] | Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name_bytes, value_bytes in raw:
        name = name_bytes.decode("latin-1").lower()
        value = value_bytes.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _try_json(body: bytes) -> Any | None:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


class _RecordingMiddleware:
    """Raw ASGI wrapper that records every HTTP request before routing.

    Sits outside Litestar so that requests to unknown routes (404) or with the
    wrong method (405) are recorded too: those are usually gateway bugs. It
    buffers the whole body first, then replays it to the app.
    """

    def __init__(self, app: ASGIApp, log: _RequestLog) -> None:
        self._app = app
        self._log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        messages, body = await _drain_body(receive)
        headers = _decode_headers(scope["headers"])
        if _PROBE_HEADER not in headers:
            self._log.append(
                ReceivedRequest(
                    method=scope["method"],
                    path=scope["path"],
                    headers=headers,
                    body=body,
                    json=_try_json(body),
                )
            )
        await self._app(scope, _replaying(messages, receive), send)


async def _drain_body(receive: Receive) -> tuple[list[ReceiveMessage], bytes]:
    """Read request messages until the body is complete or the client left."""
    messages: list[ReceiveMessage] = []
    body = bytearray()
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return messages, bytes(body)


def _replaying(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """A ``receive`` that returns the buffered messages, then the live ones."""
    pending = list(messages)

    async def replay() -> ReceiveMessage:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


# --------------------------------------------------------------------------- #
# Error shapes, auth and control headers
# --------------------------------------------------------------------------- #


def _dialect_for(path: str) -> Dialect:
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def _openai_error_body(status: int, message: str | None, code: str | None) -> dict[str, Any]:
    default_type = "invalid_request_error" if status < 500 else "server_error"
    err_type, default_code, default_message = _OPENAI_ERRORS.get(
        status, (default_type, None, f"Simulated HTTP {status} from FakeProvider.")
    )
    return {
        "error": {
            "message": message or default_message,
            "type": err_type,
            "param": None,
            "code": code if code is not None else default_code,
        }
    }


def _anthropic_error_body(status: int, message: str | None) -> dict[str, Any]:
    err_type = _ANTHROPIC_ERRORS.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {
        "type": "error",
        "error": {"type": err_type, "message": message or f"Simulated HTTP {status} from FakeProvider."},
    }


def _error_response(dialect: Dialect, error: _FakeUpstreamError) -> Response[Any]:
    if dialect == "anthropic":
        body = _anthropic_error_body(error.status, error.message)
    else:
        body = _openai_error_body(error.status, error.message, error.code)
    return _json_response(dialect, body, status=error.status)


def _handle_fake_error(request: Request[Any, Any, Any], exc: _FakeUpstreamError) -> Response[Any]:
    return _error_response(_dialect_for(request.url.path), exc)


def _request_id_header(dialect: Dialect) -> dict[str, str]:
    # Both providers return a request id; gateways commonly log or forward it.
    name = "request-id" if dialect == "anthropic" else "x-request-id"
    return {name: f"req_{secrets.token_hex(12)}"}


def _json_response(dialect: Dialect, body: Mapping[str, Any], *, status: int = 200) -> Response[Any]:
    return Response(
        content=json.dumps(body).encode(),
        status_code=status,
        media_type="application/json",
        headers=_request_id_header(dialect),
    )


def _bearer_token(request: Request[Any, Any, Any]) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _check_auth(request: Request[Any, Any, Any], dialect: Dialect, expected_key: str | None) -> None:
    """Reject like the real APIs do: missing credentials, or (optionally) the wrong key."""
    if dialect == "anthropic":
        _check_anthropic_auth(request, expected_key)
        return
    key = _bearer_token(request)
    if not key:
        raise _FakeUpstreamError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if expected_key is not None and key != expected_key:
        raise _FakeUpstreamError(401, f"Incorrect API key provided: {_mask_key(key)}.", code="invalid_api_key")


def _check_anthropic_auth(request: Request[Any, Any, Any], expected_key: str | None) -> None:
    """Accept ``x-api-key`` or ``Authorization: Bearer``.

    The anthropic SDK 2.x sends ``api_key`` as ``Authorization: Bearer`` (older
    SDKs and curl examples use ``x-api-key``), so both must work. With
    ``expected_key`` every credential present must match, so a gateway that
    forwards the client's key next to the upstream key is caught.
    """
    keys = [k for k in (request.headers.get("x-api-key", "").strip(), _bearer_token(request)) if k]
    if not keys:
        raise _FakeUpstreamError(401, "x-api-key header is required")
    if expected_key is not None and any(k != expected_key for k in keys):
        raise _FakeUpstreamError(401, "invalid x-api-key")


def _mask_key(key: str) -> str:
    return key if len(key) <= 8 else f"{key[:4]}***{key[-4:]}"


def _forced_status(request: Request[Any, Any, Any]) -> int | None:
    raw = request.headers.get(STATUS_HEADER)
    if raw is None:
        return None
    try:
        status = int(raw)
    except ValueError:
        status = 0
    if not 400 <= status <= 599:
        raise _FakeUpstreamError(400, f"{STATUS_HEADER} must be an integer 400-599, got {raw!r}")
    return status


def _delay_seconds(request: Request[Any, Any, Any]) -> float:
    raw = request.headers.get(DELAY_HEADER)
    if raw is None:
        return 0.0
    try:
        millis = float(raw)
    except ValueError:
        millis = -1.0
    if millis < 0:
        raise _FakeUpstreamError(400, f"{DELAY_HEADER} must be a non-negative number, got {raw!r}")
    return millis / 1000


def _usage_overrides(request: Request[Any, Any, Any], defaults: Mapping[str, int]) -> dict[str, int]:
    """Merge ``x-fake-usage`` over the route's defaults.

    Unknown keys and non-integer values are rejected with a 400, so a typo in a
    test shows up as a failure instead of silently reporting default usage.
    """
    raw = request.headers.get(USAGE_HEADER)
    if raw is None:
        return dict(defaults)
    try:
        overrides = json.loads(raw)
    except ValueError as exc:
        raise _FakeUpstreamError(400, f"{USAGE_HEADER} is not valid JSON: {exc}") from exc
    if not isinstance(overrides, dict):
        raise _FakeUpstreamError(400, f"{USAGE_HEADER} must be a JSON object")
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise _FakeUpstreamError(400, f"{USAGE_HEADER} has unknown keys {unknown}; allowed: {sorted(defaults)}")
    for name, value in overrides.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _FakeUpstreamError(400, f"{USAGE_HEADER}.{name} must be a non-negative integer")
    return {**defaults, **overrides}


async def _read_json_object(request: Request[Any, Any, Any]) -> dict[str, Any]:
    body = _try_json(await request.body())
    if not isinstance(body, dict):
        raise _FakeUpstreamError(400, "Request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _FakeUpstreamError(400, "you must provide a model parameter")
    return body


async def _admit(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Common gate for provider routes: delay, auth, forced failure, body.

    The order mirrors a real upstream: latency is paid even by failures, auth is
    checked before anything else, and a forced status wins over a valid body.
    """
    settings: _Settings = request.app.state.settings
    dialect = _dialect_for(request.url.path)
    delay = _delay_seconds(request)
    if delay:
        await asyncio.sleep(delay)
    _check_auth(request, dialect, settings.expected_key)
    status = _forced_status(request)
    if status is not None:
        raise _FakeUpstreamError(status)
    return await _read_json_object(request)


# --------------------------------------------------------------------------- #
# Payload builders (pure functions, so they are easy to read against the docs)
# --------------------------------------------------------------------------- #


_ID_ALPHABET: Final = string.ascii_letters + string.digits


def _random_id(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _snapshot_model(model: str) -> str:
    return MODEL_SNAPSHOTS.get(model, model)


def _openai_chat_usage(usage: Mapping[str, int]) -> dict[str, Any]:
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        "prompt_tokens_details": {"cached_tokens": usage["cached_tokens"], "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage["reasoning_tokens"],
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _openai_chat_completion(model: str, usage: Mapping[str, int]) -> dict[str, Any]:
    return {
        "id": _random_id("chatcmpl-", 29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _snapshot_model(model),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": RESPONSE_TEXT, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _openai_chat_usage(usage),
        "service_tier": "default",
        "system_fingerprint": _SYSTEM_FINGERPRINT,
    }


def _openai_chunks(model: str, usage: Mapping[str, int], include_usage: bool) -> list[dict[str, Any]]:
    """The chunk sequence OpenAI streams for one completion.

    With ``include_usage`` every chunk carries ``"usage": null`` and a final
    chunk with empty ``choices`` carries the totals; without it, no usage key.
    """
    base: dict[str, Any] = {
        "id": _random_id("chatcmpl-", 29),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": _snapshot_model(model),
        "service_tier": "default",
        "system_fingerprint": _SYSTEM_FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        extra = {"usage": None} if include_usage else {}
        return {**base, "choices": [choice], **extra}

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    chunks += [chunk({"content": piece}, None) for piece in STREAM_PIECES]
    chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _openai_chat_usage(usage)})
    return chunks


def _openai_sse(chunks: list[dict[str, Any]]) -> list[bytes]:
    frames = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks]
    return [*frames, b"data: [DONE]\n\n"]


def _embedding_vector(index: int, dimensions: int) -> list[float]:
    # Values exactly representable in float32, so base64 round-trips exactly.
    return [((index + 1) * (i + 1) % 16) / 16 - 0.5 for i in range(dimensions)]


def _encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    # The OpenAI SDK asks for base64 by default and decodes float32 itself.
    if encoding_format == "base64":
        return base64.b64encode(array.array("f", vector).tobytes()).decode()
    return vector


def _embedding_input_count(value: Any) -> int:
    """How many embeddings the ``input`` asks for (string, tokens, or a batch)."""
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1


def _openai_embeddings(body: Mapping[str, Any], usage: Mapping[str, int]) -> dict[str, Any]:
    dimensions = body.get("dimensions")
    if not isinstance(dimensions, int) or dimensions <= 0:
        dimensions = _EMBEDDING_DIMENSIONS
    encoding_format = body.get("encoding_format") or "float"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _encode_embedding(_embedding_vector(i, dimensions), encoding_format),
        }
        for i in range(_embedding_input_count(body.get("input")))
    ]
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["prompt_tokens"]},
    }


def _openai_response(model: str, usage: Mapping[str, int]) -> dict[str, Any]:
    return {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": _snapshot_model(model),
        "output": [
            {
                "type": "message",
                "id": "msg_" + secrets.token_hex(24),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": RESPONSE_TEXT, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": usage["input_tokens"],
            "input_tokens_details": {"cached_tokens": usage["cached_tokens"]},
            "output_tokens": usage["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": usage["reasoning_tokens"]},
            "total_tokens": usage["input_tokens"] + usage["output_tokens"],
        },
        "user": None,
        "metadata": {},
    }


def _anthropic_message(model: str, usage: Mapping[str, int]) -> dict[str, Any]:
    return {
        "id": _random_id("msg_01", 22),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": RESPONSE_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage["input_tokens"],
            "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
            "cache_read_input_tokens": usage["cache_read_input_tokens"],
            "output_tokens": usage["output_tokens"],
        },
    }


def _anthropic_events(model: str, usage: Mapping[str, int]) -> list[dict[str, Any]]:
    """The event sequence Anthropic streams for one text reply.

    Input and cache counts arrive in ``message_start`` (with a provisional
    ``output_tokens: 1``); the final output count arrives in ``message_delta``.
    """
    start = _anthropic_message(model, usage)
    start.update(content=[], stop_reason=None)
    start["usage"] = {**start["usage"], "output_tokens": 1}
    deltas = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        for piece in STREAM_PIECES
    ]
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *deltas,
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
        {"type": "message_stop"},
    ]


def _anthropic_sse(events: list[dict[str, Any]]) -> list[bytes]:
    return [f"event: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n".encode() for e in events]


def _chunk_gap_s(request: Request[Any, Any, Any]) -> float:
    raw = request.headers.get("x-fake-chunk-gap-ms")
    return int(raw) / 1000 if raw and raw.isdigit() else _STREAM_WRITE_GAP_S


def _sse_response(dialect: Dialect, frames: list[bytes], gap_s: float = _STREAM_WRITE_GAP_S) -> Stream:
    """Stream frames as separate writes, so clients see real chunk boundaries."""

    async def paced() -> AsyncIterator[bytes]:
        for i, frame in enumerate(frames):
            if i:
                await asyncio.sleep(gap_s)
            yield frame

    return Stream(
        paced(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", **_request_id_header(dialect)},
    )


# --------------------------------------------------------------------------- #
# Routes
# --------------------------------------------------------------------------- #


@get("/health", sync_to_thread=False)
def _health() -> dict[str, str]:
    return {"status": "ok"}


@post("/v1/chat/completions", status_code=200)
async def _chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
    body = await _admit(request)
    usage = _usage_overrides(request, _OPENAI_CHAT_USAGE)
    if not body.get("stream"):
        return _json_response("openai", _openai_chat_completion(body["model"], usage))
    stream_options = body.get("stream_options") or {}
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return _sse_response("openai", _openai_sse(_openai_chunks(body["model"], usage, include_usage)), _chunk_gap_s(request))


@post("/v1/embeddings", status_code=200)
async def _embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
    body = await _admit(request)
    usage = _usage_overrides(request, _OPENAI_EMBEDDING_USAGE)
    return _json_response("openai", _openai_embeddings(body, usage))


@post("/v1/responses", status_code=200)
async def _responses(request: Request[Any, Any, Any]) -> Response[Any]:
    body = await _admit(request)
    usage = _usage_overrides(request, _OPENAI_RESPONSES_USAGE)
    if body.get("stream"):
        # Fail loudly rather than answer a stream request with JSON.
        raise _FakeUpstreamError(400, "FakeProvider does not implement streaming for /v1/responses.")
    return _json_response("openai", _openai_response(body["model"], usage))


@post("/v1/messages", status_code=200)
async def _messages(request: Request[Any, Any, Any]) -> Response[Any]:
    body = await _admit(request)
    usage = _usage_overrides(request, _ANTHROPIC_USAGE)
    if not body.get("stream"):
        return _json_response("anthropic", _anthropic_message(body["model"], usage))
    return _sse_response("anthropic", _anthropic_sse(_anthropic_events(body["model"], usage)), _chunk_gap_s(request))


def _build_app(settings: _Settings, log: _RequestLog) -> ASGIApp:
    app = Litestar(
        route_handlers=[_health, _chat_completions, _embeddings, _responses, _messages],
        exception_handlers={_FakeUpstreamError: _handle_fake_error},
        state=State({"settings": settings}),
        openapi_config=None,
        # Leave the test process's logging configuration alone.
        logging_config=None,
    )
    return _RecordingMiddleware(app, log)


# --------------------------------------------------------------------------- #
# Server lifecycle
# --------------------------------------------------------------------------- #


class FakeProvider:
    """Fake OpenAI + Anthropic upstream served by uvicorn on 127.0.0.1.

    The server runs in a daemon thread with its own event loop so that it works
    the same from sync tests and from async tests (whose loop it never shares).
    """

    def __init__(self, expected_key: str | None = None) -> None:
        """Create a stopped fake.

        Args:
            expected_key: If set, any API key other than this one gets a 401,
                which lets tests prove the gateway swaps in the upstream key.
                If None, any non-empty key is accepted.
        """
        self._settings = _Settings(expected_key=expected_key)
        self._log = _RequestLog()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._thread_error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------- #

    def start(self) -> FakeProvider:
        """Start serving; return once the server answers its health route."""
        if self._thread is not None:
            raise RuntimeError("FakeProvider is already running")
        # Binding the socket ourselves gives a free port with no pick-then-bind race.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            _build_app(self._settings, self._log),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread_error = None
        self._thread = threading.Thread(target=self._serve, name=f"FakeProvider:{self._port}", daemon=True)
        self._thread.start()
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving and wait for the server thread to finish. Idempotent."""
        thread, server = self._thread, self._server
        if thread is not None and server is not None:
            server.should_exit = True
            thread.join(_SHUTDOWN_TIMEOUT_S)
            if thread.is_alive():
                server.force_exit = True
                thread.join(_SHUTDOWN_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
        self._thread = self._server = self._socket = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        assert self._server is not None and self._socket is not None
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._socket]))
        except BaseException as exc:  # surfaced by start() instead of dying silently
            self._thread_error = exc
        finally:
            loop.close()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        # trust_env=False: a proxy from the environment must not intercept loopback.
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline:
                self._raise_if_thread_died()
                if self._health_ok(client):
                    return
                time.sleep(0.01)
        raise TimeoutError(f"FakeProvider did not become ready within {_STARTUP_TIMEOUT_S}s")

    def _health_ok(self, client: httpx.Client) -> bool:
        try:
            response = client.get(f"{self.base_url}/health", headers={_PROBE_HEADER: "1"})
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def _raise_if_thread_died(self) -> None:
        if self._thread is not None and not self._thread.is_alive():
            raise RuntimeError("FakeProvider server thread exited during startup") from self._thread_error

    # -- addresses ---------------------------------------------------------- #

    @property
    def port(self) -> int:
        """The bound TCP port; fixed from ``start()`` until the next ``start()``."""
        if self._port is None:
            raise RuntimeError("FakeProvider has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """What ``openai.OpenAI(base_url=...)`` expects: the root plus ``/v1``."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """What ``anthropic.Anthropic(base_url=...)`` expects: the root (it adds ``/v1``)."""
        return self.base_url

    # -- recorded requests -------------------------------------------------- #

    @property
    def requests(self) -> list[ReceivedRequest]:
        """A snapshot copy of every request received so far, oldest first."""
        return self._log.snapshot()

    @property
    def last_request(self) -> ReceivedRequest:
        """The most recent request; raises LookupError if there is none."""
        received = self._log.snapshot()
        if not received:
            raise LookupError("FakeProvider has not received any request")
        return received[-1]

    def clear(self) -> None:
        """Forget all recorded requests."""
        self._log.clear()
