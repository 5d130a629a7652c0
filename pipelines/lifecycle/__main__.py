"""``python -m pipelines.lifecycle COMMAND``: deploy, savepoint, upgrade and roll back the streaming
job with one command each, locally or on Kubernetes (docs/operations.md has the runbook).

Commands: ``build`` (a release's job jar from this checkout), ``deploy``, ``status``, ``savepoint``,
``savepoints``, ``upgrade``, ``rollback``, ``stop``, ``watch`` (an upgrade's SLO watch), ``audit``,
``check-state`` (would this checkout orphan the state of the last release? — CI runs it). Every
command has ``--help``. Exit status 0 on success, 1 when an action was refused or failed (the
message says why), 3 when ``upgrade --watch`` / ``watch`` rolled back a breaching release.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipelines.lifecycle import compat
from pipelines.lifecycle.backend import Backend, LifecycleError
from pipelines.lifecycle.catalogue import LifecycleStore
from pipelines.lifecycle.model import Release
from pipelines.lifecycle.service import Lifecycle
from streaming_analytics.settings import PROJECT_ROOT, Settings

#: The stateful steps of the last shipped release, committed: `check-state` holds every change to
#: them (and CI runs it); `check-state --write` records a deliberate change.
STATE_LOCK = PROJECT_ROOT / "pipelines" / "lifecycle" / "released-state.json"
#: Exit status of a watch that rolled a release back.
ROLLED_BACK = 3


def make_backend(settings: Settings, backend: str, job_name: str | None) -> Backend:
    from pipelines.lifecycle.local import committed_offsets

    def offsets() -> dict[str, int]:
        # Where the CLI reaches Kafka (SA_KAFKA_BOOTSTRAP); savepoint records then carry the
        # consumer group's committed offsets on either backend.
        return committed_offsets(settings.kafka_bootstrap, settings.consumer_group, settings.topic_events)

    if backend == "local":
        from pipelines.flink_rest import FlinkRest
        from pipelines.lifecycle.local import LocalFlinkBackend

        return LocalFlinkBackend(FlinkRest(settings.flink_rest_url), settings.lifecycle_dir / "savepoints",
                                 job_name=job_name, offsets=offsets)
    if backend == "kubernetes":
        from pipelines.lifecycle.kubernetes import KubernetesBackend

        kubernetes: Backend = KubernetesBackend(namespace=settings.k8s_namespace,
                                                name=settings.k8s_deployment, offsets=offsets)
        return kubernetes
    raise LifecycleError(f"unknown backend {backend!r}: local or kubernetes")


def build_release(settings: Settings, store: LifecycleStore, name: str, pipeline_args: list[str],
                  model_version: str | None = None) -> Release:
    """Write the job jar of release ``name`` from this checkout (with ``pipeline_args``) into the
    lifecycle directory and record the release with its stateful steps."""
    jar = store.root / "releases" / f"{name}.jar"
    jar.parent.mkdir(parents=True, exist_ok=True)
    write_job_jar(settings, jar, pipeline_args)
    return register_release(store, name, jar, model_version=model_version, copy=False)


def write_job_jar(settings: Settings, jar: Path, pipeline_args: list[str]) -> None:
    """This checkout's job on Flink as a portable job jar at ``jar``."""
    from pipelines.analytics_pipeline import run
    from pipelines.runners import runner_args

    run([*runner_args("flink", settings), *pipeline_args, f"--job_jar={jar}"], settings=settings)


def register_release(store: LifecycleStore, name: str, jar: Path, *, image: str | None = None,
                     args: tuple[str, ...] = (), model_version: str | None = None,
                     copy: bool = True) -> Release:
    """Record release ``name`` of an existing job jar (copied into the lifecycle directory, so a
    rollback finds it whatever happens to the original)."""
    if store.release(name) is not None:
        raise LifecycleError(f"release {name} is recorded already: releases are immutable, name a new one")
    target = store.root / "releases" / f"{name}.jar"
    if copy:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(jar, target)
    release = Release(name=name, jar=str(target), image=image, args=args, model_version=model_version,
                      stateful_steps=compat.stateful_steps(compat.job_jar_pipeline(target)))
    store.add_release(release)
    return release


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="python -m pipelines.lifecycle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=settings.lifecycle_backend, choices=("local", "kubernetes"),
                        help="where to act (SA_LIFECYCLE_BACKEND; default %(default)s)")
    parser.add_argument("--job-name", help="local: the job's name on the cluster, when several run")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = commands.add_parser("build", help="write a release's job jar from this checkout and record it")
    c.add_argument("--release", required=True, help="the release's name (a version or git revision)")
    c.add_argument("--model-version", help="the model version the release scores with")
    c.add_argument("pipeline_args", nargs=argparse.REMAINDER, help="-- then the job's options")

    c = commands.add_parser("deploy", help="start a release (optionally from a savepoint)")
    c.add_argument("--release", required=True)
    c.add_argument("--jar", type=Path, help="register the release from this job jar first")
    c.add_argument("--image", help="kubernetes: the release's image")
    c.add_argument("--model-version")
    c.add_argument("--savepoint", help="restore from this savepoint (see `savepoints`)")
    c.add_argument("--allow-non-restored-state", action="store_true",
                   help="drop savepoint state no operator of the release claims (never the default)")

    commands.add_parser("status", help="the job's state, release and checkpoints")
    c = commands.add_parser("savepoint", help="take a savepoint of the running job and record it")
    commands.add_parser("savepoints", help="the savepoint catalogue, newest first")
    c = commands.add_parser("upgrade", help="savepoint, stop, start the new release from the savepoint")
    c.add_argument("--release", required=True)
    c.add_argument("--jar", type=Path, help="register the release from this job jar first")
    c.add_argument("--image")
    c.add_argument("--model-version")
    c.add_argument("--allow-non-restored-state", action="store_true")
    c.add_argument("--watch", action="store_true", help="then watch its SLOs and roll back on a breach")
    _add_watch_args(c)
    c = commands.add_parser("rollback", help="start the release that took a savepoint, from it")
    c.add_argument("--savepoint", help="default: the last upgrade's rollback point")
    commands.add_parser("stop", help="end the job with a savepoint (resume with deploy --savepoint)")
    commands.add_parser("audit", help="the audit trail of every action")
    c = commands.add_parser("check-state", help="fail when this checkout would orphan the state of the "
                                                "last release (released-state.json)")
    c.add_argument("--jar", type=Path, help="check this job jar instead of building one")
    c.add_argument("--write", metavar="RELEASE", help="record this checkout's stateful steps as RELEASE's")
    c = commands.add_parser("watch", help="watch the running release's SLOs; roll back on a breach")
    _add_watch_args(c)
    if argv is None:
        argv = sys.argv[1:]
    args = parser.parse_args(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        force=True)
    store = LifecycleStore(settings.lifecycle_dir, retain=settings.savepoint_retention)
    try:
        return _dispatch(args, settings, store)
    except LifecycleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _add_watch_args(c: argparse.ArgumentParser) -> None:
    from pipelines.lifecycle.watch import Thresholds

    c.add_argument("--postgres-schema", default="public", help="the job's PostgreSQL schema (dead letters)")
    Thresholds.add_arguments(c)


def _dispatch(args: argparse.Namespace, settings: Settings, store: LifecycleStore) -> int:
    offline = _offline(args, settings, store)
    if offline is not None:
        return offline
    lifecycle = Lifecycle(make_backend(settings, args.backend, args.job_name), store)
    if args.command == "status":
        _print({**lifecycle.status().__dict__, "deployment": store.deployment().__dict__})
    elif args.command == "deploy":
        release = _release(store, args)
        _print(lifecycle.deploy(release, savepoint=args.savepoint,
                                allow_non_restored_state=args.allow_non_restored_state).__dict__)
    elif args.command == "savepoint":
        _print(lifecycle.savepoint("manual").to_json())
    elif args.command == "stop":
        _print(lifecycle.stop().to_json())
    elif args.command == "upgrade":
        record = lifecycle.upgrade(_release(store, args),
                                   allow_non_restored_state=args.allow_non_restored_state)
        _print({"rollback_point": record.to_json(), "status": lifecycle.status().__dict__})
        if args.watch:
            return _watch(lifecycle, args, settings)
    elif args.command == "rollback":
        _print(lifecycle.rollback(args.savepoint, reason="manual").__dict__)
    elif args.command == "watch":
        return _watch(lifecycle, args, settings)
    return 0


def _offline(args: argparse.Namespace, settings: Settings, store: LifecycleStore) -> int | None:
    """The commands that need no backend (``None`` for the others)."""
    if args.command == "build":
        release = build_release(settings, store, args.release, [a for a in args.pipeline_args if a != "--"],
                                args.model_version)
        _print(release.to_json())
        return 0
    if args.command == "check-state":
        return _check_state(args, settings)
    if args.command == "savepoints":
        _print([r.to_json() for r in store.savepoints()])
        return 0
    if args.command == "audit":
        _print(store.audit_trail())
        return 0
    return None


def _release(store: LifecycleStore, args: argparse.Namespace) -> Release:
    if args.jar is not None:
        return register_release(store, args.release, args.jar, image=args.image,
                                model_version=args.model_version)
    release = store.release(args.release)
    if release is None:
        raise LifecycleError(f"release {args.release} is not recorded: `build` it or pass --jar")
    return release


def _watch(lifecycle: Lifecycle, args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.lifecycle.watch import SloWatch, Thresholds, default_probes

    probes = default_probes(lifecycle, settings, args.postgres_schema)
    watch = SloWatch(lifecycle, probes, Thresholds.from_args(args))
    verdict = watch.run()
    _print(verdict.to_json())
    return ROLLED_BACK if verdict.rolled_back else 0


def _check_state(args: argparse.Namespace, settings: Settings) -> int:
    if args.jar is not None:
        steps = compat.stateful_steps(compat.job_jar_pipeline(args.jar))
    else:
        with tempfile.TemporaryDirectory(prefix="sa-check-state-") as tmp:
            jar = Path(tmp) / "job.jar"
            # The production jar's build (make job-jar): endpoints and model are the workers', so
            # neither a model nor the services are needed here; the graph and its UIDs are the same.
            write_job_jar(settings, jar, ["--endpoints=workers"])
            steps = compat.stateful_steps(compat.job_jar_pipeline(jar))
    if args.write:
        compat.dump(steps, STATE_LOCK, args.write)
        print(f"recorded {len(steps)} stateful steps as release {args.write}'s in {STATE_LOCK}")
        return 0
    problems = compat.orphaned(compat.load(STATE_LOCK), steps)
    if problems:
        print(f"this checkout would orphan state of the last release ({STATE_LOCK}):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        print("keep the step labels; if dropping that state is intended, record it with "
              "`check-state --write RELEASE` and deploy with --allow-non-restored-state", file=sys.stderr)
        return 1
    print(f"ok: the {len(steps)} stateful steps keep every state of the last release")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
