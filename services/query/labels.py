"""The names shown next to key and team ids (a key's masked form and name, a team's name), kept
per organisation in the query service.

They never change once written: keys and teams are created, never renamed, and revoking a key
leaves its labels as they were. So they are read from the store once per organisation, and again
only for an id not seen yet (a key or team created since, possibly by another replica of this
service). Joining them in the store instead (``api_keys FINAL``, ``teams FINAL``) cost every
read that shows them a fixed price: on the embedded store, 17 of by-key's 42 ms at 1M calls,
whatever the window.

An id that is in neither table (spend recorded under a key id the organisation does not have)
would send every read back to the store; so an organisation is read again for unseen ids at
most once per ``refresh_s``, and those ids show no label meanwhile. So every reader names the ids
it shows (``of_rows``): an organisation's labels asked for without ids are never read again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from services.query.keys import mask
from services.store import Store


class Labels(NamedTuple):
    """One organisation's labels; an id without one has no entry."""

    masked_keys: dict[str, str]  # key id -> masked key (the key itself is never stored)
    key_names: dict[str, str]
    team_names: dict[str, str]


class LabelCache:
    def __init__(self, store: Store, refresh_s: float = 5.0, max_orgs: int = 10_000) -> None:
        self._store = store
        self._refresh = refresh_s
        self._max_orgs = max_orgs
        self._orgs: dict[str, tuple[float, Labels]] = {}  # org id -> (read at, labels)

    async def of(self, org_id: str, key_ids: Iterable[str] = (), team_ids: Iterable[str] = ()) -> Labels:
        """The organisation's labels, with those of ``key_ids`` and ``team_ids`` if they exist
        (the empty id, a call without a team, has none and is not looked for)."""
        hit = self._orgs.get(org_id)
        if hit is not None:
            read_at, labels = hit
            unseen = (any(k and k not in labels.masked_keys for k in key_ids)
                      or any(t and t not in labels.team_names for t in team_ids))
            if not unseen or time.monotonic() - read_at < self._refresh:
                return labels
        labels = await self._read(org_id)
        if len(self._orgs) >= self._max_orgs and org_id not in self._orgs:
            self._orgs.clear()  # rare: a deployment with more organisations than this reads them again
        self._orgs[org_id] = (time.monotonic(), labels)
        return labels

    async def of_rows(self, org_id: str, rows: Sequence[Mapping[str, Any]]) -> Labels:
        """The labels of rows that carry a ``key_id`` and a ``team_id`` (calls, spend per key)."""
        return await self.of(org_id, (r["key_id"] for r in rows), (r["team_id"] for r in rows))

    def forget(self, org_id: str) -> None:
        """A key or team was created here: read the organisation again on its next use, so what
        this replica made is labelled at once."""
        self._orgs.pop(org_id, None)

    async def _read(self, org_id: str) -> Labels:
        rows = await self._store.select(
            "SELECT 'key' AS kind, key_id AS id, prefix, last4, name FROM api_keys FINAL WHERE org_id = {org:String}"
            " UNION ALL SELECT 'team' AS kind, team_id AS id, '' AS prefix, '' AS last4, name FROM teams FINAL"
            " WHERE org_id = {org:String}",
            {"org": org_id},
        )
        keys = [r for r in rows if r["kind"] == "key"]
        return Labels({r["id"]: mask(r["prefix"], r["last4"]) for r in keys}, {r["id"]: r["name"] for r in keys},
                      {r["id"]: r["name"] for r in rows if r["kind"] == "team"})
