"""The query service's key and team labels on the real store: read once per organisation, read
again for an id not seen yet (what another replica created) at most once per refresh period,
and at once after this replica creates a key or team.

The store is wrapped only to count the statements that reach it; every statement runs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.query import control
from services.query import labels as labels_module
from services.query.labels import LabelCache
from services.store.chdb_store import ChdbStore


class CountingStore:
    def __init__(self, store: ChdbStore) -> None:
        self._store = store
        self.selects = 0

    async def select(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.selects += 1
        return await self._store.select(sql, params)


async def test_labels_are_read_once_and_again_only_for_ids_not_seen(store: ChdbStore, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000.0]
    monkeypatch.setattr(labels_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    org_id, _ = await control.create_org(store, "labels")
    team = await control.create_team(store, org_id, "growth")
    first = await control.create_key(store, org_id, "first", team["id"], "member")
    counting = CountingStore(store)
    cache = LabelCache(counting, refresh_s=5.0)  # type: ignore[arg-type]

    names = await cache.of(org_id, [first["id"]], [team["id"]])
    assert names.masked_keys[first["id"]] == first["masked_key"] and names.key_names[first["id"]] == "first"
    assert names.team_names == {team["id"]: "growth"}
    assert counting.selects == 1

    # known ids, the empty team id (a call without a team): no read
    assert (await cache.of(org_id, [first["id"]], [team["id"], ""])).key_names[first["id"]] == "first"
    assert counting.selects == 1

    # a key made elsewhere (another replica): not looked for again within the refresh period...
    second = await control.create_key(store, org_id, "second", "", "member")
    now[0] += 4.0
    assert second["id"] not in (await cache.of(org_id, [second["id"]])).masked_keys
    assert counting.selects == 1
    # ...and found after it
    now[0] += 1.5
    assert (await cache.of(org_id, [second["id"]])).key_names[second["id"]] == "second"
    assert counting.selects == 2

    # an id that is nowhere costs at most one read per refresh period
    for _ in range(3):
        assert "key_nowhere" not in (await cache.of(org_id, ["key_nowhere"])).masked_keys
    assert counting.selects == 2
    now[0] += 5.0
    await cache.of(org_id, ["key_nowhere"])
    assert counting.selects == 3

    # made here: labelled at once
    third = await control.create_key(store, org_id, "third", "", "member")
    cache.forget(org_id)
    assert (await cache.of(org_id, [third["id"]])).key_names[third["id"]] == "third"
    assert counting.selects == 4

    # organisations are apart
    other, _ = await control.create_org(store, "labels-other")
    assert first["id"] not in (await cache.of(other, [first["id"]])).masked_keys
