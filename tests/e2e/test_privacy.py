"""Prompt text, response text and provider keys never leave the gateway: a canary planted in
them is searched for in the broker's topics, the store's data directory and the logs (which
the stack writes at debug level)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import anthropic
import openai
from aiokafka import AIOKafkaConsumer

from services.common.settings import RAW_TOPIC
from tests.e2e.conftest import Org


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for folder, _, files in os.walk(root):  # os.walk skips folders that vanish while it runs
        for name in files:
            path = Path(folder) / name
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except FileNotFoundError:  # a part merged away during the scan: its rows are in the merged part
                continue
    return found


async def _topic_bytes(bootstrap: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(RAW_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.seek_to_beginning()
        partitions = consumer.assignment() or set()
        while not partitions:
            await asyncio.sleep(0.05)
            partitions = consumer.assignment()
        ends = await consumer.end_offsets(list(partitions))
        out: list[bytes] = []
        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    out.append((m.key or b"") + (m.value or b"") + b"".join(v for _, v in m.headers))
        return out
    finally:
        await consumer.stop()


async def test_canaries_never_reach_kafka_the_store_or_the_logs(org: Org) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    provider_key = f"sk-canary-{uuid.uuid4().hex}"
    control = f"POSITIVE-{uuid.uuid4().hex}"  # a customer id: metadata that *is* meant to be stored
    prompt = [{"role": "user", "content": f"Secret plan {canary}: do not leak."}]
    base = org.stack.gateway_url + "/api/proxy/v1"
    o = openai.AsyncOpenAI(base_url=f"{base}/openai", api_key=org.admin_key, max_retries=0,
                           default_headers={"X-Provider-Key": provider_key, "x-customer-id": control})
    await o.chat.completions.create(model="gpt-4o", messages=prompt)
    async for _ in await o.chat.completions.create(model="gpt-4o", messages=prompt, stream=True):
        pass
    a = anthropic.AsyncAnthropic(base_url=f"{base}/anthropic", api_key=org.admin_key, max_retries=0,
                                 default_headers={"X-Provider-Key": provider_key, "x-customer-id": control})
    async with a.messages.stream(model="claude-sonnet-4-5", max_tokens=50, messages=prompt) as s:
        await s.get_final_message()
    await o.close()
    await a.close()
    await asyncio.to_thread(org.wait_for_requests, 3)

    messages = await _topic_bytes(org.stack.bootstrap)
    ours = [m for m in messages if org.org_id.encode() in m]
    assert len(ours) >= 3 and all(control.encode() in m for m in ours)  # the search does see what is there
    for needle in (canary, provider_key, org.admin_key):
        assert not [m for m in messages if needle.encode() in m], f"{needle[:12]}… found in Kafka"

    logs = org.stack.logs()
    assert "migration applied" in logs
    for needle in (canary, provider_key, org.admin_key):
        assert needle not in logs, f"{needle[:12]}… found in the logs"

    assert _files_containing(org.stack.data_dir, control.encode()), "the data-directory scan cannot see stored strings"
    for needle in (canary, provider_key, org.admin_key):
        assert not _files_containing(org.stack.data_dir, needle.encode()), f"{needle[:12]}… found in the data directory"
