"""Pricer throughput against the raw limit measured in the same run.

Produces N usage events into a fresh topic of a Tansu broker, then measures, over a fresh chDB
directory with the real migrations:
  pricer     the real Pricer (decode, attribute, price, dedup check, record, insert, commit)
  raw limit  a plain consumer that decodes the same messages and inserts the same rows, unpriced,
             without attribution, dedup checks or insert records, committing after each insert;
             as the pricer does, it reads the next batch while one insert is in flight
events/s is counted from the first message consumed to the last offset committed. The CPU
time the process used over that window (its Python thread and chDB's threads) is measured too:
"per core" is events / max(wall seconds, CPU seconds), so a run that kept more than one core busy
is not credited with the extra cores. "loop CPU" is the CPU time of the event-loop thread alone:
fetching, decoding, attributing, pricing and encoding rows, without chDB's own insert work (which
runs in the store's threads). It is what a pricer process costs per event when ClickHouse is a
server, as in production, so "per loop core" is the pricer's own throughput per core; "chDB
us/ev" is the rest of the process's CPU per event, the embedded engine's. While the
pricer works through the backlog, a timer on its event loop records the longest pauses of the
loop: in `meterline up` the gateway shares that loop, and would answer nothing during them.

    python bench/pricer.py --quick        # N = 20,000
    python bench/pricer.py                # N = 1,000,000
    python bench/pricer.py --events 1000000

Standalone, it prints the table and writes bench/results/pricer.json; bench/run.py imports
`run(quick)` and `table(results)`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# the repository, for services and schemas; bench/ itself, for its sibling modules (run alone or by run.py)
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from schemas.events import UsageEvent, decode_event, encode_event  # noqa: E402
from services.common.broker import EmbeddedBroker  # noqa: E402
from services.common.kafka import ensure_topics  # noqa: E402
from services.common.settings import KafkaSettings, load_settings  # noqa: E402
from services.pricer.consumer import Pricer  # noqa: E402
from services.pricer.pricing import Cost, PricedEvent  # noqa: E402
from services.pricer.rows import to_row  # noqa: E402
from services.store.chdb_store import ChdbStore  # noqa: E402
from services.store.migrations import migrate  # noqa: E402

from percentiles import percentile  # noqa: E402

PARTITIONS = 6
EVENTS = {True: 20_000, False: 1_000_000}


def _cpu_s() -> float:
    """CPU seconds of this process so far, every thread included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
MODELS = [("openai", "gpt-4o-2024-08-06"), ("openai", "gpt-4o-mini-2024-07-18"), ("anthropic", "claude-sonnet-4-5")]


def events(n: int) -> list[UsageEvent]:
    # Dated after the pricer's state loads, as live traffic is: then every flush reloads prices
    # and prompts (an override or activation made before an event must apply to it), the cost
    # a pricer pays in production. Events from the past would skip those reloads.
    start = datetime.now(timezone.utc) + timedelta(hours=1)
    out = []
    for i in range(n):
        provider, model = MODELS[i % len(MODELS)]
        out.append(UsageEvent(
            event_id=str(uuid.uuid4()), request_id=f"req-{i}", org_id=f"org-{i % 20}", team_id=f"team-{i % 50}",
            key_id=f"key-{i % 500}", provider=provider, route="chat/completions", model=model, model_requested=model,
            started_at=start + timedelta(milliseconds=i * 10), latency_ms=420.0, input_tokens=1_000 + i % 500,
            output_tokens=200 + i % 100, cache_read_tokens=(i % 4) * 100, prompt_key=f"prompt-{i % 200}" if i % 3 else "",
            customer_id=f"cust-{i % 1000}", feature="chat" if i % 2 else "search", tags=("env:prod",),
        ))
    return out


async def produce(bootstrap: str, topic: str, evs: list[UsageEvent]) -> dict[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1_048_576)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=e.org_id.encode(), value=encode_event(e)) for e in evs]
        ends: dict[int, int] = {}
        for md in await asyncio.gather(*futures):
            ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
        return ends
    finally:
        await producer.stop()


class LoopLag:
    """How late a timer every ``TICK_S`` fires: the longest stretches in which the event loop ran
    nothing else. In ``meterline up`` the gateway and the query service share the pricer's loop,
    so these are pauses they would see. A pause is reported up to ``TICK_S`` short (it may begin
    just after a tick), never long. A pause has two causes: work on the loop that does not yield,
    or the loop's thread waiting for a core or for the GIL (chDB's inserts and merges run on the
    same two cores). The CPU time the loop's thread used during each pause tells them apart:
    ``held`` counts only what it ran. The ticks cost the loop about 2 ms a second."""

    TICK_S = 0.01

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self.held_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, cpu = loop.time() + self.TICK_S, time.thread_time()
            await asyncio.sleep(self.TICK_S)
            late_ms = max(0.0, (loop.time() - due) * 1000)
            self.lags_ms.append(late_ms)
            self.held_ms.append(min(late_ms, (time.thread_time() - cpu) * 1000))

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    def stop(self) -> dict[str, float]:
        assert self._task is not None
        self._task.cancel()
        lags, held = sorted(self.lags_ms) or [0.0], sorted(self.held_ms) or [0.0]
        return {"max_ms": round(lags[-1], 1), "p999_ms": round(percentile(lags, 0.999), 1),
                "over_50_ms": sum(lag > 50 for lag in lags),
                "held_max_ms": round(held[-1], 1), "held_over_50_ms": sum(h > 50 for h in held)}


async def run_pricer(store: ChdbStore, bootstrap: str, topic: str, ends: dict[int, int]) -> tuple[float, float, float, dict]:
    settings = load_settings({"METERLINE_PRICER_GROUP": f"bench-{uuid.uuid4().hex[:6]}"})
    pricer = Pricer(store, KafkaSettings(bootstrap=bootstrap, raw_topic=topic, dlq_topic=f"{topic}.dlq"), settings.pricer, bootstrap)
    await pricer.start()
    task = asyncio.create_task(pricer.run())
    lag = LoopLag()
    lag.start()
    started = None
    cpu0, loop0 = _cpu_s(), time.thread_time()
    while not all(pricer.committed.get(p, 0) >= e for p, e in ends.items()):
        if started is None and (pricer.committed or pricer._pending.count):  # noqa: SLF001 - first consume
            started, cpu0, loop0 = time.perf_counter(), _cpu_s(), time.thread_time()
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    elapsed, cpu = time.perf_counter() - (started or time.perf_counter()), _cpu_s() - cpu0
    loop_cpu = time.thread_time() - loop0
    loop_lag = lag.stop()
    pricer.stop()
    await task
    await pricer.close()
    return elapsed, cpu, loop_cpu, {"loop_lag": loop_lag}


async def run_raw(store: ChdbStore, bootstrap: str, topic: str, ends: dict[int, int], batch: int = 20_000) -> tuple[float, float, float, dict]:
    """The same topic into the same table with nothing but decoding in between. Written as the
    pricer writes: one insert per batch over every partition in it, applied and committed by a
    task while the next batch is read, one write in flight at a time."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4().hex[:6]}",
                                enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=batch)
    await consumer.start()
    started = None
    cpu0, loop0 = _cpu_s(), time.thread_time()
    done: dict[int, int] = {}  # committed
    read: dict[int, int] = {}

    async def write(rows: list, token: str, offsets: dict) -> None:
        await store.insert("usage_events", rows, dedup_token=token)
        await consumer.commit(offsets)
        for tp, offset in offsets.items():
            done[tp.partition] = offset

    writing: asyncio.Task[None] | None = None
    try:
        while not all(done.get(p, 0) >= e for p, e in ends.items()):
            records = await consumer.getmany(timeout_ms=200, max_records=batch)
            if not records:
                continue
            if started is None:
                started, cpu0, loop0 = time.perf_counter(), _cpu_s(), time.thread_time()
            rows = [to_row(PricedEvent(decode_event(m.value), Cost(), "priced"), 0, topic, tp.partition, m.offset)
                    for tp, messages in sorted(records.items()) for m in messages]
            firsts = "+".join(f"{tp.partition}:{ms[0].offset}" for tp, ms in sorted(records.items()))
            if writing is not None:
                await writing
            offsets = {tp: ms[-1].offset + 1 for tp, ms in records.items()}
            writing = asyncio.create_task(write(rows, f"raw:{firsts}", offsets))
            read.update({tp.partition: offset for tp, offset in offsets.items()})
            if all(read.get(p, 0) >= e for p, e in ends.items()):
                await writing  # the last: no poll to wait out
                writing = None
        elapsed, cpu = time.perf_counter() - (started or time.perf_counter()), _cpu_s() - cpu0
        loop_cpu = time.thread_time() - loop0
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
        await consumer.stop()
    return elapsed, cpu, loop_cpu, {}


RUNS = (("raw_limit", run_raw), ("pricer", run_pricer))  # each returns wall s, CPU s, loop CPU s, its own figures


async def main(n: int) -> dict:
    broker = EmbeddedBroker.start()
    tmp = tempfile.TemporaryDirectory()
    store = ChdbStore(Path(tmp.name))  # one chDB directory per process: both runs share it
    try:
        await migrate(store)
        results: dict = {}
        for name, runner in RUNS:
            evs = events(n)  # fresh ids: the pricer would rightly skip ids the raw run stored
            topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
            await ensure_topics(broker.bootstrap, {topic: PARTITIONS, f"{topic}.dlq": 1})
            t = time.perf_counter()
            ends = await produce(broker.bootstrap, topic, evs)
            produce_s = time.perf_counter() - t
            elapsed, cpu, loop_cpu, own = await runner(store, broker.bootstrap, topic, ends)
            stored = (await store.select("SELECT count() AS n FROM usage_events WHERE kafka_topic = {t:String}", {"t": topic}))[0]["n"]
            results[name] = {"events": n, "stored": int(stored), "seconds": round(elapsed, 2), "cpu_s": round(cpu, 2),
                             "cores_busy": round(cpu / elapsed, 2), "events_per_s": round(n / elapsed),
                             "events_per_s_per_core": round(n / max(elapsed, cpu)), "produce_s": round(produce_s, 1),
                             "loop_cpu_s": round(loop_cpu, 2), "loop_cpu_us_per_event": round(loop_cpu / n * 1e6, 1),
                             "events_per_s_per_loop_core": round(n / loop_cpu),
                             # the rest of the process's CPU: chDB's insert, merge and query threads
                             "store_cpu_us_per_event": round(max(cpu - loop_cpu, 0.0) / n * 1e6, 1), **own}
        results["pricer_vs_raw_limit"] = round(results["pricer"]["events_per_s"] / results["raw_limit"]["events_per_s"], 3)
        return results
    finally:
        await store.close()
        tmp.cleanup()
        broker.stop()


def run(quick: bool, events: int | None = None) -> dict[str, Any]:
    """Both runs over N events (quick: 20,000; else 200,000), with the GC tuned as `meterline pricer` tunes it."""
    from services.cli import _tune_gc

    n = events or EVENTS[quick]
    threshold = gc.get_threshold()
    _tune_gc()  # as `meterline pricer` does
    try:
        report = asyncio.run(main(n))
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    return {"quick": quick, "events": n, "partitions": PARTITIONS, "cores": os.cpu_count(), **report}


def table(results: dict[str, Any]) -> str:
    lines = [f"Pricer throughput ({results['events']:,} events, {results['partitions']} partitions, one process)",
             f"{'run':<10} {'events/s':>9} {'per core':>9} {'cores busy':>10} {'seconds':>8} {'stored':>9}"
             f" {'loop us/ev':>10} {'per loop core':>13} {'chDB us/ev':>10}"]
    for name in ("raw_limit", "pricer"):
        r = results[name]
        lines.append(f"{name:<10} {r['events_per_s']:>9,} {r['events_per_s_per_core']:>9,} {r['cores_busy']:>10.2f} "
                     f"{r['seconds']:>8.2f} {r['stored']:>9,} {r['loop_cpu_us_per_event']:>10} {r['events_per_s_per_loop_core']:>13,}"
                     f" {r.get('store_cpu_us_per_event', float('nan')):>10}")
    lines.append(f"  pricer / raw limit: {results['pricer_vs_raw_limit']:.1%}")
    lag = results["pricer"]["loop_lag"]
    lines.append(f"  pricer's event loop, longest pause while working through the backlog: {lag['max_ms']} ms"
                 f" (p99.9 {lag['p999_ms']} ms, {lag['over_50_ms']} over 50 ms); of which running its own work:"
                 f" longest {lag['held_max_ms']} ms, {lag['held_over_50_ms']} over 50 ms")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events")
    parser.add_argument("--events", type=int, default=None)
    args = parser.parse_args()
    report = run(args.quick, args.events)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "pricer.json").write_text(json.dumps(report, indent=2))
    print(table(report))
