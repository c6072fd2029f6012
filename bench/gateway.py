"""Gateway overhead and throughput, side by side in one run.

Peers, each with one worker, at concurrency 1, 8 and 32 (wrk, one thread, keep-alive):
  direct     the fast fake provider itself (nginx returning a realistic chat completion)
  meterline  through `meterline up` (gateway + pricer + query over chDB), pipeline running
  litellm    through LiteLLM's proxy, same upstream, no database (only with --litellm: the
             benchmark installs litellm[proxy] into bench/.venv-litellm on first use)

Prints a table and writes bench/results/gateway.json. Needs `wrk` and `nginx` (Debian
packages; installed with apt-get when missing and running as root).

    python bench/gateway.py --quick          # 3 s per point, for CI-sized checks
    python bench/gateway.py --litellm        # 15 s per point, LiteLLM included
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.common.broker import free_port, wait_for_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ADMIN_KEY = "mtl_bench_admin_key_0123456789abcdef"
COMPLETION = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1767225600, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 19, "completion_tokens": 9, "total_tokens": 28,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
    "system_fingerprint": "fp_bench",
}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}


def ensure_tools() -> None:
    missing = [t for t in ("wrk", "nginx") if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"install {' '.join(missing)} (Debian packages) first")
        subprocess.run(["apt-get", "install", "-y", "-qq", *(["nginx-light"] if "nginx" in missing else []),
                        *(["wrk"] if "wrk" in missing else [])], check=True)


def start_nginx(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (tmp / "completion.json").write_text(json.dumps(COMPLETION))
    conf = tmp / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        pid {tmp}/nginx.pid;
        error_log {tmp}/nginx-error.log;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {tmp}/body;
            proxy_temp_path {tmp}/proxy;
            fastcgi_temp_path {tmp}/fastcgi;
            uwsgi_temp_path {tmp}/uwsgi;
            scgi_temp_path {tmp}/scgi;
            server {{
                listen 127.0.0.1:{port};
                keepalive_requests 1000000;
                location / {{
                    default_type application/json;
                    add_header x-request-id req_bench;
                    return 200 '{json.dumps(COMPLETION)}';
                }}
            }}
        }}
    """))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, 10, proc)
    return proc, port


def start_meterline(tmp: Path, upstream: int) -> tuple[subprocess.Popen[bytes], int]:
    port, query = free_port(), free_port()
    env = {**os.environ, "METERLINE_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream}/v1", "METERLINE_ADMIN_KEY": ADMIN_KEY,
           "METERLINE_GATEWAY_PORT": str(port), "METERLINE_QUERY_PORT": str(query), "METERLINE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp / "meterline")], env=env,
                            stdout=(tmp / "meterline.log").open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    wait_for_port("127.0.0.1", port, 60, proc)
    return proc, port


def start_litellm(tmp: Path, upstream: int) -> tuple[subprocess.Popen[bytes], int] | None:
    venv = ROOT / "bench" / ".venv-litellm"
    if not (venv / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(textwrap.dedent(f"""
        model_list:
          - model_name: gpt-4o-mini
            litellm_params:
              model: openai/gpt-4o-mini
              api_base: http://127.0.0.1:{upstream}/v1
              api_key: sk-bench
        litellm_settings:
          telemetry: false
    """))
    proc = subprocess.Popen([str(venv / "bin" / "litellm"), "--config", str(config), "--port", str(port), "--num_workers", "1"],
                            stdout=(tmp / "litellm.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, 180, proc)
    except Exception:  # noqa: BLE001 - report and go on without the peer
        proc.kill()
        print("litellm did not start; see", tmp / "litellm.log", file=sys.stderr)
        return None
    return proc, port


def wrk_script(tmp: Path, headers: dict[str, str]) -> Path:
    lua = tmp / f"post-{abs(hash(tuple(headers.items())))}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(BODY))}", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lua.write_text("\n".join(lines) + "\n")
    return lua


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": round(rps, 1), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "non_2xx": int(errors.group(1)) if errors else 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--litellm", action="store_true")
    args = parser.parse_args()
    seconds = 3 if args.quick else 15
    ensure_tools()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            nginx, upstream = start_nginx(tmp)
            procs.append(nginx)
            meterline, gateway = start_meterline(tmp, upstream)
            procs.append(meterline)
            peers = {
                "direct": (f"http://127.0.0.1:{upstream}/v1/chat/completions", {}),
                "meterline": (f"http://127.0.0.1:{gateway}/api/proxy/v1/openai/chat/completions",
                              {"Authorization": f"Bearer {ADMIN_KEY}", "X-Provider-Key": "sk-bench"}),
            }
            if args.litellm:
                started = start_litellm(tmp, upstream)
                if started:
                    procs.append(started[0])
                    peers["litellm"] = (f"http://127.0.0.1:{started[1]}/chat/completions", {"Authorization": "Bearer sk-bench"})
            for url, headers in peers.values():  # warm up: connections, key cache, JIT-free but caches
                r = httpx.post(url, json=BODY, headers=headers, timeout=30)
                assert r.status_code == 200, (url, r.status_code, r.text[:200])
            results: dict[str, dict[str, Any]] = {}
            for connections in (1, 8, 32):
                for name, (url, headers) in peers.items():
                    results.setdefault(name, {})[str(connections)] = run_wrk(url, wrk_script(tmp, headers), connections, seconds)
        finally:
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    report = {"seconds_per_point": seconds, "cores": os.cpu_count(), "results": results, "derived": derive(results)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(report, indent=2))
    print(table(results, report["derived"]))


def derive(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c, direct in results["direct"].items():
        m = results["meterline"][c]
        row = {"added_p50_ms": round(m["p50_ms"] - direct["p50_ms"], 3), "added_p99_ms": round(m["p99_ms"] - direct["p99_ms"], 3)}
        if "litellm" in results:
            row["rps_ratio_meterline_over_litellm"] = round(m["rps"] / max(results["litellm"][c]["rps"], 0.001), 1)
        out[c] = row
    return out


def table(results: dict[str, dict[str, Any]], derived: dict[str, Any]) -> str:
    lines = [f"{'peer':<10} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>7}"]
    for name, points in results.items():
        for c, r in points.items():
            lines.append(f"{name:<10} {c:>4} {r['rps']:>9.1f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['non_2xx']:>7}")
    lines.append("")
    for c, d in derived.items():
        ratio = f", meterline/litellm req/s {d['rps_ratio_meterline_over_litellm']}x" if "rps_ratio_meterline_over_litellm" in d else ""
        lines.append(f"concurrency {c}: added p50 {d['added_p50_ms']} ms, added p99 {d['added_p99_ms']} ms{ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
