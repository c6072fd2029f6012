"""Who is calling: platform keys resolved to a principal, with a short-lived cache.

The cache keeps key lookups off the store on the hot path; its TTL bounds how long a revoked key
keeps working (the revoking process drops its own entry at once).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from services.common.credentials import bearer_key, hash_key
from services.store import Store

Role = Literal["admin", "member"]


@dataclass(frozen=True)
class Principal:
    org_id: str
    key_id: str
    team_id: str
    role: Role


class KeyResolver:
    def __init__(self, store: Store, ttl_s: float) -> None:
        self._store = store
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def resolve(self, key: str) -> Principal | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        rows = await self._store.select(
            "SELECT org_id, key_id, team_id, role, revoked_at FROM api_keys FINAL"
            " WHERE key_hash = {h:String} LIMIT 1",
            {"h": digest},
        )
        principal = None
        if rows and rows[0]["revoked_at"] is None:
            r = rows[0]
            principal = Principal(r["org_id"], r["key_id"], r["team_id"], r["role"])
        if len(self._cache) > 100_000:
            self._cache.clear()  # bounded: a flood of random keys must not grow memory
        self._cache[digest] = (now + self._ttl, principal)
        return principal

    def forget_key_id(self, key_id: str) -> None:
        for digest, (_, p) in list(self._cache.items()):
            if p is not None and p.key_id == key_id:
                del self._cache[digest]


async def principal_of(request: ASGIConnection) -> Principal:
    """Litestar dependency: the authenticated caller, or 401."""
    key = bearer_key(request.headers)
    if key is None:
        raise NotAuthorizedException("missing platform key: send Authorization: Bearer <key>")
    resolver: KeyResolver = request.app.state.key_resolver
    principal = await resolver.resolve(key)
    if principal is None:
        raise NotAuthorizedException("unknown or revoked platform key")
    return principal


async def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for the control plane's write endpoints."""
    principal = await principal_of(connection)
    if principal.role != "admin":
        raise PermissionDeniedException("this endpoint needs an admin key")
