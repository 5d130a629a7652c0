"""Helpers of the sink integration tests: run a sink in a real Beam pipeline, read its counters,
build sample records, and find a port nothing listens on."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult
from apache_beam.testing.util import assert_that, equal_to

from transforms.aggregates import Aggregate
from transforms.metrics import NAMESPACE
from transforms.records import DeadLetter

#: A window start inside the event contract's time range (2025-11-14 22:13:20 UTC).
T0_MS = 1_763_158_400_000


def run_sink(elements: Sequence[Any], sink: beam.PTransform, *,
             before: Callable[[Any], Any] | None = None,
             refused: Callable[[list[DeadLetter]], None] | None = None) -> PipelineResult:
    """Run ``Create(elements) [| Map(before)] | sink`` on the DirectRunner; return the finished result.

    ``before`` runs in the same fused stage as the sink, element by element: tests use it to break
    the sink's connection mid-stream. ``refused`` checks the records the sink refused (its output,
    transforms/sinks/base.py), raising AssertionError in the pipeline; without it the sink must refuse
    nothing.
    """
    pipeline = beam.Pipeline(options=PipelineOptions(["--direct_num_workers=1"]))
    records = pipeline | "Create" >> beam.Create(list(elements))
    if before is not None:
        records = records | "Before" >> beam.Map(before)
    out = records | "Sink" >> sink
    assert_that(out, refused or equal_to([]), label="Refused")
    result = pipeline.run()
    result.wait_until_finish()
    return result


def counter(result: PipelineResult, name: str) -> int:
    """Committed value of one of the pipeline's counters (0 when it never counted)."""
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    return sum(int(c.committed) for c in found)


def aggregate(key: str, pane: int, *, count: int, window: int = 0, kind: str = "fixed",
              timing: str | None = None, final: bool = False) -> Aggregate:
    """An aggregate pane whose measures follow from ``count`` (so each pane's values differ)."""
    start = T0_MS + window * 60_000
    return Aggregate(
        kind=kind, dimension="category", key=key, window_start_ms=start, window_end_ms=start + 60_000,
        pane_index=pane, timing=timing or ("EARLY" if pane == 0 else "LATE"), is_final=final,
        count=count, sum_amount=count * 2.5, mean_amount=2.5, min_amount=0.5, max_amount=9.75,
        p50=2.0, p95=8.0, p99=9.5, distinct_users=max(1, count // 2), emitted_at_ms=start + 61_000 + pane,
    )


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ReplyDroppingProxy:
    """A TCP proxy in front of the real Redis that, for chosen ``EXEC`` commands, lets Redis run the
    transaction but cuts the connection before the reply reaches the client.

    That is the one failure that turns a retried ``XADD`` batch into a duplicate (applied, never
    acknowledged), made deterministic: the n-th ``EXEC`` seen (1-based, across connections) is cut
    when n is in ``drop_exec_numbers``.
    """

    def __init__(self, upstream_port: int, drop_exec_numbers: set[int]) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._drop = set(drop_exec_numbers)
        self._execs = 0
        self._lock = threading.Lock()
        self.dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            upstream = socket.create_connection(self._upstream)
            cut = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, cut), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, cut), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, cut: threading.Event) -> None:
        while (data := _recv(client)) and not cut.is_set():
            drop = False
            with self._lock:
                for _ in range(data.count(b"EXEC\r\n")):
                    self._execs += 1
                    drop = drop or self._execs in self._drop
            if drop:
                cut.set()  # from now on the replies go nowhere
            upstream.sendall(data)
            if drop:
                time.sleep(0.2)  # Redis runs the transaction; its reply is discarded
                self.dropped += 1
                break
        _close(client, upstream)

    def _replies(self, upstream: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        while (data := _recv(upstream)) and not cut.is_set():
            try:
                client.sendall(data)
            except OSError:
                break
        if not cut.is_set():
            _close(client, upstream)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):  # already closed by the other side
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
