"""The gateway's disk spool and the publisher around it, over real files and a real broker."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from schemas.events import UsageEvent, decode_event, encode_event
from services.common.broker import EmbeddedBroker, free_port
from services.common.kafka import ensure_topics
from services.gateway.publisher import EventPublisher
from services.gateway.spool import Spool
from tests.support import await_until


def event(org: str = "org-s") -> UsageEvent:
    return UsageEvent(event_id=str(uuid.uuid4()), request_id="r", org_id=org, provider="openai",
                      route="chat/completions", model="gpt-4o", started_at=datetime.now(timezone.utc), input_tokens=5)


def test_spool_round_trip_and_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    payloads = [encode_event(event()) for _ in range(5)]
    spool.append(payloads[:3])
    spool.append(payloads[3:])
    segment = spool.seal()
    assert segment is not None and Spool.read(segment) == payloads
    # A crash mid-write leaves half a record: it is ignored, the intact ones are kept.
    with segment.open("ab") as f:
        f.write(b"\x00\x00\x01\x00\xde\xad")
    assert Spool.read(segment) == payloads
    reopened = Spool(tmp_path, max_bytes=1 << 20)  # a restarted gateway finds what was left
    assert not reopened.is_empty() and reopened.size_bytes > 0
    for seg in reopened.pending_segments():
        reopened.remove(seg)
    assert reopened.is_empty() and reopened.size_bytes == 0


def test_spool_takes_what_fits_and_no_more(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=300)
    assert spool.append([b"x" * 100]) == 1
    assert spool.append([b"y" * 100, b"z" * 100, b"w" * 100]) == 1  # 108 bytes a record: one more fits
    assert spool.size_bytes == 216
    assert Spool.read(spool.seal()) == [b"x" * 100, b"y" * 100]


async def _consume(bootstrap: str, topic: str, n: int) -> list[UsageEvent]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[UsageEvent] = []
    try:
        async def enough() -> bool:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(decode_event(m.value) for m in messages)
            return len(got) >= n

        await await_until(enough, what=f"{n} events in {topic}")
    finally:
        await consumer.stop()
    return got


async def test_a_restarted_gateway_replays_its_spool(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic = f"spool-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker.bootstrap, {topic: 2})
    left_behind = [event() for _ in range(7)]
    Spool(tmp_path, 1 << 20).append([encode_event(e) for e in left_behind])  # what a dead gateway left

    publisher = EventPublisher(broker.bootstrap, topic, 100, Spool(tmp_path, 1 << 20), send_timeout_s=2)
    await publisher.start()
    fresh = event()
    publisher.publish(fresh)
    got = await _consume(broker.bootstrap, topic, 8)
    await await_until(lambda: _async(publisher.spool_bytes == 0), what="spool emptied")
    await publisher.stop()
    assert {e.event_id for e in got} == {e.event_id for e in left_behind + [fresh]}
    # The fresh event queued behind the spooled ones, so it was spooled and replayed too.
    assert publisher.stats.published == 8 and publisher.stats.replayed == 8


async def test_without_a_broker_events_go_to_disk_until_the_spool_is_full(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    publisher = EventPublisher(dead, "nowhere", 100, Spool(tmp_path, 2_000), send_timeout_s=0.2)
    await publisher.start()
    for _ in range(30):  # about 300 bytes each: the first few fit, the rest cannot
        publisher.publish(event())
    await await_until(lambda: _async(publisher.backlog == 0 and publisher.stats.spooled + publisher.stats.dropped == 30),
                      what="every event spooled or counted as dropped")
    assert 0 < publisher.stats.spooled < 30 and publisher.stats.dropped == 30 - publisher.stats.spooled
    assert publisher.spool_bytes <= 2_000
    await publisher.stop(timeout_s=1)
    out = capsys.readouterr()
    assert "SPOOL FULL" in out.out + out.err


async def _async(value: bool) -> bool:
    return value


async def test_live_events_land_where_the_default_partitioner_puts_their_organisation(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """The publisher builds record batches itself: each event must still go to the partition
    Kafka's default partitioner gives its key (the org id), in the order it was published, and
    batches that fill up must lose nothing."""
    from aiokafka.partitioner import DefaultPartitioner

    topic = f"part-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker.bootstrap, {topic: 6})
    publisher = EventPublisher(broker.bootstrap, topic, 10_000, Spool(tmp_path, 1 << 20), send_timeout_s=5)
    await publisher.start()
    orgs = [f"org-{i}" for i in range(25)]
    sent = [event(orgs[i % len(orgs)]) for i in range(2_000)]  # ~300 bytes each: several full batches per partition
    for e in sent:
        publisher.publish(e)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[tuple[int, UsageEvent]] = []
    try:
        async def enough() -> bool:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                got.extend((m.partition, decode_event(m.value)) for m in messages)
            return len(got) >= len(sent)
        await await_until(enough, what=f"{len(sent)} events in {topic}")
    finally:
        await consumer.stop()
        await publisher.stop()
    assert sorted(e.event_id for _, e in got) == sorted(e.event_id for e in sent)
    partitions = list(range(6))
    for partition, e in got:
        assert partition == DefaultPartitioner()(e.org_id.encode(), partitions, partitions), e.org_id
    assert len({p for p, _ in got}) > 1
    for org in orgs:  # one organisation's events, in publishing order
        assert [e.event_id for _, e in got if e.org_id == org] == [e.event_id for e in sent if e.org_id == org]
