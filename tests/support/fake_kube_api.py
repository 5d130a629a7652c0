"""A fake Kubernetes API server for FlinkDeployments and FlinkStateSnapshots, with a fake Flink
operator behind it, for testing the lifecycle's kubernetes backend without a cluster.

``FakeKubeApi`` is a threaded HTTP server on 127.0.0.1 (a free port) serving the custom-resource
endpoints the ``kubernetes`` client's ``CustomObjectsApi`` uses —
``/apis/flink.apache.org/v1beta1/namespaces/{ns}/{plural}[/{name}]`` with GET (one or a list, with
an equality ``labelSelector``), POST (``generateName`` too), PATCH (``application/merge-patch+json``
and ``application/json-patch+json``; a ``metadata.resourceVersion`` in a merge patch is a
precondition, 409 when stale) and DELETE — with the API server's answers (``Status`` objects, 404,
409, 415, 422). It records every request (``requests``) and validates every object a client writes
(a create body, a patch's result) and every status it writes itself against the CRD's
openAPIV3Schema (``tests/support/crd_schemas.py``): a client's invalid object is refused with 422
as a real server would, and every failure is kept in ``invalid``.

``FakeFlinkOperator`` plays the operator (1.10+) on each GET of a resource, one transition per read,
so that a client polling the resource sees the sequence the real operator writes — e.g. after an
upgrade ``UPGRADING`` (savepoint taken, ``upgradeSavepointPath`` set, an UPGRADE snapshot created),
then ``DEPLOYED`` with a new job ``RECONCILING``, then ``RUNNING``, then ``STABLE``. It keeps the
jobs it started (``jobs``: image, arguments, the savepoint each restored from) and takes its knobs
from the test: ``paused`` (nothing moves: timeouts), ``fail_snapshots`` (savepoints fail with that
error), ``reject_next_upgrade`` (the new spec does not come up and is rolled back),
``conflict_next_patch`` (someone else writes the resource just before the next patch).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client as k8s

from tests.support.crd_schemas import crd_errors

Obj = dict[str, Any]

GROUP = "flink.apache.org"
VERSION = "v1beta1"
KINDS = {"flinkdeployments": "FlinkDeployment", "flinkstatesnapshots": "FlinkStateSnapshot"}
_PATH = re.compile(rf"^/apis/{re.escape(GROUP)}/{VERSION}/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                   r"(?:/(?P<name>[^/]+))?/?$")
#: Job spec fields whose change alone does not upgrade the job (the operator's DiffType.IGNORE).
IGNORED_JOB_FIELDS = ("upgradeMode", "allowNonRestoredState", "initialSavepointPath",
                      "savepointTriggerNonce", "checkpointTriggerNonce")
#: What the operator writes into upgradeSavepointPath after a restore from HA metadata.
LAST_STATE_PLACEHOLDER = "KUBERNETES_OPERATOR_LAST_STATE"


@dataclass(frozen=True)
class Request:
    """One request as the server received it (``body`` parsed from JSON, ``None`` if empty)."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


@dataclass(frozen=True)
class Written:
    """An object a client wrote, as stored (a create's object, a patch's result)."""

    method: str
    obj: Obj


@dataclass(frozen=True)
class StartedJob:
    """A job the fake operator started for a FlinkDeployment."""

    deployment: str
    job_id: str
    image: str
    args: tuple[str, ...]
    restored_from: str | None


class ApiError(Exception):
    """Answered as a Kubernetes ``Status`` object."""

    def __init__(self, code: HTTPStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": int(self.code)}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(target: Obj, operations: list[Obj]) -> Obj:
    """RFC 6902 ``add``, ``replace``, ``remove`` and ``test`` (what clients send for CRs)."""
    doc = copy.deepcopy(target)
    for op in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = (len(node) if last == "-" else int(last)) if isinstance(node, list) else last
        kind = op["op"]
        if kind == "test":
            if node[key] != op["value"]:
                raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "Invalid", f"test failed at {op['path']}")
        elif kind == "remove":
            del node[key]
        elif kind == "add" and isinstance(node, list):
            node.insert(key, copy.deepcopy(op["value"]))
        elif kind in ("add", "replace"):
            node[key] = copy.deepcopy(op["value"])
        else:
            raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "Invalid", f"unsupported op {kind}")
    return doc


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakeFlinkOperator:
    """The operator's side: status transitions of the resources, one per read (see the module)."""

    def __init__(self, api: FakeKubeApi, savepoint_dir: str) -> None:
        self.api = api
        self.savepoint_dir = savepoint_dir
        self.paused = False
        self.fail_snapshots: str | None = None
        self.reject_next_upgrade: str | None = None
        self.jobs: list[StartedJob] = []
        self.savepoints: list[str] = []
        self._plans: dict[str, list[Callable[[Obj], None]]] = {}
        # How each deployment's last job was stopped: what a resume restores from.
        self._stopped_with: dict[str, str] = {}
        self._ids = itertools.count(1)

    # --- FlinkDeployment ----------------------------------------------------------------------------

    def observe_deployment(self, obj: Obj) -> bool:
        """One step of reconciliation; whether the status changed."""
        if self.paused:
            return False
        name = obj["metadata"]["name"]
        status = obj.setdefault("status", {})
        plan = self._plans.get(name)
        if not plan and status.get("observedGeneration") != obj["metadata"]["generation"]:
            plan = self._plans[name] = self._plan(obj)
        if plan:
            plan.pop(0)(obj)
            return True
        recon = status.get("reconciliationStatus", {})
        if status.get("lifecycleState") == "DEPLOYED" and _at(status, "jobStatus", "state") == "RUNNING":
            status["lifecycleState"] = "STABLE"
            recon["lastStableSpec"] = recon.get("lastReconciledSpec")
            return True
        return False

    def _plan(self, obj: Obj) -> list[Callable[[Obj], None]]:
        """The transitions the operator goes through for the spec of ``obj``."""
        last_json = _at(obj, "status", "reconciliationStatus", "lastReconciledSpec")
        last: Obj | None = json.loads(last_json)["spec"] if last_json else None
        job = obj["spec"]["job"]
        mode = job.get("upgradeMode", "stateless")
        want_running = job.get("state", "running") == "running"
        was_running = last is not None and last["job"].get("state", "running") == "running"
        nonce = job.get("savepointRedeployNonce")
        start: list[Callable[[Obj], None]]
        if last is None:
            start = [self._deploy(job.get("initialSavepointPath"))]
        elif nonce is not None and nonce != last["job"].get("savepointRedeployNonce"):
            path = job.get("initialSavepointPath")
            start = [self._cancel(None, redeploy_from=path), self._deploy(path)]
        elif (was_running and not _upgrade_needed(last, obj["spec"])) or not (was_running or want_running):
            return [self._take_up(mark_deployed=True)]
        elif was_running and want_running and self.reject_next_upgrade is not None:
            error, self.reject_next_upgrade = self.reject_next_upgrade, None
            return [self._take_up(), self._cancel(mode), self._roll_back(last, error)]
        else:
            start = [self._cancel(mode)] if was_running else []
            start.append(self._deploy_restoring(mode))
        if not want_running:  # the job is stopped, not started again
            return [self._take_up(), *start[:-1], self._suspended()]
        return [self._take_up(), *start, self._running()]

    def _take_up(self, *, mark_deployed: bool = False) -> Callable[[Obj], None]:
        """The operator reads the new spec: lastReconciledSpec, observedGeneration, UPGRADING."""
        def step(obj: Obj) -> None:
            status = obj["status"]
            recon = status.setdefault("reconciliationStatus", {})
            recon["lastReconciledSpec"] = json.dumps({"spec": obj["spec"], "resource_metadata": {
                "apiVersion": f"{GROUP}/{VERSION}", "firstDeployment": "lastReconciledSpec" not in recon}})
            recon["reconciliationTimestamp"] = int(time.time() * 1000)
            status["observedGeneration"] = obj["metadata"]["generation"]
            status.pop("error", None)
            if not mark_deployed:
                recon["state"] = "UPGRADING"
                status["lifecycleState"] = "UPGRADING"
        return step

    def _cancel(self, mode: str | None, redeploy_from: str | None = None) -> Callable[[Obj], None]:
        """Stop the job: with a savepoint (``mode`` savepoint), from HA metadata (last-state), or
        without state (stateless, or ``None`` for a savepoint redeploy, which cancels statelessly)."""
        def step(obj: Obj) -> None:
            job_status = obj["status"].setdefault("jobStatus", {})
            if mode == "savepoint" and job_status.get("state") == "RUNNING":
                path = self._savepoint_path(job_status.get("jobId") or "0")
                job_status["upgradeSavepointPath"] = path
                self.api.operator_create_snapshot(obj, path)
            elif mode == "last-state":
                job_status["upgradeSavepointPath"] = LAST_STATE_PLACEHOLDER
            elif mode is None:
                job_status["upgradeSavepointPath"] = redeploy_from
            self._stopped_with[obj["metadata"]["name"]] = mode or "stateless"
            job_status["state"] = "FINISHED"
            obj["status"]["jobManagerDeploymentStatus"] = "MISSING"
        return step

    def _deploy_restoring(self, mode: str) -> Callable[[Obj], None]:
        """Start the new spec from the state the last stop left, as the operator does."""
        def step(obj: Obj) -> None:
            kept = self._stopped_with.pop(obj["metadata"]["name"], "stateless")
            restore = None
            if mode != "stateless" and kept != "stateless":
                restore = _at(obj, "status", "jobStatus", "upgradeSavepointPath")
            self._deploy(restore)(obj)
        return step

    def _deploy(self, restore: str | None) -> Callable[[Obj], None]:
        def step(obj: Obj) -> None:
            status = obj["status"]
            self._stopped_with.pop(obj["metadata"]["name"], None)
            job_id = self._start(obj, obj["spec"], restore)
            job_status = status.setdefault("jobStatus", {})
            job_status.update(jobId=job_id, jobName="streaming-analytics", state="RECONCILING",
                              startTime=str(int(time.time() * 1000)))
            status["jobManagerDeploymentStatus"] = "DEPLOYING"
            status["reconciliationStatus"]["state"] = "DEPLOYED"
            status["lifecycleState"] = "DEPLOYED"
        return step

    def _running(self) -> Callable[[Obj], None]:
        def step(obj: Obj) -> None:
            obj["status"]["jobStatus"]["state"] = "RUNNING"
            obj["status"]["jobManagerDeploymentStatus"] = "READY"
        return step

    def _suspended(self) -> Callable[[Obj], None]:
        def step(obj: Obj) -> None:
            obj["status"]["reconciliationStatus"]["state"] = "DEPLOYED"
            obj["status"]["lifecycleState"] = "SUSPENDED"
        return step

    def _roll_back(self, last: Obj, error: str) -> Callable[[Obj], None]:
        """The new spec did not come up: the operator goes back to the last stable spec."""
        def step(obj: Obj) -> None:
            status = obj["status"]
            restore = _at(status, "jobStatus", "upgradeSavepointPath")
            job_id = self._start(obj, last, restore)
            status["jobStatus"].update(jobId=job_id, state="RUNNING")
            status["jobManagerDeploymentStatus"] = "READY"
            status["reconciliationStatus"]["state"] = "ROLLED_BACK"
            status["lifecycleState"] = "ROLLED_BACK"
            status["error"] = json.dumps({"type": "org.apache.flink.kubernetes.operator.exception."
                                                  "DeploymentFailedException", "message": error})
        return step

    def _start(self, obj: Obj, spec: Obj, restore: str | None) -> str:
        job_id = f"{next(self._ids):032x}"
        self.jobs.append(StartedJob(deployment=obj["metadata"]["name"], job_id=job_id, image=spec["image"],
                                    args=tuple(spec["job"].get("args", ())), restored_from=restore))
        return job_id

    def _savepoint_path(self, job_id: str) -> str:
        path = f"{self.savepoint_dir}/savepoint-{job_id[:6]}-{next(self._ids):012x}"
        self.savepoints.append(path)
        return path

    # --- FlinkStateSnapshot -------------------------------------------------------------------------

    def observe_snapshot(self, snap: Obj) -> bool:
        """One step of a snapshot: triggered (IN_PROGRESS), then COMPLETED with a path — or, with
        ``fail_snapshots``, a failure per step until the backoff limit, then FAILED; ABANDONED when
        the job is not running."""
        if self.paused:
            return False
        status = snap.setdefault("status", {})
        spec = snap["spec"]
        state = status.get("state")
        if state in ("COMPLETED", "FAILED", "ABANDONED"):
            return False
        if _at(spec, "savepoint", "alreadyExists"):
            self._finish(snap, "COMPLETED", path=spec["savepoint"]["path"])
            return True
        owner = self.api.find("flinkdeployments", snap["metadata"]["namespace"], spec["jobReference"]["name"])
        job_status = _at(owner, "status", "jobStatus") or {}
        if job_status.get("state") != "RUNNING":
            self._finish(snap, "ABANDONED", error=f"Job {spec['jobReference']['name']} is not running")
            return True
        if self.fail_snapshots is not None:
            status["failures"] = status.get("failures", 0) + 1
            status["error"] = self.fail_snapshots
            limit = spec.get("backoffLimit", -1)
            self._finish(snap, "FAILED" if 0 <= limit < status["failures"] else "TRIGGER_PENDING")
            return True
        if state == "IN_PROGRESS":
            self._finish(snap, "COMPLETED", path=self._savepoint_path(job_status.get("jobId") or "0"))
        else:
            status.update(triggerId=f"{next(self._ids):032x}", triggerTimestamp=_now_iso())
            self._finish(snap, "IN_PROGRESS")
        return True

    @staticmethod
    def _finish(snap: Obj, state: str, *, path: str | None = None, error: str | None = None) -> None:
        status = snap["status"]
        status["state"] = state
        if path is not None:
            status.update(path=path, resultTimestamp=_now_iso())
            status.pop("error", None)
        if error is not None:
            status["error"] = error
        snap["metadata"].setdefault("labels", {})["snapshot.state"] = state


class FakeKubeApi:
    """``with FakeKubeApi() as api: KubernetesBackend(api_client=api.client(), ...)``."""

    def __init__(self, *, savepoint_dir: str = "s3://fake-bucket/savepoints") -> None:
        self.requests: list[Request] = []
        self.written: list[Written] = []
        self.invalid: list[str] = []
        self.conflict_next_patch = False
        self.operator = FakeFlinkOperator(self, savepoint_dir)
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._versions = itertools.count(1)
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-kube-api", daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def client(self) -> k8s.ApiClient:
        """A ``kubernetes`` client pointed at this server (no retries: a failure shows at once)."""
        configuration = k8s.Configuration(host=self.host)
        configuration.retries = False
        return k8s.ApiClient(configuration)

    def __enter__(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- what tests look at -------------------------------------------------------------------------

    def find(self, plural: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            obj = self._objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, plural: str) -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(o) for (p, _, _), o in sorted(self._objects.items()) if p == plural]

    def writes(self, method: str | None = None) -> Iterator[Request]:
        """The requests that changed something (POST, PATCH, DELETE), or those of ``method``."""
        for request in self.requests:
            if request.method == method or (method is None and request.method != "GET"):
                yield request

    # --- the API ------------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, content_type: str | None,
               raw_body: bytes) -> tuple[int, Obj]:
        url = urlsplit(raw_path)
        query = parse_qs(url.query)
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            return HTTPStatus.BAD_REQUEST, ApiError(HTTPStatus.BAD_REQUEST, "BadRequest", "bad JSON").status()
        with self._lock:
            self.requests.append(Request(method, url.path, query, content_type, body))
            try:
                result = self._route(method, url.path, query, content_type, body)
            except ApiError as exc:
                return exc.code, exc.status()
            return (HTTPStatus.CREATED if method == "POST" else HTTPStatus.OK), result

    def _route(self, method: str, path: str, query: dict[str, list[str]], content_type: str | None,
               body: Any) -> Obj:
        match = _PATH.match(path)
        if match is None or match["plural"] not in KINDS:
            raise ApiError(HTTPStatus.NOT_FOUND, "NotFound", f"the server could not find {path}")
        plural, namespace, name = match["plural"], match["ns"], match["name"]
        if name is None and method == "GET":
            return self._list(plural, namespace, query)
        if name is None and method == "POST":
            return self._create(plural, namespace, body)
        if name is None:
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowed", f"{method} on a collection")
        key = (plural, namespace, name)
        obj = self._objects.get(key)
        if obj is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "NotFound", f'{plural}.{GROUP} "{name}" not found')
        if method == "GET":
            self._observe(plural, obj)
            return copy.deepcopy(obj)
        if method == "PATCH":
            return self._patch(key, obj, content_type, body)
        if method == "DELETE":
            del self._objects[key]
            return {"kind": "Status", "apiVersion": "v1", "status": "Success",
                    "details": {"name": name, "group": GROUP, "kind": plural}}
        raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowed", f"{method} is not served here")

    def _list(self, plural: str, namespace: str, query: dict[str, list[str]]) -> Obj:
        wanted = dict(term.split("=", 1) for sel in query.get("labelSelector", [])
                      for term in sel.split(",") if "=" in term)
        items = []
        for (p, ns, _), obj in sorted(self._objects.items()):
            labels = obj["metadata"].get("labels", {})
            if p == plural and ns == namespace and all(labels.get(k) == v for k, v in wanted.items()):
                self._observe(plural, obj)
                items.append(copy.deepcopy(obj))
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": f"{KINDS[plural]}List",
                "metadata": {"resourceVersion": str(next(self._versions))}, "items": items}

    def _create(self, plural: str, namespace: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "BadRequest", "the body must be an object")
        self._validate(body, "POST")
        obj = copy.deepcopy(body)
        obj.pop("status", None)  # the status subresource: a create sets no status
        meta = obj.setdefault("metadata", {})
        if "name" not in meta and "generateName" in meta:
            meta["name"] = f"{meta['generateName']}{next(self._versions):05x}"
        if "name" not in meta:
            raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value")
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(HTTPStatus.BAD_REQUEST, "BadRequest", "the namespace of the object does not match")
        key = (plural, namespace, meta["name"])
        if key in self._objects:
            raise ApiError(HTTPStatus.CONFLICT, "AlreadyExists",
                           f'{plural}.{GROUP} "{meta["name"]}" already exists')
        meta.update(namespace=namespace, uid=f"uid-{next(self._versions)}", generation=1,
                    resourceVersion=str(next(self._versions)), creationTimestamp=_now_iso())
        self._objects[key] = obj
        self.written.append(Written("POST", copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def _patch(self, key: tuple[str, str, str], obj: Obj, content_type: str | None, body: Any) -> Obj:
        kind = (content_type or "").split(";")[0].strip()
        if kind == "application/merge-patch+json" and isinstance(body, dict):
            wanted = _at(body, "metadata", "resourceVersion")
            if self.conflict_next_patch:
                self.conflict_next_patch = False
                self._touch(obj)
            if wanted is not None and str(wanted) != obj["metadata"]["resourceVersion"]:
                raise ApiError(HTTPStatus.CONFLICT, "Conflict",
                               "Operation cannot be fulfilled: the object has been modified; please apply "
                               "your changes to the latest version and try again")
            result = merge_patch(obj, body)
        elif kind == "application/json-patch+json" and isinstance(body, list):
            result = json_patch(obj, body)
        else:
            raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType",
                           "the body of the request was in an unknown format - accepted media types "
                           f"include: application/json-patch+json, application/merge-patch+json (got {kind})")
        result["status"] = obj.get("status", {})  # the status subresource: a patch leaves it
        result["metadata"].update({k: obj["metadata"][k] for k in ("name", "namespace", "uid", "generation",
                                                                    "creationTimestamp")})
        self._validate(result, "PATCH")
        if result["spec"] != obj["spec"]:
            result["metadata"]["generation"] = obj["metadata"]["generation"] + 1
        result["metadata"]["resourceVersion"] = str(next(self._versions))
        self._objects[key] = result
        self.written.append(Written("PATCH", copy.deepcopy(result)))
        return copy.deepcopy(result)

    def _observe(self, plural: str, obj: Obj) -> None:
        """The operator's step for ``obj``; its status is validated like a client's write."""
        changed = (self.operator.observe_deployment(obj) if plural == "flinkdeployments"
                   else self.operator.observe_snapshot(obj))
        if changed:
            self._touch(obj)
            errors = crd_errors(obj)
            if errors:
                self.invalid.append(f"fake operator wrote {obj['metadata']['name']}: {'; '.join(errors)}")

    def _touch(self, obj: Obj) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def _validate(self, obj: Obj, method: str) -> None:
        errors = crd_errors(obj)
        if errors:
            name = _at(obj, "metadata", "name") or _at(obj, "metadata", "generateName")
            self.invalid.append(f"{method} {obj.get('kind')}/{name}: {'; '.join(errors)}")
            raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "Invalid",
                           f"{obj.get('kind')}.{GROUP} {name!r} is invalid: {'; '.join(errors)}")

    # --- the operator's own writes ------------------------------------------------------------------

    def operator_create_snapshot(self, deployment: Obj, path: str) -> None:
        """The UPGRADE FlinkStateSnapshot the operator records for an upgrade savepoint."""
        name = (f"{deployment['metadata']['name']}-savepoint-upgrade-{int(time.time() * 1000)}"
                f"-{next(self._versions)}")
        namespace = deployment["metadata"]["namespace"]
        snap: Obj = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FlinkStateSnapshot",
            "metadata": {"name": name, "namespace": namespace, "generation": 1, "uid": f"uid-{name}",
                         "resourceVersion": str(next(self._versions)), "creationTimestamp": _now_iso(),
                         "labels": {"snapshot.trigger-type": "UPGRADE", "snapshot.type": "SAVEPOINT"}},
            "spec": {"jobReference": {"kind": "FlinkDeployment", "name": deployment["metadata"]["name"]},
                     "savepoint": {"path": path, "alreadyExists": True, "disposeOnDelete": False,
                                   "formatType": "CANONICAL"}},
        }
        errors = crd_errors(snap)
        if errors:
            self.invalid.append(f"fake operator created {name}: {'; '.join(errors)}")
        self._objects[("flinkstatesnapshots", namespace, name)] = snap


def _upgrade_needed(last: Obj, spec: Obj) -> bool:
    """Whether ``spec`` differs from ``last`` in more than the fields the operator ignores."""
    def significant(s: Obj) -> Obj:
        out = copy.deepcopy(s)
        for name in IGNORED_JOB_FIELDS:
            out.get("job", {}).pop(name, None)
        return out
    return significant(last) != significant(spec)


def _at(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _handler(api: FakeKubeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            code, payload = api.handle(self.command, self.path, self.headers.get("Content-Type"), raw)
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve  # noqa: N815 (http.server's names)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the requests are in api.requests

    return Handler
