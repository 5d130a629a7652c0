"""All runtime configuration, read from documented environment variables.

This is the only module that reads ``os.environ`` for configuration. Every variable is declared
once, as a field of :class:`Settings` with its metadata: the variable's name, its local default, a
one-line description, whether it is secret, and how its text becomes the field's value.
:data:`VARIABLES`, :meth:`Settings.from_env` and the README's configuration table
(:func:`markdown_table`, checked by a unit test) are all derived from those fields, so they cannot
drift.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A variable holds a value the platform cannot use."""


#: How a variable's text becomes its field's value: ``parse(name, raw)``; raises :class:`ConfigError`.
Parser = Callable[[str, str], Any]


def _text(name: str, raw: str) -> str:
    return raw


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _lowercase(name: str, raw: str) -> str:
    return raw.strip().lower()


def _uppercase(name: str, raw: str) -> str:
    return raw.strip().upper()


def _url(name: str, raw: str) -> str:
    return raw.rstrip("/")


def _comma_list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _positive_int(name: str, raw: str) -> int:
    try:
        number = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if number <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    return number


@dataclass(frozen=True)
class Variable:
    """One documented environment variable."""

    name: str
    default: str
    help: str
    secret: bool = False
    parse: Parser = _text


_VARIABLE: Final = "variable"


def _env(name: str, default: str, help: str, *, parse: Parser = _text,
         secret: bool = False) -> dict[str, Variable]:
    """The metadata of a :class:`Settings` field read from variable ``name``."""
    return {_VARIABLE: Variable(name=name, default=default, help=help, secret=secret, parse=parse)}


@dataclass(frozen=True)
class Settings:
    """Typed view of the configuration; build it with :meth:`from_env`.

    One field per variable, in the order of the README's table (see the module docstring).
    """

    # --- local stack ---------------------------------------------------------------------------
    stack_dir: Path = field(metadata=_env(
        "SA_STACK_DIR", str(PROJECT_ROOT / "var" / "stack"),
        "Directory of the local stack: data, logs, PIDs and endpoints.json.", parse=_path))
    tools_dir: Path = field(metadata=_env(
        "SA_TOOLS_DIR", str(PROJECT_ROOT / ".local"),
        "Where `make install` puts the Flink distribution and the Java artifacts.", parse=_path))
    run_generator_rate: str = field(metadata=_env(
        "SA_RUN_GENERATOR_RATE", "200", "Events per second the generator sends during `make run`."))
    # --- Kafka ---------------------------------------------------------------------------------
    kafka_bootstrap: str = field(metadata=_env(
        "SA_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers, comma separated."))
    topic_events: str = field(metadata=_env(
        "SA_KAFKA_TOPIC_EVENTS", "events", "Topic the raw events arrive on."))
    topic_dlq: str = field(metadata=_env(
        "SA_KAFKA_TOPIC_DLQ", "events-dlq", "Dead-letter topic for events that fail validation."))
    events_partitions: int = field(metadata=_env(
        "SA_KAFKA_EVENTS_PARTITIONS", "4", "Partitions of the events topic when the stack creates it.",
        parse=_positive_int))
    consumer_group: str = field(metadata=_env(
        "SA_KAFKA_CONSUMER_GROUP", "streaming-analytics",
        "Consumer group the pipeline commits its offsets to (for lag monitoring)."))
    # --- PostgreSQL ----------------------------------------------------------------------------
    postgres_dsn: str = field(metadata=_env(
        "SA_POSTGRES_DSN", "postgresql://analytics:analytics@127.0.0.1:5432/analytics",
        "PostgreSQL DSN for aggregates, alerts and the dead-letter table. When set, the local "
        "stack uses that server instead of starting its own.", secret=True))
    # --- Redis ---------------------------------------------------------------------------------
    redis_url: str = field(metadata=_env(
        "SA_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis URL for the live streams.", secret=True))
    redis_stream_prefix: str = field(metadata=_env(
        "SA_REDIS_STREAM_PREFIX", "sa:", "Prefix of every Redis stream key the platform writes."))
    redis_stream_maxlen: int = field(metadata=_env(
        "SA_REDIS_STREAM_MAXLEN", "100000", "Approximate MAXLEN each Redis stream is trimmed to on XADD.",
        parse=_positive_int))
    # --- Flink ---------------------------------------------------------------------------------
    flink_rest_url: str = field(metadata=_env(
        "SA_FLINK_REST_URL", "http://127.0.0.1:8081", "Flink JobManager REST endpoint.", parse=_url))
    flink_task_slots: int = field(metadata=_env(
        "SA_FLINK_TASK_SLOTS", "2", "Task slots of the local TaskManager.", parse=_positive_int))
    flink_checkpoint_interval_s: int = field(metadata=_env(
        "SA_FLINK_CHECKPOINT_INTERVAL_S", "10",
        "Checkpoint interval of the job on Flink, in seconds (offsets are committed per checkpoint).",
        parse=_positive_int))
    flink_max_bundle_time_ms: int = field(metadata=_env(
        "SA_FLINK_MAX_BUNDLE_TIME_MS", "250",
        "Longest a bundle of the job on Flink stays open, in ms (Beam's --max_bundle_time_mills): on "
        "the latency path of every Python stage.", parse=_positive_int))
    beam_worker_pool: str = field(metadata=_env(
        "SA_BEAM_WORKER_POOL", "127.0.0.1:50000",
        "Python SDK worker pool (EXTERNAL environment) the Flink TaskManager starts workers from."))
    beam_expansion_service: str = field(metadata=_env(
        "SA_BEAM_EXPANSION_SERVICE", "127.0.0.1:8097",
        "Beam expansion service of the Java Kafka read (cross-language), used when the job is built."))
    # --- job lifecycle (python -m pipelines.lifecycle) ---------------------------------------
    lifecycle_backend: str = field(metadata=_env(
        "SA_LIFECYCLE_BACKEND", "local",
        "Where the lifecycle CLI acts: `local` (the Flink session cluster at SA_FLINK_REST_URL) or "
        "`kubernetes` (the FlinkDeployment SA_K8S_DEPLOYMENT in SA_K8S_NAMESPACE).", parse=_lowercase))
    lifecycle_dir: Path = field(metadata=_env(
        "SA_LIFECYCLE_DIR", str(PROJECT_ROOT / "var" / "lifecycle"),
        "The lifecycle's records: savepoint catalogue, releases (and their job jars), rollback "
        "point, audit trail. Shared storage when several engineers operate one job.", parse=_path))
    savepoint_retention: int = field(metadata=_env(
        "SA_SAVEPOINT_RETENTION", "20",
        "Savepoints the catalogue keeps (plus the rollback point and the running release's).",
        parse=_positive_int))
    k8s_namespace: str = field(metadata=_env(
        "SA_K8S_NAMESPACE", "analytics", "Namespace of the FlinkDeployment (kubernetes backend)."))
    k8s_deployment: str = field(metadata=_env(
        "SA_K8S_DEPLOYMENT", "streaming-analytics-pipeline",
        "Name of the FlinkDeployment (kubernetes backend)."))
    # --- pipeline ------------------------------------------------------------------------------
    pipeline_runner: str = field(metadata=_env(
        "SA_PIPELINE_RUNNER", "flink",
        "Runner of the streaming job under `make run`: `flink` (the local session cluster), `prism` "
        "or `direct`."))
    pipeline_args: str = field(metadata=_env(
        "SA_PIPELINE_ARGS", "",
        "Extra Beam/pipeline options for the job under `make run`, e.g. `--fixed_window_s=30`."))
    # --- push server ---------------------------------------------------------------------------
    push_host: str = field(metadata=_env(
        "SA_PUSH_HOST", "127.0.0.1", "Interface the WebSocket push server listens on."))
    push_port: int = field(metadata=_env(
        "SA_PUSH_PORT", "8765", "Port of the WebSocket push server.", parse=_positive_int))
    jwt_algorithms: tuple[str, ...] = field(metadata=_env(
        "SA_JWT_ALGORITHMS", "HS256,RS256", "JWT algorithms the push server accepts (allow-list).",
        parse=_comma_list))
    jwt_secret: str = field(metadata=_env(
        "SA_JWT_SECRET", "dev-only-insecure-secret-change-me",
        "HMAC secret for HS256 tokens. The default is for local development only.", secret=True))
    jwt_public_keys_file: str = field(metadata=_env(
        "SA_JWT_PUBLIC_KEYS_FILE", "",
        "JWKS-style JSON file of RSA public keys for RS256 tokens (empty: RS256 disabled)."))
    jwt_audience: str = field(metadata=_env(
        "SA_JWT_AUDIENCE", "streaming-analytics", "Required `aud` claim of client tokens."))
    jwt_issuer: str = field(metadata=_env(
        "SA_JWT_ISSUER", "streaming-analytics-dev", "Required `iss` claim of client tokens."))
    jwt_leeway_s: int = field(metadata=_env(
        "SA_JWT_LEEWAY_S", "5", "Clock skew (s, >= 1) tolerated on `exp`/`nbf` of client tokens.",
        parse=_positive_int))
    push_broker: str = field(metadata=_env(
        "SA_PUSH_BROKER", "redis", "Stream backend of the push server: `redis`, or `memory` (tests).",
        parse=_lowercase))
    push_max_connections: int = field(metadata=_env(
        "SA_PUSH_MAX_CONNECTIONS", "10000", "Most WebSocket connections one push process accepts.",
        parse=_positive_int))
    push_max_connections_per_user: int = field(metadata=_env(
        "SA_PUSH_MAX_CONNECTIONS_PER_USER", "50", "Most concurrent connections per token `sub`.",
        parse=_positive_int))
    push_max_message_bytes: int = field(metadata=_env(
        "SA_PUSH_MAX_MESSAGE_BYTES", "65536", "Largest client frame; bigger ones close with 4503.",
        parse=_positive_int))
    push_max_subscriptions: int = field(metadata=_env(
        "SA_PUSH_MAX_SUBSCRIPTIONS", "16", "Most channel subscriptions per connection.",
        parse=_positive_int))
    push_command_rate: int = field(metadata=_env(
        "SA_PUSH_COMMAND_RATE", "20", "Sustained client commands per second per connection.",
        parse=_positive_int))
    push_command_burst: int = field(metadata=_env(
        "SA_PUSH_COMMAND_BURST", "50", "Command burst a connection may send above the rate.",
        parse=_positive_int))
    push_send_queue: int = field(metadata=_env(
        "SA_PUSH_SEND_QUEUE", "1024",
        "Messages queued per connection; a client that lets it fill is closed with 4001.",
        parse=_positive_int))
    push_allowed_origins: tuple[str, ...] = field(metadata=_env(
        "SA_PUSH_ALLOWED_ORIGINS", "",
        "Comma-separated browser Origins allowed to connect (empty: same origin only).",
        parse=_comma_list))
    push_auth_timeout_s: int = field(metadata=_env(
        "SA_PUSH_AUTH_TIMEOUT_S", "10", "Seconds a new connection has to authenticate.",
        parse=_positive_int))
    push_drain_timeout_s: int = field(metadata=_env(
        "SA_PUSH_DRAIN_TIMEOUT_S", "10", "Seconds SIGTERM waits for clients to be closed cleanly.",
        parse=_positive_int))
    push_ping_interval_s: int = field(metadata=_env(
        "SA_PUSH_PING_INTERVAL_S", "20", "Seconds between WebSocket pings to detect dead peers.",
        parse=_positive_int))
    push_tls_cert: str = field(metadata=_env(
        "SA_PUSH_TLS_CERT", "", "PEM certificate chain; with SA_PUSH_TLS_KEY enables TLS (wss)."))
    push_tls_key: str = field(metadata=_env(
        "SA_PUSH_TLS_KEY", "", "PEM private key file for SA_PUSH_TLS_CERT."))
    push_history: str = field(metadata=_env(
        "SA_PUSH_HISTORY", "postgres",
        "History beyond the Redis streams (recovery fallback, REST): `postgres` or `none`.",
        parse=_lowercase))
    push_history_schema: str = field(metadata=_env(
        "SA_PUSH_HISTORY_SCHEMA", "public", "PostgreSQL schema of the tables the push server reads."))
    push_history_overlap_ms: int = field(metadata=_env(
        "SA_PUSH_HISTORY_OVERLAP_MS", "2000",
        "Margin (ms) of the Postgres recovery window for clock skew and lag between the sinks.",
        parse=_positive_int))
    push_history_pool_size: int = field(metadata=_env(
        "SA_PUSH_HISTORY_POOL_SIZE", "4", "Most PostgreSQL connections one push process opens.",
        parse=_positive_int))
    # --- anomaly model -------------------------------------------------------------------------
    model_dir: Path = field(metadata=_env(
        "SA_MODEL_DIR", str(PROJECT_ROOT / "var" / "models" / "anomaly"),
        "Directory of the anomaly model's versions (`anomaly-v<N>.keras`); the job scores with "
        "the newest and switches to newer ones while it runs.", parse=_path))
    # --- logging -------------------------------------------------------------------------------
    log_level: str = field(metadata=_env(
        "SA_LOG_LEVEL", "INFO", "Log level of our Python processes.", parse=_uppercase))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every variable's effective value (:func:`resolve`), each parsed into its field."""
        values = resolve(environ)
        return cls(**{name: var.parse(var.name, values[var.name]) for name, var in _FIELD_VARIABLES})


#: ``(field name, variable)`` of every :class:`Settings` field, in declaration order.
_FIELD_VARIABLES: Final[tuple[tuple[str, Variable], ...]] = tuple(
    (f.name, f.metadata[_VARIABLE]) for f in fields(Settings))

#: Every documented variable by name, in the order of the README's table.
VARIABLES: Final[dict[str, Variable]] = {var.name: var for _, var in _FIELD_VARIABLES}


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


def redacted(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The effective configuration with secrets masked, safe to log or print."""
    return {
        name: ("***" if VARIABLES[name].secret and value else value)
        for name, value in resolve(environ).items()
    }


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
