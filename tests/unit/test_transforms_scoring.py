"""ScoreEvents on the DirectRunner with a real trained model: alerts for exactly the anomalous
events the generator made, deterministic alert ids, the model version recorded."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.anomaly import latest_model, model_input, model_version, version_of
from models.handler import NewestModelHandler
from streaming_analytics.events import Event, parse_event
from streaming_analytics.generator import EventGenerator, Fractions, GeneratorConfig
from transforms.scoring import ScoreEvents, alert_id


def generated(count: int, *, seed: int) -> tuple[list[Event], set[str]]:
    """Valid events only, and the ids of the anomalous ones (the generator's ground truth)."""
    config = GeneratorConfig(seed=seed, fractions=dataclasses.replace(
        Fractions(), out_of_order=0.0, late=0.0, too_late=0.0, duplicate=0.0, malformed=0.0,
        anomalous=0.02))
    events, anomalous = [], set()
    for record in EventGenerator(config).records(count, start_ms=1_767_225_600_000, interval_ms=5):
        event = parse_event(record.value)
        events.append(event)
        if record.kind == "anomalous":
            anomalous.add(event.event_id)
    return events, anomalous


def test_alerts_are_exactly_the_anomalous_events(model_dir: Path) -> None:
    model = latest_model(model_dir)
    assert model is not None and version_of(model) == 1
    events, anomalous = generated(2000, seed=123)  # another seed than training's
    assert len(anomalous) == 40
    with TestPipeline() as p:
        alerts = p | beam.Create(events) | ScoreEvents(str(model), threshold=0.5, max_batch_size=128)
        assert_that(alerts | "Ids" >> beam.Map(lambda a: a["event_id"]), equal_to(sorted(anomalous)),
                    label="OneAlertPerAnomalousEvent")
        assert_that(alerts | "Shape" >> beam.Map(
            lambda a: (a["alert_id"] == alert_id(a["event_id"]), a["model_version"],
                       0.5 <= a["score"] <= 1.0)),
            equal_to([(True, "v1", True)] * len(anomalous)), label="AlertFields")


def test_threshold_must_be_a_score() -> None:
    with pytest.raises(ValueError, match="threshold"):
        ScoreEvents("m.keras", threshold=0.0)


def test_alert_ids_are_stable_and_versions_named() -> None:
    assert alert_id("e1") == alert_id("e1") != alert_id("e2")
    assert model_version("/x/anomaly-v12.keras") == "v12" and version_of("/x/other.keras") is None


def test_the_handler_switches_to_a_newer_version_in_place(model_dir: Path, tmp_path: Path) -> None:
    v1 = latest_model(model_dir)
    assert v1 is not None
    shutil.copy(v1, tmp_path / v1.name)
    handler = NewestModelHandler(str(tmp_path / v1.name), refresh_interval_s=0.05)
    live = handler.load_model()  # what RunInference caches once per worker process
    rows = [model_input([1.0, 2.0, 3.0, 0.1, 0.0, 1.0])]
    assert [Path(r.model_id or "").name for r in handler.run_inference(rows, live)] == ["anomaly-v1.keras"]
    shutil.copy(v1, tmp_path / "anomaly-v2.keras")
    time.sleep(0.1)
    assert [Path(r.model_id or "").name for r in handler.run_inference(rows, live)] == ["anomaly-v2.keras"]
    (tmp_path / "anomaly-v1.keras").unlink()  # an older version never comes back
    time.sleep(0.1)
    assert [Path(r.model_id or "").name for r in handler.run_inference(rows, live)] == ["anomaly-v2.keras"]
