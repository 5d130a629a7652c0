"""The SLO watch after an upgrade: compare the new release's health with thresholds for a while and,
on a breach that persists, roll back to the pre-upgrade savepoint by itself — reporting why in a
log line, the audit trail, a Prometheus metric and the exit status.

The Flink operator's own rollback only asks whether the job runs. A release that runs and
dead-letters every event, or stops checkpointing, or falls behind, passes that check; this watch
looks at what the platform promises instead:

* the job is running (not failing, restarting or gone) — checked on every sample;
* checkpoints complete: the newest completed one (or, before the first, the job's start) is at
  most ``max_checkpoint_age_s`` old, and no more than ``max_failed_checkpoints`` failed since the
  watch began;
* consumer lag: records in the topic the job's group has not committed, at most ``max_consumer_lag``;
* dead-letter ratio: dead letters written since the watch began per record consumed since then
  (a release that refuses what the previous one took), at most ``max_dead_letter_ratio``;
* early-pane age: the newest pane on the live stream is at most ``max_pane_age_s`` old while
  records arrive (the job produces results, not only survives);
* error counters: task restarts since the watch began, at most ``max_restarts``.

A sample that cannot be read counts as unknown, not healthy: after ``grace_s`` an unreadable
signal is a breach too. One breached sample is noise; ``breaches_to_rollback`` consecutive ones
roll back. The verdict is a log line, an audit record, the exit status of the CLI and the
metrics of :func:`write_metrics`. Probes are small functions over the backend, Kafka, PostgreSQL
and Redis, so the same watch serves the local cluster and Kubernetes (the Flink REST counters
come from the backend's status; pipelines/lifecycle/backend.py).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipelines.lifecycle.catalogue import LifecycleStore
from pipelines.lifecycle.service import Lifecycle
from streaming_analytics.settings import Settings

_LOG = logging.getLogger(__name__)

#: A probe returns its signals by name (None: could not be read this time).
Probe = Callable[[], Mapping[str, float | None]]


@dataclass(frozen=True)
class Thresholds:
    """How long to watch and what counts as healthy (see the module docstring)."""

    duration_s: float = 300.0
    interval_s: float = 10.0
    grace_s: float = 60.0
    breaches_to_rollback: int = 2
    max_checkpoint_age_s: float = 120.0
    max_failed_checkpoints: int = 2
    max_consumer_lag: int = 100_000
    max_dead_letter_ratio: float = 0.2
    max_pane_age_s: float = 120.0
    max_restarts: int = 0

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in fields(cls):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                                dest=f.name, help="(default %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Thresholds:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


@dataclass
class Verdict:
    """How a watch ended: ``healthy`` after its duration, or ``rolled_back`` with the breaches."""

    release: str | None
    samples: int = 0
    rolled_back: bool = False
    breaches: list[str] = field(default_factory=list)
    rolled_back_to: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def breaches(signals: Mapping[str, float | None], t: Thresholds, *, in_grace: bool) -> list[str]:
    """What in ``signals`` breaks ``t`` (one line each); unreadable signals count after the grace."""
    limits: dict[str, float] = {
        "checkpoint_age_s": t.max_checkpoint_age_s, "failed_checkpoints": t.max_failed_checkpoints,
        "consumer_lag": t.max_consumer_lag, "dead_letter_ratio": t.max_dead_letter_ratio,
        "pane_age_s": t.max_pane_age_s, "restarts": t.max_restarts,
    }
    out = []
    running = signals.get("running")
    if running is not None and running < 1:
        out.append("job not running")  # never excused by the grace: a failing release is failing
    elif running is None and not in_grace:
        out.append("job state unknown")
    if in_grace:
        return out
    for name, limit in limits.items():
        if name not in signals or (name == "pane_age_s" and signals.get("consumed") == 0):
            continue  # (no new panes are due while no records arrive)
        value = signals[name]
        if value is None:
            out.append(f"{name} unknown")
        elif value > limit:
            out.append(f"{name} {value:g} > {limit:g}")
    return out


class SloWatch:
    """``SloWatch(lifecycle, probes, thresholds).run()``: watch the running release, roll back to
    the deployment's rollback point on a persistent breach."""

    def __init__(self, lifecycle: Lifecycle, probes: list[Probe], thresholds: Thresholds,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.lifecycle = lifecycle
        self.probes = probes
        self._names: dict[int, set[str]] = {}  # the signals each probe gave last
        self.thresholds = thresholds
        self._clock = clock
        self._sleep = sleep

    def sample(self) -> dict[str, float | None]:
        signals: dict[str, float | None] = {}
        for i, probe in enumerate(self.probes):
            try:
                read = probe()
            except Exception as exc:  # noqa: BLE001 - whatever a probe hits, its signals are unknown
                _LOG.warning("probe %s failed: %s", getattr(probe, "__name__", probe), exc)
                signals.update(dict.fromkeys(self._names.get(i, ()), None))
                continue
            self._names[i] = set(read)
            signals.update(read)
        return signals

    def run(self) -> Verdict:
        t = self.thresholds
        deployment = self.lifecycle.store.deployment()
        verdict = Verdict(release=deployment.release)
        start = self._clock()
        consecutive = 0
        while True:
            signals = self.sample()
            verdict.samples += 1
            in_grace = self._clock() - start < t.grace_s
            found = breaches(signals, t, in_grace=in_grace)
            if found:
                consecutive += 1
                _LOG.warning("SLO breach %d/%d of release %s: %s", consecutive, t.breaches_to_rollback,
                             verdict.release, "; ".join(found))
                if consecutive >= t.breaches_to_rollback:
                    return self._roll_back(verdict, found)
            else:
                consecutive = 0
            if self._clock() - start >= t.duration_s:
                _LOG.info("release %s healthy for %.0f s (%d samples)", verdict.release, t.duration_s,
                          verdict.samples)
                self.lifecycle.store.audit("watch", self.lifecycle.backend.name, "healthy",
                                           release=verdict.release, samples=verdict.samples)
                write_metrics(self.lifecycle.store, verdict)
                return verdict
            self._sleep(t.interval_s)

    def _roll_back(self, verdict: Verdict, found: list[str]) -> Verdict:
        reason = "; ".join(found)
        point = self.lifecycle.store.deployment().rollback_point
        _LOG.error("rolling back release %s to %s: %s", verdict.release, point, reason)
        self.lifecycle.store.audit("watch", self.lifecycle.backend.name, "breach", release=verdict.release,
                                   breaches=found)
        self.lifecycle.rollback(point, reason=f"SLO breach: {reason}")
        verdict.rolled_back = True
        verdict.breaches = found
        verdict.rolled_back_to = point
        write_metrics(self.lifecycle.store, verdict)
        return verdict


# --- probes ---------------------------------------------------------------------------------------
def job_probe(lifecycle: Lifecycle) -> Probe:
    """Running, checkpoint age, failed checkpoints and restarts since the first sample."""
    first: dict[str, float] = {}

    def job() -> dict[str, float | None]:
        status = lifecycle.backend.status()
        out: dict[str, float | None] = {"running": 1.0 if status.running else 0.0}
        first.setdefault("failed", status.checkpoints_failed)
        out["failed_checkpoints"] = status.checkpoints_failed - first["failed"]
        # A job with no completed checkpoint yet (just started, or restored from a savepoint) is
        # as far behind as it is old: that is known, and healthy until it exceeds the limit.
        last_ms = status.last_checkpoint_ms if status.last_checkpoint_ms is not None else status.started_ms
        out["checkpoint_age_s"] = None if last_ms is None else max(0.0, time.time() - last_ms / 1000)
        if status.restarts is not None:
            first.setdefault("restarts", status.restarts)
            out["restarts"] = status.restarts - first["restarts"]
        return out

    return job


def kafka_probe(settings: Settings) -> Probe:
    """Consumer lag of the job's group, and the records it committed since the first sample
    (``consumed``, for the dead-letter ratio)."""
    first: dict[str, float] = {}

    def kafka() -> dict[str, float | None]:
        from pipelines.lifecycle.offsets import read_group_offsets

        offsets = read_group_offsets(settings.kafka_bootstrap, settings.consumer_group, settings.topic_events)
        total = float(sum(offsets.committed.values()))
        first.setdefault("committed", total)
        return {"consumer_lag": float(offsets.lag), "consumed": total - first["committed"]}

    return kafka


def postgres_probe(settings: Settings, schema: str) -> Probe:
    """Dead letters written since the first sample (``dead_letters``)."""
    first: dict[str, float] = {}

    def postgres() -> dict[str, float | None]:
        import psycopg2
        from psycopg2 import sql

        with psycopg2.connect(settings.postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {}.dead_letters").format(sql.Identifier(schema)))
            row = cur.fetchone()
        count = float(row[0]) if row else 0.0
        first.setdefault("dead", count)
        return {"dead_letters": count - first["dead"]}

    return postgres


def redis_probe(settings: Settings, channel: str) -> Probe:
    """Age of the newest entry of a live stream (``pane_age_s``), from its id's milliseconds."""

    def redis_pane_age() -> dict[str, float | None]:
        import redis

        from streaming_analytics.streams import stream_key

        client = redis.Redis.from_url(settings.redis_url)
        try:
            newest = client.xrevrange(stream_key(settings.redis_stream_prefix, channel), count=1)
        finally:
            client.close()
        if not newest:
            return {"pane_age_s": None}
        entry_id = newest[0][0].decode() if isinstance(newest[0][0], bytes) else str(newest[0][0])
        return {"pane_age_s": max(0.0, time.time() - int(entry_id.split("-")[0]) / 1000)}

    return redis_pane_age


def dead_letter_ratio(probes: list[Probe]) -> Probe:
    """``dead_letters / consumed`` of the probes above, once some records were consumed."""

    def ratio() -> dict[str, float | None]:
        signals: dict[str, float | None] = {}
        for probe in probes:
            signals.update(probe())
        dead, consumed = signals.get("dead_letters"), signals.get("consumed")
        out = dict(signals)
        if dead is None or consumed is None:
            out["dead_letter_ratio"] = None
        else:
            out["dead_letter_ratio"] = dead / consumed if consumed > 0 else 0.0
        return out

    return ratio


def default_probes(lifecycle: Lifecycle, settings: Settings, schema: str = "public") -> list[Probe]:
    """Every signal of the module docstring for the job configured by ``settings``."""
    from streaming_analytics.streams import CHANNEL_FIXED

    return [job_probe(lifecycle),
            dead_letter_ratio([kafka_probe(settings), postgres_probe(settings, schema)]),
            redis_probe(settings, CHANNEL_FIXED)]


#: The watch's metrics, in Prometheus' text format, for node-exporter's textfile collector (a CLI
#: process lives too briefly to be scraped): in the lifecycle directory.
METRICS_FILE = "lifecycle.prom"


def write_metrics(store: LifecycleStore, verdict: Verdict) -> Path:
    """Write ``sa_lifecycle_slo_rollbacks_total`` (rollbacks the watch made, from the audit trail),
    ``sa_lifecycle_watch_rolled_back`` (1 when the last watch rolled its release back) and
    ``sa_lifecycle_watch_last_run_timestamp_seconds`` to :data:`METRICS_FILE`."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    rollbacks = sum(1 for a in store.audit_trail() if a.get("action") == "rollback"
                    and a.get("outcome") == "ok" and str(a.get("reason", "")).startswith("SLO breach"))
    Gauge("sa_lifecycle_slo_rollbacks_total", "Releases the SLO watch rolled back, ever",
          registry=registry).set(rollbacks)
    Gauge("sa_lifecycle_watch_rolled_back", "1 when the last SLO watch rolled its release back",
          ["release"], registry=registry).labels(release=verdict.release or "").set(int(verdict.rolled_back))
    Gauge("sa_lifecycle_watch_last_run_timestamp_seconds", "When the last SLO watch ended",
          registry=registry).set_to_current_time()
    path = store.root / METRICS_FILE
    write_to_textfile(str(path), registry)
    return path
