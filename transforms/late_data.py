"""The late-data rule: when an event is too late for the windows of an aggregate kind, and how a
shard of the dedup step learns the watermark that decides it. Free of Beam, so it is tested alone.

Beam drops an element inside the GroupByKey, without a trace, once the watermark has passed its
window's end plus the allowed lateness. The job must count and dead-letter such events instead, so
``DeduplicateEvents`` judges every first delivery before it reaches the windows — but a Beam Python
DoFn cannot read the watermark. What it can do is set an event-time timer: when a timer set for
time ``x`` fires, the watermark has passed ``x``. That is all this rule relies on, so what a shard
knows is a lower bound of the real watermark in every reading order (partitions read one after
another or interleaved, idle partitions, backlogs, restarts): it never runs ahead.

**Deadlines.** For one kind (windows of ``size`` starting every ``period``; fixed windows have
``period = size``) an event at ``t`` is too late once the watermark has passed

    deadline(t) = newest window start (t - t mod period) + size + allowed lateness

— the end of the newest window containing it, plus the lateness. Older windows of a sliding event
close earlier; while its newest one is open, the GroupByKey still takes it for every window it keeps.
Deadlines are points of a lattice, ``k * period + size + lateness``, so a shard does not need to know
the watermark to the millisecond: only the highest lattice point it has passed.

**Learning.** Per shard: ``passed`` (that highest point known to be passed), one event-time timer
``armed`` at the next lattice point above it (the lowest next point over all kinds), and ``newest``
(the newest event time judged). When the timer fires, ``passed`` moves to its point and the timer
is re-armed at the next one; a watermark jump fires the points one after another. A shard with no
knowledge yet (its first batch) admits, and arms its timer at the lowest deadline it has seen.

**Where learning stops.** A watermark at the end of the input (+inf: a bounded run, a drained job)
would fire lattice points forever. So the timer is re-armed only while the next point is at most
``lookahead`` beyond the deadline of the shard's newest event: past that, no event the shard has
seen can be judged differently, and the next event it receives re-arms it. What this leaves open
is documented in docs/pipeline.md ("Late data"): an event newer than everything its shard has
judged, arriving after the watermark has run more than ``lookahead`` beyond that shard's newest
deadline, or in the very first batch of a shard, is admitted without knowledge.

**Knowledge counts from the next bundle on.** A runner may hand a shard, within one bundle, a timer
before elements that reached the step ahead of the watermark that fired it: Beam's Python SDK
processes the timers of each data-plane message before its elements, and Flink puts a timer into
the bundle in progress when the watermark arrives. Judged with that timer's knowledge, such an
element would be refused although the GroupByKey, which sees it ahead of that watermark (Flink
emits a step's watermark only between bundles), keeps it. So a point learnt in a bundle is used
from the shard's next bundle on: every element of a later bundle reached the step after the
watermark that taught it. ``passed`` is what the shard knows (its timer chain continues from it);
``settled`` what it knew before the bundle ``learnt_in``, the one that raised ``passed`` last.

An event is refused for a kind exactly when its deadline for that kind is at or below what the
shard may use in the bundle judging it (:meth:`LateDataRule.usable`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from streaming_analytics.events import Event
from transforms.records import DeadLetter

#: Reason code of the dead letters of refused events.
TOO_LATE_REASON = "too_late"


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The deadlines of one aggregate kind, all in milliseconds of event time."""

    kind: str
    size_ms: int
    period_ms: int
    lateness_ms: int

    def __post_init__(self) -> None:
        if not 0 < self.period_ms <= self.size_ms or self.lateness_ms < 0:
            raise ValueError(f"need 0 < period <= size and lateness >= 0, got {self}")

    def of(self, t_ms: int) -> int:
        """When the newest window containing ``t_ms`` stops taking events."""
        return t_ms - t_ms % self.period_ms + self.size_ms + self.lateness_ms

    def after(self, x_ms: int) -> int:
        """The lowest deadline of this kind later than ``x_ms``."""
        offset = (self.size_ms + self.lateness_ms) % self.period_ms
        return x_ms - (x_ms - offset) % self.period_ms + self.period_ms


@dataclass(frozen=True, slots=True)
class GateState:
    """What one shard knows (see the module docstring); all ``None`` for a shard that has seen
    nothing. ``armed_ms`` is the lattice point the shard's timer is set for, ``None`` when no timer
    is set; ``learnt_in`` the (opaque) bundle that raised ``passed_ms`` last, and ``settled_ms``
    what was known before it."""

    passed_ms: int | None = None
    armed_ms: int | None = None
    newest_ms: int | None = None
    settled_ms: int | None = None
    learnt_in: int | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """A new :class:`GateState` and, when not ``None``, the lattice point to set the timer for."""

    state: GateState
    arm_ms: int | None


@dataclass(frozen=True)
class LateDataRule:
    """The rule for the job's aggregate kinds (see the module docstring)."""

    kinds: tuple[Deadlines, ...]
    lookahead_ms: int

    def __post_init__(self) -> None:
        if not self.kinds or len({k.kind for k in self.kinds}) != len(self.kinds):
            raise ValueError("one Deadlines per aggregate kind, at least one")
        if self.lookahead_ms < 0:
            raise ValueError("lookahead must be >= 0")

    @staticmethod
    def usable(state: GateState, bundle: int) -> int | None:
        """The highest point the watermark is known to have passed that may judge the elements of
        ``bundle``: what was learnt in earlier bundles only."""
        return state.settled_ms if state.learnt_in == bundle else state.passed_ms

    def refusing(self, t_ms: int, passed_ms: int | None) -> list[Deadlines]:
        """The kinds whose windows are closed for an event at ``t_ms`` (usually none)."""
        if passed_ms is None:
            return []
        return [k for k in self.kinds if k.of(t_ms) <= passed_ms]

    def next_after(self, x_ms: int) -> int:
        """The lowest deadline of any kind later than ``x_ms``: where the timer goes next."""
        return min(k.after(x_ms) for k in self.kinds)

    def ceiling(self, newest_ms: int) -> int:
        """The highest point a shard whose newest event is at ``newest_ms`` keeps learning up to."""
        return max(k.of(newest_ms) for k in self.kinds) + self.lookahead_ms

    def judged(self, state: GateState, oldest_ms: int, newest_ms: int) -> Step:
        """After a batch with event times in ``[oldest_ms, newest_ms]`` was judged."""
        newest = newest_ms if state.newest_ms is None else max(state.newest_ms, newest_ms)
        state = replace(state, newest_ms=newest)
        if state.passed_ms is None:
            # Nothing learnt yet: the timer goes to the lowest deadline seen, so that the first
            # firing tells the most.
            want = min(k.of(oldest_ms) for k in self.kinds)
            if state.armed_ms is not None and state.armed_ms <= want:
                want = state.armed_ms
        elif state.armed_ms is None:
            want = self.next_after(state.passed_ms)  # resume learning (it had stopped)
        else:
            want = state.armed_ms
        return self._arm(state, want)

    def fired(self, state: GateState, point_ms: int, bundle: int) -> Step:
        """After the timer set for ``point_ms`` fired in ``bundle``: the watermark has passed it."""
        passed = point_ms if state.passed_ms is None else max(state.passed_ms, point_ms)
        learnt = replace(state, passed_ms=passed, armed_ms=None, learnt_in=bundle,
                         settled_ms=self.usable(state, bundle))
        return self._arm(learnt, self.next_after(passed))

    def _arm(self, state: GateState, want: int) -> Step:
        if want == state.armed_ms:
            return Step(state, None)
        if state.newest_ms is None or want > self.ceiling(state.newest_ms):
            return Step(state, None)  # learning stops here (see the module docstring)
        return Step(replace(state, armed_ms=want), want)

    def dead_letter(self, event: Event, refusing: Sequence[Deadlines], passed_ms: int,
                    failed_at_ms: int) -> DeadLetter:
        """The dead letter of an event refused by ``refusing`` (kinds that do not refuse it still
        count it). The detail starts with ``too late for <kind>[, <kind>]:``."""
        t = event.event_time_ms
        closed = ", ".join(f"{k.kind} at {k.of(t)}" for k in refusing)
        return DeadLetter(
            raw=event.to_json(),
            reason_code=TOO_LATE_REASON,
            reason_detail=(
                f"too late for {', '.join(k.kind for k in refusing)}: event time {t}; its newest "
                f"window closed (window end + allowed lateness) {closed}; the watermark had "
                f"passed {passed_ms}"
            ),
            topic=None,
            partition=None,
            offset=None,
            failed_at_ms=failed_at_ms,
        )
