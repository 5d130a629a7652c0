"""Push fan-out benchmark: our push server against Centrifugo, side by side in one run.

    python -m benchmarks.push_fanout --clients 1000 5000 --rate 2 10 --seconds 10 \\
        --idle-clients 10000 --doc docs/benchmarks.md

Why it is built this way:

* **Same ingestion path for both servers.** The pipeline XADDs stream entries to Redis and the
  push server relays them. Centrifugo is configured with its ``redis_stream`` consumer in
  publication-data mode, so it too reads the published payloads from a Redis stream (its own
  consumer group, ``XREADGROUP`` + ``XACK``), keeps history in its memory engine (a namespace with
  ``history_size``/``force_recovery``: the equivalent of our ``since`` recovery) and fans out in
  memory. Publishing through Centrifugo's HTTP API instead would bill Centrifugo for request
  parsing that our server never does; the Redis engine would add a PUB/SUB round trip ours does
  not have. Both get HS256 JWTs with one ``sub`` per connection and subscribe from the client.
* **A load generator that is not the bottleneck**: ``benchmarks/go/loadgen`` (Go, one goroutine
  per connection, no JSON decoding on the hot path). Its CPU is measured and reported next to the
  servers', so a reader can see when the 2-core machine, not the server, was the limit.
* **Per-core numbers**: on 2 cores, Centrifugo (Go) can use both while our server is one Python
  process (one process per core is how it scales). Deliveries per server CPU-second, from
  ``/proc/<pid>/stat``, is the comparison the goal (≥ 1.0x Centrifugo per core) is about.
* **Latency** is end to end: the publisher puts ``bench_ts`` (wall-clock ns) into each payload
  right before XADD; the load generator subtracts it from the receive time (same host clock).
* **Idle memory**: a fresh server, RSS before and after N idle (connected and subscribed)
  connections, delta / N.

Servers run one at a time (never both at once) so they never compete for the two cores. All load
goes to 127.0.0.1; every phase is bounded in count and time; stream keys carry a unique prefix
and are deleted at the end. Nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import redis

from benchmarks.common import cpu_seconds, machine, machine_busy_seconds, replace_section, rss_bytes, today
from devstack.stack.process import free_port
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNEL_FIXED, StreamEntry, stream_key, window_key
from tests.support.push_process import PushServerProcess

ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = Path(os.environ.get("SA_TOOLS_DIR", ROOT / ".local")) / "bin"
LOADGEN = TOOLS_BIN / "push-loadgen"
CENTRIFUGO = TOOLS_BIN / "centrifugo"
CENTRIFUGO_CHANNEL = "bench:fanout"
CENTRIFUGO_GROUP = "centrifugo-bench"
BENCH_SECRET = "bench-only-hmac-secret-" + uuid.uuid4().hex  # per run, local only
SECTION = "Push fan-out"

PHASE_WARMUP = 0  # then one phase per fixed rate, then the max-rate phase (loadgen: < 8 phases)


# --- servers under test ----------------------------------------------------------------------------

@dataclass
class Target:
    """A running server under test and how to talk to it."""

    name: str
    pid: int
    proto: str  # the load generator's -proto
    ws_url: str
    channel: str
    stream: str  # the Redis stream it relays
    fields: Callable[[StreamEntry], dict[str, bytes]]  # stream entry -> XADD fields


def _ours_fields(entry: StreamEntry) -> dict[str, bytes]:
    return entry.to_fields()


def _centrifugo_fields(entry: StreamEntry) -> dict[str, bytes]:
    # The same information our clients get (key, pane, timing, final, data), so frames are alike.
    payload = {"key": entry.key, "pane": entry.pane, "timing": entry.timing, "final": entry.final,
               "data": entry.data}
    return {"payload": orjson.dumps(payload), "centrifugo-channels": CENTRIFUGO_CHANNEL.encode()}


@contextlib.contextmanager
def ours(settings: Settings, prefix: str) -> Iterator[Target]:
    """Our push server as production starts it (``python -m push_server``), its own port."""
    env = {
        "SA_REDIS_URL": settings.redis_url,
        "SA_REDIS_STREAM_PREFIX": prefix,
        "SA_JWT_SECRET": BENCH_SECRET,
        "SA_PUSH_HISTORY": "none",  # recovery from Redis only; Postgres is not what is measured
        "SA_PUSH_MAX_CONNECTIONS": "20000",
    }
    with PushServerProcess(env) as server:
        assert server.proc is not None
        yield Target("ours", server.proc.pid, "ours", server.ws, CHANNEL_FIXED,
                     stream_key(prefix, CHANNEL_FIXED), _ours_fields)


@contextlib.contextmanager
def centrifugo(settings: Settings, prefix: str, client: redis.Redis) -> Iterator[Target]:
    """Centrifugo with the equivalent setup (see the module docstring), its own port."""
    if not CENTRIFUGO.exists():
        raise SystemExit(f"{CENTRIFUGO} missing: run scripts/install-bench.sh")
    port = free_port()
    stream = f"{prefix}centrifugo"
    # Create the consumer group ourselves, at the stream's end, so that no published entry can
    # precede it (Centrifugo would create it lazily).
    client.xgroup_create(stream, CENTRIFUGO_GROUP, id="$", mkstream=True)
    config = {
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "info"},
        "usage_stats": {"disabled": True},
        "health": {"enabled": True},
        "client": {"token": {"hmac_secret_key": BENCH_SECRET}, "allowed_origins": ["*"]},
        "channel": {"namespaces": [{
            "name": "bench", "allow_subscribe_for_client": True, "history_size": 1000,
            "history_ttl": "300s", "force_recovery": True,
        }]},
        "consumers": [{
            "name": "bench", "enabled": True, "type": "redis_stream",
            "redis_stream": {
                "address": [settings.redis_url], "streams": [stream],
                "consumer_group": CENTRIFUGO_GROUP, "num_workers": 1,  # 1 keeps publication order
                "publication_data_mode": {"enabled": True, "channels_value": "centrifugo-channels"},
            },
        }],
    }
    workdir = Path(tempfile.mkdtemp(prefix="centrifugo-bench-"))
    (workdir / "config.json").write_text(json.dumps(config))
    log = (workdir / "centrifugo.log").open("wb")
    proc = subprocess.Popen([str(CENTRIFUGO), "--config", str(workdir / "config.json")], cwd=workdir,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"centrifugo exited:\n{(workdir / 'centrifugo.log').read_text()}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("centrifugo did not become healthy")
            time.sleep(0.1)
        yield Target("centrifugo", proc.pid, "centrifugo", f"ws://127.0.0.1:{port}/connection/websocket",
                     CENTRIFUGO_CHANNEL, stream, _centrifugo_fields)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --- the load generator ----------------------------------------------------------------------------

class Loader:
    """One ``push-loadgen`` process: K connections to one target, driven over stdin/stdout."""

    def __init__(self, target: Target, clients: int, settings: Settings) -> None:
        if not LOADGEN.exists():
            raise SystemExit(f"{LOADGEN} missing: run scripts/install-bench.sh")
        argv = [str(LOADGEN), "-proto", target.proto, "-url", target.ws_url, "-channel", target.channel,
                "-clients", str(clients), "-secret", BENCH_SECRET, "-aud", settings.jwt_audience,
                "-iss", settings.jwt_issuer]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            with contextlib.suppress(ValueError):
                self._events.put(json.loads(line))
        self._events.put({"event": "eof"})

    def event(self, timeout: float) -> dict[str, Any]:
        """The next event line; raises when the load generator is silent for ``timeout`` s."""
        try:
            doc = self._events.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"load generator silent for {timeout:.0f}s") from None
        if doc.get("event") in {"eof", "error"}:
            raise RuntimeError(f"load generator: {doc}")
        return doc

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, phase: int, per_client: int, timeout: float) -> dict[str, Any]:
        self.command(f"wait {phase} {per_client} {timeout}")
        return self.event(timeout + 30)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):
                self.command("quit")
                self.event(20)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- publishing ------------------------------------------------------------------------------------

def _entry(phase: int, seq: int) -> StreamEntry:
    """An aggregate-shaped entry (~250 bytes of data), stamped with the publish time."""
    start = 1_767_225_600_000 + 60_000 * (seq // 10)
    data = {"kind": "fixed", "dimension": "country", "dimension_key": "DE", "window_start": start,
            "window_end": start + 60_000, "count": 1000 + seq, "sum": 52_311.25, "min": 0.5,
            "max": 999.75, "mean": 52.31, "bench_phase": phase, "seq": seq,
            "bench_ts": time.time_ns()}
    return StreamEntry(key=window_key("fixed", "country", "DE", start, start + 60_000), pane=seq,
                       timing="EARLY", final=False, data=data)


def publish(client: redis.Redis, target: Target, phase: int, count: int, *, rate: float | None,
            maxlen: int) -> None:
    """XADD ``count`` entries at ``rate`` per second (one XADD each), or as fast as possible
    (``rate`` None: pipelines of 100, like the pipeline's batched sink)."""
    if rate is None:
        for first in range(0, count, 100):
            pipe = client.pipeline(transaction=False)
            for seq in range(first, min(count, first + 100)):
                pipe.xadd(target.stream, target.fields(_entry(phase, seq)),  # type: ignore[arg-type]
                          maxlen=maxlen, approximate=True)
            pipe.execute()
        return
    started = time.perf_counter()
    for seq in range(count):
        delay = started + seq / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.xadd(target.stream, target.fields(_entry(phase, seq)),  # type: ignore[arg-type]
                    maxlen=maxlen, approximate=True)


def redis_cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --- measurements ----------------------------------------------------------------------------------

@dataclass
class PhaseResult:
    """One load phase against one server."""

    server: str
    clients: int
    mode: str  # "fixed <rate>/s" or "max"
    messages: int
    offered_rate: float | None
    delivered: int
    expected: int
    duration_s: float
    delivered_per_s: float
    server_cpu_s: float
    server_cores: float
    per_cpu_s: float  # deliveries per server CPU-second
    loader_cores: float
    redis_cores: float
    other_cores: float  # everything else busy on the machine meanwhile (publisher, neighbours)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    disconnected: int
    close_codes: dict[str, int] = field(default_factory=dict)


@dataclass
class IdleResult:
    """RSS cost of idle connections on a fresh server."""

    server: str
    connections: int
    rss_before_mib: float
    rss_after_mib: float
    per_connection_kib: float
    idle_cores: float
    connect_s: float


def run_phase(client: redis.Redis, target: Target, loader: Loader, *, phase: int, clients: int,
              messages: int, rate: float | None, maxlen: int) -> PhaseResult:
    mode = "max" if rate is None else f"fixed {rate:g}/s"
    cpu0, lcpu0, rcpu0 = cpu_seconds(target.pid), cpu_seconds(loader.pid), redis_cpu(client)
    busy0 = machine_busy_seconds()
    t0, t0_ns = time.monotonic(), time.time_ns()
    publish(client, target, phase, messages, rate=rate, maxlen=maxlen)
    report = loader.wait(phase, messages, timeout=120.0)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(target.pid) - cpu0
    lcpu, rcpu = cpu_seconds(loader.pid) - lcpu0, redis_cpu(client) - rcpu0
    other = max(0.0, machine_busy_seconds() - busy0 - cpu - lcpu - rcpu)
    last = report["last_recv_ns"] or time.time_ns()
    duration = max(1e-6, (last - t0_ns) / 1e9)
    delivered = int(report["delivered"])
    return PhaseResult(
        server=target.name, clients=clients, mode=mode, messages=messages, offered_rate=rate,
        delivered=delivered, expected=int(report["expected"]), duration_s=round(duration, 3),
        delivered_per_s=round(delivered / duration), server_cpu_s=round(cpu, 2),
        server_cores=round(cpu / wall, 2), per_cpu_s=round(delivered / cpu) if cpu > 0 else 0,
        loader_cores=round(lcpu / wall, 2), redis_cores=round(rcpu / wall, 2),
        other_cores=round(other / wall, 2),
        p50_ms=report["p50_ms"], p95_ms=report["p95_ms"], p99_ms=report["p99_ms"],
        max_ms=report["max_ms"], disconnected=int(report["disconnected"]),
        close_codes={str(k): int(v) for k, v in report["close_codes"].items()},
    )


def run_load(client: redis.Redis, target: Target, settings: Settings, clients: int,
             args: argparse.Namespace) -> list[PhaseResult]:
    """K subscribers: a warm-up, a fixed-rate phase and a max-rate phase on the same connections."""
    loader = Loader(target, clients, settings)
    try:
        ready = loader.event(timeout=180)
        log(f"  {target.name}: {ready['connected']}/{clients} subscribed in {ready['connect_s']:.1f}s"
            + (f" ({ready['failed']} failed: {ready['errors'][:1]})" if ready["failed"] else ""))
        publish(client, target, PHASE_WARMUP, 3, rate=10.0, maxlen=settings.redis_stream_maxlen)
        warm = loader.wait(PHASE_WARMUP, 3, timeout=20.0)
        if warm["delivered"] < warm["expected"]:
            log(f"  warning: warm-up delivered {warm['delivered']}/{warm['expected']}")
        burst = args.burst_messages or max(20, args.burst_deliveries // clients)
        loads: list[tuple[int, float | None]] = [
            (args.messages or max(1, round(rate * args.seconds)), rate) for rate in args.rate]
        loads.append((burst, None))
        results = [run_phase(client, target, loader, phase=phase, clients=clients, messages=messages,
                             rate=rate, maxlen=settings.redis_stream_maxlen)
                   for phase, (messages, rate) in enumerate(loads, start=1)]
        for r in results:
            log(f"  {target.name} {clients} {r.mode}: {r.delivered}/{r.expected} delivered, "
                f"{r.delivered_per_s}/s, server {r.server_cores} cores, {r.per_cpu_s}/CPU-s, "
                f"p50/p95/p99 {r.p50_ms}/{r.p95_ms}/{r.p99_ms} ms, loader {r.loader_cores} cores, "
                f"other {r.other_cores} cores, "
                f"disconnected {r.disconnected} {r.close_codes or ''}")
        return results
    finally:
        loader.close()
        time.sleep(1.0)  # let the server finish closing those connections before the next step


def run_idle(target: Target, settings: Settings, connections: int) -> IdleResult:
    """RSS per idle connection: a fresh server, N connected + subscribed clients, no traffic."""
    time.sleep(1.0)
    before = rss_bytes(target.pid)
    loader = Loader(target, connections, settings)
    try:
        ready = loader.event(timeout=300)
        time.sleep(3.0)  # let the allocator and Go's GC settle
        cpu0, t0 = cpu_seconds(target.pid), time.monotonic()
        time.sleep(2.0)
        idle_cores = (cpu_seconds(target.pid) - cpu0) / (time.monotonic() - t0)
        after = rss_bytes(target.pid)
    finally:
        loader.close()
    n = int(ready["connected"])
    result = IdleResult(server=target.name, connections=n, rss_before_mib=round(before / 2**20, 1),
                        rss_after_mib=round(after / 2**20, 1),
                        per_connection_kib=round((after - before) / max(1, n) / 1024, 1),
                        idle_cores=round(idle_cores, 3), connect_s=round(float(ready["connect_s"]), 1))
    log(f"  {target.name}: {n} idle connections, RSS {result.rss_before_mib} -> {result.rss_after_mib} MiB, "
        f"{result.per_connection_kib} KiB each ({ready['failed']} failed)")
    return result


# --- report ----------------------------------------------------------------------------------------

def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def render(phases: list[PhaseResult], idle: list[IdleResult], command: str, args: argparse.Namespace,
           elapsed_s: float) -> str:
    """The docs/benchmarks.md section: setup, raw numbers, ratios vs Centrifugo, goals."""
    m = machine()
    fixed_text = f"{args.messages}" if args.messages else f"{args.seconds:g} s worth of"
    burst_text = (f"{args.burst_messages}" if args.burst_messages
                  else f"{args.burst_deliveries:,} / clients")
    lines = [
        f"Last run: {today()} — {m.describe()}. Took {elapsed_s / 60:.1f} min.",
        "",
        f"Command: `{command}` (run by `make bench` → scripts/bench.sh).",
        "",
        "Setup: our server (`python -m push_server`, one process) and Centrifugo v6.9.1 (built from the",
        "Go module proxy by scripts/install-bench.sh, memory engine, namespace with `history_size` and",
        "`force_recovery`) each relay a Redis stream the benchmark XADDs aggregate-shaped entries to",
        "(Centrifugo through its `redis_stream` consumer in publication-data mode). Each scenario",
        "starts a fresh server; the two never run at the same time, and which goes first alternates.",
        "Clients: `benchmarks/go/loadgen` (Go), an HS256 JWT and a client-side subscribe per",
        "connection. Latency = receive time - publish time stamped into the payload.",
        "",
        f"- *fixed N/s*: {fixed_text} messages XADDed one by one at N per second; every",
        "  subscriber gets every message, so deliveries/s = N x clients.",
        f"- *max*: {burst_text} messages XADDed as fast as possible (pipelines of 100);",
        "  delivered/s = deliveries / (last delivery - first publish). Its latencies are the queueing",
        "  time of a burst, not a service level; the p99 goal applies to the fixed rates.",
        "- *per CPU-s*: deliveries per CPU-second of the server process (utime + stime from",
        "  `/proc/<pid>/stat`), the per-core comparison. Unlike delivered/s and latency it does not",
        "  depend on what else runs on the machine.",
        "- *loader CPU*: the load generator, in cores. *other CPU*: everything else busy on the",
        "  machine meanwhile (from `/proc/stat`, minus server, loader and Redis): the publisher and",
        "  any neighbouring work. On a shared 2-core machine, wall-clock numbers move with it.",
        "",
        "| clients | load | server | delivered | delivered/s | server CPU (cores) | per CPU-s | "
        "p50 ms | p95 ms | p99 ms | max ms | loader CPU | other CPU | disconnects |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in phases:
        codes = ", ".join(f"{k}: {v}" for k, v in r.close_codes.items())
        disconnects = f"{r.disconnected} ({codes})" if codes else str(r.disconnected)
        lines.append(
            f"| {r.clients} | {r.mode} | {r.server} | {r.delivered}/{r.expected} | {r.delivered_per_s:,} | "
            f"{r.server_cores} | {r.per_cpu_s:,} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} | "
            f"{r.max_ms:.1f} | {r.loader_cores} | {r.other_cores} | {disconnects} |")
    lines += ["", "Ours vs Centrifugo (> 1 is better for us on throughput; < 1 is better for us on "
              "latency and memory):", "",
              "| clients | load | delivered/s | per CPU-s | p50 | p99 |", "|---:|---|---:|---:|---:|---:|"]
    by_key = {(r.server, r.clients, r.mode): r for r in phases}
    for r in phases:
        c = by_key.get(("centrifugo", r.clients, r.mode))
        if r.server != "ours" or c is None:
            continue
        lines.append(f"| {r.clients} | {r.mode} | {_ratio(r.delivered_per_s, c.delivered_per_s)} | "
                     f"{_ratio(r.per_cpu_s, c.per_cpu_s)} | {_ratio(r.p50_ms, c.p50_ms)} | "
                     f"{_ratio(r.p99_ms, c.p99_ms)} |")
    if idle:
        lines += ["", "Idle connections (fresh server, connected and subscribed, no traffic; RSS after 3 s "
                  "of quiet; Centrifugo with Go's default GOGC and no GOMEMLIMIT):", "",
                  "| server | connections | RSS before MiB | RSS after MiB | KiB per connection | "
                  "idle CPU (cores) |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {i.server} | {i.connections} | {i.rss_before_mib} | {i.rss_after_mib} | "
                  f"{i.per_connection_kib} | {i.idle_cores} |" for i in idle]
        idle_by = {i.server: i for i in idle}
        if "ours" in idle_by and "centrifugo" in idle_by:
            ratio = _ratio(idle_by["ours"].per_connection_kib, idle_by["centrifugo"].per_connection_kib)
            lines.append(f"\nMemory per idle connection, ours vs Centrifugo: {ratio}.")
    lines += ["", *goals(phases, idle)]
    return "\n".join(lines)


def goals(phases: list[PhaseResult], idle: list[IdleResult]) -> list[str]:
    """The issue's goals, checked against this run's numbers (reported, never asserted)."""
    out = ["Goals (issue 4):", ""]
    by_key = {(r.server, r.clients, r.mode): r for r in phases}
    for r in phases:
        if r.server != "ours":
            continue
        c = by_key.get(("centrifugo", r.clients, r.mode))
        if c is not None and c.per_cpu_s:
            ratio = r.per_cpu_s / c.per_cpu_s
            out.append(f"- {r.clients} clients, {r.mode}: per core {ratio:.2f}x Centrifugo "
                       f"(goal ≥ 1.0x): {'met' if ratio >= 1.0 else 'NOT met'}")
        if r.mode.startswith("fixed"):
            out.append(f"- {r.clients} clients, {r.mode}: p99 {r.p99_ms:.1f} ms (goal ≤ 100 ms): "
                       f"{'met' if r.p99_ms <= 100 and r.delivered == r.expected else 'NOT met'}")
    for i in idle:
        if i.server == "ours":
            out.append(f"- {i.connections} idle connections: {i.per_connection_kib} KiB each "
                       f"(goal ≤ 30 KB = 29.3 KiB): {'met' if i.per_connection_kib <= 29.3 else 'NOT met'}")
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 5000],
                        help="subscriber counts, one load run each (default: 1000 5000)")
    parser.add_argument("--rate", type=float, nargs="+", default=[2.0, 10.0],
                        help="messages/s of the fixed-rate phases, one phase each (default: 2 10)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each fixed-rate phase")
    parser.add_argument("--messages", type=int, default=0,
                        help="messages per fixed-rate phase (default: rate x seconds)")
    parser.add_argument("--burst-messages", type=int, default=0,
                        help="messages of the max-rate phase (default: burst-deliveries / clients)")
    parser.add_argument("--burst-deliveries", type=int, default=500_000,
                        help="deliveries the max-rate phase aims at when --burst-messages is 0")
    parser.add_argument("--idle-clients", type=int, default=10_000, help="0 skips the idle-memory run")
    parser.add_argument("--servers", default="ours,centrifugo", help="comma-separated: ours, centrifugo")
    parser.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "push_fanout.json")
    parser.add_argument("--doc", type=Path, help="write the results section into this markdown file")
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    command = "python -m benchmarks.push_fanout " + " ".join(argv if argv is not None else sys.argv[1:])

    settings = Settings.from_env()
    client = redis.Redis.from_url(settings.redis_url)
    client.ping()
    prefix = f"bench:{uuid.uuid4().hex[:12]}:"
    started = time.monotonic()
    phases: list[PhaseResult] = []
    idle: list[IdleResult] = []

    def start(name: str) -> contextlib.AbstractContextManager[Target]:
        if name == "ours":
            return ours(settings, prefix)
        if name == "centrifugo":
            return centrifugo(settings, f"{prefix}{uuid.uuid4().hex[:6]}:", client)
        raise SystemExit(f"unknown server {name!r}")

    # Scenario by scenario, each server fresh, alternating which goes first: on a shared machine
    # the background load drifts, and interleaving spreads that drift over both servers alike.
    try:
        for number, clients in enumerate(args.clients):
            for name in servers if number % 2 == 0 else servers[::-1]:
                log(f"== {name}: fan-out to {clients} clients")
                with start(name) as target:
                    phases += run_load(client, target, settings, clients, args)
        if args.idle_clients:
            for name in servers:
                log(f"== {name}: {args.idle_clients} idle connections")
                with start(name) as target:
                    idle.append(run_idle(target, settings, args.idle_clients))
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    elapsed = time.monotonic() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"date": today(), "machine": asdict(machine()), "command": command,
                                     "phases": [asdict(p) for p in phases],
                                     "idle": [asdict(i) for i in idle]}, indent=2))
    section = render(phases, idle, command, args, elapsed)
    print(section)
    if args.doc is not None:
        replace_section(args.doc, SECTION, section)
        log(f"wrote the {SECTION!r} section of {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
