"""Store drivers behind one seam (see ``base.Store``)."""

from __future__ import annotations

from services.common.settings import StoreSettings
from services.store.base import Store, StoreError

__all__ = ["Store", "StoreError", "open_store"]


def open_store(settings: StoreSettings) -> Store:
    if settings.is_embedded:
        from services.store.chdb_store import ChdbStore

        return ChdbStore(settings.chdb_path)
    from services.store.clickhouse_store import ClickHouseStore

    return ClickHouseStore(settings.url)
