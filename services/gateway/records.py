"""``POST /v1/usage/record``: usage that did not go through the proxy (batch jobs, other SDKs,
self-hosted models priced like a provider's), published as a usage event like proxied usage.

Idempotent on ``transactionId``: the event id is derived from the organisation and the
transaction id, so a retried record is the same event and the pricer stores it once.
The cost in the answer is an estimate from the published catalog (the gateway does not read the
organisation's price overrides); the stored cost is the pricer's.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated, Literal

import msgspec

from litestar import Request, Response

from schemas.events import UsageEvent
from services.gateway.auth import AuthUnavailable, Caller, GatewayAuth
from services.gateway.publisher import EventPublisher
from services.pricer.catalog import Catalog, provider_of
from services.pricer.pricing import price

_NAMESPACE = uuid.UUID("0b6f0d2a-5b3e-4d59-9a47-6d2b8f3c1e77")
Count = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RecordIn(msgspec.Struct, forbid_unknown_fields=True):
    """``inputTokens`` counts every input token, ``cachedTokens`` of them read from a cache."""

    transactionId: Text
    modelId: Text
    inputTokens: Count = 0
    outputTokens: Count = 0
    cachedTokens: Count = 0
    accountId: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    context: Literal["system", "customer"] | None = None
    usageType: Annotated[str, msgspec.Meta(max_length=64)] = "inference"
    provider: Literal["openai", "anthropic"] | None = None
    timestamp: datetime | None = None


class RecordError(ValueError):
    pass


_decoder = msgspec.json.Decoder(RecordIn)


def parse(body: bytes) -> RecordIn:
    try:
        record = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RecordError(str(exc)) from None
    if record.cachedTokens > record.inputTokens:
        raise RecordError("cachedTokens cannot exceed inputTokens")
    if not record.accountId and record.context != "system":
        raise RecordError("either accountId or context: \"system\" is required")
    if record.timestamp is not None and record.timestamp.tzinfo is None:
        raise RecordError("timestamp must carry a timezone (e.g. 2026-03-01T12:00:00Z)")
    return record


def to_event(record: RecordIn, caller: Caller) -> UsageEvent:
    provider = record.provider or provider_of(record.modelId)
    if provider is None:
        raise RecordError(f"unknown model {record.modelId!r}: pass provider (openai or anthropic)")
    context = record.context or ("customer" if record.accountId else "system")
    event_id = uuid.uuid5(_NAMESPACE, f"{caller.org_id}:{record.transactionId}")
    return UsageEvent(
        event_id=str(event_id),
        request_id=record.transactionId,
        org_id=caller.org_id,
        team_id=caller.team_id,
        key_id=caller.key_id,
        provider=provider,  # type: ignore[arg-type]
        route="usage/record",
        model_requested=record.modelId,
        model=record.modelId,
        started_at=(record.timestamp or datetime.now(timezone.utc)).astimezone(timezone.utc),
        status="recorded",
        input_tokens=record.inputTokens,
        output_tokens=record.outputTokens,
        cache_read_tokens=record.cachedTokens,
        customer_id=record.accountId or "",
        tags=(f"context:{context}", f"usage_type:{record.usageType}"),
    )


def answer(event: UsageEvent) -> dict[str, object]:
    cost = price(event, Catalog()).cost.total
    return {
        "success": True,
        "usageRecord": {
            "id": event.event_id,
            "accountId": event.customer_id or None,
            "modelId": event.model,
            "estimatedCostUsd": cost,
        },
    }


_encoder = msgspec.json.Encoder(decimal_format="number")
MAX_RECORD_BYTES = 64 * 1024


def _reply(status: int, content: dict[str, object]) -> Response:
    return Response(content=_encoder.encode(content), status_code=status, media_type="application/json")


async def handle(request: Request, auth: GatewayAuth, publisher: EventPublisher, platform_key: str | None) -> Response:
    if platform_key is None:
        return _reply(401, {"success": False, "error": "missing key: send Authorization: Bearer <key> or X-API-Key"})
    try:
        caller = await auth.resolve(platform_key)
    except AuthUnavailable as exc:
        return _reply(503, {"success": False, "error": str(exc)})
    if caller is None:
        return _reply(401, {"success": False, "error": "unknown or revoked key"})
    body = await request.body()
    if len(body) > MAX_RECORD_BYTES:
        return _reply(413, {"success": False, "error": f"a usage record is at most {MAX_RECORD_BYTES} bytes"})
    try:
        event = to_event(parse(body), caller)
    except RecordError as exc:
        return _reply(400, {"success": False, "error": str(exc)})
    publisher.publish(event)
    return _reply(200, answer(event))
