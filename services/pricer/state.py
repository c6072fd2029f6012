"""Loads what the pricer's pure steps need from the store, and writes prompt registrations.

Blocking: each call is one or two store round-trips. Called at start-up, on a refresh interval
and when a batch holds events newer than the last check (then ``marker`` first), never per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import Decimal

from services.pricer.attribution import PromptRegistry, Registration
from services.pricer.catalog import Catalog, PriceOverride
from services.store import Store


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


def _dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


# The tables the pricer's state is built from. Append-only (ReplacingMergeTree, never deleted
# from), which is what makes ``marker`` sufficient.
STATE_TABLES = ("price_overrides", "prompt_versions", "prompt_activations")

Marker = tuple[tuple[str, int, int], ...]


async def marker(store: Store) -> Marker:
    """A value that moves whenever the pricer's state may have changed: per state table, the
    newest block number among its active parts (every insert takes a higher one, and merges keep
    it) and the newest data version (a mutation raises it). A merge may move it without a change,
    which costs a reload; a change never leaves it unmoved. One read of part metadata, instead of
    reading the three tables whole on every flush."""
    rows = await store.select(
        "SELECT table, max(max_block_number) AS block, max(data_version) AS version FROM system.parts"
        " WHERE database = currentDatabase() AND active AND table IN {tables:Array(String)}"
        " GROUP BY table ORDER BY table",
        {"tables": list(STATE_TABLES)},
    )
    return tuple((r["table"], int(r["block"]), int(r["version"])) for r in rows)


async def load_catalog(store: Store) -> Catalog:
    rows = await store.select(
        "SELECT org_id, provider, model, effective_from, input_per_mtok, output_per_mtok,"
        " cache_read_per_mtok, cache_write_per_mtok FROM price_overrides FINAL"
    )
    return Catalog.from_overrides(
        PriceOverride(
            org_id=r["org_id"],
            provider=r["provider"],
            model=r["model"],
            effective_from=_ts(r["effective_from"]),
            input_per_mtok=Decimal(r["input_per_mtok"]),
            output_per_mtok=Decimal(r["output_per_mtok"]),
            cache_read_per_mtok=_dec(r["cache_read_per_mtok"]),
            cache_write_per_mtok=_dec(r["cache_write_per_mtok"]),
        )
        for r in rows
    )


async def load_registry(store: Store) -> PromptRegistry:
    versions = await store.select("SELECT org_id, prompt_key, version FROM prompt_versions FINAL")
    activations = await store.select("SELECT org_id, prompt_key, version, activated_at FROM prompt_activations FINAL")
    return PromptRegistry.build(
        ((r["org_id"], r["prompt_key"], int(r["version"])) for r in versions),
        ((r["org_id"], r["prompt_key"], int(r["version"]), _ts(r["activated_at"])) for r in activations),
    )


async def register_prompts(store: Store, registrations: Sequence[Registration]) -> None:
    """Create prompts and versions first used by events. Idempotent: the tables replace on their
    keys, so a batch replayed after a crash registers nothing twice."""
    if not registrations:
        return
    # updated_at at the epoch: a prompt registered through the API (with its description) always
    # wins over one auto-registered from a stale view of the registry.
    prompts = [
        {"org_id": r.org_id, "prompt_key": r.prompt_key, "description": "", "created_at": r.at, "updated_at": _EPOCH}
        for r in registrations
        if r.new_prompt
    ]
    versions = [
        {"org_id": r.org_id, "prompt_key": r.prompt_key, "version": r.version, "model": r.model, "created_at": r.at}
        for r in registrations
    ]
    activations = [
        {"org_id": r.org_id, "prompt_key": r.prompt_key, "version": r.version, "activated_at": r.at}
        for r in registrations
        if r.new_prompt
    ]
    await store.insert("prompt_versions", versions)
    if prompts:
        # Prompts before activations: a reader that sees an activation can always find its prompt.
        await store.insert("prompts", prompts)
        await store.insert("prompt_activations", activations)
