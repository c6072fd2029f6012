"""Gateway memory under sustained load: RSS after N proxied requests and its growth over time.

The pipeline runs as `meterline up` (pricer and query in one process, its own idle gateway in another) on an
embedded broker the benchmark starts, and the gateway under load is a separate `meterline gateway`
process (METERLINE_GATEWAY_WORKERS=1, as in production, where the gateway runs alone) publishing
to that broker and checking keys with that query service, in front of the fake nginx provider of
bench/gateway.py. wrk (one thread, concurrency 8, back-to-back runs of a few seconds each) drives
it until N requests have been served AND a minimum time has passed. Sampled every few seconds
from /proc (VmRSS):
  gateway    the `meterline gateway` process (plus any worker processes it forks): the targets
  pipeline   the whole `meterline up` process (pricer, query, chDB) while it
             prices and stores every one of those calls
  broker     the embedded broker (in-memory topics: grows with the events by design)

Reported: gateway RSS at the start (after warm-up), after N requests (at the end of the wrk run
that crossed N), the maximum and at the end; growth % from the RSS one minute into the measured
run (quick: 3 s) to the end; the same for the pipeline process; requests served and non-2xx.

    python bench/memory.py --quick     # >= 5,000 requests and >= 10 s
    python bench/memory.py             # >= 1,000,000 requests and >= 10 minutes

Standalone, it prints the table and writes bench/results/memory.json; bench/run.py imports
`run(quick)` and `table(results)`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway as gw  # noqa: E402  (bench/gateway.py: nginx, meterline, wrk helpers)

ROOT = gw.ROOT
CONNECTIONS = 8
# quick -> (requests, minimum seconds, growth baseline at s, sample every s, wrk run s, warm-up s)
PLAN = {True: (5_000, 10, 3, 1, 5, 2), False: (1_000_000, 600, 60, 5, 30, 10)}


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """Samples the RSS of named process trees every `every` seconds."""

    def __init__(self, pids: dict[str, tuple[int, bool]], every: float) -> None:
        super().__init__(daemon=True)
        self.pids, self.every = pids, every  # name -> (pid, include descendants)
        self.t0 = time.monotonic()
        self.samples: list[dict[str, float]] = []
        self._halt = threading.Event()

    def sample(self) -> dict[str, float]:
        row = {"t": round(time.monotonic() - self.t0, 1)}
        for name, (pid, tree) in self.pids.items():
            row[name] = round(sum(rss_mb(p) or 0.0 for p in [pid, *(gw.descendants(pid) if tree else [])]), 1)
        self.samples.append(row)
        return row

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


def run(quick: bool) -> dict[str, Any]:
    """Drive the gateway until N requests and the minimum time; returns the RSS figures (see `table`)."""
    target, min_s, baseline_at, every, chunk_s, warm_s = PLAN[quick]
    gw.ensure_tools()
    broker = None
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmpdir:
        tmp = Path(tmpdir)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            nginx, upstream = gw.start_nginx(tmp)
            procs.append(nginx)
            broker = gw.EmbeddedBroker.start()
            pipeline, _port, query = gw.start_meterline(tmp, upstream, broker.bootstrap)
            procs.insert(0, pipeline)
            gateway, port = gw.start_gateway(tmp, upstream, broker.bootstrap, query, workers=1)
            procs.insert(0, gateway)
            url = f"http://127.0.0.1:{port}/api/proxy/v1/openai/chat/completions"
            headers = {"Authorization": f"Bearer {gw.ADMIN_KEY}", "X-Provider-Key": "sk-bench"}
            script = gw.wrk_script(tmp, headers)
            gw._warm(url, headers, gw.BODY, tmp, warm_s)  # noqa: SLF001
            sampler = Sampler({"gateway": (gateway.pid, True), "pipeline": (pipeline.pid, False),
                               "broker": (broker.process.pid, False)}, every)
            start = sampler.sample()
            sampler.start()
            served = non_2xx = socket_errors = runs = 0
            at_target: dict[str, float] | None = None
            try:
                while served < target or time.monotonic() - sampler.t0 < min_s:
                    point = gw.run_wrk(url, script, CONNECTIONS, chunk_s)
                    runs += 1
                    served += point["requests"]
                    non_2xx += point["non_2xx"]
                    socket_errors += point["socket_errors"]
                    if at_target is None and served >= target:
                        at_target = sampler.sample()
                    for name, proc in (("meterline gateway", gateway), ("meterline up", pipeline)):
                        if proc.poll() is not None:
                            raise RuntimeError(f"{name} exited with {proc.returncode}")
            finally:
                sampler.stop()
            elapsed = time.monotonic() - sampler.t0
            stored = gw._pipeline(query, {})["events_stored_so_far"]  # noqa: SLF001
        finally:
            gw.stop_procs(procs)
            if broker is not None:
                broker.stop()
    samples = sampler.samples
    base = min(samples, key=lambda s: abs(s["t"] - baseline_at))
    end = samples[-1]
    report: dict[str, Any] = {
        "quick": quick, "connections": CONNECTIONS, "wrk_run_s": chunk_s, "wrk_runs": runs,
        "target_requests": target, "min_seconds": min_s,
        "requests_served": served, "seconds": round(elapsed, 1), "rps": round(served / elapsed, 1),
        "non_2xx": non_2xx, "socket_errors": socket_errors, "events_stored_at_end": stored,
        "after_target_at_s": at_target["t"] if at_target else None,
        "growth_baseline_at_s": base["t"], "growth_window_s": round(end["t"] - base["t"], 1),
    }
    for name in ("gateway", "pipeline"):
        report[name] = {
            "rss_start_mb": start[name], "rss_after_target_mb": at_target[name] if at_target else None,
            "rss_max_mb": max(s[name] for s in samples), "rss_end_mb": end[name], "growth_baseline_mb": base[name],
            "growth_pct": round((end[name] - base[name]) / base[name] * 100, 2),
        }
    report["broker_rss_end_mb"] = end["broker"]
    report["samples"] = _thin(samples, 200)
    report["flags"] = ([f"{non_2xx} non-2xx answers, {socket_errors} socket errors"] if non_2xx or socket_errors else [])
    return report


def _thin(samples: list[Any], most: int) -> list[Any]:
    if len(samples) <= most:
        return samples
    step = len(samples) / most
    return [samples[int(i * step)] for i in range(most)] + [samples[-1]]


def table(results: dict[str, Any]) -> str:
    n = results["target_requests"]
    lines = [
        f"Gateway memory (wrk c={results['connections']} through `meterline gateway`: {results['requests_served']:,} requests "
        f"in {results['seconds']:.0f} s, {results['rps']:.0f} req/s, non-2xx {results['non_2xx']}"
        f"{' !' if results['flags'] else ''}; {results['events_stored_at_end']} events stored at the end)",
        f"{'process':<10} {'start MB':>9} {f'@{n:,} MB':>11} {'max MB':>8} {'end MB':>8} {'growth':>8}",
    ]
    for name in ("gateway", "pipeline"):
        r = results[name]
        lines.append(f"{name:<10} {r['rss_start_mb']:>9.1f} {r['rss_after_target_mb'] or float('nan'):>11.1f} "
                     f"{r['rss_max_mb']:>8.1f} {r['rss_end_mb']:>8.1f} {r['growth_pct']:>+7.2f}%")
    lines.append(f"  growth over {results['growth_window_s']:.0f} s from {results['growth_baseline_at_s']} s; "
                 f"{n:,} requests reached at {results['after_target_at_s']} s; broker at the end {results['broker_rss_end_mb']} MB")
    lines += [f"FLAG {f}" for f in results.get("flags", [])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=">= 5,000 requests and >= 10 s")
    args = parser.parse_args()
    report = run(args.quick)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "memory.json").write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
