#!/usr/bin/env bash
# `make test`: start a throwaway stack in var/test-stack (its own data, ports picked if the
# defaults are taken, so it can run beside `make run`), run the whole suite, stop the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
export SA_STACK_DIR="$PWD/var/test-stack"
# The test stack must never pick up endpoints from the environment of a developer's shell.
unset SA_KAFKA_BOOTSTRAP SA_POSTGRES_DSN SA_REDIS_URL SA_FLINK_REST_URL
PY=.venv/bin/python
cleanup() {
  if ! "$PY" -m devstack.stack down >/dev/null; then
    echo "warning: stopping the test stack failed; see var/test-stack/logs" >&2
  fi
}
trap cleanup EXIT
"$PY" -m devstack.stack up
"$PY" -m pytest "$@"
