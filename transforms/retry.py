"""Retry with capped exponential backoff and a total time budget: the one retry loop of the
pipeline, shared by the sinks and the Kafka source.

Why one policy object for every writer and reader: a transient outage (a restarted Postgres, Redis or
broker, a killed connection) should be ridden out the same way everywhere — reconnect, back off, try
the same action again — while a permanent error (bad data, a constraint we do not handle, a wrong
password) must surface at once. Actions are retried whole, so each must be safe to repeat: the
Postgres upserts are idempotent, the Redis streams are at-least-once (see docs/sinks.md), and the
Kafka source's connect positions a new consumer.

When the budget is spent :func:`call_with_retry` raises :class:`UnavailableError`: the bundle fails,
the runner restarts from the last checkpoint, and nothing is acknowledged that was not written.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long and how often to retry a transient failure.

    The n-th wait is ``min(initial_backoff_s * multiplier**(n-1), max_backoff_s)``, half of it
    randomised (so that many workers reconnecting after one outage do not stampede in step). No wait
    starts that would end after ``max_elapsed_s`` from the first attempt.
    """

    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    max_elapsed_s: float = 120.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("need 0 < initial_backoff_s <= max_backoff_s")
        if self.max_elapsed_s < 0 or self.multiplier < 1:
            raise ValueError("need max_elapsed_s >= 0 and multiplier >= 1")

    def backoff(self, attempt: int) -> float:
        """Wait after failed attempt number ``attempt`` (1-based), jittered in [b/2, b]."""
        base = min(self.initial_backoff_s * self.multiplier ** (attempt - 1), self.max_backoff_s)
        return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not cryptography


class UnavailableError(RuntimeError):
    """A sink or source kept failing transiently until its retry budget ran out."""

    def __init__(self, name: str, attempts: int, elapsed_s: float, budget_s: float,
                 last: BaseException) -> None:
        super().__init__(
            f"{name}: gave up after {attempts} attempts in {elapsed_s:.1f}s (retry budget "
            f"{budget_s:g}s); last error: {type(last).__name__}: {last}".strip()
        )
        self.name = name
        self.attempts = attempts
        self.elapsed_s = elapsed_s


def call_with_retry(
    action: Callable[[], T],
    *,
    name: str,
    policy: RetryPolicy,
    is_transient: Callable[[Exception], bool],
    on_retry: Callable[[Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``action`` until it succeeds, a permanent error occurs, or the budget is spent.

    ``name`` says what is retried in the log and in the error (a sink's name, e.g.
    ``postgres.aggregates``). ``on_retry`` runs after each transient failure, before the wait; sinks
    use it to drop the broken connection and count the retry. Permanent errors propagate unchanged.
    """
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            elapsed = clock() - start
            delay = policy.backoff(attempt)
            if elapsed + delay > policy.max_elapsed_s:
                raise UnavailableError(name, attempt, elapsed, policy.max_elapsed_s, exc) from exc
            log.warning("%s: transient failure on attempt %d (%s: %s); retrying in %.2fs",
                        name, attempt, type(exc).__name__, str(exc).strip(), delay)
            if on_retry is not None:
                on_retry(exc)
            sleep(delay)
