"""Reading back a recorded offset range for a replay, from a real broker (the embedded one)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from services.common.broker import EmbeddedBroker
from services.pricer.recovery import read_range
from tests.integration.test_pricer_exactly_once import new_topic


async def test_a_range_written_as_one_record_batch_is_read_whole(broker: EmbeddedBroker) -> None:
    """The embedded broker reports a partition's end as the first offset of its last record batch
    plus one: 1 after one batch of 30. Reading a recorded range must not stop there."""
    topic = await new_topic(broker)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, value=b"m%d" % i, partition=1) for i in range(30)]  # one batch
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    got = await read_range(broker.bootstrap, topic, 1, 0, 29)
    assert [(o, v) for o, v in got] == [(i, b"m%d" % i) for i in range(30)]
    assert [o for o, _ in await read_range(broker.bootstrap, topic, 1, 10, 12)] == [10, 11, 12]
    assert [o for o, _ in await read_range(broker.bootstrap, topic, 1, 25, 99)] == list(range(25, 30))  # ends at 29
