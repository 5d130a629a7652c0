"""The platform's PostgreSQL schema: versioned SQL migrations and the runner that applies them.

Run ``python -m streaming_analytics.db.migrate`` (idempotent) before the pipeline writes; the sinks
in ``transforms/sinks/postgres.py`` assume the tables exist and never create them.
"""
