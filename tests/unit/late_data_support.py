"""Shared by the late-data tests (no tests of its own): the boundary pin, one pipeline that feeds
the same events, at watermarks one millisecond either side of their deadlines, to the job's
event-time step and to a plain Beam GroupByKey with the same windows and allowed lateness.

The rule must refuse exactly what that GroupByKey drops, on the runner at hand: the DirectRunner
drops once the watermark is *past* window end + lateness, Prism once it is *at or past* it
(measured; transforms/dedup.py, ``timer_time``). Unit tests run it on the DirectRunner, the
integration tests on Prism.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import orjson
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Timestamp

from tests.unit.test_transforms_support import BASE_S, fixed_clock, tv
from transforms.aggregates import EventTimeAggregates, parse_dimensions

#: Fixed 10 s windows, sliding 30 s every 10 s, 5 s of allowed lateness. An event at t = 3 s has
#: the deadline 15 s (fixed window [0, 10)) and 35 s (newest sliding window [0, 30)).
FIXED_S, SLIDING_S, PERIOD_S, LATENESS_S = 10, 30, 10, 5
DEADLINES_S = {"fixed": 15, "sliding": 35}
OFFSETS_MS = (-1, 0, 1)


def _probe_id(kind: str, offset_ms: int) -> str:
    return f"{kind}{offset_ms:+d}"


def expected_refused(kind: str, drops_at_deadline: bool) -> set[str]:
    """The probes a GroupByKey of ``kind`` drops: every probe added once the watermark had passed
    that kind's deadline (a sliding deadline is later than the fixed one), and the one added with
    the watermark exactly at it when the runner drops there too."""
    refused = set()
    for probe_kind, deadline in DEADLINES_S.items():
        for offset in OFFSETS_MS:
            at_ms = deadline * 1000 + offset
            if at_ms > DEADLINES_S[kind] * 1000 or (drops_at_deadline and at_ms == DEADLINES_S[kind] * 1000):
                refused.add(_probe_id(probe_kind, offset))
    return refused


def _plain_gbk(kind: str) -> Any:
    windows = (window.FixedWindows(FIXED_S) if kind == "fixed"
               else window.SlidingWindows(SLIDING_S, PERIOD_S))
    return beam.WindowInto(windows, trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                           accumulation_mode=trigger.AccumulationMode.DISCARDING,
                           allowed_lateness=LATENESS_S)


def build_boundary_pin(p: beam.Pipeline, *, drops_at_deadline: bool) -> None:
    """Add the pin's graph and assertions to ``p`` (a streaming pipeline)."""
    stream = TestStream().advance_watermark_to(BASE_S)
    # The shard's first batch: it arms the timer at the lowest deadline (15 s). The probes come
    # later, each at t = 3 s, after the watermark was moved to 1 ms before, at, and 1 ms after a
    # deadline.
    stream = stream.add_elements([tv("warm", 0, 1.0)])
    probes = []
    for kind, deadline in DEADLINES_S.items():
        for offset in OFFSETS_MS:
            probe = _probe_id(kind, offset)
            probes.append(probe)
            at = Timestamp(micros=(BASE_S + deadline) * 1_000_000 + offset * 1000)
            stream = stream.advance_watermark_to(at).add_elements([tv(probe, 3, 1.0)])
    events = p | stream.advance_watermark_to_infinity()
    out = events | EventTimeAggregates(
        fixed_size_s=FIXED_S, sliding_size_s=SLIDING_S, sliding_period_s=PERIOD_S,
        early_firing_delay_s=None, allowed_lateness_s=LATENESS_S, late_gate_margin_s=60,
        late_gate_lookahead_s=60, dimensions=parse_dimensions("category"), dedup_horizon_s=600,
        dedup_shards=1, clock=fixed_clock)
    for kind in DEADLINES_S:
        refused = expected_refused(kind, drops_at_deadline)
        letters = out.too_late | f"Refused{kind}" >> beam.FlatMap(_refused_by, kind)
        assert_that(letters, equal_to(sorted(refused)), label=f"RuleRefuses{kind}")
        kept = (events
                | f"Key{kind}" >> beam.Map(lambda e: ("k", e.event_id))
                | f"Window{kind}" >> _plain_gbk(kind)
                | f"Group{kind}" >> beam.GroupByKey()
                | f"Ids{kind}" >> beam.FlatMap(lambda kv: kv[1]))
        # A sliding event is in several windows: compare the set of ids kept in any of them.
        assert_that(kept, _same_set({"warm", *probes} - refused), label=f"GroupByKeyKeeps{kind}")


def _same_set(expected: set[str]) -> Any:
    def check(actual: list[str]) -> None:
        assert set(actual) == expected, (sorted(set(actual)), sorted(expected))

    return check


def _refused_by(letter: Any, kind: str) -> list[str]:
    """The event id of a too-late dead letter, if ``kind`` refused it (the detail names the kinds:
    ``too late for fixed, sliding: ...``)."""
    kinds = letter.reason_detail.split(":", 1)[0].removeprefix("too late for ").split(", ")
    return [orjson.loads(letter.raw)["event_id"]] if kind in kinds else []
