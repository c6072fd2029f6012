"""Read paths of the query service over the real engine: keyset export batches and the
billing page locator."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

from services.pricer.catalog import Catalog
from services.pricer.pricing import price
from services.pricer.rows import to_row
from services.query import analytics
from services.query.billing import locate
from services.query.params import Range
from services.store.chdb_store import ChdbStore
from tests.integration.test_pricer_exactly_once import make_events

BASE = datetime(2026, 3, 14, 9, 0, tzinfo=timezone.utc)


async def test_export_walks_every_row_once_across_batches(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 25)
    for e in events[:10]:
        e.started_at = BASE  # ten calls in the same millisecond: the keyset must order by id too
    await store.insert("usage_events", [to_row(price(e, Catalog()), 0, "t", 0, i) for i, e in enumerate(events)])
    window = Range(BASE, BASE + timedelta(days=1))
    seen = [r["event_id"] async for batch in analytics.export_rows(store, org, window, model="", customer="", feature="",
                                                                  team="", batch=4) for r in batch]
    assert sorted(seen) == sorted(e.event_id for e in events) and len(seen) == len(set(seen))


def test_locate_finds_the_day_and_the_items_to_skip() -> None:
    counts = {date(2026, 1, 1): 5, date(2026, 1, 2): 0, date(2026, 1, 3): 7}
    assert locate(counts, 0, "asc") == (date(2026, 1, 1), 0)
    assert locate(counts, 4, "asc") == (date(2026, 1, 1), 4)
    assert locate(counts, 5, "asc") == (date(2026, 1, 3), 0)
    assert locate(counts, 11, "asc") == (date(2026, 1, 3), 6)
    assert locate(counts, 12, "asc") is None
    assert locate(counts, 0, "desc") == (date(2026, 1, 3), 0)
    assert locate(counts, 7, "desc") == (date(2026, 1, 1), 0)
