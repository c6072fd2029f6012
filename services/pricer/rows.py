"""From a priced, attributed event to the ``usage_events`` row. Pure."""

from __future__ import annotations

from typing import Any

from services.pricer.pricing import PricedEvent


def to_row(priced: PricedEvent, prompt_version: int, topic: str, partition: int, offset: int) -> dict[str, Any]:
    e, c = priced.event, priced.cost
    return {
        "event_id": e.event_id,
        "request_id": e.request_id,
        "org_id": e.org_id,
        "team_id": e.team_id,
        "key_id": e.key_id,
        "provider": e.provider,
        "route": e.route,
        "model_requested": e.model_requested,
        "model": e.model or e.model_requested,
        "priced_model": priced.priced_model,
        "started_at": e.started_at,
        "latency_ms": e.latency_ms,
        "ttft_ms": e.ttft_ms,
        "status": e.status,
        "http_status": e.http_status,
        "streamed": e.streamed,
        "sandbox": e.sandbox,
        "usage_reported": e.usage_reported,
        # invalid counts are stored as reported where they fit, zero where they do not
        "input_tokens": max(e.input_tokens, 0),
        "output_tokens": max(e.output_tokens, 0),
        "cache_read_tokens": max(e.cache_read_tokens, 0),
        "cache_write_tokens": max(e.cache_write_tokens, 0),
        "reasoning_tokens": max(e.reasoning_tokens, 0),
        "input_cost": c.input,
        "cache_read_cost": c.cache_read,
        "cache_write_cost": c.cache_write,
        "output_cost": c.output,
        "total_cost": c.total,
        "pricing_status": priced.status,
        "price_source": priced.price_source,
        "prompt_key": e.prompt_key,
        "prompt_version": prompt_version,
        "feature_tags": e.feature_tags,
        "tags": e.tags,
        "customer_id": e.customer_id,
        "feature": e.feature,
        "user_id": e.user,
        "kafka_topic": topic,
        "kafka_partition": partition,
        "kafka_offset": offset,
    }
