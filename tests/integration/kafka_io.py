"""Small aiokafka helpers for tests."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from worker.topics import read_all  # noqa: F401 - re-exported for tests


async def produce(bootstrap: str, records: list[tuple]) -> None:
    """Send (topic, key, value, headers[, partition]) records in order; without a
    partition, the key chooses it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024,
                                linger_ms=5)
    await producer.start()
    try:
        for topic, key, value, headers, *partition in records:
            await producer.send(topic, value, key=key, headers=headers,
                                partition=partition[0] if partition else None)
        await producer.flush()
    finally:
        await producer.stop()
