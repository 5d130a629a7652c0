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

**Learning.** Per shard: ``passed`` (that highest point known to be passed), ``newest`` (the
newest event time judged) and a *ladder* of event-time timers (one timer family, a tag per rung):
rung 0 ``armed`` at the next lattice point above ``passed`` (the lowest next point over all kinds),
the others at lattice points at doubling distances above it, up to where learning stops. When a
rung fires, ``passed`` moves to its point and the ladder is set again from there. A watermark jump
of ``J`` fires every rung below it at once, so ``passed`` lands within ``J / 2`` of the watermark,
and the next round halves the rest: a runner that fires the timers a step sets only after the
bundle that set them (Flink, one round per bundle) catches up in ``log2(J / period)`` rounds, not
``J / period``.

**Why admitting is safe.** Each event-time timer holds the step's output watermark at its time
until it has fired (Beam's watermark holds), so the GroupByKey's watermark never passes a shard's
rung 0, ``next(passed)``. An event the shard admits has a deadline above what it used, so at or
above that rung — and the GroupByKey keeps it. A shard with no knowledge of its own starts from
the *floor*: the highest point any shard of this worker learnt in an earlier bundle (the watermark
is the step's, not the key's). With no floor either (the job's first bundles), it admits, and sets
its rung 0 ``lookahead`` below the lowest deadline it has seen: the output watermark stays below
that until the ladder has caught up, so what was admitted blindly cannot be dropped by the
GroupByKey either (unless it is more than ``lookahead`` older than everything judged before).

**Where learning stops.** A watermark at the end of the input (+inf: a bounded run, a drained job)
would fire lattice points forever. So the timer is re-armed only while the next point is at most
``lookahead`` beyond the deadline of the shard's newest event: past that, no event the shard has
seen can be judged differently, and the next event it receives re-arms it. What this leaves open
is documented in docs/pipeline.md ("Late data").

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
    """A new :class:`GateState` and the ladder to set (``rungs[i]`` for the timer tagged ``i``;
    empty: leave the timers as they are)."""

    state: GateState
    rungs: tuple[int, ...] = ()

    @property
    def arm_ms(self) -> int | None:
        """Rung 0, the point the shard's knowledge moves to next (``None``: nothing to set)."""
        return self.rungs[0] if self.rungs else None


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

    def at_or_after(self, x_ms: int) -> int:
        """The lowest deadline of any kind at or after ``x_ms``."""
        return self.next_after(x_ms - 1)

    def ladder(self, rung0_ms: int, newest_ms: int) -> tuple[int, ...]:
        """``rung0_ms`` and the lattice points at doubling distances above it (the first one a
        period up), up to :meth:`ceiling` (see the module docstring)."""
        top = self.ceiling(newest_ms)
        distance = min(k.period_ms for k in self.kinds)
        rungs = [rung0_ms]
        while (rung := self.at_or_after(rung0_ms + distance)) <= top:
            if rung > rungs[-1]:
                rungs.append(rung)
            distance *= 2
        return tuple(rungs)

    @staticmethod
    def raised(state: GateState, point_ms: int, bundle: int) -> GateState:
        """``state`` after learning in ``bundle`` that the watermark passed ``point_ms``."""
        passed = point_ms if state.passed_ms is None else max(state.passed_ms, point_ms)
        return replace(state, passed_ms=passed, learnt_in=bundle,
                       settled_ms=LateDataRule.usable(state, bundle))

    def ceiling(self, newest_ms: int) -> int:
        """The highest point a shard whose newest event is at ``newest_ms`` keeps learning up to."""
        return max(k.of(newest_ms) for k in self.kinds) + self.lookahead_ms

    def judged(self, state: GateState, oldest_ms: int, newest_ms: int, floor_ms: int | None = None) -> Step:
        """After a batch with event times in ``[oldest_ms, newest_ms]`` was judged (``floor_ms``:
        what the worker knew before this bundle, for a shard that knows nothing yet)."""
        newest = newest_ms if state.newest_ms is None else max(state.newest_ms, newest_ms)
        state = replace(state, newest_ms=newest)
        if state.passed_ms is None and floor_ms is not None:
            state = replace(state, passed_ms=floor_ms, settled_ms=floor_ms, learnt_in=None)
        if state.passed_ms is None:
            # Nothing learnt anywhere yet: rung 0 goes ``lookahead`` below the lowest deadline
            # seen, holding the output watermark there until the ladder has caught up.
            want = self.at_or_after(min(k.of(oldest_ms) for k in self.kinds) - self.lookahead_ms)
            if state.armed_ms is not None and state.armed_ms <= want:
                want = state.armed_ms
        elif state.armed_ms is None:
            want = self.next_after(state.passed_ms)  # resume learning (it had stopped)
        else:
            want = state.armed_ms
        return self._arm(state, want)

    def fired(self, state: GateState, point_ms: int, bundle: int) -> Step:
        """After the rung set for ``point_ms`` fired in ``bundle``: the watermark has passed it."""
        if state.passed_ms is not None and point_ms <= state.passed_ms:
            return Step(state)  # a rung below what the shard knows: nothing new
        learnt = replace(self.raised(state, point_ms, bundle), armed_ms=None)
        assert learnt.passed_ms is not None
        return self._arm(learnt, self.next_after(learnt.passed_ms))

    def _arm(self, state: GateState, want: int) -> Step:
        if want == state.armed_ms:
            return Step(state)
        if state.newest_ms is None or want > self.ceiling(state.newest_ms):
            return Step(state)  # learning stops here (see the module docstring)
        return Step(replace(state, armed_ms=want), self.ladder(want, state.newest_ms))

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
