"""The lifecycle backend on Kubernetes: the job as a FlinkDeployment of the Flink Kubernetes operator
(1.10 or newer, ``flink.apache.org/v1beta1``), driven through the Kubernetes API with the official
``kubernetes`` client. The operator does the work; this module writes the spec it acts on and reads
back what it did from the resource's status (docs/operations.md, "Lifecycle on Kubernetes").

- **deploy**: creates the FlinkDeployment from ``flink-operator/flinkdeployment.yaml`` (the
  production shape) with the release's image, job arguments and jar, ``job.state: running``,
  ``upgradeMode: savepoint``, ``allowNonRestoredState`` explicit and ``initialSavepointPath`` when a
  savepoint is given; an existing, stopped FlinkDeployment is patched instead (a savepoint then
  also bumps ``savepointRedeployNonce``: the operator reads ``initialSavepointPath`` only at the
  first deployment or on a nonce change).
- **upgrade**: one merge patch of the release fields; the operator stops the job with a savepoint,
  records it in ``status.jobStatus.upgradeSavepointPath`` and starts the new spec from it.
- **rollback**: the old release's fields, ``initialSavepointPath`` and ``savepointRedeployNonce`` + 1
  in one patch: the operator cancels the job without a savepoint and starts from that path.
- **savepoint**: a FlinkStateSnapshot (like ``flink-operator/savepoint.yaml``), done when its
  ``status.state`` is COMPLETED (``status.path``); with ``stop``, ``job.state: suspended`` with
  ``upgradeMode: savepoint`` and the path from ``upgradeSavepointPath``.
- **cancel**: ``job.state: suspended`` with ``upgradeMode: stateless`` — the job is cancelled without
  a savepoint and the resource stays, with its status, events and snapshot history for on-call.

Every patch carries the ``resourceVersion`` it was computed from (a concurrent change fails with a
conflict instead of being overwritten) and every write asks for ``fieldValidation=Strict`` (the API
server refuses a field the CRD does not know instead of pruning it silently). The release is kept
in the annotations ``streaming-analytics/release`` and ``streaming-analytics/model-version``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from pipelines.lifecycle.backend import LifecycleError
from pipelines.lifecycle.model import JobStatus, Release, SavepointKind

_LOG = logging.getLogger(__name__)
T = TypeVar("T")
Manifest = dict[str, Any]

GROUP: Final = "flink.apache.org"
VERSION: Final = "v1beta1"
DEPLOYMENTS: Final = "flinkdeployments"
SNAPSHOTS: Final = "flinkstatesnapshots"
RELEASE_ANNOTATION: Final = "streaming-analytics/release"
MODEL_ANNOTATION: Final = "streaming-analytics/model-version"
#: Label of the FlinkStateSnapshots this backend creates: the savepoint's kind (manual, ...).
KIND_LABEL: Final = "streaming-analytics/savepoint-kind"
#: What the operator writes into ``upgradeSavepointPath`` when it restored from HA metadata (a
#: "last-state" fallback) instead of a savepoint: no path anyone can restore from later.
LAST_STATE_PLACEHOLDER: Final = "KUBERNETES_OPERATOR_LAST_STATE"
#: Flink job states after which no job of this deployment runs.
TERMINAL_JOB_STATES: Final = frozenset({"FAILED", "FINISHED", "CANCELED", "SUSPENDED"})
#: Lifecycle and reconciliation states in which the operator gave up on the spec we wrote.
GAVE_UP: Final = frozenset({"FAILED", "ROLLING_BACK", "ROLLED_BACK"})
#: Attempts of a read-modify-patch when someone else writes the resource in between.
CONFLICT_ATTEMPTS: Final = 3

_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE: Final = _ROOT / "flink-operator" / "flinkdeployment.yaml"
DEFAULT_SNAPSHOT_TEMPLATE: Final = _ROOT / "flink-operator" / "savepoint.yaml"


def _at(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...``, or ``None`` where a level is missing (status fields come and go)."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _operator_error(raw: Any) -> str | None:
    """The message of ``status.error``: the operator stores a serialized exception (JSON with a
    ``message``) there, older versions a plain string."""
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except (TypeError, ValueError):
        return str(raw)
    return str(parsed.get("message") or raw) if isinstance(parsed, dict) else str(raw)


def _image_tag(image: str) -> str | None:
    """The tag of an image reference (``reg:5000/a/b:1.2`` -> ``1.2``); ``None`` for a digest or
    no tag."""
    if "@" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else None


def _with_tag(image: str, tag: str) -> str:
    repository = image.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        repository = repository[: len(repository) - len(last)] + last.rsplit(":", 1)[0]
    return f"{repository}:{tag}"


@dataclass(frozen=True)
class _Seen:
    """One reading of a FlinkDeployment's status, the fields the waits decide on."""

    generation: int
    observed_generation: int | None
    lifecycle: str | None
    reconciliation: str | None
    job_state: str | None
    job_id: str | None
    upgrade_savepoint: str | None
    error: str | None

    @classmethod
    def of(cls, obj: Manifest) -> _Seen:
        status = obj.get("status") or {}
        observed = status.get("observedGeneration")
        return cls(generation=int(_at(obj, "metadata", "generation") or 0),
                   observed_generation=int(observed) if observed is not None else None,
                   lifecycle=status.get("lifecycleState"),
                   reconciliation=_at(status, "reconciliationStatus", "state"),
                   job_state=_at(status, "jobStatus", "state"), job_id=_at(status, "jobStatus", "jobId"),
                   upgrade_savepoint=_at(status, "jobStatus", "upgradeSavepointPath"),
                   error=_operator_error(status.get("error")))

    def reconciled(self, generation: int) -> bool:
        """The operator has taken up the spec of ``generation`` (or a later one)."""
        return self.observed_generation is not None and self.observed_generation >= generation

    def __str__(self) -> str:
        error = f", error: {self.error}" if self.error else ""
        return (f"job {self.job_state or '-'} ({self.job_id or 'no id'}), lifecycle {self.lifecycle or '-'}, "
                f"reconciliation {self.reconciliation or '-'}, generation {self.generation} observed "
                f"{self.observed_generation if self.observed_generation is not None else '-'}{error}")


class KubernetesBackend:
    """The FlinkDeployment ``name`` in ``namespace``.

    ``api_client``: a configured ``kubernetes.client.ApiClient``; by default one is made on first
    use from the in-cluster service account or else the kubeconfig (``context``). ``template``: the
    manifest a first deployment is made from (its ``metadata.name`` is replaced by ``name``);
    ``snapshot_template``: the FlinkStateSnapshot a manual savepoint is made from.
    ``harness_container``: the container (init container) of the TaskManager pods that runs the
    Beam SDK harness — its image takes the release image's tag, as the chart's ``image.tag``
    follows ``pipeline.flinkImage.tag``: the harness must run the Python code the job jar was
    built from (``None``: leave it alone). ``offsets``: reads the consumer group's committed offsets
    for :meth:`offsets` (the FlinkDeployment's status has none). ``deploy_timeout_s`` bounds a wait
    for the job to run (deploy, upgrade, rollback), ``savepoint_timeout_s`` one for a savepoint or
    a stop; the resource is read every ``poll_interval_s``.
    """

    name: str = "kubernetes"

    def __init__(self, *, namespace: str = "analytics", name: str = "streaming-analytics-pipeline",
                 api_client: k8s.ApiClient | None = None, context: str | None = None,
                 template: Path = DEFAULT_TEMPLATE, snapshot_template: Path = DEFAULT_SNAPSHOT_TEMPLATE,
                 harness_container: str | None = "beam-sdk-harness",
                 offsets: Callable[[], dict[str, int]] | None = None,
                 deploy_timeout_s: float = 900.0, savepoint_timeout_s: float = 600.0,
                 poll_interval_s: float = 5.0) -> None:
        self.namespace = namespace
        self.deployment = name
        self.template = template
        self.snapshot_template = snapshot_template
        self.harness_container = harness_container
        self.deploy_timeout_s = deploy_timeout_s
        self.savepoint_timeout_s = savepoint_timeout_s
        self.poll_interval_s = poll_interval_s
        self._offsets = offsets
        self._context = context
        self._api_client = api_client
        self._api: k8s.CustomObjectsApi | None = None

    # --- the Backend interface ----------------------------------------------------------------------

    def status(self) -> JobStatus:
        """The job as the FlinkDeployment's status shows it: ``status.jobStatus.state`` (``SUSPENDED``
        when the lifecycle state is, since the operator then reports the stopped job as FINISHED),
        the job id, the release from our annotation; lifecycle, reconciliation, the operator's error
        and its last triggered checkpoint in ``detail``. ``MISSING`` without a FlinkDeployment.

        Checkpoint counts and times stay empty: the status only records checkpoints the operator
        triggered itself, not Flink's periodic ones (the watch reads those from Flink's metrics)."""
        obj = self._read()
        if obj is None:
            return JobStatus(state="MISSING", detail=f"no FlinkDeployment {self._where}")
        return self._job_status(obj)

    def deploy(self, release: Release, *, savepoint: str | None = None,
               allow_non_restored_state: bool = False) -> JobStatus:
        """Start ``release``; refused while a job of the deployment runs.

        Without a FlinkDeployment, create it from the template (``initialSavepointPath`` when
        ``savepoint`` is given). A stopped one is patched back to ``running`` with the release: with
        ``savepoint``, from exactly that savepoint (``savepointRedeployNonce`` + 1); without, the
        operator resumes as it does for any suspended deployment — from the savepoint it was stopped
        with (``savepoint(stop=True)``), from empty state after :meth:`cancel`."""
        job: Manifest = {"state": "running", "upgradeMode": "savepoint",
                         "allowNonRestoredState": allow_non_restored_state}
        what = f"deploy {release.name}"
        if self._read() is None:
            body = self._new_deployment(release, job, savepoint)
            created = self._call("create", lambda api: api.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, DEPLOYMENTS, body, field_validation="Strict"))
            _LOG.info("created FlinkDeployment %s for release %s", self._where, release.name)
            generation = int(_at(created, "metadata", "generation") or 1)
            return self._job_status(self._await_running(generation, what))

        def build(obj: Manifest) -> Manifest:
            self._refuse_if_active(obj, "deploy")
            restore = ({"initialSavepointPath": savepoint, "savepointRedeployNonce": _next_nonce(obj)}
                       if savepoint is not None else {"initialSavepointPath": None})
            return self._release_patch(obj, release, job | restore, what)

        generation, _ = self._update(what, build)
        return self._job_status(self._await_running(generation, what))

    def savepoint(self, kind: SavepointKind, *, stop: bool = False) -> str:
        """A savepoint of the running job; its path.

        Without ``stop``: a FlinkStateSnapshot from the snapshot template (canonical format, kept
        when the resource is deleted), labelled with ``kind``, done when the operator reports it
        COMPLETED. With ``stop``: ``job.state: suspended``, ``upgradeMode: savepoint`` — the
        operator stops the job with a savepoint (and records it as an upgrade snapshot); the path is
        the one it writes to ``status.jobStatus.upgradeSavepointPath``."""
        if not stop:
            return self._snapshot(kind, self._running_deployment("a savepoint"))

        def build(obj: Manifest) -> Manifest:
            self._running_deployment("a stop with a savepoint", obj)
            return {"spec": {"job": {"state": "suspended", "upgradeMode": "savepoint"}}}

        generation, before = self._update("stop with a savepoint", build)
        done = self._poll(f"stop of {self._where} with a savepoint", self.savepoint_timeout_s,
                          lambda: self._suspended(generation))
        return self._new_savepoint_path(done, _Seen.of(before).upgrade_savepoint, "the stop")

    def upgrade(self, release: Release, *, allow_non_restored_state: bool = False) -> str:
        """Patch the running deployment to ``release`` with ``upgradeMode: savepoint``; the operator
        stops the job with a savepoint and starts the new spec from it. Returns that savepoint
        (``status.jobStatus.upgradeSavepointPath``) once the new job runs. Refused without a running
        job (the operator would fall back to the last checkpoint) or when ``release`` is what the
        spec already says (the operator would do nothing)."""
        what = f"upgrade to {release.name}"
        job: Manifest = {"state": "running", "upgradeMode": "savepoint",
                         "allowNonRestoredState": allow_non_restored_state, "initialSavepointPath": None}

        def build(obj: Manifest) -> Manifest:
            self._running_deployment("an upgrade with a savepoint", obj)
            return self._release_patch(obj, release, job, what)

        generation, before = self._update(what, build)
        running = _Seen.of(self._await_running(generation, what))
        _LOG.info("upgraded %s to %s: %s", self._where, release.name, running)
        return self._new_savepoint_path(running, _Seen.of(before).upgrade_savepoint, "the upgrade")

    def rollback(self, release: Release, savepoint: str) -> JobStatus:
        """Patch the deployment to ``release`` with ``initialSavepointPath: savepoint`` and
        ``savepointRedeployNonce`` + 1: the operator cancels the job without a savepoint and starts
        ``release`` from ``savepoint`` (the operator's own rollback is not available after such a
        redeploy). Creates the deployment from the template if there is none."""
        if not savepoint:
            raise LifecycleError("a rollback needs the savepoint to start from (see `savepoints`)")
        if self._read() is None:
            return self.deploy(release, savepoint=savepoint)
        what = f"rollback to {release.name} from {savepoint}"

        def build(obj: Manifest) -> Manifest:
            job: Manifest = {"state": "running", "upgradeMode": "savepoint", "allowNonRestoredState": False,
                             "initialSavepointPath": savepoint, "savepointRedeployNonce": _next_nonce(obj)}
            return self._release_patch(obj, release, job, what)

        generation, _ = self._update(what, build)
        return self._job_status(self._await_running(generation, what))

    def cancel(self) -> None:
        """Suspend the job with ``upgradeMode: stateless``: the operator cancels it without a
        savepoint. The FlinkDeployment stays (status, events, snapshot history); a later
        :meth:`deploy` without a savepoint starts from empty state, with one from that savepoint.
        Nothing to do without a deployment or when it is suspended already."""
        obj = self._read()
        if obj is None or _at(obj, "spec", "job", "state") == "suspended":
            return
        suspend = {"spec": {"job": {"state": "suspended", "upgradeMode": "stateless"}}}
        generation, _ = self._update("cancel", lambda _obj: suspend)
        self._poll(f"cancel of {self._where}", self.deploy_timeout_s, lambda: self._suspended(generation))

    def offsets(self) -> dict[str, int]:
        """The consumer group's committed offsets through the ``offsets`` callable given to the
        constructor (the job commits them on every checkpoint); ``{}`` without one: the
        FlinkDeployment's status carries no Kafka offsets."""
        return self._offsets() if self._offsets is not None else {}

    # --- reading and writing the resources ----------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self.namespace}/{self.deployment}"

    def _custom_objects(self) -> k8s.CustomObjectsApi:
        if self._api is None:
            if self._api_client is None:
                self._api_client = _connect(self._context)
            self._api = k8s.CustomObjectsApi(self._api_client)
        return self._api

    def _request(self, action: str, request: Callable[[k8s.CustomObjectsApi], Any]) -> Manifest | None:
        """One API request (``None`` when the object does not exist), its failures turned into a
        :class:`LifecycleError` that says what to do."""
        api = self._custom_objects()
        try:
            return cast(Manifest, request(api))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise LifecycleError(_api_error(action, self._where, exc)) from exc
        except HTTPError as exc:
            host = api.api_client.configuration.host
            raise LifecycleError(f"{action} {self._where}: cannot reach the Kubernetes API at {host} "
                                 f"({exc}); check the kubeconfig context and the network") from exc

    def _call(self, action: str, request: Callable[[k8s.CustomObjectsApi], Any]) -> Manifest:
        result = self._request(action, request)
        if result is None:
            raise LifecycleError(f"{action} {self._where}: not found — is the Flink operator (its CRDs) "
                                 "installed, and the namespace right?")
        return result

    def _read(self) -> Manifest | None:
        return self._request("read", lambda api: api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, DEPLOYMENTS, self.deployment))

    def _read_existing(self) -> Manifest:
        obj = self._read()
        if obj is None:
            raise LifecycleError(f"no FlinkDeployment {self._where}: deploy a release first "
                                 "(or check --namespace / SA_K8S_NAMESPACE and SA_K8S_DEPLOYMENT)")
        return obj

    def _job_status(self, obj: Manifest) -> JobStatus:
        seen = _Seen.of(obj)
        annotations = _at(obj, "metadata", "annotations") or {}
        state = "SUSPENDED" if seen.lifecycle == "SUSPENDED" else seen.job_state or "RECONCILING"
        parts = [f"lifecycle {seen.lifecycle or '-'}", f"reconciliation {seen.reconciliation or '-'}",
                 f"Flink job {seen.job_state or '-'}"]
        if seen.job_state is None:
            parts.append(f"no job status from the operator yet (is it running and watching "
                         f"namespace {self.namespace}?)")
        if annotations.get(MODEL_ANNOTATION):
            parts.append(f"model {annotations[MODEL_ANNOTATION]}")
        checkpoint_ms = _at(obj, "status", "jobStatus", "checkpointInfo", "lastCheckpoint", "timeStamp")
        if checkpoint_ms:
            parts.append(f"last operator-triggered checkpoint at {checkpoint_ms} ms")
        if seen.error:
            parts.append(f"error: {seen.error}")
        started = _at(obj, "status", "jobStatus", "startTime")
        return JobStatus(state=state, release=annotations.get(RELEASE_ANNOTATION), job_id=seen.job_id,
                         started_ms=int(started) if started else None, detail="; ".join(parts))

    def _update(self, action: str, build: Callable[[Manifest], Manifest]) -> tuple[int, Manifest]:
        """Read the deployment, ``build`` a JSON merge patch from it (``build`` raises to refuse) and
        send it guarded by the ``resourceVersion`` read. Another writer in between (the operator
        writes the status often) is a conflict: read, build and send again, a few times. Returns the
        generation of the spec the patch left (what the waits compare with) and the object read."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            obj = self._read_existing()
            patch = copy.deepcopy(build(obj))
            patch.setdefault("metadata", {})["resourceVersion"] = _at(obj, "metadata", "resourceVersion")
            try:
                patched = self._call(action, partial(_send_patch, self, patch))
            except LifecycleError as exc:
                conflict = isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 409
                if not conflict or attempt == CONFLICT_ATTEMPTS:
                    raise
                _LOG.info("%s: %s changed meanwhile, reading it again", action, self._where)
                continue
            return int(_at(patched, "metadata", "generation") or 0), obj
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _release_patch(self, obj: Manifest, release: Release, job: Manifest, action: str) -> Manifest:
        """The patch that makes ``obj`` run ``release`` with the ``job`` fields; refused when it
        leaves the spec as it is, since the operator would then do nothing and a wait only time out."""
        spec_patch = self._release_spec(release, obj["spec"], job)
        if not _changes(obj["spec"], spec_patch):
            raise LifecycleError(f"{action}: FlinkDeployment {self._where} already has this spec, so the "
                                 "operator would do nothing; `status` shows what runs")
        return {"metadata": {"annotations": _annotations(release)}, "spec": spec_patch}

    def _running_deployment(self, action: str, obj: Manifest | None = None) -> Manifest:
        """``obj`` (or the deployment read now) when its job runs; refuses ``action`` otherwise."""
        obj = obj if obj is not None else self._read_existing()
        seen = _Seen.of(obj)
        if seen.job_state != "RUNNING":
            raise LifecycleError(f"FlinkDeployment {self._where} has no running job ({seen}): {action} "
                                 "needs one. Check `status`; `rollback` starts a release from a savepoint")
        return obj

    def _release_spec(self, release: Release, spec: Manifest, job: Manifest) -> Manifest:
        """The spec fields a release decides, as a merge patch of ``spec``: image, job arguments,
        jar (a URI; a plain path means a file on this machine, so the image's jar stays), the SDK
        harness image (lists are replaced whole by a merge patch: the container list is sent in
        full), and the ``job`` fields of the action."""
        if not release.image:
            raise LifecycleError(f"release {release.name} names no image: on Kubernetes a release is its "
                                 "Flink image (record the release with --image)")
        patch: Manifest = {"image": release.image, "job": {"args": list(release.args), **job}}
        if release.jar and "://" in release.jar:
            patch["job"]["jarURI"] = release.jar
        if self.harness_container is not None:
            tag = _image_tag(release.image)
            pod_spec = _at(spec, "taskManager", "podTemplate", "spec") or {}
            for field in ("initContainers", "containers"):
                containers = copy.deepcopy(pod_spec.get(field) or [])
                for container in containers:
                    if container.get("name") == self.harness_container:
                        if tag is None:
                            raise LifecycleError(
                                f"release image {release.image} has no tag, so the {self.harness_container} "
                                "container cannot follow it: tag both images with the release")
                        container["image"] = _with_tag(container["image"], tag)
                        pod_patch = patch.setdefault("taskManager", {"podTemplate": {"spec": {}}})
                        pod_patch["podTemplate"]["spec"][field] = containers
        return patch

    def _new_deployment(self, release: Release, job: Manifest, savepoint: str | None) -> Manifest:
        body = _load_manifest(self.template, "FlinkDeployment")
        body["metadata"] = {**body.get("metadata", {}), "name": self.deployment, "namespace": self.namespace}
        body["metadata"]["annotations"] = {k: v for k, v in _annotations(release).items() if v is not None}
        body["spec"] = _merged(body["spec"], self._release_spec(release, body["spec"], job))
        body["spec"]["job"].pop("initialSavepointPath", None)
        if savepoint is not None:
            body["spec"]["job"]["initialSavepointPath"] = savepoint
        return body

    def _refuse_if_active(self, obj: Manifest, action: str) -> None:
        seen = _Seen.of(obj)
        if _at(obj, "spec", "job", "state") == "running" and seen.job_state not in TERMINAL_JOB_STATES:
            release = _at(obj, "metadata", "annotations", RELEASE_ANNOTATION) or "unknown"
            raise LifecycleError(f"{action} refused: FlinkDeployment {self._where} runs release {release} "
                                 f"({seen}). Use `upgrade` to replace it with a savepoint, `rollback` to go "
                                 "back to a savepoint, or `stop` it first")

    def _snapshot(self, kind: SavepointKind, deployment: Manifest) -> str:
        body = _load_manifest(self.snapshot_template, "FlinkStateSnapshot")
        metadata = body.setdefault("metadata", {})
        metadata.pop("name", None)
        metadata["generateName"] = f"{self.deployment}-{kind}-"
        metadata["namespace"] = self.namespace
        metadata["labels"] = {**metadata.get("labels", {}), KIND_LABEL: kind}
        release = _at(deployment, "metadata", "annotations", RELEASE_ANNOTATION)
        if release:
            metadata["annotations"] = {**metadata.get("annotations", {}), RELEASE_ANNOTATION: release}
        body["spec"]["jobReference"] = {"kind": "FlinkDeployment", "name": self.deployment}
        created = self._call("create a FlinkStateSnapshot for",
                             lambda api: api.create_namespaced_custom_object(
                                 GROUP, VERSION, self.namespace, SNAPSHOTS, body, field_validation="Strict"))
        name = str(created["metadata"]["name"])
        _LOG.info("savepoint %s of %s requested", name, self._where)
        return self._poll(f"savepoint {self.namespace}/{name}", self.savepoint_timeout_s,
                          lambda: self._snapshot_done(name))

    def _snapshot_done(self, name: str) -> tuple[str | None, str]:
        snap = self._call("read the FlinkStateSnapshot of", lambda api: api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, SNAPSHOTS, name))
        status = snap.get("status") or {}
        state = status.get("state")
        error = status.get("error")
        where = f"FlinkStateSnapshot {self.namespace}/{name}"
        if state == "COMPLETED":
            if not status.get("path"):
                raise LifecycleError(f"{where} completed without a path: look for it in the job's "
                                     "state.savepoints.dir and the operator's events (kubectl describe)")
            return str(status["path"]), "COMPLETED"
        if state == "FAILED":
            raise LifecycleError(f"{where} failed after {status.get('failures', 0)} attempt(s): {error}. "
                                 "Check the job is healthy (`status`) and its savepoint storage is writable, "
                                 "then take another")
        if state == "ABANDONED":
            raise LifecycleError(f"{where} was abandoned by the operator: the job stopped or was not found "
                                 f"({error or 'no error given'}); check `status`")
        return None, f"state {state or 'not yet observed'}" + (f", error: {error}" if error else "")

    # --- waiting for the operator -------------------------------------------------------------------

    def _poll(self, what: str, timeout_s: float, check: Callable[[], tuple[T | None, str]]) -> T:
        """Call ``check`` every ``poll_interval_s`` until it returns a result; ``check`` raises when
        the operator gave up. The timeout message carries the last state seen."""
        deadline = time.monotonic() + timeout_s
        while True:
            result, seen = check()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise LifecycleError(
                    f"{what}: not done within {timeout_s:g} s (last seen: {seen}). The operator may still "
                    f"be working on it: follow `status`, `kubectl -n {self.namespace} describe "
                    f"flinkdeployment {self.deployment}` and the JobManager log")
            time.sleep(self.poll_interval_s)

    def _await_running(self, generation: int, what: str) -> Manifest:
        """Wait until the operator has reconciled ``generation`` (``observedGeneration``), its
        reconciliation is DEPLOYED, the lifecycle DEPLOYED or STABLE and the job RUNNING."""
        def check() -> tuple[Manifest | None, str]:
            obj = self._read_existing()
            seen = _Seen.of(obj)
            if seen.reconciled(generation) and ({seen.lifecycle, seen.reconciliation} & GAVE_UP):
                raise LifecycleError(f"{what}: the operator gave up on the new spec of {self._where} "
                                     f"({seen}). Fix the release, then `rollback` to the last good savepoint")
            done = (seen.reconciled(generation) and seen.reconciliation == "DEPLOYED"
                    and seen.lifecycle in ("DEPLOYED", "STABLE") and seen.job_state == "RUNNING")
            return (obj if done else None), str(seen)

        return self._poll(f"{what} in {self._where}", self.deploy_timeout_s, check)

    def _suspended(self, generation: int) -> tuple[_Seen | None, str]:
        seen = _Seen.of(self._read_existing())
        if seen.reconciled(generation) and seen.lifecycle == "FAILED":
            raise LifecycleError(f"stopping {self._where} failed ({seen}); see `kubectl -n {self.namespace} "
                                 f"describe flinkdeployment {self.deployment}`")
        done = seen.reconciled(generation) and seen.lifecycle == "SUSPENDED"
        return (seen if done else None), str(seen)

    def _new_savepoint_path(self, seen: _Seen, before: str | None, action: str) -> str:
        """The savepoint the operator recorded for ``action``: a new ``upgradeSavepointPath``."""
        path = seen.upgrade_savepoint
        if not path or path in (LAST_STATE_PLACEHOLDER, before):
            raise LifecycleError(
                f"{action} of {self._where} took no new savepoint (upgradeSavepointPath {path!r}, before "
                f"{before!r}): the operator restored from the last checkpoint or HA metadata instead, so "
                "there is no rollback point of this moment; take one with `savepoint` now")
        return path


def _connect(context: str | None) -> k8s.ApiClient:
    """An API client from the pod's service account, or else from the kubeconfig (``context``)."""
    if context is None:
        try:
            configuration = k8s.Configuration()
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s.ApiClient(configuration)
        except ConfigException:
            pass
    try:
        return k8s_config.new_client_from_config(context=context)
    except (ConfigException, OSError) as exc:
        raise LifecycleError(f"no Kubernetes credentials: {str(exc).rstrip('.')}. Set KUBECONFIG (or run "
                             "in a pod with a service account allowed to get/create/patch "
                             "flinkdeployments and flinkstatesnapshots)") from exc


def _api_error(action: str, where: str, exc: ApiException) -> str:
    """What an API server's refusal means for on-call, with its own message."""
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except ValueError:
        message = exc.body or exc.reason
    advice = {
        401: "the credentials were refused: renew the kubeconfig's token",
        403: "this identity lacks the rights: it needs get/create/patch on flinkdeployments and "
             "flinkstatesnapshots (flink.apache.org) in the namespace",
        404: "not found: is the Flink operator (its CRDs) installed, and the namespace right?",
        409: "the resource changed meanwhile (someone else acted on it): check `status`, then run again",
        422: "the API server refused the object: the installed CRDs are older than this tool expects "
             "(operator >= 1.10), or the release has an invalid value",
    }.get(exc.status or 0, "see the API server's message")
    return f"{action} {where}: HTTP {exc.status} {message} — {advice}"


def _annotations(release: Release) -> dict[str, str | None]:
    # None removes the key in a merge patch: a release without a model version leaves none behind.
    return {RELEASE_ANNOTATION: release.name, MODEL_ANNOTATION: release.model_version}


def _send_patch(backend: KubernetesBackend, patch: Manifest, api: k8s.CustomObjectsApi) -> Any:
    return api.patch_namespaced_custom_object(GROUP, VERSION, backend.namespace, DEPLOYMENTS,
                                              backend.deployment, patch, field_validation="Strict")


def _next_nonce(obj: Manifest) -> int:
    return int(_at(obj, "spec", "job", "savepointRedeployNonce") or 0) + 1


def _changes(spec: Manifest, patch: Manifest) -> bool:
    """Whether merge-patching ``spec`` with ``patch`` changes it."""
    return bool(_merged(spec, patch) != spec)


def _merged(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``target`` (what the API server does with our patches)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(out.get(key), value)
    return out


def _load_manifest(path: Path, kind: str) -> Manifest:
    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LifecycleError(f"cannot read the {kind} template {path}: {exc}") from exc
    if not isinstance(body, dict) or body.get("kind") != kind or not isinstance(body.get("spec"), dict):
        raise LifecycleError(f"{path} is not a {kind} manifest")
    return cast(Manifest, body)
