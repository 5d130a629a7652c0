"""Reproducible generator of e-commerce events, with controllable bad input.

    python -m devstack.generator --count 10000 --seed 7 --malformed 0.02
    python -m devstack.generator --rate 500 --realtime          # until Ctrl-C
    python -m devstack.generator --topic my-events --create-topic --count 100

The topic must exist (the local stack creates ``SA_KAFKA_TOPIC_EVENTS``); ``--create-topic``
creates a missing one with ``SA_KAFKA_EVENTS_PARTITIONS`` partitions, and without it a missing
topic is an error at once, not a 60-s metadata timeout.

Every record belongs to exactly one *kind*:

=============== ==================================================================================
normal          a valid event whose event time is the generator's clock
out_of_order    valid, event time 1 ms .. ``--out-of-order-max-ms`` behind the clock (within the
                pipeline's bounded out-of-orderness, so it is never late)
late            valid, event time ``--late-delay-ms`` behind the clock: its window has fired
                on time already, but it is within the allowed lateness (a late pane follows)
too_late        valid, event time beyond the allowed lateness: counted and dead-lettered
duplicate       byte-identical re-send of one of the last 1,000 valid events (same event_id)
malformed       violates the contract (see :data:`MALFORMATIONS`); the pipeline dead-letters it
anomalous       valid purchase with fraud-like features (the model should score it high)
=============== ==================================================================================

Fractions are exact per block of ``--block-size`` records (default 1,000): in every block the
number of records of kind k is ``round(fraction_k * block_size)``, at positions drawn from the
seeded RNG. The same seed always yields the same records (event ids, values and order). Each
Kafka record carries its kind in the ``sa-kind`` header: ground truth for tests and evaluation,
never read by the pipeline.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from streaming_analytics.events import FEATURE_NAMES, SCHEMA_VERSION

KINDS: Final = ("normal", "out_of_order", "late", "too_late", "duplicate", "malformed", "anomalous")
KIND_HEADER: Final = "sa-kind"

_EVENT_TYPES: Final = (("view", 0.70), ("add_to_cart", 0.12), ("remove_from_cart", 0.03),
                       ("checkout", 0.06), ("purchase", 0.07), ("refund", 0.02))
_COUNTRIES: Final = (("US", "USD", 0.30), ("DE", "EUR", 0.14), ("GB", "GBP", 0.12), ("FR", "EUR", 0.09),
                     ("IN", "INR", 0.09), ("BR", "BRL", 0.07), ("JP", "JPY", 0.06), ("CA", "CAD", 0.05),
                     ("AU", "AUD", 0.04), ("NL", "EUR", 0.04))
_CATEGORIES: Final = ("books", "electronics", "fashion", "home", "toys", "sports", "beauty", "grocery",
                      "garden", "automotive")


@dataclass(frozen=True)
class Fractions:
    """Share of each non-normal kind in every block; the rest is normal."""

    out_of_order: float = 0.05
    late: float = 0.01
    too_late: float = 0.002
    duplicate: float = 0.01
    malformed: float = 0.01
    anomalous: float = 0.005

    def __post_init__(self) -> None:
        values = self.as_dict()
        for name, value in values.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fraction {name}={value} must be within [0, 1]")
        if sum(values.values()) > 1.0 + 1e-9:
            raise ValueError(f"fractions add up to {sum(values.values()):.4f} > 1")

    def as_dict(self) -> dict[str, float]:
        return {"out_of_order": self.out_of_order, "late": self.late, "too_late": self.too_late,
                "duplicate": self.duplicate, "malformed": self.malformed, "anomalous": self.anomalous}


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 42
    fractions: Fractions = field(default_factory=Fractions)
    block_size: int = 1000
    users: int = 5000
    items: int = 20000
    #: Upper bound of an out-of-order event's delay; keep it under the pipeline's watermark bound.
    out_of_order_max_ms: int = 4_000
    #: Delay range of late events. With the pipeline's defaults (60 s fixed windows, 5 s watermark
    #: bound, 120 s allowed lateness) a delay d is late for its fixed window when d > 65 s and still
    #: within the lateness when d < 125 s, wherever the event falls in its window.
    late_delay_ms: tuple[int, int] = (70_000, 120_000)
    #: Delay range of events beyond the allowed lateness of every window they belong to.
    too_late_delay_ms: tuple[int, int] = (900_000, 1_200_000)

    def block_plan_counts(self) -> dict[str, int]:
        """How many records of each kind every block holds."""
        counts = {k: round(v * self.block_size) for k, v in self.fractions.as_dict().items()}
        counts["normal"] = self.block_size - sum(counts.values())
        if counts["normal"] < 0:
            raise ValueError("fractions leave no room in a block; lower them or raise block_size")
        return counts


@dataclass(frozen=True, slots=True)
class GeneratedRecord:
    """One Kafka record to produce, with its ground-truth kind."""

    kind: str
    key: bytes | None
    value: bytes
    event_id: str | None
    event_time_ms: int | None

    def headers(self) -> list[tuple[str, bytes]]:
        return [(KIND_HEADER, self.kind.encode())]


#: Ways a malformed record breaks the contract, each mapped to the reason code the validator gives.
MALFORMATIONS: Final[dict[str, str]] = {
    "truncated_json": "not_json",
    "not_utf8": "not_json",
    "json_array": "not_object",
    "missing_event_id": "missing_field",
    "amount_as_string": "bad_type",
    "negative_amount": "bad_value",
    "unknown_event_type": "bad_value",
    "lowercase_country": "bad_value",
    "time_in_seconds": "bad_value",
    "future_schema_version": "unsupported_version",
}


class EventGenerator:
    """Deterministic record source; wrap it with a producer (see :func:`produce`)."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._plan: list[str] = []
        self._blocks = 0
        self._recent: deque[GeneratedRecord] = deque(maxlen=1000)
        self._session_of: dict[str, tuple[str, int]] = {}
        self._type_weights = [w for _, w in _EVENT_TYPES]
        self._country_weights = [w for *_, w in _COUNTRIES]

    def next_record(self, clock_ms: int) -> GeneratedRecord:
        """The next record; ``clock_ms`` is the generator's notion of "now" in event time."""
        if not self._plan:
            self._plan = self._new_block()
        kind = self._plan.pop()
        if kind == "duplicate":
            return self._duplicate()
        if kind == "malformed":
            return self._malformed(clock_ms)
        delay = self._delay(kind)
        record = self._valid(kind, clock_ms - delay, anomalous=kind == "anomalous")
        self._recent.append(record)
        return record

    def records(self, count: int, start_ms: int, interval_ms: float) -> Iterator[GeneratedRecord]:
        """``count`` records on a logical clock that advances ``interval_ms`` per record."""
        for i in range(count):
            yield self.next_record(start_ms + int(i * interval_ms))

    # --- internals -----------------------------------------------------------------------------
    def _new_block(self) -> list[str]:
        plan = [k for k, n in self.config.block_plan_counts().items() for _ in range(n)]
        self._rng.shuffle(plan)
        if self._blocks == 0 and plan and plan[-1] == "duplicate":
            # The very first record cannot repeat anything: swap it with a non-duplicate.
            j = next((i for i, k in enumerate(plan) if k != "duplicate"), None)
            if j is not None:
                plan[-1], plan[j] = plan[j], plan[-1]
        self._blocks += 1
        return plan

    def _delay(self, kind: str) -> int:
        c = self.config
        if kind == "out_of_order":
            return self._rng.randint(1, c.out_of_order_max_ms)
        if kind == "late":
            return self._rng.randint(*c.late_delay_ms)
        if kind == "too_late":
            return self._rng.randint(*c.too_late_delay_ms)
        return 0

    def _duplicate(self) -> GeneratedRecord:
        if not self._recent:
            raise RuntimeError("a duplicate needs an earlier valid record")
        original = self._rng.choice(self._recent)
        return GeneratedRecord("duplicate", original.key, original.value, original.event_id,
                               original.event_time_ms)

    def _valid(self, kind: str, event_time_ms: int, *, anomalous: bool) -> GeneratedRecord:
        doc = self._document(event_time_ms, anomalous=anomalous)
        return GeneratedRecord(kind, doc["user_id"].encode(), orjson.dumps(doc), doc["event_id"],
                               event_time_ms)

    def _document(self, event_time_ms: int, *, anomalous: bool) -> dict[str, Any]:
        rng = self._rng
        user_n = min(int(rng.paretovariate(1.2)), self.config.users)  # a few very active users
        user = f"u{(user_n * 7919 + rng.randrange(self.config.users)) % self.config.users:05d}"
        session, index = self._session_of.get(user, (self._id(), 0))
        if rng.random() < 0.05:
            session, index = self._id(), 0
        self._session_of[user] = (session, index + 1)
        country, currency, _ = rng.choices(_COUNTRIES, weights=self._country_weights)[0]
        item = rng.randrange(self.config.items)
        category = _CATEGORIES[item % len(_CATEGORIES)]
        price = round(math.exp(rng.gauss(3.3, 0.9)), 2)
        if anomalous:
            event_type = "purchase"
            amount = round(price * rng.uniform(8, 25), 2)
            features = (rng.uniform(0, 3), index, rng.uniform(0.1, 2.0), rng.uniform(0.75, 1.0), 1.0,
                        rng.uniform(6, 30))
        else:
            event_type = rng.choices(_EVENT_TYPES, weights=self._type_weights)[0][0]
            amount = price
            features = (round(rng.expovariate(1 / 400), 1), index, round(rng.expovariate(1 / 30), 2),
                        round(rng.betavariate(1, 12), 4), 1.0 if rng.random() < 0.03 else 0.0,
                        round(math.exp(rng.gauss(0, 0.35)), 3))
        return {
            "schema_version": SCHEMA_VERSION,
            "event_id": self._id(),
            "event_type": event_type,
            "event_time_ms": event_time_ms,
            "user_id": user,
            "session_id": session,
            "item_id": f"i{item:06d}",
            "category": category,
            "country": country,
            "amount": amount,
            "currency": currency,
            "features": dict(zip(FEATURE_NAMES, features, strict=True)),
        }

    def _malformed(self, clock_ms: int) -> GeneratedRecord:
        how = self._rng.choice(list(MALFORMATIONS))
        doc = self._document(clock_ms, anomalous=False)
        value: bytes
        if how == "truncated_json":
            full = orjson.dumps(doc)
            value = full[: self._rng.randint(1, len(full) - 1)]
        elif how == "not_utf8":
            value = b"\xff\xfe" + orjson.dumps(doc)
        elif how == "json_array":
            value = orjson.dumps([doc])
        else:
            mutate: dict[str, Callable[[dict[str, Any]], None]] = {
                "missing_event_id": lambda d: d.pop("event_id"),
                "amount_as_string": lambda d: d.__setitem__("amount", str(d["amount"])),
                "negative_amount": lambda d: d.__setitem__("amount", -abs(d["amount"]) - 1),
                "unknown_event_type": lambda d: d.__setitem__("event_type", "teleport"),
                "lowercase_country": lambda d: d.__setitem__("country", d["country"].lower()),
                "time_in_seconds": lambda d: d.__setitem__("event_time_ms", d["event_time_ms"] // 1000),
                "future_schema_version": lambda d: d.__setitem__("schema_version", SCHEMA_VERSION + 1),
            }
            mutate[how](doc)
            value = orjson.dumps(doc)
        return GeneratedRecord("malformed", b"malformed", value, None, None)

    def _id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


# --------------------------------------------------------------------------------------------------
def produce(generator: EventGenerator, *, bootstrap: str, topic: str, count: int | None, rate: float,
            realtime: bool, start_ms: int | None = None,
            stop: Callable[[], bool] = lambda: False, report_every_s: float = 10.0) -> Counter[str]:
    """Send records to Kafka; return how many of each kind were acknowledged.

    ``realtime``: pace at ``rate`` records/s with event times from the wall clock (for ``make
    run``). Otherwise event times advance 1000/rate ms per record from ``start_ms`` and records go
    out as fast as the broker takes them (tests, benchmarks, backfills).

    Raises :class:`~devstack.kafka_topics.MissingTopicError` before sending anything
    when ``topic`` does not exist.
    """
    from kafka import KafkaProducer

    from devstack.kafka_topics import require_topics

    require_topics(bootstrap, [topic], hint=CREATE_TOPIC_HINT)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=131072,
                             enable_idempotence=True, max_in_flight_requests_per_connection=5,
                             reconnect_backoff_max_ms=1000, client_id="sa-generator")
    counts: Counter[str] = Counter()
    interval_ms = 1000.0 / rate
    logical_start = int(time.time() * 1000) if start_ms is None else start_ms
    t0 = time.monotonic()
    last_report = t0
    sent = 0
    try:
        while (count is None or sent < count) and not stop():
            if realtime:
                due = t0 + sent / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(min(pause, 0.5))
                    continue
                clock_ms = int(time.time() * 1000)
            else:
                clock_ms = logical_start + int(sent * interval_ms)
            record = generator.next_record(clock_ms)
            producer.send(topic, key=record.key, value=record.value, headers=record.headers())
            counts[record.kind] += 1
            sent += 1
            if realtime and time.monotonic() - last_report >= report_every_s:
                last_report = time.monotonic()
                print(json.dumps({"sent": sent, "kinds": dict(counts)}), flush=True)
        producer.flush()
    finally:
        producer.close()
    return counts


#: What a newcomer reads when the topic is missing (the broker does not create topics on first use).
CREATE_TOPIC_HINT: Final = (
    "Create it by running the generator with --create-topic (SA_KAFKA_EVENTS_PARTITIONS partitions), "
    "or, for the events topic SA_KAFKA_TOPIC_EVENTS, start the local stack, which creates it: "
    "python -m devstack.stack up kafka")


def main(argv: list[str] | None = None) -> int:
    from devstack.kafka_topics import BrokerUnreachableError, MissingTopicError, ensure_topics
    from streaming_analytics.settings import Settings

    settings = Settings.from_env()
    p = argparse.ArgumentParser(prog="python -m devstack.generator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=None, help="records to send (default: until Ctrl-C)")
    p.add_argument("--rate", type=float, default=1000.0, help="records per second of event time")
    p.add_argument("--realtime", action="store_true", help="pace sends at --rate, wall-clock event times")
    p.add_argument("--start-ms", type=int, default=None,
                   help="event time of the first record (logical clock)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--block-size", type=int, default=1000)
    p.add_argument("--topic", default=settings.topic_events)
    p.add_argument("--bootstrap", default=settings.kafka_bootstrap)
    p.add_argument("--create-topic", action="store_true",
                   help="create the topic first if it does not exist, with SA_KAFKA_EVENTS_PARTITIONS "
                        f"partitions (now {settings.events_partitions})")
    defaults = Fractions()
    for name, value in defaults.as_dict().items():
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=value, metavar="FRACTION",
                       help=f"share of {name} records (default {value})")
    args = p.parse_args(argv)
    if args.rate <= 0:
        p.error("--rate must be positive")
    fractions = Fractions(**{name: getattr(args, name) for name in defaults.as_dict()})
    config = GeneratorConfig(seed=args.seed, fractions=fractions, block_size=args.block_size)
    generator = EventGenerator(config)

    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        if args.create_topic and ensure_topics(args.bootstrap, {args.topic: settings.events_partitions}):
            print(f"created topic {args.topic!r} with {settings.events_partitions} partitions",
                  file=sys.stderr, flush=True)
        counts = produce(generator, bootstrap=args.bootstrap, topic=args.topic, count=args.count,
                         rate=args.rate, realtime=args.realtime, start_ms=args.start_ms,
                         stop=lambda: stopping)
    except (MissingTopicError, BrokerUnreachableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"sent": sum(counts.values()), "kinds": dict(counts)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
