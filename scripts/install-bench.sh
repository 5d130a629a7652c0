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

TOOLS="${SA_TOOLS_DIR:-$ROOT/.local}"
STAMPS="$TOOLS/stamps"
CENTRIFUGO_VERSION="v6.9.1"
mkdir -p "$STAMPS" "$TOOLS/bin"

say() { printf '==> %s\n' "$*"; }
fail() { printf 'install-bench: %s\n' "$*" >&2; exit 1; }
stamp_ok() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { printf '%s' "$2" > "$STAMPS/$1"; }

GO="$(command -v go || true)"
[[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
[[ -n "$GO" ]] || fail "go not found: Centrifugo and the load generator are built with the Go toolchain"

# --- 1. Centrifugo ---------------------------------------------------------------------------------
if ! stamp_ok centrifugo "$CENTRIFUGO_VERSION" || [[ ! -x "$TOOLS/bin/centrifugo" ]]; then
  say "building Centrifugo $CENTRIFUGO_VERSION from the Go module proxy (a few minutes the first time)"
  GOBIN="$TOOLS/bin" GOFLAGS=-mod=mod "$GO" install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"
  stamp_set centrifugo "$CENTRIFUGO_VERSION"
fi

# --- 2. the load generator -------------------------------------------------------------------------
loadgen_hash=$(cat benchmarks/go/go.mod benchmarks/go/go.sum benchmarks/go/loadgen/*.go | sha256sum | cut -c1-16)
if ! stamp_ok push-loadgen "$loadgen_hash" || [[ ! -x "$TOOLS/bin/push-loadgen" ]]; then
  say "building the push load generator (benchmarks/go/loadgen)"
  (cd benchmarks/go && "$GO" build -o "$TOOLS/bin/push-loadgen" ./loadgen)
  stamp_set push-loadgen "$loadgen_hash"
fi
