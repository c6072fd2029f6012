"""The gateway's key cache against the real query service (in process, over loopback HTTP, on the
real store): a key in steady use is refreshed in the background, so no call waits for its
lookup, and a revocation still takes effect within the TTL.

The gateway's clock is driven by the test, so "the second half of the TTL" is a fact of the
test rather than of the machine's speed; the lookups themselves are real."""

from __future__ import annotations

from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from services.common.broker import free_port
from services.common.credentials import hash_key
from services.common.settings import QuerySettings
from services.gateway import auth as auth_module
from services.gateway.auth import Caller, GatewayAuth
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


async def test_a_key_in_steady_use_is_refreshed_while_calls_go_on_and_a_revocation_still_lands_within_the_ttl(
    store: ChdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    org_id, key = await control.create_org(store, "auth-refresh")
    port = free_port()
    # the query service caches nothing here: every whoami reads the store, so a revocation shows at once
    server = HttpServer(create_app(store, QuerySettings(port=port, host="127.0.0.1", key_cache_ttl_s=0.0)),
                        "127.0.0.1", port, "query")
    await server.start()
    now = [1_000.0]
    # the auth module's clock only: the event loop keeps the real one
    monkeypatch.setattr(auth_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    auth = GatewayAuth(f"http://127.0.0.1:{port}", ttl_s=TTL)
    digest = hash_key(key)
    try:
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
    finally:
        await auth.close()
        await server.stop()
