"""Checkpoint size of the job on Flink over a long run: does state stay flat?

    python -m benchmarks.checkpoint_series --minutes 30 --rate 200 [--doc docs/benchmarks.md]

Runs the whole job on the local Flink session cluster (the stack's), in a private namespace, while
the generator sends live events at ``--rate`` (its default under `make run` is 200/s), and records
every completed checkpoint: id, time, total checkpointed size and the size of each operator
(vertex). Why: Beam's Flink runner (1.19, 2.62) grows the checkpoint state of every Python SDF
source by ~5.7 KB per checkpoint (apache/beam#27648); the job reads Kafka through Java KafkaIO as a
native Flink source instead, and this series shows whether anything else grows. After the warm-up
(dedup ids fill one horizon, windows one lateness) a job whose state is bounded by its key set
shows a flat series; a leak shows a slope proportional to the number of checkpoints.

``tests/integration/test_pipeline_flink.py`` holds the same property in a short run with small
windows; this is the long version for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

from benchmarks.common import machine, replace_section, today
from devstack import sandbox
from devstack.generator import EventGenerator, GeneratorConfig, produce
from pipelines.analytics_pipeline import run
from pipelines.flink_job import FlinkJobResult
from pipelines.runners import runner_args
from streaming_analytics.settings import Settings

HEADING = "Checkpoint size on Flink over a long run"
#: (checkpoint id, minutes since the job started, total checkpointed bytes, bytes per operator)
Series = list[tuple[int, float, int, dict[str, int]]]


def _vertex_sizes(job: FlinkJobResult, checkpoint_id: int, names: dict[str, str]) -> dict[str, int]:
    details = job.rest.checkpoint_details(job.job_id, checkpoint_id)
    return {names[vid]: int(task.get("checkpointed_size", task.get("state_size", 0)))
            for vid, task in details.get("tasks", {}).items() if vid in names}


def _short(name: str) -> str:
    """A vertex name without Flink's chaining noise: its first Beam step label."""
    for part in name.replace("Source: ", "").split(" -> "):
        label = part.split("[", 1)[-1].split("]", 1)[-1].strip("{} ")
        if label:
            return label.split("/")[0].split(",")[0][:40]
    return name[:40]


def measure(minutes: float, rate: float, checkpoint_s: int) -> tuple[Series, str]:
    """Run the job for ``minutes``; return its checkpoint series and how the job ended."""
    settings = Settings.from_env()
    name = f"bench_ckpt_{int(time.time())}"
    series: Series = []
    with sandbox.private_job(settings, name, 4, delete_topics=True) as s:
        stop = threading.Event()
        producer = threading.Thread(target=produce, daemon=True, kwargs={
            "generator": EventGenerator(GeneratorConfig(seed=11)), "bootstrap": s.kafka_bootstrap,
            "topic": s.topic_events, "count": None, "rate": rate, "realtime": True, "stop": stop.is_set})
        producer.start()
        args = [a for a in runner_args("flink", s) if not a.startswith("--checkpointing_interval")]
        result = run([*args, f"--checkpointing_interval={checkpoint_s * 1000}", f"--postgres_schema={name}",
                      "--kafka_start=earliest", f"--job_name={name}"], settings=s, wait=False)
        assert isinstance(result, FlinkJobResult)
        try:
            vertices = result.rest.job(result.job_id)["vertices"]
            names = {v["id"]: _short(v["name"]) for v in vertices}
            t0 = time.monotonic()
            seen: set[int] = set()
            while time.monotonic() - t0 < minutes * 60:
                latest = result.rest.checkpoints(result.job_id).latest
                if latest is not None and latest.id not in seen:
                    seen.add(latest.id)
                    series.append((latest.id, (time.monotonic() - t0) / 60, latest.state_size,
                                   _vertex_sizes(result, latest.id, names)))
                time.sleep(1)
            failed = result.rest.checkpoints(result.job_id).failed
            state = result.flink_state()
        finally:
            stop.set()
            result.cancel()
            producer.join(30)
    return series, f"job state at the end: {state}; failed checkpoints: {failed}"


def report(series: Series, status: str, minutes: float, rate: float, checkpoint_s: int) -> str:
    third = max(1, len(series) // 3)
    middle = [total for _, _, total, _ in series[third:2 * third]]
    last = [total for _, _, total, _ in series[2 * third:]]
    vertices = sorted({v for *_, sizes in series for v in sizes})
    every = max(1, len(series) // 30)  # about 30 rows in the table
    rows = ["| checkpoint | minute | total KB | " + " | ".join(vertices) + " |",
            "|---:|---:|---:|" + "---:|" * len(vertices)]
    for i, (cid, minute, total, sizes) in enumerate(series):
        if i % every == 0 or i == len(series) - 1:
            rows.append(f"| {cid} | {minute:.1f} | {total / 1000:.0f} | "
                        + " | ".join(f"{sizes.get(v, 0) / 1000:.0f}" for v in vertices) + " |")
    growth = (statistics.mean(last) / statistics.mean(middle)) if middle and last else float("nan")
    return f"""Measured {today()} on {machine().describe()}.
Command: `python -m benchmarks.checkpoint_series --minutes {minutes:g} --rate {rate:g}
--checkpoint-s {checkpoint_s}` (the job on the local Flink 1.19 session cluster, generator at
{rate:g} events/s, checkpoints every {checkpoint_s} s; a 30-minute run, so not part of `make bench`;
`tests/integration/test_pipeline_flink.py` checks the same property in two minutes).
{len(series)} checkpoints; {status}.

Mean size of the last third of the checkpoints / the middle third: **{growth:.2f}x** (1.00 = flat;
the first third is the warm-up: dedup ids fill one 10-minute horizon, windows one allowed lateness).
Sizes in KB per operator (Flink vertex, named by its first step):

{chr(10).join(rows)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--checkpoint-s", type=int, default=10)
    parser.add_argument("--doc", type=Path, default=None, help="write the section into this results page")
    args = parser.parse_args(argv)
    series, status = measure(args.minutes, args.rate, args.checkpoint_s)
    body = report(series, status, args.minutes, args.rate, args.checkpoint_s)
    print(body)
    if args.doc:
        replace_section(args.doc, HEADING, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
