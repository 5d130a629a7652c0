"""The anomaly/fraud model: its inputs, its architecture, its evaluation, and where versions live.

One place defines how an event becomes model input (:func:`model_input`), used by training and by
the pipeline's scoring step alike, so the two can never drift apart. The model is a small Keras
MLP (a ``Normalization`` layer adapted on the training data, then two dense layers and a sigmoid):
scores are in [0, 1], higher is more suspicious.

Versions are files ``anomaly-v<N>.keras`` in one directory (``SA_MODEL_DIR``). The pipeline loads
the newest at start and its workers switch to a newer one without a restart
(:mod:`models.handler`). A version is written under a temporary name and renamed into place, so a
worker never loads half a file; a version number is never reused or overwritten, so the number in
an alert's ``model_version`` always names one model. Training (on the generator's events) is
:mod:`models.train`, offline tooling the workers never import.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
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
