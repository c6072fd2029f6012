"""The whole stack as a user runs it: ``meterline up`` in a child process, over the session's
Tansu broker (so tests can read the topics) and its own chDB directory, with upstream calls
going to the fake provider. Every test works in an organisation of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.broker import EmbeddedBroker, free_port, wait_for_port
from tests.fakes.provider import FakeProvider
from tests.support import wait_until

OPERATOR_KEY = "mtl_e2e_operator_" + uuid.uuid4().hex


@dataclass
class Stack:
    gateway_url: str
    query_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    bootstrap: str

    def query(self, key: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.query_url}{path}", headers=headers, timeout=30, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Org:
    """A fresh organisation: its admin key, and helpers to read its spend."""

    stack: Stack
    org_id: str
    admin_key: str

    def get(self, path: str, key: str | None = None, **params: Any) -> Any:
        r = self.stack.query(key or self.admin_key, "GET", path, params=params)
        assert r.status_code == 200, r.text
        return r.json(parse_float=Decimal)

    def post(self, path: str, body: dict[str, Any], key: str | None = None) -> Any:
        r = self.stack.query(key or self.admin_key, "POST", path, json=body)
        assert r.status_code in (200, 201), r.text
        return r.json(parse_float=Decimal)

    def monthly(self, **params: Any) -> dict[str, Any]:
        return self.get("/api/aggregations/monthly", **params)

    def wait_for_requests(self, count: int, **params: Any) -> dict[str, Any]:
        """Spend once ``count`` calls are stored: the pipeline is asynchronous by design."""
        def reached() -> dict[str, Any] | None:
            totals = self.monthly(**params)
            return totals if totals["request_count"] >= count else None

        return wait_until(reached, what=f"{count} requests in the monthly aggregation")

    def new_key(self, team_id: str = "", role: str = "member") -> dict[str, Any]:
        return self.post("/api/keys", {"name": "test", "team_id": team_id, "role": role})


@pytest.fixture(scope="session")
def stack(broker: EmbeddedBroker, fake_provider: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    gateway_port, query_port = free_port(), free_port()
    env = {
        **os.environ,
        "METERLINE_KAFKA_BOOTSTRAP": broker.bootstrap,
        "METERLINE_OPENAI_BASE_URL": fake_provider.openai_base_url,
        "METERLINE_ANTHROPIC_BASE_URL": fake_provider.anthropic_base_url,
        "METERLINE_ADMIN_KEY": OPERATOR_KEY,
        "METERLINE_GATEWAY_PORT": str(gateway_port),
        "METERLINE_QUERY_PORT": str(query_port),
        # Debug level: the canary test proves nothing leaks at any level.
        "METERLINE_LOG_LEVEL": "debug",
        "METERLINE_MAX_BODY_BYTES": str(256 * 1024),
        "METERLINE_UPSTREAM_READ_TIMEOUT": "3",
    }
    log_path = root / "meterline.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", "--data-dir", str(root / "data")],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
        )
    try:
        wait_for_port("127.0.0.1", gateway_port, 60, process)
        wait_for_port("127.0.0.1", query_port, 60, process)
    except Exception:
        process.kill()
        raise RuntimeError("stack did not start:\n" + log_path.read_text())
    s = Stack(f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{query_port}", root / "data", log_path, process, broker.bootstrap)
    yield s
    if process.poll() is None:
        process.terminate()
        process.wait(30)


@pytest.fixture
def org(stack: Stack) -> Org:
    r = stack.query(OPERATOR_KEY, "POST", "/api/orgs", json={"name": f"org-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    body = r.json()
    return Org(stack, body["org_id"], body["admin_key"])
