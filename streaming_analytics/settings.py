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
    push_host: str
    push_port: int
    jwt_algorithms: tuple[str, ...]
    jwt_secret: str
    jwt_public_keys_file: str
    jwt_audience: str
    jwt_issuer: str
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
            push_host=v["SA_PUSH_HOST"],
            push_port=_positive_int(v, "SA_PUSH_PORT"),
            jwt_algorithms=tuple(a.strip() for a in v["SA_JWT_ALGORITHMS"].split(",") if a.strip()),
            jwt_secret=v["SA_JWT_SECRET"],
            jwt_public_keys_file=v["SA_JWT_PUBLIC_KEYS_FILE"],
            jwt_audience=v["SA_JWT_AUDIENCE"],
            jwt_issuer=v["SA_JWT_ISSUER"],
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
