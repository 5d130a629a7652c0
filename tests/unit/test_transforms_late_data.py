"""The late-data rule (transforms/late_data.py): deadlines are the ends of newest windows plus the
lateness and lie on a lattice; a shard learns the highest lattice point the watermark has passed from
a ladder of timers (in logarithmically many rounds after a jump), only for its later bundles, from
the worker's floor when it knows nothing, stops beyond its lookahead and resumes with its next
event; and, on the
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


def test_a_shard_without_knowledge_admits_and_starts_its_ladder_a_lookahead_low() -> None:
    step = RULE.judged(GateState(), oldest_ms=23_000, newest_ms=41_000)
    # Deadlines of t = 23 s: fixed 35 s, sliding 55 s; rung 0 goes the lookahead (20 s) below the
    # lowest, the others at doubling distances up to the ceiling (newest 41 s: 75 s + 20 s).
    assert step.rungs == (15_000, 25_000, 35_000, 55_000, 95_000)
    assert step.state == GateState(armed_ms=15_000, newest_ms=41_000)
    assert RULE.refusing(1_000, None) == []
    # An older event before the first firing moves the ladder down; a newer one does not.
    step = RULE.judged(step.state, oldest_ms=2_000, newest_ms=2_000)
    assert step.arm_ms == -5_000 and step.state.armed_ms == -5_000
    assert RULE.judged(step.state, oldest_ms=50_000, newest_ms=50_000).rungs == ()


def test_a_shard_without_knowledge_starts_from_the_workers_floor() -> None:
    step = RULE.judged(GateState(), oldest_ms=23_000, newest_ms=41_000, floor_ms=25_000)
    assert step.state == GateState(passed_ms=25_000, armed_ms=35_000, newest_ms=41_000, settled_ms=25_000)
    assert step.rungs == (35_000, 45_000, 55_000, 75_000)
    # A shard's own knowledge is never replaced by the floor.
    own = RULE.judged(step.state, oldest_ms=30_000, newest_ms=30_000, floor_ms=5_000)
    assert own.state.passed_ms == 25_000 and own.rungs == ()


def test_each_firing_moves_knowledge_to_its_point_and_sets_the_ladder_above_it() -> None:
    state = RULE.judged(GateState(), oldest_ms=3_000, newest_ms=3_000).state  # rung 0 at -5 s
    step = RULE.fired(state, 15_000, BUNDLE)
    assert step.state == GateState(passed_ms=15_000, armed_ms=25_000, newest_ms=3_000, learnt_in=BUNDLE)
    assert step.rungs == (25_000, 35_000, 45_000)  # up to the ceiling, 35 s + 20 s
    assert [k.kind for k in RULE.refusing(3_000, 15_000)] == ["fixed"]  # fixed 15 s, sliding 35 s
    assert RULE.refusing(10_000, 15_000) == []
    assert [k.kind for k in RULE.refusing(3_000, 35_000)] == ["fixed", "sliding"]
    # A rung below what the shard knows (an older ladder's, or one fired late) teaches nothing.
    assert RULE.fired(step.state, 5_000, BUNDLE + 1) == type(step)(step.state)


def test_learning_stops_beyond_the_lookahead_and_resumes_with_the_next_event() -> None:
    # Newest event at 3 s: its last deadline is 35 s, so the shard learns up to 35 + 20 = 55 s.
    state = RULE.judged(GateState(), oldest_ms=3_000, newest_ms=3_000).state
    points = []
    step = RULE.fired(state, state.armed_ms or 0, BUNDLE)
    while step.arm_ms is not None:  # a watermark at +inf, the lowest rung first: every point fires
        points.append(step.arm_ms)
        step = RULE.fired(step.state, step.arm_ms, BUNDLE)
    assert points == [5_000, 15_000, 25_000, 35_000, 45_000, 55_000]
    assert step.state == GateState(passed_ms=55_000, armed_ms=None, newest_ms=3_000, learnt_in=BUNDLE)
    # A new event re-arms the next point, even one the watermark passed long ago.
    step = RULE.judged(step.state, oldest_ms=40_000, newest_ms=40_000)
    assert step.rungs == (65_000, 75_000, 85_000)
    assert step.state == GateState(passed_ms=55_000, armed_ms=65_000, newest_ms=40_000, learnt_in=BUNDLE)


@given(jump_periods=st.integers(1, 5_000))
@settings(max_examples=60, deadline=None)
def test_a_jump_is_learnt_in_logarithmically_many_rounds(jump_periods: int) -> None:
    """Flink fires the timers a bundle sets only after that bundle: each round fires every rung
    at or below the watermark at once. The ladder halves the distance to the watermark per round."""
    rule = LateDataRule(kinds=(FIXED,), lookahead_ms=10**9)
    watermark = 15_000 + jump_periods * 10_000
    step = rule.judged(GateState(), oldest_ms=0, newest_ms=watermark + 10**6)
    rungs, rounds = step.rungs, 0
    gap_periods = (watermark - rungs[0]) // 10_000  # from rung 0 (a lookahead below) to the watermark
    state = step.state
    while True:
        due = [r for r in rungs if r <= watermark]
        if not due:
            break
        rounds += 1
        for r in sorted(due):
            step = rule.fired(state, r, rounds)
            state = step.state
            if step.rungs:
                rungs = step.rungs
        rungs = tuple(r for r in rungs if r > (state.passed_ms or 0))
    assert state.passed_ms == watermark - (watermark - 15_000) % 10_000  # the highest point passed
    assert rounds <= gap_periods.bit_length() + 1


def test_what_a_bundle_learns_judges_only_later_bundles() -> None:
    """A timer can reach a shard ahead of elements of its bundle that reached the step before the
    watermark that fired it (the module docstring): they are judged with what was known before."""
    state = RULE.judged(GateState(), oldest_ms=3_000, newest_ms=3_000).state
    assert RULE.usable(state, 1) is None
    state = RULE.fired(state, 15_000, 1).state
    assert (RULE.usable(state, 1), RULE.usable(state, 2)) == (None, 15_000)
    state = RULE.fired(state, 25_000, 1).state  # a jump fires several points in one bundle
    assert (RULE.usable(state, 1), RULE.usable(state, 2)) == (None, 25_000)
    state = RULE.fired(state, 35_000, 2).state  # the next bundle learns more
    assert (state.passed_ms, state.settled_ms, state.learnt_in) == (35_000, 25_000, 2)
    assert (RULE.usable(state, 2), RULE.usable(state, 3)) == (25_000, 35_000)
    # A bundle that only judges changes nothing of this; the ladder goes on from 35 s.
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
