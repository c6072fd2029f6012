"""Platform keys as both the gateway and the query service read them. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The platform key from ``Authorization: Bearer`` or, as older Anthropic SDKs and some
    scripts send it, ``X-API-Key``."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip() or None


def hash_key(key: str) -> str:
    # Keys carry 256 bits of entropy, so a plain SHA-256 (no salt, no stretching) cannot be
    # brute-forced, and it lets the hash itself be the lookup index.
    return hashlib.sha256(key.encode()).hexdigest()
