"""The platform's Kafka topics: create them (idempotent), and say clearly when one is missing.

Our broker does not create topics on first use (a typo would otherwise make a new, empty topic),
so a producer pointed at a missing topic waits for its metadata (60 s) and fails with a bare
``KafkaTimeoutError``; :func:`require_topics` says what is wrong at once, and how to fix it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Final

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError

#: How long a topic check waits for the broker to answer at all (the client's default is 30 s).
BOOTSTRAP_TIMEOUT_S: Final = 10.0


class MissingTopicError(RuntimeError):
    """Topics a client needs do not exist on the broker."""

    def __init__(self, topics: list[str], bootstrap: str, hint: str) -> None:
        names = ", ".join(repr(t) for t in topics)
        super().__init__(f"Kafka topic {names} does not exist on {bootstrap}. {hint}")
        self.topics = topics


class BrokerUnreachableError(RuntimeError):
    """No Kafka broker answered at the bootstrap address."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(f"no Kafka broker answers at {bootstrap} (SA_KAFKA_BOOTSTRAP). Start the "
                         "local stack: python -m devstack.stack up kafka")


def missing_topics(bootstrap: str, topics: Iterable[str]) -> list[str]:
    """Those of ``topics`` that do not exist on the broker (one metadata request); raises
    :class:`BrokerUnreachableError` after :data:`BOOTSTRAP_TIMEOUT_S` without an answer."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sa-topics",
                                 bootstrap_timeout_ms=int(BOOTSTRAP_TIMEOUT_S * 1000))
    except KafkaTimeoutError as exc:
        raise BrokerUnreachableError(bootstrap) from exc
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    return [topic for topic in topics if topic not in existing]


def require_topics(bootstrap: str, topics: Iterable[str], *, hint: str) -> None:
    """Raise :class:`MissingTopicError` (with ``hint``: how to create them) unless all exist."""
    missing = missing_topics(bootstrap, topics)
    if missing:
        raise MissingTopicError(missing, bootstrap, hint)


def ensure_topics(bootstrap: str, partitions_by_topic: Mapping[str, int],
                  replication_factor: int = 1) -> list[str]:
    """Create each topic that does not exist yet; return the names created.

    An existing topic keeps its partition count: growing it would silently re-map keys to
    partitions, which the operator should decide on, not a start-up script.
    """
    missing = missing_topics(bootstrap, partitions_by_topic)
    if not missing:
        return []
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sa-topics")
    try:
        # A concurrent creator may win the race; the topic exists, which is all we need.
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(name=topic, num_partitions=partitions_by_topic[topic],
                                          replication_factor=replication_factor) for topic in missing],
                                timeout_ms=15000)
        return missing
    finally:
        admin.close()
