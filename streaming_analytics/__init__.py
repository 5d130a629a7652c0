"""Shared core of the streaming-analytics platform: the contracts every other package builds on —
configuration (``settings``), the event contract (``events``, ``schemas/``), the Redis stream
contract (``streams``) and the Postgres schema and its migrations (``db``).

It imports nothing of ours: the pipeline, the push server and the tooling depend on it, never the
other way round (docs/architecture.md, "Layers"; tests/unit/test_layers.py). The local stack, the
event generator and the test sandbox are tooling and live in ``devstack``.
"""
