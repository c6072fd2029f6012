"""Embedded ClickHouse (chDB): the engine runs in this process over one data directory.

chDB allows one data directory per process, any number of connections to it, and one statement
at a time per connection; statements on different connections run in parallel (chDB 4.4). So
each statement thread holds a connection of its own, and statements run on a small pool of these
threads, as the server driver's run on a pool of HTTP requests: the event loop stays free, and a
dashboard's read never waits for the pricer's insert in progress (a 20k-event insert keeps its
connection for about half a second). Whoever needs statements in order awaits each before the
next, as the pricer does (insert, then commit), on either driver.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from services.store.base import (
    ID_TABLE,
    INSERT_SETTINGS,
    JSON_ARRAY_SETTINGS,
    READ_SETTINGS,
    EncodedRows,
    StoreError,
    bind_params_as_text,
    encode_insert,
    id_table_data,
    json_rows,
    settings_clause,
    sql_literal,
)

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
# The engine shares this process's cores with its event loop. Parsing an insert on several
# threads (ClickHouse's default) pays off for large inserts on an idle many-core server; here, for
# the pricer's inserts of a few thousand rows, it cost 10-19% more CPU for no shorter insert, and
# its threads take the cores the event loop needs.
_INSERT_SETTINGS = {**INSERT_SETTINGS, "input_format_parallel_parsing": 0}


class StatementFile:
    """Where a statement's data waits for the engine to read it: an in-memory file. An insert's
    rows, which the statement names with ``FROM INFILE`` (rows by name) or ``file()`` (rows by
    position, see ``ChdbStore._insert_sync``); a read's ids (``select_with_ids``), with ``file()``.

    Two other ways cost more or lose errors. Rows inside the statement's text (``FORMAT ... \\n``
    then the rows) cost a third more CPU per row for a pricer batch of 20k rows, materialized
    views included: the engine handles the statement's 20 MB as query text before it parses the
    rows. chDB's streaming inserter (``send_insert``, 4.4) is as cheap but reports success when the
    table or a materialized view refuses the rows, so a failed insert would be committed.

    Each statement thread has its own (``_Lane``), used for one statement at a time."""

    def __init__(self) -> None:
        if hasattr(os, "memfd_create"):  # Linux: the rows never touch a disk
            self._fd = os.memfd_create("meterline-insert", os.MFD_CLOEXEC)
        else:  # an unlinked temporary file elsewhere
            with tempfile.TemporaryFile() as file:
                self._fd = os.dup(file.fileno())
        self.path = f"/proc/self/fd/{self._fd}" if sys.platform == "linux" else f"/dev/fd/{self._fd}"

    @contextmanager
    def holding(self, data: bytes) -> Iterator[str]:
        try:
            view = memoryview(data)
            while view:  # pwrite may write less than asked
                view = view[os.pwrite(self._fd, view, len(data) - len(view)):]
            yield self.path
        finally:
            os.ftruncate(self._fd, 0)  # empty for the next batch, and the batch's memory given back

    def close(self) -> None:
        os.close(self._fd)


def without_low_cardinality(column_type: str) -> str:
    """``column_type`` with every ``LowCardinality(...)`` wrapper taken off, nested ones too:
    ``Array(LowCardinality(String))`` is ``Array(String)``. See ``ChdbStore._insert_sync``."""
    marker = "LowCardinality("
    while (start := column_type.find(marker)) >= 0:
        depth, end = 1, start + len(marker)
        while depth:
            depth += {"(": 1, ")": -1}.get(column_type[end], 0)
            end += 1
        column_type = column_type[:start] + column_type[start + len(marker):end - 1] + column_type[end:]
    return column_type


class _Lane:
    """What one statement thread holds: its connection, and the file its statements' data
    waits in. Only that thread uses it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.body = StatementFile()

    def close(self) -> None:
        self.conn.close()
        self.body.close()


# Statements the embedded store runs at once. A few: the pricer keeps one busy while it writes,
# and the query service's reads (the gateway's key lookups among them) take the others. More
# would only share the same cores (each statement already uses every core ClickHouse sees).
CONNECTIONS = 4


class ChdbStore:
    def __init__(self, path: Path, *, connections: int = CONNECTIONS) -> None:
        import chdb  # imported here: a server deployment never loads the embedded engine

        if connections < 1:
            raise ValueError("connections must be at least 1")
        path.mkdir(parents=True, exist_ok=True)
        self._connect = chdb.connect
        self._local = threading.local()
        self._lanes: list[_Lane] = []
        self._lanes_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="chdb")
        self._path = path
        self._executor.submit(self._lane).result()  # the first connection now: a bad path fails here
        self._read_settings = settings_clause(READ_SETTINGS)
        self._json_array_settings = settings_clause(JSON_ARRAY_SETTINGS)

    def _lane(self) -> _Lane:
        """This statement thread's lane, connected on its first statement (the pool starts a
        thread only when every other one is busy)."""
        lane: _Lane | None = getattr(self._local, "lane", None)
        if lane is None:
            with self._lanes_lock:
                lane = _Lane(self._connect(str(self._path)))
                self._lanes.append(lane)
            self._local.lane = lane
        return lane

    @property
    def path(self) -> Path:
        return self._path

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except StoreError:
            raise
        except Exception as exc:  # chDB raises RuntimeError/ChdbError with ClickHouse's message
            raise StoreError(str(exc).strip()) from exc

    def _json_sync(self, sql: str, settings: str, params: dict[str, str]) -> bytes:
        return self._lane().conn.query(f"{sql}\nSETTINGS {settings}", "JSONEachRow", params=params).bytes()

    def _select_sync(self, sql: str, params: dict[str, str]) -> list[dict[str, Any]]:
        data = self._json_sync(sql, self._read_settings, params)
        return json_rows(data)

    async def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return await self._run(self._select_sync, sql, bind_params_as_text(params))

    async def select_json(self, sql: str, params: Mapping[str, Any] | None = None) -> bytes:
        return await self._run(self._json_sync, sql, self._json_array_settings, bind_params_as_text(params))

    def _select_with_ids_sync(self, sql: str, params: dict[str, str], ids: bytes) -> list[dict[str, Any]]:
        with self._lane().body.holding(ids) as path:
            return self._select_sync(sql.replace(ID_TABLE, f"file('{path}', 'TSV', 'id UUID')"), params)

    async def select_with_ids(self, sql: str, params: Mapping[str, Any] | None, ids: Sequence[str]) -> list[dict[str, Any]]:
        return await self._run(self._select_with_ids_sync, sql, bind_params_as_text(params), id_table_data(ids))

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        await self._run(lambda: self._lane().conn.query(sql, "CSV", params=bind_params_as_text(params)))

    def _read_structure(self, table: str, columns: tuple[str, ...]) -> str:
        """The structure positional rows of ``columns`` are read with: each column's type in the
        table now, LowCardinality taken off. Described for every insert (a millisecond, for
        thousands of rows), so an insert after a migration never reads a value as the type its
        column had before."""
        described = self._lane().conn.query(f"DESCRIBE TABLE {table}", "JSONCompactEachRow").bytes()
        types = {name: kind for name, kind, *_ in json_rows(described)}
        missing = [c for c in columns if c not in types]
        if missing:
            raise StoreError(f"table {table} has no column {missing[0]!r}")
        return ", ".join(f"`{c}` {without_low_cardinality(types[c])}" for c in columns)

    def _insert_sync(self, table: str, payload: EncodedRows, dedup_token: str | None) -> None:
        settings = dict(_INSERT_SETTINGS)
        if dedup_token is not None:
            settings["insert_deduplication_token"] = dedup_token
        clause = settings_clause(settings)
        lane = self._lane()
        if payload.columns is None:  # rows by name: the table's own defaults fill what a row leaves out
            with lane.body.holding(payload.data) as path:
                lane.conn.query(
                    f"INSERT INTO {table} FROM INFILE '{path}' COMPRESSION 'none' SETTINGS {clause} FORMAT {payload.format}"
                )
            return
        # Rows by position (the pricer's) name every column, so they can be read as a table of
        # their own and inserted from it. Read with LowCardinality columns as plain ones: the
        # parser puts each value of a LowCardinality column into its dictionary one at a time,
        # 0.3-0.45 us per value and a third of the parse of a usage_events row (14 such columns);
        # the insert then converts whole columns at once. A pricer batch's insert took 22.3 us of
        # CPU per row, views included, and takes 18.4 (tests pin the rows and the deduplication:
        # a token first used by an ``INSERT ... FROM INFILE`` makes this one a no-op too).
        structure = self._read_structure(table, payload.columns)
        with lane.body.holding(payload.data) as path:
            lane.conn.query(
                f"INSERT INTO {table}{payload.column_list} SELECT * FROM file({sql_literal(path)}, {sql_literal(payload.format)},"
                f" {sql_literal(structure)}) SETTINGS {clause}"
            )

    async def insert(
        self, table: str, rows: Sequence[Mapping[str, Any] | msgspec.Struct] | bytes, *, dedup_token: str | None = None
    ) -> None:
        if not _TABLE_NAME.match(table):
            raise StoreError(f"invalid table name {table!r}")
        payload = await encode_insert(rows)
        if not payload.data:
            return
        await self._run(self._insert_sync, table, payload, dedup_token)

    async def close(self) -> None:
        def _close() -> None:
            self._executor.shutdown(wait=True)  # statements in progress finish first
            for lane in self._lanes:  # the engine stops with the last connection to it
                lane.close()

        await asyncio.to_thread(_close)
