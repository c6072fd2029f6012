"""The benchmark harness (issue 5) in quick mode, so it keeps working: `python bench/run.py --quick`
runs every benchmark, each reports its figures, and every target of the issue has a measured
value. Whether a target is met is the full run's verdict, not this test's.

Takes about 3 minutes (the first time, that includes installing LiteLLM into
bench/.venv-litellm with uv: about 8 s). Needs wrk and nginx (.ci/run installs them); METERLINE_SKIP_BENCH=1 skips it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
assert _spec is not None and _spec.loader is not None
bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)
BENCHMARKS, TARGETS = bench_run.BENCHMARKS, bench_run.TARGETS

TIMEOUT_S = 540


def _missing_tools() -> list[str]:
    return [t for t in ("wrk", "nginx") if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_every_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    if os.environ.get("METERLINE_SKIP_BENCH") == "1":
        pytest.skip("METERLINE_SKIP_BENCH=1")
    if _missing_tools() and os.geteuid() != 0:
        pytest.skip(f"needs {', '.join(_missing_tools())} (Debian packages wrk, nginx-light); .ci/run installs them")

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--results-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    log = f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    report = json.loads((tmp_path / "latest.json").read_text())
    errors = {n: o.get("error") for n, o in report["benchmarks"].items() if "error" in o}
    assert not errors, f"benchmarks failed: {errors}\n{log}"
    assert proc.returncode == 0, log
    assert (tmp_path / "latest.txt").read_text().strip() in proc.stdout
    assert report["quick"] is True
    assert _positive(report["machine"]["cores"]) and report["machine"]["git_commit"]
    assert set(report["benchmarks"]) == set(BENCHMARKS)

    gateway = report["benchmarks"]["gateway"]["results"]
    lite = gateway["litellm"]
    assert lite["status"] == "ok", f"LiteLLM {lite['status']}: {lite.get('reason')}"  # in full: pytest cuts a dict's repr
    for peer in ("direct", "meterline", "litellm"):
        for c in ("1", "8", "32"):
            point = gateway["peers"][peer][c]
            assert _positive(point["rps"]) and _positive(point["p50_ms"]) and _positive(point["p99_ms"]), (peer, c, point)
        stream = gateway["stream"]["peers"][peer]
        assert _positive(stream["ttfc_p50_ms"]) and stream["ok"] == stream["requests"], (peer, stream)
    for workers in ("1", "2"):
        point = gateway["scaling"]["points"][workers]
        assert _positive(point["rps"]) and _positive(point["cpu_us_per_request"]), point
    # A non-2xx answer from direct or Meterline is a broken harness or gateway, not noise.
    assert not [f for f in gateway["flags"] if not f.startswith("litellm")], gateway["flags"]

    pricer = report["benchmarks"]["pricer"]["results"]
    for run in ("raw_limit", "pricer"):
        assert _positive(pricer[run]["events_per_s"]) and pricer[run]["stored"] == pricer["events"], pricer[run]
        assert _positive(pricer[run]["store_cpu_us_per_event"]), pricer[run]
    assert pricer["pricer"]["loop_lag"]["max_ms"] >= pricer["pricer"]["loop_lag"]["p999_ms"] >= 0, pricer["pricer"]

    queries = report["benchmarks"]["queries"]["results"]
    for size in queries["sizes"].values():
        assert size["endpoints"]
        for name, endpoint in size["endpoints"].items():
            assert _positive(endpoint["p95_ms"]), (name, endpoint)

    memory = report["benchmarks"]["memory"]["results"]
    assert memory["requests_served"] >= memory["target_requests"] and memory["non_2xx"] == 0, memory
    for process in ("gateway", "pipeline"):
        assert _positive(memory[process]["rss_after_target_mb"]) and _positive(memory[process]["rss_max_mb"])

    targets = {t["id"]: t for t in report["targets"]}
    assert set(targets) == {t[0] for t in TARGETS}
    unmeasured = {tid: t.get("detail") for tid, t in targets.items() if not isinstance(t["measured"], (int, float))}
    assert not unmeasured, unmeasured
    assert all(isinstance(t["met"], bool) for t in targets.values())
