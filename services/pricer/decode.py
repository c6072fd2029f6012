"""Step 1 of the chain: bytes from Kafka to a validated ``UsageEvent``. Pure, non-blocking.

What cannot be decoded is *poison*: it goes to the dead-letter topic with the reason, and never
stops the partition behind it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import msgspec

from schemas.events import SCHEMA_VERSION, UsageEvent, decode_event


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class _Envelope(msgspec.Struct):
    schema_version: int = SCHEMA_VERSION


_envelope = msgspec.json.Decoder(_Envelope)


@dataclass(frozen=True)
class Poison:
    reason: str


def _unsupported(version: int) -> Poison:
    return Poison(f"unsupported schema version {version} (this pricer reads up to {SCHEMA_VERSION})")


def _too_new(payload: bytes) -> Poison | None:
    """For a payload that did not decode: the version reason, when it names a newer schema."""
    try:
        version = _envelope.decode(payload).schema_version
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return _unsupported(version) if version > SCHEMA_VERSION else None


def decode(payload: bytes | None) -> UsageEvent | Poison:
    if not payload:
        return Poison("empty message")
    try:
        event = decode_event(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        # A newer event may not fit this pricer's struct, and then "too new" is the reason worth
        # reporting, not the field that did not fit. Read only when decoding failed: the
        # envelope costs a second parse, a third of the decode of every good event.
        return _too_new(payload) or Poison(f"undecodable: {exc}")
    if event.schema_version > SCHEMA_VERSION:
        return _unsupported(event.schema_version)
    if not _CANONICAL_UUID.fullmatch(event.event_id):  # the gateway's form; anything else is checked slowly
        try:
            event.event_id = str(uuid.UUID(event.event_id))
        except ValueError:
            return Poison(f"event_id is not a UUID: {event.event_id[:64]!r}")
    if not event.org_id:
        return Poison("org_id is empty")
    if event.started_at.tzinfo is None:
        return Poison("started_at has no timezone")
    return event
