"""Create the platform's Kafka topics (idempotent)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError


def ensure_topics(bootstrap: str, partitions_by_topic: Mapping[str, int],
                  replication_factor: int = 1) -> list[str]:
    """Create each topic that does not exist yet; return the names created.

    An existing topic keeps its partition count: growing it would silently re-map keys to
    partitions, which the operator should decide on, not a start-up script.
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sa-topics")
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name=topic, num_partitions=n, replication_factor=replication_factor)
                   for topic, n in partitions_by_topic.items() if topic not in existing]
        if not missing:
            return []
        # A concurrent creator may win the race; the topic exists, which is all we need.
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics(missing, timeout_ms=15000)
        return [t.name for t in missing]
    finally:
        admin.close()
