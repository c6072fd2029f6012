"""In-process pieces over the real engines: one chDB directory for this test process (chDB
allows one per process) with the real migrations, and the session's Tansu broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.store.chdb_store import ChdbStore
from services.store.migrations import migrate


@pytest.fixture(scope="session")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChdbStore]:
    s = ChdbStore(tmp_path_factory.mktemp("chdb"))
    await migrate(s)
    yield s
    await s.close()
