"""Train the anomaly model on generated events and publish it as the next version.

    python -m models.train                       # into SA_MODEL_DIR, next free version
    python -m models.train --version 7 --events 50000

A running pipeline picks the new version up without a restart (it watches SA_MODEL_DIR).

The trainer is offline tooling: its training data is the event generator's workload
(:mod:`devstack.generator`, whose ``anomalous`` kind is the positive class), so it lives apart from
:mod:`models.anomaly` and :mod:`models.handler`, which the pipeline's workers load. Nothing in the
pipeline imports this module (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from devstack.generator import EventGenerator, Fractions, GeneratorConfig
from models.anomaly import (
    MODEL_SUFFIX,
    Evaluation,
    build_model,
    evaluate,
    latest_model,
    model_input,
    model_path,
    version_of,
)
from streaming_analytics.events import FEATURE_NAMES
from streaming_analytics.settings import Settings


def training_data(events: int, *, seed: int, anomalous: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and labels from the event generator (its ``anomalous`` kind is the positive)."""
    config = GeneratorConfig(seed=seed, fractions=Fractions(
        out_of_order=0.0, late=0.0, too_late=0.0, duplicate=0.0, malformed=0.0, anomalous=anomalous))
    rows, labels = [], []
    for record in EventGenerator(config).records(events, start_ms=1_767_225_600_000, interval_ms=10):
        doc = json.loads(record.value)
        rows.append(model_input([doc["features"][name] for name in FEATURE_NAMES]))
        labels.append(1.0 if record.kind == "anomalous" else 0.0)
    return np.stack(rows), np.asarray(labels, dtype=np.float32)


def train(model_dir: str | os.PathLike[str], *, version: int | None = None, events: int = 20_000,
          seed: int = 7, epochs: int = 8, threshold: float = 0.5) -> tuple[Path, Evaluation]:
    """Train a model on generated events and publish it as the next version in ``model_dir``.

    Returns the new file and its evaluation on held-out events (a different generator seed). A
    report ``anomaly-v<N>.json`` is written beside the model.
    """
    directory = Path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if version is None:
        latest = latest_model(directory)
        version = 1 if latest is None else (version_of(latest) or 0) + 1
    target = model_path(directory, version)
    if target.exists():
        raise FileExistsError(f"{target} exists: a model version is never overwritten")
    inputs, labels = training_data(events, seed=seed)
    model = build_model(inputs, seed=seed)
    positives = max(1.0, float(labels.sum()))
    weights = {0: 1.0, 1: (len(labels) - positives) / positives}  # the positives are rare
    model.fit(inputs, labels, epochs=epochs, batch_size=256, class_weight=weights, verbose=0)
    held_out, truth = training_data(events // 4, seed=seed + 1000)
    scores = np.asarray(model.predict(held_out, batch_size=1024, verbose=0)).reshape(-1)
    evaluation = evaluate(scores, truth, threshold)
    partial = directory / f".{target.name}.partial{MODEL_SUFFIX}"  # not matched by the watcher
    model.save(partial)
    os.replace(partial, target)
    report = {"version": version, "file": target.name, "seed": seed, "events": events,
              "epochs": epochs, "features": list(FEATURE_NAMES), **asdict(evaluation)}
    target.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return target, evaluation


def ensure_model(model_dir: str | os.PathLike[str]) -> Path:
    """The newest model in ``model_dir``, training version 1 first if there is none (local runs
    and tests; production publishes its versions with ``python -m models.train``)."""
    newest = latest_model(model_dir)
    if newest is not None:
        return newest
    path, _ = train(model_dir)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", help="default: SA_MODEL_DIR")
    parser.add_argument("--version", type=int, help="default: the newest version + 1")
    parser.add_argument("--events", type=int, default=20_000, help="training events (default 20000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing when the directory already holds a version (make run)")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or Settings.from_env().model_dir
    if args.if_missing and (existing := latest_model(model_dir)) is not None:
        print(f"{existing}: present, nothing to train")
        return 0
    path, evaluation = train(model_dir, version=args.version, events=args.events, seed=args.seed,
                             epochs=args.epochs)
    print(f"{path}: precision {evaluation.precision:.3f}, recall {evaluation.recall:.3f}, "
          f"false positives {evaluation.false_positive_rate:.4f} at {evaluation.threshold} "
          f"on {evaluation.events} held-out events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
