"""Platform-key authentication for the gateway, learned from the query service over HTTP.

The gateway never touches the store (one chDB directory belongs to one process), so it asks the
query service who a key belongs to and caches the answer for a couple of seconds: a revoked key
is refused within that TTL. While the query service is unreachable, keys seen recently keep
working (for up to ``stale_for_s``) so a control-plane blip does not take the proxy down.

An answer in the second half of its TTL is refreshed in the background while calls go on using
it, so a key in steady use never makes calls wait for its lookup. They used to, every TTL: all
calls of that key in flight then waited for the query service, whose answer can queue behind a
pricer insert on the embedded store's one statement thread (tens of milliseconds, a gateway p99
of its own at every concurrency). No answer is used past its TTL, so the revocation bound holds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import structlog

from services.common.credentials import hash_key

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Caller:
    org_id: str
    key_id: str
    team_id: str
    role: str


class AuthUnavailable(RuntimeError):
    """The query service could not be asked and nothing usable is cached."""


class GatewayAuth:
    def __init__(self, query_url: str, ttl_s: float, stale_for_s: float = 300.0) -> None:
        self._client = httpx.AsyncClient(base_url=query_url, timeout=httpx.Timeout(5.0))
        self._ttl = ttl_s
        self._stale_for = stale_for_s
        self._cache: dict[str, tuple[float, Caller | None]] = {}  # key digest -> (expires at, answer)
        self._inflight: dict[str, asyncio.Task[Caller | None]] = {}

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self._client.aclose()

    async def resolve(self, key: str) -> Caller | None:
        digest = hash_key(key)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            if hit[0] - now < self._ttl / 2 and digest not in self._inflight:
                self._start_lookup(key, digest, hit)  # refresh ahead: nobody waits for it
            return hit[1]
        # One lookup per key at a time, however many calls arrive together.
        lookup = self._inflight.get(digest) or self._start_lookup(key, digest, hit)
        return await asyncio.shield(lookup)

    def _start_lookup(self, key: str, digest: str, hit: tuple[float, Caller | None] | None) -> asyncio.Task[Caller | None]:
        task = asyncio.get_running_loop().create_task(self._lookup(key, digest, hit), name="key-lookup")
        self._inflight[digest] = task  # also keeps the task referenced until it is done

        def done(t: asyncio.Task[Caller | None]) -> None:
            del self._inflight[digest]
            if not t.cancelled():
                t.exception()  # a refresh nobody awaits fails quietly: the next call looks up again

        task.add_done_callback(done)
        return task

    async def _lookup(self, key: str, digest: str, stale: tuple[float, Caller | None] | None) -> Caller | None:
        try:
            response = await self._client.get("/api/auth/whoami", headers={"authorization": f"Bearer {key}"})
        except httpx.HTTPError as exc:
            if stale is not None and stale[1] is not None and stale[0] + self._stale_for > time.monotonic():
                log.warning("query service unreachable; using a recently verified key", error=str(exc))
                return stale[1]
            raise AuthUnavailable("cannot verify the platform key right now") from exc
        if response.status_code in (401, 403):
            caller = None
        elif response.status_code == 200:
            data = response.json()
            caller = Caller(data["org_id"], data["key_id"], data.get("team_id", ""), data["role"])
        else:
            raise AuthUnavailable(f"key lookup answered {response.status_code}")
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self._ttl, caller)
        return caller
