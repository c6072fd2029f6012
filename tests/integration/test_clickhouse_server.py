"""The same migrations and statements against a real ClickHouse server, through
clickhouse-connect. Needs a Docker engine (testcontainers); skipped cleanly where there is none,
as on the developer machines and CI of this project, where chDB stands in for the server."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from services.store.clickhouse_store import ClickHouseStore
from services.store.migrations import migrate


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not _docker_available(), reason="no Docker engine on this machine"),
]


@pytest.fixture(scope="module")
def server_url() -> str:
    from testcontainers.clickhouse import ClickHouseContainer

    with ClickHouseContainer("clickhouse/clickhouse-server:25.8") as ch:
        yield f"http://{ch.username}:{ch.password}@{ch.get_container_host_ip()}:{ch.get_exposed_port(8123)}/{ch.dbname}"


async def test_migrations_and_dedup_hold_on_a_server(server_url: str) -> None:
    store = ClickHouseStore(server_url)
    await migrate(store)
    assert await migrate(store) == []
    org = f"org-{uuid.uuid4().hex[:8]}"
    row = {
        "event_id": str(uuid.uuid4()), "request_id": "r", "org_id": org, "provider": "openai", "model": "gpt-4o",
        "started_at": datetime(2026, 3, 1, tzinfo=timezone.utc), "total_cost": Decimal("0.000000000001"),
        "status": "ok", "http_status": 200,
    }
    await store.insert("usage_events", [row], dedup_token="t-1")
    await store.insert("usage_events", [row], dedup_token="t-1")
    rows = await store.select(
        "SELECT sum(request_count) AS n, sum(total_cost) AS c FROM spend_daily_by_key WHERE org_id = {o:String}", {"o": org}
    )
    assert rows == [{"n": 1, "c": "0.000000000001"}]
    # the same read as a JSON array written by the server: money as exact numbers, no trailing zeros
    body = await store.select_json(
        "SELECT sum(request_count) AS n, sum(total_cost) AS c FROM spend_daily_by_key WHERE org_id = {o:String}", {"o": org}
    )
    assert json.loads(body, parse_float=Decimal) == [{"n": 1, "c": Decimal("0.000000000001")}]
    assert b'"c":0.000000000001}' in body
    await store.close()


async def test_the_pricers_rows_go_in_by_position_on_a_server(server_url: str) -> None:
    from services.pricer.rows import UsageRow
    from tests.integration.test_store_inserts import a_row

    store = ClickHouseStore(server_url)
    await migrate(store)
    org = f"org-{uuid.uuid4().hex[:8]}"
    row = a_row(org)
    await store.insert("usage_events", [row], dedup_token=f"t-{org}")
    [stored] = await store.select(
        f"SELECT {', '.join(f for f in UsageRow.__struct_fields__ if f != 'started_at')} FROM usage_events"
        " WHERE org_id = {o:String}",
        {"o": org},
    )
    assert stored["kafka_offset"] == 2**40 + 1 and stored["tags"] == ["env:prod", 'quote"and\\slash']
    assert Decimal(stored["output_cost"]) == row.output_cost and stored["ttft_ms"] == 88.25
    await store.close()


async def test_a_read_by_ids_sends_them_beside_the_statement_on_a_server(server_url: str) -> None:
    from tests.integration.test_store_id_reads import STORED
    from tests.integration.test_store_inserts import a_row

    store = ClickHouseStore(server_url)
    await migrate(store)
    org = f"org-{uuid.uuid4().hex[:8]}"
    stored = [a_row(org, event_id=str(uuid.uuid4())) for _ in range(3)]
    await store.insert("usage_events", stored, dedup_token=f"t-{org}")
    asked = [stored[0].event_id, str(uuid.uuid4()), stored[2].event_id]
    found = await store.select_with_ids(STORED, {"o": org}, asked)
    assert sorted(r["id"] for r in found) == sorted([stored[0].event_id, stored[2].event_id])
    await store.close()
