"""All runtime configuration, read from documented environment variables.

This is the only module that reads ``os.environ`` for configuration. Every variable is declared
once in :data:`VARIABLES` with its local default and a one-line description; the README's
configuration table is checked against this registry by a unit test, so the two cannot drift.

Resolution order for each variable:

1. the process environment (what production, Helm and CI set);
2. the endpoints file written by the local stack manager (``var/stack/endpoints.json``), so that a
   developer's shell, the pipeline and the tests find a service even when the stack had to move it
   to another port because the default one was taken;
3. the local default declared here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variable:
    """One documented environment variable."""

    name: str
    default: str
    help: str
    secret: bool = False


def _v(name: str, default: str, help: str, *, secret: bool = False) -> Variable:
    return Variable(name=name, default=default, help=help, secret=secret)


VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        # --- local stack ---------------------------------------------------------------------
        _v("SA_STACK_DIR", str(PROJECT_ROOT / "var" / "stack"),
           "Directory of the local stack: data, logs, PIDs and endpoints.json."),
        _v("SA_TOOLS_DIR", str(PROJECT_ROOT / ".local"),
           "Where `make install` puts the Flink distribution and the Java artifacts."),
        _v("SA_RUN_GENERATOR_RATE", "200", "Events per second the generator sends during `make run`."),
        # --- Kafka ---------------------------------------------------------------------------
        _v("SA_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers, comma separated."),
        _v("SA_KAFKA_TOPIC_EVENTS", "events", "Topic the raw events arrive on."),
        _v("SA_KAFKA_TOPIC_DLQ", "events-dlq", "Dead-letter topic for events that fail validation."),
        _v("SA_KAFKA_EVENTS_PARTITIONS", "4", "Partitions of the events topic when the stack creates it."),
        _v("SA_KAFKA_CONSUMER_GROUP", "streaming-analytics",
           "Consumer group the pipeline commits its offsets to (for lag monitoring)."),
        # --- PostgreSQL ----------------------------------------------------------------------
        _v("SA_POSTGRES_DSN", "postgresql://analytics:analytics@127.0.0.1:5432/analytics",
           "PostgreSQL DSN for aggregates, alerts and the dead-letter table. When set, the local "
           "stack uses that server instead of starting its own.", secret=True),
        # --- Redis ---------------------------------------------------------------------------
        _v("SA_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis URL for the live streams.", secret=True),
        _v("SA_REDIS_STREAM_PREFIX", "sa:", "Prefix of every Redis stream key the platform writes."),
        _v("SA_REDIS_STREAM_MAXLEN", "100000",
           "Approximate MAXLEN each Redis stream is trimmed to on XADD."),
        # --- Flink ---------------------------------------------------------------------------
        _v("SA_FLINK_REST_URL", "http://127.0.0.1:8081", "Flink JobManager REST endpoint."),
        _v("SA_FLINK_TASK_SLOTS", "2", "Task slots of the local TaskManager."),
        _v("SA_FLINK_CHECKPOINT_INTERVAL_S", "10",
           "Checkpoint interval of the job on Flink, in seconds (offsets are committed per checkpoint)."),
        _v("SA_BEAM_WORKER_POOL", "127.0.0.1:50000",
           "Python SDK worker pool (EXTERNAL environment) the Flink TaskManager starts workers from."),
        _v("SA_BEAM_EXPANSION_SERVICE", "127.0.0.1:8097",
           "Beam expansion service of the Java Kafka read (cross-language), used when the job is built."),
        # --- job lifecycle (python -m pipelines.lifecycle) -------------------------------------
        _v("SA_LIFECYCLE_BACKEND", "local",
           "Where the lifecycle CLI acts: `local` (the Flink session cluster at SA_FLINK_REST_URL) or "
           "`kubernetes` (the FlinkDeployment SA_K8S_DEPLOYMENT in SA_K8S_NAMESPACE)."),
        _v("SA_LIFECYCLE_DIR", str(PROJECT_ROOT / "var" / "lifecycle"),
           "The lifecycle's records: savepoint catalogue, releases (and their job jars), rollback "
           "point, audit trail. Shared storage when several engineers operate one job."),
        _v("SA_SAVEPOINT_RETENTION", "20",
           "Savepoints the catalogue keeps (plus the rollback point and the running release's)."),
        _v("SA_K8S_NAMESPACE", "analytics", "Namespace of the FlinkDeployment (kubernetes backend)."),
        _v("SA_K8S_DEPLOYMENT", "streaming-analytics-pipeline",
           "Name of the FlinkDeployment (kubernetes backend)."),
        # --- pipeline ------------------------------------------------------------------------
        _v("SA_PIPELINE_RUNNER", "flink",
           "Runner of the streaming job under `make run`: `flink` (the local session cluster), `prism` "
           "or `direct`."),
        _v("SA_PIPELINE_ARGS", "",
           "Extra Beam/pipeline options for the job under `make run`, e.g. `--fixed_window_s=30`."),
        # --- push server ---------------------------------------------------------------------
        _v("SA_PUSH_HOST", "127.0.0.1", "Interface the WebSocket push server listens on."),
        _v("SA_PUSH_PORT", "8765", "Port of the WebSocket push server."),
        _v("SA_JWT_ALGORITHMS", "HS256,RS256", "JWT algorithms the push server accepts (allow-list)."),
        _v("SA_JWT_SECRET", "dev-only-insecure-secret-change-me",
           "HMAC secret for HS256 tokens. The default is for local development only.", secret=True),
        _v("SA_JWT_PUBLIC_KEYS_FILE", "",
           "JWKS-style JSON file of RSA public keys for RS256 tokens (empty: RS256 disabled)."),
        _v("SA_JWT_AUDIENCE", "streaming-analytics", "Required `aud` claim of client tokens."),
        _v("SA_JWT_ISSUER", "streaming-analytics-dev", "Required `iss` claim of client tokens."),
        _v("SA_JWT_LEEWAY_S", "5", "Clock skew (s, >= 1) tolerated on `exp`/`nbf` of client tokens."),
        _v("SA_PUSH_BROKER", "redis", "Stream backend of the push server: `redis`, or `memory` (tests)."),
        _v("SA_PUSH_MAX_CONNECTIONS", "10000", "Most WebSocket connections one push process accepts."),
        _v("SA_PUSH_MAX_CONNECTIONS_PER_USER", "50", "Most concurrent connections per token `sub`."),
        _v("SA_PUSH_MAX_MESSAGE_BYTES", "65536", "Largest client frame; bigger ones close with 4503."),
        _v("SA_PUSH_MAX_SUBSCRIPTIONS", "16", "Most channel subscriptions per connection."),
        _v("SA_PUSH_COMMAND_RATE", "20", "Sustained client commands per second per connection."),
        _v("SA_PUSH_COMMAND_BURST", "50", "Command burst a connection may send above the rate."),
        _v("SA_PUSH_SEND_QUEUE", "1024",
           "Messages queued per connection; a client that lets it fill is closed with 4001."),
        _v("SA_PUSH_ALLOWED_ORIGINS", "",
           "Comma-separated browser Origins allowed to connect (empty: same origin only)."),
        _v("SA_PUSH_AUTH_TIMEOUT_S", "10", "Seconds a new connection has to authenticate."),
        _v("SA_PUSH_DRAIN_TIMEOUT_S", "10", "Seconds SIGTERM waits for clients to be closed cleanly."),
        _v("SA_PUSH_PING_INTERVAL_S", "20", "Seconds between WebSocket pings to detect dead peers."),
        _v("SA_PUSH_TLS_CERT", "", "PEM certificate chain; with SA_PUSH_TLS_KEY enables TLS (wss)."),
        _v("SA_PUSH_TLS_KEY", "", "PEM private key file for SA_PUSH_TLS_CERT."),
        _v("SA_PUSH_HISTORY", "postgres",
           "History beyond the Redis streams (recovery fallback, REST): `postgres` or `none`."),
        _v("SA_PUSH_HISTORY_SCHEMA", "public", "PostgreSQL schema of the tables the push server reads."),
        _v("SA_PUSH_HISTORY_OVERLAP_MS", "2000",
           "Margin (ms) of the Postgres recovery window for clock skew and lag between the sinks."),
        _v("SA_PUSH_HISTORY_POOL_SIZE", "4", "Most PostgreSQL connections one push process opens."),
        # --- anomaly model -------------------------------------------------------------------
        _v("SA_MODEL_DIR", str(PROJECT_ROOT / "var" / "models" / "anomaly"),
           "Directory of the anomaly model's versions (`anomaly-v<N>.keras`); the job scores with "
           "the newest and switches to newer ones while it runs."),
        # --- logging -------------------------------------------------------------------------
        _v("SA_LOG_LEVEL", "INFO", "Log level of our Python processes."),
    )
}


def endpoints_file(stack_dir: str | Path) -> Path:
    """Where the stack manager publishes the endpoints it actually bound."""
    return Path(stack_dir) / "endpoints.json"


def _stack_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    stack_dir = environ.get("SA_STACK_DIR") or VARIABLES["SA_STACK_DIR"].default
    try:
        data = json.loads(endpoints_file(stack_dir).read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items() if k in VARIABLES}


def resolve(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return every variable's effective value (environment > stack endpoints > default)."""
    env = os.environ if environ is None else environ
    overrides = _stack_overrides(env)
    return {
        name: env.get(name) or overrides.get(name) or var.default
        for name, var in VARIABLES.items()
    }


#: Prefix of a value that names a variable to be read where the value is used (see worker_value).
WORKER_ENV_PREFIX: Final = "env:"


def worker_ref(name: str) -> str:
    """A placeholder for variable ``name``, resolved by :func:`worker_value` where it is used.

    A job launched with ``--endpoints=workers`` carries these instead of endpoint values, so the
    job jar built once holds no endpoint or password, and each deployment's workers (a Flink
    TaskManager's SDK harness) connect where their own ``SA_*`` environment says.
    """
    if name not in VARIABLES:
        raise ConfigError(f"{name} is not a documented variable")
    return WORKER_ENV_PREFIX + name


def worker_value(value: str) -> str:
    """``value``, or — for a :func:`worker_ref` — the variable's effective value in this process."""
    if not value.startswith(WORKER_ENV_PREFIX):
        return value
    name = value[len(WORKER_ENV_PREFIX):]
    if name not in VARIABLES:
        raise ConfigError(f"{value!r} names no documented variable")
    return resolve()[name]


@dataclass(frozen=True)
class Settings:
    """Typed view of the configuration; build it with :meth:`from_env`."""

    stack_dir: Path
    tools_dir: Path
    kafka_bootstrap: str
    topic_events: str
    topic_dlq: str
    events_partitions: int
    consumer_group: str
    postgres_dsn: str
    redis_url: str
    redis_stream_prefix: str
    redis_stream_maxlen: int
    flink_rest_url: str
    flink_task_slots: int
    flink_checkpoint_interval_s: int
    beam_worker_pool: str
    beam_expansion_service: str
    lifecycle_backend: str
    lifecycle_dir: Path
    savepoint_retention: int
    k8s_namespace: str
    k8s_deployment: str
    push_host: str
    push_port: int
    jwt_algorithms: tuple[str, ...]
    jwt_secret: str
    jwt_public_keys_file: str
    jwt_audience: str
    jwt_issuer: str
    jwt_leeway_s: int
    push_broker: str
    push_max_connections: int
    push_max_connections_per_user: int
    push_max_message_bytes: int
    push_max_subscriptions: int
    push_command_rate: int
    push_command_burst: int
    push_send_queue: int
    push_allowed_origins: tuple[str, ...]
    push_auth_timeout_s: int
    push_drain_timeout_s: int
    push_ping_interval_s: int
    push_tls_cert: str
    push_tls_key: str
    push_history: str
    push_history_schema: str
    push_history_overlap_ms: int
    push_history_pool_size: int
    model_dir: Path
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        v = resolve(environ)
        return cls(
            stack_dir=Path(v["SA_STACK_DIR"]),
            tools_dir=Path(v["SA_TOOLS_DIR"]),
            kafka_bootstrap=v["SA_KAFKA_BOOTSTRAP"],
            topic_events=v["SA_KAFKA_TOPIC_EVENTS"],
            topic_dlq=v["SA_KAFKA_TOPIC_DLQ"],
            events_partitions=_positive_int(v, "SA_KAFKA_EVENTS_PARTITIONS"),
            consumer_group=v["SA_KAFKA_CONSUMER_GROUP"],
            postgres_dsn=v["SA_POSTGRES_DSN"],
            redis_url=v["SA_REDIS_URL"],
            redis_stream_prefix=v["SA_REDIS_STREAM_PREFIX"],
            redis_stream_maxlen=_positive_int(v, "SA_REDIS_STREAM_MAXLEN"),
            flink_rest_url=v["SA_FLINK_REST_URL"].rstrip("/"),
            flink_task_slots=_positive_int(v, "SA_FLINK_TASK_SLOTS"),
            flink_checkpoint_interval_s=_positive_int(v, "SA_FLINK_CHECKPOINT_INTERVAL_S"),
            beam_worker_pool=v["SA_BEAM_WORKER_POOL"],
            beam_expansion_service=v["SA_BEAM_EXPANSION_SERVICE"],
            lifecycle_backend=v["SA_LIFECYCLE_BACKEND"].strip().lower(),
            lifecycle_dir=Path(v["SA_LIFECYCLE_DIR"]),
            savepoint_retention=_positive_int(v, "SA_SAVEPOINT_RETENTION"),
            k8s_namespace=v["SA_K8S_NAMESPACE"],
            k8s_deployment=v["SA_K8S_DEPLOYMENT"],
            push_host=v["SA_PUSH_HOST"],
            push_port=_positive_int(v, "SA_PUSH_PORT"),
            jwt_algorithms=tuple(a.strip() for a in v["SA_JWT_ALGORITHMS"].split(",") if a.strip()),
            jwt_secret=v["SA_JWT_SECRET"],
            jwt_public_keys_file=v["SA_JWT_PUBLIC_KEYS_FILE"],
            jwt_audience=v["SA_JWT_AUDIENCE"],
            jwt_issuer=v["SA_JWT_ISSUER"],
            jwt_leeway_s=_positive_int(v, "SA_JWT_LEEWAY_S"),
            push_broker=v["SA_PUSH_BROKER"].strip().lower(),
            push_max_connections=_positive_int(v, "SA_PUSH_MAX_CONNECTIONS"),
            push_max_connections_per_user=_positive_int(v, "SA_PUSH_MAX_CONNECTIONS_PER_USER"),
            push_max_message_bytes=_positive_int(v, "SA_PUSH_MAX_MESSAGE_BYTES"),
            push_max_subscriptions=_positive_int(v, "SA_PUSH_MAX_SUBSCRIPTIONS"),
            push_command_rate=_positive_int(v, "SA_PUSH_COMMAND_RATE"),
            push_command_burst=_positive_int(v, "SA_PUSH_COMMAND_BURST"),
            push_send_queue=_positive_int(v, "SA_PUSH_SEND_QUEUE"),
            push_allowed_origins=tuple(
                o.strip() for o in v["SA_PUSH_ALLOWED_ORIGINS"].split(",") if o.strip()),
            push_auth_timeout_s=_positive_int(v, "SA_PUSH_AUTH_TIMEOUT_S"),
            push_drain_timeout_s=_positive_int(v, "SA_PUSH_DRAIN_TIMEOUT_S"),
            push_ping_interval_s=_positive_int(v, "SA_PUSH_PING_INTERVAL_S"),
            push_tls_cert=v["SA_PUSH_TLS_CERT"],
            push_tls_key=v["SA_PUSH_TLS_KEY"],
            push_history=v["SA_PUSH_HISTORY"].strip().lower(),
            push_history_schema=v["SA_PUSH_HISTORY_SCHEMA"],
            push_history_overlap_ms=_positive_int(v, "SA_PUSH_HISTORY_OVERLAP_MS"),
            push_history_pool_size=_positive_int(v, "SA_PUSH_HISTORY_POOL_SIZE"),
            model_dir=Path(v["SA_MODEL_DIR"]),
            log_level=v["SA_LOG_LEVEL"].upper(),
        )

def redacted(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The effective configuration with secrets masked, safe to log or print."""
    return {
        name: ("***" if VARIABLES[name].secret and value else value)
        for name, value in resolve(environ).items()
    }


class ConfigError(ValueError):
    """A variable holds a value the platform cannot use."""


def _positive_int(values: Mapping[str, str], name: str) -> int:
    raw = values[name]
    try:
        number = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if number <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    return number


def markdown_table() -> str:
    """The README's configuration table, generated from :data:`VARIABLES`."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for var in VARIABLES.values():
        default = var.default.replace(str(PROJECT_ROOT), "<repo>") or "(empty)"
        rows.append(f"| `{var.name}` | `{default}` | {var.help} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m streaming_analytics.settings``: print the effective configuration (secrets
    masked); ``--markdown`` prints the README table instead."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        print(markdown_table())
        return 0
    for name, value in redacted().items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
