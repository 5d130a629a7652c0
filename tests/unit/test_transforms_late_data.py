"""The late-data rule (transforms/late_data.py): deadlines are the ends of newest windows plus the
lateness and lie on a lattice; a shard learns the highest lattice point the watermark has passed one
timer at a time, stops beyond its lookahead and resumes with its next event; and, on the
DirectRunner, the job's step refuses exactly what a plain GroupByKey with the same windows drops,
to the millisecond."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.late_data_support import build_boundary_pin
from tests.unit.test_transforms_support import event, streaming_pipeline
from transforms.late_data import TOO_LATE_REASON, Deadlines, GateState, LateDataRule

pytestmark = pytest.mark.unit

FIXED = Deadlines("fixed", size_ms=10_000, period_ms=10_000, lateness_ms=5_000)
SLIDING = Deadlines("sliding", size_ms=30_000, period_ms=10_000, lateness_ms=5_000)
#: An opaque bundle id, as the dedup step passes it.
BUNDLE = 7
RULE = LateDataRule(kinds=(FIXED, SLIDING), lookahead_ms=20_000)


@st.composite
def deadlines(draw: st.DrawFn) -> Deadlines:
    period = draw(st.integers(1, 5_000))
    size = draw(st.integers(period, 20_000))
    return Deadlines("k", size_ms=size, period_ms=period, lateness_ms=draw(st.integers(0, 20_000)))


@settings(max_examples=300, deadline=None)
@given(deadlines(), st.integers(-10**9, 10**9))
def test_a_deadline_is_the_newest_window_end_plus_the_lateness(k: Deadlines, t: int) -> None:
    # Windows start at multiples of the period and hold [start, start + size): find them by brute force.
    first = (t - k.size_ms) // k.period_ms * k.period_ms
    starts = [s for s in range(first, t + 1, k.period_ms) if s <= t < s + k.size_ms]
    assert k.of(t) == max(starts) + k.size_ms + k.lateness_ms


@settings(max_examples=300, deadline=None)
@given(deadlines(), st.integers(-10**9, 10**9))
def test_after_is_the_lowest_deadline_later_than_a_time(k: Deadlines, x: int) -> None:
    point = k.after(x)
    assert point > x >= point - k.period_ms
    assert k.of(point - k.size_ms - k.lateness_ms) == point  # a deadline: the lattice point of a window


def test_one_deadline_per_kind_and_a_lookahead() -> None:
    with pytest.raises(ValueError, match="one Deadlines per"):
        LateDataRule(kinds=(FIXED, FIXED), lookahead_ms=0)
    with pytest.raises(ValueError, match="lookahead"):
        LateDataRule(kinds=(FIXED,), lookahead_ms=-1)
    with pytest.raises(ValueError, match="period"):
        Deadlines("x", size_ms=10, period_ms=20, lateness_ms=0)


def test_a_shard_without_knowledge_admits_and_arms_its_lowest_deadline() -> None:
    step = RULE.judged(GateState(), oldest_ms=23_000, newest_ms=41_000)
    # Deadlines of t = 23 s: fixed 35 s, sliding 55 s; the lowest goes first.
    assert step == _step(passed=None, armed=35_000, newest=41_000, arm=35_000)
    assert RULE.refusing(1_000, None) == []
    # An older event before the first firing moves the timer down; a newer one does not.
    step = RULE.judged(step.state, oldest_ms=2_000, newest_ms=2_000)
    assert step == _step(passed=None, armed=15_000, newest=41_000, arm=15_000)
    assert RULE.judged(step.state, oldest_ms=50_000, newest_ms=50_000).arm_ms is None


def test_each_firing_moves_knowledge_to_its_point_and_arms_the_next() -> None:
    state = RULE.judged(GateState(), oldest_ms=3_000, newest_ms=3_000).state  # armed at 15 s
    step = RULE.fired(state, 15_000, BUNDLE)
    assert step == _step(passed=15_000, armed=25_000, newest=3_000, arm=25_000, learnt_in=BUNDLE)
    assert [k.kind for k in RULE.refusing(3_000, 15_000)] == ["fixed"]  # fixed 15 s, sliding 35 s
    assert RULE.refusing(10_000, 15_000) == []
    assert [k.kind for k in RULE.refusing(3_000, 35_000)] == ["fixed", "sliding"]


def test_learning_stops_beyond_the_lookahead_and_resumes_with_the_next_event() -> None:
    # Newest event at 3 s: its last deadline is 35 s, so the shard learns up to 35 + 20 = 55 s.
    state = RULE.judged(GateState(), oldest_ms=3_000, newest_ms=3_000).state
    points = []
    step = RULE.fired(state, state.armed_ms or 0, BUNDLE)
    while step.arm_ms is not None:  # what a watermark at +inf does: every armed point fires
        points.append(step.arm_ms)
        step = RULE.fired(step.state, step.arm_ms, BUNDLE)
    assert points == [25_000, 35_000, 45_000, 55_000]
    assert step.state == GateState(passed_ms=55_000, armed_ms=None, newest_ms=3_000, learnt_in=BUNDLE)
    # A new event re-arms the next point, even one the watermark passed long ago.
    step = RULE.judged(step.state, oldest_ms=40_000, newest_ms=40_000)
    assert step == _step(passed=55_000, armed=65_000, newest=40_000, arm=65_000, learnt_in=BUNDLE)


def test_what_a_bundle_learns_judges_only_later_bundles() -> None:
    """A timer can reach a shard ahead of elements of its bundle that reached the step before the
    watermark that fired it (the module docstring): they are judged with what was known before."""
    state = RULE.judged(GateState(), oldest_ms=3_000, newest_ms=3_000).state  # armed at 15 s
    assert RULE.usable(state, 1) is None
    state = RULE.fired(state, 15_000, 1).state
    assert (RULE.usable(state, 1), RULE.usable(state, 2)) == (None, 15_000)
    state = RULE.fired(state, 25_000, 1).state  # a jump fires several points in one bundle
    assert (RULE.usable(state, 1), RULE.usable(state, 2)) == (None, 25_000)
    state = RULE.fired(state, 35_000, 2).state  # the next bundle learns more
    assert (state.passed_ms, state.settled_ms, state.learnt_in) == (35_000, 25_000, 2)
    assert (RULE.usable(state, 2), RULE.usable(state, 3)) == (25_000, 35_000)
    # A bundle that only judges changes nothing of this; the timer chain goes on from 35 s.
    step = RULE.judged(state, oldest_ms=30_000, newest_ms=30_000)
    assert (step.state.passed_ms, step.state.settled_ms, step.state.armed_ms) == (35_000, 25_000, 45_000)


def test_the_lowest_next_point_over_kinds_with_different_lattices() -> None:
    odd = Deadlines("odd", size_ms=7_000, period_ms=7_000, lateness_ms=1_000)  # 8, 15, 22, ... s
    rule = LateDataRule(kinds=(FIXED, odd), lookahead_ms=0)  # FIXED: 15, 25, 35, ... s
    assert [rule.next_after(x) for x in (14_999, 15_000, 21_999, 22_000, 24_999)] == [
        15_000, 22_000, 22_000, 25_000, 25_000]


def test_the_dead_letter_names_the_refusing_kinds_and_keeps_the_event() -> None:
    e = event("e1", 3, 2.5)
    letter = RULE.dead_letter(e, [FIXED], 15_000, 123)
    assert letter.reason_code == TOO_LATE_REASON and letter.raw == e.to_json()
    assert letter.reason_detail.startswith("too late for fixed: ")
    assert (letter.topic, letter.partition, letter.offset, letter.failed_at_ms) == (None, None, None, 123)
    both = RULE.dead_letter(e, [FIXED, SLIDING], 35_000, 123)
    assert both.reason_detail.startswith("too late for fixed, sliding: ")


def test_refuses_exactly_what_the_group_by_key_drops_to_the_millisecond() -> None:
    """The DirectRunner drops an element once the watermark is past window end + lateness (not at
    it), and the step matches it for both kinds (Prism: tests/integration/test_pipeline_late_data.py)."""
    p = streaming_pipeline()
    build_boundary_pin(p, drops_at_deadline=False)
    p.run().wait_until_finish()


def _step(*, passed: int | None, armed: int | None, newest: int | None, arm: int | None,
          learnt_in: int | None = None) -> object:
    from transforms.late_data import Step

    return Step(GateState(passed, armed, newest, learnt_in=learnt_in), arm)
