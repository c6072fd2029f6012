"""Spend aggregations: named SQL over the daily rollups, never the raw table.

Each query takes the organisation and the date window as required arguments. ``provider`` ''
means every provider; sandbox traffic is left out unless asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from services.query.filters import optional
from services.query.labels import LabelCache
from services.store import Store


@dataclass(frozen=True)
class Window:
    org_id: str
    start: date
    end: date  # inclusive
    provider: str = ""
    include_sandbox: bool = False

    def _provider(self) -> tuple[str, dict[str, Any]]:
        # written only when given, as every optional filter (filters.py)
        return optional((("provider = {provider:String}", "provider", self.provider),))

    def where(self) -> str:
        """The window as a filter on a daily rollup, with ``params``. Sandbox calls are left out
        unless asked for."""
        where = f"org_id = {{org:String}} AND day BETWEEN {{start:Date}} AND {{end:Date}}{self._provider()[0]}"
        return where if self.include_sandbox else f"{where} AND NOT sandbox"

    def params(self) -> dict[str, Any]:
        return {"org": self.org_id, "start": self.start, "end": self.end, **self._provider()[1]}


def money(value: Decimal) -> Decimal:
    """Exact, without the trailing zeros of the 12-decimal storage scale (0.00725, not 0.007250000000)."""
    return Decimal(format(value.normalize(), "f"))


async def monthly(store: Store, w: Window) -> dict[str, Any]:
    rows = await store.select(
        f"SELECT sum(total_cost) AS total_cost, sum(request_count) AS request_count"
        f" FROM spend_daily_by_key WHERE {w.where()}",
        w.params(),
    )
    r = rows[0] if rows else {"total_cost": "0", "request_count": 0}
    return {
        "total_cost": Decimal(r["total_cost"]),
        "request_count": int(r["request_count"]),
        "period": {"start": w.start.isoformat(), "end": w.end.isoformat()},
    }


async def by_prompt(store: Store, w: Window) -> dict[str, Any]:
    rows = await store.select(
        f"SELECT prompt_key, sum(total_cost) AS total_cost, sum(request_count) AS request_count"
        f" FROM spend_daily_by_prompt WHERE {w.where()}"
        f" GROUP BY prompt_key ORDER BY total_cost DESC, prompt_key",
        w.params(),
    )
    return {
        "prompts": [
            {"prompt_key": r["prompt_key"], "total_cost": Decimal(r["total_cost"]), "request_count": int(r["request_count"])}
            for r in rows
        ]
    }


async def by_team(store: Store, labels: LabelCache, w: Window) -> dict[str, Any]:
    """Cost and calls per team, with the team's name."""
    rows = await store.select(
        f"SELECT team_id, sum(total_cost) AS total_cost, sum(request_count) AS request_count"
        f" FROM spend_daily_by_key WHERE {w.where()} GROUP BY team_id ORDER BY total_cost DESC, team_id",
        w.params(),
    )
    names = (await labels.of(w.org_id, team_ids=[r["team_id"] for r in rows])).team_names
    return {
        "teams": [
            {
                "team_id": r["team_id"],
                # keys without a team (e.g. the bootstrap admin key) spend as "unassigned"
                "team_name": names.get(r["team_id"]) or ("unassigned" if not r["team_id"] else r["team_id"]),
                "total_cost": Decimal(r["total_cost"]),
                "request_count": int(r["request_count"]),
            }
            for r in rows
        ]
    }


async def version_comparison(store: Store, w: Window, prompt_key: str) -> dict[str, Any]:
    rows = await store.select(
        f"SELECT prompt_version, sum(total_cost) AS total_cost, sum(request_count) AS request_count,"
        f" sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens"
        f" FROM spend_daily_by_prompt WHERE {w.where()} AND prompt_key = {{prompt_key:String}}"
        f" GROUP BY prompt_version ORDER BY prompt_version",
        {**w.params(), "prompt_key": prompt_key},
    )
    versions = []
    for r in rows:
        total, count = Decimal(r["total_cost"]), int(r["request_count"])
        versions.append(
            {
                "version_number": int(r["prompt_version"]),
                "total_cost": total,
                "request_count": count,
                "avg_cost_per_request": money((total / count).quantize(Decimal("1e-12"))) if count else Decimal(0),
                "input_tokens": int(r["input_tokens"]),
                "output_tokens": int(r["output_tokens"]),
            }
        )
    return {"prompt_key": prompt_key, "versions": versions}
