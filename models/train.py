"""Train the anomaly model on generated events and publish it as the next version.

    python -m models.train                       # into SA_MODEL_DIR, next free version
    python -m models.train --version 7 --events 50000

A running pipeline picks the new version up without a restart (it watches SA_MODEL_DIR).
"""

from __future__ import annotations

import argparse
import sys

from models.anomaly import latest_model, train
from streaming_analytics.settings import Settings


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
