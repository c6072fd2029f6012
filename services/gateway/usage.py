"""Reading token usage out of provider responses, normalised to one convention. Pure.

The convention (see ``schemas.events``): ``input`` counts every input token billed, cache
reads and writes included. Providers differ, and this is the one place that knows it:
- OpenAI's ``prompt_tokens`` already include ``cached_tokens`` (cache reads); it has no
  separately billed cache writes;
- Anthropic's ``input_tokens`` exclude ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``: they are added here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec


@dataclass
class Usage:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0
    reported: bool = False
    model: str = ""
    request_id: str = ""


def _int(obj: Any, *path: str) -> int:
    for key in path:
        if not isinstance(obj, dict):
            return 0
        obj = obj.get(key)
    # bool is an int in Python, and no provider means True when it says a count
    return obj if isinstance(obj, int) and not isinstance(obj, bool) else 0


def openai_usage(body: dict[str, Any]) -> Usage:
    """Chat completions, embeddings (``prompt_tokens``) and the Responses API (``input_tokens``)."""
    u = body.get("usage")
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    if not isinstance(u, dict):
        return Usage(model=model)
    if "input_tokens" in u:  # Responses API naming
        return Usage(
            input=_int(u, "input_tokens"),
            output=_int(u, "output_tokens"),
            cache_read=_int(u, "input_tokens_details", "cached_tokens"),
            reasoning=_int(u, "output_tokens_details", "reasoning_tokens"),
            reported=True,
            model=model,
        )
    return Usage(
        input=_int(u, "prompt_tokens"),
        output=_int(u, "completion_tokens"),
        cache_read=_int(u, "prompt_tokens_details", "cached_tokens"),
        reasoning=_int(u, "completion_tokens_details", "reasoning_tokens"),
        reported=True,
        model=model,
    )


def anthropic_usage(body: dict[str, Any]) -> Usage:
    u = body.get("usage")
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    if not isinstance(u, dict):
        return Usage(model=model)
    read = _int(u, "cache_read_input_tokens")
    write = _int(u, "cache_creation_input_tokens")
    return Usage(
        input=_int(u, "input_tokens") + read + write,
        output=_int(u, "output_tokens"),
        cache_read=read,
        cache_write=write,
        reported=True,
        model=model,
    )


def usage_from_body(provider: str, body: bytes) -> Usage:
    """Usage of a non-streamed response; an undecodable body has none."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return Usage()
    if not isinstance(data, dict):
        return Usage()
    return openai_usage(data) if provider == "openai" else anthropic_usage(data)


_RESPONSES_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


class StreamUsage:
    """Accumulates usage from a stream's SSE events, one ``feed`` per complete event's data."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.usage = Usage()
        self._anthropic: dict[str, int] = {}

    def feed(self, data: dict[str, Any]) -> bool:
        """Take one event's JSON. Returns True when the event carried nothing but usage (OpenAI's
        final ``include_usage`` chunk), so the caller can hold it back from a client that did
        not ask for it."""
        if not self.usage.model and isinstance(data.get("model"), str):
            self.usage.model = data["model"]
        if self.provider == "openai":
            return self._feed_openai(data)
        self._feed_anthropic(data)
        return False

    def _feed_openai(self, data: dict[str, Any]) -> bool:
        if data.get("type") in _RESPONSES_FINAL_EVENTS and isinstance(data.get("response"), dict):
            # Responses API streams carry usage only in the final response object.
            self.usage = openai_usage(data["response"])
            return False
        if isinstance(data.get("usage"), dict):
            model = self.usage.model
            self.usage = openai_usage(data)
            self.usage.model = self.usage.model or model
            return data.get("choices") == []
        return False

    def _feed_anthropic(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "message_start" and isinstance(data.get("message"), dict):
            message = data["message"]
            if isinstance(message.get("model"), str):
                self.usage.model = message["model"]
            self._merge(message.get("usage"))
        elif kind == "message_delta":
            # Counts here are cumulative and supersede message_start's (output_tokens always;
            # input and cache counts too in newer API versions).
            self._merge(data.get("usage"))

    def _merge(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            if isinstance(usage.get(key), int):
                self._anthropic[key] = usage[key]
        model = self.usage.model
        self.usage = anthropic_usage({"usage": self._anthropic})
        self.usage.model = model
