"""The store seam: the one interface the pricer and the query service use to reach ClickHouse.

Two drivers implement it, embedded chDB and a ClickHouse server over HTTP, and both speak the
same SQL and the same wire formats: rows go in as JSONEachRow (or, for array-like Structs,
JSONCompactEachRow under an explicit column list) and come out as JSONEachRow, so what a test
proves against chDB holds against a server.

Query parameters use ClickHouse's server-side binding (``{name:Type}``), never string
formatting, so no value can change a query's meaning.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import msgspec
from clickhouse_connect.driver.binding import format_bind_value

# Settings every read uses, on both drivers: exact decimals, plain numbers for 64-bit integers.
READ_SETTINGS: dict[str, Any] = {
    "output_format_json_quote_decimals": 1,
    "output_format_json_quote_64bit_integers": 0,
    "output_format_json_named_tuples_as_objects": 1,
}
# Settings of a read whose JSON goes to a client as it is (``select_json``): one JSON array of
# row objects, money as exact JSON numbers (the store prints a decimal's digits, without the
# trailing zeros of its scale), as the query service's own encoder writes them.
JSON_ARRAY_SETTINGS: dict[str, Any] = {
    **READ_SETTINGS,
    "output_format_json_quote_decimals": 0,
    "output_format_decimal_trailing_zeros": 0,
    "output_format_json_array_of_rows": 1,
}
# Settings every insert uses: dedup holds for the materialized views fed by the table too.
INSERT_SETTINGS: dict[str, Any] = {
    "date_time_input_format": "best_effort",
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "insert_deduplicate": 1,
}


# Where a read names the ids given to ``select_with_ids``: each driver puts its own table there.
# A batch's 20k ids as a literal (``IN {ids:Array(UUID)}``) cost the engine 30-40 ms to take in,
# whatever their form (an array of strings, one string split or parsed by ``format``: slower
# still); read as a table they cost a few. It was a tenth of a pricer's store work per event.
ID_TABLE = "__meterline_ids__"


def id_table_data(ids: Sequence[str]) -> bytes:
    """``ids`` as the table's TSV: one id a line (ids are UUIDs: nothing to escape)."""
    return ("\n".join(ids) + "\n").encode() if ids else b""


def json_rows(data: bytes) -> list[Any]:
    """A JSONEachRow (or JSONCompactEachRow) answer, a value per line, as Python values."""
    return [msgspec.json.decode(line) for line in data.splitlines() if line]


class StoreError(RuntimeError):
    """The store refused or failed a statement, with ClickHouse's message. Callers that must not
    lose data (the pricer) retry every one of them; nothing is skipped on a guess about which
    errors are permanent."""


class Store(Protocol):
    async def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a read and return its rows as dicts (decimals as exact strings)."""
        ...

    async def select_json(self, sql: str, params: Mapping[str, Any] | None = None) -> bytes:
        """Run a read and return its rows as one JSON array of objects, money as exact numbers:
        for answers too large to take apart into Python objects only to encode them again."""
        ...

    async def select_with_ids(self, sql: str, params: Mapping[str, Any] | None, ids: Sequence[str]) -> list[dict[str, Any]]:
        """``select`` of a read that names ``ID_TABLE``: a table of ``ids`` (one column, ``id
        UUID``), sent beside the statement rather than inside it."""
        ...

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, ALTER, INSERT ... SELECT)."""
        ...

    async def insert(
        self, table: str, rows: Sequence[Mapping[str, Any] | msgspec.Struct] | bytes, *, dedup_token: str | None = None
    ) -> None:
        """Insert rows (dicts, Structs, or ready JSONEachRow bytes). With ``dedup_token``, inserting
        the same token again is a no-op in the table and in every materialized view it feeds."""
        ...

    async def close(self) -> None: ...


def _plain(value: Any) -> Any:
    # Millisecond precision matters here: clickhouse-connect's own datetime binding drops it.
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)):
        if _joined("", value) is not None:
            return list(value)  # a batch's thousands of ids: nothing to convert
        return [_plain(v) for v in value]
    return value


def _joined(separator: str, values: list[Any] | tuple[Any, ...]) -> str | None:
    """The values joined, or None when any is not a str: one pass in C, which both checks the
    thousands of ids of a batch and gives the text to check them against."""
    try:
        return separator.join(values)
    except TypeError:
        return None


def plain_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Parameters reduced to str/int/float/list so both drivers bind them identically."""
    return {k: _plain(v) for k, v in (params or {}).items()}


# Strings that need no escaping inside a quoted literal (ids, UUIDs, names of things), joined
# by commas.
_PLAIN_TEXT_LIST = re.compile(r"[A-Za-z0-9_.:,\-]*")


def _bind_text(value: Any) -> str:
    # A batch's ids are bound as one array of thousands of strings; the generic formatter escapes
    # them character by character, which is most of a flush's CPU. Plain strings skip that,
    # checked all at once: a comma inside one is harmless, it is quoted with the rest of it.
    if isinstance(value, list) and value:
        joined = _joined(",", value)
        if joined is not None and _PLAIN_TEXT_LIST.fullmatch(joined):
            return "['" + "','".join(value) + "']"
    return format_bind_value(value)


def bind_params_as_text(params: Mapping[str, Any] | None) -> dict[str, str]:
    """Parameters in ClickHouse's escaped text form, for drivers that take strings (chDB)."""
    return {k: _bind_text(v) for k, v in plain_params(params).items()}


_row_encoder = msgspec.json.Encoder(decimal_format="string")


def encode_rows(rows: Sequence[Mapping[str, Any] | msgspec.Struct] | bytes) -> bytes:
    """Rows as one JSON value per line: an object per mapping or Struct (JSONEachRow), an array
    per array-like Struct (JSONCompactEachRow, see ``encode_insert``)."""
    if isinstance(rows, (bytes, bytearray)):
        return bytes(rows)
    return _row_encoder.encode_lines(rows)


ENCODE_CHUNK = 2_000  # rows: about 5 ms of encoding


async def encode_rows_in_turns(rows: Sequence[Mapping[str, Any] | msgspec.Struct] | bytes) -> bytes:
    """``encode_rows``, ``ENCODE_CHUNK`` rows at a time with a turn of the event loop between:
    a pricer's batch of 20k rows encoded at once holds the loop for about 50 ms, and in
    ``meterline up`` the gateway and the query service share that loop. Each row is one line, so
    the chunks' bytes joined are the batch's."""
    if isinstance(rows, (bytes, bytearray)):
        return encode_rows(rows)  # encoded already
    rows = rows if isinstance(rows, Sequence) else list(rows)
    chunks = []
    for start in range(0, len(rows), ENCODE_CHUNK):
        if start:
            await asyncio.sleep(0)
        chunks.append(encode_rows(rows[start:start + ENCODE_CHUNK]))
    return b"".join(chunks)


class EncodedRows(NamedTuple):
    """An insert's body, with the input format and column list that read it."""

    data: bytes
    format: str
    columns: tuple[str, ...] | None  # None: the format names every value (JSONEachRow)

    @property
    def column_list(self) -> str:
        """The ``(a, b, ...)`` of an ``INSERT INTO t (a, b, ...)``, or nothing."""
        return f" ({', '.join(self.columns)})" if self.columns else ""


def _array_like_fields(rows: Sequence[Any]) -> tuple[str, ...] | None:
    first = rows[0] if rows else None
    if isinstance(first, msgspec.Struct) and first.__struct_config__.array_like:
        return first.__struct_fields__
    return None


async def encode_insert(rows: Sequence[Mapping[str, Any] | msgspec.Struct] | bytes) -> EncodedRows:
    """Rows encoded for an insert, in turns of the event loop (``encode_rows_in_turns``).
    Array-like Structs (the pricer's rows) are JSON arrays in field order: JSONCompactEachRow,
    with the fields as the column list. Everything else is JSONEachRow. A batch is one type."""
    if isinstance(rows, (bytes, bytearray)):
        return EncodedRows(bytes(rows), "JSONEachRow", None)
    rows = rows if isinstance(rows, Sequence) else list(rows)
    fields = _array_like_fields(rows)
    data = await encode_rows_in_turns(rows)
    return EncodedRows(data, "JSONCompactEachRow", fields) if fields else EncodedRows(data, "JSONEachRow", None)


def settings_clause(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={sql_literal(v)}" for k, v in settings.items())


def sql_literal(value: Any) -> str:
    """A string, number or bool as a ClickHouse literal, where a statement needs a constant that
    a query parameter cannot be (a setting's value, a table function's argument)."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(int(value) if isinstance(value, bool) else value)
