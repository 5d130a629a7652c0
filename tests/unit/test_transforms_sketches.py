"""Error bounds and exact mergeability of the quantile sketch and the HyperLogLog (plain Python)."""

from __future__ import annotations

import math
import random

import pytest

from tests.unit.test_transforms_support import event
from transforms.aggregates import AggregateAccumulator, EventStatsFn, MergePartialsFn, stats_of
from transforms.sketches import HyperLogLog, QuantileSketch

pytestmark = pytest.mark.unit

QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)


def _distributions() -> dict[str, list[float]]:
    r = random.Random(20261125)
    n = 100_000
    return {
        "lognormal": [r.lognormvariate(3, 1.5) for _ in range(n)],
        "uniform_cents": [round(r.uniform(0, 500), 2) for _ in range(n)],
        "pareto_with_zeros": [0.0 if r.random() < 0.2 else r.paretovariate(1.2) for _ in range(n)],
        "constant": [19.99] * n,
    }


@pytest.mark.parametrize("name", sorted(_distributions()))
def test_quantile_relative_error_within_stated_bound(name: str) -> None:
    values = _distributions()[name]
    sketch = QuantileSketch()
    for v in values:
        sketch.add(v)
    exact = sorted(values)
    bound = QuantileSketch.RELATIVE_ACCURACY
    for q in QUANTILES:
        x = exact[math.floor(q * (len(exact) - 1))]
        estimate = sketch.quantile(q)
        assert estimate is not None
        if x < QuantileSketch.MIN_VALUE:
            assert estimate == 0.0
        else:
            assert abs(estimate - x) <= bound * x * (1 + 1e-9), (name, q, x, estimate)


def test_quantile_merge_is_exact() -> None:
    values = _distributions()["lognormal"][:20_000]
    whole, parts = QuantileSketch(), [QuantileSketch() for _ in range(7)]
    for i, v in enumerate(values):
        whole.add(v)
        parts[i % 7].add(v)
    merged = QuantileSketch()
    for part in parts:
        merged.merge(part)
    assert (merged.bins, merged.count, merged.zero_count) == (whole.bins, whole.count, whole.zero_count)
    assert QuantileSketch().quantile(0.5) is None


@pytest.mark.parametrize("n", [100_000])
def test_hll_error_on_100k_within_three_standard_errors(n: int) -> None:
    estimate = HyperLogLog.of(f"user-{i}" for i in range(n)).estimate()
    assert abs(estimate - n) / n < 3 * HyperLogLog.STANDARD_ERROR


def test_hll_error_distribution_matches_stated_standard_error() -> None:
    """Over 20 independent sets per size the RMS relative error is close to 1.04/sqrt(m) and no
    single estimate is off by more than 4 standard errors."""
    se = HyperLogLog.STANDARD_ERROR
    for n in (1_000, 5_000, 20_000):
        errors = []
        for trial in range(20):
            estimate = HyperLogLog.of(f"t{trial}-{i}" for i in range(n)).estimate()
            errors.append((estimate - n) / n)
        rms = math.sqrt(sum(e * e for e in errors) / len(errors))
        assert rms < 1.5 * se, (n, rms)
        assert max(abs(e) for e in errors) < 4 * se, (n, errors)


def test_hll_is_exact_while_sparse_and_duplicates_do_not_count() -> None:
    sketch = HyperLogLog.of(f"u{i % 200}" for i in range(5_000))
    assert sketch.sparse is not None
    assert sketch.estimate() == 200


def test_hll_merge_equals_sketch_of_union() -> None:
    a = HyperLogLog.of(f"u{i}" for i in range(0, 3_000))
    b = HyperLogLog.of(f"u{i}" for i in range(2_000, 2_100))  # stays sparse
    c = HyperLogLog.of(f"u{i}" for i in range(2_500, 9_000))
    union = HyperLogLog.of(f"u{i}" for i in range(0, 9_000))
    merged = HyperLogLog()
    for part in (b, a, c):
        merged.merge(part)
    assert merged.registers == union.registers
    assert merged.estimate() == union.estimate()


def test_accumulator_merge_in_any_grouping_gives_identical_stats() -> None:
    r = random.Random(7)
    events = [event(f"e{i}", i % 60, round(r.uniform(0, 300), 2), user=f"u{r.randrange(400)}")
              for i in range(3_000)]
    fn = EventStatsFn()
    whole = fn.create_accumulator()
    for e in events:
        fn.add_input(whole, e)
    partials = []
    for start in range(0, len(events), 137):
        acc = fn.create_accumulator()
        for e in events[start:start + 137]:
            fn.add_input(acc, e)
        partials.append(acc)
    merger = MergePartialsFn()
    merged = merger.create_accumulator()
    for part in reversed(partials):
        merger.add_input(merged, part)
    assert stats_of(merged) == fn.extract_output(whole)
    stats = stats_of(whole)
    assert stats.count == 3_000
    assert stats.sum_amount == pytest.approx(sum(e.amount for e in events), abs=1e-6)
    amounts = [e.amount for e in events]
    assert (stats.min_amount, stats.max_amount) == (min(amounts), max(amounts))
    users = len({e.user_id for e in events})  # 400 > SPARSE_LIMIT: dense, approximate
    assert abs(stats.distinct_users - users) <= 3 * HyperLogLog.STANDARD_ERROR * users
    assert stats_of(AggregateAccumulator()).count == 0
