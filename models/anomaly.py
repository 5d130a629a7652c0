"""The anomaly/fraud model: its inputs, its architecture, training, and where versions live.

One place defines how an event becomes model input (:func:`model_input`), used by training and by
the pipeline's scoring step alike, so the two can never drift apart. The model is a small Keras
MLP (a ``Normalization`` layer adapted on the training data, then two dense layers and a sigmoid):
scores are in [0, 1], higher is more suspicious.

Versions are files ``anomaly-v<N>.keras`` in one directory (``SA_MODEL_DIR``). The pipeline loads
the newest at start and its workers switch to a newer one without a restart
(:mod:`models.handler`). A version is written under a temporary name and renamed into place, so a
worker never loads half a file; a version number is never reused or overwritten, so the number in
an alert's ``model_version`` always names one model.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from streaming_analytics.events import FEATURE_NAMES

MODEL_PREFIX: Final = "anomaly-v"
MODEL_SUFFIX: Final = ".keras"
_VERSION_RE: Final = re.compile(re.escape(MODEL_PREFIX) + r"(\d+)" + re.escape(MODEL_SUFFIX) + "$")


def model_input(features: Sequence[float]) -> np.ndarray:
    """The model's input row for one event's features (in ``FEATURE_NAMES`` order).

    ``log1p`` tames the heavy tails (account age, gaps between events, amount ratios); every
    feature is >= 0 by the event contract. Scaling is learnt by the model's Normalization layer.
    """
    return np.log1p(np.asarray(features, dtype=np.float32))


def model_path(model_dir: str | os.PathLike[str], version: int) -> Path:
    return Path(model_dir) / f"{MODEL_PREFIX}{version}{MODEL_SUFFIX}"


def version_of(path: str | os.PathLike[str]) -> int | None:
    """The version number in a model file's name (None if the name is not a model version)."""
    match = _VERSION_RE.search(os.fspath(path))
    return int(match.group(1)) if match else None


def model_version(path: str | os.PathLike[str]) -> str:
    """What alerts record as ``model_version``: ``v<N>``, or the file name if it has no number."""
    number = version_of(path)
    return f"v{number}" if number is not None else Path(path).name


def latest_model(model_dir: str | os.PathLike[str]) -> Path | None:
    """The highest version in ``model_dir`` (None when there is none)."""
    found = [(v, p) for p in Path(model_dir).glob(f"{MODEL_PREFIX}*{MODEL_SUFFIX}")
             if (v := version_of(p)) is not None]
    return max(found)[1] if found else None


def build_model(inputs: np.ndarray, *, seed: int) -> Any:
    """A fresh model whose input normalisation is adapted to ``inputs`` (rows of model_input)."""
    import keras  # imported here: TensorFlow takes ~2 s to import and most callers never train

    keras.utils.set_random_seed(seed)
    normalise = keras.layers.Normalization(name="normalise")
    normalise.adapt(inputs)
    model = keras.Sequential([
        keras.Input(shape=(len(FEATURE_NAMES),), name="features"),
        normalise,
        keras.layers.Dense(16, activation="relu", name="hidden1"),
        keras.layers.Dense(8, activation="relu", name="hidden2"),
        keras.layers.Dense(1, activation="sigmoid", name="score"),
    ], name="anomaly")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy")
    return model


@dataclass(frozen=True)
class Evaluation:
    """Quality on held-out events at the alert threshold."""

    events: int
    positives: int
    threshold: float
    precision: float
    recall: float
    false_positive_rate: float


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Evaluation:
    flagged = scores >= threshold
    positives = labels.astype(bool)
    true_pos = int(np.sum(flagged & positives))
    false_pos = int(np.sum(flagged & ~positives))
    return Evaluation(events=len(labels), positives=int(positives.sum()), threshold=threshold,
                      precision=true_pos / max(1, int(flagged.sum())),
                      recall=true_pos / max(1, int(positives.sum())),
                      false_positive_rate=false_pos / max(1, int((~positives).sum())))


def training_data(events: int, *, seed: int, anomalous: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and labels from the event generator (its ``anomalous`` kind is the positive)."""
    from streaming_analytics.generator import EventGenerator, Fractions, GeneratorConfig

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

