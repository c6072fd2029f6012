"""Platform keys: generated here, shown once, stored as a SHA-256 hash. Pure."""

from __future__ import annotations

import secrets
import uuid

from services.common.credentials import hash_key

__all__ = ["KEY_PREFIX", "hash_key", "mask", "new_id", "new_key"]

KEY_PREFIX = "mtl_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def mask(prefix: str, last4: str) -> str:
    return f"{prefix}…{last4}"


def new_id(kind: str) -> str:
    return f"{kind}_{uuid.uuid4().hex[:16]}"
