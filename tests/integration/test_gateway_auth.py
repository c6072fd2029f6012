"""The gateway's key cache against the real query service (in process, over loopback HTTP, on the
real store): a key in steady use is refreshed in the background, so no call waits for its
lookup, and a revocation still takes effect within the TTL; while the query service is down a
recently verified key keeps working and nothing else does; and a lookup leaves no garbage.

The gateway's clock is driven by the test, so "the second half of the TTL" is a fact of the
test rather than of the machine's speed; the lookups themselves are real."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from services.common.broker import free_port
from services.common.credentials import hash_key
from services.common.settings import QuerySettings
from services.gateway import auth as auth_module
from services.gateway.auth import AuthUnavailable, Caller, GatewayAuth
from services.query import control
from services.query.app import create_app
from services.runtime import HttpServer
from services.store.chdb_store import ChdbStore

T = TypeVar("T")
TTL = 2.0


def returned_at_once(call: Coroutine[Any, Any, T]) -> T:
    """The call's result, if it returned without waiting for anything (no lookup awaited)."""
    try:
        call.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    call.close()
    raise AssertionError("the call waited")


@asynccontextmanager
async def query_service(store: ChdbStore, port: int | None = None) -> AsyncIterator[str]:
    """The query service on loopback, caching nothing: every whoami reads the store, so a
    revocation shows at once."""
    port = port or free_port()
    server = HttpServer(create_app(store, QuerySettings(port=port, host="127.0.0.1", key_cache_ttl_s=0.0)),
                        "127.0.0.1", port, "query")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


async def test_a_key_in_steady_use_is_refreshed_while_calls_go_on_and_a_revocation_still_lands_within_the_ttl(
    store: ChdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    org_id, key = await control.create_org(store, "auth-refresh")
    now = drive_the_clock(monkeypatch)
    async with query_service(store) as url:
        auth = GatewayAuth(url, ttl_s=TTL)
        try:
            await steady_use_then_revocation(auth, store, key, org_id, now)
        finally:
            await auth.close()


async def steady_use_then_revocation(auth: GatewayAuth, store: ChdbStore, key: str, org_id: str, now: list[float]) -> None:
    digest = hash_key(key)
    caller = await auth.resolve(key)  # nothing cached: this call waits for the lookup
    assert isinstance(caller, Caller) and caller.org_id == org_id

    now[0] += 0.4 * TTL  # first half of the answer's TTL: used as it is
    assert returned_at_once(auth.resolve(key)) == caller
    assert digest not in auth._inflight

    now[0] += 0.2 * TTL  # second half: still used at once, and looked up again meanwhile
    assert returned_at_once(auth.resolve(key)) == caller
    assert returned_at_once(auth.resolve(key)) == caller  # one lookup, however many calls
    assert digest in auth._inflight, "no lookup started in the second half of the TTL"
    await auth._inflight[digest]
    refreshed_at = now[0]

    await control.revoke_key(store, org_id, caller.key_id)
    now[0] = refreshed_at + 0.6 * TTL  # the refreshed answer's second half
    assert returned_at_once(auth.resolve(key)) == caller  # the answer is not past its TTL yet
    await auth._inflight[digest]
    assert returned_at_once(auth.resolve(key)) is None  # refused: 0.6 TTL after the revocation

    now[0] += 2 * TTL  # no answer is used past its TTL: this call waits for a lookup again
    call = auth.resolve(key)
    with pytest.raises(AssertionError, match="waited"):
        returned_at_once(call)
    assert await auth.resolve(key) is None


def drive_the_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The auth module's clock, set by the test; the event loop keeps the real one."""
    now = [1_000.0]
    monkeypatch.setattr(auth_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


async def test_while_the_query_service_is_down_a_recently_verified_key_keeps_working_and_nothing_else_does(
    store: ChdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = await control.create_org(store, "auth-down")
    now = drive_the_clock(monkeypatch)
    port = free_port()
    auth = GatewayAuth(f"http://127.0.0.1:{port}", ttl_s=TTL, stale_for_s=60.0, timeout_s=2.0)
    try:
        async with query_service(store, port):
            caller = await auth.resolve(key)
            assert caller is not None
            assert await auth.resolve("mtl_x\r\nx-org: other") is None  # never put in a header, never a key
        now[0] += 2 * TTL  # past the answer's TTL, within stale_for: the lookup fails, the key works
        assert await auth.resolve(key) == caller
        with pytest.raises(AuthUnavailable):  # a key never verified is not let through
            await auth.resolve("mtl_never_seen")
        now[0] += 60.0  # verified too long ago
        with pytest.raises(AuthUnavailable):
            await auth.resolve(key)
    finally:
        await auth.close()


async def test_key_lookups_leave_nothing_for_the_cyclic_collector(store: ChdbStore) -> None:
    """The gateway runs its collector's older generations rarely (``_tune_gc``), so garbage in
    reference cycles lives long and raises the process's memory. httpx left about 40 objects in
    cycles per lookup; the gateway's own client leaves none (the query service in this process
    leaves none either)."""
    _, key = await control.create_org(store, "auth-garbage")
    async with query_service(store) as url:
        auth = GatewayAuth(url, ttl_s=0.0)  # every call looks its key up
        try:
            for _ in range(10):  # warm up: the pool, first-use caches
                assert await auth.resolve(key) is not None
            gc.collect()
            gc.disable()
            try:
                for _ in range(100):
                    assert await auth.resolve(key) is not None
                in_cycles = gc.collect()
            finally:
                gc.enable()
        finally:
            await auth.close()
    assert in_cycles < 100, f"{in_cycles} objects left in reference cycles by 100 key lookups"
