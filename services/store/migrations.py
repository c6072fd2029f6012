"""Applies the numbered, append-only migrations in ``schemas/migrations`` in order, once each.

A migration file is never edited after it has shipped: a change is a new file. Statements in a
file are separated by a semicolon at the end of a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import structlog

from services.store.base import Store

log = structlog.get_logger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return tuple(s.strip() for s in re.split(r";\s*$", body, flags=re.MULTILINE) if s.strip())


def available_migrations() -> list[Migration]:
    folder = resources.files("schemas") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), split_statements(entry.read_text())))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


async def applied_versions(store: Store) -> set[int]:
    await store.execute(_LEDGER)
    rows = await store.select("SELECT version FROM schema_migrations FINAL")
    return {int(r["version"]) for r in rows}


async def migrate(store: Store) -> list[int]:
    """Apply what is missing; returns the versions applied now. Safe to run concurrently with
    itself: every statement is idempotent (IF NOT EXISTS)."""
    done = await applied_versions(store)
    applied = []
    for migration in available_migrations():
        if migration.version in done:
            continue
        for statement in migration.statements:
            await store.execute(statement)
        await store.insert("schema_migrations", [{"version": migration.version, "name": migration.name}])
        log.info("migration applied", version=migration.version, name=migration.name)
        applied.append(migration.version)
    return applied
