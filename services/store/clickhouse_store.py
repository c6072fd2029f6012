"""A ClickHouse server over HTTP (clickhouse-connect), for production and Grafana.

clickhouse-connect's client is synchronous; it is thread-safe for concurrent queries when each
call carries its own session-less request, so statements run on a small thread pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec
from clickhouse_connect.driver.external import ExternalData

from services.store.base import (
    ID_TABLE,
    INSERT_SETTINGS,
    JSON_ARRAY_SETTINGS,
    READ_SETTINGS,
    StoreError,
    encode_insert,
    id_table_data,
    json_rows,
    plain_params,
)


class ClickHouseStore:
    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        import clickhouse_connect

        parts = urlsplit(url)
        database = parts.path.strip("/") or "default"
        self._client = clickhouse_connect.get_client(
            host=parts.hostname or "localhost",
            port=parts.port or (8443 if parts.scheme == "https" else 8123),
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            database=database,
            secure=parts.scheme == "https",
            autogenerate_session_id=False,  # sessions serialise queries server-side
        )
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="clickhouse")
        self.database = database

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except Exception as exc:
            raise StoreError(str(exc).strip()) from exc

    async def _rows(self, sql: str, params: Mapping[str, Any] | None, external_data: ExternalData | None = None) -> list[dict[str, Any]]:
        def _go() -> bytes:
            return self._client.raw_query(sql, parameters=plain_params(params), settings=READ_SETTINGS, fmt="JSONEachRow",
                                          external_data=external_data)

        data = await self._run(_go)
        return json_rows(data)

    async def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return await self._rows(sql, params)

    async def select_with_ids(self, sql: str, params: Mapping[str, Any] | None, ids: Sequence[str]) -> list[dict[str, Any]]:
        # sent with the query as an external table (HTTP multipart), named where ID_TABLE stood
        table = ExternalData(file_name="meterline_ids", data=id_table_data(ids), structure="id UUID", fmt="TSV")
        return await self._rows(sql.replace(ID_TABLE, "meterline_ids"), params, table)

    async def select_json(self, sql: str, params: Mapping[str, Any] | None = None) -> bytes:
        def _go() -> bytes:
            return self._client.raw_query(sql, parameters=plain_params(params), settings=JSON_ARRAY_SETTINGS, fmt="JSONEachRow")

        return await self._run(_go)

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        await self._run(lambda: self._client.command(sql, parameters=plain_params(params)))

    async def insert(
        self, table: str, rows: Sequence[Mapping[str, Any] | msgspec.Struct] | bytes, *, dedup_token: str | None = None
    ) -> None:
        payload = await encode_insert(rows)
        if not payload.data:
            return
        settings = dict(INSERT_SETTINGS)
        if dedup_token is not None:
            settings["insert_deduplication_token"] = dedup_token
        await self._run(lambda: self._client.raw_insert(
            table, column_names=payload.columns, insert_block=payload.data, settings=settings, fmt=payload.format
        ))

    async def close(self) -> None:
        self._client.close()
        self._executor.shutdown(wait=False)
