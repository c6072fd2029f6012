"""Platform-key authentication for the gateway, learned from the query service over HTTP.

The gateway never touches the store (one chDB directory belongs to one process), so it asks the
query service who a key belongs to and caches the answer for a couple of seconds: a revoked key
is refused within that TTL. While the query service is unreachable, keys seen recently keep
working (for up to ``stale_for_s``) so a control-plane blip does not take the proxy down.

An answer in the second half of its TTL is refreshed in the background while calls go on using
it, so a key in steady use never makes calls wait for its lookup. They used to, every TTL: all
calls of that key in flight then waited for the query service, whose answer could then queue
behind a pricer insert on the embedded store (tens of milliseconds, a gateway p99 of its own at
every concurrency; the store now runs reads beside inserts, on connections of their own). No
answer is used past its TTL, so the revocation bound holds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import msgspec
import structlog

from services.common.credentials import hash_key
from services.gateway.upstream import Origin, UpstreamBroken, UpstreamClient, proxy_for

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Caller:
    org_id: str
    key_id: str
    team_id: str
    role: str


class AuthUnavailable(RuntimeError):
    """The query service could not be asked and nothing usable is cached."""


class _WhoAmI(msgspec.Struct):
    org_id: str
    key_id: str
    role: str
    team_id: str = ""


class GatewayAuth:
    def __init__(self, query_url: str, ttl_s: float, stale_for_s: float = 300.0, timeout_s: float = 5.0) -> None:
        # The gateway's own keep-alive client, as for the providers (see upstream.py for why not
        # httpx here): a lookup leaves no garbage in reference cycles behind.
        self._origin = Origin.parse(query_url, proxy_for(query_url))
        self._client = UpstreamClient(connect_timeout_s=timeout_s, read_timeout_s=timeout_s)
        self._timeout = timeout_s
        self._ttl = ttl_s
        self._stale_for = stale_for_s
        self._cache: dict[str, tuple[float, Caller | None]] = {}  # key digest -> (expires at, answer)
        self._inflight: dict[str, asyncio.Task[Caller | None]] = {}

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self._client.close()

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
            async with asyncio.timeout(self._timeout):  # the whole lookup, not each wait
                status, body = await self._whoami(key)
        except (UpstreamBroken, TimeoutError, OSError) as exc:
            if stale is not None and stale[1] is not None and stale[0] + self._stale_for > time.monotonic():
                log.warning("query service unreachable; using a recently verified key", error=str(exc))
                return stale[1]
            raise AuthUnavailable("cannot verify the platform key right now") from exc
        if status in (401, 403):
            caller = None
        elif status == 200:
            try:
                who = msgspec.json.decode(body, type=_WhoAmI)
            except msgspec.DecodeError as exc:
                raise AuthUnavailable(f"key lookup answered what is not a key's owner: {exc}") from None
            caller = Caller(who.org_id, who.key_id, who.team_id, who.role)
        else:
            raise AuthUnavailable(f"key lookup answered {status}")
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self._ttl, caller)
        return caller

    async def _whoami(self, key: str) -> tuple[int, bytes]:
        if any(c in key for c in "\r\n\0"):
            return 401, b""  # no key has these, and they cannot go in a header
        response = await self._client.get(self._origin, "/api/auth/whoami", {"authorization": f"Bearer {key}"})
        try:
            return response.status, await response.read()
        finally:
            response.close()  # a no-op once read whole (the connection is back in the pool)
