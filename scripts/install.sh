#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine; `make install` runs it.
#
# Idempotent and quiet when nothing changed: every step records a stamp (a hash of its inputs)
# under .local/stamps and is skipped while the stamp matches. Long steps print progress.
#
#   1. Debian packages, only those whose command is missing (redis-server, PostgreSQL, kcat, npm,
#      chromium, ...)
#   2. the Python venv (.venv) with the pinned dependencies of requirements/constraints.txt
#   3. a Flink 1.19 distribution unpacked from the apache-flink wheels into .local/flink (NOT the
#      venv: PyFlink pins an old apache-beam)
#   4. Beam's Prism runner, built from the Go module proxy (a second local streaming runner)
#   5. Java artifacts from Maven Central: the Kafka broker's classpath, and Beam's Flink 1.19
#      runner with our Kafka read and expansion service, shaded into .local/jars by
#      tools/java/flink-runner (scripts/install-flink-runner.sh)
#   6. the dashboard's front-end packages (npm ci), copied into the push server's static files
#   7. the Kubernetes packaging tools the chart tests use: helm (built from the Go module proxy) and
#      promtool (taken out of Debian's prometheus package, which is not installed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

INSTALL_NAME=install
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# Python 3.11 (the version everything is pinned for): $PYTHON, else python3.11, else python3 if 3.11.
if [[ -z "${PYTHON:-}" ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
       && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON="$candidate"
      break
    fi
  done
fi
VENV="$ROOT/.venv"
# Flink's minor version must match Beam's Flink runner: the newest runner served here is for 1.19
# (../shared/STACK-NOTES.md, "Beam on Flink"); tools/java/flink-runner pins the runner itself.
FLINK_VERSION="1.19.3"
BEAM_VERSION="2.77.0"
KAFKA_VERSION="4.1.1"

# --- 1. Debian packages --------------------------------------------------------------------------
pg_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir; return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
[[ -n "$(pg_bindir)" && -x "$(pg_bindir)/initdb" ]] || missing+=(postgresql)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
command -v npm >/dev/null 2>&1 || missing+=(npm)          # the dashboard's front-end packages
command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the dashboard's browser test
[[ -z "${PYTHON:-}" ]] || "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
    command -v sudo >/dev/null 2>&1 || fail "need root (or sudo) to apt-get install ${missing[*]}"
  else
    SUDO=""
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. Python venv -------------------------------------------------------------------------------
# Bump VENV_RECIPE when the pip commands below change; editing the rest of this script must not
# reinstall the venv.
VENV_RECIPE=2
venv_hash="$VENV_RECIPE-$(hash_of setup.py requirements/constraints.txt)"
if ! stamp_ok venv "$venv_hash" || [[ ! -x "$VENV/bin/python" ]]; then
  [[ -n "${PYTHON:-}" ]] || fail "Python 3.11 not found (set PYTHON=/path/to/python3.11)"
  say "installing the pinned Python dependencies into .venv (the first run downloads ~2 GB)"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade "pip==25.3" "setuptools>=68,<81" wheel
  # compat mode puts the checkout itself on sys.path, so packages added later import at once.
  "$VENV/bin/pip" install -q --progress-bar off -c requirements/constraints.txt \
    --config-settings editable_mode=compat -e ".[test]"
  # Beam's tensorflow_inference imports tensorflow_hub; its declared deps would pull a second
  # TensorFlow, so it and tf-keras go in without them (see ../shared/STACK-NOTES.md).
  "$VENV/bin/pip" install -q --no-deps tensorflow-hub==0.16.1 tf-keras==2.21.0
  stamp_set venv "$venv_hash"
fi

# --- 3. Flink distribution ------------------------------------------------------------------------
FLINK_DIR="$TOOLS/flink-$FLINK_VERSION"
if ! stamp_ok flink "$FLINK_VERSION" || [[ ! -x "$FLINK_DIR/pyflink/bin/jobmanager.sh" ]]; then
  say "unpacking Flink $FLINK_VERSION from the apache-flink wheels into ${FLINK_DIR#"$ROOT"/} (~340 MB)"
  rm -rf "$FLINK_DIR"
  "$VENV/bin/pip" install -q --no-deps --target "$FLINK_DIR" \
    "apache-flink==$FLINK_VERSION" "apache-flink-libraries==$FLINK_VERSION"
  chmod +x "$FLINK_DIR"/pyflink/bin/*
  ln -sfn "flink-$FLINK_VERSION/pyflink" "$TOOLS/flink"
  stamp_set flink "$FLINK_VERSION"
fi
# Distributions of earlier checkouts (Flink 2.2 before the runner existed) only take disk space.
for old in "$TOOLS"/flink-*; do
  [[ "$old" == "$FLINK_DIR" || ! -d "$old" ]] || rm -rf "$old"
done

# --- 4. Beam's Prism runner ------------------------------------------------------------------------
# A second local streaming runner (SA_PIPELINE_RUNNER=prism). Built from the Go module proxy; the Go
# build cache makes rebuilds quick.
# go_tool NAME VERSION PACKAGE DESCRIPTION: `go install PACKAGE@VERSION` into $TOOLS/bin/NAME,
# once per version (stamped).
go_tool() {
  local name="$1" version="$2" package="$3" what="$4"
  if stamp_ok "$name" "$version" && [[ -x "$TOOLS/bin/$name" ]]; then return 0; fi
  local go
  go="$(find_go)"
  [[ -n "$go" ]] || fail "go not found: $what is built with the Go toolchain (install golang-go)"
  say "building $what $version from the Go module proxy (a few minutes the first time)"
  GOBIN="$TOOLS/bin" GOFLAGS=-mod=mod "$go" install "$package@$version"
  stamp_set "$name" "$version"
}

go_tool prism "v$BEAM_VERSION" github.com/apache/beam/sdks/v2/go/cmd/prism "Beam's Prism runner"

# --- 5. Java artifacts ----------------------------------------------------------------------------
KAFKA_LIBS="$TOOLS/kafka-$KAFKA_VERSION/libs"
kafka_hash=$(hash_of tools/java/kafka/pom.xml)
if ! stamp_ok kafka "$kafka_hash" || [[ ! -d "$KAFKA_LIBS" ]]; then
  say "resolving the Kafka $KAFKA_VERSION broker classpath from Maven Central"
  rm -rf "$KAFKA_LIBS"
  if ! mvn -q -B -f tools/java/kafka/pom.xml dependency:copy-dependencies \
       -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" > "$TOOLS/mvn-kafka.log" 2>&1; then
    cat "$TOOLS/mvn-kafka.log" >&2
    fail "could not resolve the Kafka broker jars with mvn (output above)"
  fi
  ln -sfn "kafka-$KAFKA_VERSION" "$TOOLS/kafka"
  stamp_set kafka "$kafka_hash"
fi

# Beam's Flink runner, our Kafka read and the expansion service, and the lib jar for Flink's lib/.
# shellcheck source=scripts/install-flink-runner.sh
source "$ROOT/scripts/install-flink-runner.sh"

# --- 6. Push server dashboard: front-end packages from the npm registry ---------------------------
# The dashboard (push_server/static/dashboard) loads its chart library from the push server itself,
# never from a CDN: `npm ci` installs the locked versions of push_server/frontend and their dist
# files are copied into the git-ignored vendor directory that Sanic serves.
FRONTEND="$ROOT/push_server/frontend"
VENDOR="$ROOT/push_server/static/dashboard/vendor"
vendor_files=(uPlot.iife.min.js uPlot.min.css)
frontend_hash=$(hash_of "$FRONTEND/package.json" "$FRONTEND/package-lock.json")
vendor_ok=true
for f in "${vendor_files[@]}"; do [[ -s "$VENDOR/$f" ]] || vendor_ok=false; done
if ! stamp_ok frontend "$frontend_hash" || ! $vendor_ok; then
  say "installing the dashboard's front-end packages (npm ci)"
  npm ci --prefix "$FRONTEND" --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null \
    || fail "npm ci failed in push_server/frontend (see the output above)"
  mkdir -p "$VENDOR"
  for f in "${vendor_files[@]}"; do cp "$FRONTEND/node_modules/uplot/dist/$f" "$VENDOR/$f"; done
  stamp_set frontend "$frontend_hash"
fi

# --- 7. Kubernetes packaging tools: helm and promtool ---------------------------------------------
# tests/unit/test_chart.py renders charts/streaming-analytics with helm (template, lint) and checks
# its alert rules with promtool. helm is built from the Go module proxy, like Prism.
go_tool helm v3.22.0 helm.sh/helm/v3/cmd/helm helm

# promtool alone: the binary is extracted from Debian's prometheus package, so no Prometheus server
# is installed, enabled or started on a developer's machine.
if ! stamp_ok promtool debian-prometheus || [[ ! -x "$TOOLS/bin/promtool" ]]; then
  say "extracting promtool from Debian's prometheus package into ${TOOLS#"$ROOT"/}/bin"
  deb_dir="$(mktemp -d)"
  if ! (cd "$deb_dir" && apt-get download -qq prometheus >/dev/null 2>&1); then
    # A fresh machine may have no package lists yet.
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq; else sudo apt-get update -qq; fi
    (cd "$deb_dir" && apt-get download -qq prometheus >/dev/null) \
      || fail "apt-get download prometheus failed (needed for promtool)"
  fi
  dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/root"
  install -m 0755 "$deb_dir/root/usr/bin/promtool" "$TOOLS/bin/promtool"
  rm -rf "$deb_dir"
  stamp_set promtool debian-prometheus
fi
