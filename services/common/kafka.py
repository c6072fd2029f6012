"""Small Kafka helpers shared by the services."""

from __future__ import annotations

import asyncio

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = structlog.get_logger(__name__)


async def ensure_topics(bootstrap: str, topics: dict[str, int], *, timeout_s: float = 30.0) -> None:
    """Create the topics that do not exist yet (name -> partitions). Waits for the broker to be
    reachable up to ``timeout_s``, since a broker started alongside may still be booting."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass  # another process won the race: fine
                log.info("topics created", topics=[t.name for t in missing])
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"Kafka at {bootstrap} is not reachable: {exc}") from exc
            await asyncio.sleep(0.2)
        finally:
            await admin.close()
