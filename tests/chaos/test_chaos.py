"""Fault injection over the real pipeline: a known number of calls with known costs, and faults
while they flow. Afterwards the store must hold exactly what was sent: same count, same cost to
the last decimal, no duplicates, and nothing left in the gateway's spool.

Topology (all real processes, its own broker so that freezing it harms no other test):
  clients ──► `meterline gateway` (G) ──► Tansu (B) ──► `meterline up` (P: pricer + query + chDB)

Faults, in order, while calls flow:
  1. P killed with SIGKILL five times (mid-batch: batches close every 200 ms), restarted each time;
  2. B frozen with SIGSTOP for a while, then resumed: G spools to disk and replays;
  3. G stopped with SIGTERM during calls, then restarted.

The size is set by METERLINE_CHAOS_CALLS (default 240) and METERLINE_CHAOS_FREEZE_S (default 6):
small for CI, larger by hand. Figures are printed at the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from services.common.broker import EmbeddedBroker, free_port, wait_for_port
from tests.fakes.provider import FakeProvider
from tests.support import spawn_meterline, wait_for_banner, wait_until

CALLS = int(os.environ.get("METERLINE_CHAOS_CALLS", "240"))
FREEZE_S = float(os.environ.get("METERLINE_CHAOS_FREEZE_S", "6"))
OPERATOR_KEY = "mtl_chaos_operator_key_0123456789"
GATEWAY_RESTART_S = 60.0
PRICE = {"input": Decimal("2.50"), "cached": Decimal("1.25"), "output": Decimal("10")}  # gpt-4o, per 1M


def call_cost(prompt: int, completion: int, cached: int) -> Decimal:
    return ((prompt - cached) * PRICE["input"] + cached * PRICE["cached"] + completion * PRICE["output"]) / 1_000_000


@dataclass
class Pipeline:
    root: Path
    broker: EmbeddedBroker
    fake: FakeProvider
    query_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    pricer: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "METERLINE_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "METERLINE_OPENAI_BASE_URL": self.fake.openai_base_url,
            "METERLINE_ANTHROPIC_BASE_URL": self.fake.anthropic_base_url,
            "METERLINE_ADMIN_KEY": OPERATOR_KEY,
            "METERLINE_QUERY_PORT": str(self.query_port),
            "METERLINE_QUERY_URL": f"http://127.0.0.1:{self.query_port}",
            "METERLINE_BATCH_MAX_WAIT": "0.2",
            "METERLINE_PRICER_SESSION_TIMEOUT_MS": "3000",
            "METERLINE_PUBLISH_TIMEOUT": "1",
        }

    def start_pricer(self) -> None:
        log = self.root / "pricer.log"
        before = len(log.read_text()) if log.exists() else 0
        # `up` hosts pricer and query over the chDB directory; its own gateway is not used here.
        env = {**self.env, "METERLINE_GATEWAY_PORT": str(free_port())}
        self.pricer = spawn_meterline(["up", "--data-dir", str(self.root / "pricer-data")], env, log)
        wait_for_banner(log, after=before)

    def start_gateway(self) -> None:
        env = {**self.env, "METERLINE_GATEWAY_PORT": str(self.gateway_port),
               "METERLINE_SPOOL_DIR": str(self.root / "spool")}
        self.gateway = spawn_meterline(["gateway"], env, self.root / "gateway.log")
        wait_for_port("127.0.0.1", self.gateway_port, 60, self.gateway)

    def gateway_health(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.gateway_port}/healthz", timeout=5).json()

    def stop(self) -> None:
        for proc in (self.gateway, self.pricer):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    broker = EmbeddedBroker.start()
    with FakeProvider() as fake:
        p = Pipeline(tmp_path, broker, fake)
        try:
            p.start_pricer()
            p.start_gateway()
            yield p
        finally:
            p.stop()
            broker.stop()


@dataclass
class Load:
    """Sends CALLS calls from a few client threads; records each call's latency and outcome."""

    gateway_url: str
    key: str
    sent: int = 0
    expected: Decimal = Decimal(0)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start time, seconds)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def one(self, client: httpx.Client, i: int, stream: bool) -> None:
        prompt, completion, cached = 1_000 + i, 50 + i % 17, (i % 4) * 100
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"call {i}"}], "stream": stream,
                "_meterline": {"prompt_key": "chaos"}}
        headers = {"authorization": f"Bearer {self.key}", "x-provider-key": "sk-up",
                   "x-fake-usage": json.dumps({"prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": cached})}
        started = time.monotonic()
        attempt = 0
        # A client retries only when it could not reach the gateway at all: while it restarts,
        # for as long as the test gives a restart (start_gateway waits up to 60 s for its port;
        # on a busy CI machine a stop and a fresh interpreter's start took more than 6 s).
        while True:
            try:
                r = client.post(f"{self.gateway_url}/api/proxy/v1/openai/chat/completions", json=body, headers=headers)
                break
            except httpx.TransportError:
                if time.monotonic() - started > GATEWAY_RESTART_S:
                    with self.lock:
                        self.failures.append(f"call {i}: gateway unreachable for {GATEWAY_RESTART_S:g} s")
                    return
                attempt += 1
                time.sleep(0.2)
        elapsed = time.monotonic() - started
        with self.lock:
            if r.status_code != 200:
                self.failures.append(f"call {i}: {r.status_code} {r.text[:200]}")
                return
            self.sent += 1
            self.expected += call_cost(prompt, completion, cached)
            if attempt == 0:
                self.latencies.append((started, elapsed))

    def run(self, start: int, count: int, threads: int = 4) -> None:
        def worker(ids: list[int]) -> None:
            with httpx.Client(timeout=30) as client:
                for i in ids:
                    self.one(client, i, stream=i % 3 == 0)

        ids = list(range(start, start + count))
        pool = [threading.Thread(target=worker, args=(ids[k::threads],)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()


def test_nothing_lost_nothing_counted_twice_under_faults(pipeline: Pipeline) -> None:
    p = pipeline
    org = httpx.post(f"http://127.0.0.1:{p.query_port}/api/orgs", json={"name": "chaos"},
                     headers={"authorization": f"Bearer {OPERATOR_KEY}"}, timeout=30).json()
    load = Load(f"http://127.0.0.1:{p.gateway_port}", org["admin_key"])
    faults: list[str] = []
    windows: list[tuple[float, float]] = []  # fault windows, to split latencies

    # Warm-up: the key is verified once while the query service is up, then cached by the gateway.
    load.run(0, 8, threads=2)
    baseline = sorted(s for _, s in load.latencies)
    per_phase = max(CALLS // 4, 8)

    # 1. SIGKILL the pricer five times while calls flow.
    traffic = threading.Thread(target=load.run, args=(1_000, per_phase))
    traffic.start()
    rng = random.Random(7)
    for _ in range(5):
        time.sleep(rng.uniform(0.2, 0.8))
        assert p.pricer is not None
        p.pricer.kill()
        p.pricer.wait()
        faults.append("pricer SIGKILL")
        p.start_pricer()
    traffic.join()

    # 2. Freeze the broker under load; the gateway must answer as usual and spool.
    traffic = threading.Thread(target=load.run, args=(2_000, per_phase))
    traffic.start()
    os.kill(p.broker.process.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    faults.append(f"broker SIGSTOP {FREEZE_S:g}s")
    wait_until(lambda: p.gateway_health()["spooled"] > 0, timeout_s=FREEZE_S + 10, what="events spooled")
    time.sleep(max(0.0, FREEZE_S - (time.monotonic() - frozen_at)))  # the outage itself is the fault: its length is the point
    os.kill(p.broker.process.pid, signal.SIGCONT)
    windows.append((frozen_at, time.monotonic()))
    traffic.join()

    first_gateway = p.gateway_health()  # its counters die with it

    # 3. SIGTERM the gateway while calls are in flight; they complete, the spool is kept.
    traffic = threading.Thread(target=load.run, args=(3_000, per_phase))
    traffic.start()
    time.sleep(0.3)
    assert p.gateway is not None
    p.gateway.send_signal(signal.SIGTERM)
    assert p.gateway.wait(60) == 0
    faults.append("gateway SIGTERM")
    p.start_gateway()
    traffic.join()
    load.run(4_000, per_phase)

    assert not load.failures, load.failures[:5]

    last: dict = {}

    def settled() -> dict | None:
        h = p.gateway_health()
        m = httpx.get(f"http://127.0.0.1:{p.query_port}/api/aggregations/monthly", params={"start": "2000-01-01", "end": "2100-01-01"},
                      headers={"authorization": f"Bearer {load.key}"}, timeout=10).json()
        last.update(health=h, totals=m, sent=load.sent)
        return m if h["spool_bytes"] == 0 and h["event_backlog"] == 0 and m["request_count"] >= load.sent else None

    try:
        totals = wait_until(settled, timeout_s=90, interval_s=0.5, what="every call stored and the spool empty")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last}") from None
    stored = totals["request_count"]
    health = p.gateway_health()
    spool_files = list((p.root / "spool").glob("segment-*.log"))
    normal = sorted(s for t, s in load.latencies if not any(a <= t <= b for a, b in windows))
    during = sorted(s for t, s in load.latencies if any(a <= t <= b for a, b in windows))
    p50 = baseline[len(baseline) // 2] if baseline else 0.0
    figures = {
        "calls_sent": load.sent,
        "stored": stored,
        "duplicates": stored - load.sent,
        "cost_sent": str(load.expected),
        "cost_stored": str(Decimal(str(totals["total_cost"]))),
        "faults_injected": faults,
        "spool_residue_bytes": health["spool_bytes"],
        "events_spooled": first_gateway["spooled"] + health["spooled"],
        "events_replayed_from_spool": first_gateway["replayed"] + health["replayed"],
        "events_dropped": first_gateway["dropped"] + health["dropped"],
        "client_latency_p50_warm_ms": round(p50 * 1000, 1),
        "client_latency_max_outside_faults_ms": round(max(normal) * 1000, 1) if normal else None,
        "client_latency_max_broker_frozen_ms": round(max(during) * 1000, 1) if during else None,
        "max_added_latency_ms": round((max(during) - p50) * 1000, 1) if during else None,
    }
    print("\nchaos figures: " + json.dumps(figures, indent=2))
    assert stored == load.sent, figures
    assert Decimal(str(totals["total_cost"])) == load.expected, figures
    assert health["spool_bytes"] == 0 and not [f for f in spool_files if f.stat().st_size], figures
    assert figures["events_dropped"] == 0 and figures["events_spooled"] > 0
    assert during, "no call measured while the broker was frozen"
    # Calls do not wait for the broker: with it frozen, a call costs what it costs without it.
    assert max(during) < 2.0, figures
