"""The usage event: the one contract between the gateway and the pricer.

Rules for changing it (the topic outlives any deploy):
- only ever add fields, each with a default, so an old pricer can read a new event and a new
  pricer can read an old one;
- bump ``SCHEMA_VERSION`` when a field is added, and teach the pricer the new version before
  any gateway emits it;
- never add a field that could carry prompt or response text or a provider key.

Token convention (the gateway normalises every provider to it, so pricing is provider-agnostic):
``input_tokens`` counts every input token the provider billed, *including* cache reads and
cache writes; ``cache_read_tokens`` and ``cache_write_tokens`` say how many of them were served
from or written to the prompt cache. ``output_tokens`` includes ``reasoning_tokens``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

SCHEMA_VERSION = 1

Provider = Literal["openai", "anthropic"]

# What happened to the call, from the caller's point of view.
CallStatus = Literal[
    "ok",  # upstream answered 2xx
    "upstream_error",  # upstream answered 4xx/5xx; passed through to the caller
    "unreachable",  # could not connect upstream (502 to the caller)
    "timeout",  # upstream did not answer in time (504 to the caller)
    "client_disconnected",  # the caller went away mid-stream
    "recorded",  # usage reported through the record API, not proxied
]


class UsageEvent(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=False, gc=False):
    """One metered call. Published once by the gateway, keyed by ``org_id``.

    ``gc=False``: an event holds only strings, numbers and tuples of strings, so it can never be
    part of a reference cycle; keeping the pricer's tens of thousands of in-flight events out of
    the cyclic collector's sight saves it from walking them on every collection. The tags are
    tuples, not lists, for the same reason: an empty tuple is shared and a filled one leaves the
    collector's sight after its first pass, where two lists per event were 40k more objects for
    it to walk per 20k-event batch, on every pass, for as long as the batch lived."""

    schema_version: int = SCHEMA_VERSION
    event_id: str  # assigned once at the gateway; the exactly-once identity of the call
    request_id: str  # the upstream's request id where it sent one, else our own
    org_id: str
    team_id: str = ""
    key_id: str = ""
    provider: Provider
    route: str  # e.g. "chat/completions", "messages"
    model_requested: str = ""
    model: str = ""  # as returned by the provider (often a dated snapshot)
    started_at: datetime  # UTC, when the gateway received the call
    latency_ms: float = 0.0  # until the last byte went to the caller
    ttft_ms: float | None = None  # time to first streamed chunk
    status: CallStatus = "ok"
    http_status: int = 200
    streamed: bool = False
    sandbox: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    usage_reported: bool = True  # False when the response carried no usage at all
    prompt_key: str = ""
    prompt_version: int | None = None  # None: attribute to the version active at started_at
    feature_tags: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # "key:value" tags
    customer_id: str = ""
    feature: str = ""
    user: str = ""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageEvent)


def encode_event(event: UsageEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(payload: bytes) -> UsageEvent:
    """Decode and validate one raw event; raises ``msgspec.ValidationError``/``DecodeError``."""
    return _decoder.decode(payload)
