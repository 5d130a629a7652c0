"""Benchmarks run by `make bench` (scripts/bench.sh); results go to docs/benchmarks.md.

Plain scripts (``python -m benchmarks.<name>``), not tests: nothing here asserts on speed.
"""
