# Beam's Flink 1.19 runner (Beam 2.62.0) as jars of our own: sourced by scripts/install.sh, which
# provides ROOT, TOOLS, say, fail, stamp_ok, stamp_set and hash_of (scripts/lib.sh).
#
# Maven Central serves no beam-runners-flink-*-job-server jar here, so tools/java/flink-runner
# shades one (../shared/STACK-NOTES.md, "Beam on Flink"). Two jars land in $TOOLS/jars:
#   sa-beam-flink-1.19-2.62.0.jar      the job server (`--flink_job_server_jar`), the Java expansion
#                                      service of our Kafka read (LoopbackExpansionServer) and the
#                                      base of portable job jars;
#   sa-beam-flink-lib-1.19-2.62.0.jar  the same minus Flink and minus what Flink's lib/ already has,
#                                      for the cluster's lib/ (with classloader.resolve-order:
#                                      parent-first: no metaspace leak per submitted job);
#   sa-beam-flink-job-base-1.19-2.62.0.jar  the base of every job jar: our JobJarMain only (the
#                                      launcher adds the pipeline; the runner comes from lib/).
# Needs FLINK_DIR: the Flink 1.19.3 distribution root (the one containing pyflink/lib). Rebuilt only
# when the POM, the Java sources, make_lib_jar.py or Flink's lib/ listing change.

FLINK_RUNNER_SRC="$ROOT/tools/java/flink-runner"
FLINK_RUNNER_JAR="$TOOLS/jars/sa-beam-flink-1.19-2.62.0.jar"
FLINK_RUNNER_LIB_JAR="$TOOLS/jars/sa-beam-flink-lib-1.19-2.62.0.jar"
FLINK_RUNNER_JOB_BASE_JAR="$TOOLS/jars/sa-beam-flink-job-base-1.19-2.62.0.jar"
# Bump when the commands below change in a way that must rebuild the jars.
FLINK_RUNNER_RECIPE=2

install_flink_runner() {
  local flink_lib="${FLINK_DIR:?FLINK_DIR must be the Flink 1.19.3 distribution root}/pyflink/lib"
  [[ -d "$flink_lib" ]] || fail "no Flink lib directory at $flink_lib (is FLINK_DIR right?)"
  local sources hash
  mapfile -t sources < <(cd "$FLINK_RUNNER_SRC" && find pom.xml make_lib_jar.py src -type f | LC_ALL=C sort)
  # File names too (a moved class changes the jar), then contents, then Flink's lib/ by name and size.
  hash="$FLINK_RUNNER_RECIPE-$(hash_of <(printf '%s\n' "${sources[@]}") \
    "${sources[@]/#/$FLINK_RUNNER_SRC/}" \
    <(find "$flink_lib" -maxdepth 1 -name '*.jar' -printf '%f %s\n' | LC_ALL=C sort))"
  if stamp_ok flink-runner "$hash" && [[ -f "$FLINK_RUNNER_JAR" && -f "$FLINK_RUNNER_LIB_JAR" \
        && -f "$FLINK_RUNNER_JOB_BASE_JAR" ]]; then
    return 0
  fi

  say "building Beam's Flink runner jars with Maven (~1 min; the first run downloads ~200 MB)"
  local log="$TOOLS/mvn-flink-runner.log" python=python3
  [[ -x "$ROOT/.venv/bin/python" ]] && python="$ROOT/.venv/bin/python"
  mkdir -p "$TOOLS/jars"
  if ! mvn -B -ntp -f "$FLINK_RUNNER_SRC/pom.xml" package > "$log" 2>&1; then
    cat "$log" >&2
    fail "could not build tools/java/flink-runner with mvn (output above)"
  fi
  # Copy, then rename: a half-written jar must never carry the final name.
  cp "$FLINK_RUNNER_SRC/target/sa-beam-flink-1.19-2.62.0.jar" "$FLINK_RUNNER_JAR.tmp"
  mv "$FLINK_RUNNER_JAR.tmp" "$FLINK_RUNNER_JAR"
  if ! "$python" "$FLINK_RUNNER_SRC/make_lib_jar.py" "$FLINK_RUNNER_JAR" "$flink_lib" \
       "$FLINK_RUNNER_LIB_JAR" --job-base "$FLINK_RUNNER_JOB_BASE_JAR" >> "$log" 2>&1; then
    cat "$log" >&2
    fail "make_lib_jar.py failed (output above)"
  fi
  stamp_set flink-runner "$hash"
}

install_flink_runner
