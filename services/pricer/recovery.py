"""Reading back an offset range of one partition, outside the consumer group, for replaying a
recorded insert (see ``sink.replay``). Blocking until the range is read or the partition ends."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_range(bootstrap: str, topic: str, partition: int, first: int, last: int) -> list[tuple[int, bytes | None]]:
    """``(offset, value)`` of the messages in ``[first, last]`` that the partition still holds."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        stop = min(last, end - 1)
        consumer.seek(tp, first)
        out: list[tuple[int, bytes | None]] = []
        while await consumer.position(tp) <= stop:
            for message in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if message.offset <= stop:
                    out.append((message.offset, message.value))
        return out
    finally:
        await consumer.stop()
