#!/usr/bin/env bash
# Tools only `make bench` needs (kept out of scripts/install.sh so `make install` stays lean):
#
#   1. Centrifugo, the reference push server the fan-out benchmark compares against, built from
#      the Go module proxy into .local/bin/centrifugo
#   2. the benchmark's WebSocket load generator (benchmarks/go/loadgen), built into
#      .local/bin/push-loadgen
#
# Idempotent like install.sh: each step records a stamp (version or hash of its inputs) under
# .local/stamps and is skipped while the stamp matches and the binary exists.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

INSTALL_NAME=install-bench
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
CENTRIFUGO_VERSION="v6.9.1"

GO="$(find_go)"
[[ -n "$GO" ]] || fail "go not found: Centrifugo and the load generator are built with the Go toolchain"

# --- 1. Centrifugo ---------------------------------------------------------------------------------
if ! stamp_ok centrifugo "$CENTRIFUGO_VERSION" || [[ ! -x "$TOOLS/bin/centrifugo" ]]; then
  say "building Centrifugo $CENTRIFUGO_VERSION from the Go module proxy (a few minutes the first time)"
  GOBIN="$TOOLS/bin" GOFLAGS=-mod=mod "$GO" install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"
  stamp_set centrifugo "$CENTRIFUGO_VERSION"
fi

# --- 2. the load generator -------------------------------------------------------------------------
loadgen_hash=$(hash_of benchmarks/go/go.mod benchmarks/go/go.sum benchmarks/go/loadgen/*.go)
if ! stamp_ok push-loadgen "$loadgen_hash" || [[ ! -x "$TOOLS/bin/push-loadgen" ]]; then
  say "building the push load generator (benchmarks/go/loadgen)"
  (cd benchmarks/go && "$GO" build -o "$TOOLS/bin/push-loadgen" ./loadgen)
  stamp_set push-loadgen "$loadgen_hash"
fi
