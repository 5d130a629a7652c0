"""Will a release restore the state of the previous one? The stateful operators of a job graph and
the Flink operator UIDs their state is bound to, read from the pipeline itself.

A Flink savepoint maps each operator's state to the operator's UID. Beam's Flink runner
(``FlinkStreamingPortablePipelineTranslator``, 2.62) assigns them as follows, and so does this
module:

* a source (``beam:transform:read:v1``, our Java Kafka read: the partitions' offsets and the
  reader's watermark) and a ``GroupByKey`` (the windows' panes, triggers and holds): the
  transform's unique name, i.e. its step label;
* a stateful ``ParDo`` (keyed state and timers, e.g. ``DropSeenIdsPerShard``): it runs in an SDK
  harness stage whose UID is ``<the stage's input PCollection's unique name>/<environment URN>``
  (``FusedPipeline``) — so renaming the *step before* it orphans its state too. The fuser starts a
  new stage at every stateful ParDo, so its input is the stage's input.

A release orphans state when a UID of the previous release is missing from its graph (Flink
refuses the savepoint unless ``allowNonRestoredState``, which drops that state), or when a state
cell or timer of a stateful ParDo is gone (Flink restores it, nothing reads it). Adding stateful
steps is fine: they start empty.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from apache_beam.portability.api import beam_runner_api_pb2
from google.protobuf import json_format

_READ: Final = "beam:transform:read:v1"
_GBK: Final = "beam:transform:group_by_key:v1"
_PARDO: Final = "beam:transform:pardo:v1"
#: Where a job jar keeps its pipeline (Beam's portable jar layout, pipelines/job_jar.py).
JAR_PIPELINE: Final = "BEAM-PIPELINE/pipeline/pipeline.json"

#: Flink operator UID → what it holds (the step's label; for a stateful ParDo, also its state cells
#: and timer families, ``"label [ids, meta, ts-expiry]"``).
StatefulSteps = dict[str, str]


def stateful_steps(pipeline: beam_runner_api_pb2.Pipeline) -> StatefulSteps:
    """The stateful operators of ``pipeline`` by the UID Flink binds their state to."""
    components = pipeline.components
    steps: StatefulSteps = {}
    for transform in components.transforms.values():
        urn = transform.spec.urn
        if urn in (_READ, _GBK) and not transform.subtransforms:
            steps[transform.unique_name] = transform.unique_name
        elif urn == _PARDO:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            cells = sorted([*payload.state_specs, *payload.timer_family_specs])
            if not cells:
                continue
            main = next(pc for tag, pc in transform.inputs.items() if tag not in payload.side_inputs)
            environment = components.environments[transform.environment_id].urn
            uid = f"{components.pcollections[main].unique_name}/{environment}"
            steps[uid] = f"{transform.unique_name} [{', '.join(cells)}]"
    return steps


def job_jar_pipeline(jar: Path) -> beam_runner_api_pb2.Pipeline:
    """The pipeline a portable job jar runs."""
    with zipfile.ZipFile(jar) as z:
        text = z.read(JAR_PIPELINE).decode()
    pipeline = beam_runner_api_pb2.Pipeline()
    json_format.Parse(text, pipeline, ignore_unknown_fields=True)
    return pipeline


def orphaned(previous: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """What ``current`` would orphan of the state ``previous`` holds, one line per operator (empty
    when every operator's state is restored and read)."""
    problems = []
    for uid, held in sorted(previous.items()):
        if uid not in current:
            problems.append(f"{uid}: no operator of the new release has this UID; its state "
                            f"({held}) would be dropped")
            continue
        cells = _cells(held)
        gone = sorted(cells - _cells(current[uid]))
        if gone:
            problems.append(f"{uid}: state cells {', '.join(gone)} of {held} are gone in the new release")
    return problems


def _cells(description: str) -> set[str]:
    if not description.endswith("]") or " [" not in description:
        return set()
    return set(description[description.rindex(" [") + 2:-1].split(", "))


def load(path: Path) -> StatefulSteps:
    """A recorded set of stateful steps (``{"uid": "what it holds"}``)."""
    data = json.loads(path.read_text())
    return {str(k): str(v) for k, v in data["stateful_steps"].items()}


def dump(steps: Mapping[str, str], path: Path, release: str) -> None:
    path.write_text(json.dumps({"release": release, "stateful_steps": dict(sorted(steps.items()))},
                               indent=2) + "\n")
