"""What the lifecycle tooling talks about: releases of the job, the versions a savepoint binds to,
savepoint records and the job's status. Plain data, shared by both backends, the catalogue, the
watch and the CLI.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import apache_beam

#: The minor version of Flink whose runner we build (tools/java/flink-runner), and that runner's
#: Beam version. A savepoint binds to both: Flink's state formats and Beam's state coders.
FLINK_MINOR: Final = "1.19"
BEAM_RUNNER_VERSION: Final = "2.62.0"

SavepointKind = Literal["manual", "upgrade", "stop", "periodic", "rollback"]


@dataclass(frozen=True)
class Versions:
    """The versions a savepoint's state depends on: Flink (minor), Beam's Java runner (which
    serializes the operators' state) and the Python SDK (whose coders encode the state cells)."""

    flink: str
    beam_runner: str
    beam_sdk: str

    @classmethod
    def of_this_build(cls) -> Versions:
        return cls(flink=FLINK_MINOR, beam_runner=BEAM_RUNNER_VERSION, beam_sdk=apache_beam.__version__)

    def differences(self, other: Versions) -> list[str]:
        """What differs from ``other``, as ``"flink 1.18 != 1.19"`` lines (empty when compatible)."""
        return [f"{name} {mine} != {theirs}" for name, mine, theirs in
                (("flink", self.flink, other.flink), ("beam runner", self.beam_runner, other.beam_runner),
                 ("beam sdk", self.beam_sdk, other.beam_sdk)) if mine != theirs]


@dataclass(frozen=True)
class Release:
    """One release of the job: what to run, under a name on-call engineers recognise.

    ``name``: the release (a version or git revision). ``jar``: the portable job jar (local backend;
    it carries the pipeline and its options). ``image`` and ``args``: the container image and job
    arguments (kubernetes backend). ``model_version``: the model the release scores with.
    ``stateful_steps``: the job's stateful operators, Flink UID → what it holds (what a savepoint
    binds state to; pipelines/lifecycle/compat.py)."""

    name: str
    jar: str | None = None
    image: str | None = None
    args: tuple[str, ...] = ()
    model_version: str | None = None
    stateful_steps: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "args": list(self.args)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Release:
        return cls(name=str(data["name"]), jar=data.get("jar"), image=data.get("image"),
                   args=tuple(data.get("args", ())), model_version=data.get("model_version"),
                   stateful_steps=dict(data.get("stateful_steps") or {}))


@dataclass(frozen=True)
class SavepointRecord:
    """A savepoint in the catalogue: where it is, which release and versions took it, when, why,
    and the Kafka offsets the job's group had committed right after it completed (``partition ->
    next offset``): the Kafka read commits a completed savepoint's offsets, so these are the
    savepoint's own — or, when a checkpoint of the still running job completed in between, a
    little later ones. An upgrade's savepoint records those committed just before it (the new
    release commits its own right after): at most one checkpoint interval behind. Empty when
    Kafka was out of the CLI's reach."""

    path: str
    release: str
    versions: Versions
    kind: SavepointKind
    taken_at_ms: int
    job_id: str | None = None
    model_version: str | None = None
    kafka_offsets: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SavepointRecord:
        return cls(path=str(data["path"]), release=str(data["release"]),
                   versions=Versions(**data["versions"]), kind=data["kind"],
                   taken_at_ms=int(data["taken_at_ms"]), job_id=data.get("job_id"),
                   model_version=data.get("model_version"),
                   kafka_offsets={str(k): int(v) for k, v in (data.get("kafka_offsets") or {}).items()})


@dataclass(frozen=True)
class JobStatus:
    """The job as a backend sees it. ``state``: Flink's job state (``RUNNING``, ``FAILED``, ...) or
    ``MISSING`` when no job of ours is deployed; ``release``: the release deployed; checkpoint
    counts, the newest completed checkpoint's end time (ms), when the job started (ms) and its
    restarts, when known."""

    state: str
    release: str | None = None
    job_id: str | None = None
    checkpoints_completed: int = 0
    checkpoints_failed: int = 0
    last_checkpoint_ms: int | None = None
    started_ms: int | None = None
    restarts: int | None = None
    detail: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


def now_ms() -> int:
    return int(time.time() * 1000)
