"""Gateway overhead and throughput, side by side in one run.

Peers, each with one worker, at concurrency 1, 8 and 32 (wrk, one thread, keep-alive):
  direct     the fast fake provider itself (nginx returning a realistic chat completion)
  meterline  through `meterline up` (its gateway process, with the pricer and query over chDB
             in the other) on a broker the benchmark starts, pipeline running
  litellm    through LiteLLM's proxy, same upstream, no database (the benchmark installs
             litellm[proxy] into bench/.venv-litellm on first use; if that fails the peer is
             reported missing with the reason)

Also measured:
  stream     time to first chunk (request sent -> first body bytes) of a streamed chat
             completion at concurrency 1, sequential requests over one keep-alive connection
             per peer, peers interleaved; the fake provider answers with an OpenAI SSE stream
             (chat.completion.chunk events, a usage chunk, `data: [DONE]`)
  scaling    a separate `meterline gateway` process (METERLINE_GATEWAY_WORKERS = 1, then 2)
             on the same broker and query service, at concurrency 32

How the fake provider tells a streamed request apart: nginx answers with the SSE stream when
the request carries `X-Bench-Stream: 1` (direct, and Meterline, which forwards the caller's
headers) or when its path starts with /stream/ (LiteLLM: a second model entry,
`gpt-4o-mini-stream`, whose api_base is /stream/v1). Both routes cost nginx the same internal
redirect; the non-streamed answer is a plain `return`.

A point with non-2xx answers or socket errors is flagged (in "flags" and with "!" in the table).

    python bench/gateway.py --quick          # 2 s per point (LiteLLM's 5 s), 50 streamed requests per peer
    python bench/gateway.py                  # 15 s per point, 500 streamed requests per peer
    python bench/gateway.py --no-litellm

Standalone, it prints the table and writes bench/results/gateway.json; bench/run.py imports
`run(quick, litellm)` and `table(results)`. Needs `wrk` and `nginx` (Debian packages; installed
with apt-get when missing and running as root).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
# the repository, for services and schemas; bench/ itself, for its sibling modules (run alone or by run.py)
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from services.common.broker import EmbeddedBroker, free_port, wait_for_port  # noqa: E402

from percentiles import percentile  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
ADMIN_KEY = "mtl_bench_admin_key_0123456789abcdef"
LITELLM_MASTER_KEY = "sk-" + secrets.token_hex(32)  # LiteLLM refuses to start without one
MODEL = "gpt-4o-mini-2024-07-18"
COMPLETION = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1767225600, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?", "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 19, "completion_tokens": 9, "total_tokens": 28,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_bench",
}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
STREAM_BODY = {**BODY, "stream": True}
TOKENS = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]
CONCURRENCY = (1, 8, 32)
SCALING_CONNECTIONS = 32
SCALING_WORKERS = (1, 2)


def sse_stream() -> str:
    """A streamed chat completion as OpenAI sends it with stream_options.include_usage."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1767225600, "model": MODEL,
            "service_tier": "default", "system_fingerprint": "fp_bench"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], "usage": None}

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": t}) for t in TOKENS]
    events.append(chunk({}, "stop"))
    events.append({**base, "choices": [], "usage": COMPLETION["usage"]})
    text = "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events)
    return text + "data: [DONE]\n\n"


# -- tools and processes ------------------------------------------------------------------


def ensure_tools() -> None:
    missing = [t for t in ("wrk", "nginx") if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        if os.geteuid() != 0:
            raise RuntimeError(f"install {' '.join(missing)} (Debian packages wrk, nginx-light) first")
        subprocess.run(["apt-get", "install", "-y", "-qq", *(["nginx-light"] if "nginx" in missing else []),
                        *(["wrk"] if "wrk" in missing else [])], check=True)


def _nginx_string(text: str) -> str:
    """A single-quoted nginx string (nginx reads \\n, \\\\ and \\' escapes in quoted strings)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def start_nginx(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
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
                listen 127.0.0.1:{port} backlog=4096;
                keepalive_requests 10000000;
                keepalive_timeout 600s;
                location /stream/ {{
                    rewrite ^ /_sse last;
                }}
                location = /_sse {{
                    internal;
                    default_type text/event-stream;
                    add_header x-request-id req_bench;
                    add_header cache-control no-cache;
                    return 200 {_nginx_string(sse_stream())};
                }}
                location / {{
                    if ($http_x_bench_stream) {{
                        rewrite ^ /_sse last;
                    }}
                    default_type application/json;
                    add_header x-request-id req_bench;
                    return 200 {_nginx_string(json.dumps(COMPLETION))};
                }}
            }}
        }}
    """))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=(tmp / "nginx-stderr.log").open("wb"))
    wait_for_port("127.0.0.1", port, 10, proc)
    return proc, port


def start_meterline(tmp: Path, upstream: int, bootstrap: str | None = None,
                    extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int, int]:
    """`meterline up` (pricer and query in one process, the gateway in its own); on `bootstrap` when given,
    else with its own embedded broker. Returns the process, gateway port and query port."""
    port, query = free_port(), free_port()
    env = {**os.environ, "METERLINE_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream}/v1", "METERLINE_ADMIN_KEY": ADMIN_KEY,
           "METERLINE_GATEWAY_PORT": str(port), "METERLINE_QUERY_PORT": str(query), "METERLINE_LOG_LEVEL": "warning",
           **(extra_env or {})}
    env.pop("METERLINE_KAFKA_BOOTSTRAP", None)
    if bootstrap:
        env["METERLINE_KAFKA_BOOTSTRAP"] = bootstrap
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp / "meterline")], env=env,
                            stdout=(tmp / "meterline.log").open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for_port("127.0.0.1", port, 120, proc)
    except Exception as exc:
        stop_procs([proc])
        raise RuntimeError(f"meterline up did not start: {exc}; log tail: {_tail(tmp / 'meterline.log')}") from exc
    return proc, port, query


def start_gateway(tmp: Path, upstream: int, bootstrap: str, query: int, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    """`meterline gateway` alone, with METERLINE_GATEWAY_WORKERS worker processes."""
    port = free_port()
    spool = tmp / f"spool-w{workers}"
    env = {**os.environ, "METERLINE_KAFKA_BOOTSTRAP": bootstrap, "METERLINE_QUERY_URL": f"http://127.0.0.1:{query}",
           "METERLINE_GATEWAY_PORT": str(port), "METERLINE_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream}/v1",
           "METERLINE_SPOOL_DIR": str(spool), "METERLINE_GATEWAY_WORKERS": str(workers), "METERLINE_LOG_LEVEL": "warning",
           "PYTHONPATH": str(ROOT)}
    log = tmp / f"gateway-w{workers}.log"
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "gateway"], env=env, cwd=tmp,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    _OWN_SESSION.add(proc.pid)
    try:
        wait_for_port("127.0.0.1", port, 60, proc)
    except Exception as exc:
        stop_procs([proc])
        raise RuntimeError(f"meterline gateway (workers={workers}) did not start: {exc}; log tail: {_tail(log)}") from exc
    return proc, port


def _litellm_installers() -> list[tuple[str, list[list[str]]]]:
    """The ways to put litellm[proxy] into ``LITELLM_VENV``, in the order to try them, each as the
    commands it runs: uv (a test dependency) where it is installed, then the venv's own pip. pip
    took about 125 s on a clean machine, a third of CI's benchmark test; uv about 8 s."""
    python, installers = LITELLM_VENV / "bin" / "python", []
    try:
        import uv  # noqa: F401 - only whether it is there
    except ImportError:
        pass
    else:
        uv_cmd = [sys.executable, "-m", "uv"]
        installers.append(("uv", [
            *([[*uv_cmd, "venv", "--quiet", "--python", sys.executable, str(LITELLM_VENV)]] if not python.exists() else []),
            # the system's certificates, as pip uses them: uv's own bundle refuses a corporate proxy's
            [*uv_cmd, "pip", "install", "--quiet", "--system-certs", "--python", str(python), "litellm[proxy]"],
        ]))
    pip = LITELLM_VENV / "bin" / "pip"
    installers.append(("pip", [
        # made by venv when missing, also into a venv that uv made (which has no pip)
        *([[sys.executable, "-m", "venv", str(LITELLM_VENV)]] if not pip.exists() else []),
        [str(pip), "install", "-q", "litellm[proxy]"],
    ]))
    return installers


def litellm_install(timeout_s: float) -> dict[str, Any]:
    """Install litellm[proxy] into its own venv when missing. Never raises."""
    info: dict[str, Any] = {"venv": str(LITELLM_VENV.relative_to(ROOT)), "install_s": None}
    if (LITELLM_VENV / "bin" / "litellm").exists():
        info["installed"] = "already"
    else:
        t, failures = time.perf_counter(), []
        for name, steps in _litellm_installers():
            try:
                for step in steps:
                    subprocess.run(step, check=True, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                info.update(status="missing", reason=f"installing litellm[proxy] with {name} took longer than {timeout_s:.0f} s")
                return info
            except (subprocess.CalledProcessError, OSError) as exc:
                detail = getattr(exc, "stderr", None) or str(exc)
                failures.append(f"with {name}: {str(detail).strip()[-400:]}")
                continue
            info["installed_with"] = name
            break
        else:
            info.update(status="missing", reason=f"installing litellm[proxy] failed {'; '.join(failures)}")
            return info
        if failures:
            info["install_failures"] = failures
        info["installed"] = "now"
        info["install_s"] = round(time.perf_counter() - t, 1)
    try:
        out = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
        info["version"] = out.stdout.strip() or None
    except (subprocess.SubprocessError, OSError):
        info["version"] = None
    return info


def start_litellm(tmp: Path, upstream: int) -> tuple[subprocess.Popen[bytes], int]:
    """Launch LiteLLM's proxy (one worker, no database); the caller waits for its port."""
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(textwrap.dedent(f"""
        model_list:
          - model_name: gpt-4o-mini
            litellm_params:
              model: openai/gpt-4o-mini
              api_base: http://127.0.0.1:{upstream}/v1
              api_key: sk-bench
          - model_name: gpt-4o-mini-stream
            litellm_params:
              model: openai/gpt-4o-mini
              api_base: http://127.0.0.1:{upstream}/stream/v1
              api_key: sk-bench
        litellm_settings:
          telemetry: false
        general_settings:
          master_key: {LITELLM_MASTER_KEY}
    """))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    for var in ("DATABASE_URL", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(var, None)
    proc = subprocess.Popen([str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--port", str(port),
                             "--num_workers", "1"], env=env, cwd=tmp,
                            stdout=(tmp / "litellm.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    _OWN_SESSION.add(proc.pid)
    return proc, port


_OWN_SESSION: set[int] = set()  # pids started with start_new_session (their process group is ours to end)


def stop_procs(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.pid in _OWN_SESSION:  # started in a session of its own: leave none of its children behind
            _OWN_SESSION.discard(p.pid)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Child processes (recursively) of pid, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far (seconds), from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone: its time is lost, and the figure is low, never high
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return total / os.sysconf("SC_CLK_TCK")


# -- wrk ------------------------------------------------------------------------------------


def wrk_script(tmp: Path, headers: dict[str, str], body: dict[str, Any] = BODY) -> Path:
    lua = tmp / f"post-{abs(hash((tuple(headers.items()), json.dumps(body))))}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lua.write_text("\n".join(lines) + "\n")
    return lua


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk thread, keep-alive connections; rps, p50/p99 (ms), request and error counts."""
    proc = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "--latency", "-s", str(script), url],
                          capture_output=True, text=True, timeout=seconds + 60)
    out = proc.stdout
    if proc.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-400:]} {proc.stderr[-400:]}")
    try:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    except (AttributeError, ValueError) as exc:
        raise RuntimeError(f"unexpected wrk output for {url} c={connections}: {out}") from exc
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": round(rps, 1), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "requests": requests,
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0}


def _flag(flags: list[str], what: str, point: dict[str, Any]) -> None:
    if point.get("non_2xx") or point.get("socket_errors"):
        point["flagged"] = True
        flags.append(f"{what}: {point.get('non_2xx', 0)} non-2xx answers, {point.get('socket_errors', 0)} socket errors")


# -- streamed: time to first chunk ----------------------------------------------------------


class RawClient:
    """A minimal HTTP/1.1 keep-alive client over one socket, timing the first body bytes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, float, float, bytes]:
        """Returns (status, ms to first body bytes, ms to the end of the answer, body)."""
        head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        sock = self._connect()
        t0 = time.perf_counter()
        sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self._recv(sock)
        header_block, rest = buf.split(b"\r\n\r\n", 1)
        while not rest:
            rest = self._recv(sock)
        first = time.perf_counter()
        lines = header_block.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        if fields.get("transfer-encoding", "").lower() == "chunked":
            content = self._read_chunked(sock, rest)
        else:
            length = int(fields.get("content-length", "0"))
            while len(rest) < length:
                rest += self._recv(sock)
            content = rest[:length]
        end = time.perf_counter()
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, (first - t0) * 1000, (end - t0) * 1000, content

    def _recv(self, sock: socket.socket) -> bytes:
        data = sock.recv(65536)
        if not data:
            self.close()
            raise ConnectionError("connection closed mid-answer")
        return data

    def _read_chunked(self, sock: socket.socket, buf: bytes) -> bytes:
        out = b""
        while True:
            while b"\r\n" not in buf:
                buf += self._recv(sock)
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf += self._recv(sock)
            out += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                return out


def measure_ttfc(peers: dict[str, tuple[int, str, dict[str, str], dict[str, Any]]], n: int, warmup: int) -> dict[str, Any]:
    """Sequential streamed requests, peers interleaved, one keep-alive connection each."""
    clients = {name: RawClient(port) for name, (port, *_rest) in peers.items()}
    samples: dict[str, dict[str, list[float]]] = {name: {"ttfc": [], "total": []} for name in peers}
    bad: dict[str, int] = dict.fromkeys(peers, 0)
    incomplete: dict[str, int] = dict.fromkeys(peers, 0)
    try:
        for i in range(warmup + n):
            for name, (_port, path, headers, body) in peers.items():
                try:
                    status, ttfc, total, content = clients[name].post(path, headers, json.dumps(body).encode())
                except (OSError, ValueError, IndexError):
                    clients[name].close()
                    bad[name] += i >= warmup
                    continue
                if i < warmup:
                    continue
                if not 200 <= status < 300:
                    bad[name] += 1
                    continue
                if b"data: [DONE]" not in content:
                    incomplete[name] += 1
                samples[name]["ttfc"].append(ttfc)
                samples[name]["total"].append(total)
    finally:
        for c in clients.values():
            c.close()
    out: dict[str, Any] = {}
    for name, s in samples.items():
        row: dict[str, Any] = {"requests": n, "ok": len(s["ttfc"]), "non_2xx": bad[name], "incomplete_streams": incomplete[name]}
        if s["ttfc"]:
            row.update(ttfc_p50_ms=round(statistics.median(s["ttfc"]), 3), ttfc_p99_ms=round(percentile(s["ttfc"], 0.99), 3),
                       total_p50_ms=round(statistics.median(s["total"]), 3))
        out[name] = row
    return out


# -- the benchmark --------------------------------------------------------------------------


WARM_DEADLINE_S = 150.0
WARM_CALL_TIMEOUT_S = 45.0


def _warm(url: str, headers: dict[str, str], body: dict[str, Any], tmp: Path, seconds: float) -> None:
    """One call answered 200, then ``seconds`` of load. Until ``WARM_DEADLINE_S``, a 503 or a call
    left unanswered for ``WARM_CALL_TIMEOUT_S`` is tried again, as a client would: a gateway that
    has just started answers 503 while it cannot verify the platform key yet (its first lookup at
    a query service still starting, on a machine busy with other work), and LiteLLM's first call
    once hung for a minute in CI, on a machine shared with a second test worker (it answers in
    about 2 s when idle). Any other answer is a broken peer."""
    deadline = time.monotonic() + WARM_DEADLINE_S
    while True:
        try:
            r = httpx.post(url, json=body, headers=headers, timeout=WARM_CALL_TIMEOUT_S)
        except httpx.TimeoutException:
            if time.monotonic() > deadline:
                raise
            continue
        if r.status_code == 200:
            break
        if r.status_code != 503 or time.monotonic() > deadline:
            raise RuntimeError(f"warm-up of {url} answered {r.status_code}: {r.text[:300]}")
        time.sleep(0.2)
    run_wrk(url, wrk_script(tmp, headers, body), 8, seconds)


def run(quick: bool, litellm: bool = True) -> dict[str, Any]:
    """Run the whole gateway benchmark; returns its figures (see `table`)."""
    seconds = 2 if quick else 15
    # LiteLLM answers c=32 in about a second on an idle machine, and wrk counts only answers that
    # arrive within the point: a 1 s point once saw none complete, and on a machine shared with
    # other work (the test suite runs on every core) an answer can take 2 s. Its quick points are
    # longer; requests/s is a rate, so the ratio holds.
    seconds_of = {"litellm": 5} if quick else {}
    warm_s = 1 if quick else 5
    stream_n = 50 if quick else 500
    ensure_tools()
    report: dict[str, Any] = {"quick": quick, "seconds_per_point": seconds, "seconds_per_point_of": seconds_of,
                              "cores": os.cpu_count(),
                              "wrk_threads": 1, "concurrency": list(CONCURRENCY)}
    flags: list[str] = []
    lite: dict[str, Any] = {"status": "skipped", "reason": "--no-litellm"}
    if litellm:
        lite = litellm_install(timeout_s=300 if quick else 1800)
    procs: list[subprocess.Popen[bytes]] = []
    broker: EmbeddedBroker | None = None
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            nginx, upstream = start_nginx(tmp)
            procs.append(nginx)
            lite_proc = None
            if litellm and lite.get("status") != "missing":
                lite_proc, lite_port = start_litellm(tmp, upstream)  # starts slowly: overlap with ours
                procs.append(lite_proc)
            broker = EmbeddedBroker.start()
            meterline, gateway, query = start_meterline(tmp, upstream, broker.bootstrap)
            procs.insert(0, meterline)
            meterline_headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Provider-Key": "sk-bench"}
            peers: dict[str, tuple[str, dict[str, str]]] = {
                "direct": (f"http://127.0.0.1:{upstream}/v1/chat/completions", {}),
                "meterline": (f"http://127.0.0.1:{gateway}/api/proxy/v1/openai/chat/completions", meterline_headers),
            }
            stream_peers: dict[str, tuple[int, str, dict[str, str], dict[str, Any]]] = {
                "direct": (upstream, "/v1/chat/completions", {"X-Bench-Stream": "1"}, STREAM_BODY),
                "meterline": (gateway, "/api/proxy/v1/openai/chat/completions", {**meterline_headers, "X-Bench-Stream": "1"},
                              STREAM_BODY),
            }
            if lite_proc is not None:
                try:
                    wait_for_port("127.0.0.1", lite_port, 300, lite_proc)
                    lite_url = f"http://127.0.0.1:{lite_port}/chat/completions"
                    lite_headers = {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}
                    _warm(lite_url, lite_headers, BODY, tmp, 1)
                    peers["litellm"] = (lite_url, lite_headers)
                    stream_peers["litellm"] = (lite_port, "/chat/completions", lite_headers,
                                               {**STREAM_BODY, "model": "gpt-4o-mini-stream"})
                    lite["status"] = "ok"
                except Exception as exc:  # noqa: BLE001 - report the peer missing and go on
                    lite.update(status="missing", reason=f"LiteLLM proxy did not serve: {exc}; log: {_tail(tmp / 'litellm.log')}")
                    stop_procs([lite_proc])
            for url, headers in peers.values():  # warm up: connections, key cache, lazy imports
                _warm(url, headers, BODY, tmp, warm_s)

            points: dict[str, dict[str, Any]] = {}
            for connections in CONCURRENCY:
                for name, (url, headers) in peers.items():
                    point = run_wrk(url, wrk_script(tmp, headers), connections, seconds_of.get(name, seconds))
                    _flag(flags, f"{name} c={connections}", point)
                    points.setdefault(name, {})[str(connections)] = point
            report["peers"] = points
            report["derived"] = derive(points)

            stream = measure_ttfc(stream_peers, stream_n, warmup=10 if quick else 50)
            for name, row in stream.items():
                if row["non_2xx"] or row["incomplete_streams"]:
                    row["flagged"] = True
                    flags.append(f"{name} stream: {row['non_2xx']} non-2xx or failed, {row['incomplete_streams']} without [DONE]")
            added = {}
            for name in stream:
                if name != "direct" and "ttfc_p50_ms" in stream[name] and "ttfc_p50_ms" in stream["direct"]:
                    added[name] = {"ttfc_p50_ms": round(stream[name]["ttfc_p50_ms"] - stream["direct"]["ttfc_p50_ms"], 3),
                                   "ttfc_p99_ms": round(stream[name]["ttfc_p99_ms"] - stream["direct"]["ttfc_p99_ms"], 3)}
            report["stream"] = {"concurrency": 1, "requests_per_peer": stream_n, "peers": stream, "added": added}

            report["pipeline"] = _pipeline(query, points)
            report["scaling"] = scaling(tmp, upstream, broker.bootstrap, query, seconds, warm_s, flags)
        finally:
            stop_procs(procs)
            if broker is not None:
                broker.stop()
    report["litellm"] = lite
    report["flags"] = flags
    return report


def _pipeline(query: int, points: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How many of the calls the pipeline has priced and stored by now (informational)."""
    sent = sum(p["requests"] for p in points.get("meterline", {}).values())
    try:
        r = httpx.get(f"http://127.0.0.1:{query}/api/aggregations/monthly", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                      timeout=30)
        stored = int(r.json().get("request_count", 0)) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        stored = None
    return {"meterline_requests_measured": sent, "events_stored_so_far": stored}


def scaling(tmp: Path, upstream: int, bootstrap: str, query: int, seconds: float, warm_s: float, flags: list[str]) -> dict[str, Any]:
    """`meterline gateway` alone with 1 and 2 workers, at concurrency 32."""
    settings_src = (ROOT / "services" / "common" / "settings.py").read_text()
    out: dict[str, Any] = {"connections": SCALING_CONNECTIONS, "setting": "METERLINE_GATEWAY_WORKERS",
                           "setting_supported": "GATEWAY_WORKERS" in settings_src, "points": {}}
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Provider-Key": "sk-bench"}
    for workers in SCALING_WORKERS:
        proc, port = start_gateway(tmp, upstream, bootstrap, query, workers)
        try:
            url = f"http://127.0.0.1:{port}/api/proxy/v1/openai/chat/completions"
            _warm(url, headers, BODY, tmp, warm_s)
            pids = [proc.pid, *descendants(proc.pid)]
            cpu = cpu_seconds(pids)
            point = run_wrk(url, wrk_script(tmp, headers), SCALING_CONNECTIONS, seconds)
            cpu = cpu_seconds(pids) - cpu
            point["processes"] = len(pids)
            # The gateway's own CPU per request: what one core allows (1 / it), and by Little's
            # law the least mean latency one worker can give at this concurrency (it x c).
            point["cpu_us_per_request"] = round(cpu / max(point["requests"], 1) * 1e6, 1)
            point["cores_busy"] = round(cpu / max(1, round(seconds)), 2)
            _flag(flags, f"gateway workers={workers} c={SCALING_CONNECTIONS}", point)
            out["points"][str(workers)] = point
        finally:
            stop_procs([proc])
    one, two = out["points"].get("1"), out["points"].get("2")
    if one and two:
        out["rps_ratio_2_over_1"] = round(two["rps"] / max(one["rps"], 0.001), 2)
    return out


def derive(points: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c, direct in points["direct"].items():
        m = points["meterline"][c]
        row = {"added_p50_ms": round(m["p50_ms"] - direct["p50_ms"], 3), "added_p99_ms": round(m["p99_ms"] - direct["p99_ms"], 3)}
        if "litellm" in points:
            lite = points["litellm"][c]
            row["litellm_added_p50_ms"] = round(lite["p50_ms"] - direct["p50_ms"], 3)
            row["rps_ratio_meterline_over_litellm"] = round(m["rps"] / max(lite["rps"], 0.001), 1)
        out[c] = row
    return out


def table(results: dict[str, Any]) -> str:
    longer = "".join(f" ({name}: {s} s)" for name, s in results.get("seconds_per_point_of", {}).items())
    lines = [f"Gateway ({'quick, ' if results.get('quick') else ''}{results.get('seconds_per_point')} s per point{longer}, "
             f"wrk 1 thread, {results.get('cores')} cores)",
             f"{'peer':<10} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>7}"]
    for name, points in results.get("peers", {}).items():
        for c, r in points.items():
            mark = " !" if r.get("flagged") else ""
            lines.append(f"{name:<10} {c:>4} {r['rps']:>9.1f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['non_2xx']:>7}{mark}")
    for c, d in results.get("derived", {}).items():
        ratio = f", meterline/litellm req/s {d['rps_ratio_meterline_over_litellm']}x" if "rps_ratio_meterline_over_litellm" in d else ""
        lines.append(f"  c={c}: meterline added p50 {d['added_p50_ms']} ms, p99 {d['added_p99_ms']} ms{ratio}")
    lite = results.get("litellm", {})
    if lite.get("status") != "ok":
        lines.append(f"  litellm: {lite.get('status')} ({lite.get('reason')})")
    elif lite.get("install_s"):
        lines.append(f"  litellm {lite.get('version')}: installed in {lite['install_s']} s with {lite.get('installed_with')}")
    stream = results.get("stream")
    if stream:
        lines.append(f"Streamed, time to first chunk (c=1, {stream['requests_per_peer']} requests per peer)")
        lines.append(f"{'peer':<10} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'failed':>6}")
        for name, r in stream["peers"].items():
            a = stream["added"].get(name, {})
            mark = " !" if r.get("flagged") else ""
            lines.append(f"{name:<10} {r.get('ttfc_p50_ms', float('nan')):>8.3f} {r.get('ttfc_p99_ms', float('nan')):>8.3f} "
                         f"{a.get('ttfc_p50_ms', float('nan')):>10.3f} {a.get('ttfc_p99_ms', float('nan')):>10.3f} "
                         f"{r['non_2xx'] + r['incomplete_streams']:>6}{mark}")
    sc = results.get("scaling")
    if sc:
        note = "" if sc.get("setting_supported") else f" ({sc['setting']} not in settings yet: one process each)"
        lines.append(f"Gateway scaling, `meterline gateway` at c={sc['connections']}{note}")
        for w, r in sc["points"].items():
            mark = " !" if r.get("flagged") else ""
            lines.append(f"  workers={w} ({r['processes']} processes): {r['rps']:.1f} req/s, p50 {r['p50_ms']:.3f} ms, "
                         f"p99 {r['p99_ms']:.3f} ms, non-2xx {r['non_2xx']}{mark}")
            if r.get("cpu_us_per_request"):
                us = r["cpu_us_per_request"]
                bound = (f"; one worker at c={sc['connections']}: a mean latency of at least"
                         f" {sc['connections'] * us / 1000:.1f} ms (Little's law)" if w == "1" else "")
                lines.append(f"    gateway CPU {us:.0f} us per request ({r['cores_busy']} cores busy):"
                             f" a core's ceiling {1e6 / us:,.0f} req/s{bound}")
        if "rps_ratio_2_over_1" in sc:
            lines.append(f"  2 workers / 1 worker: {sc['rps_ratio_2_over_1']}x")
    pipe = results.get("pipeline")
    if pipe:
        lines.append(f"Pipeline: {pipe['events_stored_so_far']} events stored of {pipe['meterline_requests_measured']} measured calls "
                     "(plus warm-ups) when the measurements ended")
    for f in results.get("flags", []):
        lines.append(f"FLAG {f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per point (LiteLLM's 5 s), 50 streamed requests per peer")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--litellm", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old commands
    args = parser.parse_args()
    report = run(args.quick, litellm=not args.no_litellm)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
