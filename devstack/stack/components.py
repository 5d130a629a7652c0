"""The services of the local stack, each a small class that knows how to configure, start and
health-check itself on 127.0.0.1.

Adding a process to the stack (the Beam worker pool, the push server, a model watcher, ...) means
adding one :class:`Component` subclass here and listing it in :data:`COMPONENTS`; the manager and
the CLI pick it up from there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final
from urllib.parse import urlsplit

from devstack.stack.process import ProcessSpec, free_port, port_is_free, wait_until
from streaming_analytics import settings as settings_module

LOOPBACK = "127.0.0.1"


class ComponentError(RuntimeError):
    """A component cannot be configured or started; the message says what to do."""


@dataclass
class StackContext:
    """Shared facts every component needs: where things live and which ports were taken."""

    stack_dir: Path
    tools_dir: Path
    environ: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)

    def data_dir(self, name: str) -> Path:
        path = self.stack_dir / "data" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_path(self, name: str) -> Path:
        return self.stack_dir / "logs" / f"{name}.log"

    def port(self, key: str, preferred: int) -> int:
        """The port recorded for ``key`` in this stack, else ``preferred`` if free, else any free one.

        A port recorded by an earlier ``up`` is reused while free so that restarts keep URLs stable.
        """
        recorded = self.ports.get(key)
        for candidate in (recorded, preferred):
            if candidate and port_is_free(candidate):
                self.ports[key] = candidate
                return candidate
        self.ports[key] = free_port()
        return self.ports[key]

    def setting(self, name: str) -> str:
        """An effective setting: the environment (as given to the stack) or the default."""
        return self.environ.get(name) or settings_module.VARIABLES[name].default


class Component(ABC):
    """One service of the local stack."""

    name: ClassVar[str]
    #: "infra" components start with ``stack up``; "app" ones only with ``stack run``.
    profile: ClassVar[str] = "infra"
    depends_on: ClassVar[tuple[str, ...]] = ()
    start_timeout_s: ClassVar[float] = 90.0

    def external(self, ctx: StackContext) -> bool:
        """True when the user points us at an existing server instead (nothing to start)."""
        return False

    @abstractmethod
    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        """Write config, choose ports, publish endpoints; return the processes to start."""

    @abstractmethod
    def healthy(self, ctx: StackContext) -> bool:
        """A real round trip to the service: True once it serves requests."""

    def after_start(self, ctx: StackContext) -> None:  # noqa: B027 - optional hook, a no-op by default
        """One-off setup once healthy (topics, databases)."""

    def urls(self, ctx: StackContext) -> dict[str, str]:
        """Human-facing URLs to print after ``make run``."""
        return {}


# --------------------------------------------------------------------------------------------------
class Kafka(Component):
    """Single-node Kafka in KRaft mode (broker and controller in one JVM), from the Maven jars."""

    name = "kafka"

    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        libs = ctx.tools_dir / "kafka" / "libs"
        if not libs.is_dir():
            raise ComponentError(f"Kafka jars missing in {libs}: run `make install`")
        default_port = int(ctx.setting("SA_KAFKA_BOOTSTRAP").rsplit(":", 1)[1])
        port = ctx.port("kafka", default_port)
        controller_port = ctx.port("kafka-controller", default_port + 1)
        data = ctx.data_dir("kafka")
        conf = data / "server.properties"
        conf.write_text(_kafka_properties(port, controller_port, data / "log"))
        log4j = data / "log4j2.properties"
        log4j.write_text(_KAFKA_LOG4J)
        java = [_java(), "-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*"]
        if not (data / "log" / "meta.properties").exists():
            cluster_id = kafka_cluster_id()
            _run_once([*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(conf)],
                      ctx.log_path("kafka-format"), "formatting Kafka storage")
        ctx.endpoints["SA_KAFKA_BOOTSTRAP"] = f"{LOOPBACK}:{port}"
        return [ProcessSpec("kafka", [*java, "kafka.Kafka", str(conf)], stop_timeout_s=30)]

    def healthy(self, ctx: StackContext) -> bool:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=ctx.endpoints["SA_KAFKA_BOOTSTRAP"],
                                 request_timeout_ms=3000)
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()

    def after_start(self, ctx: StackContext) -> None:
        from devstack.kafka_topics import ensure_topics

        ensure_topics(
            ctx.endpoints["SA_KAFKA_BOOTSTRAP"],
            {
                ctx.setting("SA_KAFKA_TOPIC_EVENTS"): int(ctx.setting("SA_KAFKA_EVENTS_PARTITIONS")),
                ctx.setting("SA_KAFKA_TOPIC_DLQ"): 1,
            },
        )

    def urls(self, ctx: StackContext) -> dict[str, str]:
        return {"Kafka bootstrap": ctx.endpoints["SA_KAFKA_BOOTSTRAP"]}


def kafka_cluster_id() -> str:
    """A random Kafka cluster id (base64url of 16 bytes), never starting with "-": the storage
    tool would read such an id as an option (Kafka's own Uuid.randomUuid() re-draws for the same
    reason)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _kafka_properties(port: int, controller_port: int, log_dir: Path) -> str:
    return f"""# Written by the stack manager on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{LOOPBACK}:{controller_port}
listeners=PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}
advertised.listeners=PLAINTEXT://{LOOPBACK}:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
num.network.threads=2
num.io.threads=4
"""


_KAFKA_LOG4J = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


# --------------------------------------------------------------------------------------------------
class Postgres(Component):
    """A throwaway PostgreSQL cluster (initdb into the stack dir), or an existing server by DSN.

    PostgreSQL refuses to run as root, so under root the cluster is owned by and run as the
    ``postgres`` system user; its data directory then lives where that user can reach it.
    """

    name = "postgres"
    _USER = "analytics"
    _PASSWORD = "analytics"  # noqa: S105 - throwaway local cluster on loopback (docs/operations.md)
    _DATABASE = "analytics"

    def external(self, ctx: StackContext) -> bool:
        return bool(ctx.environ.get("SA_POSTGRES_DSN"))

    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        if self.external(ctx):
            ctx.endpoints["SA_POSTGRES_DSN"] = ctx.environ["SA_POSTGRES_DSN"]
            return []
        bindir = _postgres_bindir()
        default_port = urlsplit(ctx.setting("SA_POSTGRES_DSN")).port or 5432
        port = ctx.port("postgres", default_port)
        run_as = _postgres_run_as()
        data = self._data_dir(ctx, run_as)
        pgdata, sockets = data / "pgdata", data / "run"
        sockets.mkdir(parents=True, exist_ok=True)
        if run_as:
            shutil.chown(data, run_as, run_as)
            shutil.chown(sockets, run_as, run_as)
        if not (pgdata / "PG_VERSION").exists():
            pwfile = data / "pwfile"
            pwfile.write_text(self._PASSWORD + "\n")
            if run_as:
                shutil.chown(pwfile, run_as, run_as)
            _run_once([str(bindir / "initdb"), "-D", str(pgdata), "-U", self._USER, f"--pwfile={pwfile}",
                       "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"],
                      ctx.log_path("postgres-initdb"), "initdb", user=run_as)
            pwfile.unlink()
        ctx.endpoints["SA_POSTGRES_DSN"] = (
            f"postgresql://{self._USER}:{self._PASSWORD}@{LOOPBACK}:{port}/{self._DATABASE}"
        )
        argv = [str(bindir / "postgres"), "-D", str(pgdata), "-p", str(port), "-k", str(sockets),
                "-c", f"listen_addresses={LOOPBACK}", "-c", "max_connections=200",
                "-c", "shared_buffers=256MB", "-c", "fsync=on", "-c", "logging_collector=off"]
        # SIGINT is PostgreSQL's "fast" shutdown: it ends open sessions (the pipeline's sinks keep
        # theirs) and checkpoints; SIGTERM ("smart") would wait for every client to leave.
        return [ProcessSpec("postgres", argv, user=run_as, stop_timeout_s=30, stop_signal=signal.SIGINT)]

    @staticmethod
    def _data_dir(ctx: StackContext, run_as: str | None) -> Path:
        data = ctx.data_dir("postgres")
        if run_as and not _accessible_by(run_as, data):
            # e.g. a checkout under /root (mode 700): keep the cluster in a per-checkout temp dir.
            key = hashlib.sha256(str(ctx.stack_dir).encode()).hexdigest()[:12]
            data = Path("/var/tmp") / f"streaming-analytics-pg-{key}"  # noqa: S108 - fixed, per-checkout name
            data.mkdir(parents=True, exist_ok=True)
            (ctx.data_dir("postgres") / "LOCATION").write_text(f"{data}\n")
        return data

    def healthy(self, ctx: StackContext) -> bool:
        import psycopg2

        dsn = ctx.endpoints["SA_POSTGRES_DSN"]
        if not self.external(ctx):
            dsn = dsn.rsplit("/", 1)[0] + "/postgres"  # the database itself is created after start
        with psycopg2.connect(dsn, connect_timeout=3) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)

    def after_start(self, ctx: StackContext) -> None:
        if self.external(ctx):
            return
        import psycopg2

        conn = psycopg2.connect(ctx.endpoints["SA_POSTGRES_DSN"].rsplit("/", 1)[0] + "/postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self._DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self._DATABASE}"')
        finally:
            conn.close()

    def urls(self, ctx: StackContext) -> dict[str, str]:
        return {"PostgreSQL": _redact_password(ctx.endpoints["SA_POSTGRES_DSN"])}


def _postgres_bindir() -> Path:
    pg_config = shutil.which("pg_config")
    candidates: list[Path] = []
    if pg_config:
        import subprocess

        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    raise ComponentError("PostgreSQL server binaries not found: run `make install`")


def _postgres_run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ComponentError("running as root, but there is no `postgres` system user to run "
                             "PostgreSQL as: run `make install` (it installs the postgresql package)"
                             ) from None
    return "postgres"


def _accessible_by(user: str, path: Path) -> bool:
    """Whether ``user`` can traverse every directory down to ``path`` (checked by mode bits)."""
    entry = pwd.getpwnam(user)
    for directory in [*reversed(path.resolve().parents), path.resolve()]:
        st = directory.stat()
        if st.st_uid == entry.pw_uid:
            continue
        if not st.st_mode & 0o001:  # neither owner nor (we assume) group: needs "others x"
            return False
    return True


def _redact_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password:
        return dsn.replace(f":{parts.password}@", ":***@", 1)
    return dsn


# --------------------------------------------------------------------------------------------------
class Redis(Component):
    """Redis with append-only persistence, so a restart in a fault test keeps the streams."""

    name = "redis"

    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        binary = shutil.which("redis-server")
        if not binary:
            raise ComponentError("redis-server not found: run `make install`")
        port = ctx.port("redis", urlsplit(ctx.setting("SA_REDIS_URL")).port or 6379)
        data = ctx.data_dir("redis")
        ctx.endpoints["SA_REDIS_URL"] = f"redis://{LOOPBACK}:{port}/0"
        argv = [binary, "--bind", LOOPBACK, "--port", str(port), "--dir", str(data),
                "--protected-mode", "yes", "--daemonize", "no", "--appendonly", "yes",
                "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction"]
        return [ProcessSpec("redis", argv)]

    def healthy(self, ctx: StackContext) -> bool:
        import redis

        client = redis.Redis.from_url(ctx.endpoints["SA_REDIS_URL"], socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def urls(self, ctx: StackContext) -> dict[str, str]:
        return {"Redis": ctx.endpoints["SA_REDIS_URL"]}


# --------------------------------------------------------------------------------------------------
class Flink(Component):
    """A Flink 1.19 session cluster: one JobManager and one TaskManager, every address on loopback.

    Its lib/ is the distribution's plus Beam's Flink runner and Kafka classes (the lib jar that
    ``make install`` builds), loaded parent-first: a job jar then brings only its pipeline, and
    the TaskManager does not leak a copy of the runner's classes (~52 MB of metaspace) per job.
    """

    name = "flink"
    start_timeout_s = 120.0

    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        home = ctx.tools_dir / "flink"
        if not (home / "bin" / "jobmanager.sh").exists():
            raise ComponentError(f"Flink distribution missing in {home}: run `make install`")
        rest_port = ctx.port("flink-rest", urlsplit(ctx.setting("SA_FLINK_REST_URL")).port or 8081)
        rpc_port = ctx.port("flink-rpc", 6123)
        blob_port = ctx.port("flink-blob", 6124)
        tm_rpc_port = ctx.port("flink-tm-rpc", 6125)
        tm_data_port = ctx.port("flink-tm-data", 6126)
        from pipelines.runners import FLINK_LIB_JAR

        lib_jar = ctx.tools_dir / "jars" / FLINK_LIB_JAR
        if not lib_jar.exists():
            raise ComponentError(f"{lib_jar} missing: run `make install` (it builds Beam's Flink runner)")
        data = ctx.data_dir("flink")
        conf = data / "conf"
        if conf.exists():
            shutil.rmtree(conf)
        shutil.copytree(home / "conf", conf)
        (conf / "config.yaml").write_text(json.dumps(_flink_config(
            rest_port=rest_port, rpc_port=rpc_port, blob_port=blob_port, tm_rpc_port=tm_rpc_port,
            tm_data_port=tm_data_port, slots=int(ctx.setting("SA_FLINK_TASK_SLOTS")), data=data,
        ), indent=2))  # JSON is YAML: Flink's standard YAML parser (config.yaml) reads it
        lib = data / "lib"
        if lib.exists():
            shutil.rmtree(lib)
        lib.mkdir()
        for jar in [*sorted((home / "lib").glob("*.jar")), lib_jar]:
            (lib / jar.name).symlink_to(jar.resolve())
        ctx.endpoints["SA_FLINK_REST_URL"] = f"http://{LOOPBACK}:{rest_port}"
        return [ProcessSpec("flink-jobmanager", [str(home / "bin" / "jobmanager.sh"), "start-foreground"],
                            env=flink_env(ctx), stop_timeout_s=30)]

    def healthy(self, ctx: StackContext) -> bool:
        flink_overview(ctx.endpoints["SA_FLINK_REST_URL"])
        return True

    def urls(self, ctx: StackContext) -> dict[str, str]:
        return {"Flink web UI": ctx.endpoints["SA_FLINK_REST_URL"]}


class FlinkTaskManager(Component):
    """The session cluster's TaskManager, a component of its own so that fault tests can kill it
    (SIGKILL) and bring a new one up while the JobManager keeps the job."""

    name = "flink-taskmanager"
    depends_on = ("flink",)
    start_timeout_s = 120.0

    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        home = ctx.tools_dir / "flink"
        return [ProcessSpec("flink-taskmanager", [str(home / "bin" / "taskmanager.sh"), "start-foreground"],
                            env=flink_env(ctx), stop_timeout_s=30)]

    def healthy(self, ctx: StackContext) -> bool:
        overview = flink_overview(ctx.endpoints["SA_FLINK_REST_URL"])
        return int(str(overview.get("taskmanagers", 0))) >= 1


def flink_env(ctx: StackContext) -> dict[str, str]:
    """Environment of Flink's scripts for this stack (the conf and lib dirs the JobManager's
    component wrote)."""
    return flink_cli_env(ctx.stack_dir, ctx.tools_dir)


def flink_cli_env(stack_dir: Path, tools_dir: Path) -> dict[str, str]:
    """Environment for Flink's scripts and its ``flink`` CLI (``.local/flink/bin/flink``) to talk to
    the stack in ``stack_dir``: the stack's conf (REST address) and lib dirs."""
    data = stack_dir / "data" / "flink"
    logs = stack_dir / "logs" / "flink"
    logs.mkdir(parents=True, exist_ok=True)
    return {"FLINK_HOME": str((tools_dir / "flink").resolve()), "FLINK_CONF_DIR": str(data / "conf"),
            "FLINK_LOG_DIR": str(logs), "FLINK_LIB_DIR": str(data / "lib")}


def flink_overview(rest_url: str) -> dict[str, object]:
    """GET /overview of the Flink REST API."""
    with urllib.request.urlopen(f"{rest_url}/overview", timeout=3) as resp:  # noqa: S310 - our URL
        result: dict[str, object] = json.load(resp)
        return result


def _flink_config(*, rest_port: int, rpc_port: int, blob_port: int, tm_rpc_port: int, tm_data_port: int,
                  slots: int, data: Path) -> dict[str, object]:
    # Sized for a 2-core, 24 GiB machine: the Python SDK harness runs outside the TaskManager JVM
    # (in the worker pool's processes); the Kafka read and the Beam runner run inside it.
    return {
        "jobmanager.rpc.address": LOOPBACK,
        "jobmanager.rpc.port": rpc_port,
        "jobmanager.bind-host": LOOPBACK,
        "jobmanager.memory.process.size": "1200m",
        "taskmanager.host": LOOPBACK,
        "taskmanager.bind-host": LOOPBACK,
        "taskmanager.rpc.port": tm_rpc_port,
        "taskmanager.data.port": tm_data_port,
        "taskmanager.numberOfTaskSlots": slots,
        "taskmanager.memory.process.size": "3000m",
        "taskmanager.memory.jvm-metaspace.size": "512m",
        "rest.address": LOOPBACK,
        "rest.bind-address": LOOPBACK,
        "rest.port": rest_port,
        "blob.server.port": blob_port,
        "parallelism.default": slots,
        # Beam's runner and KafkaIO live in lib/ (see the class docstring): load them from there.
        "classloader.resolve-order": "parent-first",
        "state.backend.type": "hashmap",
        "state.checkpoints.dir": f"file://{data / 'checkpoints'}",
        "state.savepoints.dir": f"file://{data / 'savepoints'}",
        "state.checkpoints.num-retained": 3,
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "restart-strategy.type": "exponential-delay",
        # A TaskManager killed without a goodbye is noticed within seconds, not the default 50 s.
        "heartbeat.timeout": 15000,
        # Uploaded jars, blobs and temp files stay in the stack's data dir (make clean removes them).
        "web.upload.dir": str(data / "upload"),
        "blob.storage.directory": str(data / "blobs"),
        "io.tmp.dirs": str(data / "tmp"),
        "metrics.internal.query-service.port": "0",
        "web.submit.enable": True,
        "web.cancel.enable": True,
    }


class BeamWorkerPool(Component):
    """The Python SDK worker pool the TaskManager starts the job's Python workers from (EXTERNAL
    environment; ``pipelines/worker_pool.py``), on loopback. Its workers see this stack's endpoints."""

    name = "worker-pool"
    start_timeout_s = 60.0

    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        port = ctx.port("worker-pool", int(ctx.setting("SA_BEAM_WORKER_POOL").rsplit(":", 1)[1]))
        ctx.endpoints["SA_BEAM_WORKER_POOL"] = f"{LOOPBACK}:{port}"
        argv = [sys.executable, "-m", "pipelines.worker_pool", "--host", LOOPBACK, "--port", str(port),
                "--work-dir", str(ctx.data_dir("worker-pool"))]
        return [ProcessSpec("worker-pool", argv, env=_child_env(ctx), stop_timeout_s=20)]

    def healthy(self, ctx: StackContext) -> bool:
        return _grpc_ready(ctx.endpoints["SA_BEAM_WORKER_POOL"])

    def urls(self, ctx: StackContext) -> dict[str, str]:
        return {"Beam worker pool": ctx.endpoints["SA_BEAM_WORKER_POOL"]}


class ExpansionService(Component):
    """Beam's expansion service for the job's Java Kafka read (cross-language), on loopback.

    Only the launcher talks to it, while it builds the job; the expanded KafkaIO runs inside the
    TaskManager (EMBEDDED environment) as a native Flink source (``use_deprecated_read``).
    """

    name = "expansion-service"
    start_timeout_s = 90.0

    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        from pipelines.runners import FLINK_RUNNER_JAR, expansion_service_argv

        jar = ctx.tools_dir / "jars" / FLINK_RUNNER_JAR
        if not jar.exists():
            raise ComponentError(f"{jar} missing: run `make install` (it builds Beam's Flink runner)")
        port = ctx.port("expansion-service",
                        int(ctx.setting("SA_BEAM_EXPANSION_SERVICE").rsplit(":", 1)[1]))
        ctx.endpoints["SA_BEAM_EXPANSION_SERVICE"] = f"{LOOPBACK}:{port}"
        argv = expansion_service_argv(_java(), ctx.tools_dir, port)
        return [ProcessSpec("expansion-service", argv, stop_timeout_s=10)]

    def healthy(self, ctx: StackContext) -> bool:
        return _grpc_ready(ctx.endpoints["SA_BEAM_EXPANSION_SERVICE"])


def _grpc_ready(address: str, timeout_s: float = 2.0) -> bool:
    import grpc

    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return False
        return True


# --------------------------------------------------------------------------------------------------
class Generator(Component):
    """The event generator, producing a steady, realistic stream for ``make run``."""

    name = "generator"
    profile = "app"
    depends_on = ("kafka",)
    start_timeout_s = 30.0

    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        rate = ctx.setting("SA_RUN_GENERATOR_RATE")
        # A new seed per start: the same seed repeats the same event ids, which a job restored from
        # its savepoint drops as duplicates (and whose alerts Postgres already has). The seed is in
        # the command line, so the log and `ps` show how to replay a run.
        seed = str(secrets.randbelow(2**31))
        argv = [sys.executable, "-m", "devstack.generator", "--rate", rate, "--realtime", "--seed", seed]
        return [ProcessSpec("generator", argv, env=_child_env(ctx))]

    def healthy(self, ctx: StackContext) -> bool:
        from kafka import KafkaConsumer, TopicPartition

        topic = ctx.setting("SA_KAFKA_TOPIC_EVENTS")
        consumer = KafkaConsumer(bootstrap_servers=ctx.endpoints["SA_KAFKA_BOOTSTRAP"],
                                 request_timeout_ms=5000)
        try:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            return bool(sum(consumer.end_offsets(partitions).values()) > 0)
        finally:
            consumer.close()

    def urls(self, ctx: StackContext) -> dict[str, str]:
        topic = ctx.setting("SA_KAFKA_TOPIC_EVENTS")
        return {"Events (kcat)": f"kcat -b {ctx.endpoints['SA_KAFKA_BOOTSTRAP']} -t {topic} -C -o end"}


#: In the pipeline's data dir: the runner the job was started on (read by status and health).
RUNNER_FILE: Final = "runner"


class Pipeline(Component):
    """The streaming job (``pipelines.analytics_pipeline``) on ``SA_PIPELINE_RUNNER``."""

    name = "pipeline"
    profile = "app"
    depends_on = ("kafka", "postgres", "redis", "flink-taskmanager", "worker-pool", "expansion-service")
    start_timeout_s = 300.0

    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        import shlex

        from pipelines.runners import RunnerUnavailable, runner_args
        from streaming_analytics.settings import Settings

        settings = Settings.from_env({**ctx.environ, **_child_env(ctx)})
        try:
            runner = runner_args(ctx.setting("SA_PIPELINE_RUNNER"), settings)
        except RunnerUnavailable as exc:
            raise ComponentError(f"pipeline: {exc}") from None
        # The job scores events with the newest model in SA_MODEL_DIR; a fresh checkout has none yet.
        subprocess.run([sys.executable, "-m", "models.train", "--if-missing",
                        "--model-dir", str(settings.model_dir)],
                       env={**os.environ, **_child_env(ctx)}, check=True, capture_output=True)
        job_args = [*runner, *shlex.split(ctx.setting("SA_PIPELINE_ARGS"))]
        # `make status` from another shell may not have SA_PIPELINE_RUNNER set as `make run` had.
        (ctx.data_dir("pipeline") / RUNNER_FILE).write_text(ctx.setting("SA_PIPELINE_RUNNER"))
        if self._on_flink(ctx):
            # The job runs on the cluster; this process follows it and, on `make stop`, takes the
            # savepoint the next `make run` resumes from (pipelines/flink_job.py).
            state = ctx.data_dir("pipeline")
            (state / "job.json").unlink(missing_ok=True)
            argv = [sys.executable, "-m", "pipelines.flink_job", "--state-dir", str(state), "--", *job_args]
            return [ProcessSpec("pipeline", argv, env=_child_env(ctx), stop_timeout_s=180)]
        argv = [sys.executable, "-m", "pipelines.analytics_pipeline", *job_args]
        return [ProcessSpec("pipeline", argv, env=_child_env(ctx), stop_timeout_s=30)]

    @staticmethod
    def _runner(ctx: StackContext) -> str:
        """The runner the running job was started on (recorded at start), else the setting."""
        recorded = ctx.data_dir("pipeline") / RUNNER_FILE
        return recorded.read_text().strip() if recorded.exists() else ctx.setting("SA_PIPELINE_RUNNER")

    def _on_flink(self, ctx: StackContext) -> bool:
        return self._runner(ctx) == "flink"

    def healthy(self, ctx: StackContext) -> bool:
        if self._on_flink(ctx):
            job = ctx.data_dir("pipeline") / "job.json"
            if not job.exists():
                return False
            job_id = json.loads(job.read_text())["job_id"]
            url = f"{ctx.endpoints['SA_FLINK_REST_URL']}/jobs/{job_id}"
            with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - our URL
                return bool(json.load(resp)["state"] == "RUNNING")
        import psycopg2

        # The launcher applies the migrations right before it submits the job.
        with psycopg2.connect(ctx.endpoints["SA_POSTGRES_DSN"], connect_timeout=3) as conn, \
                conn.cursor() as cur:
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            row = cur.fetchone()
            return bool(row and row[0])

    def urls(self, ctx: StackContext) -> dict[str, str]:
        prefix = ctx.setting("SA_REDIS_STREAM_PREFIX")
        urls = {"Pipeline": f"runner {self._runner(ctx)}; PostgreSQL tables `aggregates`, "
                            f"`alerts`, `dead_letters`; Redis streams `{prefix}aggregates.*`, "
                            f"`{prefix}alerts`; model versions in {ctx.setting('SA_MODEL_DIR')}"}
        if self._on_flink(ctx):
            urls["Flink job"] = self._flink_job_status(ctx)
        return urls

    def _flink_job_status(self, ctx: StackContext) -> str:
        """``job <id> RUNNING, last checkpoint #12 at 10:04:05 (183 KB), 0 failed`` (make status)."""
        import time

        job = ctx.data_dir("pipeline") / "job.json"
        if not job.exists():
            return "not submitted yet"
        job_id = json.loads(job.read_text())["job_id"]
        rest = ctx.endpoints["SA_FLINK_REST_URL"]
        try:
            with urllib.request.urlopen(f"{rest}/jobs/{job_id}", timeout=3) as resp:  # noqa: S310
                state = json.load(resp)["state"]
            with urllib.request.urlopen(f"{rest}/jobs/{job_id}/checkpoints", timeout=3) as resp:  # noqa: S310
                checkpoints = json.load(resp)
        except OSError as exc:
            return f"job {job_id}: Flink unreachable ({exc})"
        latest = (checkpoints.get("latest") or {}).get("completed")
        failed = checkpoints.get("counts", {}).get("failed", 0)
        if not latest:
            return f"job {job_id} {state}, no checkpoint yet, {failed} failed; {rest}/#/job/running/{job_id}"
        at = time.strftime("%H:%M:%S", time.localtime(latest["latest_ack_timestamp"] / 1000))
        size_kb = latest.get("checkpointed_size", latest.get("state_size", 0)) / 1000
        return (f"job {job_id} {state}, last checkpoint #{latest['id']} at {at} ({size_kb:.0f} KB), "
                f"{failed} failed; {rest}/#/job/running/{job_id}")


class PushServer(Component):
    """The WebSocket push server (``python -m push_server``), relaying the Redis streams."""

    name = "push-server"
    profile = "app"
    depends_on = ("redis",)
    start_timeout_s = 60.0

    def prepare(self, ctx: StackContext) -> list[ProcessSpec]:
        port = ctx.port("push", int(ctx.setting("SA_PUSH_PORT")))
        ctx.endpoints["SA_PUSH_PORT"] = str(port)
        argv = [sys.executable, "-m", "push_server"]
        return [ProcessSpec("push-server", argv, env={**_child_env(ctx), "SA_PUSH_HOST": LOOPBACK},
                            stop_timeout_s=float(ctx.setting("SA_PUSH_DRAIN_TIMEOUT_S")) + 5)]

    def healthy(self, ctx: StackContext) -> bool:
        url = f"http://{LOOPBACK}:{ctx.endpoints['SA_PUSH_PORT']}/readyz"
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(resp.status == 200)

    def urls(self, ctx: StackContext) -> dict[str, str]:
        port = ctx.endpoints["SA_PUSH_PORT"]
        return {"Dashboard": f"http://{LOOPBACK}:{port}/dashboard/  (token: python -m push_server.devtokens)",
                "Push WebSocket": f"ws://{LOOPBACK}:{port}/ws",
                "Push metrics": f"http://{LOOPBACK}:{port}/metrics"}


def _child_env(ctx: StackContext) -> dict[str, str]:
    """Environment for our own Python processes: the endpoints this stack actually bound."""
    return {**ctx.endpoints, "SA_STACK_DIR": str(ctx.stack_dir)}


# --------------------------------------------------------------------------------------------------
def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise ComponentError("java not found: run `make install`")
    return java


def _run_once(argv: list[str], log_path: Path, what: str, user: str | None = None) -> None:
    import subprocess

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, user=user, group=user,
                                extra_groups=[] if user else None, check=False)
    if result.returncode != 0:
        raise ComponentError(f"{what} failed with exit code {result.returncode}; see {log_path}")


#: Every component, in start order. Stop order is the reverse.
COMPONENTS: tuple[Component, ...] = (
    Kafka(), Postgres(), Redis(), Flink(), FlinkTaskManager(), BeamWorkerPool(), ExpansionService(),
    Generator(), Pipeline(), PushServer(),
)


def by_name() -> dict[str, Component]:
    return {c.name: c for c in COMPONENTS}


__all__ = ["COMPONENTS", "Component", "ComponentError", "StackContext", "by_name", "flink_overview",
           "wait_until"]
