"""Tracking metadata: what a call says about who spent and why. Pure.

Sources, all optional: a body object ``_meterline`` (or ``_aipromptcost``, same fields), the
headers ``x-customer-id``, ``x-feature`` and ``x-meterline-tags``, and OpenAI's ``user`` field.
The body object is removed before forwarding; the provider never sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

METADATA_FIELDS = ("_meterline", "_aipromptcost")
MAX_TAGS = 32
MAX_TAG_LENGTH = 128
MAX_ID_LENGTH = 256


class MetadataError(ValueError):
    """The tracking metadata is malformed; the caller gets a 400 naming the field."""


@dataclass
class Tracking:
    prompt_key: str = ""
    prompt_version: int | None = None
    feature_tags: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    customer_id: str = ""
    feature: str = ""
    user: str = ""


def _text(value: Any, name: str, limit: int = MAX_ID_LENGTH) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MetadataError(f"{name} must be a string")
    if len(value) > limit:
        raise MetadataError(f"{name} is longer than {limit} characters")
    if any(ord(c) < 32 for c in value):
        raise MetadataError(f"{name} contains control characters")
    return value


def _tags(values: list[Any], name: str) -> list[str]:
    if len(values) > MAX_TAGS:
        raise MetadataError(f"{name} has more than {MAX_TAGS} tags")
    return [t for t in (_text(v, name, MAX_TAG_LENGTH).strip() for v in values) if t]


def extract(body: dict[str, Any], headers: Mapping[str, str]) -> Tracking:
    """Read tracking metadata and remove the body object in place."""
    meta: Any = None
    for name in METADATA_FIELDS:
        if name in body:
            meta = body.pop(name)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise MetadataError("_meterline must be an object with prompt_key, version and feature_tags")
    version = meta.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        # isascii: str.isdigit() also accepts digits like "²" that int() refuses
        if isinstance(version, str) and version.isascii() and version.isdigit() and 0 < len(version) <= 9 and int(version) >= 1:
            version = int(version)
        else:
            raise MetadataError("_meterline.version must be a positive integer")
    feature_tags = meta.get("feature_tags") or []
    if isinstance(feature_tags, str):
        feature_tags = [feature_tags]
    if not isinstance(feature_tags, list):
        raise MetadataError("_meterline.feature_tags must be a list of strings")
    header_tags = headers.get("x-meterline-tags", "")
    user = body.get("user")
    return Tracking(
        prompt_key=_text(meta.get("prompt_key"), "_meterline.prompt_key").strip(),
        prompt_version=version,
        feature_tags=_tags(feature_tags, "_meterline.feature_tags"),
        tags=_tags(header_tags.split(",") if header_tags else [], "x-meterline-tags"),
        customer_id=_text(headers.get("x-customer-id"), "x-customer-id").strip(),
        feature=_text(headers.get("x-feature"), "x-feature").strip(),
        user=_text(user, "user") if isinstance(user, str) else "",
    )
