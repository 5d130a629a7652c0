"""Shared helpers of the transform tests (no tests of its own).

Includes a workaround for a Beam 2.77 DirectRunner bug that the metric assertions depend on: the
executor thread's ``StateSampler`` caches one ``ScopedState`` per step, holding the
``MetricsContainer`` of the step's *first* bundle, so counters incremented in any later bundle land
in a container that was already committed and are lost (`committed` stays at the first bundle's
value). :func:`fresh_metrics_per_bundle` gives every bundle a fresh sampler, as the executor
intends. Real runners (Flink) are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct import executor
from apache_beam.runners.worker import statesampler
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils import counters

from streaming_analytics.events import Event, parse_event
from transforms.metrics import NAMESPACE

#: A time aligned to 300 s (so fixed and sliding windows start on it), in seconds.
BASE_S = 1_700_000_100
assert BASE_S % 300 == 0


def fixed_clock() -> float:
    """The wall clock of the tests: 2023-11-14T22:15:00Z."""
    return 1_700_000_100.0


def event_doc(
    event_id: str,
    t_s: float,
    amount: float,
    *,
    user: str = "u1",
    event_type: str = "purchase",
    country: str = "DE",
    category: str = "books",
) -> dict[str, Any]:
    """A valid event document at ``BASE_S + t_s``."""
    return {
        "schema_version": 1,
        "event_id": event_id,
        "event_type": event_type,
        "event_time_ms": round((BASE_S + t_s) * 1000),
        "user_id": user,
        "session_id": "s1",
        "item_id": "i1",
        "category": category,
        "country": country,
        "amount": amount,
        "currency": "EUR",
        "features": {
            "account_age_days": 10,
            "session_event_index": 1,
            "seconds_since_last_event": 3.5,
            "device_risk": 0.1,
            "ip_country_mismatch": 0,
            "amount_vs_user_avg": 1.0,
        },
    }


def raw(event_id: str, t_s: float, amount: float, **kw: Any) -> bytes:
    """The record value of :func:`event_doc`."""
    return orjson.dumps(event_doc(event_id, t_s, amount, **kw))


def event(event_id: str, t_s: float, amount: float, **kw: Any) -> Event:
    """The parsed :func:`event_doc`."""
    return parse_event(raw(event_id, t_s, amount, **kw))


def tv(event_id: str, t_s: float, amount: float, **kw: Any) -> TimestampedValue:
    """An event timestamped with its event time, as ParseEvents emits it."""
    return TimestampedValue(event(event_id, t_s, amount, **kw), BASE_S + t_s)


def streaming_pipeline() -> TestPipeline:
    """A TestPipeline in streaming mode (TestStream runs on the BundleBasedDirectRunner)."""
    options = PipelineOptions(flags=[])
    options.view_as(StandardOptions).streaming = True
    return TestPipeline(options=options)


@contextmanager
def fresh_metrics_per_bundle() -> Iterator[None]:
    """Work around the DirectRunner metrics bug described in the module docstring."""
    original = executor.TransformExecutor.call

    def call(self: Any, state_sampler: Any) -> Any:
        sampler = statesampler.StateSampler("", counters.CounterFactory())
        previous = statesampler.get_current_tracker()
        statesampler.set_current_tracker(sampler)
        try:
            return original(self, sampler)
        finally:
            statesampler.set_current_tracker(previous)

    executor.TransformExecutor.call = call
    try:
        yield
    finally:
        executor.TransformExecutor.call = original


def run_and_count(p: TestPipeline) -> dict[str, int]:
    """Run ``p`` to completion; return the committed counters of our namespace, summed by name."""
    with fresh_metrics_per_bundle():
        result = p.run()
        result.wait_until_finish()
    found: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        found[c.key.metric.name] = found.get(c.key.metric.name, 0) + c.committed
    return found
