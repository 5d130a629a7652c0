"""The sinks' retry loop and record normalisation, without services: transient errors are retried
with capped, jittered backoff inside a total budget; permanent ones propagate at once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.integration.sinks_support import T0_MS, aggregate
from transforms.records import DeadLetter
from transforms.retry import RetryPolicy, UnavailableError, call_with_retry
from transforms.sinks.convert import (
    SinkRecordError,
    aggregate_dict,
    alert_dict,
    dead_letter_key,
    dead_letter_of,
    ms_to_datetime,
)


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Transient(Exception):
    pass


def flaky(failures: int) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def action() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise Transient(f"failure {len(calls)}")
        return "done"

    return calls, action


POLICY = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, max_elapsed_s=10.0)


def test_transient_failures_are_retried_until_success() -> None:
    clock, retried = FakeClock(), []
    calls, action = flaky(3)
    result = call_with_retry(action, name="s", policy=POLICY, is_transient=lambda e: isinstance(e, Transient),
                             on_retry=retried.append, sleep=clock.sleep, clock=lambda: clock.now)
    assert result == "done"
    assert len(calls) == 4
    assert [str(e) for e in retried] == ["failure 1", "failure 2", "failure 3"]
    for n, waited in enumerate(clock.sleeps, start=1):
        base = min(0.1 * 2 ** (n - 1), 1.0)
        assert base / 2 <= waited <= base


def test_a_permanent_error_is_raised_at_once() -> None:
    clock = FakeClock()
    calls, action = flaky(5)
    with pytest.raises(Transient, match="failure 1"):
        call_with_retry(action, name="s", policy=POLICY, is_transient=lambda e: False,
                        sleep=clock.sleep, clock=lambda: clock.now)
    assert len(calls) == 1
    assert clock.sleeps == []


def test_the_budget_ends_the_retries_with_a_clear_error() -> None:
    clock = FakeClock()
    calls, action = flaky(10_000)
    pattern = r"^s: gave up after (\d+) attempts in .*failure"
    with pytest.raises(UnavailableError, match=pattern) as raised:
        call_with_retry(action, name="s", policy=POLICY, is_transient=lambda e: True,
                        sleep=clock.sleep, clock=lambda: clock.now)
    assert raised.value.attempts == len(calls)
    assert clock.now <= POLICY.max_elapsed_s
    assert max(clock.sleeps) <= POLICY.max_backoff_s
    assert isinstance(raised.value.__cause__, Transient)


@pytest.mark.parametrize("kwargs", [{"initial_backoff_s": 0}, {"initial_backoff_s": 2, "max_backoff_s": 1},
                                    {"multiplier": 0.5}, {"max_elapsed_s": -1}])
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need"):
        RetryPolicy(**kwargs)


def test_dead_letter_keys_are_the_source_position_or_reason_and_payload() -> None:
    positioned = DeadLetter(b"x", "not_json", "d", "events", 2, 77, T0_MS)
    late = DeadLetter(b"{}", "too_late", "fixed", None, None, None, T0_MS)
    assert dead_letter_key(positioned) == "events-2-77"
    assert dead_letter_key(late) == ("too_late:sha256:"
                                     "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
    as_dict = {
        "raw": "x", "reason_code": "not_json", "reason_detail": "d", "topic": "events", "partition": 2,
        "offset": 77, "failed_at_ms": T0_MS}
    assert dead_letter_of(as_dict) == positioned


def test_records_missing_fields_are_refused_by_name() -> None:
    record = aggregate("k", 0, count=1).to_dict()
    assert aggregate_dict(record) == record
    del record["count"], record["p50"]
    with pytest.raises(SinkRecordError, match="aggregate record lacks count, p50"):
        aggregate_dict(record)
    with pytest.raises(SinkRecordError, match="alert record lacks"):
        alert_dict({"alert_id": "a"})


def test_milliseconds_convert_exactly() -> None:
    assert ms_to_datetime(T0_MS + 1) == datetime(2025, 11, 14, 22, 13, 20, 1000, tzinfo=UTC)
