"""The production commands as separate processes: a gateway scaled apart from the process that
owns the store, the migration command, and a clean stop on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from decimal import Decimal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.broker import free_port, wait_for_port
from services.runtime import PIPELINE_NICE
from services.store.migrations import available_migrations
from tests.e2e.conftest import Org
from tests.fakes.provider import FakeProvider
from tests.support import spawn_meterline, wait_for_banner, wait_until


@pytest.fixture
def lone_gateway(org: Org, fake_provider: FakeProvider, tmp_path: Path) -> Iterator[str]:
    """``meterline gateway`` on its own, sharing only Kafka and the query service with the stack.
    Its Anthropic base URL points at a closed port, to see what an unreachable provider gives."""
    port = free_port()
    env = {
        "METERLINE_KAFKA_BOOTSTRAP": org.stack.bootstrap,
        "METERLINE_QUERY_URL": org.stack.query_url,
        "METERLINE_GATEWAY_PORT": str(port),
        "METERLINE_OPENAI_BASE_URL": fake_provider.openai_base_url,
        "METERLINE_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{free_port()}",
    }
    proc = spawn_meterline(["gateway"], env, tmp_path / "gateway.log")
    try:
        wait_for_port("127.0.0.1", port, 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "gateway.log").read_text()


def test_a_separate_gateway_process_meters_into_the_same_pipeline(org: Org, lone_gateway: str) -> None:
    headers = {"authorization": f"Bearer {org.admin_key}", "x-provider-key": "sk-up",
               "x-fake-usage": json.dumps({"prompt_tokens": 400, "completion_tokens": 40})}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{lone_gateway}/api/proxy/v1/openai/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    anthropic_body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{lone_gateway}/api/proxy/v1/anthropic/messages", json=anthropic_body, headers=headers, timeout=30)
    assert r.status_code == 502 and r.json()["type"] == "error"
    totals = org.wait_for_requests(2)
    assert str(totals["total_cost"]) == "0.0014"  # 400 × $2.50/M + 40 × $10/M; the 502 costs nothing


def test_migrate_command_is_idempotent(tmp_path: Path) -> None:
    env = {**os.environ, "METERLINE_CLICKHOUSE_URL": f"chdb://{tmp_path / 'db'}"}
    first = subprocess.run([sys.executable, "-m", "services.cli", "migrate"], env=env, capture_output=True, text=True, timeout=120)
    every = [m.version for m in available_migrations()]
    assert first.returncode == 0 and f"applied migrations: {every}" in first.stdout, first.stderr
    again = subprocess.run([sys.executable, "-m", "services.cli", "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_bad_settings_are_refused_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "METERLINE_GATEWAY_PORT": "eighty"}
    r = subprocess.run([sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "METERLINE_GATEWAY_PORT" in r.stderr


def test_up_prints_a_key_once_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    gw, q = free_port(), free_port()
    env = {"METERLINE_GATEWAY_PORT": str(gw), "METERLINE_QUERY_PORT": str(q), "METERLINE_ADMIN_KEY": ""}
    log = tmp_path / "up.log"
    proc = spawn_meterline(["up", "--data-dir", str(tmp_path / "data")], env, log, own_group=True)
    try:
        # The banner comes after the servers listen: wait for it, not for the port.
        out = wait_for_banner(log)
        key = next(line.split(": ", 1)[1].strip() for line in out.splitlines() if line.startswith("Admin key"))
        who = httpx.get(f"http://127.0.0.1:{q}/api/auth/whoami", headers={"authorization": f"Bearer {key}"})
        assert who.status_code == 200 and who.json()["role"] == "admin"
        # A metered call, so that the gateway's producer and the pricer have work to finish.
        r = httpx.post(f"http://127.0.0.1:{gw}/api/proxy/v1/openai/chat/completions", timeout=30,
                       headers={"authorization": f"Bearer {key}", "x-provider-key": "sk-x", "x-sandbox": "true"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
    finally:
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group, not one process.
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert "stopped" in text
    for noise in ("Traceback", "ERROR", "Unclosed"):  # e.g. a broker that died before the last flush
        assert noise not in text, text[text.index(noise) - 500:][:2000]
    # Second start over the same data: no new key is printed.
    first_run = len(log.read_text())
    proc = spawn_meterline(["up", "--data-dir", str(tmp_path / "data")], env, log)
    try:
        out = wait_for_banner(log, after=first_run)
        assert "Admin key" not in out
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_sigterm_lets_an_in_flight_stream_finish_and_records_it(org: Org, fake_provider: FakeProvider, tmp_path: Path) -> None:
    port = free_port()
    env = {"METERLINE_KAFKA_BOOTSTRAP": org.stack.bootstrap, "METERLINE_QUERY_URL": org.stack.query_url,
           "METERLINE_GATEWAY_PORT": str(port), "METERLINE_OPENAI_BASE_URL": fake_provider.openai_base_url,
           "METERLINE_SPOOL_DIR": str(tmp_path / "spool")}
    proc = spawn_meterline(["gateway"], env, tmp_path / "gateway.log")
    wait_for_port("127.0.0.1", port, 30, proc)
    result: dict = {}

    def stream() -> None:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        headers = {"authorization": f"Bearer {org.admin_key}", "x-provider-key": "sk",
                   "x-fake-delay-ms": "1500", "x-fake-usage": json.dumps({"prompt_tokens": 100, "completion_tokens": 10})}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/api/proxy/v1/openai/chat/completions", json=body,
                          headers=headers, timeout=30) as r:
            result["status"] = r.status_code
            result["body"] = b"".join(r.iter_raw())

    caller = threading.Thread(target=stream)
    caller.start()
    wait_until(lambda: any(r.headers.get("x-fake-delay-ms") == "1500" for r in fake_provider.requests),
               what="the call to reach the provider")
    proc.send_signal(signal.SIGTERM)  # while the provider is still thinking
    caller.join(30)
    assert proc.wait(30) == 0, (tmp_path / "gateway.log").read_text()
    assert result["status"] == 200 and result["body"].endswith(b"data: [DONE]\n\n")
    totals = org.wait_for_requests(1)
    assert str(totals["total_cost"]) == "0.00035"  # 100 × $2.50/M + 10 × $10/M


def _children(pid: int) -> set[int]:
    """A process's children, whichever of its threads started them."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out.update(int(c) for c in (task / "children").read_text().split())
    return out


def test_a_multi_worker_gateway_shares_its_port_and_restarts_a_dead_worker(org: Org, fake_provider: FakeProvider,
                                                                          tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    env = {"METERLINE_KAFKA_BOOTSTRAP": org.stack.bootstrap, "METERLINE_QUERY_URL": org.stack.query_url,
           "METERLINE_GATEWAY_PORT": str(port), "METERLINE_OPENAI_BASE_URL": fake_provider.openai_base_url,
           "METERLINE_SPOOL_DIR": str(spool), "METERLINE_GATEWAY_WORKERS": "2"}
    proc = spawn_meterline(["gateway"], env, tmp_path / "gateway.log")
    try:
        workers = wait_until(lambda: _two_workers(proc.pid), what="two workers")
        wait_for_port("127.0.0.1", port, 30, proc)
        # Each worker keeps its own spool directory, so a restarted worker replays only its own.
        wait_until(lambda: {p.name for p in spool.iterdir()} == {"worker-0", "worker-1"} or None, what="spool dirs")
        headers = {"authorization": f"Bearer {org.admin_key}", "x-provider-key": "sk",
                   "x-fake-usage": json.dumps({"prompt_tokens": 100, "completion_tokens": 10})}
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        url = f"http://127.0.0.1:{port}/api/proxy/v1/openai/chat/completions"

        def call() -> None:  # a new connection each time, which either worker may accept
            r = httpx.post(url, json=body, headers=headers, timeout=30)
            assert r.status_code == 200, r.text

        for _ in range(10):
            call()
        org.wait_for_requests(10)  # a SIGKILL loses what a worker still holds in memory
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        replaced = wait_until(lambda: _two_workers(proc.pid, without=killed), timeout_s=30,
                              what="the dead worker to be replaced")
        assert replaced - workers  # a new process under the old index
        wait_until(lambda: _listening_workers(port) == 2 or None, timeout_s=30, what="the new worker to listen")
        for _ in range(10):
            call()
        totals = org.wait_for_requests(20)
        assert totals["request_count"] == 20
        assert Decimal(str(totals["total_cost"])) == Decimal("0.007")  # 20 × (100 × $2.50/M + 10 × $10/M)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "gateway.log").read_text()
    assert not any(Path(f"/proc/{pid}").exists() for pid in replaced)


def _two_workers(pid: int, without: int | None = None) -> set[int] | None:
    children = _children(pid)
    return children if len(children) == 2 and without not in children else None


def _listening_workers(port: int) -> int:
    """Sockets listening on ``port`` (one per worker with SO_REUSEPORT), from /proc/net/tcp."""
    hex_port = f"{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{hex_port}") and line.split()[3] == "0A")


def _gateway_pids(up_pid: int) -> list[int]:
    pids = []
    for child in _children(up_pid):
        with contextlib.suppress(OSError):
            if b"services.cli\x00gateway" in Path(f"/proc/{child}/cmdline").read_bytes():
                pids.append(child)
    return pids


def _nice(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])  # field 19, counted after the command name


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_up_runs_the_gateway_in_its_own_process_restarts_it_and_takes_it_down(tmp_path: Path) -> None:
    """The pricer's batches never hold up a call: the gateway is a process of its own under
    ``up``. One that dies is started again; when ``up`` dies, even by SIGKILL, the gateway goes
    too instead of holding the port with no pipeline behind it."""
    gw, q = free_port(), free_port()
    env = {"METERLINE_GATEWAY_PORT": str(gw), "METERLINE_QUERY_PORT": str(q), "METERLINE_ADMIN_KEY": ""}
    log = tmp_path / "up.log"
    proc = spawn_meterline(["up", "--data-dir", str(tmp_path / "data")], env, log, own_group=True)
    everything: set[int] = set()
    try:
        out = wait_for_banner(log)
        key = next(line.split(": ", 1)[1].strip() for line in out.splitlines() if line.startswith("Admin key"))
        everything.update(_children(proc.pid))
        [first] = _gateway_pids(proc.pid)
        # The calls come first: the pricer's process runs at a lower priority than the gateway.
        assert _nice(first) == 0 and _nice(proc.pid) == PIPELINE_NICE
        call = {"url": f"http://127.0.0.1:{gw}/api/proxy/v1/openai/chat/completions", "timeout": 30,
                "headers": {"authorization": f"Bearer {key}", "x-provider-key": "sk-x", "x-sandbox": "true"},
                "json": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
        assert httpx.post(**call).status_code == 200

        os.kill(first, signal.SIGKILL)
        second = wait_until(lambda: next((p for p in _gateway_pids(proc.pid) if p != first), None),
                            what="the gateway started again")
        everything.add(second)

        def serves() -> bool:
            try:
                return httpx.post(**call).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(serves, what="calls served by the restarted gateway")
        assert "gateway process exited; starting it again" in log.read_text()

        proc.kill()
        proc.wait(10)
        wait_until(lambda: not _alive(second), what="the gateway to stop with its supervisor")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in everything:  # the embedded broker is in a group of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_up_refuses_to_start_when_the_gateway_cannot_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "METERLINE_GATEWAY_PORT": str(port), "METERLINE_QUERY_PORT": str(free_port()),
               "METERLINE_ADMIN_KEY": ""}
        r = subprocess.run([sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "Meterline is up." not in out  # nothing was announced: a port that answers was not ours
    assert "the gateway did not start" in out and "Traceback" not in out, out
