"""The query service's key and team labels on the real store: read once per organisation, read
again for an id not seen yet (what another replica created) at most once per refresh period,
and at once after this replica creates a key or team; the export names the keys of each batch.

The store is wrapped only to count the statements that reach it; every statement runs."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import pytest

from services.query import control
from services.query import labels as labels_module
from services.query.labels import LabelCache
from services.store.chdb_store import ChdbStore
from tests.integration.test_gateway_auth import query_service
from tests.integration.test_pricer_exactly_once import BASE, make_events
from tests.integration.test_query_reads import store_calls


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


async def test_the_export_names_a_key_made_elsewhere_after_the_labels_were_read(
    store: ChdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export asks for the labels of each batch's keys, so a key another replica made after
    this one read the organisation's labels is named once the refresh period has passed."""
    now = [1_000.0]
    monkeypatch.setattr(labels_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    org_id, admin_key = await control.create_org(store, "labels-export")
    auth = {"authorization": f"Bearer {admin_key}"}
    day = {"start": BASE.date().isoformat(), "end": BASE.date().isoformat(), "format": "json"}
    async with query_service(store) as url, httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as client:
        assert (await client.get("/api/export", params=day)).text == ""  # no calls yet; labels read
        key = await control.create_key(store, org_id, "made-elsewhere", "", "member")  # not through this replica
        events = [msgspec.structs.replace(e, key_id=key["id"], team_id="") for e in make_events(org_id, 3)]
        await store_calls(store, events)
        now[0] += 6.0
        lines = (await client.get("/api/export", params=day)).text.splitlines()
    assert len(lines) == 3
    assert {json.loads(line)["api_key"] for line in lines} == {key["masked_key"]}
