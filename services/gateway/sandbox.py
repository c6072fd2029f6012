"""``X-Sandbox: true``: a realistic simulated response, streamed when asked, without calling
the provider. Its usage is estimated (prompt tokens counted with the model's BPE encoding where
known, o200k otherwise), and its event is flagged sandbox."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from services.common import tokens

REPLY = "This is a simulated response from the Meterline sandbox."
_PIECES = ["This is a simulated", " response from the", " Meterline sandbox."]
_encode = msgspec.json.encode


def model_of(body: dict[str, Any]) -> str:
    return str(body.get("model", ""))


async def prepare(body: dict[str, Any]) -> None:
    """Before a reply is built: the model's encoding ready, loaded off the event loop the first
    time (seconds), so that building the reply never holds the loop."""
    await tokens.prepare(model_of(body))


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    return tokens.estimate_prompt_tokens(model_of(body), body.get("messages"), body.get("system"))


def completion_tokens(model: str) -> int:
    return tokens.count(model, REPLY)


def openai_reply(body: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    model = model_of(body)
    prompt, completion = estimate_prompt_tokens(body), completion_tokens(model)
    return (
        {
            "id": f"chatcmpl-sandbox-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": REPLY}, "logprobs": None, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        },
        prompt,
        completion,
    )


def anthropic_reply(body: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    model = model_of(body)
    prompt, completion = estimate_prompt_tokens(body), completion_tokens(model)
    return (
        {
            "id": f"msg_sandbox_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": REPLY}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        },
        prompt,
        completion,
    )


async def openai_stream(reply: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    base = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"], "model": reply["model"]}
    extra = {"usage": None} if include_usage else {}
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], **extra}
    yield b"data: " + _encode(first) + b"\n\n"
    for piece in _PIECES:
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}], **extra}
        yield b"data: " + _encode(chunk) + b"\n\n"
    yield b"data: " + _encode({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra}) + b"\n\n"
    if include_usage:
        yield b"data: " + _encode({**base, "choices": [], "usage": reply["usage"]}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n"


async def anthropic_stream(reply: dict[str, Any]) -> AsyncIterator[bytes]:
    usage = reply["usage"]
    start = {**reply, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    yield _event("message_start", {"type": "message_start", "message": start})
    yield _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    for piece in _PIECES:
        yield _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
    yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": usage["output_tokens"]}})
    yield _event("message_stop", {"type": "message_stop"})
