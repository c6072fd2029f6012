"""Reading back an offset range of one partition, outside the consumer group, for replaying a
recorded insert (see ``sink.replay``). Blocking until the range is read or the partition ends."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_range(bootstrap: str, topic: str, partition: int, first: int, last: int) -> list[tuple[int, bytes | None]]:
    """``(offset, value)`` of the messages in ``[first, last]`` that the partition still holds.

    Read until past ``last``; the partition's end offset only says when to stop short (a topic
    recreated since the range was recorded), and only once a fetch brings nothing: the embedded
    broker (Tansu) reports as the end the first offset of the last record batch plus one, so a
    range written as one batch of 30 messages would otherwise be read as its first message."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, first)
        out: list[tuple[int, bytes | None]] = []
        while (position := await consumer.position(tp)) <= last:
            messages = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
            out.extend((m.offset, m.value) for m in messages if m.offset <= last)
            if not messages and position >= (await consumer.end_offsets([tp]))[tp]:
                break
        return out
    finally:
        await consumer.stop()
