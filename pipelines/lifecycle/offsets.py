"""The job's consumer group on the events topic, as the lifecycle reads it: committed and end
offsets per partition. One read serves the savepoint catalogue (what a savepoint holds) and the
SLO watch (consumer lag, records consumed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupOffsets:
    """``committed``: partition -> next offset the group committed (partitions it never committed
    are absent); ``ends``: partition -> the topic's end offset."""

    committed: dict[int, int]
    ends: dict[int, int]

    @property
    def lag(self) -> int:
        """Records in the topic the group has not committed."""
        return sum(end - self.committed.get(p, 0) for p, end in self.ends.items())


def read_group_offsets(bootstrap: str, group_id: str, topic: str) -> GroupOffsets:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = {tp.partition: int(end) for tp, end in consumer.end_offsets(tps).items()}
        committed = {tp.partition: int(c) for tp in tps if (c := consumer.committed(tp)) is not None}
        return GroupOffsets(committed, ends)
    finally:
        consumer.close()
