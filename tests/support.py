"""Helpers shared by the tests: conditions awaited with a deadline, never blind sleeps."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last value: {last!r}")


async def await_until(
    check: Callable[[], Awaitable[T]], timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last value: {last!r}")


def spawn_meterline(args: list[str], env: dict[str, str], log: Path, *, own_group: bool = False) -> subprocess.Popen[bytes]:
    """``meterline ARGS`` in a child process, its output appended to ``log``. ``own_group``: in a
    process group of its own, as a terminal's foreground job is (``os.killpg`` is then Ctrl-C)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            process_group=0 if own_group else None,
        )


def wait_for_banner(log: Path, after: int = 0) -> str:
    """The start-up output of ``meterline up``/``query`` once its banner is printed (after both
    servers listen). ``after``: ignore the first bytes of the log (an earlier run's output)."""

    def printed() -> str | None:
        text = log.read_text()[after:]
        return text if "Meterline is up." in text else None

    return wait_until(printed, timeout_s=60, what="the start-up banner")


class PassThroughStore:
    """A real store, for a test that watches or holds up some of its calls: a subclass overrides
    ``insert`` and calls this one; reads and statements go straight to the store."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def insert(self, table: str, rows: Any, *, dedup_token: str | None = None) -> None:
        await self._store.insert(table, rows, dedup_token=dedup_token)

    async def select(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        return await self._store.select(sql, params)

    async def select_with_ids(self, sql: str, params: Any, ids: Any) -> list[dict[str, Any]]:
        return await self._store.select_with_ids(sql, params, ids)

    async def execute(self, sql: str, params: Any = None) -> None:
        await self._store.execute(sql, params)

    async def close(self) -> None:
        pass  # the store belongs to the test's fixture
