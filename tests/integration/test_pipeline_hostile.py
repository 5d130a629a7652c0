"""The job against hostile input (issue 12): no record can stop it, every refused one is found by
its position with a reason, and the aggregates are exact.

Both tests run the bounded job on the DirectRunner over a private topic (as the late-data backlog
test does) and end with the exactness check of tests/integration/pipeline_support.py: every window
equals the independent computation, every record the contract refuses is dead-lettered once by its
partition and offset, one alert per anomalous event, nothing refused by a sink. docs/hostile-input.md
lists what the hostile topic holds and how big it is.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson
import psycopg2
from kafka import KafkaProducer

from devstack.generator import KIND_HEADER, EventGenerator, Fractions, GeneratorConfig
from devstack.sandbox import private_job
from pipelines.analytics_pipeline import run
from pipelines.runners import runner_args
from streaming_analytics.events import InvalidEvent, parse_event
from streaming_analytics.settings import Settings
from tests.integration.pipeline_support import Lateness, Windows, check_results
from tests.unit.hostile_support import HostileRecord, hostile_topic

PARTITIONS = 4
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WINDOWS = Windows(fixed_s=60, sliding_s=300, period_s=60)
#: Issue 12's size: tens of thousands of records, over 200 s of event time.
HOSTILE_RECORDS = 20_000
#: The contract's reason codes (docs/event-schema.md): a dead letter with any other is a failure.
CONTRACT_CODES = {"empty", "too_large", "not_json", "not_object", "unsupported_version", "missing_field",
                  "bad_type", "bad_value", "bad_string"}


def base_documents(count: int, seed: int, interval_ms: float) -> list[tuple[str, dict[str, Any]]]:
    """``count`` valid events of the generator (kind, document): normal, out-of-order and anomalous
    ones, no duplicates (a hostile variant of a re-delivery would be another event under the same id)."""
    config = GeneratorConfig(seed=seed, fractions=Fractions(out_of_order=0.05, late=0.0, too_late=0.0,
                                                            duplicate=0.0, malformed=0.0, anomalous=0.005))
    return [(r.kind, orjson.loads(r.value)) for r in EventGenerator(config).records(count, T0, interval_ms)]


def produce(s: Settings, records: Iterable[tuple[bytes | None, bytes | None, str]]) -> int:
    """Produce (key, value, ground-truth kind) records; the kind goes into the generator's header."""
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=20,
                             max_request_size=4 * 1024 * 1024)
    sent = 0
    for key, value, kind in records:
        producer.send(s.topic_events, key=key, value=value, headers=[(KIND_HEADER, kind.encode())])
        sent += 1
    producer.flush(timeout=60)
    producer.close()
    return sent


def run_bounded(s: Settings) -> float:
    started = time.monotonic()
    run([*runner_args("direct", s), "--bounded", f"--postgres_schema={s.topic_events}",
         "--kafka_start=earliest", *WINDOWS.args()], settings=s)
    return time.monotonic() - started


def dead_letters(s: Settings) -> list[tuple[int | None, int | None, str, str]]:
    with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT source_partition, source_offset, reason_code, reason_detail "
                    f"FROM {s.topic_events}.dead_letters")
        return cur.fetchall()


def test_one_nul_in_a_category_is_dead_lettered_and_the_other_199_events_are_aggregated(
        settings: Settings, unique_name: str) -> None:
    """Issue 12's case: 200 valid events, one with ``"category": "bo\\u0000oks"``. The job used to
    fail in WriteFixedToPostgres with no aggregate written; now it ends normally, the one event is a
    ``bad_string`` dead letter at its position, and the 199 others are in every window."""
    base = base_documents(200, seed=12, interval_ms=500)
    nul = next(i for i, (kind, _) in enumerate(base) if i >= 57 and kind == "normal")
    base[nul][1]["category"] = "bo\u0000oks"
    with private_job(settings, unique_name, PARTITIONS) as s:
        produce(s, [(d["user_id"].encode(), orjson.dumps(d), kind) for kind, d in base])
        run_bounded(s)
        checked = check_results(s, s.topic_events, PARTITIONS, WINDOWS, Lateness())
        [(partition, offset, code, detail)] = dead_letters(s)
        with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT sum(count) FROM {s.topic_events}.aggregates "
                        "WHERE kind = 'fixed' AND dimension = 'category'")
            [(aggregated,)] = cur.fetchall()
    assert code == "bad_string"
    assert detail.startswith("category contains U+0000 (the NUL character) at character 2")
    assert (partition, offset) is not None and aggregated == 199
    assert checked.refused == {} and checked.windows > 10


def test_a_topic_of_hostile_records_ends_normally_and_every_record_is_accounted_for(
        settings: Settings, unique_name: str) -> None:
    """20,000 records built from generated events (docs/hostile-input.md): 70 % valid, a tenth of
    those with non-ASCII text at the contract's edges, the rest broken in every way the contract
    refuses. The bounded job must end normally, and the exactness check holds it to every record."""
    base = base_documents(HOSTILE_RECORDS, seed=1212, interval_ms=10)
    records: list[HostileRecord] = list(hostile_topic([doc for _, doc in base], seed=1213))
    with private_job(settings, unique_name, PARTITIONS) as s:
        produce(s, ((r.key, r.value, _kind(kind, r)) for (kind, _), r in zip(base, records, strict=True)))
        elapsed = run_bounded(s)
        checked = check_results(s, s.topic_events, PARTITIONS, WINDOWS, Lateness())
        letters = dead_letters(s)
    codes = Counter(code for _, _, code, _ in letters)
    expected_refused = sum(1 for r in records if not _valid(r.value))
    print(f"{len(records)} hostile records in {elapsed:.0f} s: {checked.windows} windows, "
          f"dead letters {dict(codes)}")
    assert set(codes) <= CONTRACT_CODES, codes
    assert sum(codes.values()) == expected_refused
    assert codes["bad_string"] > 500 and codes["not_json"] > 500 and checked.refused == {}
    assert all(p is not None and o is not None for p, o, _, _ in letters)


def _valid(value: bytes | None) -> bool:
    try:
        parse_event(value)  # type: ignore[arg-type]  # None is part of the contract ("empty")
    except InvalidEvent:
        return False
    return True


def _kind(base_kind: str, record: HostileRecord) -> str:
    """The ground-truth header: ``anomalous`` only where the record still is that valid event (the
    exactness check expects one alert per anomalous record)."""
    return "anomalous" if base_kind == "anomalous" and _valid(record.value) else record.kind
