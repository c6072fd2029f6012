"""The pricer's state marker over the real engine and migrations: it must move on every write a
price override or prompt change makes, or the pricer would price a call with stale state."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from services.pricer import state
from services.store.chdb_store import ChdbStore

AT = datetime(2026, 3, 14, 9, 0, tzinfo=timezone.utc)


def _rows(table: str, org: str) -> list[dict]:
    if table == "price_overrides":
        return [{"org_id": org, "provider": "openai", "model": "gpt-4o", "effective_from": AT, "input_per_mtok": "1",
                 "output_per_mtok": "4", "cache_read_per_mtok": None, "cache_write_per_mtok": None, "created_at": AT}]
    if table == "prompt_versions":
        return [{"org_id": org, "prompt_key": "p", "version": 2, "model": "gpt-4o", "created_at": AT}]
    return [{"org_id": org, "prompt_key": "p", "version": 2, "activated_at": AT}]


async def test_the_marker_moves_on_every_state_write_and_only_then(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    before = await state.marker(store)
    assert await state.marker(store) == before  # nothing written: the pricer skips the reload
    for table in state.STATE_TABLES:
        marker = await state.marker(store)
        await store.insert(table, _rows(table, org))
        assert await state.marker(store) != marker, f"an insert into {table} left the marker unmoved"
    # The same row again (what a replayed registration writes) is a write too.
    marker = await state.marker(store)
    await store.insert("prompt_versions", _rows("prompt_versions", org))
    assert await state.marker(store) != marker


async def test_a_merge_never_hides_a_write(store: ChdbStore) -> None:
    """Merges may move the marker (a spurious reload), but a write merged away at once is seen."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    marker = await state.marker(store)
    await store.insert("prompt_activations", _rows("prompt_activations", org))
    await store.execute("OPTIMIZE TABLE prompt_activations FINAL")
    assert await state.marker(store) != marker
    loaded = await state.load_registry(store)
    assert loaded.active_version(org, "p", AT) == 2
