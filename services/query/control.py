"""The control plane's named statements: organisations, teams, keys, prompts and versions.

Every function takes the organisation as a required argument; none can reach across tenants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from services.query.filters import optional
from services.query.keys import KEY_PREFIX, hash_key, mask, new_id, new_key
from services.store import Store


class Conflict(ValueError):
    """The request contradicts what exists (duplicate name, unknown reference)."""


class NotFound(LookupError):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -- organisations and bootstrap ---------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    org_id: str
    admin_key: str | None  # only when a key was created now: it is shown once


async def bootstrap(store: Store, configured_admin_key: str | None) -> Bootstrap:
    """First start: create an organisation and an admin key. With a configured admin key, make
    sure that key exists (created in the first organisation if it does not)."""
    orgs = await store.select("SELECT org_id FROM orgs FINAL WHERE operator ORDER BY created_at LIMIT 1")
    if orgs:
        org_id = orgs[0]["org_id"]
    else:
        org_id = new_id("org")
        now = _now()
        await store.insert(
            "orgs", [{"org_id": org_id, "name": "default", "operator": True, "created_at": now, "updated_at": now}]
        )
    if configured_admin_key:
        found = await store.select(
            "SELECT key_id FROM api_keys FINAL WHERE key_hash = {h:String}", {"h": hash_key(configured_admin_key)}
        )
        if not found:
            await _insert_key(store, org_id, configured_admin_key, "bootstrap admin", "", "admin")
        return Bootstrap(org_id, None)
    if orgs:
        return Bootstrap(org_id, None)
    key = new_key()
    await _insert_key(store, org_id, key, "bootstrap admin", "", "admin")
    return Bootstrap(org_id, key)


async def is_operator(store: Store, org_id: str) -> bool:
    rows = await store.select("SELECT operator FROM orgs FINAL WHERE org_id = {org:String}", {"org": org_id})
    return bool(rows and rows[0]["operator"])


async def create_org(store: Store, name: str) -> tuple[str, str]:
    """A new (tenant) organisation with its first admin key (returned once)."""
    org_id = new_id("org")
    now = _now()
    await store.insert("orgs", [{"org_id": org_id, "name": name, "created_at": now, "updated_at": now}])
    key = new_key()
    await _insert_key(store, org_id, key, "admin", "", "admin")
    return org_id, key


# -- teams ---------------------------------------------------------------------------------


async def list_teams(store: Store, org_id: str) -> list[dict[str, Any]]:
    return await store.select(
        "SELECT team_id AS id, name, created_at FROM teams FINAL WHERE org_id = {org:String} ORDER BY name",
        {"org": org_id},
    )


async def create_team(store: Store, org_id: str, name: str) -> dict[str, Any]:
    existing = await store.select(
        "SELECT team_id FROM teams FINAL WHERE org_id = {org:String} AND name = {name:String}",
        {"org": org_id, "name": name},
    )
    if existing:
        raise Conflict(f"a team named {name!r} exists already")
    now = _now()
    team = {"org_id": org_id, "team_id": new_id("team"), "name": name, "created_at": now, "updated_at": now}
    await store.insert("teams", [team])
    return {"id": team["team_id"], "name": name, "created_at": now}


async def team_names(store: Store, org_id: str) -> dict[str, str]:
    return {t["id"]: t["name"] for t in await list_teams(store, org_id)}


# -- keys ----------------------------------------------------------------------------------


async def _insert_key(store: Store, org_id: str, key: str, name: str, team_id: str, role: str) -> dict[str, Any]:
    now = _now()
    row = {
        "org_id": org_id,
        "key_id": new_id("key"),
        "key_hash": hash_key(key),
        "prefix": KEY_PREFIX,
        "last4": key[-4:],
        "name": name,
        "team_id": team_id,
        "role": role,
        "created_at": now,
        "revoked_at": None,
        "updated_at": now,
    }
    await store.insert("api_keys", [row])
    return row


def _key_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["key_id"],
        "name": row["name"],
        "team_id": row["team_id"],
        "role": row["role"],
        "masked_key": mask(row["prefix"], row["last4"]),
        "created_at": row["created_at"],
        "revoked_at": row.get("revoked_at"),
    }


async def create_key(store: Store, org_id: str, name: str, team_id: str, role: str) -> dict[str, Any]:
    if team_id and team_id not in await team_names(store, org_id):
        raise Conflict(f"no team {team_id!r} in this organisation")
    key = new_key()
    row = await _insert_key(store, org_id, key, name, team_id, role)
    return {**_key_view(row), "key": key}


_KEY_COLUMNS = "key_id, name, team_id, role, prefix, last4, created_at, revoked_at, key_hash, org_id, updated_at"


async def list_keys(store: Store, org_id: str) -> list[dict[str, Any]]:
    rows = await store.select(
        f"SELECT {_KEY_COLUMNS} FROM api_keys FINAL WHERE org_id = {{org:String}} ORDER BY created_at",
        {"org": org_id},
    )
    return [_key_view(r) for r in rows]


async def revoke_key(store: Store, org_id: str, key_id: str) -> dict[str, Any]:
    rows = await store.select(
        f"SELECT {_KEY_COLUMNS} FROM api_keys FINAL WHERE org_id = {{org:String}} AND key_id = {{id:String}}",
        {"org": org_id, "id": key_id},
    )
    if not rows:
        raise NotFound(f"no key {key_id!r}")
    row = rows[0]
    if row["revoked_at"] is None:
        now = _now()
        row = {**row, "revoked_at": now, "updated_at": now}
        await store.insert("api_keys", [row])
    return _key_view(row)


# -- prompts and versions ------------------------------------------------------------------


async def _versions(store: Store, org_id: str, prompt_key: str) -> list[dict[str, Any]]:
    return await store.select(
        "SELECT version, model, temperature, max_tokens, created_at FROM prompt_versions FINAL"
        " WHERE org_id = {org:String} AND prompt_key = {key:String} ORDER BY version",
        {"org": org_id, "key": prompt_key},
    )


async def _active_versions(store: Store, org_id: str, prompt_key: str | None = None) -> dict[str, int]:
    only_key, params = optional((("prompt_key = {key:String}", "key", prompt_key),))
    rows = await store.select(
        "SELECT prompt_key, argMax(version, activated_at) AS version FROM prompt_activations FINAL"
        f" WHERE org_id = {{org:String}}{only_key} GROUP BY prompt_key",
        {"org": org_id, **params},
    )
    return {r["prompt_key"]: int(r["version"]) for r in rows}


async def list_prompts(store: Store, org_id: str) -> list[dict[str, Any]]:
    prompts = await store.select(
        "SELECT p.prompt_key AS prompt_key, p.description AS description, p.created_at AS created_at,"
        " countDistinct(v.version) AS version_count"
        " FROM (SELECT * FROM prompts FINAL WHERE org_id = {org:String}) AS p"
        " LEFT JOIN (SELECT * FROM prompt_versions FINAL WHERE org_id = {org:String}) AS v"
        " ON v.prompt_key = p.prompt_key GROUP BY prompt_key, description, created_at ORDER BY prompt_key",
        {"org": org_id},
    )
    active = await _active_versions(store, org_id)
    return [{**p, "active_version": active.get(p["prompt_key"])} for p in prompts]


async def get_prompt(store: Store, org_id: str, prompt_key: str) -> dict[str, Any]:
    rows = await store.select(
        "SELECT prompt_key, description, created_at FROM prompts FINAL"
        " WHERE org_id = {org:String} AND prompt_key = {key:String}",
        {"org": org_id, "key": prompt_key},
    )
    if not rows:
        raise NotFound(f"no prompt {prompt_key!r}")
    active = (await _active_versions(store, org_id, prompt_key)).get(prompt_key)
    versions = [{**v, "active": v["version"] == active} for v in await _versions(store, org_id, prompt_key)]
    return {**rows[0], "active_version": active, "versions": versions}


async def create_prompt(
    store: Store, org_id: str, prompt_key: str, description: str, version: dict[str, Any]
) -> dict[str, Any]:
    """Register a prompt in advance, with version 1 active."""
    existing = await store.select(
        "SELECT 1 FROM prompts FINAL WHERE org_id = {org:String} AND prompt_key = {key:String}",
        {"org": org_id, "key": prompt_key},
    )
    if existing:
        raise Conflict(f"prompt {prompt_key!r} exists already")
    now = _now()
    await store.insert(
        "prompts",
        [{"org_id": org_id, "prompt_key": prompt_key, "description": description, "created_at": now, "updated_at": now}],
    )
    await _insert_version(store, org_id, prompt_key, 1, version, now)
    await _activate(store, org_id, prompt_key, 1, now)
    return await get_prompt(store, org_id, prompt_key)


async def _insert_version(
    store: Store, org_id: str, prompt_key: str, n: int, version: dict[str, Any], now: datetime
) -> None:
    await store.insert(
        "prompt_versions",
        [
            {
                "org_id": org_id,
                "prompt_key": prompt_key,
                "version": n,
                "model": version.get("model") or "",
                "temperature": version.get("temperature"),
                "max_tokens": version.get("max_tokens"),
                "created_at": now,
            }
        ],
    )


async def _activate(store: Store, org_id: str, prompt_key: str, n: int, now: datetime) -> None:
    await store.insert(
        "prompt_activations", [{"org_id": org_id, "prompt_key": prompt_key, "version": n, "activated_at": now}]
    )


async def add_version(
    store: Store, org_id: str, prompt_key: str, version: dict[str, Any], activate: bool
) -> dict[str, Any]:
    await get_prompt(store, org_id, prompt_key)  # 404 for an unknown prompt
    latest = await store.select(
        "SELECT max(version) AS n FROM prompt_versions FINAL WHERE org_id = {org:String} AND prompt_key = {key:String}",
        {"org": org_id, "key": prompt_key},
    )
    n = int(latest[0]["n"] or 0) + 1
    now = _now()
    await _insert_version(store, org_id, prompt_key, n, version, now)
    if activate:
        await _activate(store, org_id, prompt_key, n, now)
    return await get_prompt(store, org_id, prompt_key)


async def activate_version(store: Store, org_id: str, prompt_key: str, n: int) -> dict[str, Any]:
    prompt = await get_prompt(store, org_id, prompt_key)
    if not any(v["version"] == n for v in prompt["versions"]):
        raise NotFound(f"prompt {prompt_key!r} has no version {n}")
    await _activate(store, org_id, prompt_key, n, _now())
    return await get_prompt(store, org_id, prompt_key)


# -- price overrides -------------------------------------------------------------------------


async def list_price_overrides(store: Store, org_id: str) -> list[dict[str, Any]]:
    return await store.select(
        "SELECT provider, model, effective_from, input_per_mtok, cache_read_per_mtok, cache_write_per_mtok,"
        " output_per_mtok, created_at FROM price_overrides FINAL WHERE org_id = {org:String}"
        " ORDER BY provider, model, effective_from",
        {"org": org_id},
    )


async def set_price_override(store: Store, org_id: str, override: dict[str, Any]) -> dict[str, Any]:
    """A negotiated price for the organisation, from ``effective_from`` on. Setting the same
    (provider, model, effective_from) again replaces it. The pricer picks it up within its
    refresh interval; events already stored keep the price they were stored with."""
    row = {**override, "org_id": org_id, "created_at": _now()}
    await store.insert("price_overrides", [row])
    return {k: v for k, v in row.items() if k != "org_id"}
