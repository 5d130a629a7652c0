"""The job on the local Flink cluster: throughput of a drained backlog and early-pane latency.

    python -m benchmarks.flink_bench --events 30000 --latency-seconds 45 [--doc docs/benchmarks.md]

*Throughput*: N generated events go into a private topic first; the job is then submitted to the
local Flink 1.19 session cluster (live, as under `make run`; the Java Kafka read has no bounded
mode) and the clock runs from "every task is running" until the fixed-window aggregates in Postgres
count every event that must reach them (valid, first delivery; computed independently from the
produced records). events/s = those events / that time — so a run that refuses work cannot look
fast, and job start-up is left out (it is reported separately). The plain-Python baseline of
benchmarks/pipeline_bench.py runs on the same events in the same run.

*Latency*: the job live on Flink, live events at ``--latency-rate`` with one probe per second of a
category of its own; latency = the probe's produce call -> its first entry in the Redis stream
(see benchmarks/pipeline_bench.py, which measures Prism the same way).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine, replace_section, today
from benchmarks.pipeline_bench import (
    WARMUP_S,
    _pct,
    _probe_latencies,
    _send_live,
    aggregated_events,
    plain_python_baseline,
    private_job,
    produce_events,
)
from models.anomaly import latest_model
from pipelines.analytics_pipeline import run
from pipelines.flink_job import FlinkJobResult
from pipelines.runners import runner_args
from streaming_analytics.settings import Settings

SECTION = "Pipeline on Flink: throughput and latency"


def _submit(s: Settings, schema: str, *extra: str) -> tuple[FlinkJobResult, float]:
    t0 = time.perf_counter()
    result = run([*runner_args("flink", s), f"--postgres_schema={schema}", f"--job_name={schema}", *extra],
                 settings=s, wait=False)
    assert isinstance(result, FlinkJobResult)
    return result, time.perf_counter() - t0


def throughput(events: int) -> dict[str, Any]:
    name = f"bench_flink_tp_{int(time.time())}"
    with private_job(name) as s:
        values = produce_events(s, events)
        model_file = latest_model(s.model_dir)
        assert model_file is not None
        # The baseline also counts the events that must reach the aggregates (valid, first delivery).
        baseline_records_per_s, expected = plain_python_baseline(values, model_file)
        baseline = baseline_records_per_s * expected / len(values)  # aggregated events/s
        job, startup_s = _submit(s, name, "--kafka_start=earliest")
        try:
            t0 = time.perf_counter()
            counted = refused = 0
            deadline = time.monotonic() + 900
            # Done when every event is in the fixed windows or was refused as too late (reported:
            # a refusal is work not done, so it must not count as throughput). With the job's
            # windows a too-late event is always too late for the fixed windows first.
            while counted + refused < expected:
                assert time.monotonic() < deadline, f"{counted} of {expected} events aggregated"
                assert job.flink_state() == "RUNNING", job.rest.root_exception(job.job_id)
                counted, dead = aggregated_events(s.postgres_dsn, name)
                refused = dead.get("too_late", 0)
                time.sleep(0.25)
            elapsed = time.perf_counter() - t0
        finally:
            job.cancel()
    return {"events_read": len(values), "events_expected": expected, "events_aggregated": counted,
            "events_refused_too_late": refused, "seconds": elapsed, "startup_s": startup_s,
            "events_per_s": counted / elapsed, "baseline_python_events_per_s": baseline,
            "vs_baseline": counted / elapsed / baseline}


def latency(seconds: float, rate: float, early_delay_s: float) -> dict[str, Any]:
    name = f"bench_flink_lat_{int(time.time())}"
    with private_job(name) as s:
        job, _ = _submit(s, name, "--kafka_start=latest", f"--early_firing_delay_s={early_delay_s}")
        try:
            time.sleep(5)  # the readers position themselves at "latest" when their tasks start
            # Not measured: one-time costs (model load, first bundles).
            _send_live(s, WARMUP_S, rate, probe_prefix="warmup", seed=8)
            probes = _send_live(s, seconds, rate)
            time.sleep(3 + early_delay_s)
            latencies = sorted(_probe_latencies(s, probes))
        finally:
            job.cancel()
    return {"probes": len(probes), "seen": len(latencies), "rate": rate,
            "early_firing_delay_s": early_delay_s, "p50_ms": _pct(latencies, 0.50),
            "p95_ms": _pct(latencies, 0.95), "p99_ms": _pct(latencies, 0.99),
            "mean_ms": statistics.fmean(latencies) if latencies else None}


def render(tp: dict[str, Any], lat: dict[str, Any], command: str) -> str:
    def ms(key: str) -> str:
        value = lat.get(key)
        return "n/a" if value is None else f"{value:,.0f} ms"

    return f"""Last run: {today()} — {machine().describe()}.

Command: `{command}` (run by `make bench` → scripts/bench.sh, step `flink`).

Throughput: {tp['events_read']:,} generated events (duplicates and malformed records included) in a
private 4-partition topic first; then the job on the local Flink session cluster (parallelism 2,
checkpoints every 10 s, every sink) drains them. Counted: events in the fixed windows in Postgres
({tp['events_aggregated']:,} of the {tp['events_expected']:,} valid first deliveries;
{tp['events_refused_too_late']:,} refused as too late), from "every task runs" until every one of
them is aggregated or refused (job submission and start-up, {tp['startup_s']:.1f} s, excluded).

| engine | events/s (aggregated) | vs baseline |
|---|---|---|
| plain Python loop (baseline, same events, same run) | {tp['baseline_python_events_per_s']:,.0f} | 1.00 |
| job on Flink (backlog drained, with sinks) | {tp['events_per_s']:,.0f} | {tp['vs_baseline']:.3f} |

Latency (Flink, early firing delay {lat['early_firing_delay_s']} s, {lat['rate']:.0f} events/s live,
after {WARMUP_S:.0f} s of unmeasured warm-up): one probe event per second with a category of its
own; produce call → its first entry in the Redis stream. Probes seen: {lat['seen']} of
{lat['probes']}.

| p50 | p95 | p99 |
|---|---|---|
| {ms('p50_ms')} | {ms('p95_ms')} | {ms('p99_ms')} |

Targets (aims, not asserted): ≥ 20k events/s per core, p99 ≤ 500 ms.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flink_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--latency-seconds", type=float, default=45)
    p.add_argument("--latency-rate", type=float, default=200)
    p.add_argument("--early-delay-s", type=float, default=0.1)
    p.add_argument("--doc", type=Path, default=None)
    args = p.parse_args(argv)
    command = " ".join(["python -m benchmarks.flink_bench", *(sys.argv[1:] if argv is None else argv)])
    tp = throughput(args.events)
    lat = latency(args.latency_seconds, args.latency_rate, args.early_delay_s)
    print(json.dumps({"throughput": tp, "latency": lat}, indent=2))
    if args.doc:
        replace_section(args.doc, SECTION, render(tp, lat, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
