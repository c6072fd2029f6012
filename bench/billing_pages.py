"""Billing export: is page 10,000 as fast as page 1?

Loads N calls (3 line items each) spread over 90 days into a fresh chDB directory through the
store's insert path, then times pages of 200 items at the start, middle and end of the window.

    python bench/billing_pages.py            # N = 700,000 calls: 2.1M items, page 10,000 exists
    python bench/billing_pages.py --quick    # N = 30,000, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from services.query.billing import Page, page
from services.query.params import Range
from services.store.chdb_store import ChdbStore
from services.store.migrations import migrate

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAYS = 90


def rows(org: str, first: int, count: int, total: int) -> list[dict]:
    span = DAYS * 86_400_000
    out = []
    for i in range(first, first + count):
        at = START + timedelta(milliseconds=i * span // total)
        out.append({
            "event_id": str(uuid.UUID(int=i + 1)), "request_id": f"req-{i}", "org_id": org, "provider": "openai",
            "model": "gpt-4o", "started_at": at, "status": "ok", "http_status": 200, "input_tokens": 1_000,
            "cache_read_tokens": 200, "output_tokens": 100, "input_cost": Decimal("0.002"),
            "cache_read_cost": Decimal("0.00025"), "output_cost": Decimal("0.001"), "total_cost": Decimal("0.00325"),
            "pricing_status": "priced",
        })
    return out


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = ChdbStore(Path(tmp))
        await migrate(store)
        org = "org-bench"
        t0 = time.perf_counter()
        for first in range(0, n, 100_000):
            await store.insert("usage_events", rows(org, first, min(100_000, n - first), n))
        load_s = time.perf_counter() - t0
        window = Range(START, START + timedelta(days=DAYS))
        items = 3 * n
        last = items // 200
        print(f"loaded {n:,} calls ({items:,} items) in {load_s:.1f}s")
        print(f"{'page':>10} {'order':>5} {'p50 ms':>8} {'max ms':>8}")
        for number in sorted({1, last // 2, min(10_000, last), last}):
            for order in ("asc", "desc"):
                times = []
                for _ in range(7):
                    t = time.perf_counter()
                    data, total = await page(store, Page(org, window, number, 200, order))
                    times.append((time.perf_counter() - t) * 1000)
                    assert len(data) == 200 and total == items, (len(data), total)
                print(f"{number:>10,} {order:>5} {statistics.median(times):>8.1f} {max(times):>8.1f}")
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls", type=int, default=None)
    args = parser.parse_args()
    asyncio.run(main(args.calls or (30_000 if args.quick else 700_000)))
