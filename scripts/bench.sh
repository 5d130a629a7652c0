#!/usr/bin/env bash
# `make bench`: run the benchmarks and write their sections of docs/benchmarks.md.
#
# A list of independent steps: each is a function named bench_<name>, registered in STEPS, that
# writes its own "## ..." section of the results page (benchmarks/common.py:replace_section leaves
# the other sections alone). One failing step does not stop the others; the exit code says whether
# any failed. Run a subset with `scripts/bench.sh push_fanout ...`.
#
# Every step must stay bounded (the whole run: about 10 minutes on the 2-core dev machine), use
# 127.0.0.1 only and its own Redis keys, and clean up after itself. Benchmarks report; they never
# assert on speed.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
DOC=docs/benchmarks.md
STEPS=(pipeline flink push_fanout)

# Pipeline: the whole job's throughput (DirectRunner and Prism, bounded, with every sink) against a
# plain-Python baseline in the same run, and end-to-end latency of early panes on Prism.
bench_pipeline() {
  "$PY" -m benchmarks.pipeline_report --events 30000 --latency-seconds 45 --doc "$DOC"
}

# The job on the local Flink cluster: a drained backlog's events/s beside the plain-Python baseline
# (counting only events that reach the aggregates), and early-pane latency; plus a short checkpoint
# series (the 30-minute one is run by hand: benchmarks/checkpoint_series.py --minutes 30).
bench_flink() {
  "$PY" -m benchmarks.flink_bench --events 30000 --latency-seconds 45 --doc "$DOC"
}

# Push fan-out: our push server vs Centrifugo (same Redis stream ingestion), 1k and 5k subscribers
# at a fixed rate and at max rate, plus RSS per idle connection with 10k connections open.
bench_push_fanout() {
  bash scripts/install-bench.sh || return 1
  "$PY" -m benchmarks.push_fanout --clients 1000 5000 --rate 2 10 --seconds 10 \
    --burst-deliveries 500000 --idle-clients 10000 --doc "$DOC"
}

# The benchmarks use the local stack (var/stack). Start it when it is not running, and then stop
# it again at the end; a stack that `make run` already runs is used as it is and left running.
if "$PY" -m devstack.stack status | grep -qE '^kafka +running'; then
  started_stack=false
else
  started_stack=true
  "$PY" -m devstack.stack up || exit 1
fi
stop_stack() {
  if $started_stack; then "$PY" -m devstack.stack down >/dev/null; fi
}
trap stop_stack EXIT

selected=("$@")
((${#selected[@]})) || selected=("${STEPS[@]}")
failed=()
for step in "${selected[@]}"; do
  if ! declare -F "bench_$step" >/dev/null; then
    echo "bench: unknown step '$step' (known: ${STEPS[*]})" >&2
    failed+=("$step")
    continue
  fi
  echo "==> bench: $step"
  start=$SECONDS
  if "bench_$step"; then
    echo "==> bench: $step done in $((SECONDS - start))s"
  else
    echo "==> bench: $step FAILED after $((SECONDS - start))s" >&2
    failed+=("$step")
  fi
done
if ((${#failed[@]})); then
  echo "bench: failed steps: ${failed[*]}" >&2
  exit 1
fi
echo "bench: results in $DOC"
