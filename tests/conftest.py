"""Session fixtures: the real Kafka and PostgreSQL (design §2 order: env, Docker, local processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.stack import Service, start_kafka, start_postgres


@pytest.fixture(scope="session")
def kafka() -> Iterator[Service]:
    """A Kafka broker for the whole run; `.url` is the bootstrap servers string."""
    service, _ = start_kafka()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Service]:
    """A PostgreSQL server for the whole run; `.url` is the DSN of an empty database."""
    service, _ = start_postgres()
    try:
        yield service
    finally:
        service.stop()
