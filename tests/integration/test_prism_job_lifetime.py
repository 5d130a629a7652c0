"""A streaming job on Prism must outlive Beam's job server timeout.

Beam's portable runner (2.77) opens the job's state and message streams with
``--job_server_timeout`` (default 300 s) as their gRPC *deadline*, so a streaming job that runs
longer ends with ``DEADLINE_EXCEEDED`` in ``wait_until_finish``: found when ``make run`` on Prism
stopped the whole stack five minutes after every start. The first test pins Beam's behaviour with
a short timeout (if it starts failing, Beam has fixed it); the second holds our Prism options to a
deadline no local run reaches.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import grpc
import pytest
from apache_beam.coders import Coder
from apache_beam.io.unbounded_source import (
    CheckpointMark,
    ReadFromUnboundedSource,
    UnboundedReader,
    UnboundedSource,
)
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from pipelines.runners import PRISM_JOB_STREAM_DEADLINE_S, runner_args
from streaming_analytics.settings import Settings


class _Nothing(CheckpointMark):
    def finalize_checkpoint(self) -> None:
        pass


class _NothingCoder(Coder):
    def encode(self, value: Any) -> bytes:
        return b""

    def decode(self, encoded: bytes) -> Any:
        return _Nothing()

    def is_deterministic(self) -> bool:
        return True


class _QuietSource(UnboundedSource):
    """A source that never has data and never ends: a live job on a quiet topic."""

    def split(self, desired_num_splits: int, options: Any = None) -> Iterable[_QuietSource]:
        return [self]

    def create_reader(self, options: Any, checkpoint_mark: Any) -> _QuietReader:
        return _QuietReader()

    def get_checkpoint_mark_coder(self) -> Coder:
        return _NothingCoder()

    def default_output_coder(self) -> Coder:
        return beam.coders.BytesCoder()


class _QuietReader(UnboundedReader):
    def start(self) -> bool:
        return False

    def advance(self) -> bool:
        time.sleep(0.05)
        return False

    def get_current(self) -> bytes:
        raise RuntimeError("no data")

    def get_current_timestamp(self) -> Timestamp:
        return MIN_TIMESTAMP

    def get_watermark(self) -> Timestamp:
        return MIN_TIMESTAMP

    def get_checkpoint_mark(self) -> _Nothing:
        return _Nothing()

    def close(self) -> None:
        pass


def test_beams_job_server_timeout_is_the_deadline_of_a_streaming_job_on_prism(settings: Settings) -> None:
    args = [a for a in runner_args("prism", settings) if not a.startswith("--job_server_timeout=")]
    p = beam.Pipeline(options=PipelineOptions([*args, "--job_server_timeout=15"]))
    _ = p | ReadFromUnboundedSource(_QuietSource(), poll_interval=0.1) | beam.Map(len)
    result = p.run()
    started = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as failure:
            result.wait_until_finish()
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 120
    finally:
        # The job service may be gone with the streams already.
        with contextlib.suppress(Exception):
            result.cancel()


def test_our_prism_options_set_a_deadline_no_local_run_reaches(settings: Settings) -> None:
    args = runner_args("prism", settings)
    assert f"--job_server_timeout={PRISM_JOB_STREAM_DEADLINE_S}" in args
    assert PRISM_JOB_STREAM_DEADLINE_S >= 365 * 24 * 3600
