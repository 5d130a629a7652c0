"""Local-development tooling: everything that runs the platform on one machine and feeds it, none of
which ships to production.

- ``stack`` — the local stack manager (``python -m devstack.stack up|run|down|status|logs|env``):
  Kafka, PostgreSQL, Redis, Flink and the platform's own processes on 127.0.0.1.
- ``generator`` — the reproducible event workload with controllable bad input
  (``python -m devstack.generator``); also the training data of ``models.train``.
- ``kafka_topics`` — create the platform's topics, and say clearly when one is missing.
- ``sandbox`` — a private namespace (topics, schema, streams, consumer group) for one run of the
  job beside ``make run``: tests and benchmarks.

It sits above every production package and may import any of them (the stack starts the pipeline
through ``pipelines.runners``); no production package imports it (tests/unit/test_layers.py).
"""
