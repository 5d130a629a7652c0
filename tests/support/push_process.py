"""Run a real push server process for integration tests and local experiments.

:class:`PushServerProcess` starts ``python -m push_server`` exactly as production does (same entry
point, same Settings.from_env()), on a free port on 127.0.0.1, waits until /healthz answers and
stops it by signal. With ``SA_PUSH_TLS_CERT``/``SA_PUSH_TLS_KEY`` in its env it speaks TLS: ``http``
and ``ws`` are then ``https://``/``wss://`` URLs, and :meth:`PushServerProcess.client_ssl` is a
client context that trusts that (self-signed) certificate. The integration tests and
benchmarks/push_fanout.py use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import redis
from websockets.exceptions import ConnectionClosed

from devstack.stack.process import free_port
from streaming_analytics.streams import StreamEntry, stream_key


class PushServerProcess:
    """A push server subprocess; use as a context manager."""

    def __init__(self, env: Mapping[str, str], *, start_timeout: float = 20.0) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "SA_PUSH_HOST": "127.0.0.1", "SA_PUSH_PORT": str(self.port)}
        self._start_timeout = start_timeout
        self._log = tempfile.NamedTemporaryFile(prefix="push-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None
        cert, key = self.env.get("SA_PUSH_TLS_CERT", ""), self.env.get("SA_PUSH_TLS_KEY", "")
        self.tls_cert = cert if cert and key else None  # the server serves TLS only with both

    @property
    def http(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"{'wss' if self.tls_cert else 'ws'}://127.0.0.1:{self.port}/ws"

    def client_ssl(self) -> ssl.SSLContext | None:
        """A client TLS context trusting the server's certificate (None without TLS)."""
        if self.tls_cert is None:
            return None
        return ssl.create_default_context(cafile=self.tls_cert)

    def start(self) -> PushServerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "push_server"], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"push server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.get("/healthz")[0] == 200:
                    return self
            time.sleep(0.1)
        output = self.log()  # read before stop() removes the file
        self.stop()
        raise RuntimeError(f"push server did not become healthy:\n{output}")

    def get(self, path: str) -> tuple[int, str]:
        """Status and body of a GET on the server's HTTP side."""
        try:
            with urllib.request.urlopen(self.http + path, timeout=5,  # noqa: S310 - local
                                        context=self.client_ssl()) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """Current value of one sample of /metrics (0.0 when absent)."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful drain) and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)

    def __enter__(self) -> PushServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            sys.stderr.write(f"--- push server log ---\n{self.log()}\n")
        self.stop()


# --- client-side helpers ---------------------------------------------------------------------------

async def recv_json(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    """Next message of a ``websockets`` client connection, decoded."""
    raw = await asyncio.wait_for(ws.recv(), timeout)
    doc: dict[str, Any] = orjson.loads(raw)
    return doc


async def send_json(ws: Any, doc: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(doc).decode())


async def close_code(ws: Any, timeout: float = 10.0) -> int | None:
    """Read until the server closes; the close code it sent (None: closed without a code)."""
    async def drain() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()

    await asyncio.wait_for(drain(), timeout)
    return ws.close_code  # type: ignore[no-any-return]


def xadd(client: redis.Redis, prefix: str, channel: str, entries: list[StreamEntry],
         *, maxlen: int | None = None) -> list[str]:
    """Write entries exactly as the pipeline does (contract fields), pipelined; returns their ids."""
    pipe = client.pipeline(transaction=False)
    key = stream_key(prefix, channel)
    for entry in entries:
        pipe.xadd(key, entry.to_fields(), maxlen=maxlen, approximate=False)  # type: ignore[arg-type]
    return [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]
