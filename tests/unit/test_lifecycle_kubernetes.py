"""The kubernetes lifecycle backend (pipelines/lifecycle/kubernetes.py) against a fake Kubernetes API
server with a fake Flink operator behind it (tests/support/fake_kube_api.py): deploy, status,
savepoints, upgrade, rollback, cancel and the refusals and failures, through the real ``kubernetes``
client over HTTP. Every object the backend writes — create bodies and the results of its patches —
is validated against the CRDs in ``../shared/schemas/crds`` (strict: unknown fields fail); an
invalid one is refused by the fake server with 422, and each test also checks none was.

Run: ``.venv/bin/python -m pytest -q tests/unit/test_lifecycle_kubernetes.py`` (no cluster, no stack).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from pipelines.lifecycle.backend import Backend, LifecycleError
from pipelines.lifecycle.kubernetes import (
    DEFAULT_TEMPLATE,
    KIND_LABEL,
    MODEL_ANNOTATION,
    RELEASE_ANNOTATION,
    KubernetesBackend,
)
from pipelines.lifecycle.model import Release
from tests.support.crd_schemas import crd_errors
from tests.support.fake_kube_api import FakeKubeApi, Request

NAMESPACE = "analytics"
NAME = "streaming-analytics-pipeline"
DEPLOYMENT_PATH = f"/apis/flink.apache.org/v1beta1/namespaces/{NAMESPACE}/flinkdeployments/{NAME}"
SNAPSHOTS_PATH = f"/apis/flink.apache.org/v1beta1/namespaces/{NAMESPACE}/flinkstatesnapshots"
FLINK_IMAGE = "registry.example.com/analytics/streaming-analytics-flink"
HARNESS_IMAGE = "registry.example.com/analytics/streaming-analytics"

V1 = Release(name="v1", image=f"{FLINK_IMAGE}:1.0.0", args=("--fixed_window_s=60",), model_version="v3")
V2 = Release(name="v2", image=f"{FLINK_IMAGE}:2.0.0", args=("--fixed_window_s=30",), model_version="v4",
             jar="local:///opt/flink/usrlib/streaming-analytics-job-v2.jar")


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as server:
        yield server
        # Whatever a test did, nothing the backend wrote or the fake operator served broke a CRD.
        assert server.invalid == []
        for written in server.written:
            assert crd_errors(written.obj) == [], written


def backend_for(api: FakeKubeApi, **options: Any) -> KubernetesBackend:
    settings: dict[str, Any] = {"deploy_timeout_s": 10.0, "savepoint_timeout_s": 10.0,
                                "poll_interval_s": 0.002}
    return KubernetesBackend(namespace=NAMESPACE, name=NAME, api_client=api.client(), **(settings | options))


@pytest.fixture
def backend(api: FakeKubeApi) -> KubernetesBackend:
    return backend_for(api)


def deployment(api: FakeKubeApi) -> dict[str, Any]:
    obj = api.find("flinkdeployments", NAMESPACE, NAME)
    assert obj is not None
    return obj


def patches(api: FakeKubeApi) -> list[Request]:
    return [r for r in api.writes("PATCH") if r.path == DEPLOYMENT_PATH]


def harness_image(obj: dict[str, Any]) -> str:
    (harness,) = [c for c in obj["spec"]["taskManager"]["podTemplate"]["spec"]["initContainers"]
                  if c["name"] == "beam-sdk-harness"]
    return str(harness["image"])


def test_is_a_lifecycle_backend(backend: KubernetesBackend) -> None:
    checked: Backend = backend
    assert checked.name == "kubernetes"


def test_status_is_missing_without_a_flinkdeployment(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    status = backend.status()
    assert status.state == "MISSING" and not status.running
    assert [r.method for r in api.requests] == ["GET"]


def test_deploy_creates_the_production_manifest_with_the_release(api: FakeKubeApi,
                                                                 backend: KubernetesBackend) -> None:
    status = backend.deploy(V1)

    assert status.running and status.release == "v1" and status.job_id
    (create,) = api.writes("POST")
    body = create.body
    assert create.query["fieldValidation"] == ["Strict"]
    assert crd_errors(body) == []
    template = yaml.safe_load(DEFAULT_TEMPLATE.read_text())
    # The production shape is kept; only what a release decides is set.
    assert body["spec"]["flinkConfiguration"] == template["spec"]["flinkConfiguration"]
    assert body["spec"]["jobManager"] == template["spec"]["jobManager"]
    assert body["metadata"]["name"] == NAME and body["metadata"]["namespace"] == NAMESPACE
    assert body["metadata"]["annotations"] == {RELEASE_ANNOTATION: "v1", MODEL_ANNOTATION: "v3"}
    assert body["spec"]["image"] == V1.image
    assert body["spec"]["job"] | {"args": None} == template["spec"]["job"] | {
        "args": None, "state": "running", "upgradeMode": "savepoint", "allowNonRestoredState": False}
    assert body["spec"]["job"]["args"] == ["--fixed_window_s=60"]
    assert "initialSavepointPath" not in body["spec"]["job"]
    # The SDK harness runs the Python code of the same release.
    assert harness_image(body) == f"{HARNESS_IMAGE}:1.0.0"
    (job,) = api.operator.jobs
    assert (job.image, job.args, job.restored_from, job.job_id) == (V1.image, V1.args, None, status.job_id)


def test_deploy_from_a_savepoint_sets_it_and_allow_non_restored_state(api: FakeKubeApi,
                                                                      backend: KubernetesBackend) -> None:
    backend.deploy(V1, savepoint="s3://b/savepoints/savepoint-1", allow_non_restored_state=True)

    (create,) = api.writes("POST")
    assert create.body["spec"]["job"]["initialSavepointPath"] == "s3://b/savepoints/savepoint-1"
    assert create.body["spec"]["job"]["allowNonRestoredState"] is True
    assert api.operator.jobs[-1].restored_from == "s3://b/savepoints/savepoint-1"


def test_status_reads_the_flinkdeployment(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    backend.deploy(V1)
    status = backend.status()

    obj = deployment(api)
    assert status.state == "RUNNING"
    assert status.job_id == obj["status"]["jobStatus"]["jobId"]
    assert status.release == "v1"
    assert status.detail is not None
    assert "lifecycle STABLE" in status.detail and "reconciliation DEPLOYED" in status.detail
    assert "model v3" in status.detail


def test_deploy_is_refused_while_a_job_runs(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    backend.deploy(V1)
    writes = len(list(api.writes()))

    with pytest.raises(LifecycleError, match=r"deploy refused: .* runs release v1 .*`upgrade`"):
        backend.deploy(V2)
    assert len(list(api.writes())) == writes


def test_manual_savepoint_is_a_flinkstatesnapshot(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    backend.deploy(V1)
    path = backend.savepoint("manual")

    (create,) = [r for r in api.writes("POST") if r.path == SNAPSHOTS_PATH]
    body = create.body
    assert crd_errors(body) == []
    assert create.query["fieldValidation"] == ["Strict"]
    assert body["metadata"]["generateName"] == f"{NAME}-manual-"
    assert body["metadata"]["labels"][KIND_LABEL] == "manual"
    assert body["metadata"]["annotations"] == {RELEASE_ANNOTATION: "v1"}
    assert body["spec"]["jobReference"] == {"kind": "FlinkDeployment", "name": NAME}
    assert body["spec"]["savepoint"] == {"disposeOnDelete": False, "formatType": "CANONICAL"}
    (snapshot,) = api.objects("flinkstatesnapshots")
    assert snapshot["status"]["state"] == "COMPLETED" and snapshot["status"]["path"] == path
    assert path in api.operator.savepoints
    assert backend.status().running  # a triggered savepoint stops nothing


def test_savepoint_with_stop_suspends_and_returns_the_operators_savepoint(
        api: FakeKubeApi, backend: KubernetesBackend) -> None:
    backend.deploy(V1)
    path = backend.savepoint("stop", stop=True)

    (patch,) = patches(api)
    assert patch.body["spec"] == {"job": {"state": "suspended", "upgradeMode": "savepoint"}}
    obj = deployment(api)
    assert obj["status"]["jobStatus"]["upgradeSavepointPath"] == path
    assert path in api.operator.savepoints
    assert backend.status().state == "SUSPENDED"
    # Deploying again from that savepoint restores exactly it (a redeploy nonce, since the operator
    # reads initialSavepointPath of an existing deployment only on a nonce change).
    backend.deploy(V1, savepoint=path)
    assert deployment(api)["spec"]["job"]["savepointRedeployNonce"] == 1
    assert api.operator.jobs[-1].restored_from == path


def test_upgrade_is_one_patch_and_returns_the_upgrade_savepoint(api: FakeKubeApi,
                                                                 backend: KubernetesBackend) -> None:
    first = backend.deploy(V1)
    savepoint = backend.upgrade(V2)

    (patch,) = patches(api)
    spec = patch.body["spec"]
    assert spec["image"] == V2.image
    assert spec["job"] == {"args": ["--fixed_window_s=30"], "jarURI": V2.jar, "state": "running",
                           "upgradeMode": "savepoint", "allowNonRestoredState": False,
                           "initialSavepointPath": None}
    assert harness_image(patch.body) == f"{HARNESS_IMAGE}:2.0.0"
    assert patch.body["metadata"]["annotations"] == {RELEASE_ANNOTATION: "v2", MODEL_ANNOTATION: "v4"}
    assert patch.body["metadata"]["resourceVersion"]  # guarded against a concurrent writer
    assert patch.query["fieldValidation"] == ["Strict"]
    # The operator stopped v1 with that savepoint and started v2 from it.
    assert savepoint in api.operator.savepoints
    old, new = api.operator.jobs
    assert old.job_id == first.job_id
    assert (new.image, new.args, new.restored_from) == (V2.image, V2.args, savepoint)
    status = backend.status()
    assert status.running and status.release == "v2" and status.job_id == new.job_id
    # It is also listed as the operator's UPGRADE snapshot, as `kubectl get flinksnp -l ...` would.
    listed = k8s.CustomObjectsApi(api.client()).list_namespaced_custom_object(
        "flink.apache.org", "v1beta1", NAMESPACE, "flinkstatesnapshots",
        label_selector="snapshot.trigger-type=UPGRADE")
    assert [(s["status"]["state"], s["status"]["path"]) for s in listed["items"]] == [
        ("COMPLETED", savepoint)]


def test_upgrade_waits_until_the_new_spec_runs(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    backend.deploy(V1)
    backend.upgrade(V2)

    # Polled through the operator's whole sequence, and done only at RUNNING of the new generation.
    obj = deployment(api)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    reads_after_patch = [r for r in api.requests[api.requests.index(patches(api)[0]):]
                         if r.method == "GET" and r.path == DEPLOYMENT_PATH]
    assert len(reads_after_patch) >= 3  # UPGRADING, DEPLOYED/RECONCILING, RUNNING


def test_rollback_redeploys_the_old_release_from_the_savepoint(api: FakeKubeApi,
                                                                backend: KubernetesBackend) -> None:
    backend.deploy(V1)
    savepoint = backend.upgrade(V2)
    status = backend.rollback(V1, savepoint)

    rollback_patch = patches(api)[-1]
    job = rollback_patch.body["spec"]["job"]
    assert job["initialSavepointPath"] == savepoint
    assert job["savepointRedeployNonce"] == 1
    assert rollback_patch.body["spec"]["image"] == V1.image
    assert status.running and status.release == "v1"
    assert (api.operator.jobs[-1].image, api.operator.jobs[-1].restored_from) == (V1.image, savepoint)
    # Only the job started by the upgrade restored from that savepoint before: the rollback started
    # from it again, not from a savepoint of the v2 job being rolled back.
    assert api.operator.savepoints == [savepoint]

    # A second rollback to the same savepoint increments the nonce again (same spec otherwise).
    backend.rollback(V1, savepoint)
    assert deployment(api)["spec"]["job"]["savepointRedeployNonce"] == 2
    assert api.operator.jobs[-1].restored_from == savepoint


def test_rollback_without_a_flinkdeployment_creates_it_from_the_savepoint(
        api: FakeKubeApi, backend: KubernetesBackend) -> None:
    status = backend.rollback(V1, "s3://b/savepoints/savepoint-9")

    assert status.running
    (create,) = api.writes("POST")
    assert create.body["spec"]["job"]["initialSavepointPath"] == "s3://b/savepoints/savepoint-9"


def test_cancel_suspends_statelessly_and_a_deploy_starts_empty(api: FakeKubeApi,
                                                                backend: KubernetesBackend) -> None:
    backend.deploy(V1)
    backend.cancel()

    (patch,) = patches(api)
    assert patch.body["spec"] == {"job": {"state": "suspended", "upgradeMode": "stateless"}}
    assert backend.status().state == "SUSPENDED"
    assert api.operator.savepoints == []  # no savepoint: the job's state is what is being undone
    backend.cancel()  # nothing to do: it is suspended already
    assert len(patches(api)) == 1

    status = backend.deploy(V2)
    assert status.running and status.release == "v2"
    assert deployment(api)["spec"]["job"]["upgradeMode"] == "savepoint"
    assert api.operator.jobs[-1].restored_from is None


def test_cancel_without_a_deployment_does_nothing(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    backend.cancel()
    assert list(api.writes()) == []


def test_a_failed_snapshot_raises_the_operators_error(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    backend.deploy(V1)
    api.operator.fail_snapshots = "Savepoint failed: s3 bucket not writable (AccessDenied)"

    with pytest.raises(LifecycleError, match=r"failed after 4 attempt\(s\): Savepoint failed: s3 bucket "
                                             r"not writable \(AccessDenied\)\. Check"):
        backend.savepoint("manual")


def test_a_savepoint_needs_a_running_job(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    with pytest.raises(LifecycleError, match="no FlinkDeployment analytics/streaming-analytics-pipeline"):
        backend.savepoint("manual")
    backend.deploy(V1)
    backend.cancel()
    with pytest.raises(LifecycleError, match=r"has no running job .* a savepoint needs one"):
        backend.savepoint("manual")
    assert [r for r in api.writes("POST") if r.path == SNAPSHOTS_PATH] == []


def test_a_wait_times_out_with_what_it_last_saw(api: FakeKubeApi) -> None:
    backend = backend_for(api, deploy_timeout_s=0.2)
    api.operator.paused = True

    with pytest.raises(LifecycleError, match=r"deploy v1 in analytics/streaming-analytics-pipeline: not "
                                             r"done within 0.2 s \(last seen: job - .*generation 1 "
                                             r"observed -\)\. The operator may still be working"):
        backend.deploy(V1)


def test_a_savepoint_wait_times_out(api: FakeKubeApi) -> None:
    backend = backend_for(api, savepoint_timeout_s=0.2)
    backend.deploy(V1)
    api.operator.paused = True

    with pytest.raises(LifecycleError, match=r"savepoint analytics/streaming-analytics-pipeline-manual-\w+: "
                                             r"not done within 0.2 s \(last seen: state not yet observed\)"):
        backend.savepoint("manual")


def test_an_upgrade_the_operator_rolls_back_fails_at_once(api: FakeKubeApi,
                                                           backend: KubernetesBackend) -> None:
    backend.deploy(V1)
    api.operator.reject_next_upgrade = "JobManager deployment did not become ready within 10 min"

    with pytest.raises(LifecycleError, match=r"upgrade to v2: the operator gave up .*ROLLED_BACK.*error: "
                                             r"JobManager deployment did not become ready"):
        backend.upgrade(V2)
    assert api.operator.jobs[-1].image == V1.image  # the operator's rollback runs v1 again


def test_an_upgrade_needs_a_running_job_and_a_new_spec(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    with pytest.raises(LifecycleError, match=r"no FlinkDeployment .*: deploy a release first"):
        backend.upgrade(V2)
    backend.deploy(V1)
    with pytest.raises(LifecycleError, match="already has this spec, so the operator would do nothing"):
        backend.upgrade(V1)
    backend.cancel()
    with pytest.raises(LifecycleError, match=r"has no running job .* an upgrade with a savepoint needs one"):
        backend.upgrade(V2)
    assert len(patches(api)) == 1  # the cancel's


def test_a_release_needs_an_image(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    with pytest.raises(LifecycleError, match="release v9 names no image"):
        backend.deploy(Release(name="v9", jar="/work/var/job.jar"))
    assert list(api.writes()) == []


def test_a_plain_jar_path_keeps_the_images_jar(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    backend.deploy(Release(name="v1", image=f"{FLINK_IMAGE}:1.0.0", jar="/work/main/var/job-jar/job.jar"))
    template = yaml.safe_load(DEFAULT_TEMPLATE.read_text())
    assert deployment(api)["spec"]["job"]["jarURI"] == template["spec"]["job"]["jarURI"]


def test_a_concurrent_write_is_retried_on_the_fresh_object(api: FakeKubeApi,
                                                            backend: KubernetesBackend) -> None:
    backend.deploy(V1)
    api.conflict_next_patch = True

    backend.upgrade(V2)

    first, second = patches(api)
    assert first.body == second.body | {"metadata": first.body["metadata"]}
    assert first.body["metadata"]["resourceVersion"] != second.body["metadata"]["resourceVersion"]
    assert backend.status().release == "v2"


def test_the_api_servers_refusals_say_what_to_do(api: FakeKubeApi, tmp_path: Path) -> None:
    # A template with a field the CRD does not know: the server refuses it (fieldValidation=Strict).
    template = yaml.safe_load(DEFAULT_TEMPLATE.read_text())
    template["spec"]["job"]["savepointPath"] = "s3://misspelt"
    broken = tmp_path / "flinkdeployment.yaml"
    broken.write_text(yaml.safe_dump(template))
    backend = backend_for(api, template=broken)

    with pytest.raises(LifecycleError, match=r"create analytics/streaming-analytics-pipeline: HTTP 422 .*"
                                             r"savepointPath.* the API server refused the object"):
        backend.deploy(V1)
    api.invalid.clear()  # the refusal was the point of this test


def test_an_unreachable_api_server_is_a_lifecycle_error(api: FakeKubeApi) -> None:
    backend = backend_for(api)
    api.__exit__(None, None, None)
    with pytest.raises(LifecycleError, match=r"cannot reach the Kubernetes API at http://127\.0\.0\.1:"):
        backend.status()


def test_the_fake_server_applies_json_patches(api: FakeKubeApi, backend: KubernetesBackend) -> None:
    # The backend sends merge patches; the fake serves RFC 6902 too, for clients that send those.
    backend.deploy(V1)
    client = api.client()
    client.call_api(DEPLOYMENT_PATH, "PATCH", header_params={"Content-Type": "application/json-patch+json"},
                    body=[{"op": "test", "path": "/spec/job/state", "value": "running"},
                          {"op": "replace", "path": "/spec/job/parallelism", "value": 8}],
                    auth_settings=[], response_type="object")
    assert deployment(api)["spec"]["job"]["parallelism"] == 8
