"""Shared fixtures: one real Kafka-protocol broker (Tansu) and one fake upstream provider per
test session. The end-to-end stack fixture lives in tests/e2e/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.common.broker import EmbeddedBroker
from tests.fakes.provider import FakeProvider


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fp:
        yield fp
