"""The generator: reproducible, realistic, and exactly the bad-input fractions asked for."""

from __future__ import annotations

from collections import Counter

import pytest

from devstack.generator import (
    KINDS,
    MALFORMATIONS,
    EventGenerator,
    Fractions,
    GeneratorConfig,
)
from streaming_analytics.events import InvalidEvent, parse_event

START_MS = 1_767_225_600_000
FRACTIONS = Fractions(out_of_order=0.07, late=0.02, too_late=0.005, duplicate=0.03, malformed=0.04,
                      anomalous=0.01)


def generate(n: int, seed: int = 7, fractions: Fractions = FRACTIONS, block_size: int = 1000) -> list:
    gen = EventGenerator(GeneratorConfig(seed=seed, fractions=fractions, block_size=block_size))
    return list(gen.records(n, START_MS, interval_ms=10))


def test_each_kind_has_exactly_its_fraction() -> None:
    records = generate(10_000)
    counts = Counter(r.kind for r in records)
    assert counts == {"out_of_order": 700, "late": 200, "too_late": 50, "duplicate": 300,
                      "malformed": 400, "anomalous": 100, "normal": 8250}


def test_kinds_are_exact_in_every_block_not_only_in_total() -> None:
    records = generate(5_000, block_size=500)
    for start in range(0, 5_000, 500):
        counts = Counter(r.kind for r in records[start:start + 500])
        assert counts["malformed"] == 20
        assert counts["duplicate"] == 15


def test_the_ground_truth_matches_what_a_consumer_can_observe() -> None:
    """Classify records from their bytes alone, the way the pipeline will, and compare."""
    records = generate(6_000)
    seen_ids: set[str] = set()
    clock = [START_MS + i * 10 for i in range(len(records))]
    observed: Counter[str] = Counter()
    for record, now in zip(records, clock, strict=True):
        try:
            event = parse_event(record.value)
        except InvalidEvent:
            observed["malformed"] += 1
            continue
        if event.event_id in seen_ids:
            observed["duplicate"] += 1
            continue
        seen_ids.add(event.event_id)
        delay = now - event.event_time_ms
        if delay >= 900_000:
            observed["too_late"] += 1
        elif delay >= 70_000:
            observed["late"] += 1
        elif delay > 0:
            observed["out_of_order"] += 1
        elif event.features[3] >= 0.75 and event.features[4] == 1.0 and event.event_type == "purchase":
            observed["anomalous"] += 1
        else:
            observed["normal"] += 1
    assert observed == Counter(r.kind for r in records)


def test_every_malformation_is_rejected_with_its_documented_reason() -> None:
    records = [r for r in generate(20_000) if r.kind == "malformed"]
    codes: Counter[str] = Counter()
    for record in records:
        with pytest.raises(InvalidEvent) as info:
            parse_event(record.value)
        codes[info.value.code] += 1
    assert set(codes) == set(MALFORMATIONS.values())


def test_same_seed_same_records_and_other_seed_other_records() -> None:
    a, b, c = generate(2_000, seed=1), generate(2_000, seed=1), generate(2_000, seed=2)
    assert [(r.key, r.value) for r in a] == [(r.key, r.value) for r in b]
    assert [r.value for r in a] != [r.value for r in c]


def test_duplicates_repeat_an_earlier_record_byte_for_byte() -> None:
    records = generate(3_000)
    earlier: set[bytes] = set()
    for record in records:
        if record.kind == "duplicate":
            assert record.value in earlier
        elif record.kind != "malformed":
            earlier.add(record.value)


def test_workload_is_realistic_enough_to_aggregate() -> None:
    events = [parse_event(r.value) for r in generate(5_000) if r.kind == "normal"]
    types = Counter(e.event_type for e in events)
    assert types.most_common(1)[0][0] == "view"
    assert {e.country for e in events} >= {"US", "DE", "GB", "IN", "JP"}
    assert len({e.user_id for e in events}) > 500
    assert all(e.amount > 0 for e in events)


def test_fractions_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="add up"):
        Fractions(out_of_order=0.6, malformed=0.5)
    with pytest.raises(ValueError, match="within"):
        Fractions(late=-0.1)


def test_kinds_are_the_documented_ones() -> None:
    assert set(KINDS) == {"normal", *Fractions().as_dict()}
