"""Platform keys: generated here, shown once, stored as a SHA-256 hash. Pure."""

from __future__ import annotations

import hashlib
import secrets
import uuid

KEY_PREFIX = "mtl_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # Keys carry 256 bits of entropy, so a plain SHA-256 (no salt, no stretching) cannot be
    # brute-forced, and it lets the hash itself be the lookup index.
    return hashlib.sha256(key.encode()).hexdigest()


def mask(prefix: str, last4: str) -> str:
    return f"{prefix}…{last4}"


def new_id(kind: str) -> str:
    return f"{kind}_{uuid.uuid4().hex[:16]}"
