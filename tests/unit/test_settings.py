"""The settings module: precedence, validation, and the README's configuration table."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from streaming_analytics import settings as s

README = Path(__file__).parents[2] / "README.md"


def test_defaults_are_local_when_nothing_is_set(tmp_path: Path) -> None:
    cfg = s.Settings.from_env({"SA_STACK_DIR": str(tmp_path)})
    assert cfg.kafka_bootstrap == "127.0.0.1:9092"
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"
    assert cfg.events_partitions == 4
    assert cfg.jwt_algorithms == ("HS256", "RS256")


def test_environment_beats_stack_endpoints_which_beat_defaults(tmp_path: Path) -> None:
    s.endpoints_file(tmp_path).write_text(json.dumps({
        "SA_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
        "SA_REDIS_URL": "redis://127.0.0.1:16379/0",
        "NOT_A_SETTING": "ignored",
    }))
    env = {"SA_STACK_DIR": str(tmp_path), "SA_REDIS_URL": "redis://10.1.2.3:6379/1"}
    cfg = s.Settings.from_env(env)
    assert cfg.kafka_bootstrap == "127.0.0.1:19092"  # from the stack
    assert cfg.redis_url == "redis://10.1.2.3:6379/1"  # the environment wins
    assert "NOT_A_SETTING" not in s.resolve(env)


@pytest.mark.parametrize("raw", ["zero", "0", "-3"])
def test_integer_variables_reject_bad_values(raw: str, tmp_path: Path) -> None:
    with pytest.raises(s.ConfigError, match="SA_KAFKA_EVENTS_PARTITIONS"):
        s.Settings.from_env({"SA_STACK_DIR": str(tmp_path), "SA_KAFKA_EVENTS_PARTITIONS": raw})


def test_secrets_are_masked_in_the_printable_view(tmp_path: Path) -> None:
    shown = s.redacted({"SA_STACK_DIR": str(tmp_path), "SA_JWT_SECRET": "hunter2"})
    assert shown["SA_JWT_SECRET"] == "***"
    assert "hunter2" not in json.dumps(shown)
    assert shown["SA_KAFKA_TOPIC_EVENTS"] == "events"


def test_each_variable_is_declared_once_as_a_settings_field() -> None:
    names = [f.metadata["variable"].name for f in dataclasses.fields(s.Settings)]
    assert len(names) == len(set(names)), "two Settings fields read one variable"
    assert list(s.VARIABLES) == names


def test_every_variable_is_documented_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `(SA_[A-Z0-9_]+)` \|", README.read_text(), flags=re.MULTILINE))
    declared = set(s.VARIABLES)
    assert declared - documented == set(), "variables missing from README's configuration table"
    assert documented - declared == set(), "README documents variables the code does not read"


def test_worker_refs_resolve_where_they_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = s.worker_ref("SA_POSTGRES_DSN")
    assert ref == "env:SA_POSTGRES_DSN"
    monkeypatch.setenv("SA_POSTGRES_DSN", "postgresql://worker@db.internal/analytics")
    assert s.worker_value(ref) == "postgresql://worker@db.internal/analytics"
    assert s.worker_value("postgresql://launcher@127.0.0.1/x") == "postgresql://launcher@127.0.0.1/x"
    with pytest.raises(s.ConfigError):
        s.worker_ref("SA_NOT_A_VARIABLE")
    with pytest.raises(s.ConfigError):
        s.worker_value("env:SA_NOT_A_VARIABLE")
