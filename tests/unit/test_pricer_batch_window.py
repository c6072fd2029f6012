"""The pricer's pending batch and how long and how much it polls for (services/pricer/consumer.py):
pure bookkeeping, no broker or store involved."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from schemas.events import UsageEvent
from services.common.settings import KafkaSettings, load_settings
from services.pricer.consumer import POLL_MAX_RECORDS, Pricer, _Pending


def _event(i: int) -> UsageEvent:
    return UsageEvent(event_id=f"00000000-0000-4000-8000-{i:012d}", request_id=f"r{i}", org_id="o", provider="openai",
                      route="chat/completions", started_at=datetime(2026, 3, 14, tzinfo=timezone.utc))


def _pricer(batch: int, wait_s: float = 0.5) -> Pricer:
    settings = load_settings({"METERLINE_BATCH_MAX_EVENTS": str(batch), "METERLINE_BATCH_MAX_WAIT": str(wait_s)})
    return Pricer(None, KafkaSettings(bootstrap="unused:9092"), settings.pricer, "unused:9092")  # type: ignore[arg-type]


def _fill(pending: _Pending, partition: int, offsets: range, opened_at: float) -> None:
    pending.events.setdefault(partition, []).extend((o, _event(o)) for o in offsets)
    pending.last_offset[partition] = offsets[-1]
    pending.count += len(offsets)
    pending.opened_at = opened_at


def test_a_batch_emptied_by_a_revoke_closes_its_window() -> None:
    pending = _Pending()
    _fill(pending, 0, range(10), time.monotonic())
    _fill(pending, 1, range(5), time.monotonic())
    pending.drop_partitions({0})
    assert pending.count == 5 and pending.opened_at is not None  # still waiting for partition 1's
    pending.drop_partitions({1})
    assert pending.count == 0 and pending.opened_at is None


def test_an_empty_batch_polls_with_a_timeout_not_at_once() -> None:
    """A window left open on an empty batch made every later poll return at once, empty: the
    consume loop then spun without ever yielding to the event loop."""
    pricer = _pricer(batch=100, wait_s=0.2)
    pricer._pending.opened_at = time.monotonic() - 5  # long past its window, with nothing in it
    assert pricer._poll_timeout_ms() == 500
    _fill(pricer._pending, 0, range(3), time.monotonic() - 5)
    assert pricer._poll_timeout_ms() == 0  # a batch past its window is due now


def test_a_poll_asks_for_no_more_than_the_batch_has_room_for() -> None:
    pricer = _pricer(batch=5_000)
    assert pricer._poll_size() == POLL_MAX_RECORDS
    _fill(pricer._pending, 0, range(4_000), time.monotonic())
    assert pricer._poll_size() == 1_000  # a backlog fills batches of exactly 5,000
    _fill(pricer._pending, 1, range(1_000), time.monotonic())
    assert pricer._poll_size() == 1  # full (and due): aiokafka needs a positive number
