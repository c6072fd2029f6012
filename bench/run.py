"""Every benchmark of issue 5 in one command, figures in bench/results/latest.json and a table.

    python bench/run.py                       # full length (about 25 min; the memory run alone is >= 10 min)
    python bench/run.py --quick               # short runs (a few minutes), what CI runs through tests/bench
    python bench/run.py --only gateway,pricer
    python bench/run.py --quick --results-dir /tmp/out

Runs, in turn, in this process (each peer set side by side within its benchmark):
  gateway   bench/gateway.py  overhead and throughput vs direct and LiteLLM, streamed TTFC, worker scaling
  pricer    bench/pricer.py   pricer throughput vs the raw consume+insert limit
  queries   bench/queries.py  aggregation latency at two sizes (1M and 10M events)
  memory    bench/memory.py   gateway RSS after 1M requests and its growth over 10 minutes

Each module exposes `run(quick) -> dict` and `table(results) -> str`. A benchmark that fails is
recorded with its error and the others still run; the exit status is then 1.

Writes <results-dir>/latest.json: machine (cores, CPU, memory, load average, date, git commit),
the quick flag, each benchmark's results (or its error), and "targets": each target of the issue
with the measured value and met: true/false (in quick mode the figures come from short runs and
small data: they keep the harness honest, they are not the verdict). <results-dir>/latest.txt
holds the table printed at the end.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

BENCHMARKS = ("gateway", "pricer", "queries", "memory")


# -- targets --------------------------------------------------------------------------------


def _gateway_ratio(r: dict[str, Any]) -> tuple[float | None, str]:
    ratios = {c: d["rps_ratio_meterline_over_litellm"] for c, d in r.get("derived", {}).items()
              if "rps_ratio_meterline_over_litellm" in d}
    if not ratios:
        lite = r.get("litellm", {})
        return None, f"LiteLLM {lite.get('status')}: {lite.get('reason')}"
    return min(ratios.values()), "lowest of c=" + ", ".join(f"{c}: {v}x" for c, v in ratios.items())


def _gateway_p50(r: dict[str, Any]) -> tuple[float | None, str]:
    p = r["peers"]
    return r["derived"]["1"]["added_p50_ms"], f"meterline {p['meterline']['1']['p50_ms']} ms - direct {p['direct']['1']['p50_ms']} ms"


def _gateway_p99(r: dict[str, Any]) -> tuple[float | None, str]:
    p = r["peers"]
    return r["derived"]["32"]["added_p99_ms"], f"meterline {p['meterline']['32']['p99_ms']} ms - direct {p['direct']['32']['p99_ms']} ms"


def _pricer_core(r: dict[str, Any]) -> tuple[float | None, str]:
    p = r["pricer"]
    store = f", {p['store_cpu_us_per_event']} us of CPU per event in chDB" if "store_cpu_us_per_event" in p else ""
    return p["events_per_s_per_core"], (f"{p['events_per_s']:,} events/s wall, {p['cores_busy']} cores busy (chDB's insert"
                                        f" included{store}), {r['events']:,} events; the pricer's own loop alone:"
                                        f" {p['events_per_s_per_loop_core']:,} events/s per core")


def _pricer_share(r: dict[str, Any]) -> tuple[float | None, str]:
    return r["pricer_vs_raw_limit"], f"raw limit {r['raw_limit']['events_per_s']:,} events/s"


def _aggregations(endpoints: dict[str, Any]) -> dict[str, Any]:
    """The aggregation endpoints, without the authenticated floor measured beside them."""
    floor = importlib.import_module("queries").FLOOR
    return {n: v for n, v in endpoints.items() if n != floor}


def _queries_p95(r: dict[str, Any]) -> tuple[float | None, str]:
    large = _aggregations(r["sizes"][str(r["large"])]["endpoints"])
    worst = max(large, key=lambda n: large[n]["p95_ms"])
    over = sum(1 for v in large.values() if v["p95_ms"] > 50)
    return large[worst]["p95_ms"], f"slowest at {r['large']:,} events: {worst}; {over} of {len(large)} above 50 ms"


def _queries_ratio(r: dict[str, Any]) -> tuple[float | None, str]:
    # Judged on p50 (does a read grow with the events?); p95 over a few dozen requests on a
    # shared 2-core machine is mostly scheduling noise. Both are in the results.
    ratios = _aggregations(r["ratios"])
    worst = max(ratios, key=lambda n: ratios[n]["p50"])
    return ratios[worst]["p50"], (f"{r['large']:,}/{r['small']:,} events, highest p50 ratio: {worst}"
                                  f" (its p95 ratio {ratios[worst]['p95']})")


def _memory_rss(r: dict[str, Any]) -> tuple[float | None, str]:
    return r["gateway"]["rss_after_target_mb"], f"after {r['target_requests']:,} requests (`meterline gateway` process)"


def _memory_growth(r: dict[str, Any]) -> tuple[float | None, str]:
    return r["gateway"]["growth_pct"], f"over {r['growth_window_s']:.0f} s, {r['requests_served']:,} requests"


# (id, benchmark, description, comparison, threshold, unit, extractor)
TARGETS: list[tuple[str, str, str, str, float, str, Callable[[dict[str, Any]], tuple[float | None, str]]]] = [
    ("gateway_rps_vs_litellm", "gateway", "gateway req/s >= 20x LiteLLM's (c=1, 8, 32)", ">=", 20, "x", _gateway_ratio),
    ("gateway_added_p50_c1", "gateway", "gateway added p50 <= 1 ms at c=1", "<=", 1.0, "ms", _gateway_p50),
    ("gateway_p99_c32", "gateway", "gateway added p99 <= 5 ms at c=32", "<=", 5.0, "ms", _gateway_p99),
    ("pricer_per_core", "pricer", "pricer >= 50k events/s per core", ">=", 50_000, "events/s", _pricer_core),
    ("pricer_vs_raw_limit", "pricer", "pricer >= 70% of the raw limit", ">=", 0.7, "ratio", _pricer_share),
    ("queries_p95_large", "queries", "aggregation p95 <= 50 ms at 10M events", "<=", 50.0, "ms", _queries_p95),
    ("queries_ratio", "queries", "aggregation 10M/1M latency ratio (p50) <= 1.5", "<=", 1.5, "ratio", _queries_ratio),
    ("memory_rss", "memory", "gateway RSS <= 200 MB after 1M requests", "<=", 200.0, "MB", _memory_rss),
    ("memory_growth", "memory", "gateway RSS growth < 5% over 10 minutes", "<", 5.0, "%", _memory_growth),
]
_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


def evaluate_targets(benchmarks: dict[str, Any], selected: list[str]) -> list[dict[str, Any]]:
    out = []
    for tid, bench, name, op, threshold, unit, extract in TARGETS:
        if bench not in selected:
            continue
        entry: dict[str, Any] = {"id": tid, "benchmark": bench, "name": name, "target": f"{op} {threshold:g}",
                                 "unit": unit, "measured": None, "met": False}
        outcome = benchmarks.get(bench, {})
        if "results" not in outcome:
            entry["detail"] = f"benchmark failed: {outcome.get('error')}"
        else:
            try:
                measured, detail = extract(outcome["results"])
                entry.update(measured=measured, detail=detail,
                             met=measured is not None and bool(_OPS[op](measured, threshold)))
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                entry["detail"] = f"not measured: {type(exc).__name__}: {exc}"
        out.append(entry)
    return out


def targets_table(targets: list[dict[str, Any]], quick: bool) -> str:
    lines = ["Targets" + (" (quick mode: short runs and small data, indicative only)" if quick else "")]
    for t in targets:
        mark = "met " if t["met"] else ("MISS" if t["measured"] is not None else "n/a ")
        value = "-" if t["measured"] is None else f"{t['measured']:g} {t['unit']}"
        lines.append(f"  [{mark}] {t['name']:<46} {value:>16}  {t.get('detail', '')}")
    return "\n".join(lines)


# -- machine --------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        cpu = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        info["cpu"] = cpu[0] if cpu else None
        mem = [ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")]
        info["memory_gb"] = round(int(mem[0]) / 1024 / 1024, 1) if mem else None
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    info["git_commit"] = _git("rev-parse", "HEAD")
    info["git_dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return info


# -- runner ---------------------------------------------------------------------------------


def run_one(name: str, quick: bool, litellm: bool) -> tuple[dict[str, Any], str]:
    started = time.monotonic()
    outcome: dict[str, Any] = {}
    try:
        module = importlib.import_module(name)
        outcome["results"] = module.run(quick, litellm=litellm) if name == "gateway" else module.run(quick)
        text = module.table(outcome["results"])
    except Exception as exc:  # noqa: BLE001 - recorded; the next benchmark still runs
        stage = "table()" if "results" in outcome else "run()"
        outcome.update(error=f"{stage}: {type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        text = f"{name}: FAILED after {time.monotonic() - started:.0f} s: {outcome['error']}"
    outcome["seconds"] = round(time.monotonic() - started, 1)
    return outcome, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs and small data (CI)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--results-dir", type=Path, default=BENCH / "results")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out of the gateway benchmark")
    args = parser.parse_args(argv)
    selected = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in selected if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    from services.common.logging import configure

    configure("warning", False)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
        "machine": machine_info(), "benchmarks": {}, "targets": [],
    }
    tables: list[str] = []
    started = time.monotonic()
    for name in selected:
        print(f"== {name} ({'quick' if args.quick else 'full'}) ...", flush=True)
        outcome, text = run_one(name, args.quick, litellm=not args.no_litellm)
        report["benchmarks"][name] = outcome
        tables.append(text)
        print(f"   {name} {'failed' if 'error' in outcome else 'done'} in {outcome['seconds']} s", flush=True)
        _write(args.results_dir, report, tables, selected)  # keep what is done if a later one hangs
    report["seconds"] = round(time.monotonic() - started, 1)
    text = _write(args.results_dir, report, tables, selected)
    print()
    print(text)
    failed = [n for n, o in report["benchmarks"].items() if "error" in o]
    if failed:
        print(f"\nfailed: {', '.join(failed)} (errors in {args.results_dir / 'latest.json'})", file=sys.stderr)
    return 1 if failed else 0


def _write(directory: Path, report: dict[str, Any], tables: list[str], selected: list[str]) -> str:
    report["targets"] = evaluate_targets(report["benchmarks"], selected)
    m = report["machine"]
    head = (f"Meterline benchmarks, {report['date']}, {'quick' if report['quick'] else 'full'} mode, "
            f"{m['cores']} cores ({m.get('cpu')}), load {m.get('load_average_at_start')}, "
            f"commit {(m['git_commit'] or '?')[:10]}{' (dirty)' if m['git_dirty'] else ''}")
    text = "\n\n".join([head, *tables, targets_table(report["targets"], report["quick"])]) + "\n"
    (directory / "latest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (directory / "latest.txt").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
