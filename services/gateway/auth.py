"""Platform-key authentication for the gateway, learned from the query service over HTTP.

The gateway never touches the store (one chDB directory belongs to one process), so it asks the
query service who a key belongs to and caches the answer for a couple of seconds: a revoked key
is refused within that TTL. While the query service is unreachable, keys seen recently keep
working (for up to ``stale_for_s``) so a control-plane blip does not take the proxy down.
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
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._inflight: dict[str, asyncio.Future[Caller | None]] = {}

    async def close(self) -> None:
        await self._client.aclose()

    async def resolve(self, key: str) -> Caller | None:
        digest = hash_key(key)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        # One lookup per key at a time, however many calls arrive together.
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Caller | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            caller = await self._lookup(key, digest, hit)
            future.set_result(caller)
            return caller
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, get it through shield
            raise
        finally:
            del self._inflight[digest]

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
